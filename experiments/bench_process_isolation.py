"""Do the peers lose speed when they share seqjax's process? The same peer, two places.

Until session 28 ``bench_vs_peers.py`` ran seqjax, HF PyTorch and CTranslate2 in one
process. This script times each peer twice in the same interleaved rounds: inside this
process, where seqjax's XLA decoder also runs every round (the old arrangement), and in a
worker process of its own (``bench_vs_peers.in_worker``, the arrangement since session
28). A ratio "own process / shared" well above 1 means the old benchmark handicapped that
peer. The model and sources are ``bench_vs_peers``'s (random transformer-base Marian,
32-token sources, exactly ``--new-tokens`` output tokens); median of ``--repeats`` rounds.
This process imports torch first by default, the old benchmark's order: CTranslate2's
OpenMP then binds to torch's runtime, the main cause of its slowdown here
(``bench_openmp_runtimes.py``); ``--import-order ctranslate2-first`` keeps them apart.

``--train PRESET:BATCH,...`` does the same for ``bench_train.py``'s PyTorch training peer:
its step inside this process, where seqjax's jitted train step also runs every round, and
in a worker of its own.

    python experiments/bench_process_isolation.py --out experiments/results/bench_process_isolation_zen3
    python experiments/bench_process_isolation.py --cells "" --train small:32,base:32 \
        --out experiments/results/bench_process_isolation_train_zen3
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_vs_peers as bvp  # noqa: E402
from peer_worker import Local, Worker  # noqa: E402
from results_io import write_results  # noqa: E402

TRAIN_MD = [
    "Training steps (bench_train's step and TorchPeer), target tokens/s, median of the "
    "interleaved rounds; the two torch steps of a round alternate which runs first, right "
    "after seqjax's step (from session 29; the by-slot columns split them):",
    "",
    "| preset | batch | seqjax | torch shared | torch own | torch own/shared | "
    "seqjax/torch (own) | shared first / second | own first / second |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
]


def train_md(r: dict) -> str:
    v, by_slot = r["tokens_per_s"], r.get("tokens_per_s_by_slot", {})

    def slot(k: str) -> str:
        first, second = by_slot.get(f"{k}, first"), by_slot.get(f"{k}, second")
        return f"{first:.0f} / {second:.0f}" if first and second else "-"

    return (
        f"| {r['train']} | {r['batch']} | {v['seqjax']:.0f} | {v['torch (shared)']:.0f} | "
        f"{v['torch (own process)']:.0f} | {r['torch_own_over_shared']:.2f}x | "
        f"{v['seqjax'] / v['torch (own process)']:.2f}x | {slot('torch (shared)')} | "
        f"{slot('torch (own process)')} |"
    )


def train_row(cell: str, args: argparse.Namespace) -> dict:
    """seqjax's train step, the torch peer here and the torch peer in a worker, interleaved."""
    import jax
    from bench_train import TorchPeer, bench_step, random_batch

    from seqjax.config import model_preset
    from seqjax.training.steps import init_train_state

    preset, rows = cell.split(":")[0], int(cell.split(":")[1])
    before = bvp.uptime()
    cfg = model_preset(preset)
    model, opt, step = bench_step(cfg)
    state = init_train_state(jax.jit(model.init)(jax.random.key(0)), opt)
    batch = random_batch(cfg, rows, 32, 32, np.random.default_rng(0))
    np_batch = {k: np.asarray(v) for k, v in batch.items()}
    key = jax.random.key(1)
    here = Local(TorchPeer(cfg, args.threads))
    own = Worker("bench_train", "TorchPeer", cfg, args.threads)
    peers = {"torch (shared)": here, "torch (own process)": own}
    times: dict[str, list[float]] = {"seqjax": [], **{k: [] for k in peers}}
    # Which torch step runs right after seqjax's alternates by round: a step directly after
    # seqjax's was measured slower than the next one (session 29), an order effect that a
    # fixed order would charge to one arrangement only.
    slots: dict[str, list[float]] = {f"{k}, {n}": [] for k in peers for n in ("first", "second")}
    for r in range(args.repeats + 2):  # two warm-up rounds (seqjax compiles in the first)
        t0 = time.perf_counter()
        state, m = step(state, batch, key)
        jax.block_until_ready(m)
        t1 = time.perf_counter()
        order = list(peers) if r % 2 == 0 else list(peers)[::-1]
        for k in order:
            peers[k].call("step", np_batch)
        if r >= 2:
            times["seqjax"].append(t1 - t0)
            for k in peers:
                times[k].append(peers[k].last_s)
            for n, k in zip(("first", "second"), order, strict=True):
                slots[f"{k}, {n}"].append(peers[k].last_s)
    own.close()
    tps = {k: rows * 32 / statistics.median(v) for k, v in times.items()}
    row = {"train": preset, "batch": rows, "tokens_per_s": tps, "load_before": before}
    row["torch_own_over_shared"] = tps["torch (own process)"] / tps["torch (shared)"]
    # tokens/s by slot: "first" ran right after seqjax's step, "second" after the other peer
    row["tokens_per_s_by_slot"] = {k: rows * 32 / statistics.median(v) for k, v in slots.items()}
    print(f"train {preset} b{rows}: {tps}  own/shared {row['torch_own_over_shared']:.2f}x",
          flush=True)  # fmt: skip
    return row


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cells", default="greedy:1,greedy:16,beam:1", help="method:batch pairs")
    p.add_argument("--beam-size", type=int, default=4, help="beams for the beam method")
    p.add_argument("--new-tokens", type=int, default=64, help="output tokens of every system")
    p.add_argument("--repeats", type=int, default=3, help="interleaved timed rounds per cell")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch/CT2 threads")
    p.add_argument("--workdir", help="model dirs of bench_vs_peers (default: built in a temp dir)")
    p.add_argument("--out", default="experiments/results/bench_process_isolation", help="stem")
    p.add_argument("--train", default="", help="PRESET:BATCH pairs for the training peer")
    p.add_argument(
        "--import-order",
        choices=["torch-first", "ctranslate2-first"],
        default="torch-first",
        help="which peer library this process imports first: torch-first is the old "
        "benchmark's (CT2's OpenMP then runs in torch's runtime); ctranslate2-first keeps "
        "their runtimes apart, leaving XLA as the only neighbour that differs",
    )
    args = p.parse_args(argv)
    if args.cells:  # decoding cells: fix the import order before anything imports either
        order = ["torch", "ctranslate2"]
        for name in order if args.import_order == "torch-first" else order[::-1]:
            importlib.import_module(name)
    rows = [train_row(c, args) for c in args.train.split(",") if c]
    if not args.cells:
        md = ["# The PyTorch training peer in seqjax's process vs in its own", "", *TRAIN_MD]
        md[2] += f" (load before: {rows and rows[0]['load_before']}; after: {bvp.uptime()})"
        md += [train_md(r) for r in rows]
        meta = {"repeats": args.repeats, "threads": args.threads, "train": args.train}
        write_results(args.out, meta, rows, "\n".join(md) + "\n")
        return

    hf_dir, ct2_dir = bvp.model_dirs(args.workdir)
    n, t = args.new_tokens, args.threads
    before = bvp.uptime()
    shared = {  # the old arrangement: all in this process, XLA included
        "seqjax (shared)": bvp.Runner(Local(bvp.SeqjaxRunner(hf_dir, n))),
        "hf (shared)": bvp.Runner(Local(bvp.HFRunner(hf_dir, n, t))),
        "ct2 (shared)": bvp.Runner(Local(bvp.CT2Runner(ct2_dir, n, t))),
    }
    own = {
        "hf (own process)": bvp.in_worker("HFRunner", hf_dir, n, t),
        "ct2 (own process)": bvp.in_worker("CT2Runner", ct2_dir, n, t),
    }
    systems = {**shared, **own}
    rng = np.random.default_rng(0)
    for cell in args.cells.split(","):
        method, batch = cell.split(":")[0], int(cell.split(":")[1])
        src = bvp.sources(rng, batch, 32)
        for s in systems.values():
            s(src, method, args.beam_size)  # warm-up (and seqjax's compile)
        times: dict[str, list[float]] = {k: [] for k in systems}
        for _ in range(args.repeats):
            for k, s in systems.items():
                s(src, method, args.beam_size)
                times[k].append(s.last_s)
        tps = {k: batch * n / statistics.median(v) for k, v in times.items()}
        row = {
            "method": method,
            "batch": batch,
            "tokens_per_s": tps,
            "hf_own_over_shared": tps["hf (own process)"] / tps["hf (shared)"],
            "ct2_own_over_shared": tps["ct2 (own process)"] / tps["ct2 (shared)"],
        }
        rows.append(row)
        print(
            f"{method} b{batch}: "
            + "  ".join(f"{k} {v:.0f}" for k, v in tps.items())
            + f"  own/shared: HF {row['hf_own_over_shared']:.2f}x"
            f"  CT2 {row['ct2_own_over_shared']:.2f}x",
            flush=True,
        )
    for s in own.values():
        s.close()
    meta = {"repeats": args.repeats, "threads": t, "new_tokens": n, "versions": bvp.versions()}
    meta.update(uptime_before=before, uptime_after=bvp.uptime(), import_order=args.import_order)
    lines = [
        "# The peers in seqjax's process vs in their own",
        "",
        f"tokens/s, median of {args.repeats} interleaved rounds; random transformer-base "
        f"Marian, {n} output tokens; threads {t}. Load before: `{before}`; after: "
        f"`{meta['uptime_after']}`. Shared: one process in which seqjax's XLA decoder runs "
        "every round too (bench_vs_peers before session 28); own process: a spawned worker. "
        f"Import order in the shared process: {args.import_order}.",
        "",
        "| cell | seqjax | HF shared | HF own | CT2 shared | CT2 own | HF own/shared | "
        "CT2 own/shared |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in (r for r in rows if "method" in r):
        v = r["tokens_per_s"]
        lines.append(
            f"| {r['method']} b{r['batch']} | {v['seqjax (shared)']:.0f} | "
            f"{v['hf (shared)']:.0f} | {v['hf (own process)']:.0f} | {v['ct2 (shared)']:.0f} | "
            f"{v['ct2 (own process)']:.0f} | {r['hf_own_over_shared']:.2f}x | "
            f"{r['ct2_own_over_shared']:.2f}x |"
        )
    if any("train" in r for r in rows):
        lines += ["", *TRAIN_MD, *(train_md(r) for r in rows if "train" in r)]
    write_results(args.out, meta, rows, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
