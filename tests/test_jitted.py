"""Compile once: numeric options and new batches reuse the compiled decoder."""

from __future__ import annotations

import jax
import numpy as np
from toy_models import (
    IDS,
    make_rnn_cache,
    rnn_step,
)

from seqjax.decoding import beam_search, jitted, sample


def test_numeric_options_and_new_batches_do_not_retrace():
    import functools

    traces = []

    def counting_step(tokens_B, position, cache):
        traces.append(1)
        return rnn_step(tokens_B, position, cache)

    run_beam = jax.jit(
        functools.partial(beam_search, counting_step, beam_size=2, n_best=2, max_len=5, **IDS)
    )
    first = run_beam(
        make_rnn_cache(2, 20), alpha=0.0, coverage=0.0, min_len=0, repetition_penalty=1.0
    )
    n = len(traces)
    assert n >= 1
    outs = [
        run_beam(make_rnn_cache(2, seed), alpha=a, coverage=c, min_len=m, repetition_penalty=p)
        for seed, a, c, m, p in [(21, 0.6, 0.3, 2, 1.3), (22, 1.5, 0.0, 4, 0.8)]
    ]
    assert len(traces) == n
    assert np.all(np.asarray(outs[1].lengths) >= 5)  # min_len 4 took effect (EOS at >= 5)
    assert not np.array_equal(first.tokens, outs[0].tokens)

    traces.clear()
    run_sample = jitted(sample)
    kw = dict(num_samples=2, max_len=5, **IDS)
    cache = make_rnn_cache(2, 23)
    run_sample(
        counting_step, cache, key=jax.random.key(0), temperature=1.0, top_k=0, top_p=1.0, **kw
    )
    n = len(traces)
    for i, (t, k, p) in enumerate([(0.5, 2, 0.9), (2.0, 0, 0.5), (1e-3, 1, 1.0)]):
        cache = make_rnn_cache(2, 24 + i)
        run_sample(
            counting_step, cache, key=jax.random.key(i), temperature=t, top_k=k, top_p=p, **kw
        )
    assert len(traces) == n
