"""`prepare`: text files -> tokenizer + ArrayRecord shards + manifest, equal to the in-memory path."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from seqjax.data import (
    DataError,
    drop_empty_pairs,
    load_bundled,
    load_tokenizers,
    read_parallel,
    tokenize_pairs,
    train_tokenizers,
)
from seqjax.data import prepare as prep
from seqjax.data.prepare import PrepareOptions, file_sha256, is_prepared, prepare
from seqjax.data.shards import decode_pair, load_lengths, read_manifest, split_paths

VOCAB = 500
OPTS = PrepareOptions(vocab_size=VOCAB)


def _records(data_dir: Path, split: str = "train") -> list[tuple[list[int], list[int]]]:
    import grain

    paths, _ = split_paths(data_dir, split)
    src = grain.sources.ArrayRecordDataSource([str(p) for p in paths])
    return [tuple(x.tolist() for x in decode_pair(src[i])) for i in range(len(src))]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, Path]:
    """300 bundled pairs with a blank side, a control character, CRLF and a BOM mixed in."""
    pt = load_bundled("bible_en_fr", "train")
    src, tgt = pt.src[:300], pt.tgt[:300]
    src[4], tgt[7], src[10] = "   ", "\x01", src[10] + "\x02"
    d = tmp_path_factory.mktemp("prep")
    s, t = d / "train.en", d / "train.fr"
    s.write_bytes(("\ufeff" + "\r\n".join(src) + "\r\n").encode())
    t.write_text("\n".join(tgt) + "\n", encoding="utf-8")
    vs, vt = d / "valid.en", d / "valid.fr"
    vs.write_text("\n".join(pt.src[300:340]) + "\n", encoding="utf-8")
    vt.write_text("\n".join(pt.tgt[300:340]) + "\n", encoding="utf-8")
    return s, t, vs, vt


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory, corpus) -> prep.Prepared:  # noqa: ANN001
    s, t, vs, vt = corpus
    out = tmp_path_factory.mktemp("out") / "data"
    return prepare(s, t, out, valid_src=vs, valid_tgt=vt, options=OPTS, workers=0)


def test_same_tokenizer_and_pairs_as_the_in_memory_path(prepared, corpus, tmp_path) -> None:  # noqa: ANN001
    s, t, _, _ = corpus
    text, _ = drop_empty_pairs(read_parallel(s, t))
    toks = train_tokenizers(text.src, text.tgt, VOCAB, tmp_path)
    assert load_tokenizers(prepared.path / "tokenizer")[0] == toks[0]
    pairs = tokenize_pairs(text, *toks)
    assert _records(prepared.path) == list(zip(pairs.src, pairs.tgt, strict=True))
    lengths = load_lengths(prepared.path, "train")
    assert lengths.tolist() == [[len(a), len(b)] for a, b in zip(pairs.src, pairs.tgt, strict=True)]


def test_manifest_records_counts_reasons_and_checksums(prepared, corpus) -> None:  # noqa: ANN001
    s, t, vs, _ = corpus
    m = read_manifest(prepared.path)
    assert m == prepared.manifest and m["complete"]
    train = m["splits"]["train"]
    assert train["lines"] == 300 and train["pairs"] == 298
    assert train["skipped"] == {"empty_side": 2}
    assert train["control_chars_replaced"] == 2
    assert sum(train["length_histogram"]["needed_positions"]) == 298
    assert m["files"]["src"]["sha256"] == file_sha256(s)
    assert m["files"]["tgt"]["sha256"] == file_sha256(t)
    assert m["files"]["valid_src"]["sha256"] == file_sha256(vs)
    assert m["tokenizer"]["sample_sentences"] == 2 * 298  # joint: both sides of every pair
    assert m["tokenizer"]["vocab_size"] == VOCAB and len(m["tokenizer"]["sha256"]) == 64
    assert m["splits"]["valid"]["pairs"] == 40


def test_validation_text_kept_for_bleu(prepared, corpus) -> None:  # noqa: ANN001
    from seqjax.data.shards import read_text

    _, _, vs, vt = corpus
    ref = read_parallel(vs, vt)
    assert read_text(prepared.path, "valid") == (ref.src, ref.tgt)


def test_rerun_is_a_no_op_and_a_change_reprepares(prepared, corpus) -> None:  # noqa: ANN001
    s, t, vs, vt = corpus
    before = (prepared.path / "manifest.json").stat().st_mtime_ns
    again = prepare(s, t, prepared.path, valid_src=vs, valid_tgt=vt, options=OPTS)
    assert again.reused and again.manifest == prepared.manifest
    assert (prepared.path / "manifest.json").stat().st_mtime_ns == before
    assert is_prepared(prepared.path, s, t, valid_src=vs, valid_tgt=vt, options=OPTS)
    assert not is_prepared(prepared.path, s, t, options=OPTS)  # the validation split counts
    other = prepare(s, t, prepared.path, options=PrepareOptions(vocab_size=VOCAB, seed=1))
    assert not other.reused and other.manifest["key"] != prepared.manifest["key"]
    assert not is_prepared(prepared.path, s, t, valid_src=vs, valid_tgt=vt, options=OPTS)
    assert "valid" not in read_manifest(prepared.path)["splits"]
    prepare(s, t, prepared.path, valid_src=vs, valid_tgt=vt, options=OPTS)  # restore for others


def test_sample_is_bounded(corpus, tmp_path) -> None:  # noqa: ANN001
    s, t, _, _ = corpus
    opts = PrepareOptions(vocab_size=VOCAB, sample_sentences=200)
    m = prepare(s, t, tmp_path / "d", options=opts, workers=0).manifest
    assert m["tokenizer"]["sample_sentences"] == 200
    assert m["splits"]["train"]["pairs"] == 298  # the sample bounds the tokenizer only


def test_worker_processes_write_the_same_dataset(prepared, corpus, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    s, t, _, _ = corpus
    monkeypatch.setattr(prep, "CHUNK_LINES", 7)  # many chunks, a short last one
    opts = PrepareOptions(vocab_size=VOCAB, pairs_per_shard=50)
    many = prepare(s, t, tmp_path / "w", options=opts, workers=2)
    assert _records(many.path) == _records(prepared.path)
    got, want = many.manifest["splits"]["train"], prepared.manifest["splits"]["train"]
    assert len(got.pop("shards")) == 6 and len(want["shards"]) == 1
    assert got.pop("pairs_per_shard") == 50
    assert got == {k: v for k, v in want.items() if k not in ("shards", "pairs_per_shard")}


def test_existing_tokenizer_is_reused(prepared, corpus, tmp_path) -> None:  # noqa: ANN001
    s, t, _, _ = corpus
    opts = PrepareOptions(vocab_size=VOCAB, tokenizer=str(prepared.path / "tokenizer"))
    m = prepare(s, t, tmp_path / "d", options=opts, workers=0).manifest
    assert m["tokenizer"]["sha256"] == prepared.manifest["tokenizer"]["sha256"]
    assert m["tokenizer"]["sample_sentences"] == 0
    assert _records(tmp_path / "d") == _records(prepared.path)


def _error(*args, **kwargs) -> str:  # noqa: ANN002, ANN003
    with pytest.raises(DataError) as err:
        prepare(*args, options=OPTS, workers=0, **kwargs)
    msg = str(err.value)
    assert "\n" not in msg, msg
    return msg


def _no_dataset_left(out: Path) -> None:
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.*"))


def test_reader_errors_hold_and_leave_nothing(tmp_path: Path) -> None:
    s, t, out = tmp_path / "a.en", tmp_path / "a.fr", tmp_path / "out"
    s.write_bytes(b"ok\nfine\nL'\xe9t\xe9\n")
    t.write_bytes(b"x\ny\nz\n")
    msg = _error(s, t, out)
    assert msg.startswith(f"{s}:3: invalid UTF-8") and "column 3" in msg
    _no_dataset_left(out)
    s.write_bytes(b"a\nb\nc\n")
    t.write_bytes(b"x\ny\n")
    with pytest.raises(DataError) as ref:
        read_parallel(s, t)
    assert _error(s, t, out) == str(ref.value)
    t.write_bytes(b"\n\n \n")
    assert _error(s, t, out) == f"{t}: file is empty; give a file with one sentence per line"
    _no_dataset_left(out)
    assert "valid_src and valid_tgt" in _error(s, s, out, valid_src=s)


def test_interrupted_prepare_leaves_no_dataset(corpus, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    s, t, _, _ = corpus
    out = tmp_path / "data"

    def killed(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise KeyboardInterrupt

    monkeypatch.setattr(prep, "write_split", killed)
    with pytest.raises(KeyboardInterrupt):
        prepare(s, t, out, options=OPTS, workers=0)
    _no_dataset_left(out)
    with pytest.raises(DataError, match="not a prepared dataset"):
        read_manifest(out)
    monkeypatch.undo()
    # A kill -9 leaves the temp dir of a dead process: the next prepare removes it.
    stale = tmp_path / ".data.tmp-999999999"
    (stale / "train").mkdir(parents=True)
    assert not prepare(s, t, out, options=OPTS, workers=0).reused
    assert not stale.exists() and json.loads((out / "manifest.json").read_text())["complete"]


def test_refuses_to_replace_a_directory_that_is_not_a_dataset(corpus, tmp_path) -> None:  # noqa: ANN001
    s, t, _, _ = corpus
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert "not a prepared dataset" in _error(s, t, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_negative_workers_is_a_data_error_before_any_work(corpus, tmp_path) -> None:  # noqa: ANN001
    s, t, _, _ = corpus
    with pytest.raises(DataError, match=r"workers must be >= 0 .*got -2"):
        prepare(s, t, tmp_path / "ds", options=OPTS, workers=-2)
    assert not list(tmp_path.iterdir())  # nothing written, not even a temp directory


def test_lengths_are_int32_and_memory_mapped(prepared) -> None:  # noqa: ANN001
    lengths = load_lengths(prepared.path, "train")
    assert isinstance(lengths, np.memmap) and lengths.dtype == np.int32
    assert lengths.shape == (298, 2)
    assert os.path.getsize(split_paths(prepared.path, "train")[1]) < 298 * 8 + 256


def test_pair_source_reads_any_order_across_shards(corpus, tmp_path) -> None:  # noqa: ANN001
    from seqjax.data.shards import open_split

    s, t, _, _ = corpus
    out = prepare(
        s, t, tmp_path / "d", options=PrepareOptions(vocab_size=VOCAB, pairs_per_shard=40)
    )
    want = _records(out.path)  # through Grain's own ArrayRecordDataSource
    source = open_split(out.path, "train")
    assert len(source) == len(want) == 298
    ids = [297, 0, 41, 40, 39, 120, 41]
    assert [tuple(x.tolist() for x in decode_pair(r)) for r in source.read_many(ids)] == [
        want[i] for i in ids
    ]
    assert decode_pair(source[5])[1].tolist() == want[5][1]
    assert source.read_many([]) == []
    with pytest.raises(IndexError):
        source.read_many([298])
    source.close()


def test_pair_source_is_safe_to_share_between_threads(corpus, tmp_path) -> None:  # noqa: ANN001
    """Grain's prefetch threads call one source at once: each call gets its own records
    (a shared reader's seek/read pairs once interleaved and mixed batches up)."""
    import pickle
    import sys
    from concurrent.futures import ThreadPoolExecutor

    from seqjax.data.shards import open_split

    s, t, _, _ = corpus
    out = prepare(
        s, t, tmp_path / "d", options=PrepareOptions(vocab_size=VOCAB, pairs_per_shard=40)
    )
    source = open_split(out.path, "train")
    want = source.read_many(range(len(source)))
    rng = np.random.default_rng(0)
    asks = [rng.choice(len(source), size=64).tolist() for _ in range(400)]
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch between any two bytecodes, as under load
    try:
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(source.read_many, asks))
    finally:
        sys.setswitchinterval(switch)
    assert all(g == [want[i] for i in ids] for g, ids in zip(got, asks, strict=True))
    copy = pickle.loads(pickle.dumps(source))  # Grain's worker processes get a copy
    assert copy.read_many([5, 200]) == [want[5], want[200]]
    source.close()
    copy.close()
