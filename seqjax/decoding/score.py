"""Teacher-forced scoring of given target sequences through any step function."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from seqjax.decoding.arg_checks import check_score_call
from seqjax.decoding.step import StepFn, bind_params, call_step


def target_mask(targets_BxL: jax.Array, eos_id: int | jax.Array, pad_id: int | jax.Array):
    """``bool[B, L]``: real target tokens, i.e. up to and including the first EOS, no PAD.

    >>> target_mask(jnp.array([[5, 6, 3, 0], [5, 0, 0, 0]]), eos_id=3, pad_id=0).tolist()
    [[True, True, True, False], [True, False, False, False]]
    """
    is_eos = targets_BxL == eos_id
    after_eos = (jnp.cumsum(is_eos, axis=1) - is_eos) > 0
    is_pad = (targets_BxL == pad_id) & (pad_id != eos_id)
    return ~after_eos & ~is_pad


def score(
    step_fn: StepFn,
    cache: Any,
    targets: jax.Array,
    *,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    params: Any = None,
) -> tuple[jax.Array, jax.Array]:
    """Log-probability of ``targets [B, L]`` (no BOS; EOS then PAD) under ``step_fn``.

    Runs one ``lax.scan`` over the ``L`` positions, feeding BOS and then the target
    tokens. Returns ``(log_probs float32[B, L], total float32[B])``: per-token model
    log-probs (0 after EOS and at PAD) and their sum. Scoring a decoder's own output
    reproduces its ``log_probs``. Static: ``step_fn``, the token ids; traced: ``cache``,
    ``targets`` and ``params`` (given: ``step_fn(params, tokens, position, cache)``).

    Example::

        >>> import jax, jax.numpy as jnp
        >>> step = lambda tok, pos, c: (jnp.log(jnp.array([[0.0, .5, .25, .25]])), c)
        >>> lp, total = score(step, None, jnp.array([[2, 1, 0]]), bos_id=0, eos_id=1, pad_id=0)
        >>> [round(x, 4) for x in lp[0].tolist()], round(float(total[0]), 4)
        ([-1.3863, -0.6931, 0.0], -2.0794)
    """
    step_fn = bind_params(step_fn, params)
    check_score_call(step_fn, cache, targets, dict(bos_id=bos_id, eos_id=eos_id, pad_id=pad_id))
    targets = jnp.asarray(targets, jnp.int32)
    B = targets.shape[0]
    inputs_LxB = jnp.concatenate([jnp.full((B, 1), bos_id, jnp.int32), targets[:, :-1]], 1).T

    def body(step_cache, xs):
        position, inputs_B, target_B = xs
        logits, step_cache, _ = call_step(step_fn, inputs_B, position, step_cache)
        lp_BxV = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        return step_cache, jnp.take_along_axis(lp_BxV, target_B[:, None], axis=-1)[:, 0]

    positions = jnp.arange(targets.shape[1], dtype=jnp.int32)
    _, lp_LxB = lax.scan(body, cache, (positions, inputs_LxB, targets.T))
    log_probs = jnp.where(target_mask(targets, eos_id, pad_id), lp_LxB.T, 0.0)
    return log_probs, jnp.sum(log_probs, axis=-1)
