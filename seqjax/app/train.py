"""The train loop behind ``seqjax train``: files, tokenizers, metrics, progress.

One run = one directory (``seqjax.app.run_dir``). Rerunning with the same directory
resumes from the latest complete checkpoint: same data order (epoch, batch index), same
dropout keys (folded from the step), same optimizer state, so the loss curve continues
as if never interrupted.

``train`` reads top to bottom in phases: prepare the run (data, configs, tokenizers: raw
text is first prepared into shards, ``seqjax.app.train_data``), the initial state (fresh,
fine-tuned or restored), then the loop, which reads batches through Grain, whose log window
reduces the last few steps to one metrics record and whose divergence guard stops a run
that went non-finite; a closing validation and save end it. The batch iterator's state is
saved in every checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from seqjax import checkpoint, sharding
from seqjax.app import run_dir, train_data
from seqjax.app.errors import TrainingDiverged
from seqjax.app.progress import Progress
from seqjax.app.translate import Translator
from seqjax.config import DecodeConfig, ModelConfig, TrainConfig, to_dict
from seqjax.data import DataError, Tokenizer, load_tokenizers
from seqjax.metrics import corpus_scores
from seqjax.models import build_model
from seqjax.models.transformer import count_params
from seqjax.training import objectives
from seqjax.training.optimizer import make_optimizer
from seqjax.training.schedules import make_teacher_forcing_schedule
from seqjax.training.steps import (
    Step,
    TrainState,
    init_train_state,
    make_eval_step,
    make_train_step,
)

# Fields that may differ between the first run and a resume (they do not change what is
# being trained, only for how long and how often it reports).
RUNTIME_FIELDS = {
    "max_minutes",
    "total_steps",
    "eval_every",
    "save_every",
    "log_every",
    "valid_bleu_sentences",
    "keep_last",
    "max_bad_steps",
    "mesh",
    "data_workers",
}

Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclasses.dataclass
class TrainResult:
    run_dir: Path
    step: int
    valid: dict[str, float]
    minutes: float
    params: int


def _check_resume_data(saved: TrainConfig, given: TrainConfig, run: Path) -> None:
    """The user files of a resume must hold what the run was trained on.

    Compared by content (size + checksum of the ends) where the run recorded it, so the same
    file by another path resumes and another file by the same relative path does not; runs
    written before the record existed compare resolved paths.
    """
    record = run_dir.read_data_record(run)
    redo = "rerun with the original files to resume, or use a new --out directory"
    for k in run_dir.DATA_FILES:
        a, b = getattr(saved, k), getattr(given, k)
        if (a is None) != (b is None):
            raise checkpoint.CheckpointError(
                f"{run} was started with {k}={a!r} but this run asks for {b!r}; {redo}"
            )
        if a is None:
            continue
        if record is None or k not in record:
            if Path(a).resolve() != Path(b).resolve():
                raise checkpoint.CheckpointError(
                    f"{run} was started with {k}={a!r} but this run asks for {b!r}; {redo}"
                )
            continue
        was, now = record[k], run_dir.data_record(given)[k]
        if (was.get("size"), was.get("sha256_ends")) != (now["size"], now["sha256_ends"]):
            moved = "" if was.get("path") == now["path"] else f" (and its path: {was.get('path')})"
            raise checkpoint.CheckpointError(
                f"--{k.replace('_', '-')} {b} ({now['path']}) differs in content from the file "
                f"{run} was trained on{moved}: size {was.get('size')} -> {now['size']}, "
                f"checksum {str(was.get('sha256_ends'))[:12]} -> {now['sha256_ends'][:12]}; "
                f"{redo}"
            )


def _check_resume_config(saved: TrainConfig, given: TrainConfig, run: Path) -> TrainConfig:
    """A resume must train the same thing; runtime fields take the new values."""
    a, b = to_dict(saved), to_dict(given)
    for k in sorted(a):
        if k not in RUNTIME_FIELDS and k not in run_dir.DATA_FILES and a[k] != b[k]:
            raise checkpoint.CheckpointError(
                f"{run} was started with {k}={a[k]!r} but this run asks for {b[k]!r}; "
                "rerun with the original options to resume, or use a new --out directory"
            )
    _check_resume_data(saved, given, run)
    keep = {k: b[k] for k in (*RUNTIME_FIELDS, *run_dir.DATA_FILES)}
    return dataclasses.replace(saved, **keep)


def _to_device(
    batch: dict[str, np.ndarray], mesh: Mesh | None = None, pad_id: int = 0
) -> dict[str, jax.Array]:
    """A whole batch (the same on every process) on the device(s), rows split along ``data``.

    Rows are padded with ``pad_id`` up to a multiple of the data axis; the loss masks them.
    """
    if mesh is None:
        return {k: jnp.asarray(v) for k, v in batch.items()}
    rows = sharding.padded_rows(len(batch["src"]), mesh)
    return sharding.shard_rows(
        {k: sharding.pad_rows(v, rows, pad_id) for k, v in batch.items()}, mesh
    )


def evaluate_loss(
    eval_step: Callable,
    params: Any,
    batches: Iterable[dict[str, np.ndarray]],
    pad_id: int = 0,
    mesh: Mesh | None = None,
) -> dict[str, float]:
    """Token NLL, perplexity and teacher-forced accuracy over ``batches`` (whole batches)."""
    nll = tok = correct = 0.0
    for batch in batches:
        m = eval_step(params, _to_device(batch, mesh, pad_id))
        nll += float(m["nll_sum"])
        tok += float(m["tokens"])
        correct += float(m["correct"])
    tok = max(tok, 1.0)
    return {
        "valid_nll": nll / tok,
        "valid_ppl": math.exp(min(nll / tok, 50.0)),
        "valid_acc": correct / tok,
    }


def make_objective_step(
    cfg: TrainConfig, model: Any, optimizer: Any, mesh: Mesh | None = None
) -> Step:
    """The jitted ``step(state, batch, key) -> (state, metrics)`` for ``cfg.objective``.

    ``mesh``: where the distillation teacher's params are placed (replicated).
    """
    mc: ModelConfig = model.config
    ids = dict(pad_id=mc.pad_id, bos_id=mc.bos_id, eos_id=mc.eos_id)
    if cfg.objective == "scheduled-sampling":
        schedule = make_teacher_forcing_schedule(
            cfg.ss_schedule, k=cfg.ss_k, c=cfg.ss_c, eps_min=cfg.ss_eps_min, warmup=cfg.ss_warmup
        )
        return objectives.make_scheduled_sampling_step(
            model, optimizer, schedule=schedule, mode=cfg.ss_mode,
            label_smoothing=cfg.label_smoothing, pad_id=mc.pad_id, sample_tokens=cfg.ss_sample,
        )  # fmt: skip
    if cfg.objective == "mrt":
        return objectives.make_mrt_step(
            model, optimizer, num_samples=cfg.mrt_samples, alpha=cfg.mrt_alpha,
            mle_weight=cfg.mrt_mle_weight, include_reference=cfg.mrt_include_reference,
            candidates=cfg.mrt_candidates, label_smoothing=cfg.label_smoothing, **ids,
        )  # fmt: skip
    if cfg.objective == "distill" and cfg.distill_ema is not None:
        step = objectives.make_distill_step(
            model, optimizer, temperature=cfg.distill_temperature, top_p=cfg.distill_top_p,
            teacher_from_opt_state=True, **ids,
        )  # fmt: skip
        return lambda state, batch, key: step(state, batch, key, None)[:2]
    if cfg.objective == "distill":
        teacher, teacher_params = run_dir.load_model(cfg.teacher)
        if teacher.config.vocab_size != mc.vocab_size:
            raise DataError(
                f"teacher {cfg.teacher} has vocab {teacher.config.vocab_size}, student "
                f"{mc.vocab_size}; distill from a teacher trained with the same tokenizer "
                "(start the student with --init-from the teacher or its tokenizer)"
            )
        if mesh is not None:
            teacher_params = sharding.place_params(teacher_params, mesh)
        step = objectives.make_distill_step(
            model, optimizer, teacher_model=teacher, temperature=cfg.distill_temperature,
            top_p=cfg.distill_top_p, **ids,
        )  # fmt: skip
        return lambda state, batch, key: step(state, batch, key, teacher_params)[:2]
    return make_train_step(model, optimizer, label_smoothing=cfg.label_smoothing, pad_id=mc.pad_id)


# -- phase 1: prepare the run (data, configs, tokenizers) -----------------------------------


def _fine_tune_run_files(run: Path, cfg: TrainConfig, primary: bool) -> ModelConfig:
    """Fine-tuning keeps the starting model's architecture and tokenizer."""
    model_cfg, _ = run_dir.read_run_config(cfg.init_from)
    if primary:
        run.mkdir(parents=True, exist_ok=True)
        run_dir.write_run_files(
            run, model_cfg, cfg, run_dir.tokenizer_dir(cfg.init_from), run_dir.data_record(cfg)
        )
    sharding.sync("seqjax-run-files")
    return model_cfg


