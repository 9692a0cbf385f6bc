"""The model interface invariants: cached decoding equals the teacher-forced forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.config import model_preset
from seqjax.models import build_model
from seqjax.models.transformer import count_params


def _inputs(vocab: int, pad_rows: bool):
    rng = np.random.default_rng(0)
    src = rng.integers(4, vocab, (3, 9)).astype(np.int32)
    if pad_rows:
        src[1, 6:] = 0
        src[2, 2:] = 0
    tgt = rng.integers(4, vocab, (3, 7)).astype(np.int32)
    src = jnp.asarray(src)
    return src, src != 0, jnp.asarray(tgt)


@pytest.mark.parametrize("pre_ln", [True, False], ids=["pre_ln", "post_ln"])
@pytest.mark.parametrize("pad_rows", [False, True], ids=["no_pad", "src_pad"])
def test_decode_step_matches_forward(pre_ln, pad_rows):
    cfg = model_preset("tiny", pre_ln=pre_ln, share_embeddings=False, tie_output=False)
    model = build_model(cfg)
    params = model.init(jax.random.key(1))
    src, mask, tgt = _inputs(cfg.vocab_size, pad_rows)
    full_BxTxV = model.forward(params, src, mask, tgt)
    cache = model.init_cache(params, model.encode(params, src, mask), mask, max_len=10)
    step = jax.jit(model.step_fn(params))
    steps = []
    for t in range(tgt.shape[1]):
        logits, cache, attn_BxS = step(tgt[:, t], jnp.int32(t), cache)
        steps.append(logits)
        # Cross-attention is a distribution over real source positions only.
        np.testing.assert_allclose(attn_BxS.sum(-1), 1.0, rtol=1e-5)
        assert float(jnp.max(jnp.where(mask, 0.0, attn_BxS))) == 0.0
    np.testing.assert_allclose(jnp.stack(steps, 1), full_BxTxV, atol=2e-5, rtol=2e-5)


def test_source_padding_does_not_change_outputs():
    cfg = model_preset("tiny")
    model = build_model(cfg)
    params = model.init(jax.random.key(2))
    src, mask, tgt = _inputs(cfg.vocab_size, pad_rows=False)
    longer = jnp.pad(src, ((0, 0), (0, 5)))
    a = model.forward(params, src, mask, tgt)
    b = model.forward(params, longer, longer != 0, tgt)
    np.testing.assert_allclose(a, b, atol=2e-5, rtol=2e-5)


def test_dropout_only_in_training():
    cfg = model_preset("tiny", dropout=0.3)
    model = build_model(cfg)
    params = model.init(jax.random.key(3))
    src, mask, tgt = _inputs(cfg.vocab_size, pad_rows=True)
    eval_a = model.forward(params, src, mask, tgt)
    eval_b = model.forward(params, src, mask, tgt)
    np.testing.assert_array_equal(eval_a, eval_b)
    k = jax.random.key(0)
    train_a = model.forward(params, src, mask, tgt, dropout_rng=k)
    train_b = model.forward(params, src, mask, tgt, dropout_rng=k)
    train_c = model.forward(params, src, mask, tgt, dropout_rng=jax.random.key(1))
    np.testing.assert_array_equal(train_a, train_b)  # same key, same masks
    assert float(jnp.max(jnp.abs(train_a - train_c))) > 1e-3
    assert float(jnp.max(jnp.abs(train_a - eval_a))) > 1e-3


@pytest.mark.parametrize(
    "name, lo, hi", [("tiny", 1e4, 1e5), ("small", 1e6, 1e7), ("base", 4e7, 8e7)]
)
def test_preset_sizes(name, lo, hi):
    cfg = model_preset(name)
    shapes = jax.eval_shape(build_model(cfg).init, jax.random.key(0))
    assert lo < count_params(shapes) < hi
    if name == "base":
        assert (cfg.num_encoder_layers, cfg.d_model, cfg.num_heads, cfg.d_ff) == (6, 512, 8, 2048)


def test_shared_embeddings_are_one_table():
    shared = jax.eval_shape(build_model(model_preset("tiny")).init, jax.random.key(0))
    separate = jax.eval_shape(
        build_model(model_preset("tiny", share_embeddings=False, tie_output=False)).init,
        jax.random.key(0),
    )
    cfg = model_preset("tiny")
    assert (
        count_params(separate) - count_params(shared)
        == 2 * cfg.vocab_size * cfg.d_model + cfg.vocab_size
    )
