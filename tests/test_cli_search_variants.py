"""CLI and DecodeConfig of issue 15: --early-stopping, --diverse-groups,
--diversity-penalty, --beam-sample, --stream (tokens printed as they come), --constraints
(lexically constrained beam search), with --help and one-line errors for bad combinations."""

from __future__ import annotations

from pathlib import Path

import pytest

from seqjax.app.cli import main
from seqjax.config import ConfigError, DecodeConfig

FLAGS = [
    "--early-stopping", "--diverse-groups", "--diversity-penalty", "--beam-sample", "--stream",
    "--ensemble", "--constraints", "--stream-every",
]  # fmt: skip


def _input(tmp_path: Path, toy_corpus, n: int = 4) -> str:
    lines = (toy_corpus / "valid.src").read_text(encoding="utf-8").splitlines()[:n]
    path = tmp_path / "in.txt"
    path.write_text("\n".join([lines[0], "", *lines[1:]]) + "\n", encoding="utf-8")
    return str(path)


def test_help_lists_the_flags(capsys):
    with pytest.raises(SystemExit):
        main(["translate", "--help"])
    out = capsys.readouterr().out
    for flag in FLAGS:
        assert flag in out, flag


def test_stream_prints_what_translate_prints(trained, toy_corpus, tmp_path, capsys):
    src = _input(tmp_path, toy_corpus)
    base = ["translate", "--checkpoint", str(trained), "--input", src, "--max-len", "12"]
    assert main([*base, "--greedy"]) == 0
    plain = capsys.readouterr().out
    assert main([*base, "--greedy", "--stream"]) == 0
    streamed = capsys.readouterr().out
    assert streamed == plain and len(plain.splitlines()) == 5
    assert main([*base, "--greedy", "--stream", "--stream-every", "1"]) == 0
    assert capsys.readouterr().out == plain  # a host call per token: the same text


@pytest.mark.parametrize(
    "extra",
    [
        ["--beam", "4", "--diverse-groups", "2", "--diversity-penalty", "0.5", "--n-best", "2"],
        ["--beam", "2", "--beam-sample", "--temperature", "1.5"],
        ["--beam", "3", "--early-stopping", "true"],
    ],
)
def test_variants_translate_line_aligned(trained, toy_corpus, tmp_path, capsys, extra):
    src = _input(tmp_path, toy_corpus)
    args = ["translate", "--checkpoint", str(trained), "--input", src, "--max-len", "8"]
    assert main([*args, *extra]) == 0
    out = capsys.readouterr().out.splitlines()
    blank = "\t0.0000" if "--n-best" in extra else ""  # a blank line's n-best row
    assert len(out) == 5 and out[1] == blank
    if "--early-stopping" not in extra:  # (True may well stop at the 3 first, EOS-only ones)
        assert all(out[k] for k in (0, 2, 3, 4))


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--greedy", "--stream", "--beam", "2"], None),
        (["--stream"], "--stream needs --greedy or --sample"),
        (["--greedy", "--stream-every", "2"], "--stream-every needs --stream"),
        (["--greedy", "--stream", "--stream-every", "0"], "stream_every must be an integer >= 1"),
        (["--diversity-penalty", "0.5"], "--diversity-penalty needs --diverse-groups"),
        (["--beam", "4", "--diverse-groups", "3"], "diverse_groups (3) must divide beam_size (4)"),
        (["--greedy", "--beam-sample"], "need method beam"),
        (["--beam-sample", "--diverse-groups", "2"], "cannot be combined"),
    ],
)
def test_bad_combinations_are_one_line_errors(
    trained, toy_corpus, tmp_path, capsys, one_line_error, extra, needle
):
    src = _input(tmp_path, toy_corpus, 1)
    args = ["translate", "--checkpoint", str(trained), "--input", src, "--max-len", "4"]
    if needle is None:  # --greedy wins over --beam: fine
        assert main([*args, *extra]) == 0
        capsys.readouterr()
        return
    assert main([*args, *extra]) == 2
    one_line_error(needle)


def test_decode_config_fields_round_trip_and_checks():
    cfg = DecodeConfig(beam_size=4, diverse_groups=2, diversity_penalty=0.3, early_stopping="false")
    assert cfg.diverse_groups == 2
    with pytest.raises(ConfigError, match="early_stopping: unknown 'maybe'"):
        DecodeConfig(early_stopping="maybe")
    with pytest.raises(ConfigError, match="diversity_penalty must be >= 0"):
        DecodeConfig(diversity_penalty=-1.0)


def test_ensemble_of_a_run_with_itself_translates_as_the_run(trained, toy_corpus, tmp_path, capsys):
    src = _input(tmp_path, toy_corpus)
    base = ["translate", "--checkpoint", str(trained), "--input", src, "--max-len", "10"]
    assert main([*base, "--beam", "2"]) == 0
    alone = capsys.readouterr().out
    assert main([*base, "--beam", "2", "--ensemble", f"{trained},{trained}"]) == 0
    assert capsys.readouterr().out == alone
    assert main([*base, "--greedy"]) == 0
    greedy_alone = capsys.readouterr().out
    assert main([*base, "--greedy", "--stream", "--ensemble", str(trained)]) == 0
    assert capsys.readouterr().out == greedy_alone


# --constraints: one line per input line (the blank input line too), tab-separated phrases
CONSTRAINTS = ["GAMMA", "KAPPA", "DELTA\tZETA MU", "", "IOTA\tLAMBDA\tALPHA"]


def _constraints_file(tmp_path: Path, lines: list[str]) -> str:
    path = tmp_path / "constraints.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_constraints_appear_in_every_output(trained, toy_corpus, tmp_path, capsys):
    src = _input(tmp_path, toy_corpus)
    cons = _constraints_file(tmp_path, CONSTRAINTS)
    base = ["translate", "--checkpoint", str(trained), "--input", src, "--max-len", "8"]
    assert main([*base, "--beam", "3"]) == 0
    plain = capsys.readouterr().out.splitlines()
    assert main([*base, "--beam", "3", "--n-best", "2", "--constraints", cons]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 5 and out[1] == "\t0.0000"  # a blank input line stays blank
    for line, phrases in zip(out, CONSTRAINTS, strict=True):
        if line == out[1]:
            continue
        texts = line.split("\t")[::2]
        assert len(texts) == 2
        for text in texts:  # each of the n-best holds every phrase
            for phrase in (p for p in phrases.split("\t") if p):
                assert phrase in text, (phrase, text)
    # the phrases were not there without the constraints
    assert any(p not in plain[i] for i in (0, 2, 4) for p in CONSTRAINTS[i].split("\t") if p)


@pytest.mark.parametrize(
    "lines, extra, needle",
    [
        (CONSTRAINTS[:3], [], "3 line(s), but the input has 5"),
        (CONSTRAINTS, ["--greedy"], "--constraints needs beam search"),
        (CONSTRAINTS, ["--beam-sample"], "--constraints needs beam search"),
        (CONSTRAINTS, ["--max-new-tokens", "5"], "cannot be combined with --max-new-tokens"),
    ],
)
def test_bad_constraints_are_one_line_errors(
    trained, toy_corpus, tmp_path, capsys, one_line_error, lines, extra, needle
):
    src = _input(tmp_path, toy_corpus)
    cons = _constraints_file(tmp_path, lines)
    args = ["translate", "--checkpoint", str(trained), "--input", src, "--constraints", cons]
    assert main([*args, *extra]) == 2
    one_line_error(needle, *(["constraints.txt"] if "line(s)" in needle else []))
