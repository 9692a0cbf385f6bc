"""Streaming: tokens leave the compiled loop through a host callback as they are produced.

A decoder called with ``stream=ID`` calls, at every position ``t`` of its loop, the
consumer registered under ``ID`` on the host::

    consumer(t: int, tokens: numpy int32 array)

with, for greedy and sampling (``greedy``, ``sample``, greedy ``contrastive``), each
row's new token (``[B * K]``, PAD for rows already done) and, for beam searches
(``beam_search``, ``beam_sample``, ``diverse_beam_search``, ``contrastive`` with
``beam_size > 1``), each source's current best hypothesis (``[B, max_len]``): its best
live one (columns ``0..t``) while it runs, its best finished one once it is done, so
the last call holds every source's result (``result.tokens[:, 0]``).

The callback is ``jax.experimental.io_callback(ordered=True)``: calls arrive in loop
order, one per position, before the decoder returns. Its target is one module-level
function (static and hashable) and the consumer is looked up by ``ID``, a *traced*
int32: every consumer shares one compiled program (``stream=None``, the default,
compiles a program without any callback). ``register`` returns an ID; ``consumer``
registers for the duration of a ``with`` block. Library code never prints: the
consumer decides what to do with the tokens.

Example::

    >>> import jax.numpy as jnp
    >>> from seqjax.decoding import greedy
    >>> table = jnp.log(jnp.array([[.1, .8, .05, .05], [.1, .1, .7, .1],
    ...                            [.1, .1, .1, .7], [.25, .25, .25, .25]]))
    >>> step = lambda tok, pos, c: (table[tok], c)
    >>> seen = []
    >>> with consumer(lambda t, tokens: seen.append((t, tokens.tolist()))) as sid:
    ...     r = greedy(step, None, batch_size=1, max_len=5, bos_id=0, eos_id=3, pad_id=0,
    ...                stream=sid)
    >>> seen
    [(0, [1]), (1, [2]), (2, [3])]
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback

Consumer = Callable[[int, np.ndarray], Any]

_CONSUMERS: dict[int, Consumer] = {}
_IDS = itertools.count(1)
_LOCK = threading.Lock()


def register(fn: Consumer) -> int:
    """Register ``fn(position, tokens)``; returns the ID to pass as a decoder's ``stream``."""
    with _LOCK:
        sid = next(_IDS)
        _CONSUMERS[sid] = fn
    return sid


def unregister(sid: int) -> None:
    """Forget consumer ``sid`` (unknown IDs are ignored)."""
    with _LOCK:
        _CONSUMERS.pop(int(sid), None)


@contextlib.contextmanager
def consumer(fn: Consumer) -> Iterator[int]:
    """``with consumer(fn) as sid:`` registers ``fn`` for the block; yields its ID."""
    sid = register(fn)
    try:
        yield sid
    finally:
        unregister(sid)


def _dispatch(sid: np.ndarray, position: np.ndarray, tokens: np.ndarray) -> None:
    """The one host target of every streaming decoder (static, so no recompiles)."""
    fn = _CONSUMERS.get(int(sid))
    if fn is not None:  # a consumer unregistered mid-decode is skipped, not an error
        fn(int(position), np.asarray(tokens))


def check_stream(stream: Any) -> None:
    """``stream`` is ``None`` or a scalar integer (a registered ID)."""
    if stream is None:
        return
    if isinstance(stream, bool) or not isinstance(stream, int | np.integer | jax.Array):
        raise ValueError(
            f"stream must be None or a registered consumer ID (an int), got {stream!r}"
        )
    if np.ndim(stream) != 0 or not jnp.issubdtype(jnp.result_type(stream), jnp.integer):
        raise ValueError(
            f"stream must be None or a registered consumer ID (an int), got {stream!r}"
        )


def emitter(stream: Any) -> Callable[[jax.Array, jax.Array], None] | None:
    """The in-loop hook ``emit(position, tokens)`` for ``stream`` (``None``: no hook)."""
    if stream is None:
        return None
    sid = jnp.asarray(stream, jnp.int32)

    def emit(position: jax.Array, tokens: jax.Array) -> None:
        io_callback(_dispatch, None, sid, position, tokens, ordered=True)

    return emit
