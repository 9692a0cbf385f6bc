"""``seqjax translate/evaluate --alignments FILE`` (issue 15): one Pharaoh line per input
line, in range, and each pair is the argmax of the cross-attention that the library
returns for the same sentence."""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.app.cli import main
from seqjax.app.translate import load, output_max_len
from seqjax.config import DecodeConfig
from seqjax.data import pad_batch
from seqjax.decoding import decode

MAX_LEN = ["--max-len", "10"]


def _input(tmp_path: Path, toy_corpus) -> tuple[str, list[str]]:
    lines = (toy_corpus / "valid.src").read_text(encoding="utf-8").splitlines()[:4]
    lines = [lines[0], "", *lines[1:], "  "]  # blank lines give empty alignment lines
    path = tmp_path / "in.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path), lines


def _pairs(line: str) -> list[tuple[int, int]]:
    return [tuple(int(x) for x in p.split("-")) for p in line.split()]


def _library_attention(tr, sentence: str, cfg: DecodeConfig):
    """Tokens [L] and alignments [L, S] of ``sentence`` from ``decode`` called directly."""
    ids = tr.src_tokenizer.encode([sentence])[0]
    src, _ = pad_batch([ids], tr.buckets, tr.config.pad_id, 1)
    src = jnp.asarray(src)
    m, p, c = tr.model, tr.params, tr.config
    mask = src != c.pad_id
    max_len = output_max_len(cfg, src.shape[1], c.max_len)
    cache = m.init_cache(p, m.encode(p, src, mask), mask, max_len)
    r = decode(m.step, cache, cfg, params=p, max_len=max_len, src_mask=mask,
               bos_id=c.bos_id, eos_id=c.eos_id, pad_id=c.pad_id)  # fmt: skip
    return ids, np.asarray(r.tokens[0, 0]), np.asarray(r.alignments[0, 0])


def test_translate_alignments_are_the_argmax_of_the_librarys_attention(
    trained, toy_corpus, tmp_path, capsys
):
    src, lines = _input(tmp_path, toy_corpus)
    out, align = tmp_path / "out.txt", tmp_path / "align.txt"
    args = ["translate", "--checkpoint", str(trained), "--input", src, "--greedy", *MAX_LEN]
    assert main([*args, "--output", str(out), "--alignments", str(align)]) == 0
    texts = out.read_text(encoding="utf-8").splitlines()
    rows = align.read_text(encoding="utf-8").split("\n")
    assert rows[-1] == "" and len(rows) - 1 == len(lines) == len(texts)  # line-aligned
    tr = load(trained)
    cfg = DecodeConfig(method="greedy", max_len=10, outputs=("alignments",))
    c = tr.config
    for sentence, text, row in zip(lines, texts, rows, strict=False):
        pairs = _pairs(row)
        if not sentence.strip():
            assert row == "" and text == ""
            continue
        ids, tokens, attention = _library_attention(tr, sentence, cfg)
        assert tr.tgt_tokenizer.decode(tokens[None])[0] == text  # the same hypothesis
        shown = []  # positions of the target tokens the user sees: up to EOS, no PAD/BOS
        for t, token in enumerate(tokens.tolist()):
            if token == c.eos_id:
                break
            if token not in (c.pad_id, c.bos_id):
                shown.append(t)
        assert [j for _, j in pairs] == list(range(len(shown)))  # each shown token once
        for i, j in pairs:
            assert 0 <= i < len(ids)  # a source token, never the bucket's padding
            # the library's argmax (up to float ties between rows of a batch)
            row_S = attention[shown[j], : len(ids)]
            assert row_S[i] >= row_S.max() - 1e-6, (sentence, i, j)
    assert sum(len(_pairs(r)) for r in rows) > 0


def test_n_best_alignments_are_tab_separated_and_stream_writes_the_same(
    trained, toy_corpus, tmp_path, capsys
):
    src, lines = _input(tmp_path, toy_corpus)
    base = ["translate", "--checkpoint", str(trained), "--input", src, *MAX_LEN]
    nbest = tmp_path / "nbest.txt"
    assert main([*base, "--beam", "3", "--n-best", "2", "--alignments", str(nbest)]) == 0
    outputs = capsys.readouterr().out.splitlines()
    rows = nbest.read_text(encoding="utf-8").splitlines()
    assert len(rows) == len(outputs) == len(lines)
    for sentence, row in zip(lines, rows, strict=True):
        assert len(row.split("\t")) == (2 if sentence.strip() else 1)
    plain, streamed = tmp_path / "plain.txt", tmp_path / "streamed.txt"
    assert main([*base, "--greedy", "--alignments", str(plain)]) == 0
    assert main([*base, "--greedy", "--stream", "--alignments", str(streamed)]) == 0
    capsys.readouterr()
    assert streamed.read_text() == plain.read_text() and plain.read_text().strip()


def test_evaluate_writes_one_alignment_line_per_source(trained, toy_corpus, tmp_path, capsys):
    c = toy_corpus
    align = tmp_path / "ev.align"
    args = ["evaluate", "--checkpoint", str(trained), "--src", str(c / "valid.src"),
            "--ref", str(c / "valid.tgt"), "--greedy", *MAX_LEN, "--alignments", str(align)]  # fmt: skip
    assert main(args) == 0
    capsys.readouterr()
    sources = (c / "valid.src").read_text(encoding="utf-8").splitlines()
    rows = align.read_text(encoding="utf-8").splitlines()
    assert len(rows) == len(sources)
    tokenizer = load(trained).src_tokenizer
    for sentence, row in zip(sources, rows, strict=True):
        pairs = _pairs(row)
        assert [j for _, j in pairs] == list(range(len(pairs)))
        assert all(0 <= i < len(tokenizer.encode([sentence])[0]) for i, _ in pairs)
    assert sum(len(_pairs(r)) for r in rows) > 0


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--alignments", "SAME", "--output", "SAME"], "--alignments and --output name the same"),
        (["--alignments", "nodir/a.txt"], "--alignments nodir/a.txt: directory nodir does not"),
    ],
)
def test_bad_alignments_file_is_a_one_line_error(
    trained, toy_corpus, tmp_path, one_line_error, extra, needle, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    src, _ = _input(tmp_path, toy_corpus)
    args = ["translate", "--checkpoint", str(trained), "--input", src, "--greedy"]
    assert main([*args, *extra]) == 2
    one_line_error(needle)


def test_help_documents_alignments(capsys):
    for command in ("translate", "evaluate"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = " ".join(capsys.readouterr().out.split())
        assert "--alignments FILE" in out and "Pharaoh" in out and "subword" in out
