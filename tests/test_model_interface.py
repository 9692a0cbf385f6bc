"""The model interface contract (DESIGN.md), held by every family and Transformer variant.

``init``, ``encode``, ``init_cache``, ``decode_step``/``step_fn`` and ``forward`` for the
Transformer (pre-LN, post-LN, the BART-like and Marian-like option sets HF imports use)
and the RNN (both attention kinds). Family-specific properties live in
tests/test_transformer.py, tests/test_transformer_step.py and tests/test_rnn.py.
"""

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (
    JIT,
    MODEL_FAMILIES,
    model_and_params,
    model_inputs,
    without_test_flags,
)

BOTH = ["transformer", "rnn_bahdanau"]  # where the variant does not matter
LN_VARIANTS = ["transformer", "transformer_post_ln", "rnn_bahdanau"]


@pytest.mark.parametrize("pad_rows", [False, True], ids=["no_pad", "src_pad"])
@pytest.mark.parametrize("family", MODEL_FAMILIES)
def test_decode_step_matches_forward(family, pad_rows):
    """The oracle: ``decode_step`` position by position equals the teacher-forced forward."""
    model, params = model_and_params(family)
    src, mask, tgt = model_inputs(model.config.vocab_size, pad_rows)
    full_BxTxV = JIT["forward"](model, params, src, mask, tgt)
    cache = JIT["init_cache"](model, params, JIT["encode"](model, params, src, mask), mask, 10)
    step = jax.jit(model.step_fn(params))
    steps = []
    for t in range(tgt.shape[1]):
        logits, cache, attn_BxS = step(tgt[:, t], jnp.int32(t), cache)
        steps.append(logits)
        # Cross-attention is a distribution over real source positions only.
        np.testing.assert_allclose(attn_BxS.sum(-1), 1.0, rtol=1e-5)
        assert float(jnp.max(jnp.where(mask, 0.0, attn_BxS))) == 0.0
    np.testing.assert_allclose(jnp.stack(steps, 1), full_BxTxV, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("pad_rows", [False, True], ids=["no_pad", "src_pad"])
@pytest.mark.parametrize("family", BOTH)
def test_source_padding_changes_nothing_at_real_positions(family, pad_rows):
    model, params = model_and_params(family)
    src, mask, tgt = model_inputs(model.config.vocab_size, pad_rows)
    longer = jnp.pad(src, ((0, 0), (0, 5)))
    memory = JIT["encode"](model, params, src, mask)
    memory_long = JIT["encode"](model, params, longer, longer != 0)
    real = mask[..., None]
    np.testing.assert_allclose(
        jnp.where(real, memory, 0.0), jnp.where(real, memory_long[:, :9], 0.0), atol=2e-5
    )
    a = JIT["forward"](model, params, src, mask, tgt)
    b = JIT["forward"](model, params, longer, longer != 0, tgt)
    np.testing.assert_allclose(a, b, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("family", LN_VARIANTS)
def test_dropout_only_with_rng(family):
    model, params = model_and_params(family, 3, dropout=0.3)
    src, mask, tgt = model_inputs(model.config.vocab_size, pad_rows=True)
    forward = JIT["forward"]
    eval_a = forward(model, params, src, mask, tgt)
    np.testing.assert_array_equal(eval_a, forward(model, params, src, mask, tgt))
    k = jax.random.key(0)
    train_a = forward(model, params, src, mask, tgt, dropout_rng=k)
    train_b = forward(model, params, src, mask, tgt, dropout_rng=k)
    train_c = forward(model, params, src, mask, tgt, dropout_rng=jax.random.key(1))
    np.testing.assert_array_equal(train_a, train_b)  # same key, same masks
    assert float(jnp.max(jnp.abs(train_a - train_c))) > 1e-3
    assert float(jnp.max(jnp.abs(train_a - eval_a))) > 1e-3


_EAGER_VS_JITTED = """
import sys, jax, jax.numpy as jnp, numpy as np
sys.path.insert(0, "tests")
from conftest import model_config
from seqjax.models import build_model
for family in ("transformer_bart", "rnn_luong"):
    model = build_model(model_config(family))
    src = jnp.ones((1, 4), jnp.int32)
    eager = model.net.init(jax.random.key(5), src, src > 0, src)
    jitted = model.init(jax.random.key(5))
    assert jax.tree.structure(eager) == jax.tree.structure(jitted), family
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=family)
"""


@pytest.mark.slow  # ~30 s of eager op-by-op init; CI's slow line runs it
def test_init_equals_the_eager_flax_init():
    """``init`` is jitted for start-up time; its values are those of the plain eager Flax
    init it replaced, bit for bit (checkpoints and seeded runs stay reproducible). In a
    process with the user's compile flags: the suite's -O0 (conftest) changes the eager
    ops' last bits, not the init's (its compile level is fixed)."""
    env = {**os.environ, "XLA_FLAGS": without_test_flags(os.environ.get("XLA_FLAGS", ""))}
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", _EAGER_VS_JITTED], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


def test_a_family_may_name_its_flax_module_directly():
    """``net_class`` is the module class itself or ``ImportedOnUse`` (the built-in families,
    so that importing them imports no Flax); both build the same layers. The layers' old
    import paths still resolve."""
    import dataclasses

    from seqjax.models import interface, rnn, transformer, transformer_net

    model, params = model_and_params("transformer")

    @dataclasses.dataclass(frozen=True)
    class Direct(transformer.Transformer):
        net_class = transformer_net.TransformerNet

    src, mask, tgt = model_inputs(model.config.vocab_size, False)
    np.testing.assert_array_equal(
        Direct(model.config).forward(params, src, mask, tgt), model.forward(params, src, mask, tgt)
    )
    assert transformer.Transformer.net_class is transformer.TransformerNet
    assert rnn.RNN.net_class is rnn.RNNNet and rnn.LSTMParams.__module__.endswith("rnn_net")
    assert issubclass(transformer.TransformerNet, interface.EncoderDecoderNet)
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        transformer.Nope  # noqa: B018
