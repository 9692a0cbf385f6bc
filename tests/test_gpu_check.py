"""experiments/gpu_check.sh --dry-run: the GPU script's plumbing, exercised on the CPU."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # ~50 s of three benchmark processes; CI's slow line runs it
def test_gpu_check_dry_run_writes_one_report(tmp_path):
    env = {**os.environ, "OUT_DIR": str(tmp_path), "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", "experiments/gpu_check.sh", "--dry-run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = (tmp_path / "gpu_check.md").read_text()
    assert "dry run on CPU" in report
    # Both JAX benchmarks ran to completion and their tables (with the machine line) are in.
    assert "| bench_decode | 0 |" in report and "| bench_train | 0 |" in report, report
    assert report.count("_Machine: ") >= 2
    assert "## bench_decode" in report and "| greedy | 1 |" in report
    assert (tmp_path / "bench_train.json").is_file()
    # The peers' benchmark runs where its peers are installed (CI installs them), else the
    # report says why it did not.
    if all(importlib.util.find_spec(m) for m in ("torch", "transformers", "ctranslate2")):
        assert "| bench_vs_peers | 0 |" in report and "## bench_vs_peers" in report, report
        assert (tmp_path / "bench_vs_peers.json").is_file()
    else:
        assert "| bench_vs_peers | skipped: torch/transformers/ctranslate2 not installed" in report


def test_gpu_check_rejects_unknown_options():
    proc = subprocess.run(
        ["bash", "experiments/gpu_check.sh", "--bogus"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 2 and "unknown option --bogus" in proc.stderr
