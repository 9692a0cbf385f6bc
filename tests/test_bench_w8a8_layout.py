"""experiments/bench_w8a8_layout.py: the w8a8 layout A/B, each layout in its own process."""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

import bench_w8a8_layout  # noqa: E402


def test_both_layouts_decode_the_same_tokens(tmp_path):
    """Two alternating rounds of child processes on the tiny preset: both layouts decode
    the same tokens (the stored one through the [K, N] dot), and the ratio columns are the
    speeds' ratios. Tiny sizes: the numbers are no measurement."""
    out = tmp_path / "layout"
    bench_w8a8_layout.main(
        ["--preset", "tiny", "--cells", "greedy:1,beam:1", "--new-tokens", "4",
         "--calls", "1", "--rounds", "2", "--out", str(out)]
    )  # fmt: skip
    data = json.loads(out.with_suffix(".json").read_text())
    assert [r["cell"] for r in data["results"]] == ["greedy:1", "beam:1"]
    for r in data["results"]:
        assert r["same_tokens"]
        assert r["ratio"] == pytest.approx(r["output-major"] / r["stored"])
        assert len(r["ratio_per_round"]) == 2 and len(r["runs"]["stored"]) == 2
    assert "| greedy:1 |" in out.with_suffix(".md").read_text()


def test_child_stored_layout_is_the_float_kernels_order(monkeypatch):
    """The child's ``stored`` layout really stores [K, N]: the A/B compares two layouts."""
    from seqjax.models import quantize

    monkeypatch.setattr(quantize, "_OUT_MAJOR_ACTS", quantize._OUT_MAJOR_ACTS)
    args = argparse.Namespace(
        layout="stored", preset="tiny", hf=None, cells=[("greedy", 1)], beam_size=4,
        new_tokens=2, calls=1, seed=0,
    )  # fmt: skip
    result = bench_w8a8_layout.child(args)
    assert "int8" not in quantize._OUT_MAJOR_ACTS and result["greedy:1"]["tokens_per_s"] > 0
    w = quantize.quantize_array(np.ones((4, 6), np.float32), (0,), act="int8")
    assert w.q.shape == (4, 6)
