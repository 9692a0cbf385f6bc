"""Progress of long loops (training, corpus translation), drawn by ``rich``.

On a terminal or in a notebook it is rich's live bar, redrawn in place; log lines printed
meanwhile appear above it. Anywhere else (a log file, CI) rich draws nothing until the end,
so a log would show no progress at all; there the same columns are printed as one plain
line at most every ``log_interval`` seconds (and once at the end): a log reads line by
line, with no carriage returns and no escape codes.

rich is imported when the first bar is made: importing ``rich.progress`` takes ~0.1 s,
which a ``seqjax translate`` of a few lines from stdin (no bar) would pay at start-up.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from rich.progress import ProgressColumn

LOG_INTERVAL = 10.0  # seconds between progress lines in a log
LOG_WIDTH = 200  # characters a progress line in a log may take before rich shortens it


def _format(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@functools.cache
def _time_remaining_column() -> type[ProgressColumn]:
    """The ``_TimeRemaining`` column class (made on first use, as rich is imported then)."""
    from rich.progress import ProgressColumn, Task
    from rich.text import Text

    class _TimeRemaining(ProgressColumn):
        """Time left at the average rate since the loop (re)started: ``H:MM:SS``.

        rich's own column needs two updates inside its speed window; a train loop updates
        every ``log_every`` steps (minutes apart in a fine-tune) and a resumed one has had a
        single update at its first line, so it would show ``-:--:--``. The rate here counts
        only this process's steps (``task.fields["initial"]`` are the resumed ones).
        """

        def render(self, task: Task) -> Text:
            done = task.completed - task.fields.get("initial", 0)
            elapsed = task.elapsed
            if task.total is None or not elapsed or done <= 0:
                return Text("-:--:--", style="progress.remaining")
            left = max(task.total - task.completed, 0) * elapsed / done
            minutes, seconds = divmod(int(round(left)), 60)
            hours, minutes = divmod(minutes, 60)
            return Text(f"{hours}:{minutes:02d}:{seconds:02d}", style="progress.remaining")

    return _TimeRemaining


class Progress:
    """``Progress(total, desc)``; call ``update(n, **fields)`` and ``close()``.

    ``total`` None means an unknown length (e.g. a time budget). ``fields`` (loss, ...) are
    shown after the counts. ``initial`` is where a resumed loop starts counting;
    ``disable`` turns it off (e.g. on every process but the first); ``clock`` (seconds,
    default ``time.monotonic``) is for tests.
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
        clock: Callable[[], float] | None = None,
    ) -> None:
        from rich.console import Console
        from rich.progress import Progress as RichProgress

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
        self._bar = RichProgress(
            *self._columns(),
            console=self.console,
            disable=disable or not self.live,
            get_time=clock,
        )
        self._task = self._bar.add_task(
            desc, total=total, completed=initial, fields="", initial=initial
        )
        self._last_line = time.monotonic()
        self._printed: int | None = None  # count shown by the last log line
        self._bar.start()

    def _columns(self) -> list[ProgressColumn]:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        bar = [BarColumn()] if self.live else []
        return [
            TextColumn("{task.description}:"),
            *bar,
            MofNCompleteColumn(),  # "n/?" when the total is unknown
            TextColumn(self.unit),
            TaskProgressColumn(),
            TextColumn("{task.fields[fields]}"),
            TimeElapsedColumn(),
            _time_remaining_column()(),
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
