"""What guards a run directory (``seqjax train``): the lock held for the life of a run, refusal
of run files without a config, restart of a run that never saved, resume by file content,
Ctrl-C that always saves (in a subprocess, as the user sees it), validation at the last step."""

from __future__ import annotations

import json
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import subprocess_env

from seqjax.app.cli import main


def _records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _args(out: Path, corpus: Path, tiny: list[str], steps: int, *extra: str) -> list[str]:
    return ["train", "--out", str(out), "--steps", str(steps), *tiny,
            "--src", str(corpus / "train.src"), "--tgt", str(corpus / "train.tgt"), *extra]  # fmt: skip


def _tree_bytes(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


# -- the lock ------------------------------------------------------------------------------------


def test_second_train_is_refused_naming_the_holder(toy_corpus, tiny_flags, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(["sleep", "60"])  # a live process on this host holds the lock
    try:
        lock = {"pid": holder.pid, "host": socket.gethostname(), "started": "2026-01-01T00:00"}
        (run / "train.lock").write_text(json.dumps(lock))
        assert main(_args(run, toy_corpus, tiny_flags, 2)) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("seqjax: error: ")
        assert f"pid {holder.pid}" in err and socket.gethostname() in err and "in use" in err
        assert sorted(p.name for p in run.iterdir()) == ["train.lock"]  # nothing written
    finally:
        holder.kill()
        holder.wait()
    # Its holder is gone now (as after kill -9): the lock is stale, taken over with a warning.
    assert main(_args(run, toy_corpus, tiny_flags, 2)) == 0
    err = capsys.readouterr().err
    assert f"taking over the stale lock {run / 'train.lock'} of process {holder.pid}" in err
    assert not (run / "train.lock").exists()  # released at the end of the run


# -- run files without a config; a run that never saved ---------------------------------------


@pytest.mark.parametrize("keep", ["checkpoints", "tokenizer"])
def test_run_files_without_config_are_refused_untouched(
    trained, toy_corpus, tiny_flags, tmp_path, one_line_error, keep
):
    run = tmp_path / "orphan"
    run.mkdir()
    shutil.copytree(trained / keep, run / keep)
    before = _tree_bytes(run)
    flags = [*tiny_flags, "--vocab-size", "200"]  # another vocabulary, as in the report
    assert main(_args(run, toy_corpus, flags, 25)) == 2
    one_line_error(str(run), keep, "no config.json")
    assert _tree_bytes(run) == before  # the tokenizer (and all else) as it was


def test_a_start_that_never_saved_restarts_with_new_options(
    toy_corpus, tiny_flags, tmp_path, capsys
):
    run = tmp_path / "run"
    # Every pair is longer than 2 tokens: the first start fails after writing its config.
    assert main(_args(run, toy_corpus, tiny_flags, 2, "--set", "train.max_src_len=2")) == 2
    assert "no training pairs left" in capsys.readouterr().err.strip().splitlines()[-1]
    assert (run / "config.json").exists()
    assert main(_args(run, toy_corpus, tiny_flags, 2, "--lr", "1e-3")) == 0
    assert "no checkpoint yet: starting it again" in capsys.readouterr().err
    cfg = json.loads((run / "config.json").read_text())["train"]
    assert (cfg["max_src_len"], cfg["learning_rate"]) == (128, 1e-3)  # the new options


# -- resume compares file content, not path text ----------------------------------------------


def test_resume_checks_the_files_by_content(toy_corpus, tiny_flags, tmp_path, monkeypatch, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        shutil.copytree(toy_corpus, d)
    (b / "train.tgt").write_text((b / "train.tgt").read_text().lower())  # same size, other text
    run = tmp_path / "run"
    rel = ["train", "--out", str(run), *tiny_flags, "--src", "train.src", "--tgt", "train.tgt"]
    monkeypatch.chdir(a)
    assert main([*rel, "--steps", "2"]) == 0
    capsys.readouterr()
    # The same relative paths from another directory name other files: refused, saying which.
    monkeypatch.chdir(b)
    assert main([*rel, "--steps", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--tgt train.tgt" in err and "differs in content" in err
    assert str(b / "train.tgt") in err and "--src" not in err
    # The original files by their absolute paths: the same content, so the run resumes.
    absolute = ["--src", str(a / "train.src"), "--tgt", str(a / "train.tgt")]
    assert main([*rel, "--steps", "4", *absolute]) == 0
    assert "restored step 2" in capsys.readouterr().err


# -- validation: once at the last step; best/ by the real validation --------------------------


def test_last_step_validated_once_and_best_is_the_best_validation(trained):
    valid = [r for r in _records(trained) if "valid_nll" in r]
    assert [r["step"] for r in valid] == [10, 20]  # eval every 10, 20 steps: not 20 twice
    best = max(valid, key=lambda r: (r["valid_bleu"], -r["valid_nll"]))
    assert [p.name for p in (trained / "best").iterdir()] == [str(best["step"])]


def test_symlinked_step_dir_refused_before_training(trained, train_cli, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    moved = tmp_path / "moved"
    (run / "checkpoints" / "20").rename(moved)
    (run / "checkpoints" / "20").symlink_to(moved)
    with pytest.raises(AssertionError):
        train_cli(run, 25)
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("seqjax: error: ") and "checkpoints/20 is a symbolic link" in last
    assert any(moved.iterdir())  # nothing deleted through the link


# -- Ctrl-C saves the last completed step, every time (a subprocess, as the user runs it) ------

CTRL_C_FLAGS = ["--preset", "tiny", "--vocab-size", "300", "--max-minutes", "0",
                "--set", "train.length_buckets=[32]", "--set", "train.batch_tokens=256",
                "--set", "train.warmup_steps=5", "--set", "train.log_every=1",
                "--set", "train.save_every=1000", "--eval-every", "1000"]  # fmt: skip


def _interrupt_at_random_steps(corpus: Path, run: Path, times: int, seed: int, cache: Path) -> None:
    rng = random.Random(seed)
    cmd = [sys.executable, "-m", "seqjax.app.cli", "train", "--out", str(run), *CTRL_C_FLAGS,
           "--steps", "100000", "--src", str(corpus / "train.src"),
           "--tgt", str(corpus / "train.tgt")]  # fmt: skip
    env = subprocess_env(cache=cache)  # the runs after the first read their programs
    saved = 0
    for i in range(times):
        target = saved + rng.randint(1, 6)
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 180
        try:
            while (
                not (run / "metrics.jsonl").exists()
                or max([r.get("step", 0) for r in _records(run)] or [0]) < target
            ):
                assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
                assert time.monotonic() < deadline, f"step {target} not reached in 180 s"
                time.sleep(0.005)
            time.sleep(rng.uniform(0, 0.05))  # land anywhere in a step
            proc.send_signal(signal.SIGINT)
            err = proc.communicate(timeout=120)[1].decode()
        finally:
            proc.kill()
        assert proc.returncode == 130, err[-3000:]
        last = err.strip().splitlines()[-1]
        m = re.fullmatch(r"saved step (\d+) in .*; rerun the same command to resume", last)
        assert m, err[-3000:]
        step = int(m.group(1))
        if i:
            assert f"restored step {saved}" in err
        assert step >= target and (run / "checkpoints" / str(step)).is_dir(), (i, step)
        assert max(r["step"] for r in _records(run)) == step  # the saved step is the last one
        saved = step


def test_ctrl_c_saves_the_last_step(toy_corpus, tmp_path, subprocess_cache):
    _interrupt_at_random_steps(toy_corpus, tmp_path / "run", 3, 0, subprocess_cache)


@pytest.mark.slow
def test_ctrl_c_saves_the_last_step_20_times(toy_corpus, tmp_path, subprocess_cache):
    _interrupt_at_random_steps(toy_corpus, tmp_path / "run", 20, 1, subprocess_cache)
