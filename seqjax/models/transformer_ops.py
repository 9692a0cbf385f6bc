"""Pure pieces shared by the Flax Transformer (``transformer_net.py``, teacher forcing) and
its incremental decode step (``transformer_step.py``): each HF option is written once here.

- positions: fixed sinusoid tables (seqjax/Vaswani and Marian layouts) or learned rows;
- ``embed``: scaled token embedding + positions (+ ``layernorm_embedding``);
- ``residual``: one sublayer with its pre-LN or post-LN residual;
- ``attention``: scaled dot-product attention with a float32 softmax;
- ``activation_fn`` and ``layer_norm`` (``activation``, ``layer_norm_eps``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

from seqjax.config import ModelConfig

if TYPE_CHECKING:
    import flax.linen as nn

NEG_INF = -1e9  # large finite negative: keeps fully masked rows finite (no NaN)
Aux = TypeVar("Aux")


@functools.lru_cache(maxsize=16)
def sinusoid_table(max_len: int, d_model: int) -> np.ndarray:
    """Fixed sinusoidal position encodings ``[max_len, d_model]`` (sin on even dims)."""
    pos = np.arange(max_len)[:, None]
    inv_freq = np.exp(-math.log(10000.0) * np.arange(0, d_model, 2) / d_model)
    table = np.zeros((max_len, d_model), np.float32)
    table[:, 0::2] = np.sin(pos * inv_freq)
    table[:, 1::2] = np.cos(pos * inv_freq)[:, : d_model // 2]
    table.setflags(write=False)  # cached: shared by every caller
    return table


@functools.lru_cache(maxsize=16)
def marian_sinusoid_table(max_len: int, d_model: int) -> np.ndarray:
    """HF Marian's sinusoidal positions ``[max_len, d_model]``: sines in the first half of
    the features, cosines in the second (same frequencies as ``sinusoid_table``)."""
    pos = np.arange(max_len, dtype=np.float64)[:, None]
    j = np.arange(d_model)
    angles = pos / np.power(10000.0, 2 * (j // 2) / d_model)  # float64, then cast
    half = (d_model + 1) // 2
    table = np.empty((max_len, d_model), np.float32)
    table[:, :half] = np.sin(angles[:, 0::2])
    table[:, half:] = np.cos(angles[:, 1::2])
    table.setflags(write=False)
    return table


def fixed_position_table(cfg: ModelConfig) -> np.ndarray | None:
    """The fixed position table ``[max_len, D]`` of ``cfg``, or None for learned positions."""
    if cfg.position_embedding == "sinusoidal":
        return sinusoid_table(cfg.max_len, cfg.d_model)
    if cfg.position_embedding == "sinusoidal_marian":
        return marian_sinusoid_table(cfg.max_len, cfg.d_model)
    return None


def position_rows(cfg: ModelConfig, learned_RxD: jax.Array | None) -> jax.Array:
    """Position vectors ``[max_len, D]``, row ``t`` for position ``t``.

    ``learned_RxD`` is the learned table (``max_len + position_offset`` rows; BART's
    first ``position_offset`` rows are never used), ignored for fixed positions.
    """
    fixed = fixed_position_table(cfg)
    if fixed is not None:
        return jnp.asarray(fixed)
    return learned_RxD[cfg.position_offset :]


def compute_dtype(cfg: ModelConfig) -> jnp.dtype:
    return jnp.dtype(cfg.dtype)


def activation_fn(name: str) -> Callable[[jax.Array], jax.Array]:
    """The FFN nonlinearity ``ModelConfig.activation`` names."""
    if name == "relu":
        return jax.nn.relu
    if name == "gelu":
        return functools.partial(jax.nn.gelu, approximate=False)
    if name == "gelu_tanh":
        return functools.partial(jax.nn.gelu, approximate=True)
    if name == "swish":
        return jax.nn.silu
    raise ValueError(f"activation: unknown {name!r}")


def layer_norm(cfg: ModelConfig, **kwargs: Any) -> nn.LayerNorm:
    """A float32 LayerNorm with the configured epsilon."""
    import flax.linen as nn  # here, not at the top: see seqjax.models.interface

    return nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=jnp.float32, **kwargs)


def apply_layer_norm(cfg: ModelConfig, ln_params: dict[str, jax.Array], x: jax.Array):
    """``layer_norm(cfg)`` on explicit parameters (``{"scale", "bias"}``)."""
    return layer_norm(cfg).apply({"params": ln_params}, x)


def embed(
    cfg: ModelConfig,
    tokens_xD: jax.Array,
    positions_xD: jax.Array,
    norm: Callable[[jax.Array], jax.Array] | None,
) -> jax.Array:
    """Token embeddings ``[..., D]`` (scaled if configured) + positions, then the
    optional ``layernorm_embedding``; in the compute dtype."""
    x = tokens_xD * math.sqrt(cfg.d_model) if cfg.scale_embeddings else tokens_xD
    x = x + positions_xD
    if norm is not None:
        x = norm(x)
    return x.astype(compute_dtype(cfg))


def _identity(x: jax.Array) -> jax.Array:
    return x


def residual(
    cfg: ModelConfig,
    sublayer: Callable[[jax.Array], tuple[jax.Array, Aux]],
    norm: Callable[[jax.Array], jax.Array],
    x: jax.Array,
    drop: Callable[[jax.Array], jax.Array] = _identity,
) -> tuple[jax.Array, Aux]:
    """``x`` through one sublayer and its residual: pre-LN ``x + f(LN(x))`` or post-LN
    ``LN(x + f(x))``. ``sublayer`` returns ``(y, aux)``; ``aux`` (new keys/values,
    attention weights) is passed through."""
    dt = compute_dtype(cfg)
    if cfg.pre_ln:
        y, aux = sublayer(norm(x).astype(dt))
        return x + drop(y), aux
    y, aux = sublayer(x)
    return norm(x + drop(y)).astype(dt), aux


def attention(
    q_BxHxQxD: jax.Array, k_BxHxKxD: jax.Array, v_BxHxKxD: jax.Array, mask_BxQxK: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Scaled dot-product attention; the softmax runs in float32.

    Returns (output ``[B, H, Q, D]``, weights ``[B, H, Q, K]``).
    """
    scale = 1.0 / math.sqrt(q_BxHxQxD.shape[-1])
    logits = jnp.einsum("bhqd,bhkd->bhqk", q_BxHxQxD, k_BxHxKxD).astype(jnp.float32) * scale
    logits = jnp.where(mask_BxQxK[:, None], logits, NEG_INF)
    weights = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum("bhqk,bhkd->bhqd", weights.astype(v_BxHxKxD.dtype), v_BxHxKxD)
    return out, weights
