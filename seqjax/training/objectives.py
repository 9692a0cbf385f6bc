"""Sequence-level training objectives against exposure bias, each one jitted step.

- **Scheduled sampling** (Bengio et al. 2015), *sequential*: a ``lax.scan`` over
  target positions through ``model.decode_step`` (any model family) feeds, per token,
  the gold previous token with probability ``eps`` or the model's own prediction.
- **Scheduled sampling**, *parallel two-pass* (Transformer): a teacher-forced pass
  without gradient predicts every position at once, gold and predicted tokens are
  mixed per position, and a second pass (with dropout) trains on the mix.
- **Minimum risk training** (Shen et al. 2016): sample ``S`` candidates per source
  with the compiled sampler, score them with ``forward``, renormalise over the
  candidate set with sharpness ``alpha`` and minimise the expected ``1 - BLEU``.
- **Self-distillation**: a teacher samples (top-p), the student matches the teacher's
  temperature-``T`` distribution on those sequences.

Conventions are those of ``seqjax.training.steps``: batches are dicts of int32
``src [B, S]``, ``tgt_in [B, T]`` (BOS + target), ``tgt_out [B, T]`` (target + EOS),
PAD-padded, all-PAD filler rows allowed; steps are jitted, donate the state, derive
this update's key as ``fold_in(key, state.step)`` and skip (``skipped = 1``) an update
whose loss or gradient norm is not finite. Every step reports ``loss``, ``nll_sum``,
``tokens``, ``grad_norm`` and ``skipped`` (what ``seqjax.app.train`` logs) plus
its own metrics.

Example::

    model = build_model(model_preset("tiny"))
    opt = make_optimizer(TrainConfig())
    state = init_train_state(model.init(jax.random.key(0)), opt)
    step = make_scheduled_sampling_step(
        model, opt, schedule=make_teacher_forcing_schedule("inverse_sigmoid", k=200),
        mode="parallel", label_smoothing=0.1, pad_id=0)
    state, metrics = step(state, batch, jax.random.key(1))  # metrics["tf_prob"]: eps
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax import lax

from seqjax.decoding import beam_search, sample
from seqjax.decoding.scoring import target_mask
from seqjax.metrics.bleu import sentence_bleu
from seqjax.training.losses import smoothed_cross_entropy
from seqjax.training.optimizer import params_ema
from seqjax.training.schedules import constant_schedule
from seqjax.training.steps import (
    Batch,
    LossFn,
    Metrics,
    Step,
    TrainState,
    apply_if_finite,
    build_step,
    token_loss,
)

Schedule = Callable[[jax.Array], jax.Array]


# -- shared step machinery ---------------------------------------------------------------


def _as_schedule(schedule: Schedule | float) -> Schedule:
    return constant_schedule(float(schedule)) if isinstance(schedule, int | float) else schedule


def _predict(logits_NxV: jax.Array, key: jax.Array, sample_tokens: bool, temperature: float):
    """The model's own token: argmax, or a draw from ``softmax(logits / temperature)``."""
    logits_NxV = lax.stop_gradient(logits_NxV)
    if sample_tokens:
        return jax.random.categorical(key, logits_NxV / temperature, axis=-1).astype(jnp.int32)
    return jnp.argmax(logits_NxV, axis=-1).astype(jnp.int32)


def _mix(gold_BxT, predicted_BxT, use_gold_BxT, pad_id):
    """Gold where the coin says so; position 0 (BOS) and PAD inputs always stay gold."""
    keep = use_gold_BxT | (gold_BxT == pad_id) | (jnp.arange(gold_BxT.shape[1]) == 0)[None]
    return jnp.where(keep, gold_BxT, predicted_BxT)


# -- scheduled sampling ------------------------------------------------------------------


