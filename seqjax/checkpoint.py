"""Orbax checkpoints of a run directory: the latest N steps and the best one.

The rest of the run directory (``config.json``, tokenizer) is ``seqjax.app.run_dir``'s::

    RUN/
      config.json          {"model": {...}, "train": {...}, "seqjax_version": "...", "format": 1}
      tokenizer/           spm.model (joint) or src.model + tgt.model
      checkpoints/<step>/  "params", "opt_state" (Orbax StandardSave) and "meta" (JSON)
      best/<step>/         "params" + "meta" of the best validation score so far (kept 1)
      metrics.jsonl        written by the train loop

No pickle anywhere: arrays go through Orbax, everything else is JSON. Besides the caller's
fields, each "meta" records ``step``, ``valid_score`` (when given) and the shape and dtype of
every array it was saved with, so shape mismatches are reported per parameter before any
array is read, and params can be restored without a target on any machine.
"""

from __future__ import annotations

import logging
import math
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

import jax
import numpy as np
from jax.tree_util import keystr, tree_flatten_with_path

if TYPE_CHECKING:
    import orbax.checkpoint as ocp

LATEST_DIR = "checkpoints"
BEST_DIR = "best"
_SPECS = "array_specs"  # meta key: {"params": {path: [shape, dtype]}, "opt_state": {...}}

T = TypeVar("T")
PyTree = Any


class CheckpointError(ValueError):
    """A run directory or checkpoint is missing, unreadable or does not fit the model.

    The message names the path and says what to do.
    """


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped because it is unreadable, or deleted because it was superseded."""


def no_run_dir(run_dir: Path) -> CheckpointError:
    """The error for a run directory that does not exist (shared with ``seqjax.app.run_dir``)."""
    return CheckpointError(
        f"no such checkpoint directory: {run_dir}; train one with `seqjax train --out {run_dir}`"
    )


def _orbax() -> ModuleType:
    """``orbax.checkpoint``, imported on first use.

    Its import costs ~0.15 s, which ``seqjax translate`` skips when ``run_dir.load_model``
    serves the params from its cache (issue 19's start-up).
    """
    import orbax.checkpoint

    return orbax.checkpoint


# --------------------------------------------------------------------------- pytree helpers


def _path_str(path: tuple) -> str:
    return keystr(path, simple=True, separator="/")


def _dtype(x: Any) -> np.dtype:
    return np.dtype(x.dtype) if hasattr(x, "dtype") else np.asarray(x).dtype


def array_specs(tree: PyTree) -> dict[str, list]:
    """``{"decoder/layer_0/kernel": [[64, 16], "float32"], ...}``: a pytree's JSON twin."""
    leaves = tree_flatten_with_path(tree)[0]
    return {_path_str(p): [list(np.shape(x)), _dtype(x).name] for p, x in leaves}


def _check_specs(item: str, target: PyTree, stored: dict[str, list], where: Path) -> None:
    """Raise ``CheckpointError`` unless ``target`` has the same leaves and shapes as ``stored``."""
    want = {p: tuple(s) for p, (s, _) in array_specs(target).items()}
    have = {p: tuple(s) for p, (s, _) in stored.items()}
    fix = "build the model from this run's config.json"
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing or extra:
        parts = [f"{item} structure differs from the model ({where})"]
        if missing:
            parts.append(f"not in checkpoint: {', '.join(missing[:3])}")
        if extra:
            parts.append(f"only in checkpoint: {', '.join(extra[:3])}")
        raise CheckpointError("; ".join([*parts, fix]))
    bad = [p for p in want if want[p] != have[p]]
    if bad:
        p = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise CheckpointError(
            f"{item}/{p}: checkpoint has {have[p]}, model expects {want[p]}{more} in {where}; {fix}"
        )


def _local_sharding() -> jax.sharding.Sharding:
    return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


def _abstract(tree: PyTree) -> PyTree:
    """Shape/dtype/sharding targets for Orbax; leaves without a sharding go to a local device.

    Orbax would otherwise fall back to the sharding saved in the checkpoint, which names the
    training machine's devices and fails on another accelerator.
    """
    default = _local_sharding()

    def one(x: Any) -> jax.ShapeDtypeStruct:
        sharding = getattr(x, "sharding", None) or default
        return jax.ShapeDtypeStruct(np.shape(x), _dtype(x), sharding=sharding)

    return jax.tree.map(one, tree)


def target_from_specs(specs: dict[str, list]) -> dict[str, Any]:
    """Nested-dict abstract target (Flax params layout) rebuilt from recorded specs."""
    default = _local_sharding()
    tree: dict[str, Any] = {}
    for path, (shape, dtype) in specs.items():
        *parents, leaf = path.split("/")
        node = tree
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = jax.ShapeDtypeStruct(tuple(shape), np.dtype(dtype), sharding=default)
    return tree


def _jsonable(x: Any, where: str = "meta") -> Any:
    """Plain-JSON copy of ``x``: arrays and numpy scalars become lists/numbers, PRNG keys
    their key data (``jax.random.wrap_key_data`` turns it back into a key)."""
    if x is None or isinstance(x, (str, bool, int, float)):
        return x
    if isinstance(x, dict):
        return {str(k): _jsonable(v, f"{where}/{k}") for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v, f"{where}/{i}") for i, v in enumerate(x)]
    if hasattr(x, "dtype") and hasattr(x, "shape"):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        return np.asarray(x).tolist()
    raise CheckpointError(
        f"{where}: cannot store {type(x).__name__} in checkpoint meta; "
        "use numbers, strings, lists, dicts or arrays"
    )


