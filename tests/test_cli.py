"""The ``seqjax`` command (``seqjax.app.cli``): every user error is one ``seqjax: error:`` line
with exit code 2 (a diverged run exits 1), and the flags map to the right configs."""

from __future__ import annotations

import pytest

from seqjax.app.cli import _train_configs, build_parser, main


def _write(path, data: bytes):
    path.write_bytes(data)
    return str(path)


def _input(tmp_path) -> str:
    return _write(tmp_path / "in.txt", b"alpha\n")


@pytest.mark.parametrize(
    "case, expect",
    [
        ("mismatch", "2 lines"),
        ("utf8", ":2:"),
        ("empty", "empty"),
        ("missing", "nope.txt"),
    ],
)
def test_train_bad_corpus_one_line_error(case, expect, tmp_path, tiny_flags, capsys):
    good = _write(tmp_path / "good.txt", b"a b\nc d\n")
    contents = {"mismatch": b"a b\nc d\ne f\n", "utf8": b"a b\nc \xe9 d\n", "empty": b""}
    bad = str(tmp_path / "nope.txt")
    if case in contents:
        bad = _write(tmp_path / "bad.txt", contents[case])
    rc = main(["train", "--out", str(tmp_path / "run"), *tiny_flags, "--src", good, "--tgt", bad])
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
    rc = main(["translate", "--checkpoint", str(trained), "--input", _input(tmp_path), *flags])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expect in err


def test_missing_checkpoint_dir(tmp_path, capsys):
    rc = main(["translate", "--checkpoint", str(tmp_path / "nothing"), "--input", _input(tmp_path)])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nothing" in err


@pytest.mark.parametrize("command", ["translate", "evaluate"])
def test_missing_checkpoint_dir_one_line(command, tmp_path, one_line_error):
    inp = _input(tmp_path)
    io_args = ["--input", inp] if command == "translate" else ["--src", inp, "--ref", inp]
    rc = main([command, "--checkpoint", str(tmp_path / "nothing"), *io_args])
    assert rc == 2
    one_line_error("nothing")


def test_evaluate_needs_both_src_and_ref(trained, tmp_path, one_line_error):
    rc = main(["evaluate", "--checkpoint", str(trained), "--src", _input(tmp_path)])
    assert rc == 2
    one_line_error("--ref")


@pytest.mark.parametrize(
    "data, expect",
    [(b"alpha\n\xc3\x28\n", ":2:"), (None, "is a directory")],
    ids=["bad-utf8", "directory"],
)
def test_translate_bad_input_file_one_line(trained, tmp_path, one_line_error, data, expect):
    inp = tmp_path / "in.txt"
    if data is None:
        inp.mkdir()
    else:
        inp.write_bytes(data)
    rc = main(["translate", "--checkpoint", str(trained), "--input", str(inp)])
    assert rc == 2
    one_line_error("in.txt", expect)


def test_unknown_option_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--no-such-flag"])
    assert e.value.code == 2