def sequential_scheduled_sampling(
    model: Any,
    params: Any,
    src_BxS: jax.Array,
    tgt_in_BxT: jax.Array,
    eps: float | jax.Array,
    key: jax.Array,
    *,
    pad_id: int,
    sample_tokens: bool = False,
    temperature: float = 1.0,
) -> tuple[jax.Array, jax.Array]:
    """Decode ``T`` positions token by token, feeding gold or own predictions.

    Position ``t > 0`` consumes, per row, ``tgt_in[:, t]`` with probability ``eps`` or
    else the model's prediction at ``t - 1`` (argmax, or a sample at ``temperature``);
    position 0 always consumes BOS and PAD inputs stay PAD. The choice carries no
    gradient (tokens are integers); gradients flow through every ``decode_step``.
    ``decode_step`` runs without dropout, so this objective trains dropout-free.

    Returns ``(logits float32[B, T, V], fed_tokens int32[B, T])``. With ``eps = 1``
    the logits are the teacher-forced ``forward`` logits (up to float rounding).
    """
    T = tgt_in_BxT.shape[1]
    src_mask = src_BxS != pad_id
    memory = model.encode(params, src_BxS, src_mask)
    cache = model.init_cache(params, memory, src_mask, T)
    keys = jax.random.split(key, T)

    def body(carry, xs):
        cache, predicted_B = carry
        t, gold_B, key_t = xs
        coin_key, sample_key = jax.random.split(key_t)
        use_gold_B = (jax.random.uniform(coin_key, gold_B.shape) < eps) | (t == 0)
        fed_B = jnp.where(use_gold_B | (gold_B == pad_id), gold_B, predicted_B)
        logits_BxV, cache, _ = model.decode_step(params, cache, fed_B, t)
        return (cache, _predict(logits_BxV, sample_key, sample_tokens, temperature)), (
            logits_BxV,
            fed_B,
        )

    xs = (jnp.arange(T, dtype=jnp.int32), tgt_in_BxT.T, keys)
    _, (logits_TxBxV, fed_TxB) = lax.scan(body, (cache, tgt_in_BxT[:, 0]), xs)
    return jnp.swapaxes(logits_TxBxV, 0, 1), fed_TxB.T


def parallel_scheduled_sampling_inputs(
    model: Any,
    params: Any,
    src_BxS: jax.Array,
    tgt_in_BxT: jax.Array,
    eps: float | jax.Array,
    key: jax.Array,
    *,
    pad_id: int,
    passes: int = 1,
    sample_tokens: bool = False,
    temperature: float = 1.0,
) -> jax.Array:
    """Decoder inputs ``int32[B, T]`` mixing gold tokens and the model's predictions.

    Each of ``passes`` teacher-forced passes (no dropout, no gradient) predicts every
    position from the previous pass's inputs (the gold ``tgt_in`` for the first); the
    input at ``t`` then becomes the prediction for ``t`` made at ``t - 1`` wherever a
    per-token coin (drawn once, gold with probability ``eps``) says so. Keeping the
    coins fixed across passes means ``passes = T`` with argmax reproduces sequential
    scheduled sampling exactly; 1 pass (Duckworth et al. 2019's usual choice)
    conditions predictions on the gold prefix.
    """
    params = lax.stop_gradient(params)
    src_mask = src_BxS != pad_id
    coin_key, *sample_keys = jax.random.split(key, passes + 1)
    use_gold = jax.random.uniform(coin_key, tgt_in_BxT.shape) < eps
    inputs = tgt_in_BxT
    for sample_key in sample_keys:
        logits = model.forward(params, src_BxS, src_mask, inputs)
        predicted = _predict(logits, sample_key, sample_tokens, temperature)
        shifted = jnp.concatenate([tgt_in_BxT[:, :1], predicted[:, :-1]], axis=1)
        inputs = _mix(tgt_in_BxT, shifted, use_gold, pad_id)
    return lax.stop_gradient(inputs)


