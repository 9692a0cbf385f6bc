"""seqjax.decoding.decode: dispatch on a DecodeConfig."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from toy_models import (
    IDS,
    RNN_STATIC,
    amateur_step,
    assert_same_result,
    make_rnn_cache,
    rnn_step,
    rnn_step_no_attention,
)

from seqjax.config import DecodeConfig
from seqjax.decoding import beam_search, decode, jitted


def test_decode_dispatches_on_config(cache3, rnn_greedy):
    kw = dict(max_len=6, **IDS)
    g = decode(rnn_step, cache3, DecodeConfig(method="greedy"), **kw)
    assert_same_result(g, rnn_greedy)
    cfg = DecodeConfig(method="beam", beam_size=3, n_best=3, alpha=0.0)
    b = decode(rnn_step, cache3, cfg, **kw)
    direct = jitted(beam_search)(rnn_step, cache3, beam_size=3, n_best=3, **RNN_STATIC)
    assert_same_result(b, direct)
    s = decode(rnn_step, cache3, DecodeConfig(method="sample", top_k=1, num_samples=2), **kw)
    np.testing.assert_array_equal(s.tokens, jnp.repeat(rnn_greedy.tokens, 2, axis=1))
    amateur = (amateur_step, make_rnn_cache(3, seed=9))
    cfg = DecodeConfig(method="contrastive", beam_size=1, contrastive_lambda=0.0)
    assert_same_result(decode(rnn_step, cache3, cfg, amateur=amateur, **kw), rnn_greedy)
    with pytest.raises(ValueError, match="amateur"):
        decode(rnn_step, cache3, cfg, **kw)
    with pytest.raises(ValueError, match="cross-attention"):
        decode(rnn_step_no_attention, cache3, DecodeConfig(coverage=0.2), **kw)
