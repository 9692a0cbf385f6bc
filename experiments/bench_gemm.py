"""Decode-shaped float32 GEMMs in XLA and in torch, with hot and with cold weights.

A decode step multiplies a few rows (``M`` = batch x beams) by every weight matrix of the
model once, so the weights arrive from main memory (104 MB per step for transformer-base),
not from cache. A single GEMM repeated on the same weights measures the hot case only.
This script times both, on the CPU it runs on, interleaved per shape:

- ``hot``: one ``M x 512 x 2048`` product, called 48 times in a row on the same weights
  (dispatched asynchronously, so the per-call overhead overlaps);
- ``cold``: a chain of ``--layers`` feed-forward blocks (``tanh(x @ W1) @ W2``, 512 ->
  2048 -> 512, distinct weights per layer: 8.4 MB each, 201 MB for 24), as in a step;
- ``cold NT``: the same chain with each weight stored transposed (``[out, in]``, the
  product contracting both operands' minor axes), the layout torch's ``nn.Linear`` keeps;
- ``cold int8``: the chain's products as int8 x int8 -> int32 dots on int8 weights (the
  kernel of ``--quantize w8a8``), XLA only; GOP/s;
- ``cold bf16``: the chain with bfloat16 weights (half the bytes): in XLA through
  ``--quantize bf16``'s own matmul (activations rounded to bfloat16, bf16 x bf16 -> float32
  dots, one row padded to four), in torch as bfloat16 tensors (its oneDNN bf16 GEMMs);
- ``Eigen``: the cold chains compiled with XLA's own matmul kernels instead of YNNPACK's
  (what ``seqjax.decoding.compile_options`` picks for decoders of <= 32 rows per step),
  in both layouts;
- ``stream``: a jitted sum over a float32 array of ``--stream-mb`` MB (8x a 32 MB L3), the
  rate at which XLA reads memory on this machine with every core, taken in the same
  rounds. It gives each cold chain a bound: its weights must stream in at every call, so
  ``M`` rows can run at most ``bandwidth x 2M / 4`` float32 FLOP/s (``/ 2`` for bfloat16,
  ``x 2M`` int8 OP/s),
  and the table gives each cold case's share of that bound. A chain near 100% is limited
  by memory, not by its kernel, and no kernel can make it faster in that precision.

For each, XLA (jitted JAX, its YNNPACK kernels by default) and torch (its MKL/oneDNN
kernels, ``set_num_threads`` = the CPU count) give GFLOP/s, best of ``--rounds`` rounds in
which all the cases (the stream sum too) take turns.

    python experiments/bench_gemm.py --out experiments/results/bench_gemm_epyc
    python experiments/bench_gemm.py --rows 1,4,16,32,64,256 --out experiments/results/bench_gemm_epyc_cpu_dots

Test: ``tests/test_bench_gemm.py`` (the bound and the markdown, on small sizes).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import require_positive, write_results  # noqa: E402

from seqjax.models.quantize import quantize_array  # noqa: E402

D, F = 512, 2048
HOT_CALLS = 48  # products per timed hot call: XLA's dispatch overlaps, as in a loop
EIGEN = {"xla_cpu_experimental_ynn_fusion_type": ""}


def best_interleaved(cases: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Best wall time of each case; the cases take turns within every round."""
    for fn in cases.values():
        fn()  # warm-up (and compile)
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(rounds):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def bound_gflops(rows: int, bandwidth_gbps: float, weight_bytes: int = 4) -> float:
    """The most GFLOP/s (GOP/s for int8) that ``rows`` rows times weights streamed from
    memory at ``bandwidth_gbps`` GB/s can reach: every weight element (``weight_bytes``
    bytes) read once per call takes part in ``2 x rows`` operations.

    >>> bound_gflops(1, 30.0)  # one row, float32: 15 GFLOP/s at 30 GB/s
    15.0
    >>> bound_gflops(16, 30.0, weight_bytes=1)  # int8 weights: 4x the operations per byte
    960.0
    """
    return bandwidth_gbps * 2 * rows / weight_bytes


