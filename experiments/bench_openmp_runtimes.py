"""Why CTranslate2 and PyTorch slowed down in one process: one OpenMP runtime for two teams.

Session 28 found the peers slower inside ``bench_vs_peers``'s process than in processes of
their own (CT2 up to 2.2x, HF PyTorch 1.1-1.3x; ``bench_process_isolation.py``) and
suspected XLA. It is not XLA. Both wheels bundle GNU OpenMP (``torch/lib/libgomp.so.1``,
``ctranslate2.libs/libgomp-<hash>.so``), and torch loads its copy into the global symbol
scope. When ``torch`` is imported *before* ``ctranslate2``, CTranslate2's ``GOMP_parallel``
and ``omp_set_num_threads`` bind to torch's copy (``LD_DEBUG=bindings`` shows it), so both
libraries run their thread teams in one runtime. Once both teams exist the runtime manages
more threads than there are CPUs and switches every barrier wait from spinning to a short
spin and sleep (libgomp's "throttled" spin count, which no environment variable turns
off), and each parallel region pays the wake-ups: CT2's threads use about 1.2 of 2 cores
and decode at half speed. Imported the other way round, each library keeps its own copy
and neither is slowed. XLA uses no OpenMP; CT2 right after XLA ran was at most ~10% slower
(batch 1, either order; session 29 on a Zen 3).

Each case runs in a fresh child process (import order is fixed for a process's life):
CTranslate2 greedy decoding (``bench_vs_peers``'s random transformer-base Marian, 32-token
sources, exactly ``--new-tokens`` output tokens) timed alone, after XLA ran jitted GEMMs
for a second, and after torch ran GEMMs on its OpenMP team; torch's GEMM time with CT2's
team in the process; CPU time over wall time of the CT2 calls (2.0 = both cores busy);
which ``libgomp`` CT2's ``GOMP_parallel`` bound to (a separate child under
``LD_DEBUG=bindings``). Cases alternate within each round; medians over ``--repeats``.

    python experiments/bench_openmp_runtimes.py --out experiments/results/bench_openmp_runtimes_zen3

What it means for a user: in one process with torch and CTranslate2, import ``ctranslate2``
first (or give one of them a single thread). seqjax's benchmarks run each system in a
process of its own (``peer_worker``), so none of this reaches their figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import write_results  # noqa: E402

ORDERS = ("torch-first", "ctranslate2-first")
PHASES = ("alone", "after XLA", "after torch")


def binding_of(symbol: str, caller: str, code: str) -> str | None:
    """The file that ``caller``'s (a library's file name part) ``symbol`` binds to when
    ``python -c code`` runs, read from the dynamic linker's ``LD_DEBUG=bindings`` log.

    ``None`` when the symbol was not bound from that library (not called, or no such
    library). Linux/glibc only.
    """
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "LD_DEBUG": "bindings", "LD_DEBUG_OUTPUT": f"{tmp}/ld"}
        subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)
        for log in sorted(Path(tmp).glob("ld.*")):
            for line in log.read_text(errors="replace").splitlines():
                # "binding file <caller> [0] to <target> [0]: normal symbol `GOMP_parallel' ..."
                if f"`{symbol}'" not in line or " to " not in line:
                    continue
                src, _, rest = line.partition(" to ")
                if caller in src:  # the package directory and file: torch/lib/libgomp.so.1
                    target = Path(os.path.normpath(rest.split(" [", 1)[0].strip()))
                    return "/".join(
                        target.parts[-3:] if "lib" == target.parent.name else target.parts[-2:]
                    )
    return None


def _import(order: str) -> tuple[Any, Any]:
    """torch and ctranslate2, imported in ``order`` (a sorted import block would hide it)."""
    import importlib

    names = ["torch", "ctranslate2"] if order == "torch-first" else ["ctranslate2", "torch"]
    mods = {n: importlib.import_module(n) for n in names}
    return mods["torch"], mods["ctranslate2"]


def child(order: str, ct2_dir: str, batch: int, new_tokens: int, threads: int, calls: int):
    """One case in this (fresh) process; prints one JSON line."""
    torch, ctranslate2 = _import(order)
    import jax
    import jax.numpy as jnp

    torch.set_num_threads(threads)
    tr = ctranslate2.Translator(ct2_dir, device="cpu", compute_type="float32",
                                intra_threads=threads)  # fmt: skip
    rng = np.random.default_rng(0)

    def ct2() -> tuple[float, float]:
        toks = [[f"w{i}" for i in row] for row in rng.integers(2, 7999, (batch, 32)).tolist()]
        t, c = time.perf_counter(), time.process_time()
        tr.translate_batch(toks, beam_size=1, min_decoding_length=new_tokens,
                           max_decoding_length=new_tokens, max_batch_size=0)  # fmt: skip
        wall = time.perf_counter() - t
        return batch * new_tokens / wall, (time.process_time() - c) / wall

    def phase() -> dict[str, float]:
        runs = [ct2() for _ in range(calls)]
        return {"tok_s": statistics.median(r[0] for r in runs),
                "cpu_per_wall": statistics.median(r[1] for r in runs)}  # fmt: skip

    ct2()  # warm-up: CT2's thread team exists from here on
    out: dict[str, Any] = {"order": order, "batch": batch, "alone": phase()}
    f = jax.jit(lambda x, w1, w2: jnp.tanh(x @ w1) @ w2)
    x, w1 = jnp.ones((64, 512)), jnp.full((512, 2048), 1e-3)
    w2 = w1.T
    t = time.perf_counter()
    while time.perf_counter() - t < 1.0:  # XLA's thread pool, busy for a second
        f(x, w1, w2).block_until_ready()
    out["after XLA"] = phase()
    a, w = torch.randn(64, 512), torch.randn(512, 2048)
    for _ in range(20):  # torch's OpenMP team comes up
        a @ w
    t = time.perf_counter()
    for _ in range(200):
        a @ w
    out["torch_gemm_ms"] = (time.perf_counter() - t) / 200 * 1e3
    out["after torch"] = phase()
    out["threads"] = len(os.listdir("/proc/self/task"))
    print(json.dumps(out), flush=True)


def run_child(order: str, args: argparse.Namespace, ct2_dir: Path, batch: int) -> dict:
    cmd = [sys.executable, __file__, "--child", order, "--ct2-dir", str(ct2_dir),
           "--batches", str(batch), "--new-tokens", str(args.new_tokens),
           "--threads", str(args.threads), "--calls", str(args.calls)]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{order} child failed (exit {p.returncode}): {p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def summarise(runs: list[dict]) -> list[dict]:
    rows = []
    for batch in sorted({r["batch"] for r in runs}):
        for order in ORDERS:
            rs = [r for r in runs if r["order"] == order and r["batch"] == batch]
            row: dict[str, Any] = {"order": order, "batch": batch, "rounds": len(rs)}
            for ph in PHASES:
                row[ph] = statistics.median(r[ph]["tok_s"] for r in rs)
                row[ph + " cpu/wall"] = statistics.median(r[ph]["cpu_per_wall"] for r in rs)
            row["torch_gemm_ms"] = statistics.median(r["torch_gemm_ms"] for r in rs)
            row["threads"] = max(r["threads"] for r in rs)
            rows.append(row)
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    md = [
        "# Two OpenMP runtimes or one: CTranslate2 and torch in one process, by import order",
        "",
        f"CTranslate2 float32 greedy decoding, tokens/s (CPU time / wall time of its calls), "
        f"median of {meta['repeats']} rounds of {meta['calls']} calls; torch: one 64 x 512 x "
        f"2048 GEMM with CT2's team in the process. CT2's `GOMP_parallel` bound to: "
        + "; ".join(f"{o}: `{meta['binding'][o]}`" for o in ORDERS)
        + f". {meta['load_before']} before, {meta['load_after']} after.",
        "",
        "| import order | batch | CT2 alone | after XLA ran | after torch ran | "
        "after torch / alone | torch GEMM ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cells = [f"{r[ph]:.0f} ({r[ph + ' cpu/wall']:.2f})" for ph in PHASES]
        md.append(
            f"| {r['order']} | {r['batch']} | {' | '.join(cells)} | "
            f"{r['after torch'] / r['alone']:.2f}x | {r['torch_gemm_ms']:.2f} |"
        )
    return "\n".join(md) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batches", default="1,16", help="CT2 batch sizes (greedy), comma-separated")
    p.add_argument("--new-tokens", type=int, default=64, help="output tokens per sentence")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch/CT2 threads")
    p.add_argument("--repeats", type=int, default=3, help="rounds; each runs every case once")
    p.add_argument("--calls", type=int, default=5, help="CT2 calls timed per phase")
    p.add_argument("--workdir", help="bench_vs_peers' model dirs (default: built in a temp dir)")
    p.add_argument("--out", default="experiments/results/bench_openmp_runtimes", help="stem")
    p.add_argument("--child", choices=ORDERS, help=argparse.SUPPRESS)
    p.add_argument("--ct2-dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",") if b]
    if args.child:
        child(args.child, args.ct2_dir, batches[0], args.new_tokens, args.threads, args.calls)
        return

    import bench_vs_peers as bvp

    hf_dir, ct2_dir = bvp.model_dirs(args.workdir)
    first_two = {
        "torch-first": "import torch, ctranslate2",
        "ctranslate2-first": "import ctranslate2, torch",
    }
    binding = {
        o: binding_of(
            "GOMP_parallel",
            "libctranslate2",
            f"{first_two[o]}\nctranslate2.Translator({str(ct2_dir)!r}, intra_threads=2)"
            ".translate_batch([['w5', 'w6']], max_decoding_length=2)",
        )
        for o in ORDERS
    }
    before = bvp.uptime()
    runs = []
    for r in range(args.repeats):
        for batch in batches:
            order = ORDERS if r % 2 == 0 else ORDERS[::-1]  # alternate which goes first
            for o in order:
                runs.append(run_child(o, args, ct2_dir, batch))
                print(json.dumps(runs[-1]), flush=True)
    meta = {
        "repeats": args.repeats,
        "calls": args.calls,
        "threads": args.threads,
        "new_tokens": args.new_tokens,
        "binding": binding,
        "load_before": before,
        "load_after": bvp.uptime(),
    }
    rows = summarise(runs)
    md = markdown(rows, meta)
    print(md)
    write_results(args.out, {**meta, "runs": runs}, rows, md)


if __name__ == "__main__":
    main()
