"""Beam search's cache reorder: gather every step vs a beam-origin table (a prototype).

Today (``decoding/beam_loop.py``) each beam step gathers every cache leaf along the batch
axis by the surviving beams' parents: for transformer-base, 6 layers x (K, V) of
``[B * k, H, T, Dh]`` read and written once a step, whatever the position. The prototype
keeps each row's self-attention keys/values where they were written and carries a small
table ``origin [B * k, T]`` (which beam of the row's group wrote position j of its
history): a step reorders only that int table, and attention reads the group's k caches
at once with a one-hot over the beam axis (``[B, k, H, T, Dh]``: each group's cache is
read once for its k rows, never copied). A third variant, ``origin_gather``, keeps the
keys/values time-major per row (``[B * k, T, H, Dh]``) and reads row ``origin`` of each
position directly (a gather XLA may fuse into the attention's multiply-reduce), so it
does k times less arithmetic than the one-hot. All variants compute the same attention
outputs (checked below); this times the self-attention part of one step for 6 layers.

    python experiments/bench_beam_reorder.py --batches 1,16,64
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from results_io import write_results  # noqa: E402

H, DH, LAYERS = 8, 64, 6


def gather_step(ks, vs, parent_R, q_RxHxD, t):
    """Current scheme: reorder every layer's cache by parent, then attend (position <= t)."""
    outs = []
    new_ks, new_vs = [], []
    for k, v in zip(ks, vs, strict=True):
        k, v = k[parent_R], v[parent_R]  # the per-step gather (read + write the cache)
        mask = jnp.arange(k.shape[2]) <= t
        logits = jnp.einsum("rhd,rhtd->rht", q_RxHxD, k) / math.sqrt(DH)
        w = jax.nn.softmax(jnp.where(mask, logits, -1e9), axis=-1)
        outs.append(jnp.einsum("rht,rhtd->rhd", w, v))
        new_ks.append(k)
        new_vs.append(v)
    return outs, new_ks, new_vs


def origin_step(ks, vs, origin_RxT, parent_R, q_RxHxD, t, beam):
    """Prototype: reorder only ``origin`` and attend over the group's k caches."""
    origin = origin_RxT[parent_R]  # [R, T] int32, the only per-step reorder
    r, tmax = origin.shape
    b = r // beam
    onehot = jax.nn.one_hot(origin.reshape(b, beam, tmax), beam, dtype=q_RxHxD.dtype)
    mask = jnp.arange(tmax) <= t
    q = q_RxHxD.reshape(b, beam, H, DH)
    outs = []
    for k, v in zip(ks, vs, strict=True):
        kg, vg = k.reshape(b, beam, H, tmax, DH), v.reshape(b, beam, H, tmax, DH)
        # logits of row i (of group b) against beam j's keys, then pick j = origin[i, t]
        all_l = jnp.einsum("bihd,bjhtd->bihjt", q, kg) / math.sqrt(DH)
        logits = jnp.einsum("bihjt,bitj->biht", all_l, onehot)
        w = jax.nn.softmax(jnp.where(mask, logits, -1e9), axis=-1)
        wj = jnp.einsum("biht,bitj->bihjt", w, onehot)
        outs.append(jnp.einsum("bihjt,bjhtd->bihd", wj, vg).reshape(r, H, DH))
    return outs, origin


