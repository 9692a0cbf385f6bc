"""``StepScores`` and the score functions that build them from a model step.

- ``log_prob_scores``: processed log-probs, bans applied (greedy, beam search).
- ``sampling_scores``: temperature-scaled log-probs truncated by top-k and top-p.
- ``contrastive_scores``: ``log p_expert - lambda * log p_amateur`` on the plausible set.

Each builder closes over the static step function(s) and traced numeric options and
returns a ``ScoreFn``: ``score_fn(inputs_N, position, cache, history_NxL) -> StepScores``.

Example (greedy's scores for a two-token bigram table; PAD = 0 is banned)::

    >>> import jax.numpy as jnp
    >>> from seqjax.decoding.logit_processors import Controls
    >>> table_VxV = jnp.log(jnp.array([[.5, .3, .2], [.1, .1, .8], [.2, .7, .1]]))
    >>> score_fn = log_prob_scores(lambda tok, pos, c: (table_VxV[tok], c), Controls(1, 0))
    >>> s = score_fn(jnp.array([1]), jnp.int32(0), None, jnp.zeros((1, 4), jnp.int32))
    >>> s.allowed.tolist(), [round(x, 3) for x in s.scores[0].tolist()]
    ([[False, True, True]], [-2.303, -2.303, -0.223])
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp

from seqjax.decoding.logit_processors import (
    Controls,
    per_row,
    process_logits,
    truncation_allowed,
)
from seqjax.decoding.processors import Plausibility
from seqjax.decoding.step import StepFn, call_step


class StepScores(NamedTuple):
    """One decoding step as a decoder's search sees it (``N`` rows, ``V`` tokens).

    - ``model_log_probs``: ``[N, V]`` unmodified ``log_softmax(logits)``; reported.
    - ``scores``: ``[N, V]`` what the search ranks or samples from (processed
      log-probs, temperature-scaled log-probs, contrastive scores, ...).
    - ``allowed``: ``bool[N, V]`` tokens the search may pick (bans, truncation,
      plausibility). A row forced by a prefix ignores it and takes the forced token
      at its ``scores`` value.
    - ``cache``: the step's new cache (``N`` rows).
    - ``attention``: ``[N, S]`` cross-attention for coverage, or ``None``.
    """

    model_log_probs: jax.Array
    scores: jax.Array
    allowed: jax.Array
    cache: Any
    attention: jax.Array | None


class ScoreFn(Protocol):
    """``(inputs_N, position, cache, history_NxL) -> StepScores``: one search step.

    Built by the functions below, which close over the *static* step function(s) and
    the *traced* numeric options; the loops call it with traced arguments only:
    ``inputs_N`` (``int32[N]``), the scalar ``position``, the ``N``-row cache and
    ``history_NxL``, the tokens generated so far in columns ``[0, position)`` (later
    columns are padding).
    """

    def __call__(
        self, inputs_N: jax.Array, position: jax.Array, cache: Any, history_NxL: jax.Array, /
    ) -> StepScores: ...


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
    removed (HuggingFace order: processors, temperature, top-k, top-p). Each option
    is a scalar or one value per source (``[B]``, shared by that source's samples).
    """
    K = controls.rows_per_source
    temperature, top_k, top_p = (per_row(x, K) for x in (temperature, top_k, top_p))

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
        plausible = ~Plausibility(contrastive_alpha).mask(jnp.where(banned, -jnp.inf, expert_lp))
        scores = expert_lp - contrastive_lambda * amateur_lp
        return StepScores(
            model_lp, scores, plausible & ~banned, (expert_cache, amateur_cache), attention
        )

    return score_fn
