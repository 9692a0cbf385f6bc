"""Diverse (group) beam search: Vijayakumar et al. 2018 with the Hamming diversity term.

The ``beam_size`` beams of a source are split into ``num_groups`` groups of ``G_k =
beam_size / num_groups`` beams. At every position the model runs once over all beams;
then the groups advance one after another, each by one step of the ordinary beam core
(``seqjax.decoding.beam_loop``), with its step scores lowered by::

    diversity_penalty * (number of live beams of earlier groups that chose this token now)

(HuggingFace ``num_beam_groups`` / ``diversity_penalty``; fairseq
``--diverse-beam-groups``). A group's cumulative scores include its penalties, each
group keeps ``G_k`` finished hypotheses ranked as in ``beam_search`` (length penalty,
coverage, ``early_stopping``), and the result is the ``n_best`` best of all groups'
hypotheses. Group 0 is plain beam search of width ``G_k``. A group that has stopped
(see ``early_stopping``) no longer counts towards later groups' penalties.

Static: ``step_fn``, ``max_len``, ``beam_size``, ``num_groups``, ``n_best``,
``length_penalty``, ``early_stopping``, ``no_repeat_ngram_size``, ``batch_size``, the
token ids. Traced: ``diversity_penalty``, ``alpha``, ``coverage``, ``min_len``,
``repetition_penalty`` and the arrays ``cache``, ``src_mask``, ``prefix``. ``params``
as in ``beam_search``.

Example (one token plus EOS: group 1 is pushed off the token group 0 took)::

    >>> import jax.numpy as jnp
    >>> logp_V = jnp.log(jnp.array([0.0, 0.4, 0.6]))  # pad, EOS, token 2
    >>> step = lambda tok, pos, c: (jnp.tile(logp_V, (tok.shape[0], 1)), c)
    >>> kw = dict(batch_size=1, max_len=2, bos_id=0, eos_id=1, pad_id=0, alpha=0.0)
    >>> r = diverse_beam_search(step, None, beam_size=2, num_groups=2, n_best=2,
    ...                         diversity_penalty=5.0, **kw)
    >>> r.tokens[0].tolist()  # group 0: "2 2" (-1.02); group 1: "EOS" (-0.92) first
    [[1, 0], [2, 2]]
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from seqjax.decode_checks import STREAM_EVERY
from seqjax.decoding.arg_checks import check_decoder_call
from seqjax.decoding.batch_tree import Expand, cache_expander, repeat_rows
from seqjax.decoding.beam_loop import (
    _advance,
    _initial_state,
    _Search,
    _State,
    check_beam_args,
    check_early_stopping,
    coverage_source_len,
    reorder_cache,
)
from seqjax.decoding.logit_processors import (
    forced_tokens,
    make_controls,
    prefix_lengths,
    selection_scores,
)
from seqjax.decoding.outputs import check_outputs, output_widths
from seqjax.decoding.result import DecodeResult
from seqjax.decoding.step import StepFn, bind_params
from seqjax.decoding.step_scores import ScoreFn, StepScores, log_prob_scores
from seqjax.decoding.streaming import Emitter, check_stream, emitter


def _group(s: _State, g: int, G: int) -> _State:
    """Group ``g``'s part of a state over ``B * G`` (source, group) rows; no cache."""

    def take(x: jax.Array) -> jax.Array:
        return x.reshape(x.shape[0] // G, G, *x.shape[1:])[:, g]

    fields = {
        f: jax.tree.map(take, v)
        for f, v in s._asdict().items()
        if f not in ("position", "cache", "stream")
    }
    return _State(position=s.position, cache=None, **fields)


def _ungroup(groups: list[_State], cache: Any) -> _State:
    """The inverse of ``_group`` over all groups, with ``cache`` as the cache."""
    first = groups[0]

    def stack(*xs: jax.Array) -> jax.Array:
        x = jnp.stack(xs, axis=1)
        return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])

    fields = {
        f: jax.tree.map(stack, *(getattr(gs, f) for gs in groups))
        for f in first._fields
        if f not in ("position", "cache", "stream")
    }
    return _State(position=first.position, cache=cache, **fields)  # no stream: the loop's


def _token_counts(s: _State, V: int) -> jax.Array:
    """``float32[B, V]``: tokens the live beams of running sources chose at ``position - 1``."""
    token_BxK = lax.dynamic_index_in_dim(s.live_tokens, s.position - 1, 2, keepdims=False)
    live_BxK = (s.live_scores > -jnp.inf) & ~s.done[:, None]
    onehot = (token_BxK[..., None] == jnp.arange(V)) & live_BxK[..., None]
    return jnp.sum(onehot, axis=1, dtype=jnp.float32)


