"""The compiled beam loop behind beam search and contrastive beam search.

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
favourable reachable length ``l`` plus a coverage penalty of at most 0 (``coverage
>= 0``), so this stop is exact: results equal an exhaustive search whenever the beam
never prunes the optimum (e.g. ``K >= (V - 1) ** (max_len - 1)``).

Static: the score function, the shapes (``batch_size``, ``beam_size``, ``n_best``,
``max_len``, ``vocab_size``, ``source_len``), ``length_penalty_kind`` and
``monotone``. Traced: ``alpha``, ``coverage``, the cache, ``src_mask_BxS``,
``prefix_BxP`` and the token ids.

Example (a 1-token vocabulary plus EOS: beam 2 keeps "EOS" and "x EOS")::

    >>> import jax.numpy as jnp
    >>> from seqjax.decoding.logit_processors import Controls
    >>> from seqjax.decoding.step_scores import log_prob_scores
    >>> logp_V = jnp.log(jnp.array([0.0, 0.7, 0.3]))  # pad, EOS, token 2
    >>> step = lambda tok, pos, c: (jnp.tile(logp_V, (tok.shape[0], 1)), c)
    >>> r = run_beam_loop(log_prob_scores(step, Controls(1, 0)), None, batch_size=1,
    ...                   beam_size=2, n_best=2, max_len=3, vocab_size=3, source_len=None,
    ...                   alpha=0.0, length_penalty_kind="gnmt", coverage=0.0,
    ...                   src_mask_BxS=None, monotone=True, bos_id=0, eos_id=1, pad_id=0,
    ...                   prefix_BxP=None)
    >>> r.tokens[0].tolist()
    [[1, 0, 0], [2, 1, 0]]
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from seqjax.decoding.batch_tree import Expand, gather_rows, repeat_rows
from seqjax.decoding.logit_processors import forced_tokens, prefix_lengths, selection_scores
from seqjax.decoding.outputs import step_values
from seqjax.decoding.penalties import LENGTH_PENALTIES, coverage_penalty, length_penalty
from seqjax.decoding.phases import Resize, run_phases
from seqjax.decoding.processors import id_tuple, is_any
from seqjax.decoding.result import DecodeResult
from seqjax.decoding.step_scores import ScoreFn, StepScores
from seqjax.decoding.streaming import Emitter

# select_fn(position, live_scores_BxK, step_BxKxV) -> step_BxKxV with -inf at candidates
# the step may not consider (beam sampling keeps the ones it draws).
SelectFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
# rank_fn(position, totals_BxKxV, finishing_BxKxV, cache) -> (live_scores_BxK, live_flat_BxK,
# finish_ok_BxKxV): the K candidates that stay live (flat indices ``beam * V + token``, best
# first, -inf = empty) and which finishing candidates may finish now, instead of the raw-total
# ranking of ``_rank_live`` / ``_rank_finishing``; ``cache`` is the step's new cache
# (constrained beam search keeps its constraint progress there and allocates beams to banks).
RankFn = Callable[[jax.Array, jax.Array, jax.Array, Any], tuple[jax.Array, jax.Array, jax.Array]]


def check_beam_args(beam_size: int, n_best: int, length_penalty_kind: str) -> None:
    """Reject impossible static beam options before tracing anything."""
    if beam_size < 1 or n_best < 1:
        raise ValueError(f"beam_size and n_best must be >= 1, got {beam_size}, {n_best}")
    if n_best > beam_size:
        raise ValueError(f"n_best ({n_best}) cannot exceed beam_size ({beam_size})")
    if length_penalty_kind not in LENGTH_PENALTIES:
        raise ValueError(
            f"length_penalty: unknown {length_penalty_kind!r}; use one of {LENGTH_PENALTIES}"
        )


def check_early_stopping(early_stopping: bool | str) -> None:
    """HuggingFace's values only: ``True``, ``False`` or ``"never"``."""
    if not (early_stopping is True or early_stopping is False or early_stopping == "never"):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")


