"""End to end through the ``seqjax`` command (in-process): train, resume, translate, evaluate,
and one-line errors for bad input."""

import json

import jax
import numpy as np
import pytest

from seqjax.cli import main
from seqjax.inference import load

TINY = ["--preset", "tiny", "--vocab-size", "300", "--max-minutes", "0",
        "--set", "train.length_buckets=[8, 16, 32]", "--set", "train.batch_tokens=256",
        "--set", "train.log_every=5", "--set", "train.valid_bleu_sentences=8",
        "--set", "train.warmup_steps=5"]  # fmt: skip


def _train(out, corpus, steps, *extra):
    args = ["train", "--out", str(out), "--steps", str(steps), "--eval-every", "10", *TINY,
            "--src", str(corpus / "train.src"), "--tgt", str(corpus / "train.tgt"),
            "--valid-src", str(corpus / "valid.src"), "--valid-tgt", str(corpus / "valid.tgt"),
            *extra]  # fmt: skip
    assert main(args) == 0


def _losses(run):
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in recs if "loss" in r}


@pytest.fixture(scope="module")
def trained(toy_corpus, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "straight"
    _train(run, toy_corpus, 20)
    return run


def test_resume_continues_exactly(trained, toy_corpus, tmp_path):
    run = tmp_path / "resumed"
    _train(run, toy_corpus, 10)
    _train(run, toy_corpus, 20)  # same command, later horizon: resumes at step 10
    straight, resumed = _losses(trained), _losses(run)
    assert sorted(resumed) == [5, 10, 15, 20]
    for s in (15, 20):  # same data order, dropout keys and optimizer state
        assert resumed[s] == pytest.approx(straight[s], rel=1e-6, abs=1e-6)
    a, b = load(str(trained), which="latest").params, load(str(run), which="latest").params
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), a, b)


def test_resume_refuses_a_different_config(trained, toy_corpus, capsys):
    args = ["train", "--out", str(trained), "--steps", "20", *TINY, "--lr", "0.5",
            "--src", str(toy_corpus / "train.src"), "--tgt", str(toy_corpus / "train.tgt")]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "learning_rate" in err and len(err.splitlines()) == 1


def test_translate_is_line_aligned(trained, tmp_path, capsys):
    inp = tmp_path / "in.txt"
    inp.write_text("alpha beta\n\ngamma delta eps\n   \nzeta\n", encoding="utf-8")
    out = tmp_path / "out.txt"
    rc = main(["translate", "--checkpoint", str(trained), "--input", str(inp),
               "--output", str(out), "--greedy", "--max-len", "12"])  # fmt: skip
    assert rc == 0
    lines = out.read_text(encoding="utf-8").split("\n")
    assert len(lines) == 6 and lines[-1] == ""  # 5 lines, each newline-terminated
    assert lines[1] == "" and lines[3] == ""  # empty in, empty out


def test_translate_nbest_and_beam(trained, tmp_path, capsys):
    inp = tmp_path / "in.txt"
    inp.write_text("alpha beta\ngamma\n", encoding="utf-8")
    rc = main(["translate", "--checkpoint", str(trained), "--input", str(inp),
               "--beam", "3", "--n-best", "2", "--max-len", "12"])  # fmt: skip
    assert rc == 0
    rows = capsys.readouterr().out.splitlines()
    assert len(rows) == 2
    for row in rows:
        fields = row.split("\t")
        assert len(fields) == 4  # two (text, score) pairs
        assert float(fields[1]) >= float(fields[3])  # best first


def test_evaluate_prints_bleu_and_chrf(trained, toy_corpus, capsys):
    rc = main(["evaluate", "--checkpoint", str(trained), "--src", str(toy_corpus / "valid.src"),
               "--ref", str(toy_corpus / "valid.tgt"), "--greedy", "--max-len", "12"])  # fmt: skip
    assert rc == 0
    out = capsys.readouterr().out
    assert "BLEU = " in out and "chrF = " in out and "tok:13a" in out


