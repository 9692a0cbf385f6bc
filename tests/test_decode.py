"""seqjax.decoding.decode: dispatch on a DecodeConfig."""

from __future__ import annotations

import jax
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
from seqjax.decoding import beam_search, decode, greedy, jitted


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


@pytest.mark.parametrize("variant", [dict(diverse_groups=2), dict(beam_sample=True)])
@pytest.mark.parametrize(
    "option",
    [dict(max_new_tokens=3), dict(min_new_tokens=1), dict(bad_words=((1, 2),)),
     dict(suppress_tokens=(2,)), dict(score_prompt=True)],
)  # fmt: skip
def test_beam_variants_refuse_options_they_do_not_take(variant, option):
    """diverse/sampled beam search lack issue 14's options: set, they are refused in one
    line, never silently dropped."""
    table = jnp.log(jnp.array([[0.1, 0.8, 0.05, 0.05], [0.1, 0.1, 0.7, 0.1],
                               [0.1, 0.1, 0.1, 0.7], [0.25, 0.25, 0.25, 0.25]]))  # fmt: skip

    def step(tok, pos, c):
        return table[tok], c

    ids = dict(bos_id=0, eos_id=3, pad_id=0, batch_size=1)
    base = dict(method="beam", beam_size=2, n_best=2, **variant)
    length = {} if "max_new_tokens" in option else dict(max_len=5)
    assert decode(step, None, DecodeConfig(**base, max_len=5), **ids).tokens.shape[-1] == 5
    name = next(iter(option))
    with pytest.raises(ValueError, match=f"^{name} is not supported with"):
        decode(step, None, DecodeConfig(**base, **length, **option), **ids)


METHODS = [
    dict(method="greedy"),
    dict(method="sample", num_samples=2, temperature=2.0),
    dict(method="beam", beam_size=3, n_best=2),
    dict(method="beam", beam_size=3, n_best=2, early_stopping="true"),
    dict(method="beam", beam_size=4, n_best=2, diverse_groups=2, diversity_penalty=1.0),
    dict(method="beam", beam_size=3, n_best=2, beam_sample=True),
    dict(method="contrastive", beam_size=1, contrastive_lambda=1.0),
    dict(method="contrastive", beam_size=3, n_best=2, contrastive_lambda=1.0),
]


@pytest.mark.parametrize("options", METHODS)
def test_decode_passes_outputs_and_stream_to_every_method(cache3, options):
    """Every method's program (lowered, not compiled) holds the config's outputs and the
    streaming callback exactly when asked; a streaming config needs a consumer."""
    kw = dict(max_len=6, amateur=(amateur_step, make_rnn_cache(3, seed=9)), **IDS)
    both = ("alignments", "step_log_probs")

    def program(cfg, stream=None):
        run = jax.jit(lambda c, sid: decode(rnn_step, c, cfg, stream=sid, **kw))
        lowered = run.lower(cache3, stream)
        return lowered.as_text(), lowered.out_info

    text, out = program(DecodeConfig(**options))
    assert out.alignments is None and out.step_log_probs is None and "callback" not in text
    text, out = program(DecodeConfig(outputs=both, stream=True, **options), stream=1)
    B, K, L = out.tokens.shape
    assert out.alignments.shape == (B, K, L, 3) and out.step_log_probs.shape == (B, K, L, 5)
    assert "callback" in text
    with pytest.raises(ValueError, match=r"^stream: the config streams; pass the consumer"):
        decode(rnn_step, cache3, DecodeConfig(stream=True, **options), **kw)


def test_decode_outputs_and_stream_run_as_the_decoder_does(cache3, rnn_greedy):
    from seqjax.decoding.streaming import consumer

    cfg = DecodeConfig(method="greedy", outputs=("alignments",), stream=True)
    events = []
    with consumer(lambda t, tokens: events.append(tokens.copy())) as sid:
        r = jax.block_until_ready(decode(rnn_step, cache3, cfg, stream=sid, max_len=6, **IDS))
    assert_same_result(r._replace(alignments=None), rnn_greedy)
    direct = jitted(greedy)(rnn_step, cache3, outputs=("alignments",), **RNN_STATIC)
    np.testing.assert_array_equal(r.alignments, direct.alignments)
    streamed = np.stack(events, axis=1)  # each row's token, position by position
    np.testing.assert_array_equal(streamed, np.asarray(r.tokens)[:, 0, : len(events)])
