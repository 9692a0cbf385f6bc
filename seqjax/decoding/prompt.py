"""Prompts (``prefix``): per-row lengths, ``max_new_tokens`` / ``min_new_tokens``.

A prompt is ``prefix [B, P]``: row ``b`` forces its first ``prompt_len[b]`` tokens (the
non-PAD ones, left-aligned; t5x's per-row start), then decodes freely. The output
rows hold the prompt followed by the generated tokens, and ``lengths`` count both.

- ``max_new_tokens`` (static) counts generated tokens only: the decoders' length is
  ``P + max_new_tokens`` and row ``b`` is cut after ``prompt_len[b] + max_new_tokens``
  tokens (``last[b]`` is that row's last position).
- ``min_new_tokens`` (scalar or ``[B]``): EOS is banned until that many tokens follow
  the prompt (``min_len`` counts from position 0, prompt included).
- Unless ``score_prompt=True`` the prompt is not scored: its ``log_probs`` are 0, it
  adds nothing to ``scores``, and beam search's length penalty counts generated
  tokens only. ``score_prompt=True`` scores and counts the prompt like any token.

Options every decoder shares (``greedy``, ``sample``, ``beam_search`` and
``contrastive`` refer here; ``prompt_controls`` turns them into a prompt plan and the
loop's ``Controls``):

- ``params`` (traced, any pytree) makes ``step_fn`` the params form
  ``step_fn(params, tokens_B, position, cache)``: one compilation then serves every
  set of weights (``greedy(model.step, cache, params=params, ...)``).
- ``convention`` (static): ``"seqjax"`` (default) or ``"hf"``, HuggingFace
  ``generate()``'s (the decoder start token counts as history for the repetition
  penalty, the n-gram ban and bad words; beam search penalises log-probs).
  ``forced_eos`` (static): EOS is forced at the last position, as HF's
  ``forced_eos_token_id``.
- ``prefix [B, P]`` is a prompt: row ``b`` forces its non-PAD tokens first (prompts may
  differ in length), and is not scored unless ``score_prompt=True`` (static).
  ``max_new_tokens`` (static; instead of ``max_len``) and ``min_new_tokens`` (traced,
  scalar or ``[B]``) count generated tokens only.
- ``processors`` (static): the user's logits processors
  (``seqjax.decoding.processors``), run after the built-in bans. ``bad_words``
  (static tuple of token-id tuples): sequences never generated (HF
  ``bad_words_ids``); ``suppress_tokens`` / ``begin_suppress_tokens`` (static id
  tuples): never emitted / not emitted first (HF's). ``eos_id`` may be several ids
  (``eos_id=(1, 3)``): a row ends at any of them (its last token says which).

>>> import jax.numpy as jnp
>>> total_len(None, 3, jnp.zeros((2, 4), jnp.int32))
7
>>> plan = plan_prompt(jnp.array([[7, 8, 0], [9, 0, 0]]), pad_id=0, max_new_tokens=2,
...                    min_len=0, min_new_tokens=1)
>>> plan.prompt_len.tolist(), plan.last.tolist(), plan.min_len.tolist()
([2, 1], [3, 2], [3, 2])
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from seqjax.decoding.logit_processors import Controls, make_controls, prefix_lengths


def total_len(max_len: int | None, max_new_tokens: int | None, prefix: Any) -> int:
    """The decoders' static length: ``max_len``, or prompt width + ``max_new_tokens``."""
    if (max_len is None) == (max_new_tokens is None):
        raise ValueError("give exactly one of max_len (prompt included) and max_new_tokens")
    if max_new_tokens is None:
        return max_len
    if not isinstance(max_new_tokens, int | np.integer) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a Python int >= 1, got {max_new_tokens!r}")
    width = 0 if prefix is None else np.shape(prefix)[-1]
    return int(width + max_new_tokens)


class PromptPlan(NamedTuple):
    """Per-source arrays (``[B]``) of a prompt, or ``None`` where nothing varies.

    ``prompt_len``: forced tokens per row (0 without a prompt). ``last``: each row's
    last position under ``max_new_tokens`` (None: the common ``max_len - 1``).
    ``min_len``: EOS is banned before this position (``min_len`` and
    ``prompt_len + min_new_tokens`` combined).
    """

    prompt_len: Any
    last: Any
    min_len: Any


def plan_prompt(
    prefix: jax.Array | None,
    *,
    pad_id: int | jax.Array,
    max_new_tokens: int | None,
    min_len: int | jax.Array,
    min_new_tokens: int | jax.Array,
) -> PromptPlan:
    """The ``PromptPlan`` of a decoder call (after its checks)."""
    prompt_len = 0 if prefix is None else prefix_lengths(prefix, pad_id)
    last = None
    if max_new_tokens is not None and prefix is not None:
        last = prompt_len + max_new_tokens - 1
    if not (isinstance(min_new_tokens, int | np.integer) and min_new_tokens == 0):
        min_len = jnp.maximum(min_len, prompt_len + jnp.asarray(min_new_tokens, jnp.int32))
    return PromptPlan(prompt_len, last, min_len)


