"""``seqjax.app.evaluate`` through ``seqjax evaluate``: sacrebleu BLEU/chrF of a run."""

from __future__ import annotations

from seqjax.app.cli import main


def test_evaluate_prints_bleu_and_chrf(trained, toy_corpus, capsys):
    rc = main(["evaluate", "--checkpoint", str(trained), "--src", str(toy_corpus / "valid.src"),
               "--ref", str(toy_corpus / "valid.tgt"), "--greedy", "--max-len", "12"])  # fmt: skip
    assert rc == 0
    out = capsys.readouterr().out
    assert "BLEU = " in out and "chrF = " in out and "tok:13a" in out


def test_evaluate_mismatched_src_ref_one_line(trained, tmp_path, one_line_error):
    (tmp_path / "src.txt").write_text("alpha\nbeta\ngamma\n", encoding="utf-8")
    (tmp_path / "ref.txt").write_text("ALPHA\nBETA\n", encoding="utf-8")
    rc = main(["evaluate", "--checkpoint", str(trained), "--src", str(tmp_path / "src.txt"),
               "--ref", str(tmp_path / "ref.txt"), "--greedy"])  # fmt: skip
    assert rc == 2
    one_line_error("3 lines", "2 lines", "ref.txt")
