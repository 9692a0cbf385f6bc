"""XLA:CPU compile options for a decoder, chosen by its rows per step, its weights' size
and the CPU's vector instructions.

A decode step multiplies ``rows`` (batch x beams) activation rows by every weight matrix
of the model. When the weights are much larger than the CPU's last-level cache they
arrive from main memory at every step, and there, on an AVX2 CPU without AVX-512,
XLA:CPU's default matmul kernels (YNNPACK) are slow on 4-32 rows while XLA's own (Eigen)
kernels are 1.45-2x faster; from 64 rows YNNPACK is 1.06-1.23x faster
(``experiments/results/bench_gemm_epyc_cpu_dots.md``, a Zen 3 EPYC with a 32 MB L3; whole
decoders: ``bench_decode_cpu_dots_epyc.md``, transformer-base 1.22-1.34x at 4-16 rows).
With AVX-512 YNNPACK's kernels win at those sizes too: on a Zen 4 EPYC (same L3)
Eigen's are 0.71-0.78x on 16 rows (``bench_cpu_dots_zen4.md``) and whole decoders
0.82-0.96x at 1-16 rows (``bench_decode_cpu_dots_zen4.md``), so there XLA's defaults stay.
Weights that stay in cache are the opposite case (YNNPACK up to 3x faster: the LSTM
``rnn_small`` and the Transformer ``small`` presets, in the same file; the turn comes at
about twice the 32 MB L3, ``bench_cpu_dots_epyc.md``), and YNNPACK's integer dots are
the only fast ones (Eigen's are 3-9x slower), so ``w8a8`` weights keep it at every size;
so do ``bf16`` weights (Eigen's bfloat16 dots were 3-4.5x slower at 4-64 rows on a Zen 4).

One row per step is the exception to the rule on AVX2: there ``one_row_output_major``
has ``Translator`` decode from a copy of the float32 weights stored output-major
(``[N, K]``), with YNNPACK's kernels: 1.02-1.24x faster for transformer-base greedy
batch 1 on a Zen 2 EPYC (``experiments/results/bench_one_row_zen2_hf.md``), with jaxlib
0.10.2, 0.11.2 and 0.12.0. jaxlib 0.12.1 turned that around (``bench_one_row_zen2_jax0121.md``):
there YNNPACK takes one-row products of the stored weights, 1.07-1.13x faster than XLA's own
kernels, while the output-major copy decodes at 0.85x of it, so from that version
(``ONE_ROW_YNNPACK_FROM``) one row keeps the stored weights and XLA's defaults.

The size threshold is a constant (``LARGE_WEIGHTS_BYTES``, 64 MB: twice the L3 where it
was measured), not read from the machine: the two kernels sum in different orders, so
the choice can change a decoded token, and a threshold that followed each machine's
cache would let the same model and command decode differently on two machines with the
same instruction set (issue 17's reproducibility). The instruction set does enter the
choice (``host_cpu_flags``: AVX2 present, AVX-512 absent), as it enters the sums of every
kernel anyway. On a CPU whose cache differs much from 32 MB the turn moves, and
``SEQJAX_CPU_DOTS`` sets the kernels by hand. On a Zen 2 EPYC with a 16 MB L3 the chain
of ``experiments/bench_cpu_dots.py`` turned earlier (Eigen 1.13-1.56x faster at 4-16 rows
on 17 MB of weights, 1.2-2.0x on 34 MB: ``bench_cpu_dots_zen2.md``), yet the 22 MB LSTM
``rnn_small`` decoded at 0.62-0.98x with Eigen there (``bench_decode_rnn_small_zen2_dots_*``),
so the threshold stays.

``decode_compiler_options(rows, params)`` returns the options for one compiled decoder,
to pass as ``jax.jit(fn, compiler_options=...)``: ``{}`` (XLA's defaults) unless the
program runs on an x86 CPU with AVX2 and without AVX-512, with ``rows <= SMALL_ROWS``
float dots on weight matrices of at least ``LARGE_WEIGHTS_BYTES`` (``params`` counts every
leaf of two or more dimensions, the encoder's too: about twice what a decoder step reads).
The environment variable ``SEQJAX_CPU_DOTS`` overrides the choice: ``auto`` (the default,
as above), ``ynnpack`` (always XLA's defaults) or ``eigen`` (always XLA's own kernels); a
``--xla_cpu_experimental_ynn_fusion_type`` in ``XLA_FLAGS`` wins over both. (jaxlib before
0.8.1 refuses the option; pyproject requires jax >= 0.10.)

>>> big = {"w": jax.ShapeDtypeStruct((8192, 8192), jnp.float32)}  # 256 MB
>>> avx2 = frozenset({"avx", "avx2", "fma"})
>>> decode_compiler_options(16, big, platform="cpu", env={}, cpu_flags=avx2)
{'xla_cpu_experimental_ynn_fusion_type': ''}
>>> decode_compiler_options(64, big, platform="cpu", env={}, cpu_flags=avx2)
{}
>>> decode_compiler_options(16, big, platform="cpu", env={}, cpu_flags=avx2 | {"avx512f"})
{}
>>> decode_compiler_options(16, big, platform="cpu", env={}, cpu_flags=avx2, large_bytes=512 << 20)
{}
>>> decode_compiler_options(16, big, platform="gpu", env={}, cpu_flags=avx2)
{}
>>> decode_compiler_options(16, None, platform="cpu", env={"SEQJAX_CPU_DOTS": "eigen"})
{'xla_cpu_experimental_ynn_fusion_type': ''}
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from seqjax.config import ConfigError

SMALL_ROWS = 32  # measured crossover: Eigen 1.45x ahead at 32 rows, 0.94x at 64
LARGE_WEIGHTS_BYTES = 64 << 20  # 2 x the 32 MB L3 where the turn was measured
# First jaxlib where one row per step is fastest with YNNPACK on the stored weights (Zen 2:
# 0.12.0 still decoded 1.34x faster from the output-major copy, 0.12.1 0.90-0.96x).
ONE_ROW_YNNPACK_FROM = (0, 12, 1)
_FLAG = "xla_cpu_experimental_ynn_fusion_type"
_CHOICES = ("auto", "ynnpack", "eigen")


@functools.cache
def host_cpu_flags() -> frozenset[str]:
    """This machine's CPU feature flags as Linux lists them (``avx2``, ``avx512f``, ...);
    empty where ``/proc/cpuinfo`` has none (another OS, another architecture), which
    keeps XLA's defaults. Read once per process."""
    try:
        return parse_cpu_flags(Path("/proc/cpuinfo").read_text())
    except OSError:
        return frozenset()