def origin_gather_step(ks_RxTxHxD, vs_RxTxHxD, origin_RxT, parent_R, q_RxHxD, t, beam):
    """Prototype 2: reorder ``origin``, then read each position's row of the group."""
    origin = origin_RxT[parent_R]
    r, tmax = origin.shape
    rows_RxT = (jnp.arange(r)[:, None] // beam) * beam + origin
    t_1xT = jnp.arange(tmax)[None, :]
    mask = (jnp.arange(tmax) <= t)[None, :, None]
    outs = []
    for k, v in zip(ks_RxTxHxD, vs_RxTxHxD, strict=True):
        logits = jnp.sum(q_RxHxD[:, None] * k[rows_RxT, t_1xT], axis=-1) / math.sqrt(DH)
        w = jax.nn.softmax(jnp.where(mask, logits, -1e9), axis=1)  # [R, T, H]
        outs.append(jnp.sum(w[..., None] * v[rows_RxT, t_1xT], axis=1))  # [R, H, Dh]
    return outs, origin


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batches", default="1,16,64", help="comma-separated batch sizes")
    p.add_argument("--beam", type=int, default=4, help="beams per source")
    p.add_argument("--max-len", type=int, default=64, help="cache positions")
    p.add_argument("--position", type=int, default=32, help="the step's position t")
    p.add_argument("--repeats", type=int, default=7, help="timed rounds per cell")
    p.add_argument(
        "--out", default="experiments/results/bench_beam_reorder", help="writes OUT.json and OUT.md"
    )
    args = p.parse_args(argv)
    before = os.popen("uptime").read().strip()
    rows = []
    rng = np.random.default_rng(0)
    for batch in (int(b) for b in args.batches.split(",")):
        r, k, tmax = batch * args.beam, args.beam, args.max_len
        ks = [
            jnp.asarray(rng.standard_normal((r, H, tmax, DH)), jnp.float32) for _ in range(LAYERS)
        ]
        vs = [
            jnp.asarray(rng.standard_normal((r, H, tmax, DH)), jnp.float32) for _ in range(LAYERS)
        ]
        q = jnp.asarray(rng.standard_normal((r, H, DH)), jnp.float32)
        parent = jnp.asarray(
            (np.arange(r) // k) * k + rng.integers(0, k, r), jnp.int32
        )  # a parent beam within the same source's group
        origin0 = jnp.asarray(rng.integers(0, k, (r, tmax)), jnp.int32)
        t = jnp.int32(args.position)
        g = jax.jit(gather_step)
        o = jax.jit(origin_step, static_argnums=6)
        # Same attention: row i's history at position j is beam origin[i, j]'s cache row.
        og = origin0[parent]
        src_rows = (np.arange(r) // k)[:, None] * k + np.asarray(og)  # [R, T]
        ks_eq = [
            jnp.asarray(
                np.asarray(x)[src_rows, :, np.arange(tmax)[None, :], :].transpose(0, 2, 1, 3)
            )
            for x in ks
        ]
        vs_eq = [
            jnp.asarray(
                np.asarray(x)[src_rows, :, np.arange(tmax)[None, :], :].transpose(0, 2, 1, 3)
            )
            for x in vs
        ]
        ident = jnp.arange(r, dtype=jnp.int32)
        want = g(ks_eq, vs_eq, ident, q, t)[0]
        got = o(ks, vs, origin0, parent, q, t, k)[0]
        err = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(want, got, strict=True))
        og_fn = jax.jit(origin_gather_step, static_argnums=6)
        ks_t = [jnp.swapaxes(x, 1, 2) for x in ks]  # time-major per row
        vs_t = [jnp.swapaxes(x, 1, 2) for x in vs]
        got2 = og_fn(ks_t, vs_t, origin0, parent, q, t, k)[0]
        err = max(err, *(float(jnp.max(jnp.abs(a - b))) for a, b in zip(want, got2, strict=True)))
        times = {"gather": [], "origin_table": [], "origin_gather": []}
        jax.block_until_ready(g(ks, vs, parent, q, t))
        for _ in range(args.repeats):  # interleaved
            t0 = time.perf_counter()
            jax.block_until_ready(g(ks, vs, parent, q, t))
            times["gather"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            jax.block_until_ready(o(ks, vs, origin0, parent, q, t, k))
            times["origin_table"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            jax.block_until_ready(og_fn(ks_t, vs_t, origin0, parent, q, t, k))
            times["origin_gather"].append(time.perf_counter() - t0)
        med = {name: statistics.median(v) * 1e6 for name, v in times.items()}
        row = {
            "batch": batch,
            "rows": r,
            "us": med,
            "speedup": med["gather"] / med["origin_table"],
            "speedup_origin_gather": med["gather"] / med["origin_gather"],
            "max_abs_diff": err,
        }
        print(row, flush=True)
        rows.append(row)
    meta = {
        "what": "self-attention part of one beam step, 6 layers, H8 Dh64, fp32",
        "beam": args.beam,
        "max_len": args.max_len,
        "position": args.position,
        "uptime_before": before,
        "uptime_after": os.popen("uptime").read().strip(),
    }
    lines = [
        "# Beam cache reorder: per-step gather vs beam-origin table (prototype)",
        "",
        f"{meta['what']}; beam {args.beam}, cache {args.max_len} positions, step at "
        f"t={args.position}; median of {args.repeats} interleaved rounds. Load before "
        f"`{meta['uptime_before']}`, after `{meta['uptime_after']}`.",
        "",
        "| batch | rows | gather us | origin table us | speedup | origin gather us | speedup "
        "| max abs diff |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['batch']} | {r['rows']} | {r['us']['gather']:.0f} | "
        f"{r['us']['origin_table']:.0f} | {r['speedup']:.2f}x | {r['us']['origin_gather']:.0f} | "
        f"{r['speedup_origin_gather']:.2f}x | {r['max_abs_diff']:.1e} |"
        for r in rows
    ]
    write_results(args.out, meta, rows, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
