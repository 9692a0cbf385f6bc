"""Pure helpers of experiments/exposure_bias.py: the SS schedule constant, loops, plateau rule."""

from __future__ import annotations

import dataclasses
import doctest
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import exposure_bias as eb  # noqa: E402

from seqjax.training.schedules import make_teacher_forcing_schedule  # noqa: E402


@pytest.mark.parametrize(("steps", "eps_end"), [(150, 0.5), (2000, 0.5), (60, 0.8)])
def test_inverse_sigmoid_k_reaches_eps_end_under_the_library_schedule(steps, eps_end):
    k = eb.inverse_sigmoid_k(steps, eps_end)
    sched = make_teacher_forcing_schedule("inverse_sigmoid", k=k, warmup=0)
    assert float(sched(steps)) == pytest.approx(eps_end, abs=1e-4)
    assert float(sched(0)) > 0.9  # starts (almost) at pure teacher forcing


def test_repeats_ngram_flags_loops_only():
    assert eb.repeats_ngram("a b c a b c a b c")
    assert not eb.repeats_ngram("a b c a b c")  # twice is not a loop
    assert not eb.repeats_ngram("")
    assert eb.repeats_ngram("x y x y x y", n=2, times=3)


def _curve(bleus):
    return [{"step": 500 * (i + 1), "valid_bleu": b} for i, b in enumerate(bleus)]


def test_plateau_rule():
    assert eb.plateau_judgment(_curve([10, 20, 25, 26, 26.2, 26.1, 26.3, 26.0])).startswith(
        "plateaued"
    )
    assert eb.plateau_judgment(_curve([10, 20, 25, 26, 26.2, 27.0, 26.3, 26.0])).startswith(
        "NOT plateaued"
    )
    assert eb.plateau_judgment(_curve([10, 20])).startswith("not judged")


def test_every_variant_and_sweep_config_is_a_valid_train_config():
    from seqjax.config import TrainConfig

    for family in ("rnn", "transformer"):
        for name, over in eb.variants(eb.STANDARD, "runs/base", family, 0.5).items():
            TrainConfig(**over)  # raises on a bad field or value
            assert (name == "ss-par") <= (family == "transformer")
    for over in eb.mrt_sweep_configs(eb.STANDARD).values():
        TrainConfig(**over)


def _write_hyps(where: Path, lines: list[str]) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    (where / "hyps_greedy_test.txt").write_text("".join(f"{h}\n" for h in lines))
    return where


def test_compare_checks_the_control_against_the_base(tmp_path):
    ref = ["the cat sat on the mat", "a dog ran in the park", "it is raining today"]
    worse = ["the cat sat", "a dog", "it is"]
    base = _write_hyps(tmp_path / "base_eval", worse)
    runs = {
        ("tf", 0): _write_hyps(tmp_path / "tf-s0", ref),  # the control improved on the base
        ("tf", 1): _write_hyps(tmp_path / "tf-s1", ref),
        ("ss", 0): _write_hyps(tmp_path / "ss-s0", ref),  # identical to its control
        ("ss", 1): _write_hyps(tmp_path / "ss-s1", ref),
    }
    rows = eb.compare(runs, "greedy", ref, base)
    first = rows[0]
    assert (first["method"], first["seed"]) == ("tf vs base", "pooled 0,1")
    assert first["d_bleu"] > 0
    same = [r for r in rows if r["method"] == "ss"]
    assert [r["seed"] for r in same] == [0, 1, "pooled 0,1"]
    assert all(r["d_bleu"] == 0 and r["d_chrf"] == 0 for r in same)
    assert [r["method"] for r in eb.compare(runs, "greedy", ref)] == ["ss"] * 3  # no base given


def test_sweep_rows_of_earlier_invocations_are_kept_unless_rerun():
    order = ["tf", "mrt", "mrt-lr1e-3", "mrt-beam"]
    earlier = [  # as read back from mrt_sweep.csv: strings
        {"config": "tf", "steps": "150", "greedy_bleu": "28.27"},
        {"config": "mrt-lr1e-3", "steps": "150", "greedy_bleu": "27.97"},
        {"config": "mrt-beam", "steps": "20", "greedy_bleu": "5.1"},  # a --quick row
        {"config": "gone", "steps": "150", "greedy_bleu": "1.0"},  # no longer a config
    ]
    new = [{"config": "mrt-beam", "steps": 150, "greedy_bleu": 28.4},
           {"config": "tf", "steps": 150, "greedy_bleu": 28.3}]  # fmt: skip
    rows = eb.merge_sweep_rows(new, earlier, order, 150)
    assert [(r["config"], r["greedy_bleu"]) for r in rows] == [
        ("tf", 28.3),
        ("mrt-lr1e-3", "27.97"),
        ("mrt-beam", 28.4),
    ]


def test_best_sweep_config_is_the_highest_validation_bleu_other_than_the_control(tmp_path):
    f = tmp_path / "mrt_sweep_full.csv"
    f.write_text("config,greedy_bleu\ntf,29.0\nmrt,28.1\nmrt-beam-mle0.3,28.6\nmrt-S4,\n")
    assert eb.best_sweep_config(f) == "mrt-beam-mle0.3"  # tf is higher but is the control
    f.write_text("config,greedy_bleu\ntf,29.0\n")
    with pytest.raises(SystemExit, match="no MRT row"):
        eb.best_sweep_config(f)
    with pytest.raises(SystemExit, match="run --mrt-sweep"):
        eb.best_sweep_config(tmp_path / "missing.csv")


def test_sweep_runs_are_the_tables_seed0_runs_when_the_update_counts_agree(tmp_path):
    same = dataclasses.replace(eb.STANDARD, sweep_steps=eb.STANDARD.ft_steps)
    assert eb.sweep_run(tmp_path, same, "mrt-beam") == tmp_path / "mrt-beam-s0"
    other = dataclasses.replace(eb.STANDARD, sweep_steps=eb.STANDARD.ft_steps + 1)
    assert eb.sweep_run(tmp_path, other, "mrt-beam") == tmp_path / "sweep-mrt-beam"
    assert eb.sweep_stem("standard") == "mrt_sweep" and eb.sweep_stem("full") == "mrt_sweep_full"
    # Another family's sweep never overwrites the RNN's table in the same --out.
    assert eb.sweep_stem("standard", "transformer") == "mrt_sweep_transformer"


def test_docstring_examples_run():
    result = doctest.testmod(eb, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted >= 2


def test_table_variants_always_run_the_named_mrt_configurations(tmp_path):
    sweep = eb.mrt_sweep_configs(eb.STANDARD)
    base = eb.variants(eb.STANDARD, "runs/base", "rnn", 0.5)
    named = eb.table_variants(base, sweep, ["mrt-beam-mle0.3"], ["tf"], tmp_path / "x.csv")
    assert list(named) == ["tf", "mrt-beam-mle0.3"]
    assert named["mrt-beam-mle0.3"]["mrt_candidates"] == "beam"
    assert list(eb.table_variants(base, sweep, [], None, tmp_path / "x.csv")) == list(base)
    f = tmp_path / "mrt_sweep.csv"
    f.write_text("config,greedy_bleu\ntf,29.0\nmrt-S4,28.1\nmrt-S16,28.4\n")
    assert list(eb.table_variants(base, sweep, ["best"], ["tf", "ss"], f)) == [
        "tf", "ss", "mrt-S16",
    ]  # fmt: skip
    with pytest.raises(SystemExit, match="unknown"):
        eb.table_variants(base, sweep, ["mrt-nope"], None, f)
