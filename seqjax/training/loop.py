"""The teacher-forced train loop behind ``seqjax train``.

One run = one directory (see ``seqjax.checkpoint``). Rerunning with the same directory
resumes from the latest complete checkpoint: same data order (epoch, batch index), same
dropout keys (folded from the step), same optimizer state, so the loss curve continues
as if never interrupted.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from seqjax import checkpoint, sharding
from seqjax.config import DecodeConfig, ModelConfig, TrainConfig, to_dict
from seqjax.data import (
    DataError,
    ParallelText,
    TokenizedPairs,
    drop_empty_pairs,
    epoch_batches,
    filter_long,
    iterate_batches,
    load_bundled,
    load_tokenizers,
    make_batch,
    read_parallel,
    tokenize_pairs,
    train_tokenizers,
)
from seqjax.metrics import corpus_scores
from seqjax.models import build_model
from seqjax.models.transformer import count_params
from seqjax.progress import Progress
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
}

Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class TrainingDiverged(RuntimeError):
    """Too many consecutive non-finite steps; the last good checkpoint is left as it was."""


@dataclasses.dataclass
class TrainResult:
    run_dir: Path
    step: int
    valid: dict[str, float]
    minutes: float
    params: int


def load_training_data(cfg: TrainConfig) -> tuple[ParallelText, ParallelText | None]:
    """(train, valid) text pairs from the bundled corpus or the user's files."""
    if cfg.src is not None:
        train = read_parallel(cfg.src, cfg.tgt)
        valid = None
        if cfg.valid_src is not None:
            valid = read_parallel(cfg.valid_src, cfg.valid_tgt)
        return train, valid
    return load_bundled(cfg.corpus, "train"), load_bundled(cfg.corpus, "valid")


