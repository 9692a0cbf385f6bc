"""Training throughput of the teacher-forced step, against the machine's measured GEMM peak.

For each model preset and batch size, one jitted ``make_train_step`` (forward, backward,
global-norm clipping, AdamW; dropout as in the preset) runs on random token batches of
``B`` rows with ``--src-len`` source and ``--tgt-len`` target tokens. Reported per cell:
target tokens/s (``B * T`` per step over the median step time), the achieved FLOP/s and
its fraction of the GEMM peak measured in the same run.

FLOPs of one step (dense attention, as implemented; a multiply-add counts 2)::

    d = d_model, f = d_ff, V = vocab, S = src_len, T = tgt_len, Le/Ld = layers
    encoder, per source token:  Le * (8 d^2 + 4 d f + 4 S d)
                                (QKV + output 8d^2, FFN 4df, scores + weighted sum 4Sd)
    decoder, per source token:  Ld * 4 d^2                 (cross-attention K, V of the memory)
    decoder, per target token:  Ld * (8 d^2 + 4 d^2 + 4 d f + 4 T d + 4 S d) + 2 d V
                                (self QKV + out, cross Q + out, FFN, self and cross
                                attention, output projection)
    forward = B * (S * enc + S * cross_kv + T * dec);   step = 3 * forward

(the backward pass costs two forward passes' matmuls: gradients with respect to the
activations and to the weights). Embedding lookups, LayerNorm, softmax and the optimizer
update are not counted: they are the overhead the fraction of peak exposes.

GEMM peak: jitted ``[M, K] @ [K, N]`` matmuls in the step's dtype, at the shapes the
step itself multiplies (``M = B * T`` rows against the d x d, d x f, f x d and d x V
weights); the best shape is the cell's peak, and it is timed again after every timed
step (interleaved), so both see the same machine.

Shared machines: this CPU is shared with other processes, so wall-clock time measures
the neighbours as much as seqjax. Every timing is therefore taken twice, as wall time and
as this process's CPU time (``time.process_time``, all threads), and the fraction of peak
is reported both ways: ``fraction_cpu`` = (step FLOPs per CPU-second) / (GEMM FLOPs per
CPU-second), which does not depend on how much of the machine the neighbours take, and
``fraction_wall`` from wall times. On an idle machine (or a GPU, where CPU time is
meaningless and only the wall figures count) the two agree. Machine load
(``os.getloadavg``) is recorded with every cell.

On a GPU the same script runs unchanged (``--dtype bfloat16`` for tensor cores);
the device name is written with the results.

Training peer (``--torch``): the same architecture in PyTorch (``nn.Transformer`` with
seqjax's preset: d_model, heads, layers, d_ff, pre-LN with final LayerNorms, ReLU,
dropout, scaled shared embeddings tied to the output projection, sinusoidal positions),
trained with the same step: forward, label-smoothed (0.1) cross-entropy ignoring PAD,
backward, global-norm clipping at 1.0 and AdamW, on the same batch shapes and with
``torch.set_num_threads`` = the CPU count. Its steps are interleaved with seqjax's in the
cell, and the table gives seqjax/torch tokens/s from the same run. The peer lives in a
worker process of its own (``peer_worker.Worker``, its step timed there), as every peer
is; ``--same-process`` keeps the arrangement of earlier sessions (the peer trains as fast
there, ``bench_process_isolation.py --train``, session 29). (torch's attention
also drops out attention weights with the preset's dropout, seqjax's attention dropout is
0: slightly more work on torch's side.)

Example::

    python experiments/bench_train.py --models small,base --batches 16,32,64 --repeats 5
    python experiments/bench_train.py --models small,base --batches 32 --torch  # with the peer
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from peer_worker import Local, Worker
from results_io import write_results

from seqjax.config import ModelConfig, TrainConfig, model_preset
from seqjax.models import build_model
from seqjax.training.optimizer import make_optimizer
from seqjax.training.steps import init_train_state, make_train_step


def step_flops(cfg: ModelConfig, batch: int, src_len: int, tgt_len: int) -> float:
    """Matmul FLOPs of one teacher-forced train step (forward + backward = 3 x forward)."""
    d, f, V = cfg.d_model, cfg.d_ff, cfg.vocab_size
    S, T = src_len, tgt_len
    enc = cfg.num_encoder_layers * (8 * d * d + 4 * d * f + 4 * S * d)
    cross_kv = cfg.num_decoder_layers * 4 * d * d
    dec = cfg.num_decoder_layers * (12 * d * d + 4 * d * f + 4 * T * d + 4 * S * d) + 2 * d * V
    forward = batch * (S * enc + S * cross_kv + T * dec)
    return 3.0 * forward


def timed(fn, *args) -> tuple[Any, float, float]:
    """``(result, wall seconds, CPU seconds of this process)`` of one blocking call."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - t0, time.process_time() - c0


