"""Behavioural tests of seqjax.decoding on toy step functions (no seqjax model needed).

Two toys: a small random RNN whose logits depend on the whole prefix (its cache holds
the hidden state, attention keys and a source mask, so gathers of a multi-leaf cache
are exercised) with a float64 NumPy twin for brute-force enumeration, and bigram
tables that stand in for "a user-written step function". Decoders are called through
``jitted`` with shared static arguments, so each compiles once for the whole module.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.config import DecodeConfig
from seqjax.decoding import (
    DecodeResult,
    beam_search,
    contrastive,
    decode,
    greedy,
    jitted,
    sample,
    score,
)

PAD, BOS, EOS = 0, 1, 2
IDS = dict(bos_id=BOS, eos_id=EOS, pad_id=PAD)

# ---------------------------------------------------------------- toy RNN + NumPy twin

V, H, S = 5, 8, 3  # vocab: pad, bos, eos, 3, 4 (BOS may be emitted; PAD never is)


def _rnn_weights(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return dict(
        embed=rng.normal(size=(V, H)).astype(np.float32),
        recur=(0.6 * rng.normal(size=(H, H))).astype(np.float32),
        out=(1.5 * rng.normal(size=(H, V))).astype(np.float32),
    )


EXPERT_W, AMATEUR_W = _rnn_weights(0), _rnn_weights(1)


def _make_rnn_step(w):
    embed, recur, out = (jnp.asarray(w[k]) for k in ("embed", "recur", "out"))

    def step(tokens_B, position, cache):
        del position  # the hidden state carries the whole prefix
        h = jnp.tanh(embed[tokens_B] + cache["h"] @ recur)
        att_logits = jnp.einsum("bh,bsh->bs", h, cache["keys"])
        att = jax.nn.softmax(jnp.where(cache["src_mask"], att_logits, -1e9), axis=-1)
        att = jnp.where(cache["src_mask"], att, 0.0)  # padding gets exactly 0
        return h @ out, {**cache, "h": h}, att

    return step


rnn_step = _make_rnn_step(EXPERT_W)
amateur_step = _make_rnn_step(AMATEUR_W)


def rnn_step_no_attention(tokens_B, position, cache):
    logits, cache, _ = rnn_step(tokens_B, position, cache)
    return logits, cache


def make_rnn_cache(batch: int, seed: int) -> dict[str, jax.Array]:
    rng = np.random.default_rng(100 + seed)
    mask = np.ones((batch, S), bool)
    mask[::2, -1] = False  # every other source has a padded last position
    return dict(
        h=jnp.asarray(rng.normal(size=(batch, H)), jnp.float32),
        keys=jnp.asarray(rng.normal(size=(batch, S, H)), jnp.float32),
        src_mask=jnp.asarray(mask),
    )


def np_rnn_step(w, token: int, h: np.ndarray, keys: np.ndarray, mask: np.ndarray):
    """float64 twin of one RNN step for a single row: (log_probs[V], h, attention[S])."""
    h = np.tanh(w["embed"][token].astype(np.float64) + h @ w["recur"])
    logits = h @ w["out"]
    logp = logits - logits.max() - np.log(np.exp(logits - logits.max()).sum())
    a = np.where(mask, keys @ h, -np.inf)
    a = np.exp(a - a.max())
    return logp, h, a / a.sum()


def np_length_penalty(length: int, alpha: float, kind: str) -> float:
    return ((5 + length) / 6) ** alpha if kind == "gnmt" else length**alpha


def brute_force(cache, row, max_len, alpha, kind, beta, w=EXPERT_W):
    """All hypotheses of one source (EOS-terminated or max_len long), best first."""
    h0 = np.asarray(cache["h"][row], np.float64)
    keys = np.asarray(cache["keys"][row], np.float64)
    mask = np.asarray(cache["src_mask"][row])
    hyps = []

    def expand(prefix, h, total, cov):
        logp, h, att = np_rnn_step(w, prefix[-1] if prefix else BOS, h, keys, mask)
        cov = cov + att
        for tok in range(V):
            if tok == PAD:
                continue
            seq, tot = prefix + [tok], total + logp[tok]
            if tok == EOS or len(seq) == max_len:
                cp = beta * np.sum(np.log(np.minimum(cov[mask], 1.0)))
                hyps.append((tot / np_length_penalty(len(seq), alpha, kind) + cp, seq))
            else:
                expand(seq, h, tot, cov)

    expand([], h0, 0.0, np.zeros(S))
    return sorted(hyps, key=lambda x: -x[0])


def np_expert_path_probs(cache, row, tokens):
    """Expert probabilities [len, V] along a given token path of one source."""
    h = np.asarray(cache["h"][row], np.float64)
    keys = np.asarray(cache["keys"][row], np.float64)
    mask = np.asarray(cache["src_mask"][row])
    out, prev = [], BOS
    for tok in tokens:
        logp, h, _ = np_rnn_step(EXPERT_W, prev, h, keys, mask)
        out.append(np.exp(logp))
        prev = tok
    return np.array(out)


def hyp(result: DecodeResult, b: int, k: int) -> list[int]:
    return np.asarray(result.tokens[b, k, : result.lengths[b, k]]).tolist()


def assert_same_result(a: DecodeResult, b: DecodeResult, atol: float = 1e-5) -> None:
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.lengths, b.lengths)
    np.testing.assert_allclose(a.log_probs, b.log_probs, atol=atol)
    np.testing.assert_allclose(a.scores, b.scores, atol=atol)


@pytest.fixture(scope="module")
def cache3():
    return make_rnn_cache(3, seed=0)


# ------------------------------------------------------------------ equivalences

RNN_STATIC = dict(max_len=6, **IDS)


@pytest.fixture(scope="module")
def rnn_greedy(cache3):
    return jitted(greedy)(rnn_step, cache3, **RNN_STATIC)


def test_greedy_equals_beam1_topk1_and_cold_sampling(cache3, rnn_greedy):
    g = rnn_greedy
    assert g.tokens.shape == (3, 1, 6) and g.tokens.dtype == jnp.int32
    beam1 = jitted(beam_search)(rnn_step, cache3, beam_size=1, n_best=1, alpha=0.0, **RNN_STATIC)
    run_sample = jitted(sample)
    topk1 = run_sample(rnn_step, cache3, key=jax.random.key(1), top_k=1, **RNN_STATIC)
    cold = run_sample(rnn_step, cache3, key=jax.random.key(2), temperature=1e-4, **RNN_STATIC)
    for other in (beam1, topk1, cold):
        assert_same_result(g, other)
    # scores are summed log-probs and log_probs are the unmodified model's
    np.testing.assert_allclose(g.scores, g.log_probs.sum(-1), atol=1e-5)


def test_greedy_matches_numpy_argmax_chain(cache3, rnn_greedy):
    for b in range(3):
        seq = hyp(rnn_greedy, b, 0)
        probs = np_expert_path_probs(cache3, b, seq)
        probs[:, PAD] = 0.0
        assert seq == probs.argmax(-1).tolist()
        assert seq[-1] == EOS or len(seq) == 6


def test_score_equals_greedy_log_probs(cache3, rnn_greedy):
    g = rnn_greedy
    lp, total = jitted(score)(rnn_step, cache3, g.tokens[:, 0], **IDS)
    np.testing.assert_allclose(lp, g.log_probs[:, 0], atol=1e-5)
    np.testing.assert_allclose(total, g.scores[:, 0], atol=1e-5)


# ------------------------------------------------------------- beam vs brute force

BRUTE_LEN = 4
BRUTE_BEAM = (V - 2) ** (BRUTE_LEN - 1)  # every live prefix fits: the search is exhaustive


@pytest.mark.parametrize(
    "kind, alpha, beta, use_mask",
    [
        ("gnmt", 0.0, 0.0, False),
        ("gnmt", 0.9, 0.0, False),
        ("hf", 1.0, 0.0, False),
        ("hf", 0.0, 0.0, False),  # same compilation as above (alpha traced)
        ("gnmt", 0.6, 0.5, False),  # coverage; padding found via zero attention
        ("gnmt", 0.6, 0.5, True),  # coverage with an explicit src_mask
    ],
)
def test_beam_matches_brute_force(kind, alpha, beta, use_mask):
    cache = make_rnn_cache(2, seed=1)
    n_best = 5
    r = jitted(beam_search)(
        rnn_step,
        cache,
        beam_size=BRUTE_BEAM,
        n_best=n_best,
        alpha=alpha,
        beta=beta,
        length_penalty=kind,
        src_mask=cache["src_mask"] if use_mask else None,
        max_len=BRUTE_LEN,
        **IDS,
    )
    for b in range(2):
        expected = brute_force(cache, b, BRUTE_LEN, alpha, kind, beta)[:n_best]
        assert [hyp(r, b, k) for k in range(n_best)] == [seq for _, seq in expected]
        np.testing.assert_allclose(r.scores[b], [s for s, _ in expected], rtol=1e-4)
        # reported log_probs are the model's, whatever the penalties
        for k in range(n_best):
            seq = hyp(r, b, k)
            probs = np_expert_path_probs(cache, b, seq)
            np.testing.assert_allclose(
                r.log_probs[b, k, : len(seq)], np.log(probs[np.arange(len(seq)), seq]), atol=1e-4
            )


def test_beam_early_exit_keeps_exact_result():
    """A beam that stops early (small beam, alpha 0) equals running it to the end."""
    cache = make_rnn_cache(2, seed=2)
    r = jitted(beam_search)(
        rnn_step, cache, beam_size=3, n_best=2, max_len=RNN_STATIC["max_len"], **IDS
    )
    # contrastive beam never exits early; with lambda 0 and alpha 0 it scores the same
    c = jitted(contrastive)(
        rnn_step,
        cache,
        amateur_step,
        make_rnn_cache(2, seed=3),
        beam_size=3,
        n_best=2,
        contrastive_lambda=0.0,
        contrastive_alpha=0.0,
        max_len=RNN_STATIC["max_len"],
        **IDS,
    )
    assert_same_result(r, c)
    assert np.all(np.diff(np.asarray(r.scores), axis=1) <= 0)  # best first


# ------------------------------------------------------------------- coverage by hand

# Position-only toy: p(eos), p(x) per position and a fixed attention over 3 source
# positions, the last one padding (attention 0).
_COV_PROBS = np.array([[0, 0, 0.6, 0.4], [0, 0, 0.5, 0.5], [0, 0, 0.9, 0.1]])
_COV_ATT = np.array([[0.5, 0.2, 0.0], [0.3, 0.7, 0.0], [0.2, 0.1, 0.0]], np.float32)


def position_step(tokens_B, position, cache):
    n = tokens_B.shape[0]
    logits = jnp.log(jnp.asarray(_COV_PROBS, jnp.float32))[position]
    return jnp.tile(logits, (n, 1)), cache, jnp.tile(jnp.asarray(_COV_ATT)[position], (n, 1))


def test_coverage_penalty_matches_hand_computation():
    run = jitted(beam_search)
    kw = dict(batch_size=1, beam_size=2, n_best=2, max_len=3, alpha=0.0, **IDS)
    plain = run(position_step, None, beta=0.0, **kw)
    # beta 0: "eos" (log .6) beats "x eos" (log .4 + log .5)
    assert [hyp(plain, 0, 0), hyp(plain, 0, 1)] == [[EOS], [3, EOS]]
    np.testing.assert_allclose(plain.scores[0], [math.log(0.6), math.log(0.2)], rtol=1e-5)
    covered = run(position_step, None, beta=1.0, **kw)
    # beta 1 adds sum_i log(min(coverage_i, 1)) over the two real positions:
    #   "x x eos": coverage (1.0, 1.0) -> 0;   log .4 + log .5 + log .9           = -1.7148
    #   "x eos":   coverage (0.8, 0.9) -> log .8 + log .9; log .4 + log .5 + that = -1.9379
    #   "eos":     coverage (0.5, 0.2) -> log .5 + log .2; log .6 + that          = -2.8134
    assert [hyp(covered, 0, 0), hyp(covered, 0, 1)] == [[3, 3, EOS], [3, EOS]]
    np.testing.assert_allclose(covered.scores[0], [-1.7148, -1.9379], atol=1e-4)
    masked = run(position_step, None, beta=1.0, src_mask=jnp.array([[True, True, False]]), **kw)
    assert_same_result(covered, masked)


def test_coverage_without_attention_is_rejected():
    with pytest.raises(ValueError, match="cross-attention"):
        beam_search(rnn_step_no_attention, make_rnn_cache(1, 0), beta=0.5, max_len=3, **IDS)


# ----------------------------------------------------------------------- sampling


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


# -------------------------------------------------------------------- contrastive


@pytest.mark.parametrize("beam_size", [1, 3])
def test_contrastive_stays_in_plausible_set(cache3, beam_size):
    alpha = 0.1
    r = jitted(contrastive)(
        rnn_step,
        cache3,
        amateur_step,
        make_rnn_cache(3, seed=9),
        beam_size=beam_size,
        n_best=beam_size,
        contrastive_lambda=1.0,
        contrastive_alpha=alpha,
        **RNN_STATIC,
    )
    checked = 0
    for b, k in itertools.product(range(3), range(beam_size)):
        seq = hyp(r, b, k)
        probs = np_expert_path_probs(cache3, b, seq)
        probs[:, PAD] = 0.0  # PAD is banned, so it is not in the max
        chosen = probs[np.arange(len(seq)), seq]
        assert np.all(chosen >= alpha * probs.max(-1) - 1e-6), (b, k, seq)
        np.testing.assert_allclose(r.log_probs[b, k, : len(seq)], np.log(chosen), atol=1e-4)
        checked += len(seq)
    assert checked > 0


def test_contrastive_lambda0_equals_expert(cache3, rnn_greedy):
    amateur_cache = make_rnn_cache(3, seed=9)
    run = jitted(contrastive)
    g = run(
        rnn_step,
        cache3,
        amateur_step,
        amateur_cache,
        beam_size=1,
        n_best=1,
        contrastive_lambda=0.0,
        contrastive_alpha=0.1,
        **RNN_STATIC,
    )
    assert_same_result(g, rnn_greedy)
    beam = run(
        rnn_step,
        cache3,
        amateur_step,
        amateur_cache,
        beam_size=3,
        n_best=3,
        contrastive_lambda=0.0,
        contrastive_alpha=0.0,
        **RNN_STATIC,
    )
    expert_beam = jitted(beam_search)(rnn_step, cache3, beam_size=3, n_best=3, **RNN_STATIC)
    assert_same_result(beam, expert_beam)
    # and lambda > 0 does change the greedy choice somewhere
    steered = run(
        rnn_step,
        cache3,
        amateur_step,
        amateur_cache,
        beam_size=1,
        n_best=1,
        contrastive_lambda=1.0,
        contrastive_alpha=0.1,
        **RNN_STATIC,
    )
    assert not np.array_equal(steered.tokens, g.tokens)


# ------------------------------------------------------- a user-written bigram table

A, B_, C = 3, 4, 5  # content tokens of the bigram toys (vocab 6)
# logits of the next token given the previous one; columns pad, bos, eos, a, b, c
BIGRAM = np.array(
    [
        [0, -5, 3, 0, 0, 0],  # after pad (finished rows)
        [0, -5, 2, 3, 1, 0.5],  # after bos: a
        [0, -5, 3, 0, 0, 0],  # after eos
        [0, -5, 3, 2.5, 1, 0],  # after a: eos, else a
        [0, -5, 1, 3, 2, 0],  # after b: a
        [0, -5, 2.9, 0, 0, 3],  # after c: c forever
    ],
    np.float32,
)
AMATEUR_BIGRAM = np.roll(BIGRAM, 1, axis=1)


def bigram_step(tokens_B, position, cache):
    """What a user might write: no cache at all, logits from the previous token."""
    return jnp.asarray(BIGRAM)[tokens_B], cache


def amateur_bigram_step(tokens_B, position, cache):
    return jnp.asarray(AMATEUR_BIGRAM)[tokens_B], cache


BIGRAM_STATIC = dict(batch_size=2, max_len=6, **IDS)
BIGRAM_LOGP = np.asarray(jax.nn.log_softmax(BIGRAM, axis=-1), np.float64)


def bigram_path_logp(seq: list[int]) -> np.ndarray:
    return BIGRAM_LOGP[[BOS] + seq[:-1], seq]


def test_bigram_step_fn_works_with_every_decoder():
    greedy_r = jitted(greedy)(bigram_step, None, **BIGRAM_STATIC)
    assert [hyp(greedy_r, b, 0) for b in range(2)] == [[A, EOS]] * 2
    np.testing.assert_allclose(greedy_r.log_probs[0, 0, :2], bigram_path_logp([A, EOS]), atol=1e-6)

    beam_r = jitted(beam_search)(
        bigram_step, None, beam_size=4, n_best=3, alpha=0.6, **BIGRAM_STATIC
    )
    assert hyp(beam_r, 0, 0) == [A, EOS]
    for k in range(3):
        seq = hyp(beam_r, 0, k)
        assert seq[-1] == EOS or len(seq) == 6
        expected = bigram_path_logp(seq).sum() / np_length_penalty(len(seq), 0.6, "gnmt")
        np.testing.assert_allclose(beam_r.scores[0, k], expected, rtol=1e-5)
    assert np.all(np.diff(np.asarray(beam_r.scores[0])) <= 0)

    sample_r = jitted(sample)(
        bigram_step, None, key=jax.random.key(0), num_samples=8, **BIGRAM_STATIC
    )
    for b, k in itertools.product(range(2), range(8)):
        seq = hyp(sample_r, b, k)
        assert PAD not in seq and (seq[-1] == EOS or len(seq) == 6)
        np.testing.assert_allclose(
            sample_r.log_probs[b, k, : len(seq)], bigram_path_logp(seq), atol=1e-5
        )

    for beam_size in (1, 3):
        con = jitted(contrastive)(
            bigram_step,
            None,
            amateur_bigram_step,
            None,
            beam_size=beam_size,
            n_best=1,
            contrastive_lambda=0.5,
            contrastive_alpha=0.1,
            **BIGRAM_STATIC,
        )
        seq = hyp(con, 0, 0)
        probs = np.exp(BIGRAM_LOGP[[BOS] + seq[:-1]])
        probs[:, PAD] = 0
        assert np.all(probs[np.arange(len(seq)), seq] >= 0.1 * probs.max(-1))

    lp, total = jitted(score)(bigram_step, None, greedy_r.tokens[:, 0], **IDS)
    np.testing.assert_allclose(total, greedy_r.scores[:, 0], atol=1e-6)


# --------------------------------------------------------- options, behaviourally


def _greedy_bigram(**options) -> list[list[int]]:
    r = jitted(greedy)(bigram_step, None, **BIGRAM_STATIC, **options)
    return [hyp(r, b, 0) for b in range(2)]


NUMERIC_DEFAULTS = dict(min_len=0, repetition_penalty=1.0)  # passed explicitly: one compile


def test_min_len_bans_eos_until_reached():
    assert _greedy_bigram(**NUMERIC_DEFAULTS)[0] == [A, EOS]
    for min_len in (1, 3):
        seq = _greedy_bigram(min_len=min_len, repetition_penalty=1.0)[0]
        assert EOS not in seq[:min_len] and seq[-1] == EOS
        assert seq == [A] * min_len + [EOS]  # after a, the next best token is a


def test_repetition_penalty_discourages_repeats():
    repeats = _greedy_bigram(min_len=3, repetition_penalty=1.0)[0]
    assert repeats == [A, A, A, EOS]
    # a's logit 2.5 / 3 falls below b's 1; then after b, a (3 / 3) still beats b (2 / 3)
    penalised = _greedy_bigram(min_len=3, repetition_penalty=3.0)[0]
    assert penalised == [A, B_, A, EOS]


def test_no_repeat_ngram_size_blocks_repeated_bigrams():
    r = jitted(greedy)(
        bigram_step,
        None,
        no_repeat_ngram_size=2,
        min_len=3,
        repetition_penalty=1.0,
        **BIGRAM_STATIC,
    )
    seq = hyp(r, 0, 0)
    assert seq == [A, A, B_, A, EOS]  # a a -> a banned -> b; then a; then eos
    bigrams = list(zip(seq, seq[1:], strict=False))
    assert len(bigrams) == len(set(bigrams))


PREFIX = jnp.array([[C, PAD], [B_, A]])  # ragged: row 0 forces one token, row 1 two


def test_prefix_is_forced_and_max_len_caps_length():
    out = _greedy_bigram(**NUMERIC_DEFAULTS, prefix=PREFIX)
    assert out[0] == [C] * 6  # forced c, then c -> c never stops: capped at max_len
    assert out[1] == [B_, A, EOS]  # b a forced, then the model's eos
    r = jitted(beam_search)(
        bigram_step, None, beam_size=3, n_best=3, prefix=PREFIX, **BIGRAM_STATIC
    )
    s = jitted(sample)(
        bigram_step,
        None,
        key=jax.random.key(5),
        num_samples=5,
        prefix=PREFIX,
        temperature=2.0,
        **BIGRAM_STATIC,
    )
    for res, k_count in ((r, 3), (s, 5)):
        assert res.tokens.shape[-1] == 6 and np.all(np.asarray(res.lengths) <= 6)
        for k in range(k_count):
            assert hyp(res, 0, k)[:1] == [C]
            assert hyp(res, 1, k)[:2] == [B_, A]
    # beam weighs whole sequences: after the forced c, ending now beats c^6
    assert hyp(r, 0, 0) == [C, EOS]


def test_prefix_overrides_bans():
    # row 1 forces "b b": with n-gram size 1 the second b would be banned
    prefix = jnp.array([[B_, B_], [A, PAD]])
    r = jitted(greedy)(
        bigram_step,
        None,
        prefix=prefix,
        no_repeat_ngram_size=1,
        min_len=0,
        repetition_penalty=1.0,
        **BIGRAM_STATIC,
    )
    seq0, seq1 = hyp(r, 0, 0), hyp(r, 1, 0)
    assert seq0[:2] == [B_, B_] and seq1 == [A, EOS]
    assert len(set(seq0[2:])) == len(seq0[2:]) and B_ not in seq0[2:]


def test_loops_exit_early_once_every_row_is_done():
    calls = []

    def logged_bigram_step(tokens_B, position, cache):
        jax.debug.callback(lambda p: calls.append(int(p)), position)
        return bigram_step(tokens_B, position, cache)

    kw = dict(batch_size=2, max_len=40, **IDS)
    jax.block_until_ready(jitted(greedy)(logged_bigram_step, None, **kw))
    assert calls == [0, 1]  # "a eos" in both rows: 2 of 40 steps
    calls.clear()
    r = jitted(beam_search)(logged_bigram_step, None, beam_size=2, n_best=2, **kw)
    jax.block_until_ready(r)
    assert hyp(r, 0, 0) == [A, EOS] and 2 <= len(calls) < 10, calls


# -------------------------------------------------------------- compile once


def test_numeric_options_and_new_batches_do_not_retrace():
    import functools

    traces = []

    def counting_step(tokens_B, position, cache):
        traces.append(1)
        return rnn_step(tokens_B, position, cache)

    run_beam = jax.jit(
        functools.partial(beam_search, counting_step, beam_size=2, n_best=2, max_len=5, **IDS)
    )
    first = run_beam(make_rnn_cache(2, 20), alpha=0.0, beta=0.0, min_len=0, repetition_penalty=1.0)
    n = len(traces)
    assert n >= 1
    outs = [
        run_beam(make_rnn_cache(2, seed), alpha=a, beta=c, min_len=m, repetition_penalty=p)
        for seed, a, c, m, p in [(21, 0.6, 0.3, 2, 1.3), (22, 1.5, 0.0, 4, 0.8)]
    ]
    assert len(traces) == n
    assert np.all(np.asarray(outs[1].lengths) >= 5)  # min_len 4 took effect (EOS at >= 5)
    assert not np.array_equal(first.tokens, outs[0].tokens)

    traces.clear()
    run_sample = jitted(sample)
    kw = dict(num_samples=2, max_len=5, **IDS)
    cache = make_rnn_cache(2, 23)
    run_sample(
        counting_step, cache, key=jax.random.key(0), temperature=1.0, top_k=0, top_p=1.0, **kw
    )
    n = len(traces)
    for i, (t, k, p) in enumerate([(0.5, 2, 0.9), (2.0, 0, 0.5), (1e-3, 1, 1.0)]):
        cache = make_rnn_cache(2, 24 + i)
        run_sample(
            counting_step, cache, key=jax.random.key(i), temperature=t, top_k=k, top_p=p, **kw
        )
    assert len(traces) == n


# ------------------------------------------------------------------- dispatch


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


def test_result_is_a_pytree(rnn_greedy):
    leaves = jax.tree.leaves(rnn_greedy)
    assert len(leaves) == 4
    assert jax.tree.map(lambda x: x.shape, rnn_greedy).lengths == (3, 1)
