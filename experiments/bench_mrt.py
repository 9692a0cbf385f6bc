"""Throughput of the MRT step (S sampled candidates) against the teacher-forced step.

Both steps train the same model on the same real batches of the bundled corpus
(``--rows`` sentences padded to one length bucket). Sentences/s counts source
sentences per update, so the ratio says how much slower an MRT epoch is than a
teacher-forcing epoch. The two steps are timed alternately in every repeat (the
machine is shared: only ratios from one run are meaningful) and medians reported.

With ``--checkpoint`` (default ``runs/default`` when it exists) the trained model is
used, so sampled candidates end at EOS as they do in a real fine-tune; otherwise a
random model of ``--preset`` samples to the full length (the worst case).

    python experiments/bench_mrt.py --samples 8 --rows 16,32 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from results_io import write_results

from seqjax.app import run_dir
from seqjax.config import TrainConfig, model_preset
from seqjax.data import load_bundled, train_tokenizers
from seqjax.data.batching import TokenizedPairs, make_batch, tokenize_pairs
from seqjax.models import build_model
from seqjax.training.objectives import make_mrt_step
from seqjax.training.optimizer import make_optimizer
from seqjax.training.steps import init_train_state, make_train_step


def load_setup(args: argparse.Namespace):
    """``(model, params, tokenized training pairs)`` from a run directory or a random model."""
    data = load_bundled("bible_en_fr", "train")
    if args.checkpoint and Path(args.checkpoint).is_dir():
        model, params = run_dir.load_model(args.checkpoint)
        src_tok, tgt_tok = run_dir.read_tokenizers(args.checkpoint)
        origin = args.checkpoint
    else:
        cfg = model_preset(args.preset)
        with tempfile.TemporaryDirectory() as tmp:
            src_tok, tgt_tok = train_tokenizers(data.src, data.tgt, cfg.vocab_size, tmp)
        model = build_model(cfg)
        params = model.init(jax.random.key(0))
        origin = f"random {args.preset}"
    return model, params, tokenize_pairs(data, src_tok, tgt_tok), origin


def batches_of(pairs: TokenizedPairs, rows: int, length: int, n: int) -> list[dict]:
    """``n`` batches of ``rows`` pairs whose source and target fit ``length`` tokens."""
    fit = [
        i
        for i in range(len(pairs))
        if len(pairs.src[i]) + 1 <= length and len(pairs.tgt[i]) + 1 <= length
    ]
    rng = np.random.default_rng(0)
    picks = rng.choice(fit, size=(n, rows), replace=False)
    return [
        {k: jnp.asarray(v) for k, v in make_batch(pairs, list(p), length, rows).items()}
        for p in picks
    ]


def time_steps(step, state, batches, key) -> tuple[float, object]:
    """Seconds for one pass over ``batches`` (results waited for), and the new state."""
    t0 = time.perf_counter()
    for b in batches:
        state, metrics = step(state, b, key)
    jax.block_until_ready(metrics)
    return time.perf_counter() - t0, state


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--checkpoint", default="runs/default", help="trained run directory")
    p.add_argument("--preset", default="small", help="model preset when no checkpoint")
    p.add_argument("--samples", type=int, default=8, help="MRT candidates per source (S)")
    p.add_argument("--rows", default="16,32", help="sentences per batch, comma-separated")
    p.add_argument("--length", type=int, default=48, help="padded source/target length")
    p.add_argument("--steps", type=int, default=4, help="steps per timed pass")
    p.add_argument("--repeats", type=int, default=5, help="interleaved timed passes (median)")
    p.add_argument("--out", default="experiments/results", help="output folder")
    args = p.parse_args()

    model, params, pairs, origin = load_setup(args)
    mc = model.config
    opt = make_optimizer(TrainConfig())
    ids = dict(pad_id=mc.pad_id, bos_id=mc.bos_id, eos_id=mc.eos_id)
    steps = {
        "teacher forcing": make_train_step(model, opt, label_smoothing=0.1, pad_id=mc.pad_id),
        f"MRT S={args.samples}": make_mrt_step(model, opt, num_samples=args.samples, **ids),
    }
    key = jax.random.key(0)
    rows_out = []
    for rows in [int(r) for r in args.rows.split(",")]:
        batches = batches_of(pairs, rows, args.length, args.steps)
        states, compile_s, times = {}, {}, {name: [] for name in steps}
        for name, step in steps.items():
            t0 = time.perf_counter()
            states[name] = init_train_state(jax.tree.map(jnp.copy, params), opt)
            _, states[name] = time_steps(step, states[name], batches[:1], key)
            compile_s[name] = time.perf_counter() - t0
        for _ in range(args.repeats):
            for name, step in steps.items():  # interleaved: both see the same load
                sec, states[name] = time_steps(step, states[name], batches, key)
                times[name].append(sec)
        tf_rate = None
        for name in steps:
            rate = rows * args.steps / statistics.median(times[name])
            tf_rate = tf_rate or rate
            row = {
                "step": name,
                "rows": rows,
                "length": args.length,
                "sentences_per_s": round(rate, 2),
                "padded_target_tokens_per_s": round(rate * args.length, 1),
                "relative_to_tf": round(rate / tf_rate, 4),
                "first_call_s": round(compile_s[name], 2),
            }
            rows_out.append(row)
            print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "model": origin,
        "parameters": int(sum(x.size for x in jax.tree.leaves(params))),
        "samples": args.samples,
        "repeats": args.repeats,
        "steps_per_pass": args.steps,
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0]),
        "cpus": os.cpu_count(),
        "load_avg": os.getloadavg(),
        "jax": jax.__version__,
        "platform": platform.platform(),
    }
    head = "| step | rows | sentences/s | vs TF | first call s |\n|---|---:|---:|---:|---:|\n"
    body = "".join(
        f"| {r['step']} | {r['rows']} | {r['sentences_per_s']} | {r['relative_to_tf']} "
        f"| {r['first_call_s']} |\n"
        for r in rows_out
    )
    markdown = (
        f"# MRT step vs teacher-forced step ({meta['model']}, {meta['device']}, "
        f"{meta['cpus']} CPUs, load {meta['load_avg'][0]:.1f})\n\n"
        f"Padded length {args.length}; medians of {args.repeats} interleaved passes of "
        f"{args.steps} steps.\n\n" + head + body
    )
    write_results(out / "bench_mrt", meta, rows_out, markdown)


if __name__ == "__main__":
    main()
