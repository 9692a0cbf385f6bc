"""seqjax.decoding.outputs: alignments and full step log-probs, per returned hypothesis,
equal the NumPy twin along each path; off by default and then absent from the program."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from toy_models import (
    EOS,
    EXPERT_W,
    RNN_STATIC,
    S,
    V,
    amateur_step,
    make_rnn_cache,
    np_rnn_step,
    rnn_step,
    rnn_step_no_attention,
)

from seqjax.decoding import (
    STATIC_ARGNAMES,
    beam_sample,
    beam_search,
    contrastive,
    diverse_beam_search,
    greedy,
    jitted,
    sample,
)

BOTH = ("alignments", "step_log_probs")
L = RNN_STATIC["max_len"]


def np_path(cache, b, tokens):
    """(attention [n, S], log-probs [n, V]) of the twin along ``tokens`` of source ``b``."""
    h = np.asarray(cache["h"][b], np.float64)
    keys = np.asarray(cache["keys"][b], np.float64)
    mask = np.asarray(cache["src_mask"][b])
    prev, att, lps = 1, [], []
    for tok in tokens:
        lp, h, a = np_rnn_step(EXPERT_W, prev, h, keys, mask)
        att.append(a)
        lps.append(lp)
        prev = tok
    return np.array(att), np.array(lps)


def check_outputs_match_twin(r, cache):
    B, K = r.tokens.shape[:2]
    assert r.alignments.shape == (B, K, L, S) and r.step_log_probs.shape == (B, K, L, V)
    for b in range(B):
        for k in range(K):
            n = int(r.lengths[b, k])
            if n == 0:
                continue
            tokens = np.asarray(r.tokens[b, k, :n]).tolist()
            att, lps = np_path(cache, b, tokens)
            np.testing.assert_allclose(r.alignments[b, k, :n], att, atol=1e-4)
            np.testing.assert_allclose(r.step_log_probs[b, k, :n], lps, atol=1e-4)
            assert not np.any(r.alignments[b, k, n:]) and not np.any(r.step_log_probs[b, k, n:])
    # the reported per-token log-probs are the chosen entries of the full ones
    chosen = np.take_along_axis(np.asarray(r.step_log_probs), np.asarray(r.tokens)[..., None], 3)
    np.testing.assert_allclose(chosen[..., 0], r.log_probs, atol=1e-5)


@pytest.mark.parametrize(
    "decoder, kw",
    [
        (greedy, {}),
        (sample, dict(key=jax.random.key(0), num_samples=2, temperature=2.0)),
        (beam_search, dict(beam_size=3, n_best=3, alpha=0.6)),
        (beam_search, dict(beam_size=3, n_best=2, alpha=0.6, early_stopping=False)),
        (beam_sample, dict(key=jax.random.key(0), beam_size=3, n_best=2, temperature=2.0)),
        (diverse_beam_search, dict(beam_size=4, num_groups=2, n_best=4, diversity_penalty=1.0)),
    ],
)
def test_outputs_equal_the_twin_along_each_path(cache3, decoder, kw):
    on = jitted(decoder)(rnn_step, cache3, outputs=BOTH, **kw, **RNN_STATIC)
    off = jitted(decoder)(rnn_step, cache3, **kw, **RNN_STATIC)
    np.testing.assert_array_equal(on.tokens, off.tokens)  # asking for outputs changes nothing
    np.testing.assert_allclose(on.scores, off.scores, atol=1e-6)
    assert off.alignments is None and off.step_log_probs is None
    check_outputs_match_twin(on, cache3)
    assert np.any(np.asarray(on.tokens) == EOS)


def _hlo(decoder, cache, **kw):
    run = jax.jit(decoder, static_argnames=STATIC_ARGNAMES[decoder])
    return run.lower(rnn_step, cache, **kw, **RNN_STATIC).as_text()


@pytest.mark.parametrize(
    "decoder, kw, rows",
    [
        (greedy, {}, "3"),
        (beam_search, dict(beam_size=3, n_best=2), "3x3"),
        (sample, dict(key=jax.random.key(0), num_samples=2), "6"),
    ],
)
def test_off_by_default_and_then_absent_from_the_program(cache3, decoder, kw, rows):
    """No [.., L, V] or [.., L, S] buffer exists unless asked for: nothing extra in the
    loop state, no extra outputs."""
    off = _hlo(decoder, cache3, **kw)
    assert off == _hlo(decoder, cache3, outputs=(), **kw)
    on = _hlo(decoder, cache3, outputs=BOTH, **kw)
    for shape in (f"tensor<{rows}x{L}x{V}xf32>", f"tensor<{rows}x{L}x{S}xf32>"):
        assert shape in on and shape not in off, shape
    out = jax.eval_shape(
        lambda c: jitted(decoder)(rnn_step, c, **kw, **RNN_STATIC), cache3
    )  # fmt: skip
    assert len(jax.tree.leaves(out)) == 4


def test_bad_outputs_are_one_line_errors(cache3):
    with pytest.raises(ValueError, match="outputs: unknown 'scores'"):
        greedy(rnn_step, cache3, outputs=("scores",), **RNN_STATIC)
    with pytest.raises(ValueError, match="alignments need a step_fn returning cross-attention"):
        beam_search(rnn_step_no_attention, cache3, outputs=("alignments",), **RNN_STATIC)
    # step log-probs need no attention
    r = greedy(rnn_step_no_attention, cache3, outputs=("step_log_probs",), **RNN_STATIC)
    assert r.step_log_probs.shape == (3, 1, L, V) and r.alignments is None


# the options of test_contrastive.py: the runs without outputs are compiled once
CONTRASTIVE = dict(contrastive_lambda=1.0, contrastive_alpha=0.1)


@pytest.mark.parametrize("beam", [dict(beam_size=1, n_best=1), dict(beam_size=3, n_best=3)])
def test_contrastive_outputs_are_the_experts_along_each_path(cache3, beam):
    """Contrastive decoding reports the expert's attention and distribution at each token
    it chose (the twin along the returned tokens), and asking changes no choice."""
    amateur_cache = make_rnn_cache(3, seed=9)
    args = (rnn_step, cache3, amateur_step, amateur_cache)
    on = jitted(contrastive)(*args, outputs=BOTH, **CONTRASTIVE, **beam, **RNN_STATIC)
    off = jitted(contrastive)(*args, **CONTRASTIVE, **beam, **RNN_STATIC)
    np.testing.assert_array_equal(on.tokens, off.tokens)
    np.testing.assert_allclose(on.scores, off.scores, atol=1e-6)
    assert off.alignments is None and off.step_log_probs is None
    check_outputs_match_twin(on, cache3)
    # the amateur steered the choice: not the expert's own greedy path everywhere
    expert = jitted(greedy)(rnn_step, cache3, **RNN_STATIC)
    assert beam["beam_size"] > 1 or not np.array_equal(on.tokens, expert.tokens)


def _lowered(decoder, args, **kw):
    run = jax.jit(decoder, static_argnames=STATIC_ARGNAMES[decoder])
    return run.lower(*args, **kw, **RNN_STATIC).as_text()


@pytest.mark.parametrize(
    "decoder, kw, rows",
    [
        (contrastive, dict(beam_size=1), "3"),
        (contrastive, dict(beam_size=3, n_best=2), "3x3"),
        (diverse_beam_search, dict(beam_size=4, num_groups=2, n_best=2), "6x2"),
    ],
)
def test_contrastive_and_diverse_programs_carry_nothing_when_off(cache3, decoder, kw, rows):
    """Off (the default): no output buffer and no host callback in the program; asking for
    outputs adds the buffers, a stream adds the callback."""
    args = (rnn_step, cache3)
    if decoder is contrastive:
        args = (*args, amateur_step, make_rnn_cache(3, seed=9))
    off = _lowered(decoder, args, **kw)
    assert off == _lowered(decoder, args, outputs=(), stream=None, **kw)
    on = _lowered(decoder, args, outputs=BOTH, **kw)
    for shape in (f"tensor<{rows}x{L}x{V}xf32>", f"tensor<{rows}x{L}x{S}xf32>"):
        assert shape in on and shape not in off, shape
    assert "callback" not in off and "callback" in _lowered(decoder, args, stream=1, **kw)
