"""Token-level losses; every function returns sums so callers normalise across devices/batches."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def smoothed_cross_entropy(
    logits_BxTxV: jax.Array,
    targets_BxT: jax.Array,
    mask_BxT: jax.Array,
    label_smoothing: float = 0.0,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Cross-entropy against a label-smoothed target, padding ignored.

    The smoothed target puts ``1 - ls`` on the gold token and spreads ``ls`` uniformly
    over the vocabulary, so the loss is ``(1 - ls) * nll + ls * mean_v(-log p_v)``;
    this avoids materialising a ``[B, T, V]`` one-hot.

    Returns ``(loss_sum, nll_sum, n_tokens)``: ``nll_sum`` is the unsmoothed negative
    log-likelihood, which is what perplexity is reported from.
    """
    logits = logits_BxTxV.astype(jnp.float32)
    lse_BxT = jax.nn.logsumexp(logits, axis=-1)
    gold_BxT = jnp.take_along_axis(logits, targets_BxT[..., None], axis=-1)[..., 0]
    nll_BxT = lse_BxT - gold_BxT
    smooth_BxT = lse_BxT - jnp.mean(logits, axis=-1)
    loss_BxT = (1.0 - label_smoothing) * nll_BxT + label_smoothing * smooth_BxT
    m = mask_BxT.astype(jnp.float32)
    return jnp.sum(loss_BxT * m), jnp.sum(nll_BxT * m), jnp.sum(m)
