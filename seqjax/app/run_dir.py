"""The run directory: the one module that knows its layout.

One directory is one reusable model::

    RUN/
      config.json          {"model": {...}, "train": {...}, "seqjax_version": "...", "format": 1}
      tokenizer/           spm.model (joint) or src.model + tgt.model
      checkpoints/<step>/  latest N steps (Orbax, ``seqjax.checkpoint``)
      best/<step>/         best validation score so far (Orbax, ``seqjax.checkpoint``)
      metrics.jsonl        one JSON record per logged step or validation (the train loop)
      test_results.json    ``seqjax train``'s closing test-set evaluation

Everything that reads or writes one of these goes through here: the config, the tokenizers,
params by ``best | latest | step`` and the corpus the run was trained on (bundled, or the
user's files).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
from pathlib import Path
from typing import Any

import jax

from seqjax.checkpoint import Checkpointer, CheckpointError, no_run_dir
from seqjax.config import ConfigError, ModelConfig, TrainConfig, from_dict, to_dict
from seqjax.data import DataError, ParallelText, Tokenizer, load_bundled, read_parallel
from seqjax.data import load_tokenizers as _load_tokenizers
from seqjax.data.shards import read_text
from seqjax.data.tokenizer import JOINT_FILE, SRC_FILE, TGT_FILE
from seqjax.models import build_model

FORMAT = 1  # bump when the layout changes in a way old readers cannot handle
CONFIG_FILE = "config.json"
TOKENIZER_DIR = "tokenizer"
METRICS_FILE = "metrics.jsonl"
TEST_RESULTS_FILE = "test_results.json"

__all__ = [
    "CONFIG_FILE",
    "FORMAT",
    "JOINT_FILE",
    "METRICS_FILE",
    "SRC_FILE",
    "TEST_RESULTS_FILE",
    "TGT_FILE",
    "TOKENIZER_DIR",
    "append_metrics",
    "corpus_split",
    "exists",
    "evaluation_split",
    "load_model",
    "metrics_file",
    "read_run_config",
    "read_tokenizers",
    "tokenizer_dir",
    "truncate_metrics",
    "write_run_files",
]


def _version() -> str:
    try:
        return importlib.metadata.version("seqjax")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def exists(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` already holds a run (its ``config.json``): train resumes it."""
    return (Path(run_dir) / CONFIG_FILE).exists()


# -- config and tokenizer ------------------------------------------------------------------


def write_run_files(
    run_dir: str | Path,
    model_config: ModelConfig,
    train_config: TrainConfig,
    tokenizer_dir: str | Path | None,
) -> Path:
    """Create ``run_dir`` with ``config.json`` and (if given) a copy of the tokenizer models.

    ``tokenizer_dir`` holds ``spm.model`` or ``src.model`` + ``tgt.model`` (as written by
    ``seqjax.data.train_tokenizers``), or is another run directory's tokenizer; ``None``
    leaves ``RUN/tokenizer`` as it is.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    doc = {
        "model": to_dict(model_config),
        "train": to_dict(train_config),
        "seqjax_version": _version(),
        "format": FORMAT,
    }
    path = run_dir / CONFIG_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)  # atomic: a crash never leaves a half-written config.json
    if tokenizer_dir is not None:
        _copy_tokenizer(Path(tokenizer_dir), run_dir / TOKENIZER_DIR)
    return run_dir


def tokenizer_dir(run_dir: str | Path) -> Path:
    """``RUN/tokenizer`` (what ``write_run_files`` copies from another run for fine-tuning)."""
    return Path(run_dir) / TOKENIZER_DIR


def _copy_tokenizer(src: Path, dst: Path) -> None:
    if not src.is_dir():
        raise CheckpointError(
            f"no such tokenizer directory: {src}; train one with seqjax.data.train_tokenizers"
        )
    if dst.is_dir() and dst.resolve() == src.resolve():
        return  # resuming a run that already holds its tokenizer
    if (src / JOINT_FILE).is_file():
        names = [JOINT_FILE]
    elif (src / SRC_FILE).is_file() and (src / TGT_FILE).is_file():
        names = [SRC_FILE, TGT_FILE]
    else:
        raise CheckpointError(
            f"{src}: no tokenizer found (expected {JOINT_FILE}, or {SRC_FILE} and {TGT_FILE}); "
            "train them with seqjax.data.train_tokenizers"
        )
    # Fill a fresh sibling and swap it in, so no model of the other layout survives in dst.
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name in names:
        shutil.copyfile(src / name, tmp / name)
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)


def read_run_config(run_dir: str | Path) -> tuple[ModelConfig, TrainConfig]:
    """Read ``RUN/config.json`` back into ``(ModelConfig, TrainConfig)``."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise no_run_dir(run_dir)
    path = run_dir / CONFIG_FILE
    redo = f"re-create the run with `seqjax train --out {run_dir}`"
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} not found: not a seqjax run directory; {redo}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: invalid JSON ({e}); {redo}") from None
    if not isinstance(doc, dict):
        raise CheckpointError(f"{path}: expected a JSON object; {redo}")
    _check_format(doc, path)
    sections = []
    for key, cls in (("model", ModelConfig), ("train", TrainConfig)):
        data = doc.get(key)
        if not isinstance(data, dict):
            raise CheckpointError(f"{path}: missing or invalid {key!r} section; {redo}")
        try:
            sections.append(from_dict(cls, data, where=f"{path} [{key}]"))
        except ConfigError as e:
            raise CheckpointError(f"{e}; {redo}") from None
    return sections[0], sections[1]