def make_scheduled_sampling_loss(
    model: Any,
    *,
    schedule: Schedule | float,
    mode: str = "sequential",
    label_smoothing: float,
    pad_id: int,
    passes: int = 1,
    sample_tokens: bool = False,
    temperature: float = 1.0,
    loss_pass: str = "scan",
) -> LossFn:
    """``loss_fn(params, batch, key, step) -> (loss, metrics)`` for either flavour.

    ``schedule(step) -> eps`` (or a constant float) gives the teacher-forcing
    probability; metrics add ``tf_prob`` (eps) and ``gold_fraction`` (share of real
    input tokens after BOS that were gold).

    ``loss_pass`` (sequential mode): ``"scan"`` takes the loss from the scan's own
    logits (the brief algorithm, dropout-free); ``"forward"`` runs the scan without
    gradient only to choose the fed tokens and takes the loss from one teacher-forced
    ``forward`` over them, with dropout. Both give the same gradient when dropout is
    off (a decoder's ``forward`` equals its step-by-step decoding); ``"forward"``
    needs O(T) rather than O(T^2) activation memory for a Transformer.
    """
    if mode not in ("sequential", "parallel"):
        raise ValueError(f"mode: unknown {mode!r}; use sequential or parallel")
    if loss_pass not in ("scan", "forward"):
        raise ValueError(f"loss_pass: unknown {loss_pass!r}; use scan or forward")
    schedule = _as_schedule(schedule)

    def loss_fn(params: Any, batch: Batch, key: jax.Array, step: jax.Array):
        eps = schedule(step)
        mix_key, dropout_key = jax.random.fold_in(key, 1), key
        src, tgt_in = batch["src"], batch["tgt_in"]
        if mode == "sequential":
            frozen = lax.stop_gradient(params) if loss_pass == "forward" else params
            logits, fed = sequential_scheduled_sampling(
                model,
                frozen,
                src,
                tgt_in,
                eps,
                mix_key,
                pad_id=pad_id,
                sample_tokens=sample_tokens,
                temperature=temperature,
            )
        if mode == "parallel":
            fed = parallel_scheduled_sampling_inputs(
                model,
                params,
                src,
                tgt_in,
                eps,
                mix_key,
                pad_id=pad_id,
                passes=passes,
                sample_tokens=sample_tokens,
                temperature=temperature,
            )
        if mode == "parallel" or loss_pass == "forward":
            # the same dropout key as make_train_step: eps = 1 reproduces it exactly
            logits = model.forward(params, src, src != pad_id, fed, dropout_rng=dropout_key)
        loss, metrics = token_loss(logits, batch, label_smoothing, pad_id)
        real = (tgt_in != pad_id).at[:, 0].set(False)
        gold = jnp.sum((fed == tgt_in) & real) / jnp.maximum(jnp.sum(real), 1)
        return loss, {**metrics, "tf_prob": eps, "gold_fraction": gold}

    return loss_fn


def make_scheduled_sampling_step(
    model: Any,
    optimizer: optax.GradientTransformation,
    *,
    schedule: Schedule | float,
    mode: str = "sequential",
    label_smoothing: float,
    pad_id: int,
    passes: int = 1,
    sample_tokens: bool = False,
    temperature: float = 1.0,
    loss_pass: str = "scan",
) -> Step:
    """Jitted scheduled-sampling ``step(state, batch, key) -> (state, metrics)``.

    ``mode="sequential"``: exact algorithm through ``decode_step`` (both families; no
    dropout; backprop through a scan that carries the KV cache costs memory
    ``O(T^2)`` per row for a Transformer). ``mode="parallel"``: the two-pass
    approximation for models whose ``forward`` is parallel over positions
    (Transformer), with dropout in the training pass. ``eps`` comes from
    ``schedule(state.step)``; ``sample_tokens`` feeds samples instead of argmax;
    ``passes`` (parallel) and ``loss_pass`` (sequential) as in
    ``make_scheduled_sampling_loss``.
    """
    loss_fn = make_scheduled_sampling_loss(
        model,
        schedule=schedule,
        mode=mode,
        label_smoothing=label_smoothing,
        pad_id=pad_id,
        passes=passes,
        sample_tokens=sample_tokens,
        temperature=temperature,
        loss_pass=loss_pass,
    )
    return build_step(loss_fn, optimizer)


# -- minimum risk training -----------------------------------------------------------------


def _fit_length(tokens_BxT: jax.Array, length: int, pad_id: int) -> jax.Array:
    """Cut or PAD-extend rows to ``length`` columns."""
    t = tokens_BxT.shape[1]
    if t >= length:
        return tokens_BxT[:, :length]
    return jnp.pad(tokens_BxT, ((0, 0), (0, length - t)), constant_values=pad_id)


