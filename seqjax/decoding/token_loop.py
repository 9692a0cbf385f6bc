"""One hypothesis per row: the compiled loop behind greedy, sampling and greedy contrastive.

``run_token_loop`` is a single ``lax.while_loop`` over positions that stops as soon
as every row has emitted EOS (or at ``max_len``). Each iteration asks a ``ScoreFn``
(see ``seqjax.decoding.step_scores``) for scores, applies forced-prefix tokens, and
lets a ``choose_fn`` pick one token per row: ``argmax`` for greedy, a categorical draw
for sampling. ``argmax_loop`` (greedy, greedy contrastive) and ``loop_result`` turn
it into a ``DecodeResult``.

Static: the score and choose functions, ``num_rows``, ``max_len`` (they set shapes
and the traced program). Traced: the cache, token ids, ``prefix_NxP`` and ``key``.

Example (argmax over a bigram table that prefers ``previous + 1``; EOS = 3)::

    >>> import jax.numpy as jnp
    >>> from seqjax.decoding.logit_processors import Controls
    >>> from seqjax.decoding.step_scores import log_prob_scores
    >>> table = jnp.log(jnp.array([[.1, .8, .05, .05], [.1, .1, .7, .1],
    ...                            [.1, .1, .1, .7], [.25, .25, .25, .25]]))
    >>> score_fn = log_prob_scores(lambda tok, pos, c: (table[tok], c), Controls(3, 0))
    >>> out = run_token_loop(score_fn, choose_argmax, None, num_rows=1, max_len=4,
    ...                      bos_id=0, eos_id=3, pad_id=0)
    >>> out.tokens.tolist(), out.lengths.tolist()
    ([[1, 2, 3, 0]], [3])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from seqjax.decoding.logit_processors import forced_tokens, prefix_lengths, selection_scores
from seqjax.decoding.outputs import empty_buffers, result_fields, step_values
from seqjax.decoding.phases import Resize, run_phases
from seqjax.decoding.processors import id_tuple, is_any
from seqjax.decoding.result import DecodeResult
from seqjax.decoding.step_scores import ScoreFn, StepScores
from seqjax.decoding.streaming import Emitter

# choose_fn(scores_NxV, key or None) -> tokens int32[N]; banned tokens are -inf in scores.
ChooseFn = Callable[[jax.Array, jax.Array | None], jax.Array]


def choose_argmax(scores_NxV: jax.Array, key: jax.Array | None) -> jax.Array:
    """Greedy choice (lowest id among ties).

    Two plain reductions (max, then the lowest index holding it): the same result as
    ``jnp.argmax`` for non-NaN scores, and cheaper on CPU than its variadic reduce.
    """
    del key
    vocab_size = scores_NxV.shape[-1]
    best_N1 = jnp.max(scores_NxV, axis=-1, keepdims=True)
    iota = lax.broadcasted_iota(jnp.int32, scores_NxV.shape, scores_NxV.ndim - 1)
    return jnp.min(jnp.where(scores_NxV == best_N1, iota, vocab_size), axis=-1)


def choose_categorical(scores_NxV: jax.Array, key: jax.Array | None) -> jax.Array:
    """Draw from ``softmax(scores)``; ``-inf`` tokens are never drawn."""
    return jax.random.categorical(key, scores_NxV, axis=-1).astype(jnp.int32)


class TokenLoopOutput(NamedTuple):
    """``tokens int32[N, L]``, ``lengths int32[N]``, ``log_probs float32[N, L]``."""

    tokens: jax.Array
    lengths: jax.Array
    log_probs: jax.Array
    extras: Any = None  # optional outputs {name: [N, L, X]} (seqjax.decoding.outputs)


class _State(NamedTuple):
    position: jax.Array  # int32[]: index of the token generated next
    tokens: jax.Array  # int32[N, L]
    log_probs: jax.Array  # float32[N, L]
    lengths: jax.Array  # int32[N]
    done: jax.Array  # bool[N]
    cache: Any
    extras: Any = None  # optional outputs {name: float32[N, L, X]}; None = off
    stream: Any = None  # streaming.StreamState of int32[N] items; None = not streaming


def run_token_loop(
    score_fn: ScoreFn,
    choose_fn: ChooseFn,
    cache: Any,
    *,
    num_rows: int,
    max_len: int,
    bos_id: int | jax.Array,
    eos_id: int | jax.Array,
    pad_id: int | jax.Array,
    prefix_NxP: jax.Array | None = None,
    key: jax.Array | None = None,
    score_prompt: bool = True,
    last_N: jax.Array | None = None,
    start: Any = None,
    output_widths: dict[str, int] | None = None,
    emit: Emitter | None = None,
    resize: Resize | None = None,
) -> TokenLoopOutput:
    """Generate one sequence per row of ``cache`` (``num_rows`` rows, static ``max_len``).

    Position ``t`` consumes the token emitted at ``t - 1`` (BOS at ``t = 0``) and emits
    token ``t``. Finished rows keep stepping (a batch moves in lockstep) but emit PAD
    with log-prob 0. The PRNG key for position ``t`` is ``fold_in(key, t)``.
    ``score_prompt=False`` (static) reports forced prefix tokens with log-prob 0;
    ``last_N`` (``int32[N]``) ends each row after that position (``max_new_tokens``).
    ``start`` (a ``seqjax.decoding.prompt.PromptStart`` of ``N`` rows): begin after a
    prefilled prompt instead of at position 0.
    ``output_widths`` (static): optional outputs (``seqjax.decoding.outputs``).
    ``emit`` (optional, ``seqjax.decoding.streaming.Emitter``): receives each position's
    tokens ``int32[N]`` in the loop. ``resize`` (static, the step's optional
    ``resize``): run the loop in phases of growing cache length
    (``seqjax.decoding.phases``).
    """
    forced_len_N = None if prefix_NxP is None else prefix_lengths(prefix_NxP, pad_id)
    eos_ids = id_tuple(eos_id)  # several EOS ids: any ends a row

    def cond(s: _State) -> jax.Array:
        return (s.position < max_len) & ~jnp.all(s.done)

    def body(s: _State) -> _State:
        t = s.position
        previous = lax.dynamic_index_in_dim(s.tokens, jnp.maximum(t - 1, 0), 1, keepdims=False)
        inputs = jnp.where(t == 0, bos_id, previous).astype(jnp.int32)
        step = score_fn(inputs, t, s.cache, s.tokens)
        forced = None if prefix_NxP is None else forced_tokens(prefix_NxP, forced_len_N, t)
        scores = selection_scores((step.scores, step.allowed), forced)
        token = choose_fn(scores, None if key is None else jax.random.fold_in(key, t))
        # A dead end (no pickable token has a finite score, e.g. a model that masks its
        # vocabulary while min_len bans EOS) ends the row rather than emitting PAD.
        dead_N = ~jnp.any(scores > -jnp.inf, axis=-1)
        token = jnp.where(dead_N, eos_ids[0], token).astype(jnp.int32)
        if forced is not None:  # exact even if the scores underflowed to -inf
            token = jnp.where(forced[0], forced[1], token)
        token = jnp.where(s.done, pad_id, token).astype(jnp.int32)
        lp = jnp.take_along_axis(step.model_log_probs, token[:, None], axis=-1)[:, 0]
        lp = jnp.where(s.done, 0.0, lp)
        done = s.done | is_any(token, eos_ids)
        if forced is not None and not score_prompt:
            lp = jnp.where(forced[0], 0.0, lp)
        if last_N is not None:
            done = done | (t >= last_N)
        new = _State(
            position=t + 1,
            tokens=lax.dynamic_update_index_in_dim(s.tokens, token, t, axis=1),
            log_probs=lax.dynamic_update_index_in_dim(s.log_probs, lp, t, axis=1),
            lengths=s.lengths + (~s.done).astype(jnp.int32),
            done=done,
            cache=step.cache,
            extras=_write_extras(s, step),
        )
        if emit is not None:  # the buffered tokens go out when the loop ends after t
            stream, ack = emit.push(s.stream, t, token, ~cond(new))
            new = new._replace(stream=stream, position=new.position + ack)  # ack = 0
        return new

    init = _State(
        position=jnp.zeros((), jnp.int32),
        tokens=jnp.full((num_rows, max_len), pad_id, jnp.int32),
        log_probs=jnp.zeros((num_rows, max_len), jnp.float32),
        lengths=jnp.zeros((num_rows,), jnp.int32),
        done=jnp.zeros((num_rows,), bool),
        cache=cache,
        extras=empty_buffers(output_widths or {}, (num_rows,), max_len),
        stream=None if emit is None else emit.init(jnp.zeros((num_rows,), jnp.int32)),
    )
    if start is not None:
        init = init._replace(
            position=start.position,
            tokens=start.tokens,
            log_probs=start.log_probs,
            lengths=jnp.full((num_rows,), start.position, jnp.int32),
            cache=start.cache,
        )
    final = run_phases(cond, body, init, max_len=max_len, resize=resize,
                       from_start=start is None, rows=num_rows)  # fmt: skip
    return TokenLoopOutput(final.tokens, final.lengths, final.log_probs, final.extras)


def _write_extras(s: _State, step: StepScores) -> Any:
    """Column ``position`` of each optional output (0 for rows already done)."""
    if s.extras is None:
        return None
    values = step_values(step, s.extras)
    return {
        name: lax.dynamic_update_index_in_dim(
            buf, jnp.where(s.done[:, None], 0.0, values[name]), s.position, axis=1
        )
        for name, buf in s.extras.items()
    }


def loop_result(out: TokenLoopOutput, batch_size: int, k: int) -> DecodeResult:
    """Reshape ``N = B * K`` loop rows into a ``DecodeResult`` scored by summed log-prob."""
    L = out.tokens.shape[-1]
    log_probs = out.log_probs.reshape(batch_size, k, L)
    return DecodeResult(
        tokens=out.tokens.reshape(batch_size, k, L),
        lengths=out.lengths.reshape(batch_size, k),
        scores=jnp.sum(log_probs, axis=-1),
        log_probs=log_probs,
        **result_fields(out.extras, (batch_size, k)),
    )


def argmax_loop(
    score_fn: ScoreFn,
    cache: Any,
    batch_size: int,
    max_len: int,
    bos_id: int | jax.Array,
    eos_id: int | jax.Array,
    pad_id: int | jax.Array,
    prefix: jax.Array | None,
    score_prompt: bool = True,
    last_N: jax.Array | None = None,
    start: Any = None,
    output_widths: dict[str, int] | None = None,
    emit: Emitter | None = None,
    resize: Resize | None = None,
) -> DecodeResult:
    """Pick the best-scoring token at every step (greedy, and greedy contrastive)."""
    out = run_token_loop(
        score_fn,
        choose_argmax,
        cache,
        num_rows=batch_size,
        max_len=max_len,
        bos_id=bos_id,
        eos_id=eos_id,
        pad_id=pad_id,
        prefix_NxP=prefix,
        score_prompt=score_prompt,
        last_N=last_N,
        start=start,
        output_widths=output_widths,
        emit=emit,
        resize=resize,
    )
    return loop_result(out, batch_size, 1)
