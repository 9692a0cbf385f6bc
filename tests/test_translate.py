"""``seqjax.app.translate`` (``Translator``, ``seqjax.load``) and ``seqjax translate``: output
stays line-aligned with the input, n-best output, the truncation policy for long inputs."""

from __future__ import annotations

import io
import sys

import seqjax
from seqjax.app.cli import main
from seqjax.config import DecodeConfig


def test_translate_is_line_aligned(trained, tmp_path, capsys):
    inp = tmp_path / "in.txt"
    inp.write_text("alpha beta\n\ngamma delta eps\n   \nzeta\n", encoding="utf-8")
    out = tmp_path / "out.txt"
    rc = main(["translate", "--checkpoint", str(trained), "--input", str(inp),
               "--output", str(out), "--greedy", "--max-len", "12"])  # fmt: skip
    assert rc == 0
    lines = out.read_text(encoding="utf-8").split("\n")
    assert len(lines) == 6 and lines[-1] == ""  # 5 lines, each newline-terminated
    assert lines[1] == "" and lines[3] == ""  # empty in, empty out


def test_translate_nbest_and_beam(trained, tmp_path, capsys):
    inp = tmp_path / "in.txt"
    inp.write_text("alpha beta\ngamma\n", encoding="utf-8")
    rc = main(["translate", "--checkpoint", str(trained), "--input", str(inp),
               "--beam", "3", "--n-best", "2", "--max-len", "12"])  # fmt: skip
    assert rc == 0
    rows = capsys.readouterr().out.splitlines()
    assert len(rows) == 2
    for row in rows:
        fields = row.split("\t")
        assert len(fields) == 4  # two (text, score) pairs
        assert float(fields[1]) >= float(fields[3])  # best first


def test_translate_truncates_overlong_lines_and_stays_aligned(trained, tmp_path, capsys):
    long_line = " ".join(["alpha beta gamma"] * 60)  # far more than max_len (64) tokens
    inp = tmp_path / "in.txt"
    inp.write_text(f"alpha\n{long_line}\n\n \t \ngamma delta\n", encoding="utf-8")
    out = tmp_path / "out.txt"
    rc = main(["translate", "--checkpoint", str(trained), "--input", str(inp),
               "--output", str(out), "--greedy", "--max-len", "8"])  # fmt: skip
    assert rc == 0
    err = capsys.readouterr().err
    assert "1 input line(s) longer than 64 tokens were truncated (first: line 2)" in err
    lines = out.read_text(encoding="utf-8").split("\n")
    assert len(lines) == 6 and lines[-1] == ""
    assert lines[2] == "" and lines[3] == ""  # empty / whitespace-only in, empty out


def test_translate_stdin_whitespace_and_crlf_lines_stay_aligned(trained, monkeypatch, capsys):
    data = b"alpha beta\r\n\r\n\t\r\n\x0c\r\ngamma\r\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    rc = main(["translate", "--checkpoint", str(trained), "--greedy", "--max-len", "8"])
    assert rc == 0
    out = capsys.readouterr().out.split("\n")
    assert len(out) == 6 and out[1:4] == ["", "", ""] and out[-1] == ""


def test_python_api_truncation_policy(trained):
    tr = seqjax.load(str(trained), decode_config=DecodeConfig(method="greedy", max_len=6))
    tr.buckets = (16,)  # cap source length at 16 tokens
    tr.warn_stream = io.StringIO()
    out = tr.translate(["alpha " * 40, "", "beta"])
    assert len(out) == 3 and out[1] == ""
    assert "1 input line(s) longer than 16 tokens were truncated" in tr.warn_stream.getvalue()
