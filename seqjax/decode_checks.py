"""The allowed range of every decoding option, written once.

``DecodeConfig`` and the public decoders (``seqjax.decoding``) both call
``check_options``, so a bad value is the same one-line ``ValueError`` naming the option
and its range wherever it is given. Options may be Python numbers or arrays (one value
per row); values being traced by ``jax.jit`` are skipped here (nothing concrete to
check), which is why ``seqjax.decoding.jitted`` checks its arguments before tracing.

>>> check_options(temperature=0.7, top_p=0.9)
>>> check_options(top_p=1.5)
Traceback (most recent call last):
...
ValueError: top_p must be in (0, 1], got 1.5
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

# name -> (allowed(values) elementwise, the range as the message states it)
RULES: dict[str, tuple[Callable[[np.ndarray], np.ndarray], str]] = {
    "temperature": (lambda v: v > 0, "> 0"),
    "amateur_temperature": (lambda v: v > 0, "> 0"),
    "top_k": (lambda v: v >= 0, ">= 0 (0 = off)"),
    "top_p": (lambda v: (v > 0) & (v <= 1), "in (0, 1]"),
    "repetition_penalty": (lambda v: v > 0, "> 0 (1 = off)"),
    "coverage": (lambda v: v >= 0, ">= 0"),
    "alpha": (lambda v: np.isfinite(v), "finite"),
    "min_len": (lambda v: v >= 0, ">= 0"),
    "min_new_tokens": (lambda v: v >= 0, ">= 0"),
    "max_new_tokens": (lambda v: v >= 1, ">= 1"),
    "max_len": (lambda v: v >= 1, ">= 1"),
    "no_repeat_ngram_size": (lambda v: v >= 0, ">= 0 (0 = off)"),
    "num_samples": (lambda v: v >= 1, ">= 1"),
    "beam_size": (lambda v: v >= 1, ">= 1"),
    "n_best": (lambda v: v >= 1, ">= 1"),
    "contrastive_alpha": (lambda v: (v >= 0) & (v <= 1), "in [0, 1]"),
}


def concrete(value: Any) -> np.ndarray | None:
    """``value`` as a NumPy array, or None when it is None or traced (unknown yet)."""
    if value is None or isinstance(value, jax.core.Tracer):
        return None
    return np.asarray(value)


def check_options(**options: Any) -> None:
    """Raise ``ValueError`` for the first option outside its range (``RULES``).

    ``min_len`` is also checked against ``max_len`` when both are given, and
    ``min_new_tokens`` against ``max_new_tokens``.
    """
    for name, value in options.items():
        v = concrete(value)
        if v is None:
            continue
        allowed, text = RULES[name]
        with np.errstate(invalid="ignore"):
            bad = ~np.asarray(allowed(v.astype(np.float64)), bool)
        if np.any(bad):
            raise ValueError(f"{name} must be {text}, got {_first(v, bad)}")
    for low, high in (("min_len", "max_len"), ("min_new_tokens", "max_new_tokens")):
        lo, hi = concrete(options.get(low)), concrete(options.get(high))
        if lo is not None and hi is not None and np.any(lo > hi):
            raise ValueError(f"{low} must be in [0, {high}={int(hi)}], got {int(np.max(lo))}")


def check_token_ids(vocab_size: int, **ids: Any) -> None:
    """Token ids (scalars or arrays, e.g. a prefix) must lie in ``[0, vocab_size)``."""
    for name, value in ids.items():
        v = concrete(value)
        if v is not None and v.size and (np.min(v) < 0 or np.max(v) >= vocab_size):
            bad = v[(v < 0) | (v >= vocab_size)]
            raise ValueError(
                f"{name} must be in [0, {vocab_size}) (the step's vocabulary), got {bad.flat[0]}"
            )


def check_token_lists(**lists: Any) -> None:
    """Static token lists (``bad_words``, ``suppress_tokens``, ...) of Python ints.

    >>> check_token_lists(bad_words=((5, 6), ()))
    Traceback (most recent call last):
    ...
    ValueError: bad_words must be a tuple of non-empty token-id tuples, got ()
    """
    for name, value in lists.items():
        items = value if name == "bad_words" else (value,)
        for item in items:
            ok = isinstance(item, tuple | list) and all(
                isinstance(t, int | np.integer) for t in item
            )
            if name == "bad_words" and not (ok and len(item) > 0):
                raise ValueError(
                    f"bad_words must be a tuple of non-empty token-id tuples, got {item!r}"
                )
            if not ok:
                raise ValueError(f"{name} must be a tuple of token ids, got {item!r}")


OUTPUTS = ("alignments", "step_log_probs")  # seqjax.decoding.outputs


def check_output_names(outputs: Any) -> None:
    """``outputs`` is a tuple of distinct names from ``OUTPUTS``.

    >>> check_output_names(("alignments",))
    >>> check_output_names(("attention",))
    Traceback (most recent call last):
    ...
    ValueError: outputs: unknown 'attention'; use a tuple of alignments, step_log_probs
    """
    if not isinstance(outputs, tuple | list):
        raise ValueError(f"outputs must be a tuple of {', '.join(OUTPUTS)}, got {outputs!r}")
    for name in outputs:
        if name not in OUTPUTS:
            raise ValueError(f"outputs: unknown {name!r}; use a tuple of {', '.join(OUTPUTS)}")
    if len(set(outputs)) != len(outputs):
        raise ValueError(f"outputs: each name at most once, got {tuple(outputs)!r}")


STREAM_EVERY = 16  # default positions per streaming host call (decoders, DecodeConfig, CLI)


def check_stream_every(stream_every: Any) -> None:
    """``stream_every`` (positions per streaming host call) is a Python integer >= 1.

    >>> check_stream_every(0)
    Traceback (most recent call last):
    ...
    ValueError: stream_every must be an integer >= 1, got 0
    """
    if isinstance(stream_every, bool) or not isinstance(stream_every, int) or stream_every < 1:
        raise ValueError(f"stream_every must be an integer >= 1, got {stream_every!r}")


def _first(v: np.ndarray, bad: np.ndarray) -> Any:
    return v.item() if v.ndim == 0 else v[bad].flat[0].item()
