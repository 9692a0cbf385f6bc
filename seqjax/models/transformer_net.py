"""The Transformer's Flax layers (``TransformerNet``): teacher forcing and the cache.

``seqjax.models.transformer.Transformer`` wraps them in the pure-function interface and
imports this module only when a function traces the layers (``net_class``); decoding
steps run ``transformer_step`` on the same parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqjax.config import ModelConfig
from seqjax.models import initializers
from seqjax.models.interface import Cache
from seqjax.models.net import EncoderDecoderNet
from seqjax.models.quantize import QuantizedArray, take_rows
from seqjax.models.transformer_ops import (
    activation_fn,
    attention,
    compute_dtype,
    embed,
    layer_norm,
    position_rows,
    residual,
)

_dtype = compute_dtype


def _dense_init() -> Callable:
    return nn.initializers.xavier_uniform()


def _kernel_param(module: nn.Module, shape: tuple[int, ...]) -> Any:
    """The module's ``kernel`` parameter of ``shape``. A ``QuantizedArray`` is taken as it is:
    Flax's shape check reads its first leaf, and a bf16 one stores ``q`` output-major
    (``seqjax.models.quantize``), so it is checked by its logical shape here instead."""
    if module.has_variable("params", "kernel"):
        kernel = module.get_variable("params", "kernel")
        if isinstance(kernel, QuantizedArray):
            if kernel.shape != shape:
                raise ValueError(f"{module.name}: kernel {kernel.shape}, expected {shape}")
            return kernel
    return module.param("kernel", _dense_init(), shape)


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
        shape = (x_BxTxD.shape[-1], self.n, self.num_heads, self.head_dim)
        kernel = _kernel_param(self, shape)
        x = x_BxTxD.astype(self.dtype)
        # One plain ``x @ W[D, n*H*Dh]`` and the heads split afterwards: an einsum straight
        # to ``[n, B, H, T, Dh]`` made XLA:CPU transpose the whole kernel at every call
        # (the output's major axis is the kernel's), 5-7 ms per 512 x 1536 kernel on a
        # 2-core EPYC. int8 weights take the same path (the matmul takes them as int8).
        (b, t, d), shape = x.shape, (self.n, self.num_heads, self.head_dim)
        y_BxTxN = x @ kernel.astype(self.dtype).reshape(d, -1)
        y = y_BxTxN.reshape(b, t, *shape).transpose(2, 0, 3, 1, 4)
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
        kernel = _kernel_param(self, (h, dh, self.d_model))
        bias = self.param("bias", nn.initializers.zeros, (self.d_model,))
        if isinstance(kernel, QuantizedArray):
            b, _, t, _ = x_BxHxTxDh.shape
            x_BxTxHD = x_BxHxTxDh.transpose(0, 2, 1, 3).reshape(b, t, h * dh)
            y = x_BxTxHD @ kernel.astype(self.dtype).reshape(h * dh, -1)
        else:
            y = jnp.einsum("bhtk,hkd->btd", x_BxHxTxDh, kernel.astype(self.dtype))
        return y + bias.astype(self.dtype)


class Dense(nn.Dense):
    """``nn.Dense`` (same parameters and float arithmetic) that also takes an int8
    ``QuantizedArray`` kernel (``x @ kernel``: the quantisation mode's matmul)."""

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        kernel = self.get_variable("params", "kernel")
        if not isinstance(kernel, QuantizedArray):
            return super().__call__(inputs)
        y = inputs.astype(self.dtype) @ kernel.astype(self.dtype)
        bias = self.get_variable("params", "bias") if self.use_bias else None
        return y if bias is None else y + bias.astype(self.dtype)


class Embed(nn.Embed):
    """``nn.Embed`` that also takes an int8 ``QuantizedArray`` table (one scale per row):
    a lookup converts only the rows it reads; ``attend`` is ``x @ table.T``."""

    def __call__(self, inputs: jax.Array) -> jax.Array:
        if isinstance(self.embedding, QuantizedArray):
            return take_rows(self.embedding, inputs)
        return super().__call__(inputs)

    def attend(self, query: jax.Array) -> jax.Array:
        if isinstance(self.embedding, QuantizedArray):
            return query @ self.embedding.T
        return super().attend(query)


class FeedForward(nn.Module):
    d_model: int
    d_ff: int
    dropout: float
    dtype: Any
    activation: str = "relu"

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        h = Dense(self.d_ff, dtype=self.dtype, kernel_init=_dense_init(), name="wi")(x)
        h = activation_fn(self.activation)(h)
        h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
        return Dense(self.d_model, dtype=self.dtype, kernel_init=_dense_init(), name="wo")(h)


def _attend(
    c: ModelConfig,
    attn_drop: nn.Module,
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array,
    deterministic: bool,
) -> tuple[jax.Array, jax.Array]:
    """``attention`` with attention dropout in training; the weights are returned undropped."""
    o, w = attention(q, k, v, mask)
    if c.attention_dropout > 0 and not deterministic:
        dropped = attn_drop(w, deterministic=False)
        o = jnp.einsum("bhqk,bhkd->bhqd", dropped.astype(v.dtype), v)
    return o, w


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

        def drop(y: jax.Array) -> jax.Array:
            return self.drop(y, deterministic=deterministic)

        def self_attn(h: jax.Array) -> tuple[jax.Array, None]:
            q, k, v = self.qkv(h)
            o, _ = _attend(c, self.attn_drop, q, k, v, mask_BxSxS, deterministic)
            return self.out(o), None

        def ffn(h: jax.Array) -> tuple[jax.Array, None]:
            return self.ffn(h, deterministic), None

        x, _ = residual(c, self_attn, self.ln_attn, x, drop)
        x, _ = residual(c, ffn, self.ln_ffn, x, drop)
        return x


class DecoderLayer(nn.Module):
    """One decoder layer, teacher-forced over ``T`` positions.

    Sows (collection ``intermediates``) its self-attention keys/values ``[B, H, T, Dh]``
    and cross-attention weights ``[B, H, T, S]``: the decode step's cache and
    attention are tested against them.
    """

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
        causal_1xTxT: jax.Array,
        cross_kv: tuple[jax.Array, jax.Array],
        cross_mask_BxTxS: jax.Array,
        deterministic: bool,
    ) -> jax.Array:
        c = self.cfg

        def drop(y: jax.Array) -> jax.Array:
            return self.drop(y, deterministic=deterministic)

        def self_attn(h: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
            q, k, v = self.qkv(h)
            o, _ = _attend(c, self.attn_drop, q, k, v, causal_1xTxT, deterministic)
            return self.self_out(o), (k, v)

        def cross_attn(h: jax.Array) -> tuple[jax.Array, jax.Array]:
            (q,) = self.cross_q(h)
            ck, cv = cross_kv
            dt = _dtype(c)
            o, w = _attend(
                c, self.attn_drop, q, ck.astype(dt), cv.astype(dt), cross_mask_BxTxS, deterministic
            )
            return self.cross_out(o), w

        def ffn(h: jax.Array) -> tuple[jax.Array, None]:
            return self.ffn(h, deterministic), None

        x, self_kv = residual(c, self_attn, self.ln_self, x_BxTxD, drop)
        x, cross_w = residual(c, cross_attn, self.ln_cross, x, drop)
        x, _ = residual(c, ffn, self.ln_ffn, x, drop)
        self.sow("intermediates", "self_kv", self_kv)
        self.sow("intermediates", "cross_attention", cross_w)
        return x


class TransformerNet(EncoderDecoderNet):
    """The layers, teacher-forced; use ``Transformer`` for the pure-function interface.

    Incremental decoding runs on the same parameters in ``transformer_step``.
    """

    cfg: ModelConfig

    def setup(self) -> None:
        c = self.cfg
        emb_init = initializers.normal(c.d_model**-0.5)
        self.tgt_embed = Embed(c.vocab_size, c.d_model, embedding_init=emb_init)
        if not c.share_embeddings:
            self.src_embed = Embed(c.vocab_size, c.d_model, embedding_init=emb_init)
        if not c.tie_output:
            self.logits_dense = Dense(c.vocab_size, dtype=_dtype(c), kernel_init=_dense_init())
        self.encoder_layers = [EncoderLayer(c) for _ in range(c.num_encoder_layers)]
        self.decoder_layers = [DecoderLayer(c) for _ in range(c.num_decoder_layers)]
        if c.pre_ln:
            self.encoder_ln = layer_norm(c)
            self.decoder_ln = layer_norm(c)
        if c.position_embedding == "learned":
            pos_init = initializers.normal(0.02)
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
    def _embed(self, ids_BxT: jax.Array, side: str) -> jax.Array:
        """Token + position embedding (+ LayerNorm) of ``side``: ``[B, T, D]``."""
        c = self.cfg
        encoder = side == "encoder"
        table = self.src_embed if encoder and not c.share_embeddings else self.tgt_embed
        learned = None
        if c.position_embedding == "learned":
            learned = (self.encoder_pos if encoder else self.decoder_pos).embedding
        norm = None
        if c.layernorm_embedding:
            norm = self.encoder_ln_emb if encoder else self.decoder_ln_emb
        positions = position_rows(c, learned)[: ids_BxT.shape[1]]
        return embed(c, table(ids_BxT), positions, norm)

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
        x = self.drop(self._embed(src_BxS, "encoder"), deterministic=deterministic)
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
        x = self.drop(self._embed(tgt_in_BxT, "decoder"), deterministic=deterministic)
        causal = jnp.tril(jnp.ones((t, t), bool))[None]
        cross_mask = jnp.broadcast_to(
            src_mask_BxS[:, None, :], (x.shape[0], t, src_mask_BxS.shape[1])
        )
        for layer, kv in zip(self.decoder_layers, self.project_memory(memory_BxSxD), strict=True):
            x = layer(x, causal, kv, cross_mask, deterministic)
        return self._logits(x)

    def init_cache(self, memory_BxSxD: jax.Array, src_mask_BxS: jax.Array, max_len: int) -> Cache:
        """The decode step's cache (layout in ``transformer_step``): empty self-attention
        keys/values and the memory's cross-attention keys/values, projected once."""
        c = self.cfg
        b = memory_BxSxD.shape[0]
        zeros = jnp.zeros((b, c.num_heads, max_len, c.head_dim), _dtype(c))
        layers = tuple(
            {"k": zeros, "v": zeros, "ck": ck, "cv": cv}
            for ck, cv in self.project_memory(memory_BxSxD)
        )
        return {"layers": layers, "src_mask": src_mask_BxS.astype(bool)}
