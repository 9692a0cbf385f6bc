"""Prompts (issue 14): per-row prompt lengths, max/min_new_tokens, the prompt unscored.

Oracles: a padded batch of prompts of different lengths equals each row decoded alone
with its own unpadded prompt; an exhaustive beam after a prompt equals brute force over
the continuations with the length penalty on generated tokens only; output lengths obey
``max_new_tokens`` exactly on a model that never stops.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from toy_models import (
    BIGRAM_STATIC,
    BOS,
    EOS,
    EXPERT_W,
    IDS,
    PAD,
    BareStep,
    C,
    V,
    bigram_step,
    hyp,
    make_rnn_cache,
    np_length_penalty,
    np_rnn_step,
    rnn_step,
)

from seqjax.decoding import beam_search, contrastive, greedy, jitted, sample

PROMPTS = [[3, 4, 4], [4], [3, 3]]  # ragged, PAD-padded to width 3
PREFIX = jnp.array([p + [PAD] * (3 - len(p)) for p in PROMPTS])
NEW = 4


def _rows_alone(decode, cache, **kw):
    """Row ``b`` of the padded batch == source ``b`` decoded alone with its own prompt."""
    batch = decode(cache, prefix=PREFIX, **kw)
    for b, prompt in enumerate(PROMPTS):
        one = jax.tree.map(lambda x, b=b: x[b : b + 1], cache)
        alone = decode(one, prefix=jnp.array([prompt]), **kw)
        K = batch.tokens.shape[1]
        assert [hyp(batch, b, k) for k in range(K)] == [hyp(alone, 0, k) for k in range(K)]
        np.testing.assert_allclose(batch.scores[b], alone.scores[0], atol=1e-5)
        n = alone.tokens.shape[-1]
        np.testing.assert_allclose(batch.log_probs[b, :, :n], alone.log_probs[0], atol=1e-5)
    return batch


@pytest.mark.parametrize("method", ["greedy", "beam", "contrastive_beam"])
def test_ragged_prompts_equal_rows_decoded_alone(method):
    cache = make_rnn_cache(3, seed=11)
    kw = dict(max_new_tokens=NEW, min_new_tokens=1, **IDS)
    if method == "greedy":
        run = lambda c, **o: jitted(greedy)(rnn_step, c, **o)  # noqa: E731
    elif method == "beam":
        run = lambda c, **o: jitted(beam_search)(rnn_step, c, beam_size=3, n_best=2, alpha=0.8, **o)  # noqa: E731, E501
    else:
        run = lambda c, **o: jitted(contrastive)(rnn_step, c, rnn_step, c, beam_size=2, **o)  # noqa: E731, E501
    batch = _rows_alone(run, cache, **kw)
    for b, prompt in enumerate(PROMPTS):
        for k in range(batch.tokens.shape[1]):
            seq = hyp(batch, b, k)
            assert seq[: len(prompt)] == prompt
            assert 2 <= len(seq) - len(prompt) <= NEW  # min_new_tokens 1: EOS not first
            np.testing.assert_array_equal(batch.log_probs[b, k, : len(prompt)], 0.0)


def _continuations(cache, b, prompt, max_new, alpha):
    """Brute force: every continuation of ``prompt``, scored on generated tokens only."""
    h = np.asarray(cache["h"][b], np.float64)
    keys, mask = np.asarray(cache["keys"][b], np.float64), np.asarray(cache["src_mask"][b])
    prev = BOS
    for tok in prompt:  # the prompt is fed, not scored
        _, h, _ = np_rnn_step(EXPERT_W, prev, h, keys, mask)
        prev = tok
    out = []

    def expand(seq, prev, h, total):
        logp, h, _ = np_rnn_step(EXPERT_W, prev, h, keys, mask)
        for tok in range(V):
            if tok == PAD:
                continue
            new, tot = seq + [tok], total + logp[tok]
            if tok == EOS or len(new) == max_new:
                out.append((tot / np_length_penalty(len(new), alpha, "gnmt"), prompt + new))
            else:
                expand(new, tok, h, tot)

    expand([], prev, h, 0.0)
    return sorted(out, key=lambda x: -x[0])


def test_beam_after_prompt_matches_brute_force():
    cache = make_rnn_cache(3, seed=12)
    new, alpha = 3, 0.9
    r = jitted(beam_search)(
        rnn_step, cache, prefix=PREFIX, max_new_tokens=new, beam_size=(V - 2) ** (new - 1),
        n_best=4, alpha=alpha, **IDS,
    )  # fmt: skip
    for b, prompt in enumerate(PROMPTS):
        expected = _continuations(cache, b, prompt, new, alpha)[:4]
        assert [hyp(r, b, k) for k in range(4)] == [s for _, s in expected]
        np.testing.assert_allclose(r.scores[b], [s for s, _ in expected], rtol=1e-4)


def test_score_prompt_scores_and_counts_the_prompt():
    cache = make_rnn_cache(3, seed=13)
    kw = dict(prefix=PREFIX, max_len=6, **IDS)
    plain = jitted(greedy)(rnn_step, cache, **kw)
    scored = jitted(greedy)(rnn_step, cache, score_prompt=True, **kw)
    np.testing.assert_array_equal(plain.tokens, scored.tokens)
    for b, prompt in enumerate(PROMPTS):
        p = len(prompt)
        np.testing.assert_array_equal(plain.log_probs[b, 0, :p], 0.0)
        assert np.all(np.asarray(scored.log_probs[b, 0, :p]) < 0)
        np.testing.assert_allclose(plain.log_probs[b, 0, p:], scored.log_probs[b, 0, p:])
        np.testing.assert_allclose(scored.scores[b, 0], np.sum(scored.log_probs[b, 0]), rtol=1e-5)
        np.testing.assert_allclose(plain.scores[b, 0], np.sum(plain.log_probs[b, 0]), rtol=1e-5)


def test_max_new_tokens_cuts_each_row_after_its_prompt():
    """``c -> c`` forever: every row runs to exactly ``max_new_tokens`` new tokens."""
    prefix = jnp.array([[C, PAD, PAD], [4, 3, C]])
    static = {k: v for k, v in BIGRAM_STATIC.items() if k != "max_len"}
    for run in (
        lambda **o: jitted(greedy)(bigram_step, None, **o),
        lambda **o: jitted(sample)(
            bigram_step, None, key=jax.random.key(1), num_samples=2, temperature=0.01, **o
        ),  # fmt: skip
        lambda **o: jitted(beam_search)(bigram_step, None, beam_size=2, min_new_tokens=NEW, **o),
    ):
        r = run(prefix=prefix, max_new_tokens=NEW, **static)
        assert r.tokens.shape[-1] == 3 + NEW
        np.testing.assert_array_equal(np.asarray(r.lengths)[:, 0], [1 + NEW, 3 + NEW])
        assert hyp(r, 0, 0) == [C] * (1 + NEW)


def test_min_new_tokens_counts_after_the_prompt():
    # after "b a" the bigram toy ends at once; min_new_tokens 2 forbids that
    prefix = jnp.array([[4, 3], [3, PAD]])
    r = jitted(greedy)(bigram_step, None, prefix=prefix, min_new_tokens=jnp.array([2, 0]),
                       **BIGRAM_STATIC)  # fmt: skip
    assert hyp(r, 0, 0)[:2] == [4, 3] and len(hyp(r, 0, 0)) >= 5
    assert hyp(r, 1, 0) == [3, EOS]


@pytest.mark.parametrize(
    "kw, message",
    [
        (
            dict(prefix=jnp.array([[3, EOS], [3, 4]])),
            r"prefix must not contain eos_id 2 \(a prompt ends no row\), found in row 0",
        ),
        (dict(max_len=6, max_new_tokens=3), r"give exactly one of max_len .* and max_new_tokens"),
        (dict(max_len=None), r"give exactly one of max_len"),
        (dict(max_len=None, max_new_tokens=0), r"max_new_tokens must be a Python int >= 1"),
        (dict(min_new_tokens=-1), r"min_new_tokens must be >= 0"),
        (dict(max_len=None, max_new_tokens=2, min_new_tokens=3), r"min_new_tokens must be in"),
    ],
)
def test_prompt_refusals(kw, message):
    cache = make_rnn_cache(2, seed=0)
    kw = {**dict(max_len=6, **IDS), **kw}
    with pytest.raises(ValueError, match=message):
        greedy(rnn_step, cache, **kw)


# -- prefill: the prompt in one forward pass ------------------------------------------


@pytest.fixture(scope="module", params=["transformer_bart", "rnn_luong"])
def model_problem(request):
    from conftest import JIT, model_and_params, model_inputs

    model, params = model_and_params(request.param)
    src, mask, _ = model_inputs(model.config.vocab_size, pad_rows=True)
    memory = JIT["encode"](model, params, src, mask)
    cache = JIT["init_cache"](model, params, memory, mask, 12)
    c = model.config
    prefix = jnp.array([[7, 9, 11, 5], [8, 0, 0, 0], [6, 6, 0, 0]], jnp.int32)
    return model, params, cache, prefix, dict(bos_id=c.bos_id, eos_id=c.eos_id, pad_id=c.pad_id)


def test_transformer_prefill_equals_steps():
    from conftest import JIT, model_and_params, model_inputs

    from seqjax.models import transformer_step

    model, params = model_and_params("transformer_marian")
    src, mask, tgt = model_inputs(model.config.vocab_size, pad_rows=True)
    cache = JIT["init_cache"](model, params, JIT["encode"](model, params, src, mask), mask, 9)
    weights = model.step.prepare(params)
    logits, filled = jax.jit(lambda w, c, t: transformer_step.prefill(model.config, w, c, t))(
        weights, cache, tgt
    )
    stepped = cache
    for t in range(tgt.shape[1]):
        one, stepped, _ = model.step(weights, tgt[:, t], jnp.int32(t), stepped)
        np.testing.assert_allclose(logits[:, t], one, atol=2e-4, rtol=1e-4)
    for a, b in zip(jax.tree.leaves(filled), jax.tree.leaves(stepped), strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5)


@pytest.mark.parametrize("method", ["greedy", "sample", "beam"])
def test_prefilled_prompt_equals_token_by_token(model_problem, method):
    model, params, cache, prefix, ids = model_problem
    kw = dict(prefix=prefix, max_new_tokens=5, params=params, **ids)
    if method == "greedy":
        run = lambda step, **o: jitted(greedy)(step, cache, **kw, **o)  # noqa: E731
    elif method == "sample":
        run = lambda step, **o: jitted(sample)(step, cache, key=jax.random.key(2), num_samples=2,  # noqa: E731
                                               **kw, **o)  # fmt: skip
    else:
        run = lambda step, **o: jitted(beam_search)(step, cache, beam_size=3, n_best=2, **kw, **o)  # noqa: E731, E501
    for extra in ({}, {"score_prompt": True}):
        fast, slow = run(model.step, **extra), run(BareStep(model.step), **extra)
        np.testing.assert_array_equal(fast.tokens, slow.tokens)
        np.testing.assert_array_equal(fast.lengths, slow.lengths)
        np.testing.assert_allclose(fast.log_probs, slow.log_probs, atol=2e-4)
        np.testing.assert_allclose(fast.scores, slow.scores, atol=5e-4)
