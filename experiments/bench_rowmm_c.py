"""Could a hand-written kernel beat XLA's on few rows of weights streamed from memory?

Decoding at batch 1 multiplies 1 (greedy) or 4 (beam 4) rows by every weight matrix once
per step, and ``bench_gemm.py`` finds XLA's 4-row products far from the memory bound on
weights that do not fit in cache. This script times, interleaved round by round, the same
cold chain as ``bench_gemm.py`` (``--layers`` feed-forward blocks 512 -> 2048 -> 512 with
distinct weights, 8.4 MB each) and a hot one (the first block's weights every layer, in
cache) in:

- XLA (jitted JAX, its default kernels);
- ``acc``: a C kernel with AVX-512 intrinsics (``experiments/rowmm_probe.c``, built here
  with ``cc -O3 -march=native -fopenmp``): one thread per core (OpenMP), each streams one
  contiguous band of the weight rows in order, four rows per pass, partial sums kept in L1;
- ``panel`` (4 rows only): the textbook register-blocked form, 4 rows x 64 columns of sums
  in 16 registers down the rows, software prefetch 16 rows ahead;
- ``stream``: XLA's read rate over ``--stream-mb`` MB (a jitted sum), as in ``bench_gemm``.

Rates are weight bytes per second (GB/s) and their share of the stream rate; all cases
compute the same chain (max difference to XLA's result reported). Needs a C compiler and
an x86 CPU with AVX-512 (``--cc`` picks the compiler)::

    python experiments/bench_rowmm_c.py --out experiments/results/bench_rowmm_c_zen4

Not a seqjax kernel: a probe of how much speed XLA leaves at these shapes.
"""

from __future__ import annotations

import argparse
import ctypes
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gemm import D, F, _chain, best_interleaved, parse_rows  # noqa: E402
from results_io import require_positive, write_results  # noqa: E402

from seqjax.decoding.compile_options import host_cpu_flags  # noqa: E402

SOURCE = Path(__file__).resolve().parent / "rowmm_probe.c"
KERNELS = {"acc": 0, "panel": 1}


def build(cc: str, out_dir: Path) -> ctypes.CDLL:
    """Compile ``rowmm_probe.c`` into a shared library in ``out_dir`` and load it."""
    if shutil.which(cc) is None:
        raise SystemExit(f"bench_rowmm_c: no C compiler {cc!r} on PATH (install gcc or pass --cc)")
    lib = out_dir / "librowmm_probe.so"
    cmd = [
        cc,
        "-O3",
        "-march=native",
        "-fopenmp",
        "-shared",
        "-fPIC",
        str(SOURCE),
        "-o",
        str(lib),
        "-lm",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"bench_rowmm_c: {' '.join(cmd)} failed:\n{done.stderr.strip()}")
    return ctypes.CDLL(str(lib))


class CChain:
    """``x -> chain(x)`` through one C kernel over the weight lists (it keeps them alive)."""

    def __init__(
        self, lib: ctypes.CDLL, w1: list[np.ndarray], w2: list[np.ndarray], kernel: str
    ) -> None:
        ptr = ctypes.POINTER(ctypes.c_float)
        self.lib, self.kernel, self.weights, self.ptr = lib, kernel, (w1, w2), ptr
        self.a1 = (ptr * len(w1))(*[w.ctypes.data_as(ptr) for w in w1])
        self.a2 = (ptr * len(w2))(*[w.ctypes.data_as(ptr) for w in w2])

    def __call__(self, x0: np.ndarray) -> np.ndarray:
        x = np.array(x0, np.float32, order="C")
        m, n = x.shape[0], len(self.weights[0])
        if self.lib.chain(
            x.ctypes.data_as(self.ptr), self.a1, self.a2, n, m, D, F, KERNELS[self.kernel]
        ):
            raise ValueError(f"rowmm_probe.c refused the {self.kernel} kernel for {m} rows")
        return x


