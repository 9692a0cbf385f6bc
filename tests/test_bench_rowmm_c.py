"""experiments/bench_rowmm_c.py: XLA against hand-written AVX-512 kernels on few rows."""

import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

import bench_rowmm_c  # noqa: E402

from seqjax.decoding.compile_options import host_cpu_flags  # noqa: E402

HAS_AVX512 = "avx512f" in host_cpu_flags()


@pytest.mark.skipif(
    not (HAS_AVX512 and shutil.which("cc")), reason="the C kernels need AVX-512 and a C compiler"
)
def test_c_kernels_compute_xlas_chain(tmp_path):
    """Both C kernels give XLA's chain to float32 rounding, and every case gets a rate and
    its share of the stream rate. Tiny sizes: the numbers are not a measurement."""
    out = tmp_path / "r"
    argv = ["--rows", "1,4", "--layers", "2", "--rounds", "1", "--repeats", "1"]
    bench_rowmm_c.main([*argv, "--stream-mb", "4", "--out", str(out)])
    rows = json.loads(out.with_suffix(".json").read_text())["results"]
    assert [r["rows"] for r in rows] == [1, 4]
    assert set(rows[0]["max_diff"]) == {"acc"} and set(rows[1]["max_diff"]) == {"acc", "panel"}
    for r in rows:
        assert all(d < 1e-5 for d in r["max_diff"].values()), r["max_diff"]
        for case in ("xla cold", "xla hot", "c acc cold", "c acc hot"):
            assert r[case]["of_stream"] == pytest.approx(r[case]["gbps"] / r["stream_gbps"])
    assert "| 4 |" in out.with_suffix(".md").read_text()


def test_markdown_marks_cases_a_row_did_not_run():
    row = {"rows": 1, "stream_gbps": 20.0, "max_diff": {"acc": 1e-7}}
    for case in ("xla cold", "xla hot", "c acc cold", "c acc hot"):
        row[case] = {"gbps": 10.0, "of_stream": 0.5}
    line = bench_rowmm_c.markdown([row], 2, 1).splitlines()[-1]
    assert line.startswith("| 1 | 20.0 | 10.0 (50%) | 10.0 (50%) | - | 10.0 (50%)")


@pytest.mark.parametrize(
    "argv, message",
    [(["--rows", "9"], "takes 1 to 8 rows"), (["--rows", "a"], "comma-separated integers"),
     (["--rounds", "0"], "--rounds must be at least 1, got 0"), (["--rows", "0"], "at least 1")],
)  # fmt: skip
def test_bad_arguments_are_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        bench_rowmm_c.main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_a_missing_compiler_is_named(tmp_path):
    with pytest.raises(SystemExit, match="no C compiler 'no-such-cc'"):
        bench_rowmm_c.build("no-such-cc", tmp_path)
