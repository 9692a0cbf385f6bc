"""The Transformer's own properties: preset sizes, shared embedding tables.

The model-interface contract (cached decoding equals the teacher-forced forward, padding,
dropout) is in tests/test_model_interface.py; the decode step in
tests/test_transformer_step.py.
"""

import jax
import pytest

from seqjax.config import model_preset
from seqjax.models import build_model
from seqjax.models.transformer import count_params


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