def _steps(manager: ocp.CheckpointManager | None) -> list[int]:
    """Steps of a manager, newest first (none when its directory does not exist yet)."""
    return [] if manager is None else sorted(manager.all_steps(), reverse=True)


def _short(e: BaseException) -> str:
    """First line of an error, bounded: TensorStore messages run to pages."""
    lines = str(e).strip().splitlines()
    first = lines[0] if lines else ""
    return f"{type(e).__name__}: {first[:200]}"


# --------------------------------------------------------------------------- checkpointer


class _OrbaxTaskNoise(logging.Filter):
    """Drops asyncio's "Task exception was never retrieved" reports of Orbax reads."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not (msg.startswith("Task exception was never retrieved") and "orbax" in msg)


_ORBAX_TASK_NOISE = _OrbaxTaskNoise()


def _quiet_failed_read_aftermath() -> None:
    """Silence the echoes of a failed Orbax read (installed once, before the first read).

    When one array of a damaged checkpoint fails, its sibling reads fail too: asyncio logs
    each unretrieved task error, and TensorStore callbacks that finish after Orbax closed its
    event loop raise "Event loop is closed" as unraisable exceptions; hundreds of traceback
    lines for a failure that is already handled (fallback + one warning).
    """
    logging.getLogger("asyncio").addFilter(_ORBAX_TASK_NOISE)  # a no-op when already there
    previous = sys.unraisablehook
    if getattr(previous, "_seqjax_quiet", False):
        return

    def hook(unraisable: Any) -> None:
        e = unraisable.exc_value
        if not (isinstance(e, RuntimeError) and str(e) == "Event loop is closed"):
            previous(unraisable)

    hook._seqjax_quiet = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


class Checkpointer:
    """Latest-N checkpoints in ``RUN/checkpoints`` and the best one in ``RUN/best``.

    Two Orbax managers rather than one with ``best_fn``: with a metric, Orbax's
    ``max_to_keep`` keeps the top N by score, and resuming needs the latest N.
    Saves are asynchronous by default: ``save`` returns once arrays are copied off the
    device, Orbax writes to a temporary directory and renames it when complete, so a crash
    never leaves a half-written step that ``latest_step`` would report.
    """

    def __init__(self, run_dir: str | Path, keep_last: int = 2, async_save: bool = True):
        # Orbax requires absolute paths (a relative one fails inside its async writer).
        self.run_dir = Path(run_dir).absolute()
        if not self.run_dir.is_dir():
            raise no_run_dir(self.run_dir)
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")

        self._keep_last = keep_last
        self._async = async_save
        # Managers open only over existing directories (opened on first save otherwise):
        # reading must not add directories to a run, which may be read-only.
        self._latest = self._open(LATEST_DIR) if (self.run_dir / LATEST_DIR).is_dir() else None
        self._best = self._open(BEST_DIR) if (self.run_dir / BEST_DIR).is_dir() else None
        self._best_score, self._best_tie = self._read_best_score()
        self._unreadable: set[Path] = set()  # step dirs a restore found damaged

    # ---- bookkeeping

    def _open(self, name: str) -> ocp.CheckpointManager:
        orbax = _orbax()
        options = orbax.CheckpointManagerOptions(
            max_to_keep=self._keep_last if name == LATEST_DIR else 1,
            enable_async_checkpointing=self._async,
            create=True,
            # Both managers save at once when a validation sets a new best; over several
            # processes their background threads would wait on the same barrier names
            # (Orbax aborts: "Barrier ... is already ongoing"), so each gets its own.
            multiprocessing_options=orbax.options.MultiprocessingOptions(
                barrier_sync_key_prefix=f"seqjax_{name}"
            ),
        )
        return orbax.CheckpointManager(self.run_dir / name, options=options)

    def _managers(self) -> list[ocp.CheckpointManager]:
        return [m for m in (self._latest, self._best) if m is not None]

    def _step_dir(self, manager: ocp.CheckpointManager, step: int) -> Path:
        return Path(manager.directory) / str(step)

    def _read_meta(self, manager: ocp.CheckpointManager, step: int) -> dict[str, Any]:
        oa = _orbax().args
        meta = manager.restore(step, args=oa.Composite(meta=oa.JsonRestore()))["meta"]
        if not isinstance(meta, dict):
            raise ValueError(f"meta is {type(meta).__name__}, expected a JSON object")
        return meta

    def _read_best_score(self) -> tuple[float | None, float | None]:
        """``(valid_score, tie_break)`` of ``RUN/best`` (``None`` when absent)."""
        step = None if self._best is None else self._best.latest_step()
        if self._best is None or step is None:
            return None, None
        try:
            meta = self._read_meta(self._best, step)
        except Exception as e:  # any damage means "no usable best"
            warnings.warn(
                f"best checkpoint {self._step_dir(self._best, step)} is unreadable "
                f"({_short(e)}); the next validation score will replace it",
                CheckpointWarning,
                stacklevel=3,
            )
            return None, None
        score, tie = meta.get("valid_score"), meta.get("tie_break")
        return (None if score is None else float(score)), (None if tie is None else float(tie))

    def _beats_best(self, score: float | None, tie: float | None) -> bool:
        """Higher ``score`` wins; on a tie, a higher ``tie_break`` (``None`` never wins one)."""
        if score is None or math.isnan(score):
            return False
        best = self._best_score
        if best is None or score > best:
            return True
        if score < best or tie is None or math.isnan(tie):
            return False
        return self._best_tie is None or tie > self._best_tie

    def check_step_dirs(self) -> None:
        """Refuse step directories that are symbolic links before training writes here.

        Clean-up of old steps would delete through them (or fail half-way); the message says
        which one to replace by a real directory.
        """
        for name in (LATEST_DIR, BEST_DIR):
            d = self.run_dir / name
            links = sorted(p.name for p in d.iterdir() if p.is_symlink()) if d.is_dir() else []
            if links:
                raise CheckpointError(
                    f"{d / links[0]} is a symbolic link; seqjax deletes old steps and never "
                    "deletes through links: replace it with a copy of its target (or remove it)"
                )

    def _drop_from(self, manager: ocp.CheckpointManager, step: int, *, equal: bool) -> None:
        """Delete steps after ``step`` (and ``step`` itself if ``equal``) before saving it.

        Steps after it belong to a history that training abandoned by resuming from an earlier
        step; Orbax would otherwise skip every save up to its latest step.
        """
        stale = sorted(s for s in manager.all_steps() if s > step or (equal and s == step))
        if not stale:
            return
        manager.wait_until_finished()  # one of them may still be being written
        if stale[-1] > step:
            warnings.warn(
                f"{manager.directory}: replacing step(s) {stale}: training resumed before "
                f"step {step}, so they are from an abandoned run history",
                CheckpointWarning,
                stacklevel=3,
            )
        for s in stale:
            manager.delete(s)

    # ---- public API

    @property
    def best_score(self) -> float | None:
        """Validation score of ``RUN/best`` (higher is better), or ``None``."""
        return self._best_score

    def latest_step(self) -> int | None:
        """Newest complete step in ``RUN/checkpoints``, or ``None``."""
        return None if self._latest is None else self._latest.latest_step()

    def save(
        self,
        step: int,
        params: PyTree,
        opt_state: PyTree,
        meta: dict[str, Any],
        *,
        valid_score: float | None = None,
        tie_break: float | None = None,
    ) -> bool:
        """Save a latest checkpoint; also the best one if ``valid_score`` beats the best so far.

        Between equal scores, the higher ``tie_break`` wins (the train loop passes minus the
        validation loss); it is recorded in meta as ``tie_break``.

        ``meta`` must be JSON-like (arrays and PRNG keys are converted to lists); ``step`` and
        ``valid_score`` are added to it. Returns False if ``step`` is already saved (the best
        checkpoint is still updated). Steps after ``step`` found on disk are from an abandoned
        history and are replaced, with a ``CheckpointWarning``.
        """
        step = int(step)
        score = None if valid_score is None else float(valid_score)
        record = _jsonable({**meta, "step": step})
        if score is not None:
            record["valid_score"] = score
        if tie_break is not None:
            record["tie_break"] = float(tie_break)
        params_specs = array_specs(params)
        specs = {"params": params_specs, "opt_state": array_specs(opt_state)}

        # An unreadable step is rewritten; a good one is kept (Orbax skips the save), so the
        # directory never loses a complete checkpoint to a repeated save.
        oa = _orbax().args
        latest = self._latest = self._latest or self._open(LATEST_DIR)
        self._drop_from(latest, step, equal=self._step_dir(latest, step) in self._unreadable)
        saved = latest.save(
            step,
            args=oa.Composite(
                params=oa.StandardSave(params),
                opt_state=oa.StandardSave(opt_state),
                meta=oa.JsonSave({**record, _SPECS: specs}),
            ),
        )

        if self._beats_best(score, tie_break):
            # Orbax only saves above its latest step, so an older-history best goes first.
            best_manager = self._best = self._best or self._open(BEST_DIR)
            self._drop_from(best_manager, step, equal=True)
            best_manager.save(
                step,
                args=oa.Composite(
                    params=oa.StandardSave(params),
                    meta=oa.JsonSave({**record, _SPECS: {"params": params_specs}}),
                ),
            )
            self._best_score, self._best_tie = score, record.get("tie_break")
        return bool(saved)

    def restore(
        self, params_target: PyTree, opt_state_target: PyTree, step: int | None = None
    ) -> tuple[PyTree, PyTree, dict[str, Any]]:
        """Restore ``(params, opt_state, meta)`` into the exact pytree structure of the targets.

        Targets may be concrete arrays or ``jax.ShapeDtypeStruct``s. Without ``step``, the
        newest readable step is used: an unreadable one is skipped with a ``CheckpointWarning``.
        """
        available = _steps(self._latest)
        if step is None:
            steps = available
        elif step in available:
            steps = [step]
        else:
            raise CheckpointError(
                f"{self.run_dir / LATEST_DIR / str(step)}: no such checkpoint step; "
                f"available: {sorted(available)}"
            )

        def read(manager: ocp.CheckpointManager, s: int) -> tuple[PyTree, PyTree, dict]:
            meta = self._read_meta(manager, s)
            specs = meta.pop(_SPECS, {})
            where = self._step_dir(manager, s)
            for item, target in (("params", params_target), ("opt_state", opt_state_target)):
                if item in specs:
                    _check_specs(item, target, specs[item], where)
            oa = _orbax().args
            out = manager.restore(
                s,
                args=oa.Composite(
                    params=oa.StandardRestore(_abstract(params_target)),
                    opt_state=oa.StandardRestore(_abstract(opt_state_target)),
                ),
            )
            return out["params"], out["opt_state"], meta

        candidates = [(self._latest, s) for s in steps] if self._latest else []
        return self._first_readable(candidates, read)

    def restore_params(
        self, params_target: PyTree | None = None, which: str | int = "best"
    ) -> tuple[PyTree, dict[str, Any]]:
        """Restore ``(params, meta)`` for inference; the optimizer state is not read.

        ``which="best"`` uses ``RUN/best`` if present, else the latest checkpoint;
        ``which="latest"`` the reverse; an integer is that step of ``RUN/checkpoints``. With
        ``params_target`` the result has its structure and every shape is checked first;
        without it params come back as nested dicts.
        """
        if isinstance(which, int) and not isinstance(which, bool):
            if which not in _steps(self._latest):
                raise CheckpointError(
                    f"{self.run_dir / LATEST_DIR / str(which)}: no such checkpoint step; "
                    f"available: {sorted(_steps(self._latest))}"
                )
            candidates = [(self._latest, which)]
        elif which in ("best", "latest"):
            order = (self._best, self._latest) if which == "best" else (self._latest, self._best)
            candidates = [(m, s) for m in order if m is not None for s in _steps(m)]
        else:
            raise ValueError(f"which must be 'best', 'latest' or a step, got {which!r}")

        def read(manager: ocp.CheckpointManager, s: int) -> tuple[PyTree, dict]:
            meta = self._read_meta(manager, s)
            specs = meta.pop(_SPECS, {}).get("params")
            if params_target is not None:
                if specs is not None:
                    _check_specs("params", params_target, specs, self._step_dir(manager, s))
                target = _abstract(params_target)
            else:
                target = None if specs is None else target_from_specs(specs)
            oa = _orbax().args
            args = oa.Composite(params=oa.StandardRestore(target))
            return manager.restore(s, args=args)["params"], meta

        return self._first_readable(candidates, read)

    def _first_readable(
        self,
        candidates: list[tuple[ocp.CheckpointManager, int]],
        read: Callable[[ocp.CheckpointManager, int], T],
    ) -> T:
        if not candidates:
            raise CheckpointError(
                f"no checkpoints in {self.run_dir}; train with `seqjax train --out {self.run_dir}`"
            )
        _quiet_failed_read_aftermath()  # before reading: echoes can come while it unwinds
        errors = []
        for i, (manager, step) in enumerate(candidates):
            where = self._step_dir(manager, step)
            try:
                return read(manager, step)
            except CheckpointError:
                raise  # the model does not fit: an older step will not fit either
            except Exception as e:  # Orbax/TensorStore raise many types for damage
                self._unreadable.add(where)
                errors.append(f"{where} ({_short(e)})")
                if i + 1 < len(candidates):
                    fallback = self._step_dir(*candidates[i + 1])
                    warnings.warn(
                        f"checkpoint {where} is unreadable ({_short(e)}); using {fallback}",
                        CheckpointWarning,
                        stacklevel=3,
                    )
        raise CheckpointError(
            f"no readable checkpoint in {self.run_dir}: {'; '.join(errors)}; "
            "restore the run directory from a backup or train again"
        )

    def wait(self) -> None:
        """Block until pending asynchronous saves are on disk."""
        for manager in self._managers():
            manager.wait_until_finished()

    def close(self) -> None:
        """Finish pending saves and release Orbax's resources."""
        for manager in self._managers():
            manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
