"""Learning-rate schedules and the AdamW optimizer used by ``seqjax train``."""

from __future__ import annotations

from typing import Any, NamedTuple

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


class ParamsEmaState(NamedTuple):
    """Exponential moving average of the parameters *after* each update."""

    ema: Any


def track_params_ema(decay: float) -> optax.GradientTransformation:
    """Identity on the updates that keeps ``ema = decay * ema + (1 - decay) * new_params``.

    Put it last in a chain, where the updates are final, so ``params + updates`` are
    the new parameters. Living in the optimizer state, the average is checkpointed
    and restored with it, so a resumed self-distillation run continues with the same
    EMA teacher. It starts from the parameters the optimizer is initialised with.
    """

    def init(params: optax.Params) -> ParamsEmaState:
        return ParamsEmaState(jax.tree.map(jnp.copy, params))  # no aliasing: states are donated

    def update(updates, state: ParamsEmaState, params=None):
        if params is None:
            raise ValueError("track_params_ema needs params in optimizer.update")
        ema = jax.tree.map(
            lambda e, p, u: decay * e + (1.0 - decay) * (p + u).astype(e.dtype),
            state.ema,
            params,
            updates,
        )
        return updates, ParamsEmaState(ema)

    return optax.GradientTransformation(init, update)


def params_ema(opt_state: Any) -> Any:
    """The EMA parameters held by ``track_params_ema`` inside a (chained) optimizer state."""
    found = [
        s.ema
        for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, ParamsEmaState))
        if isinstance(s, ParamsEmaState)
    ]
    if len(found) != 1:
        raise ValueError(f"expected one ParamsEmaState in the optimizer state, found {len(found)}")
    return found[0]


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """Global-norm clipping followed by AdamW with the configured schedule.

    Self-distillation from an EMA teacher (``cfg.distill_ema``) appends
    ``track_params_ema``.
    """
    if cfg.objective == "distill" and cfg.distill_ema is not None:
        return optax.chain(_base_optimizer(cfg), track_params_ema(cfg.distill_ema))
    return _base_optimizer(cfg)


def _base_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
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
