"""The Transformer's incremental decoder: one target position on decode-layout weights.

This is the only incremental path (``Transformer.decode_step`` / ``step_fn``); the Flax
modules in ``transformer_net.py`` do teacher forcing, and tests pin each step against
their ``forward``. Both build on ``transformer_ops`` (positions, embedding, residual,
attention, activations), so every option is written once.

``step_weights`` lays the decoder parameters out once as plain 2-D matrices
``[in, out]`` (fused QKV ``[D, 3 * H * Dh]``, the tied output embedding transposed to
``[D, V]``, cast to the compute dtype); each sublayer is then plain ``x @ W``
products. With the modules' 4-D head-split kernels XLA's CPU backend transposes every
attention kernel inside the decoding loop, at every step (about half the time of a
batch-1 step for transformer-base).

Cache layout (made by ``TransformerNet.init_cache``; every leaf leads with the batch
axis, so decoders can expand it for beams and reorder it with a gather along axis 0)::

    cache["layers"][i]["k"], ["v"]:   [N, H, T, Dh]  self-attention keys/values so far
    cache["layers"][i]["ck"], ["cv"]: [B, H, S, Dh]  cross-attention keys/values of memory
    cache["src_mask"]:                [B, S]         True at real source tokens

``N = B`` as made; ``expand_cache(cache, K)`` folds ``K`` beams per source into the
self-attention rows only (``N = B * K``, row ``b * K + k``). The memory's rows stay one
per source: the beams of a source attend over the same keys/values, so each source's
``K`` queries meet them in one small matrix product instead of ``K`` copies being read
(a quarter of the cross-attention's memory traffic at beam 4), and beam search never
copies or reorders them.

Cross-attention keys/values are projected once in ``init_cache``, not at every step:
for a 32-token source that would otherwise cost more than the rest of the step for a
transformer-base decoder.

Each sublayer returns ``(y, aux)``: new keys/values, attention weights or None.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from seqjax.config import ModelConfig
from seqjax.models.interface import Cache, Params
from seqjax.models.quantize import take_rows
from seqjax.models.transformer_ops import (
    NEG_INF,
    activation_fn,
    apply_layer_norm,
    attention,
    compute_dtype,
    embed,
    position_rows,
    residual,
)

Weights = dict[str, Any]
KV = tuple[jax.Array, jax.Array]


def _layer_weights(cfg: ModelConfig, lp: Params) -> Weights:
    """One decoder layer's parameters as ``[in, out]`` matrices in the compute dtype."""
    dt = compute_dtype(cfg)
    d, hd = cfg.d_model, cfg.num_heads * cfg.head_dim

    def mat(kernel: jax.Array, rows: int) -> jax.Array:
        return kernel.reshape(rows, -1).astype(dt)

    def bias(proj: Params) -> jax.Array | None:
        return proj["bias"].reshape(-1).astype(dt) if cfg.qkv_bias else None

    return {
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
        "ln_self": lp["ln_self"],  # LayerNorm parameters stay float32, as in the modules
        "ln_cross": lp["ln_cross"],
        "ln_ffn": lp["ln_ffn"],
    }


def step_weights(cfg: ModelConfig, params: Params) -> Weights:
    """The decoder's parameters in decode layout (same values as the Flax parameters,
    reshaped; the tied embedding transposed)."""
    p = params["params"] if "params" in params else params
    dt = compute_dtype(cfg)
    table = p["tgt_embed"]["embedding"]
    if cfg.tie_output:
        # ``Embed.attend`` promotes to the table's float32; a [D, V] copy made once per
        # call keeps the per-step product a plain ``x @ W`` (contracting the table's
        # minor axis makes XLA transpose all of it inside the loop, at every step).
        out_w, out_b = table.T, None  # .T: also an int8 QuantizedArray's
    else:
        out_w = p["logits_dense"]["kernel"].astype(dt)
        out_b = p["logits_dense"]["bias"].astype(dt)
    if cfg.final_logits_bias:
        extra = p["final_logits_bias"]
        out_b = extra if out_b is None else out_b + extra.astype(dt)
    learned = p["decoder_pos"]["embedding"] if cfg.position_embedding == "learned" else None
    return {
        "embed": table,
        "positions": position_rows(cfg, learned),
        "embed_ln": p["decoder_ln_emb"] if cfg.layernorm_embedding else None,
        "layers": tuple(
            _layer_weights(cfg, p[f"decoder_layers_{i}"]) for i in range(cfg.num_decoder_layers)
        ),
        "final_ln": p["decoder_ln"] if cfg.pre_ln else None,
        "out_w": out_w,
        "out_b": out_b,
    }


