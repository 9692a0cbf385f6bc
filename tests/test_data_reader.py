"""Reading parallel text: cleaning, and one-line errors that name the file and line."""

from pathlib import Path

import pytest

from seqjax.data import (
    DataError,
    ParallelText,
    drop_empty_pairs,
    read_lines,
    read_lines_counted,
    read_parallel,
)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _one_line(err: pytest.ExceptionInfo[DataError]) -> str:
    msg = str(err.value)
    assert "\n" not in msg, msg
    return msg


def test_reads_lines_strips_newlines_bom_and_crlf(tmp_path: Path) -> None:
    p = _write(tmp_path / "a.en", "\ufeffHello\r\nWorld\n\nÉté à Paris\n".encode())
    assert read_lines(p) == ["Hello", "World", "", "Été à Paris"]


def test_last_line_without_newline_is_kept(tmp_path: Path) -> None:
    p = _write(tmp_path / "a.en", b"one\ntwo")
    assert read_lines(p) == ["one", "two"]


def test_control_characters_replaced_and_counted(tmp_path: Path) -> None:
    # \x0c and \x0b would be line breaks for str.splitlines; here they must not shift lines.
    p = _write(tmp_path / "a.en", b"a\tb\x00c\nd\x0ce\x0bf\x7f\nmid\rline\r\n")
    lines, n = read_lines_counted(p)
    assert lines == ["a b c", "d e f ", "mid line"]
    assert n == 5  # NUL, FF, VT, DEL, lone CR; the tab is not counted


def test_parallel_counts_controls_on_both_sides(tmp_path: Path) -> None:
    src = _write(tmp_path / "a.en", b"x\x01\ny\n")
    tgt = _write(tmp_path / "a.fr", b"u\nv\x02\x03\n")
    pt = read_parallel(src, tgt)
    assert pt.src == ["x ", "y"] and pt.tgt == ["u", "v  "]
    assert pt.n_control == 3
    assert pt.src_name == str(src) and pt.tgt_name == str(tgt)


def test_invalid_utf8_names_file_line_and_column(tmp_path: Path) -> None:
    p = _write(tmp_path / "train.fr", b"ok\nfine\nL'\xe9t\xe9 arrive\n")
    with pytest.raises(DataError) as err:
        read_lines(p)
    msg = _one_line(err)
    assert msg.startswith(f"{p}:3: invalid UTF-8")
    assert "0xe9" in msg and "column 3" in msg and "re-encode" in msg


def test_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "nope.en"
    with pytest.raises(DataError) as err:
        read_lines(p)
    msg = _one_line(err)
    assert str(p) in msg and "not found" in msg


def test_directory_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        read_lines(tmp_path)
    assert "directory" in _one_line(err)


@pytest.mark.parametrize("data", [b"", b"\n\n  \n", "\ufeff\n".encode()])
def test_empty_file(tmp_path: Path, data: bytes) -> None:
    p = _write(tmp_path / "empty.en", data)
    with pytest.raises(DataError) as err:
        read_lines(p)
    msg = _one_line(err)
    assert str(p) in msg and "empty" in msg


def test_mismatched_line_counts_name_both_files(tmp_path: Path) -> None:
    src = _write(tmp_path / "train.en", b"a\nb\nc\n")
    tgt = _write(tmp_path / "train.fr", b"x\ny\n")
    with pytest.raises(DataError) as err:
        read_parallel(src, tgt)
    msg = _one_line(err)
    assert f"{src}: 3 lines" in msg and f"{tgt}: 2 lines" in msg
    assert "line 2" in msg  # where the shorter file ends


def test_parallel_text_rejects_unaligned_lists() -> None:
    with pytest.raises(DataError):
        ParallelText(["a"], [], "s", "t")


def test_drop_empty_pairs() -> None:
    pt = ParallelText(["a", "", "c", "  ", "e"], ["x", "y", " ", "w", "v"], "s", "t")
    kept, n = drop_empty_pairs(pt)
    assert n == 3
    assert kept.src == ["a", "e"] and kept.tgt == ["x", "v"]
    assert kept.src_name == "s"
