"""Unit tests of the pure per-step pieces of seqjax.decoding, against NumPy references."""

from __future__ import annotations

import doctest
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.decoding.batch_tree import gather_rows, infer_batch_size, repeat_rows
from seqjax.decoding.logit_processors import (
    Controls,
    banned_tokens,
    forced_tokens,
    ngram_banned,
    prefix_lengths,
    repetition_penalty,
    selection_scores,
    truncation_allowed,
)
from seqjax.decoding.penalties import coverage_penalty, length_penalty
from seqjax.decoding.scoring import target_mask


def np_ngram_banned(history: list[int], n: int, vocab: int) -> set[int]:
    if len(history) < n:
        return set()
    suffix = tuple(history[len(history) - n + 1 :]) if n > 1 else ()
    return {
        history[j + n - 1]
        for j in range(len(history) - n + 1)
        if tuple(history[j : j + n - 1]) == suffix
    }


@pytest.mark.parametrize("n", [1, 2, 3])
def test_ngram_banned_matches_reference(n):
    rng = np.random.default_rng(n)
    L, vocab = 9, 4
    history = rng.integers(0, vocab, size=(6, L))
    for length in range(L + 1):
        got = np.asarray(ngram_banned(jnp.asarray(history), length, n, vocab))
        for row in range(6):
            expected = np_ngram_banned(history[row, :length].tolist(), n, vocab)
            assert set(np.flatnonzero(got[row])) == expected, (row, length)


def test_repetition_penalty_ctrl_rule():
    logits = jnp.array([[2.0, -2.0, 1.0, -1.0]])
    history = jnp.array([[0, 1, 2, 0]])  # only the first 2 entries count
    out = np.asarray(repetition_penalty(logits, history, 2, 4.0))
    np.testing.assert_allclose(out, [[0.5, -8.0, 1.0, -1.0]])
    np.testing.assert_array_equal(repetition_penalty(logits, history, 4, 1.0), logits)


def test_banned_tokens_pad_eos_and_stuck_rows():
    c = Controls(eos_id=2, pad_id=0, min_len=2, no_repeat_ngram_size=1)
    history = jnp.array([[3, 1, 0, 0], [3, 1, 0, 0]])
    ban = np.asarray(banned_tokens(history, 1, 4, c))
    assert ban[0].tolist() == [True, False, True, True]  # pad, eos (< min_len), seen 3
    # every token banned (pad, seen 1 and 3, eos before min_len): EOS comes back
    ban = np.asarray(banned_tokens(history, 2, 4, c._replace(min_len=5)))
    assert ban[0].tolist() == [True, True, False, True]
    # pad doubling as eos is never banned as pad
    ban = np.asarray(banned_tokens(history, 2, 4, Controls(eos_id=0, pad_id=0)))
    assert not ban.any()


def np_nucleus(logits: np.ndarray, top_p: float) -> np.ndarray:
    p = np.exp(logits - logits.max())
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    keep = np.zeros(len(p), bool)
    mass = 0.0
    for i in order:
        keep[i] = True
        mass += p[i]
        if mass >= top_p:
            break
    return keep


def top_k_reference(logits_NxV: jax.Array, top_k: int) -> jax.Array:
    """Top-k alone: logits at least the k-th highest (``top_k <= 0`` keeps all)."""
    vocab_size = logits_NxV.shape[-1]
    k = vocab_size if top_k <= 0 else min(top_k, vocab_size)
    threshold_N1 = -jnp.sort(-logits_NxV, axis=-1)[:, k - 1 : k]
    return logits_NxV >= threshold_N1


def top_p_reference(logits_NxV: jax.Array, top_p: float) -> jax.Array:
    """Top-p alone, by probability thresholds (ties with the last kept one kept)."""
    probs = jax.nn.softmax(logits_NxV, axis=-1)
    sorted_desc = -jnp.sort(-probs, axis=-1)
    mass_above = jnp.cumsum(sorted_desc, axis=-1) - sorted_desc
    keep_sorted = (mass_above < top_p) | (top_p >= 1.0)
    num_kept = jnp.sum(keep_sorted, axis=-1, keepdims=True)
    threshold_N1 = jnp.take_along_axis(sorted_desc, num_kept - 1, axis=-1)
    return probs >= threshold_N1


