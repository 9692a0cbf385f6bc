"""Greedy decoding: the most likely token at every step."""

from __future__ import annotations

from typing import Any

import jax

from seqjax.decode_checks import STREAM_EVERY
from seqjax.decoding.arg_checks import check_decoder_call
from seqjax.decoding.outputs import check_outputs, output_widths
from seqjax.decoding.phases import cache_resizer
from seqjax.decoding.prompt import prefill_prompt, prompt_controls, total_len
from seqjax.decoding.result import DecodeResult
from seqjax.decoding.step import StepFn, bind_params
from seqjax.decoding.step_scores import log_prob_scores
from seqjax.decoding.streaming import check_stream, emitter
from seqjax.decoding.token_loop import argmax_loop


def greedy(
    step_fn: StepFn,
    cache: Any,
    *,
    max_len: int | None = None,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    min_len: int | jax.Array = 0,
    no_repeat_ngram_size: int = 0,
    repetition_penalty: float | jax.Array = 1.0,
    prefix: jax.Array | None = None,
    batch_size: int | None = None,
    params: Any = None,
    convention: str = "seqjax",
    forced_eos: bool = False,
    max_new_tokens: int | None = None,
    min_new_tokens: int | jax.Array = 0,
    score_prompt: bool = False,
    processors: tuple = (),
    bad_words: tuple = (),
    suppress_tokens: tuple = (),
    begin_suppress_tokens: tuple = (),
    outputs: tuple[str, ...] = (),
    stream: int | jax.Array | None = None,
    stream_every: int = STREAM_EVERY,
) -> DecodeResult:
    """Argmax decoding until EOS or ``max_len``; ``K = 1``, score = summed log-prob.

    The argmax is taken after the repetition penalty and bans (PAD, EOS before
    ``min_len``, repeated n-grams); rows of ``prefix [B, P]`` (PAD-padded) are forced
    first. Static: ``step_fn``, ``max_len``, ``no_repeat_ngram_size``, ``batch_size``,
    the token ids. Traced: ``min_len``, ``repetition_penalty``, ``cache``, ``prefix``.

    Shared with the other decoders (``seqjax.decoding.prompt`` describes them):
    ``params``, ``convention``, ``forced_eos``, the prompt ``prefix`` with
    ``score_prompt``, ``max_new_tokens`` and ``min_new_tokens``, ``processors``,
    ``bad_words``, ``suppress_tokens``, ``begin_suppress_tokens`` and several ``eos_id``.

    ``outputs`` (static): optional extra results, ``("alignments", "step_log_probs")``
    or a subset (``seqjax.decoding.outputs``); off by default, and then free.
    ``stream`` (traced): a consumer ID from ``seqjax.decoding.streaming`` that receives
    each row's new token at every position from inside the compiled loop; ``None``
    (default) = no callback. ``stream_every`` (static, default 16): positions per host
    call (the consumer still gets one call per position, in bursts).

    Example (a bigram table: always prefer token ``prev + 1``, EOS = 3)::

        >>> import jax, jax.numpy as jnp
        >>> table = jnp.log(jnp.array([[.1, .8, .05, .05], [.1, .1, .7, .1],
        ...                            [.1, .1, .1, .7], [.25, .25, .25, .25]]))
        >>> step = lambda tok, pos, c: (table[tok], c)
        >>> r = greedy(step, None, batch_size=1, max_len=5, bos_id=0, eos_id=3, pad_id=0)
        >>> r.tokens.tolist(), r.lengths.tolist()
        ([[[1, 2, 3, 0, 0]]], [[3]])
    """
    max_len = total_len(max_len, max_new_tokens, prefix)
    step_fn = bind_params(step_fn, params)
    B, vocab_size, source_len = check_decoder_call(
        step_fn, cache, batch_size=batch_size, max_len=max_len, prefix=prefix,
        token_ids=dict(bos_id=bos_id, eos_id=eos_id, pad_id=pad_id),
        token_lists=dict(bad_words=bad_words, suppress_tokens=suppress_tokens,
                         begin_suppress_tokens=begin_suppress_tokens), min_len=min_len,
        min_new_tokens=min_new_tokens, max_new_tokens=max_new_tokens,
        repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
    )  # fmt: skip
    check_outputs(outputs, source_len)
    check_stream(stream, stream_every)
    plan, controls = prompt_controls(
        prefix, bos_id=bos_id, eos_id=eos_id, pad_id=pad_id, max_len=max_len,
        max_new_tokens=max_new_tokens, min_len=min_len, min_new_tokens=min_new_tokens,
        repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
        convention=convention, forced_eos=forced_eos, bad_words=bad_words,
        suppress_tokens=suppress_tokens, begin_suppress_tokens=begin_suppress_tokens,
        processors=processors, beam=False, rows_per_source=1,
    )  # fmt: skip
    start = prefill_prompt(step_fn, cache, prefix, bos_id=bos_id, pad_id=pad_id,
                           max_len=max_len, score_prompt=score_prompt)  # fmt: skip
    return argmax_loop(
        log_prob_scores(step_fn, controls), cache, B, max_len, bos_id, eos_id, pad_id, prefix,
        score_prompt, plan.last, start,
        output_widths(outputs, vocab_size, source_len), emitter(stream, stream_every),
        cache_resizer(step_fn),
    )  # fmt: skip
