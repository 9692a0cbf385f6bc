"""Where the benchmark scripts put their numbers: ``<out>.json`` and ``<out>.md``.

Every results file records the machine it was measured on (CPU model, cores, ISA flags,
jax/jaxlib versions, XLA flags, load average before and after), because a ratio measured on
one CPU does not carry over to another (issue 19: AVX-512 vs AVX2 machines).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path
from typing import Any

# Captured when a benchmark script imports this module, i.e. before it starts measuring.
LOAD_BEFORE = os.getloadavg()

ISA_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8")

# The environment variables that cap each system's instruction set (see ``cap_isa``), and
# CT2_USE_MKL, which picks CTranslate2's GEMM library (MKL on Intel CPUs by default, oneDNN
# elsewhere): recorded with the machine because each changes a peer's speed.
ISA_CAP_VARS = (
    "CT2_USE_MKL",
    "CT2_FORCE_CPU_ISA",
    "ATEN_CPU_CAPABILITY",
    "MKL_ENABLE_INSTRUCTIONS",
    "ONEDNN_MAX_CPU_ISA",
    "DNNL_MAX_CPU_ISA",
)


def cap_isa(isa: str) -> dict[str, str]:
    """Cap every system's instruction set at ``isa`` ("AVX2"): call before any of them loads.

    Emulates a CPU without AVX-512/AMX (issue 19's EPYC) on one that has them: XLA's own
    code generation (``--xla_cpu_max_isa``), CTranslate2's kernels, PyTorch's ATen kernels,
    MKL and oneDNN each read their own variable, once, when they initialise. Returns the
    variables set. The libraries' GEMMs may still pick their own kernels where they ignore
    these variables: a benchmark should report a GEMM's speed under the caps.
    """
    flags = os.environ.get("XLA_FLAGS", "").split()
    flags.append(f"--xla_cpu_max_isa={isa.upper()}")
    os.environ["XLA_FLAGS"] = " ".join(flags)
    values = {
        "CT2_FORCE_CPU_ISA": isa.upper(),
        "ATEN_CPU_CAPABILITY": isa.lower(),
        "MKL_ENABLE_INSTRUCTIONS": isa.upper(),
        "ONEDNN_MAX_CPU_ISA": isa.upper(),
        "DNNL_MAX_CPU_ISA": isa.upper(),
    }
    os.environ.update(values)
    return values


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return platform.machine()


def machine_info() -> dict[str, Any]:
    """The facts a reader needs to compare a benchmark across machines."""
    import jax
    import jaxlib

    # the flags the library itself reads to pick its CPU kernels (compile_options)
    from seqjax.decoding.compile_options import host_cpu_flags

    flags = host_cpu_flags()
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "isa": [f for f in ISA_FLAGS if f in flags],
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "backend": jax.default_backend(),
        "devices": [d.device_kind for d in jax.devices()],
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        # seqjax's per-size choice of XLA:CPU matmul kernels (seqjax.decoding.compile_options)
        "seqjax_cpu_dots": os.environ.get("SEQJAX_CPU_DOTS", "auto"),
        "isa_caps": {k: os.environ[k] for k in ISA_CAP_VARS if k in os.environ},
        "load_before": [round(x, 2) for x in LOAD_BEFORE],
        "load_after": [round(x, 2) for x in os.getloadavg()],
    }


def machine_line(info: dict[str, Any]) -> str:
    """One Markdown line naming the machine, for the top of a results table."""
    isa = ",".join(info["isa"]) or "none"
    return (
        f"_Machine: {info['cpu']}, {info['cores']} cores, ISA {isa}; jax {info['jax']} / "
        f"jaxlib {info['jaxlib']} on {info['backend']}; XLA_FLAGS={info['xla_flags'] or '(none)'}; "
        f"SEQJAX_CPU_DOTS={info.get('seqjax_cpu_dots', 'auto')}; "
        + (
            "ISA caps " + " ".join(f"{k}={v}" for k, v in info["isa_caps"].items()) + "; "
            if info.get("isa_caps")
            else ""
        )
        + f"load average {info['load_before'][0]} before, {info['load_after'][0]} after._\n\n"
    )


def require_positive(p: argparse.ArgumentParser, args: argparse.Namespace, *names: str) -> None:
    """A one-line usage error for the first of ``names`` (attributes of ``args``) below 1."""
    for name in names:
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")


def write_results(out: str | Path, meta: dict[str, Any], rows: list[Any], markdown: str) -> None:
    """Write ``{"meta", "machine", "results"}`` to ``out.json``, the table to ``out.md``, print it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    markdown = machine_line(info) + markdown
    payload = {"meta": meta, "machine": info, "results": rows}
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2))
    out.with_suffix(".md").write_text(markdown)
    print(markdown)
