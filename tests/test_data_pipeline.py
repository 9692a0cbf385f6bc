"""The Grain pipeline over prepared shards: today's batches exactly, per-process rows, exact resume."""

from pathlib import Path

import numpy as np
import pytest

from seqjax.data import (
    batch_shapes,
    drop_empty_pairs,
    epoch_batches,
    filter_long,
    iterate_batches,
    load_bundled,
    load_tokenizers,
    make_batch,
    read_parallel,
    tokenize_pairs,
)
from seqjax.data.pipeline import BatchSpec, eval_batches, split_stats, train_iterator
from seqjax.data.prepare import PrepareOptions, prepare

BUCKETS = (8, 16, 24, 32)
BATCH_TOKENS = 256
MAX_LEN = 28  # some pairs are longer: dropped exactly as filter_long drops them
KEYS = ("src", "tgt_in", "tgt_out")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """A prepared 400-pair corpus and the same pairs through today's in-memory path."""
    pt = load_bundled("bible_en_fr", "train")
    d = tmp_path_factory.mktemp("pipe")
    (d / "a.en").write_text("\n".join(pt.src[:400]) + "\n", encoding="utf-8")
    (d / "a.fr").write_text("\n".join(pt.tgt[:400]) + "\n", encoding="utf-8")
    (d / "v.en").write_text("\n".join(pt.src[400:460]) + "\n", encoding="utf-8")
    (d / "v.fr").write_text("\n".join(pt.tgt[400:460]) + "\n", encoding="utf-8")
    out = prepare(
        d / "a.en", d / "a.fr", d / "data", valid_src=d / "v.en", valid_tgt=d / "v.fr",
        options=PrepareOptions(vocab_size=500), workers=0,
    ).path  # fmt: skip
    toks = load_tokenizers(out / "tokenizer")
    text, _ = drop_empty_pairs(read_parallel(d / "a.en", d / "a.fr"))
    pairs, n_long = filter_long(tokenize_pairs(text, *toks), MAX_LEN, MAX_LEN, BUCKETS)
    assert n_long > 0
    return out, pairs


def _spec(**kw) -> BatchSpec:  # noqa: ANN003
    return BatchSpec(BATCH_TOKENS, BUCKETS, MAX_LEN, MAX_LEN, seed=5, **kw)


def _take(it, n: int) -> list[dict[str, np.ndarray]]:  # noqa: ANN001
    return [next(it) for _ in range(n)]


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return all(np.array_equal(a[k], b[k]) for k in KEYS)


def test_counts_match_filter_long(data) -> None:  # noqa: ANN001
    out, pairs = data
    per_epoch, kept, long = split_stats(out, "train", _spec())
    assert kept == len(pairs) and kept + long == 400
    plans = epoch_batches(pairs, epoch=0, seed=5, batch_tokens=BATCH_TOKENS, buckets=BUCKETS)
    assert per_epoch == len(plans)


@pytest.mark.parametrize("process_index,process_count,row_multiple", [(0, 1, 1), (1, 2, 8)])
def test_same_batches_as_the_in_memory_path(
    data, process_index, process_count, row_multiple
) -> None:  # noqa: ANN001
    out, pairs = data
    where = dict(
        process_index=process_index, process_count=process_count, row_multiple=row_multiple
    )
    old = iterate_batches(pairs, seed=5, batch_tokens=BATCH_TOKENS, buckets=BUCKETS, **where)
    it = train_iterator(out, _spec(**where))
    n = 2 * split_stats(out, "train", _spec())[0] + 3  # across two epoch boundaries
    for _ in range(n):
        epoch, index, want = next(old)
        got = next(it)
        assert (int(got["epoch"]), int(got["index"])) == (epoch, index)
        assert _same(want, got)
    it.close()


def test_shapes_are_the_fixed_bucket_shapes(data) -> None:  # noqa: ANN001
    out, _ = data
    it = train_iterator(out, _spec())
    shapes = {next(it)["src"].shape for _ in range(40)}
    it.close()
    assert shapes <= set(batch_shapes(BUCKETS, BATCH_TOKENS)) and len(shapes) > 1


def test_each_process_reads_its_own_rows_of_every_global_batch(data) -> None:  # noqa: ANN001
    out, _ = data
    whole = train_iterator(out, _spec(row_multiple=4))
    parts = [
        train_iterator(out, _spec(row_multiple=4, process_index=p, process_count=2)) for p in (0, 1)
    ]
    for _ in range(15):
        g = next(whole)
        local = [next(p) for p in parts]
        assert local[0]["src"].shape == local[1]["src"].shape
        for k in KEYS:
            assert np.array_equal(np.concatenate([x[k] for x in local]), g[k])
    for it in [whole, *parts]:
        it.close()


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_from_iterator_state_is_exact(data, workers) -> None:  # noqa: ANN001
    out, _ = data
    per_epoch = split_stats(out, "train", _spec())[0]
    it = train_iterator(out, _spec(), workers=workers)
    _take(it, per_epoch - 2)
    state = it.get_state()
    uninterrupted = _take(it, 6)  # crosses into the next epoch
    it.close()
    resumed = train_iterator(out, _spec(), workers=workers, state=state)
    again = _take(resumed, 6)
    resumed.close()
    assert [(int(b["epoch"]), int(b["index"])) for b in again] == [
        (int(b["epoch"]), int(b["index"])) for b in uninterrupted
    ]
    assert all(_same(a, b) for a, b in zip(uninterrupted, again, strict=True))
    # Resuming from the (epoch, index) kept in checkpoint metadata gives the same batches.
    b0 = uninterrupted[0]
    by_index = train_iterator(
        out, _spec(), start_epoch=int(b0["epoch"]), start_index=int(b0["index"])
    )
    assert all(_same(a, b) for a, b in zip(uninterrupted, _take(by_index, 6), strict=True))
    by_index.close()


def test_epochs_differ_and_seed_matters(data) -> None:  # noqa: ANN001
    out, _ = data
    per_epoch = split_stats(out, "train", _spec())[0]
    first = [b["src"] for b in _take(train_iterator(out, _spec()), 2 * per_epoch)]
    e0, e1 = first[:per_epoch], first[per_epoch:]
    assert not all(np.array_equal(a, b) for a, b in zip(e0, e1, strict=True))
    other = BatchSpec(BATCH_TOKENS, BUCKETS, MAX_LEN, MAX_LEN, seed=6)
    o0 = [b["src"] for b in _take(train_iterator(out, other), per_epoch)]
    assert not all(np.array_equal(a, b) for a, b in zip(e0, o0, strict=True))


def test_eval_batches_match_the_fixed_validation_order(data) -> None:  # noqa: ANN001
    out, _ = data
    toks = load_tokenizers(out / "tokenizer")
    d = out.parent
    text, _ = drop_empty_pairs(read_parallel(d / "v.en", d / "v.fr"))
    pairs, _ = filter_long(tokenize_pairs(text, *toks), MAX_LEN, MAX_LEN, BUCKETS)
    plans = epoch_batches(pairs, epoch=0, seed=0, batch_tokens=BATCH_TOKENS, buckets=BUCKETS)
    want = [make_batch(pairs, *p) for p in plans]
    got = list(eval_batches(out, _spec(process_count=2, process_index=1, row_multiple=8)))
    assert len(got) == len(want) and all(_same(a, b) for a, b in zip(want, got, strict=True))
