"""Which machine facts change the main job's numbers: a fingerprint of its first updates.

The main job (``seqjax train`` with its defaults) is deterministic on one machine; issue
17 asks for the same model and BLEU on every machine. This script trains the first
``--steps`` updates of that job once per *condition* (a variant of XLA's code generation
or of the cores it may use), each in a fresh process, and fingerprints each result: a
SHA-256 of the tokenizer, of the trained params (every leaf's float32 bytes, in path
order) and the final validation loss to the last bit, with the largest parameter
difference from the first condition. Equal hashes mean bit-identical training.

Conditions (``--conditions``, comma-separated):

- ``native``: XLA's defaults on this CPU;
- ``avx2`` / ``avx`` / ``sse4``: XLA's own code generation capped with
  ``--xla_cpu_max_isa`` (what a machine without the newer instructions would run; the
  matmul library YNNPACK picks its kernels at run time and ignores the cap);
- ``eigen``: XLA's own matmul kernels instead of YNNPACK
  (``--xla_cpu_experimental_ynn_fusion_type=``), which in jaxlib call oneDNN's sgemm
  (kernels picked at run time too); ``eigen_avx2`` / ``eigen_avx``: with the cap;
- ``gebp``, ``gebp_avx2``, ``gebp_avx``: as ``eigen*``, with
  ``TENSORFLOW_USE_CUSTOM_CONTRACTION_KERNEL=false``, so that the products run Eigen's own
  kernel as compiled into jaxlib (AVX without FMA in jaxlib 0.10.2: the same code on every
  x86 machine);
- ``one_core``, ``eigen_one_core``, ``gebp_one_core``: the process pinned to CPU 0 (a
  machine with fewer cores).

Run it on two machines and compare (``--compare OTHER.json`` marks each condition whose
params hash matches the other machine's): a condition that matches across instruction
sets is one the main job could pin to give the same BLEU everywhere. Example (about 1.3
minutes per condition on a 2-core CPU)::

    python experiments/isa_fingerprint.py --out experiments/results/isa_fingerprint_epyc
    python experiments/isa_fingerprint.py --compare experiments/results/isa_fingerprint_epyc.json \
        --out /tmp/isa_fingerprint_here
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from results_io import write_results

_ISA = "--xla_cpu_max_isa="
_EIGEN = "--xla_cpu_experimental_ynn_fusion_type="
# jaxlib's Eigen contractions call oneDNN's sgemm (which picks its kernels by CPU at run
# time) unless this is "false"; Eigen's own kernel is then the one compiled into jaxlib.
_GEBP = {"TENSORFLOW_USE_CUSTOM_CONTRACTION_KERNEL": "false"}
CONDITIONS: dict[str, dict[str, Any]] = {
    "native": {"flags": []},
    "avx2": {"flags": [_ISA + "AVX2"]},
    "avx": {"flags": [_ISA + "AVX"]},
    "sse4": {"flags": [_ISA + "SSE4_2"]},
    "one_core": {"flags": [], "cpus": {0}},
    "eigen": {"flags": [_EIGEN]},
    "eigen_avx2": {"flags": [_EIGEN, _ISA + "AVX2"]},
    "eigen_avx": {"flags": [_EIGEN, _ISA + "AVX"]},
    "eigen_one_core": {"flags": [_EIGEN], "cpus": {0}},
    "gebp": {"flags": [_EIGEN], "env": _GEBP},
    "gebp_avx2": {"flags": [_EIGEN, _ISA + "AVX2"], "env": _GEBP},
    "gebp_avx": {"flags": [_EIGEN, _ISA + "AVX"], "env": _GEBP},
    "gebp_one_core": {"flags": [_EIGEN], "env": _GEBP, "cpus": {0}},
}
DEFAULT_CONDITIONS = ",".join(CONDITIONS)


def train(run: Path, steps: int, condition: dict[str, Any]) -> float:
    """Train the main job's first ``steps`` updates into ``run``; returns seconds taken."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = " ".join([*env.get("XLA_FLAGS", "").split(), *condition["flags"]])
    env.update(condition.get("env", {}))
    cpus = condition.get("cpus")
    cmd = [sys.executable, "-m", "seqjax.app.cli", "train", "--out", str(run)]
    cmd += ["--steps", str(steps), "--eval-every", str(10 * steps), "--no-test"]
    cmd += ["--no-compile-cache"]  # a cached program would hide the condition's flags
    start = time.perf_counter()
    proc = subprocess.run(
        cmd,
        env=env,
        capture_output=True,
        text=True,
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def fingerprint(run: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Hashes of ``run``'s tokenizer and latest params, and its final validation loss."""
    import jax

    from seqjax.checkpoint import Checkpointer

    params, _ = Checkpointer(run).restore_params(which="latest")
    flat = {
        jax.tree_util.keystr(path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
    }
    digest = hashlib.sha256()
    for name in sorted(flat):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(flat[name]).tobytes())
    tokenizer = hashlib.sha256()
    for path in sorted((run / "tokenizer").rglob("*")):
        if path.is_file():
            tokenizer.update(path.read_bytes())
    final = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    valid_nll = [m["valid_nll"] for m in final if m.get("final")][-1]
    return {
        "tokenizer_sha": tokenizer.hexdigest()[:16],
        "params_sha": digest.hexdigest()[:16],
        "valid_nll": float(valid_nll).hex(),
    }, flat


def markdown(rows: list[dict[str, Any]], steps: int, other: str | None) -> str:
    lines = [
        "",
        f"# Main-job fingerprint after {steps} updates, by condition",
        "",
        "Equal params hashes: bit-identical training. Max |dparam|: the largest difference of",
        f"any parameter from `{rows[0]['condition']}`'s.",
        "",
        "| condition | XLA_FLAGS added | environment | cores | tokenizer | params sha256 | valid NLL (hex) "
        "| max abs dparam | seconds (with start-up, compile) |"
        + (" same params as other machine |" if other else ""),
        "|---|---|---|---|---|---|---|---:|---:|" + ("---|" if other else ""),
    ]
    for r in rows:
        line = (
            f"| {r['condition']} | `{' '.join(r['flags']) or '(none)'}` "
            f"| {' '.join(f'{k}={v}' for k, v in r['env'].items()) or '-'} | {r['cores']} "
            f"| {r['tokenizer_sha']} | {r['params_sha']} | {r['valid_nll']} "
            f"| {r['max_abs_dparam']:.3g} | {r['seconds']:.0f} |"
        )
        if other:
            line += f" {r.get('matches_other', 'n/a')} |"
        lines.append(line)
    if other:
        lines += ["", f"Other machine: `{other}`."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="updates per condition (10)")
    parser.add_argument(
        "--conditions",
        default=DEFAULT_CONDITIONS,
        help=f"comma-separated, from {', '.join(CONDITIONS)} (default: all)",
    )
    parser.add_argument("--compare", help="another machine's results JSON to match against")
    parser.add_argument(
        "--out", default="experiments/results/isa_fingerprint", help="results path stem"
    )
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.conditions.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONDITIONS]
    if unknown or not names:
        parser.error(f"--conditions: unknown {unknown}; choose from {', '.join(CONDITIONS)}")
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    other: dict[str, str] = {}
    if args.compare:
        try:
            payload = json.loads(Path(args.compare).read_text())
            other = {r["condition"]: r["params_sha"] for r in payload["results"]}
        except (OSError, ValueError, KeyError, TypeError) as e:
            parser.error(f"--compare {args.compare}: not a results file of this script ({e})")

    rows: list[dict[str, Any]] = []
    reference: dict[str, np.ndarray] | None = None
    with tempfile.TemporaryDirectory(prefix="isa_fp_") as tmp:
        # Train every condition before this process imports JAX (to read the params):
        # forking a multithreaded JAX process for the next run could deadlock.
        seconds = {}
        for name in names:
            seconds[name] = train(Path(tmp) / name, args.steps, CONDITIONS[name])
            print(f"{name}: trained in {seconds[name]:.0f} s", flush=True)
        for name in names:
            condition = CONDITIONS[name]
            facts, flat = fingerprint(Path(tmp) / name)
            reference = flat if reference is None else reference
            dparam = max(float(np.max(np.abs(flat[k] - reference[k]))) for k in reference)
            row = {
                "condition": name,
                "flags": condition["flags"],
                "env": condition.get("env", {}),
                "cores": len(condition.get("cpus") or os.sched_getaffinity(0)),
                **facts,
                "max_abs_dparam": dparam,
                "seconds": seconds[name],
            }
            if name in other:
                row["matches_other"] = "yes" if other[name] == row["params_sha"] else "no"
            rows.append(row)
    meta = {"steps": args.steps, "conditions": names, "compare": args.compare}
    write_results(args.out, meta, rows, markdown(rows, args.steps, args.compare))


if __name__ == "__main__":
    main()