def _write(path, data: bytes):
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize(
    "case, expect",
    [
        ("mismatch", "2 lines"),
        ("utf8", ":2:"),
        ("empty", "empty"),
        ("missing", "nope.txt"),
    ],
)
def test_train_bad_corpus_one_line_error(case, expect, tmp_path, capsys):
    good = _write(tmp_path / "good.txt", b"a b\nc d\n")
    contents = {"mismatch": b"a b\nc d\ne f\n", "utf8": b"a b\nc \xe9 d\n", "empty": b""}
    bad = str(tmp_path / "nope.txt")
    if case in contents:
        bad = _write(tmp_path / "bad.txt", contents[case])
    rc = main(["train", "--out", str(tmp_path / "run"), *TINY, "--src", good, "--tgt", bad])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("seqjax: error: ")
    assert "bad.txt" in err or "nope.txt" in err
    assert expect in err


@pytest.mark.parametrize(
    "flags, expect",
    [
        (["--beam", "0"], "beam_size"),
        (["--sample", "--top-p", "1.5"], "top_p"),
        (["--sample", "--temperature", "-1"], "temperature"),
    ],
)
def test_bad_decode_options_one_line_error(trained, tmp_path, capsys, flags, expect):
    inp = _write(tmp_path / "in.txt", b"alpha\n")
    rc = main(["translate", "--checkpoint", str(trained), "--input", inp, *flags])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expect in err


def test_missing_checkpoint_dir(tmp_path, capsys):
    inp = _write(tmp_path / "in.txt", b"alpha\n")
    rc = main(["translate", "--checkpoint", str(tmp_path / "nothing"), "--input", inp])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nothing" in err


def test_unknown_option_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--no-such-flag"])
    assert e.value.code == 2


@pytest.mark.parametrize(
    "flags",
    [
        ["--objective", "scheduled-sampling", "--ss-schedule", "inverse-sigmoid", "--ss-k", "2",
         "--ss-mode", "parallel", "--set", "train.ss_warmup=0"],
        ["--objective", "scheduled-sampling", "--ss-mode", "sequential", "--set", "train.ss_warmup=0"],
        ["--objective", "mrt", "--mrt-samples", "3"],
        ["--objective", "distill", "--teacher", "TRAINED"],
        ["--objective", "distill", "--distill-ema", "0.99"],
    ],
    ids=["ss-parallel", "ss-sequential", "mrt", "distill", "distill-ema"],
)  # fmt: skip
def test_objectives_fine_tune_from_a_run(trained, toy_corpus, tmp_path, flags):
    flags = [str(trained) if f == "TRAINED" else f for f in flags]
    run = tmp_path / "tuned"
    _train(run, toy_corpus, 5, "--init-from", str(trained), *flags)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train"]["objective"] == flags[1]
    assert cfg["model"] == json.loads((trained / "config.json").read_text())["model"]
    losses = _losses(run)
    assert losses and all(np.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("teacher", [[], ["--teacher", "x", "--distill-ema", "0.9"]])
def test_distill_needs_exactly_one_teacher(capsys, tmp_path, teacher):
    assert main(["train", "--out", str(tmp_path / "r"), "--objective", "distill", *teacher]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--teacher DIR" in err and "--distill-ema" in err


def test_run_stops_after_consecutive_non_finite_steps(toy_corpus, tmp_path, capsys):
    run = tmp_path / "diverged"
    args = ["train", "--out", str(run), "--steps", "60", *TINY, "--lr", "1e30",
            "--set", "train.max_bad_steps=5", "--set", "train.save_every=1",
            "--src", str(toy_corpus / "train.src"), "--tgt", str(toy_corpus / "train.tgt")]  # fmt: skip
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("seqjax: error: stopped at step") and "consecutive" in err
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert recs[-1]["step"] < 60 and recs[-1]["skipped"] == 5
    # The checkpoint left behind holds finite parameters (skipped updates never land).
    params = load(str(run), which="latest").params
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))


def test_model_flag_picks_the_family_preset():
    from seqjax.cli import _train_configs, build_parser

    model, train = _train_configs(build_parser().parse_args(["train", "--model", "rnn"]))
    assert (model.family, train.preset) == ("rnn", "rnn_small")
    model, train = _train_configs(build_parser().parse_args(["train"]))
    assert (model.family, train.preset) == ("transformer", "small")
    # An explicit preset wins over the family default.
    model, _ = _train_configs(
        build_parser().parse_args(["train", "--model", "rnn", "--preset", "tiny"])
    )
    assert model.family == "transformer"
