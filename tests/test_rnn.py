"""The RNN's own properties: every decoder on it, training, presets, config checks.

The model-interface contract it shares with the Transformer is in
tests/test_model_interface.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import JIT, beam_search_shared_and_repeated, model_and_params, model_inputs

from seqjax.config import ConfigError, model_preset
from seqjax.decoding import beam_search, contrastive, greedy, jitted, sample, score
from seqjax.models import RNN, build_model
from seqjax.models.transformer import count_params
from seqjax.training.steps import init_train_state, make_train_step

IDS = dict(bos_id=2, eos_id=3, pad_id=0)
_forward, _encode, _init_cache = JIT["forward"], JIT["encode"], JIT["init_cache"]
_model_and_params, _inputs = model_and_params, model_inputs


def _rescore(step, cache, tokens_BxKxL):
    """Teacher-forced log-probs of each of the K hypotheses: ``[B, K, L]``."""
    b, k, length = tokens_BxKxL.shape
    rows = jax.tree.map(lambda x: jnp.repeat(x, k, axis=0), cache)
    lp, _ = jitted(score)(step, rows, tokens_BxKxL.reshape(b * k, length), **IDS)
    return lp.reshape(b, k, length)


@pytest.mark.parametrize("family", ["rnn_luong"])
def test_every_decoder_runs_on_the_rnn(family):
    """Each decoder's reported log-probs equal a rescoring through ``forward``."""
    model, params = _model_and_params(family)
    amateur, amateur_params = _model_and_params(family, 7)
    src, mask, _ = _inputs(model.config.vocab_size, pad_rows=True)
    max_len = 8

    def prepare(m, p):
        return m.step_fn(p), _init_cache(m, p, _encode(m, p, src, mask), mask, max_len)

    step, cache = prepare(model, params)
    am_step, am_cache = prepare(amateur, amateur_params)
    common = dict(max_len=max_len, **IDS)
    key = jax.random.key(0)
    results = {
        "greedy": jitted(greedy)(step, cache, **common),
        "sample": jitted(sample)(step, cache, key=key, num_samples=2, top_k=5, **common),
        # Beam with GNMT length and coverage penalties (coverage reads the RNN's attention).
        "beam": jitted(beam_search)(
            step, cache, beam_size=3, n_best=2, alpha=0.6, coverage=0.2, src_mask=mask, **common
        ),
        "contrastive": jitted(contrastive)(step, cache, am_step, am_cache, **common),
    }
    assert results["beam"].tokens.shape == (3, 2, max_len)
    beam_scores = np.asarray(results["beam"].scores)
    assert np.all(np.isfinite(beam_scores)) and np.all(beam_scores[:, 0] >= beam_scores[:, 1])
    for name, res in results.items():
        assert np.all(res.lengths >= 1), name
        rescored = _rescore(step, cache, res.tokens)
        np.testing.assert_allclose(rescored, res.log_probs, atol=1e-4, err_msg=name)
    # score() itself agrees with the teacher-forced forward on the greedy output.
    tokens = results["greedy"].tokens[:, 0]
    tgt_in = jnp.concatenate([jnp.full((3, 1), 2, jnp.int32), tokens[:, :-1]], 1)
    lp_full = jax.nn.log_softmax(_forward(model, params, src, mask, tgt_in), -1)
    want = jnp.take_along_axis(lp_full, tokens[..., None], -1)[..., 0]
    got, _ = jitted(score)(step, cache, tokens, **IDS)
    np.testing.assert_allclose(jnp.where(got != 0, want, 0.0), got, atol=1e-4)


@pytest.mark.parametrize("family", ["rnn_bahdanau"])
def test_train_steps_reduce_loss(family):
    model, params = _model_and_params(family, 0, dropout=0.1)
    src = np.random.default_rng(0).integers(4, 40, (16, 6)).astype(np.int32)
    src[-1] = 0  # an all-PAD filler row (as the batcher adds) must stay finite
    tgt = src[:, ::-1]  # the task: reverse the source
    tgt_in = np.concatenate([np.full((16, 1), 2), tgt[:, :-1]], 1)
    batch = {
        k: jnp.asarray(v, jnp.int32) for k, v in dict(src=src, tgt_in=tgt_in, tgt_out=tgt).items()
    }
    step = make_train_step(model, optax.adam(1e-2), label_smoothing=0.0, pad_id=0)
    state = init_train_state(params, optax.adam(1e-2))
    losses = []
    for _ in range(25):
        state, metrics = step(state, batch, jax.random.key(1))
        losses.append(float(metrics["loss"]))
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.6 * losses[0], losses


@pytest.mark.parametrize("name, lo, hi", [("rnn_tiny", 2e4, 2e5), ("rnn_small", 2e6, 1e7)])
def test_rnn_preset_sizes(name, lo, hi):
    cfg = model_preset(name)
    model = build_model(cfg)
    assert isinstance(model, RNN) and hash(model) == hash(build_model(cfg))  # static jit arg
    assert lo < count_params(jax.eval_shape(model.init, jax.random.key(0))) < hi


def test_rnn_config_validation():
    assert model_preset("rnn_tiny", rnn_hidden=16).rnn_hidden == 16
    with pytest.raises(ConfigError, match="rnn_attention"):
        model_preset("rnn_tiny", rnn_attention="dot")
    with pytest.raises(ConfigError, match="rnn_hidden"):
        model_preset("rnn_tiny", rnn_hidden=-1)


@pytest.mark.parametrize("family", ["rnn_bahdanau", "rnn_luong"])
def test_beam_search_over_a_shared_memory_equals_repeated_rows(family):
    """``expand_cache`` keeps the memory, its keys and mask per source (the same arrays);
    beam search over it finds what it finds with every leaf repeated, attention included."""
    model, params = _model_and_params(family)
    src, mask, _ = _inputs(model.config.vocab_size, pad_rows=True)
    cache = _init_cache(model, params, _encode(model, params, src, mask), mask, 10)
    shared = model.expand_cache(cache, 4)
    assert shared["memory"] is cache["memory"] and shared["keys"] is cache["keys"]
    assert shared["h"].shape[0] == 4 * src.shape[0]
    options = dict(beam_size=4, n_best=2, max_len=10, coverage=0.3, src_mask=mask, **IDS)
    shared_out, repeated = beam_search_shared_and_repeated(model, params, cache, **options)
    np.testing.assert_array_equal(shared_out.tokens, repeated.tokens)
    np.testing.assert_allclose(shared_out.scores, repeated.scores, rtol=1e-5, atol=1e-5)
