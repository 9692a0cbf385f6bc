"""``StepFn``: the step-function contract shared by all decoders, and helpers to call one.

A step function advances every row of a batch by one token::

    step_fn(tokens_B: int32[B], position: int32[], cache) -> (logits_BxV, new_cache)
    step_fn(...) -> (logits_BxV, new_cache, cross_attention_BxS)   # enables coverage

``position`` is a scalar: all rows decode the same position, and position 0 consumes
the BOS token. ``cache`` is any pytree whose array leaves lead with the batch axis.
The step function is a static argument of every decoder: it is traced once per
compilation.

Weights are data: pass them as the decoders' traced ``params=`` and give a step of
the *params form* ``step_fn(params, tokens_B, position, cache)`` (e.g. the model's
``model.step``, one hashable object per architecture), and one compilation serves
every set of weights of that architecture. Without ``params`` the step has the
3-argument form above and whatever it closes over is a constant of the compiled
program (``model.step_fn(params)``: a recompile per set of weights).

Optional: a step may offer ``prefill(tokens_BxP, cache) -> (logits_BxPxV, cache)``
(params form: ``prefill(params, tokens_BxP, cache)``), positions ``0 .. P-1`` in one
pass; decoders then feed a prompt through it instead of one position per step.
``model.step`` offers it (the Transformer in one forward pass). It may also offer
``resize(cache, length) -> cache`` (the same in both forms: no params), which lets
the decoders run in phases of growing cache length (``seqjax.decoding.phases``), and
``expand(cache, times) -> cache`` (no params either), which folds a source's beams into
the cache's rows in its own way: leaves every beam reads alike may stay at one row per
source, as long as the step returns them unchanged (``seqjax.decoding.batch_tree``).
"""

from __future__ import annotations

from typing import Any, Protocol

import jax
import jax.numpy as jnp


class StepFn(Protocol):
    """Advance ``B`` rows by one token: ``(tokens_B, position, cache) -> (logits_BxV, cache[, attn])``.

    Static/traced contract: the function object itself is *static* (decoders take it as
    a static argument and trace it once per compilation; a new object recompiles, so
    build it once and reuse it). Everything it is called with is *traced*:
    ``tokens_B`` (``int32[B]``, BOS at position 0), the scalar ``position``
    (``int32[]``, the same for every row) and ``cache`` (a pytree whose array leaves
    lead with the batch axis; decoders repeat and gather its rows). It returns
    ``logits_BxV`` (any float dtype), the new cache with the same structure, and
    optionally ``cross_attention_BxS`` for the coverage penalty. Keep Python control
    flow off traced values; any closed-over arrays (the parameters) are constants of
    the compiled program.

    >>> import jax.numpy as jnp
    >>> table_VxV = jnp.log(jnp.array([[.1, .9], [.5, .5]]))  # bigram: next | previous
    >>> step: StepFn = lambda tokens_B, position, cache: (table_VxV[tokens_B], cache)
    >>> logits, cache, attention = call_step(step, jnp.array([0, 1]), jnp.int32(0), None)
    >>> logits.shape, attention is None
    ((2, 2), True)
    """

    def __call__(self, tokens_B: jax.Array, position: jax.Array, cache: Any, /) -> tuple: ...


def bind_params(step_fn: Any, params: Any) -> StepFn:
    """The 3-argument step of a params-form ``step_fn`` applied to ``params``.

    ``params=None`` returns ``step_fn`` itself (already the 3-argument form). A step
    with a ``prepare(params)`` method (e.g. ``model.step``, which lays the weights out
    for decoding) gets it run once here, outside the decoding loop.

    >>> import jax.numpy as jnp
    >>> step = lambda table, tok, pos, c: (table[tok], c)
    >>> bind_params(step, jnp.eye(2))(jnp.array([1]), jnp.int32(0), None)[0].tolist()
    [[0.0, 1.0]]
    """
    if params is None:
        return step_fn
    prepare = getattr(step_fn, "prepare", None)
    weights = params if prepare is None else prepare(params)

    def step(tokens_B: jax.Array, position: jax.Array, cache: Any) -> tuple:
        return step_fn(weights, tokens_B, position, cache)

    if hasattr(step_fn, "capacity"):  # the cache-capacity check reads it
        step.capacity = step_fn.capacity
    if getattr(step_fn, "resize", None) is not None:  # decoding in phases (phases.py)
        step.resize = step_fn.resize
    if getattr(step_fn, "expand", None) is not None:  # beams share per-source leaves
        step.expand = step_fn.expand
    if (
        getattr(step_fn, "prefill", None) is not None
    ):  # prompts in one pass (seqjax.decoding.prompt)
        step.prefill = lambda tokens_BxP, cache: step_fn.prefill(weights, tokens_BxP, cache)
    return step


def call_step(
    step_fn: StepFn, tokens_N: jax.Array, position: jax.Array, cache: Any
) -> tuple[jax.Array, Any, jax.Array | None]:
    """Run ``step_fn`` and normalise its output to ``(logits_NxV, cache, attention | None)``."""
    out = step_fn(tokens_N, position, cache)
    if len(out) == 2:
        logits, new_cache = out
        return logits, new_cache, None
    if len(out) == 3:
        return out[0], out[1], out[2]
    raise ValueError(f"step_fn must return 2 or 3 values, got {len(out)}")


def step_output_shapes(step_fn: StepFn, num_rows: int, cache: Any) -> tuple[int, int | None]:
    """``(vocab_size, source_length or None)`` of a step, from an abstract trace (no FLOPs)."""
    tokens = jax.ShapeDtypeStruct((num_rows,), jnp.int32)
    position = jax.ShapeDtypeStruct((), jnp.int32)
    logits, _, attention = jax.eval_shape(
        lambda t, p, c: call_step(step_fn, t, p, c), tokens, position, cache
    )
    if logits.ndim != 2 or logits.shape[0] != num_rows:
        raise ValueError(
            f"step_fn must return logits of shape [B, V] = [{num_rows}, V], got {logits.shape}"
        )
    return logits.shape[-1], None if attention is None else attention.shape[-1]