@pytest.mark.parametrize("teacher", [[], ["--teacher", "x", "--distill-ema", "0.9"]])
def test_distill_needs_exactly_one_teacher(capsys, tmp_path, teacher):
    assert main(["train", "--out", str(tmp_path / "r"), "--objective", "distill", *teacher]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--teacher DIR" in err and "--distill-ema" in err


def test_missing_teacher_fails_before_any_data_work(tmp_path, one_line_error):
    out = tmp_path / "r"
    rc = main(["train", "--out", str(out), "--objective", "distill", "--teacher",
               str(tmp_path / "no_teacher")])  # fmt: skip
    assert rc == 2
    one_line_error("no such checkpoint directory", "no_teacher")
    assert not out.exists()  # not even the prepared data of the run


def test_model_flag_picks_the_family_preset():
    model, train = _train_configs(build_parser().parse_args(["train", "--model", "rnn"]))
    assert (model.family, train.preset) == ("rnn", "rnn_small")
    model, train = _train_configs(build_parser().parse_args(["train"]))
    assert (model.family, train.preset) == ("rnn", "rnn_small")
    assert (train.total_steps, train.max_minutes) == (1500, 0.0)  # fixed updates, no clock
    model, train = _train_configs(build_parser().parse_args(["train", "--model", "transformer"]))
    assert (model.family, train.preset) == ("transformer", "small")
    # An explicit preset wins over the family default.
    model, _ = _train_configs(
        build_parser().parse_args(["train", "--model", "rnn", "--preset", "tiny"])
    )
    assert model.family == "transformer"


# -- train: one line and exit 2 for every bad option, before anything is written -------------


@pytest.mark.parametrize(
    "case, needles",
    [
        ("valid-src-alone", ["valid_tgt"]),
        ("eval-every-0", ["eval_every must be >= 1"]),
        ("save-every-0", ["save_every must be >= 1"]),
        ("log-every-0", ["log_every must be >= 1"]),
        ("steps-negative", ["total_steps must be >= 1"]),
        ("max-minutes-negative", ["max_minutes must be >= 0"]),
        ("seed-huge", ["seed must be in [0, 2**32)"]),
        ("seed-float", ["seed=1e+23", "integer"]),
        ("set-str-for-int", ["d_model='abc'", "integer"]),
        ("toml-str-for-float", ["max_minutes='abc'", "number"]),
        ("toml-non-utf8", ["c.toml", "not UTF-8"]),
        ("toml-bad-decode", ["[decode]", "beam_size"]),
        ("config-dir", ["conf.d", "is a directory"]),
        ("out-is-a-file", ["--out", "is a file"]),
        ("set-decode", ["decode.beam_size", "translate"]),
        ("same-src-tgt", ["--src and --tgt", "same file"]),
        ("same-valid", ["--valid-src and --valid-tgt", "same file"]),
    ],
)
def test_train_bad_option_one_line(case, needles, tmp_path, tiny_flags, one_line_error):
    good = _write(tmp_path / "a.txt", b"a b\nc d\n")
    other = _write(tmp_path / "b.txt", b"A B\nC D\n")
    toml = tmp_path / "c.toml"
    out = tmp_path / "run"
    extra = {
        "valid-src-alone": ["--valid-src", good],
        "eval-every-0": ["--eval-every", "0"],
        "save-every-0": ["--set", "train.save_every=0"],
        "log-every-0": ["--set", "train.log_every=0"],
        "steps-negative": ["--steps", "-1"],
        "max-minutes-negative": ["--max-minutes", "-5"],
        "seed-huge": ["--seed", str(10**23)],
        "seed-float": ["--set", "train.seed=1e23"],
        "set-str-for-int": ["--set", "model.d_model=abc"],
        "toml-str-for-float": ["--config", str(toml)],
        "toml-non-utf8": ["--config", str(toml)],
        "toml-bad-decode": ["--config", str(toml)],
        "config-dir": ["--config", str(tmp_path / "conf.d")],
        "out-is-a-file": [],
        "set-decode": ["--set", "decode.beam_size=2"],
        "same-src-tgt": [],
        "same-valid": ["--valid-src", good, "--valid-tgt", str(tmp_path / "." / "a.txt")],
    }[case]
    toml.write_bytes(
        {
            "toml-str-for-float": b'[train]\nmax_minutes = "abc"\n',
            "toml-non-utf8": b"[train]\nseed = 1 # caf\xe9\n",
            "toml-bad-decode": b"[decode]\nbeam_size = 0\n",
        }.get(case, b"")
    )
    (tmp_path / "conf.d").mkdir()
    if case == "out-is-a-file":
        out = tmp_path / "a.txt"
    tgt = good if case == "same-src-tgt" else other
    # Flags win over the TOML file: its cases go without the tiny flags (--max-minutes 0).
    flags = ["--preset", "tiny"] if case.startswith("toml") else tiny_flags
    rc = main(["train", "--out", str(out), *flags, "--src", good, "--tgt", tgt, *extra])
    assert rc == 2
    one_line_error(*needles)
    assert not (tmp_path / "run" / "config.json").exists()


def test_train_config_file_sets_model_and_train(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text(
        '[model]\nd_model = 64\nnum_heads = 2\n[train]\npreset = "tiny"\nlearning_rate = 1e-3\n'
        "length_buckets = [8, 16]\n[decode]\nbeam_size = 2\n"
    )
    args = build_parser().parse_args(["train", "--config", str(toml), "--lr", "2e-3"])
    model, train = _train_configs(args)
    assert (model.d_model, model.num_heads, model.num_encoder_layers) == (64, 2, 2)  # tiny: 2
    assert train.learning_rate == 2e-3  # a flag wins over the file
    assert train.length_buckets == (8, 16) and train.preset == "tiny"
