"""Reading line-aligned parallel text files, with one-line errors that say where and what to do.

A parallel corpus is two UTF-8 files with one sentence per line; line ``i`` of the source file
translates line ``i`` of the target file. Lines are split on ``\\n`` only (not on the other
characters ``str.splitlines`` treats as breaks), so a stray form feed or ``\\u2028`` can never shift
the alignment of every following line.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

# C0 controls except tab (tab is mapped to a space without being counted), plus DEL.
_CONTROL_RE = re.compile("[\x00-\x08\x0a-\x1f\x7f]")
_BOM = "\ufeff"


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
        column = e.start - line_start + 1
        raise DataError(
            f"{name}:{line_no}: invalid UTF-8 (byte 0x{data[e.start]:02x} at column {column}); "
            "re-encode the file as UTF-8"
        ) from None
    if text.startswith(_BOM):
        text = text[1:]
    if not text.strip():
        raise DataError(f"{name}: file is empty; give a file with one sentence per line")
    lines = text.split("\n")
    if lines[-1] == "":  # the usual final newline, not an extra empty sentence
        lines.pop()
    n_control = 0
    for i, line in enumerate(lines):
        if line.endswith("\r"):
            line = line[:-1]
        line = line.replace("\t", " ")
        line, n = _CONTROL_RE.subn(" ", line)
        n_control += n
        lines[i] = line
    return lines, n_control


def _read_bytes(path: Path) -> bytes:
    if path.is_dir():
        raise DataError(f"{path}: is a directory; give the path of a text file")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; check the path") from None
    except PermissionError:
        raise DataError(f"{path}: permission denied; make the file readable") from None


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
        shorter = src_path if len(src) < len(tgt) else tgt_path
        raise DataError(
            f"{src_path}: {len(src)} lines but {tgt_path}: {len(tgt)} lines; "
            f"{shorter} ends at line {min(len(src), len(tgt))}, "
            "so find the missing or extra line and keep the files one sentence per line, aligned"
        )
    return ParallelText(src, tgt, str(src_path), str(tgt_path), n_src + n_tgt)


def drop_empty_pairs(pt: ParallelText) -> tuple[ParallelText, int]:
    """Drop pairs where either side is blank (for training); return ``(kept, n_dropped)``."""
    keep = [
        i for i, (s, t) in enumerate(zip(pt.src, pt.tgt, strict=True)) if s.strip() and t.strip()
    ]
    kept = dataclasses.replace(pt, src=[pt.src[i] for i in keep], tgt=[pt.tgt[i] for i in keep])
    return kept, len(pt) - len(keep)
