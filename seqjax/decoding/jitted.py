"""``jitted``: a decoder under ``jax.jit`` with its static arguments marked.

``STATIC_ARGNAMES`` lists, per public decoder, the arguments that set shapes or the
traced program (the step function, ``max_len``, beam size, token ids, ...); all
others (numeric options, caches, keys, prefixes) are traced, so changing them reuses
the compiled program.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax

from seqjax.decoding.arg_checks import check_concrete_call
from seqjax.decoding.beam_sample import beam_sample
from seqjax.decoding.beam_search import beam_search
from seqjax.decoding.compile_options import call_compiler_options
from seqjax.decoding.constrained_beam_search import constrained_beam_search
from seqjax.decoding.contrastive import contrastive
from seqjax.decoding.diverse_beam_search import diverse_beam_search
from seqjax.decoding.greedy import greedy
from seqjax.decoding.sample import sample
from seqjax.decoding.score import score

_BASE_STATIC = (
    "max_len",
    "bos_id",
    "eos_id",
    "pad_id",
    "no_repeat_ngram_size",
    "batch_size",
    "convention",
    "forced_eos",
    "stream_every",
)
# Processors, token bans and prompt lengths (issue 14): not yet taken by the issue-15
# searches diverse_beam_search and beam_sample, which use _BASE_STATIC.
_COMMON_STATIC = (
    *_BASE_STATIC,
    "processors",
    "bad_words",
    "suppress_tokens",
    "begin_suppress_tokens",
    "max_new_tokens",
    "score_prompt",
)

STATIC_ARGNAMES: dict[Callable, tuple[str, ...]] = {
    greedy: ("step_fn", *_COMMON_STATIC, "outputs"),
    sample: ("step_fn", "num_samples", *_COMMON_STATIC, "outputs"),
    beam_search: (
        "step_fn",
        "beam_size",
        "n_best",
        "length_penalty",
        *_COMMON_STATIC,
        "early_stopping",
        "outputs",
    ),
    contrastive: (
        "expert_step_fn",
        "amateur_step_fn",
        "beam_size",
        "n_best",
        "length_penalty",
        *_COMMON_STATIC,
        "outputs",
    ),
    score: ("step_fn", "bos_id", "eos_id", "pad_id"),
    diverse_beam_search: (
        "step_fn",
        "beam_size",
        "num_groups",
        "n_best",
        "length_penalty",
        *_BASE_STATIC,
        "early_stopping",
        "per_group",
        "outputs",
    ),
    beam_sample: (
        "step_fn",
        "beam_size",
        "n_best",
        "length_penalty",
        *_BASE_STATIC,
        "early_stopping",
        "outputs",
    ),
    # no prompts (prefix, max_new_tokens, score_prompt); the constraints' shape is static
    constrained_beam_search: (
        "step_fn",
        "beam_size",
        "n_best",
        "length_penalty",
        *_BASE_STATIC,
        "processors",
        "bad_words",
        "suppress_tokens",
        "begin_suppress_tokens",
        "early_stopping",
        "outputs",
    ),
}


@functools.cache
def jitted(decoder: Callable) -> Callable:
    """``jax.jit(decoder)`` with its static arguments marked; one object per decoder.

    Numeric options stay traced, so new values never recompile; a new step function,
    ``max_len``, beam size, ... compiles once and is cached by ``jax.jit``. The same
    decoder always gives the same jitted object, so its compilation cache is shared.
    A call compiles with the XLA:CPU matmul kernels that suit its rows per step and
    weights (``seqjax.decoding.compile_options``; read from the cache's leading axis,
    ``beam_size`` / ``num_samples`` and ``params``); called inside another ``jax.jit``,
    the outer one's options apply.

    >>> import jax.numpy as jnp
    >>> logp_V = jnp.log(jnp.array([0.0, 0.7, 0.3]))  # pad, EOS, token 2
    >>> step = lambda tok, pos, c: (jnp.tile(logp_V, (tok.shape[0], 1)), c)
    >>> fast_beam = jitted(beam_search)
    >>> fast_beam is jitted(beam_search)
    True
    >>> kw = dict(batch_size=1, beam_size=2, n_best=2, max_len=3, bos_id=0, eos_id=1, pad_id=0)
    >>> [round(x, 3) for x in fast_beam(step, None, alpha=0.0, **kw).scores[0].tolist()]
    [-0.357, -1.561]
    >>> # alpha is traced: a new value reuses the compiled program
    >>> [round(x, 3) for x in fast_beam(step, None, alpha=2.0, **kw).scores[0].tolist()]
    [-0.357, -1.147]
    """
    return _Checked(decoder, jax.jit(decoder, static_argnames=STATIC_ARGNAMES[decoder]))


def _loop_rows(args: tuple, kwargs: dict) -> int | None:
    """Rows per step of a decoder call: the cache's leading axis (or ``batch_size``) times
    ``beam_size`` or ``num_samples``; None when the call does not tell."""
    cache = args[1] if len(args) > 1 else kwargs.get("cache", kwargs.get("expert_cache"))
    leaves = [x for x in jax.tree.leaves(cache) if getattr(x, "ndim", 0) >= 1]
    batch = leaves[0].shape[0] if leaves else kwargs.get("batch_size")
    if not isinstance(batch, int):
        return None
    per_source = kwargs.get("beam_size", kwargs.get("num_samples", 1))
    return batch * per_source if isinstance(per_source, int) else None


_TUPLES = ("eos_id", "suppress_tokens", "begin_suppress_tokens", "processors")


def as_static(name: str, value):
    """Lists given for static token-id arguments as (hashable) tuples.

    >>> as_static("bad_words", [[5, 6], [7]]), as_static("eos_id", [1, 3])
    (((5, 6), (7,)), (1, 3))
    """
    if name == "bad_words" and isinstance(value, list | tuple):
        return tuple(tuple(int(t) for t in w) for w in value)
    if name in _TUPLES and isinstance(value, list):
        return tuple(value)
    return value


class _Checked:
    """A jitted decoder that checks the concrete option values before ``jit`` traces them.

    Inside the trace numeric options are tracers, so their ranges can only be checked
    here; everything else (``lower``, ``_cache_size``, ...) is the ``jax.jit`` object's.
    """

    def __init__(self, decoder: Callable, jit: Callable) -> None:
        self._decoder, self._jit = decoder, jit
        self._with_options: dict[tuple, Callable] = {}  # jits with compile options
        functools.update_wrapper(self, decoder)

    def __call__(self, *args, **kwargs):
        kwargs = {k: as_static(k, v) for k, v in kwargs.items()}
        check_concrete_call(self._decoder, args, kwargs)
        return self._program(args, kwargs)(*args, **kwargs)

    def _program(self, args: tuple, kwargs: dict) -> Callable:
        """The jit for this call: XLA's defaults, or one with ``compile_options``'."""
        params = (kwargs.get("params"), kwargs.get("amateur_params"))
        chosen = call_compiler_options(_loop_rows(args, kwargs), params, (args, kwargs))
        options = tuple(sorted(chosen.items()))
        if not options:
            return self._jit
        if options not in self._with_options:
            self._with_options[options] = jax.jit(
                self._decoder,
                static_argnames=STATIC_ARGNAMES[self._decoder],
                compiler_options=dict(options),
            )
        return self._with_options[options]

    def __getattr__(self, name: str):
        return getattr(self._jit, name)
