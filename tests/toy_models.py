"""Toy step functions shared by the decoding tests (no seqjax model needed).

Two toys: a small random RNN whose logits depend on the whole prefix (its cache holds
the hidden state, attention keys and a source mask, so gathers of a multi-leaf cache
are exercised) with a float64 NumPy twin for brute-force enumeration, and bigram
tables that stand in for "a user-written step function". Tests call decoders through
``jitted`` with shared static arguments and these same function objects, so each
decoder compiles once per static variant across all test modules.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from seqjax.decoding import DecodeResult

PAD, BOS, EOS = 0, 1, 2


IDS = dict(bos_id=BOS, eos_id=EOS, pad_id=PAD)


@dataclasses.dataclass(frozen=True)
class BareStep:
    """A params-form ``model.step`` without its optional ``prefill`` and ``resize``:
    the decoders feed a prompt token by token and keep one loop over the full cache."""

    step: Any

    def prepare(self, params):
        return self.step.prepare(params)

    def capacity(self, cache):
        return self.step.capacity(cache)

    def __call__(self, weights, tokens, position, cache):
        return self.step(weights, tokens, position, cache)


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


def brute_force(cache, row, max_len, alpha, kind, coverage, w=EXPERT_W):
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
                cp = coverage * np.sum(np.log(np.minimum(cov[mask], 1.0)))
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


RNN_STATIC = dict(max_len=6, **IDS)

# ------------------------------------------------------- a user-written bigram table

A, B_, C = 3, 4, 5  # content tokens of the bigram toys (vocab 6)


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


# ------------------------------------------------------------------ result helpers


def hyp(result: DecodeResult, b: int, k: int) -> list[int]:
    return np.asarray(result.tokens[b, k, : result.lengths[b, k]]).tolist()


def assert_same_result(a: DecodeResult, b: DecodeResult, atol: float = 1e-5) -> None:
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.lengths, b.lengths)
    np.testing.assert_allclose(a.log_probs, b.log_probs, atol=atol)
    np.testing.assert_allclose(a.scores, b.scores, atol=atol)
