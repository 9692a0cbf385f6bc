"""CPU cost of one update per fine-tuning objective of experiments/exposure_bias.py.

Each objective's jitted step (the very one ``seqjax train`` builds: ``make_objective_step``;
sequential scheduled sampling with the dropout loss pass, as exposure_bias.py runs it)
trains the checkpoint's model on the same real batches of ``--rows`` sentences padded to
``--length`` tokens (64 x 32 = 2,048 target tokens, the base's batch size). Reported per
update: process CPU seconds (what the step costs, whatever else runs on the machine) and
wall seconds, medians of ``--repeats`` steps after one warm-up (compile) step, and the ratio
to teacher forcing. Multiplying the ratio by a quiet machine's teacher-forcing update time
sizes a plan (exposure_bias.py's standard mode).

    python experiments/bench_objectives.py --checkpoint runs/eb_rnn_base
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
from bench_mrt import batches_of
from results_io import write_results

from seqjax.app import run_dir
from seqjax.app.train import make_objective_step
from seqjax.config import TrainConfig
from seqjax.data import load_bundled
from seqjax.data.batching import tokenize_pairs
from seqjax.training import objectives
from seqjax.training.optimizer import make_optimizer
from seqjax.training.steps import init_train_state


def configs(checkpoint: str, samples: int) -> dict[str, TrainConfig]:
    ss = dict(objective="scheduled-sampling", ss_mode="sequential", ss_warmup=0, ss_k=100.0)
    return {
        "tf": TrainConfig(),
        "ss (sequential)": TrainConfig(**ss),
        f"mrt S={samples}": TrainConfig(objective="mrt", mrt_samples=samples),
        "distill": TrainConfig(objective="distill", teacher=checkpoint),
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--checkpoint", required=True, help="trained run directory")
    p.add_argument("--rows", type=int, default=64, help="sentences per batch")
    p.add_argument("--length", type=int, default=32, help="padded source/target length")
    p.add_argument("--samples", type=int, default=8, help="MRT candidates per source")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per objective (median)")
    p.add_argument(
        "--out", default="experiments/results/bench_objectives", help="writes OUT.json and OUT.md"
    )
    args = p.parse_args()

    model, params = run_dir.load_model(args.checkpoint)
    src_tok, tgt_tok = run_dir.read_tokenizers(args.checkpoint)
    pairs = tokenize_pairs(load_bundled("bible_en_fr", "train"), src_tok, tgt_tok)
    batches = batches_of(pairs, args.rows, args.length, args.repeats + 1)
    original = objectives.make_scheduled_sampling_step

    def with_forward_loss(*a, **kw):
        return original(*a, **{**kw, "loss_pass": "forward"})

    objectives.make_scheduled_sampling_step = with_forward_loss
    rows = []
    for name, cfg in configs(args.checkpoint, args.samples).items():
        opt = make_optimizer(cfg)
        step = make_objective_step(cfg, model, opt)
        state = init_train_state(jax.tree.map(lambda x: x.copy(), params), opt)
        key = jax.random.key(0)
        t0, c0 = time.perf_counter(), time.process_time()
        state, m = step(state, batches[0], key)
        jax.block_until_ready(m["loss"])
        first = (time.perf_counter() - t0, time.process_time() - c0)
        walls, cpus = [], []
        for b in batches[1:]:
            t0, c0 = time.perf_counter(), time.process_time()
            state, m = step(state, b, key)
            jax.block_until_ready(m["loss"])
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
        rows.append(
            {
                "objective": name,
                "cpu_s": round(statistics.median(cpus), 3),
                "wall_s": round(statistics.median(walls), 3),
                "first_call_wall_s": round(first[0], 1),
                "first_call_cpu_s": round(first[1], 1),
            }
        )
        print(rows[-1], flush=True)
    for r in rows:
        r["cpu_vs_tf"] = round(r["cpu_s"] / rows[0]["cpu_s"], 2)
    cols = list(rows[0])
    md = (
        f"# Update cost per objective ({args.checkpoint}, {args.rows} x {args.length} tokens)\n\n"
        "Medians of "
        f"{args.repeats} updates after one compile call; `cpu_s`: process CPU seconds "
        "(robust to load), `cpu_vs_tf`: ratio to teacher forcing.\n\n"
        "| " + " | ".join(cols) + " |\n|" + "---|" + "---:|" * (len(cols) - 1) + "\n"
        + "".join("| " + " | ".join(str(r[c]) for c in cols) + " |\n" for r in rows)
    )  # fmt: skip
    write_results(args.out, vars(args), rows, md)


if __name__ == "__main__":
    main()
