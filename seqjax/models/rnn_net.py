"""The attentional LSTM's Flax layers (``RNNNet``); the recurrences they run are the pure
functions of ``seqjax.models.rnn``, whose ``RNN`` imports this module only when a
function traces the layers (``net_class``)."""

from __future__ import annotations

import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from seqjax.config import ModelConfig
from seqjax.models import initializers
from seqjax.models.interface import Cache
from seqjax.models.net import EncoderDecoderNet
from seqjax.models.rnn import (
    DecoderState,
    LSTMWeights,
    _mm,
    attention_keys,
    decoder_cell,
    hidden_size,
    run_lstm,
)


def _forget_bias_init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """Zero biases except 1 on the forget gate (remember by default early in training)."""
    h = shape[0] // 4
    return jnp.zeros(shape, dtype).at[h : 2 * h].set(1.0)


class LSTMParams(nn.Module):
    """Holds one LSTM layer's parameters; calling it returns them as ``LSTMWeights``."""

    in_dim: int
    hidden: int

    @nn.compact
    def __call__(self) -> LSTMWeights:
        g = 4 * self.hidden
        return LSTMWeights(
            self.param("w_x", nn.initializers.xavier_uniform(), (self.in_dim, g)),
            self.param("w_h", nn.initializers.orthogonal(), (self.hidden, g)),
            self.param("b", _forget_bias_init, (g,)),
        )


class AttentionParams(nn.Module):
    """Attention parameters: ``w_k [M, K]`` (+ ``w_q [H, K]``, ``v [K]`` for Bahdanau)."""

    kind: str
    mem_dim: int
    query_dim: int

    @nn.compact
    def __call__(self) -> dict[str, jax.Array]:
        init = nn.initializers.xavier_uniform()
        d = self.query_dim  # Luong's keys live in query space; Bahdanau's use the same width
        w = {"w_k": self.param("w_k", init, (self.mem_dim, d))}
        if self.kind == "bahdanau":
            w["w_q"] = self.param("w_q", init, (self.query_dim, d))
            w["v"] = self.param("v", initializers.normal(d**-0.5), (d,))
        return w


