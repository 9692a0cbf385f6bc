"""``seqjax translate`` / ``seqjax evaluate`` promises (issue 18): one output line per input
line whatever the model emits, blank lines kept, ``--output`` checked before decoding, options
refused only where they matter, a quiet checkpoint fallback, and the CLI paths that had no
test (``--decode-config``, ``--contrastive --amateur``, ``--dtype float16``, ``--split``)."""

from __future__ import annotations

import dataclasses
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import sacrebleu

import seqjax
from seqjax.app import translate as translate_mod
from seqjax.app.cli import main
from seqjax.app.translate import single_line
from seqjax.config import DecodeConfig
from seqjax.models import build_model

# Every character some reader treats as a line end, plus TAB (splits n-best TSV fields).
BREAKING = [c for c in map(chr, range(0x110000)) if len(f"a{c}b".splitlines()) > 1 or c == "\t"]


def _lines_file(path: Path, lines: list[str]) -> str:
    path.write_text("".join(s + "\n" for s in lines), encoding="utf-8")
    return str(path)


def _sentences(toy_corpus, n: int) -> list[str]:
    return (toy_corpus / "train.src").read_text(encoding="utf-8").splitlines()[:n]


# -- 1. single-line outputs ---------------------------------------------------------------


def test_single_line_replaces_every_line_breaking_character():
    assert {"\n", "\r", "\t", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u2029"} <= set(BREAKING)
    text = "a" + "b".join(BREAKING) + "c"
    out = single_line(text)
    assert out.splitlines() == [out] and "\t" not in out
    assert len(out) == len(text) and out.count(" ") == len(BREAKING)  # one space each
    assert single_line("déjà vu — ok") == "déjà vu — ok"  # ordinary text untouched


# Byte-fallback pieces of line-breaking / tab / control bytes in the test vocabulary.
FORCED_BYTES = [0x0A, 0x09, 0x0D, 0x0B, 0x0C, 0x1C]


@pytest.fixture(scope="module")
def forced_translator(trained):
    """The trained run with a huge final-logits bias on byte pieces of newline, TAB, CR, VT,
    FF and FS: whatever the decoder, the model now emits (almost) only those characters."""
    tr = seqjax.load(str(trained))
    cfg = dataclasses.replace(tr.config, final_logits_bias=True)
    sp = tr.tgt_tokenizer._sp
    ids = [sp.piece_to_id(f"<0x{b:02X}>") for b in FORCED_BYTES]
    assert all(i > 3 for i in ids)  # real byte-fallback pieces, not unk
    bias = np.zeros(cfg.vocab_size, np.float32)
    bias[ids] = 40.0
    bias[ids[0]] = 41.0  # newline slightly favoured: greedy/beam emit it for sure
    params = {"params": {**tr.params["params"], "final_logits_bias": jnp.asarray(bias)}}
    forced = translate_mod.Translator(
        build_model(cfg), params, tr.src_tokenizer, tr.tgt_tokenizer, cfg
    )
    forced.amateur = translate_mod.Translator(
        tr.model, tr.params, tr.src_tokenizer, tr.tgt_tokenizer, tr.config
    )
    return forced


DECODERS = {
    "greedy": ["--greedy"],
    "beam-nbest": ["--beam", "3", "--n-best", "3"],
    "sample-num-samples": ["--sample", "--num-samples", "3", "--seed", "1"],
    "contrastive": ["--contrastive", "--amateur", "AMATEUR", "--beam", "2"],
}


@pytest.mark.parametrize("decoder", list(DECODERS))
def test_emitted_line_breaks_never_break_output_lines(
    decoder, forced_translator, trained, toy_corpus, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(translate_mod, "load", lambda *a, **k: forced_translator)
    lines = [*_sentences(toy_corpus, 6), "", "alpha"]
    inp = _lines_file(tmp_path / "in.txt", lines)
    flags = [str(trained) if f == "AMATEUR" else f for f in DECODERS[decoder]]
    out_file = tmp_path / "out.txt"
    rc = main(["translate", "--checkpoint", str(trained), "--input", inp,
               "--output", str(out_file), "--max-len", "6", *flags])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    text = out_file.read_text(encoding="utf-8")
    rows = text.split("\n")
    assert len(rows) == len(lines) + 1 and rows[-1] == ""
    assert text.splitlines() == rows[:-1]  # no CR/VT/FF/... inside a row either
    tsv = decoder in ("beam-nbest", "sample-num-samples")
    for src, row in zip(lines, rows, strict=False):
        fields = row.split("\t")
        hyps = fields[0::2] if tsv else fields
        assert len(fields) == (2 * 3 if tsv and src else 2 if tsv else 1), row
        if src:  # the model emitted only forced bytes: each became a space
            assert all(h and not h.strip() for h in hyps), repr(row)
        else:
            assert hyps == [""]


def test_python_api_outputs_are_single_lines(forced_translator):
    cfg = DecodeConfig(method="sample", num_samples=2, max_len=5, seed=3)
    # blank = only whitespace, NBSP and U+3000 included (they have byte pieces of their own)
    nbest = forced_translator.translate_nbest(["alpha beta", "\u00a0 \u3000", "gamma"], cfg)
    assert [len(h) for h in nbest] == [2, 1, 2] and nbest[1] == [("", 0.0)]
    for hyps in nbest:
        for text, _ in hyps:
            assert text.splitlines() in ([], [text]) and "\t" not in text


def test_sampling_at_temperature_50_keeps_one_line_per_input(trained, toy_corpus, tmp_path, capsys):
    """The report's scenario: a 20-step model sampled hot emits newline/TAB byte pieces."""
    lines = _sentences(toy_corpus, 50)
    inp = _lines_file(tmp_path / "in.txt", lines)
    base = ["translate", "--checkpoint", str(trained), "--input", inp, "--sample",
            "--temperature", "50", "--max-len", "60", "--seed", "1"]  # fmt: skip
    assert main(base) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 50 and len(out.splitlines()) == 50
    assert main([*base, "--num-samples", "3"]) == 0
    rows = capsys.readouterr().out.split("\n")
    assert len(rows) == 51 and rows[-1] == ""
    assert all(len(r.split("\t")) == 6 for r in rows[:-1])
    assert all(re.fullmatch(r"-?\d+\.\d{4}", r.split("\t")[1]) for r in rows[:-1])


# -- 2. blank input lines ------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, n",
    [
        (b"\n\n\n", 3),
        (b" \n\xc2\xa0\n\xe3\x80\x80\n\t \r\n", 4),  # space, NBSP, U+3000, TAB+CRLF
        (b"\xef\xbb\xbf\n  ", 2),  # BOM, no final newline
        (b"", 0),
    ],
    ids=["newlines", "unicode-whitespace", "bom-no-final-newline", "empty"],
)
@pytest.mark.parametrize("source", ["stdin", "file"])
def test_blank_lines_in_blank_lines_out(trained, tmp_path, monkeypatch, capsys, data, n, source):
    io_args = []
    if source == "stdin":
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    else:
        (tmp_path / "in.txt").write_bytes(data)
        io_args = ["--input", str(tmp_path / "in.txt")]
    rc = main(["translate", "--checkpoint", str(trained), *io_args, "--greedy"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert captured.out == "\n" * n


def test_blank_lines_stay_in_place_between_sentences(trained, tmp_path, capsys):
    inp = tmp_path / "in.txt"
    inp.write_bytes("alpha\n\u00a0\n\nbeta\n\u3000\n".encode())
    assert main(["translate", "--checkpoint", str(trained), "--input", str(inp), "--greedy",
                 "--max-len", "6"]) == 0  # fmt: skip
    rows = capsys.readouterr().out.split("\n")
    assert len(rows) == 6 and rows[1:3] == ["", ""] and rows[4:] == ["", ""]
    tr = seqjax.load(str(trained))
    assert [rows[0], rows[3]] == tr.translate(["alpha", "beta"], DecodeConfig("greedy", max_len=6))


# -- 6 / 9. --output checked before decoding -----------------------------------------------


@pytest.mark.parametrize("command", ["translate", "evaluate"])
@pytest.mark.parametrize("where", ["directory", "missing-directory"])
def test_bad_output_path_fails_before_decoding(
    command, where, trained, toy_corpus, tmp_path, monkeypatch, one_line_error
):
    def no_decoding(*a, **k):
        raise AssertionError("decoding started before --output was checked")

    monkeypatch.setattr(translate_mod.Translator, "translate_nbest", no_decoding)
    output = tmp_path if where == "directory" else tmp_path / "nope" / "out.txt"
    src = str(toy_corpus / "valid.src")
    io_args = (["--input", src] if command == "translate"
               else ["--src", src, "--ref", str(toy_corpus / "valid.tgt")])  # fmt: skip
    rc = main([command, "--checkpoint", str(trained), *io_args, "--output", str(output),
               "--greedy"])  # fmt: skip
    assert rc == 2
    one_line_error("--output", "is a directory" if where == "directory" else "does not exist")


@pytest.mark.parametrize("command", ["translate", "evaluate"])
@pytest.mark.parametrize("flag", ["--suppress-tokens", "--begin-suppress-tokens"])
def test_token_ids_outside_the_vocabulary_are_one_line_errors(
    command, flag, trained, toy_corpus, tmp_path, one_line_error
):
    src = str(toy_corpus / "valid.src")
    io_args = (["--input", src] if command == "translate"
               else ["--src", src, "--ref", str(toy_corpus / "valid.tgt")])  # fmt: skip
    rc = main([command, "--checkpoint", str(trained), *io_args, "--greedy", "--max-len", "4",
               flag, "3,999999"])  # fmt: skip
    assert rc == 2
    one_line_error(flag.lstrip("-").replace("-", "_"), "got 999999", "vocabulary")


# -- 11. --temperature 0 only refused where it is used -------------------------------------


@pytest.mark.parametrize(
    "flags, ok",
    [(["--beam", "2"], True), (["--greedy"], True), (["--sample"], False)],
    ids=["beam", "greedy", "sample"],
)
def test_temperature_zero_refused_only_for_sampling(trained, tmp_path, capsys, flags, ok):
    inp = _lines_file(tmp_path / "in.txt", ["alpha beta"])
    rc = main(["translate", "--checkpoint", str(trained), "--input", inp, "--temperature", "0",
               "--max-len", "6", *flags])  # fmt: skip
    captured = capsys.readouterr()
    if ok:
        assert rc == 0 and len(captured.out.splitlines()) == 1, captured.err
    else:
        err = captured.err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and "temperature must be > 0" in err


# -- 6. a damaged best checkpoint: one warning line, not hundreds of traceback lines --------


def test_fallback_from_damaged_best_prints_one_warning_line(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    damaged = 0
    for f in (run / "best").rglob("*"):
        if f.is_file() and f.parent.name == "d":  # TensorStore chunk files
            f.write_bytes(f.read_bytes()[:10])
            damaged += 1
    assert damaged
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "SEQJAX_NO_COMPILE_CACHE": "1"}
    p = subprocess.run(
        [sys.executable, "-m", "seqjax.app.cli", "translate", "--checkpoint", str(run),
         "--greedy", "--max-len", "6"],
        input="alpha beta\n\ngamma\n", capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    assert len(p.stdout.split("\n")) == 4
    err = p.stderr.strip().splitlines()
    assert len(err) == 1, p.stderr[-3000:]
    assert err[0].startswith("seqjax: warning: checkpoint ") and "unreadable" in err[0]
    assert "/checkpoints/" in err[0]  # names the checkpoint it falls back to


# -- issue 19: a warm start-up imports neither Flax nor rich --------------------------------

_TRANSLATE_AND_LIST_IMPORTS = """
import sys
from seqjax.app.cli import main
code = main(sys.argv[1:])
print("imported:", *[m for m in ("flax", "rich", "orbax") if m in sys.modules], file=sys.stderr)
sys.exit(code)
"""


@pytest.fixture(scope="module")
def trained_rnn(train_cli, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "rnn"
    train_cli(run, 3, "--preset", "rnn_tiny")
    return run


@pytest.mark.parametrize("family", ["transformer", "rnn"])
def test_a_warm_translate_imports_neither_flax_nor_rich(family, request, tmp_path):
    """The second process finds program and params in the cache: it never traces the model,
    so the Flax layers (and rich, for a bar it does not draw) stay unimported (~0.3 s of a
    ~1.6 s start-up); the output is the first process's."""
    trained = request.getfixturevalue("trained" if family == "transformer" else "trained_rnn")
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "SEQJAX_CACHE_DIR": str(tmp_path / "cache"),
        "SEQJAX_NO_COMPILE_CACHE": "0",
    }
    cmd = [sys.executable, "-c", _TRANSLATE_AND_LIST_IMPORTS, "translate", "--checkpoint",
           str(trained), "--greedy", "--max-len", "4"]  # fmt: skip
    runs = [
        subprocess.run(cmd, input="alpha beta\ngamma delta eps\n", capture_output=True,
                       text=True, env=env, timeout=300)
        for _ in range(2)
    ]  # fmt: skip
    for p in runs:
        assert p.returncode == 0, p.stderr[-3000:]
    first, second = (p.stderr.strip().splitlines()[-1].split() for p in runs)
    assert first[1] == "flax" and first[-1] == "orbax"  # traced the decoder, read Orbax
    assert second == ["imported:"]
    assert runs[1].stdout == runs[0].stdout and len(runs[0].stdout.splitlines()) == 2


# -- 12. untested CLI paths ----------------------------------------------------------------


def test_decode_config_toml_sets_the_decoder(trained, toy_corpus, tmp_path, capsys):
    inp = _lines_file(tmp_path / "in.txt", _sentences(toy_corpus, 6))
    run = ["translate", "--checkpoint", str(trained), "--input", inp]
    assert main([*run, "--beam", "3", "--n-best", "2", "--max-len", "5"]) == 0
    flags_out = capsys.readouterr().out
    toml = tmp_path / "decode.toml"
    toml.write_text('[decode]\nmethod = "beam"\nbeam_size = 3\nn_best = 2\nmax_len = 5\n')
    assert main([*run, "--decode-config", str(toml)]) == 0
    toml_out = capsys.readouterr().out
    assert toml_out == flags_out and all(len(r.split("\t")) == 4 for r in toml_out.splitlines())
    # flags override the file
    assert main([*run, "--decode-config", str(toml), "--n-best", "1"]) == 0
    assert all(len(r.split("\t")) == 1 for r in capsys.readouterr().out.splitlines())


def test_cli_contrastive_with_amateur(trained, toy_corpus, tmp_path, capsys, one_line_error):
    sents = _sentences(toy_corpus, 5)
    inp = _lines_file(tmp_path / "in.txt", [*sents, ""])
    run = ["translate", "--checkpoint", str(trained), "--input", inp, "--contrastive"]
    assert main([*run, "--max-len", "6"]) == 2
    one_line_error("--amateur")
    toml = tmp_path / "decode.toml"
    toml.write_text("[decode]\ncontrastive_alpha = 0.0\nbeam_size = 1\n")
    args = [*run, "--amateur", str(trained), "--max-len", "6", "--decode-config", str(toml)]
    assert main(args) == 0
    rows = capsys.readouterr().out.split("\n")
    assert len(rows) == 7 and rows[5] == ""
    # the same through the Python API
    tr = seqjax.load(str(trained), amateur=str(trained))
    cfg = DecodeConfig(method="contrastive", beam_size=1, contrastive_alpha=0.0, max_len=6)
    assert tr.translate(sents, cfg) == rows[:5]


def test_cli_float16_decodes_close_to_float32(trained, toy_corpus, tmp_path, capsys):
    sents = _sentences(toy_corpus, 8)
    inp = _lines_file(tmp_path / "in.txt", sents)
    run = ["translate", "--checkpoint", str(trained), "--input", inp, "--greedy", "--max-len",
           "6"]  # fmt: skip
    assert main([*run, "--dtype", "float16"]) == 0
    half = capsys.readouterr().out.splitlines()
    assert main(run) == 0
    full = capsys.readouterr().out.splitlines()
    assert len(half) == len(full) == 8
    assert sum(a == b for a, b in zip(half, full, strict=True)) >= 6
    tr16 = seqjax.load(str(trained), dtype="float16")
    tr32 = seqjax.load(str(trained))
    assert tr16.model.config.dtype == "float16"
    cfg = DecodeConfig(method="greedy", max_len=6)
    s16 = [h[0][1] for h in tr16.translate_nbest(sents, cfg)]
    s32 = [h[0][1] for h in tr32.translate_nbest(sents, cfg)]
    assert np.all(np.isfinite(s16)) and s16 != s32  # float16 really ran
    assert tr16.translate(sents, cfg) == half


def _printed_scores(out: str) -> tuple[float, float]:
    bleu = float(re.search(r"BLEU = ([\d.]+)", out).group(1))
    chrf = float(re.search(r"chrF = ([\d.]+)", out).group(1))
    return bleu, chrf


def test_evaluate_prints_sacrebleu_scores_and_split_valid_matches_files(
    trained, toy_corpus, tmp_path, capsys
):
    hyp = tmp_path / "hyp.txt"
    # sampling: the 20-step model's greedy output is empty, which would make every score 0
    common = ["--checkpoint", str(trained), "--sample", "--seed", "1", "--max-len", "8"]
    src = str(toy_corpus / "valid.src")
    rc = main(["evaluate", *common, "--src", src, "--ref", str(toy_corpus / "valid.tgt"),
               "--output", str(hyp)])  # fmt: skip
    assert rc == 0
    first = _printed_scores(capsys.readouterr().out)
    hyps = hyp.read_text(encoding="utf-8").split("\n")[:-1]
    refs = (toy_corpus / "valid.tgt").read_text(encoding="utf-8").splitlines()
    assert len(hyps) == len(refs) == 40 and sum(map(bool, hyps)) > 30
    # references half equal to the hypotheses: scores far from 0 and 100, so a wrong
    # formula, rounding or line pairing shows
    mixed = [h if i % 2 else r for i, (h, r) in enumerate(zip(hyps, refs, strict=True))]
    ref_file = _lines_file(tmp_path / "mixed.txt", mixed)
    assert main(["evaluate", *common, "--src", src, "--ref", ref_file]) == 0
    bleu, chrf = _printed_scores(capsys.readouterr().out)
    assert 5 < bleu < 95 and 5 < chrf < 95, (bleu, chrf)
    assert bleu == round(sacrebleu.corpus_bleu(hyps, [mixed]).score, 2)
    assert chrf == round(sacrebleu.corpus_chrf(hyps, [mixed]).score, 2)
    assert first == (
        round(sacrebleu.corpus_bleu(hyps, [refs]).score, 2),
        round(sacrebleu.corpus_chrf(hyps, [refs]).score, 2),
    )
    # --split valid of a run trained on user files scores its validation files
    assert main(["evaluate", *common, "--split", "valid"]) == 0
    out = capsys.readouterr().out
    assert "valid valid: 40 sentences" in out and _printed_scores(out) == first
