"""seqjax.decoding.sample: frequencies against the truncated distribution, keys."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import JIT, model_and_params, model_inputs, without_expand
from toy_models import (
    IDS,
    PAD,
    RNN_STATIC,
    assert_same_result,
    rnn_step,
)

from seqjax.decoding import jitted, sample, score


def _truncated(logits: np.ndarray, temperature: float, top_k: int, top_p: float) -> np.ndarray:
    """Reference distribution: PAD removed, then temperature, top-k, top-p."""
    z = logits.astype(np.float64) / temperature
    z[PAD] = -np.inf
    p = np.exp(z - z.max())
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    keep = np.zeros_like(p, bool)
    keep[order[: (top_k if top_k > 0 else len(p))]] = True
    p = np.where(keep, p, 0.0)
    p /= p.sum()
    mass_above = np.cumsum(p[order]) - p[order]
    nucleus = np.zeros_like(keep)
    nucleus[order[(mass_above < top_p) | (top_p >= 1.0)]] = True
    p = np.where(nucleus & keep, p, 0.0)
    return p / p.sum()


_FREQ_LOGITS = np.array([0.3, -0.2, 1.0, 0.5, 2.0, 1.6, 0.0, -1.0], np.float32)


def fixed_step(tokens_B, position, cache):
    return jnp.tile(jnp.asarray(_FREQ_LOGITS), (tokens_B.shape[0], 1)), cache


@pytest.mark.parametrize(
    "temperature, top_k, top_p",
    [(1.0, 0, 1.0), (0.6, 0, 1.0), (1.0, 3, 1.0), (1.0, 0, 0.7), (1.7, 5, 0.8)],
)
def test_sample_frequencies_match_truncated_distribution(temperature, top_k, top_p):
    n = 20_000
    r = jitted(sample)(
        fixed_step,
        None,
        key=jax.random.key(7),
        batch_size=1,
        num_samples=n,
        max_len=1,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        **IDS,
    )
    freq = np.bincount(np.asarray(r.tokens[0, :, 0]), minlength=len(_FREQ_LOGITS)) / n
    p = _truncated(_FREQ_LOGITS, temperature, top_k, top_p)
    assert np.all(freq[p == 0] == 0), (freq, p)
    tol = 5 * np.sqrt(p * (1 - p) / n)  # 5 standard errors per token
    assert np.all(np.abs(freq - p) <= tol), (freq, p)
    # reported log-probs ignore temperature and truncation
    model_lp = jax.nn.log_softmax(_FREQ_LOGITS)
    np.testing.assert_allclose(r.log_probs[0, :, 0], model_lp[r.tokens[0, :, 0]], atol=1e-5)


def test_sample_is_reproducible_and_key_dependent(cache3):
    run = jitted(sample)
    kw = dict(num_samples=4, temperature=1.5, **RNN_STATIC)
    a = run(rnn_step, cache3, key=jax.random.key(3), **kw)
    b = run(rnn_step, cache3, key=jax.random.key(3), **kw)
    c = run(rnn_step, cache3, key=jax.random.key(4), **kw)
    assert a.tokens.shape == (3, 4, 6)
    assert_same_result(a, b, atol=0)
    assert not np.array_equal(a.tokens, c.tokens)
    # row b*K+k belongs to source b: scoring against the repeated cache agrees
    repeated = jax.tree.map(lambda x: jnp.repeat(x, 4, axis=0), cache3)
    own, _ = jitted(score)(rnn_step, repeated, a.tokens.reshape(12, 6), **IDS)
    np.testing.assert_allclose(own.reshape(3, 4, 6), a.log_probs, atol=1e-5)


def test_samples_share_the_memory_and_draw_what_repeated_rows_draw():
    """``num_samples`` rows per source over the Transformer's per-source memory (its step's
    ``expand``): the same draws as with every cache leaf repeated, prompt prefill included."""
    model, params = model_and_params("transformer")
    src, mask, _ = model_inputs(model.config.vocab_size, pad_rows=True)
    cache = JIT["init_cache"](model, params, JIT["encode"](model, params, src, mask), mask, 12)
    B = src.shape[0]
    prefix = jnp.full((B, 2), model.config.bos_id, jnp.int32).at[:, 1].set(5)
    ids = dict(bos_id=model.config.bos_id, eos_id=model.config.eos_id, pad_id=0)
    out = {}
    for name, step in (("shared", model.step), ("repeated", without_expand(model.step))):
        run = jax.jit(
            lambda p, c, k, step=step: sample(
                step, c, params=p, key=k, num_samples=3, max_len=12, prefix=prefix, **ids
            )
        )
        out[name] = run(params, cache, jax.random.key(3))
    np.testing.assert_array_equal(out["shared"].tokens, out["repeated"].tokens)
    np.testing.assert_allclose(out["shared"].scores, out["repeated"].scores, rtol=1e-5, atol=1e-5)
