"""Fuzzing the compiled decoders with random step functions (hypothesis).

The "model" is a table of logits indexed by (row, position, previous token) plus a
small recurrent state in the cache (so beam search must reorder the cache correctly),
and it returns a fake cross-attention for the coverage penalty. Shapes are fixed
(V=6, B=2, S=3, L=6, prefixes of width 2) and every numeric option is traced, so each
decoder compiles once per static variant; hypothesis only varies values.

Every output is replayed on the host through the same model to check it is
well-formed and that ``log_probs``/``scores`` describe the emitted tokens.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seqjax.decoding import beam_search, contrastive, greedy, jitted, sample

V, B, S, L, P = 6, 2, 3, 6, 2
PAD, EOS, BOS = 0, 1, 2
IDS = dict(bos_id=BOS, eos_id=EOS, pad_id=PAD, max_len=L)

FUZZ = settings(
    max_examples=int(os.environ.get("SEQJAX_FUZZ_EXAMPLES", 12)),  # more for a soak run
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def step_fn(tokens, position, cache):
    """Logits = table[row, position, previous token] + a bonus driven by a recurrent state."""
    n = tokens.shape[0]
    h = (cache["h"] * 5 + tokens) % V
    logits = cache["table"][jnp.arange(n), position, tokens] + 1.5 * jax.nn.one_hot(h, V)
    attn = jax.nn.softmax(cache["attn"][jnp.arange(n), position], axis=-1)
    return logits, {**cache, "h": h}, attn


def replay(cache: dict, b: int, tokens: np.ndarray) -> np.ndarray:
    """``log_softmax(logits)`` of each token of ``tokens`` (a row of source ``b``), on host."""
    table = np.asarray(cache["table"], np.float64)[b]
    h, prev, out = 0, BOS, []
    for t, tok in enumerate(tokens):
        h = (h * 5 + prev) % V
        z = table[t, prev].copy()
        z[h] += 1.5
        z = z - z.max()
        out.append(z[tok] - np.log(np.exp(z).sum()))
        prev = tok
    return np.array(out)


@st.composite
def problems(draw):
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    scale = draw(st.sampled_from([0.0, 0.1, 1.0, 4.0, 30.0, 1e3]))
    table = rng.normal(size=(B, L, V, V)) * scale
    # The model likes EOS more or less, so lengths vary.
    table[..., EOS] += draw(st.floats(-6.0, 3.0))
    cache = {
        "table": jnp.asarray(table, jnp.float32),
        "attn": jnp.asarray(rng.normal(size=(B, L, S)), jnp.float32),
        "h": jnp.zeros((B,), jnp.int32),
    }
    plen = [draw(st.integers(0, P)) for _ in range(B)]
    prefix = np.zeros((B, P), np.int32)
    for b in range(B):
        prefix[b, : plen[b]] = rng.integers(3, V, plen[b])  # never PAD/EOS/BOS
    src_mask = np.ones((B, S), bool)
    src_mask[1, draw(st.integers(1, S)) :] = False
    return cache, jnp.asarray(prefix), plen, jnp.asarray(src_mask)


def numerics(draw, *names):
    pick = {
        "min_len": st.integers(0, L),  # above max_len is refused (tests/test_arg_checks.py)
        "repetition_penalty": st.sampled_from([1.0, 1.0, 0.7, 1.3, 3.0]),
        "alpha": st.sampled_from([0.0, 0.6, 1.0, 2.0]),
        "coverage": st.sampled_from([0.0, 0.0, 0.2, 1.0]),
        "temperature": st.sampled_from([1.0, 1e-4, 0.7, 2.5, 50.0]),
        "top_k": st.integers(0, V + 2),  # larger than the vocabulary: off
        "top_p": st.sampled_from([1.0, 0.9, 0.5, 0.01]),
    }
    out = {}
    for n in names:
        v = draw(pick[n])
        out[n] = jnp.asarray(v, jnp.int32 if isinstance(v, int) else jnp.float32)
    return out


def check_well_formed(res, cache, prefix, plen, opts, *, ngram=0, ranked=False):
    tokens, lengths = np.asarray(res.tokens), np.asarray(res.lengths)
    scores, log_probs = np.asarray(res.scores), np.asarray(res.log_probs)
    K = tokens.shape[1]
    assert tokens.shape == (B, K, L) and log_probs.shape == (B, K, L)
    assert lengths.shape == scores.shape == (B, K)
    min_len = int(opts.get("min_len", 0))
    for b in range(B):
        if ranked:  # best first; empty slots (-inf) last
            assert np.all(np.diff(scores[b]) <= 1e-5 * (1 + np.abs(scores[b, :-1]))), scores[b]
        for k in range(K):
            row, n = tokens[b, k], int(lengths[b, k])
            where = f"b={b} k={k} tokens={row.tolist()} len={n} score={scores[b, k]}"
            if np.isneginf(scores[b, k]):  # empty slot
                assert ranked and n == 0 and np.all(row == PAD), where
                continue
            assert np.isfinite(scores[b, k]), where
            assert 1 <= n <= L, where
            eos = np.flatnonzero(row == EOS)
            assert (eos.size and eos[0] == n - 1) or (not eos.size and n == L), where
            assert np.all(row[:n] != PAD) and np.all(row[n:] == PAD), where
            assert np.all(row[:n] >= 0) and np.all(row[:n] < V), where
            assert np.all(log_probs[b, k, n:] == 0.0), where
            assert np.all(np.isfinite(log_probs[b, k, :n])), where
            expected = np.array(replay(cache, b, row[:n]))
            expected[: plen[b]] = 0.0  # the prompt is not scored (score_prompt=False)
            np.testing.assert_allclose(
                log_probs[b, k, :n], expected, rtol=1e-4, atol=1e-4, err_msg=where,
            )  # fmt: skip
            assert np.array_equal(row[: plen[b]], np.asarray(prefix)[b, : plen[b]]), where
            if not ngram:  # with n-gram bans a stuck row may end early (documented)
                assert n >= min(max(min_len, plen[b]) + 1, L) or n == L, where
            if ngram:
                grams = [tuple(row[i : i + ngram]) for i in range(n - ngram + 1)]
                forced = max(plen[b] - ngram + 1, 0)  # n-grams inside the forced prefix
                assert len(set(grams[forced:])) == len(grams[forced:]) or EOS in grams[-1], where
    return tokens, lengths, scores, log_probs


@FUZZ
@given(problem=problems(), data=st.data(), ngram=st.sampled_from([0, 2]))
def test_greedy_fuzz(problem, data, ngram):
    cache, prefix, plen, _ = problem
    opts = numerics(data.draw, "min_len", "repetition_penalty")
    res = jitted(greedy)(step_fn, cache, **IDS, no_repeat_ngram_size=ngram, prefix=prefix, **opts)
    tokens, lengths, scores, log_probs = check_well_formed(
        res, cache, prefix, plen, opts, ngram=ngram
    )
    # Greedy's score is the summed model log-prob of its tokens.
    np.testing.assert_allclose(scores, log_probs.sum(-1), rtol=1e-4, atol=1e-4)


@FUZZ
@given(problem=problems(), data=st.data(), ngram=st.sampled_from([0, 2]))
def test_sample_fuzz(problem, data, ngram):
    cache, prefix, plen, _ = problem
    opts = numerics(data.draw, "min_len", "repetition_penalty", "temperature", "top_k", "top_p")
    key = jax.random.key(data.draw(st.integers(0, 2**16)))
    run = jitted(sample)
    kw = dict(**IDS, num_samples=3, no_repeat_ngram_size=ngram, prefix=prefix)
    res = run(step_fn, cache, key=key, **kw, **opts)
    _, _, scores, log_probs = check_well_formed(res, cache, prefix, plen, opts, ngram=ngram)
    np.testing.assert_allclose(scores, log_probs.sum(-1), rtol=1e-4, atol=1e-4)
    again = run(step_fn, cache, key=key, **kw, **opts)  # same key, same samples
    np.testing.assert_array_equal(np.asarray(res.tokens), np.asarray(again.tokens))
    ties = np.ptp(np.asarray(cache["table"])) == 0  # scale 0: top-k keeps every tied token
    if int(opts["top_k"]) == 1 and not ties:  # top-1 sampling is greedy, at any temperature
        g = jitted(greedy)(
            step_fn, cache, **IDS, no_repeat_ngram_size=ngram, prefix=prefix,
            min_len=opts["min_len"], repetition_penalty=opts["repetition_penalty"],
        )  # fmt: skip
        for k in range(3):
            np.testing.assert_array_equal(np.asarray(res.tokens)[:, k], np.asarray(g.tokens)[:, 0])


def gnmt_lp(n, alpha):
    return ((5.0 + n) / 6.0) ** alpha


@FUZZ
@given(
    problem=problems(),
    data=st.data(),
    ngram=st.sampled_from([0, 2]),
    beam=st.sampled_from([(1, 1), (4, 3)]),
)
def test_beam_fuzz(problem, data, ngram, beam):
    cache, prefix, plen, src_mask = problem
    beam_size, n_best = beam
    opts = numerics(data.draw, "min_len", "repetition_penalty", "alpha", "coverage")
    res = jitted(beam_search)(
        step_fn, cache, **IDS, beam_size=beam_size, n_best=n_best, no_repeat_ngram_size=ngram,
        prefix=prefix, src_mask=src_mask, **opts,
    )  # fmt: skip
    tokens, lengths, scores, log_probs = check_well_formed(
        res, cache, prefix, plen, opts, ngram=ngram, ranked=True
    )
    if float(opts["coverage"]) == 0.0 and float(opts["repetition_penalty"]) == 1.0:
        # score = summed log-prob / GNMT length penalty of the generated tokens
        ok = np.isfinite(scores)
        generated = np.maximum(lengths - np.asarray(plen)[:, None], 1)  # the prompt left out
        expect = log_probs.sum(-1) / gnmt_lp(generated, float(opts["alpha"]))
        np.testing.assert_allclose(scores[ok], expect[ok], rtol=1e-4, atol=1e-4)
    for b in range(B):  # n-best hypotheses are distinct
        rows = [tuple(tokens[b, k]) for k in range(n_best) if np.isfinite(scores[b, k])]
        assert len(set(rows)) == len(rows), rows


@FUZZ
@given(problem=problems(), data=st.data(), beam=st.sampled_from([(1, 1), (3, 2)]))
def test_contrastive_fuzz(problem, data, beam):
    cache, prefix, plen, src_mask = problem
    beam_size, n_best = beam
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    amateur = {**cache, "table": jnp.asarray(rng.normal(size=(B, L, V, V)), jnp.float32)}
    opts = numerics(data.draw, "min_len", "repetition_penalty", "alpha")
    opts["contrastive_lambda"] = jnp.float32(data.draw(st.sampled_from([0.0, 0.5, 1.0, 3.0])))
    opts["contrastive_alpha"] = jnp.float32(data.draw(st.sampled_from([0.0, 0.1, 0.9, 1.0])))
    opts["amateur_temperature"] = jnp.float32(data.draw(st.sampled_from([1.0, 0.5, 2.0])))
    res = jitted(contrastive)(
        step_fn, cache, step_fn, amateur, **IDS, beam_size=beam_size, n_best=n_best,
        prefix=prefix, src_mask=src_mask, **opts,
    )  # fmt: skip
    check_well_formed(res, cache, prefix, plen, opts, ranked=beam_size > 1)


# -- every allowed token has probability 0 ---------------------------------------------------
#
# A model that masks its vocabulary with -inf logits (constrained decoding) can leave no
# allowed token with a finite logit: here only EOS is finite but ``min_len`` bans it.
# Beam search then reports an empty slot (score -inf, length 0), as documented; greedy
# and sampling instead emit PAD before EOS with -inf log-probs (found by this fuzzer).

_ONLY_EOS = jnp.asarray([-jnp.inf, 0.0, -jnp.inf, -jnp.inf, -jnp.inf, -jnp.inf])


def _only_eos_step(tokens, position, cache):
    return jnp.tile(_ONLY_EOS, (tokens.shape[0], 1)), cache


def _dead_end(decoder, **kw):
    return decoder(
        _only_eos_step, None, batch_size=1, max_len=4, bos_id=BOS, eos_id=EOS, pad_id=PAD,
        min_len=2, **kw,
    )  # fmt: skip


def test_dead_end_beam_reports_an_empty_slot():
    r = _dead_end(beam_search, beam_size=2)
    assert np.asarray(r.lengths).tolist() == [[0]] and np.isneginf(np.asarray(r.scores)).all()
    assert np.all(np.asarray(r.tokens) == PAD)


@pytest.mark.parametrize("decoder", ["greedy", "sample"])
def test_dead_end_greedy_and_sample_never_emit_pad(decoder):
    kw = {"key": jax.random.key(0)} if decoder == "sample" else {}
    r = _dead_end(greedy if decoder == "greedy" else sample, **kw)
    tokens, n = np.asarray(r.tokens)[0, 0], int(np.asarray(r.lengths)[0, 0])
    assert np.all(tokens[:n] != PAD) and np.all(tokens[n:] == PAD), (tokens.tolist(), n)
