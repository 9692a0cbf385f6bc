"""Call-site validation: every public decoder, ``score`` and ``init_cache`` refuse bad
arguments with a one-line ``ValueError`` naming the argument and its range, before any
decoding (eagerly and under ``jitted``)."""

from __future__ import annotations

import jax.numpy as jnp
import pytest
from conftest import JIT, model_and_params, model_inputs
from toy_models import IDS, bigram_step, make_rnn_cache, rnn_step, rnn_step_no_attention

from seqjax.decoding import beam_search, contrastive, greedy, jitted, sample, score

KW = dict(batch_size=2, max_len=6, **IDS)


def _greedy(**kw):
    return greedy(bigram_step, None, **{**KW, **kw})


def _sample(**kw):
    import jax

    return sample(bigram_step, None, key=jax.random.key(0), **{**KW, **kw})


def _beam(**kw):
    return beam_search(bigram_step, None, beam_size=2, **{**KW, **kw})


def _contrastive(**kw):
    return contrastive(bigram_step, None, bigram_step, None, **{**KW, **kw})


CASES = [
    (_sample, dict(temperature=0.0), "temperature must be > 0"),
    (_sample, dict(temperature=-1.0), "temperature must be > 0"),
    (_sample, dict(temperature=jnp.array([1.0, 0.0])), "temperature must be > 0"),
    (_sample, dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
    (_sample, dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
    (_sample, dict(top_k=-1), "top_k must be >= 0"),
    (_sample, dict(num_samples=0), "num_samples must be >= 1"),
    (_greedy, dict(repetition_penalty=0.0), "repetition_penalty must be > 0"),
    (_beam, dict(repetition_penalty=-1.0), "repetition_penalty must be > 0"),
    (_greedy, dict(min_len=7), r"min_len must be in \[0, max_len=6\]"),
    (_greedy, dict(min_len=-1), "min_len must be >= 0"),
    (_greedy, dict(max_len=0), "max_len must be >= 1"),
    (_greedy, dict(no_repeat_ngram_size=-2), "no_repeat_ngram_size must be >= 0"),
    (_greedy, dict(eos_id=6), r"eos_id must be in \[0, 6\)"),
    (_beam, dict(bos_id=9), r"bos_id must be in \[0, 6\)"),
    (_greedy, dict(prefix=jnp.array([[3, 9], [3, 0]])), r"prefix must be in \[0, 6\)"),
    (_greedy, dict(prefix=jnp.array([3, 4])), r"prefix must have shape \[2, P\]"),
    (_greedy, dict(prefix=jnp.full((2, 7), 3)), r"prefix length must be <= max_len"),
    (_beam, dict(coverage=-0.5), "coverage must be >= 0"),
    (_beam, dict(coverage=0.5), "needs a step_fn returning cross-attention"),
    (_contrastive, dict(coverage=0.5, beam_size=2), "needs a step_fn returning"),
    (_contrastive, dict(contrastive_alpha=1.5), r"contrastive_alpha must be in \[0, 1\]"),
    (_contrastive, dict(amateur_temperature=0.0), "amateur_temperature must be > 0"),
    (_beam, dict(alpha=float("nan")), "alpha must be finite"),
]


@pytest.mark.parametrize("call, kwargs, message", CASES)
def test_decoders_refuse_bad_arguments(call, kwargs, message):
    with pytest.raises(ValueError, match=message) as e:
        call(**kwargs)
    assert len(str(e.value).splitlines()) == 1


JIT_CASES = [
    (sample, dict(temperature=0.0), "temperature must be > 0"),
    (sample, dict(top_p=2.0), r"top_p must be in \(0, 1\]"),
    (greedy, dict(repetition_penalty=0.0), "repetition_penalty must be > 0"),
    (greedy, dict(min_len=9), r"min_len must be in \[0, max_len=6\]"),
    (beam_search, dict(coverage=0.3), "needs a step_fn returning cross-attention"),
]


@pytest.mark.parametrize("decoder, kwargs, message", JIT_CASES)
def test_jitted_refuses_bad_values_before_tracing(decoder, kwargs, message):
    import jax

    extra = {"key": jax.random.key(0)} if decoder is sample else {}
    with pytest.raises(ValueError, match=message) as e:
        jitted(decoder)(bigram_step, None, **KW, **extra, **kwargs)
    assert len(str(e.value).splitlines()) == 1


def test_jitted_coverage_needs_attention_with_rnn_steps():
    cache = make_rnn_cache(2, 0)
    kw = dict(max_len=4, **IDS, beam_size=2, coverage=0.2)
    with pytest.raises(ValueError, match="cross-attention"):
        jitted(beam_search)(rnn_step_no_attention, cache, **kw)
    jitted(beam_search)(rnn_step, cache, **kw)  # with attention: fine


def test_bad_step_outputs_and_src_mask():
    bad_step = lambda t, p, c: (jnp.zeros((t.shape[0], 6, 1)), c)  # noqa: E731
    with pytest.raises(ValueError, match=r"logits of shape \[B, V\] = \[2, V\]"):
        greedy(bad_step, None, **KW)
    cache = make_rnn_cache(2, 0)
    with pytest.raises(ValueError, match=r"src_mask must have shape \[2, 3\]"):
        beam_search(rnn_step, cache, max_len=4, **IDS, src_mask=jnp.ones((2, 4), bool))


def test_cache_capacity_is_checked():
    model, params = model_and_params("transformer")
    src, mask, _ = model_inputs(model.config.vocab_size, pad_rows=False)
    cache = JIT["init_cache"](model, params, JIT["encode"](model, params, src, mask), mask, 5)
    ids = dict(bos_id=1, eos_id=2, pad_id=0)
    message = r"max_len must be <= 5, the cache's capacity"
    for call in (
        lambda: greedy(model.step_fn(params), cache, max_len=6, **ids),
        lambda: greedy(model.step, cache, params=params, max_len=6, **ids),
        lambda: jitted(beam_search)(model.step, cache, params=params, max_len=8, **ids),
    ):
        with pytest.raises(ValueError, match=message):
            call()
    with pytest.raises(ValueError, match=r"targets length must be <= 5"):
        score(model.step, cache, jnp.full((3, 6), 4), params=params, **ids)
    with pytest.raises(ValueError, match=r"eos_id must be in \[0, "):
        score(
            model.step, cache, jnp.full((3, 5), 4), params=params, bos_id=1, eos_id=10**6, pad_id=0
        )
    with pytest.raises(ValueError, match=r"targets must have shape \[B, L\]"):
        score(model.step, cache, jnp.full((5,), 4), params=params, **ids)
    limit = model.config.max_len
    with pytest.raises(ValueError, match=rf"init_cache: max_len must be >= 1, <= {limit}"):
        model.init_cache(params, JIT["encode"](model, params, src, mask), mask, limit + 1)
    greedy(model.step, cache, params=params, max_len=5, **ids)  # at capacity: fine


def test_hf_decode_config_applies_or_refuses_forced_eos():
    from conftest import model_config

    from seqjax.interop.hf import HFImportError, hf_decode_config

    c = model_config("transformer")
    cfg = hf_decode_config({"num_beams": 3, "forced_eos_token_id": c.eos_id}, c)
    assert (cfg.forced_eos, cfg.convention) == (True, "hf")
    assert not hf_decode_config({"num_beams": 3}, c).forced_eos
    with pytest.raises(HFImportError, match="forced_eos_token_id 7 is not supported"):
        hf_decode_config({"forced_eos_token_id": 7}, c)


def test_unknown_convention_is_refused():
    with pytest.raises(ValueError, match="convention must be one of"):
        _greedy(convention="fairseq")
