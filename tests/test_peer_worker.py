"""experiments/peer_worker.py: benchmark peers in processes of their own, timed there."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

import bench_train  # noqa: E402
from peer_worker import Worker  # noqa: E402

from seqjax.config import model_preset  # noqa: E402


def test_a_worker_builds_only_what_its_module_lists() -> None:
    with pytest.raises(RuntimeError, match=r"Gemm worker failed to start: .*unknown runner Gemm"):
        Worker("bench_train", "Gemm")


def test_an_error_in_a_call_names_the_call_and_the_worker_lives_on() -> None:
    pytest.importorskip("torch")
    cfg = model_preset("tiny")
    batch = bench_train.random_batch(cfg, 2, 8, 8, np.random.default_rng(0))
    batch = {k: np.asarray(v) for k, v in batch.items()}
    w = Worker("bench_train", "TorchPeer", cfg, 1)
    try:
        with pytest.raises(RuntimeError, match=r"TorchPeer\.step: KeyError"):
            w.call("step", {"src": batch["src"]})
        loss = w.call("step", batch)  # the same worker still trains
        assert np.isfinite(loss) and w.last_s > 0
        assert w.attr("cfg") == cfg
    finally:
        w.close()
    assert not w.alive


def test_bench_train_times_the_torch_peer_in_a_process_of_its_own(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    out = tmp_path / "bt"
    bench_train.main(
        ["--models", "tiny", "--batches", "2", "--src-len", "8", "--tgt-len", "8",
         "--repeats", "1", "--warmup", "0", "--gemm-repeats", "1", "--torch", "--out", str(out)]
    )  # fmt: skip
    res = json.loads(out.with_suffix(".json").read_text())
    row = res["rows"][0] if "rows" in res else res["results"][0]
    assert row["torch_tokens_per_s"] > 0 and len(row["torch_step_s_runs"]) == 1
    assert "in a worker process of its own" in out.with_suffix(".md").read_text()


def test_a_worker_killed_mid_run_is_reported_with_its_exit_code() -> None:
    import os
    import signal

    pytest.importorskip("torch")
    w = Worker("bench_train", "TorchPeer", model_preset("tiny"), 1)
    os.kill(w._proc.pid, signal.SIGKILL)
    w._proc.join(timeout=30)
    with pytest.raises(RuntimeError, match=r"TorchPeer\.step: the worker exited with code -9"):
        w.call("step", {})