class Gemm:
    """A jitted ``[m, k] @ [k, n]`` matmul with resident inputs; ``run()`` -> (wall, cpu) s."""

    def __init__(self, m: int, k: int, n: int, dtype: str):
        keys = jax.random.split(jax.random.key(0))
        self.a = jax.random.normal(keys[0], (m, k), jnp.float32).astype(dtype)
        self.b = jax.random.normal(keys[1], (k, n), jnp.float32).astype(dtype)
        self.fn = jax.jit(lambda x, y: x @ y)
        self.gflop = 2.0 * m * k * n / 1e9
        jax.block_until_ready(self.fn(self.a, self.b))

    def run(self, repeats: int = 3) -> tuple[float, float]:
        """Median wall and CPU seconds over ``repeats`` calls."""
        runs = [timed(self.fn, self.a, self.b)[1:] for _ in range(repeats)]
        return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def gemm_shapes(cfg: ModelConfig, rows: int, dtype: str, repeats: int) -> dict[str, Gemm]:
    """The step's matmul shapes, best (highest GFLOP per CPU-second) first."""
    d, f, V = cfg.d_model, cfg.d_ff, cfg.vocab_size
    dims = {
        "d x d": (rows, d, d),
        "d x f": (rows, d, f),
        "f x d": (rows, f, d),
        "d x V": (rows, d, V),
    }
    gemms = {name: Gemm(*mkn, dtype) for name, mkn in dims.items()}
    rate = {name: g.gflop / g.run(repeats)[1] for name, g in gemms.items()}
    return dict(sorted(gemms.items(), key=lambda kv: -rate[kv[0]]))


def random_batch(cfg: ModelConfig, rows: int, src_len: int, tgt_len: int, rng) -> dict:
    src = rng.integers(4, cfg.vocab_size, (rows, src_len)).astype(np.int32)
    tgt = rng.integers(4, cfg.vocab_size, (rows, tgt_len)).astype(np.int32)
    tgt_in = np.concatenate([np.full((rows, 1), cfg.bos_id), tgt[:, :-1]], 1).astype(np.int32)
    return {"src": jnp.asarray(src), "tgt_in": jnp.asarray(tgt_in), "tgt_out": jnp.asarray(tgt)}


WORKER_CLASSES = ("TorchPeer",)  # what peer_worker may build from this module


