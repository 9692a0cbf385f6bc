"""The step-function contract shared by all decoders, and what a step yields to them.

A step function advances every row of a batch by one token::

    step_fn(tokens_B: int32[B], position: int32[], cache) -> (logits_BxV, new_cache)
    step_fn(...) -> (logits_BxV, new_cache, cross_attention_BxS)   # enables coverage

``position`` is a scalar: all rows decode the same position, and position 0 consumes
the BOS token. ``cache`` is any pytree whose array leaves lead with the batch axis.
The step function is a static argument of every decoder: it is traced once per
compilation, so build it once (e.g. ``step = model.step_fn(params)``) and reuse it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

StepFn = Callable[..., tuple]


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
    return logits.shape[-1], None if attention is None else attention.shape[-1]


class StepScores(NamedTuple):
    """One decoding step as a decoder's search sees it (``N`` rows, ``V`` tokens).

    - ``model_log_probs``: ``[N, V]`` unmodified ``log_softmax(logits)``; reported.
    - ``scores``: ``[N, V]`` what the search ranks or samples from (processed
      log-probs, temperature-scaled log-probs, contrastive scores, ...).
    - ``allowed``: ``bool[N, V]`` tokens the search may pick (bans, truncation,
      plausibility). A row forced by a prefix ignores it and takes the forced token
      at its ``scores`` value.
    - ``cache``: the step's new cache (``N`` rows).
    - ``attention``: ``[N, S]`` cross-attention for coverage, or ``None``.
    """

    model_log_probs: jax.Array
    scores: jax.Array
    allowed: jax.Array
    cache: Any
    attention: jax.Array | None


# score_fn(inputs_N, position, cache, history_NxL) -> StepScores. ``history_NxL`` holds
# the tokens generated so far in columns [0, position); later columns are padding.
ScoreFn = Callable[[jax.Array, jax.Array, Any, jax.Array], StepScores]
