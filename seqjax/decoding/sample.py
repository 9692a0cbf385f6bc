"""Ancestral sampling with temperature, top-k and top-p (nucleus) truncation."""

from __future__ import annotations

from typing import Any

import jax

from seqjax.decode_checks import STREAM_EVERY
from seqjax.decoding.arg_checks import check_decoder_call
from seqjax.decoding.batch_tree import cache_expander, repeat_rows
from seqjax.decoding.outputs import check_outputs, output_widths
from seqjax.decoding.phases import cache_resizer
from seqjax.decoding.prompt import prefill_prompt, prompt_controls, rows, total_len
from seqjax.decoding.result import DecodeResult
from seqjax.decoding.step import StepFn, bind_params
from seqjax.decoding.step_scores import sampling_scores
from seqjax.decoding.streaming import check_stream, emitter
from seqjax.decoding.token_loop import choose_categorical, loop_result, run_token_loop


def sample(
    step_fn: StepFn,
    cache: Any,
    *,
    key: jax.Array,
    max_len: int | None = None,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    num_samples: int = 1,
    temperature: float | jax.Array = 1.0,
    top_k: int | jax.Array = 0,
    top_p: float | jax.Array = 1.0,
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
    """Draw ``num_samples`` sequences per source (``K = num_samples``), in draw order.

    Each token is drawn from ``softmax(processed_log_probs / temperature)`` restricted
    to the ``top_k`` most likely tokens (0 = off) and then to the nucleus of mass
    ``top_p`` (1.0 = off). ``score`` is the summed *model* log-prob, and
    ``log_probs`` are untouched by temperature or truncation. The same ``key`` gives
    the same samples.

    Static: ``step_fn``, ``max_len``, ``num_samples``, ``no_repeat_ngram_size``,
    ``batch_size``, the token ids. Traced: ``key``, ``temperature``, ``top_k``,
    ``top_p``, ``min_len``, ``repetition_penalty``, ``cache``, ``prefix``.

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

    Example::

        >>> import jax, jax.numpy as jnp
        >>> logp_V = jnp.log(jnp.array([0.0, 0.6, 0.4]))  # pad, EOS, token 2
        >>> step = lambda tok, pos, c: (jnp.tile(logp_V, (tok.shape[0], 1)), c)
        >>> r = sample(step, None, key=jax.random.key(0), batch_size=2, num_samples=3,
        ...            max_len=4, bos_id=0, eos_id=1, pad_id=0, top_k=1)
        >>> r.tokens.shape, r.tokens[0, 0].tolist()  # top_k=1: argmax, token 1 = EOS
        ((2, 3, 4), [1, 0, 0, 0])
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
        num_samples=num_samples, temperature=temperature, top_k=top_k, top_p=top_p,
    )  # fmt: skip
    check_outputs(outputs, source_len)
    check_stream(stream, stream_every)
    plan, controls = prompt_controls(
        prefix, bos_id=bos_id, eos_id=eos_id, pad_id=pad_id, max_len=max_len,
        max_new_tokens=max_new_tokens, min_len=min_len, min_new_tokens=min_new_tokens,
        repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
        convention=convention, forced_eos=forced_eos, bad_words=bad_words,
        suppress_tokens=suppress_tokens, begin_suppress_tokens=begin_suppress_tokens,
        processors=processors, beam=False, rows_per_source=num_samples,
    )  # fmt: skip
    score_fn = sampling_scores(step_fn, controls, temperature=temperature, top_k=top_k, top_p=top_p)
    start = prefill_prompt(step_fn, cache, prefix, bos_id=bos_id, pad_id=pad_id,
                           max_len=max_len, score_prompt=score_prompt)  # fmt: skip
    expand = cache_expander(step_fn)  # the step may keep leaves the samples share per source
    if start is not None:
        samples = repeat_rows(start._replace(cache=None), num_samples)
        start = samples._replace(cache=expand(start.cache, num_samples))
    out = run_token_loop(
        score_fn,
        choose_categorical,
        expand(cache, num_samples),
        num_rows=B * num_samples,
        max_len=max_len,
        bos_id=bos_id,
        eos_id=eos_id,
        pad_id=pad_id,
        prefix_NxP=None if prefix is None else repeat_rows(prefix, num_samples),
        score_prompt=score_prompt,
        last_N=rows(plan.last, num_samples),
        start=start,
        key=key,
        output_widths=output_widths(outputs, vocab_size, source_len),
        emit=emitter(stream, stream_every),
        resize=cache_resizer(step_fn),
    )
    return loop_result(out, B, num_samples)