class TorchPeer:
    """seqjax's Transformer preset as a PyTorch model with the same train step."""

    def __init__(self, cfg: ModelConfig, threads: int, device: str = "cpu") -> None:
        import torch
        from torch import nn

        torch.manual_seed(0)
        torch.set_num_threads(threads)
        self.torch, self.cfg = torch, cfg
        d = cfg.d_model
        self.embed = nn.Embedding(cfg.vocab_size, d)
        with warnings.catch_warnings():
            # torch warns that a pre-LN encoder cannot use nested tensors, an inference-only
            # fast path for padded batches; the peer trains, so the warning is only noise
            warnings.filterwarnings("ignore", message="enable_nested_tensor is True")
            self.core = nn.Transformer(
                d_model=d,
                nhead=cfg.num_heads,
                num_encoder_layers=cfg.num_encoder_layers,
                num_decoder_layers=cfg.num_decoder_layers,
                dim_feedforward=cfg.d_ff,
                dropout=cfg.dropout,
                activation="relu",
                batch_first=True,
                norm_first=cfg.pre_ln,
            )
        self.drop = nn.Dropout(cfg.dropout)
        pos = np.arange(cfg.max_len)[:, None] / 10000 ** (np.arange(0, d, 2) / d)
        table = np.zeros((cfg.max_len, d), np.float32)
        table[:, 0::2], table[:, 1::2] = np.sin(pos), np.cos(pos)
        self.device = torch.device(device)
        self.pos = torch.tensor(table, device=self.device)
        self.modules = nn.ModuleList([self.embed, self.core]).to(self.device)
        # bfloat16 as seqjax runs it: float32 master weights, bf16 matmuls (autocast on CUDA).
        self.autocast = device == "cuda" and cfg.dtype == "bfloat16"
        self.opt = torch.optim.AdamW(self.modules.parameters(), lr=1e-4, weight_decay=0.0)
        self.loss = nn.CrossEntropyLoss(ignore_index=cfg.pad_id, label_smoothing=0.1)

    def _in(self, ids):
        x = self.embed(ids) * self.cfg.d_model**0.5 + self.pos[: ids.shape[1]]
        return self.drop(x)

    def step(self, batch: dict) -> float:
        torch = self.torch
        src, tgt_in, tgt_out = (torch.from_numpy(np.array(batch[k])).long().to(self.device)
                                for k in ("src", "tgt_in", "tgt_out"))  # fmt: skip
        t = tgt_in.shape[1]
        causal = torch.triu(torch.full((t, t), float("-inf"), device=self.device), diagonal=1)
        self.modules.train()
        with torch.autocast("cuda", torch.bfloat16, enabled=self.autocast):
            h = self.core(
                self._in(src),
                self._in(tgt_in),
                tgt_mask=causal,
                src_key_padding_mask=src == self.cfg.pad_id,
                memory_key_padding_mask=src == self.cfg.pad_id,
            )
            logits = h @ self.embed.weight.T  # tied output projection
        loss = self.loss(logits.float().reshape(-1, logits.shape[-1]), tgt_out.reshape(-1))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.modules.parameters(), 1.0)
        self.opt.step()
        return loss.item()  # the copy back also waits for the GPU


def add_step_args(p: argparse.ArgumentParser) -> None:
    """``--preset --batch --src-len --tgt-len``: one step's shape, for the scripts that read
    this benchmark's step (hlo_copies.py, profile_train.py, bench_finite_guard.py)."""
    p.add_argument("--preset", default="base", help="model preset (as bench_train.py)")
    p.add_argument("--batch", type=int, default=32, help="sentence pairs per step")
    p.add_argument("--src-len", type=int, default=32, help="source tokens per sentence")
    p.add_argument("--tgt-len", type=int, default=32, help="target tokens per sentence")


def bench_step(
    cfg: ModelConfig, optimizer_for: Callable[[TrainConfig], Any] = make_optimizer
) -> tuple[Any, Any, Any]:
    """``(model, optimizer, train_step)``: the step this benchmark times, for ``cfg``.

    AdamW with warm-up and global-norm clipping (``make_optimizer``, or ``optimizer_for``
    given the same ``TrainConfig``), label smoothing 0.1; the step is jitted and donates
    its state. ``hlo_copies.py``, ``profile_train.py`` and ``bench_finite_guard.py`` read
    the same step.
    """
    model = build_model(cfg)
    opt = optimizer_for(TrainConfig(learning_rate=1e-4, warmup_steps=10))
    return model, opt, make_train_step(model, opt, label_smoothing=0.1, pad_id=cfg.pad_id)


