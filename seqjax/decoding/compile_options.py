"""XLA:CPU compile options for a decoder, chosen by the rows its loop multiplies per step.

A decode step multiplies ``rows`` (batch x beams) activation rows by every weight
matrix of the model, weights that arrive from main memory. XLA:CPU's default matmul
kernels (YNNPACK) are fast from 64 rows up but slow on 4-32 rows of weights streamed
from memory, where XLA's own (Eigen) kernels are 1.45-2x faster; from 64 rows YNNPACK
is 1.06-1.23x faster (``experiments/results/bench_gemm_epyc_cpu_dots.md``, an AVX2
EPYC; whole decoders: ``bench_decode_cpu_dots_epyc.md``, 1.22-1.34x at 4-16 rows).
YNNPACK's integer dots are the only fast ones (Eigen's are 3-9x slower), so ``w8a8``
weights keep it at every size.

``decode_compiler_options(rows, params)`` returns the options for one compiled decoder,
to pass as ``jax.jit(fn, compiler_options=...)``: ``{}`` (XLA's defaults) unless the
program runs on CPU with ``rows <= SMALL_ROWS`` float dots. The environment variable
``SEQJAX_CPU_DOTS`` overrides the choice: ``auto`` (the default, as above), ``ynnpack``
(always XLA's defaults) or ``eigen`` (always XLA's own kernels); a
``--xla_cpu_experimental_ynn_fusion_type`` in ``XLA_FLAGS`` wins over both.

>>> decode_compiler_options(64, platform="cpu")
{}
>>> decode_compiler_options(16, platform="cpu", env={})
{'xla_cpu_experimental_ynn_fusion_type': ''}
>>> decode_compiler_options(16, platform="gpu", env={})
{}
>>> decode_compiler_options(16, platform="cpu", env={"SEQJAX_CPU_DOTS": "ynnpack"})
{}
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax

from seqjax.config import ConfigError

SMALL_ROWS = 32  # measured crossover: Eigen 1.45x ahead at 32 rows, 0.94x at 64
_FLAG = "xla_cpu_experimental_ynn_fusion_type"
_CHOICES = ("auto", "ynnpack", "eigen")


def _has_int8_activations(params: Any) -> bool:
    """True when ``params`` hold ``w8a8`` weights (their dots are int8 x int8)."""
    from seqjax.models.quantize import QuantizedArray

    leaves = jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, QuantizedArray))
    return any(isinstance(x, QuantizedArray) and x.act == "int8" for x in leaves)


def decode_compiler_options(
    rows: int,
    params: Any = None,
    *,
    platform: str | None = None,
    env: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """XLA compile options for a decoder whose loop multiplies ``rows`` rows per step.

    ``rows``: batch x beams (x samples) of the decoding loop (static); ``params``: the
    weights (only their quantisation mode is read); ``platform``: the backend the program
    compiles for (default ``jax.default_backend()``); ``env``: the environment to read
    ``SEQJAX_CPU_DOTS`` and ``XLA_FLAGS`` from (default ``os.environ``).
    """
    env = os.environ if env is None else env
    choice = env.get("SEQJAX_CPU_DOTS", "auto").strip().lower() or "auto"
    if choice not in _CHOICES:
        raise ConfigError(
            f"SEQJAX_CPU_DOTS={env['SEQJAX_CPU_DOTS']!r}: use one of {', '.join(_CHOICES)}"
        )
    if (platform or jax.default_backend()) != "cpu" or _FLAG in env.get("XLA_FLAGS", ""):
        return {}
    if choice == "ynnpack":
        return {}
    if choice == "auto" and (rows > SMALL_ROWS or _has_int8_activations(params)):
        return {}
    return {_FLAG: ""}
