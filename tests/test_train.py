"""The train loop (``seqjax.app.train``) through ``seqjax train``: exact resume (also after
``kill -9``), fine-tuning with every objective, the divergence guard, hostile training text."""

from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import subprocess_env

from seqjax.app.cli import main
from seqjax.app.translate import load


def _records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in _records(run) if "loss" in r}


# -- exact resume ------------------------------------------------------------------------------


def test_resume_continues_exactly(trained, train_cli, tmp_path, capsys):
    run = tmp_path / "resumed"
    train_cli(run, 10)
    first = (run / "metrics.jsonl").read_text()
    capsys.readouterr()
    train_cli(run, 20)  # same command, later horizon: resumes at step 10
    assert "restored step 10 (epoch 0, batch 10)" in capsys.readouterr().err
    # The second run kept the first one's records and wrote only the steps after 10.
    text = (run / "metrics.jsonl").read_text()
    assert text.startswith(first)
    added = [json.loads(x) for x in text[len(first) :].splitlines()]
    assert added and all(r["step"] > 10 for r in added)
    assert [r["step"] for r in _records(run) if "loss" in r] == [5, 10, 15, 20]
    straight, resumed = _losses(trained), _losses(run)
    assert sorted(resumed) == [5, 10, 15, 20]
    for s in (15, 20):  # same data order, dropout keys and optimizer state
        assert resumed[s] == pytest.approx(straight[s], rel=1e-6, abs=1e-6)
    a, b = load(str(trained), which="latest").params, load(str(run), which="latest").params
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), a, b)


def test_resume_refuses_a_different_config(trained, toy_corpus, tiny_flags, capsys):
    args = ["train", "--out", str(trained), "--steps", "20", *tiny_flags, "--lr", "0.5",
            "--src", str(toy_corpus / "train.src"), "--tgt", str(toy_corpus / "train.tgt")]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "learning_rate" in err and len(err.splitlines()) == 1


# -- exact resume after kill -9 (in a subprocess) ---------------------------------------------

STEPS = 24
KILL_TINY = ["--preset", "tiny", "--vocab-size", "300", "--max-minutes", "0",
             "--set", "train.length_buckets=[32]", "--set", "train.batch_tokens=256",
             "--set", "train.warmup_steps=5"]  # fmt: skip


def _train_cmd(run: Path, corpus: Path) -> list[str]:
    # Dropout on, so the resume also has to reproduce the per-step dropout keys.
    return [sys.executable, "-m", "seqjax.app.cli", "train", "--out", str(run), *KILL_TINY,
            "--steps", str(STEPS), "--set", "train.save_every=4", "--set", "train.log_every=1",
            "--set", "train.keep_last=50", "--set", "model.dropout=0.1",
            "--src", str(corpus / "train.src"), "--tgt", str(corpus / "train.tgt")]  # fmt: skip


def _run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return done


@pytest.fixture(scope="module")
def kill_env(subprocess_cache) -> dict[str, str]:
    """The three runs of one command share their compiled programs (a persistent cache)."""
    return subprocess_env(cache=subprocess_cache)


@pytest.fixture(scope="module")
def straight(toy_corpus, tmp_path_factory, kill_env) -> Path:
    """An uninterrupted run of the command the resume test kills."""
    run = tmp_path_factory.mktemp("reliability") / "straight"
    _run(_train_cmd(run, toy_corpus), kill_env)
    return run


def _checkpoint_steps(run: Path) -> list[int]:
    d = run / "checkpoints"
    if not d.is_dir():
        return []
    # Orbax writes "<step>.orbax-checkpoint-tmp-*" and renames it once complete.
    return sorted(int(p.name) for p in d.iterdir() if re.fullmatch(r"\d+", p.name))


