"""Learning-rate schedules and the AdamW optimizer used by ``seqjax train``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from seqjax.config import TrainConfig


def learning_rate_schedule(cfg: TrainConfig) -> optax.Schedule:
    """Linear warmup, then inverse square root (Vaswani et al.) or cosine decay.

    inverse_sqrt: ``lr * min(s / w, sqrt(w / s))`` — peaks at ``lr`` when ``s = w``.
    cosine: warmup to ``lr`` then cosine down to ``lr / 100`` at ``total_steps``.
    """
    lr, warmup = cfg.learning_rate, max(cfg.warmup_steps, 1)
    if cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=lr,
            warmup_steps=warmup,
            decay_steps=max(cfg.total_steps, warmup + 1),
            end_value=lr / 100,
        )

    def inverse_sqrt(step: jax.Array) -> jax.Array:
        s = jnp.maximum(jnp.asarray(step, jnp.float32), 1.0)
        return lr * jnp.minimum(s / warmup, jnp.sqrt(warmup / s))

    return inverse_sqrt


def _decay_mask(params: optax.Params) -> optax.Params:
    # Weight decay on matrices only: biases and LayerNorm scales are not decayed.
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """Global-norm clipping followed by AdamW with the configured schedule."""
    return optax.chain(
        optax.clip_by_global_norm(cfg.clip_norm),
        optax.adamw(
            learning_rate_schedule(cfg),
            b1=0.9,
            b2=cfg.adam_b2,
            eps=1e-9,
            weight_decay=cfg.weight_decay,
            mask=_decay_mask,
        ),
    )
