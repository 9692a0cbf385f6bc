"""Training and validation batches from a prepared directory, through Grain.

The pipeline is a Grain ``MapDataset`` indexed by *global batch number* ``j``: batch ``j`` is
batch ``j % B`` of epoch ``j // B`` (``B`` batches per epoch, the same every epoch), planned by
``batching.plan_epoch`` from the pairs' lengths alone, so it is bit-for-bit the batch today's
in-memory ``iterate_batches`` gives. Each element reads only this process's rows of the
global batch (``host_plan``) from the ArrayRecord shards. Grain then adds worker processes,
prefetching, and an iterator whose ``get_state()``/``set_state()`` resumes exactly.

Shapes are ``batching.batch_shapes(buckets, batch_tokens)`` (split by process and padded to
the mesh's data axis like today): no new shapes, so no new compiles.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grain
import numpy as np

from seqjax.data import shards
from seqjax.data.batching import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    BatchPlan,
    TokenizedPairs,
    batches_per_epoch,
    fits,
    host_plan,
    make_batch,
    needed_lengths,
    plan_epoch,
)
from seqjax.data.reader import DataError


def _ensure_absl_flags() -> None:
    """Grain reads absl flags; a program that never parsed them (any non-absl app) must say so."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


@dataclasses.dataclass(frozen=True)
class BatchSpec:
    """How a split is cut into batches (the fields of ``TrainConfig`` that matter here)."""

    batch_tokens: int
    buckets: tuple[int, ...]
    max_src_len: int
    max_tgt_len: int
    seed: int = 0
    row_multiple: int = 1
    process_index: int = 0
    process_count: int = 1
    pad_id: int = PAD_ID
    bos_id: int = BOS_ID
    eos_id: int = EOS_ID

    def __post_init__(self) -> None:
        # A sorted tuple: hashable (stats are cached per spec) and order-independent.
        object.__setattr__(self, "buckets", tuple(sorted(int(b) for b in self.buckets)))


def kept_pairs(lengths_Nx2: np.ndarray, spec: BatchSpec) -> np.ndarray:
    """Record ids of the pairs that fit the length limits (``filter_long``'s rule), in order."""
    return np.flatnonzero(
        fits(lengths_Nx2[:, 0], lengths_Nx2[:, 1], spec.max_src_len, spec.max_tgt_len, spec.buckets)
    )