def _linear(x: jax.Array, w: jax.Array, b: jax.Array | None) -> jax.Array:
    return x @ w if b is None else x @ w + b


def _one_query(
    q_BxHxD: jax.Array, k_BxHxKxD: jax.Array, v_BxHxKxD: jax.Array, mask_BxK: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """``transformer_ops.attention`` for one query: (output ``[B, H * D]``, weights
    ``[B, H, K]``). Written without the query axis: a size-1 axis in the einsums made
    batched decoding (beam search) markedly slower on CPU."""
    scale = 1.0 / math.sqrt(q_BxHxD.shape[-1])
    logits = jnp.einsum("bhd,bhkd->bhk", q_BxHxD, k_BxHxKxD).astype(jnp.float32) * scale
    weights = jax.nn.softmax(jnp.where(mask_BxK[:, None, :], logits, NEG_INF), axis=-1)
    out = jnp.einsum("bhk,bhkd->bhd", weights.astype(v_BxHxKxD.dtype), v_BxHxKxD)
    return out.reshape(out.shape[0], -1), weights


def self_attention(
    cfg: ModelConfig, w: Weights, kv: KV, position: jax.Array, mask_BxT: jax.Array, x_BxD
) -> tuple[jax.Array, KV]:
    """Self-attention of the new position over the cache: ``(y [B, D], (k, v) updated)``."""
    dt = compute_dtype(cfg)
    b = x_BxD.shape[0]
    qkv = _linear(x_BxD, w["qkv"], w["qkv_b"]).reshape(b, 3, cfg.num_heads, cfg.head_dim)
    k_cache, v_cache = (
        lax.dynamic_update_slice(c, qkv[:, i, :, None, :].astype(c.dtype), (0, 0, position, 0))
        for i, c in ((1, kv[0]), (2, kv[1]))
    )
    o, _ = _one_query(qkv[:, 0], k_cache.astype(dt), v_cache.astype(dt), mask_BxT)
    return o @ w["self_out"] + w["self_out_b"], (k_cache, v_cache)


def _grouped_queries(
    q_NxHxD: jax.Array, k_BxHxSxD: jax.Array, v_BxHxSxD: jax.Array, mask_BxS: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """``_one_query`` for ``N = B * R`` rows whose keys/values are kept once per group of
    ``R`` consecutive rows (a source's beams): (output ``[N, H * D]``, weights
    ``[N, H, S]``)."""
    n, h, d = q_NxHxD.shape
    b = k_BxHxSxD.shape[0]
    q_BxHxRxD = q_NxHxD.reshape(b, n // b, h, d).transpose(0, 2, 1, 3)
    scale = 1.0 / math.sqrt(d)
    logits = jnp.einsum("bhrd,bhsd->bhrs", q_BxHxRxD, k_BxHxSxD).astype(jnp.float32) * scale
    weights = jax.nn.softmax(jnp.where(mask_BxS[:, None, None, :], logits, NEG_INF), axis=-1)
    out = jnp.einsum("bhrs,bhsd->bhrd", weights.astype(v_BxHxSxD.dtype), v_BxHxSxD)
    return (
        out.transpose(0, 2, 1, 3).reshape(n, h * d),
        weights.transpose(0, 2, 1, 3).reshape(n, h, -1),
    )


def cross_attention(
    cfg: ModelConfig, w: Weights, ckv: KV, mask_BxS: jax.Array, x_NxD: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Attention over the memory's projected keys/values: ``(y [N, D], weights [N, H, S])``.

    The memory has ``B`` rows and ``x`` has ``N``, ``N / B`` consecutive rows per source
    (``expand_cache``); with ``N == B`` the per-row form is used, as a size-1 group axis
    slows XLA:CPU's batched products down."""
    dt = compute_dtype(cfg)
    n, b = x_NxD.shape[0], ckv[0].shape[0]
    if n % b:
        raise ValueError(f"{n} query rows do not divide into the memory's {b} sources")
    q = _linear(x_NxD, w["cross_q"], w["cross_q_b"]).reshape(n, cfg.num_heads, -1)
    attend = _one_query if n == b else _grouped_queries
    o, weights = attend(q, ckv[0].astype(dt), ckv[1].astype(dt), mask_BxS)
    return o @ w["cross_out"] + w["cross_out_b"], weights


def feed_forward(cfg: ModelConfig, w: Weights, x_BxD: jax.Array) -> tuple[jax.Array, None]:
    h = activation_fn(cfg.activation)(x_BxD @ w["wi"] + w["wi_b"])
    return h @ w["wo"] + w["wo_b"], None


def decoder_layer(
    cfg: ModelConfig,
    w: Weights,
    layer_cache: Cache,
    x_BxD: jax.Array,
    position: jax.Array,
    self_mask_BxT: jax.Array,
    src_mask_BxS: jax.Array,
) -> tuple[jax.Array, Cache, jax.Array]:
    """One layer at one position: ``(y [B, D], new layer cache, cross weights [B, H, S])``."""
    lc = layer_cache
    x, (k, v) = residual(
        cfg,
        lambda h: self_attention(cfg, w, (lc["k"], lc["v"]), position, self_mask_BxT, h),
        lambda h: apply_layer_norm(cfg, w["ln_self"], h),
        x_BxD,
    )
    x, cross_w = residual(
        cfg,
        lambda h: cross_attention(cfg, w, (lc["ck"], lc["cv"]), src_mask_BxS, h),
        lambda h: apply_layer_norm(cfg, w["ln_cross"], h),
        x,
    )
    x, _ = residual(
        cfg,
        lambda h: feed_forward(cfg, w, h),
        lambda h: apply_layer_norm(cfg, w["ln_ffn"], h),
        x,
    )
    return x, {**lc, "k": k, "v": v}, cross_w


def output_logits(cfg: ModelConfig, weights: Weights, x_BxD: jax.Array) -> jax.Array:
    """Float32 logits ``[B, V]`` of the top layer's output (final LN when pre-LN)."""
    if weights["final_ln"] is not None:
        x_BxD = apply_layer_norm(cfg, weights["final_ln"], x_BxD)
    x = x_BxD.astype(compute_dtype(cfg)).astype(weights["out_w"].dtype)
    logits = _linear(x, weights["out_w"], weights["out_b"])
    return logits.astype(jnp.float32)


def decode_step(
    cfg: ModelConfig, weights: Weights, cache: Cache, token_B: jax.Array, position: jax.Array
) -> tuple[jax.Array, Cache, jax.Array]:
    """One target position: ``(logits [B, V], new cache, cross-attention [B, S])``.

    The attention returned is the last layer's, averaged over heads (beam search's
    coverage penalty reads it).
    """
    position = jnp.asarray(position, jnp.int32)
    embed_ln = weights["embed_ln"]
    x = embed(
        cfg,
        take_rows(weights["embed"], token_B),
        lax.dynamic_index_in_dim(weights["positions"], position, 0, keepdims=True),
        None if embed_ln is None else (lambda h: apply_layer_norm(cfg, embed_ln, h)),
    )  # [B, D]
    max_t = cache["layers"][0]["k"].shape[2]
    self_mask = jnp.broadcast_to(jnp.arange(max_t) <= position, (token_B.shape[0], max_t))
    new_layers: tuple[Cache, ...] = ()
    cross_w = None
    for w, lc in zip(weights["layers"], cache["layers"], strict=True):
        x, lc, cross_w = decoder_layer(cfg, w, lc, x, position, self_mask, cache["src_mask"])
        new_layers += (lc,)
    logits = output_logits(cfg, weights, x)
    new_cache = {"layers": new_layers, "src_mask": cache["src_mask"]}
    return logits, new_cache, jnp.mean(cross_w, axis=1)


def _prefill_layer(
    cfg: ModelConfig,
    w: Weights,
    lc: Cache,
    x_BxPxD: jax.Array,
    causal_BxPxT: jax.Array,
    src_BxPxS: jax.Array,
) -> tuple[jax.Array, Cache]:
    """``decoder_layer`` for positions ``0 .. P-1`` at once; K/V written at ``0 .. P-1``."""
    dt = compute_dtype(cfg)
    B, P, _ = x_BxPxD.shape
    H, Dh = cfg.num_heads, cfg.head_dim

    def heads(y_BxPxHD: jax.Array) -> jax.Array:  # [B, P, H*Dh] -> [B, H, P, Dh]
        return y_BxPxHD.reshape(B, P, H, Dh).transpose(0, 2, 1, 3)

    def merged(o_BxHxPxDh: jax.Array) -> jax.Array:
        return o_BxHxPxDh.transpose(0, 2, 1, 3).reshape(B, P, H * Dh)

    def self_attention_all(h: jax.Array) -> tuple[jax.Array, KV]:
        qkv = _linear(h, w["qkv"], w["qkv_b"]).reshape(B, P, 3, H * Dh)
        k_cache, v_cache = (
            lax.dynamic_update_slice(c, heads(qkv[:, :, i]).astype(c.dtype), (0, 0, 0, 0))
            for i, c in ((1, lc["k"]), (2, lc["v"]))
        )
        o, _ = attention(heads(qkv[:, :, 0]), k_cache.astype(dt), v_cache.astype(dt), causal_BxPxT)
        return merged(o) @ w["self_out"] + w["self_out_b"], (k_cache, v_cache)

    def cross_attention_all(h: jax.Array) -> tuple[jax.Array, None]:
        q = heads(_linear(h, w["cross_q"], w["cross_q_b"]))
        o, _ = attention(q, lc["ck"].astype(dt), lc["cv"].astype(dt), src_BxPxS)
        return merged(o) @ w["cross_out"] + w["cross_out_b"], None

    x, (k, v) = residual(
        cfg, self_attention_all, lambda h: apply_layer_norm(cfg, w["ln_self"], h), x_BxPxD
    )
    x, _ = residual(cfg, cross_attention_all, lambda h: apply_layer_norm(cfg, w["ln_cross"], h), x)
    x, _ = residual(
        cfg, lambda h: feed_forward(cfg, w, h), lambda h: apply_layer_norm(cfg, w["ln_ffn"], h), x
    )
    return x, {**lc, "k": k, "v": v}


def prefill(
    cfg: ModelConfig, weights: Weights, cache: Cache, tokens_BxP: jax.Array
) -> tuple[jax.Array, Cache]:
    """Positions ``0 .. P-1`` in one pass (a prompt): ``(logits [B, P, V], new cache)``.

    ``tokens_BxP[:, t]`` is the token consumed at position ``t`` (BOS first), as
    ``decode_step`` would get it; the result equals ``P`` calls of ``decode_step``
    (up to float rounding). Later positions of the cache are untouched.
    """
    B, P = tokens_BxP.shape
    embed_ln = weights["embed_ln"]
    x = embed(
        cfg,
        jnp.take(weights["embed"], tokens_BxP, axis=0),
        weights["positions"][:P],
        None if embed_ln is None else (lambda h: apply_layer_norm(cfg, embed_ln, h)),
    )  # [B, P, D]
    max_t = cache["layers"][0]["k"].shape[2]
    causal = jnp.broadcast_to(jnp.arange(max_t)[None, :] <= jnp.arange(P)[:, None], (B, P, max_t))
    src = jnp.broadcast_to(cache["src_mask"][:, None, :], (B, P, cache["src_mask"].shape[1]))
    new_layers: tuple[Cache, ...] = ()
    for w, lc in zip(weights["layers"], cache["layers"], strict=True):
        x, lc = _prefill_layer(cfg, w, lc, x, causal, src)
        new_layers += (lc,)
    return output_logits(cfg, weights, x), {"layers": new_layers, "src_mask": cache["src_mask"]}


def expand_cache(cache: Cache, times: int) -> Cache:
    """``times`` beams per source: row ``b`` of each self-attention key/value leaf becomes
    rows ``b * times .. b * times + times - 1``; the memory's keys/values and the source
    mask stay at one row per source, the same arrays (so beam search leaves them alone).

    >>> c = {"layers": ({"k": jnp.zeros((2, 1, 3, 4)), "v": jnp.zeros((2, 1, 3, 4)),
    ...                  "ck": jnp.zeros((2, 1, 5, 4)), "cv": jnp.zeros((2, 1, 5, 4))},),
    ...      "src_mask": jnp.ones((2, 5), bool)}
    >>> e = expand_cache(c, 4)
    >>> e["layers"][0]["k"].shape, e["layers"][0]["ck"].shape, e["src_mask"].shape
    ((8, 1, 3, 4), (2, 1, 5, 4), (2, 5))
    """
    if times == 1:
        return cache
    layers = tuple(
        {**lc, "k": jnp.repeat(lc["k"], times, axis=0), "v": jnp.repeat(lc["v"], times, axis=0)}
        for lc in cache["layers"]
    )
    return {**cache, "layers": layers}


def resize_cache(cache: Cache, length: int) -> Cache:
    """The cache with room for exactly ``length`` self-attention positions (static int).

    Positions ``< min(T, length)`` keep their keys/values; new ones are zeros (masked
    until written). The memory's cross-attention keys/values are passed through as
    the same arrays, so beam search still skips reordering them.
    """

    def fit(x_BxHxTxD: jax.Array) -> jax.Array:
        t = x_BxHxTxD.shape[2]
        if length <= t:
            return x_BxHxTxD[:, :, :length]
        return jnp.pad(x_BxHxTxD, ((0, 0), (0, 0), (0, length - t), (0, 0)))

    layers = tuple({**lc, "k": fit(lc["k"]), "v": fit(lc["v"])} for lc in cache["layers"])
    return {**cache, "layers": layers}
