"""Mixed precision: bfloat16 activations/matmuls, float32 params, float32 logits and losses."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.config import TrainConfig, model_preset
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