_sum = jax.jit(jnp.sum)


def _nt(x: jax.Array, w_NxK: jax.Array) -> jax.Array:
    return lax.dot_general(x, w_NxK, (((x.ndim - 1,), (1,)), ((), ())))


def _chain_fn(x, w1s, w2s):
    for a, b in zip(w1s, w2s, strict=True):
        x = jnp.tanh(x @ a) @ b
    return x


_chain = jax.jit(_chain_fn)
# XLA's own (Eigen) matmul kernels instead of YNNPACK's: what seqjax compiles decoders
# of <= 32 rows per step with (seqjax.decoding.compile_options)
_chain_eigen = jax.jit(_chain_fn, compiler_options=EIGEN)


def _int8_products_fn(xq, w1s, w2s):
    """The cold chain's 2 x layers products as int8 x int8 -> int32 dots (w8a8's kernel), each
    on the same int8 rows (no requantisation between layers: only the dots are timed)."""
    hq = jnp.zeros((xq.shape[0], F), jnp.int8)
    total = jnp.zeros((), jnp.int32)
    for a, b in zip(w1s, w2s, strict=True):
        h = lax.dot_general(xq, a, (((1,), (0,)), ((), ())), preferred_element_type=jnp.int32)
        y = lax.dot_general(hq, b, (((1,), (0,)), ((), ())), preferred_element_type=jnp.int32)
        total += h[0, 0] + y[0, 0]
    return total


_int8_products = jax.jit(_int8_products_fn)
_int8_products_eigen = jax.jit(_int8_products_fn, compiler_options=EIGEN)


def _chain_nt_fn(x, w1s, w2s):
    for a, b in zip(w1s, w2s, strict=True):
        x = _nt(jnp.tanh(_nt(x, a)), b)
    return x


_chain_nt = jax.jit(_chain_nt_fn)
_chain_nt_eigen = jax.jit(_chain_nt_fn, compiler_options=EIGEN)


