"""Jittable sentence BLEU against sacrebleu.sentence_bleu on token ids."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sacrebleu

from seqjax.metrics import sentence_bleu

PAD, EOS = 0, 3
L = 12  # padded row width


def _reference_bleu(hyp: list[int], ref: list[int], smoothing: str, effective: bool) -> float:
    return sacrebleu.sentence_bleu(
        " ".join(map(str, hyp)),
        [" ".join(map(str, ref))],
        tokenize="none",
        smooth_method=smoothing,
        use_effective_order=effective,
    ).score


def _row(tokens: list[int], eos: bool = True) -> list[int]:
    row = list(tokens) + ([EOS] if eos else [])
    return row + [PAD] * (L - len(row))


def _cases() -> list[tuple[list[int], list[int]]]:
    fixed = [
        ([], [5, 6, 7]),  # empty hypothesis
        ([5, 6, 7], []),  # empty reference
        ([], []),
        ([5], [5]),  # shorter than max_order
        ([5, 6], [5, 6, 7, 8]),
        ([5, 6, 7], [5, 6, 7]),
        ([5, 6, 7, 8, 9], [5, 6, 7, 8, 9]),  # identical
        ([5, 6, 7, 8], [9, 10, 11, 12]),  # no overlap
        ([5, 5, 5, 5, 5, 5], [5, 5, 6]),  # repeated n-grams: clipping
        ([5, 6, 5, 6, 5, 6], [5, 6, 5, 6]),
        ([5, 6, 7, 8, 9, 10, 11], [5, 6, 9, 10, 7, 8, 11]),  # unigram-only and bigram matches
        ([8, 7, 6, 5], [5, 6, 7, 8]),
        ([5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15], [6, 7]),  # long hypothesis
    ]
    rng = np.random.default_rng(0)
    rand = []
    for _ in range(40):
        hl, rl = rng.integers(0, L, 2)
        vocab = int(rng.integers(5, 9))  # a small vocabulary makes matches likely
        rand.append(
            (rng.integers(4, 4 + vocab, hl).tolist(), rng.integers(4, 4 + vocab, rl).tolist())
        )
    return fixed + rand


@functools.cache
def _jitted(smoothing: str, effective: bool):
    return jax.jit(
        functools.partial(
            sentence_bleu,
            pad_id=PAD,
            eos_id=EOS,
            smoothing=smoothing,
            effective_order=effective,
        )
    )


@pytest.mark.parametrize("effective", [True, False])
@pytest.mark.parametrize("smoothing", ["exp", "floor", "add-k", "none"])
def test_matches_sacrebleu(smoothing, effective):
    cases = _cases()
    hyp = jnp.asarray([_row(h) for h, _ in cases], jnp.int32)
    # references without EOS (pad only) and of a different width than the hypotheses
    ref = jnp.asarray([_row(r, eos=False) + [PAD] * 3 for _, r in cases], jnp.int32)
    got = np.asarray(_jitted(smoothing, effective)(hyp, ref)) * 100
    want = np.array([_reference_bleu(h, r, smoothing, effective) for h, r in cases])
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_sentence_ends_at_first_pad_or_eos():
    hyp = jnp.asarray([[5, 6, 7, EOS, 5, 6, 7], [5, 6, 7, PAD, 9, 9, 9]], jnp.int32)
    ref = jnp.asarray([[5, 6, 7, EOS, PAD, PAD, PAD]] * 2, jnp.int32)
    np.testing.assert_allclose(sentence_bleu(hyp, ref, pad_id=PAD, eos_id=EOS), [1.0, 1.0])
    # without eos_id, EOS is an ordinary token: the first row then has 7 tokens
    no_eos = sentence_bleu(hyp, ref, pad_id=PAD)
    want = _reference_bleu([5, 6, 7, EOS, 5, 6, 7], [5, 6, 7, EOS], "exp", True)
    np.testing.assert_allclose(float(no_eos[0]) * 100, want, atol=1e-4)


def test_vmaps_over_candidates():
    hyp_BxKxL = jnp.asarray([[_row([5, 6, 7]), _row([5, 6])]], jnp.int32)
    ref_BxL = jnp.asarray([_row([5, 6, 7])], jnp.int32)
    per_candidate = jax.vmap(
        lambda h, r: sentence_bleu(h, jnp.broadcast_to(r, h.shape), pad_id=PAD, eos_id=EOS)
    )(hyp_BxKxL, ref_BxL)
    want = [_reference_bleu([5, 6, 7], [5, 6, 7], "exp", True) / 100]
    want.append(_reference_bleu([5, 6], [5, 6, 7], "exp", True) / 100)
    np.testing.assert_allclose(per_candidate[0], want, atol=1e-6)