def bench_cell(preset: str, rows: int, args, rng) -> dict:
    """Time the step, interleaved with the best GEMM shape; rates by wall and by CPU time."""
    cfg = model_preset(preset, dtype=args.dtype)
    gemms = gemm_shapes(cfg, rows * args.tgt_len, args.dtype, args.gemm_repeats)
    best_name, best = next(iter(gemms.items()))
    model, opt, step = bench_step(cfg)
    state = init_train_state(jax.jit(model.init)(jax.random.key(0)), opt)
    batch = random_batch(cfg, rows, args.src_len, args.tgt_len, rng)
    key = jax.random.key(1)
    t0 = time.perf_counter()
    state, m = step(state, batch, key)
    jax.block_until_ready(m)
    first = time.perf_counter() - t0
    for _ in range(args.warmup):
        state, m = step(state, batch, key)
    jax.block_until_ready(m)
    peer, np_batch = None, {k: np.asarray(v) for k, v in batch.items()}
    peer_args = (cfg, os.cpu_count() or 1, args.torch_device)
    if args.torch and args.same_process:
        peer = Local(TorchPeer(*peer_args))
    elif args.torch:  # a process of its own, as every peer of the benchmarks
        peer = Worker("bench_train", "TorchPeer", *peer_args)
    if peer is not None:
        for _ in range(1 + args.warmup):
            peer.call("step", np_batch)
    wall, cpu, g_wall, g_cpu, t_wall = [], [], [], [], []
    for _ in range(args.repeats):
        (state, m), w, c = timed(step, state, batch, key)
        wall.append(w)
        cpu.append(c)
        if peer is not None:  # interleaved with seqjax's step, timed where it ran
            peer.call("step", np_batch)
            t_wall.append(peer.last_s)
        gw, gc = best.run(args.gemm_repeats)
        g_wall.append(gw)
        g_cpu.append(gc)
    if peer is not None:
        peer.close()
    if not np.isfinite(float(m["loss"])):
        raise RuntimeError(f"{preset} b{rows}: non-finite loss")
    med, med_cpu = statistics.median(wall), statistics.median(cpu)
    flops = step_flops(cfg, rows, args.src_len, args.tgt_len)
    gemm = {
        "shape": best_name,
        "gflops_wall": best.gflop / statistics.median(g_wall),
        "gflop_per_cpu_s": best.gflop / statistics.median(g_cpu),
        "all_shapes_gflop_per_cpu_s": {k: g.gflop / g.run(1)[1] for k, g in gemms.items()},
    }
    step_rate_cpu = flops / med_cpu / 1e9
    torch_tps = rows * args.tgt_len / statistics.median(t_wall) if t_wall else None
    return {
        "torch_tokens_per_s": torch_tps,
        "torch_step_s_runs": t_wall,
        "ratio_vs_torch": rows * args.tgt_len / med / torch_tps if torch_tps else None,
        "model": preset,
        "batch": rows,
        "tokens_per_step": rows * args.tgt_len,
        "tokens_per_s": rows * args.tgt_len / med,
        "median_step_s": med,
        "median_step_cpu_s": med_cpu,
        "step_s_runs": wall,
        "first_call_s": first,
        "step_gflop": flops / 1e9,
        "gflops": flops / med / 1e9,
        "gflop_per_cpu_s": step_rate_cpu,
        "gemm": gemm,
        "fraction_wall": flops / med / 1e9 / gemm["gflops_wall"],
        "fraction_cpu": step_rate_cpu / gemm["gflop_per_cpu_s"],
        "params_m": sum(x.size for x in jax.tree.leaves(state.params)) / 1e6,
    }


