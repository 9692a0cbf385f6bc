"""``DecodeResult``: what every decoder returns (a NamedTuple, hence a pytree)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class DecodeResult(NamedTuple):
    """Decoded hypotheses for ``B`` sources, ``K`` per source, up to ``L`` tokens each.

    Fields (``K`` = beams kept / samples drawn; ranked decoders sort best first):

    - ``tokens``: ``int32[B, K, L]`` generated ids. BOS is not included; EOS is
      included when emitted and followed by PAD.
    - ``lengths``: ``int32[B, K]`` number of tokens, EOS included.
    - ``scores``: ``float32[B, K]`` ranking score: length/coverage-penalised score for
      beam search, summed model log-probability for greedy, sampling and greedy
      contrastive decoding. ``-inf`` marks an empty slot (fewer hypotheses exist than
      were asked for).
    - ``log_probs``: ``float32[B, K, L]`` per-token log-probability under the
      unmodified model distribution ``log_softmax(logits)`` (the expert's for
      contrastive decoding), 0 at padding.
    - ``alignments``: ``float32[B, K, L, S]`` or ``None`` (the default): the
      cross-attention over the ``S`` source positions with which each token was
      generated, 0 at padding; decoders fill it with ``outputs=("alignments",)``.
    - ``step_log_probs``: ``float32[B, K, L, V]`` or ``None`` (the default): the full
      model distribution ``log_softmax(logits)`` each token was chosen from, 0 at
      padding; ``outputs=("step_log_probs",)``.

    Example: a batch of two sources decoded greedily to at most 5 tokens has
    ``tokens.shape == (2, 1, 5)``; the best hypothesis of source 1 is
    ``result.tokens[1, 0, : result.lengths[1, 0]]``.
    """

    tokens: jax.Array
    lengths: jax.Array
    scores: jax.Array
    log_probs: jax.Array
    alignments: jax.Array | None = None
    step_log_probs: jax.Array | None = None

    def last_tokens(self) -> jax.Array:
        """``int32[B, K]``: each hypothesis's last token: the EOS id that ended it (with
        several ``eos_id``s, which one), another token when cut at the length limit,
        PAD for an empty slot."""
        index = jnp.maximum(self.lengths - 1, 0)[..., None]
        last = jnp.take_along_axis(self.tokens, index, axis=-1)[..., 0]
        return jnp.where(self.lengths > 0, last, self.tokens[..., 0])
