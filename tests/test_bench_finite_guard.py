"""experiments/bench_finite_guard.py: the train step's finite guard in two forms."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

import bench_finite_guard  # noqa: E402


def test_every_guard_learns_the_same_bits_and_skip_a_nan_step(tmp_path):
    """The comparison is only worth timing if the forms are the same training step:
    identical params and optimizer state after a few updates, and a NaN step skipped with
    params and optimizer state left as they were. (Identical bits are XLA's doing, not a
    law: jax 0.6.2 fused the forms differently.)"""
    out = tmp_path / "g"
    bench_finite_guard.main(
        ["--preset", "tiny", "--batch", "2", "--src-len", "6", "--tgt-len", "5",
         "--repeats", "1", "--check-steps", "3", "--out", str(out)]
    )  # fmt: skip
    r = json.loads(out.with_suffix(".json").read_text())["results"][0]
    assert set(r["bit_identical"]) == {"select", "cond", "adam"}
    for form in ("select", "cond", "adam"):
        assert r["bit_identical"][form] and r["leaves_differing"][form] == 0, form
        assert r["nonfinite_step"][form] == {
            "skipped": 1,
            "params_unchanged": True,
            "opt_state_unchanged": True,
        }, form
    # The candidates exist to remove the select's copies of the Adam moments.
    copied = {form: r["compiled"][form]["copied_mb"] for form in ("select", "cond", "adam")}
    assert copied["adam"] < copied["select"] and copied["cond"] < copied["select"], copied


def test_same_bits_sees_one_flipped_bit_and_equal_nans():
    import numpy as np

    a = {"w": np.array([1.0, np.nan], np.float32)}
    b = {"w": np.array([1.0, np.nan], np.float32)}
    assert bench_finite_guard.same_bits(a, b) == (True, 0)
    b["w"] = np.array([np.nextafter(np.float32(1), np.float32(2)), np.nan], np.float32)
    assert bench_finite_guard.same_bits(a, b) == (False, 1)