def _fresh_run_files(
    run: Path, model_cfg: ModelConfig, cfg: TrainConfig, data_dir: Path, primary: bool
) -> ModelConfig:
    """Write the run files with the prepared data's tokenizer (process 0; the others wait)."""
    tok_dir = train_data.tokenizer_dir(data_dir)
    if primary:
        model_cfg = dataclasses.replace(
            model_cfg, vocab_size=load_tokenizers(tok_dir)[1].vocab_size
        )
        run.mkdir(parents=True, exist_ok=True)
        run_dir.write_run_files(run, model_cfg, cfg, tok_dir, run_dir.data_record(cfg))
    sharding.sync("seqjax-run-files")
    return run_dir.read_run_config(run)[0]


def _resumable(run: Path, log: Log) -> bool:
    """Whether ``run`` is resumed: it has a config and a saved step.

    A config without any saved step is from a start that failed or stopped early: it is
    started again with the new options. Run files without a readable config are refused, so
    a fresh start never overwrites another run's tokenizer or checkpoints.
    """
    saved = run_dir.has_checkpoints(run)
    if not run_dir.exists(run):
        found = run_dir.holds_run_files(run)
        if found:
            raise checkpoint.CheckpointError(
                f"{run} holds {', '.join(found)} but no {run_dir.CONFIG_FILE}: not starting a new "
                "run over another one's files; restore its config.json, or use a new --out"
            )
        return False
    if saved:
        return True
    run_dir.read_run_config(run)  # an unreadable config is refused, not replaced
    log(f"{run} has no checkpoint yet: starting it again with this command's options")
    return False


