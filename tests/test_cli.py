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


def test_model_flag_picks_the_family_preset():
    model, train = _train_configs(build_parser().parse_args(["train", "--model", "rnn"]))
    assert (model.family, train.preset) == ("rnn", "rnn_small")
    model, train = _train_configs(build_parser().parse_args(["train"]))
    assert (model.family, train.preset) == ("transformer", "small")
    # An explicit preset wins over the family default.
    model, _ = _train_configs(
        build_parser().parse_args(["train", "--model", "rnn", "--preset", "tiny"])
    )
    assert model.family == "transformer"
