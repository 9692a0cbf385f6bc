"""seqjax.decoding.contrastive: plausible set, lambda 0 = the expert."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from toy_models import (
    PAD,
    RNN_STATIC,
    amateur_step,
    assert_same_result,
    hyp,
    make_rnn_cache,
    np_expert_path_probs,
    rnn_step,
)

from seqjax.decoding import beam_search, contrastive, jitted


@pytest.mark.parametrize("beam_size", [1, 3])
def test_contrastive_stays_in_plausible_set(cache3, beam_size):
    alpha = 0.1
    r = jitted(contrastive)(
        rnn_step,
        cache3,
        amateur_step,
        make_rnn_cache(3, seed=9),
        beam_size=beam_size,
        n_best=beam_size,
        contrastive_lambda=1.0,
        contrastive_alpha=alpha,
        **RNN_STATIC,
    )
    checked = 0
    for b, k in itertools.product(range(3), range(beam_size)):
        seq = hyp(r, b, k)
        probs = np_expert_path_probs(cache3, b, seq)
        probs[:, PAD] = 0.0  # PAD is banned, so it is not in the max
        chosen = probs[np.arange(len(seq)), seq]
        assert np.all(chosen >= alpha * probs.max(-1) - 1e-6), (b, k, seq)
        np.testing.assert_allclose(r.log_probs[b, k, : len(seq)], np.log(chosen), atol=1e-4)
        checked += len(seq)
    assert checked > 0


def test_contrastive_lambda0_equals_expert(cache3, rnn_greedy):
    amateur_cache = make_rnn_cache(3, seed=9)
    run = jitted(contrastive)
    g = run(
        rnn_step,
        cache3,
        amateur_step,
        amateur_cache,
        beam_size=1,
        n_best=1,
        contrastive_lambda=0.0,
        contrastive_alpha=0.1,
        **RNN_STATIC,
    )
    assert_same_result(g, rnn_greedy)
    beam = run(
        rnn_step,
        cache3,
        amateur_step,
        amateur_cache,
        beam_size=3,
        n_best=3,
        contrastive_lambda=0.0,
        contrastive_alpha=0.0,
        **RNN_STATIC,
    )
    expert_beam = jitted(beam_search)(rnn_step, cache3, beam_size=3, n_best=3, **RNN_STATIC)
    assert_same_result(beam, expert_beam)
    # and lambda > 0 does change the greedy choice somewhere
    steered = run(
        rnn_step,
        cache3,
        amateur_step,
        amateur_cache,
        beam_size=1,
        n_best=1,
        contrastive_lambda=1.0,
        contrastive_alpha=0.1,
        **RNN_STATIC,
    )
    assert not np.array_equal(steered.tokens, g.tokens)
