"""experiments/profile_train.py: a per-op profile of the compiled train step."""

import doctest
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

import profile_train  # noqa: E402
from bench_train import step_flops  # noqa: E402

from seqjax.config import model_preset  # noqa: E402


def test_the_docstring_examples_run():
    assert doctest.testmod(profile_train).failed == 0


def test_a_dot_in_a_nested_fusion_is_counted_once_per_executed_op():
    """A fusion calling a computation that holds two dots carries both FLOP counts."""
    text = """%fused_computation.2 (p0: f32[3,5], p1: f32[5,7], p2: f32[7,2]) -> f32[3,2] {
  %p0 = f32[3,5]{1,0} parameter(0)
  %p1 = f32[5,7]{1,0} parameter(1)
  %p2 = f32[7,2]{1,0} parameter(2)
  %dot.4 = f32[3,7]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  ROOT %dot.5 = f32[3,2]{1,0} dot(%dot.4, %p2), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

ENTRY %main (a: f32[3,5], b: f32[5,7], c: f32[7,2]) -> f32[3,2] {
  %a = f32[3,5]{1,0} parameter(0)
  %b = f32[5,7]{1,0} parameter(1)
  %c = f32[7,2]{1,0} parameter(2)
  ROOT %fusion.9 = f32[3,2]{1,0} fusion(%a, %b, %c), kind=kOutput, calls=%fused_computation.2
}"""
    flops = profile_train.dot_flops(text)
    assert flops["fusion.9"] == 2 * 3 * 7 * 5 + 2 * 3 * 2 * 7
    assert profile_train.op_class("fusion.9", "fusion", "?", "fusion.9" in flops) == "dot"


def test_a_tiny_step_profile_accounts_for_every_matmul(tmp_path):
    """On XLA's own output: the matmul FLOPs read from the compiled step equal
    bench_train's analytic count, the classes add up to the summed thunk time, and
    every op has a class."""
    out = tmp_path / "p"
    profile_train.main(
        ["--preset", "tiny", "--batch", "2", "--src-len", "6", "--tgt-len", "5",
         "--steps", "1", "--out", str(out)]
    )  # fmt: skip
    case = json.loads(out.with_suffix(".json").read_text())["results"][0]
    expected = step_flops(model_preset("tiny"), 2, 6, 5) / 1e9
    assert case["dot_gflop_hlo"] == pytest.approx(expected, rel=1e-6)
    assert sum(case["by_class"].values()) == pytest.approx(case["thunk_ms_per_step"])
    assert case["by_class"]["dot"] > 0 and case["by_class"]["optimizer"] > 0
    assert {op["class"] for op in case["ops"]} <= set(profile_train.CLASSES)
    assert "| class | ms/step |" in out.with_suffix(".md").read_text()


def test_bad_sizes_are_refused(capsys):
    with pytest.raises(SystemExit):
        profile_train.main(["--steps", "0", "--out", "/nonexistent/x"])
    assert "--steps must be at least 1" in capsys.readouterr().err


def test_the_torch_peer_is_profiled_in_the_same_classes(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "p"
    profile_train.main(
        ["--preset", "tiny", "--batch", "2", "--src-len", "6", "--tgt-len", "5",
         "--steps", "1", "--torch", "--out", str(out)]
    )  # fmt: skip
    peer = json.loads(out.with_suffix(".json").read_text())["results"][0]["torch"]
    assert set(peer["by_class"]) == set(profile_train.CLASSES)
    assert peer["by_class"]["dot"] > 0 and peer["by_class"]["optimizer"] > 0
    assert sum(peer["by_class"].values()) == pytest.approx(peer["self_ms_per_step"])
    assert "PyTorch ms/step" in out.with_suffix(".md").read_text()
