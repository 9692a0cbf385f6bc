"""seqjax.decoding.beam_search: exhaustive-search equality, coverage, early exit."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from toy_models import (
    EOS,
    IDS,
    RNN_STATIC,
    A,
    V,
    amateur_step,
    assert_same_result,
    bigram_step,
    brute_force,
    hyp,
    make_rnn_cache,
    np_expert_path_probs,
    rnn_step,
    rnn_step_no_attention,
)

from seqjax.decoding import beam_search, contrastive, jitted

BRUTE_LEN = 4


BRUTE_BEAM = (V - 2) ** (BRUTE_LEN - 1)  # every live prefix fits: the search is exhaustive


@pytest.mark.parametrize(
    "kind, alpha, coverage, use_mask",
    [
        ("gnmt", 0.0, 0.0, False),
        ("gnmt", 0.9, 0.0, False),
        ("hf", 1.0, 0.0, False),
        ("hf", 0.0, 0.0, False),  # same compilation as above (alpha traced)
        ("gnmt", 0.6, 0.5, False),  # coverage; padding found via zero attention
        ("gnmt", 0.6, 0.5, True),  # coverage with an explicit src_mask
    ],
)
def test_beam_matches_brute_force(kind, alpha, coverage, use_mask):
    cache = make_rnn_cache(2, seed=1)
    n_best = 5
    r = jitted(beam_search)(
        rnn_step,
        cache,
        beam_size=BRUTE_BEAM,
        n_best=n_best,
        alpha=alpha,
        coverage=coverage,
        length_penalty=kind,
        src_mask=cache["src_mask"] if use_mask else None,
        max_len=BRUTE_LEN,
        **IDS,
    )
    for b in range(2):
        expected = brute_force(cache, b, BRUTE_LEN, alpha, kind, coverage)[:n_best]
        assert [hyp(r, b, k) for k in range(n_best)] == [seq for _, seq in expected]
        np.testing.assert_allclose(r.scores[b], [s for s, _ in expected], rtol=1e-4)
        # reported log_probs are the model's, whatever the penalties
        for k in range(n_best):
            seq = hyp(r, b, k)
            probs = np_expert_path_probs(cache, b, seq)
            np.testing.assert_allclose(
                r.log_probs[b, k, : len(seq)], np.log(probs[np.arange(len(seq)), seq]), atol=1e-4
            )


def test_beam_early_exit_keeps_exact_result():
    """A beam that stops early (small beam, alpha 0) equals running it to the end."""
    cache = make_rnn_cache(2, seed=2)
    r = jitted(beam_search)(
        rnn_step, cache, beam_size=3, n_best=2, max_len=RNN_STATIC["max_len"], **IDS
    )
    # contrastive beam never exits early; with lambda 0 and alpha 0 it scores the same
    c = jitted(contrastive)(
        rnn_step,
        cache,
        amateur_step,
        make_rnn_cache(2, seed=3),
        beam_size=3,
        n_best=2,
        contrastive_lambda=0.0,
        contrastive_alpha=0.0,
        max_len=RNN_STATIC["max_len"],
        **IDS,
    )
    assert_same_result(r, c)
    assert np.all(np.diff(np.asarray(r.scores), axis=1) <= 0)  # best first


# ------------------------------------------------------------------- coverage by hand

_COV_PROBS = np.array([[0, 0, 0.6, 0.4], [0, 0, 0.5, 0.5], [0, 0, 0.9, 0.1]])


_COV_ATT = np.array([[0.5, 0.2, 0.0], [0.3, 0.7, 0.0], [0.2, 0.1, 0.0]], np.float32)


def position_step(tokens_B, position, cache):
    n = tokens_B.shape[0]
    logits = jnp.log(jnp.asarray(_COV_PROBS, jnp.float32))[position]
    return jnp.tile(logits, (n, 1)), cache, jnp.tile(jnp.asarray(_COV_ATT)[position], (n, 1))


def test_coverage_penalty_matches_hand_computation():
    run = jitted(beam_search)
    kw = dict(batch_size=1, beam_size=2, n_best=2, max_len=3, alpha=0.0, **IDS)
    plain = run(position_step, None, coverage=0.0, **kw)
    # coverage 0: "eos" (log .6) beats "x eos" (log .4 + log .5)
    assert [hyp(plain, 0, 0), hyp(plain, 0, 1)] == [[EOS], [3, EOS]]
    np.testing.assert_allclose(plain.scores[0], [math.log(0.6), math.log(0.2)], rtol=1e-5)
    covered = run(position_step, None, coverage=1.0, **kw)
    # coverage 1 adds sum_i log(min(coverage_i, 1)) over the two real positions:
    #   "x x eos": coverage (1.0, 1.0) -> 0;   log .4 + log .5 + log .9           = -1.7148
    #   "x eos":   coverage (0.8, 0.9) -> log .8 + log .9; log .4 + log .5 + that = -1.9379
    #   "eos":     coverage (0.5, 0.2) -> log .5 + log .2; log .6 + that          = -2.8134
    assert [hyp(covered, 0, 0), hyp(covered, 0, 1)] == [[3, 3, EOS], [3, EOS]]
    np.testing.assert_allclose(covered.scores[0], [-1.7148, -1.9379], atol=1e-4)
    masked = run(position_step, None, coverage=1.0, src_mask=jnp.array([[True, True, False]]), **kw)
    assert_same_result(covered, masked)


def test_coverage_without_attention_is_rejected():
    with pytest.raises(ValueError, match="cross-attention"):
        beam_search(rnn_step_no_attention, make_rnn_cache(1, 0), coverage=0.5, max_len=3, **IDS)


def test_beam_exits_early_once_every_row_is_done():
    calls = []

    def logged_bigram_step(tokens_B, position, cache):
        jax.debug.callback(lambda p: calls.append(int(p)), position)
        return bigram_step(tokens_B, position, cache)

    kw = dict(batch_size=2, max_len=40, **IDS)
    r = jitted(beam_search)(logged_bigram_step, None, beam_size=2, n_best=2, **kw)
    jax.block_until_ready(r)
    assert hyp(r, 0, 0) == [A, EOS] and 2 <= len(calls) < 10, calls
