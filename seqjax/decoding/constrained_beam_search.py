"""Lexically constrained beam search with dynamic beam allocation (Post & Vilar 2018).

Every returned hypothesis contains every constraint *phrase* of its source (a phrase is a
sequence of token ids; HuggingFace ``force_words_ids``, fairseq ``--constraints``, sockeye
``constraints``). Constraints are ``int[B, C, P]``: up to ``C`` phrases of up to ``P``
tokens per source, left-aligned and padded with ``-1`` (``CONSTRAINT_PAD``; a phrase of
only ``-1`` is absent, so sources may have different numbers of phrases).

Each hypothesis tracks its progress: which phrases it has met, and the phrase it is
inside and how many of its tokens it has matched. A phrase is met by its tokens in a row,
as a span of its own: the phrases of a hypothesis are disjoint spans, matched left to
right (as sockeye and fairseq do). A hypothesis inside a phrase that emits another token
drops that partial match (and may start a phrase with the new token). A phrase is never
matched inside another one, so with phrases that share tokens a hypothesis containing
them only overlapped (``"a b"`` and ``"b c"`` in ``"a b c"``) does not count; phrases
of distinct tokens count exactly when they occur.

One step of the search (one ``lax.while_loop`` iteration of the beam core,
``seqjax.decoding.beam_loop``, with this module's ``rank_fn``):

- *candidates* per source: the ``beam_size`` best extensions of all beams, each beam's
  best extension, each beam's phrase tokens (the next token of the phrase it is inside
  and the first token of every unmet phrase) and the EOS extensions. EOS is allowed only to a hypothesis that has met every phrase; a candidate
  that can no longer fit its missing phrase tokens before ``max_len`` is dropped.
- *banks*: a candidate's bank is the number of constraint tokens it has met. The beam
  is filled round-robin over the banks (dynamic beam allocation): the best candidate of
  each bank, most-met bank first, then the second best of each bank, and so on; a bank
  with too few candidates leaves its slots to the others.
- the first ``beam_size`` candidates of that order that do not end stay live; an EOS
  candidate finishes when it lies within the first ``beam_size`` (as ``beam_search``
  accepts an EOS among the ``beam_size`` best). Only hypotheses that met every phrase
  finish, at EOS or at ``max_len``; they are ranked as in ``beam_search`` (length
  penalty ``gnmt | hf``, coverage penalty, ``n_best``, ``early_stopping``).

Without constraints (``None``, or only ``-1``) the result equals ``beam_search``. A
source whose phrases cannot all be produced (bans, too short a ``max_len``) gets empty
slots (score ``-inf``, length 0).

Static: ``step_fn``, ``max_len``, ``beam_size``, ``n_best``, ``length_penalty``,
``early_stopping``, ``no_repeat_ngram_size``, ``batch_size``, ``convention``,
``forced_eos``, ``stream_every``, ``processors``, ``bad_words``, ``suppress_tokens``,
``begin_suppress_tokens``, ``outputs``, the token ids and the *shape* of
``constraints``. Traced (change freely, no recompile): the constraint token ids,
``alpha``, ``coverage``, ``min_len``, ``repetition_penalty``, ``cache``, ``src_mask``,
``params``, ``stream``.

Example (the model prefers to stop at once; the constraint forces token 3 in)::

    >>> import jax.numpy as jnp
    >>> logp_V = jnp.log(jnp.array([0.0, 0.6, 0.3, 0.1]))  # pad, EOS, tokens 2 and 3
    >>> step = lambda tok, pos, c: (jnp.tile(logp_V, (tok.shape[0], 1)), c)
    >>> phrases = jnp.array([[[3, -1]], [[2, 3]]])  # source 0: "3"; source 1: "2 3"
    >>> r = constrained_beam_search(step, None, constraints=phrases, batch_size=2,
    ...                             max_len=4, bos_id=0, eos_id=1, pad_id=0, beam_size=2)
    >>> r.tokens[:, 0].tolist()
    [[3, 1, 0, 0], [2, 3, 1, 0]]
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from seqjax.decode_checks import STREAM_EVERY
from seqjax.decoding.arg_checks import CONSTRAINT_PAD, check_constraints, check_decoder_call
from seqjax.decoding.batch_tree import cache_expander, repeat_rows
from seqjax.decoding.beam_loop import (
    RankFn,
    check_beam_args,
    check_early_stopping,
    coverage_source_len,
    run_beam_loop,
)
from seqjax.decoding.logit_processors import make_controls
from seqjax.decoding.outputs import check_outputs, output_widths
from seqjax.decoding.processors import id_tuple, is_any
from seqjax.decoding.result import DecodeResult
from seqjax.decoding.step import StepFn, bind_params
from seqjax.decoding.step_scores import ScoreFn, StepScores, log_prob_scores
from seqjax.decoding.streaming import check_stream, emitter

__all__ = ["CONSTRAINT_PAD", "constrained_beam_search"]


class _Phrases(NamedTuple):
    """The constraints of ``N`` hypotheses (each source's, repeated for its beams)."""

    tokens: jax.Array  # int32[N, C, P], CONSTRAINT_PAD after each phrase
    lengths: jax.Array  # int32[N, C]; 0 = no phrase
    total: jax.Array  # int32[N]: constraint tokens to meet in all


class _Progress(NamedTuple):
    """Each hypothesis's constraint progress; lives in the loop's cache (``N`` rows)."""

    met: jax.Array  # bool[N, C]: phrases met (absent phrases count as met)
    phrase: jax.Array  # int32[N]: the phrase being matched, -1 = none
    depth: jax.Array  # int32[N]: its tokens matched so far (0 when none)


def _phrases(constraints_BxCxP: jax.Array, K: int) -> _Phrases:
    tokens = repeat_rows(jnp.asarray(constraints_BxCxP, jnp.int32), K)
    lengths = jnp.sum(tokens != CONSTRAINT_PAD, axis=-1).astype(jnp.int32)
    return _Phrases(tokens, lengths, jnp.sum(lengths, axis=-1))


def _start(ph: _Phrases) -> _Progress:
    N = ph.lengths.shape[0]
    return _Progress(ph.lengths == 0, jnp.full((N,), -1, jnp.int32), jnp.zeros((N,), jnp.int32))


def _expected(ph: _Phrases, pr: _Progress) -> jax.Array:
    """``int32[N]``: the next token of the phrase each row is inside (-1 when none)."""
    inside = jnp.take_along_axis(ph.tokens, jnp.maximum(pr.phrase, 0)[:, None, None], axis=1)
    token = jnp.take_along_axis(inside[:, 0], pr.depth[:, None], axis=1)[:, 0]
    return jnp.where(pr.phrase >= 0, token, -1)


def _starts(ph: _Phrases, pr: _Progress) -> jax.Array:
    """``int32[N, C]``: the first token of each unmet phrase (-1 for met ones)."""
    return jnp.where(pr.met, -1, ph.tokens[:, :, 0])


def _met_tokens(ph: _Phrases, pr: _Progress) -> jax.Array:
    """``int32[N]``: constraint tokens met so far (met phrases plus the partial match)."""
    return jnp.sum(jnp.where(pr.met, ph.lengths, 0), axis=-1) + pr.depth


def _advance_progress(ph: _Phrases, pr: _Progress, token_N: jax.Array) -> _Progress:
    """The progress after each row emits ``token_N`` (see the module docstring)."""
    C = ph.lengths.shape[1]
    current = jnp.maximum(pr.phrase, 0)
    cont = token_N == _expected(ph, pr)  # continues its phrase (-1 never matches)
    depth = pr.depth + 1
    done = cont & (depth == jnp.take_along_axis(ph.lengths, current[:, None], axis=1)[:, 0])
    starts_NxC = _starts(ph, pr) == token_N[:, None]
    found = ~cont & jnp.any(starts_NxC, axis=1)
    first = jnp.argmax(starts_NxC, axis=1)  # the first unmet phrase it starts
    single = jnp.take_along_axis(ph.lengths, first[:, None], axis=1)[:, 0] == 1
    c_C = jnp.arange(C)
    met = pr.met | ((c_C == current[:, None]) & done[:, None])
    met = met | ((c_C == first[:, None]) & (found & single)[:, None])
    opened = found & ~single
    phrase = jnp.where(cont, jnp.where(done, -1, pr.phrase), jnp.where(opened, first, -1))
    depth = jnp.where(cont, jnp.where(done, 0, depth), jnp.where(opened, 1, 0))
    return _Progress(met, phrase.astype(jnp.int32), depth.astype(jnp.int32))


def _met_after(ph: _Phrases, pr: _Progress, V: int) -> jax.Array:
    """``int32[N, V]``: constraint tokens met after each possible next token."""
    v_V = jnp.arange(V)
    cont_NxV = v_V == _expected(ph, pr)[:, None]
    starts_NxV = jnp.any(_starts(ph, pr)[:, :, None] == v_V, axis=1)
    base = _met_tokens(ph, pr)[:, None]
    return jnp.where(cont_NxV, base + 1, base - pr.depth[:, None] + starts_NxV)


def _tracking(score_fn: ScoreFn, ph: _Phrases) -> ScoreFn:
    """``score_fn`` over the cache ``(model cache, _Progress)``: before scoring position
    ``t`` it advances each row's progress by the token the row emitted at ``t - 1``, so the
    beam core reorders the progress with the hypotheses, as it reorders the cache."""

    def tracked(inputs_N, position, cache, history_NxL) -> StepScores:
        model_cache, progress = cache
        moved = _advance_progress(ph, progress, inputs_N)
        progress = jax.tree.map(lambda a, b: jnp.where(position > 0, a, b), moved, progress)
        step = score_fn(inputs_N, position, model_cache, history_NxL)
        return step._replace(cache=(step.cache, progress))

    return tracked


def _gather(x_BxF: jax.Array, idx_BxJ: jax.Array) -> jax.Array:
    return jnp.take_along_axis(x_BxF, jnp.maximum(idx_BxJ, 0), axis=1)


def _allocate(
    ph: _Phrases, *, B: int, K: int, V: int, L: int, eos_id: Any, num_banks: int
) -> RankFn:
    """The beam core's ``rank_fn``: candidates, banks and the round-robin allocation."""
    eos_E = jnp.asarray(id_tuple(eos_id), jnp.int32)
    is_eos_V = is_any(jnp.arange(V), id_tuple(eos_id))
    beam_K1 = (jnp.arange(K, dtype=jnp.int32) * V)[:, None]  # flat offset of each beam
    total_B11 = ph.total.reshape(B, K)[:, :1, None]

    def rank(t, totals_BxKxV, finishing_BxKxV, cache):
        del finishing_BxKxV  # EOS, or every token at the last position (see finish_ok)
        progress = cache[1]
        after_BxKxV = _met_after(ph, progress, V).reshape(B, K, V)
        complete = after_BxKxV == total_B11
        fits = total_B11 - after_BxKxV <= L - 1 - t  # the missing tokens still fit
        ok = (totals_BxKxV > -jnp.inf) & fits & (complete | ~is_eos_V)
        scores_BxF = jnp.where(ok, totals_BxKxV, -jnp.inf).reshape(B, K * V)
        going = jnp.where(is_eos_V, -jnp.inf, scores_BxF.reshape(B, K, V))
        # candidates as flat indices beam * V + token (-1 = none), J = K (2 + C + E)
        advancing = jnp.concatenate([_expected(ph, progress)[:, None], _starts(ph, progress)], 1)
        advancing = advancing.reshape(B, K, -1)
        cand_BxJ = jnp.concatenate(
            [
                lax.top_k(going.reshape(B, K * V), K)[1],
                (jnp.argmax(going, axis=2) + beam_K1[:, 0]).astype(jnp.int32),
                jnp.where(advancing >= 0, advancing + beam_K1, -1).reshape(B, -1),
                jnp.broadcast_to(eos_E + beam_K1, (B, K, eos_E.shape[0])).reshape(B, -1),
            ],
            axis=1,
        ).astype(jnp.int32)
        score_BxJ = _gather(scores_BxF, cand_BxJ)
        bank_BxJ = _gather(after_BxKxV.reshape(B, K * V), cand_BxJ)
        valid = (cand_BxJ >= 0) & (score_BxJ > -jnp.inf)
        J = cand_BxJ.shape[1]
        earlier_JxJ = jnp.arange(J)[:, None] < jnp.arange(J)[None, :]  # [i, j]: i before j
        same = cand_BxJ[:, :, None] == cand_BxJ[:, None, :]
        valid = valid & ~jnp.any(same & earlier_JxJ & valid[:, :, None], axis=1)
        # rank within the bank: higher score first, then the lower flat index
        s_i, s_j = score_BxJ[:, :, None], score_BxJ[:, None, :]
        ahead = (s_i > s_j) | ((s_i == s_j) & (cand_BxJ[:, :, None] < cand_BxJ[:, None, :]))
        same_bank = bank_BxJ[:, :, None] == bank_BxJ[:, None, :]
        rank_BxJ = jnp.sum(ahead & same_bank & valid[:, :, None], axis=1)
        # round robin: every bank's best (most-met bank first), then every bank's second, ...
        key_BxJ = jnp.where(valid, rank_BxJ * num_banks + (num_banks - 1 - bank_BxJ), J * num_banks)
        position_BxJ = jnp.sum((key_BxJ[:, :, None] < key_BxJ[:, None, :]) & valid[:, :, None], 1)
        ends_BxJ = is_any(cand_BxJ % V, id_tuple(eos_id)) & valid
        stays = valid & ~ends_BxJ
        _, pick_BxK = lax.top_k(jnp.where(stays, -key_BxJ, -J * num_banks - 1), K)
        live_flat = jnp.take_along_axis(cand_BxJ, pick_BxK, axis=1)
        live = jnp.where(
            jnp.take_along_axis(stays, pick_BxK, 1), _gather(score_BxJ, pick_BxK), -jnp.inf
        )
        live_scores, order = lax.top_k(live, K)  # slot 0 = the best live hypothesis
        live_flat = jnp.maximum(jnp.take_along_axis(live_flat, order, axis=1), 0)
        accepted_BxJ = ends_BxJ & (position_BxJ < K)
        accepted = jnp.zeros((B, K * V), bool)
        accepted = accepted.at[jnp.arange(B)[:, None], jnp.maximum(cand_BxJ, 0)].max(accepted_BxJ)
        at_last = t >= L - 1  # every token ends there: all complete ones may finish
        finish_ok = ok & complete & (accepted.reshape(B, K, V) | ~is_eos_V | at_last)
        return live_scores, live_flat, finish_ok

    return rank


def constrained_beam_search(
    step_fn: StepFn,
    cache: Any,
    *,
    constraints: jax.Array | None,
    max_len: int,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    beam_size: int = 4,
    n_best: int = 1,
    alpha: float | jax.Array = 0.0,
    length_penalty: str = "gnmt",
    coverage: float | jax.Array = 0.0,
    src_mask: jax.Array | None = None,
    min_len: int | jax.Array = 0,
    no_repeat_ngram_size: int = 0,
    repetition_penalty: float | jax.Array = 1.0,
    batch_size: int | None = None,
    params: Any = None,
    convention: str = "seqjax",
    forced_eos: bool = False,
    processors: tuple = (),
    bad_words: tuple = (),
    suppress_tokens: tuple = (),
    begin_suppress_tokens: tuple = (),
    early_stopping: bool | str = "never",
    outputs: tuple[str, ...] = (),
    stream: int | jax.Array | None = None,
    stream_every: int = STREAM_EVERY,
) -> DecodeResult:
    """Beam search whose hypotheses contain every phrase of ``constraints`` (see the module).

    ``constraints``: ``int[B, C, P]`` token ids, each phrase left-aligned and padded with
    ``-1`` (``CONSTRAINT_PAD``), or ``None`` (plain beam search). Constraint ids must lie
    in the vocabulary and must not be ``eos_id`` or ``pad_id``; no phrase, nor a source's
    phrases together, may be longer than ``max_len``. Scores, ``n_best`` and the other
    options are ``beam_search``'s; prompts (``prefix``, ``max_new_tokens``) are not taken.
    A source whose phrases cannot be met gets empty slots (score ``-inf``, length 0).
    """
    check_beam_args(beam_size, n_best, length_penalty)
    check_early_stopping(early_stopping)
    step_fn = bind_params(step_fn, params)
    B, vocab_size, source_len = check_decoder_call(
        step_fn, cache, batch_size=batch_size, max_len=max_len, src_mask=src_mask,
        token_ids=dict(bos_id=bos_id, eos_id=eos_id, pad_id=pad_id),
        token_lists=dict(bad_words=bad_words, suppress_tokens=suppress_tokens,
                         begin_suppress_tokens=begin_suppress_tokens), min_len=min_len,
        repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
        alpha=alpha, coverage=coverage,
    )  # fmt: skip
    if constraints is None:  # one absent phrase: the search is beam_search's
        constraints = jnp.full((B, 1, 1), CONSTRAINT_PAD, jnp.int32)
    check_constraints(constraints, B, vocab_size, max_len, eos_id=eos_id, pad_id=pad_id)
    check_outputs(outputs, source_len)
    check_stream(stream, stream_every)
    controls = make_controls(
        eos_id=eos_id, pad_id=pad_id, bos_id=bos_id, max_len=max_len, min_len=min_len,
        repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
        convention=convention, forced_eos=forced_eos, beam=True, rows_per_source=beam_size,
        bad_words=bad_words, suppress_tokens=suppress_tokens,
        begin_suppress_tokens=begin_suppress_tokens, processors=processors,
    )  # fmt: skip
    _, C, P = constraints.shape
    ph = _phrases(constraints, beam_size)
    rank_fn = _allocate(ph, B=B, K=beam_size, V=vocab_size, L=max_len, eos_id=eos_id,
                        num_banks=C * P + 1)  # fmt: skip
    source_progress = jax.tree.map(lambda x: x[::beam_size], _start(ph))  # B rows
    pool = n_best if early_stopping == "never" else beam_size
    model_expand = cache_expander(step_fn)

    def expand(cache_and_progress: tuple[Any, _Progress], times: int) -> tuple[Any, _Progress]:
        # the model's cache as its step folds beams in; the progress is per beam
        model_cache, progress = cache_and_progress
        return model_expand(model_cache, times), repeat_rows(progress, times)

    result = run_beam_loop(
        _tracking(log_prob_scores(step_fn, controls), ph),
        (cache, source_progress),
        batch_size=B,
        beam_size=beam_size,
        n_best=pool,
        max_len=max_len,
        vocab_size=vocab_size,
        source_len=coverage_source_len(source_len, coverage),
        alpha=alpha,
        length_penalty_kind=length_penalty,
        coverage=coverage,
        src_mask_BxS=src_mask,
        monotone=True,
        bos_id=bos_id,
        eos_id=eos_id,
        pad_id=pad_id,
        prefix_BxP=None,
        early_stopping=early_stopping,
        output_widths=output_widths(outputs, vocab_size, source_len),
        emit=emitter(stream, stream_every),
        rank_fn=rank_fn,
        expand=expand,
    )
    return result if pool == n_best else jax.tree.map(lambda x: x[:, :n_best], result)