def _advance_groups(
    q: _Search, s: _State, step: StepScores, step_NxV: jax.Array, G: int, penalty: Any
) -> _State:
    """Advance the ``G`` groups in turn, each penalised by the earlier groups' choices."""
    B, Kg, V = q.B, q.K, q.V
    N = B * G * Kg

    def rows(x: jax.Array | None, g: int) -> jax.Array | None:  # group g's rows, [B*Kg, ...]
        return None if x is None else x.reshape(B, G, Kg, *x.shape[1:])[:, g].reshape(B * Kg, -1)

    counts_BxV = jnp.zeros((B, V), jnp.float32)
    groups, kept_rows = [], []
    for g in range(G):
        scores = rows(step_NxV, g).reshape(B, Kg, V) - penalty * counts_BxV[:, None, :]
        sub = _group(s, g, G)._replace(cache=jnp.arange(B * Kg, dtype=jnp.int32))
        # The group's "cache" is its row numbers: _advance's reorder returns the rows
        # that survive (a fresh array, so reorder_cache does gather it).
        sub_step = StepScores(
            rows(step.model_log_probs, g), None, None, sub.cache + 0, rows(step.attention, g)
        )
        new = _advance(q, sub, sub_step, scores)
        counts_BxV = counts_BxV + _token_counts(new._replace(done=sub.done), V)
        b_B1 = jnp.arange(B)[:, None]
        kept_rows.append(b_B1 * G * Kg + g * Kg + new.cache.reshape(B, Kg) % Kg)
        groups.append(new)
    rows_N = jnp.stack(kept_rows, axis=1).reshape(N)
    return _ungroup(groups, reorder_cache(step.cache, s.cache, rows_N))


def run_diverse_loop(
    score_fn: ScoreFn,
    cache: Any,
    q: _Search,
    *,
    num_groups: int,
    diversity_penalty: float | jax.Array,
    bos_id: int | jax.Array,
    pad_id: int | jax.Array,
    prefix_BxP: jax.Array | None,
    output_widths: dict[str, int] | None = None,
    emit: Emitter | None = None,
    expand: Expand = repeat_rows,
) -> DecodeResult:
    """The compiled group loop; returns every group's pool, ``[B, G * G_k, ...]``.

    ``q`` describes one group (``B`` sources, ``K = M = G_k``); ``cache`` has ``B`` rows.
    ``expand(cache, G * G_k)`` gives the loop's ``B * G * G_k`` rows, source-major (the
    step's own ``expand`` keeps what a source's beams share at one row per source).
    Hypotheses ``g * G_k ... (g + 1) * G_k - 1`` of a source are group ``g``'s, best first.
    ``emit`` (optional, ``seqjax.decoding.streaming.Emitter``): receives in the loop
    each source's best hypothesis over all groups (``_best_so_far``).
    """
    B, Kg, L, G = q.B, q.K, q.L, num_groups
    K = G * Kg
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
        step_NxV = selection_scores((step.scores, step.allowed), forced)
        new = _advance_groups(q, s, step, step_NxV, G, diversity_penalty)
        if emit is not None:
            stream, ack = emit.push(s.stream, t, _best_so_far(q, new, G), ~cond(new))
            new = new._replace(stream=stream, position=new.position + ack)  # ack = 0
        return new

    extras = None
    if output_widths:  # the optional outputs (seqjax.decoding.outputs), per group
        zeros = lambda x: jnp.zeros((B, Kg, L, x), jnp.float32)  # noqa: E731
        extras = {n: (zeros(x), zeros(x)) for n, x in output_widths.items()}
    groups = [_initial_state(q, None, pad_id)._replace(extras=extras) for _ in range(G)]
    init = _ungroup(groups, expand(cache, K))
    if emit is not None:
        init = init._replace(stream=emit.init(jnp.zeros((B, L), jnp.int32)))
    s = lax.while_loop(cond, body, init)

    def per_source(x: jax.Array) -> jax.Array:  # [B * G, Kg, ...] -> [B, G * Kg, ...]
        return x.reshape(B, G * Kg, *x.shape[2:])

    return DecodeResult(
        tokens=per_source(s.finished_tokens),
        lengths=per_source(s.finished_lengths),
        scores=per_source(s.finished_scores),
        log_probs=per_source(s.finished_log_probs),
        **({} if extras is None else {n: per_source(f) for n, (_, f) in s.extras.items()}),
    )


def _best_so_far(q: _Search, s: _State, G: int) -> jax.Array:
    """``int32[B, L]``: after position ``s.position - 1``, each source's best live
    hypothesis over the groups still running, or, once every group of the source is
    done or at the last position, its best finished one (``best_of_groups``' first)."""
    B, Kg, L = q.B, q.K, q.L
    done_BxG = s.done.reshape(B, G)
    live_BxJ = jnp.where(done_BxG[..., None], -jnp.inf, s.live_scores.reshape(B, G, Kg))
    pick = lambda tokens, scores: _take_best(tokens.reshape(B, G * Kg, L), scores)  # noqa: E731
    best_live = pick(s.live_tokens, live_BxJ.reshape(B, G * Kg))
    best_finished = pick(s.finished_tokens, s.finished_scores.reshape(B, G * Kg))
    final_B = jnp.all(done_BxG, axis=1) | q.at_last(s.position - 1)
    return jnp.where(final_B[:, None], best_finished, best_live)


