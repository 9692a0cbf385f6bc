"""experiments/bench_gemm.py: decode-shaped GEMMs and their memory bound."""

import doctest
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

pytest.importorskip("torch")  # the script's peer kernels; CI installs the CPU wheel

import bench_gemm  # noqa: E402


def test_bound_and_shares_follow_the_measured_rates(tmp_path):
    """Every cold case's share of the memory bound is its rate over the bound computed
    from the same row's stream rate (int8 weights: a quarter of the bytes, bfloat16 half),
    and the markdown carries the share table. Tiny sizes: the numbers are not a
    measurement."""
    out = tmp_path / "g"
    bench_gemm.main(
        ["--rows", "1,2", "--layers", "1", "--rounds", "1", "--stream-mb", "4", "--out", str(out)]
    )
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["meta"]["stream_mb"] == 4
    assert [r["rows"] for r in data["results"]] == [1, 2]
    for r in data["results"]:
        assert r["stream_gbps"] > 0
        cases = (("cold_xla", 4), ("cold_torch", 4), ("cold_int8_xla", 1), ("cold_bf16_xla", 2))
        for case, nbytes in (*cases, ("cold_bf16_torch", 2)):
            bound = 2 * r["rows"] * r["stream_gbps"] / nbytes
            assert r[case + "_of_bound"] == pytest.approx(r[case + "_gflops"] / bound)
        assert "stream_gflops" not in r  # the read rate is GB/s, not a FLOP rate
    md = out.with_suffix(".md").read_text()
    assert "Share of the memory bound" in md
    assert md.count("%") >= 2 * 7


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--rows", "1,x"], "--rows '1,x': give comma-separated integers"),
        (["--rows", "4,0"], "--rows '4,0': every value must be at least 1"),
        (["--stream-mb", "0"], "--stream-mb must be at least 1, got 0"),
    ],
)
def test_bad_arguments_are_one_line_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        bench_gemm.main(argv + ["--out", "/nonexistent/never_written"])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_doctests():
    assert doctest.testmod(bench_gemm).failed == 0
