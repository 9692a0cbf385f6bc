"""The ``StepFn`` contract from the user's side: a cache-less bigram table, written as a
user would, works with every decoder."""

from __future__ import annotations

import itertools

import jax
import numpy as np
from toy_models import (
    BIGRAM_LOGP,
    BIGRAM_STATIC,
    BOS,
    EOS,
    IDS,
    PAD,
    A,
    amateur_bigram_step,
    bigram_path_logp,
    bigram_step,
    hyp,
    np_length_penalty,
)

from seqjax.decoding import beam_search, contrastive, greedy, jitted, sample, score


def test_bigram_step_fn_works_with_every_decoder():
    greedy_r = jitted(greedy)(bigram_step, None, **BIGRAM_STATIC)
    assert [hyp(greedy_r, b, 0) for b in range(2)] == [[A, EOS]] * 2
    np.testing.assert_allclose(greedy_r.log_probs[0, 0, :2], bigram_path_logp([A, EOS]), atol=1e-6)

    beam_r = jitted(beam_search)(
        bigram_step, None, beam_size=4, n_best=3, alpha=0.6, **BIGRAM_STATIC
    )
    assert hyp(beam_r, 0, 0) == [A, EOS]
    for k in range(3):
        seq = hyp(beam_r, 0, k)
        assert seq[-1] == EOS or len(seq) == 6
        expected = bigram_path_logp(seq).sum() / np_length_penalty(len(seq), 0.6, "gnmt")
        np.testing.assert_allclose(beam_r.scores[0, k], expected, rtol=1e-5)
    assert np.all(np.diff(np.asarray(beam_r.scores[0])) <= 0)

    sample_r = jitted(sample)(
        bigram_step, None, key=jax.random.key(0), num_samples=8, **BIGRAM_STATIC
    )
    for b, k in itertools.product(range(2), range(8)):
        seq = hyp(sample_r, b, k)
        assert PAD not in seq and (seq[-1] == EOS or len(seq) == 6)
        np.testing.assert_allclose(
            sample_r.log_probs[b, k, : len(seq)], bigram_path_logp(seq), atol=1e-5
        )

    for beam_size in (1, 3):
        con = jitted(contrastive)(
            bigram_step,
            None,
            amateur_bigram_step,
            None,
            beam_size=beam_size,
            n_best=1,
            contrastive_lambda=0.5,
            contrastive_alpha=0.1,
            **BIGRAM_STATIC,
        )
        seq = hyp(con, 0, 0)
        probs = np.exp(BIGRAM_LOGP[[BOS] + seq[:-1]])
        probs[:, PAD] = 0
        assert np.all(probs[np.arange(len(seq)), seq] >= 0.1 * probs.max(-1))

    lp, total = jitted(score)(bigram_step, None, greedy_r.tokens[:, 0], **IDS)
    np.testing.assert_allclose(total, greedy_r.scores[:, 0], atol=1e-6)