def _check_resume_config(saved: TrainConfig, given: TrainConfig, run_dir: Path) -> TrainConfig:
    """A resume must train the same thing; runtime fields take the new values."""
    a, b = to_dict(saved), to_dict(given)
    for k in sorted(a):
        if k not in RUNTIME_FIELDS and a[k] != b[k]:
            raise checkpoint.CheckpointError(
                f"{run_dir} was started with {k}={a[k]!r} but this run asks for {b[k]!r}; "
                "rerun with the original options to resume, or use a new --out directory"
            )
    return dataclasses.replace(saved, **{k: b[k] for k in RUNTIME_FIELDS})


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop records past ``step`` (written by a run killed after its last checkpoint).

    The resumed run rewrites those steps, so the file stays one record per step; a torn
    last line (killed mid-write) is dropped too.
    """
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and rec.get("step", 0) <= step:
            keep.append(line + "\n")
    path.write_text("".join(keep), encoding="utf-8")


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
    pairs: TokenizedPairs,
    cfg: TrainConfig,
    model_cfg: ModelConfig,
    mesh: Mesh | None = None,
) -> dict[str, float]:
    """Token NLL, perplexity and teacher-forced accuracy over ``pairs`` (fixed order)."""
    nll = tok = correct = 0.0
    plans = epoch_batches(
        pairs, epoch=0, seed=0, batch_tokens=cfg.batch_tokens, buckets=cfg.length_buckets
    )
    for plan in plans:
        batch = make_batch(
            pairs, *plan, pad_id=model_cfg.pad_id, bos_id=model_cfg.bos_id, eos_id=model_cfg.eos_id
        )
        m = eval_step(params, _to_device(batch, mesh, model_cfg.pad_id))
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
        from seqjax.inference import load_model

        teacher, teacher_params = load_model(cfg.teacher)
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


def train(
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    log: Log = _stderr,
    decode_cfg: DecodeConfig | None = None,
) -> TrainResult:
    """Train (or resume) a model in ``run_dir``; returns the final step and validation scores.

    Validation BLEU is computed on the first ``cfg.valid_bleu_sentences`` validation
    sentences with ``decode_cfg`` (greedy by default, to keep validation cheap).

    Data parallel over ``sharding.make_mesh(cfg.mesh)``: every global batch is padded to a
    multiple of the mesh's data axis and split along it (each process builds only its own
    rows); params and optimizer state are replicated (big matrices split along ``model``
    when the mesh has one). With several processes only process 0 writes the run files,
    metrics and log lines; every process takes part in the (Orbax) checkpoint saves.
    """
    run_dir = Path(run_dir)
    mesh = sharding.make_mesh(cfg.mesh)
    primary = sharding.is_primary()
    if not primary:
        log = lambda msg: None  # noqa: E731
    t_setup = time.monotonic()
    train_text, valid_text = load_training_data(cfg)
    if train_text.n_control:
        log(f"warning: replaced {train_text.n_control} control character(s) in the training data")
    train_text, n_empty = drop_empty_pairs(train_text)
    if n_empty:
        log(f"skipped {n_empty} training pairs with an empty side")

    resuming = (run_dir / "config.json").exists()
    sharding.sync("seqjax-train-start")  # every process has looked before process 0 writes
    if resuming:
        model_cfg, saved_cfg = checkpoint.read_run_config(run_dir)
        cfg = _check_resume_config(saved_cfg, cfg, run_dir)
        src_tok, tgt_tok = load_tokenizers(run_dir / "tokenizer")
        log(f"resuming {run_dir}")
    elif cfg.init_from is not None:
        # Fine-tuning keeps the starting model's architecture and tokenizer.
        model_cfg, _ = checkpoint.read_run_config(cfg.init_from)
        if primary:
            run_dir.mkdir(parents=True, exist_ok=True)
            checkpoint.write_run_files(run_dir, model_cfg, cfg, Path(cfg.init_from) / "tokenizer")
        sharding.sync("seqjax-run-files")
        src_tok, tgt_tok = load_tokenizers(run_dir / "tokenizer")
        log(f"starting from {cfg.init_from} ({cfg.objective})")
    elif not primary:
        # Process 0 trains the tokenizer and writes the run files (on a shared filesystem).
        sharding.sync("seqjax-run-files")
        model_cfg, _ = checkpoint.read_run_config(run_dir)
        src_tok, tgt_tok = load_tokenizers(run_dir / "tokenizer")
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=run_dir) as tmp:
            t0 = time.monotonic()
            src_tok, tgt_tok = train_tokenizers(
                train_text.src,
                train_text.tgt,
                model_cfg.vocab_size,
                tmp,
                joint=cfg.joint_vocab,
                seed=cfg.seed,
            )
            log(
                f"trained {'joint ' if cfg.joint_vocab else ''}SentencePiece BPE "
                f"(vocab {tgt_tok.vocab_size}) in {time.monotonic() - t0:.1f}s"
            )
            model_cfg = dataclasses.replace(model_cfg, vocab_size=tgt_tok.vocab_size)
            checkpoint.write_run_files(run_dir, model_cfg, cfg, Path(tmp))
        src_tok, tgt_tok = load_tokenizers(run_dir / "tokenizer")
        sharding.sync("seqjax-run-files")
    if src_tok.vocab_size != tgt_tok.vocab_size:
        raise DataError("separate source/target vocabularies must have the same size")

    pairs, n_long = filter_long(
        tokenize_pairs(train_text, src_tok, tgt_tok),
        cfg.max_src_len,
        cfg.max_tgt_len,
        cfg.length_buckets,
    )
    log(
        f"train: {len(pairs)} pairs"
        + (f" ({n_long} longer than the limits dropped)" if n_long else "")
    )
    valid_pairs = None
    if valid_text is not None:
        valid_text, _ = drop_empty_pairs(valid_text)
        valid_pairs, _ = filter_long(
            tokenize_pairs(valid_text, src_tok, tgt_tok),
            cfg.max_src_len,
            cfg.max_tgt_len,
            cfg.length_buckets,
        )

    model = build_model(model_cfg)
    optimizer = make_optimizer(cfg)
    key = jax.random.key(cfg.seed)
    init_key, dropout_key = jax.random.split(key)
    if cfg.init_from is not None:
        from seqjax.inference import load_model

        params = load_model(cfg.init_from)[1]
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
    dropout_key = sharding.place_replicated(dropout_key, mesh)
    ckpt = checkpoint.Checkpointer(run_dir, keep_last=cfg.keep_last)
    epoch, index = 0, 0
    if ckpt.latest_step() is not None:
        params, opt_state, meta = ckpt.restore(state.params, state.opt_state)
        step0 = sharding.place_replicated(jnp.asarray(meta["step"], jnp.int32), mesh)
        state = TrainState(step0, params, opt_state)
        epoch, index = meta["epoch"], meta["index"]
        log(f"restored step {meta['step']} (epoch {epoch}, batch {index})")
    log(
        f"model: {model_cfg.family} {n_params / 1e6:.2f}M parameters ({model_cfg.dtype}); "
        f"mesh data={mesh.shape['data']} model={mesh.shape['model']} over "
        f"{jax.process_count()} process(es); setup {time.monotonic() - t_setup:.1f}s"
    )

    train_step = make_objective_step(cfg, model, optimizer, mesh)
    eval_step = make_eval_step(model, pad_id=model_cfg.pad_id)
    valid_decode = decode_cfg or DecodeConfig(method="greedy", batch_size=64)

    def validate(params: Any) -> dict[str, float]:
        out: dict[str, float] = {}
        if valid_pairs is None or len(valid_pairs) == 0:
            return out
        out.update(evaluate_loss(eval_step, params, valid_pairs, cfg, model_cfg, mesh))
        n = min(cfg.valid_bleu_sentences, len(valid_text))
        if n:
            from seqjax.inference import Translator  # local: avoids an import cycle

            tr = Translator(model, params, src_tok, tgt_tok, model_cfg, mesh=mesh)
            hyps = tr.translate(valid_text.src[:n], valid_decode)
            s = corpus_scores(hyps, valid_text.tgt[:n])
            out.update(valid_bleu=s.bleu, valid_chrf=s.chrf)
        return out

    metrics_path = run_dir / "metrics.jsonl"
    step = int(state.step)
    if primary:
        _truncate_metrics(metrics_path, step)
    start = time.monotonic()
    budget = cfg.max_minutes * 60 if cfg.max_minutes > 0 else math.inf
    progress = Progress(
        cfg.total_steps if math.isinf(budget) else None,
        "train",
        unit="steps",
        stream=None if primary else io.StringIO(),
    )
    progress.n = step
    window: list[dict[str, jax.Array]] = []
    last_valid: dict[str, float] = {}
    t_window = time.monotonic()
    batches = iterate_batches(
        pairs,
        seed=cfg.seed,
        batch_tokens=cfg.batch_tokens,
        buckets=cfg.length_buckets,
        start_epoch=epoch,
        start_index=index,
        row_multiple=sharding.data_size(mesh),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )

    def save(valid_score: float | None = None) -> None:
        # (epoch, index) is the next batch to train on: a resume starts exactly there.
        meta = {
            "step": step,
            "epoch": epoch,
            "index": index,
            "minutes": (time.monotonic() - start) / 60,
        }
        ckpt.save(step, state.params, state.opt_state, meta, valid_score=valid_score)

    def write_metrics(record: dict[str, Any]) -> None:
        if not primary:
            return
        with metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    interrupted = False
    bad_run = skipped_total = 0  # consecutive / all non-finite (skipped) updates
    try:
        # The wall-clock budget is process 0's: every process must run the same steps.
        while step < cfg.total_steps and sharding.agree(time.monotonic() - start < budget):
            batch_epoch, batch_index, batch = next(batches)
            global_rows = len(batch["src"]) * jax.process_count()
            state, m = train_step(
                state, sharding.shard_local_rows(batch, mesh, global_rows), dropout_key
            )
            step += 1
            epoch, index = batch_epoch, batch_index + 1
            window.append(m)
            if step % cfg.log_every == 0:
                host = jax.device_get(window)
                window = []
                tokens = sum(float(w["tokens"]) for w in host)
                nll = sum(float(w["nll_sum"]) for w in host)
                dt = time.monotonic() - t_window
                t_window = time.monotonic()
                rec = {
                    "step": step,
                    "epoch": epoch,
                    "loss": float(np.mean([float(w["loss"]) for w in host])),
                    "train_nll": nll / max(tokens, 1.0),
                    "grad_norm": float(np.mean([float(w["grad_norm"]) for w in host])),
                    "skipped": int(sum(int(w["skipped"]) for w in host)),
                    "tgt_tok_per_s": tokens / max(dt, 1e-9),
                    "minutes": (time.monotonic() - start) / 60,
                }
                write_metrics(rec)
                for w in host:
                    bad_run = bad_run + 1 if int(w["skipped"]) else 0
                skipped_total += rec["skipped"]
                if bad_run >= cfg.max_bad_steps:
                    ckpt.wait()
                    last = ckpt.latest_step()
                    ckpt.close()
                    raise TrainingDiverged(
                        f"stopped at step {step}: {bad_run} consecutive steps had a non-finite "
                        f"loss or gradient ({skipped_total} skipped in all); the last good "
                        f"checkpoint is step {last} in {run_dir / 'checkpoints'}; lower --lr "
                        "or check the data"
                    )
                progress.update(
                    cfg.log_every,
                    loss=rec["loss"],
                    tok_s=int(rec["tgt_tok_per_s"]),
                    epoch=epoch,
                    min=round(rec["minutes"], 1),
                )
            if step % cfg.eval_every == 0:
                last_valid = validate(state.params)
                write_metrics({"step": step, **last_valid})
                log(
                    "\n"
                    + f"step {step}: "
                    + " ".join(f"{k}={v:.4g}" for k, v in last_valid.items())
                )
                save(last_valid.get("valid_bleu", -last_valid.get("valid_nll", 0.0)))
            elif step % cfg.save_every == 0:
                save()
    except KeyboardInterrupt:
        interrupted = True
        log(f"\ninterrupted at step {step}; saving a checkpoint")
    progress.close()
    minutes = (time.monotonic() - start) / 60
    if not interrupted:
        last_valid = validate(state.params)
        write_metrics({"step": step, **last_valid, "final": True})
        log(f"final step {step}: " + " ".join(f"{k}={v:.4g}" for k, v in last_valid.items()))
    save(None if interrupted else last_valid.get("valid_bleu", -last_valid.get("valid_nll", 0.0)))
    ckpt.wait()
    ckpt.close()
    if interrupted:
        log(f"saved step {step} in {run_dir}; rerun the same command to resume")
        raise KeyboardInterrupt
    return TrainResult(run_dir, step, last_valid, minutes, n_params)
