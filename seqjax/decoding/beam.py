"""Beam search with length and coverage penalties, n-best output and early exit.

Beams are folded into the batch: the cache holds ``N = B * K`` rows, row ``b * K + k``
being beam ``k`` of source ``b``. Each step extends every live beam by every token
(``K * V`` candidates per source):

- candidates ending in EOS (and, at the last position, all candidates) are
  *finished*: scored ``sum / length_penalty(len) + coverage_penalty`` and merged into
  the ``n_best`` finished hypotheses kept per source;
- the ``K`` best other candidates stay *live*, ranked by their raw summed score.

The loop (one ``lax.while_loop``) stops once no live beam can beat the worst kept
finished hypothesis of any source. With non-positive step scores (log-probs) a
live beam's final score is bounded by ``sum / length_penalty(l)`` at the most
favourable reachable length ``l`` plus a coverage penalty of at most 0 (``beta >=
0``), so this stop is exact: results equal an exhaustive search whenever the beam
never prunes the optimum (e.g. ``K >= (V - 1) ** (max_len - 1)``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from seqjax.decoding.batch_tree import gather_rows, infer_batch_size, repeat_rows
from seqjax.decoding.logit_processors import (
    Controls,
    forced_tokens,
    prefix_lengths,
    selection_scores,
)
from seqjax.decoding.penalties import LENGTH_PENALTIES, coverage_penalty, length_penalty
from seqjax.decoding.result import DecodeResult
from seqjax.decoding.step import ScoreFn, StepFn, step_output_shapes
from seqjax.decoding.step_scores import log_prob_scores


class _State(NamedTuple):
    position: jax.Array  # int32[]: index of the token generated next
    live_tokens: jax.Array  # int32[B, K, L]
    live_log_probs: jax.Array  # float32[B, K, L] model log-probs (reported)
    live_scores: jax.Array  # float32[B, K] summed step scores; -inf = empty beam
    live_coverage: jax.Array  # float32[B, K, S] summed cross-attention (S = 0 if unused)
    cache: Any  # N = B * K rows
    done: jax.Array  # bool[B]
    finished_tokens: jax.Array  # int32[B, M, L], M = n_best
    finished_log_probs: jax.Array  # float32[B, M, L]
    finished_scores: jax.Array  # float32[B, M] penalised; -inf = empty slot
    finished_lengths: jax.Array  # int32[B, M]


def _take_beams(x_BxKx: jax.Array, beam_BxJ: jax.Array) -> jax.Array:
    """Per-source gather along the beam axis: ``[B, K, ...] -> [B, J, ...]``."""
    idx = beam_BxJ.reshape(beam_BxJ.shape + (1,) * (x_BxKx.ndim - 2))
    return jnp.take_along_axis(x_BxKx, idx, axis=1)


def reorder_cache(new_cache: Any, old_cache: Any, rows_N: jax.Array) -> Any:
    """``gather_rows(new_cache, rows_N)``, skipping leaves the step passed through.

    ``rows_N`` only permutes rows within each source's block of ``K`` beams, and the
    loop's cache starts as ``K`` identical copies of each source row. A leaf that the
    step function returns unchanged (the very same array, e.g. the encoder memory or
    projected cross-attention keys/values) therefore stays identical within every block
    and the gather would be a no-op copy of it at every step.
    """
    new_leaves, treedef = jax.tree.flatten(new_cache)
    old_leaves, old_treedef = jax.tree.flatten(old_cache)
    if treedef != old_treedef:
        return gather_rows(new_cache, rows_N)
    return jax.tree.unflatten(
        treedef,
        [
            new if new is old else gather_rows(new, rows_N)
            for new, old in zip(new_leaves, old_leaves, strict=True)
        ],
    )


def _set_column(x_BxJxL: jax.Array, value_BxJ: jax.Array, position: jax.Array) -> jax.Array:
    return lax.dynamic_update_index_in_dim(x_BxJxL, value_BxJ, position, axis=2)


def run_beam_loop(
    score_fn: ScoreFn,
    cache: Any,
    *,
    batch_size: int,
    beam_size: int,
    n_best: int,
    max_len: int,
    vocab_size: int,
    source_len: int | None,
    alpha: float | jax.Array,
    length_penalty_kind: str,
    beta: float | jax.Array,
    src_mask_BxS: jax.Array | None,
    monotone: bool,
    bos_id: int | jax.Array,
    eos_id: int | jax.Array,
    pad_id: int | jax.Array,
    prefix_BxP: jax.Array | None,
) -> DecodeResult:
    """The compiled beam loop over a score function (``cache`` has ``B`` rows).

    ``monotone`` (static) says step scores are ``<= 0``, which makes the early-exit
    bound valid; otherwise the loop only stops when every beam is dead.
    """
    B, K, M, L, V = batch_size, beam_size, n_best, max_len, vocab_size
    N = B * K
    S = source_len or 0
    cache = repeat_rows(cache, K)
    prefix_NxP = None if prefix_BxP is None else repeat_rows(prefix_BxP, K)
    forced_len_N = None if prefix_NxP is None else prefix_lengths(prefix_NxP, pad_id)
    valid_BxKxS = None
    if src_mask_BxS is not None and S:
        valid_BxKxS = jnp.broadcast_to(src_mask_BxS[:, None, :], (B, K, S)).astype(bool)
    vocab = jnp.arange(V)

    def penalised(total: jax.Array, length: jax.Array, coverage_BxKxS: jax.Array) -> jax.Array:
        score = total / length_penalty(length, alpha, length_penalty_kind)
        if S:
            score = score + coverage_penalty(coverage_BxKxS, beta, valid_BxKxS)[..., None]
        return score

    def cond(s: _State) -> jax.Array:
        return (s.position < L) & ~jnp.all(s.done)

    def body(s: _State) -> _State:
        t = s.position
        history_NxL = s.live_tokens.reshape(N, L)
        previous = lax.dynamic_index_in_dim(history_NxL, jnp.maximum(t - 1, 0), 1, keepdims=False)
        inputs = jnp.where(t == 0, bos_id, previous).astype(jnp.int32)
        step = score_fn(inputs, t, s.cache, history_NxL)
        forced = None if prefix_NxP is None else forced_tokens(prefix_NxP, forced_len_N, t)
        step_BxKxV = selection_scores((step.scores, step.allowed), forced).reshape(B, K, V)
        totals_BxKxV = s.live_scores[..., None] + step_BxKxV
        coverage = s.live_coverage
        if S:
            coverage = coverage + step.attention.astype(jnp.float32).reshape(B, K, S)
        model_lp_BxKxV = step.model_log_probs.reshape(B, K, V)
        finishing_V = (vocab == eos_id) | (t == L - 1)  # the last position finishes all

        def extend(beam_BxJ, token_BxJ):
            tokens = _set_column(_take_beams(s.live_tokens, beam_BxJ), token_BxJ, t)
            lp = _take_beams(model_lp_BxKxV, beam_BxJ)
            lp = jnp.take_along_axis(lp, token_BxJ[..., None], axis=2)[..., 0]
            return tokens, _set_column(_take_beams(s.live_log_probs, beam_BxJ), lp, t)

        # An EOS extension is only accepted when it ranks among the K best candidates of
        # this step by raw total (as fairseq and HuggingFace do). Accepting every beam's
        # EOS would let a weak model's beam keep an early, barely-likely EOS that the
        # search itself never ranked, and beam 1 would no longer equal greedy.
        # Live: best K candidates that did not finish, ranked by raw totals.
        live = jnp.where(finishing_V, -jnp.inf, totals_BxKxV).reshape(B, K * V)
        live_scores, live_flat = lax.top_k(live, K)
        # The K best of all candidates lie among the K best live ones and the K EOS
        # extensions, so the K-th best total needs a top-k over 2K values, not K * V.
        eos_BxK = jnp.take(totals_BxKxV, jnp.asarray(eos_id, jnp.int32), axis=2)
        kth_B = lax.top_k(jnp.concatenate([live_scores, eos_BxK], axis=1), K)[0][:, K - 1]
        # At the last position every candidate finishes; the n-best merge ranks them.
        ranked_BxKxV = (totals_BxKxV >= kth_B[:, None, None]) | (t == L - 1)

        # Finished: best M new ones (penalised), merged with the M kept so far.
        def finish_any() -> tuple[jax.Array, jax.Array]:  # last position: any token ends
            new_fin = penalised(totals_BxKxV, t + 1, coverage)
            new_fin = jnp.where(finishing_V & ranked_BxKxV, new_fin, -jnp.inf)
            scores, flat = lax.top_k(new_fin.reshape(B, K * V), M)
            return scores, flat

        def finish_eos() -> tuple[jax.Array, jax.Array]:  # otherwise only EOS: K values
            new_fin = penalised(eos_BxK[..., None], t + 1, coverage)[..., 0]
            new_fin = jnp.where(eos_BxK >= kth_B[:, None], new_fin, -jnp.inf)
            scores, beam = lax.top_k(new_fin, M)
            return scores, beam * V + jnp.asarray(eos_id, jnp.int32)

        fin_scores, flat = lax.cond(t == L - 1, finish_any, finish_eos)
        fin_tokens, fin_lp = extend(flat // V, flat % V)
        all_scores = jnp.concatenate([s.finished_scores, fin_scores], axis=1)
        all_scores, keep = lax.top_k(all_scores, M)  # ties keep the older hypothesis
        all_lengths = jnp.concatenate(
            [s.finished_lengths, jnp.where(fin_scores > -jnp.inf, t + 1, 0)], axis=1
        )
        finished_tokens = _take_beams(jnp.concatenate([s.finished_tokens, fin_tokens], 1), keep)
        finished_lp = _take_beams(jnp.concatenate([s.finished_log_probs, fin_lp], 1), keep)
        finished_lengths = jnp.take_along_axis(all_lengths, keep, axis=1)

        beam_BxK = live_flat // V
        live_tokens, live_lp = extend(beam_BxK, live_flat % V)
        rows_N = (jnp.arange(B)[:, None] * K + beam_BxK).reshape(N)

        # Early exit: can any live beam still beat the worst kept finished hypothesis?
        if monotone:
            # sums are <= 0 and lp is monotone in length: the larger end divisor is best
            best_lp = jnp.maximum(
                length_penalty(t + 2, alpha, length_penalty_kind),
                length_penalty(L, alpha, length_penalty_kind),
            )
            bound_B = jnp.max(live_scores / best_lp, axis=1)
        else:
            bound_B = jnp.where(jnp.any(live_scores > -jnp.inf, axis=1), jnp.inf, -jnp.inf)
        return _State(
            position=t + 1,
            live_tokens=live_tokens,
            live_log_probs=live_lp,
            live_scores=live_scores,
            live_coverage=_take_beams(coverage, beam_BxK),
            cache=reorder_cache(step.cache, s.cache, rows_N),
            done=s.done | (all_scores[:, M - 1] >= bound_B),
            finished_tokens=finished_tokens,
            finished_log_probs=finished_lp,
            finished_scores=all_scores,
            finished_lengths=finished_lengths,
        )

    init = _State(
        position=jnp.zeros((), jnp.int32),
        live_tokens=jnp.full((B, K, L), pad_id, jnp.int32),
        live_log_probs=jnp.zeros((B, K, L), jnp.float32),
        # only beam 0 starts alive, so the K copies of a source do not all expand alike
        live_scores=jnp.tile(jnp.array([0.0] + [-jnp.inf] * (K - 1), jnp.float32), (B, 1)),
        live_coverage=jnp.zeros((B, K, S), jnp.float32),
        cache=cache,
        done=jnp.zeros((B,), bool),
        finished_tokens=jnp.full((B, M, L), pad_id, jnp.int32),
        finished_log_probs=jnp.zeros((B, M, L), jnp.float32),
        finished_scores=jnp.full((B, M), -jnp.inf, jnp.float32),
        finished_lengths=jnp.zeros((B, M), jnp.int32),
    )
    s = lax.while_loop(cond, body, init)
    return DecodeResult(
        tokens=s.finished_tokens,
        lengths=s.finished_lengths,
        scores=s.finished_scores,
        log_probs=s.finished_log_probs,
    )


def check_beam_args(beam_size: int, n_best: int, length_penalty_kind: str) -> None:
    if beam_size < 1 or n_best < 1:
        raise ValueError(f"beam_size and n_best must be >= 1, got {beam_size}, {n_best}")
    if n_best > beam_size:
        raise ValueError(f"n_best ({n_best}) cannot exceed beam_size ({beam_size})")
    if length_penalty_kind not in LENGTH_PENALTIES:
        raise ValueError(
            f"length_penalty: unknown {length_penalty_kind!r}; use one of {LENGTH_PENALTIES}"
        )


def coverage_source_len(source_len: int | None, beta: float | jax.Array) -> int | None:
    """Source length to track coverage for; rejects a concrete ``beta != 0`` without attention."""
    if source_len is None and isinstance(beta, int | float) and beta != 0:
        raise ValueError("coverage penalty (beta != 0) needs a step_fn returning cross-attention")
    return source_len


def beam_search(
    step_fn: StepFn,
    cache: Any,
    *,
    max_len: int,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    beam_size: int = 4,
    n_best: int = 1,
    alpha: float | jax.Array = 0.0,
    length_penalty: str = "gnmt",
    beta: float | jax.Array = 0.0,
    src_mask: jax.Array | None = None,
    min_len: int | jax.Array = 0,
    no_repeat_ngram_size: int = 0,
    repetition_penalty: float | jax.Array = 1.0,
    prefix: jax.Array | None = None,
    batch_size: int | None = None,
) -> DecodeResult:
    """Beam search; returns the ``n_best`` finished hypotheses per source, best first.

    Ranking score of a finished hypothesis of ``len`` tokens (EOS included)::

        sum_t step_score_t / lp(len) + beta * sum_i log(min(sum_t attn_ti, 1))

    with ``lp = ((5 + len) / 6) ** alpha`` (``length_penalty="gnmt"``) or
    ``len ** alpha`` (``"hf"``). Step scores are log-probs after the repetition
    penalty. The coverage term (GNMT, Wu et al. 2016) needs ``step_fn`` to return
    cross-attention ``[B, S]``; it runs over source positions in ``src_mask [B, S]``,
    or over positions that received any attention when ``src_mask`` is None (padding
    gets exactly 0). Hypotheses still running at ``max_len`` finish there. Slots
    with no hypothesis (tiny search spaces) have score ``-inf`` and length 0.

    Static: ``step_fn``, ``max_len``, ``beam_size``, ``n_best``, ``length_penalty``,
    ``no_repeat_ngram_size``, ``batch_size``, the token ids. Traced (change freely,
    no recompile): ``alpha``, ``beta``, ``min_len``, ``repetition_penalty`` and the
    arrays ``cache``, ``src_mask``, ``prefix``.

    Example (a 1-token vocabulary model plus EOS)::

        >>> import jax, jax.numpy as jnp
        >>> logp_V = jnp.log(jnp.array([0.0, 0.7, 0.3]))  # pad, EOS, token 2
        >>> step = lambda tok, pos, c: (jnp.tile(logp_V, (tok.shape[0], 1)), c)
        >>> r = beam_search(step, None, batch_size=1, max_len=3, bos_id=0, eos_id=1,
        ...                 pad_id=0, beam_size=2, n_best=2)
        >>> r.tokens[0].tolist(), r.lengths[0].tolist()
        ([[1, 0, 0], [2, 1, 0]], [1, 2])
    """
    check_beam_args(beam_size, n_best, length_penalty)
    B = infer_batch_size(cache, batch_size)
    vocab_size, source_len = step_output_shapes(step_fn, B, cache)
    controls = Controls(eos_id, pad_id, min_len, repetition_penalty, no_repeat_ngram_size)
    return run_beam_loop(
        log_prob_scores(step_fn, controls),
        cache,
        batch_size=B,
        beam_size=beam_size,
        n_best=n_best,
        max_len=max_len,
        vocab_size=vocab_size,
        source_len=coverage_source_len(source_len, beta),
        alpha=alpha,
        length_penalty_kind=length_penalty,
        beta=beta,
        src_mask_BxS=src_mask,
        monotone=True,
        bos_id=bos_id,
        eos_id=eos_id,
        pad_id=pad_id,
        prefix_BxP=prefix,
    )