class RNNNet(EncoderDecoderNet):
    """The layers; use ``RNN`` for the pure-function interface."""

    cfg: ModelConfig

    def setup(self) -> None:
        c = self.cfg
        h, e = hidden_size(c), c.d_model
        emb_init = initializers.normal(e**-0.5)
        self.tgt_embed = nn.Embed(c.vocab_size, e, embedding_init=emb_init)
        if not c.share_embeddings:
            self.src_embed = nn.Embed(c.vocab_size, e, embedding_init=emb_init)
        enc_in = [e] + [2 * h] * (c.num_encoder_layers - 1)
        self.enc_fwd = [LSTMParams(i, h) for i in enc_in]
        self.enc_bwd = [LSTMParams(i, h) for i in enc_in]
        dec_in = [e + 2 * h] + [h] * (c.num_decoder_layers - 1)  # layer 0: [embed; context]
        self.dec = [LSTMParams(i, h) for i in dec_in]
        self.attn = AttentionParams(c.rnn_attention, 2 * h, h)
        self.bridge = nn.Dense(c.num_decoder_layers * h, dtype=self._dt)
        self.combine = nn.Dense(e, dtype=self._dt, kernel_init=nn.initializers.xavier_uniform())
        if not c.tie_output:
            self.logits_dense = nn.Dense(c.vocab_size, dtype=self._dt)
        self.drop = nn.Dropout(c.dropout)

    @property
    def _dt(self) -> jnp.dtype:
        return jnp.dtype(self.cfg.dtype)

    # -- pieces -------------------------------------------------------------
    def _embed(self, ids: jax.Array, table: nn.Embed) -> jax.Array:
        x = table(ids)
        if self.cfg.scale_embeddings:
            x = x * math.sqrt(self.cfg.d_model)
        return x.astype(jnp.float32)

    def _logits(self, h_top: jax.Array, context: jax.Array, deterministic: bool) -> jax.Array:
        """``[..., V]`` from the top decoder state ``[..., H]`` and context ``[..., M]``."""
        x = jnp.tanh(self.combine(jnp.concatenate([h_top, context], -1)))
        x = self.drop(x, deterministic=deterministic).astype(self._dt)
        logits = self.tgt_embed.attend(x) if self.cfg.tie_output else self.logits_dense(x)
        return logits.astype(jnp.float32)

    def _emb_gates(self, tgt_ids: jax.Array, deterministic: bool) -> jax.Array:
        """Embedding part of decoder layer 0's gates (bias included): ``[..., 4H]``."""
        w0 = self.dec[0]()
        x = self.drop(self._embed(tgt_ids, self.tgt_embed), deterministic=deterministic)
        return _mm(x, w0.w_x[: self.cfg.d_model], self._dt) + w0.b

    # -- public methods (called through ``RNN``) -----------------------------
    def encode(self, src_BxS: jax.Array, src_mask_BxS: jax.Array, deterministic: bool = True):
        c = self.cfg
        mask = src_mask_BxS.astype(bool)
        table = self.tgt_embed if c.share_embeddings else self.src_embed
        x = self._embed(src_BxS, table)
        for fwd, bwd in zip(self.enc_fwd, self.enc_bwd, strict=True):
            x = self.drop(x, deterministic=deterministic)  # on embeddings and between layers
            x = jnp.concatenate(
                [
                    run_lstm(x, mask, fwd(), self._dt, reverse=False),
                    run_lstm(x, mask, bwd(), self._dt, reverse=True),
                ],
                axis=-1,
            )
        return x  # [B, S, 2H], 0 at PAD

    def init_cache(self, memory_BxSxM: jax.Array, src_mask_BxS: jax.Array, max_len: int) -> Cache:
        c = self.cfg
        b, h = memory_BxSxM.shape[0], hidden_size(c)
        mask = src_mask_BxS.astype(bool)
        memory = memory_BxSxM.astype(jnp.float32)
        count = jnp.maximum(jnp.sum(mask, axis=1, keepdims=True), 1)
        mean_BxM = jnp.sum(jnp.where(mask[..., None], memory, 0.0), axis=1) / count
        h0 = jnp.tanh(self.bridge(mean_BxM).astype(jnp.float32)).reshape(b, -1, h)
        return {
            "h": h0,
            "c": jnp.zeros_like(h0),
            "context": jnp.zeros((b, memory.shape[-1]), jnp.float32),
            "keys": attention_keys(self.attn(), memory, self._dt),
            "memory": memory,
            "src_mask": mask,
        }

    def _cell(self, cache: Cache) -> Callable:
        """``cell(state, emb_gates, keep) -> (state, h_top, attention)`` over ``cache``'s memory.

        Weights are read here, outside any ``lax.scan``: Flax modules cannot be called
        inside a JAX transform, so the scan body sees plain arrays only.
        """
        layers, attn_w = [layer() for layer in self.dec], self.attn()
        kind, dt = self.cfg.rnn_attention, self._dt

        def cell(state: DecoderState, emb_gates_BxG: jax.Array, keep: jax.Array | None):
            return decoder_cell(
                layers,
                attn_w,
                kind,
                state,
                emb_gates_BxG,
                keep,
                cache["keys"],
                cache["memory"],
                cache["src_mask"],
                dt,
            )

        return cell

    def decode(
        self,
        memory_BxSxM: jax.Array,
        src_mask_BxS: jax.Array,
        tgt_in_BxT: jax.Array,
        deterministic: bool = True,
    ) -> jax.Array:
        """Teacher-forced decoder: one ``lax.scan`` over ``T``; logits ``[B, T, V]``."""
        c = self.cfg
        b, t = tgt_in_BxT.shape
        cache = self.init_cache(memory_BxSxM, src_mask_BxS, t)
        gates_TxBxG = jnp.swapaxes(self._emb_gates(tgt_in_BxT, deterministic), 0, 1)
        keep = None
        if not deterministic and c.dropout > 0 and c.num_decoder_layers > 1:
            # Dropout between decoder layers, drawn outside the scan (a mask per step).
            shape = (t, c.num_decoder_layers - 1, b, hidden_size(c))
            bern = jax.random.bernoulli(self.make_rng("dropout"), 1.0 - c.dropout, shape)
            keep = bern.astype(jnp.float32) / (1.0 - c.dropout)
        cell = self._cell(cache)

        def body(state: DecoderState, xs):
            state, h_top, _ = cell(state, *xs)
            return state, (h_top, state.context)

        init = DecoderState(cache["h"], cache["c"], cache["context"])
        _, (h_TxBxH, ctx_TxBxM) = lax.scan(body, init, (gates_TxBxG, keep))
        h, ctx = jnp.swapaxes(h_TxBxH, 0, 1), jnp.swapaxes(ctx_TxBxM, 0, 1)
        return self._logits(h, ctx, deterministic)

    def decode_step(
        self, cache: Cache, token_B: jax.Array, position: jax.Array
    ) -> tuple[jax.Array, Cache, jax.Array]:
        del position  # the recurrence carries the position; kept for the shared interface
        state = DecoderState(cache["h"], cache["c"], cache["context"])
        state, h_top, attn_BxS = self._cell(cache)(state, self._emb_gates(token_B, True), None)
        logits = self._logits(h_top, state.context, True)
        new_cache = {**cache, "h": state.h, "c": state.c, "context": state.context}
        return logits, new_cache, attn_BxS
