"""Transformer encoder-decoder (Vaswani et al. 2017) as functional Flax linen.

The module ``TransformerNet`` holds the layers; ``Transformer`` wraps it in the pure
functions every decoder relies on (see DESIGN.md, "The model interface")::

    model = Transformer(model_preset("tiny"))
    params = model.init(jax.random.key(0))
    memory_BxSxD = model.encode(params, src_BxS, src_mask_BxS)
    cache = model.init_cache(params, memory_BxSxD, src_mask_BxS, max_len=T)
    logits_BxV, cache, cross_attn_BxS = model.decode_step(params, cache, token_B, position)
    logits_BxTxV = model.forward(params, src_BxS, src_mask_BxS, tgt_in_BxT)

Cache layout (a pytree whose leaves all lead with the batch axis, so decoders can
expand it for beams and reorder it with a gather along axis 0)::

    cache["layers"][i]["k"], ["v"]:   [B, H, T, Dh]  self-attention keys/values so far
    cache["layers"][i]["ck"], ["cv"]: [B, H, S, Dh]  cross-attention keys/values of memory
    cache["src_mask"]:                [B, S]         True at real source tokens

Cross-attention keys/values are projected once in ``init_cache`` rather than at
every step: for a 32-token source that projection would otherwise cost more than
the rest of the step for a transformer-base decoder.

Incremental decoding (``decode_step`` / ``step_fn``) does not go through the Flax
modules: ``decoder_weights`` lays the decoder parameters out once as plain 2-D
matrices ``[in, out]`` (fused QKV ``[D, 3 * H * Dh]``, the tied output embedding
transposed to ``[D, V]``, cast to the compute dtype), and ``fast_decode_step`` runs
one position on them with plain ``x @ W`` products. ``step_fn(params)`` prepares the
weights once, outside the decoders' loops. With the modules' 4-D head-split kernels
XLA's CPU backend transposes every attention kernel inside the loop, at every step
(about half the time of a batch-1 step for transformer-base). The two paths
compute the same function; tests pin them against ``forward``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from seqjax.config import ModelConfig
from seqjax.models.interface import Cache, EncoderDecoder, EncoderDecoderNet, Params

_NEG_INF = -1e9  # large finite negative: keeps fully masked rows finite (no NaN)


def sinusoid_table(max_len: int, d_model: int) -> np.ndarray:
    """Fixed sinusoidal position encodings ``[max_len, d_model]`` (sin on even dims)."""
    pos = np.arange(max_len)[:, None]
    inv_freq = np.exp(-math.log(10000.0) * np.arange(0, d_model, 2) / d_model)
    table = np.zeros((max_len, d_model), np.float32)
    table[:, 0::2] = np.sin(pos * inv_freq)
    table[:, 1::2] = np.cos(pos * inv_freq)[:, : d_model // 2]
    return table


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
    return table


def fixed_position_table(cfg: ModelConfig) -> np.ndarray | None:
    """The fixed position table ``[max_len, D]`` of ``cfg``, or None for learned positions."""
    if cfg.position_embedding == "sinusoidal":
        return sinusoid_table(cfg.max_len, cfg.d_model)
    if cfg.position_embedding == "sinusoidal_marian":
        return marian_sinusoid_table(cfg.max_len, cfg.d_model)
    return None


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
    return nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=jnp.float32, **kwargs)


def _dtype(cfg: ModelConfig) -> jnp.dtype:
    return jnp.dtype(cfg.dtype)


def _dense_init() -> Callable:
    return nn.initializers.xavier_uniform()


def attention(
    q_BxHxQxD: jax.Array, k_BxHxKxD: jax.Array, v_BxHxKxD: jax.Array, mask_BxQxK: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Scaled dot-product attention; the softmax runs in float32.

    Returns (output ``[B, H, Q, D]``, weights ``[B, H, Q, K]``).
    """
    scale = 1.0 / math.sqrt(q_BxHxQxD.shape[-1])
    logits = jnp.einsum("bhqd,bhkd->bhqk", q_BxHxQxD, k_BxHxKxD).astype(jnp.float32) * scale
    logits = jnp.where(mask_BxQxK[:, None], logits, _NEG_INF)
    weights = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum("bhqk,bhkd->bhqd", weights.astype(v_BxHxKxD.dtype), v_BxHxKxD)
    return out, weights


