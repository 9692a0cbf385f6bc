"""``seqjax.app.run_dir``: the run directory's config, tokenizer, params by best / latest /
step, the corpus it was trained on and its metrics file; one-line errors for damaged runs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import seqjax
from seqjax import sharding
from seqjax.app import run_dir
from seqjax.app.cli import main
from seqjax.app.run_dir import CONFIG_FILE, read_run_config, write_run_files
from seqjax.checkpoint import Checkpointer, CheckpointError
from seqjax.config import ModelConfig, TrainConfig, model_preset
from seqjax.data import DataError

# -- config.json and tokenizer ------------------------------------------------------------------


def test_config_roundtrip_and_tokenizer_copy(tmp_path: Path):
    model = model_preset("tiny")
    train = TrainConfig(preset="tiny", length_buckets=(8, 16), seed=3)
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "spm.model").write_bytes(b"joint-model")
    run = write_run_files(tmp_path / "run", model, train, tok)

    assert read_run_config(run) == (model, train)
    doc = json.loads((run / CONFIG_FILE).read_text())
    assert doc["format"] == 1 and doc["seqjax_version"] == "0.1.0"
    assert (run / "tokenizer" / "spm.model").read_bytes() == b"joint-model"

    # Re-writing with a separate-vocabulary tokenizer leaves no stale joint model behind.
    tok2 = tmp_path / "tok2"
    tok2.mkdir()
    (tok2 / "src.model").write_bytes(b"s")
    (tok2 / "tgt.model").write_bytes(b"t")
    write_run_files(run, model, train, tok2)
    assert sorted(p.name for p in (run / "tokenizer").iterdir()) == ["src.model", "tgt.model"]
    write_run_files(run, model, train, run / "tokenizer")  # resuming: copying onto itself
    assert sorted(p.name for p in (run / "tokenizer").iterdir()) == ["src.model", "tgt.model"]


def test_tokenizer_file_names_match_data_module():
    from seqjax.data import tokenizer

    names = (run_dir.JOINT_FILE, run_dir.SRC_FILE, run_dir.TGT_FILE)
    assert names == (tokenizer.JOINT_FILE, tokenizer.SRC_FILE, tokenizer.TGT_FILE)


def test_tokenizer_dir_without_models_is_rejected(tmp_path: Path):
    (tmp_path / "tok").mkdir()
    with pytest.raises(CheckpointError, match="no tokenizer found"):
        write_run_files(tmp_path / "run", ModelConfig(), TrainConfig(), tmp_path / "tok")


def test_missing_run_dir_and_config(tmp_path: Path):
    missing = tmp_path / "nope"
    expected = f"no such checkpoint directory: {missing}; train one with `seqjax train --out"
    with pytest.raises(CheckpointError, match=expected):
        read_run_config(missing)
    with pytest.raises(CheckpointError, match=expected):
        Checkpointer(missing)

    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(CheckpointError, match=f"{run / CONFIG_FILE} not found"):
        read_run_config(run)
    (run / CONFIG_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="invalid JSON"):
        read_run_config(run)


def test_incompatible_format_and_bad_fields(tmp_path: Path):
    run = write_run_files(tmp_path / "run", ModelConfig(), TrainConfig(), None)
    path = run / CONFIG_FILE
    doc = json.loads(path.read_text())

    path.write_text(json.dumps({**doc, "format": 2}))
    with pytest.raises(CheckpointError, match="run format 2 .* reads format 1; upgrade seqjax"):
        read_run_config(run)

    doc["model"]["d_modle"] = 64
    path.write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match=r"config.json \[model\]: unknown ModelConfig field"):
        read_run_config(run)


# -- params by best / latest / step -----------------------------------------------------------


def test_load_model_by_best_latest_and_step(trained):
    steps = sorted(int(p.name) for p in (trained / "checkpoints").iterdir() if p.name.isdigit())
    assert steps and steps[-1] == 20
    model, latest = run_dir.load_model(trained, which="latest")
    _, by_step = run_dir.load_model(trained, which=steps[-1])
    _, best = run_dir.load_model(trained)
    assert model.config == read_run_config(trained)[0]
    jax.tree.map(np.testing.assert_array_equal, latest, by_step)
    assert jax.tree.structure(best) == jax.tree.structure(latest)
    with pytest.raises(CheckpointError, match="no such checkpoint step"):
        run_dir.load_model(trained, which=10**6)


def test_param_shapes_are_cached_beside_the_compile_cache(trained, tmp_path, monkeypatch):
    """With a compile cache, the second load restores without tracing ``model.init`` (issue
    19's start-up) and gives the same params; a torn cache file is traced and rewritten; an
    edited config.json is still caught by the shape check, and keyed apart."""
    _, plain = run_dir.load_model(trained)  # no compile cache: the trace, nothing written
    monkeypatch.setattr(sharding, "compile_cache_dir", lambda: tmp_path / "cache")
    _, first = run_dir.load_model(trained)
    files = list((tmp_path / "cache" / run_dir.PARAM_SPECS_DIR).glob("*.json"))
    assert len(files) == 1

    def no_trace(*args, **kw):
        raise AssertionError("model.init was traced although its shapes are cached")

    with monkeypatch.context() as m:
        m.setattr(jax, "eval_shape", no_trace)
        _, second = run_dir.load_model(trained)
    for other in (first, second):
        assert jax.tree.structure(other) == jax.tree.structure(plain)
        jax.tree.map(np.testing.assert_array_equal, other, plain)

    files[0].write_text('{"params/x": [[2')  # torn by a crash
    _, again = run_dir.load_model(trained)
    jax.tree.map(np.testing.assert_array_equal, again, plain)
    assert json.loads(files[0].read_text())  # rewritten whole

    edited = tmp_path / "edited"
    shutil.copytree(trained, edited)
    doc = json.loads((edited / CONFIG_FILE).read_text())
    doc["model"]["d_model"] *= 2
    (edited / CONFIG_FILE).write_text(json.dumps(doc))
    for _ in range(2):  # traced, then from the cache: the same one-line error
        with pytest.raises(CheckpointError, match="model expects"):
            run_dir.load_model(edited)
    assert len(list(files[0].parent.glob("*.json"))) == 2


def test_params_are_cached_beside_the_compile_cache(trained, tmp_path, monkeypatch):
    """With a compile cache and ``keep_params`` (translate's loads), a second load reads the
    params from one safetensors file instead of Orbax (issue 19's start-up), the same arrays; a new save, a deleted step or a torn file
    sends the load back to the checkpoint; ``which`` values are kept apart; an edited
    config.json still gets the checkpoint's one-line shape error."""
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    _, plain_best = run_dir.load_model(run, keep_params=True)  # no compile cache: nothing written
    _, plain_latest = run_dir.load_model(run, which="latest", keep_params=True)
    monkeypatch.setattr(sharding, "compile_cache_dir", lambda: tmp_path / "cache")
    cache = tmp_path / "cache" / run_dir.PARAMS_CACHE_DIR
    run_dir.load_model(run)  # a one-off load (training from a base, ...) keeps nothing
    assert not cache.exists()
    run_dir.load_model(run, keep_params=True)
    run_dir.load_model(run, which="latest", keep_params=True)
    assert len(list(cache.glob("*.safetensors"))) == 2

    def no_orbax(*args, **kw):
        raise AssertionError("the checkpoint was read although its params are cached")

    with monkeypatch.context() as m:
        m.setattr(Checkpointer, "restore_params", no_orbax)
        _, best = run_dir.load_model(run, keep_params=True)
        _, latest = run_dir.load_model(run, which="latest", keep_params=True)
    for got, want in ((best, plain_best), (latest, plain_latest)):
        assert jax.tree.structure(got) == jax.tree.structure(want)
        jax.tree.map(np.testing.assert_array_equal, got, want)

    # A new latest step: the cached copy is stale and must not be served.
    doubled = jax.tree.map(lambda x: x * 2, plain_latest)
    with Checkpointer(run, async_save=False) as ckpt:
        ckpt.save(21, doubled, {"count": np.zeros((), np.int32)}, {})
    _, after_save = run_dir.load_model(run, which="latest", keep_params=True)
    jax.tree.map(np.testing.assert_array_equal, after_save, doubled)
    # ... and deleting it brings back step 20's params, not the cached step 21.
    shutil.rmtree(run / "checkpoints" / "21")
    _, after_delete = run_dir.load_model(run, which="latest", keep_params=True)
    jax.tree.map(np.testing.assert_array_equal, after_delete, plain_latest)

    for f in cache.glob("*.safetensors"):
        f.write_bytes(f.read_bytes()[:100])  # torn by a crash: read Orbax, rewrite
    _, again = run_dir.load_model(run, keep_params=True)
    jax.tree.map(np.testing.assert_array_equal, again, plain_best)
    with monkeypatch.context() as m:
        m.setattr(Checkpointer, "restore_params", no_orbax)
        run_dir.load_model(run, keep_params=True)  # rewritten whole

    doc = json.loads((run / CONFIG_FILE).read_text())
    doc["model"]["d_model"] *= 2
    (run / CONFIG_FILE).write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="model expects"):
        run_dir.load_model(run, keep_params=True)


def test_a_cached_load_does_not_import_orbax(trained, tmp_path):
    """The point of the params cache: a fresh process that finds it never imports Orbax."""
    env = {
        **os.environ,
        "SEQJAX_CACHE_DIR": str(tmp_path / "cache"),
        "SEQJAX_NO_COMPILE_CACHE": "0",
    }
    code = (
        "import sys; from seqjax import sharding; from seqjax.app import run_dir; "
        "sharding.enable_compile_cache(); run_dir.load_model(sys.argv[1], keep_params=True); "
        "print(any(m.startswith('orbax') for m in sys.modules))"
    )
    runs = [
        subprocess.run([sys.executable, "-c", code, str(trained)], env=env, capture_output=True,
                       text=True, check=True).stdout.split()[-1]
        for _ in range(2)
    ]  # fmt: skip
    assert runs == ["True", "False"]


def test_tokenizers_of_a_run(trained):
    src_tok, tgt_tok = run_dir.read_tokenizers(trained)
    assert src_tok.vocab_size == tgt_tok.vocab_size == read_run_config(trained)[0].vocab_size


# -- the corpus a run was trained on ----------------------------------------------------------


def test_corpus_split_bundled_or_user_files(toy_corpus):
    user = TrainConfig(src=str(toy_corpus / "train.src"), tgt=str(toy_corpus / "train.tgt"))
    assert len(run_dir.corpus_split(user, "train").src) == 260
    assert run_dir.corpus_split(user, "valid") is None  # no valid files given
    assert run_dir.corpus_split(user, "test") is None
    bundled = TrainConfig()
    assert len(run_dir.corpus_split(bundled, "valid").src) > 0


def test_evaluation_split_of_a_run_on_user_files(trained):
    name, data = run_dir.evaluation_split(trained, "valid")
    assert name == "valid" and len(data.src) == 40
    for split in ("train", "test"):
        with pytest.raises(DataError, match="trained on user files"):
            run_dir.evaluation_split(trained, split)


# -- metrics.jsonl ----------------------------------------------------------------------------


def test_truncate_metrics_keeps_records_up_to_the_restored_step(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text('{"step": 1, "loss": 1}\n{"step": 2}\n{"step": 3, "loss": 3}\n{"st')
    run_dir.truncate_metrics(tmp_path, 2)
    assert [json.loads(x)["step"] for x in p.read_text().splitlines()] == [1, 2]
    run_dir.truncate_metrics(tmp_path / "absent", 5)  # nothing to do, no error
    assert not (tmp_path / "absent" / "metrics.jsonl").exists()
    run_dir.append_metrics(tmp_path, {"step": 3})
    assert json.loads(p.read_text().splitlines()[-1]) == {"step": 3}


# -- damaged or missing runs: one-line errors -------------------------------------------------


def _input(tmp_path) -> str:
    p = tmp_path / "in.txt"
    p.write_text("alpha\n", encoding="utf-8")
    return str(p)


def _copy_run(trained: Path, tmp_path: Path) -> Path:
    run = tmp_path / "copy"
    shutil.copytree(trained, run)
    return run


@pytest.mark.parametrize(
    "content, expect",
    [
        ("FORMAT99", "format 99"),
        ("FORMAT_STR", "format 'one'"),
        ('{"model": {"d_model": 3', "invalid JSON"),
        ("[1, 2]", "JSON object"),
        (b"\xff\xfe{}", "invalid JSON"),
        ("", "invalid JSON"),
        ("NO_MODEL", "'model'"),
        ("BAD_FIELD", "d_modell"),
    ],
    ids=["newer-format", "bad-format", "truncated", "array", "binary", "empty", "no-model",
         "unknown-field"],
)  # fmt: skip
def test_bad_config_json_one_line(trained, tmp_path, one_line_error, content, expect):
    run = _copy_run(trained, tmp_path)
    doc = json.loads((run / "config.json").read_text())
    if content == "FORMAT99":
        content = json.dumps({**doc, "format": 99})
    elif content == "FORMAT_STR":
        content = json.dumps({**doc, "format": "one"})
    elif content == "NO_MODEL":
        content = json.dumps({k: v for k, v in doc.items() if k != "model"})
    elif content == "BAD_FIELD":
        content = json.dumps({**doc, "model": {**doc["model"], "d_modell": 8}})
    if isinstance(content, str):
        content = content.encode()
    (run / "config.json").write_bytes(content)
    rc = main(["translate", "--checkpoint", str(run), "--input", _input(tmp_path)])
    assert rc == 2
    one_line_error("config.json", expect)
    with pytest.raises(CheckpointError, match=re.escape(expect)):
        seqjax.load(str(run))


def test_run_dir_without_checkpoints_one_line(trained, tmp_path, one_line_error):
    run = _copy_run(trained, tmp_path)
    shutil.rmtree(run / "checkpoints")
    shutil.rmtree(run / "best", ignore_errors=True)
    rc = main(["translate", "--checkpoint", str(run), "--input", _input(tmp_path)])
    assert rc == 2
    one_line_error(str(run))


@pytest.mark.parametrize("path", ["does/not/exist", "FILE"])
def test_load_bad_path_raises_checkpoint_error(tmp_path, path):
    if path == "FILE":
        path = tmp_path / "a_file"
        path.write_text("x")
    with pytest.raises(CheckpointError) as e:
        seqjax.load(str(path))
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and str(path) in msg


# -- config.json fields: types checked, format-1 fields required, later ones defaulted ---------


@pytest.mark.parametrize(
    "section, field, value, expect",
    [
        ("model", "d_model", None, "missing ModelConfig field(s) d_model"),
        ("train", "seed", None, "missing TrainConfig field(s) seed"),
        ("model", "d_model", "abc", "d_model='abc': expected an integer"),
        ("train", "max_minutes", "abc", "max_minutes='abc': expected a number"),
    ],
)
def test_config_json_field_missing_or_of_wrong_type(
    trained, tmp_path, one_line_error, section, field, value, expect
):
    run = _copy_run(trained, tmp_path)
    doc = json.loads((run / "config.json").read_text())
    if value is None:
        del doc[section][field]
    else:
        doc[section][field] = value
    (run / "config.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match=re.escape(expect)):
        read_run_config(run)
    assert main(["translate", "--checkpoint", str(run), "--input", _input(tmp_path)]) == 2
    one_line_error("config.json", expect)


def test_config_json_without_later_fields_still_loads(trained, tmp_path):
    run = _copy_run(trained, tmp_path)
    doc = json.loads((run / "config.json").read_text())
    for field in ("activation", "layer_norm_eps", "rnn_hidden"):  # added after format 1
        del doc["model"][field]
    for field in ("mesh", "objective", "max_bad_steps"):
        del doc["train"][field]
    (run / "config.json").write_text(json.dumps(doc))
    model_cfg, train_cfg = read_run_config(run)
    assert model_cfg.activation == "relu" and train_cfg.mesh == "auto"