def run_cases(
    lib: ctypes.CDLL, rows: list[int], layers: int, rounds: int, stream_mb: int
) -> list[dict]:
    rng = np.random.default_rng(0)
    w1 = [
        np.ascontiguousarray(rng.standard_normal((D, F), dtype=np.float32) * 0.02)
        for _ in range(layers)
    ]
    w2 = [
        np.ascontiguousarray(rng.standard_normal((F, D), dtype=np.float32) * 0.02)
        for _ in range(layers)
    ]
    j1, j2 = [jnp.asarray(w) for w in w1], [jnp.asarray(w) for w in w2]
    big = jnp.ones(stream_mb * (1 << 20) // 4, jnp.float32)
    total = jax.jit(jnp.sum)
    weight_gb = layers * 2 * D * F * 4 / 1e9
    out = []
    for m in rows:
        x = rng.standard_normal((m, D), dtype=np.float32)
        jx = jnp.asarray(x)
        cases = {
            "stream": lambda: total(big).block_until_ready(),
            "xla cold": lambda jx=jx: _chain(jx, j1, j2).block_until_ready(),
            "xla hot": lambda jx=jx: _chain(
                jx, [j1[0]] * layers, [j2[0]] * layers
            ).block_until_ready(),
        }
        diffs = {}
        ref = np.asarray(_chain(jx, j1, j2))
        for kernel in ("acc", "panel") if m == 4 else ("acc",):
            cold = CChain(lib, w1, w2, kernel)
            hot = CChain(lib, [w1[0]] * layers, [w2[0]] * layers, kernel)
            diffs[kernel] = float(np.abs(cold(x) - ref).max())
            cases[f"c {kernel} cold"] = lambda f=cold, x=x: f(x)
            cases[f"c {kernel} hot"] = lambda f=hot, x=x: f(x)
        times = best_interleaved(cases, rounds)
        stream = big.nbytes / times.pop("stream") / 1e9
        row = {"rows": m, "stream_gbps": stream, "max_diff": diffs}
        for name, t in times.items():
            row[name] = {"gbps": weight_gb / t, "of_stream": weight_gb / t / stream}
        out.append(row)
        print(
            f"M={m}: stream {stream:.1f} GB/s  "
            + "  ".join(f"{k} {row[k]['gbps']:.1f}" for k in times),
            flush=True,
        )
    return out


def markdown(rows: list[dict], layers: int, rounds: int) -> str:
    names = ["xla cold", "c acc cold", "c panel cold", "xla hot", "c acc hot", "c panel hot"]
    lines = [
        "# Few rows x weights from memory: XLA against hand-written AVX-512 kernels",
        "",
        f"Weight GB/s (share of the stream rate), best of {rounds} interleaved rounds; cold: "
        f"{layers} feed-forward blocks ({D} -> {F} -> {D}) with distinct weights "
        f"({layers * 2 * D * F * 4 / 1e6:.0f} MB); hot: the first block's weights every "
        "layer (in cache). C kernels: `experiments/rowmm_probe.c` (acc: rows streamed in "
        "order, sums in L1; panel: 4 x 64 sums in registers).",
        "",
        "| M | stream GB/s | " + " | ".join(names) + " | max diff to XLA |",
        "|---:|---:|" + "---:|" * len(names) + "---|",
    ]
    for r in rows:
        cells = []
        for n in names:
            v = r.get(n)
            cells.append("-" if v is None else f"{v['gbps']:.1f} ({100 * v['of_stream']:.0f}%)")
        diff = ", ".join(f"{k} {v:.1e}" for k, v in r["max_diff"].items())
        lines.append(
            f"| {r['rows']} | {r['stream_gbps']:.1f} | " + " | ".join(cells) + f" | {diff} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", default="1,4", help="M: rows per product, comma-separated (1-8)")
    p.add_argument("--layers", type=int, default=24, help="feed-forward blocks in the chains")
    p.add_argument("--rounds", type=int, default=25, help="timed calls per case (best is kept)")
    p.add_argument("--repeats", type=int, default=2, help="whole runs, one table row per run and M")
    p.add_argument("--stream-mb", type=int, default=256, help="MB summed to measure the read rate")
    p.add_argument("--cc", default="cc", help="C compiler (needs -march=native and -fopenmp)")
    p.add_argument("--out", default="experiments/results/bench_rowmm_c", help="output path stem")
    args = p.parse_args(argv)
    rows = parse_rows(p, args.rows)
    if max(rows) > 8:
        p.error(f"--rows {args.rows!r}: the C kernel takes 1 to 8 rows")
    require_positive(p, args, "layers", "rounds", "repeats", "stream_mb")
    if "avx512f" not in host_cpu_flags():
        p.error("this CPU has no AVX-512 (avx512f): the C kernels use AVX-512 intrinsics")
    with tempfile.TemporaryDirectory() as tmp:
        lib = build(args.cc, Path(tmp))
        results = [
            r
            for _ in range(args.repeats)
            for r in run_cases(lib, rows, args.layers, args.rounds, args.stream_mb)
        ]
    meta = {
        "layers": args.layers,
        "rounds": args.rounds,
        "repeats": args.repeats,
        "d": D,
        "f": F,
        "stream_mb": args.stream_mb,
        "cc": args.cc,
    }
    write_results(args.out, meta, results, markdown(results, args.layers, args.rounds))


if __name__ == "__main__":
    main()
