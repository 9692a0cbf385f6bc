"""Bucketed batching: fixed shapes, every pair once per epoch, no truncation, exact resume."""

import itertools

import numpy as np
import pytest

from seqjax.data import (
    DataError,
    TokenizedPairs,
    batch_shapes,
    bucket_for,
    epoch_batches,
    filter_long,
    iterate_batches,
    make_batch,
    pad_batch,
    rows_for,
)

BUCKETS = (8, 16, 24, 32)
BATCH_TOKENS = 256
PAD, BOS, EOS = 0, 2, 3


def _random_pairs(n: int, max_len: int, seed: int = 0) -> TokenizedPairs:
    """Pairs whose ids encode their index, so each row can be traced back to its pair."""
    rng = np.random.default_rng(seed)
    src, tgt = [], []
    for i in range(n):
        ls, lt = rng.integers(1, max_len + 1, size=2)
        src.append([4 + i] * int(ls))
        tgt.append([4 + i] + rng.integers(4, 50, size=int(lt) - 1).tolist())
    return TokenizedPairs(src, tgt)


@pytest.fixture(scope="module")
def pairs() -> TokenizedPairs:
    kept, n_dropped = filter_long(_random_pairs(600, 31), 32, 32, BUCKETS)
    assert n_dropped == 0  # row contents identify pairs by their original index
    return kept


def _pair_of_row(batch: dict[str, np.ndarray], r: int) -> int:
    return int(batch["src"][r, 0]) - 4


def test_bucket_for() -> None:
    assert [bucket_for(n, BUCKETS) for n in (1, 8, 9, 16, 17, 32)] == [8, 8, 16, 16, 24, 32]
    assert bucket_for(5, (32, 8, 16)) == 8
    with pytest.raises(ValueError, match="exceeds the largest bucket 32"):
        bucket_for(33, BUCKETS)


def test_rows_for_is_multiple_of_8_when_large() -> None:
    assert rows_for(16, 4096) == 256
    assert rows_for(24, 4096) == 168  # 170 rounded down
    assert rows_for(96, 4096) == 40  # 42 rounded down
    assert rows_for(32, 200) == 6  # below 8: kept as is
    assert rows_for(300, 200) == 1  # never zero
    assert batch_shapes((16, 24), 4096) == [(256, 16), (168, 24)]


def test_filter_long_drops_and_counts() -> None:
    pairs = TokenizedPairs(
        src=[[5] * 10, [5] * 33, [5] * 20, [5] * 5, [5] * 12],
        tgt=[[6] * 10, [6] * 5, [6] * 20, [6] * 32, [6] * 11],
    )
    kept, n = filter_long(pairs, max_src_len=32, max_tgt_len=32, buckets=BUCKETS)
    assert n == 2  # src 33 too long; tgt 32 + BOS/EOS = 33 too long
    assert [len(s) for s in kept.src] == [10, 20, 12]
    kept, n = filter_long(pairs, max_src_len=100, max_tgt_len=12, buckets=BUCKETS)
    assert n == 3 and [len(s) for s in kept.src] == [10, 12]  # tgt 11 + 1 fits 12; src capped


def test_shapes_come_from_the_bucket_set(pairs: TokenizedPairs) -> None:
    allowed = set(batch_shapes(BUCKETS, BATCH_TOKENS))
    for plan in epoch_batches(pairs, epoch=0, seed=0, batch_tokens=BATCH_TOKENS, buckets=BUCKETS):
        batch = make_batch(pairs, *plan)
        for key in ("src", "tgt_in", "tgt_out"):
            assert batch[key].shape in allowed and batch[key].dtype == np.int32
        assert batch["src"].shape == batch["tgt_in"].shape == batch["tgt_out"].shape


def test_every_pair_once_per_epoch_without_truncation(pairs: TokenizedPairs) -> None:
    seen = []
    plans = epoch_batches(pairs, epoch=3, seed=7, batch_tokens=BATCH_TOKENS, buckets=BUCKETS)
    for plan in plans:
        batch = make_batch(pairs, *plan)
        for r in range(len(plan.indices)):
            i = _pair_of_row(batch, r)
            assert i == plan.indices[r]
            s, t = pairs.src[i], pairs.tgt[i]
            assert plan.length == bucket_for(max(len(s), len(t) + 1), BUCKETS)
            n = len(t)
            assert batch["src"][r].tolist() == s + [PAD] * (plan.length - len(s))
            assert batch["tgt_in"][r].tolist() == [BOS, *t] + [PAD] * (plan.length - n - 1)
            assert batch["tgt_out"][r].tolist() == [*t, EOS] + [PAD] * (plan.length - n - 1)
            seen.append(i)
    assert sorted(seen) == list(range(len(pairs)))


