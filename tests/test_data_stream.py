"""Streaming readers: line by line, yet the same lines and the same one-line errors as reading whole."""

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seqjax.data import DataError, read_lines, read_parallel
from seqjax.data.reader import clean_line, iter_lines, iter_parallel, line_flags
from seqjax.data.reservoir import reservoir_sample


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _error(fn, *args) -> str:  # noqa: ANN001 - any reader
    with pytest.raises(DataError) as err:
        fn(*args)
    msg = str(err.value)
    assert "\n" not in msg, msg
    return msg


CASES = [
    "\ufeffHello\r\nWorld\n\nÉté à Paris\n".encode(),
    b"one\ntwo",
    b"a\tb\x00c\nd\x0ce\x0bf\x7f\nmid\rline\r\n",
    b"\n\n x\n",
    "\u2028 \x1c\nfin\u00a0\n".encode(),
]


@pytest.mark.parametrize("data", CASES)
def test_iter_lines_equals_read_lines(tmp_path: Path, data: bytes) -> None:
    p = _write(tmp_path / "a.en", data)
    assert list(iter_lines(p)) == read_lines(p)


# Text with the characters the cleaning rules are about: controls, CR, tab, BOM, odd spaces.
_TEXT = st.text(
    alphabet=st.sampled_from(list("ab é\t\r\n\x00\x01\x0b\x0c\x1c\x7f\u2028\u00a0\ufeff")),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(text=_TEXT)
def test_streaming_and_whole_file_reading_agree(tmp_path_factory, text: str) -> None:  # noqa: ANN001
    p = _write(tmp_path_factory.mktemp("s") / "x.txt", text.encode())
    try:
        whole = read_lines(p)
    except DataError as e:
        assert _error(lambda: list(iter_lines(p))) == str(e)
        return
    assert list(iter_lines(p)) == whole
    with p.open("rb") as f:
        for n, raw in enumerate(f, 1):
            cleaned, _ = clean_line(raw, str(p), n)
            assert cleaned == whole[n - 1]
            # line_flags' ASCII fast path agrees with decoding + cleaning.
            assert line_flags(raw, str(p), n)[1] == (not cleaned.strip())


def test_invalid_utf8_error_is_the_same(tmp_path: Path) -> None:
    p = _write(tmp_path / "train.fr", b"ok\nfine\nL'\xe9t\xe9 arrive\n")
    msg = _error(lambda: list(iter_lines(p)))
    assert msg == _error(read_lines, p)
    assert msg.startswith(f"{p}:3: invalid UTF-8") and "column 3" in msg


def test_bom_counts_in_the_column_of_line_one(tmp_path: Path) -> None:
    p = _write(tmp_path / "bom.en", b"\xef\xbb\xbfab\xff\n")
    assert _error(lambda: list(iter_lines(p))) == _error(read_lines, p)


@pytest.mark.parametrize("data", [b"", b"\n\n  \n", "\ufeff\n".encode()])
def test_empty_file(tmp_path: Path, data: bytes) -> None:
    p = _write(tmp_path / "empty.en", data)
    msg = _error(lambda: list(iter_lines(p)))
    assert msg == _error(read_lines, p) and "empty" in msg


def test_missing_file_and_directory(tmp_path: Path) -> None:
    assert "not found" in _error(lambda: list(iter_lines(tmp_path / "nope")))
    assert "directory" in _error(lambda: list(iter_lines(tmp_path)))


@pytest.mark.parametrize("src,tgt", [(b"a\nb\nc\n", b"x\ny\n"), (b"a\n", b"x\ny\nz\n")])
def test_mismatched_line_counts_same_message(tmp_path: Path, src: bytes, tgt: bytes) -> None:
    s, t = _write(tmp_path / "train.en", src), _write(tmp_path / "train.fr", tgt)
    msg = _error(lambda: list(iter_parallel(s, t)))
    assert msg == _error(read_parallel, s, t)


def test_iter_parallel_pairs(tmp_path: Path) -> None:
    s = _write(tmp_path / "a.en", b"x\x01\ny\n")
    t = _write(tmp_path / "a.fr", b"u\nv\x02\x03\n")
    pt = read_parallel(s, t)
    assert list(iter_parallel(s, t)) == list(zip(pt.src, pt.tgt, strict=True))


def test_reservoir_sample_is_bounded_seeded_and_ordered() -> None:
    sample, n = reservoir_sample(iter(range(10_000)), 100, seed=1)
    assert n == 10_000 and len(sample) == 100
    assert [p for p, _ in sample] == sorted(p for p, _ in sample)
    assert all(p == x for p, x in sample)
    assert sample == reservoir_sample(iter(range(10_000)), 100, seed=1)[0]
    assert sample != reservoir_sample(iter(range(10_000)), 100, seed=2)[0]
    everything, n = reservoir_sample(iter("abc"), 5, seed=0)
    assert n == 3 and everything == [(0, "a"), (1, "b"), (2, "c")]


def test_reservoir_sample_is_uniform() -> None:
    # Each of 200 items should be picked ~ k/n = 1/4 of the time over 400 seeds.
    hits = [0] * 200
    for seed in range(400):
        for p, _ in reservoir_sample(range(200), 50, seed)[0]:
            hits[p] += 1
    first, last = sum(hits[:100]) / 100 / 400, sum(hits[100:]) / 100 / 400
    assert abs(first - 0.25) < 0.02 and abs(last - 0.25) < 0.02
