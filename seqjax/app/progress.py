"""Progress of long loops (training, corpus translation), drawn by ``rich``.

On a terminal or in a notebook it is rich's live bar, redrawn in place; log lines printed
meanwhile appear above it. Anywhere else (a log file, CI) rich draws nothing until the end,
so a log would show no progress at all; there the same columns are printed as one plain
line at most every ``log_interval`` seconds (and once at the end): a log reads line by
line, with no carriage returns and no escape codes.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    ProgressColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as _RichProgress

LOG_INTERVAL = 10.0  # seconds between progress lines in a log
LOG_WIDTH = 200  # characters a progress line in a log may take before rich shortens it
SPEED_WINDOW = 3600.0  # seconds of updates the rate (and the time remaining) averages


def _format(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class Progress:
    """``Progress(total, desc)``; call ``update(n, **fields)`` and ``close()``.

    ``total`` None means an unknown length (e.g. a time budget). ``fields`` (loss, ...) are
    shown after the counts. ``initial`` is where a resumed loop starts counting;
    ``disable`` turns it off (e.g. on every process but the first).
    """

    def __init__(
        self,
        total: int | None,
        desc: str,
        *,
        stream: TextIO | None = None,
        unit: str = "it",
        initial: int = 0,
        disable: bool = False,
        log_interval: float = LOG_INTERVAL,
    ) -> None:
        self.console = Console(file=stream or sys.stderr, highlight=False)
        self.live = (self.console.is_terminal and not self.console.is_dumb_terminal) or (
            self.console.is_jupyter
        )
        if not self.live:
            # A log has no width; rich's default (80) would cut columns ("1100/6… steps").
            self.console.width = LOG_WIDTH
        self.disabled = disable
        self.unit = unit
        self.log_interval = log_interval
        self._bar = _RichProgress(
            *self._columns(),
            console=self.console,
            disable=disable or not self.live,
            # The speed (for the time remaining) averages the updates of the last
            # SPEED_WINDOW seconds; rich's 30 s would leave none between a train loop's
            # updates (every log_every steps) and show "-:--:--" all run long.
            speed_estimate_period=SPEED_WINDOW,
        )
        self._task = self._bar.add_task(desc, total=total, completed=initial, fields="")
        self._last_line = time.monotonic()
        self._printed: int | None = None  # count shown by the last log line
        self._bar.start()

    def _columns(self) -> list[ProgressColumn]:
        bar = [BarColumn()] if self.live else []
        return [
            TextColumn("{task.description}:"),
            *bar,
            MofNCompleteColumn(),  # "n/?" when the total is unknown
            TextColumn(self.unit),
            TaskProgressColumn(),
            TextColumn("{task.fields[fields]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        ]

    @property
    def n(self) -> int:
        """Steps or items done so far."""
        return int(self._bar.tasks[0].completed)

    def update(self, n: int = 1, **fields: object) -> None:
        """Advance by ``n``; ``fields`` replace the values shown after the counts."""
        shown = " ".join(f"{k}={_format(v)}" for k, v in fields.items())
        self._bar.update(self._task, advance=n, **({"fields": shown} if fields else {}))
        now = time.monotonic()
        if not self.live and now - self._last_line >= self.log_interval:
            self._last_line = now
            self._print_line()

    def _print_line(self) -> None:
        if not self.disabled and self._printed != self.n:
            self._printed = self.n
            self.console.print(self._bar.make_tasks_table(self._bar.tasks), soft_wrap=True)

    def close(self) -> None:
        """Stop the bar (a terminal keeps its last state; a log gets a final line)."""
        self._bar.stop()
        if not self.live:
            self._print_line()
