"""Scheduled sampling, MRT and self-distillation steps on the tiny preset.

Compilation dominates, so every jitted function is built once per module.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from seqjax.config import TrainConfig, model_preset
from seqjax.models import build_model
from seqjax.training.losses import smoothed_cross_entropy
from seqjax.training.objectives import (
    duplicate_mask,
    make_distill_step,
    make_mrt_step,
    make_scheduled_sampling_loss,
    make_scheduled_sampling_step,
    parallel_scheduled_sampling_inputs,
    sequential_scheduled_sampling,
)
from seqjax.training.optimizer import make_optimizer, params_ema, track_params_ema
from seqjax.training.schedules import make_teacher_forcing_schedule, teacher_forcing_prob
from seqjax.training.steps import init_train_state, make_train_step

PAD, BOS, EOS = 0, 2, 3
IDS = dict(pad_id=PAD, bos_id=BOS, eos_id=EOS)


# -- schedules ---------------------------------------------------------------------------


def test_schedule_values():
    lin = functools.partial(teacher_forcing_prob, kind="linear", k=1.0, c=0.1, warmup=10)
    assert [round(float(lin(s)), 4) for s in (0, 9, 10, 12, 100)] == [1.0, 1.0, 1.0, 0.8, 0.0]
    floored = teacher_forcing_prob(100, "linear", k=1.0, c=0.1, eps_min=0.25, warmup=10)
    assert float(floored) == 0.25
    np.testing.assert_allclose(teacher_forcing_prob(13, "exponential", k=0.5, warmup=10), 0.125)
    np.testing.assert_allclose(
        teacher_forcing_prob(20, "inverse-sigmoid", k=5.0, warmup=10), 5 / (5 + np.exp(2.0))
    )
    assert float(teacher_forcing_prob(5, "inverse_sigmoid", k=5.0, warmup=10)) == 1.0
    with pytest.raises(ValueError, match="unknown"):
        teacher_forcing_prob(0, "cosine")


@pytest.mark.parametrize("kind", ["linear", "exponential", "inverse_sigmoid"])
def test_schedules_decay_monotonically_under_jit(kind):
    sched = make_teacher_forcing_schedule(kind, warmup=100)
    steps = jnp.arange(0, 20_000, 50)
    eps = np.asarray(jax.jit(jax.vmap(sched))(steps))
    assert np.all(eps[steps < 100] == 1.0)
    assert np.all(np.diff(eps) <= 1e-7) and np.all((0 <= eps) & (eps <= 1))
    assert eps[-1] < 0.05
    np.testing.assert_allclose(eps[7], float(sched(350)), rtol=1e-6)  # jit == eager


# -- fixtures ------------------------------------------------------------------------------


def _batch(vocab: int, rows: int = 8, width: int = 8, seed: int = 0) -> dict:
    """Reverse-the-source task with ragged lengths, EOS, padding and one filler row."""
    rng = np.random.default_rng(seed)
    src = np.zeros((rows, width), np.int32)
    tgt_in = np.zeros((rows, width), np.int32)
    tgt_out = np.zeros((rows, width), np.int32)
    for r in range(rows - 1):
        n = int(rng.integers(3, width))
        toks = rng.integers(4, vocab, n)
        src[r, :n] = toks
        tgt_in[r, : n + 1] = [BOS, *toks[::-1]]
        tgt_out[r, : n + 1] = [*toks[::-1], EOS]
    return {k: jnp.asarray(v) for k, v in dict(src=src, tgt_in=tgt_in, tgt_out=tgt_out).items()}


@pytest.fixture(scope="module")
def setup():
    cfg = model_preset("tiny", dropout=0.1)
    model = build_model(cfg)
    opt = make_optimizer(TrainConfig(learning_rate=3e-3, warmup_steps=10))
    params = model.init(jax.random.key(1))
    return model, opt, params, _batch(cfg.vocab_size)


def _state(params, opt):
    return init_train_state(jax.tree.map(jnp.copy, params), opt)


def _poisoned(params, opt):
    # copies: the steps donate their state, which would consume the module fixture's
    # params (jax 0.12.1 then refuses them in the next test: "Array has been deleted")
    leaves, tree = jax.tree.flatten(jax.tree.map(jnp.copy, params))
    leaves[0] = leaves[0].at[(0,) * leaves[0].ndim].set(jnp.nan)
    return init_train_state(jax.tree.unflatten(tree, leaves), opt)


def _assert_skips(step, params, opt, batch, *extra):
    bad = _poisoned(params, opt)
    before = jax.tree.map(np.asarray, bad.params)
    out = step(bad, batch, jax.random.key(0), *extra)
    assert int(out[1]["skipped"]) == 1
    jax.tree.map(np.testing.assert_array_equal, before, out[0].params)


# -- scheduled sampling -------------------------------------------------------------------


def test_sequential_eps1_equals_teacher_forcing(setup):
    model, _, params, batch = setup

    def plain(p):  # make_train_step's loss without dropout (decode_step has none)
        logits = model.forward(p, batch["src"], batch["src"] != PAD, batch["tgt_in"])
        loss, _, n = smoothed_cross_entropy(logits, batch["tgt_out"], batch["tgt_out"] != PAD, 0.1)
        return loss / n

    ss = make_scheduled_sampling_loss(
        model, schedule=1.0, mode="sequential", label_smoothing=0.1, pad_id=PAD
    )
    step0 = jnp.zeros((), jnp.int32)
    want, want_g = jax.jit(jax.value_and_grad(plain))(params)
    (got, m), got_g = jax.jit(jax.value_and_grad(ss, has_aux=True))(
        params, batch, jax.random.key(0), step0
    )
    np.testing.assert_allclose(got, want, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), got_g, want_g)
    assert float(m["gold_fraction"]) == 1.0


@pytest.fixture(scope="module")
def fed_eps0(setup):
    model, _, params, batch = setup
    seq = jax.jit(
        lambda p, b: sequential_scheduled_sampling(
            model, p, b["src"], b["tgt_in"], 0.0, jax.random.key(0), pad_id=PAD
        )
    )
    logits, fed = seq(params, batch)
    return np.asarray(logits), np.asarray(fed)


def test_sequential_eps0_feeds_own_argmax(setup, fed_eps0):
    _, _, _, batch = setup
    logits, fed = fed_eps0
    tgt_in = np.asarray(batch["tgt_in"])
    real = tgt_in != PAD
    assert np.all(fed[:, 0] == tgt_in[:, 0])
    own = np.argmax(logits[:, :-1], -1)
    np.testing.assert_array_equal(fed[:, 1:][real[:, 1:]], own[real[:, 1:]])
    assert np.all(fed[~real] == PAD)


def test_parallel_inputs(setup, fed_eps0):
    model, _, params, batch = setup
    T = batch["tgt_in"].shape[1]

    @functools.partial(jax.jit, static_argnums=(2,))
    def mixed(p, eps, passes):
        return parallel_scheduled_sampling_inputs(
            model, p, batch["src"], batch["tgt_in"], eps, jax.random.key(0), pad_id=PAD,
            passes=passes,
        )  # fmt: skip

    tgt_in, real = np.asarray(batch["tgt_in"]), np.asarray(batch["tgt_in"]) != PAD
    np.testing.assert_array_equal(mixed(params, 1.0, 1), tgt_in)
    # eps = 0, one pass: every real input after BOS is the teacher-forced argmax at t - 1
    logits = model.forward(params, batch["src"], batch["src"] != PAD, batch["tgt_in"])
    own = np.argmax(np.asarray(logits)[:, :-1], -1)
    fed = np.asarray(mixed(params, 0.0, 1))
    np.testing.assert_array_equal(fed[:, 1:][real[:, 1:]], own[real[:, 1:]])
    assert np.all(fed[:, 0] == tgt_in[:, 0]) and np.all(fed[~real] == PAD)
    # T passes with fixed coins and argmax reproduce sequential scheduled sampling
    np.testing.assert_array_equal(np.asarray(mixed(params, 0.0, T)), fed_eps0[1])


@pytest.fixture(scope="module")
def train_step(setup):
    model, opt, _, _ = setup
    return make_train_step(model, opt, label_smoothing=0.1, pad_id=PAD)


@pytest.mark.parametrize("mode,loss_pass", [("parallel", "scan"), ("sequential", "forward")])
def test_eps1_with_dropout_equals_train_step(setup, train_step, mode, loss_pass):
    model, opt, params, batch = setup
    step = make_scheduled_sampling_step(
        model, opt, schedule=1.0, mode=mode, loss_pass=loss_pass, label_smoothing=0.1,
        pad_id=PAD,
    )  # fmt: skip
    key = jax.random.key(3)
    want, m_want = train_step(_state(params, opt), batch, key)
    got, m_got = step(_state(params, opt), batch, key)  # dropout on: same masks
    np.testing.assert_allclose(m_got["loss"], m_want["loss"], rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), got.params, want.params)
    _assert_skips(step, params, opt, batch)


def test_sequential_step_schedules_and_skips(setup):
    model, opt, params, batch = setup
    sched = make_teacher_forcing_schedule("linear", k=1.0, c=0.5, warmup=1)
    step = make_scheduled_sampling_step(
        model, opt, schedule=sched, mode="sequential", label_smoothing=0.1, pad_id=PAD,
        sample_tokens=True,
    )  # fmt: skip
    state = _state(params, opt)
    eps = []
    for _ in range(4):
        state, m = step(state, batch, jax.random.key(0))
        eps.append(float(m["tf_prob"]))
        assert np.isfinite(float(m["loss"])) and int(m["skipped"]) == 0
    assert eps == [1.0, 1.0, 0.5, 0.0]
    assert float(m["gold_fraction"]) < 0.5  # eps = 0: own samples (some happen to be gold)
    _assert_skips(step, params, opt, batch)


# -- minimum risk training ----------------------------------------------------------------

MRT = dict(num_samples=4, alpha=0.05, mle_weight=0.0, include_reference=True)


def _check_candidates(m: dict) -> None:
    """Q sums to 1 over exactly the first occurrence of each distinct candidate."""
    q, valid = np.asarray(m["q"]), np.asarray(m["valid"])
    cands, bleu = np.asarray(m["candidate_tokens"]), np.asarray(m["bleu"])
    assert q.shape == valid.shape == (8, 5)
    np.testing.assert_allclose(q.sum(1), 1.0, rtol=1e-5)
    assert np.all(q[~valid] == 0) and np.all(valid[:, 0])  # the reference is candidate 0
    np.testing.assert_allclose(bleu[:7, 0], 1.0)
    for b in range(8):
        rows = [tuple(r) for r in cands[b]]
        assert valid[b].tolist() == [rows.index(r) == c for c, r in enumerate(rows)]


def test_duplicate_mask():
    cands = jnp.asarray([[[5, 3, 0], [6, 3, 0], [5, 3, 0], [6, 3, 0], [5, 3, 0]]])
    everyone = jnp.ones((1, 5), bool)
    assert duplicate_mask(cands, everyone).tolist() == [[False, False, True, True, True]]
    # an ineligible candidate (reference left out, empty beam slot) masks nothing
    no_ref = everyone.at[0, 0].set(False)
    assert duplicate_mask(cands, no_ref).tolist() == [[False, False, False, True, True]]


def test_mrt_step(setup, train_step):
    model, opt, params, batch = setup
    state = _state(params, opt)
    for _ in range(25):  # a little MLE first: samples then overlap the references
        state, _ = train_step(state, batch, jax.random.key(0))
    step = make_mrt_step(model, opt, **MRT, **IDS)
    risks, sample_bleus = [], []
    for i in range(12):
        state, m = step(state, batch, jax.random.key(i))
        assert int(m["skipped"]) == 0 and np.isfinite(float(m["loss"]))
        _check_candidates(m)
        risks.append(float(m["risk"]))
        sample_bleus.append(float(m["sample_bleu"]))  # the samples themselves improve
    assert np.mean(risks[-3:]) < np.mean(risks[:3])
    assert np.mean(sample_bleus[-3:]) > np.mean(sample_bleus[:3])
    _assert_skips(step, params, opt, batch)


# -- self-distillation --------------------------------------------------------------------


def test_distill_self_teacher_gives_zero_kl(setup):
    model, opt, params, batch = setup
    step = make_distill_step(
        model, opt, temperature=2.0, top_p=0.9, ema_decay=0.5, student_dropout=False, **IDS
    )
    teacher = jax.tree.map(jnp.copy, params)
    state, m, teacher = step(_state(params, opt), batch, jax.random.key(0), teacher)
    assert abs(float(m["kl"])) < 1e-6 and float(m["tokens"]) > 0 and int(m["skipped"]) == 0
    # EMA teacher: halfway between the old teacher (= params) and the updated student
    mid = jax.tree.map(lambda a, b: 0.5 * a + 0.5 * b, params, state.params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), teacher, mid)
    # a different teacher gives a positive KL and a gradient
    other = model.init(jax.random.key(7))
    _, m2, _ = step(_state(params, opt), batch, jax.random.key(0), other)
    assert float(m2["kl"]) > 1e-3 and float(m2["grad_norm"]) > 0
    _assert_skips(step, params, opt, batch, jax.tree.map(jnp.copy, params))


def test_distill_ema_teacher_lives_in_the_optimizer_state(setup):
    model, opt, params, batch = setup
    opt = optax.chain(opt, track_params_ema(0.5))
    step = make_distill_step(
        model, opt, temperature=2.0, top_p=0.9, teacher_from_opt_state=True,
        student_dropout=False, **IDS,
    )  # fmt: skip
    state = _state(params, opt)
    before = jax.tree.map(np.asarray, state.params)
    state, m, returned = step(state, batch, jax.random.key(0), None)
    # The EMA starts at the student, so the first step's KL is 0.
    assert returned is None and abs(float(m["kl"])) < 1e-6 and float(m["tokens"]) > 0
    mid = jax.tree.map(lambda a, b: 0.5 * a + 0.5 * b, before, state.params)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), params_ema(state.opt_state), mid
    )
