"""Batch-leading pytrees (decoder caches): infer the batch, repeat rows, gather rows.

Every array leaf of a cache carries the batch as its leading axis. Decoders fold
``K`` beams or samples into that axis with ``repeat_rows`` (row ``b * K + k`` belongs
to source ``b``) and reorder beams with ``gather_rows``. Scalar (0-d) leaves are left
untouched, so a cache may hold e.g. a shared step counter.

A step may fold beams in its own way: its optional ``expand(cache, times) -> cache``
may keep the leaves that every beam of a source reads alike (the Transformer's
projected memory) at ``B`` rows, while the others get ``B * times``; the step then
reads row ``n // times`` of those. Such shared leaves must come back from the step as
the very same arrays, so beam search never reorders them (``beam_loop.reorder_cache``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


def infer_batch_size(cache: Any, batch_size: int | None = None) -> int:
    """Leading-axis size of the first non-scalar leaf, or ``batch_size`` when given.

    >>> infer_batch_size({"h": jnp.zeros((3, 8))})
    3
    >>> infer_batch_size(None, batch_size=2)
    2
    """
    if batch_size is not None:
        return int(batch_size)
    for leaf in jax.tree.leaves(cache):
        if jnp.ndim(leaf) >= 1:
            return int(jnp.shape(leaf)[0])
    raise ValueError(
        "cannot infer the batch size from a cache without array leaves; pass batch_size="
    )


def repeat_rows(tree: Any, times: int) -> Any:
    """Repeat every leaf ``times`` along axis 0: ``[B, ...] -> [B * times, ...]``.

    >>> repeat_rows(jnp.array([10, 20]), 2).tolist()
    [10, 10, 20, 20]
    """
    if times == 1:
        return tree
    return jax.tree.map(lambda x: x if jnp.ndim(x) == 0 else jnp.repeat(x, times, axis=0), tree)


def gather_rows(tree: Any, rows_N: jax.Array) -> Any:
    """Select rows ``rows_N`` (``int32[N]``) of every leaf along axis 0.

    >>> gather_rows(jnp.array([10, 20, 30]), jnp.array([2, 2, 0])).tolist()
    [30, 30, 10]
    """
    # "clip": decoders pass in-range rows; the default "fill" mode adds a select per leaf.
    return jax.tree.map(
        lambda x: x if jnp.ndim(x) == 0 else jnp.take(x, rows_N, axis=0, mode="clip"), tree
    )


Expand = Callable[[Any, int], Any]  # expand(cache, times) -> cache with beams folded in


def cache_expander(step_fn: Any) -> Expand:
    """The step's ``expand(cache, times)``, or ``repeat_rows`` when it offers none.

    >>> cache_expander(lambda *a: None)({"h": jnp.array([1, 2])}, 2)["h"].tolist()
    [1, 1, 2, 2]
    """
    return getattr(step_fn, "expand", None) or repeat_rows


def tuple_expander(step_fns: tuple[Any, ...]) -> Expand:
    """``expand`` of a cache tuple, one entry per step (ensembles, contrastive decoding).

    >>> class Shared:  # a step that reads its one cache leaf per source
    ...     expand = staticmethod(lambda cache, times: cache)
    >>> caches = (jnp.array([1, 2]), jnp.array([3, 4]))
    >>> [c.tolist() for c in tuple_expander((Shared(), lambda *a: None))(caches, 2)]
    [[1, 2], [3, 3, 4, 4]]
    """
    expanders = tuple(cache_expander(f) for f in step_fns)

    def expand(caches: tuple, times: int) -> tuple:
        return tuple(e(c, times) for e, c in zip(expanders, caches, strict=True))

    return expand