def coverage_source_len(source_len: int | None, coverage: float | jax.Array) -> int | None:
    """Source length to track attention for; rejects a concrete ``coverage != 0`` without it."""
    if source_len is None and isinstance(coverage, int | float) and coverage != 0:
        raise ValueError(
            "coverage penalty (coverage != 0) needs a step_fn returning cross-attention"
        )
    return source_len


class _State(NamedTuple):
    position: jax.Array  # int32[]: index of the token generated next
    live_tokens: jax.Array  # int32[B, K, L]
    live_log_probs: jax.Array  # float32[B, K, L] model log-probs (reported)
    live_scores: jax.Array  # float32[B, K] summed step scores; -inf = empty beam
    live_attention: jax.Array  # float32[B, K, S] summed cross-attention (S = 0 if unused)
    cache: Any  # N = B * K rows
    done: jax.Array  # bool[B]
    finished_tokens: jax.Array  # int32[B, M, L], M = n_best
    finished_log_probs: jax.Array  # float32[B, M, L]
    finished_scores: jax.Array  # float32[B, M] penalised; -inf = empty slot
    finished_lengths: jax.Array  # int32[B, M]
    # optional outputs (seqjax.decoding.outputs): {name: (live [B, K, L, X], finished
    # [B, M, L, X])}; None (the default) adds nothing to the loop
    extras: Any = None
    stream: Any = None  # streaming.StreamState of int32[B, L] items; None = not streaming


@dataclasses.dataclass(frozen=True)
class _Search:
    """One beam search's shapes (static ints) and ranking options (possibly traced)."""

    B: int  # sources
    K: int  # beams
    M: int  # n_best
    L: int  # max_len
    V: int  # vocabulary
    S: int  # source positions tracked for coverage; 0 = no coverage term
    alpha: float | jax.Array
    length_penalty_kind: str
    coverage: float | jax.Array
    valid_BxKxS: jax.Array | None
    monotone: bool
    eos_id: int | jax.Array | tuple
    prompt_len: jax.Array | None = None  # [B, 1, 1]: not counted by the length penalty
    last: jax.Array | None = None  # [B, 1, 1]: each source's last position (else L - 1)
    early_stopping: bool | str = "never"  # HF's True | False | "never" (see _stops)

    def generated(self, length: jax.Array) -> jax.Array:
        """Hypothesis lengths as the length penalty counts them (the prompt left out)."""
        return length if self.prompt_len is None else jnp.maximum(length - self.prompt_len, 1)

    def at_last(self, t: jax.Array) -> jax.Array:
        """Whether ``t`` is the last position (scalar, or ``[B, 1, 1]`` per source)."""
        return t == self.L - 1 if self.last is None else t >= self.last

    def penalised(
        self, total: jax.Array, length: jax.Array, attention_BxKxS: jax.Array
    ) -> jax.Array:
        """Ranking score of finished hypotheses: length-normalised sum plus coverage."""
        length = self.generated(length)
        score = total / length_penalty(length, self.alpha, self.length_penalty_kind)
        if self.S:
            penalty = coverage_penalty(attention_BxKxS, self.coverage, self.valid_BxKxS)
            score = score + penalty[..., None]
        return score


def _per_source(x_B: jax.Array) -> jax.Array:
    return jnp.asarray(x_B, jnp.int32).reshape(-1, 1, 1)


def _take_beams(x_BxKx: jax.Array, beam_BxJ: jax.Array) -> jax.Array:
    """Per-source gather along the beam axis: ``[B, K, ...] -> [B, J, ...]``."""
    idx = beam_BxJ.reshape(beam_BxJ.shape + (1,) * (x_BxKx.ndim - 2))
    return jnp.take_along_axis(x_BxKx, idx, axis=1)


COPY_ROW_BYTES = 4096  # leaves with rows this large move only the rows that changed