def _check_format(doc: dict[str, Any], path: Path) -> None:
    fmt = doc.get("format")
    if fmt != FORMAT:
        newer = isinstance(fmt, int) and fmt > FORMAT
        hint = "upgrade seqjax" if newer else "load it with the seqjax version that wrote it"
        raise CheckpointError(
            f"{path}: run format {fmt!r} (written by seqjax {doc.get('seqjax_version', '?')}) "
            f"is not readable by seqjax {_version()}, which reads format {FORMAT}; {hint}"
        )


def read_tokenizers(run_dir: str | Path) -> tuple[Tokenizer, Tokenizer]:
    """``(source, target)`` tokenizers of a run (the same object twice for a joint vocab)."""
    return _load_tokenizers(tokenizer_dir(run_dir))


# -- params ----------------------------------------------------------------------------------


def load_model(run_dir: str | Path, *, which: str | int = "best") -> tuple[Any, Any]:
    """``(model, params)`` of a run; ``which`` is ``best``, ``latest`` or a step number.

    ``best`` falls back to the latest checkpoint when the run has no best one yet.
    """
    model_cfg, _ = read_run_config(run_dir)
    model = build_model(model_cfg)
    target = jax.eval_shape(model.init, jax.random.key(0))
    ckpt = Checkpointer(run_dir, async_save=False)
    try:
        params, _ = ckpt.restore_params(target, which=which)
    finally:
        ckpt.close()
    return model, params


# -- the corpus a run trains on --------------------------------------------------------------


def corpus_split(cfg: TrainConfig, split: str) -> ParallelText | None:
    """``split`` of the corpus ``cfg`` trains on: the bundled corpus, or the user's files.

    User files have a train split and, when given, a valid split; any other is ``None``.
    """
    if cfg.src is None:
        return load_bundled(cfg.corpus, split)
    src, tgt = {"train": (cfg.src, cfg.tgt), "valid": (cfg.valid_src, cfg.valid_tgt)}.get(
        split, (None, None)
    )
    return None if src is None else read_parallel(src, tgt)


def evaluation_split(run_dir: str | Path, split: str) -> tuple[str, ParallelText]:
    """``(corpus name, text)`` of a split to score a run on, from the corpus it was trained on.

    A run trained on user files can only be scored here on its validation files (its training
    files are not held out); other files go through ``--src``/``--ref``.
    """
    _, cfg = read_run_config(run_dir)
    if cfg.data is not None:
        if split != "valid":
            raise DataError(
                f"{run_dir} was trained on a prepared directory ({cfg.data}); evaluate with "
                "--src FILE --ref FILE"
            )
        src, tgt = read_text(cfg.data, "valid")
        return "valid", ParallelText(src, tgt, f"{cfg.data}/valid", f"{cfg.data}/valid")
    name = cfg.corpus if cfg.src is None else "valid"
    data = corpus_split(cfg, split) if cfg.src is None or split == "valid" else None
    if data is None:
        raise DataError(f"{run_dir} was trained on user files; evaluate with --src FILE --ref FILE")
    return name, data


# -- metrics.jsonl ---------------------------------------------------------------------------


def metrics_file(run_dir: str | Path) -> Path:
    return Path(run_dir) / METRICS_FILE


def append_metrics(run_dir: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON record to ``RUN/metrics.jsonl``."""
    with metrics_file(run_dir).open("a") as f:
        f.write(json.dumps(record) + "\n")


def truncate_metrics(run_dir: str | Path, step: int) -> None:
    """Drop records past ``step`` (written by a run killed after its last checkpoint).

    The resumed run rewrites those steps, so the file stays one record per step; a torn
    last line (killed mid-write) is dropped too. No file, nothing to do.
    """
    path = metrics_file(run_dir)
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
