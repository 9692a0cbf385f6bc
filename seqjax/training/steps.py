"""Jitted training and evaluation steps.

Batches are dicts of int32 arrays ``src [B, L]``, ``tgt_in [B, L]``, ``tgt_out [B, L]``
with PAD = ``config.pad_id``; the loss ignores PAD targets (including all-PAD filler
rows that keep batch shapes fixed).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from seqjax.training.losses import smoothed_cross_entropy

Batch = dict[str, jax.Array]


class TrainState(NamedTuple):
    step: jax.Array  # int32 []
    params: Any
    opt_state: Any


def init_train_state(params: Any, optimizer: optax.GradientTransformation) -> TrainState:
    return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))


def make_train_step(
    model: Any,
    optimizer: optax.GradientTransformation,
    *,
    label_smoothing: float,
    pad_id: int,
) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, dict[str, jax.Array]]]:
    """Build ``train_step(state, batch, dropout_key) -> (state, metrics)`` (jitted).

    The dropout key for an update is ``fold_in(dropout_key, state.step)``, so a resumed
    run draws exactly the masks an uninterrupted run would. A step whose loss or
    gradient is not finite leaves params and optimizer state unchanged and reports
    ``skipped = 1``.
    """

    def loss_fn(params: Any, batch: Batch, key: jax.Array):
        src = batch["src"]
        logits = model.forward(params, src, src != pad_id, batch["tgt_in"], dropout_rng=key)
        mask = batch["tgt_out"] != pad_id
        loss_sum, nll_sum, n = smoothed_cross_entropy(
            logits, batch["tgt_out"], mask, label_smoothing
        )
        n = jnp.maximum(n, 1.0)
        return loss_sum / n, (nll_sum, n)

    def train_step(state: TrainState, batch: Batch, dropout_key: jax.Array):
        key = jax.random.fold_in(dropout_key, state.step)
        (loss, (nll_sum, n)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, batch, key
        )
        grad_norm = optax.global_norm(grads)
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, new_opt = optimizer.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)  # noqa: E731
        new_state = TrainState(
            state.step + 1, keep(new_params, state.params), keep(new_opt, state.opt_state)
        )
        metrics = {
            "loss": loss,
            "nll_sum": nll_sum,
            "tokens": n,
            "grad_norm": grad_norm,
            "skipped": 1 - ok.astype(jnp.int32),
        }
        return new_state, metrics

    return jax.jit(train_step, donate_argnums=(0,))


def make_eval_step(model: Any, *, pad_id: int) -> Callable[[Any, Batch], dict[str, jax.Array]]:
    """``eval_step(params, batch) -> {nll_sum, tokens, correct}`` (jitted, no dropout)."""

    def eval_step(params: Any, batch: Batch) -> dict[str, jax.Array]:
        src = batch["src"]
        logits = model.forward(params, src, src != pad_id, batch["tgt_in"])
        mask = batch["tgt_out"] != pad_id
        _, nll_sum, n = smoothed_cross_entropy(logits, batch["tgt_out"], mask, 0.0)
        correct = jnp.sum((jnp.argmax(logits, -1) == batch["tgt_out"]) & mask)
        return {"nll_sum": nll_sum, "tokens": n, "correct": correct}

    return jax.jit(eval_step)