def prepare_run(
    run: Path, model_cfg: ModelConfig, cfg: TrainConfig, *, primary: bool, log: Log
) -> tuple[ModelConfig, TrainConfig, Tokenizer, Tokenizer, Path]:
    """The run's configs, tokenizers and prepared data directory, by how it starts.

    Resumed (``run`` holds a config: it must train the same thing, and keeps its tokenizer),
    fine-tuned from ``cfg.init_from`` (its architecture and tokenizer), or fresh (the
    tokenizer the data was prepared with). Raw text is prepared into ``RUN/data`` first
    (``train_data.ensure_prepared``); only process 0 writes, the others wait and read.
    """
    if cfg.objective == "distill" and cfg.teacher is not None:
        run_dir.read_run_config(cfg.teacher)  # a missing teacher fails before any data work
    resuming = _resumable(run, log)
    sharding.sync("seqjax-train-start")  # every process has looked before process 0 writes
    started = None
    prep = dict(primary=primary, log=log)
    if resuming:
        model_cfg, saved_cfg = run_dir.read_run_config(run)
        cfg = _check_resume_config(saved_cfg, cfg, run)
        keep = run_dir.tokenizer_dir(run)
        data_dir = train_data.ensure_prepared(run, model_cfg, cfg, keep_tokenizer=keep, **prep)
        train_data.check_tokenizer(data_dir, run_dir.read_tokenizers(run))
        started = f"resuming {run}"
    elif cfg.init_from is not None:
        model_cfg, _ = run_dir.read_run_config(cfg.init_from)
        tok = run_dir.tokenizer_dir(cfg.init_from)
        data_dir = train_data.ensure_prepared(run, model_cfg, cfg, tokenizer=tok, **prep)
        # Before anything is written: the data must use the starting model's tokenizer.
        train_data.check_tokenizer(data_dir, run_dir.read_tokenizers(cfg.init_from))
        model_cfg = _fine_tune_run_files(run, cfg, primary)
        started = f"starting from {cfg.init_from} ({cfg.objective})"
    else:
        data_dir = train_data.ensure_prepared(run, model_cfg, cfg, **prep)
        model_cfg = _fresh_run_files(run, model_cfg, cfg, data_dir, primary)
    src_tok, tgt_tok = run_dir.read_tokenizers(run)
    if started:
        log(started)
    if src_tok.vocab_size != tgt_tok.vocab_size:
        raise DataError("separate source/target vocabularies must have the same size")
    return model_cfg, cfg, src_tok, tgt_tok, data_dir


