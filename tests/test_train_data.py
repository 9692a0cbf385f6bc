"""`seqjax prepare` + `seqjax train --data`: prepared shards through Grain, state in checkpoints."""

from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import pytest

from seqjax.app import run_dir
from seqjax.app import train as train_mod
from seqjax.app.cli import build_parser, main
from seqjax.app.train_data import TrainBatches, batch_spec
from seqjax.config import ConfigError, TrainConfig, model_preset
from seqjax.data.pipeline import split_stats
from seqjax.sharding import make_mesh


def _records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in _records(run) if "loss" in r}


@pytest.fixture(scope="module")
def prepared(toy_corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prep") / "data"
    c = toy_corpus
    args = ["prepare", "--src", str(c / "train.src"), "--tgt", str(c / "train.tgt"),
            "--valid-src", str(c / "valid.src"), "--valid-tgt", str(c / "valid.tgt"),
            "--out", str(out), "--vocab-size", "300", "--workers", "0"]  # fmt: skip
    assert main(args) == 0
    return out


def test_prepare_help_explains_every_option() -> None:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    prep = sub.choices["prepare"]
    for action in prep._actions:
        assert action.help, action.dest
    train = sub.choices["train"]
    assert {"--data", "--data-workers"} <= set(train._option_string_actions)


def test_prepare_prints_counts_and_reruns_as_a_no_op(prepared, toy_corpus, capsys) -> None:
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert manifest["splits"]["train"]["pairs"] == 260
    assert manifest["splits"]["valid"]["pairs"] == 40
    c = toy_corpus
    args = ["prepare", "--src", str(c / "train.src"), "--tgt", str(c / "train.tgt"),
            "--valid-src", str(c / "valid.src"), "--valid-tgt", str(c / "valid.tgt"),
            "--out", str(prepared), "--vocab-size", "300"]  # fmt: skip
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "train: 260 pairs" in out and "already prepared" in out


def test_prepare_errors_are_one_line(tmp_path, one_line_error) -> None:
    (tmp_path / "a").write_bytes(b"x\ny\n")
    (tmp_path / "b").write_bytes(b"x\n")
    args = ["prepare", "--src", str(tmp_path / "a"), "--tgt", str(tmp_path / "b"), "--out",
            str(tmp_path / "o")]  # fmt: skip
    assert main(args) == 2
    one_line_error("2 lines", "1 lines")
    assert main([*args[:-1], str(tmp_path / "o"), "--pairs-per-shard", "0"]) == 2
    one_line_error("pairs_per_shard")


def test_train_on_prepared_data_equals_training_on_the_files(
    prepared, trained, tiny_flags, tmp_path
) -> None:
    run = tmp_path / "from_data"
    args = ["train", "--out", str(run), "--steps", "20", "--eval-every", "10", *tiny_flags,
            "--data", str(prepared)]  # fmt: skip
    assert main(args) == 0
    assert not (run / "data").exists()  # nothing prepared again inside the run
    assert _losses(run) == pytest.approx(_losses(trained), rel=1e-6, abs=1e-6)
    valid = [r for r in _records(run) if "valid_nll" in r]
    assert valid and valid[-1]["valid_nll"] == pytest.approx(
        [r for r in _records(trained) if "valid_nll" in r][-1]["valid_nll"], rel=1e-6
    )
    cfg = run_dir.read_run_config(run)[1]
    assert cfg.data == str(prepared) and cfg.src is None
    assert len(run_dir.evaluation_split(run, "valid")[1]) == 40
    with pytest.raises(Exception, match="prepared directory"):
        run_dir.evaluation_split(run, "test")


def test_train_on_raw_files_prepares_once_into_the_run(trained) -> None:
    manifest = json.loads((trained / "data" / "manifest.json").read_text())
    assert manifest["splits"]["train"]["pairs"] == 260
    assert (
        run_dir.read_tokenizers(trained)[0].to_bytes()
        == (trained / "data" / "tokenizer" / "spm.model").read_bytes()
    )


def test_checkpoint_holds_the_batch_iterator_state(trained) -> None:
    meta = json.loads((trained / "checkpoints" / "20" / "meta" / "metadata").read_text())
    assert meta["data_state"] == {"workers": 0, "from": [0, 0], "grain": {"next_index": 20}}
    assert (meta["epoch"], meta["index"]) == (0, 20)


def test_data_with_another_tokenizer_is_refused(
    prepared, trained, tiny_flags, tmp_path, one_line_error, capsys
) -> None:
    args = ["train", "--out", str(tmp_path / "ft"), "--steps", "2", *tiny_flags,
            "--init-from", str(trained), "--data", str(prepared)]  # fmt: skip
    # Same toy corpus and options: the same tokenizer, so fine-tuning on it is accepted...
    assert main(args) == 0
    other = tmp_path / "other"
    c = Path(json.loads((prepared / "manifest.json").read_text())["files"]["src"]["path"])
    assert main(["prepare", "--src", str(c), "--tgt", str(c.with_suffix(".tgt")), "--out",
                 str(other), "--vocab-size", "320"]) == 0  # fmt: skip
    args[args.index(str(prepared))] = str(other)
    args[args.index(str(tmp_path / "ft"))] = str(tmp_path / "ft2")
    capsys.readouterr()
    assert main(args) == 2  # ...one prepared with another vocabulary is not
    one_line_error("another tokenizer")
    assert not (tmp_path / "ft2").exists()  # refused before anything was written


def test_data_and_files_are_exclusive() -> None:
    with pytest.raises(ConfigError, match="replaces src/tgt"):
        TrainConfig(data="d", src="a", tgt="b")


@pytest.mark.parametrize("workers_after", [0, 1])
def test_batches_resume_from_their_state_or_position(prepared, workers_after) -> None:
    cfg = TrainConfig(batch_tokens=256, length_buckets=(8, 16, 32), seed=3)
    spec = batch_spec(cfg, model_preset("tiny"), make_mesh("auto"))
    per_epoch = split_stats(prepared, "train", spec)[0]
    it = TrainBatches(prepared, spec, workers=0, epoch=0, index=per_epoch - 10)
    [next(it) for _ in range(4)]
    state = it.state()
    want = [next(it) for _ in range(12)]  # crosses an epoch boundary
    it.close()
    # A resume keeps the state's starting point and continues from it; with another worker
    # count (the state is Grain's per layout) the (epoch, index) position is used instead.
    epoch, index = want[0][0], want[0][1]
    again = TrainBatches(
        prepared, spec, workers=workers_after, epoch=epoch, index=index, state=state
    )
    got = [next(again) for _ in range(12)]
    again.close()
    assert [(e, i) for e, i, _ in got] == [(e, i) for e, i, _ in want]
    for (_, _, a), (_, _, b) in zip(want, got, strict=True):
        assert all(np.array_equal(a[k], b[k]) for k in ("src", "tgt_in", "tgt_out"))
    assert want[-1][0] == 1  # the second epoch


def test_transformer_batches_never_pass_its_position_table(prepared) -> None:
    # A Transformer with a 12-position table on buckets up to 32: longer pairs are dropped and
    # counted, no batch is wider than the table (a wider one failed deep inside JAX).
    cfg = TrainConfig(batch_tokens=256, length_buckets=(8, 16, 32))
    model = model_preset("tiny", max_len=12)
    spec = batch_spec(cfg, model, make_mesh("auto"))
    assert (spec.max_src_len, spec.max_tgt_len, spec.buckets) == (12, 12, (8, 12))
    per_epoch, kept, dropped = split_stats(prepared, "train", spec)
    assert dropped > 0 and kept + dropped == 260
    it = TrainBatches(prepared, spec, workers=0, epoch=0, index=0)
    widths = {next(it)[2]["tgt_in"].shape[1] for _ in range(per_epoch)}
    it.close()
    assert max(widths) <= 12
    # The RNN has no position table: its limits stay the config's.
    rnn = batch_spec(cfg, model_preset("rnn_tiny", max_len=12), make_mesh("auto"))
    assert (rnn.max_src_len, rnn.buckets) == (cfg.max_src_len, (8, 16, 32))


def test_multi_host_budget_is_asked_every_log_interval(monkeypatch) -> None:
    asked = []
    monkeypatch.setattr(train_mod.jax, "process_count", lambda: 2)
    monkeypatch.setattr(train_mod.sharding, "agree", lambda flag: asked.append(flag) or flag)
    loop = types.SimpleNamespace(cfg=TrainConfig(log_every=5), start=0.0, step=0)
    for step in range(12):
        loop.step = step
        assert train_mod.Loop.in_budget(loop, float("inf"))
    assert len(asked) == 3  # steps 0, 5 and 10 only: no blocking collective on other steps
    monkeypatch.setattr(train_mod.jax, "process_count", lambda: 1)
    loop.step = 3
    assert not train_mod.Loop.in_budget(loop, -1.0)  # one process: its own clock, every step