def _shift_right(tokens_NxL: jax.Array, bos_id: int) -> jax.Array:
    bos = jnp.full((tokens_NxL.shape[0], 1), bos_id, tokens_NxL.dtype)
    return jnp.concatenate([bos, tokens_NxL[:, :-1]], axis=1)


def duplicate_mask(candidates_BxCxL: jax.Array, eligible_BxC: jax.Array) -> jax.Array:
    """``bool[B, C]``: candidate equals an earlier eligible candidate of the same source.

    >>> c = jnp.array([[[5, 3], [6, 3], [5, 3]]])
    >>> duplicate_mask(c, jnp.array([[True, True, True]])).tolist()
    [[False, False, True]]
    """
    same_BxCxC = jnp.all(candidates_BxCxL[:, :, None] == candidates_BxCxL[:, None], axis=-1)
    C = candidates_BxCxL.shape[1]
    earlier_CxC = jnp.tril(jnp.ones((C, C), bool), k=-1)  # [c, c']: c' < c
    return jnp.any(same_BxCxC & earlier_CxC[None] & eligible_BxC[:, None, :], axis=-1)


def sequence_log_probs(
    model: Any,
    params: Any,
    src_NxS: jax.Array,
    targets_NxL: jax.Array,
    *,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    dropout_rng: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Teacher-forced ``(log_probs float32[N, L], logits float32[N, L, V])`` of targets.

    Targets are decoder output (no BOS; EOS then PAD); ``log_probs`` is 0 after EOS.
    """
    logits = model.forward(
        params,
        src_NxS,
        src_NxS != pad_id,
        _shift_right(targets_NxL, bos_id),
        dropout_rng=dropout_rng,
    )
    lp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    lp = jnp.take_along_axis(lp, targets_NxL[..., None], axis=-1)[..., 0]
    return jnp.where(target_mask(targets_NxL, eos_id, pad_id), lp, 0.0), logits


def make_mrt_loss(
    model: Any,
    *,
    num_samples: int = 8,
    alpha: float = 0.005,
    mle_weight: float = 0.0,
    include_reference: bool = True,
    candidates: str = "sample",
    max_len: int | None = None,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    label_smoothing: float = 0.0,
    bleu_smoothing: str = "exp",
    pad_id: int,
    bos_id: int,
    eos_id: int,
) -> Callable[[Any, Batch, jax.Array, jax.Array], tuple[jax.Array, Metrics]]:
    """MRT ``loss_fn(params, batch, key, step) -> (loss, metrics)``.

    Per source ``b``: ``S = num_samples`` candidates from ``seqjax.decoding.sample``
    (or ``beam_search`` with ``n_best = S`` when ``candidates="beam"``) decoded from
    ``stop_gradient(params)`` to ``max_len`` tokens (default: the batch's target
    width); with ``include_reference`` the reference joins the set as candidate 0.
    Duplicates and empty beam slots are masked out (shapes stay ``C = S + 1``). Each
    candidate is scored by teacher-forced ``forward`` (dropout on), summed over its
    tokens, and::

        Q[b, c] = softmax_c(alpha * log p(y_c | x_b))     over unmasked candidates
        risk    = mean_b sum_c Q[b, c] * (1 - BLEU(y_c, y*_b))
        loss    = risk + mle_weight * token CE(y*_b)

    ``alpha = 0.005`` (Shen et al. 2016) because summed log-probs span tens to
    hundreds of nats: ``alpha = 1`` would put almost all of ``Q`` on the single most
    probable candidate, so the risk would barely depend on the others; a small alpha
    keeps ``Q`` spread and the gradient informative. BLEU is the jittable sentence
    BLEU (``bleu_smoothing``, sacrebleu rules) in ``[0, 1]``. Metrics: ``risk``,
    ``expected_bleu`` (under Q), ``sample_bleu`` (mean over distinct sampled
    candidates), ``candidates`` (distinct per source), ``nll_sum``/``tokens`` of the
    reference, and per candidate ``q [B, C]``, ``valid [B, C]``, ``bleu [B, C]`` and
    ``candidate_tokens [B, C, L]`` (candidate 0 is the reference, masked when not
    included).
    """
    if candidates not in ("sample", "beam"):
        raise ValueError(f"candidates: unknown {candidates!r}; use sample or beam")
    ids = dict(bos_id=bos_id, eos_id=eos_id, pad_id=pad_id)
    draw = functools.partial(
        mrt_candidates, model, num_samples=num_samples, candidates=candidates,
        temperature=temperature, top_k=top_k, top_p=top_p, **ids,
    )  # fmt: skip

    def loss_fn(params: Any, batch: Batch, key: jax.Array, step: jax.Array):
        del step
        src, ref = batch["src"], batch["tgt_out"]
        L = ref.shape[1] if max_len is None else max_len
        sample_key, dropout_key = jax.random.fold_in(key, 1), key
        hyps_BxSxL, found_BxS = draw(lax.stop_gradient(params), src, sample_key, L)
        ref_BxL = _fit_length(ref, L, pad_id)
        cands_BxCxL, valid_BxC = candidate_set(ref_BxL, hyps_BxSxL, found_BxS, include_reference)
        B, C = valid_BxC.shape

        flat = cands_BxCxL.reshape(B * C, L)
        lp_NxL, logits = sequence_log_probs(
            model, params, jnp.repeat(src, C, axis=0), flat, dropout_rng=dropout_key, **ids
        )
        logp_BxC = jnp.sum(lp_NxL, axis=1).reshape(B, C)
        bleu_BxC = sentence_bleu(
            flat, jnp.repeat(ref_BxL, C, axis=0), pad_id=pad_id, eos_id=eos_id,
            smoothing=bleu_smoothing,
        ).reshape(B, C)  # fmt: skip
        bleu_BxC = lax.stop_gradient(bleu_BxC)
        row_B = jnp.any(ref != pad_id, axis=1).astype(jnp.float32)  # filler rows: no loss
        risk, q_BxC = expected_risk(logp_BxC, bleu_BxC, valid_BxC, row_B, alpha)

        # reference NLL (logged; the MLE term) from the reference's own rows
        ref_logits = logits.reshape(B, C, L, -1)[:, 0]
        mle, ref_metrics = token_loss(ref_logits, {"tgt_out": ref_BxL}, label_smoothing, pad_id)
        loss = risk + mle_weight * mle if mle_weight else risk
        metrics = _mrt_metrics(risk, q_BxC, valid_BxC, bleu_BxC, row_B, cands_BxCxL)
        return loss, {**ref_metrics, **metrics}

    return loss_fn


def mrt_candidates(
    model: Any,
    frozen_params: Any,
    src_BxS: jax.Array,
    key: jax.Array,
    max_len: int,
    *,
    num_samples: int,
    candidates: str,
    temperature: float,
    top_k: int,
    top_p: float,
    bos_id: int,
    eos_id: int,
    pad_id: int,
) -> tuple[jax.Array, jax.Array]:
    """``(tokens [B, S, L], found [B, S])``: S sampled (or n-best beam) candidates per source.

    ``found`` is False for empty beam slots (score -inf); samples are always found.
    """
    src_mask = src_BxS != pad_id
    memory = model.encode(frozen_params, src_BxS, src_mask)
    cache = model.init_cache(frozen_params, memory, src_mask, max_len)
    step_fn = model.step_fn(frozen_params)
    kw = dict(max_len=max_len, bos_id=bos_id, eos_id=eos_id, pad_id=pad_id)
    if candidates == "sample":
        out = sample(
            step_fn, cache, key=key, num_samples=num_samples, temperature=temperature,
            top_k=top_k, top_p=top_p, **kw,
        )  # fmt: skip
    else:
        out = beam_search(step_fn, cache, beam_size=num_samples, n_best=num_samples, **kw)
    return lax.stop_gradient(out.tokens), jnp.isfinite(out.scores)


def candidate_set(
    ref_BxL: jax.Array, hyps_BxSxL: jax.Array, found_BxS: jax.Array, include_reference: bool
) -> tuple[jax.Array, jax.Array]:
    """``(candidates [B, C, L], valid [B, C])`` with ``C = S + 1``; candidate 0 is the reference.

    Invalid: the reference when not included, empty beam slots and repeats of an earlier
    candidate (shapes stay fixed, so masks rather than removal).
    """
    B = ref_BxL.shape[0]
    cands_BxCxL = jnp.concatenate([ref_BxL[:, None], hyps_BxSxL], axis=1)
    eligible_BxC = jnp.concatenate([jnp.full((B, 1), include_reference), found_BxS], axis=1)
    return cands_BxCxL, eligible_BxC & ~duplicate_mask(cands_BxCxL, eligible_BxC)


def expected_risk(
    logp_BxC: jax.Array,
    bleu_BxC: jax.Array,
    valid_BxC: jax.Array,
    row_B: jax.Array,
    alpha: float,
) -> tuple[jax.Array, jax.Array]:
    """``(risk, Q [B, C])``: mean over real rows of ``sum_c Q (1 - BLEU)``, Q over valid c."""
    q_BxC = jax.nn.softmax(jnp.where(valid_BxC, alpha * logp_BxC, -jnp.inf), axis=1)
    q_BxC = jnp.where(valid_BxC, q_BxC, 0.0)  # no NaN for rows without candidates
    rows = jnp.maximum(jnp.sum(row_B), 1.0)
    risk = jnp.sum(row_B * jnp.sum(q_BxC * (1.0 - bleu_BxC), axis=1)) / rows
    return risk, q_BxC


def _mrt_metrics(
    risk: jax.Array,
    q_BxC: jax.Array,
    valid_BxC: jax.Array,
    bleu_BxC: jax.Array,
    row_B: jax.Array,
    cands_BxCxL: jax.Array,
) -> Metrics:
    rows = jnp.maximum(jnp.sum(row_B), 1.0)
    sampled = valid_BxC & (row_B[:, None] > 0)
    sampled = sampled.at[:, 0].set(False)  # the reference is not a sample
    return {
        "risk": risk,
        "expected_bleu": jnp.sum(row_B * jnp.sum(q_BxC * bleu_BxC, axis=1)) / rows,
        "sample_bleu": jnp.sum(bleu_BxC * sampled) / jnp.maximum(jnp.sum(sampled), 1),
        "candidates": jnp.sum(valid_BxC * row_B[:, None]) / rows,
        "q": q_BxC,
        "valid": valid_BxC,
        "bleu": bleu_BxC,
        "candidate_tokens": cands_BxCxL,
    }


def make_mrt_step(
    model: Any,
    optimizer: optax.GradientTransformation,
    *,
    pad_id: int,
    bos_id: int,
    eos_id: int,
    **options: Any,
) -> Step:
    """Jitted MRT ``step(state, batch, key) -> (state, metrics)``; options as ``make_mrt_loss``.

    Sampling, scoring, BLEU and the update are one XLA program: no host round-trip.
    """
    loss_fn = make_mrt_loss(model, pad_id=pad_id, bos_id=bos_id, eos_id=eos_id, **options)
    return build_step(loss_fn, optimizer)


# -- self-distillation ---------------------------------------------------------------------


def distillation_kl(
    teacher_logits_NxTxV: jax.Array,
    student_logits_NxTxV: jax.Array,
    mask_NxT: jax.Array,
    temperature: float = 1.0,
) -> tuple[jax.Array, jax.Array]:
    """``(sum_t KL(p_T || q_T) * T**2, n_tokens)`` over masked positions.

    ``p_T``/``q_T`` are teacher/student softmaxes at temperature ``T``; the ``T**2``
    keeps gradient magnitudes comparable across temperatures (Hinton et al. 2015).

    >>> x = jnp.array([[[1.0, 2.0, 3.0]]])
    >>> float(distillation_kl(x, x, jnp.ones((1, 1), bool), 2.0)[0])
    0.0
    """
    t_lp = jax.nn.log_softmax(teacher_logits_NxTxV.astype(jnp.float32) / temperature, axis=-1)
    s_lp = jax.nn.log_softmax(student_logits_NxTxV.astype(jnp.float32) / temperature, axis=-1)
    kl_NxT = jnp.sum(jnp.exp(t_lp) * (t_lp - s_lp), axis=-1)
    m = mask_NxT.astype(jnp.float32)
    return jnp.sum(kl_NxT * m) * temperature**2, jnp.sum(m)


def make_distill_step(
    model: Any,
    optimizer: optax.GradientTransformation,
    *,
    teacher_model: Any | None = None,
    temperature: float = 2.0,
    top_p: float = 0.9,
    sample_temperature: float = 1.0,
    max_len: int | None = None,
    ema_decay: float | None = None,
    teacher_from_opt_state: bool = False,
    student_dropout: bool = True,
    pad_id: int,
    bos_id: int,
    eos_id: int,
) -> Callable[[TrainState, Batch, jax.Array, Any], tuple[TrainState, Metrics, Any]]:
    """Jitted ``step(state, batch, key, teacher_params) -> (state, metrics, teacher_params)``.

    The teacher (``teacher_model``, default the student's architecture) samples one
    target per source with nucleus ``top_p`` at ``sample_temperature`` up to
    ``max_len`` tokens (default the batch's target width); the student, with dropout,
    minimises ``T**2 * KL(teacher_T || student_T)`` per generated token (EOS
    included) at ``T = temperature`` (``student_dropout=False`` turns its dropout
    off: then a teacher equal to the student gives KL 0). Gold targets are not used (their PAD pattern
    only marks filler rows).

    With ``ema_decay = d`` the teacher is an EMA of the student: start from
    ``teacher_params = state.params`` (copy; the state is donated) and each kept
    update returns ``d * teacher + (1 - d) * student``. Without it the returned
    teacher params are the ones passed in (a fixed, separately trained teacher).
    With ``teacher_from_opt_state`` the teacher is the EMA kept in the optimizer
    state by ``optimizer.track_params_ema`` (pass ``teacher_params=None``): the form
    ``seqjax train --distill-ema`` uses, since it checkpoints and resumes exactly.
    Metrics: ``kl`` (per token, times T^2), ``nll_sum``/``tokens`` of the student on the
    teacher's sequences at temperature 1.
    """
    teacher = model if teacher_model is None else teacher_model

    def loss_fn(params: Any, batch: Batch, key: jax.Array, teacher_params: Any):
        src = batch["src"]
        L = batch["tgt_out"].shape[1] if max_len is None else max_len
        src_mask = src != pad_id
        tp = lax.stop_gradient(teacher_params)
        cache = teacher.init_cache(tp, teacher.encode(tp, src, src_mask), src_mask, L)
        out = sample(
            teacher.step_fn(tp),
            cache,
            key=jax.random.fold_in(key, 1),
            max_len=L,
            bos_id=bos_id,
            eos_id=eos_id,
            pad_id=pad_id,
            temperature=sample_temperature,
            top_p=top_p,
        )
        y = out.tokens[:, 0]
        y_in = _shift_right(y, bos_id)
        row = jnp.any(batch["tgt_out"] != pad_id, axis=1)
        mask = target_mask(y, eos_id, pad_id) & row[:, None]
        t_logits = lax.stop_gradient(teacher.forward(tp, src, src_mask, y_in))
        s_logits = model.forward(
            params, src, src_mask, y_in, dropout_rng=key if student_dropout else None
        )
        kl_sum, n = distillation_kl(t_logits, s_logits, mask, temperature)
        _, nll_sum, _ = smoothed_cross_entropy(s_logits, y, mask, 0.0)
        kl = kl_sum / jnp.maximum(n, 1.0)
        return kl, {"kl": kl, "nll_sum": nll_sum, "tokens": n}

    def step(state: TrainState, batch: Batch, key: jax.Array, teacher_params: Any):
        key = jax.random.fold_in(key, state.step)
        if teacher_from_opt_state:
            teacher_params = params_ema(state.opt_state)
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, batch, key, teacher_params
        )
        new_state, ok, grad_norm = apply_if_finite(optimizer, state, loss, grads)
        if teacher_from_opt_state:
            teacher_params = None
        if ema_decay is not None:
            ema = lambda t, s: jnp.where(ok, ema_decay * t + (1.0 - ema_decay) * s, t)  # noqa: E731
            teacher_params = jax.tree.map(ema, teacher_params, new_state.params)
        skipped = 1 - ok.astype(jnp.int32)
        metrics = {**metrics, "loss": loss, "grad_norm": grad_norm, "skipped": skipped}
        return new_state, metrics, teacher_params

    return jax.jit(step, donate_argnums=(0,))