# -- phase 2: the initial state --------------------------------------------------------------


@dataclasses.dataclass
class Start:
    """Where the loop starts: the train state, dropout key and data position (epoch, batch)."""

    state: TrainState
    dropout_key: jax.Array
    epoch: int
    index: int
    n_params: int
    data_state: dict[str, Any] | None = None  # the batch iterator's, from the checkpoint


def initial_state(
    model: Any,
    optimizer: Any,
    cfg: TrainConfig,
    ckpt: checkpoint.Checkpointer,
    mesh: Mesh,
    log: Log,
) -> Start:
    """Fresh params (or ``cfg.init_from``'s best), replaced by the run's latest checkpoint."""
    init_key, dropout_key = jax.random.split(jax.random.key(cfg.seed))
    if cfg.init_from is not None:
        params = run_dir.load_model(cfg.init_from)[1]
    else:
        params = model.init(init_key)
    n_params = count_params(params)
    state = init_train_state(params, optimizer)
    # Place the state on the mesh before restoring: Orbax restores into these shardings.
    state = TrainState(
        sharding.place_replicated(state.step, mesh),
        sharding.place_params(state.params, mesh),
        sharding.place_params(state.opt_state, mesh),
    )
    start = Start(state, sharding.place_replicated(dropout_key, mesh), 0, 0, n_params)
    ckpt.check_step_dirs()
    if ckpt.latest_step() is not None:
        params, opt_state, meta = ckpt.restore(state.params, state.opt_state)
        step0 = sharding.place_replicated(jnp.asarray(meta["step"], jnp.int32), mesh)
        start.state = TrainState(step0, params, opt_state)
        start.epoch, start.index = meta["epoch"], meta["index"]
        start.data_state = meta.get("data_state")
        log(f"restored step {meta['step']} (epoch {start.epoch}, batch {start.index})")
    return start


# -- validation ------------------------------------------------------------------------------


@dataclasses.dataclass
class Validator:
    """Loss on the validation pairs and BLEU/chrF on the first sentences of the valid text."""

    eval_step: Callable
    model: Any
    tokenizers: tuple[Tokenizer, Tokenizer]
    data: train_data.ValidData | None
    cfg: TrainConfig
    model_cfg: ModelConfig
    decode_cfg: DecodeConfig
    mesh: Mesh

    def __call__(self, params: Any) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.data is None or len(self.data) == 0:
            return out
        batches = self.data.batches()
        out.update(evaluate_loss(self.eval_step, params, batches, self.model_cfg.pad_id, self.mesh))
        n = min(self.cfg.valid_bleu_sentences, len(self.data.src))
        if n:
            tr = Translator(self.model, params, *self.tokenizers, self.model_cfg, mesh=self.mesh)
            hyps = tr.translate(self.data.src[:n], self.decode_cfg)
            s = corpus_scores(hyps, self.data.tgt[:n])
            out.update(valid_bleu=s.bleu, valid_chrf=s.chrf)
        return out


def _valid_score(valid: dict[str, float]) -> float:
    """Higher is better: BLEU when measured, else minus the validation NLL."""
    return valid.get("valid_bleu", -valid.get("valid_nll", 0.0))


def _tie_break(valid: dict[str, float]) -> float | None:
    """Between equal BLEU scores, the lower validation NLL is better."""
    return -valid["valid_nll"] if "valid_bleu" in valid and "valid_nll" in valid else None


def _format(valid: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in valid.items())


# -- phase 3: the loop, its log window and divergence guard ----------------------------------


