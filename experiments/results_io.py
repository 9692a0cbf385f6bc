"""Where the benchmark scripts put their numbers: ``<out>.json`` and ``<out>.md``.

Every results file records the machine it was measured on (CPU model, cores, ISA flags,
jax/jaxlib versions, XLA flags, load average before and after), because a ratio measured on
one CPU does not carry over to another (issue 19: AVX-512 vs AVX2 machines).
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

# Captured when a benchmark script imports this module, i.e. before it starts measuring.
LOAD_BEFORE = os.getloadavg()

ISA_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8")


def _cpuinfo() -> tuple[str, set[str]]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine(), set()
    model, flags = platform.machine(), set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model == platform.machine():
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return model, flags


def machine_info() -> dict[str, Any]:
    """The facts a reader needs to compare a benchmark across machines."""
    import jax
    import jaxlib

    model, flags = _cpuinfo()
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "isa": [f for f in ISA_FLAGS if f in flags],
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "backend": jax.default_backend(),
        "devices": [d.device_kind for d in jax.devices()],
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "load_before": [round(x, 2) for x in LOAD_BEFORE],
        "load_after": [round(x, 2) for x in os.getloadavg()],
    }


def machine_line(info: dict[str, Any]) -> str:
    """One Markdown line naming the machine, for the top of a results table."""
    isa = ",".join(info["isa"]) or "none"
    return (
        f"_Machine: {info['cpu']}, {info['cores']} cores, ISA {isa}; jax {info['jax']} / "
        f"jaxlib {info['jaxlib']} on {info['backend']}; XLA_FLAGS={info['xla_flags'] or '(none)'}; "
        f"load average {info['load_before'][0]} before, {info['load_after'][0]} after._\n\n"
    )


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
