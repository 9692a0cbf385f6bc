"""Teacher-forcing probability schedules for scheduled sampling (Bengio et al. 2015).

``eps_i`` is the probability of feeding the gold previous token instead of the
model's own prediction at update ``i``. Training starts with ``warmup`` updates of
pure teacher forcing (``eps = 1``); ``i`` counts updates from the end of warm-up:

- ``linear``: ``max(eps_min, k - c * i)`` (``k`` usually 1);
- ``exponential``: ``k ** i`` with ``k < 1``;
- ``inverse_sigmoid``: ``k / (k + exp(i / k))`` with ``k >= 1``;

and every schedule is floored at ``eps_min`` (default 0). Everything is jnp, so a
schedule can be evaluated on a traced step inside ``jit``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

SCHEDULES = ("linear", "exponential", "inverse_sigmoid")
# Per-kind defaults: each keeps eps above ~0.5 for roughly the first 1-2k updates.
DEFAULT_K = {"linear": 1.0, "exponential": 0.9995, "inverse_sigmoid": 200.0}
DEFAULT_C = 2.5e-4  # linear slope: reaches 0 after 4000 updates past warm-up


def _kind(kind: str) -> str:
    name = kind.replace("-", "_")
    if name not in SCHEDULES:
        raise ValueError(f"schedule: unknown {kind!r}; use one of {', '.join(SCHEDULES)}")
    return name


def teacher_forcing_prob(
    step: int | jax.Array,
    kind: str = "inverse_sigmoid",
    k: float | None = None,
    c: float = DEFAULT_C,
    eps_min: float = 0.0,
    warmup: int = 1000,
) -> jax.Array:
    """Probability ``float32[]`` of feeding the gold token at update ``step``.

    ``kind`` is static (``-`` and ``_`` are interchangeable, as in CLI flags); ``k``
    defaults per kind (``DEFAULT_K``). ``step`` may be traced.

    >>> round(float(teacher_forcing_prob(500, "linear", k=1.0, c=0.01, warmup=1000)), 4)
    1.0
    >>> round(float(teacher_forcing_prob(1010, "linear", k=1.0, c=0.01, warmup=1000)), 4)
    0.9
    >>> round(float(teacher_forcing_prob(1010, "exponential", k=0.9, warmup=1000)), 4)
    0.3487
    >>> round(float(teacher_forcing_prob(0, "inverse_sigmoid", k=10.0, warmup=0)), 4)
    0.9091
    """
    name = _kind(kind)
    k = DEFAULT_K[name] if k is None else k
    s = jnp.asarray(step, jnp.float32)
    i = jnp.maximum(s - warmup, 0.0)
    if name == "linear":
        eps = k - c * i
    elif name == "exponential":
        eps = jnp.power(jnp.float32(k), i)
    else:
        eps = k / (k + jnp.exp(i / k))
    eps = jnp.clip(eps, eps_min, 1.0)
    return jnp.where(s < warmup, 1.0, eps).astype(jnp.float32)


def make_teacher_forcing_schedule(
    kind: str = "inverse_sigmoid",
    k: float | None = None,
    c: float = DEFAULT_C,
    eps_min: float = 0.0,
    warmup: int = 1000,
) -> Callable[[jax.Array], jax.Array]:
    """``schedule(step) -> eps`` with the options bound (validated now, not at trace time).

    >>> sched = make_teacher_forcing_schedule("exponential", k=0.5, warmup=0)
    >>> [float(sched(i)) for i in range(3)]
    [1.0, 0.5, 0.25]
    """
    _kind(kind)
    return functools.partial(
        teacher_forcing_prob, kind=kind, k=k, c=c, eps_min=eps_min, warmup=warmup
    )


def constant_schedule(eps: float) -> Callable[[jax.Array], jax.Array]:
    """``schedule(step) -> eps`` for every step (tests, or a fixed mixing rate)."""
    return lambda step: jnp.float32(eps)
