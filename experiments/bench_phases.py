"""Decoding in phases of growing cache length vs the one-loop program, side by side.

A random transformer-base (6+6 layers, d512, 8 heads, ffn 2048, vocab 8000: the
opus-mt shape of ``bench_vs_peers.py``) decodes the same random sources (``--src-len``
tokens) in two ways that differ only in whether ``model.step`` offers ``resize``
(``seqjax.decoding.phases``): phased (the default) and one loop over the full cache.
Two output regimes:

- ``forced``: exactly ``--new-tokens`` tokens (``min_len = max_len``), the regime of
  ``bench_vs_peers.py``; every phase runs to its end.
- ``eos``: the model's EOS made likelier (its output bias raised by ``--eos-bias``; 0.7
  gives 25 of 64 tokens on average at batch 16), so rows end at different positions
  before ``max_len``, as translations do. The same tokens come out either way; the
  table says so.

Cells run interleaved (phased, single, phased, ...) after one warm-up call each; the
first call (trace + compile + run) is reported too, as phases compile one copy of the
loop body each. Example (about 6 minutes on 2 cores)::

    python experiments/bench_phases.py --quantize w8a8 --out experiments/results/bench_phases
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import write_results  # noqa: E402

from seqjax.config import ModelConfig  # noqa: E402
from seqjax.decoding import beam_search, greedy, phases  # noqa: E402
from seqjax.decoding.diverse_beam_search import diverse_beam_search  # noqa: E402
from seqjax.models.quantize import QUANT_MODES, quantize_params  # noqa: E402
from seqjax.models.transformer import Transformer  # noqa: E402


@dataclasses.dataclass(frozen=True)
class OneLoop:
    """``model.step`` without ``resize``: the decoders keep the single loop."""

    step: Any

    def prepare(self, params: Any) -> Any:
        return self.step.prepare(params)

    def capacity(self, cache: Any) -> int | None:
        return self.step.capacity(cache)

    def __call__(self, *args: Any) -> tuple:
        return self.step(*args)


def decoder(model: Transformer, step: Any, method: str, max_len: int, forced: bool) -> Any:
    c = model.config

    @jax.jit
    def run(params: Any, src_BxS: jax.Array) -> jax.Array:
        mask = src_BxS > 0
        cache = model.init_cache(params, model.encode(params, src_BxS, mask), mask, max_len)
        kw = dict(params=params, max_len=max_len, min_len=max_len if forced else 0,
                  bos_id=c.bos_id, eos_id=c.eos_id, pad_id=c.pad_id)  # fmt: skip
        if method == "greedy":
            return greedy(step, cache, **kw).tokens
        if method == "diverse":  # 2 groups of 2 beams
            return diverse_beam_search(step, cache, beam_size=4, num_groups=2, **kw).tokens
        return beam_search(step, cache, beam_size=4, n_best=1, **kw).tokens

    return run


BASE_CONFIG = ModelConfig(family="transformer", vocab_size=8000, d_model=512, d_ff=2048,
                          num_heads=8, num_encoder_layers=6, num_decoder_layers=6, max_len=256,
                          dropout=0.0, tie_output=False, share_embeddings=False)  # fmt: skip


def eos_biased(params: Any, cfg: ModelConfig, bias: float) -> Any:
    """``params`` with ``bias`` added to EOS's output bias (rows end after a few tokens)."""
    old = params["params"]["logits_dense"]["bias"]
    params = jax.tree.map(lambda x: x, params)
    params["params"]["logits_dense"]["bias"] = old.at[cfg.eos_id].add(bias)
    return params


