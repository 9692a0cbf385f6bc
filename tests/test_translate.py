"""``seqjax.app.translate`` (``Translator``, ``seqjax.load``) and ``seqjax translate``: output
stays line-aligned with the input, n-best output, the truncation policy for long inputs."""

from __future__ import annotations

import io
import os
import subprocess
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


def _varied_sentences(toy_corpus) -> list[str]:
    """Distinct sentences of mixed lengths, not in length order (a sorted return shows)."""
    lines = (toy_corpus / "valid.src").read_text(encoding="utf-8").splitlines()
    return list(dict.fromkeys(lines))[:12]


def _rows(out: str) -> list[list[tuple[str, float]]]:
    """Parse n-best TSV rows: ``text<TAB>score<TAB>text<TAB>score...``."""
    rows = []
    for line in out.split("\n")[:-1]:
        f = line.split("\t")
        rows.append([(t, float(x)) for t, x in zip(f[0::2], f[1::2], strict=True)])
    return rows


def _same(a: list[tuple[str, float]], b: list[tuple[str, float]]) -> bool:
    return [t for t, _ in a] == [t for t, _ in b] and all(
        abs(x - y) < 2e-3 for (_, x), (_, y) in zip(a, b, strict=True)
    )


def test_line_i_is_the_translation_of_input_i(trained, toy_corpus, tmp_path, capsys):
    """Content order, not just the count: each row equals that sentence decoded alone (the
    scores tell sentences apart even where a 20-step model's texts coincide)."""
    sents = _varied_sentences(toy_corpus)
    order = sorted(range(len(sents)), key=lambda i: -len(sents[i]))
    assert order != list(range(len(sents)))
    tr = seqjax.load(str(trained))
    cfg = DecodeConfig(beam_size=2, n_best=2, min_len=2, max_len=6, batch_size=4)
    alone = [tr.translate_nbest([s], cfg)[0] for s in sents]
    # rows in length-sorted order would not match
    assert not all(_same(alone[i], alone[j]) for j, i in enumerate(order))
    inp = tmp_path / "in.txt"
    inp.write_text("\n".join(sents[:6] + [""] + sents[6:]) + "\n", encoding="utf-8")
    rc = main(["translate", "--checkpoint", str(trained), "--input", str(inp), "--beam", "2",
               "--n-best", "2", "--min-len", "2", "--max-len", "6", "--batch-size", "4"])  # fmt: skip
    assert rc == 0
    rows = _rows(capsys.readouterr().out)
    assert len(rows) == len(sents) + 1 and rows[6] == [("", 0.0)]
    del rows[6]
    for i, (row, ref) in enumerate(zip(rows, alone, strict=True)):
        assert _same(row, ref), (i, row, ref)
    assert tr.translate(sents, cfg) == [a[0][0] for a in alone]


def test_translate_nbest_matches_per_sentence_beam(trained, toy_corpus):
    sents = _varied_sentences(toy_corpus)[:8]
    tr = seqjax.load(str(trained))
    cfg = DecodeConfig(beam_size=3, n_best=3, min_len=2, max_len=8, batch_size=3)
    batched = tr.translate_nbest([*sents[:4], "", *sents[4:]], cfg)
    assert len(batched) == 9 and batched[4] == [("", 0.0)]
    del batched[4]
    for s, hyps in zip(sents, batched, strict=True):
        (single,) = tr.translate_nbest([s], cfg)
        assert _same(hyps, single), (s, hyps, single)
        scores = [x for _, x in hyps]
        assert len(hyps) == 3 and scores == sorted(scores, reverse=True)  # best first
    assert tr.translate(sents, cfg) == [h[0][0] for h in batched]


def test_sharded_translate_equals_unsharded_through_the_cli(trained, toy_corpus, tmp_path):
    """``seqjax translate --mesh data=4`` on 4 (host-platform) devices vs one device."""
    sents = _varied_sentences(toy_corpus)[:7]
    inp = tmp_path / "in.txt"
    inp.write_text("\n".join([*sents[:3], "", *sents[3:]]) + "\n", encoding="utf-8")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "SEQJAX_NO_COMPILE_CACHE": "1",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}  # fmt: skip
    p = subprocess.run(
        [sys.executable, "-m", "seqjax.app.cli", "translate", "--checkpoint", str(trained),
         "--input", str(inp), "--mesh", "data=4", "--beam", "2", "--n-best", "2",
         "--min-len", "2", "--max-len", "6", "--batch-size", "3"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    rows = _rows(p.stdout)
    assert len(rows) == 8 and rows[3] == [("", 0.0)]
    del rows[3]
    tr = seqjax.load(str(trained))
    cfg = DecodeConfig(beam_size=2, n_best=2, min_len=2, max_len=6, batch_size=3)
    for row, ref in zip(rows, tr.translate_nbest(sents, cfg), strict=True):
        assert _same(row, ref), (row, ref)
