"""Reliability: exact resume after ``kill -9``, and one-line errors for hostile inputs.

The run trained by the uninterrupted resume baseline doubles as the checkpoint the
translate/evaluate tests load, so this module trains three times in all (about 35 s).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import seqjax
from seqjax.checkpoint import CheckpointError
from seqjax.cli import main
from seqjax.config import ConfigError, DecodeConfig
from seqjax.training.loop import _truncate_metrics

STEPS = 24
TINY = ["--preset", "tiny", "--vocab-size", "300", "--max-minutes", "0",
        "--set", "train.length_buckets=[32]", "--set", "train.batch_tokens=256",
        "--set", "train.warmup_steps=5"]  # fmt: skip
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def _records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("seqjax: error: "), err
    for n in needles:
        assert n in err, err
    return err


def _train_cmd(run: Path, corpus: Path) -> list[str]:
    # Dropout on, so the resume also has to reproduce the per-step dropout keys.
    return [sys.executable, "-m", "seqjax.cli", "train", "--out", str(run), *TINY,
            "--steps", str(STEPS), "--set", "train.save_every=4", "--set", "train.log_every=1",
            "--set", "train.keep_last=50", "--set", "model.dropout=0.1",
            "--src", str(corpus / "train.src"), "--tgt", str(corpus / "train.tgt")]  # fmt: skip


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return done


@pytest.fixture(scope="module")
def straight(toy_corpus, tmp_path_factory) -> Path:
    """An uninterrupted run of the command the resume test kills (also a checkpoint to load)."""
    run = tmp_path_factory.mktemp("reliability") / "straight"
    _run(_train_cmd(run, toy_corpus))
    return run


# -- exact resume after kill -9 --------------------------------------------------------------


def _checkpoint_steps(run: Path) -> list[int]:
    d = run / "checkpoints"
    if not d.is_dir():
        return []
    # Orbax writes "<step>.orbax-checkpoint-tmp-*" and renames it once complete.
    return sorted(int(p.name) for p in d.iterdir() if re.fullmatch(r"\d+", p.name))


def test_resume_after_sigkill_continues_exactly(straight, toy_corpus, tmp_path):
    run = tmp_path / "killed"
    cmd = _train_cmd(run, toy_corpus)
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while not _checkpoint_steps(run):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    saved = _checkpoint_steps(run)
    assert saved and max(saved) < STEPS  # killed mid-run
    # Simulate the worst case too: records past the checkpoint and a torn last line.
    with (run / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": STEPS + 5, "loss": 123.0}) + "\n" + '{"step": 9')

    err = _run(cmd).stderr.decode()
    restored = int(re.search(r"restored step (\d+)", err).group(1))
    assert restored in saved

    a = [r for r in _records(straight) if "loss" in r]
    b = [r for r in _records(run) if "loss" in r]
    # The resumed run dropped what the killed one wrote past its checkpoint, so the file
    # holds one record per step, exactly as in the uninterrupted run.
    assert [r["step"] for r in b] == [r["step"] for r in a] == list(range(1, STEPS + 1))
    for ra, rb in zip(a, b, strict=True):  # same data order, dropout keys, optimizer state
        for k in ("loss", "train_nll", "grad_norm", "epoch", "skipped"):
            assert ra[k] == pytest.approx(rb[k], rel=1e-6, abs=1e-6), (ra["step"], k)
    assert sum("final" in r for r in _records(run)) == 1


def test_truncate_metrics_keeps_records_up_to_the_restored_step(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text('{"step": 1, "loss": 1}\n{"step": 2}\n{"step": 3, "loss": 3}\n{"st')
    _truncate_metrics(p, 2)
    assert [json.loads(x)["step"] for x in p.read_text().splitlines()] == [1, 2]
    _truncate_metrics(tmp_path / "absent.jsonl", 5)  # nothing to do, no error
    assert not (tmp_path / "absent.jsonl").exists()


# -- hostile inputs ----------------------------------------------------------------------------


def test_train_replaces_control_chars_and_skips_empty_pairs(tmp_path, capsys):
    src = ["alpha beta", "gamma\x00delta", "", "eps\x07 zeta\x1b", "   ", "eta theta"] * 4
    tgt = ["BETA ALPHA", "DELTA GAMMA", "X", "ZETA EPS", "Y", ""] * 4
    (tmp_path / "s.txt").write_text("\n".join(src) + "\n", encoding="utf-8")
    (tmp_path / "t.txt").write_text("\r\n".join(tgt) + "\r\n", encoding="utf-8")
    rc = main(["train", "--out", str(tmp_path / "run"), *TINY, "--steps", "2",
               "--set", "train.log_every=1", "--src", str(tmp_path / "s.txt"),
               "--tgt", str(tmp_path / "t.txt")])  # fmt: skip
    assert rc == 0
    err = capsys.readouterr().err
    assert "replaced 12 control character(s)" in err  # 3 per block, 4 blocks
    assert "skipped 12 training pairs with an empty side" in err
    assert "train: 12 pairs" in err
    losses = [r["loss"] for r in _records(tmp_path / "run") if "loss" in r]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)


def test_translate_truncates_overlong_lines_and_stays_aligned(straight, tmp_path, capsys):
    long_line = " ".join(["alpha beta gamma"] * 60)  # far more than max_len (64) tokens
    inp = tmp_path / "in.txt"
    inp.write_text(f"alpha\n{long_line}\n\n \t \ngamma delta\n", encoding="utf-8")
    out = tmp_path / "out.txt"
    rc = main(["translate", "--checkpoint", str(straight), "--input", str(inp),
               "--output", str(out), "--greedy", "--max-len", "8"])  # fmt: skip
    assert rc == 0
    err = capsys.readouterr().err
    assert "1 input line(s) longer than 64 tokens were truncated (first: line 2)" in err
    lines = out.read_text(encoding="utf-8").split("\n")
    assert len(lines) == 6 and lines[-1] == ""
    assert lines[2] == "" and lines[3] == ""  # empty / whitespace-only in, empty out


def test_translate_stdin_whitespace_and_crlf_lines_stay_aligned(straight, monkeypatch, capsys):
    import io

    data = b"alpha beta\r\n\r\n\t\r\n\x0c\r\ngamma\r\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    rc = main(["translate", "--checkpoint", str(straight), "--greedy", "--max-len", "8"])
    assert rc == 0
    out = capsys.readouterr().out.split("\n")
    assert len(out) == 6 and out[1:4] == ["", "", ""] and out[-1] == ""


def test_python_api_truncation_policy(straight):
    tr = seqjax.load(str(straight), decode_config=DecodeConfig(method="greedy", max_len=6))
    tr.buckets = (16,)  # cap source length at 16 tokens
    import io

    tr.warn_stream = io.StringIO()
    out = tr.translate(["alpha " * 40, "", "beta"])
    assert len(out) == 3 and out[1] == ""
    assert "1 input line(s) longer than 16 tokens were truncated" in tr.warn_stream.getvalue()


def _input(tmp_path) -> str:
    p = tmp_path / "in.txt"
    p.write_text("alpha\n", encoding="utf-8")
    return str(p)


def _copy_run(straight: Path, tmp_path: Path) -> Path:
    run = tmp_path / "copy"
    shutil.copytree(straight, run)
    return run


@pytest.mark.parametrize("command", ["translate", "evaluate"])
def test_missing_checkpoint_dir_one_line(command, tmp_path, capsys):
    inp = _input(tmp_path)
    io_args = ["--input", inp] if command == "translate" else ["--src", inp, "--ref", inp]
    rc = main([command, "--checkpoint", str(tmp_path / "nothing"), *io_args])
    assert rc == 2
    _one_line_error(capsys, "nothing")


@pytest.mark.parametrize(
    "content, expect",
    [
        ("FORMAT99", "format 99"),
        ("FORMAT_STR", "format 'one'"),
        ('{"model": {"d_model": 3', "invalid JSON"),
        ("[1, 2]", "JSON object"),
        (b"\xff\xfe{}", "invalid JSON"),
        ("", "invalid JSON"),
        ("NO_MODEL", "'model'"),
        ("BAD_FIELD", "d_modell"),
    ],
    ids=["newer-format", "bad-format", "truncated", "array", "binary", "empty", "no-model",
         "unknown-field"],
)  # fmt: skip
def test_bad_config_json_one_line(straight, tmp_path, capsys, content, expect):
    run = _copy_run(straight, tmp_path)
    doc = json.loads((run / "config.json").read_text())
    if content == "FORMAT99":
        content = json.dumps({**doc, "format": 99})
    elif content == "FORMAT_STR":
        content = json.dumps({**doc, "format": "one"})
    elif content == "NO_MODEL":
        content = json.dumps({k: v for k, v in doc.items() if k != "model"})
    elif content == "BAD_FIELD":
        content = json.dumps({**doc, "model": {**doc["model"], "d_modell": 8}})
    if isinstance(content, str):
        content = content.encode()
    (run / "config.json").write_bytes(content)
    rc = main(["translate", "--checkpoint", str(run), "--input", _input(tmp_path)])
    assert rc == 2
    _one_line_error(capsys, "config.json", expect)
    with pytest.raises(CheckpointError, match=re.escape(expect)):
        seqjax.load(str(run))


def test_run_dir_without_checkpoints_one_line(straight, tmp_path, capsys):
    run = _copy_run(straight, tmp_path)
    shutil.rmtree(run / "checkpoints")
    shutil.rmtree(run / "best", ignore_errors=True)
    rc = main(["translate", "--checkpoint", str(run), "--input", _input(tmp_path)])
    assert rc == 2
    _one_line_error(capsys, str(run))


def test_evaluate_mismatched_src_ref_one_line(straight, tmp_path, capsys):
    (tmp_path / "src.txt").write_text("alpha\nbeta\ngamma\n", encoding="utf-8")
    (tmp_path / "ref.txt").write_text("ALPHA\nBETA\n", encoding="utf-8")
    rc = main(["evaluate", "--checkpoint", str(straight), "--src", str(tmp_path / "src.txt"),
               "--ref", str(tmp_path / "ref.txt"), "--greedy"])  # fmt: skip
    assert rc == 2
    _one_line_error(capsys, "3 lines", "2 lines", "ref.txt")


def test_evaluate_needs_both_src_and_ref(straight, tmp_path, capsys):
    rc = main(["evaluate", "--checkpoint", str(straight), "--src", _input(tmp_path)])
    assert rc == 2
    _one_line_error(capsys, "--ref")


@pytest.mark.parametrize(
    "data, expect",
    [(b"alpha\n\xc3\x28\n", ":2:"), (None, "is a directory")],
    ids=["bad-utf8", "directory"],
)
def test_translate_bad_input_file_one_line(straight, tmp_path, capsys, data, expect):
    inp = tmp_path / "in.txt"
    if data is None:
        inp.mkdir()
    else:
        inp.write_bytes(data)
    rc = main(["translate", "--checkpoint", str(straight), "--input", str(inp)])
    assert rc == 2
    _one_line_error(capsys, "in.txt", expect)


@pytest.mark.parametrize("path", ["does/not/exist", "FILE"])
def test_load_bad_path_raises_checkpoint_error(tmp_path, path):
    if path == "FILE":
        path = tmp_path / "a_file"
        path.write_text("x")
    with pytest.raises(CheckpointError) as e:
        seqjax.load(str(path))
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and str(path) in msg


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"beam_size": 0}, "beam_size"),
        ({"beam_size": -3}, "beam_size"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": float("nan")}, "top_p"),
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"beam_size": 2, "n_best": 3}, "n_best"),
        ({"top_k": -1}, "top_k"),
        ({"num_samples": 0}, "num_samples"),
        ({"max_len": 0}, "max_len"),
        ({"min_len": 9, "max_len": 8}, "min_len"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"coverage": -0.1}, "coverage"),
        ({"method": "bogus"}, "method"),
    ],
)
def test_decode_config_rejects_bad_values(kwargs, field):
    with pytest.raises(ConfigError, match=field) as e:
        DecodeConfig(**kwargs)
    assert len(str(e.value).splitlines()) == 1
