"""Host-side (numpy) batching into a small fixed set of padded shapes, so jit compiles once each.

Every training pair goes to the smallest length bucket ``L`` that holds it, where the pair needs
``max(len(src), len(tgt) + 1)`` positions (the target gains BOS on input and EOS on output).
Source and target are both padded to ``L``, so there is one batch shape per bucket:
``[rows_for(L, batch_tokens), L]``. Pairs that fit no bucket are dropped by ``filter_long`` and
counted, never truncated. A bucket's last partial batch is topped up with all-PAD rows, which
the loss masks out, rather than being dropped.

Epoch order is a pure function of ``(seed, epoch)``, so a run resumed at ``(epoch, index)`` sees
exactly the batches it would have seen.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import NamedTuple, Protocol

import numpy as np

from seqjax.data.reader import DataError, ParallelText

PAD_ID, BOS_ID, EOS_ID = 0, 2, 3


class _Encoder(Protocol):
    def encode(self, texts: list[str]) -> list[list[int]]: ...


@dataclasses.dataclass(frozen=True)
class TokenizedPairs:
    """Token id lists of aligned pairs (no BOS/EOS): ``src[i]`` translates to ``tgt[i]``."""

    src: list[list[int]]
    tgt: list[list[int]]

    def __post_init__(self) -> None:
        if len(self.src) != len(self.tgt):
            raise ValueError(f"{len(self.src)} source but {len(self.tgt)} target sequences")

    def __len__(self) -> int:
        return len(self.src)

    def select(self, indices: Sequence[int] | np.ndarray) -> TokenizedPairs:
        """The pairs at ``indices``, in that order."""
        return TokenizedPairs([self.src[i] for i in indices], [self.tgt[i] for i in indices])


def tokenize_pairs(pt: ParallelText, src_tok: _Encoder, tgt_tok: _Encoder) -> TokenizedPairs:
    """Encode both sides of ``pt`` (any objects with ``encode(list[str]) -> list[list[int]]``)."""
    return TokenizedPairs(src_tok.encode(pt.src), tgt_tok.encode(pt.tgt))


class BatchPlan(NamedTuple):
    """One batch of an epoch: which pairs, padded to ``length``, in ``rows`` rows.

    ``len(indices) <= rows``; ``make_batch(pairs, *plan)`` builds it.
    """

    indices: np.ndarray
    length: int
    rows: int


def bucket_for(length: int, buckets: Sequence[int]) -> int:
    """Smallest bucket ``>= length``; ``ValueError`` if ``length`` exceeds the largest."""
    for b in sorted(buckets):
        if b >= length:
            return int(b)
    raise ValueError(f"length {length} exceeds the largest bucket {max(buckets)}")


def rows_for(length: int, batch_tokens: int) -> int:
    """Rows per batch for bucket ``length``: ``batch_tokens // length``, at least 1.

    Rounded down to a multiple of 8 when it is 8 or more, so data-parallel meshes divide it.
    """
    rows = max(1, batch_tokens // length)
    return rows - rows % 8 if rows >= 8 else rows


def batch_shapes(buckets: Sequence[int], batch_tokens: int) -> list[tuple[int, int]]:
    """Every ``(rows, length)`` shape a training batch can have, one per bucket."""
    return [(rows_for(b, batch_tokens), int(b)) for b in buckets]


def _needed_lengths(pairs: TokenizedPairs) -> np.ndarray:
    """Positions each pair needs: ``max(len(src), len(tgt) + 1)`` (``[N]`` int64)."""
    return np.fromiter(
        (max(len(s), len(t) + 1) for s, t in zip(pairs.src, pairs.tgt, strict=True)),
        dtype=np.int64,
        count=len(pairs),
    )


def fits(
    src_len_N: np.ndarray,
    tgt_len_N: np.ndarray,
    max_src_len: int,
    max_tgt_len: int,
    buckets: Sequence[int],
) -> np.ndarray:
    """Boolean ``[N]``: which pairs ``filter_long`` keeps, from the side lengths alone."""
    top = max(buckets)
    src_cap, tgt_cap = min(max_src_len, top), min(max_tgt_len, top)
    return (np.asarray(src_len_N) <= src_cap) & (np.asarray(tgt_len_N) + 1 <= tgt_cap)


def filter_long(
    pairs: TokenizedPairs, max_src_len: int, max_tgt_len: int, buckets: Sequence[int]
) -> tuple[TokenizedPairs, int]:
    """Drop pairs that do not fit; return ``(kept, n_dropped)``.

    A pair fits when ``len(src) <= max_src_len``, ``len(tgt) + 1 <= max_tgt_len`` (room for BOS
    and EOS) and both fit the largest bucket.
    """
    top = max(buckets)
    src_cap, tgt_cap = min(max_src_len, top), min(max_tgt_len, top)
    keep = [
        i
        for i, (s, t) in enumerate(zip(pairs.src, pairs.tgt, strict=True))
        if len(s) <= src_cap and len(t) + 1 <= tgt_cap
    ]
    return pairs.select(keep), len(pairs) - len(keep)


def epoch_batches(
    pairs: TokenizedPairs, *, epoch: int, seed: int, batch_tokens: int, buckets: Sequence[int]
) -> list[BatchPlan]:
    """The batches of one epoch, in order: every pair exactly once (see ``plan_epoch``)."""
    return plan_epoch(
        _needed_lengths(pairs), epoch=epoch, seed=seed, batch_tokens=batch_tokens, buckets=buckets
    )


def needed_lengths(src_len_N: np.ndarray, tgt_len_N: np.ndarray) -> np.ndarray:
    """Positions each pair needs from its side lengths: ``max(src, tgt + 1)`` (``[N]`` int64)."""
    return np.maximum(np.asarray(src_len_N, np.int64), np.asarray(tgt_len_N, np.int64) + 1)


def plan_epoch(
    needed_N: np.ndarray, *, epoch: int, seed: int, batch_tokens: int, buckets: Sequence[int]
) -> list[BatchPlan]:
    """The batches of one epoch over pairs needing ``needed_N`` positions each, in order.

    Pairs are shuffled within their bucket and cut into batches of ``rows_for(bucket)``; then
    the batch order is shuffled. Both use ``np.random.default_rng((seed, epoch))``, so the
    result depends only on ``(needed_N, seed, epoch, batch_tokens, buckets)``. Plans index
    ``needed_N``; the in-memory path and the Grain pipeline share this one planner.
    """
    bucket_arr = np.asarray(sorted(buckets), dtype=np.int64)
    needed = np.asarray(needed_N, dtype=np.int64)
    if needed.size and needed.max() > bucket_arr[-1]:
        raise DataError(
            f"a pair needs {needed.max()} positions but the largest bucket is {bucket_arr[-1]}; "
            "run filter_long first or add a larger bucket"
        )
    which = np.searchsorted(bucket_arr, needed, side="left")  # smallest bucket >= needed
    rng = np.random.default_rng((seed, epoch))
    plans: list[BatchPlan] = []
    for k, length in enumerate(bucket_arr.tolist()):
        members = rng.permutation(np.flatnonzero(which == k))
        rows = rows_for(length, batch_tokens)
        for start in range(0, len(members), rows):
            plans.append(BatchPlan(members[start : start + rows], length, rows))
    return [plans[i] for i in rng.permutation(len(plans))]


def batches_per_epoch(needed_N: np.ndarray, *, batch_tokens: int, buckets: Sequence[int]) -> int:
    """How many batches ``plan_epoch`` cuts an epoch into (the same for every epoch)."""
    bucket_arr = np.asarray(sorted(buckets), dtype=np.int64)
    which = np.searchsorted(bucket_arr, np.asarray(needed_N, np.int64), side="left")
    counts = np.bincount(which, minlength=len(bucket_arr))[: len(bucket_arr)]
    rows = np.asarray([rows_for(b, batch_tokens) for b in bucket_arr.tolist()])
    return int((-(-counts // rows)).sum())


def make_batch(
    pairs: TokenizedPairs,
    indices: Sequence[int] | np.ndarray,
    length: int,
    rows: int,
    *,
    pad_id: int = PAD_ID,
    bos_id: int = BOS_ID,
    eos_id: int = EOS_ID,
) -> dict[str, np.ndarray]:
    """Padded int32 ``src``, ``tgt_in`` (BOS + y), ``tgt_out`` (y + EOS), each ``[rows, length]``.

    Rows past ``len(indices)`` are all PAD. A pair that does not fit raises ``ValueError``.
    """
    if len(indices) > rows:
        raise ValueError(f"{len(indices)} pairs do not fit in {rows} rows")
    src_BxL = np.full((rows, length), pad_id, dtype=np.int32)
    tgt_in_BxL = np.full((rows, length), pad_id, dtype=np.int32)
    tgt_out_BxL = np.full((rows, length), pad_id, dtype=np.int32)
    for r, i in enumerate(indices):
        s, t = pairs.src[i], pairs.tgt[i]
        if len(s) > length or len(t) + 1 > length:
            raise ValueError(
                f"pair {i} (src {len(s)}, tgt {len(t)} tokens) does not fit length {length}"
            )
        src_BxL[r, : len(s)] = s
        tgt_in_BxL[r, 0] = bos_id
        tgt_in_BxL[r, 1 : len(t) + 1] = t
        tgt_out_BxL[r, : len(t)] = t
        tgt_out_BxL[r, len(t)] = eos_id
    return {"src": src_BxL, "tgt_in": tgt_in_BxL, "tgt_out": tgt_out_BxL}


def host_plan(
    plan: BatchPlan, *, row_multiple: int = 1, process_index: int = 0, process_count: int = 1
) -> BatchPlan:
    """This process's part of a global batch, for data-parallel training.

    The global batch is ``plan.rows`` rounded up to a multiple of ``row_multiple`` (the
    mesh's data axis; the added rows are all PAD, so the loss masks them and no pair is
    dropped) and cut into ``process_count`` equal, contiguous row blocks; process ``p``
    gets block ``p``: the pairs that fall in it and ``rows = global_rows / process_count``.
    """
    m = row_multiple * process_count // np.gcd(row_multiple, process_count)
    global_rows = -(-plan.rows // m) * m
    per = global_rows // process_count
    lo = process_index * per
    return BatchPlan(plan.indices[lo : lo + per], plan.length, per)


def iterate_batches(
    pairs: TokenizedPairs,
    *,
    seed: int,
    batch_tokens: int,
    buckets: Sequence[int],
    start_epoch: int = 0,
    start_index: int = 0,
    row_multiple: int = 1,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
    """Yield ``(epoch, index, batch)`` forever, from batch ``start_index`` of ``start_epoch``.

    ``index`` is the batch's position within its epoch; resume a run by passing the next
    ``(epoch, index)`` it had not trained on. ``start_index`` equal to the epoch's batch count
    starts the next epoch. With ``row_multiple``/``process_index``/``process_count`` the
    batch is this process's rows of the padded global batch (``host_plan``); every process
    walks the same epoch order, so together they cover each pair exactly once.
    """
    if len(pairs) == 0:
        raise DataError("no training pairs left to batch; check the data and length limits")
    epoch, index = start_epoch, start_index
    while True:
        plans = epoch_batches(
            pairs, epoch=epoch, seed=seed, batch_tokens=batch_tokens, buckets=buckets
        )
        if index > len(plans):
            raise ValueError(f"start_index {index} is past the {len(plans)} batches of an epoch")
        for i in range(index, len(plans)):
            plan = host_plan(
                plans[i],
                row_multiple=row_multiple,
                process_index=process_index,
                process_count=process_count,
            )
            yield epoch, i, make_batch(pairs, *plan)
        epoch, index = epoch + 1, 0


def pad_batch(
    id_lists: Sequence[Sequence[int]],
    buckets: Sequence[int],
    pad_id: int = PAD_ID,
    rows: int | None = None,
) -> tuple[np.ndarray, int]:
    """Pad id lists (as given, no BOS/EOS added) for inference; return ``(ids_RxL, n_real)``.

    ``L`` is the bucket of the longest list; ``R`` is ``rows`` when given (extra rows all PAD,
    so a fixed batch size keeps one compiled shape), else ``len(id_lists)``.
    """
    n_real = len(id_lists)
    if rows is not None and n_real > rows:
        raise ValueError(f"{n_real} sequences do not fit in {rows} rows")
    length = bucket_for(max((len(x) for x in id_lists), default=1), buckets)
    out_RxL = np.full((n_real if rows is None else rows, length), pad_id, dtype=np.int32)
    for r, ids in enumerate(id_lists):
        out_RxL[r, : len(ids)] = ids
    return out_RxL, n_real
