"""seqjax.decoding.logit_processors against NumPy references."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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


def test_hf_convention_start_token_history_forced_eos_and_log_prob_penalty():
    import jax
    import jax.numpy as jnp

    from seqjax.decoding.logit_processors import make_controls, process_logits

    logits = jnp.array([[0.5, 1.0, 2.0, -1.0, 0.0]])
    history = jnp.array([[3, 0, 0]], jnp.int32)
    hf = make_controls(
        eos_id=2, pad_id=0, bos_id=2, max_len=3, no_repeat_ngram_size=1,
        convention="hf", forced_eos=True,
    )  # fmt: skip
    # position 0: the start token (here EOS, as in BART) counts as generated
    assert process_logits(logits, history, 0, hf)[2][0].tolist() == [
        True, False, True, False, False
    ]  # fmt: skip
    own = hf._replace(start_id=None)
    assert not process_logits(logits, history, 0, own)[2][0, 2]
    # the last position: only EOS, with processed log-prob 0 (beats the n-gram ban)
    _, lp, banned = process_logits(logits, history, 2, hf)
    assert banned[0].tolist() == [True, True, False, True, True] and lp[0, 2] == 0.0
    # beam under hf: the penalty multiplies the (negative) log-probs, no renormalisation
    beam = make_controls(
        eos_id=2, pad_id=0, bos_id=2, max_len=9, repetition_penalty=2.0,
        convention="hf", beam=True,
    )  # fmt: skip
    model_lp, lp, _ = process_logits(logits, history, 1, beam)
    expected = model_lp.at[0, jnp.array([2, 3])].multiply(2.0)
    assert jnp.allclose(lp, expected)
    assert not jnp.allclose(jax.nn.logsumexp(lp), 0.0)