def test_top_k_and_top_p_match_reference():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(20, 7)).astype(np.float32) * 2
    for k in range(0, 9):
        got = np.asarray(truncation_allowed(jnp.asarray(logits), k, 1.0))
        np.testing.assert_array_equal(np.asarray(top_k_reference(jnp.asarray(logits), k)), got)
        kk = 7 if k == 0 else min(k, 7)
        expected = logits >= np.sort(logits, axis=-1)[:, ::-1][:, kk - 1 : kk]
        np.testing.assert_array_equal(got, expected)
    for top_p in (0.05, 0.3, 0.5, 0.9, 0.999, 1.0):
        got = np.asarray(truncation_allowed(jnp.asarray(logits), 0, top_p))
        np.testing.assert_array_equal(np.asarray(top_p_reference(jnp.asarray(logits), top_p)), got)
        expected = np.stack([np_nucleus(row.astype(np.float64), top_p) for row in logits])
        if top_p == 1.0:
            expected[:] = True
        np.testing.assert_array_equal(got, expected, err_msg=str(top_p))
    # banned (-inf) tokens are dropped by any real truncation
    masked = jnp.asarray(logits).at[:, :3].set(-jnp.inf)
    assert not np.asarray(truncation_allowed(masked, 0, 0.9)[:, :3]).any()
    assert not np.asarray(truncation_allowed(masked, 2, 1.0)[:, :3]).any()


def test_one_sort_truncation_equals_top_k_then_top_p():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(16, 9)).astype(np.float32) * 2
    logits[:4, :3] = logits[:4, 3:4]  # ties at the thresholds
    logits[4:6, :2] = -np.inf  # banned tokens
    x = jnp.asarray(logits)
    fn = jax.jit(truncation_allowed)  # k and p traced: one compilation for all
    for k in (0, 1, 2, 4, 9, 12):
        for top_p in (0.1, 0.5, 0.8, 1.0):
            by_k = top_k_reference(x, k)
            expected = by_k & top_p_reference(jnp.where(by_k, x, -jnp.inf), top_p)
            got = fn(x, k, top_p)
            np.testing.assert_array_equal(np.asarray(got), np.asarray(expected), f"k={k} p={top_p}")
    assert fn._cache_size() == 1
    assert np.asarray(truncation_allowed(x, 0, 1.0)).all()  # both off: nothing dropped


def test_forced_prefix_selection():
    prefix = jnp.array([[5, 6, 0], [7, 0, 0]])
    lens = prefix_lengths(prefix, 0)
    assert lens.tolist() == [2, 1]
    is_forced, tok = forced_tokens(prefix, lens, 1)
    assert is_forced.tolist() == [True, False] and int(tok[0]) == 6
    scores = jnp.zeros((2, 8))
    allowed = jnp.ones((2, 8), bool).at[:, 6].set(False)  # a ban the force overrides
    out = np.asarray(selection_scores((scores, allowed), (is_forced, tok)))
    assert np.isfinite(out[0]).tolist() == [i == 6 for i in range(8)]
    assert np.isfinite(out[1]).sum() == 7


def test_length_and_coverage_penalties():
    lengths = jnp.arange(1, 6)
    np.testing.assert_allclose(length_penalty(lengths, 0.7, "gnmt"), ((5 + lengths) / 6) ** 0.7)
    np.testing.assert_allclose(length_penalty(lengths, 1.3, "hf"), lengths**1.3, rtol=1e-6)
    np.testing.assert_allclose(length_penalty(lengths, 0.0, "hf"), 1.0)
    with pytest.raises(ValueError):
        length_penalty(lengths, 1.0, "fairseq")
    cov = jnp.array([[0.25, 3.0, 0.0], [0.5, 0.5, 0.5]])
    np.testing.assert_allclose(coverage_penalty(cov, 2.0), [2 * np.log(0.25), 6 * np.log(0.5)])
    mask = jnp.array([[True, True, False], [True, False, False]])
    np.testing.assert_allclose(coverage_penalty(cov, 1.0, mask), [np.log(0.25), np.log(0.5)])
    assert float(coverage_penalty(cov, 0.0, jnp.ones((2, 3), bool))[0]) == 0.0  # no NaN


def test_batch_tree_helpers():
    tree = {"a": jnp.arange(6).reshape(3, 2), "step": jnp.array(4)}
    assert infer_batch_size(tree) == 3
    rep = repeat_rows(tree, 2)
    assert rep["a"][:, 0].tolist() == [0, 0, 2, 2, 4, 4] and int(rep["step"]) == 4
    assert gather_rows(tree, jnp.array([2, 0]))["a"][:, 0].tolist() == [4, 0]
    with pytest.raises(ValueError, match="batch_size"):
        infer_batch_size(None)


def test_target_mask_stops_after_first_eos():
    t = jnp.array([[4, 3, 3, 0], [4, 4, 4, 4]])
    assert target_mask(t, 3, 0).tolist() == [[True, True, False, False], [True] * 4]


@pytest.mark.parametrize(
    "module",
    [
        "batch_tree",
        "logit_processors",
        "penalties",
        "greedy_search",
        "sampling",
        "beam",
        "contrastive_search",
        "scoring",
    ],
)
def test_docstring_examples(module):
    mod = importlib.import_module(f"seqjax.decoding.{module}")
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    result = doctest.testmod(mod, optionflags=flags)
    assert result.failed == 0 and result.attempted > 0
