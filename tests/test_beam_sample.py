"""seqjax.decoding.beam_sample: candidates are drawn without replacement from the
softmax of the cumulative scores, so on a one-step model the returned hypothesis has a
distribution computable exactly; sampled frequencies must match it."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from toy_models import RNN_STATIC, rnn_step

from seqjax.decoding import jitted
from seqjax.decoding.beam_sample import beam_sample

LOGITS = np.array([0.0, 1.0, 0.5, 0.2, -0.3, 0.8], np.float32)  # pad (banned), EOS = 1, ...
IDS = dict(bos_id=2, eos_id=1, pad_id=0)
N = 20_000  # sources, one draw each


def one_step(tokens_B, position, cache):
    return jnp.broadcast_to(jnp.asarray(LOGITS), (tokens_B.shape[0], LOGITS.size)), cache


def exact_best_of_draws(scores: np.ndarray, draws: int) -> np.ndarray:
    """P(token v is returned) when ``draws`` tokens are drawn without replacement from
    softmax(scores) (pad excluded) and the best-scoring drawn one is returned."""
    tokens = [v for v in range(scores.size) if v != IDS["pad_id"]]
    p = np.exp(scores[tokens] - scores[tokens].max())
    p = dict(zip(tokens, p / p.sum(), strict=True))
    out = np.zeros(scores.size)
    for seq in itertools.permutations(tokens, draws):
        prob, left = 1.0, 1.0
        for v in seq:
            prob, left = prob * p[v] / left, left - p[v]
        out[max(seq, key=lambda v: scores[v])] += prob
    return out


@pytest.mark.parametrize("beam_size, temperature", [(1, 1.0), (2, 0.7)])
def test_returned_token_frequencies_match_the_exact_distribution(beam_size, temperature):
    r = jitted(beam_sample)(
        one_step, None, key=jax.random.key(0), batch_size=N, beam_size=beam_size,
        temperature=temperature, max_len=1, **IDS,
    )  # fmt: skip
    freq = np.bincount(np.asarray(r.tokens[:, 0, 0]), minlength=LOGITS.size) / N
    scores = np.asarray(jax.nn.log_softmax(LOGITS)) / temperature
    exact = exact_best_of_draws(scores, 2 * beam_size)
    # Each frequency is a binomial mean: sd = sqrt(p (1 - p) / N) <= 0.0035. A fixed key
    # makes the test deterministic; 4 sd (+1e-3) per cell would flag a correct sampler
    # with probability < 1e-3 over the 5 cells.
    sd = np.sqrt(exact * (1 - exact) / N)
    np.testing.assert_array_less(np.abs(freq - exact), 4 * sd + 1e-3)
    # and the test discriminates: drawing WITH replacement, or plain sampling of one
    # token, gives distributions many sd away from the exact one
    with_replacement = np.zeros(LOGITS.size)
    p = np.exp(scores - scores.max())
    p[IDS["pad_id"]] = 0
    p /= p.sum()
    for seq in itertools.product(range(LOGITS.size), repeat=2 * beam_size):
        with_replacement[max(seq, key=lambda v: scores[v])] += np.prod(p[list(seq)])
    for wrong in (with_replacement, p):
        assert np.max(np.abs(wrong - exact) / np.maximum(sd, 1e-3)) > 10


def test_same_key_same_result_and_keys_differ(cache3):
    kw = dict(beam_size=3, n_best=2, alpha=0.6, temperature=3.0, **RNN_STATIC)
    a = jitted(beam_sample)(rnn_step, cache3, key=jax.random.key(1), **kw)
    b = jitted(beam_sample)(rnn_step, cache3, key=jax.random.key(1), **kw)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    outs = {
        np.asarray(
            jitted(beam_sample)(rnn_step, cache3, key=jax.random.key(k), **kw).tokens
        ).tobytes()
        for k in range(10)
    }
    assert len(outs) > 1
    # hypotheses are well formed: scores sorted, EOS-terminated or max_len long
    s = np.asarray(a.scores)
    assert np.all(s[:, 0] >= s[:, 1])
    for b_ in range(3):
        for k in range(2):
            n = int(a.lengths[b_, k])
            assert n == RNN_STATIC["max_len"] or int(a.tokens[b_, k, n - 1]) == RNN_STATIC["eos_id"]
