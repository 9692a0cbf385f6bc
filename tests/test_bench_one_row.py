"""experiments/bench_one_row.py: the stored vs output-major float32 A/B table."""

import doctest
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

import bench_one_row  # noqa: E402


def test_docstring_examples():
    assert doctest.testmod(bench_one_row).failed == 0


def test_table_on_the_tiny_preset(tmp_path):
    """Every layout decodes each cell (one row and four), the ratio column is the
    output-major program's speed over the rule's, and the three programs agree on the
    tokens (the layouts hold the same values). Tiny sizes: the numbers are no measurement."""
    out = tmp_path / "one_row"
    bench_one_row.main(
        ["--preset", "tiny", "--cells", "greedy:1,beam:1", "--new-tokens", "4",
         "--src-len", "6", "--rounds", "1", "--out", str(out)]
    )  # fmt: skip
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["meta"]["cells"] == ["greedy:1", "beam:1"]
    assert [r["rows"] for r in data["results"]] == [1, 4]
    for r in data["results"]:
        speeds = r["tokens_per_s"]
        assert set(speeds) == set(bench_one_row.LAYOUTS) and min(speeds.values()) > 0
        rule, nt = speeds["stored, rule"], speeds["output-major, YNNPACK"]
        assert r["output_major_over_rule"] == pytest.approx(nt / rule)
        assert r["rows_equal_to_rule"] == dict.fromkeys(bench_one_row.LAYOUTS, 1.0)
    md = out.with_suffix(".md").read_text()
    assert "| greedy | 1 | 1 |" in md and "| beam | 1 | 4 |" in md


def test_bad_cells_and_counts_are_one_line_errors(capsys):
    for argv, message in (
        (["--cells", "greedy:0"], "cell 'greedy:0': use greedy:N or beam:N"),
        (["--rounds", "0"], "--rounds must be at least 1, got 0"),
    ):
        with pytest.raises(SystemExit):
            bench_one_row.main([*argv, "--out", "/nonexistent/x"])
        assert message in capsys.readouterr().err
