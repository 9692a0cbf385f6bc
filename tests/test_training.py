"""Losses, schedules and the jitted train step."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from seqjax.config import TrainConfig, model_preset
from seqjax.models import build_model
from seqjax.training.losses import smoothed_cross_entropy
from seqjax.training.optimizer import learning_rate_schedule, make_optimizer
from seqjax.training.steps import init_train_state, make_eval_step, make_train_step


def test_smoothed_cross_entropy_matches_optax():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(2, 5, 7)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 7, (2, 5)), jnp.int32)
    mask = jnp.asarray([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    ls = 0.1
    labels = optax.smooth_labels(jax.nn.one_hot(targets, 7), ls)
    want = jnp.sum(optax.softmax_cross_entropy(logits, labels) * mask)
    want_nll = jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, targets) * mask)
    loss, nll, n = smoothed_cross_entropy(logits, targets, mask, ls)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_allclose(nll, want_nll, rtol=1e-5)
    assert float(n) == 8


@pytest.mark.parametrize("schedule", ["inverse_sqrt", "cosine"])
def test_schedule_warms_up_then_decays(schedule):
    cfg = TrainConfig(learning_rate=1e-3, warmup_steps=100, schedule=schedule, total_steps=1000)
    lr = learning_rate_schedule(cfg)
    assert float(lr(10)) < float(lr(50)) < float(lr(100))
    np.testing.assert_allclose(float(lr(100)), 1e-3, rtol=1e-5)
    assert float(lr(900)) < float(lr(400)) < float(lr(100))


def _batch(vocab, rows=8, length=8, seed=0):
    rng = np.random.default_rng(seed)
    src = rng.integers(4, vocab, (rows, length)).astype(np.int32)
    tgt = src[:, ::-1].copy()  # learnable: reverse the source
    tgt_in = np.concatenate([np.full((rows, 1), 2), tgt[:, :-1]], 1).astype(np.int32)
    return {"src": jnp.asarray(src), "tgt_in": jnp.asarray(tgt_in), "tgt_out": jnp.asarray(tgt)}


@pytest.fixture(scope="module")
def tiny_step():
    cfg = model_preset("tiny", dropout=0.1)
    model = build_model(cfg)
    tc = TrainConfig(learning_rate=3e-3, warmup_steps=10)
    opt = make_optimizer(tc)
    step = make_train_step(model, opt, label_smoothing=0.1, pad_id=0)
    return cfg, model, opt, step


def test_train_step_learns_and_is_deterministic(tiny_step):
    cfg, model, opt, step = tiny_step
    batch = _batch(cfg.vocab_size)
    key = jax.random.key(0)

    def run(n):
        state = init_train_state(model.init(jax.random.key(1)), opt)
        losses = []
        for _ in range(n):
            state, m = step(state, batch, key)
            losses.append(float(m["loss"]))
        return state, losses

    state_a, losses = run(30)
    assert losses[-1] < 0.7 * losses[0]
    state_b, losses_b = run(30)
    assert losses == losses_b  # same seed, same data: bit-identical run
    jax.tree.map(np.testing.assert_array_equal, state_a.params, state_b.params)
    assert int(state_a.step) == 30


def test_non_finite_step_is_skipped(tiny_step):
    cfg, model, opt, step = tiny_step
    params = model.init(jax.random.key(1))
    state = init_train_state(params, opt)
    # Poison one weight: the loss becomes NaN, so the update must be skipped. On copies:
    # the step donates ``bad``, which would consume the leaves it shared with ``state``.
    leaves, tree = jax.tree.flatten(jax.tree.map(jnp.copy, params))
    leaves[0] = leaves[0].at[(0,) * leaves[0].ndim].set(jnp.nan)
    bad = init_train_state(jax.tree.unflatten(tree, leaves), opt)
    before = jax.tree.map(np.asarray, bad)
    after, m = step(bad, _batch(cfg.vocab_size), jax.random.key(0))
    assert int(m["skipped"]) == 1
    jax.tree.map(np.testing.assert_array_equal, before.params, after.params)
    _, m_ok = step(state, _batch(cfg.vocab_size), jax.random.key(0))
    assert int(m_ok["skipped"]) == 0


def test_padding_rows_do_not_change_the_loss(tiny_step):
    cfg, model, _, _ = tiny_step
    params = model.init(jax.random.key(1))
    ev = make_eval_step(dataclasses.replace(model), pad_id=0)
    b = _batch(cfg.vocab_size, rows=4)
    padded = {k: jnp.concatenate([v, jnp.zeros_like(v)], 0) for k, v in b.items()}
    a, p = ev(params, b), ev(params, padded)
    np.testing.assert_allclose(a["nll_sum"], p["nll_sum"], rtol=1e-5)
    assert float(a["tokens"]) == float(p["tokens"]) == 32
