"""Jittable sentence BLEU on token ids, matching ``sacrebleu.sentence_bleu`` (for MRT).

Everything has fixed shapes, so the function runs inside ``jit``/``vmap`` next to a
sampler with no host round-trip. Clipped n-gram counts come from comparing all
n-gram windows pairwise (``[L, L]`` hypothesis-hypothesis and ``[L, M]``
hypothesis-reference match tables per order), which is O(L * (L + M)) per order and
sentence: cheap for ``L <= 128``.

A sentence is the prefix of a row before its first PAD (or EOS, when ``eos_id`` is
given); the EOS itself is not scored. Token ids stand for words, so the result equals
``sacrebleu.sentence_bleu(" ".join(map(str, hyp)), [" ".join(map(str, ref))],
tokenize="none", smooth_method=...) .score / 100``.

What is matched of sacrebleu 2.x (``BLEU.compute_bleu`` with its sentence-level
default ``use_effective_order=True``):

- a hypothesis with no matching unigram scores 0, whatever the smoothing;
- orders are visited from 1 up and the walk stops at the first order with no
  hypothesis n-gram (``total == 0``); with effective order the geometric mean runs
  over the visited orders only (``min(hyp_len, max_order)`` of them; ``max_order``
  with add-k, whose totals are never 0). Note that, despite its name, an order that
  *is* visited but has no match still counts (and is smoothed, or zeroes the score
  under ``"none"``);
- ``"exp"``: the i-th visited order without matches gets precision ``1 / (2**i *
  total)``; ``"floor"``: ``smooth_value / total`` (default 0.1); ``"add-k"``: orders
  >= 2 add ``smooth_value`` (default 1) to matches and totals; ``"none"``: a zero
  precision makes the score 0;
- brevity penalty ``exp(1 - ref_len / hyp_len)`` when ``hyp_len < ref_len`` (0 for an
  empty hypothesis).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

SMOOTHINGS = ("exp", "floor", "add-k", "none")
_DEFAULT_SMOOTH_VALUE = {"floor": 0.1, "add-k": 1.0}


def sentence_lengths(tokens_BxL: jax.Array, pad_id: int, eos_id: int | None = None) -> jax.Array:
    """``int32[B]``: tokens before the first PAD (or EOS when ``eos_id`` is given).

    >>> sentence_lengths(jnp.array([[5, 6, 3, 0], [0, 7, 0, 0]]), pad_id=0, eos_id=3).tolist()
    [2, 0]
    """
    stop = tokens_BxL == pad_id
    if eos_id is not None:
        stop = stop | (tokens_BxL == eos_id)
    return jnp.sum(jnp.cumsum(stop, axis=1) == 0, axis=1).astype(jnp.int32)


def _shift(x_BxLxM: jax.Array, k: int) -> jax.Array:
    """``out[:, i, j] = x[:, i + k, j + k]`` (False past the end)."""
    if k == 0:
        return x_BxLxM
    return jnp.pad(x_BxLxM[:, k:, k:], ((0, 0), (0, k), (0, k)))


def ngram_statistics(
    hyp_BxL: jax.Array,
    ref_BxM: jax.Array,
    hyp_len_B: jax.Array,
    ref_len_B: jax.Array,
    max_order: int = 4,
) -> tuple[jax.Array, jax.Array]:
    """Clipped n-gram matches and hypothesis n-gram totals, both ``int32[B, max_order]``.

    ``correct[b, n-1] = sum_g min(count_hyp(g), count_ref(g))`` over the distinct
    n-grams ``g`` of the hypothesis. Each distinct n-gram is counted once, at its first
    occurrence in the hypothesis, so the sums are exact integers.

    >>> c, t = ngram_statistics(jnp.array([[7, 7, 7]]), jnp.array([[7, 8, 7]]),
    ...                         jnp.array([3]), jnp.array([3]), max_order=2)
    >>> c.tolist(), t.tolist()  # unigram 7: min(3, 2); bigram (7, 7) absent from ref
    ([[2, 0]], [[3, 2]])
    """
    L, M = hyp_BxL.shape[1], ref_BxM.shape[1]
    hh_eq = hyp_BxL[:, :, None] == hyp_BxL[:, None, :]  # [B, L, L]
    hr_eq = hyp_BxL[:, :, None] == ref_BxM[:, None, :]  # [B, L, M]
    hh_match, hr_match = hh_eq, hr_eq
    earlier_LxL = jnp.tril(jnp.ones((L, L), bool), k=-1)  # [i, i']: i' < i
    correct, total = [], []
    for n in range(1, max_order + 1):
        if n > 1:  # window i matches window j iff the (n-1)-grams and the n-th tokens match
            hh_match = hh_match & _shift(hh_eq, n - 1)
            hr_match = hr_match & _shift(hr_eq, n - 1)
        hyp_ok_BxL = jnp.arange(L)[None] + n <= hyp_len_B[:, None]
        ref_ok_BxM = jnp.arange(M)[None] + n <= ref_len_B[:, None]
        hh = hh_match & hyp_ok_BxL[:, :, None] & hyp_ok_BxL[:, None, :]
        count_hyp_BxL = jnp.sum(hh, axis=2)
        count_ref_BxL = jnp.sum(hr_match & ref_ok_BxM[:, None, :], axis=2)
        first_BxL = hyp_ok_BxL & ~jnp.any(hh & earlier_LxL[None], axis=2)
        clipped = jnp.minimum(count_hyp_BxL, count_ref_BxL) * first_BxL
        correct.append(jnp.sum(clipped, axis=1))
        total.append(jnp.maximum(hyp_len_B - n + 1, 0))
    return jnp.stack(correct, 1).astype(jnp.int32), jnp.stack(total, 1).astype(jnp.int32)


def bleu_from_statistics(
    correct_BxN: jax.Array,
    total_BxN: jax.Array,
    hyp_len_B: jax.Array,
    ref_len_B: jax.Array,
    *,
    smoothing: str = "exp",
    smooth_value: float | None = None,
    effective_order: bool = True,
) -> jax.Array:
    """Sentence BLEU in ``[0, 1]`` from n-gram statistics (sacrebleu's rules, see module doc).

    >>> bleu_from_statistics(jnp.array([[3, 1, 0, 0]]), jnp.array([[3, 2, 1, 0]]),
    ...                      jnp.array([3]), jnp.array([3])).tolist()  # (1 * 1/2 * 1/2)^(1/3)
    [0.6299605369567871]
    """
    if smoothing not in SMOOTHINGS:
        raise ValueError(f"smoothing: unknown {smoothing!r}; use one of {SMOOTHINGS}")
    k = _DEFAULT_SMOOTH_VALUE.get(smoothing, 0.0) if smooth_value is None else smooth_value
    max_order = correct_BxN.shape[1]
    correct = correct_BxN.astype(jnp.float32)
    total = total_BxN.astype(jnp.float32)
    if smoothing == "add-k":
        correct = correct.at[:, 1:].add(k)
        total = total.at[:, 1:].add(k)
    visited_BxN = jnp.cumprod(total > 0, axis=1).astype(bool)  # the walk stops at total == 0
    zero_BxN = (correct == 0) & visited_BxN
    safe_total = jnp.maximum(total, 1.0)
    log_p = jnp.log(jnp.maximum(correct, 1e-30)) - jnp.log(safe_total)
    if smoothing == "exp":
        # the i-th visited order without matches: 1 / (2**i * total)
        halvings = jnp.cumsum(zero_BxN, axis=1).astype(jnp.float32)
        log_p = jnp.where(zero_BxN, -halvings * jnp.log(2.0) - jnp.log(safe_total), log_p)
    elif smoothing == "floor":
        log_p = jnp.where(zero_BxN, jnp.log(k) - jnp.log(safe_total), log_p)
    # A zero precision ("none", add-k with k = 0, or an unvisited order without effective
    # order) is sacrebleu's log floor of -1e10: the score underflows to exactly 0.
    zero_precision = (correct == 0) & (smoothing in ("none", "add-k"))
    if effective_order:
        n_orders = jnp.maximum(jnp.sum(visited_BxN, axis=1), 1)
        used_BxN = visited_BxN
    else:
        n_orders = jnp.full(hyp_len_B.shape, max_order)
        used_BxN = jnp.ones_like(visited_BxN)
        zero_precision = zero_precision | ~visited_BxN
    log_p = jnp.where(used_BxN, log_p, 0.0)
    geo = jnp.exp(jnp.sum(log_p, axis=1) / n_orders)
    hyp = hyp_len_B.astype(jnp.float32)
    ref = ref_len_B.astype(jnp.float32)
    bp = jnp.where(hyp < ref, jnp.exp(1.0 - ref / jnp.maximum(hyp, 1.0)), 1.0)
    bp = jnp.where(hyp > 0, bp, 0.0)
    dead = (correct_BxN[:, 0] == 0) | jnp.any(zero_precision & used_BxN, axis=1)
    return jnp.where(dead, 0.0, bp * geo)


def sentence_bleu(
    hyp_BxL: jax.Array,
    ref_BxM: jax.Array,
    *,
    pad_id: int,
    eos_id: int | None = None,
    max_order: int = 4,
    smoothing: str = "exp",
    smooth_value: float | None = None,
    effective_order: bool = True,
) -> jax.Array:
    """Per-row sentence BLEU ``float32[B]`` in ``[0, 1]`` (sacrebleu's score / 100).

    Rows are token ids; a sentence ends at its first PAD (or EOS when ``eos_id`` is
    given), so decoder output (EOS then PAD) and ``tgt_out`` rows can be passed as
    they are. ``L`` and ``M`` may differ. Static: ``max_order``, ``smoothing``,
    ``effective_order``, the ids.

    Example::

        >>> hyp = jnp.array([[5, 6, 7, 8, 3, 0], [5, 6, 7, 3, 0, 0]])
        >>> ref = jnp.array([[5, 6, 7, 8, 3, 0], [9, 6, 7, 8, 3, 0]])
        >>> [round(x, 4) for x in sentence_bleu(hyp, ref, pad_id=0, eos_id=3).tolist()]
        [1.0, 0.3943]

    The second row: precisions 2/3, 1/2 and (exp smoothing) 1/(2*1) over the 3 orders
    a 3-token hypothesis has: ``(1/6)**(1/3) = 0.5503`` times the brevity penalty
    ``exp(1 - 4/3) = 0.7165``.
    """
    hyp_len = sentence_lengths(hyp_BxL, pad_id, eos_id)
    ref_len = sentence_lengths(ref_BxM, pad_id, eos_id)
    correct, total = ngram_statistics(hyp_BxL, ref_BxM, hyp_len, ref_len, max_order)
    return bleu_from_statistics(
        correct,
        total,
        hyp_len,
        ref_len,
        smoothing=smoothing,
        smooth_value=smooth_value,
        effective_order=effective_order,
    )
