"""Decode throughput of a random-weight seqjax Transformer (greedy and beam search).

Every run generates exactly ``--new-tokens`` tokens per source (``min_len = max_len``,
so EOS is banned until the last position), which makes the work equal to that of
HuggingFace ``generate(min_new_tokens=max_new_tokens=N)`` and CTranslate2
``min_decoding_length=max_decoding_length=N``. Tokens/s counts ``batch * N`` output
tokens for greedy and for beam search alike (beams are not counted), as HF/CT2
benchmarks do. Each timed call is one compiled program: encode, project the cross
K/V, decode, and copy the tokens back to the host.

Reported per (method, batch): the median tokens/s over ``--repeats`` timed runs after
one warm-up call, the first call's wall time (trace + compile + one run), the compile
seconds (first call minus the median run), and how many times the program was traced
(1 = compiled once). Results go to ``--out`` as JSON and Markdown.

Example::

    python experiments/bench_decode.py --model base --batches 1,16 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from results_io import write_results

from seqjax.config import model_preset
from seqjax.decoding import beam_search, greedy
from seqjax.decoding.compile_options import decode_compiler_options, one_row_output_major
from seqjax.models import build_model
from seqjax.models.quantize import output_major


def make_decoder(
    model, method: str, beam_size: int, new_tokens: int, counter: dict, rows: int, params
):
    cfg = model.config

    def run(params, src_BxS):
        counter["traces"] += 1  # Python side effect: runs once per trace
        mask = src_BxS != cfg.pad_id
        memory = model.encode(params, src_BxS, mask)
        cache = model.init_cache(params, memory, mask, new_tokens)
        ids = dict(bos_id=cfg.bos_id, eos_id=cfg.eos_id, pad_id=cfg.pad_id)
        common = dict(max_len=new_tokens, min_len=new_tokens, **ids)
        common.update(params=params)  # weights traced: model.step is the params form
        if method == "greedy":
            return greedy(model.step, cache, **common)
        return beam_search(model.step, cache, beam_size=beam_size, alpha=0.6, **common)

    # the library's per-size choice of XLA:CPU matmul kernels (SEQJAX_CPU_DOTS overrides)
    return jax.jit(run, compiler_options=decode_compiler_options(rows, params))


def bench_cell(model, params, method, batch, args, rng):
    counter = {"traces": 0}
    rows = batch * (1 if method == "greedy" else args.beam_size)
    if getattr(model, "takes_int8", False) and one_row_output_major(rows, params):
        params = output_major(params)  # as Translator.decode_params: one row on AVX2
    fn = make_decoder(model, method, args.beam_size, args.new_tokens, counter, rows, params)
    cfg = model.config
    src = jnp.asarray(rng.integers(4, cfg.vocab_size, (batch, args.src_len)), jnp.int32)
    t0 = time.perf_counter()
    res = jax.block_until_ready(fn(params, src))
    first = time.perf_counter() - t0
    lengths = np.asarray(res.lengths)[:, 0]
    if not np.all(lengths == args.new_tokens):
        raise RuntimeError(f"{method} b{batch}: lengths {lengths.tolist()} != {args.new_tokens}")
    times = []
    for _ in range(args.repeats):
        src = jnp.asarray(rng.integers(4, cfg.vocab_size, (batch, args.src_len)), jnp.int32)
        t0 = time.perf_counter()
        res = fn(params, src)
        np.asarray(res.tokens)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    tokens = batch * args.new_tokens
    return {
        "method": method if method == "greedy" else f"beam{args.beam_size}",
        "batch": batch,
        "tokens_per_s": tokens / med,
        "tokens_per_s_runs": [tokens / t for t in times],
        "median_s": med,
        "first_call_s": first,
        "compile_s": max(first - med, 0.0),
        "compile_count": counter["traces"],
        "distinct_first_tokens": int(len(np.unique(np.asarray(res.tokens)[:, 0, :4], axis=0))),
    }


def markdown(rows, meta) -> str:
    lines = [
        f"# Decode throughput: {meta['model']} (random weights), source {meta['src_len']}, "
        f"{meta['new_tokens']} output tokens",
        "",
        f"{meta['platform']}, jax {meta['jax']}, {meta['repeats']} timed runs per cell "
        "(median), tokens = batch x output tokens.",
        "",
        "| method | batch | tokens/s | median s/run | first call s | compile s | compiles |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['batch']} | {r['tokens_per_s']:.0f} | {r['median_s']:.3f} "
            f"| {r['first_call_s']:.1f} | {r['compile_s']:.1f} | {r['compile_count']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Timings on a shared CPU drift between passes: compare variants interleaved.",
    )
    p.add_argument(
        "--model",
        default="base",
        help="model preset (tiny, small, base, rnn_tiny, rnn_small; 'rnn' = rnn_small)",
    )
    p.add_argument("--batches", default="1,16", help="comma-separated batch sizes")
    p.add_argument("--methods", default="greedy,beam", help="greedy and/or beam")
    p.add_argument("--beam-size", type=int, default=4, help="beams for the beam cells")
    p.add_argument("--src-len", type=int, default=32, help="source tokens (no padding)")
    p.add_argument("--new-tokens", type=int, default=64, help="exact output length")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per cell (after warm-up)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and sources")
    p.add_argument(
        "--out",
        default="experiments/results/bench_decode",
        help="output path stem: writes STEM.json and STEM.md",
    )
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be >= 1")

    preset = {"rnn": "rnn_small"}.get(args.model, args.model)
    cfg = model_preset(preset, dropout=0.0, max_len=max(256, args.new_tokens))
    model = build_model(cfg)
    params = jax.jit(model.init)(jax.random.key(args.seed))
    rng = np.random.default_rng(args.seed)
    rows = []
    for method in args.methods.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            r = bench_cell(model, params, method.strip(), batch, args, rng)
            rows.append(r)
            print(
                f"{r['method']:>7} b{batch:<3} {r['tokens_per_s']:8.1f} tok/s  "
                f"(runs {', '.join(f'{x:.0f}' for x in r['tokens_per_s_runs'])})  "
                f"first call {r['first_call_s']:.2f}s  compile {r['compile_s']:.2f}s  "
                f"compiles {r['compile_count']}",
                flush=True,
            )
    meta = {
        "model": args.model,
        "src_len": args.src_len,
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "beam_size": args.beam_size,
        "jax": jax.__version__,
        "platform": f"{platform.machine()} {jax.default_backend()}, {os.cpu_count()} CPUs",
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_results(args.out, meta, rows, markdown(rows, meta))


if __name__ == "__main__":
    main()
