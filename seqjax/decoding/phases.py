"""Decoding loops in phases of growing cache length (a step's optional ``resize``).

A KV cache sized for ``max_len`` positions makes every step attend over, and beam
search reorder, all ``max_len`` of them, although at position ``t`` only ``t + 1`` are
filled. A step that offers ``resize(cache, length) -> cache`` (``model.step`` of the
Transformer) lets the decoders run the loop in phases instead: positions
``0 .. 15`` with a cache of 16 positions, ``16 .. 31`` with 32, then 64, ... up to
``max_len``. Each phase is its own ``lax.while_loop`` over the same body, so the body
is compiled once per phase; a phase whose first position is never reached costs one
resize (a copy of the cache) and an immediately false loop condition.

Results are those of the one-loop program up to float rounding: the rows' masks give
the unfilled positions zero weight either way, and only the length of the reductions
over them changes (tests/test_phases.py: same tokens, scores within 1e-5). Phases apply
when the step offers ``resize``, ``max_len > FIRST_PHASE``, the loop starts at position 0
(a prefilled prompt keeps the single loop) and it steps at least ``MIN_ROWS`` rows
(batch x beams or samples).

Why the rows: each phase compiles the step again, so a program of ``n`` phases compiles
about ``n`` times the code. Where the cache is a large share of what a step reads (many
rows, long outputs) phases pay: transformer-base 1.11-1.18x at 64 and 256 rows. With
few rows the step is its weights, and they do not: 0.96-1.05x at 1-16 rows, while the
first call took 1.4-2x as long (``experiments/results/bench_phases_epyc.md``, an AVX2
EPYC) and a warm ``seqjax translate`` spent 0.23 s more loading the 2.9x larger program
(``bench_startup_epyc_s22.md``).

``resize`` contract (static, a method of the step object): return the cache with room
for exactly ``length`` positions, keeping positions ``< min(old, length)`` and filling
new ones with anything (they are masked until written). Decoders only shrink a cache
none of whose positions ``>= length`` has been written.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jax import lax

FIRST_PHASE = 16  # positions of the first phase; each later phase doubles, up to max_len
MIN_ROWS = 64  # fewer rows per step: one loop (phases gained <= 5% there, see above)

Resize = Callable[[Any, int], Any]


def phase_lengths(max_len: int, first: int = FIRST_PHASE) -> tuple[int, ...]:
    """Cache lengths of the phases: doubling from ``first``, the last one ``max_len``.

    >>> phase_lengths(64), phase_lengths(40), phase_lengths(16), phase_lengths(17)
    ((16, 32, 64), (16, 32, 40), (16,), (16, 17))
    """
    lengths = []
    length = first
    while length < max_len:
        lengths.append(length)
        length *= 2
    return (*lengths, max_len)


def cache_resizer(step_fn: Any) -> Resize | None:
    """The step's ``resize(cache, length)`` method, or None when it has none."""
    return getattr(step_fn, "resize", None)


def tuple_resizer(step_fns: tuple[Any, ...]) -> Resize | None:
    """``resize`` of a cache tuple, one entry per step (ensembles, contrastive decoding).

    Entries of steps without ``resize`` pass through unchanged (an RNN amateur); None
    when no step offers it.

    >>> pad = lambda c, n: c + [0] * (n - len(c))
    >>> class Step:
    ...     resize = staticmethod(pad)
    >>> tuple_resizer((Step(), lambda *a: None))(([1], "rnn state"), 3)
    ([1, 0, 0], 'rnn state')
    >>> tuple_resizer((lambda *a: None,)) is None
    True
    """
    resizers = tuple(cache_resizer(f) for f in step_fns)
    if all(r is None for r in resizers):
        return None

    def resize(caches: tuple, length: int) -> tuple:
        return tuple(
            c if r is None else r(c, length) for r, c in zip(resizers, caches, strict=True)
        )

    return resize


def run_phases(
    cond: Callable[[Any], Any],
    body: Callable[[Any], Any],
    init: Any,
    *,
    max_len: int,
    resize: Resize | None,
    rows: int,
    from_start: bool = True,
) -> Any:
    """``lax.while_loop(cond, body, init)``, in phases when ``resize`` allows it.

    ``init`` is a NamedTuple with ``position`` (``int32[]``) and ``cache`` fields;
    ``from_start`` says the loop begins at position 0 (static: a prefilled prompt
    passes False and gets the single loop); ``rows`` (static) is the rows each step
    computes, phases only from ``MIN_ROWS``. The returned state's
    cache has ``max_len`` positions when phased (the caller discards it).

    >>> import jax.numpy as jnp
    >>> from typing import NamedTuple
    >>> class S(NamedTuple):
    ...     position: jnp.ndarray
    ...     cache: jnp.ndarray  # [T]: one value per position
    >>> body = lambda s: S(s.position + 1, s.cache.at[s.position].set(s.position))
    >>> cond = lambda s: s.position < 20
    >>> resize = lambda c, n: jnp.pad(c, (0, n - c.shape[0])) if n > c.shape[0] else c[:n]
    >>> out = run_phases(cond, body, S(jnp.int32(0), jnp.zeros(40, jnp.int32)),
    ...                  max_len=40, resize=resize, rows=64)
    >>> out.cache.shape, out.cache[:21].tolist() == list(range(20)) + [0]
    ((40,), True)
    """
    if resize is None or not from_start or max_len <= FIRST_PHASE or rows < MIN_ROWS:
        return lax.while_loop(cond, body, init)
    state = init
    for length in phase_lengths(max_len):
        state = state._replace(cache=resize(state.cache, length))
        state = lax.while_loop(lambda s, end=length: cond(s) & (s.position < end), body, state)
    return state
