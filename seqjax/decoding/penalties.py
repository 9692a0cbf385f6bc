"""Beam-search ranking penalties: length normalisation and GNMT coverage (pure, jit-safe).

The ``kind`` of a length penalty is static; ``alpha`` and ``coverage`` may be traced.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

LENGTH_PENALTIES = ("gnmt", "hf")

# Attention sums below this count as this: keeps log finite (0 * -inf is NaN at coverage 0).
_MIN_COVERAGE = 1e-10


def length_penalty(length: jax.Array, alpha: float | jax.Array, kind: str) -> jax.Array:
    """Divisor of a hypothesis' summed score; ``length`` counts tokens including EOS.

    ``kind="gnmt"`` (Wu et al. 2016): ``((5 + length) / 6) ** alpha``;
    ``kind="hf"`` (HuggingFace): ``length ** alpha``. ``alpha = 0`` gives 1.

    >>> float(length_penalty(7, 1.0, "gnmt")), float(length_penalty(4, 0.5, "hf"))
    (2.0, 2.0)
    """
    length = jnp.asarray(length, jnp.float32)
    if kind == "gnmt":
        return ((5.0 + length) / 6.0) ** alpha
    if kind == "hf":
        return length**alpha
    raise ValueError(f"length_penalty: unknown kind {kind!r}; use one of {LENGTH_PENALTIES}")


def coverage_penalty(
    attention_NxS: jax.Array, coverage: float | jax.Array, src_mask_NxS: jax.Array | None = None
) -> jax.Array:
    """GNMT coverage penalty ``coverage * sum_i log(min(attention_i, 1))``, ``float[N]``.

    ``attention_NxS`` is the cross-attention summed over the generated tokens;
    ``coverage`` is the penalty's weight (Wu et al.'s beta; ``DecodeConfig.coverage``).
    Source positions outside ``src_mask_NxS`` are skipped; without a mask, positions
    with zero attention (padding, which never receives any) are skipped. Sums are
    floored at 1e-10 so a real but unattended position costs ``coverage * log(1e-10)``
    instead of ``-inf``. The penalty is ``<= 0`` for ``coverage >= 0``.

    >>> float(coverage_penalty(jnp.array([[0.5, 2.0, 0.0]]), 1.0)[0])  # log 0.5 + log 1
    -0.6931...
    """
    if src_mask_NxS is None:
        src_mask_NxS = attention_NxS > 0
    capped = jnp.clip(attention_NxS.astype(jnp.float32), _MIN_COVERAGE, 1.0)
    return coverage * jnp.sum(jnp.where(src_mask_NxS, jnp.log(capped), 0.0), axis=-1)
