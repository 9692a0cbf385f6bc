"""experiments/bench_jax_versions.py: bench_decode under several interpreters, side by side."""

import doctest
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

import bench_jax_versions as bjv  # noqa: E402


def test_the_docstring_examples_run():
    assert doctest.testmod(bjv).failed == 0


def test_every_label_runs_first_once_over_as_many_rounds():
    labels = ["a", "b", "c"]
    firsts = [bjv.rotated(labels, k)[0] for k in range(3)]
    assert sorted(firsts) == labels
    assert all(sorted(bjv.rotated(labels, k)) == labels for k in range(5))


def test_medians_over_rounds_and_ratios_to_the_first_label():
    runs = {
        "new": [{"cells": {"greedy b1": 100.0}}, {"cells": {"greedy b1": 120.0}},
                {"cells": {"greedy b1": 110.0}}],
        "old": [{"cells": {"greedy b1": 50.0}}, {"error": "boom"}, {"cells": {"greedy b1": 60.0}}],
        "broken": [{"error": "ImportError: no"}],
    }  # fmt: skip
    table = bjv.summarise(["new", "old", "broken"], runs)
    assert table["greedy b1"]["new"] == {"median": 110.0, "runs": [100.0, 120.0, 110.0],
                                         "ratio": 1.0}  # fmt: skip
    assert table["greedy b1"]["old"]["median"] == 55.0
    assert table["greedy b1"]["old"]["ratio"] == pytest.approx(0.5)
    assert "broken" not in table["greedy b1"]


def test_a_failing_interpreter_is_reported_not_raised(tmp_path):
    fake = tmp_path / "python"
    fake.write_text(
        "#!/bin/sh\necho 'Traceback (most recent call last):' >&2\n"
        "echo 'jaxlib._jax.XlaRuntimeError: INVALID_ARGUMENT: no such option' >&2\n"
        "echo 'For simplicity, JAX has removed its internal frames' >&2\nexit 1\n"
    )
    fake.chmod(0o755)
    error = bjv.run_once(str(fake), [], tmp_path / "o")["error"]
    assert error == "jaxlib._jax.XlaRuntimeError: INVALID_ARGUMENT: no such option"


def test_two_interpreters_end_to_end(tmp_path):
    out = tmp_path / "v"
    bench = "--model tiny --batches 1 --methods greedy --new-tokens 4 --repeats 1"
    bjv.main(["--python", f"a={sys.executable}", "--python", f"b={sys.executable}",
              "--rounds", "1", "--bench-args", bench, "--out", str(out)])  # fmt: skip
    result = json.loads(out.with_suffix(".json").read_text())
    row = result["results"][0]["table"]["greedy b1"]
    assert row["a"]["ratio"] == 1.0 and row["b"]["median"] > 0
    assert result["meta"]["interpreters"]["a"]["jax"] == result["meta"]["interpreters"]["b"]["jax"]
    assert "| greedy b1 |" in out.with_suffix(".md").read_text()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--python", "a=/nonexistent/python", "--python", "b=/nonexistent"], "existing Python"),
        (["--python", f"a={sys.executable}"], "at least two"),
        (["--rounds", "0"], "--rounds must be at least 1"),
    ],
)
def test_bad_arguments_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit):
        bjv.main([*argv, "--out", "/nonexistent/x"])
    assert message in capsys.readouterr().err
