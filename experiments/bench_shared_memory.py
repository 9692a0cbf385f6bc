"""Beam search over one memory per source vs K repeated copies of it, side by side.

A step's ``expand(cache, K)`` (``batch_tree.cache_expander``) lets beam search keep the
leaves a source's beams share at one row per source: the Transformer's projected
cross-attention keys/values and the RNN's memory and attention keys. This script
compiles the same beam search (beam 4) twice, once with the model's step and once with
the step stripped of ``expand`` (every leaf repeated K times, as before), and times
them interleaved after one warm-up call each (``--method diverse``: diverse beam search,
2 groups of 2 beams, instead):

- ``random``: the random transformer-base of ``bench_phases.py`` (6+6 layers, d512,
  8 heads, ffn 2048, vocab 8000), sources of ``--src-len`` random tokens, exactly
  ``--new-tokens`` output tokens;
- each ``--run RUN``: a trained run directory (either family) on the first ``batch``
  sentences of the bundled test set, ending at EOS, ``max_len`` 2 x source + 10.

Both programs must give the same tokens (the table says whether they do).

    python experiments/bench_shared_memory.py --run RUNS/eb/base --run RUNS/eb_tr/base \\
        --out experiments/results/bench_shared_memory
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_phases import BASE_CONFIG, decoder, interleaved_medians  # noqa: E402
from results_io import write_results  # noqa: E402

from seqjax.models.quantize import QUANT_MODES, quantize_params  # noqa: E402
from seqjax.models.transformer import Transformer  # noqa: E402


@dataclasses.dataclass(frozen=True)
class RepeatedMemory:
    """``model.step`` without ``expand``: beam search repeats every cache leaf K times."""

    step: Any

    def prepare(self, params: Any) -> Any:
        return self.step.prepare(params)

    def capacity(self, cache: Any) -> int | None:
        return self.step.capacity(cache)

    @property
    def resize(self) -> Any:
        return self.step.resize

    def __call__(self, *args: Any) -> tuple:
        return self.step(*args)


def test_sources(run: str, batch: int) -> np.ndarray:
    """The first ``batch`` bundled test sentences in ``run``'s tokenizer, PAD padded (the
    decoder reads ``src > 0`` as the mask: the runs' PAD id is 0)."""
    from seqjax.app import run_dir
    from seqjax.data import load_bundled

    c, _ = run_dir.read_run_config(run)
    src_tok, _ = run_dir.read_tokenizers(run)
    texts = load_bundled("bible_en_fr", "test").src[:batch]
    ids = [x[: c.max_len - 1] + [c.eos_id] for x in src_tok.encode(texts)]
    src = np.full((len(ids), max(map(len, ids))), c.pad_id, np.int32)
    for i, x in enumerate(ids):
        src[i, : len(x)] = x
    return src


def cell(
    model: Any, params: Any, src: Any, max_len: int, forced: bool, repeats: int, method: str
) -> dict:
    """Both programs on one batch: medians, speed-up, first-call seconds, same tokens."""
    fns, first, outs = {}, {}, {}
    for name, step in (("shared", model.step), ("repeated", RepeatedMemory(model.step))):
        t0 = time.perf_counter()
        fns[name] = decoder(model, step, method, max_len, forced).lower(params, src).compile()
        outs[name] = np.asarray(fns[name](params, src))
        first[name] = time.perf_counter() - t0
    med = interleaved_medians(fns, params, src, repeats)
    lengths = (outs["shared"][:, 0] != model.config.pad_id).sum(-1)
    return {
        "batch": int(src.shape[0]),
        "ms": {k: v * 1e3 for k, v in med.items()},
        "speedup": med["repeated"] / med["shared"],
        "tok_s": {k: src.shape[0] * float(lengths.mean()) / v for k, v in med.items()},
        "first_call_s": first,
        "same_tokens": bool(np.array_equal(outs["shared"], outs["repeated"])),
        "mean_len": float(lengths.mean()),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", default="1,16,64", help="comma-separated batch sizes")
    p.add_argument("--src-len", type=int, default=32, help="random model: source tokens")
    p.add_argument("--new-tokens", type=int, default=64, help="random model: output tokens")
    p.add_argument("--run", action="append", default=[], help="a trained run (repeatable)")
    p.add_argument("--no-random", action="store_true", help="only the --run models")
    p.add_argument(
        "--quantize",
        choices=QUANT_MODES,
        help="low-precision weights (models/quantize.py modes; default float32)",
    )
    p.add_argument("--repeats", type=int, default=3, help="interleaved timed rounds per cell")
    p.add_argument(
        "--method",
        choices=("beam", "diverse"),
        default="beam",
        help="beam search (beam 4) or diverse beam search (2 groups of 2 beams)",
    )
    p.add_argument(
        "--out",
        default="experiments/results/bench_shared_memory",
        help="writes OUT.json and OUT.md",
    )
    args = p.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    before = os.popen("uptime").read().strip()
    rows = []
    if not args.no_random:
        model = Transformer(BASE_CONFIG)
        params = model.init(jax.random.key(0))
        if args.quantize:
            params = quantize_params(params, mode=args.quantize)
        for batch in batches:
            src = jax.random.randint(
                jax.random.key(1), (batch, args.src_len), 4, BASE_CONFIG.vocab_size
            )
            row = {"model": "random transformer-base, forced length"}
            row |= cell(model, params, src, args.new_tokens, True, args.repeats, args.method)
            print(row, flush=True)
            rows.append(row)
    for run in args.run:
        from seqjax.app import run_dir

        model, params = run_dir.load_model(run)
        if args.quantize:
            params = quantize_params(params, mode=args.quantize)
        for batch in batches:
            src = test_sources(run, batch)
            max_len = min(model.config.max_len, 2 * src.shape[1] + 10)
            row = {"model": f"{run} ({model.config.family}), test sentences"}
            row |= cell(model, params, src, max_len, False, args.repeats, args.method)
            print(row, flush=True)
            rows.append(row)
    meta = {
        "beam_size": 4,
        "method": args.method,
        "quantize": args.quantize or "float32",
        "repeats": args.repeats,
        "uptime_before": before,
        "uptime_after": os.popen("uptime").read().strip(),
        "command": "python experiments/bench_shared_memory.py " + " ".join(argv or sys.argv[1:]),
    }
    lines = [
        "# Beam search: one memory per source (the step's expand) vs K repeated copies",
        "",
        f"{'Diverse beam search, 2 groups x 2' if args.method == 'diverse' else 'Beam 4'}, "
        f"{meta['quantize']}; median of {args.repeats} interleaved rounds of the two compiled programs. "
        f"Load before `{before}`, after `{meta['uptime_after']}`. Command: "
        f"`{meta['command']}`.",
        "",
        "| model | batch | mean length | shared ms | repeated ms | speed-up | "
        "first call shared / repeated s | same tokens |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    lines += [
        f"| {r['model']} | {r['batch']} | {r['mean_len']:.1f} | {r['ms']['shared']:.0f} | "
        f"{r['ms']['repeated']:.0f} | {r['speedup']:.2f}x | "
        f"{r['first_call_s']['shared']:.1f} / {r['first_call_s']['repeated']:.1f} | "
        f"{r['same_tokens']} |"
        for r in rows
    ]
    write_results(args.out, meta, rows, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
