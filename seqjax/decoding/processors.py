"""Logits processors: the public hook every decoder composes with its built-in options.

A processor is a pure function of one decoding step::

    processor(logits_NxV, tokens_NxL, position, state) -> logits_NxV

- ``logits_NxV``: float32 scores of the ``N`` rows (``N`` = sources x beams or
  samples). Decoders hand processors the *processed log-probs*: ``log_softmax`` of
  the model's logits after the repetition penalty, with the built-in bans already
  ``-inf``. What a processor returns is what the search ranks (greedy, beam) or
  samples from (before temperature and top-k/top-p), without renormalising, as
  HuggingFace's beam search does; ``-inf`` bans a token. ``log_probs`` and ``scores``
  of the result stay the model's own (unprocessed) log-probs.
- ``tokens_NxL``: ``int32[N, L]`` each row's tokens so far (a forced prompt
  included), in columns ``[0, position)``; later columns are PAD.
- ``position``: ``int32[]`` the column being chosen now (the same for all rows).
- ``state``: a ``ProcessorState`` of per-row facts (source row, prompt length).

Processors are *static*: pass hashable objects (frozen dataclasses, module-level
functions) as ``processors=(...)``; their fields are constants of the compiled
program. Keep Python control flow off the traced arguments. A row whose every token
is banned gets EOS back, so it ends instead of emitting garbage.

The built-in options are processors too (``MinLength``, ``NoRepeatNGram``,
``RepetitionPenalty``, ``BadWords``, ``SuppressTokens``, ``BeginSuppressTokens``,
``ForcedTokens``, ``ForcedEOS``, ``Plausibility``); the decoders apply their bans
from the same code (``mask``), user processors after them.

>>> import jax.numpy as jnp
>>> state = ProcessorState(source=jnp.array([0]), prompt_len=jnp.array([0]))
>>> lp = jnp.log(jnp.array([[0.1, 0.2, 0.3, 0.4]]))
>>> # history "2 3": the bad word "3 3" bans token 3 now; token 1 is suppressed
>>> out = apply_processors((BadWords(((3, 3),)), SuppressTokens((1,))), lp,
...                        jnp.array([[2, 3, 0]]), jnp.int32(2), state)
>>> jnp.isinf(out).tolist()
[[False, True, False, True]]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
from jax import lax


class ProcessorState(NamedTuple):
    """Per-row facts a processor may read (traced ``int32[N]`` each).

    ``source``: the source row (``0 .. B-1``) each of the ``N`` rows decodes (beams
    and samples of one source share it). ``prompt_len``: the number of forced prompt
    tokens at the start of the row (0 without a prompt); ``position - prompt_len`` is
    the number of tokens generated after the prompt.
    """

    source: jax.Array
    prompt_len: jax.Array


class LogitsProcessor(Protocol):
    """``(logits_NxV, tokens_NxL, position, state) -> logits_NxV``; see the module doc."""

    def __call__(
        self,
        logits_NxV: jax.Array,
        tokens_NxL: jax.Array,
        position: jax.Array,
        state: ProcessorState,
        /,
    ) -> jax.Array: ...


def apply_processors(
    processors: Sequence[LogitsProcessor],
    logits_NxV: jax.Array,
    tokens_NxL: jax.Array,
    position: jax.Array,
    state: ProcessorState,
) -> jax.Array:
    """Run ``processors`` left to right (each sees the previous one's output)."""
    for processor in processors:
        logits_NxV = processor(logits_NxV, tokens_NxL, position, state)
    return logits_NxV


def id_tuple(ids: Any) -> tuple:
    """Token ids as a tuple (``3 -> (3,)``; ``(1, 3)``, lists and 1-D arrays kept).

    >>> id_tuple(3), id_tuple([1, 3])
    ((3,), (1, 3))
    """
    if isinstance(ids, tuple | list):
        return tuple(ids)
    if hasattr(ids, "ndim") and ids.ndim == 1:
        return tuple(ids[i] for i in range(ids.shape[0]))
    return (ids,)


def is_any(x: jax.Array, ids: tuple) -> jax.Array:
    """``x == ids[0] | x == ids[1] | ...`` elementwise (False for no ids)."""
    out = jnp.zeros(jnp.shape(x), bool)
    for i in ids:
        out = out | (x == i)
    return out


def _ban(mask: jax.Array, logits_NxV: jax.Array) -> jax.Array:
    return jnp.where(mask, -jnp.inf, logits_NxV)


@dataclasses.dataclass(frozen=True)
class SuppressTokens:
    """Never emit ``token_ids`` (HF ``suppress_tokens``)."""

    token_ids: tuple[int, ...]

    def mask(self, vocab_size: int) -> jax.Array:
        return is_any(jnp.arange(vocab_size), tuple(self.token_ids))

    def __call__(self, logits_NxV, tokens_NxL, position, state) -> jax.Array:
        return _ban(self.mask(logits_NxV.shape[-1]), logits_NxV)


@dataclasses.dataclass(frozen=True)
class BeginSuppressTokens:
    """Do not emit ``token_ids`` as the first generated token, right after the prompt
    (HF ``begin_suppress_tokens``)."""

    token_ids: tuple[int, ...]

    def mask(self, position: jax.Array, state: ProcessorState, vocab_size: int) -> jax.Array:
        now_N1 = (position == state.prompt_len)[:, None]
        return now_N1 & is_any(jnp.arange(vocab_size), tuple(self.token_ids))

    def __call__(self, logits_NxV, tokens_NxL, position, state) -> jax.Array:
        return _ban(self.mask(position, state, logits_NxV.shape[-1]), logits_NxV)


def bad_words_banned(
    history_NxL: jax.Array, length: jax.Array, sequences: tuple, vocab_size: int
) -> jax.Array:
    """``bool[N, V]``: last tokens of ``sequences`` whose other tokens end the history.

    A one-token sequence is always banned; a longer one bans its last token when its
    first ``n - 1`` tokens are the last ``n - 1`` of the ``length`` history tokens.
    Sequences are grouped by length: one comparison per length, not per sequence.

    >>> bad_words_banned(jnp.array([[5, 6, 0]]), 2, ((6, 7), (5, 5), (2,)), 8)[0].nonzero()
    (Array([2, 7], dtype=int32),)
    """
    num_rows, L = history_NxL.shape
    banned = jnp.zeros((num_rows, vocab_size), bool)
    singles = tuple(s[0] for s in sequences if len(s) == 1)
    banned = banned | is_any(jnp.arange(vocab_size), singles)
    for n in sorted({len(s) for s in sequences if len(s) > 1}):
        group = [s for s in sequences if len(s) == n]
        if L < n - 1:  # the history can never hold the first n - 1 tokens
            continue
        heads_SxK = jnp.asarray([s[:-1] for s in group], jnp.int32)
        last_S = jnp.asarray([s[-1] for s in group], jnp.int32)
        suffix_NxK = lax.dynamic_slice_in_dim(
            history_NxL, jnp.maximum(length - (n - 1), 0), n - 1, 1
        )
        match_NxS = jnp.all(suffix_NxK[:, None, :] == heads_SxK[None], axis=-1) & (length >= n - 1)
        counts = jnp.zeros((num_rows, vocab_size), jnp.int32)
        rows = jnp.arange(num_rows)[:, None]
        banned = banned | (counts.at[rows, last_S[None, :]].add(match_NxS.astype(jnp.int32)) > 0)
    return banned


@dataclasses.dataclass(frozen=True)
class BadWords:
    """Ban token sequences (HF ``bad_words_ids``): the last token of a sequence is
    banned whenever the tokens so far end with the rest of it."""

    sequences: tuple[tuple[int, ...], ...]

    def __call__(self, logits_NxV, tokens_NxL, position, state) -> jax.Array:
        mask = bad_words_banned(tokens_NxL, position, self.sequences, logits_NxV.shape[-1])
        return _ban(mask, logits_NxV)


@dataclasses.dataclass(frozen=True)
class MinLength:
    """Ban EOS (any of ``eos_ids``) while ``position < min_len`` (scalar or ``[N, 1]``)."""

    eos_ids: tuple
    min_len: Any

    def mask(self, position: jax.Array, vocab_size: int) -> jax.Array:
        return is_any(jnp.arange(vocab_size), self.eos_ids) & (position < self.min_len)

    def __call__(self, logits_NxV, tokens_NxL, position, state) -> jax.Array:
        return _ban(self.mask(position, logits_NxV.shape[-1]), logits_NxV)


@dataclasses.dataclass(frozen=True)
class NoRepeatNGram:
    """Ban tokens that would repeat an ``n``-gram of the tokens so far."""

    n: int

    def __call__(self, logits_NxV, tokens_NxL, position, state) -> jax.Array:
        from seqjax.decoding.logit_processors import ngram_banned

        return _ban(ngram_banned(tokens_NxL, position, self.n, logits_NxV.shape[-1]), logits_NxV)


@dataclasses.dataclass(frozen=True)
class RepetitionPenalty:
    """CTRL repetition penalty on tokens seen so far (``penalty == 1`` is off)."""

    penalty: Any

    def __call__(self, logits_NxV, tokens_NxL, position, state) -> jax.Array:
        from seqjax.decoding.logit_processors import repetition_penalty

        return repetition_penalty(logits_NxV, tokens_NxL, position, self.penalty)


@dataclasses.dataclass(frozen=True)
class ForcedTokens:
    """At each ``(position, token)`` pair only ``token`` may be emitted, at score 0
    (HF ``forced_bos_token_id`` is ``((0, id),)``, ``forced_decoder_ids`` the list)."""

    forced: tuple[tuple[int, int], ...]

    def __call__(self, logits_NxV, tokens_NxL, position, state) -> jax.Array:
        v = jnp.arange(logits_NxV.shape[-1])
        for at, token in self.forced:
            only = jnp.where(v == token, 0.0, -jnp.inf)
            logits_NxV = jnp.where(position == at, only, logits_NxV)
        return logits_NxV


@dataclasses.dataclass(frozen=True)
class ForcedEOS:
    """At position ``at`` only EOS may be emitted, at score 0 (HF ``forced_eos_token_id``)."""

    eos_ids: tuple
    at: int

    def __call__(self, logits_NxV, tokens_NxL, position, state) -> jax.Array:
        only = jnp.where(is_any(jnp.arange(logits_NxV.shape[-1]), self.eos_ids), 0.0, -jnp.inf)
        return jnp.where(position == self.at, only, logits_NxV)


@dataclasses.dataclass(frozen=True)
class Plausibility:
    """Contrastive decoding's plausible set: keep tokens whose log-prob is within
    ``log(alpha)`` of the row's best (``alpha = 0`` keeps all)."""

    alpha: Any

    def mask(self, log_probs_NxV: jax.Array) -> jax.Array:
        best_N1 = jnp.max(log_probs_NxV, axis=-1, keepdims=True)
        return log_probs_NxV < jnp.log(self.alpha) + best_N1  # log 0 = -inf: none

    def __call__(self, logits_NxV, tokens_NxL, position, state) -> jax.Array:
        return _ban(self.mask(logits_NxV), logits_NxV)