class MultiHeadProjection(nn.Module):
    """Projects ``[B, T, D]`` to ``n`` head-split tensors ``[B, H, T, Dh]`` with one matmul.

    ``use_bias`` adds a ``bias [n, H, Dh]`` parameter (off by default: seqjax's own
    models have none; imported HF checkpoints do).
    """

    num_heads: int
    head_dim: int
    n: int
    dtype: Any
    use_bias: bool = False

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array) -> tuple[jax.Array, ...]:
        kernel = self.param(
            "kernel",
            _dense_init(),
            (x_BxTxD.shape[-1], self.n, self.num_heads, self.head_dim),
        )
        y = jnp.einsum("btd,dnhk->nbhtk", x_BxTxD.astype(self.dtype), kernel.astype(self.dtype))
        if self.use_bias:
            bias = self.param(
                "bias", nn.initializers.zeros, (self.n, self.num_heads, self.head_dim)
            )
            y = y + bias.astype(self.dtype)[:, None, :, None, :]
        return tuple(y[i] for i in range(self.n))


class OutputProjection(nn.Module):
    """Merges heads ``[B, H, T, Dh]`` back to ``[B, T, D]``."""

    d_model: int
    dtype: Any

    @nn.compact
    def __call__(self, x_BxHxTxDh: jax.Array) -> jax.Array:
        _, h, _, dh = x_BxHxTxDh.shape
        kernel = self.param("kernel", _dense_init(), (h, dh, self.d_model))
        bias = self.param("bias", nn.initializers.zeros, (self.d_model,))
        y = jnp.einsum("bhtk,hkd->btd", x_BxHxTxDh, kernel.astype(self.dtype))
        return y + bias.astype(self.dtype)


class FeedForward(nn.Module):
    d_model: int
    d_ff: int
    dropout: float
    dtype: Any
    activation: str = "relu"

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        h = nn.Dense(self.d_ff, dtype=self.dtype, kernel_init=_dense_init(), name="wi")(x)
        h = activation_fn(self.activation)(h)
        h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
        return nn.Dense(self.d_model, dtype=self.dtype, kernel_init=_dense_init(), name="wo")(h)


class EncoderLayer(nn.Module):
    cfg: ModelConfig

    def setup(self) -> None:
        c, dt = self.cfg, _dtype(self.cfg)
        self.qkv = MultiHeadProjection(c.num_heads, c.head_dim, 3, dt, c.qkv_bias)
        self.out = OutputProjection(c.d_model, dt)
        self.ffn = FeedForward(c.d_model, c.d_ff, c.dropout, dt, c.activation)
        self.ln_attn = layer_norm(c)
        self.ln_ffn = layer_norm(c)
        self.drop = nn.Dropout(c.dropout)
        self.attn_drop = nn.Dropout(c.attention_dropout)

    def __call__(self, x: jax.Array, mask_BxSxS: jax.Array, deterministic: bool) -> jax.Array:
        c = self.cfg

        def self_attn(h: jax.Array) -> jax.Array:
            q, k, v = self.qkv(h)
            o, w = attention(q, k, v, mask_BxSxS)
            if c.attention_dropout > 0:
                w = self.attn_drop(w, deterministic=deterministic)
                o = jnp.einsum("bhqk,bhkd->bhqd", w.astype(v.dtype), v)
            return self.out(o)

        return _residual(
            c, x, self_attn, self.ln_attn, self.drop, deterministic, self.ffn, self.ln_ffn
        )


def _residual(
    c: ModelConfig,
    x: jax.Array,
    attn_fn: Callable[[jax.Array], jax.Array],
    ln_attn: nn.Module,
    drop: nn.Module,
    deterministic: bool,
    ffn: nn.Module,
    ln_ffn: nn.Module,
) -> jax.Array:
    """Attention + FFN sublayers with residuals, pre-LN or post-LN."""
    dt = _dtype(c)
    if c.pre_ln:
        x = x + drop(attn_fn(ln_attn(x).astype(dt)), deterministic=deterministic)
        return x + drop(ffn(ln_ffn(x).astype(dt), deterministic), deterministic=deterministic)
    x = ln_attn(x + drop(attn_fn(x), deterministic=deterministic)).astype(dt)
    return ln_ffn(x + drop(ffn(x, deterministic), deterministic=deterministic)).astype(dt)


