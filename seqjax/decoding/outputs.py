"""Optional per-token outputs of the decoders: alignments and full step log-probs.

``outputs`` (a static tuple of names, default ``()``) asks a decoder for more than
tokens and scores:

- ``"alignments"``: ``DecodeResult.alignments float32[B, K, L, S]``, the step's
  cross-attention for each generated token (needs a step returning attention);
- ``"step_log_probs"``: ``DecodeResult.step_log_probs float32[B, K, L, V]``, the
  model distribution each token was chosen from.

Off by default and then free: nothing is added to the compiled loop's state (tests
check the compiled program). Both are 0 at padding. The loops keep one ``[rows, L, X]``
buffer per output and write column ``t`` with the step's ``[rows, X]`` values.
``hard_alignment`` turns one hypothesis's alignments into ``(source, target)`` pairs
(``seqjax translate --alignments`` writes them in Pharaoh format).

>>> check_outputs(("alignments",), source_len=7)
>>> check_outputs(("attention",), source_len=7)
Traceback (most recent call last):
...
ValueError: outputs: unknown 'attention'; use a tuple of alignments, step_log_probs
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from seqjax.decode_checks import OUTPUTS, check_output_names
from seqjax.decoding.step_scores import StepScores


def check_outputs(outputs: tuple[str, ...], source_len: int | None) -> None:
    """One-line errors for unknown names, or alignments from a step without attention."""
    check_output_names(outputs)
    if "alignments" in outputs and source_len is None:
        raise ValueError("outputs: alignments need a step_fn returning cross-attention")


def output_widths(
    outputs: tuple[str, ...], vocab_size: int, source_len: int | None
) -> dict[str, int]:
    """``{name: X}``: the last axis of each requested output (``S`` or ``V``)."""
    widths = {"alignments": source_len, "step_log_probs": vocab_size}
    return {name: widths[name] for name in OUTPUTS if name in outputs}


def step_values(step: StepScores, names: Any) -> dict[str, jax.Array]:
    """``{name: float32[N, X]}``: this step's value of each output in ``names``."""
    values = {"alignments": step.attention, "step_log_probs": step.model_log_probs}
    return {name: values[name].astype(jnp.float32) for name in names}


def empty_buffers(widths: dict[str, int], rows: tuple[int, ...], max_len: int) -> Any:
    """``{name: zeros[*rows, L, X]}``, or ``None`` when nothing is requested."""
    if not widths:
        return None
    return {n: jnp.zeros((*rows, max_len, x), jnp.float32) for n, x in widths.items()}


def result_fields(buffers: Any, shape: tuple[int, ...] | None = None) -> dict[str, jax.Array]:
    """``DecodeResult`` keyword fields from the buffers, reshaped to ``shape + [L, X]``."""
    if buffers is None:
        return {}
    if shape is None:
        return dict(buffers)
    return {n: b.reshape(*shape, *b.shape[-2:]) for n, b in buffers.items()}


def hard_alignment(
    tokens_L: Any,
    alignments_LxS: Any,
    source_len: int,
    *,
    eos_id: int | tuple[int, ...],
    skip_ids: tuple[int, ...] = (),
) -> list[tuple[int, int]]:
    """``[(i, j), ...]``: each shown target token ``j`` with the source token ``i`` it
    attended to most (argmax over the first ``source_len`` columns), in target order.

    Host-side NumPy on one hypothesis of a result decoded with
    ``outputs=("alignments",)``: ``tokens_L = result.tokens[b, k]``, ``alignments_LxS =
    result.alignments[b, k]``. Target tokens stop at the first ``eos_id`` (EOS itself is
    not shown); ``skip_ids`` (e.g. PAD, BOS) are not shown either, and ``j`` counts shown
    tokens only. Both positions are token (subword) positions, from 0.

    >>> att = [[.1, .7, .2], [.6, .3, .1], [.2, .2, .6], [.9, .0, .1]]
    >>> hard_alignment([5, 2, 6, 1], att, 2, eos_id=1, skip_ids=(2,))
    [(1, 0), (0, 1)]
    """
    tokens = np.asarray(tokens_L).tolist()
    weights = np.asarray(alignments_LxS, np.float64)[:, :source_len]
    ends = set(eos_id) if isinstance(eos_id, tuple) else {eos_id}
    pairs: list[tuple[int, int]] = []
    for t, token in enumerate(tokens):
        if token in ends:
            break
        if token in skip_ids or source_len < 1:
            continue
        pairs.append((int(np.argmax(weights[t])), len(pairs)))
    return pairs
