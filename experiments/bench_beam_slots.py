"""Beam search's cache reorder: copy only the rows that moved vs gather every row, side by side.

Beam search keeps each surviving beam in its slot (``beam_loop._stable_slots``), so at a
step only the slots of beams that died take a copy of another row. ``reorder_cache`` then
copies just those rows of the self-attention keys/values in place (rows of at least
``beam_loop.COPY_ROW_BYTES``) instead of gathering all ``B x K`` rows. This script compiles
the same beam search twice, once with that copy and once with every leaf gathered
(``COPY_ROW_BYTES`` set out of reach while tracing), on the random transformer-base of
``bench_phases.py`` (6+6 layers, d512, 8 heads, ffn 2048, vocab 8000; beam 4), and times
them interleaved after one warm-up call each. Regimes as in ``bench_phases.py``: ``forced``
(exactly ``--new-tokens`` tokens) and ``eos`` (EOS made likelier, rows end early). Both
programs give the same tokens (the table says so). It also counts how many rows move per
step on average (``moved``), from a run that records the parents.

    python experiments/bench_beam_slots.py --moved-on RUN --out experiments/results/bench_beam_slots
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_phases import BASE_CONFIG, decoder, eos_biased, interleaved_medians  # noqa: E402
from results_io import write_results  # noqa: E402

from seqjax.decoding import beam_loop  # noqa: E402
from seqjax.models.quantize import QUANT_MODES, quantize_params  # noqa: E402
from seqjax.models.transformer import Transformer  # noqa: E402

NEVER = 2**62  # COPY_ROW_BYTES that no row reaches: every leaf is gathered


def compiled(model: Transformer, params, src, max_len: int, forced: bool, row_bytes: int):
    """The beam search program traced with ``COPY_ROW_BYTES = row_bytes``, compiled."""
    saved = beam_loop.COPY_ROW_BYTES
    beam_loop.COPY_ROW_BYTES = row_bytes
    jax.clear_caches()  # inner jits would otherwise reuse a trace of the other setting
    try:
        fn = decoder(model, model.step, "beam", max_len, forced)
        return fn.lower(params, src).compile()
    finally:
        beam_loop.COPY_ROW_BYTES = saved


@contextlib.contextmanager
def recording_moved() -> Iterator[list[float]]:
    """Wrap ``beam_loop.reorder_cache`` so that every traced beam step reports the share of
    its B x K rows that take a copy (a host callback) into the yielded list."""
    counts: list[float] = []
    original = beam_loop.reorder_cache

    def recording(new, old, rows_N):
        moved = (rows_N != np.arange(rows_N.shape[0])).mean()
        jax.debug.callback(lambda m: counts.append(float(m)), moved)
        return original(new, old, rows_N)

    beam_loop.reorder_cache = recording
    jax.clear_caches()  # decoders traced before would not call the wrapper
    try:
        yield counts
    finally:
        beam_loop.reorder_cache = original


def moved_share(model: Transformer, params, src, max_len: int, forced: bool) -> float:
    """Mean share of the B x K rows that take a copy per step (a separate, untimed run)."""
    with recording_moved() as counts:
        fn = decoder(model, model.step, "beam", max_len, forced)
        jax.block_until_ready(fn(params, src))
    return float(np.mean(counts)) if counts else float("nan")


def moved_on_run(run: str, batch: int) -> dict:
    """``moved`` with a trained run: beam 4 (alpha 0.6) over the first ``batch`` sentences
    of the bundled test set, as ``seqjax translate`` would decode them."""
    from seqjax.app import run_dir
    from seqjax.data import load_bundled
    from seqjax.decoding import beam_search

    model, params = run_dir.load_model(run)
    src_tok, _ = run_dir.read_tokenizers(run)
    c = model.config
    texts = load_bundled("bible_en_fr", "test").src[:batch]
    ids = [x[: c.max_len - 1] + [c.eos_id] for x in src_tok.encode(texts)]
    src = np.full((len(ids), max(map(len, ids))), c.pad_id, np.int32)
    for i, x in enumerate(ids):
        src[i, : len(x)] = x
    max_len = min(c.max_len, 2 * src.shape[1] + 10)

    @jax.jit
    def run_beam(params, src_BxS):
        mask = src_BxS != c.pad_id
        cache = model.init_cache(params, model.encode(params, src_BxS, mask), mask, max_len)
        return beam_search(model.step, cache, params=params, beam_size=4, n_best=1,
                           max_len=max_len, alpha=0.6, bos_id=c.bos_id, eos_id=c.eos_id,
                           pad_id=c.pad_id)  # fmt: skip

    with recording_moved() as counts:
        out = run_beam(params, src)
        jax.block_until_ready(out.tokens)
    return {"run": run, "sentences": len(ids), "steps": len(counts),
            "moved": float(np.mean(counts)), "mean_len": float(np.mean(out.lengths))}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", default="1,16,64", help="comma-separated batch sizes")
    p.add_argument("--regimes", default="forced,eos", help="forced and/or eos")
    p.add_argument("--src-len", type=int, default=32, help="source tokens per row")
    p.add_argument("--new-tokens", type=int, default=64, help="max_len of every decode")
    p.add_argument("--eos-bias", type=float, default=0.7, help="added to EOS's output bias")
    p.add_argument(
        "--quantize",
        choices=QUANT_MODES,
        help="low-precision weights (models/quantize.py modes; default float32)",
    )
    p.add_argument("--repeats", type=int, default=3, help="interleaved timed rounds per cell")
    p.add_argument(
        "--moved-on",
        metavar="RUN",
        help="also report the share of moved rows with this trained run (beam 4 "
        "over the first --moved-batch test sentences of the bundled corpus)",
    )
    p.add_argument("--moved-batch", type=int, default=64, help="sentences for --moved-on")
    p.add_argument(
        "--out", default="experiments/results/bench_beam_slots", help="writes OUT.json and OUT.md"
    )
    args = p.parse_args(argv)
    trained = moved_on_run(args.moved_on, args.moved_batch) if args.moved_on else None
    if trained:
        print(trained, flush=True)

    cfg = BASE_CONFIG
    model = Transformer(cfg)
    base = model.init(jax.random.key(0))
    before = os.popen("uptime").read().strip()
    rows = []
    for regime in args.regimes.split(","):
        forced = regime == "forced"
        params = base
        if not forced:  # a bias that makes EOS likely after a few tokens
            params = eos_biased(params, cfg, args.eos_bias)
        if args.quantize:
            params = quantize_params(params, mode=args.quantize)
        for batch in (int(b) for b in args.batches.split(",")):
            src = jax.random.randint(jax.random.key(1), (batch, args.src_len), 4, cfg.vocab_size)
            fns, first, outs = {}, {}, {}
            for name, row_bytes in (("copy", beam_loop.COPY_ROW_BYTES), ("gather", NEVER)):
                t0 = time.perf_counter()
                fns[name] = compiled(model, params, src, args.new_tokens, forced, row_bytes)
                outs[name] = np.asarray(fns[name](params, src))
                first[name] = time.perf_counter() - t0
            med = interleaved_medians(fns, params, src, args.repeats)
            lengths = (outs["copy"][:, 0] != cfg.pad_id).sum(-1)
            row = {
                "regime": regime, "batch": batch,
                "ms": {k: v * 1e3 for k, v in med.items()},
                "speedup": med["gather"] / med["copy"],
                "tok_s": {k: batch * float(lengths.mean()) / v for k, v in med.items()},
                "first_call_s": first,
                "same_tokens": bool(np.array_equal(outs["copy"], outs["gather"])),
                "mean_len": float(lengths.mean()),
                "moved": moved_share(model, params, src, args.new_tokens, forced),
            }  # fmt: skip
            print(row, flush=True)
            rows.append(row)
    meta = {
        "model": "random transformer-base (6+6, d512, H8, ffn 2048, vocab 8000), beam 4",
        "quantize": args.quantize or "float32",
        "src_len": args.src_len,
        "max_len": args.new_tokens,
        "eos_bias": args.eos_bias,
        "repeats": args.repeats,
        "copy_row_bytes": beam_loop.COPY_ROW_BYTES,
        "trained_run": trained,
        "uptime_before": before,
        "uptime_after": os.popen("uptime").read().strip(),
        "command": "python experiments/bench_beam_slots.py " + " ".join(argv or sys.argv[1:]),
    }
    lines = [
        "# Beam cache reorder: copy the moved rows in place vs gather every row",
        "",
        f"{meta['model']}, {meta['quantize']}; sources of {args.src_len} tokens, max_len "
        f"{args.new_tokens}; `forced`: exactly max_len tokens, `eos`: EOS bias "
        f"+{args.eos_bias} (rows end early). Both with stable beam slots; median of "
        f"{args.repeats} interleaved rounds. `moved`: mean share of rows copied per step. "
        f"Load before `{before}`, after `{meta['uptime_after']}`. Command: `{meta['command']}`.",
        "",
        "| regime | batch | mean length | moved | copy ms | gather ms | speed-up | "
        "first call copy / gather s | same tokens |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    lines += [
        f"| {r['regime']} | {r['batch']} | {r['mean_len']:.1f} | {r['moved']:.0%} | "
        f"{r['ms']['copy']:.0f} | {r['ms']['gather']:.0f} | {r['speedup']:.2f}x | "
        f"{r['first_call_s']['copy']:.1f} / {r['first_call_s']['gather']:.1f} | "
        f"{r['same_tokens']} |"
        for r in rows
    ]
    if trained:
        lines += [
            "",
            f"With a trained model (`{trained['run']}`), beam 4, alpha 0.6, the first "
            f"{trained['sentences']} bundled test sentences in one batch: "
            f"**{trained['moved']:.0%}** of rows moved per step on average over "
            f"{trained['steps']} steps (mean output length {trained['mean_len']:.1f}).",
        ]
    write_results(args.out, meta, rows, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