def parse_cpu_flags(cpuinfo: str) -> frozenset[str]:
    r"""The first ``flags`` line of a ``/proc/cpuinfo`` text, as a set (empty if none).

    >>> sorted(parse_cpu_flags("processor : 0\nflags\t\t: fpu avx2 fma\n"))
    ['avx2', 'fma', 'fpu']
    """
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def jaxlib_version() -> tuple[int, ...]:
    """The running jaxlib's version as integers, e.g. ``(0, 10, 2)`` (jaxlib's own
    ``version.__version_info__``)."""
    from jaxlib import version

    return tuple(version.__version_info__)


def eigen_can_help(cpu_flags: frozenset[str] | set[str]) -> bool:
    """True on the CPUs where XLA's own kernels were measured faster on few rows: x86
    with AVX2 and without AVX-512 (module docstring)."""
    return "avx2" in cpu_flags and "avx512f" not in cpu_flags


def has_bf16_dots(cpu_flags: frozenset[str] | set[str]) -> bool:
    """Whether the CPU lists bfloat16 dot instructions (x86 ``avx512_bf16`` or ``amx_bf16``,
    Arm ``bf16``), which ``--quantize bf16`` is for; elsewhere XLA converts to float32.

    >>> has_bf16_dots(frozenset({"avx2", "avx512f", "avx512_bf16"})), has_bf16_dots({"avx2"})
    (True, False)
    """
    return bool({"avx512_bf16", "amx_bf16", "bf16"} & set(cpu_flags))


def matrix_bytes(params: Any) -> int:
    """Bytes of the leaves of ``params`` with two or more dimensions (arrays, tracers or
    ``ShapeDtypeStruct``; int8 ``QuantizedArray`` leaves count their int8 bytes)."""
    total = 0
    for x in jax.tree.leaves(params):
        shape, dtype = getattr(x, "shape", ()), getattr(x, "dtype", None)
        if len(shape) >= 2 and dtype is not None:
            n = 1
            for d in shape:
                n *= int(d)
            total += n * jnp.dtype(dtype).itemsize
    return total


def _needs_ynnpack(params: Any) -> bool:
    """True when ``params`` hold ``w8a8``, ``bf16`` or output-major float32 weights
    (``quantize.output_major``): their dots (int8 x int8, bfloat16 x bfloat16, float32
    against ``[N, K]``) run 3-10x slower in XLA's own kernels than in YNNPACK's."""
    from seqjax.models.quantize import QuantizedArray

    leaves = jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, QuantizedArray))
    return any(isinstance(x, QuantizedArray) and x.act in ("int8", "bf16", "f32") for x in leaves)


