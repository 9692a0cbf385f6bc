"""Per-step logit processing: repetition penalty, token bans, truncation, forced prefixes.

All functions are pure and work on ``N`` rows at once (``N`` = batch x beams/samples).
``history_NxL`` holds the tokens generated so far in its first ``length`` columns
(``length`` a traced scalar); later columns hold padding and are ignored. Numeric
options (``penalty``, ``min_len``, ``top_k``, ``top_p``) may be traced values, so
changing them never recompiles; ``no_repeat_ngram_size`` is static (it sets shapes).
``min_len``, ``top_k`` and ``top_p`` may also be per row (``[N, 1]`` columns, see
``per_row``). The public logits-processor hook and the built-in processors are in
``seqjax.decoding.processors``; ``process_logits`` runs them.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from seqjax.decoding.processors import (
    BeginSuppressTokens,
    MinLength,
    ProcessorState,
    SuppressTokens,
    apply_processors,
    bad_words_banned,
    id_tuple,
    is_any,
)


class Controls(NamedTuple):
    """Options every decoder honours (a pytree; ``no_repeat_ngram_size`` stays static).

    ``min_len``: EOS is banned while fewer than ``min_len`` tokens were generated.
    ``repetition_penalty``: CTRL-style penalty on already generated tokens (1 = off).
    ``start_id``: a token counted as generated before position 0 by the repetition
    penalty and the n-gram ban (HF counts its decoder start token); None = none.
    ``forced_eos_at``: position (static, or per row ``[N, 1]``) where EOS is forced
    with processed log-prob 0, as HF's ``forced_eos_token_id`` does at the last position; None = never.
    ``penalty_on_log_probs``: apply the repetition penalty to the log-probs, without
    renormalising (HF's beam search), instead of to the logits.
    ``eos_id`` may be several ids (a tuple): any of them ends a row.
    ``bad_words``, ``suppress_tokens``, ``begin_suppress_tokens``: static token
    tuples (``seqjax.decoding.processors``). ``processors``: the user's static
    processors, run after the built-in bans. ``prompt_len``: forced prompt tokens per
    row (scalar or ``[N, 1]``); ``rows_per_source``: beams or samples per source.
    ``min_len`` may be a scalar or a per-row ``[N, 1]`` column.
    """

    eos_id: int | jax.Array | tuple
    pad_id: int | jax.Array
    min_len: int | jax.Array = 0
    repetition_penalty: float | jax.Array = 1.0
    no_repeat_ngram_size: int = 0
    start_id: int | jax.Array | None = None
    forced_eos_at: int | None = None
    penalty_on_log_probs: bool = False
    bad_words: tuple = ()
    suppress_tokens: tuple = ()
    begin_suppress_tokens: tuple = ()
    processors: tuple = ()
    prompt_len: int | jax.Array = 0
    rows_per_source: int = 1

    @property
    def eos_ids(self) -> tuple:
        return id_tuple(self.eos_id)


def per_row(value: Any, rows_per_source: int) -> Any:
    """A per-source option ``[B]`` as a per-row column ``[B * K, 1]``; scalars unchanged.

    >>> per_row(jnp.array([1, 5]), 2).tolist(), per_row(0.5, 2)
    ([[1], [1], [5], [5]], 0.5)
    """
    if value is None or jnp.ndim(value) == 0:
        return value
    return jnp.repeat(jnp.asarray(value), rows_per_source)[:, None]


CONVENTIONS = ("seqjax", "hf")


def make_controls(
    *,
    eos_id: int | jax.Array,
    pad_id: int | jax.Array,
    bos_id: int | jax.Array,
    max_len: int,
    min_len: int | jax.Array = 0,
    repetition_penalty: float | jax.Array = 1.0,
    no_repeat_ngram_size: int = 0,
    convention: str = "seqjax",
    forced_eos: bool = False,
    beam: bool = False,
    rows_per_source: int = 1,
    bad_words: tuple = (),
    suppress_tokens: tuple = (),
    begin_suppress_tokens: tuple = (),
    processors: tuple = (),
    prompt_len: int | jax.Array = 0,
    last: jax.Array | None = None,
) -> Controls:
    """The ``Controls`` of a decoder call under ``convention`` (``seqjax`` or ``hf``).

    ``hf`` reproduces HuggingFace ``generate()``: the decoder start token (BOS) counts
    as history for the repetition penalty and the n-gram ban, and beam search applies
    the repetition penalty to log-probs. ``forced_eos`` forces EOS at the last
    position (HF's ``forced_eos_token_id``), under either convention. Per-source
    ``min_len [B]`` is expanded to the ``rows_per_source`` rows of each source, as are
    ``prompt_len [B]`` and ``last [B]`` (each row's last position: forced EOS goes there).
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    hf = convention == "hf"
    return Controls(
        id_tuple(eos_id),
        pad_id,
        per_row(min_len, rows_per_source),
        repetition_penalty,
        no_repeat_ngram_size,
        start_id=bos_id if hf else None,
        forced_eos_at=(max_len - 1 if last is None else per_row(last, rows_per_source))
        if forced_eos
        else None,
        penalty_on_log_probs=hf and beam,
        bad_words=tuple(tuple(int(t) for t in w) for w in bad_words),
        suppress_tokens=tuple(int(t) for t in suppress_tokens),
        begin_suppress_tokens=tuple(int(t) for t in begin_suppress_tokens),
        processors=tuple(processors),
        prompt_len=per_row(prompt_len, rows_per_source),
        rows_per_source=rows_per_source,
    )


def with_start_token(
    history_NxL: jax.Array, length: jax.Array, controls: Controls
) -> tuple[jax.Array, jax.Array]:
    """History and length with ``controls.start_id`` prepended, when set."""
    if controls.start_id is None:
        return history_NxL, length
    start = jnp.full((history_NxL.shape[0], 1), controls.start_id, history_NxL.dtype)
    return jnp.concatenate([start, history_NxL], axis=1), length + 1


def seen_tokens(history_NxL: jax.Array, length: jax.Array, vocab_size: int) -> jax.Array:
    """``bool[N, V]``: True where a token occurs among the first ``length`` history tokens.

    >>> seen_tokens(jnp.array([[2, 3, 3, 0]]), 2, 5).tolist()
    [[False, False, True, True, False]]
    """
    n, L = history_NxL.shape
    valid_L = (jnp.arange(L) < length).astype(jnp.int32)
    counts = jnp.zeros((n, vocab_size), jnp.int32)
    counts = counts.at[jnp.arange(n)[:, None], history_NxL].add(jnp.broadcast_to(valid_L, (n, L)))
    return counts > 0


def repetition_penalty(
    logits_NxV: jax.Array, history_NxL: jax.Array, length: jax.Array, penalty: float | jax.Array
) -> jax.Array:
    """CTRL penalty (Keskar et al. 2019) on tokens already generated.

    A seen token's logit is divided by ``penalty`` when positive and multiplied by it
    when negative, so ``penalty > 1`` always makes repeats less likely and
    ``penalty == 1`` changes nothing.

    >>> repetition_penalty(jnp.array([[2.0, -2.0, 2.0]]), jnp.array([[0, 1]]), 2, 2.0).tolist()
    [[1.0, -4.0, 2.0]]
    """
    seen = seen_tokens(history_NxL, length, logits_NxV.shape[-1])
    penalised = jnp.where(logits_NxV > 0, logits_NxV / penalty, logits_NxV * penalty)
    return jnp.where(seen, penalised, logits_NxV)


def ngram_banned(history_NxL: jax.Array, length: jax.Array, n: int, vocab_size: int) -> jax.Array:
    """``bool[N, V]``: tokens that would complete an ``n``-gram already in the history.

    The last ``n - 1`` generated tokens are matched against every earlier window; the
    token that followed each match is banned (``n == 1`` bans every seen token).

    >>> # history "5 6 5": emitting 6 would repeat the bigram "5 6"
    >>> ngram_banned(jnp.array([[5, 6, 5, 0]]), 3, 2, 8)[0].nonzero()[0].tolist()
    [6]
    """
    num_rows, L = history_NxL.shape
    banned = jnp.zeros((num_rows, vocab_size), bool)
    if n <= 0 or L < n:
        return banned
    num_windows = L - n + 1
    windows_NxWxn = jnp.stack([history_NxL[:, k : k + num_windows] for k in range(n)], axis=-1)
    # window j covers positions j .. j+n-1; it is complete once j + n - 1 < length
    match_NxW = jnp.broadcast_to(jnp.arange(num_windows) <= length - n, (num_rows, num_windows))
    if n > 1:
        start = jnp.maximum(length - (n - 1), 0)  # clamped; no window is valid then anyway
        suffix = lax.dynamic_slice_in_dim(history_NxL, start, n - 1, axis=1)
        match_NxW = match_NxW & jnp.all(windows_NxWxn[..., :-1] == suffix[:, None, :], axis=-1)
    counts = jnp.zeros((num_rows, vocab_size), jnp.int32)
    counts = counts.at[jnp.arange(num_rows)[:, None], windows_NxWxn[..., -1]].add(match_NxW)
    return counts > 0


def banned_tokens(
    history_NxL: jax.Array, length: jax.Array, vocab_size: int, controls: Controls
) -> jax.Array:
    """``bool[N, V]`` tokens no search may pick at this step.

    PAD is never generated (unless it doubles as EOS); EOS is banned before
    ``min_len``; ``no_repeat_ngram_size`` bans n-gram repeats; then bad words and
    suppressed tokens (the processors of ``seqjax.decoding.processors``, as masks).
    A row with every token banned gets EOS back, so it ends instead of emitting garbage.
    """
    c = controls
    v = jnp.arange(vocab_size)
    is_eos = is_any(v, c.eos_ids)
    ban = (v == c.pad_id) & ~is_any(jnp.asarray(c.pad_id), c.eos_ids)
    ban = ban | MinLength(c.eos_ids, c.min_len).mask(length, vocab_size)
    if c.suppress_tokens:
        ban = ban | SuppressTokens(c.suppress_tokens).mask(vocab_size)
    ban = jnp.broadcast_to(ban, (history_NxL.shape[0], vocab_size))
    if c.begin_suppress_tokens:
        state = processor_state(history_NxL.shape[0], c)
        ban = ban | BeginSuppressTokens(c.begin_suppress_tokens).mask(length, state, vocab_size)
    if c.no_repeat_ngram_size or c.bad_words:
        history, hist_len = with_start_token(history_NxL, length, c)
    if c.no_repeat_ngram_size:
        ban = ban | ngram_banned(history, hist_len, c.no_repeat_ngram_size, vocab_size)
    if c.bad_words:
        ban = ban | bad_words_banned(history, hist_len, c.bad_words, vocab_size)
    return unstick(ban, is_eos)


def unstick(ban_NxV: jax.Array, is_eos_V: jax.Array) -> jax.Array:
    """``ban_NxV`` with EOS allowed again in rows where every token is banned."""
    stuck_N1 = jnp.all(ban_NxV, axis=-1, keepdims=True)
    return ban_NxV & ~(stuck_N1 & is_eos_V)


def processor_state(num_rows: int, controls: Controls) -> ProcessorState:
    """The ``ProcessorState`` of ``num_rows`` rows under ``controls``."""
    prompt_len = jnp.broadcast_to(jnp.reshape(controls.prompt_len, (-1,)), (num_rows,))
    source = jnp.arange(num_rows, dtype=jnp.int32) // controls.rows_per_source
    return ProcessorState(source=source, prompt_len=prompt_len.astype(jnp.int32))


def process_logits(
    logits_NxV: jax.Array, history_NxL: jax.Array, length: jax.Array, controls: Controls
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The common pipeline: ``(model_log_probs, processed_log_probs, banned)``, all ``[N, V]``.

    ``model_log_probs`` is the unmodified ``log_softmax(logits)`` (what gets reported);
    ``processed_log_probs`` has the repetition penalty applied; ``banned`` comes from
    ``banned_tokens``.
    """
    logits = logits_NxV.astype(jnp.float32)
    model_lp = jax.nn.log_softmax(logits, axis=-1)
    penalty = controls.repetition_penalty
    history, hist_len = with_start_token(history_NxL, length, controls)

    def penalised() -> jax.Array:
        if controls.penalty_on_log_probs:
            return repetition_penalty(model_lp, history, hist_len, penalty)
        return jax.nn.log_softmax(repetition_penalty(logits, history, hist_len, penalty), -1)

    # a runtime branch: the [N, V] scatter is skipped when the (traced) penalty is off
    processed_lp = lax.cond(jnp.asarray(penalty) == 1.0, lambda: model_lp, penalised)
    banned = banned_tokens(history_NxL, length, logits.shape[-1], controls)
    is_eos = is_any(jnp.arange(logits.shape[-1]), controls.eos_ids)
    if controls.processors:  # static: no user processors, no cost
        state = processor_state(history_NxL.shape[0], controls)
        out = jnp.where(banned, -jnp.inf, processed_lp)
        out = apply_processors(controls.processors, out, history_NxL, length, state)
        banned = unstick(~(out > -jnp.inf), is_eos)
        # a banned token keeps its processed value: a forced prompt token may need it
        processed_lp = jnp.where(out > -jnp.inf, out, processed_lp)
    if controls.forced_eos_at is not None:
        at = length == controls.forced_eos_at
        processed_lp = jnp.where(at, jnp.where(is_eos, 0.0, -jnp.inf), processed_lp)
        banned = jnp.where(at, ~is_eos, banned)
    return model_lp, processed_lp, banned


def truncation_allowed(
    logits_NxV: jax.Array, top_k: int | jax.Array, top_p: float | jax.Array
) -> jax.Array:
    """``bool[N, V]``: top-k, then top-p on what top-k kept, from one sort per row.

    Top-k keeps the ``top_k`` highest logits (``top_k <= 0`` keeps all; ties with the
    k-th value are kept). Top-p then keeps the nucleus of the renormalised survivors:
    a token stays when the probability ranked above it is below ``top_p`` (so the
    token crossing ``top_p``, and always the best one, is kept; ties too); ``top_p >= 1``
    keeps all. Tests pin this against separate top-k and top-p references. The row is
    sorted once, and not at all when both are off: a full-vocabulary sort costs more
    than the rest of a small model's sampling step. The options may be traced; the
    skip is a ``lax.cond`` on them. Per-row ``top_k`` / ``top_p`` are ``[N, 1]``
    columns (``per_row``).

    >>> truncation_allowed(jnp.array([[0.1, 3.0, 2.0, -1.0]]), 2, 1.0).tolist()
    [[False, True, True, False]]
    >>> # probabilities 0.5, 0.3, 0.2: top_p 0.6 keeps the first two
    >>> truncation_allowed(jnp.log(jnp.array([[0.5, 0.3, 0.2]])), 0, 0.6).tolist()
    [[True, True, False]]
    """
    vocab_size = logits_NxV.shape[-1]
    k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab_size), vocab_size)

    def truncate(x_NxV: jax.Array) -> jax.Array:
        sorted_desc = -jnp.sort(-x_NxV, axis=-1)
        if jnp.ndim(k) == 0:
            k_threshold_N1 = lax.dynamic_slice_in_dim(sorted_desc, k - 1, 1, axis=-1)
        else:  # one k per row
            k_N1 = jnp.broadcast_to(k, (x_NxV.shape[0], 1)).astype(jnp.int32)
            k_threshold_N1 = jnp.take_along_axis(sorted_desc, k_N1 - 1, axis=-1)
        kept_sorted = jnp.where(sorted_desc >= k_threshold_N1, sorted_desc, -jnp.inf)
        probs = jax.nn.softmax(kept_sorted, axis=-1)
        mass_above = jnp.cumsum(probs, axis=-1) - probs
        keep = ((mass_above < top_p) | (top_p >= 1.0)) & (kept_sorted > -jnp.inf)
        num_kept = jnp.maximum(jnp.sum(keep, axis=-1, keepdims=True), 1)
        p_threshold_N1 = jnp.take_along_axis(kept_sorted, num_kept - 1, axis=-1)
        return x_NxV >= jnp.maximum(k_threshold_N1, p_threshold_N1)

    active = jnp.any((k < vocab_size) | (top_p < 1.0))
    return lax.cond(active, truncate, lambda x: jnp.ones(x.shape, bool), logits_NxV)


def prefix_lengths(prefix_NxP: jax.Array, pad_id: int | jax.Array) -> jax.Array:
    """``int32[N]``: number of forced tokens per row (prefixes are left-aligned, PAD-padded)."""
    return jnp.sum(prefix_NxP != pad_id, axis=-1).astype(jnp.int32)


def forced_tokens(
    prefix_NxP: jax.Array, prefix_len_N: jax.Array, position: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """``(is_forced bool[N], token int32[N])``: which rows must emit a prefix token now.

    >>> forced_tokens(jnp.array([[7, 8], [9, 0]]), jnp.array([2, 1]), 1)
    (Array([ True, False], dtype=bool), Array([8, 0], dtype=int32))
    """
    column = jnp.minimum(position, prefix_NxP.shape[1] - 1)
    token = lax.dynamic_index_in_dim(prefix_NxP, column, axis=1, keepdims=False)
    return position < prefix_len_N, token.astype(jnp.int32)


def selection_scores(
    step: tuple[jax.Array, jax.Array], forced: tuple[jax.Array, jax.Array] | None
) -> jax.Array:
    """``[N, V]`` scores with ``-inf`` at tokens the search may not pick.

    ``step`` is ``(scores_NxV, allowed_NxV)``; ``forced`` is ``(is_forced_N, token_N)``
    or ``None``. A forced row keeps only its forced token, whatever the bans say.
    """
    scores, allowed = step
    if forced is not None:
        is_forced, token = forced
        onehot = jnp.arange(scores.shape[-1]) == token[:, None]
        allowed = jnp.where(is_forced[:, None], onehot, allowed)
    return jnp.where(allowed, scores, -jnp.inf)