def run(rows: list[int], layers: int, rounds: int, stream_mb: int = 256) -> list[dict]:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    rng = np.random.default_rng(0)
    w1 = [rng.standard_normal((D, F), dtype=np.float32) * 0.02 for _ in range(layers)]
    w2 = [rng.standard_normal((F, D), dtype=np.float32) * 0.02 for _ in range(layers)]
    j1, j2 = [jnp.asarray(w) for w in w1], [jnp.asarray(w) for w in w2]
    j1t, j2t = [jnp.asarray(w.T.copy()) for w in w1], [jnp.asarray(w.T.copy()) for w in w2]
    t1, t2 = [torch.from_numpy(w.copy()) for w in w1], [torch.from_numpy(w.copy()) for w in w2]
    t1t, t2t = [w.T.contiguous() for w in t1], [w.T.contiguous() for w in t2]
    q1 = [jnp.asarray(rng.integers(-127, 128, (D, F), dtype=np.int8)) for _ in range(layers)]
    q2 = [jnp.asarray(rng.integers(-127, 128, (F, D), dtype=np.int8)) for _ in range(layers)]
    # bfloat16 weights as --quantize bf16 stores them (its matmul runs inside _chain)
    b1 = [quantize_array(w, (0,), act="bf16") for w in w1]
    b2 = [quantize_array(w, (0,), act="bf16") for w in w2]
    tb1, tb2 = [w.bfloat16() for w in t1], [w.bfloat16() for w in t2]
    mm = jax.jit(jnp.matmul)

    def torch_chain(x, a_list, b_list, nt: bool):
        for a, b in zip(a_list, b_list, strict=True):
            h = torch.tanh(x @ a.T if nt else x @ a)
            x = h @ b.T if nt else h @ b
        return x

    big = jnp.ones(stream_mb * (1 << 20) // 4, jnp.float32)

    def cases(jx: jax.Array, tx: torch.Tensor, xq: jax.Array) -> dict[str, Callable[[], object]]:
        return {
            "stream": lambda: _sum(big).block_until_ready(),
            "hot_xla": lambda: [mm(jx, j1[0]) for _ in range(HOT_CALLS)][-1].block_until_ready(),
            "hot_torch": lambda: [tx @ t1[0] for _ in range(HOT_CALLS)],
            "cold_xla": lambda: _chain(jx, j1, j2).block_until_ready(),
            "cold_torch": lambda: torch_chain(tx, t1, t2, False),
            "cold_nt_xla": lambda: _chain_nt(jx, j1t, j2t).block_until_ready(),
            "cold_nt_torch": lambda: torch_chain(tx, t1t, t2t, True),
            "cold_int8_xla": lambda: _int8_products(xq, q1, q2).block_until_ready(),
            "cold_bf16_xla": lambda: _chain(jx, b1, b2).block_until_ready(),
            "cold_bf16_torch": lambda: torch_chain(tx.bfloat16(), tb1, tb2, False),
            "cold_xla_eigen": lambda: _chain_eigen(jx, j1, j2).block_until_ready(),
            "cold_nt_xla_eigen": lambda: _chain_nt_eigen(jx, j1t, j2t).block_until_ready(),
            "cold_int8_xla_eigen": lambda: _int8_products_eigen(xq, q1, q2).block_until_ready(),
        }

    out = []
    for m in rows:
        x = rng.standard_normal((m, D), dtype=np.float32)
        jx, tx = jnp.asarray(x), torch.from_numpy(x)
        hot_flops = 2 * m * D * F * HOT_CALLS
        cold_flops = 2 * (2 * m * D * F) * layers
        xq = jnp.asarray(rng.integers(-127, 128, (m, D), dtype=np.int8))
        with torch.no_grad():
            times = best_interleaved(cases(jx, tx, xq), rounds)
        a = np.asarray(_chain(jx, j1, j2))
        b = np.asarray(_chain_nt(jx, j1t, j2t))
        c = np.asarray(_chain_eigen(jx, j1, j2))
        row = {
            "rows": m,
            "max_diff_nt": float(np.abs(a - b).max()),
            "max_diff_eigen": float(np.abs(a - c).max()),
        }
        row["stream_gbps"] = big.nbytes / times.pop("stream") / 1e9
        for k, t in times.items():
            row[k + "_gflops"] = (hot_flops if k.startswith("hot") else cold_flops) / t / 1e9
            if k.startswith("cold"):  # weights streamed from memory: share of the bound
                nbytes = 1 if "int8" in k else 2 if "bf16" in k else 4
                bound = bound_gflops(m, row["stream_gbps"], nbytes)
                row[k + "_of_bound"] = row[k + "_gflops"] / bound
        out.append(row)
        print(
            f"M={m}: stream {row['stream_gbps']:.1f} GB/s  "
            + "  ".join(f"{k} {row[k + '_gflops']:.0f}" for k in times)
            + " GFLOP/s",
            flush=True,
        )
    return out


def markdown(rows: list[dict], layers: int, rounds: int, stream_mb: int = 256) -> str:
    lines = [
        "# Decode-shaped float32 GEMMs: hot vs cold weights, XLA vs torch",
        "",
        f"GFLOP/s, best of {rounds}. hot: one M x {D} x {F} product, {HOT_CALLS} calls on the "
        f"same weights; cold: {layers} feed-forward blocks ({D} -> {F} -> {D}, "
        f"{layers * 2 * D * F * 4 / 1e6:.0f} MB of distinct weights) in one call; NT: "
        "weights stored [out, in]; int8: the same products as int8 x int8 -> int32 dots "
        "on int8 weights (w8a8's kernel; a quarter of the bytes); bf16: bfloat16 weights "
        "(half the bytes; XLA: `--quantize bf16`'s matmul, torch: bfloat16 tensors); "
        "Eigen: compiled with "
        'XLA\'s own matmul kernels (`xla_cpu_experimental_ynn_fusion_type=""`) instead of '
        "YNNPACK's.",
        "",
        "| M | hot XLA | hot torch | cold XLA | cold XLA Eigen | cold torch | cold NT XLA |"
        " cold NT XLA Eigen | cold NT torch | cold int8 XLA (GOP/s) | cold int8 XLA Eigen |"
        " cold bf16 XLA | cold bf16 torch | NT / Eigen max diff |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['rows']} | {r['hot_xla_gflops']:.0f} | {r['hot_torch_gflops']:.0f} | "
            f"{r['cold_xla_gflops']:.0f} | {r['cold_xla_eigen_gflops']:.0f} | "
            f"{r['cold_torch_gflops']:.0f} | "
            f"{r['cold_nt_xla_gflops']:.0f} | {r['cold_nt_xla_eigen_gflops']:.0f} | "
            f"{r['cold_nt_torch_gflops']:.0f} | "
            f"{r['cold_int8_xla_gflops']:.0f} | {r['cold_int8_xla_eigen_gflops']:.0f} | "
            f"{r['cold_bf16_xla_gflops']:.0f} | {r['cold_bf16_torch_gflops']:.0f} | "
            f"{r['max_diff_nt']:.1e} / {r['max_diff_eigen']:.1e} |"
        )
    lines += [
        "",
        "Share of the memory bound: `stream` is XLA's read rate over "
        f"{stream_mb} MB (a jitted sum, every core, same rounds); the bound is what the cold "
        "chain would reach if its weights streamed in at that rate (M rows: stream x 2M / 4 "
        "float32 FLOP/s, x 2M / 2 bfloat16, x 2M int8 OP/s). Near 100% a chain is limited "
        "by memory, not by its kernel.",
        "",
        "| M | stream GB/s | float32 bound GFLOP/s | cold XLA | cold XLA Eigen | cold torch |"
        " cold NT XLA | cold int8 XLA | cold bf16 XLA | cold bf16 torch |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        shares = " | ".join(
            f"{100 * r[k + '_of_bound']:.0f}%"
            for k in (
                "cold_xla",
                "cold_xla_eigen",
                "cold_torch",
                "cold_nt_xla",
                "cold_int8_xla",
                "cold_bf16_xla",
                "cold_bf16_torch",
            )
        )
        lines.append(
            f"| {r['rows']} | {r['stream_gbps']:.1f} | "
            f"{bound_gflops(r['rows'], r['stream_gbps']):.0f} | {shares} |"
        )
    return "\n".join(lines) + "\n"


def parse_rows(p: argparse.ArgumentParser, text: str) -> list[int]:
    """``--rows`` as a list of ints >= 1, or a one-line usage error naming the bad value."""
    try:
        rows = [int(r) for r in text.split(",")]
    except ValueError:
        p.error(f"--rows {text!r}: give comma-separated integers, e.g. 1,4,16")
    if min(rows) < 1:
        p.error(f"--rows {text!r}: every value must be at least 1")
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", default="1,4,16,64,256", help="M: rows per product (batch x beams)")
    p.add_argument("--layers", type=int, default=24, help="feed-forward blocks in the cold chain")
    p.add_argument("--rounds", type=int, default=7, help="timed calls per case (best is kept)")
    p.add_argument(
        "--stream-mb",
        type=int,
        default=256,
        help="MB of the array whose sum measures the memory read rate (well above the L3)",
    )
    p.add_argument("--out", default="experiments/results/bench_gemm", help="output path stem")
    args = p.parse_args(argv)
    rows = parse_rows(p, args.rows)
    require_positive(p, args, "layers", "rounds", "stream_mb")
    rows = run(rows, args.layers, args.rounds, args.stream_mb)
    meta = {
        "layers": args.layers,
        "rounds": args.rounds,
        "d": D,
        "f": F,
        "stream_mb": args.stream_mb,
    }
    write_results(args.out, meta, rows, markdown(rows, args.layers, args.rounds, args.stream_mb))


if __name__ == "__main__":
    main()
