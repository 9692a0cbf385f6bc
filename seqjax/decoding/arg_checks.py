"""Call-site checks of the public decoders: one-line ``ValueError``s before any search.

``check_decoder_call`` runs at the top of every decoder. Everything it needs is known
before the decoding loop is traced: option values (``seqjax.decode_checks``; skipped
when traced, so ``jitted`` checks them on the concrete arguments first, see
``check_concrete_call``), token ids and the vocabulary (from ``jax.eval_shape`` of one
step), the cache's capacity (a step's optional ``capacity(cache)`` method, which
``model.step`` and ``model.step_fn`` provide), and the shapes of ``prefix`` and
``src_mask``.

>>> import jax.numpy as jnp
>>> step = lambda tok, pos, c: (jnp.zeros((tok.shape[0], 4)), c)
>>> check_decoder_call(step, None, batch_size=2, max_len=5, token_ids={"eos_id": 3})
(2, 4, None)
>>> check_decoder_call(step, None, batch_size=2, max_len=5, token_ids={"eos_id": 4})
Traceback (most recent call last):
...
ValueError: eos_id must be in [0, 4) (the step's vocabulary), got 4
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from seqjax.decode_checks import (
    RULES,
    check_options,
    check_token_ids,
    check_token_lists,
    concrete,
)
from seqjax.decoding.batch_tree import infer_batch_size
from seqjax.decoding.step import StepFn, bind_params, step_output_shapes


def cache_capacity(step_fn: StepFn, cache: Any) -> int | None:
    """Positions ``cache`` can hold, if the step says (``step_fn.capacity(cache)``)."""
    capacity = getattr(step_fn, "capacity", None)
    return None if capacity is None else capacity(cache)


def check_decoder_call(
    step_fn: StepFn,
    cache: Any,
    *,
    batch_size: int | None,
    max_len: int,
    token_ids: dict[str, Any],
    token_lists: dict[str, Any] | None = None,
    prefix: jax.Array | None = None,
    src_mask: jax.Array | None = None,
    **options: Any,
) -> tuple[int, int, int | None]:
    """Validate a decoder call; returns ``(B, vocab_size, source_len or None)``.

    ``step_fn`` is the 3-argument form (after ``bind_params``); ``options`` are the
    numeric options by name (``RULES``), ``coverage`` included; ``token_lists`` the
    static token tuples (``bad_words``, ``suppress_tokens``, ...).
    """
    if not isinstance(max_len, int | np.integer):
        raise ValueError(f"max_len must be a Python int (static), got {type(max_len).__name__}")
    check_options(max_len=max_len, **options)
    B = infer_batch_size(cache, batch_size)
    check_row_shapes(B, **options)
    vocab_size, source_len = step_output_shapes(step_fn, B, cache)
    check_token_ids(vocab_size, **token_ids)
    check_token_lists(**(token_lists or {}))
    flat = {
        k: [t for w in v for t in w] if k == "bad_words" else v
        for k, v in (token_lists or {}).items()
    }
    check_token_ids(vocab_size, **{k: np.asarray(v, np.int64) for k, v in flat.items()})
    capacity = cache_capacity(step_fn, cache)
    if capacity is not None and max_len > capacity:
        raise ValueError(
            f"max_len must be <= {capacity}, the cache's capacity "
            f"(init_cache(max_len=...)), got {max_len}"
        )
    if prefix is not None:
        _check_prefix(prefix, B, max_len, vocab_size, token_ids.get("eos_id"))
    if src_mask is not None:
        want = f"[{B}, {source_len if source_len is not None else 'S'}]"
        shape = np.shape(src_mask)
        if len(shape) != 2 or shape[0] != B or source_len not in (None, shape[1]):
            raise ValueError(f"src_mask must have shape {want} (rows, source length), got {shape}")
    coverage = concrete(options.get("coverage"))
    if source_len is None and coverage is not None and np.any(coverage != 0):
        raise ValueError(
            "coverage penalty (coverage != 0) needs a step_fn returning cross-attention"
        )
    return B, vocab_size, source_len


# options that may be given per source row ([B]); the others must be scalars
PER_ROW = ("temperature", "top_k", "top_p", "min_len", "min_new_tokens")


def check_row_shapes(B: int, **options: Any) -> None:
    """Per-row options (``PER_ROW``) are scalars or ``[B]``; the others are scalars.

    >>> check_row_shapes(2, temperature=[0.5, 1.0], alpha=0.6)
    >>> check_row_shapes(2, min_len=[1, 2, 3])
    Traceback (most recent call last):
    ...
    ValueError: min_len must be a scalar or one value per source row (shape [2]), got shape (3,)
    """
    for name, value in options.items():
        shape = np.shape(value)
        if value is None or shape == ():
            continue
        if name not in PER_ROW:
            raise ValueError(f"{name} must be a scalar, got shape {shape}")
        if shape != (B,):
            raise ValueError(
                f"{name} must be a scalar or one value per source row (shape [{B}]), "
                f"got shape {shape}"
            )


def _check_prefix(prefix: jax.Array, B: int, max_len: int, vocab_size: int, eos_id: Any) -> None:
    shape = np.shape(prefix)
    if len(shape) != 2 or shape[0] != B:
        raise ValueError(
            f"prefix must have shape [{B}, P] (one PAD-padded row per source), got {shape}"
        )
    if shape[1] > max_len:
        raise ValueError(f"prefix length must be <= max_len ({max_len}), got {shape[1]}")
    check_token_ids(vocab_size, prefix=prefix)
    p, eos = concrete(prefix), concrete(eos_id)
    if p is not None and eos is not None and np.isin(p, eos).any():
        row = int(np.argwhere(np.isin(p, eos))[0, 0])
        raise ValueError(
            f"prefix must not contain eos_id {eos.tolist()} (a prompt ends no row), "
            f"found in row {row}"
        )


# the padding of constraint phrases (constrained_beam_search): never a token id
CONSTRAINT_PAD = -1


def check_constraints(
    constraints: Any, B: int, vocab_size: int, max_len: int, *, eos_id: Any, pad_id: Any
) -> None:
    """``constraints int[B, C, P]``: left-aligned phrases padded with ``-1``, that can fit.

    The shape is checked always, the values when they are concrete (``jitted`` checks them
    before tracing).

    >>> import numpy as np
    >>> ok = np.array([[[5, 6], [7, -1]]])
    >>> check_constraints(ok, 1, 9, 4, eos_id=2, pad_id=0)
    >>> check_constraints(ok, 1, 9, 2, eos_id=2, pad_id=0)
    Traceback (most recent call last):
    ...
    ValueError: constraints of row 0 need 3 tokens in all, more than max_len (2)
    """
    shape = np.shape(constraints)
    if len(shape) != 3 or shape[0] != B or 0 in shape[1:]:
        raise ValueError(
            f"constraints must have shape [{B}, C, P] (C phrases of up to P token ids per "
            f"source, padded with {CONSTRAINT_PAD}), got {shape}"
        )
    dtype = np.dtype(
        constraints.dtype if hasattr(constraints, "dtype") else np.asarray(constraints).dtype
    )
    if not np.issubdtype(dtype, np.integer):
        raise ValueError(f"constraints must hold integer token ids, got dtype {dtype}")
    c = concrete(constraints)
    if c is None:
        return
    bad = c[(c < CONSTRAINT_PAD) | (c >= vocab_size)]
    if bad.size:
        raise ValueError(
            f"constraints must hold token ids in [0, {vocab_size}) (the step's vocabulary) "
            f"or {CONSTRAINT_PAD} (padding), got {bad.flat[0]}"
        )
    real = c != CONSTRAINT_PAD
    gap = np.argwhere(~real[..., :-1] & real[..., 1:])
    if gap.size:
        b, k = gap[0, :2]
        raise ValueError(
            f"constraints: row {b} phrase {k} has a token after its {CONSTRAINT_PAD} "
            "padding; left-align each phrase"
        )
    for name, ids in (("eos_id", eos_id), ("pad_id", pad_id)):
        ids = concrete(ids)
        hit = np.argwhere(np.isin(c, ids) & real) if ids is not None else np.zeros((0, 3))
        if hit.size:
            b, k = hit[0, :2]
            raise ValueError(
                f"constraints must not contain {name} {ids.tolist()} (row {b}, phrase {k}): "
                "no hypothesis emits it inside a phrase"
            )
    lengths = real.sum(axis=-1)
    if lengths.max() > max_len:
        b, k = np.argwhere(lengths == lengths.max())[0]
        raise ValueError(
            f"constraints: row {b} phrase {k} has {lengths.max()} tokens, more than "
            f"max_len ({max_len})"
        )
    totals = lengths.sum(axis=-1)
    if totals.max() > max_len:
        b = int(np.argmax(totals))
        raise ValueError(
            f"constraints of row {b} need {totals.max()} tokens in all, more than "
            f"max_len ({max_len})"
        )


def check_score_call(
    step_fn: StepFn, cache: Any, targets: jax.Array, token_ids: dict[str, Any]
) -> None:
    """``score``: 2-D targets, ids in the vocabulary, no longer than the cache holds."""
    shape = np.shape(targets)
    if len(shape) != 2 or shape[1] < 1:
        raise ValueError(f"targets must have shape [B, L] with L >= 1, got {shape}")
    vocab_size, _ = step_output_shapes(step_fn, shape[0], cache)
    check_token_ids(vocab_size, targets=targets, **token_ids)
    capacity = cache_capacity(step_fn, cache)
    if capacity is not None and shape[1] > capacity:
        raise ValueError(
            f"targets length must be <= {capacity}, the cache's capacity "
            f"(init_cache(max_len=...)), got {shape[1]}"
        )


_STEP_ARGS = {"step_fn": "params", "expert_step_fn": "params"}
_CACHE_ARGS = {"step_fn": "cache", "expert_step_fn": "expert_cache"}


def check_concrete_call(decoder: Callable, args: tuple, kwargs: dict) -> None:
    """The value checks of a decoder call made *before* ``jax.jit`` traces the values.

    Under ``jit`` the numeric options are tracers inside the decoder, so their ranges
    (and ``coverage > 0`` with a step returning no attention) are checked here.
    """
    bound = _signature(decoder).bind_partial(*args, **kwargs).arguments
    options = {k: v for k, v in bound.items() if k in RULES}
    check_options(**options)
    coverage = concrete(bound.get("coverage"))
    constraints = bound.get("constraints")
    has_coverage = coverage is not None and np.any(coverage != 0)
    if not has_coverage and concrete(constraints) is None:
        return
    step_name = "step_fn" if "step_fn" in bound else "expert_step_fn"
    step = bind_params(bound[step_name], bound.get(_STEP_ARGS[step_name]))
    cache = bound.get(_CACHE_ARGS[step_name])
    B = infer_batch_size(cache, bound.get("batch_size"))
    vocab_size, source_len = step_output_shapes(step, B, cache)
    if has_coverage and source_len is None:
        raise ValueError(
            "coverage penalty (coverage != 0) needs a step_fn returning cross-attention"
        )
    if concrete(constraints) is not None and isinstance(bound.get("max_len"), int | np.integer):
        ids = {k: bound.get(k) for k in ("eos_id", "pad_id")}
        check_constraints(constraints, B, vocab_size, bound["max_len"], **ids)


_SIGNATURES: dict[Callable, inspect.Signature] = {}


def _signature(decoder: Callable) -> inspect.Signature:
    if decoder not in _SIGNATURES:
        _SIGNATURES[decoder] = inspect.signature(decoder)
    return _SIGNATURES[decoder]