class _Batcher:
    """Global batch number -> this process's padded batch. Picklable for Grain's workers.

    Opens the shards and plans epochs lazily in whichever process runs it, keeping the plans
    of the most recent epoch only (memory independent of how many epochs run).
    """

    def __init__(self, data_dir: str, split: str, spec: BatchSpec, per_epoch: int) -> None:
        self.data_dir, self.split, self.spec, self.per_epoch = data_dir, split, spec, per_epoch
        self._state: dict[str, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_state": {}}

    def _open(self) -> dict[str, Any]:
        if not self._state:
            lengths = shards.load_lengths(self.data_dir, self.split)
            kept = kept_pairs(lengths, self.spec)
            self._state = {
                "source": shards.open_split(self.data_dir, self.split),
                "kept": kept,
                "needed": needed_lengths(lengths[kept, 0], lengths[kept, 1]),
                "epoch": None,
                "plans": [],
            }
        return self._state

    def plans(self, epoch: int) -> list[BatchPlan]:
        st = self._open()
        if st["epoch"] != epoch:
            s = self.spec
            st["plans"] = plan_epoch(
                st["needed"], epoch=epoch, seed=s.seed, batch_tokens=s.batch_tokens,
                buckets=s.buckets,
            )  # fmt: skip
            st["epoch"] = epoch
        return st["plans"]

    def __call__(self, j: int, _: Any = None) -> dict[str, np.ndarray]:
        epoch, index = divmod(int(j), self.per_epoch)
        s = self.spec
        plan = host_plan(
            self.plans(epoch)[index],
            row_multiple=s.row_multiple,
            process_index=s.process_index,
            process_count=s.process_count,
        )
        st = self._state
        records = st["source"].read_many(st["kept"][plan.indices])  # maybe none: all-PAD rows
        pairs = [shards.decode_pair(r) for r in records]
        local = TokenizedPairs([p[0] for p in pairs], [p[1] for p in pairs])
        batch = make_batch(
            local, range(len(local)), plan.length, plan.rows,
            pad_id=s.pad_id, bos_id=s.bos_id, eos_id=s.eos_id,
        )  # fmt: skip
        batch["epoch"], batch["index"] = np.int64(epoch), np.int64(index)
        return batch


@functools.lru_cache(maxsize=8)
def _per_epoch(data_dir: str, split: str, spec: BatchSpec) -> tuple[int, int, int]:
    """``(batches per epoch, pairs kept, pairs too long)`` for a split and spec."""
    lengths = shards.load_lengths(data_dir, split)
    kept = kept_pairs(lengths, spec)
    needed = needed_lengths(lengths[kept, 0], lengths[kept, 1])
    n = batches_per_epoch(needed, batch_tokens=spec.batch_tokens, buckets=spec.buckets)
    return n, len(kept), len(lengths) - len(kept)


def split_stats(data_dir: str | Path, split: str, spec: BatchSpec) -> tuple[int, int, int]:
    """``(batches per epoch, pairs kept, pairs dropped as longer than the limits)``."""
    return _per_epoch(str(data_dir), split, spec)


def batch_dataset(
    data_dir: str | Path, spec: BatchSpec, *, split: str = "train", epochs: int | None = None
) -> grain.MapDataset:
    """Batches of ``split`` as a Grain ``MapDataset``: element ``j`` is global batch ``j``.

    Endless by default (``epochs=None``); each element is a dict of int32 ``src``,
    ``tgt_in``, ``tgt_out`` ``[rows, length]`` plus the int ``epoch`` and ``index`` it is.
    """
    per_epoch, n_kept, _ = split_stats(data_dir, split, spec)
    if n_kept == 0:
        raise DataError("no training pairs left to batch; check the data and length limits")
    batcher = _Batcher(str(data_dir), split, spec, per_epoch)
    ds = grain.MapDataset.range(per_epoch).repeat(epochs)
    return ds.map_with_index(batcher)


def train_iterator(
    data_dir: str | Path,
    spec: BatchSpec,
    *,
    start_epoch: int = 0,
    start_index: int = 0,
    workers: int = 0,
    prefetch: int = 8,
    state: dict[str, Any] | None = None,
) -> grain.DatasetIterator:
    """An endless, checkpointable iterator over training batches (see ``batch_dataset``).

    Starts at batch ``start_index`` of ``start_epoch``, or where ``state`` (from
    ``iterator.get_state()`` of an iterator built with the same arguments) left off.
    ``workers`` > 0 builds batches in that many processes; ``prefetch`` batches are kept
    ready (per worker, or by a thread when ``workers`` is 0).
    """
    _ensure_absl_flags()
    ds = batch_dataset(data_dir, spec)
    per_epoch = split_stats(data_dir, "train", spec)[0]
    if start_index > per_epoch:
        raise ValueError(f"start_index {start_index} is past the {per_epoch} batches of an epoch")
    start = start_epoch * per_epoch + start_index
    if start:
        ds = ds[start:]
    opts = grain.ReadOptions(num_threads=1 if workers else 2, prefetch_buffer_size=prefetch)
    it_ds = ds.to_iter_dataset(opts)
    if workers:
        it_ds = it_ds.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=prefetch)
        )
    it = iter(it_ds)
    if state is not None:
        it.set_state(state)
    return it


def eval_batches(
    data_dir: str | Path, spec: BatchSpec, *, split: str = "valid"
) -> Iterator[dict[str, np.ndarray]]:
    """One pass over ``split`` in a fixed order (epoch 0 of seed 0), for validation loss."""
    # The whole batch on every process, as the in-memory validation did.
    fixed = dataclasses.replace(spec, seed=0, row_multiple=1, process_index=0, process_count=1)
    per_epoch, n_kept, _ = split_stats(data_dir, split, fixed)
    if n_kept == 0:
        return
    batcher = _Batcher(str(data_dir), split, fixed, per_epoch)
    for j in range(per_epoch):
        yield batcher(j)