def one_row_output_major(
    rows: int,
    params: Any,
    *,
    platform: str | None = None,
    env: Mapping[str, str] | None = None,
    large_bytes: int | None = None,
    cpu_flags: frozenset[str] | set[str] | None = None,
    jaxlib: tuple[int, ...] | None = None,
) -> bool:
    """Whether a decoder of ``rows`` rows per step should read ``params`` stored
    output-major (``quantize.output_major``, compiled with XLA's defaults) instead of as
    they are.

    True for one row per step (greedy or one sample at batch 1, streaming translation)
    of float32 weights of at least ``large_bytes`` on the CPUs of the Eigen rule (x86,
    AVX2, no AVX-512), with ``SEQJAX_CPU_DOTS`` at ``auto``. There the step streams its
    weights from memory through GEMVs, and on a Zen 2 EPYC transformer-base decoded
    greedy batch 1 1.02-1.24x faster from an output-major copy (10 A/B runs, median
    1.15x, never slower; the same tokens; ``experiments/bench_one_row.py``); at 2 rows the
    same copy was 0.83x and at 4 rows 0.71-0.75x (against XLA's own kernels on the stored
    layout), hence one row only. With jaxlib from ``ONE_ROW_YNNPACK_FROM`` (0.12.1) the copy
    lost (0.85x of the stored weights under YNNPACK), so there it is never made. The
    arguments are ``decode_compiler_options``'.

    >>> big = {"w": jax.ShapeDtypeStruct((8192, 8192), jnp.float32)}
    >>> avx2 = frozenset({"avx", "avx2", "fma"})
    >>> one_row_output_major(1, big, platform="cpu", env={}, cpu_flags=avx2, jaxlib=(0, 10, 2))
    True
    >>> one_row_output_major(1, big, platform="cpu", env={}, cpu_flags=avx2, jaxlib=(0, 12, 1))
    False
    >>> one_row_output_major(4, big, platform="cpu", env={}, cpu_flags=avx2)
    False
    >>> one_row_output_major(1, big, platform="cpu", env={}, cpu_flags=avx2 | {"avx512f"})
    False
    >>> one_row_output_major(1, big, platform="cpu", env={"SEQJAX_CPU_DOTS": "ynnpack"}, cpu_flags=avx2)
    False
    """
    from seqjax.models.quantize import is_quantized

    env = os.environ if env is None else env
    if rows != 1 or params is None or _dots_choice(env) != "auto" or is_quantized(params):
        return False  # quantised: int8 weight-only, w8a8, bf16, or output-major already
    # exactly where the rule would pick XLA's own kernels for these float32 weights
    options = decode_compiler_options(
        rows,
        params,
        platform=platform,
        env=env,
        large_bytes=large_bytes,
        cpu_flags=cpu_flags,
        jaxlib=jaxlib,
    )
    return options == {_FLAG: ""}


def _dots_choice(env: Mapping[str, str]) -> str:
    """``SEQJAX_CPU_DOTS`` from ``env``: ``auto`` (unset or empty), ``ynnpack`` or ``eigen``."""
    choice = env.get("SEQJAX_CPU_DOTS", "auto").strip().lower() or "auto"
    if choice not in _CHOICES:
        raise ConfigError(
            f"SEQJAX_CPU_DOTS={env['SEQJAX_CPU_DOTS']!r}: use one of {', '.join(_CHOICES)}"
        )
    return choice


def decode_compiler_options(
    rows: int,
    params: Any = None,
    *,
    platform: str | None = None,
    env: Mapping[str, str] | None = None,
    large_bytes: int | None = None,
    cpu_flags: frozenset[str] | set[str] | None = None,
    jaxlib: tuple[int, ...] | None = None,
) -> dict[str, str]:
    """XLA compile options for a decoder whose loop multiplies ``rows`` rows per step.

    ``rows``: batch x beams (x samples) of the decoding loop (static); ``params``: the
    weights (their shapes, dtypes and quantisation mode are read; None: unknown, XLA's
    defaults unless forced); ``platform``: the backend the program compiles for (default
    ``jax.default_backend()``); ``env``: where ``SEQJAX_CPU_DOTS`` and ``XLA_FLAGS`` are
    read (default ``os.environ``); ``large_bytes``: the weight size from which XLA's own
    kernels are used (default ``LARGE_WEIGHTS_BYTES``, the same on every machine);
    ``cpu_flags``: the CPU's feature flags (default ``host_cpu_flags()``); ``jaxlib``: the
    jaxlib version the program compiles with (default ``jaxlib_version()``): from
    ``ONE_ROW_YNNPACK_FROM`` one row per step keeps XLA's defaults.
    """
    env = os.environ if env is None else env
    choice = _dots_choice(env)
    if (platform or jax.default_backend()) != "cpu" or _FLAG in env.get("XLA_FLAGS", ""):
        return {}
    if choice == "eigen":
        return {_FLAG: ""}
    if choice == "ynnpack" or params is None or rows > SMALL_ROWS:
        return {}
    large = LARGE_WEIGHTS_BYTES if large_bytes is None else large_bytes
    if matrix_bytes(params) < large or _needs_ynnpack(params):
        return {}
    if not eigen_can_help(host_cpu_flags() if cpu_flags is None else cpu_flags):
        return {}
    if rows == 1 and (jaxlib_version() if jaxlib is None else jaxlib) >= ONE_ROW_YNNPACK_FROM:
        return {}  # YNNPACK's one-row products of stored weights are the fastest there
    return {_FLAG: ""}


def call_compiler_options(rows: int | None, params: Any, call_args: Any) -> dict[str, str]:
    """``decode_compiler_options`` for one call of a jitted decoder: ``{}`` where ``rows``
    is unknown (None), or where ``call_args`` (the call's arguments) hold tracers, i.e. the
    call runs inside another ``jax.jit``, whose options apply (a nested jit may not set
    its own). Tracers are looked for only when there are options to set."""
    if rows is None:
        return {}
    options = decode_compiler_options(rows, params)
    if options and any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(call_args)):
        return {}
    return options