def reorder_cache(new_cache: Any, old_cache: Any, rows_N: jax.Array) -> Any:
    """Row ``n`` of every cache leaf becomes row ``rows_N[n]``, skipping leaves the step
    passed through.

    ``rows_N`` only permutes rows within each source's block of ``K`` beams, and the
    loop's cache starts as ``K`` identical copies of each source row. A leaf that the
    step function returns unchanged (the very same array, e.g. the encoder memory or
    projected cross-attention keys/values) therefore stays identical within every block
    and is left as it is.

    Contract: no row that moves (``rows_N[n] != n``) is the source of another row, which
    ``_stable_slots`` guarantees. Leaves with rows of ``COPY_ROW_BYTES`` or more (the
    self-attention keys/values) then copy just the rows that moved, in place inside the
    loop, instead of gathering every row: a beam that survives keeps its slot, so most rows
    stay (issue 19: the gather was 39% of a beam-4 batch-64 step). Small leaves are
    gathered.
    """
    new_leaves, treedef = jax.tree.flatten(new_cache)
    old_leaves, old_treedef = jax.tree.flatten(old_cache)
    if treedef != old_treedef:
        old_leaves = [None] * len(new_leaves)
    out = list(new_leaves)
    big = []
    for i, (new, old) in enumerate(zip(new_leaves, old_leaves, strict=True)):
        if new is old or jnp.ndim(new) == 0:
            continue
        if new.shape[0] != rows_N.shape[0]:
            raise ValueError(
                f"a cache leaf of {new.shape[0]} rows (shared by a source's beams: the step's "
                f"expand kept it per source) came back changed from the step; with "
                f"{rows_N.shape[0]} beam rows it cannot be reordered. A step must return the "
                "leaves its expand shares as the very same arrays"
            )
        if math.prod(new.shape[1:]) * new.dtype.itemsize >= COPY_ROW_BYTES:
            big.append(i)
        else:
            out[i] = gather_rows(new, rows_N)
    if big:
        moved_N = rows_N != jnp.arange(rows_N.shape[0], dtype=rows_N.dtype)
        order_N = jnp.argsort(~moved_N, stable=True)  # the moved rows first

        def copy_row(j: jax.Array, leaves: list[jax.Array]) -> list[jax.Array]:
            dst = order_N[j]
            src = rows_N[dst]
            return [
                lax.dynamic_update_index_in_dim(x, lax.dynamic_index_in_dim(x, src, 0), dst, 0)
                for x in leaves
            ]

        copied = lax.fori_loop(0, jnp.sum(moved_N), copy_row, [new_leaves[i] for i in big])
        for i, x in zip(big, copied, strict=True):
            out[i] = x
    return jax.tree.unflatten(treedef, out)


def _stable_slots(beam_BxK: jax.Array) -> jax.Array:
    """``int32[B, K]``: which ranked candidate each beam slot holds, so that survivors stay.

    ``beam_BxK`` is the parent slot of the K chosen candidates in rank order. The best child
    of a slot takes that slot; the other children fill the slots of parents that had none,
    in rank order. A slot whose parent moved is then never the parent of another, which
    lets ``reorder_cache`` copy rows in place. Ranking reads scores, never slot order, so
    the hypotheses are those of sorted slots, except that ``top_k`` breaks exact ties
    between beams by slot instead of by rank.

    >>> _stable_slots(jnp.array([[2, 0, 2, 3]])).tolist()  # slot 1 had no child: 2's second
    [[1, 2, 0, 3]]
    """
    K = beam_BxK.shape[1]
    same = beam_BxK[:, :, None] == beam_BxK[:, None, :]
    earlier_KxK = jnp.arange(K)[None, :] < jnp.arange(K)[:, None]  # [c, c']: c' before c
    first_BxK = ~jnp.any(same & earlier_KxK, axis=2)
    claimed = jnp.any((beam_BxK[:, :, None] == jnp.arange(K)) & first_BxK[:, :, None], axis=1)
    free_BxK = jnp.argsort(claimed, axis=1, stable=True)  # unclaimed slots first, ascending
    nth_other = jnp.maximum(jnp.cumsum(~first_BxK, axis=1) - 1, 0)
    slot_BxK = jnp.where(first_BxK, beam_BxK, jnp.take_along_axis(free_BxK, nth_other, axis=1))
    return jnp.argsort(slot_BxK, axis=1).astype(jnp.int32)


