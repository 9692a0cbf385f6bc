"""Greedy decoding: the most likely token at every step."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from seqjax.decoding.batch_tree import infer_batch_size
from seqjax.decoding.logit_processors import Controls
from seqjax.decoding.result import DecodeResult
from seqjax.decoding.step import ScoreFn, StepFn
from seqjax.decoding.step_scores import log_prob_scores
from seqjax.decoding.token_loop import TokenLoopOutput, choose_argmax, run_token_loop


def loop_result(out: TokenLoopOutput, batch_size: int, k: int) -> DecodeResult:
    """Reshape ``N = B * K`` loop rows into a ``DecodeResult`` scored by summed log-prob."""
    L = out.tokens.shape[-1]
    log_probs = out.log_probs.reshape(batch_size, k, L)
    return DecodeResult(
        tokens=out.tokens.reshape(batch_size, k, L),
        lengths=out.lengths.reshape(batch_size, k),
        scores=jnp.sum(log_probs, axis=-1),
        log_probs=log_probs,
    )


def greedy(
    step_fn: StepFn,
    cache: Any,
    *,
    max_len: int,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    min_len: int | jax.Array = 0,
    no_repeat_ngram_size: int = 0,
    repetition_penalty: float | jax.Array = 1.0,
    prefix: jax.Array | None = None,
    batch_size: int | None = None,
) -> DecodeResult:
    """Argmax decoding until EOS or ``max_len``; ``K = 1``, score = summed log-prob.

    The argmax is taken after the repetition penalty and bans (PAD, EOS before
    ``min_len``, repeated n-grams); rows of ``prefix [B, P]`` (PAD-padded) are forced
    first. Static: ``step_fn``, ``max_len``, ``no_repeat_ngram_size``, ``batch_size``,
    the token ids. Traced: ``min_len``, ``repetition_penalty``, ``cache``, ``prefix``.

    Example (a bigram table: always prefer token ``prev + 1``, EOS = 3)::

        >>> import jax, jax.numpy as jnp
        >>> table = jnp.log(jnp.array([[.1, .8, .05, .05], [.1, .1, .7, .1],
        ...                            [.1, .1, .1, .7], [.25, .25, .25, .25]]))
        >>> step = lambda tok, pos, c: (table[tok], c)
        >>> r = greedy(step, None, batch_size=1, max_len=5, bos_id=0, eos_id=3, pad_id=0)
        >>> r.tokens.tolist(), r.lengths.tolist()
        ([[[1, 2, 3, 0, 0]]], [[3]])
    """
    B = infer_batch_size(cache, batch_size)
    controls = Controls(eos_id, pad_id, min_len, repetition_penalty, no_repeat_ngram_size)
    return argmax_loop(
        log_prob_scores(step_fn, controls), cache, B, max_len, bos_id, eos_id, pad_id, prefix
    )


def argmax_loop(
    score_fn: ScoreFn,
    cache: Any,
    batch_size: int,
    max_len: int,
    bos_id: int | jax.Array,
    eos_id: int | jax.Array,
    pad_id: int | jax.Array,
    prefix: jax.Array | None,
) -> DecodeResult:
    """Pick the best-scoring token at every step (greedy, and greedy contrastive)."""
    out = run_token_loop(
        score_fn,
        choose_argmax,
        cache,
        num_rows=batch_size,
        max_len=max_len,
        bos_id=bos_id,
        eos_id=eos_id,
        pad_id=pad_id,
        prefix_NxP=prefix,
    )
    return loop_result(out, batch_size, 1)
