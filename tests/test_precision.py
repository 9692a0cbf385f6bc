"""Mixed precision: bfloat16 activations/matmuls, float32 params, float32 logits and losses."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from seqjax.app.translate import _decode_batch
from seqjax.config import DecodeConfig, TrainConfig, model_preset
from seqjax.decoding import numeric_options, static_part
from seqjax.models import build_model
from seqjax.training.optimizer import make_optimizer
from seqjax.training.steps import init_train_state, make_train_step


def _inputs(vocab: int, rows: int = 4, length: int = 10):
    rng = np.random.default_rng(0)
    src = rng.integers(4, vocab, (rows, length)).astype(np.int32)
    src[0, 6:] = 0
    tgt_in = np.concatenate([np.full((rows, 1), 2), src[:, ::-1][:, :-1]], 1).astype(np.int32)
    return jnp.asarray(src), jnp.asarray(tgt_in)


@pytest.mark.parametrize("preset", ["tiny", "rnn_tiny"])
def test_bfloat16_logits_stay_close_to_float32(preset):
    f32 = build_model(model_preset(preset, dropout=0.0))
    bf16 = build_model(dataclasses.replace(f32.config, dtype="bfloat16"))
    params = f32.init(jax.random.key(0))
    # bf16 builds the same float32 parameter tree: one checkpoint serves both.
    shapes = jax.eval_shape(bf16.init, jax.random.key(0))
    assert jax.tree.map(lambda s: (s.shape, s.dtype), shapes) == jax.tree.map(
        lambda p: (p.shape, p.dtype), params
    )
    assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    src, tgt_in = _inputs(f32.config.vocab_size)
    a = f32.forward(params, src, src != 0, tgt_in)
    b = bf16.forward(params, src, src != 0, tgt_in)
    assert a.dtype == b.dtype == jnp.float32  # logits reach softmax/losses in float32
    diff = float(jnp.max(jnp.abs(a - b)))
    scale = float(jnp.max(jnp.abs(a)))
    assert 0.0 < diff < 0.05 * scale + 0.02, (diff, scale)  # > 0: bf16 really ran
    lp_a, lp_b = jax.nn.log_softmax(a), jax.nn.log_softmax(b)
    assert float(jnp.max(jnp.abs(lp_a - lp_b))) < 0.1
    assert float(jnp.mean(jnp.argmax(a, -1) == jnp.argmax(b, -1))) > 0.9

    # The cached decode step agrees too and returns float32 logits.
    mask = src != 0
    cache = bf16.init_cache(params, bf16.encode(params, src, mask), mask, 4)
    step_logits, _, _ = bf16.decode_step(params, cache, tgt_in[:, 0], 0)
    assert step_logits.dtype == jnp.float32
    np.testing.assert_allclose(step_logits, a[:, 0], atol=0.05 * scale + 0.02)


def test_bfloat16_train_step_is_finite_and_keeps_float32_params():
    cfg = model_preset("tiny", dropout=0.1, dtype="bfloat16")
    model = build_model(cfg)
    opt = make_optimizer(TrainConfig(learning_rate=3e-3, warmup_steps=5))
    step = make_train_step(model, opt, label_smoothing=0.1, pad_id=0)
    src, tgt_in = _inputs(cfg.vocab_size, rows=8)
    tgt_out = jnp.concatenate([tgt_in[:, 1:], jnp.full((8, 1), 3, jnp.int32)], 1)
    batch = {"src": src, "tgt_in": tgt_in, "tgt_out": tgt_out}
    state = init_train_state(model.init(jax.random.key(1)), opt)
    losses = []
    for _ in range(15):
        state, m = step(state, batch, jax.random.key(0))
        losses.append(float(m["loss"]))
        assert int(m["skipped"]) == 0
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert {p.dtype for p in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.float32)}


# Primitives of LayerNorm (rsqrt), softmax / log-softmax (exp, log, reduce_max): with bf16
# activations they must still see float32 operands (README: "params, softmax, log-softmax
# and losses stay float32").
_FLOAT32_ONLY = {"rsqrt", "exp", "log", "reduce_max", "logistic", "log1p", "expm1"}


def _float_ops(jaxpr) -> list[tuple[str, str]]:
    """``(primitive, dtype)`` of every float operand in ``jaxpr`` and its sub-jaxprs."""
    out = []
    for eqn in jaxpr.eqns:
        for v in eqn.invars:
            dt = getattr(getattr(v, "aval", None), "dtype", None)
            if dt is not None and jnp.issubdtype(dt, jnp.floating):
                out.append((eqn.primitive.name, str(dt)))
        for p in eqn.params.values():
            for sub in p if isinstance(p, tuple | list) else [p]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    out.extend(_float_ops(inner))
    return out


def _layer_norm_out_dtypes(fn, *args) -> list[str]:
    """Output dtype of every ``nn.LayerNorm`` call while tracing ``fn(*args)``."""
    seen: list[str] = []

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if isinstance(context.module, nn.LayerNorm) and context.method_name == "__call__":
            seen.append(str(out.dtype))
        return out

    with nn.intercept_methods(record):
        jax.eval_shape(fn, *args)
    return seen


def test_bfloat16_keeps_layernorm_softmax_and_log_softmax_in_float32():
    cfg = model_preset("tiny", dropout=0.0, dtype="bfloat16")
    model = build_model(cfg)
    params = model.init(jax.random.key(0))
    src, tgt_in = _inputs(cfg.vocab_size)
    mask = src != 0

    def forward_and_step(params):
        lp = jax.nn.log_softmax(model.forward(params, src, mask, tgt_in))
        cache = model.init_cache(params, model.encode(params, src, mask), mask, 4)
        logits, cache, _ = model.step_fn(params)(tgt_in[:, 0], jnp.asarray(1), cache)
        return lp, jax.nn.log_softmax(logits)

    ln = _layer_norm_out_dtypes(forward_and_step, params)
    assert len(ln) >= 2 * cfg.num_decoder_layers and set(ln) == {"float32"}, (
        ln
    )  # forward + cached step
    ops = _float_ops(jax.make_jaxpr(forward_and_step)(params).jaxpr)
    # the decoders' own log-softmax (logit processors) on the bf16 model's logits
    for dc in (DecodeConfig(method="greedy"), DecodeConfig(beam_size=2)):
        decode = functools.partial(
            _decode_batch, model, config=static_part(dc), max_len=4, numerics=numeric_options(dc)
        )
        ops += _float_ops(jax.make_jaxpr(decode)(params, src, jax.random.key(0)).jaxpr)
    assert ("dot_general", "bfloat16") in ops  # bf16 really runs the matmuls
    seen = {name for name, _ in ops}
    assert {"rsqrt", "exp", "log", "reduce_max"} <= seen
    low = sorted({(n, d) for n, d in ops if n in _FLOAT32_ONLY and d != "float32"})
    assert not low, f"LayerNorm/softmax/log-softmax ops below float32: {low}"


def test_bfloat16_cached_decoding_matches_float32_at_every_position():
    f32 = build_model(model_preset("tiny", dropout=0.0))
    bf16 = build_model(dataclasses.replace(f32.config, dtype="bfloat16"))
    params = f32.init(jax.random.key(0))
    src, tgt_in = _inputs(f32.config.vocab_size)
    mask = src != 0
    ref = f32.forward(params, src, mask, tgt_in)  # [B, T, V] float32, teacher-forced
    scale = float(jnp.max(jnp.abs(ref)))
    step = bf16.step_fn(params)
    cache = bf16.init_cache(params, bf16.encode(params, src, mask), mask, tgt_in.shape[1])
    worst = 0.0
    for t in range(tgt_in.shape[1]):
        logits, cache, _ = step(tgt_in[:, t], jnp.asarray(t), cache)
        assert logits.dtype == jnp.float32
        worst = max(worst, float(jnp.max(jnp.abs(logits - ref[:, t]))))
    # measured 0.015-0.023 at scale 4.5 (positions 0-9); bound 0.11
    assert 0.0 < worst < 0.02 * scale + 0.02, (worst, scale)
