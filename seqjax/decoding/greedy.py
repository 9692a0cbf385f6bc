"""Greedy decoding: the most likely token at every step."""

from __future__ import annotations

from typing import Any

import jax

from seqjax.decoding.arg_checks import check_decoder_call
from seqjax.decoding.logit_processors import make_controls
from seqjax.decoding.outputs import check_outputs, output_widths
from seqjax.decoding.prompt import plan_prompt, prefill_prompt, total_len
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
) -> DecodeResult:
    """Argmax decoding until EOS or ``max_len``; ``K = 1``, score = summed log-prob.

    The argmax is taken after the repetition penalty and bans (PAD, EOS before
    ``min_len``, repeated n-grams); rows of ``prefix [B, P]`` (PAD-padded) are forced
    first. Static: ``step_fn``, ``max_len``, ``no_repeat_ngram_size``, ``batch_size``,
    the token ids. Traced: ``min_len``, ``repetition_penalty``, ``cache``, ``prefix``.

    ``params`` (traced, any pytree) makes ``step_fn`` the params form
    ``step_fn(params, tokens_B, position, cache)``: one compilation then serves every
    set of weights (``greedy(model.step, cache, params=params, ...)``).

    ``convention`` (static): ``"seqjax"`` (default) or ``"hf"``, HuggingFace
    ``generate()``'s (the decoder start token counts as history for the repetition
    penalty and the n-gram ban; beam search penalises log-probs). ``forced_eos``
    (static): EOS is forced at the last position, as HF's ``forced_eos_token_id``.

    ``prefix [B, P]`` is a prompt (``seqjax.decoding.prompt``): row ``b`` forces its
    non-PAD tokens first (prompts may differ in length), and is not scored unless
    ``score_prompt=True`` (static). ``max_new_tokens`` (static; instead of ``max_len``)
    and ``min_new_tokens`` (traced, scalar or ``[B]``) count generated tokens only.

    ``processors`` (static): the user's logits processors
    (``seqjax.decoding.processors``), run after the built-in bans. ``bad_words``
    (static tuple of token-id tuples): sequences never generated (HF
    ``bad_words_ids``); ``suppress_tokens`` / ``begin_suppress_tokens`` (static id
    tuples): never emitted / not emitted first (HF's). ``eos_id`` may be several ids
    (``eos_id=(1, 3)``): a row ends at any of them (its last token says which).
    ``outputs`` (static): optional extra results, ``("alignments", "step_log_probs")``
    or a subset (``seqjax.decoding.outputs``); off by default, and then free.
    ``stream`` (traced): a consumer ID from ``seqjax.decoding.streaming`` that receives
    each row's new token at every position from inside the compiled loop; ``None`` (default) = no callback.

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
    check_stream(stream)
    plan = plan_prompt(
        prefix,
        pad_id=pad_id,
        max_new_tokens=max_new_tokens,
        min_len=min_len,
        min_new_tokens=min_new_tokens,
    )
    controls = make_controls(
        eos_id=eos_id, pad_id=pad_id, bos_id=bos_id, max_len=max_len, min_len=plan.min_len,
        repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
        convention=convention, forced_eos=forced_eos, beam=False, rows_per_source=1,
        bad_words=bad_words, suppress_tokens=suppress_tokens,
        begin_suppress_tokens=begin_suppress_tokens, processors=processors,
        prompt_len=plan.prompt_len, last=plan.last,
    )  # fmt: skip
    start = prefill_prompt(step_fn, cache, prefix, bos_id=bos_id, pad_id=pad_id,
                           max_len=max_len, score_prompt=score_prompt)  # fmt: skip
    return argmax_loop(
        log_prob_scores(step_fn, controls), cache, B, max_len, bos_id, eos_id, pad_id, prefix,
        score_prompt, plan.last, start,
        output_widths(outputs, vocab_size, source_len), emitter(stream),
    )  # fmt: skip
