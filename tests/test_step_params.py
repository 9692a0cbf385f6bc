"""Weights are data: the params-form step (``model.step`` + ``params=``) compiles once
for every set of weights of an architecture, and equals the closed-over form."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from conftest import JIT, model_and_params, model_inputs

from seqjax.config import DecodeConfig
from seqjax.decoding import (
    STATIC_ARGNAMES,
    beam_search,
    contrastive,
    decode,
    greedy,
    jitted,
    sample,
    score,
)
from seqjax.models import build_model

L = 6


def _setup(family="transformer", seeds=(1, 2, 3)):
    model, _ = model_and_params(family)
    all_params = [JIT["init"](model, jax.random.key(s)) for s in seeds]
    src, mask, _ = model_inputs(model.config.vocab_size, pad_rows=True)
    caches = [
        JIT["init_cache"](model, p, JIT["encode"](model, p, src, mask), mask, L) for p in all_params
    ]
    ids = dict(bos_id=model.config.bos_id, eos_id=model.config.eos_id, pad_id=0)
    return model, all_params, caches, ids


def test_model_step_is_hashable_and_equal_across_instances():
    model, _ = model_and_params("transformer")
    twin = build_model(model.config)
    assert twin is not model and twin.step == model.step
    assert hash(twin.step) == hash(model.step)


def test_greedy_and_beam_compile_once_for_three_params():
    model, all_params, caches, ids = _setup()
    for decoder, extra in ((greedy, {}), (beam_search, dict(beam_size=3, n_best=2))):
        static = ("step_fn", "max_len", *ids, *extra)
        run = jax.jit(decoder, static_argnames=static)
        # jit's cache is shared by every jax.jit of the same function and static names, so
        # other tests' entries may be there already: count what these three calls add.
        before = run._cache_size()
        outs = []
        for p, c in zip(all_params, caches, strict=True):
            # a fresh model object each time: model.step must still hit jit's cache
            step = build_model(model.config).step
            outs.append(run(step, c, params=p, max_len=L, **ids, **extra))
        assert run._cache_size() - before == 1, decoder.__name__
        # different weights really decode differently, and equal the closed-over form
        for p, c, out in zip(all_params, caches, outs, strict=True):
            ref = decoder(model.step_fn(p), c, max_len=L, **ids, **extra)
            np.testing.assert_array_equal(out.tokens, ref.tokens)
            np.testing.assert_allclose(out.scores, ref.scores, rtol=1e-5, atol=1e-5)
        assert not all(np.array_equal(outs[0].tokens, o.tokens) for o in outs[1:])


def test_every_decoder_compiles_once_for_three_params():
    model, all_params, caches, ids = _setup()
    key = jax.random.key(0)
    calls = {
        sample: lambda run, p, c: run(
            model.step, c, params=p, key=key, max_len=L, num_samples=2, **ids
        ),
        contrastive: lambda run, p, c: run(
            model.step, c, model.step, c, params=p, amateur_params=p, max_len=L, **ids
        ),
        score: lambda run, p, c: run(
            model.step, c, jnp.full((3, L), 5, jnp.int32), params=p, **ids
        ),
    }
    for decoder, call in calls.items():
        run = jax.jit(decoder, static_argnames=STATIC_ARGNAMES[decoder])
        before = run._cache_size()  # shared with other jits of the same function
        for p, c in zip(all_params, caches, strict=True):
            jax.block_until_ready(call(run, p, c))
        assert run._cache_size() - before == 1, decoder.__name__


def test_decode_params_form_matches_closed_form_and_compiles_once():
    model, all_params, caches, ids = _setup()
    cfg = DecodeConfig(method="beam", beam_size=2, max_len=L)
    before = jitted(beam_search)._cache_size()
    for p, c in zip(all_params, caches, strict=True):
        out = decode(model.step, c, cfg, params=p, **ids)
        ref = decode(model.step_fn(p), c, cfg, **ids)
        np.testing.assert_array_equal(out.tokens, ref.tokens)
    # the three closed-over steps compile three times; the params form once
    assert jitted(beam_search)._cache_size() - before == 1 + 3


def test_rnn_step_params_form():
    model, all_params, caches, ids = _setup("rnn_bahdanau", seeds=(1, 2))
    for p, c in zip(all_params, caches, strict=True):
        out = greedy(model.step, c, params=p, max_len=L, **ids)
        ref = greedy(model.step_fn(p), c, max_len=L, **ids)
        np.testing.assert_array_equal(out.tokens, ref.tokens)
