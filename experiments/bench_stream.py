"""Overhead of streaming tokens out of the compiled loop (``stream=``), at batch 1.

A random-weight seqjax Transformer decodes exactly ``--new-tokens`` tokens per source
(``min_len = max_len``) with greedy and beam search, once without streaming and once
per ``--stream-every`` value ``k`` with ``stream=ID`` (an ordered ``io_callback`` every
``k`` positions to a consumer that keeps the tokens, what ``seqjax translate --stream``
does before printing; ``k = 1`` is a host call per token). The variants are timed in
turn, ``--repeats`` times each after a warm-up call, and the overhead of each is
``median(stream) / median(plain) - 1``. Results go to ``--out`` (.json and .md), with
the machine and load average (``results_io``).

Example::

    python experiments/bench_stream.py --model small --new-tokens 64 --repeats 9
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np
from results_io import write_results

from seqjax.config import model_preset
from seqjax.decoding import beam_search, greedy
from seqjax.decoding.streaming import register
from seqjax.models import build_model


def make_decoder(model, method: str, beam_size: int, new_tokens: int, every: int):
    cfg = model.config

    def run(params, src_BxS, stream):
        mask = src_BxS != cfg.pad_id
        memory = model.encode(params, src_BxS, mask)
        cache = model.init_cache(params, memory, mask, new_tokens)
        ids = dict(bos_id=cfg.bos_id, eos_id=cfg.eos_id, pad_id=cfg.pad_id)
        common = dict(max_len=new_tokens, min_len=new_tokens, params=params, stream=stream)
        common.update(stream_every=every)
        if method == "greedy":
            return greedy(model.step, cache, **common, **ids)
        return beam_search(model.step, cache, beam_size=beam_size, alpha=0.6, **common, **ids)

    return jax.jit(run)


def bench_method(model, params, src, method: str, args) -> list[dict]:
    received: list = []
    sid = register(lambda t, tokens: received.append(tokens))
    everies = [int(k) for k in args.stream_every.split(",")]
    # name -> (compiled fn, stream argument)
    variants = {"plain": (make_decoder(model, method, args.beam_size, args.new_tokens, 1), None)}
    for k in everies:
        variants[f"every{k}"] = (
            make_decoder(model, method, args.beam_size, args.new_tokens, k),
            sid,
        )
    for fn, stream in variants.values():  # compile all, outside the timings
        jax.block_until_ready(fn(params, src, stream))
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, (fn, stream) in variants.items():  # interleaved: drift hits all alike
            received.clear()
            t0 = time.perf_counter()
            out = fn(params, src, stream)
            np.asarray(out.tokens)  # tokens on the host, as a caller needs them
            times[name].append(time.perf_counter() - t0)
            if stream is not None:
                assert len(received) == args.new_tokens  # one consumer call per position
    plain = statistics.median(times["plain"])
    rows = []
    for k in everies:
        streamed = statistics.median(times[f"every{k}"])
        rows.append(
            {
                "method": method if method == "greedy" else f"beam{args.beam_size}",
                "batch": 1,
                "new_tokens": args.new_tokens,
                "stream_every": k,
                "plain_ms": round(plain * 1e3, 2),
                "stream_ms": round(streamed * 1e3, 2),
                "per_token_us_plain": round(plain / args.new_tokens * 1e6, 1),
                "per_token_us_stream": round(streamed / args.new_tokens * 1e6, 1),
                "overhead_pct": round((streamed / plain - 1) * 100, 1),
                "repeats": args.repeats,
            }
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="small", help="model preset (tiny, small, base)")
    p.add_argument("--new-tokens", type=int, default=64, help="output tokens per row")
    p.add_argument("--src-len", type=int, default=16, help="source tokens per row")
    p.add_argument("--beam-size", type=int, default=4, help="beams for the beam method")
    p.add_argument("--repeats", type=int, default=9, help="interleaved timed rounds (median)")
    p.add_argument("--methods", default="greedy,beam", help="greedy and/or beam")
    p.add_argument(
        "--stream-every",
        default="1,8,16",
        help="comma-separated stream_every values to time against no streaming",
    )
    p.add_argument(
        "--out", default="experiments/results/bench_stream", help="writes OUT.json and OUT.md"
    )
    args = p.parse_args()
    model = build_model(model_preset(args.model, dropout=0.0, max_len=args.new_tokens + 8))
    params = model.init(jax.random.key(0))
    rng = np.random.default_rng(0)
    src = jax.numpy.asarray(rng.integers(4, model.config.vocab_size, (1, args.src_len)), "int32")
    rows = [r for m in args.methods.split(",") for r in bench_method(model, params, src, m, args)]
    md = (
        f"Streaming overhead at batch 1, {args.model} Transformer, {args.new_tokens} tokens, "
        f"median of {args.repeats} interleaved runs.\n\n"
        "| method | stream_every | plain ms | stream ms | us/token plain | us/token stream "
        "| overhead |\n"
        "|---|---:|---|---|---|---|---|\n"
    )
    for r in rows:
        md += (
            f"| {r['method']} | {r['stream_every']} | {r['plain_ms']} | {r['stream_ms']} "
            f"| {r['per_token_us_plain']} "
            f"| {r['per_token_us_stream']} | {r['overhead_pct']}% |\n"
        )
    write_results(args.out, vars(args), rows, md)


if __name__ == "__main__":
    main()
