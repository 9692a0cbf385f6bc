"""``seqjax.config``: invalid options and values of the wrong type are one-line
``ConfigError``s naming the field (and value and expected type)."""

from __future__ import annotations

import dataclasses

import pytest

from seqjax.config import (
    MODEL_FIELDS_V1,
    TRAIN_FIELDS_V1,
    ConfigError,
    DecodeConfig,
    ModelConfig,
    TrainConfig,
    from_dict,
    read_toml,
)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"beam_size": 0}, "beam_size"),
        ({"beam_size": -3}, "beam_size"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": float("nan")}, "top_p"),
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"beam_size": 2, "n_best": 3}, "n_best"),
        ({"top_k": -1}, "top_k"),
        ({"num_samples": 0}, "num_samples"),
        ({"max_len": 0}, "max_len"),
        ({"min_len": 9, "max_len": 8}, "min_len"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"coverage": -0.1}, "coverage"),
        ({"method": "bogus"}, "method"),
        ({"outputs": ("attention",)}, "outputs: unknown 'attention'"),
        ({"outputs": ("alignments", "alignments")}, "outputs: each name at most once"),
        ({"outputs": ["alignments"]}, "outputs must be a tuple"),
        ({"stream": 1}, "stream must be true or false"),
        ({"stream_every": 0}, "stream_every must be an integer >= 1"),
    ],
)
def test_decode_config_rejects_bad_values(kwargs, field):
    with pytest.raises(ConfigError, match=field) as e:
        DecodeConfig(**kwargs)
    assert len(str(e.value).splitlines()) == 1


# -- types checked per field at the boundary (CLI --set, TOML, config.json) ---------------------


@pytest.mark.parametrize(
    "cls, data, needles",
    [
        (ModelConfig, {"d_model": "abc"}, ["d_model='abc'", "integer"]),
        (ModelConfig, {"dropout": "x"}, ["dropout='x'", "number"]),
        (ModelConfig, {"pre_ln": 1}, ["pre_ln=1", "true or false"]),
        (TrainConfig, {"max_minutes": "abc"}, ["max_minutes='abc'", "number"]),
        (TrainConfig, {"seed": 1e23}, ["seed=1e+23", "integer"]),
        (TrainConfig, {"src": 3, "tgt": "t"}, ["src=3", "string"]),
        (TrainConfig, {"length_buckets": [8, "x"]}, ["length_buckets=[8, 'x']", "list"]),
        (DecodeConfig, {"beam_size": 2.5}, ["beam_size=2.5", "integer"]),
        (DecodeConfig, {"outputs": "alignments"}, ["outputs='alignments'", "list of strings"]),
        (DecodeConfig, {"stream": "yes"}, ["stream='yes'", "true or false"]),
    ],
)
def test_wrong_type_names_field_value_and_type(cls, data, needles):
    with pytest.raises(ConfigError) as e:
        from_dict(cls, data, where="here")
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and msg.startswith("here: ")
    for n in needles:
        assert n in msg, msg


def test_ints_are_numbers_and_lists_tuples():
    cfg = from_dict(TrainConfig, {"max_minutes": 3, "ss_k": 2, "length_buckets": [8, 16]})
    assert cfg.max_minutes == 3.0 and isinstance(cfg.max_minutes, float)
    assert cfg.ss_k == 2.0 and cfg.length_buckets == (8, 16)


def test_required_fields_are_those_of_format_1():
    with pytest.raises(ConfigError, match="missing TrainConfig field.*seed"):
        from_dict(TrainConfig, {}, required=("seed",))
    # Fields added after format 1 are not required: older configs still load.
    assert set(MODEL_FIELDS_V1) < {f.name for f in dataclasses.fields(ModelConfig)}
    assert "activation" not in MODEL_FIELDS_V1 and "mesh" not in TRAIN_FIELDS_V1
    assert set(TRAIN_FIELDS_V1) < {f.name for f in dataclasses.fields(TrainConfig)}


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"total_steps": -1}, "total_steps"),
        ({"total_steps": 0}, "total_steps"),
        ({"eval_every": 0}, "eval_every"),
        ({"save_every": 0}, "save_every"),
        ({"log_every": 0}, "log_every"),
        ({"max_minutes": -5.0}, "max_minutes"),
        ({"max_minutes": float("nan")}, "max_minutes"),
        ({"seed": 10**23}, "seed"),
        ({"seed": -1}, "seed"),
        ({"valid_src": "v.src"}, "valid_tgt"),
        ({"valid_tgt": "v.tgt"}, "valid_src"),
    ],
)
def test_train_config_rejects_bad_values(kwargs, field):
    with pytest.raises(ConfigError, match=field) as e:
        TrainConfig(**kwargs)
    assert len(str(e.value).splitlines()) == 1


@pytest.mark.parametrize(
    "data, expect",
    [(b"[train]\nseed = 1\n\xff\n", "not UTF-8"), (None, "is a directory")],
    ids=["non-utf8", "directory"],
)
def test_read_toml_bad_file_is_a_config_error(tmp_path, data, expect):
    path = tmp_path / "c.toml"
    if data is None:
        path.mkdir()
    else:
        path.write_bytes(data)
    with pytest.raises(ConfigError, match=expect):
        read_toml(path)


def test_decode_outputs_and_stream_round_trip_through_toml(tmp_path):
    from seqjax.config import dumps_toml

    cfg = DecodeConfig(outputs=("alignments", "step_log_probs"), stream=True)
    path = tmp_path / "d.toml"
    path.write_text(dumps_toml({"decode": cfg}))
    assert from_dict(DecodeConfig, read_toml(path)["decode"]) == cfg
    assert hash(cfg) == hash(dataclasses.replace(cfg))  # static: a jit cache key
