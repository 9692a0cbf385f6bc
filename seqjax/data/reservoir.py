"""Seeded reservoir sampling: a uniform sample of ``k`` items from a stream of unknown length.

Memory is ``O(k)`` whatever the stream's length. Uses Li's "Algorithm L" (1994): instead of one
random draw per item it draws how many items to skip, so a 10M-line stream costs
``O(k log(n / k))`` draws rather than 10M.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def reservoir_sample(items: Iterable[T], k: int, seed: int) -> tuple[list[tuple[int, T]], int]:
    """Sample ``min(k, n)`` of the ``n`` items uniformly; return ``(sample, n)``.

    ``sample`` holds ``(position, item)`` in stream order. The same stream, ``k`` and ``seed``
    give the same sample; when ``n <= k`` it is every item.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    rng = np.random.default_rng(seed)
    held: list[tuple[int, T]] = []
    w = 1.0
    next_pick = -1

    def skip() -> int:
        # Items skipped before the next replacement: geometric with success probability w.
        return int(math.floor(math.log(1.0 - rng.random()) / math.log1p(-w))) + 1

    n = 0
    for n, item in enumerate(items, 1):
        i = n - 1
        if i < k:
            held.append((i, item))
            if i == k - 1:
                w = math.exp(math.log(1.0 - rng.random()) / k)
                next_pick = i + skip()
        elif i == next_pick:
            held[int(rng.integers(k))] = (i, item)
            w *= math.exp(math.log(1.0 - rng.random()) / k)
            next_pick = i + skip()
    held.sort(key=lambda pair: pair[0])
    return held, n
