"""seqjax.decoding.ensemble: a model with itself is the model; two models are the
hand-written average; the params form compiles once for every tuple of weights."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import JIT, model_and_params, model_inputs
from toy_models import RNN_STATIC, amateur_step, assert_same_result, rnn_step

from seqjax.decoding import STATIC_ARGNAMES, beam_search, greedy, jitted, sample
from seqjax.decoding.ensemble import ensemble


@pytest.mark.parametrize("mode", ["prob", "log_prob"])
def test_model_with_itself_equals_the_model(cache3, mode):
    pair = ensemble(rnn_step, rnn_step, mode=mode)
    two = (cache3, cache3)
    assert_same_result(
        jitted(greedy)(pair, two, **RNN_STATIC), jitted(greedy)(rnn_step, cache3, **RNN_STATIC)
    )
    beam = dict(beam_size=3, n_best=2, alpha=0.6, coverage=0.3, **RNN_STATIC)  # attention too
    assert_same_result(
        jitted(beam_search)(pair, two, **beam), jitted(beam_search)(rnn_step, cache3, **beam)
    )
    key = dict(key=jax.random.key(3), num_samples=2, **RNN_STATIC)
    assert_same_result(
        jitted(sample)(pair, two, **key), jitted(sample)(rnn_step, cache3, **key), atol=1e-4
    )


def _by_hand(mode):
    """The averaging step written out, over the cache pair (expert, amateur)."""

    def step(tokens_B, position, cache):
        la, ca, aa = rnn_step(tokens_B, position, cache[0])
        lb, cb, ab = amateur_step(tokens_B, position, cache[1])
        pa, pb = jax.nn.log_softmax(la), jax.nn.log_softmax(lb)
        if mode == "prob":
            logits = jnp.log((jnp.exp(pa) + jnp.exp(pb)) / 2)
        else:
            logits = (pa + pb) / 2
        return logits, (ca, cb), (aa + ab) / 2

    return step


@pytest.mark.parametrize("mode", ["prob", "log_prob"])
def test_two_models_equal_a_hand_written_average(cache3, mode):
    pair = ensemble(rnn_step, amateur_step, mode=mode)
    two = (cache3, cache3)
    beam = dict(beam_size=3, n_best=3, alpha=0.6, coverage=0.3, **RNN_STATIC)
    ours = beam_search(pair, two, **beam)
    assert_same_result(ours, beam_search(_by_hand(mode), two, **beam))
    # the ensemble is neither member: the comparison is not of a degenerate case
    for member in (rnn_step, amateur_step):
        alone = beam_search(member, cache3, **beam)
        assert not np.allclose(alone.scores, ours.scores, atol=1e-3)


def test_modes_differ_and_an_ensemble_is_hashable():
    a, b = ensemble(rnn_step, amateur_step), ensemble(rnn_step, amateur_step)
    assert a == b and hash(a) == hash(b)
    assert ensemble(rnn_step, amateur_step, mode="log_prob") != a
    tokens = jnp.array([1, 3, 4])
    cache = {
        "h": jnp.ones((3, 8)),
        "keys": jnp.ones((3, 3, 8)),
        "src_mask": jnp.ones((3, 3), bool),
    }
    lp = [
        ensemble(rnn_step, amateur_step, mode=m)(tokens, 0, (cache, cache))[0]
        for m in ("prob", "log_prob")
    ]
    assert not np.allclose(lp[0], lp[1], atol=1e-3)
    np.testing.assert_allclose(jnp.sum(jnp.exp(lp[0]), -1), 1.0, rtol=1e-5)


def test_bad_arguments_are_one_line_errors(cache3):
    with pytest.raises(ValueError, match="mode must be one of"):
        ensemble(rnn_step, mode="max")
    with pytest.raises(ValueError, match="at least one"):
        ensemble()
    with pytest.raises(ValueError, match="cache of an ensemble of 2 must be a tuple"):
        greedy(ensemble(rnn_step, rnn_step), cache3, **RNN_STATIC)


def test_params_form_compiles_once_and_equals_closed_form():
    model, _ = model_and_params("transformer")
    params = [JIT["init"](model, jax.random.key(s)) for s in (1, 2, 3)]
    src, mask, _ = model_inputs(model.config.vocab_size, pad_rows=True)
    caches = [
        JIT["init_cache"](model, p, JIT["encode"](model, p, src, mask), mask, 6) for p in params
    ]
    ids = dict(bos_id=model.config.bos_id, eos_id=model.config.eos_id, pad_id=0)
    static = dict(beam_size=2, n_best=2, max_len=6, **ids)
    run = jax.jit(beam_search, static_argnames=STATIC_ARGNAMES[beam_search])
    before = run._cache_size()
    pairs = [(0, 1), (1, 2), (2, 0)]
    for i, j in pairs:
        out = run(
            ensemble(model.step, model.step), (caches[i], caches[j]), params=(params[i], params[j]),
            **static,
        )  # fmt: skip
        closed = ensemble(model.step_fn(params[i]), model.step_fn(params[j]))
        ref = beam_search(closed, (caches[i], caches[j]), **static)
        np.testing.assert_array_equal(out.tokens, ref.tokens)
        np.testing.assert_allclose(out.scores, ref.scores, rtol=1e-5, atol=1e-5)
    assert run._cache_size() - before == 1
    # the cache-capacity check sees through the ensemble
    with pytest.raises(ValueError, match="cache's capacity"):
        beam_search(
            ensemble(model.step, model.step), (caches[0], caches[1]), params=(params[0], params[1]),
            **{**static, "max_len": 7},
        )  # fmt: skip
