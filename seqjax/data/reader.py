"""Reading line-aligned parallel text files, with one-line errors that say where and what to do.

A parallel corpus is two UTF-8 files with one sentence per line; line ``i`` of the source file
translates line ``i`` of the target file. Lines are split on ``\\n`` only (not on the other
characters ``str.splitlines`` treats as breaks), so a stray form feed or ``\\u2028`` can never shift
the alignment of every following line.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

# C0 controls except tab (tab is mapped to a space without being counted), plus DEL.
_CONTROL_RE = re.compile("[\x00-\x08\x0a-\x1f\x7f]")
_BOM = "\ufeff"
# Bytes that cleaning turns into spaces or removes (C0 controls, space, DEL): an ASCII line made
# only of them is blank after cleaning.
_BLANK_ASCII = bytes(range(33)) + b"\x7f"
# What ``str.strip`` removes among ASCII bytes (decides whether a file is empty).
_STRIP_ASCII = b"\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f "
# Every byte but the visible ASCII characters (33-126): a line keeping one after deleting
# these has text and is not blank, whatever else it holds.
_NOT_VISIBLE_ASCII = bytes(range(33)) + bytes(range(127, 256))


class DataError(ValueError):
    """Bad input data; the message is one line naming the file (and line) and what to do."""


@dataclasses.dataclass(frozen=True)
class ParallelText:
    """Aligned sentence pairs: ``src[i]`` translates to ``tgt[i]``.

    ``src_name``/``tgt_name`` say where each side came from (used in messages).
    ``n_control`` counts control characters replaced by spaces while reading (both sides), so
    the caller can warn about a file that was probably not plain text.
    """

    src: list[str]
    tgt: list[str]
    src_name: str = "src"
    tgt_name: str = "tgt"
    n_control: int = 0

    def __post_init__(self) -> None:
        if len(self.src) != len(self.tgt):
            raise DataError(
                f"{self.src_name}: {len(self.src)} lines but {self.tgt_name}: "
                f"{len(self.tgt)} lines; parallel files need the same number of lines"
            )

    def __len__(self) -> int:
        return len(self.src)


def decode_lines(data: bytes, name: str) -> tuple[list[str], int]:
    """Decode UTF-8 ``data`` into lines; return ``(lines, n_control_chars_replaced)``.

    Removes a leading BOM and the line terminators (``\\n`` or ``\\r\\n``); maps tabs and other
    C0 control characters / DEL to a space (only the latter are counted). ``name`` labels errors.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line_start = data.rfind(b"\n", 0, e.start) + 1
        line_no = data.count(b"\n", 0, e.start) + 1
        raise _utf8_error(name, line_no, data[e.start], e.start - line_start + 1) from None
    if text.startswith(_BOM):
        text = text[1:]
    if not text.strip():
        raise empty_error(name)
    lines = text.split("\n")
    if lines[-1] == "":  # the usual final newline, not an extra empty sentence
        lines.pop()
    n_control = 0
    for i, line in enumerate(lines):
        lines[i], n = _clean(line)
        n_control += n
    return lines, n_control


def _utf8_error(name: str, line_no: int, byte: int, column: int) -> DataError:
    return DataError(
        f"{name}:{line_no}: invalid UTF-8 (byte 0x{byte:02x} at column {column}); "
        "re-encode the file as UTF-8"
    )


def empty_error(name: str) -> DataError:
    """The one-line error for a file with no text."""
    return DataError(f"{name}: file is empty; give a file with one sentence per line")


def _clean(line: str) -> tuple[str, int]:
    """One line without its ``\\n``: drop a final CR, tabs and other controls to spaces."""
    if line.endswith("\r"):
        line = line[:-1]
    line = line.replace("\t", " ")
    line, n = _CONTROL_RE.subn(" ", line)
    return line, n


