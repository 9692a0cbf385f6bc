"""The run directory: the one module that knows its layout.

One directory is one reusable model::

    RUN/
      config.json          {"model": {...}, "train": {...}, "seqjax_version": "...", "format": 1}
      tokenizer/           spm.model (joint) or src.model + tgt.model
      checkpoints/<step>/  latest N steps (Orbax, ``seqjax.checkpoint``)
      best/<step>/         best validation score so far (Orbax, ``seqjax.checkpoint``)
      metrics.jsonl        one JSON record per logged step or validation (the train loop)
      test_results.json    ``seqjax train``'s closing test-set evaluation
      train.lock           {"pid", "host", "started"} of the training run using it, if any

Everything that reads or writes one of these goes through here: the config, the tokenizers,
params by ``best | latest | step`` and the corpus the run was trained on (bundled, or the
user's files).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.tree_util import keystr

import seqjax
from seqjax import checkpoint, sharding
from seqjax.checkpoint import BEST_DIR, LATEST_DIR, Checkpointer, CheckpointError, no_run_dir
from seqjax.config import (
    MODEL_FIELDS_V1,
    TRAIN_FIELDS_V1,
    ConfigError,
    ModelConfig,
    TrainConfig,
    from_dict,
    to_dict,
)
from seqjax.data import DataError, ParallelText, Tokenizer, load_bundled, read_parallel
from seqjax.data import load_tokenizers as _load_tokenizers
from seqjax.data.tokenizer import JOINT_FILE, SRC_FILE, TGT_FILE
from seqjax.models import build_model

FORMAT = 1  # bump when the layout changes in a way old readers cannot handle
CONFIG_FILE = "config.json"
TOKENIZER_DIR = "tokenizer"
METRICS_FILE = "metrics.jsonl"
TEST_RESULTS_FILE = "test_results.json"
LOCK_FILE = "train.lock"
DATA_FILES = ("src", "tgt", "valid_src", "valid_tgt")  # TrainConfig fields naming user files

__all__ = [
    "CONFIG_FILE",
    "FORMAT",
    "JOINT_FILE",
    "METRICS_FILE",
    "SRC_FILE",
    "TEST_RESULTS_FILE",
    "TGT_FILE",
    "TOKENIZER_DIR",
    "RunLock",
    "append_metrics",
    "corpus_split",
    "data_record",
    "has_checkpoints",
    "holds_run_files",
    "read_data_record",
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
    return dist_version("seqjax", missing="unknown")


def dist_version(dist: str, missing: str = "?") -> str:
    """Installed version of distribution ``dist``; ``missing`` if it is not installed."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return missing


@functools.cache
def source_digest(subpackage: str = "") -> str:
    """SHA-256 of seqjax's Python source (under ``subpackage``, e.g. ``"models"``).

    Part of the keys of what is kept beside the compile cache: an edited checkout never
    reuses shapes or programs derived from the code before the edit.
    """
    h = hashlib.sha256()
    root = Path(seqjax.__file__).parent
    for f in sorted((root / subpackage).rglob("*.py")):
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``path`` through a temporary file and a rename: a reader (or a crash) never
    sees half of it."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def exists(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` already holds a run (its ``config.json``): train resumes it."""
    return (Path(run_dir) / CONFIG_FILE).exists()


