"""Where XLA's own matmul kernels beat YNNPACK's: decode-shaped products by weight size.

``seqjax.decoding.compile_options`` compiles decoders of few rows per step with XLA's own
(Eigen) kernels when the model's weights are much larger than the last-level cache (a
fixed 64 MB, twice the L3 of the EPYC it was measured on). This script measures that
rule's two axes on the CPU it runs on: a chain of ``L`` feed-forward
blocks (``tanh(x @ W1) @ W2``, 512 -> 2048 -> 512, 8.4 MB of float32 weights per block)
called again and again on the same weights, as a decoding loop calls its step, so weights
that fit in the cache stay there between calls and larger ones stream from memory. Each
(layers, rows) cell compiles the chain twice, with XLA's defaults (YNNPACK) and with
``xla_cpu_experimental_ynn_fusion_type=""`` (Eigen), and times them in alternation
(``bench_gemm.best_interleaved``: best of ``--rounds`` calls each, the two taking turns;
both use the same weights, so taking turns keeps cache-sized weights in cache).

    python experiments/bench_cpu_dots.py --out experiments/results/bench_cpu_dots_epyc
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gemm import best_interleaved  # noqa: E402
from results_io import write_results  # noqa: E402

D, F = 512, 2048
EIGEN = {"xla_cpu_experimental_ynn_fusion_type": ""}


def _chain(x, w1s, w2s):
    for a, b in zip(w1s, w2s, strict=True):
        x = jnp.tanh(x @ a) @ b
    return x


def run(layer_counts: list[int], rows: list[int], rounds: int) -> list[dict]:
    default, eigen = jax.jit(_chain), jax.jit(_chain, compiler_options=EIGEN)
    rng = np.random.default_rng(0)
    out = []
    for layers in layer_counts:
        w1 = [jnp.asarray(rng.standard_normal((D, F), np.float32) * 0.02) for _ in range(layers)]
        w2 = [jnp.asarray(rng.standard_normal((F, D), np.float32) * 0.02) for _ in range(layers)]
        for m in rows:
            x = jnp.asarray(rng.standard_normal((m, D), np.float32))
            best = best_interleaved(
                {
                    "ynnpack": lambda x=x, a=w1, b=w2: default(x, a, b).block_until_ready(),
                    "eigen": lambda x=x, a=w1, b=w2: eigen(x, a, b).block_until_ready(),
                },
                rounds,
            )
            flops = 2 * (2 * m * D * F) * layers
            row = {
                "layers": layers,
                "weights_mb": layers * 2 * D * F * 4 / 1e6,
                "rows": m,
                **{f"{k}_gflops": flops / t / 1e9 for k, t in best.items()},
            }
            row["eigen_over_ynnpack"] = row["eigen_gflops"] / row["ynnpack_gflops"]
            out.append(row)
            print(
                f"{layers} blocks ({row['weights_mb']:.0f} MB), M={m}: ynnpack "
                f"{row['ynnpack_gflops']:.0f}, eigen {row['eigen_gflops']:.0f} GFLOP/s "
                f"({row['eigen_over_ynnpack']:.2f}x)",
                flush=True,
            )
    return out


def markdown(rows: list[dict], rounds: int) -> str:
    lines = [
        "# XLA's own (Eigen) vs YNNPACK matmul kernels by weight size and rows",
        "",
        f"GFLOP/s of a chain of feed-forward blocks (512 -> 2048 -> 512) called repeatedly on "
        f"the same weights, best of {rounds} calls per kernel, the two taking turns.",
        "",
        "| blocks | weights MB | rows | YNNPACK | Eigen | Eigen / YNNPACK |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['layers']} | {r['weights_mb']:.0f} | {r['rows']} | {r['ynnpack_gflops']:.0f} | "
            f"{r['eigen_gflops']:.0f} | {r['eigen_over_ynnpack']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--layers", default="1,2,4,8,24", help="feed-forward blocks per chain (list)")
    p.add_argument("--rows", default="4,16,64", help="M: rows per product (list)")
    p.add_argument("--rounds", type=int, default=15, help="timed calls per kernel")
    p.add_argument("--out", default="experiments/results/bench_cpu_dots", help="output stem")
    args = p.parse_args(argv)
    layers = [int(v) for v in args.layers.split(",")]
    rows = run(layers, [int(v) for v in args.rows.split(",")], args.rounds)
    meta = {"rounds": args.rounds, "d": D, "f": F}
    write_results(args.out, meta, rows, markdown(rows, args.rounds))


if __name__ == "__main__":
    main()
