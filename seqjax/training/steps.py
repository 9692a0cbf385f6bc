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


Metrics = dict[str, jax.Array]
Step = Callable[[TrainState, Batch, jax.Array], tuple[TrainState, Metrics]]
# loss_fn(params, batch, key, step) -> (loss, metrics); metrics hold nll_sum and tokens.
LossFn = Callable[[Any, Batch, jax.Array, jax.Array], tuple[jax.Array, Metrics]]


def token_loss(
    logits_BxTxV: jax.Array, batch: Batch, label_smoothing: float, pad_id: int
) -> tuple[jax.Array, Metrics]:
    """Per-token mean label-smoothed CE against ``tgt_out``, plus ``nll_sum``/``tokens``."""
    mask = batch["tgt_out"] != pad_id
    loss_sum, nll_sum, n = smoothed_cross_entropy(
        logits_BxTxV, batch["tgt_out"], mask, label_smoothing
    )
    return loss_sum / jnp.maximum(n, 1.0), {"nll_sum": nll_sum, "tokens": n}


def update_is_finite(loss: jax.Array, grads: Any) -> tuple[jax.Array, jax.Array]:
    """``(ok bool[], grad_norm float32[])``: whether ``loss`` and the global norm of
    ``grads`` are both finite, the rule by which ``apply_if_finite`` keeps an update."""
    grad_norm = optax.global_norm(grads)
    return jnp.isfinite(loss) & jnp.isfinite(grad_norm), grad_norm


def apply_if_finite(
    optimizer: optax.GradientTransformation, state: TrainState, loss: jax.Array, grads: Any
) -> tuple[TrainState, jax.Array, jax.Array]:
    """One optimizer update, kept only if ``loss`` and the gradient norm are finite.

    Returns ``(new_state, ok bool[], grad_norm float32[])``; the step counter always
    advances, so a skipped batch is not retried.
    """
    ok, grad_norm = update_is_finite(loss, grads)
    updates, new_opt = optimizer.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)  # noqa: E731
    new_state = TrainState(
        state.step + 1, keep(new_params, state.params), keep(new_opt, state.opt_state)
    )
    return new_state, ok, grad_norm


def build_step(loss_fn: LossFn, optimizer: optax.GradientTransformation) -> Step:
    """Jitted ``step(state, batch, key) -> (state, metrics)`` minimising ``loss_fn``.

    The key for an update is ``fold_in(key, state.step)``, so a resumed run draws
    exactly the dropout masks and samples an uninterrupted run would. A step whose
    loss or gradient is not finite leaves params and optimizer state unchanged and
    reports ``skipped = 1``.
    """

    def step(state: TrainState, batch: Batch, key: jax.Array):
        key = jax.random.fold_in(key, state.step)
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, batch, key, state.step
        )
        new_state, ok, grad_norm = apply_if_finite(optimizer, state, loss, grads)
        skipped = 1 - ok.astype(jnp.int32)
        return new_state, {**metrics, "loss": loss, "grad_norm": grad_norm, "skipped": skipped}

    return jax.jit(step, donate_argnums=(0,))


def make_train_step(
    model: Any,
    optimizer: optax.GradientTransformation,
    *,
    label_smoothing: float,
    pad_id: int,
) -> Step:
    """Teacher-forced (MLE) ``train_step(state, batch, dropout_key) -> (state, metrics)``."""

    def loss_fn(params: Any, batch: Batch, key: jax.Array, step: jax.Array):
        src = batch["src"]
        logits = model.forward(params, src, src != pad_id, batch["tgt_in"], dropout_rng=key)
        return token_loss(logits, batch, label_smoothing, pad_id)

    return build_step(loss_fn, optimizer)


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
