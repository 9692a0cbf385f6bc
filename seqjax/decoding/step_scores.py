"""Score functions: how each decoder turns a model step into ``StepScores``.

- ``log_prob_scores``: processed log-probs, bans applied (greedy, beam search).
- ``sampling_scores``: temperature-scaled log-probs truncated by top-k and top-p.
- ``contrastive_scores``: ``log p_expert - lambda * log p_amateur`` on the plausible set.

Each builder closes over the static step function(s) and traced numeric options and
returns ``score_fn(inputs_N, position, cache, history_NxL) -> StepScores``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from seqjax.decoding.logit_processors import (
    Controls,
    process_logits,
    truncation_allowed,
)
from seqjax.decoding.step import ScoreFn, StepFn, StepScores, call_step


def log_prob_scores(step_fn: StepFn, controls: Controls) -> ScoreFn:
    """Scores are ``log_softmax`` of the repetition-penalised logits; bans disallowed."""

    def score_fn(inputs_N, position, cache, history_NxL) -> StepScores:
        logits, new_cache, attention = call_step(step_fn, inputs_N, position, cache)
        model_lp, processed_lp, banned = process_logits(logits, history_NxL, position, controls)
        return StepScores(model_lp, processed_lp, ~banned, new_cache, attention)

    return score_fn


def sampling_scores(
    step_fn: StepFn,
    controls: Controls,
    *,
    temperature: float | jax.Array,
    top_k: int | jax.Array,
    top_p: float | jax.Array,
) -> ScoreFn:
    """Scores are processed log-probs / ``temperature``; bans, then top-k, then top-p.

    Truncation runs on the temperature-scaled distribution with banned tokens
    removed (HuggingFace order: temperature, top-k, top-p).
    """

    def score_fn(inputs_N, position, cache, history_NxL) -> StepScores:
        logits, new_cache, attention = call_step(step_fn, inputs_N, position, cache)
        model_lp, processed_lp, banned = process_logits(logits, history_NxL, position, controls)
        scaled = processed_lp / temperature
        allowed = ~banned
        allowed = allowed & truncation_allowed(jnp.where(allowed, scaled, -jnp.inf), top_k, top_p)
        return StepScores(model_lp, scaled, allowed, new_cache, attention)

    return score_fn


def contrastive_scores(
    expert_step_fn: StepFn,
    amateur_step_fn: StepFn,
    controls: Controls,
    *,
    contrastive_lambda: float | jax.Array,
    contrastive_alpha: float | jax.Array,
    amateur_temperature: float | jax.Array,
) -> ScoreFn:
    """Contrastive decoding (Li et al. 2023) over the cache pair ``(expert, amateur)``.

    ``score = log p_expert - lambda * log p_amateur`` where ``p_expert`` is the
    processed expert distribution and ``p_amateur = softmax(amateur_logits /
    amateur_temperature)``. Only plausible tokens, ``p_expert >= alpha * max p_expert``
    (the max taken over tokens that are not banned), are allowed. The expert's
    cross-attention is passed on for coverage.
    """

    def score_fn(inputs_N, position, cache: tuple[Any, Any], history_NxL) -> StepScores:
        expert_cache, amateur_cache = cache
        logits, expert_cache, attention = call_step(
            expert_step_fn, inputs_N, position, expert_cache
        )
        amateur_logits, amateur_cache, _ = call_step(
            amateur_step_fn, inputs_N, position, amateur_cache
        )
        model_lp, expert_lp, banned = process_logits(logits, history_NxL, position, controls)
        amateur_lp = jax.nn.log_softmax(
            amateur_logits.astype(jnp.float32) / amateur_temperature, axis=-1
        )
        best_N1 = jnp.max(jnp.where(banned, -jnp.inf, expert_lp), axis=-1, keepdims=True)
        plausible = expert_lp >= jnp.log(contrastive_alpha) + best_N1  # log 0 = -inf: all
        scores = expert_lp - contrastive_lambda * amateur_lp
        return StepScores(
            model_lp, scores, plausible & ~banned, (expert_cache, amateur_cache), attention
        )

    return score_fn
