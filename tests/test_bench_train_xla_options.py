"""experiments/bench_train_xla_options.py: the train step under XLA:CPU's options."""

import doctest
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

import bench_train_xla_options as bench  # noqa: E402


def test_variants_compile_other_kernels_for_the_same_step(tmp_path):
    """The comparison means something only if the option reached the compiler (the
    reference runs YNNPACK fusions, a variant without them none) and the variants compute
    the same step (the first update's loss agrees). The variant is the user's own
    (``--option``), spelled as the built-in ``eigen``."""
    out = tmp_path / "o"
    bench.main(
        ["--preset", "tiny", "--batch", "2", "--src-len", "6", "--tgt-len", "5",
         "--repeats", "2", "--variants", "default",
         "--option", "mine:xla_cpu_experimental_ynn_fusion_type=", "--out", str(out)]
    )  # fmt: skip
    data = json.loads(out.with_suffix(".json").read_text())
    r = data["results"][0]
    assert list(r["options"]) == ["default", "mine"]
    assert r["options"]["mine"] == bench.VARIANTS["eigen"]
    assert r["library_fusions"]["default"]["ynn"] > 0
    assert r["library_fusions"]["mine"] == {"ynn": 0, "xnn": 0, "onednn": 0}
    losses = list(r["first_loss"].values())
    assert max(losses) - min(losses) <= bench.LOSS_TOLERANCE
    assert all(len(r["wall_s_runs"][n]) == 2 for n in r["options"])
    assert r["speedup_wall"]["default"] == 1.0
    assert "| mine |" in out.with_suffix(".md").read_text() and data["machine"]["cpu"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--variants", "default,nope"], "unknown nope"),
        (["--option", "mine"], "expected NAME:KEY=VALUE"),
        (["--option", "eigen:a=b"], "is taken"),
        (["--repeats", "0"], "--repeats must be at least 1"),
    ],
)
def test_bad_arguments_are_one_line_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_an_option_xla_refuses_is_a_one_line_error(capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(["--preset", "tiny", "--batch", "2", "--src-len", "4", "--tgt-len", "4",
                    "--variants", "default", "--option", "bad:xla_cpu_no_such_option=1"])  # fmt: skip
    err = capsys.readouterr().err
    assert e.value.code == 2 and "variant bad: XLA refused its options" in err, err
    assert "Traceback" not in err


def test_docstring_examples():
    assert doctest.testmod(bench).failed == 0
