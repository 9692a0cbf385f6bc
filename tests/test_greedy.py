"""seqjax.decoding.greedy: argmax decoding on toy step functions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from toy_models import (
    EOS,
    IDS,
    PAD,
    RNN_STATIC,
    assert_same_result,
    bigram_step,
    hyp,
    np_expert_path_probs,
    rnn_step,
)

from seqjax.decoding import beam_search, greedy, jitted, sample


def test_greedy_equals_beam1_topk1_and_cold_sampling(cache3, rnn_greedy):
    g = rnn_greedy
    assert g.tokens.shape == (3, 1, 6) and g.tokens.dtype == jnp.int32
    beam1 = jitted(beam_search)(rnn_step, cache3, beam_size=1, n_best=1, alpha=0.0, **RNN_STATIC)
    run_sample = jitted(sample)
    topk1 = run_sample(rnn_step, cache3, key=jax.random.key(1), top_k=1, **RNN_STATIC)
    cold = run_sample(rnn_step, cache3, key=jax.random.key(2), temperature=1e-4, **RNN_STATIC)
    for other in (beam1, topk1, cold):
        assert_same_result(g, other)
    # scores are summed log-probs and log_probs are the unmodified model's
    np.testing.assert_allclose(g.scores, g.log_probs.sum(-1), atol=1e-5)


def test_greedy_matches_numpy_argmax_chain(cache3, rnn_greedy):
    for b in range(3):
        seq = hyp(rnn_greedy, b, 0)
        probs = np_expert_path_probs(cache3, b, seq)
        probs[:, PAD] = 0.0
        assert seq == probs.argmax(-1).tolist()
        assert seq[-1] == EOS or len(seq) == 6


def test_greedy_exits_early_once_every_row_is_done():
    calls = []

    def logged_bigram_step(tokens_B, position, cache):
        jax.debug.callback(lambda p: calls.append(int(p)), position)
        return bigram_step(tokens_B, position, cache)

    kw = dict(batch_size=2, max_len=40, **IDS)
    jax.block_until_ready(jitted(greedy)(logged_bigram_step, None, **kw))
    assert calls == [0, 1]  # "a eos" in both rows: 2 of 40 steps