def _take_best(tokens_BxJxL: jax.Array, scores_BxJ: jax.Array) -> jax.Array:
    """The row of the highest score per source (ties: the lower index, as ``top_k``)."""
    best_B = jnp.argmax(scores_BxJ, axis=1)
    return jnp.take_along_axis(tokens_BxJxL, best_B[:, None, None], axis=1)[:, 0]


def best_of_groups(result: DecodeResult, n_best: int) -> DecodeResult:
    """The ``n_best`` best hypotheses of all groups, best first (ties: lower group)."""
    _, order_BxM = lax.top_k(result.scores, n_best)

    def take(x: jax.Array) -> jax.Array:
        idx = order_BxM.reshape(order_BxM.shape + (1,) * (x.ndim - 2))
        return jnp.take_along_axis(x, idx, axis=1)

    return jax.tree.map(take, result)


def check_groups(beam_size: int, num_groups: int) -> None:
    if num_groups < 1 or beam_size % num_groups:
        raise ValueError(
            f"num_groups must be >= 1 and divide beam_size ({beam_size}), got {num_groups}"
        )


def diverse_beam_search(
    step_fn: StepFn,
    cache: Any,
    *,
    max_len: int,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    beam_size: int = 4,
    num_groups: int = 2,
    diversity_penalty: float | jax.Array = 0.5,
    n_best: int = 1,
    alpha: float | jax.Array = 0.0,
    length_penalty: str = "gnmt",
    coverage: float | jax.Array = 0.0,
    src_mask: jax.Array | None = None,
    min_len: int | jax.Array = 0,
    no_repeat_ngram_size: int = 0,
    repetition_penalty: float | jax.Array = 1.0,
    prefix: jax.Array | None = None,
    batch_size: int | None = None,
    params: Any = None,
    convention: str = "seqjax",
    forced_eos: bool = False,
    early_stopping: bool | str = "never",
    per_group: bool = False,
    outputs: tuple[str, ...] = (),
    stream: int | jax.Array | None = None,
    stream_every: int = STREAM_EVERY,
) -> DecodeResult:
    """Group beam search (see the module docstring); the ``n_best`` best of all groups.

    ``per_group=True`` (static) returns every group's hypotheses instead, group by
    group: slots ``g * G_k .. (g + 1) * G_k - 1`` are group ``g``'s, best first.

    ``num_groups`` must divide ``beam_size``; ``n_best <= beam_size``. Scores are the
    groups' penalised scores (diversity penalties included, as HuggingFace reports
    them); ``log_probs`` are the model's. ``diversity_penalty = 0`` runs ``num_groups``
    independent beams of width ``beam_size / num_groups`` that all find the same
    hypotheses. Other options (``outputs`` too) as in ``beam_search``.

    ``stream`` (traced): a consumer ID (``seqjax.decoding.streaming``) that receives, at
    every position, each source's best hypothesis over all groups ``[B, max_len]``: the
    best live one of the groups still running (columns ``0..t``), the best finished one
    once the source is done, so the last call holds the result's ``tokens[:, 0]`` (with
    ``per_group=True``, the best of the groups' hypotheses). ``None`` (default) = no
    callback. ``stream_every`` (static) as in ``beam_search``.
    """
    check_beam_args(beam_size, n_best, length_penalty)
    check_groups(beam_size, num_groups)
    check_early_stopping(early_stopping)
    step_fn = bind_params(step_fn, params)
    B, V, source_len = check_decoder_call(
        step_fn, cache, batch_size=batch_size, max_len=max_len, prefix=prefix,
        src_mask=src_mask, token_ids=dict(bos_id=bos_id, eos_id=eos_id, pad_id=pad_id),
        min_len=min_len, repetition_penalty=repetition_penalty,
        no_repeat_ngram_size=no_repeat_ngram_size, alpha=alpha, coverage=coverage,
    )  # fmt: skip
    check_outputs(outputs, source_len)
    check_stream(stream, stream_every)
    controls = make_controls(
        eos_id=eos_id, pad_id=pad_id, bos_id=bos_id, max_len=max_len, min_len=min_len,
        repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
        convention=convention, forced_eos=forced_eos, beam=True,
    )  # fmt: skip
    Kg = beam_size // num_groups
    S = coverage_source_len(source_len, coverage) or 0
    valid = None
    if src_mask is not None and S:
        valid = jnp.broadcast_to(src_mask[:, None, :], (B, Kg, S)).astype(bool)
    q = _Search(
        B=B, K=Kg, M=Kg, L=max_len, V=V, S=S, alpha=alpha, length_penalty_kind=length_penalty,
        coverage=coverage, valid_BxKxS=valid, monotone=True, eos_id=eos_id,
        early_stopping=early_stopping,
    )  # fmt: skip
    pools = run_diverse_loop(
        log_prob_scores(step_fn, controls),
        cache,
        q,
        num_groups=num_groups,
        diversity_penalty=diversity_penalty,
        bos_id=bos_id,
        pad_id=pad_id,
        prefix_BxP=prefix,
        output_widths=output_widths(outputs, V, source_len),
        emit=emitter(stream, stream_every),
        expand=cache_expander(step_fn),
    )
    return pools if per_group else best_of_groups(pools, n_best)
