"""Do the peers lose speed when they share a process with XLA? The same peer, two places.

Until session 28 ``bench_vs_peers.py`` ran seqjax, HF PyTorch and CTranslate2 in one
process. This script times each peer twice in the same interleaved rounds: inside this
process, where seqjax's XLA decoder also runs every round (the old arrangement), and in a
worker process of its own (``bench_vs_peers.WorkerRunner``, the arrangement since session
28). A ratio "own process / shared" well above 1 means the old benchmark handicapped that
peer. The model and sources are ``bench_vs_peers``'s (random transformer-base Marian,
32-token sources, exactly ``--new-tokens`` output tokens); median of ``--repeats`` rounds.

    python experiments/bench_process_isolation.py --out experiments/results/bench_process_isolation_zen3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_vs_peers as bvp  # noqa: E402
from results_io import write_results  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cells", default="greedy:1,greedy:16,beam:1", help="method:batch pairs")
    p.add_argument("--beam-size", type=int, default=4, help="beams for the beam method")
    p.add_argument("--new-tokens", type=int, default=64, help="output tokens of every system")
    p.add_argument("--repeats", type=int, default=3, help="interleaved timed rounds per cell")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch/CT2 threads")
    p.add_argument("--workdir", help="model dirs of bench_vs_peers (default: built in a temp dir)")
    p.add_argument("--out", default="experiments/results/bench_process_isolation", help="stem")
    args = p.parse_args(argv)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_vs_peers_"))
    hf_dir, ct2_dir = work / "marian_hf", work / "marian_ct2"
    if not (hf_dir / "model.safetensors").is_file():
        bvp.build_marian(hf_dir, 0)
    if not (ct2_dir / "model.bin").is_file():
        bvp.convert_ct2(hf_dir, ct2_dir)
    n, t = args.new_tokens, args.threads
    before = bvp.uptime()
    shared = {  # the old arrangement: all in this process, XLA included
        "seqjax (shared)": bvp.InProcess(bvp.SeqjaxRunner(hf_dir, n)),
        "hf (shared)": bvp.InProcess(bvp.HFRunner(hf_dir, n, t)),
        "ct2 (shared)": bvp.InProcess(bvp.CT2Runner(ct2_dir, n, t)),
    }
    own = {
        "hf (own process)": bvp.WorkerRunner("HFRunner", hf_dir, n, t),
        "ct2 (own process)": bvp.WorkerRunner("CT2Runner", ct2_dir, n, t),
    }
    systems = {**shared, **own}
    rng = np.random.default_rng(0)
    rows = []
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
    meta.update(uptime_before=before, uptime_after=bvp.uptime())
    lines = [
        "# The peers in seqjax's process vs in their own",
        "",
        f"tokens/s, median of {args.repeats} interleaved rounds; random transformer-base "
        f"Marian, {n} output tokens; threads {t}. Load before: `{before}`; after: "
        f"`{meta['uptime_after']}`. Shared: one process in which seqjax's XLA decoder runs "
        "every round too (bench_vs_peers before session 28); own process: a spawned worker.",
        "",
        "| cell | seqjax | HF shared | HF own | CT2 shared | CT2 own | HF own/shared | "
        "CT2 own/shared |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        v = r["tokens_per_s"]
        lines.append(
            f"| {r['method']} b{r['batch']} | {v['seqjax (shared)']:.0f} | "
            f"{v['hf (shared)']:.0f} | {v['hf (own process)']:.0f} | {v['ct2 (shared)']:.0f} | "
            f"{v['ct2 (own process)']:.0f} | {r['hf_own_over_shared']:.2f}x | "
            f"{r['ct2_own_over_shared']:.2f}x |"
        )
    write_results(args.out, meta, rows, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