def add_run_peak(rows: list[dict], meta: dict) -> None:
    """The run's best GEMM reading (any cell, any shape) and each cell's fraction of it.

    The per-cell GEMM is noisy on a shared machine; dividing by the best reading of the
    whole run is the conservative figure.
    """
    peak = max(
        max(r["gemm"]["gflop_per_cpu_s"], *r["gemm"]["all_shapes_gflop_per_cpu_s"].values())
        for r in rows
    )
    meta["run_peak_gflop_per_cpu_s"] = peak
    for r in rows:
        r["fraction_cpu_of_run_peak"] = r["gflop_per_cpu_s"] / peak


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        f"# Training throughput (teacher-forced step), {meta['device']}",
        "",
        f"{meta['platform']}, jax {meta['jax']}, dtype {meta['dtype']}, source {meta['src_len']} / "
        f"target {meta['tgt_len']} tokens, median of {meta['repeats']} steps after "
        f"{meta['warmup']} warm-up, each followed by the cell's best GEMM shape "
        f"(M = batch x target tokens). {meta['time_utc']}.",
        "",
        "Rates per CPU-second of this process (robust to other processes on the machine) and "
        "by wall clock; fraction = step rate / GEMM rate measured the same way, interleaved "
        "in the cell; the last fraction divides by the best GEMM reading of the whole run "
        f"({meta['run_peak_gflop_per_cpu_s']:.0f} GFLOP per cpu-s), the conservative figure.",
        "",
        "| model | params | batch | tokens/step | tokens/s (wall) | step s (wall / cpu) "
        "| GFLOP/step | step GFLOP per cpu-s | GEMM GFLOP per cpu-s | **fraction (cpu)** "
        "| step GFLOP/s wall | GEMM GFLOP/s wall | fraction (wall) | load (1 min) "
        "| fraction of run peak (cpu) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        g = r["gemm"]
        lines.append(
            f"| {r['model']} | {r['params_m']:.1f}M | {r['batch']} | {r['tokens_per_step']} "
            f"| {r['tokens_per_s']:.0f} | {r['median_step_s']:.2f} / {r['median_step_cpu_s']:.2f} "
            f"| {r['step_gflop']:.1f} | {r['gflop_per_cpu_s']:.0f} | {g['gflop_per_cpu_s']:.0f} "
            f"({g['shape']}) | **{r['fraction_cpu']:.0%}** | {r['gflops']:.0f} "
            f"| {g['gflops_wall']:.0f} | {r['fraction_wall']:.0%} | {r['load'][0]:.1f} "
            f"| {r['fraction_cpu_of_run_peak']:.0%} |"
        )
    if any(r.get("torch_tokens_per_s") for r in rows):
        lines += [
            "",
            "Training peer: the same architecture in PyTorch (forward + backward + clipping + "
            "AdamW, same shapes, dropout, label smoothing, threads), interleaved in the cell, "
            f"{meta.get('torch_process', 'in this process')}:",
            "",
            "| model | batch | seqjax tokens/s | PyTorch tokens/s | seqjax/PyTorch | load |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {r['model']} | {r['batch']} | {r['tokens_per_s']:.0f} | "
            f"{r['torch_tokens_per_s']:.0f} | {r['ratio_vs_torch']:.2f}x | {r['load'][0]:.1f} |"
            for r in rows
            if r.get("torch_tokens_per_s")
        ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models", default="small,base", help="comma-separated model presets")
    p.add_argument("--batches", default="16,32,64", help="comma-separated batch sizes (rows)")
    p.add_argument("--src-len", type=int, default=32, help="source tokens per row")
    p.add_argument("--tgt-len", type=int, default=32, help="target tokens per row")
    p.add_argument("--dtype", default="float32", help="activation/matmul dtype (float32, bfloat16)")
    p.add_argument("--repeats", type=int, default=5, help="timed steps per cell (median)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps after the compiling one")
    p.add_argument(
        "--gemm-repeats", type=int, default=3, help="matmul calls per GEMM timing (median)"
    )
    p.add_argument("--torch", action="store_true", help="also time the PyTorch training peer")
    p.add_argument(
        "--torch-device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="where the PyTorch peer runs (cuda: on the GPU, bf16 autocast with --dtype bfloat16)",
    )
    p.add_argument(
        "--same-process",
        action="store_true",
        help="run the PyTorch peer in this process, next to XLA (the arrangement before "
        "session 28) instead of in a worker process of its own",
    )
    p.add_argument(
        "--out", default="experiments/results/bench_train", help="writes STEM.json and STEM.md"
    )
    args = p.parse_args(argv)
    if args.torch and not args.same_process:  # two processes may share a GPU: no 75% grab
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    rng = np.random.default_rng(0)
    rows: list[dict] = []
    for preset in args.models.split(","):
        for b in (int(x) for x in args.batches.split(",")):
            r = bench_cell(preset.strip(), b, args, rng)
            r["load"] = list(os.getloadavg())
            rows.append(r)
            g = r["gemm"]
            print(
                f"{preset:>6} b{b:<4} {r['tokens_per_s']:7.0f} tok/s | per cpu-s: step "
                f"{r['gflop_per_cpu_s']:.0f} GFLOP, GEMM {g['gflop_per_cpu_s']:.0f} ({g['shape']}) "
                f"-> {r['fraction_cpu']:.0%} | wall: step {r['gflops']:.0f} GFLOP/s, GEMM "
                f"{g['gflops_wall']:.0f} -> {r['fraction_wall']:.0%} | load {r['load'][0]:.1f}"
                + (
                    f" | torch {r['torch_tokens_per_s']:.0f} tok/s, seqjax/torch "
                    f"{r['ratio_vs_torch']:.2f}x"
                    if r["torch_tokens_per_s"]
                    else ""
                ),  # fmt: skip
                flush=True,
            )
    dev = jax.devices()[0]
    meta = {
        "device": getattr(dev, "device_kind", "") or dev.platform,
        "platform": f"{platform.machine()} {jax.default_backend()}, {os.cpu_count()} CPUs",
        "jax": jax.__version__,
        "dtype": args.dtype,
        "src_len": args.src_len,
        "tgt_len": args.tgt_len,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "torch_process": "in this process"
        if args.same_process
        else "in a worker process of its own",
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    add_run_peak(rows, meta)
    write_results(args.out, meta, rows, markdown(rows, meta))


if __name__ == "__main__":
    main()