def prompt_controls(
    prefix: jax.Array | None,
    *,
    bos_id: int | jax.Array,
    eos_id: int | jax.Array | tuple,
    pad_id: int | jax.Array,
    max_len: int,
    max_new_tokens: int | None,
    min_len: int | jax.Array,
    min_new_tokens: int | jax.Array,
    repetition_penalty: float | jax.Array,
    no_repeat_ngram_size: int,
    convention: str,
    forced_eos: bool,
    bad_words: tuple,
    suppress_tokens: tuple,
    begin_suppress_tokens: tuple,
    processors: tuple,
    beam: bool,
    rows_per_source: int,
) -> tuple[PromptPlan, Controls]:
    """The prompt plan and the per-step ``Controls`` of a decoder call (after its checks),
    from the options every decoder shares (see the module doc). ``beam``: beam search
    (``convention="hf"`` penalises its log-probs); ``rows_per_source``: beams or samples.

    >>> plan, controls = prompt_controls(
    ...     jnp.array([[7, 0], [7, 8]]), bos_id=0, eos_id=1, pad_id=0, max_len=6,
    ...     max_new_tokens=4, min_len=0, min_new_tokens=2, repetition_penalty=1.0,
    ...     no_repeat_ngram_size=0, convention="seqjax", forced_eos=False, bad_words=(),
    ...     suppress_tokens=(), begin_suppress_tokens=(), processors=(), beam=True,
    ...     rows_per_source=2)
    >>> plan.last.tolist(), controls.min_len[:, 0].tolist()  # each source's 2 beams
    ([4, 5], [3, 3, 4, 4])
    """
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
        convention=convention, forced_eos=forced_eos, beam=beam,
        rows_per_source=rows_per_source, bad_words=bad_words, suppress_tokens=suppress_tokens,
        begin_suppress_tokens=begin_suppress_tokens, processors=processors,
        prompt_len=plan.prompt_len, last=plan.last,
    )  # fmt: skip
    return plan, controls


def rows(x_B: jax.Array | None, rows_per_source: int) -> jax.Array | None:
    """``[B] -> [B * K]``: each source's value for its ``K`` beams or samples."""
    return None if x_B is None else jnp.repeat(x_B, rows_per_source)


class PromptStart(NamedTuple):
    """Where a loop starts after a prefilled prompt (``N`` rows).

    ``position``: ``int32[]`` the first position the loop decodes (the shortest prompt);
    ``tokens`` ``int32[N, L]`` / ``log_probs`` ``float32[N, L]``: the prompt's columns
    before it (log-probs 0 unless scored); ``cache``: after the prompt's positions.
    """

    position: jax.Array
    tokens: jax.Array
    log_probs: jax.Array
    cache: Any


def prefill_prompt(
    step_fn: Any,
    cache: Any,
    prefix: jax.Array | None,
    *,
    bos_id: int | jax.Array,
    pad_id: int | jax.Array,
    max_len: int,
    score_prompt: bool,
) -> PromptStart | None:
    """Run a prompt through ``step_fn.prefill`` in one pass; None when there is no prompt
    or the step offers no ``prefill`` (the loop then forces the prompt token by token).

    Positions ``0 .. P-1`` are prefilled for every row; rows with shorter prompts
    decode from the shortest prompt on and overwrite their later cache positions (a
    step attends only to positions up to the current one).
    """
    prefill = getattr(step_fn, "prefill", None)
    if prefill is None or prefix is None:
        return None
    prefix = jnp.asarray(prefix, jnp.int32)
    B, P = prefix.shape
    inputs = jnp.concatenate([jnp.full((B, 1), bos_id, jnp.int32), prefix[:, :-1]], axis=1)
    logits_BxPxV, cache = prefill(inputs, cache)
    start = jnp.min(prefix_lengths(prefix, pad_id))
    before_P = jnp.arange(P) < start
    lp_BxPxV = jax.nn.log_softmax(logits_BxPxV.astype(jnp.float32), axis=-1)
    lp = jnp.take_along_axis(lp_BxPxV, prefix[..., None], axis=-1)[..., 0]
    lp = jnp.where(before_P & score_prompt, lp, 0.0)
    tokens = jnp.where(before_P, prefix, pad_id)
    pad = ((0, 0), (0, max_len - P))
    return PromptStart(
        start.astype(jnp.int32),
        jnp.pad(tokens, pad, constant_values=pad_id),
        jnp.pad(lp, pad),
        cache,
    )
