"""Parameter initialisers whose values do not depend on whether ``init`` is jitted."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


def normal(stddev: float) -> Callable:
    """``flax.linen.initializers.normal(stddev)``, bit-identical under ``jax.jit``.

    Inside one jitted program XLA folds ``* stddev`` into ``random.normal``'s own
    ``* sqrt(2)``, which moves some values by one ulp; the barrier keeps the eager
    rounding, so checkpoints made before ``init`` was jitted match fresh inits.
    """

    def init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
        z = jax.lax.optimization_barrier(jax.random.normal(key, shape, dtype))
        return z * jnp.array(stddev, dtype)

    return init