def test_padding_rows_are_all_pad(pairs: TokenizedPairs) -> None:
    plans = epoch_batches(pairs, epoch=0, seed=0, batch_tokens=BATCH_TOKENS, buckets=BUCKETS)
    partial = [p for p in plans if len(p.indices) < p.rows]
    assert partial  # with 600 random pairs some bucket ends in a partial batch
    for plan in partial:
        batch = make_batch(pairs, *plan)
        for key in ("src", "tgt_in", "tgt_out"):
            assert not batch[key][len(plan.indices) :].any()
            assert (batch[key][: len(plan.indices), 0] != PAD).all()
    # only the last batch of each bucket may be partial
    assert len({p.length for p in partial}) == len(partial)


def test_same_seed_and_epoch_same_order(pairs: TokenizedPairs) -> None:
    def order(epoch: int, seed: int) -> list[list[int]]:
        plans = epoch_batches(
            pairs, epoch=epoch, seed=seed, batch_tokens=BATCH_TOKENS, buckets=BUCKETS
        )
        return [p.indices.tolist() for p in plans]

    assert order(2, 5) == order(2, 5)
    assert order(2, 5) != order(3, 5)
    assert order(2, 5) != order(2, 6)


def test_resume_sees_identical_batches(pairs: TokenizedPairs) -> None:
    kw = dict(seed=11, batch_tokens=BATCH_TOKENS, buckets=BUCKETS)
    n_epoch = len(epoch_batches(pairs, epoch=0, **kw))
    full = list(itertools.islice(iterate_batches(pairs, **kw), 2 * n_epoch + 5))
    assert [e for e, _, _ in full] == [0] * n_epoch + [1] * n_epoch + [2] * 5
    assert [i for _, i, _ in full[:n_epoch]] == list(range(n_epoch))
    for stop in (3, n_epoch - 1, n_epoch + 4):
        epoch, index, _ = full[stop]
        resumed = iterate_batches(pairs, start_epoch=epoch, start_index=index, **kw)
        for (e0, i0, b0), (e1, i1, b1) in zip(full[stop:], resumed, strict=False):
            assert (e0, i0) == (e1, i1)
            assert all(np.array_equal(b0[k], b1[k]) for k in b0)
    # resuming exactly at the end of an epoch starts the next one
    e, i, _ = next(iterate_batches(pairs, start_epoch=0, start_index=n_epoch, **kw))
    assert (e, i) == (1, 0)
    with pytest.raises(ValueError, match="past the"):
        next(iterate_batches(pairs, start_epoch=0, start_index=n_epoch + 1, **kw))


def test_unfiltered_long_pair_and_empty_data_are_errors() -> None:
    long_pairs = TokenizedPairs([[5] * 40], [[6] * 3])
    with pytest.raises(DataError, match="run filter_long first"):
        epoch_batches(long_pairs, epoch=0, seed=0, batch_tokens=BATCH_TOKENS, buckets=BUCKETS)
    with pytest.raises(ValueError, match="does not fit"):
        make_batch(long_pairs, [0], length=32, rows=8)
    with pytest.raises(DataError, match="no training pairs"):
        next(iterate_batches(TokenizedPairs([], []), seed=0, batch_tokens=64, buckets=BUCKETS))


def test_pad_batch() -> None:
    ids, n = pad_batch([[5, 6, 7], [8] * 10], BUCKETS)
    assert n == 2 and ids.shape == (2, 16) and ids.dtype == np.int32
    assert ids[0].tolist() == [5, 6, 7] + [0] * 13
    ids, n = pad_batch([[5, 6]], BUCKETS, rows=4)
    assert n == 1 and ids.shape == (4, 8) and not ids[1:].any()
    with pytest.raises(ValueError, match="do not fit in 1 rows"):
        pad_batch([[5], [6]], BUCKETS, rows=1)
    with pytest.raises(ValueError, match="largest bucket"):
        pad_batch([[5] * 40], BUCKETS)