class StopOnCtrlC:
    """While active, Ctrl-C (SIGINT) asks the loop to stop after the step in flight.

    The train step donates the state's buffers, so an interrupt inside it would leave no
    state to save; deferred to the step boundary, the state the loop holds is always whole.
    A second Ctrl-C interrupts at once (nothing is saved if that lands inside a step).
    """

    def __init__(self) -> None:
        self.requested = False
        self._old: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> StopOnCtrlC:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._old or signal.default_int_handler)


def _owned(state: TrainState) -> bool:
    """Whether every array of ``state`` is still alive (not donated to an unfinished step)."""
    return not any(isinstance(x, jax.Array) and x.is_deleted() for x in jax.tree.leaves(state))


@dataclasses.dataclass
class LogWindow:
    """Metrics of the steps since the last log line, reduced to one ``metrics.jsonl`` record."""

    metrics: list[dict[str, jax.Array]] = dataclasses.field(default_factory=list)
    t0: float = dataclasses.field(default_factory=time.monotonic)

    def add(self, m: dict[str, jax.Array]) -> None:
        self.metrics.append(m)

    def flush(self, step: int, epoch: int, start: float) -> tuple[dict[str, Any], list[int]]:
        """``(record, skipped flag per step)``; the window starts over."""
        host = jax.device_get(self.metrics)
        self.metrics = []
        tokens = sum(float(w["tokens"]) for w in host)
        nll = sum(float(w["nll_sum"]) for w in host)
        dt = time.monotonic() - self.t0
        self.t0 = time.monotonic()
        skipped = [int(w["skipped"]) for w in host]
        record = {
            "step": step,
            "epoch": epoch,
            "loss": float(np.mean([float(w["loss"]) for w in host])),
            "train_nll": nll / max(tokens, 1.0),
            "grad_norm": float(np.mean([float(w["grad_norm"]) for w in host])),
            "skipped": int(sum(skipped)),
            "tgt_tok_per_s": tokens / max(dt, 1e-9),
            "minutes": (time.monotonic() - start) / 60,
        }
        return record, skipped


@dataclasses.dataclass
class DivergenceGuard:
    """Counts skipped (non-finite) updates; ``max_bad`` of them in a row is a diverged run."""

    max_bad: int
    in_a_row: int = 0
    total: int = 0

    def diverged(self, skipped: list[int]) -> bool:
        for s in skipped:
            self.in_a_row = self.in_a_row + 1 if s else 0
        self.total += sum(skipped)
        return self.in_a_row >= self.max_bad


