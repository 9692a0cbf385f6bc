"""Contrastive decoding (Li et al. 2023): an expert steered away from an amateur."""

from __future__ import annotations

from typing import Any

import jax

from seqjax.decode_checks import STREAM_EVERY
from seqjax.decoding.arg_checks import check_decoder_call
from seqjax.decoding.batch_tree import tuple_expander
from seqjax.decoding.beam_loop import check_beam_args, coverage_source_len, run_beam_loop
from seqjax.decoding.outputs import check_outputs, output_widths
from seqjax.decoding.phases import tuple_resizer
from seqjax.decoding.prompt import prompt_controls, total_len
from seqjax.decoding.result import DecodeResult
from seqjax.decoding.step import StepFn, bind_params
from seqjax.decoding.step_scores import contrastive_scores
from seqjax.decoding.streaming import check_stream, emitter
from seqjax.decoding.token_loop import argmax_loop


def contrastive(
    expert_step_fn: StepFn,
    expert_cache: Any,
    amateur_step_fn: StepFn,
    amateur_cache: Any,
    *,
    max_len: int | None = None,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    contrastive_lambda: float | jax.Array = 0.5,
    contrastive_alpha: float | jax.Array = 0.1,
    amateur_temperature: float | jax.Array = 1.0,
    beam_size: int = 1,
    n_best: int = 1,
    alpha: float | jax.Array = 0.0,
    length_penalty: str = "gnmt",
    coverage: float | jax.Array = 0.0,
    src_mask: jax.Array | None = None,
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
    amateur_params: Any = None,
    outputs: tuple[str, ...] = (),
    stream: int | jax.Array | None = None,
    stream_every: int = STREAM_EVERY,
) -> DecodeResult:
    """Maximise ``log p_expert - contrastive_lambda * log p_amateur`` over plausible tokens.

    Plausible tokens satisfy ``p_expert >= contrastive_alpha * max p_expert``; the
    amateur's log-probs use ``amateur_temperature``. Both models see the same tokens
    and positions; their caches travel together (and are reordered together in beam
    search). With ``beam_size == 1`` the search is greedy and ``scores`` is the
    expert's summed log-prob; with ``beam_size > 1`` it is beam search over summed
    contrastive scores (``alpha``, ``length_penalty``, ``coverage`` as in
    ``beam_search``; early exit only once every beam is dead, as contrastive step
    scores can be positive) and ``scores`` is the penalised contrastive score.
    ``log_probs`` are always the expert's. ``contrastive_lambda = 0`` recovers the
    expert's greedy / beam search restricted to the plausible set.

    Static: both step functions, ``max_len``, ``beam_size``, ``n_best``,
    ``length_penalty``, ``no_repeat_ngram_size``, ``batch_size``, the token ids.
    ``params`` / ``amateur_params`` (traced) switch the matching step function to the
    params form ``step(params, tokens, position, cache)`` (``seqjax.decoding.prompt``).
    Traced: ``contrastive_lambda``, ``contrastive_alpha``, ``amateur_temperature``,
    ``alpha``, ``coverage``, ``min_len``, ``repetition_penalty``, the caches, ``src_mask``,
    ``prefix``.

    Shared with the other decoders (``seqjax.decoding.prompt`` describes them):
    ``params``, ``convention``, ``forced_eos``, the prompt ``prefix`` with
    ``score_prompt``, ``max_new_tokens`` and ``min_new_tokens``, ``processors``,
    ``bad_words``, ``suppress_tokens``, ``begin_suppress_tokens`` and several ``eos_id``.

    ``outputs`` (static): optional extra results, ``("alignments", "step_log_probs")``
    or a subset (``seqjax.decoding.outputs``): the expert's cross-attention and its
    unmodified distribution at each token; off by default, and then free. ``stream``
    (traced): a consumer ID (``seqjax.decoding.streaming``) that receives each row's new
    token (greedy) or each source's best hypothesis so far (``beam_size > 1``) at every
    position; ``None`` (default) = no callback. ``stream_every`` (static, default 16):
    positions per host call (the consumer still gets one call per position, in bursts).

    Example (the amateur over-rates token 2, so the expert's runner-up 3 wins)::

        >>> import jax, jax.numpy as jnp
        >>> expert = lambda tok, pos, c: (jnp.log(jnp.array([[1e-9, .1, .5, .4]])), c)
        >>> amateur = lambda tok, pos, c: (jnp.log(jnp.array([[1e-9, .1, .8, .1]])), c)
        >>> r = contrastive(expert, None, amateur, None, batch_size=1, max_len=1,
        ...                 bos_id=0, eos_id=1, pad_id=0, contrastive_lambda=1.0)
        >>> r.tokens.tolist()
        [[[3]]]
    """
    check_beam_args(beam_size, n_best, length_penalty)
    max_len = total_len(max_len, max_new_tokens, prefix)
    expert_step_fn = bind_params(expert_step_fn, params)
    amateur_step_fn = bind_params(amateur_step_fn, amateur_params)
    B, vocab_size, source_len = _check_call(
        expert_step_fn, expert_cache, amateur_step_fn, amateur_cache, batch_size=batch_size,
        max_len=max_len, prefix=prefix, src_mask=src_mask,
        token_ids=dict(bos_id=bos_id, eos_id=eos_id, pad_id=pad_id),
        token_lists=dict(bad_words=bad_words, suppress_tokens=suppress_tokens,
                         begin_suppress_tokens=begin_suppress_tokens), min_len=min_len,
        min_new_tokens=min_new_tokens, max_new_tokens=max_new_tokens,
        repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
        alpha=alpha, coverage=coverage, amateur_temperature=amateur_temperature,
        contrastive_alpha=contrastive_alpha,
    )  # fmt: skip
    check_outputs(outputs, source_len)
    check_stream(stream, stream_every)
    widths = output_widths(outputs, vocab_size, source_len)
    plan, controls = prompt_controls(
        prefix, bos_id=bos_id, eos_id=eos_id, pad_id=pad_id, max_len=max_len,
        max_new_tokens=max_new_tokens, min_len=min_len, min_new_tokens=min_new_tokens,
        repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
        convention=convention, forced_eos=forced_eos, bad_words=bad_words,
        suppress_tokens=suppress_tokens, begin_suppress_tokens=begin_suppress_tokens,
        processors=processors, beam=beam_size > 1, rows_per_source=beam_size,
    )  # fmt: skip
    score_fn = contrastive_scores(
        expert_step_fn,
        amateur_step_fn,
        controls,
        contrastive_lambda=contrastive_lambda,
        contrastive_alpha=contrastive_alpha,
        amateur_temperature=amateur_temperature,
    )
    cache = (expert_cache, amateur_cache)
    resize = tuple_resizer((expert_step_fn, amateur_step_fn))
    if beam_size == 1:
        return argmax_loop(
            score_fn, cache, B, max_len, bos_id, eos_id, pad_id, prefix, score_prompt, plan.last,
            output_widths=widths, emit=emitter(stream, stream_every), resize=resize,
        )  # fmt: skip
    return run_beam_loop(
        score_fn, cache, batch_size=B, beam_size=beam_size, n_best=n_best, max_len=max_len,
        vocab_size=vocab_size, source_len=coverage_source_len(source_len, coverage),
        alpha=alpha, length_penalty_kind=length_penalty, coverage=coverage, src_mask_BxS=src_mask,
        monotone=False, bos_id=bos_id, eos_id=eos_id, pad_id=pad_id, prefix_BxP=prefix,
        score_prompt=score_prompt, last_B=plan.last, output_widths=widths, emit=emitter(stream, stream_every),
        resize=resize, expand=tuple_expander((expert_step_fn, amateur_step_fn)),
    )  # fmt: skip


def _check_call(
    expert_step_fn: StepFn,
    expert_cache: Any,
    amateur_step_fn: StepFn,
    amateur_cache: Any,
    *,
    batch_size: int | None,
    max_len: int,
    **options: Any,
) -> tuple[int, int, int | None]:
    """The expert's call-site checks, plus an amateur of the same vocabulary and batch."""
    B, vocab_size, source_len = check_decoder_call(
        expert_step_fn, expert_cache, batch_size=batch_size, max_len=max_len, **options
    )
    _, amateur_vocab, _ = check_decoder_call(
        amateur_step_fn, amateur_cache, batch_size=B, max_len=max_len, token_ids={}
    )
    if amateur_vocab != vocab_size:
        raise ValueError(
            f"amateur_step_fn must share the expert's vocabulary ({vocab_size}), got {amateur_vocab}"
        )
    return B, vocab_size, source_len