def has_checkpoints(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a saved (or half-saved) step in ``checkpoints/`` or ``best/``."""
    run_dir = Path(run_dir)
    return any(
        p.name.split(".")[0].isdigit()
        for d in (LATEST_DIR, BEST_DIR)
        if (run_dir / d).is_dir()
        for p in (run_dir / d).iterdir()
    )


def holds_run_files(run_dir: str | Path) -> list[str]:
    """Names of the run files other than ``config.json`` that ``run_dir`` holds."""
    run_dir = Path(run_dir)
    names = (TOKENIZER_DIR, LATEST_DIR, BEST_DIR, METRICS_FILE, TEST_RESULTS_FILE)
    return [n for n in names if (run_dir / n).exists()]


# -- the lock held by a training run ---------------------------------------------------------


class RunLock:
    """``RUN/train.lock``, held by one training run at a time (a context manager).

    Created with ``O_EXCL`` and holding ``{"pid", "host", "started"}``. A lock whose holder is
    a dead process on this host (killed with ``kill -9``) is stale: it is taken over and
    ``warn`` is told. Any other holder makes ``acquire`` raise a one-line ``CheckpointError``
    naming it. On another host the pid cannot be checked; delete the file by hand then.
    """

    def __init__(self, run_dir: str | Path, warn: Any = None):
        self.path = Path(run_dir) / LOCK_FILE
        self.warn = warn or (lambda msg: None)
        self.held = False

    def _holder(self) -> dict[str, Any] | None:
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # being written, or damaged: its holder is unknown
        return doc if isinstance(doc, dict) else {}

    def acquire(self) -> None:
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}  # fmt: skip
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is None:
                    continue  # released meanwhile: try again
                pid, host = holder.get("pid"), holder.get("host")
                from seqjax.data.prepare import pid_alive  # here: ~20 ms off translate's start

                if host == me["host"] and isinstance(pid, int) and not pid_alive(pid):
                    self.warn(
                        f"warning: taking over the stale lock {self.path} of process {pid} "
                        f"(started {holder.get('started', '?')}), which is no longer running"
                    )
                    self.path.unlink(missing_ok=True)
                    continue
                raise CheckpointError(
                    f"{self.path.parent} is in use by another training run (pid {pid} on "
                    f"host {host}, started {holder.get('started', '?')}); wait for it to end, "
                    f"or use another --out (if that process is gone, delete {self.path})"
                ) from None
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(json.dumps(me) + "\n")
            self.held = True
            return
        raise CheckpointError(f"{self.path}: could not take the lock; try again")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# -- what a run was trained on: resolved paths and a content checksum -------------------------

_MB = 1 << 20


def _fingerprint(path: Path) -> dict[str, Any]:
    """Resolved path, size and SHA-256 of the first and last MB (cheap on big corpora)."""
    size = path.stat().st_size
    h = hashlib.sha256()
    with path.open("rb") as f:
        h.update(f.read(_MB))
        if size > _MB:
            f.seek(max(size - _MB, _MB))
            h.update(f.read())
    return {"path": str(path.resolve()), "size": size, "sha256_ends": h.hexdigest()}


def data_record(cfg: TrainConfig) -> dict[str, Any]:
    """``{field: fingerprint}`` of the user files ``cfg`` names (``src``, ``tgt``, ...)."""
    return {k: _fingerprint(Path(getattr(cfg, k))) for k in DATA_FILES if getattr(cfg, k)}


def read_data_record(run_dir: str | Path) -> dict[str, Any] | None:
    """The ``data`` record of ``config.json`` (``None`` for runs written before it existed)."""
    doc = json.loads((Path(run_dir) / CONFIG_FILE).read_text())
    data = doc.get("data")
    return data if isinstance(data, dict) else None


# -- config and tokenizer ------------------------------------------------------------------


def write_run_files(
    run_dir: str | Path,
    model_config: ModelConfig,
    train_config: TrainConfig,
    tokenizer_dir: str | Path | None,
    data: dict[str, Any] | None = None,
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
    if data is not None:
        doc["data"] = data  # data_record(): what resume compares the given files with
    path = run_dir / CONFIG_FILE
    write_atomic(path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())
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
    for key, cls, required in (
        ("model", ModelConfig, MODEL_FIELDS_V1),
        ("train", TrainConfig, TRAIN_FIELDS_V1),
    ):
        data = doc.get(key)
        if not isinstance(data, dict):
            raise CheckpointError(f"{path}: missing or invalid {key!r} section; {redo}")
        try:
            sections.append(from_dict(cls, data, where=f"{path} [{key}]", required=required))
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


def load_model(
    run_dir: str | Path, *, which: str | int = "best", keep_params: bool = False
) -> tuple[Any, Any]:
    """``(model, params)`` of a run; ``which`` is ``best``, ``latest`` or a step number.

    ``best`` falls back to the latest checkpoint when the run has no best one yet.
    ``keep_params`` (``seqjax.load``, translate, evaluate): with a compile cache on, keep
    the params beside it and read them from there while the checkpoint files are
    unchanged, which skips importing Orbax (~0.3 s of a warm start-up, issue 19). Off for
    one-off loads (training from a teacher or a base, experiments), whose copies would
    only fill the cache.
    """
    model_cfg, _ = read_run_config(run_dir)
    model = build_model(model_cfg)
    target = param_target(model, model_cfg)
    cached = _params_cache_file(run_dir, which) if keep_params else None
    if cached is not None:
        stamp = _checkpoints_stamp(run_dir, which)
        params = _read_cached_params(cached, stamp, target)
        if params is not None:
            return model, params
    ckpt = Checkpointer(run_dir, async_save=False)
    try:
        params, _ = ckpt.restore_params(target, which=which)
    finally:
        ckpt.close()
    if cached is not None:
        _write_cached_params(cached, stamp, params)
    return model, params


PARAMS_CACHE_DIR = "seqjax-params"  # inside JAX's compile cache directory
PARAMS_CACHE_MAX_BYTES = 128 * 2**20  # larger models are always read from their checkpoint


def _params_cache_file(run_dir: str | Path, which: str | int) -> Path | None:
    """Where the params a run gives for ``which`` are cached; ``None`` without a compile cache.

    One file per run directory and ``which`` (a newer checkpoint overwrites it, so a run
    never has more than one cached copy per choice); ``_checkpoints_stamp`` says whether it
    is still current.
    """
    cache = sharding.compile_cache_dir()
    if cache is None:
        return None
    key = f"{Path(run_dir).resolve()}\0{which}".encode()
    return cache / PARAMS_CACHE_DIR / f"{hashlib.sha256(key).hexdigest()[:32]}.safetensors"


def _checkpoints_stamp(run_dir: str | Path, which: str | int) -> str:
    """A digest of every file under ``RUN/checkpoints`` and ``RUN/best`` (name, size, mtime),
    ``which`` and the seqjax version: it changes whenever a save, a deletion or a copy could
    change the params ``Checkpointer.restore_params`` would return."""
    h = hashlib.sha256(f"{_version()}\0{which}".encode())
    root = Path(run_dir)
    for sub in (LATEST_DIR, BEST_DIR):
        for dirpath, dirnames, filenames in sorted(os.walk(root / sub)):
            dirnames.sort()
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                try:
                    st = os.stat(path)
                except OSError:  # removed while walking: a save or clean-up is under way
                    return ""
                rel = os.path.relpath(path, root)
                h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _read_cached_params(path: Path, stamp: str, target: Any) -> Any | None:
    """The cached params if they are current and fit ``target`` exactly, else ``None``."""
    from seqjax.interop.safetensors_io import read_metadata, read_safetensors

    if not stamp:
        return None
    try:
        if read_metadata(path).get("stamp") != stamp:
            return None
        arrays = read_safetensors(path)
    except (OSError, ValueError):  # SafetensorsError is a ValueError
        return None  # absent or torn: read the checkpoint
    leaves, treedef = jax.tree_util.tree_flatten_with_path(target)
    names = [keystr(p, simple=True, separator="/") for p, _ in leaves]
    if sorted(names) != sorted(arrays):
        return None
    for name, (_, want) in zip(names, leaves, strict=True):
        have = arrays[name]
        if have.shape != tuple(want.shape) or have.dtype != want.dtype:
            return None  # config.json edited: let the checkpoint's shape check report it
    device = jax.local_devices()[0]
    return jax.tree.unflatten(treedef, [jax.device_put(arrays[n], device) for n in names])


def _write_cached_params(path: Path, stamp: str, params: Any) -> None:
    """Keep ``params`` for the next load (atomic; skipped when too large or unwritable)."""
    from seqjax.interop.safetensors_io import write_safetensors

    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    if not stamp or sum(x.nbytes for _, x in leaves) > PARAMS_CACHE_MAX_BYTES:
        return
    arrays = {keystr(p, simple=True, separator="/"): np.asarray(x) for p, x in leaves}
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_safetensors(tmp, arrays, metadata={"stamp": stamp})
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)  # a read-only or full cache: the next load reads Orbax


PARAM_SPECS_DIR = "seqjax-param-specs"  # inside JAX's compile cache directory


def _param_specs_file(model_cfg: ModelConfig) -> Path | None:
    """Where the param shapes of ``model_cfg`` are cached; ``None`` without a compile cache.

    The key covers everything the shapes depend on: the model config, the versions of
    seqjax, Flax and JAX, and the source of ``seqjax/models`` (a model edited in a checkout
    gets a new entry, not stale shapes).
    """
    cache = sharding.compile_cache_dir()
    if cache is None:
        return None
    h = hashlib.sha256(json.dumps(to_dict(model_cfg), sort_keys=True).encode())
    for dist in ("seqjax", "flax", "jax"):
        h.update(dist_version(dist).encode())
    h.update(source_digest("models").encode())
    return cache / PARAM_SPECS_DIR / f"{h.hexdigest()[:32]}.json"


def param_target(model: Any, model_cfg: ModelConfig) -> Any:
    """Abstract params (``jax.ShapeDtypeStruct`` leaves) of ``model``, to restore into.

    Tracing ``model.init`` for its shapes costs ~0.6 s of a ~3 s ``seqjax translate``
    start-up (issue 19), so with a compile cache on the shapes are kept beside it as JSON,
    keyed by ``_param_specs_file``, and later loads skip the trace. Same result either way.
    """
    path = _param_specs_file(model_cfg)
    if path is not None:
        try:
            return checkpoint.target_from_specs(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            pass  # absent, or torn by a crash: trace and rewrite it
    target = jax.eval_shape(model.init, jax.random.key(0))
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, json.dumps(checkpoint.array_specs(target)).encode())
        except OSError:
            pass  # a read-only cache: the trace is only slower
    return target


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
        from seqjax.data.shards import read_text

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