def _decode(raw: bytes, name: str, line_no: int) -> str:
    """One raw line as text, without its ``\\n`` (and without the BOM on line 1)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _utf8_error(name, line_no, raw[e.start], e.start + 1) from None
    if line_no == 1 and text.startswith(_BOM):
        text = text[1:]
    return text[:-1] if text.endswith("\n") else text


def clean_line(raw: bytes, name: str, line_no: int) -> tuple[str, int]:
    """Decode and clean one raw line (its ``\\n`` may be present) as ``decode_lines`` would.

    Returns ``(text, n_control_chars_replaced)``; line 1 loses a leading BOM. Invalid UTF-8
    raises the same one-line ``DataError`` (``name:line_no``, byte, column).
    """
    return _clean(_decode(raw, name, line_no))


def line_flags(raw: bytes, name: str, line_no: int) -> tuple[bool, bool]:
    """``(has_text, blank_after_cleaning)`` of one raw line; invalid UTF-8 raises.

    ``has_text``: not all whitespace (``str.strip``), which decides whether a file is empty;
    ``blank_after_cleaning``: ``clean_line(...)[0].strip() == ""``, which decides whether a
    training pair is dropped. Cheap: ASCII lines are judged from their bytes, and a line with
    a visible ASCII character is never blank, so only the other lines are cleaned.
    """
    if raw.isascii():
        return bool(raw.translate(None, _STRIP_ASCII)), not raw.translate(None, _BLANK_ASCII)
    text = _decode(raw, name, line_no)  # validates the UTF-8 of every line
    if raw.translate(None, _NOT_VISIBLE_ASCII):
        return True, False
    return bool(text.strip()), not _clean(text)[0].strip()


def iter_lines(path: str | Path) -> Iterator[str]:
    """Stream a UTF-8 text file line by line, cleaned exactly as ``read_lines`` cleans it.

    Never holds the file in memory. Errors are those of ``read_lines`` (missing file,
    directory, invalid UTF-8 with ``file:line``); an empty file raises when the end is reached.
    """
    path = Path(path)
    has_text = False
    with open_binary(path) as f:
        for line_no, raw in enumerate(f, 1):
            text = _decode(raw, str(path), line_no)
            has_text = has_text or bool(text.strip())
            yield _clean(text)[0]
    if not has_text:
        raise empty_error(str(path))


def iter_parallel(src_path: str | Path, tgt_path: str | Path) -> Iterator[tuple[str, str]]:
    """Stream aligned ``(src, tgt)`` lines of two files (see ``iter_lines``).

    Mismatched line counts raise the ``read_parallel`` message once the shorter file ends
    (the longer one is counted to the end to name both counts).
    """
    src_it, tgt_it = iter_lines(src_path), iter_lines(tgt_path)
    n = 0
    for s in src_it:
        t = next(tgt_it, None)
        if t is None:
            raise mismatch_error(src_path, n + 1 + sum(1 for _ in src_it), tgt_path, n)
        n += 1
        yield s, t
    rest = sum(1 for _ in tgt_it)
    if rest:
        raise mismatch_error(src_path, n, tgt_path, n + rest)


def mismatch_error(src_path: str | Path, n_src: int, tgt_path: str | Path, n_tgt: int) -> DataError:
    """The one-line error for parallel files of ``n_src`` and ``n_tgt`` lines."""
    shorter = src_path if n_src < n_tgt else tgt_path
    return DataError(
        f"{src_path}: {n_src} lines but {tgt_path}: {n_tgt} lines; "
        f"{shorter} ends at line {min(n_src, n_tgt)}, "
        "so find the missing or extra line and keep the files one sentence per line, aligned"
    )


def _check_path(path: Path) -> None:
    if path.is_dir():
        raise DataError(f"{path}: is a directory; give the path of a text file")


def open_binary(path: Path) -> BinaryIO:
    """Open ``path`` for binary reading, with ``read_lines``' one-line errors."""
    _check_path(path)
    try:
        return path.open("rb")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; check the path") from None
    except PermissionError:
        raise DataError(f"{path}: permission denied; make the file readable") from None


def _read_bytes(path: Path) -> bytes:
    with open_binary(path) as f:
        return f.read()


def read_lines_counted(path: str | Path) -> tuple[list[str], int]:
    """Read a UTF-8 text file as lines; return ``(lines, n_control_chars_replaced)``."""
    path = Path(path)
    return decode_lines(_read_bytes(path), str(path))


def read_lines(path: str | Path) -> list[str]:
    """Read a UTF-8 text file as a list of lines (see ``decode_lines`` for the cleaning).

    Use ``read_lines_counted`` to also get the number of control characters replaced.
    """
    return read_lines_counted(path)[0]


def read_parallel(src_path: str | Path, tgt_path: str | Path) -> ParallelText:
    """Read two line-aligned files; mismatched line counts raise ``DataError`` naming both."""
    src, n_src = read_lines_counted(src_path)
    tgt, n_tgt = read_lines_counted(tgt_path)
    if len(src) != len(tgt):
        raise mismatch_error(src_path, len(src), tgt_path, len(tgt))
    return ParallelText(src, tgt, str(src_path), str(tgt_path), n_src + n_tgt)


def drop_empty_pairs(pt: ParallelText) -> tuple[ParallelText, int]:
    """Drop pairs where either side is blank (for training); return ``(kept, n_dropped)``."""
    keep = [
        i for i, (s, t) in enumerate(zip(pt.src, pt.tgt, strict=True)) if s.strip() and t.strip()
    ]
    kept = dataclasses.replace(pt, src=[pt.src[i] for i in keep], tgt=[pt.tgt[i] for i in keep])
    return kept, len(pt) - len(keep)
