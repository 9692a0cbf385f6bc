"""Beam search with length and coverage penalties, n-best output and early exit.

The search itself (beams folded into the batch, the exact early-exit bound) is
``seqjax.decoding.beam_loop``; this module scores steps by processed log-probs.
"""

from __future__ import annotations

from typing import Any

import jax

from seqjax.decode_checks import STREAM_EVERY
from seqjax.decoding.arg_checks import check_decoder_call
from seqjax.decoding.batch_tree import cache_expander
from seqjax.decoding.beam_loop import (
    check_beam_args,
    check_early_stopping,
    coverage_source_len,
    run_beam_loop,
)
from seqjax.decoding.outputs import check_outputs, output_widths
from seqjax.decoding.phases import cache_resizer
from seqjax.decoding.prompt import prefill_prompt, prompt_controls, total_len
from seqjax.decoding.result import DecodeResult
from seqjax.decoding.step import StepFn, bind_params
from seqjax.decoding.step_scores import log_prob_scores
from seqjax.decoding.streaming import check_stream, emitter


def beam_search(
    step_fn: StepFn,
    cache: Any,
    *,
    max_len: int | None = None,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    beam_size: int = 4,
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
    early_stopping: bool | str = "never",
    outputs: tuple[str, ...] = (),
    stream: int | jax.Array | None = None,
    stream_every: int = STREAM_EVERY,
) -> DecodeResult:
    """Beam search; returns the ``n_best`` finished hypotheses per source, best first.

    Ranking score of a finished hypothesis of ``len`` tokens (EOS included)::

        sum_t step_score_t / lp(len) + coverage * sum_i log(min(sum_t attn_ti, 1))

    with ``lp = ((5 + len) / 6) ** alpha`` (``length_penalty="gnmt"``) or
    ``len ** alpha`` (``"hf"``). Step scores are log-probs after the repetition
    penalty. The coverage term (GNMT, Wu et al. 2016; ``coverage`` is their beta and
    the same option as ``DecodeConfig.coverage`` / ``--coverage``) needs ``step_fn`` to
    return cross-attention ``[B, S]``; it runs over source positions in ``src_mask [B, S]``,
    or over positions that received any attention when ``src_mask`` is None (padding
    gets exactly 0). Hypotheses still running at ``max_len`` finish there. Slots
    with no hypothesis (tiny search spaces) have score ``-inf`` and length 0.

    Static: ``step_fn``, ``max_len``, ``beam_size``, ``n_best``, ``length_penalty``,
    ``no_repeat_ngram_size``, ``batch_size``, the token ids. Traced (change freely,
    no recompile): ``alpha``, ``coverage``, ``min_len``, ``repetition_penalty`` and the
    arrays ``cache``, ``src_mask``, ``prefix``.

    Shared with the other decoders (``seqjax.decoding.prompt`` describes them):
    ``params``, ``convention``, ``forced_eos``, the prompt ``prefix`` with
    ``score_prompt``, ``max_new_tokens`` and ``min_new_tokens``, ``processors``,
    ``bad_words``, ``suppress_tokens``, ``begin_suppress_tokens`` and several ``eos_id``.

    ``early_stopping`` (static) is HuggingFace's: ``"never"`` (default) stops a source
    only when no live beam can beat its ``n_best``-th hypothesis, so the result is
    exact for the beam; ``False`` keeps ``beam_size`` hypotheses and stops when the best
    live beam, scored at its current length, cannot beat the worst of them (HF's
    default heuristic); ``True`` stops as soon as ``beam_size`` hypotheses are done.

    ``outputs`` (static): optional extra results, ``("alignments", "step_log_probs")``
    or a subset (``seqjax.decoding.outputs``); off by default, and then free.
    ``stream`` (traced): a consumer ID from ``seqjax.decoding.streaming`` that receives
    each source's best live hypothesis at every position from inside the compiled
    loop; ``None`` (default) = no callback. ``stream_every`` (static, default 16):
    positions per host call (the consumer still gets one call per position, in bursts).

    Example (a 1-token vocabulary model plus EOS)::

        >>> import jax, jax.numpy as jnp
        >>> logp_V = jnp.log(jnp.array([0.0, 0.7, 0.3]))  # pad, EOS, token 2
        >>> step = lambda tok, pos, c: (jnp.tile(logp_V, (tok.shape[0], 1)), c)
        >>> r = beam_search(step, None, batch_size=1, max_len=3, bos_id=0, eos_id=1,
        ...                 pad_id=0, beam_size=2, n_best=2)
        >>> r.tokens[0].tolist(), r.lengths[0].tolist()
        ([[1, 0, 0], [2, 1, 0]], [1, 2])
    """
    check_beam_args(beam_size, n_best, length_penalty)
    max_len = total_len(max_len, max_new_tokens, prefix)
    check_early_stopping(early_stopping)
    step_fn = bind_params(step_fn, params)
    B, vocab_size, source_len = check_decoder_call(
        step_fn, cache, batch_size=batch_size, max_len=max_len, prefix=prefix,
        src_mask=src_mask, token_ids=dict(bos_id=bos_id, eos_id=eos_id, pad_id=pad_id),
        token_lists=dict(bad_words=bad_words, suppress_tokens=suppress_tokens,
                         begin_suppress_tokens=begin_suppress_tokens), min_len=min_len,
        min_new_tokens=min_new_tokens, max_new_tokens=max_new_tokens,
        repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
        alpha=alpha, coverage=coverage,
    )  # fmt: skip
    check_outputs(outputs, source_len)
    check_stream(stream, stream_every)
    plan, controls = prompt_controls(
        prefix, bos_id=bos_id, eos_id=eos_id, pad_id=pad_id, max_len=max_len,
        max_new_tokens=max_new_tokens, min_len=min_len, min_new_tokens=min_new_tokens,
        repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
        convention=convention, forced_eos=forced_eos, bad_words=bad_words,
        suppress_tokens=suppress_tokens, begin_suppress_tokens=begin_suppress_tokens,
        processors=processors, beam=True, rows_per_source=beam_size,
    )  # fmt: skip
    start = None  # a scored prompt adds processed step scores: forced token by token
    if not score_prompt:
        start = prefill_prompt(step_fn, cache, prefix, bos_id=bos_id, pad_id=pad_id,
                               max_len=max_len, score_prompt=False)  # fmt: skip
    # HF's True/False decide on a pool of beam_size hypotheses; n_best are returned
    pool = n_best if early_stopping == "never" else beam_size
    result = run_beam_loop(
        log_prob_scores(step_fn, controls),
        cache,
        batch_size=B,
        beam_size=beam_size,
        n_best=pool,
        max_len=max_len,
        vocab_size=vocab_size,
        source_len=coverage_source_len(source_len, coverage),
        alpha=alpha,
        length_penalty_kind=length_penalty,
        coverage=coverage,
        src_mask_BxS=src_mask,
        monotone=True,
        bos_id=bos_id,
        eos_id=eos_id,
        pad_id=pad_id,
        prefix_BxP=prefix,
        score_prompt=score_prompt,
        last_B=plan.last,
        start=start,
        early_stopping=early_stopping,
        output_widths=output_widths(outputs, vocab_size, source_len),
        emit=emitter(stream, stream_every),
        resize=cache_resizer(step_fn),
        expand=cache_expander(step_fn),
    )
    return result if pool == n_best else jax.tree.map(lambda x: x[:, :n_best], result)
