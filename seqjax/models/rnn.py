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
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from seqjax.config import ModelConfig
from seqjax.models.interface import Cache, EncoderDecoder, ImportedOnUse, moved_names

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


@dataclasses.dataclass(frozen=True)
class RNN(EncoderDecoder):
    """The bi-LSTM encoder / attentional LSTM decoder on the shared interface."""

    net_class = ImportedOnUse("seqjax.models.rnn_net:RNNNet")  # Flax: imported when traced

    def expand_cache(self, cache: Cache, times: int) -> Cache:
        """Beams share the memory (module-level ``expand_cache``)."""
        return expand_cache(cache, times)


_MOVED = ("RNNNet", "LSTMParams", "AttentionParams")  # Flax layers, now in seqjax.models.rnn_net


# Old imports of the layers from here still work, without importing Flax up front.
__getattr__ = moved_names(__name__, "seqjax.models.rnn_net", _MOVED)
