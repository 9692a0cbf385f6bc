"""A dependency-free progress line for long loops (training, corpus translation).

On a terminal it redraws one line in place; elsewhere (logs, CI) it prints a line at
most every ``min_interval`` seconds so logs stay short.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _fmt_seconds(s: float) -> str:
    s = int(max(s, 0))
    return (
        f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"
        if s >= 3600
        else f"{s // 60:d}:{s % 60:02d}"
    )


class Progress:
    """``Progress(total, desc)``; call ``update(n, **fields)`` and ``close()``.

    ``total`` may be None (unknown length) or a time budget is shown via ``eta``.
    """

    def __init__(
        self,
        total: int | None,
        desc: str,
        *,
        stream: TextIO | None = None,
        min_interval: float = 0.5,
        unit: str = "it",
    ) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.stream = stream or sys.stderr
        self.tty = getattr(self.stream, "isatty", lambda: False)()
        self.min_interval = min_interval if self.tty else max(min_interval, 10.0)
        self.n = 0
        self.start = time.monotonic()
        self._last = 0.0
        self._fields: dict[str, object] = {}

    def update(self, n: int = 1, *, force: bool = False, **fields: object) -> None:
        self.n += n
        self._fields.update(fields)
        now = time.monotonic()
        if force or now - self._last >= self.min_interval:
            self._last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = now - self.start
        if self.total:
            pct = 100.0 * self.n / self.total
            eta = elapsed / max(self.n, 1) * (self.total - self.n)
            head = f"{self.desc}: {self.n}/{self.total} {self.unit} ({pct:.0f}%)"
            tail = f"[{_fmt_seconds(elapsed)}<{_fmt_seconds(eta)}]"
        else:
            head = f"{self.desc}: {self.n} {self.unit}"
            tail = f"[{_fmt_seconds(elapsed)}]"
        extra = " ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in self._fields.items()
        )
        line = f"{head} {extra} {tail}".replace("  ", " ")
        if self.tty:
            self.stream.write("\r\x1b[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        self._draw(time.monotonic())
        if self.tty:
            self.stream.write("\n")
        self.stream.flush()
