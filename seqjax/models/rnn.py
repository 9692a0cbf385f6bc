"""Attentional LSTM encoder-decoder (Bahdanau et al. 2015; Luong et al. 2015).

Same pure-function interface as ``seqjax.models.transformer.Transformer``::

    model = RNN(model_preset("rnn_tiny"))
    params = model.init(jax.random.key(0))
    memory_BxSxM = model.encode(params, src_BxS, src_mask_BxS)      # M = 2 * H
    cache = model.init_cache(params, memory_BxSxM, src_mask_BxS, max_len=T)
    logits_BxV, cache, cross_attn_BxS = model.decode_step(params, cache, token_B, position)
    logits_BxTxV = model.forward(params, src_BxS, src_mask_BxS, tgt_in_BxT)

Architecture (``H = rnn_hidden or d_model``, ``E = d_model``, ``L`` layers):

- encoder: ``num_encoder_layers`` bi-directional LSTM layers; each layer's output is
  ``[forward; backward]`` (``2H``), with dropout between layers. State updates are
  masked at PAD positions, so the backward direction effectively starts at each
  row's last real token and padding never changes outputs at real positions.
- decoder: ``num_decoder_layers`` stacked LSTMs. Step ``t`` reads
  ``[embed(y_{t-1}); context_{t-1}]`` (input feeding), the top state ``h_t`` queries
  the memory (``bahdanau``: ``v . tanh(W_k m + W_q h)``; ``luong``: ``h . W_k m``),
  and ``tanh(W_c [h_t; context_t])`` (``E``) goes to the vocabulary (tied to the
  target embedding when ``tie_output``). Initial states: ``h = tanh(W mean(memory))``
  over real source positions, ``c = 0``.

Cache layout (every leaf leads with the batch axis; nothing grows with ``t``, so
``max_len`` is accepted for interface compatibility only)::

    cache["h"], cache["c"]:  [N, L, H]  LSTM state per decoder layer
    cache["context"]:        [N, M]     previous attention context (fed back as input)
    cache["keys"]:           [B, S, K]  attention keys of the memory, projected once
    cache["memory"]:         [B, S, M]  encoder output (attention values)
    cache["src_mask"]:       [B, S]     True at real source tokens

``N = B`` as made; ``expand_cache(cache, K)`` gives each source ``K`` rows of state
(beams, ``N = B * K``) and keeps the memory, its keys and mask at one row per source:
a source's beams attend over it together.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from seqjax.config import ModelConfig
from seqjax.models import initializers
from seqjax.models.interface import Cache, EncoderDecoder, EncoderDecoderNet

_NEG_INF = -1e9  # large finite negative: keeps an all-PAD row finite (no NaN)


def hidden_size(cfg: ModelConfig) -> int:
    """LSTM hidden size ``H`` per direction (``rnn_hidden``, 0 meaning ``d_model``)."""
    return cfg.rnn_hidden or cfg.d_model


class LSTMWeights(NamedTuple):
    """One LSTM layer: gates ``x @ w_x + h @ w_h + b`` in the order (input, forget, cell, output)."""

    w_x: jax.Array  # [I, 4H]
    w_h: jax.Array  # [H, 4H]
    b: jax.Array  # [4H]


def _mm(x: jax.Array, w: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """Matmul in the activation dtype with a float32 result (LSTM state stays float32)."""
    return jnp.matmul(x.astype(dtype), w.astype(dtype)).astype(jnp.float32)


def lstm_cell(
    gates_x_BxG: jax.Array, h_BxH: jax.Array, c_BxH: jax.Array, w_h_HxG: jax.Array, dtype
) -> tuple[jax.Array, jax.Array]:
    """One LSTM update given the precomputed input part of the gates ``[B, 4H]``."""
    gates = gates_x_BxG + _mm(h_BxH, w_h_HxG, dtype)
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c_BxH + jax.nn.sigmoid(i) * jnp.tanh(g)
    return jax.nn.sigmoid(o) * jnp.tanh(c), c


def run_lstm(
    x_BxTxI: jax.Array, mask_BxT: jax.Array, w: LSTMWeights, dtype, *, reverse: bool
) -> jax.Array:
    """One direction over a padded batch: outputs ``[B, T, H]`` (0 at PAD).

    PAD steps leave the state unchanged, so a reversed scan over right-padded rows
    starts from the zero state at each row's last real token.
    """
    b, _ = mask_BxT.shape
    h_dim = w.w_h.shape[0]
    gates_x = _mm(x_BxTxI, w.w_x, dtype) + w.b  # input projection for all steps at once

    def body(carry, xs):
        h, c = carry
        g_BxG, m_B = xs
        h_new, c_new = lstm_cell(g_BxG, h, c, w.w_h, dtype)
        m = m_B[:, None]
        return (jnp.where(m, h_new, h), jnp.where(m, c_new, c)), jnp.where(m, h_new, 0.0)

    zeros = jnp.zeros((b, h_dim), jnp.float32)
    xs = (jnp.swapaxes(gates_x, 0, 1), mask_BxT.T)
    _, h_TxBxH = lax.scan(body, (zeros, zeros), xs, reverse=reverse)
    return jnp.swapaxes(h_TxBxH, 0, 1)


def attention_keys(w: dict[str, jax.Array], memory_BxSxM: jax.Array, dtype) -> jax.Array:
    """Keys ``[B, S, K]`` of the memory (both kinds project it), computed once per source."""
    return _mm(memory_BxSxM, w["w_k"], dtype)


def attend(
    kind: str,
    w: dict[str, jax.Array],
    query_BxH: jax.Array,
    keys_BxSxK: jax.Array,
    memory_BxSxM: jax.Array,
    mask_BxS: jax.Array,
    dtype,
) -> tuple[jax.Array, jax.Array]:
    """Context ``[B, M]`` and weights ``[B, S]`` (softmax in float32, 0 at PAD).

    The query may have ``N = B * R`` rows, ``R`` consecutive ones per source (beams over
    a memory kept once per source, ``expand_cache``): then ``[N, M]`` and ``[N, S]``."""
    if query_BxH.shape[0] != keys_BxSxK.shape[0]:
        return _attend_grouped(kind, w, query_BxH, keys_BxSxK, memory_BxSxM, mask_BxS, dtype)
    if kind == "bahdanau":
        q = _mm(query_BxH, w["w_q"], dtype)[:, None, :]
        scores = jnp.einsum("bsk,k->bs", jnp.tanh(keys_BxSxK + q), w["v"].astype(jnp.float32))
    else:  # luong "general": h^T W_k m
        scores = jnp.einsum("bsk,bk->bs", keys_BxSxK, query_BxH)
    weights = jax.nn.softmax(jnp.where(mask_BxS, scores, _NEG_INF), axis=-1)
    weights = jnp.where(mask_BxS, weights, 0.0)  # an all-PAD row attends to nothing
    context = jnp.einsum("bs,bsm->bm", weights, memory_BxSxM.astype(jnp.float32))
    return context, weights


def _attend_grouped(
    kind: str,
    w: dict[str, jax.Array],
    query_NxH: jax.Array,
    keys_BxSxK: jax.Array,
    memory_BxSxM: jax.Array,
    mask_BxS: jax.Array,
    dtype,
) -> tuple[jax.Array, jax.Array]:
    """``attend`` for ``N = B * R`` queries, ``R`` per source, over ``B`` memories."""
    n, b = query_NxH.shape[0], keys_BxSxK.shape[0]
    if n % b:
        raise ValueError(f"{n} query rows do not divide into the memory's {b} sources")
    r = n // b
    if kind == "bahdanau":
        q_BxRx1xK = _mm(query_NxH, w["w_q"], dtype).reshape(b, r, 1, -1)
        hidden = jnp.tanh(keys_BxSxK[:, None] + q_BxRx1xK)
        scores = jnp.einsum("brsk,k->brs", hidden, w["v"].astype(jnp.float32))
    else:
        scores = jnp.einsum("bsk,brk->brs", keys_BxSxK, query_NxH.reshape(b, r, -1))
    mask = mask_BxS[:, None, :]
    weights = jax.nn.softmax(jnp.where(mask, scores, _NEG_INF), axis=-1)
    weights = jnp.where(mask, weights, 0.0)
    context = jnp.einsum("brs,bsm->brm", weights, memory_BxSxM.astype(jnp.float32))
    return context.reshape(n, -1), weights.reshape(n, -1)


def expand_cache(cache: Cache, times: int) -> Cache:
    """``times`` beams per source: the LSTM state and fed-back context repeated, the
    memory, its keys and mask kept at one row per source (the same arrays).

    >>> c = {"h": jnp.zeros((2, 1, 3)), "c": jnp.zeros((2, 1, 3)),
    ...      "context": jnp.zeros((2, 4)), "keys": jnp.zeros((2, 5, 3)),
    ...      "memory": jnp.zeros((2, 5, 4)), "src_mask": jnp.ones((2, 5), bool)}
    >>> e = expand_cache(c, 3)
    >>> e["h"].shape, e["context"].shape, e["memory"].shape
    ((6, 1, 3), (6, 4), (2, 5, 4))
    """
    if times == 1:
        return cache
    state = {k: jnp.repeat(cache[k], times, axis=0) for k in ("h", "c", "context")}
    return {**cache, **state}


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


class DecoderState(NamedTuple):
    h: jax.Array  # [B, L, H]
    c: jax.Array  # [B, L, H]
    context: jax.Array  # [B, M]


def decoder_cell(
    layers: list[LSTMWeights],
    attn_w: dict[str, jax.Array],
    kind: str,
    state: DecoderState,
    emb_gates_BxG: jax.Array,
    keep_LxBxH: jax.Array | None,
    keys_BxSxK: jax.Array,
    memory_BxSxM: jax.Array,
    mask_BxS: jax.Array,
    dtype,
) -> tuple[DecoderState, jax.Array, jax.Array]:
    """One decoder step: ``(new state, top hidden [B, H], attention [B, S])``.

    ``emb_gates_BxG`` is the embedding part of layer 0's gates (bias included);
    the fed-back context part is added here. ``keep_LxBxH`` holds inverted-dropout
    multipliers for the inputs of layers 1.. (``None`` = no dropout).
    """
    e_dim = layers[0].w_x.shape[0] - memory_BxSxM.shape[-1]
    gates = emb_gates_BxG + _mm(state.context, layers[0].w_x[e_dim:], dtype)
    hs, cs = [], []
    x = None
    for i, w in enumerate(layers):
        if i > 0:
            if keep_LxBxH is not None:
                x = x * keep_LxBxH[i - 1]
            gates = _mm(x, w.w_x, dtype) + w.b
        x, c = lstm_cell(gates, state.h[:, i], state.c[:, i], w.w_h, dtype)
        hs.append(x)
        cs.append(c)
    context, weights = attend(kind, attn_w, x, keys_BxSxK, memory_BxSxM, mask_BxS, dtype)
    return DecoderState(jnp.stack(hs, 1), jnp.stack(cs, 1), context), x, weights


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


@dataclasses.dataclass(frozen=True)
class RNN(EncoderDecoder):
    """The bi-LSTM encoder / attentional LSTM decoder on the shared interface."""

    net_class = RNNNet

    def expand_cache(self, cache: Cache, times: int) -> Cache:
        """Beams share the memory (module-level ``expand_cache``)."""
        return expand_cache(cache, times)