class DecoderLayer(nn.Module):
    cfg: ModelConfig

    def setup(self) -> None:
        c, dt = self.cfg, _dtype(self.cfg)
        self.qkv = MultiHeadProjection(c.num_heads, c.head_dim, 3, dt, c.qkv_bias)
        self.self_out = OutputProjection(c.d_model, dt)
        self.cross_q = MultiHeadProjection(c.num_heads, c.head_dim, 1, dt, c.qkv_bias)
        self.cross_kv = MultiHeadProjection(c.num_heads, c.head_dim, 2, dt, c.qkv_bias)
        self.cross_out = OutputProjection(c.d_model, dt)
        self.ffn = FeedForward(c.d_model, c.d_ff, c.dropout, dt, c.activation)
        self.ln_self = layer_norm(c)
        self.ln_cross = layer_norm(c)
        self.ln_ffn = layer_norm(c)
        self.drop = nn.Dropout(c.dropout)
        self.attn_drop = nn.Dropout(c.attention_dropout)

    def project_memory(self, memory_BxSxD: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Cross-attention keys and values ``[B, H, S, Dh]`` of the encoder output."""
        return self.cross_kv(memory_BxSxD)

    def __call__(
        self,
        x_BxTxD: jax.Array,
        self_kv: tuple[jax.Array, jax.Array] | None,
        self_mask_BxTxK: jax.Array,
        cross_kv: tuple[jax.Array, jax.Array],
        cross_mask_BxTxS: jax.Array,
        deterministic: bool,
        position: jax.Array | None = None,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array], jax.Array]:
        """One decoder layer over ``T`` positions.

        With ``position`` given (incremental decoding, T == 1), the new key/value is
        written into ``self_kv`` (``[B, H, maxT, Dh]``) at that position and attention
        runs over the whole cache under ``self_mask``. Returns (output, updated self
        K/V, cross-attention weights ``[B, H, T, S]``).
        """
        c = self.cfg
        dt = _dtype(c)
        new_kv: tuple[jax.Array, jax.Array] = (None, None)  # type: ignore[assignment]
        cross_w: jax.Array | None = None

        def maybe_drop_attn(w: jax.Array, v: jax.Array, o: jax.Array) -> jax.Array:
            if c.attention_dropout > 0 and not deterministic:
                w = self.attn_drop(w, deterministic=deterministic)
                return jnp.einsum("bhqk,bhkd->bhqd", w.astype(v.dtype), v)
            return o

        def self_attn(h: jax.Array) -> jax.Array:
            nonlocal new_kv
            q, k, v = self.qkv(h)
            if position is not None:
                k_cache, v_cache = self_kv  # type: ignore[misc]
                k = jax.lax.dynamic_update_slice(
                    k_cache, k.astype(k_cache.dtype), (0, 0, position, 0)
                )
                v = jax.lax.dynamic_update_slice(
                    v_cache, v.astype(v_cache.dtype), (0, 0, position, 0)
                )
            new_kv = (k, v)
            o, w = attention(q, k.astype(dt), v.astype(dt), self_mask_BxTxK)
            return self.self_out(maybe_drop_attn(w, v, o))

        def cross_attn(h: jax.Array) -> jax.Array:
            nonlocal cross_w
            (q,) = self.cross_q(h)
            ck, cv = cross_kv
            o, cross_w = attention(q, ck.astype(dt), cv.astype(dt), cross_mask_BxTxS)
            return self.cross_out(maybe_drop_attn(cross_w, cv, o))

        drop = self.drop
        x = x_BxTxD
        if c.pre_ln:
            x = x + drop(self_attn(self.ln_self(x).astype(dt)), deterministic=deterministic)
            x = x + drop(cross_attn(self.ln_cross(x).astype(dt)), deterministic=deterministic)
            x = x + drop(
                self.ffn(self.ln_ffn(x).astype(dt), deterministic), deterministic=deterministic
            )
        else:
            x = self.ln_self(x + drop(self_attn(x), deterministic=deterministic)).astype(dt)
            x = self.ln_cross(x + drop(cross_attn(x), deterministic=deterministic)).astype(dt)
            x = self.ln_ffn(x + drop(self.ffn(x, deterministic), deterministic=deterministic))
            x = x.astype(dt)
        return x, new_kv, cross_w  # type: ignore[return-value]


class TransformerNet(EncoderDecoderNet):
    """The layers; use ``Transformer`` for the pure-function interface."""

    cfg: ModelConfig

    def setup(self) -> None:
        c = self.cfg
        emb_init = nn.initializers.normal(stddev=c.d_model**-0.5)
        self.tgt_embed = nn.Embed(c.vocab_size, c.d_model, embedding_init=emb_init)
        if not c.share_embeddings:
            self.src_embed = nn.Embed(c.vocab_size, c.d_model, embedding_init=emb_init)
        if not c.tie_output:
            self.logits_dense = nn.Dense(c.vocab_size, dtype=_dtype(c), kernel_init=_dense_init())
        self.encoder_layers = [EncoderLayer(c) for _ in range(c.num_encoder_layers)]
        self.decoder_layers = [DecoderLayer(c) for _ in range(c.num_decoder_layers)]
        if c.pre_ln:
            self.encoder_ln = layer_norm(c)
            self.decoder_ln = layer_norm(c)
        if c.position_embedding == "learned":
            pos_init = nn.initializers.normal(stddev=0.02)
            rows = c.max_len + c.position_offset
            self.encoder_pos = nn.Embed(rows, c.d_model, embedding_init=pos_init)
            self.decoder_pos = nn.Embed(rows, c.d_model, embedding_init=pos_init)
        if c.layernorm_embedding:
            self.encoder_ln_emb = layer_norm(c)
            self.decoder_ln_emb = layer_norm(c)
        if c.final_logits_bias:
            self.logits_bias = self.param(
                "final_logits_bias", nn.initializers.zeros, (c.vocab_size,)
            )
        self.drop = nn.Dropout(c.dropout)

    # -- pieces -------------------------------------------------------------
    def _embed(
        self, ids: jax.Array, table: nn.Embed, positions: jax.Array, side: str = "decoder"
    ) -> jax.Array:
        """Token embedding (scaled) + position embedding (+ LayerNorm): ``[B, T, D]``."""
        c = self.cfg
        x = table(ids)
        if c.scale_embeddings:
            x = x * math.sqrt(c.d_model)
        fixed = fixed_position_table(c)
        if fixed is None:
            pos_table = self.encoder_pos if side == "encoder" else self.decoder_pos
            pos = pos_table(positions + c.position_offset)
        else:
            pos = jnp.asarray(fixed)[positions]
        x = x + pos
        if c.layernorm_embedding:
            x = (self.encoder_ln_emb if side == "encoder" else self.decoder_ln_emb)(x)
        return x.astype(_dtype(c))

    def _logits(self, x: jax.Array) -> jax.Array:
        c = self.cfg
        if c.pre_ln:
            x = self.decoder_ln(x)
        x = x.astype(_dtype(c))
        if c.tie_output:
            logits = self.tgt_embed.attend(x)
        else:
            logits = self.logits_dense(x)
        if c.final_logits_bias:
            logits = logits + self.logits_bias
        return logits.astype(jnp.float32)

    # -- public methods (called through ``Transformer``) ---------------------
    def encode(self, src_BxS: jax.Array, src_mask_BxS: jax.Array, deterministic: bool = True):
        c = self.cfg
        table = self.tgt_embed if c.share_embeddings else self.src_embed
        x = self._embed(src_BxS, table, jnp.arange(src_BxS.shape[1]), "encoder")
        x = self.drop(x, deterministic=deterministic)
        mask = jnp.broadcast_to(src_mask_BxS[:, None, :], (*src_BxS.shape, src_BxS.shape[1]))
        for layer in self.encoder_layers:
            x = layer(x, mask, deterministic)
        if c.pre_ln:
            x = self.encoder_ln(x).astype(_dtype(c))
        return x

    def project_memory(self, memory_BxSxD: jax.Array) -> list[tuple[jax.Array, jax.Array]]:
        return [layer.project_memory(memory_BxSxD) for layer in self.decoder_layers]

    def decode(
        self,
        memory_BxSxD: jax.Array,
        src_mask_BxS: jax.Array,
        tgt_in_BxT: jax.Array,
        deterministic: bool = True,
    ) -> jax.Array:
        """Teacher-forced decoder: logits ``[B, T, V]`` for all target positions."""
        t = tgt_in_BxT.shape[1]
        x = self._embed(tgt_in_BxT, self.tgt_embed, jnp.arange(t))
        x = self.drop(x, deterministic=deterministic)
        causal = jnp.tril(jnp.ones((t, t), bool))[None]
        cross_mask = jnp.broadcast_to(
            src_mask_BxS[:, None, :], (x.shape[0], t, src_mask_BxS.shape[1])
        )
        for layer, kv in zip(self.decoder_layers, self.project_memory(memory_BxSxD), strict=True):
            x, _, _ = layer(x, None, causal, kv, cross_mask, deterministic)
        return self._logits(x)

    def init_cache(self, memory_BxSxD: jax.Array, src_mask_BxS: jax.Array, max_len: int) -> Cache:
        c = self.cfg
        b = memory_BxSxD.shape[0]
        zeros = jnp.zeros((b, c.num_heads, max_len, c.head_dim), _dtype(c))
        layers = tuple(
            {"k": zeros, "v": zeros, "ck": ck, "cv": cv}
            for ck, cv in self.project_memory(memory_BxSxD)
        )
        return {"layers": layers, "src_mask": src_mask_BxS.astype(bool)}

    def decode_step(
        self, cache: Cache, token_B: jax.Array, position: jax.Array
    ) -> tuple[jax.Array, Cache, jax.Array]:
        x = self._embed(token_B[:, None], self.tgt_embed, jnp.reshape(position, (1,)))
        max_t = cache["layers"][0]["k"].shape[2]
        self_mask = (jnp.arange(max_t) <= position)[None, None, :]
        cross_mask = cache["src_mask"][:, None, :]
        new_layers = []
        cross_w = None
        for layer, lc in zip(self.decoder_layers, cache["layers"], strict=True):
            x, (k, v), cross_w = layer(
                x, (lc["k"], lc["v"]), self_mask, (lc["ck"], lc["cv"]), cross_mask, True, position
            )
            new_layers.append({"k": k, "v": v, "ck": lc["ck"], "cv": lc["cv"]})
        logits = self._logits(x)[:, 0]
        # Coverage uses the last layer's cross-attention averaged over heads: [B, S].
        attn_BxS = jnp.mean(cross_w[:, :, 0, :], axis=1)
        return logits, {"layers": tuple(new_layers), "src_mask": cache["src_mask"]}, attn_BxS


@dataclasses.dataclass(frozen=True)
class Transformer(EncoderDecoder):
    """The Transformer on the shared interface; incremental decoding uses a fast path."""

    net_class = TransformerNet

    def decode_step(
        self, params: Params, cache: Cache, token_B: jax.Array, position: jax.Array
    ) -> tuple[jax.Array, Cache, jax.Array]:
        """One target position: ``(logits [B, V], new cache, cross-attention [B, S])``."""
        weights = decoder_weights(self.config, params)
        return fast_decode_step(self.config, weights, cache, token_B, position)

    def step_fn(self, params: Params) -> Callable:
        """``step_fn(tokens [B], position [], cache)`` for ``seqjax.decoding``.

        The decode-layout weights are prepared here, once: call ``step_fn`` outside
        the decoding loop (decoders do; inside ``jax.jit`` this is one small fused
        reshape per call of the compiled program, not per step).
        """
        weights = decoder_weights(self.config, params)

        def step(token_B: jax.Array, position: jax.Array, cache: Cache):
            return fast_decode_step(self.config, weights, cache, token_B, position)

        return step


# -- incremental decoding on decode-layout weights ---------------------------------


def decoder_weights(cfg: ModelConfig, params: Params) -> dict[str, Any]:
    """The decoder's parameters as 2-D ``[in, out]`` matrices in the compute dtype.

    Same values as the Flax parameters (reshaped, the tied embedding transposed);
    LayerNorm parameters stay float32, as in the modules.
    """
    p = params["params"] if "params" in params else params
    dt = _dtype(cfg)
    d, hd = cfg.d_model, cfg.num_heads * cfg.head_dim

    def mat(kernel: jax.Array, rows: int) -> jax.Array:
        return kernel.reshape(rows, -1).astype(dt)

    def bias(proj: dict[str, jax.Array]) -> jax.Array | None:
        return proj["bias"].reshape(-1).astype(dt) if cfg.qkv_bias else None

    layers = []
    for i in range(cfg.num_decoder_layers):
        lp = p[f"decoder_layers_{i}"]
        layers.append(
            {
                "qkv": mat(lp["qkv"]["kernel"], d),  # [D, 3 * H * Dh]: q, k, v blocks
                "qkv_b": bias(lp["qkv"]),  # [3 * H * Dh] or None
                "self_out": mat(lp["self_out"]["kernel"], hd),
                "self_out_b": lp["self_out"]["bias"].astype(dt),
                "cross_q": mat(lp["cross_q"]["kernel"], d),
                "cross_q_b": bias(lp["cross_q"]),
                "cross_out": mat(lp["cross_out"]["kernel"], hd),
                "cross_out_b": lp["cross_out"]["bias"].astype(dt),
                "wi": lp["ffn"]["wi"]["kernel"].astype(dt),
                "wi_b": lp["ffn"]["wi"]["bias"].astype(dt),
                "wo": lp["ffn"]["wo"]["kernel"].astype(dt),
                "wo_b": lp["ffn"]["wo"]["bias"].astype(dt),
                "ln_self": lp["ln_self"],
                "ln_cross": lp["ln_cross"],
                "ln_ffn": lp["ln_ffn"],
            }
        )
    table = p["tgt_embed"]["embedding"]
    if cfg.tie_output:
        # ``Embed.attend`` promotes to the table's float32; a [D, V] copy made once per
        # call keeps the per-step product a plain ``x @ W`` (contracting the table's
        # minor axis makes XLA transpose all of it inside the loop, at every step).
        out_w, out_b = jnp.transpose(table), None
    else:
        out_w = p["logits_dense"]["kernel"].astype(dt)
        out_b = p["logits_dense"]["bias"].astype(dt)
    if cfg.final_logits_bias:
        extra = p["final_logits_bias"]
        out_b = extra if out_b is None else out_b + extra.astype(dt)
    fixed = fixed_position_table(cfg)
    if fixed is None:
        positions = p["decoder_pos"]["embedding"][cfg.position_offset :]
    else:
        positions = jnp.asarray(fixed)
    return {
        "embed": table,
        "positions": positions,
        "embed_ln": p["decoder_ln_emb"] if cfg.layernorm_embedding else None,
        "layers": tuple(layers),
        "final_ln": p["decoder_ln"] if cfg.pre_ln else None,
        "out_w": out_w,
        "out_b": out_b,
    }


def _layer_norm(cfg: ModelConfig, ln_params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    return layer_norm(cfg).apply({"params": ln_params}, x)


def _one_query_attention(
    q_BxHxD: jax.Array, k_BxHxKxD: jax.Array, v_BxHxKxD: jax.Array, mask_BxK: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """``attention`` for a single query position: (output ``[B, H, D]``, weights ``[B, H, K]``)."""
    scale = 1.0 / math.sqrt(q_BxHxD.shape[-1])
    logits = jnp.einsum("bhd,bhkd->bhk", q_BxHxD, k_BxHxKxD).astype(jnp.float32) * scale
    logits = jnp.where(mask_BxK[:, None, :], logits, _NEG_INF)
    weights = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum("bhk,bhkd->bhd", weights.astype(v_BxHxKxD.dtype), v_BxHxKxD)
    return out, weights


def fast_decode_step(
    cfg: ModelConfig,
    weights: dict[str, Any],
    cache: Cache,
    token_B: jax.Array,
    position: jax.Array,
) -> tuple[jax.Array, Cache, jax.Array]:
    """``TransformerNet.decode_step`` on ``decoder_weights`` (same results, faster)."""
    dt = _dtype(cfg)
    h, dh = cfg.num_heads, cfg.head_dim
    b = token_B.shape[0]
    position = jnp.asarray(position, jnp.int32)
    x = jnp.take(weights["embed"], token_B, axis=0)
    if cfg.scale_embeddings:
        x = x * math.sqrt(cfg.d_model)
    pos = lax.dynamic_index_in_dim(weights["positions"], position, 0, keepdims=False)
    x = x + pos[None]
    if weights["embed_ln"] is not None:
        x = _layer_norm(cfg, weights["embed_ln"], x)
    x = x.astype(dt)  # [B, D]
    act = activation_fn(cfg.activation)
    max_t = cache["layers"][0]["k"].shape[2]
    self_mask = jnp.broadcast_to(jnp.arange(max_t) <= position, (b, max_t))
    cross_mask = cache["src_mask"]

    def heads(y_BxF: jax.Array) -> jax.Array:
        return y_BxF.reshape(b, -1, h, dh)  # [B, n, H, Dh]

    new_layers = []
    cross_w = None
    for w, lc in zip(weights["layers"], cache["layers"], strict=True):

        def self_attn(y: jax.Array, w=w, lc=lc) -> jax.Array:
            qkv = y @ w["qkv"]
            if w["qkv_b"] is not None:
                qkv = qkv + w["qkv_b"]
            qkv = heads(qkv)
            k_cache = lax.dynamic_update_slice(
                lc["k"], qkv[:, 1, :, None, :].astype(lc["k"].dtype), (0, 0, position, 0)
            )
            v_cache = lax.dynamic_update_slice(
                lc["v"], qkv[:, 2, :, None, :].astype(lc["v"].dtype), (0, 0, position, 0)
            )
            new_layers.append({"k": k_cache, "v": v_cache, "ck": lc["ck"], "cv": lc["cv"]})
            o, _ = _one_query_attention(
                qkv[:, 0], k_cache.astype(dt), v_cache.astype(dt), self_mask
            )
            return o.reshape(b, -1) @ w["self_out"] + w["self_out_b"]

        def cross_attn(y: jax.Array, w=w, lc=lc) -> jax.Array:
            nonlocal cross_w
            q = y @ w["cross_q"]
            if w["cross_q_b"] is not None:
                q = q + w["cross_q_b"]
            q = heads(q)[:, 0]
            o, cross_w = _one_query_attention(
                q, lc["ck"].astype(dt), lc["cv"].astype(dt), cross_mask
            )
            return o.reshape(b, -1) @ w["cross_out"] + w["cross_out_b"]

        def ffn(y: jax.Array, w=w) -> jax.Array:
            return act(y @ w["wi"] + w["wi_b"]) @ w["wo"] + w["wo_b"]

        if cfg.pre_ln:
            x = x + self_attn(_layer_norm(cfg, w["ln_self"], x).astype(dt))
            x = x + cross_attn(_layer_norm(cfg, w["ln_cross"], x).astype(dt))
            x = x + ffn(_layer_norm(cfg, w["ln_ffn"], x).astype(dt))
        else:
            x = _layer_norm(cfg, w["ln_self"], x + self_attn(x)).astype(dt)
            x = _layer_norm(cfg, w["ln_cross"], x + cross_attn(x)).astype(dt)
            x = _layer_norm(cfg, w["ln_ffn"], x + ffn(x)).astype(dt)

    if weights["final_ln"] is not None:
        x = _layer_norm(cfg, weights["final_ln"], x)
    x = x.astype(dt)
    if cfg.tie_output:
        logits = x.astype(weights["out_w"].dtype) @ weights["out_w"]
    else:
        logits = x @ weights["out_w"]
    if weights["out_b"] is not None:
        logits = logits + weights["out_b"]
    # Coverage uses the last layer's cross-attention averaged over heads: [B, S].
    attn_BxS = jnp.mean(cross_w, axis=1)
    new_cache = {"layers": tuple(new_layers), "src_mask": cache["src_mask"]}
    return logits.astype(jnp.float32), new_cache, attn_BxS


def count_params(params: Params) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
