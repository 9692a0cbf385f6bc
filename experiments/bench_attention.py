"""The decode step's attention alone: the library's form against the alternatives, timed.

Issue 19's profile of the w8a8 beam-4 batch-64 step (``profile_decode.py --cases beam:64
--quantize w8a8``) puts ~40% of the step in attention: the self-attention over the KV cache
(one query per row and head: XLA runs it as batched GEMVs in its own dot loop) and the
cross-attention of a source's beams over its shared memory (``_grouped_queries``). This
script times each against the forms one might replace it with, interleaved in one process,
on random float32 inputs of the transformer-base decode shapes (8 heads of 64):

- ``self``, ``N`` rows over ``T`` cache positions: ``_one_query`` as the step calls it
  (float32 cache); the same with a bfloat16 cache (upcast inside, as ``--dtype``
  mixes do); a broadcast-multiply-reduce form;
- ``cross``, ``B`` sources x ``R`` beams over ``S`` memory positions: ``_grouped_queries``;
  a broadcast-multiply-reduce form; the memory repeated per beam (the layout before the
  shared memory) through ``_one_query``.

Every form must agree with the library's to float32 rounding (the table's ``max diff``).

    python experiments/bench_attention.py --out experiments/results/bench_attention
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import write_results  # noqa: E402

from seqjax.models.transformer_step import _grouped_queries, _one_query  # noqa: E402

HEADS, HEAD_DIM = 8, 64


def _self_reduce(q_NxHxD, k_NxHxTxD, v_NxHxTxD, mask_NxT):
    scale = 1.0 / math.sqrt(q_NxHxD.shape[-1])
    logits = (q_NxHxD[:, :, None, :] * k_NxHxTxD).sum(-1) * scale
    weights = jax.nn.softmax(jnp.where(mask_NxT[:, None, :], logits, -1e9), axis=-1)
    out = (weights[..., None] * v_NxHxTxD).sum(-2)
    return out.reshape(out.shape[0], -1), weights


def _cross_reduce(q_NxHxD, k_BxHxSxD, v_BxHxSxD, mask_BxS):
    n, h, d = q_NxHxD.shape
    b = k_BxHxSxD.shape[0]
    q = q_NxHxD.reshape(b, n // b, h, d)
    logits = (q[:, :, :, None, :] * k_BxHxSxD[:, None]).sum(-1) / math.sqrt(d)
    weights = jax.nn.softmax(jnp.where(mask_BxS[:, None, None, :], logits, -1e9), axis=-1)
    out = (weights[..., None] * v_BxHxSxD[:, None]).sum(-2)
    return out.reshape(n, h * d), weights.reshape(n, h, -1)


def _cross_repeated(q_NxHxD, k_BxHxSxD, v_BxHxSxD, mask_BxS):
    r = q_NxHxD.shape[0] // k_BxHxSxD.shape[0]
    k, v, m = (jnp.repeat(x, r, axis=0) for x in (k_BxHxSxD, v_BxHxSxD, mask_BxS))
    return _one_query(q_NxHxD, k, v, m)


def _upcast_self(q, k, v, m):
    return _one_query(q, k.astype(q.dtype), v.astype(q.dtype), m)


def _time(
    fns: dict[str, tuple[Callable, tuple]], rounds: int, calls: int
) -> tuple[dict[str, float], dict[str, jax.Array]]:
    """Median microseconds per call of each jitted form (the forms interleaved per round),
    and each form's first output (its warm-up call)."""
    jitted = {name: (jax.jit(f), args) for name, (f, args) in fns.items()}
    outputs = {name: jax.block_until_ready(f(*args))[0] for name, (f, args) in jitted.items()}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, (f, args) in jitted.items():
            start = time.perf_counter()
            for _ in range(calls):
                out = f(*args)
            jax.block_until_ready(out)
            times[name].append((time.perf_counter() - start) / calls * 1e6)
    return {name: float(np.median(t)) for name, t in times.items()}, outputs


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--self-rows", default="64,256", help="N of the self-attention cases")
    p.add_argument("--cache-len", type=int, default=64, help="T: cache positions")
    p.add_argument("--sources", default="16,64", help="B of the cross-attention cases")
    p.add_argument("--beams", type=int, default=4, help="R: beams per source")
    p.add_argument("--src-len", type=int, default=32, help="S: memory positions")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median)")
    p.add_argument("--calls", type=int, default=30, help="calls timed per round")
    p.add_argument(
        "--out", default="experiments/results/bench_attention", help="writes OUT.json and OUT.md"
    )
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)

    def inputs(queries: int, kv_rows: int, positions: int) -> tuple[jax.Array, ...]:
        """``(q [queries, H, D], k, v [kv_rows, H, positions, D], mask [kv_rows, positions])``."""
        q, k, v = (
            jnp.asarray(rng.standard_normal(shape, np.float32))
            for shape in ((queries, HEADS, HEAD_DIM), *[(kv_rows, HEADS, positions, HEAD_DIM)] * 2)
        )
        return q, k, v, jnp.asarray(rng.random((kv_rows, positions)) > 0.1)

    rows = []
    for n in (int(x) for x in args.self_rows.split(",")):
        t = args.cache_len
        q, k, v, m = inputs(n, n, t)
        fns = {
            "library (_one_query), float32 cache": (_one_query, (q, k, v, m)),
            "bfloat16 cache, upcast": (_upcast_self, (q, k.astype(jnp.bfloat16), v.astype(jnp.bfloat16), m)),
            "broadcast-multiply-reduce": (_self_reduce, (q, k, v, m)),
        }  # fmt: skip
        rows += _case("self", f"N={n} T={t}", fns, args)
    for b in (int(x) for x in args.sources.split(",")):
        n, s = b * args.beams, args.src_len
        q, k, v, m = inputs(n, b, s)
        fns = {
            "library (_grouped_queries)": (_grouped_queries, (q, k, v, m)),
            "broadcast-multiply-reduce": (_cross_reduce, (q, k, v, m)),
            "memory repeated per beam": (_cross_repeated, (q, k, v, m)),
        }  # fmt: skip
        rows += _case("cross", f"B={b} R={args.beams} S={s}", fns, args)
    lines = [
        "# The decode step's attention alone (one layer, 8 heads of 64, float32 math)\n",
        f"Median of {args.rounds} interleaved rounds of {args.calls} calls; `max diff`: largest "
        "difference of the output from the library form's.\n",
        "| attention | shape | form | us/call | vs library | max diff |",
        "|---|---|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['attention']} | {r['shape']} | {r['form']} | {r['us']:.0f} | "
            f"{r['vs_library']:.2f}x | {r['max_diff']:.1e} |"
        )
    write_results(args.out, vars(args), rows, "\n".join(lines) + "\n")


def _case(kind: str, shape: str, fns: dict, args: argparse.Namespace) -> list[dict]:
    us, outputs = _time(fns, args.rounds, args.calls)
    library = next(iter(fns))
    return [
        {"attention": kind, "shape": shape, "form": name, "us": us[name],
         "vs_library": us[name] / us[library],
         "max_diff": float(jnp.max(jnp.abs(outputs[name] - outputs[library])))}
        for name in fns
    ]  # fmt: skip


if __name__ == "__main__":
    main()