def _set_column(x_BxJxL: jax.Array, value_BxJ: jax.Array, position: jax.Array) -> jax.Array:
    return lax.dynamic_update_index_in_dim(x_BxJxL, value_BxJ, position, axis=2)


def _extend(
    s: _State, model_lp_BxKxV: jax.Array, beam_BxJ: jax.Array, token_BxJ: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Tokens and model log-probs of ``J`` candidates: beam ``beam_BxJ`` + ``token_BxJ``."""
    tokens = _set_column(_take_beams(s.live_tokens, beam_BxJ), token_BxJ, s.position)
    lp = _take_beams(model_lp_BxKxV, beam_BxJ)
    lp = jnp.take_along_axis(lp, token_BxJ[..., None], axis=2)[..., 0]
    return tokens, _set_column(_take_beams(s.live_log_probs, beam_BxJ), lp, s.position)


def _rank_live(
    q: _Search, totals_BxKxV: jax.Array, finishing_V: jax.Array, eos_BxK: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(live_scores_BxK, live_flat_BxK, kth_B)``: the K best unfinished candidates.

    An EOS extension is only accepted when it ranks among the K best candidates of
    this step by raw total (as fairseq and HuggingFace do). Accepting every beam's EOS
    would let a weak model's beam keep an early, barely-likely EOS that the search
    itself never ranked, and beam 1 would no longer equal greedy. ``kth_B`` is that
    K-th best total over all candidates; ``eos_BxK`` holds the totals of the EOS
    extensions (``[B, K * E]`` with E EOS ids, beam-major, see ``_eos_totals``).
    """
    B, K, V = q.B, q.K, q.V
    live = jnp.where(finishing_V, -jnp.inf, totals_BxKxV).reshape(B, K * V)
    live_scores, live_flat = lax.top_k(live, K)
    # The K best of all candidates lie among the K best live ones and the K EOS
    # extensions, so the K-th best total needs a top-k over 2K values, not K * V.
    kth_B = lax.top_k(jnp.concatenate([live_scores, eos_BxK], axis=1), K)[0][:, K - 1]
    return live_scores, live_flat, kth_B


def _eos_totals(q: _Search, live_scores_BxK: jax.Array, step_BxKxV: jax.Array) -> jax.Array:
    """``[B, K * E]`` totals of the EOS extensions (E = number of EOS ids), beam-major.

    Gathered from the step scores, not from the ``[B, K, V]`` totals: XLA fuses the
    totals into each consumer, and a gather from them recomputed the whole sum once
    per use (measured: beam 4 ran 7-13% slower with two such gathers per step).
    """
    eos_E = jnp.stack([jnp.asarray(e, jnp.int32) for e in id_tuple(q.eos_id)])
    eos_BxKxE = live_scores_BxK[..., None] + jnp.take(step_BxKxV, eos_E, axis=2)
    return eos_BxKxE.reshape(q.B, -1)


def _rank_finishing(
    q: _Search,
    t: jax.Array,
    totals_BxKxV: jax.Array,
    finishing_V: jax.Array,
    eos_BxK: jax.Array,
    kth_B: jax.Array,
    attention_BxKxS: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """``(scores_BxM, flat_BxM)``: the M best candidates finishing now, penalised."""
    B, K, M, V = q.B, q.K, q.M, q.V

    def finish_any() -> tuple[jax.Array, jax.Array]:  # last position: any token ends
        # every candidate finishes here; the n-best merge ranks them (built inside the
        # branch so the other steps do not compute a [B, K, V] mask they never use)
        ranked_BxKxV = (totals_BxKxV >= kth_B[:, None, None]) | q.at_last(t)
        return _finish_among(q, t, totals_BxKxV, finishing_V & ranked_BxKxV, attention_BxKxS)

    def finish_eos() -> tuple[jax.Array, jax.Array]:  # otherwise only EOS: K * E values
        eos_E = jnp.stack([jnp.asarray(e, jnp.int32) for e in id_tuple(q.eos_id)])
        E = eos_E.shape[0]
        eos_BxKxE = eos_BxK.reshape(B, K, E)
        new_fin = q.penalised(eos_BxKxE, t + 1, attention_BxKxS).reshape(B, K * E)
        new_fin = jnp.where(eos_BxK >= kth_B[:, None], new_fin, -jnp.inf)
        scores, flat = lax.top_k(new_fin, M)
        return scores, (flat // E) * V + eos_E[flat % E]

    return lax.cond(jnp.any(q.at_last(t)), finish_any, finish_eos)


def _finish_among(
    q: _Search, t: jax.Array, totals_BxKxV: jax.Array, ok_BxKxV: jax.Array, attention: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """``(scores_BxM, flat_BxM)``: the M best candidates where ``ok_BxKxV``, penalised."""
    new_fin = jnp.where(ok_BxKxV, q.penalised(totals_BxKxV, t + 1, attention), -jnp.inf)
    scores, flat = lax.top_k(new_fin.reshape(q.B, q.K * q.V), q.M)
    return scores, flat


def _merge_finished(
    q: _Search,
    s: _State,
    fin_scores_BxM: jax.Array,
    fin_tokens_BxMxL: jax.Array,
    fin_lp_BxMxL: jax.Array,
) -> dict[str, jax.Array]:
    """The M best of the kept and the new finished hypotheses (``_State`` fields)."""
    M = q.M
    all_scores = jnp.concatenate([s.finished_scores, fin_scores_BxM], axis=1)
    all_scores, keep = lax.top_k(all_scores, M)  # ties keep the older hypothesis
    all_lengths = jnp.concatenate(
        [s.finished_lengths, jnp.where(fin_scores_BxM > -jnp.inf, s.position + 1, 0)], axis=1
    )
    tokens = _take_beams(jnp.concatenate([s.finished_tokens, fin_tokens_BxMxL], 1), keep)
    log_probs = _take_beams(jnp.concatenate([s.finished_log_probs, fin_lp_BxMxL], 1), keep)
    return dict(
        finished_tokens=tokens,
        finished_log_probs=log_probs,
        finished_scores=all_scores,
        finished_lengths=jnp.take_along_axis(all_lengths, keep, axis=1),
    )


def _live_bound(q: _Search, t: jax.Array, live_scores_BxK: jax.Array) -> jax.Array:
    """``float[B]``: the best final score any live beam of a source can still reach."""
    if q.monotone:
        # sums are <= 0 and lp is monotone in length: the larger end divisor is best
        shortest, longest = (q.generated(n) for n in (t + 2, q.L))
        best_lp = jnp.maximum(
            length_penalty(shortest, q.alpha, q.length_penalty_kind),
            length_penalty(longest, q.alpha, q.length_penalty_kind),
        )
        return jnp.max(live_scores_BxK / jnp.reshape(best_lp, (-1, 1)), axis=1)
    return jnp.where(jnp.any(live_scores_BxK > -jnp.inf, axis=1), jnp.inf, -jnp.inf)


def _stops(
    q: _Search, t: jax.Array, live_scores_BxK: jax.Array, finished_scores_BxM: jax.Array
) -> jax.Array:
    """``bool[B]``: sources whose search ends after position ``t``.

    ``"never"``: no live beam can still beat the worst kept hypothesis (exact).
    HuggingFace's ``False`` and ``True`` need all ``M`` slots filled (callers keep
    ``M = K``); then ``False`` stops once the best live sum divided by the penalty of
    its *current* length ``t + 1`` is no better than the worst kept score (a
    heuristic), and ``True`` stops at once.
    """
    if q.early_stopping == "never":
        return finished_scores_BxM[:, q.M - 1] >= _live_bound(q, t, live_scores_BxK)
    full_B = jnp.all(finished_scores_BxM > -jnp.inf, axis=1)
    now = jnp.broadcast_to(q.generated(t + 1), (q.B, 1, 1))[:, 0, 0]  # the prompt left out
    best_live_B = jnp.max(live_scores_BxK, axis=1)  # slots are not sorted (_stable_slots)
    best_B = best_live_B / length_penalty(now, q.alpha, q.length_penalty_kind)
    stop_B = full_B & (best_B <= finished_scores_BxM[:, q.M - 1])
    return full_B if q.early_stopping is True else stop_B


def _advance_extras(
    q: _Search,
    s: _State,
    step: StepScores,
    fin_flat_BxM: jax.Array,
    fin_scores_BxM: jax.Array,
    beam_BxK: jax.Array,
) -> Any:
    """The optional outputs of the new live and finished hypotheses (see ``_State``)."""
    if s.extras is None:
        return None
    _, keep = lax.top_k(jnp.concatenate([s.finished_scores, fin_scores_BxM], axis=1), q.M)
    values = step_values(step, s.extras)
    out = {}
    for name, (live, finished) in s.extras.items():
        now_BxKxX = values[name].reshape(q.B, q.K, -1)
        fin_beam = fin_flat_BxM // q.V
        new_fin = _take_beams(live, fin_beam)
        new_fin = _set_column(new_fin, _take_beams(now_BxKxX, fin_beam), s.position)
        finished = _take_beams(jnp.concatenate([finished, new_fin], axis=1), keep)
        new_live = _set_column(
            _take_beams(live, beam_BxK), _take_beams(now_BxKxX, beam_BxK), s.position
        )
        out[name] = (new_live, finished)
    return out


def _advance(
    q: _Search,
    s: _State,
    step: StepScores,
    step_BxKxV: jax.Array,
    rank_fn: RankFn | None = None,
) -> _State:
    """One beam step given the step's selection scores (``-inf`` = not pickable).

    ``rank_fn`` (optional, see ``RankFn``) picks the live and the finishing candidates
    instead of the ranking by raw totals.
    """
    B, K, V, S = q.B, q.K, q.V, q.S
    t = s.position
    totals_BxKxV = s.live_scores[..., None] + step_BxKxV
    attention = s.live_attention
    if S:
        attention = attention + step.attention.astype(jnp.float32).reshape(B, K, S)
    model_lp_BxKxV = step.model_log_probs.reshape(B, K, V)
    # the last position finishes all
    finishing_V = is_any(jnp.arange(V), id_tuple(q.eos_id)) | q.at_last(t)

    if rank_fn is None:
        eos_BxK = _eos_totals(q, s.live_scores, step_BxKxV)
        live_scores, live_flat, kth_B = _rank_live(q, totals_BxKxV, finishing_V, eos_BxK)
        fin_scores, fin_flat = _rank_finishing(
            q, t, totals_BxKxV, finishing_V, eos_BxK, kth_B, attention
        )
    else:
        finishing = jnp.broadcast_to(finishing_V, totals_BxKxV.shape)
        live_scores, live_flat, ok = rank_fn(t, totals_BxKxV, finishing, step.cache)
        fin_scores, fin_flat = _finish_among(q, t, totals_BxKxV, finishing & ok, attention)
    if q.early_stopping != "never":  # a stopped source's pool is final (HF freezes it)
        fin_scores = jnp.where(s.done[:, None], -jnp.inf, fin_scores)
    fin_tokens, fin_lp = _extend(s, model_lp_BxKxV, fin_flat // V, fin_flat % V)
    finished = _merge_finished(q, s, fin_scores, fin_tokens, fin_lp)

    by_slot = _stable_slots(live_flat // V)
    live_scores = jnp.take_along_axis(live_scores, by_slot, axis=1)
    live_flat = jnp.take_along_axis(live_flat, by_slot, axis=1)
    beam_BxK = live_flat // V
    live_tokens, live_lp = _extend(s, model_lp_BxKxV, beam_BxK, live_flat % V)
    rows_N = (jnp.arange(B)[:, None] * K + beam_BxK).reshape(B * K)
    return _State(
        position=t + 1,
        live_tokens=live_tokens,
        live_log_probs=live_lp,
        live_scores=live_scores,
        live_attention=_take_beams(attention, beam_BxK),
        cache=reorder_cache(step.cache, s.cache, rows_N),
        done=s.done | _stops(q, t, live_scores, finished["finished_scores"]),
        **finished,
        extras=_advance_extras(q, s, step, fin_flat, fin_scores, beam_BxK),
    )


def _initial_state(q: _Search, cache_N: Any, pad_id: int | jax.Array) -> _State:
    B, K, M, L, S = q.B, q.K, q.M, q.L, q.S
    return _State(
        position=jnp.zeros((), jnp.int32),
        live_tokens=jnp.full((B, K, L), pad_id, jnp.int32),
        live_log_probs=jnp.zeros((B, K, L), jnp.float32),
        # only beam 0 starts alive, so the K copies of a source do not all expand alike
        live_scores=jnp.tile(jnp.array([0.0] + [-jnp.inf] * (K - 1), jnp.float32), (B, 1)),
        live_attention=jnp.zeros((B, K, S), jnp.float32),
        cache=cache_N,
        done=jnp.zeros((B,), bool),
        finished_tokens=jnp.full((B, M, L), pad_id, jnp.int32),
        finished_log_probs=jnp.zeros((B, M, L), jnp.float32),
        finished_scores=jnp.full((B, M), -jnp.inf, jnp.float32),
        finished_lengths=jnp.zeros((B, M), jnp.int32),
    )


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
    coverage: float | jax.Array,
    src_mask_BxS: jax.Array | None,
    monotone: bool,
    bos_id: int | jax.Array,
    eos_id: int | jax.Array,
    pad_id: int | jax.Array,
    prefix_BxP: jax.Array | None,
    score_prompt: bool = True,
    last_B: jax.Array | None = None,
    start: Any = None,
    early_stopping: bool | str = "never",
    select_fn: SelectFn | None = None,
    output_widths: dict[str, int] | None = None,
    emit: Emitter | None = None,
    rank_fn: RankFn | None = None,
    resize: Resize | None = None,
    expand: Expand = repeat_rows,
) -> DecodeResult:
    """The compiled beam loop over a score function (``cache`` has ``B`` rows).

    ``monotone`` (static) says step scores are ``<= 0``, which makes the early-exit
    bound valid; otherwise the loop only stops when every beam is dead. ``source_len``
    (static; ``None`` = no attention) sizes the summed attention the ``coverage``
    penalty reads. ``score_prompt=False`` (static) gives forced prefix tokens score
    and log-prob 0 and leaves them out of the length penalty; ``last_B`` (``int32[B]``)
    is each source's last position (``max_new_tokens`` with prompts of different
    lengths). ``start`` (a ``seqjax.decoding.prompt.PromptStart`` of ``B`` rows, prompt
    unscored): begin after a prefilled prompt instead of at position 0.
    penalty reads. ``early_stopping`` (static): see ``_stops``. ``select_fn`` (static,
    optional) narrows each step's candidates before ranking (beam sampling draws them).
    ``output_widths`` (static, ``seqjax.decoding.outputs``): optional outputs to return.
    ``emit`` (optional, ``seqjax.decoding.streaming.Emitter``): receives each source's best live
    hypothesis after position ``t``, or its best finished one once the source is done
    or ``t`` is the last position (``seqjax.decoding.streaming``). ``rank_fn`` (static,
    optional, see ``RankFn``) chooses the live and finishing candidates (constrained beam
    search's bank allocation); without it the K best raw totals stay live. ``resize``
    (static, the step's optional ``resize``): run the loop in phases of growing cache
    length, so attention and the per-step cache reorder read only the prefix a phase
    can have filled (``seqjax.decoding.phases``). ``expand`` (static, the step's
    optional ``expand``, ``batch_tree.cache_expander``): folds the ``K`` beams into the
    cache's rows, possibly keeping leaves that a source's beams share at ``B`` rows.
    """
    B, K, L = batch_size, beam_size, max_len
    S = source_len or 0
    valid_BxKxS = None
    if src_mask_BxS is not None and S:
        valid_BxKxS = jnp.broadcast_to(src_mask_BxS[:, None, :], (B, K, S)).astype(bool)
    q = _Search(
        B=B,
        K=K,
        M=n_best,
        L=L,
        V=vocab_size,
        S=S,
        alpha=alpha,
        length_penalty_kind=length_penalty_kind,
        coverage=coverage,
        valid_BxKxS=valid_BxKxS,
        monotone=monotone,
        eos_id=eos_id,
        prompt_len=None if score_prompt or prefix_BxP is None else _per_source(
            prefix_lengths(prefix_BxP, pad_id)),
        last=None if last_B is None else _per_source(last_B),
        early_stopping=early_stopping,
    )  # fmt: skip
    prefix_NxP = None if prefix_BxP is None else repeat_rows(prefix_BxP, K)
    forced_len_N = None if prefix_NxP is None else prefix_lengths(prefix_NxP, pad_id)

    def cond(s: _State) -> jax.Array:
        return (s.position < L) & ~jnp.all(s.done)

    def body(s: _State) -> _State:
        t = s.position
        history_NxL = s.live_tokens.reshape(B * K, L)
        previous = lax.dynamic_index_in_dim(history_NxL, jnp.maximum(t - 1, 0), 1, keepdims=False)
        inputs = jnp.where(t == 0, bos_id, previous).astype(jnp.int32)
        step = score_fn(inputs, t, s.cache, history_NxL)
        forced = None if prefix_NxP is None else forced_tokens(prefix_NxP, forced_len_N, t)
        if forced is not None and not score_prompt:  # the prompt is not scored
            unscored = lambda x: jnp.where(forced[0][:, None], 0.0, x)  # noqa: E731
            step = step._replace(scores=unscored(step.scores),
                                 model_log_probs=unscored(step.model_log_probs))  # fmt: skip
        step_BxKxV = selection_scores((step.scores, step.allowed), forced).reshape(B, K, q.V)
        if select_fn is not None:
            step_BxKxV = select_fn(t, s.live_scores, step_BxKxV)
        new = _advance(q, s, step, step_BxKxV, rank_fn)
        if emit is not None:  # finished slot 0 is the best; live slots are not sorted
            last_B = jnp.broadcast_to(q.at_last(t), (B, 1, 1))[:, 0, 0]
            final_B1 = (new.done | last_B)[:, None]
            best = jnp.argmax(new.live_scores, axis=1)[:, None, None]  # ties: lower slot
            best_live_BxL = jnp.take_along_axis(new.live_tokens, best, axis=1)[:, 0]
            best_BxL = jnp.where(final_B1, new.finished_tokens[:, 0], best_live_BxL)
            stream, ack = emit.push(s.stream, t, best_BxL, ~cond(new))
            new = new._replace(stream=stream, position=new.position + ack)  # ack = 0
        return new

    init = _initial_state(q, expand(cache, K), pad_id)
    if start is not None:  # every beam holds the prompt; only beam 0 is alive
        init = init._replace(
            position=start.position,
            live_tokens=jnp.repeat(start.tokens[:, None], K, axis=1),
            live_log_probs=jnp.repeat(start.log_probs[:, None], K, axis=1),
            cache=expand(start.cache, K),
        )
    if output_widths:
        zeros = lambda rows, x: jnp.zeros((B, rows, L, x), jnp.float32)  # noqa: E731
        extras = {n: (zeros(K, x), zeros(n_best, x)) for n, x in output_widths.items()}
        init = init._replace(extras=extras)
    if emit is not None:
        init = init._replace(stream=emit.init(jnp.zeros((B, L), jnp.int32)))
    s = run_phases(cond, body, init, max_len=L, resize=resize, from_start=start is None, rows=B * K)
    return DecodeResult(
        tokens=s.finished_tokens,
        lengths=s.finished_lengths,
        scores=s.finished_scores,
        log_probs=s.finished_log_probs,
        **({} if s.extras is None else {n: f for n, (_, f) in s.extras.items()}),
    )
