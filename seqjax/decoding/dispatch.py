"""``decode``: run the decoder a ``DecodeConfig`` names; ``jitted``: compiled decoders."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from seqjax.config import DecodeConfig
from seqjax.decoding.batch_tree import infer_batch_size
from seqjax.decoding.beam import beam_search
from seqjax.decoding.contrastive_search import contrastive
from seqjax.decoding.greedy_search import greedy
from seqjax.decoding.result import DecodeResult
from seqjax.decoding.sampling import sample
from seqjax.decoding.scoring import score
from seqjax.decoding.step import StepFn, step_output_shapes

_COMMON_STATIC = ("max_len", "bos_id", "eos_id", "pad_id", "no_repeat_ngram_size", "batch_size")

STATIC_ARGNAMES: dict[Callable, tuple[str, ...]] = {
    greedy: ("step_fn", *_COMMON_STATIC),
    sample: ("step_fn", "num_samples", *_COMMON_STATIC),
    beam_search: ("step_fn", "beam_size", "n_best", "length_penalty", *_COMMON_STATIC),
    contrastive: (
        "expert_step_fn",
        "amateur_step_fn",
        "beam_size",
        "n_best",
        "length_penalty",
        *_COMMON_STATIC,
    ),
    score: ("step_fn", "bos_id", "eos_id", "pad_id"),
}


# DecodeConfig fields that decoders take as traced values (changing them never recompiles).
NUMERIC_FIELDS: dict[str, type] = {
    "alpha": float,
    "coverage": float,
    "temperature": float,
    "top_k": int,
    "top_p": float,
    "min_len": int,
    "repetition_penalty": float,
    "contrastive_lambda": float,
    "contrastive_alpha": float,
    "amateur_temperature": float,
}


def numeric_options(config: DecodeConfig) -> dict[str, jax.Array]:
    """The traced options of ``config`` as arrays, for passing through an outer ``jax.jit``."""
    return {
        name: jnp.asarray(getattr(config, name), jnp.int32 if kind is int else jnp.float32)
        for name, kind in NUMERIC_FIELDS.items()
    }


# DecodeConfig fields that never reach a compiled decoder: the PRNG seed (callers pass
# ``key=``) and the host-side batch size (the batch shape is a separate cache key).
HOST_FIELDS = ("seed", "batch_size")


def static_part(config: DecodeConfig) -> DecodeConfig:
    """``config`` with its numeric and host-side options reset: a jit cache key for the rest.

    Pass the PRNG key explicitly (``decode(..., key=...)``) when decoding with it: its
    ``seed`` is reset too, so a new seed does not recompile.
    """
    defaults = DecodeConfig()
    reset = (*NUMERIC_FIELDS, *HOST_FIELDS)
    return dataclasses.replace(config, **{f: getattr(defaults, f) for f in reset})


def _numeric(value: Any, kind: type) -> Any:
    # Python numbers are normalised (int vs float would otherwise retrace); arrays
    # (possibly tracers of an enclosing jit) pass through.
    return value if isinstance(value, jax.Array) else kind(value)


@functools.cache
def jitted(decoder: Callable) -> Callable:
    """``jax.jit(decoder)`` with its static arguments marked; one object per decoder.

    Numeric options stay traced, so new values never recompile; a new step function,
    ``max_len``, beam size, ... compiles once and is cached by ``jax.jit``.

    >>> fast_beam = jitted(beam_search)
    >>> # fast_beam(step_fn, cache, beam_size=4, max_len=32, alpha=0.6, bos_id=2, ...)
    """
    return jax.jit(decoder, static_argnames=STATIC_ARGNAMES[decoder])


def decode(
    step_fn: StepFn,
    cache: Any,
    config: DecodeConfig,
    *,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    key: jax.Array | None = None,
    max_len: int | None = None,
    amateur: tuple[StepFn, Any] | None = None,
    src_mask: jax.Array | None = None,
    prefix: jax.Array | None = None,
    batch_size: int | None = None,
    numerics: dict[str, Any] | None = None,
) -> DecodeResult:
    """Decode with the method and options of ``config``, through ``jitted`` decoders.

    ``numerics`` overrides the numeric options of ``config`` (``NUMERIC_FIELDS``) with
    values that may be tracers: a caller that jits around ``decode`` passes
    ``static_part(cfg)`` as a static argument and ``numeric_options(cfg)`` as a traced
    one, so new alpha/temperature/top-p values reuse the compiled program.

    ``max_len`` defaults to ``config.max_len`` (callers applying ``max_len_a * S +
    max_len_b`` pass the result). ``key`` defaults to ``jax.random.key(config.seed)``
    for sampling. ``method="contrastive"`` needs ``amateur=(step_fn, cache)``; it uses
    ``config.beam_size`` (1 = greedy contrastive). ``config.coverage`` is beam's
    ``beta`` and needs a step function returning cross-attention. Numeric options
    are passed as Python floats/ints (traced), so configs differing only in them
    share one compilation.

    Example::

        cfg = DecodeConfig(method="beam", beam_size=4, alpha=0.6)
        result = decode(model.step_fn(params), cache, cfg, bos_id=2, eos_id=3, pad_id=0)
    """
    c = config
    n = {f: _numeric(getattr(c, f), kind) for f, kind in NUMERIC_FIELDS.items()}
    for f, v in (numerics or {}).items():
        if f not in NUMERIC_FIELDS:
            raise ValueError(f"numerics: {f!r} is not a numeric decode option")
        n[f] = _numeric(v, NUMERIC_FIELDS[f])
    max_len = c.max_len if max_len is None else int(max_len)
    common = dict(
        max_len=max_len,
        bos_id=bos_id,
        eos_id=eos_id,
        pad_id=pad_id,
        min_len=n["min_len"],
        no_repeat_ngram_size=c.no_repeat_ngram_size,
        repetition_penalty=n["repetition_penalty"],
        prefix=prefix,
        batch_size=batch_size,
    )
    ranked = dict(n_best=c.n_best, alpha=n["alpha"], length_penalty=c.length_penalty)
    if c.method in ("beam", "contrastive") and c.coverage:
        B = infer_batch_size(cache, batch_size)
        if step_output_shapes(step_fn, B, cache)[1] is None:
            raise ValueError("coverage > 0 needs a step_fn returning cross-attention")
    if c.method == "greedy":
        return jitted(greedy)(step_fn, cache, **common)
    if c.method == "sample":
        key = jax.random.key(c.seed) if key is None else key
        return jitted(sample)(
            step_fn,
            cache,
            key=key,
            num_samples=c.num_samples,
            temperature=n["temperature"],
            top_k=n["top_k"],
            top_p=n["top_p"],
            **common,
        )
    if c.method == "beam":
        return jitted(beam_search)(
            step_fn,
            cache,
            beam_size=c.beam_size,
            beta=n["coverage"],
            src_mask=src_mask,
            **ranked,
            **common,
        )
    if c.method == "contrastive":
        if amateur is None:
            raise ValueError("method 'contrastive' needs amateur=(step_fn, cache)")
        if c.beam_size == 1:
            ranked = dict(n_best=1)
        return jitted(contrastive)(
            step_fn,
            cache,
            amateur[0],
            amateur[1],
            contrastive_lambda=n["contrastive_lambda"],
            contrastive_alpha=n["contrastive_alpha"],
            amateur_temperature=n["amateur_temperature"],
            beam_size=c.beam_size,
            beta=n["coverage"],
            src_mask=src_mask,
            **ranked,
            **common,
        )
    raise ValueError(f"unknown decode method {c.method!r}")