@dataclasses.dataclass
class Loop:
    """The train loop's moving parts: the state, its position in the data, and the run."""

    run: Path
    cfg: TrainConfig
    state: TrainState
    dropout_key: jax.Array
    epoch: int
    index: int
    train_step: Step
    validate: Validator
    ckpt: checkpoint.Checkpointer
    batches: train_data.TrainBatches
    progress: Progress
    mesh: Mesh
    primary: bool
    log: Log
    start: float = dataclasses.field(default_factory=time.monotonic)
    last_valid: dict[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.step = int(self.state.step)
        self.valid_step = -1  # the step self.last_valid was measured at
        self.window = LogWindow()
        self.guard = DivergenceGuard(self.cfg.max_bad_steps)

    @property
    def minutes(self) -> float:
        return (time.monotonic() - self.start) / 60

    def write_metrics(self, record: dict[str, Any]) -> None:
        if self.primary:
            run_dir.append_metrics(self.run, record)

    def save(self, valid: dict[str, float] | None = None) -> None:
        # (epoch, index) is the next batch to train on: a resume starts exactly there; the
        # batch iterator's own state (Grain's) lets it continue without replanning.
        meta = {"step": self.step, "epoch": self.epoch, "index": self.index,
                "minutes": self.minutes, "data_state": self.batches.state()}  # fmt: skip
        score = None if valid is None else _valid_score(valid)
        tie = None if valid is None else _tie_break(valid)
        self.ckpt.save(self.step, self.state.params, self.state.opt_state, meta,
                       valid_score=score, tie_break=tie)  # fmt: skip

    def train_one(self) -> None:
        batch_epoch, batch_index, batch = next(self.batches)
        global_rows = len(batch["src"]) * jax.process_count()
        self.state, m = self.train_step(
            self.state, sharding.shard_local_rows(batch, self.mesh, global_rows), self.dropout_key
        )
        self.step += 1
        self.epoch, self.index = batch_epoch, batch_index + 1
        self.window.add(m)

    def log_window(self) -> None:
        record, skipped = self.window.flush(self.step, self.epoch, self.start)
        self.write_metrics(record)
        if self.guard.diverged(skipped):
            self.ckpt.wait()
            last = self.ckpt.latest_step()
            self.ckpt.close()
            raise TrainingDiverged(
                f"stopped at step {self.step}: {self.guard.in_a_row} consecutive steps had a "
                f"non-finite loss or gradient ({self.guard.total} skipped in all); the last good "
                f"checkpoint is step {last} in {self.run / checkpoint.LATEST_DIR}; lower --lr "
                "or check the data"
            )
        self.progress.update(
            self.cfg.log_every,
            loss=record["loss"],
            tok_s=int(record["tgt_tok_per_s"]),
            epoch=self.epoch,
            min=round(record["minutes"], 1),
        )

    def validate_and_save(self) -> None:
        self.last_valid = self.validate(self.state.params)
        self.valid_step = self.step
        self.write_metrics({"step": self.step, **self.last_valid})
        self.log(f"step {self.step}: {_format(self.last_valid)}")
        self.save(self.last_valid)

    def in_budget(self, budget_s: float, stop_requested: bool = False) -> bool:
        """Whether to go on: process 0's clock is within the budget and no Ctrl-C is pending
        (every process must run the same steps). With several processes, asking is a blocking
        broadcast, so it is asked only every ``log_every`` steps (the run may overshoot by
        fewer steps than that)."""
        if jax.process_count() > 1 and self.step % self.cfg.log_every:
            return True
        return sharding.agree(time.monotonic() - self.start < budget_s and not stop_requested)

    def run_until_done(self, budget_s: float) -> bool:
        """Train until ``cfg.total_steps`` or the time budget; True if interrupted (Ctrl-C).

        Ctrl-C stops the loop after the step in flight (``StopOnCtrlC``).
        """
        cfg = self.cfg
        with StopOnCtrlC() as stop:
            try:
                while self.step < cfg.total_steps and self.in_budget(budget_s, stop.requested):
                    self.train_one()
                    if self.step % cfg.log_every == 0:
                        self.log_window()
                    if self.step >= cfg.total_steps:
                        break  # finish() validates and saves the last step, once
                    if self.step % cfg.eval_every == 0:
                        self.validate_and_save()
                    elif self.step % cfg.save_every == 0:
                        self.save()
            except KeyboardInterrupt:
                stop.requested = True  # a second Ctrl-C
        if sharding.agree(stop.requested):
            self.log(f"interrupted at step {self.step}; saving a checkpoint")
            return True
        return False

    def finish(self, interrupted: bool) -> float:
        """Validate (unless interrupted, or done at this step), save the last step and wait.

        Returns the minutes spent training (the closing validation not included).
        """
        self.progress.close()
        minutes = self.minutes
        if not interrupted and self.valid_step != self.step:
            self.last_valid = self.validate(self.state.params)
            self.valid_step = self.step
            self.write_metrics({"step": self.step, **self.last_valid, "final": True})
        if not interrupted:
            self.log(f"final step {self.step}: {_format(self.last_valid)}")
        if _owned(self.state):
            self.save(None if interrupted else self.last_valid)
        else:
            self.log(f"warning: interrupted twice inside step {self.step + 1}: not saved")
            self.step = self.ckpt.latest_step() or 0
        self.batches.close()
        self.ckpt.wait()
        self.ckpt.close()
        return minutes


# -- train -----------------------------------------------------------------------------------


def train(
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    run: str | Path,
    *,
    log: Log = _stderr,
    decode_cfg: DecodeConfig | None = None,
) -> TrainResult:
    """Train (or resume) a model in the run directory ``run``; returns the final step and scores.

    Process 0 holds ``RUN/train.lock`` for the whole run: a second ``train`` on the same
    directory is refused (``CheckpointError`` naming the holder); a lock left by a killed
    process on this host is taken over with a warning. See ``_train`` for the rest.
    """
    run = Path(run)
    if run.exists() and not run.is_dir():
        raise checkpoint.CheckpointError(f"--out {run} is a file; give a directory")
    if not sharding.is_primary():
        # Process 0's lock outcome, before any barrier: a refused start ends every process
        # at once instead of leaving the others waiting at the first barrier until it times out.
        if not sharding.agree(False):
            raise checkpoint.CheckpointError(
                f"{run}: process 0 could not start the run (its message says why); stopping"
            )
        return _train(model_cfg, cfg, run, log=lambda msg: None, decode_cfg=decode_cfg)
    created = not run.exists()
    lock = run_dir.RunLock(run, warn=log)
    try:
        try:
            run.mkdir(parents=True, exist_ok=True)
            lock.acquire()
        except BaseException:
            sharding.agree(False)
            raise
        sharding.agree(True)
        try:
            return _train(model_cfg, cfg, run, log=log, decode_cfg=decode_cfg)
        finally:
            lock.release()
    except BaseException:
        if created and run.is_dir() and not any(run.iterdir()):
            run.rmdir()  # refused before writing anything: leave no empty run directory behind
        raise


def _train(
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    run: Path,
    *,
    log: Log,
    decode_cfg: DecodeConfig | None,
) -> TrainResult:
    """The run itself, under the lock.

    Validation BLEU is computed on the first ``cfg.valid_bleu_sentences`` validation
    sentences with ``decode_cfg`` (greedy by default, to keep validation cheap).

    Data parallel over ``sharding.make_mesh(cfg.mesh)``: every global batch is padded to a
    multiple of the mesh's data axis and split along it (each process builds only its own
    rows); params and optimizer state are replicated (big matrices split along ``model``
    when the mesh has one). With several processes only process 0 writes the run files,
    metrics and log lines; every process takes part in the (Orbax) checkpoint saves.
    """
    mesh = sharding.make_mesh(cfg.mesh)
    primary = sharding.is_primary()
    t_setup = time.monotonic()
    model_cfg, cfg, *tokenizers, data_dir = prepare_run(
        run, model_cfg, cfg, primary=primary, log=log
    )
    spec = train_data.batch_spec(cfg, model_cfg, mesh)
    train_data.log_counts(data_dir, spec, log)

    model = build_model(model_cfg)
    optimizer = make_optimizer(cfg)
    ckpt = checkpoint.Checkpointer(run, keep_last=cfg.keep_last)
    start = initial_state(model, optimizer, cfg, ckpt, mesh, log)
    log(
        f"model: {model_cfg.family} {start.n_params / 1e6:.2f}M parameters ({model_cfg.dtype}); "
        f"mesh data={mesh.shape['data']} model={mesh.shape['model']} over "
        f"{jax.process_count()} process(es); setup {time.monotonic() - t_setup:.1f}s"
    )

    validate = Validator(
        make_eval_step(model, pad_id=model_cfg.pad_id), model, tuple(tokenizers),
        train_data.valid_data(data_dir, spec), cfg, model_cfg,
        decode_cfg or DecodeConfig(method="greedy", batch_size=64), mesh,
    )  # fmt: skip
    if primary:
        run_dir.truncate_metrics(run, int(start.state.step))
    budget_s = cfg.max_minutes * 60 if cfg.max_minutes > 0 else math.inf
    batches = train_data.TrainBatches(
        data_dir, spec, workers=cfg.data_workers, epoch=start.epoch, index=start.index,
        state=start.data_state,
    )  # fmt: skip
    total = cfg.total_steps if math.isinf(budget_s) else None
    progress = Progress(
        total, "train", unit="steps", initial=int(start.state.step), disable=not primary
    )
    loop = Loop(
        run, cfg, start.state, start.dropout_key, start.epoch, start.index,
        make_objective_step(cfg, model, optimizer, mesh), validate, ckpt, batches, progress,
        mesh, primary, log,
    )  # fmt: skip
    interrupted = loop.run_until_done(budget_s)
    minutes = loop.finish(interrupted)
    if interrupted:
        log(f"saved step {loop.step} in {run}; rerun the same command to resume")
        raise KeyboardInterrupt
    return TrainResult(run, loop.step, loop.last_valid, minutes, start.n_params)
