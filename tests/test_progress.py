"""``seqjax.app.progress``: in a log (no terminal) progress is plain lines, never redrawn."""

from __future__ import annotations

import io

from seqjax.app.progress import Progress


def test_log_stream_gets_plain_lines():
    buf = io.StringIO()
    bar = Progress(100, "train", unit="steps", stream=buf, initial=10, log_interval=0.0)
    bar.update(5, loss=1.23456, tok_s=123)
    bar.update(5)
    bar.close()
    text = buf.getvalue()
    assert "\r" not in text and "\x1b" not in text  # no redraws, no escape codes
    lines = text.splitlines()
    assert len(lines) == 2  # one per update; close adds none when nothing changed
    assert lines[0].startswith("train:") and "15/100 steps" in lines[0]
    assert "loss=1.235" in lines[0] and "tok_s=123" in lines[0]
    assert "20/100" in lines[1] and bar.n == 20


def test_log_lines_are_rate_limited_and_disable_is_silent():
    buf = io.StringIO()
    bar = Progress(None, "translate", unit="sent", stream=buf)  # default: a line per 10 s
    for _ in range(50):
        bar.update(1)
    bar.close()
    lines = buf.getvalue().splitlines()
    assert len(lines) == 1 and "50/?" in lines[0]  # within 10 s: the closing line only
    quiet = io.StringIO()
    off = Progress(10, "train", stream=quiet, disable=True)
    off.update(3)
    off.close()
    assert quiet.getvalue() == "" and off.n == 3


def test_log_shows_time_remaining_for_sparse_updates_and_whole_counts():
    """A train loop updates every ``log_every`` steps, often > 30 s apart: the log still
    shows a time remaining from the rate (not "-:--:--"), and long counts are not cut."""
    buf = io.StringIO()
    now = [0.0]  # a clock that 45 s pass on between updates
    bar = Progress(6000, "train", unit="steps", stream=buf, log_interval=0.0, clock=lambda: now[0])
    for _ in range(3):
        now[0] += 45.0
        bar.update(50, loss=3.14159, tok_s=1500, epoch=1, min=12.5)
    bar.close()
    last = buf.getvalue().splitlines()[-1]
    assert "150/6000 steps" in last and "…" not in last, last
    # 100 steps per 90 s leave 5,850 steps: 5,265 s = 1:27:45.
    assert last.endswith("1:27:45"), last


def test_resumed_loop_shows_time_remaining_from_its_first_update():
    """A resumed fine-tune logs every 50 steps: its first line already has a time left,
    from this process's steps only (not the 100 restored ones)."""
    buf = io.StringIO()
    now = [0.0]
    bar = Progress(
        400, "train", unit="steps", stream=buf, initial=100, log_interval=0.0, clock=lambda: now[0]
    )
    now[0] += 60.0
    bar.update(50)
    first = buf.getvalue().splitlines()[0]
    # 50 steps per 60 s leave 250 steps: 300 s.
    assert "150/400 steps" in first and first.endswith("0:05:00"), first
    now[0] += 60.0
    bar.update(250)
    bar.close()
    assert buf.getvalue().splitlines()[-1].endswith("0:00:00")