def interleaved_medians(fns: dict[str, Any], params: Any, src: Any, repeats: int) -> dict:
    """Median seconds per call of each program, timed in interleaved rounds (warm)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(params, src))
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(v) for name, v in times.items()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", default="greedy:1,greedy:64,beam:1,beam:16,beam:64",
                   help="method:batch pairs (method greedy or beam 4)")  # fmt: skip
    p.add_argument("--regimes", default="forced,eos", help="forced and/or eos (see above)")
    p.add_argument("--src-len", type=int, default=32, help="source tokens per row")
    p.add_argument("--new-tokens", type=int, default=64, help="max_len of every decode")
    p.add_argument("--eos-bias", type=float, default=0.7, help="added to EOS's output bias")
    p.add_argument(
        "--quantize",
        choices=QUANT_MODES,
        help="low-precision weights (models/quantize.py modes; default float32)",
    )
    p.add_argument("--repeats", type=int, default=3, help="interleaved timed rounds per cell")
    p.add_argument("--memory", action="store_true",
                   help="also report each compiled program's temporary buffers (XLA's "
                        "memory analysis; deterministic, unlike the times)")  # fmt: skip
    p.add_argument("--min-rows", type=int, default=1,
                   help="phases.MIN_ROWS for the phased program (default 1: phases at every "
                        "size, to measure them; the library's limit is 64)")  # fmt: skip
    p.add_argument(
        "--out", default="experiments/results/bench_phases", help="writes OUT.json and OUT.md"
    )
    args = p.parse_args(argv)
    phases.MIN_ROWS = args.min_rows  # read when a decoder is traced

    cfg = BASE_CONFIG
    model = Transformer(cfg)
    base = model.init(jax.random.key(0))
    before = os.popen("uptime").read().strip()
    rows = []
    for regime in args.regimes.split(","):
        params = base
        if regime == "eos":  # a bias that makes EOS likely after a few tokens
            params = eos_biased(params, cfg, args.eos_bias)
        if args.quantize:
            params = quantize_params(params, mode=args.quantize)
        for cell in args.cells.split(","):
            method, batch = cell.split(":")
            batch = int(batch)
            src = jax.random.randint(jax.random.key(1), (batch, args.src_len), 4, cfg.vocab_size)
            fns, first, outs = {}, {}, {}
            for name, step in (("phased", model.step), ("one_loop", OneLoop(model.step))):
                fns[name] = decoder(model, step, method, args.new_tokens, regime == "forced")
                t0 = time.perf_counter()
                outs[name] = np.asarray(fns[name](params, src))
                first[name] = time.perf_counter() - t0
            med = interleaved_medians(fns, params, src, args.repeats)
            temp_mb = {}
            if args.memory:  # compiles again: the jit cache does not expose the executable
                for name, fn in fns.items():
                    analysis = fn.lower(params, src).compile().memory_analysis()
                    temp_mb[name] = analysis.temp_size_in_bytes / 2**20
            lengths = (outs["phased"][:, 0] != cfg.pad_id).sum(-1)
            row = {
                "regime": regime, "method": method, "batch": batch,
                "ms": {k: v * 1e3 for k, v in med.items()},
                "speedup": med["one_loop"] / med["phased"],
                "first_call_s": first,
                "same_tokens": bool(np.array_equal(outs["phased"], outs["one_loop"])),
                "mean_len": float(lengths.mean()),
                "temp_mb": temp_mb,
            }  # fmt: skip
            print(row, flush=True)
            rows.append(row)
    meta = {
        "model": "random transformer-base (6+6, d512, H8, ffn 2048, vocab 8000)",
        "quantize": args.quantize or "float32",
        "src_len": args.src_len,
        "max_len": args.new_tokens,
        "eos_bias": args.eos_bias,
        "repeats": args.repeats,
        "min_rows": args.min_rows,
        "uptime_before": before,
        "uptime_after": os.popen("uptime").read().strip(),
        "command": "python experiments/bench_phases.py " + " ".join(argv or sys.argv[1:]),
    }
    lines = [
        "# Decoding in phases vs one loop (`seqjax.decoding.phases`)",
        "",
        f"{meta['model']}, {meta['quantize']}; sources of {args.src_len} tokens, max_len "
        f"{args.new_tokens}; `forced`: exactly max_len tokens, `eos`: EOS bias "
        f"+{args.eos_bias} (rows end early). Median of {args.repeats} interleaved rounds. "
        f"Load before `{before}`, after `{meta['uptime_after']}`. Command: `{meta['command']}`.",
        "",
        "| regime | method | batch | mean length | phased ms | one loop ms | speed-up | "
        "first call phased / one loop s | same tokens |"
        + (" temp MiB phased / one loop |" if args.memory else ""),
        "|---|---|---:|---:|---:|---:|---:|---:|---|" + ("---:|" if args.memory else ""),
    ]
    lines += [
        f"| {r['regime']} | {r['method']} | {r['batch']} | {r['mean_len']:.1f} | "
        f"{r['ms']['phased']:.0f} | {r['ms']['one_loop']:.0f} | {r['speedup']:.2f}x | "
        f"{r['first_call_s']['phased']:.1f} / {r['first_call_s']['one_loop']:.1f} | "
        f"{r['same_tokens']} |"
        + (
            f" {r['temp_mb']['phased']:.1f} / {r['temp_mb']['one_loop']:.1f} |"
            if r["temp_mb"]
            else ""
        )
        for r in rows
    ]
    write_results(args.out, meta, rows, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
