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

The consumer is called once per position, in loop order, while the decoder's program
runs. Tokens reach the host in bursts: the loop buffers the items of ``stream_every``
positions (a static decoder argument, default 16), sends them in one host callback,
and the host calls the consumer once per buffered position; the last burst goes out
at the loop's last position. One host callback costs about 0.1 ms on a 2-core CPU
whatever it carries, more than half a step of a small model at batch 1, so
``stream_every=1`` (a call per token, the lowest latency) can double such a decode's
time; ``experiments/bench_stream.py`` measures it.

The callback is a ``jax.pure_callback`` whose reply (always 0) the loop carries into
its next position: XLA can neither drop nor reorder it, so the calls keep the loop's
order. It is not an ``io_callback``: a program with an effect (``io_callback``,
``jax.debug.callback``) loses jit's C++ dispatch, and the Python path then costs
~11 us per argument leaf, 2-3 ms per call of a model's params (measured on jax
0.10.2). JAX returns before the program has run (asynchronous dispatch): keep the
consumer registered until the result is ready (``jax.block_until_ready`` or reading
it, inside the ``with`` block); calls after ``unregister`` are dropped.

The target is one module-level function (static and hashable) and the consumer is
looked up by ``ID``, a *traced* int32: every consumer shares one compiled program
(``stream=None``, the default, compiles a program without any callback).
``register`` returns an ID; ``consumer`` registers for the duration of a ``with``
block. Library code never prints: the consumer decides what to do with the tokens.

Example::

    >>> import jax
    >>> import jax.numpy as jnp
    >>> from seqjax.decoding import greedy
    >>> table = jnp.log(jnp.array([[.1, .8, .05, .05], [.1, .1, .7, .1],
    ...                            [.1, .1, .1, .7], [.25, .25, .25, .25]]))
    >>> step = lambda tok, pos, c: (table[tok], c)
    >>> seen = []
    >>> with consumer(lambda t, tokens: seen.append((t, tokens.tolist()))) as sid:
    ...     r = greedy(step, None, batch_size=1, max_len=5, bos_id=0, eos_id=3, pad_id=0,
    ...                stream=sid)
    ...     r = jax.block_until_ready(r)  # the calls happen while the program runs
    >>> seen
    [(0, [1]), (1, [2]), (2, [3])]
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import threading
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from seqjax.decode_checks import STREAM_EVERY, check_stream_every

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


_ACK = jax.ShapeDtypeStruct((), jnp.int32)


def _dispatch(sid: np.ndarray, last: np.ndarray, count: np.ndarray, items: np.ndarray) -> Any:
    """The one host target of every streaming decoder (static, so no recompiles).

    ``items[:count]`` are positions ``last - count + 1 .. last``: one consumer call each.
    Returns the acknowledgement the loop carries (``int32 0``).
    """
    fn = _CONSUMERS.get(int(sid))
    if fn is not None:  # a consumer unregistered mid-decode is skipped, not an error
        first, items = int(last) - int(count) + 1, np.asarray(items)
        for i in range(int(count)):
            fn(first + i, items[i])
    return np.zeros((), np.int32)


def check_stream(stream: Any, stream_every: Any = STREAM_EVERY) -> None:
    """``stream`` is ``None`` or a scalar integer (a registered ID); ``stream_every`` an
    integer >= 1."""
    check_stream_every(stream_every)
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


class StreamState(NamedTuple):
    """Loop-carried buffer of the positions not yet sent to the host."""

    items: jax.Array  # [every, *item]: what ``push`` received since the last send
    count: jax.Array  # int32[]: how many of ``items`` are filled


@dataclasses.dataclass(frozen=True)
class Emitter:
    """The in-loop hook of one streaming decoder: buffers, then sends every ``every``.

    ``init(item)`` builds the buffer for items shaped like ``item``; ``push(state, t,
    item, last)`` adds position ``t``'s item and sends the buffer to the host when it
    holds ``every`` items or ``last`` (traced bool: the loop ends after this position).
    It returns the new state and ``ack`` (``int32[]``, always 0: the host's reply), which
    the loop must add to its next position: a pure callback whose result nothing uses
    is removed by XLA, and this dependency also keeps the calls in loop order.
    """

    sid: jax.Array  # int32[]: the consumer's ID (traced)
    every: int  # static: positions per host call

    def init(self, item: jax.Array) -> StreamState:
        items = jnp.zeros((self.every, *item.shape), item.dtype)
        return StreamState(items, jnp.zeros((), jnp.int32))

    def push(
        self, state: StreamState, position: jax.Array, item: jax.Array, last: jax.Array
    ) -> tuple[StreamState, jax.Array]:
        items = lax.dynamic_update_index_in_dim(state.items, item, state.count, 0)
        count = state.count + 1
        send = (count == self.every) | last

        def call() -> jax.Array:
            return jax.pure_callback(_dispatch, _ACK, self.sid, position, count, items)

        ack = lax.cond(send, call, lambda: jnp.zeros((), jnp.int32))
        return StreamState(items, jnp.where(send, 0, count)), ack


def emitter(stream: Any, every: int = STREAM_EVERY) -> Emitter | None:
    """The in-loop hook for consumer ``stream`` (``None``: no hook, no callback); the
    decoders have checked both arguments (``check_stream``)."""
    if stream is None:
        return None
    return Emitter(jnp.asarray(stream, jnp.int32), every)
