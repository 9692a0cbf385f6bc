"""``seqjax.config``: invalid decoding options are one-line ``ConfigError``s naming the field."""

from __future__ import annotations

import pytest

from seqjax.config import ConfigError, DecodeConfig


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
    ],
)
def test_decode_config_rejects_bad_values(kwargs, field):
    with pytest.raises(ConfigError, match=field) as e:
        DecodeConfig(**kwargs)
    assert len(str(e.value).splitlines()) == 1
