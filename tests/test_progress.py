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