def test_resume_after_sigkill_continues_exactly(straight, toy_corpus, tmp_path, kill_env):
    run = tmp_path / "killed"
    cmd = _train_cmd(run, toy_corpus)
    proc = subprocess.Popen(cmd, env=kill_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
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

    err = _run(cmd, kill_env).stderr.decode()
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


# -- fine-tuning with each objective ----------------------------------------------------------


# One length bucket: each objective's train step then compiles once, not once per bucket
# its five steps happen to meet (14 s -> 5 s a fine-tune).
ONE_BUCKET = ["--set", "train.length_buckets=[32]"]


@pytest.fixture(scope="module")
def mle_tuned(trained, train_cli, tmp_path_factory) -> Path:
    """5 MLE steps from ``trained``: what each objective's run must differ from."""
    run = tmp_path_factory.mktemp("mle") / "tuned"
    train_cli(run, 5, "--init-from", str(trained), *ONE_BUCKET)
    return run


@pytest.mark.parametrize(
    "flags",
    [
        ["--objective", "scheduled-sampling", "--ss-schedule", "inverse-sigmoid", "--ss-k", "2",
         "--ss-mode", "parallel", "--set", "train.ss_warmup=0"],
        ["--objective", "scheduled-sampling", "--ss-mode", "sequential", "--set", "train.ss_warmup=0"],
        ["--objective", "mrt", "--mrt-samples", "3"],
        ["--objective", "distill", "--teacher", "TRAINED"],
        ["--objective", "distill", "--distill-ema", "0.99"],
    ],
    ids=["ss-parallel", "ss-sequential", "mrt", "distill", "distill-ema"],
)  # fmt: skip
def test_objectives_fine_tune_from_a_run(trained, train_cli, tmp_path, flags, mle_tuned):
    flags = [str(trained) if f == "TRAINED" else f for f in flags]
    run = tmp_path / "tuned"
    train_cli(run, 5, "--init-from", str(trained), *ONE_BUCKET, *flags)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train"]["objective"] == flags[1]
    assert cfg["model"] == json.loads((trained / "config.json").read_text())["model"]
    losses = _losses(run)
    assert losses and all(np.isfinite(v) for v in losses.values())
    # The objective was used: same start, data and steps as MLE, another loss (a fallback to
    # MLE gives the same one).
    assert losses[5] != pytest.approx(_losses(mle_tuned)[5], rel=1e-6, abs=0)


# -- the divergence guard ---------------------------------------------------------------------


def test_run_stops_after_consecutive_non_finite_steps(toy_corpus, tiny_flags, tmp_path, capsys):
    run = tmp_path / "diverged"
    args = ["train", "--out", str(run), "--steps", "60", *tiny_flags, *ONE_BUCKET, "--lr", "1e30",
            "--set", "train.max_bad_steps=5", "--set", "train.save_every=1",
            "--src", str(toy_corpus / "train.src"), "--tgt", str(toy_corpus / "train.tgt")]  # fmt: skip
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("seqjax: error: stopped at step") and "consecutive" in err
    recs = _records(run)
    assert recs[-1]["step"] < 60 and recs[-1]["skipped"] == 5
    # The checkpoint left behind holds finite parameters (skipped updates never land).
    params = load(str(run), which="latest").params
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))


# -- hostile training text --------------------------------------------------------------------


def test_train_replaces_control_chars_and_skips_empty_pairs(tmp_path, capsys):
    src = ["alpha beta", "gamma\x00delta", "", "eps\x07 zeta\x1b", "   ", "eta theta"] * 4
    tgt = ["BETA ALPHA", "DELTA GAMMA", "X", "ZETA EPS", "Y", ""] * 4
    (tmp_path / "s.txt").write_text("\n".join(src) + "\n", encoding="utf-8")
    (tmp_path / "t.txt").write_text("\r\n".join(tgt) + "\r\n", encoding="utf-8")
    rc = main(["train", "--out", str(tmp_path / "run"), *KILL_TINY, "--steps", "2",
               "--set", "train.log_every=1", "--src", str(tmp_path / "s.txt"),
               "--tgt", str(tmp_path / "t.txt")])  # fmt: skip
    assert rc == 0
    err = capsys.readouterr().err
    assert "replaced 12 control character(s)" in err  # 3 per block, 4 blocks
    assert "skipped 12 training pairs with an empty side" in err
    assert "train: 12 pairs" in err
    losses = [r["loss"] for r in _records(tmp_path / "run") if "loss" in r]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)


# -- resume on another mesh (2 forced host devices, in a subprocess) ------------------------------


@pytest.mark.slow  # ~25 s, two training processes; CI's slow line runs it
def test_resume_on_another_mesh(toy_corpus, tiny_flags, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "seqjax.app.cli", "train", "--out", str(run), *tiny_flags,
           "--set", "train.log_every=1", "--set", "train.save_every=4",
           "--src", str(toy_corpus / "train.src"), "--tgt", str(toy_corpus / "train.tgt")]  # fmt: skip
    two = subprocess_env("--xla_force_host_platform_device_count=2")
    err = ""
    for steps, env in ((4, two), (8, subprocess_env())):  # 4 steps on 2 devices, then resumed on 1
        done = subprocess.run([*cmd, "--steps", str(steps)], env=env, capture_output=True,
                              timeout=600)  # fmt: skip
        err += done.stderr.decode()
        assert done.returncode == 0, err[-3000:]
    assert "mesh data=2 model=1" in err and "mesh data=1 model=1" in err
    assert "restored step 4 (epoch 0, batch 4)" in err
    steps = [r["step"] for r in _records(run) if "loss" in r]
    assert steps == list(range(1, 9))
    assert all(math.isfinite(r["loss"]) for r in _records(run) if "loss" in r)
