"""Logits processors (issue 14): bad words, suppressed tokens, several EOS ids, user
processors and per-row options, against brute force / NumPy references on the toy RNN.

Oracles: an exhaustive beam (every live prefix fits) equals the best hypotheses of a
brute-force enumeration restricted to the allowed sequences; greedy equals a float64
NumPy greedy with the same rule; a per-row option equals the same batch decoded with
that row's value as a scalar.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from toy_models import BOS, EOS, EXPERT_W, IDS, PAD, V, hyp, make_rnn_cache, np_rnn_step, rnn_step

from seqjax.decoding import beam_search, contrastive, greedy, jitted, sample
from seqjax.decoding.processors import BadWords, ProcessorState, SuppressTokens

L = 4
EXHAUSTIVE = (V - 2) ** (L - 1)
NO_PAD = dict(bos_id=BOS, pad_id=PAD)


def _row(cache, b):
    return (np.asarray(cache[k][b], np.float64) for k in ("h", "keys")), np.asarray(
        cache["src_mask"][b]
    )


def brute(cache, b, allowed, eos=(EOS,), max_len=L):
    """All allowed hypotheses of source ``b`` (summed model log-prob), best first."""
    (h0, keys), mask = _row(cache, b)
    out = []

    def expand(prefix, h, total):
        logp, h, _ = np_rnn_step(EXPERT_W, prefix[-1] if prefix else BOS, h, keys, mask)
        for tok in range(V):
            if tok == PAD or not allowed(prefix, tok):
                continue
            seq, tot = prefix + [tok], total + logp[tok]
            if tok in eos or len(seq) == max_len:
                out.append((tot, seq))
            else:
                expand(seq, h, tot)

    expand([], h0, 0.0)
    return sorted(out, key=lambda x: -x[0])


def np_greedy(cache, b, allowed, eos=(EOS,), max_len=L):
    (h, keys), mask = _row(cache, b)
    seq = []
    while len(seq) < max_len:
        logp, h, _ = np_rnn_step(EXPERT_W, seq[-1] if seq else BOS, h, keys, mask)
        ok = [t for t in range(V) if t != PAD and allowed(seq, t)]
        seq.append(max(ok, key=lambda t: logp[t]))
        if seq[-1] in eos:
            break
    return seq


def _beam(cache, **kw):
    kw = {**dict(beam_size=EXHAUSTIVE, n_best=4, max_len=L, eos_id=EOS, alpha=0.0), **kw}
    return jitted(beam_search)(rnn_step, cache, **NO_PAD, **kw)


def _contains(seq, word):
    n = len(word)
    return any(tuple(seq[i : i + n]) == tuple(word) for i in range(len(seq) - n + 1))


BAN_CASES = {
    "bad_words": (
        dict(bad_words=((3, 3), (4, EOS), (4, 4, 3))),
        lambda p, t: not any(_contains(p + [t], w) for w in ((3, 3), (4, EOS), (4, 4, 3))),
    ),
    "suppress": (
        dict(suppress_tokens=(4,), begin_suppress_tokens=(EOS, 3)),
        lambda p, t: t != 4 and (p or t not in (EOS, 3)),
    ),
}


@pytest.mark.parametrize("case", sorted(BAN_CASES))
def test_bans_match_brute_force(case):
    options, allowed = BAN_CASES[case]
    cache = make_rnn_cache(2, seed=3)
    r = _beam(cache, **options)
    g = jitted(greedy)(rnn_step, cache, max_len=L, eos_id=EOS, **NO_PAD, **options)
    for b in range(2):
        expected = brute(cache, b, allowed)[:4]
        assert [hyp(r, b, k) for k in range(4)] == [s for _, s in expected]
        np.testing.assert_allclose(r.scores[b], [s for s, _ in expected], rtol=1e-4)
        assert hyp(g, b, 0) == np_greedy(cache, b, allowed)


def test_several_eos_ids_end_rows_and_say_which():
    cache = make_rnn_cache(3, seed=4)
    eos = (EOS, 3)
    r = _beam(cache, eos_id=eos)
    g = jitted(greedy)(rnn_step, cache, max_len=6, eos_id=eos, **NO_PAD)
    last = np.asarray(g.last_tokens())
    for b in range(3):
        expected = brute(cache, b, lambda p, t: True, eos=eos)[:4]
        assert [hyp(r, b, k) for k in range(4)] == [s for _, s in expected]
        seq = np_greedy(cache, b, lambda p, t: True, eos=eos, max_len=6)
        assert hyp(g, b, 0) == seq
        assert last[b, 0] == seq[-1]
        assert np.all(np.asarray(g.tokens[b, 0, len(seq) :]) == PAD)
    assert set(last[:, 0]) & set(eos), "the toy should end some row at an EOS id"


@dataclasses.dataclass(frozen=True)
class BanAtEvenPositions:
    """A user processor: token ``token`` is banned at even positions."""

    token: int

    def __call__(self, logits_NxV, tokens_NxL, position, state: ProcessorState):
        ban = (jnp.arange(logits_NxV.shape[-1]) == self.token) & (position % 2 == 0)
        return jnp.where(ban, -jnp.inf, logits_NxV)


def test_user_processor_composes_with_builtins():
    cache = make_rnn_cache(3, seed=5)
    procs = (BanAtEvenPositions(4),)
    g = jitted(greedy)(
        rnn_step, cache, max_len=6, eos_id=EOS, **NO_PAD, processors=procs, min_len=2
    )
    r = _beam(cache, processors=procs, min_len=2)

    def allowed(p, t):
        return not (t == 4 and len(p) % 2 == 0) and not (t == EOS and len(p) < 2)

    for b in range(3):
        seq = np_greedy(cache, b, allowed, max_len=6)
        assert hyp(g, b, 0) == seq
        (h, keys), mask = _row(cache, b)
        for k, tok in enumerate(seq):  # log_probs stay the model's own
            logp, h, _ = np_rnn_step(EXPERT_W, seq[k - 1] if k else BOS, h, keys, mask)
            np.testing.assert_allclose(g.log_probs[b, 0, k], logp[tok], atol=1e-4)
        expected = brute(cache, b, allowed)[:4]
        assert [hyp(r, b, k) for k in range(4)] == [s for _, s in expected]


def test_builtin_processor_equals_option():
    """``processors=(BadWords(...), SuppressTokens(...))`` == the options of the same name."""
    cache = make_rnn_cache(2, seed=6)
    words = ((3, 4), (4, 4))
    a = jitted(greedy)(rnn_step, cache, max_len=6, eos_id=EOS, **NO_PAD, bad_words=words,
                       suppress_tokens=(1,))  # fmt: skip
    b = jitted(greedy)(rnn_step, cache, max_len=6, eos_id=EOS, **NO_PAD,
                       processors=(BadWords(words), SuppressTokens((1,))))  # fmt: skip
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)


def _scalar_rows(run, values, **fixed):
    """Row ``b`` of ``run(value=values)`` equals row ``b`` of ``run(value=values[b])``."""
    per_row = run(**fixed, **{k: jnp.asarray(v) for k, v in values.items()})
    for b in range(len(next(iter(values.values())))):
        alone = run(**fixed, **{k: v[b] for k, v in values.items()})
        for field in ("tokens", "lengths", "scores"):
            np.testing.assert_allclose(
                getattr(per_row, field)[b], getattr(alone, field)[b], atol=1e-5, err_msg=field
            )
    return per_row


def test_per_row_min_len_greedy_beam_contrastive():
    cache = make_rnn_cache(3, seed=7)
    kw = dict(max_len=6, eos_id=EOS, **NO_PAD)
    g = _scalar_rows(lambda **o: jitted(greedy)(rnn_step, cache, **kw, **o), {"min_len": [0, 4, 2]})
    assert np.asarray(g.lengths)[1, 0] >= 5
    _scalar_rows(
        lambda **o: jitted(beam_search)(rnn_step, cache, beam_size=3, n_best=2, **kw, **o),
        {"min_len": [3, 0, 5]},
    )
    _scalar_rows(
        lambda **o: jitted(contrastive)(rnn_step, cache, rnn_step, cache, beam_size=2, **kw, **o),
        {"min_len": [2, 5, 0]},
    )


def test_per_row_sampling_options():
    cache = make_rnn_cache(3, seed=8)
    kw = dict(max_len=6, eos_id=EOS, **NO_PAD, num_samples=4, key=jax.random.key(3))
    s = _scalar_rows(
        lambda **o: jitted(sample)(rnn_step, cache, **kw, **o),
        {"temperature": [0.3, 2.0, 1.0], "top_k": [1, 0, 2], "top_p": [1.0, 0.5, 0.9]},
    )
    assert len({tuple(x) for x in np.asarray(s.tokens[0]).tolist()}) == 1  # top_k 1: argmax


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(temperature=[1.0, 2.0]), r"temperature must be a scalar or one value per source"),
        (dict(repetition_penalty=[1.0, 2.0, 1.0]), r"repetition_penalty must be a scalar"),
        (dict(bad_words=((3,), ())), r"bad_words must be a tuple of non-empty token-id tuples"),
        (dict(bad_words=((3, 9),)), r"bad_words must be in \[0, 5\)"),
        (dict(suppress_tokens=(7,)), r"suppress_tokens must be in \[0, 5\)"),
        (dict(eos_id=(2, 5)), r"eos_id must be in \[0, 5\)"),
    ],
)
def test_refusals(kw, message):
    cache = make_rnn_cache(3, seed=0)
    kw = {**dict(max_len=6, key=jax.random.key(0), **IDS), **kw}
    with pytest.raises(ValueError, match=message):
        sample(rnn_step, cache, **kw)
