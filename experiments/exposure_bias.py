"""Exposure bias: teacher forcing vs scheduled sampling vs MRT vs self-distillation.

One teacher-forced base model (trained here, or ``--base RUN_DIR``) is fine-tuned for
the same number of updates, with the same batches, learning rate and seed, by each
objective:

- ``tf``: more teacher forcing (the control: same extra updates, no remedy);
- ``ss-{linear,exponential,inverse_sigmoid}``: parallel two-pass scheduled sampling,
  each schedule set so the gold-token probability falls from 1 to ``--ss-end`` (0.5)
  at the last update; ``ss-inverse_sigmoid-seq``: the exact sequential scan;
- ``mrt``: minimum risk training, S sampled candidates + the reference, sentence BLEU
  risk (``--mrt-steps`` updates on batches of ``--mrt-batch-tokens``: an MRT update
  costs about S+1 teacher-forced passes plus sampling);
- ``distill``: self-distillation from the base model (top-p 0.9 samples, KL at T=2).

Each model (and the base) is then evaluated on the test set with greedy decoding,
where exposure bias bites: sacrebleu BLEU and chrF, BLEU per reference-length bucket
(words), and token accuracy two ways over the same reference positions (EOS
included): *teacher-forced* (argmax given the gold prefix) and *free-running* (the
greedy output's token at that position equals the reference token). The gap between
the two is the share of tokens lost because the model conditions on its own prefix.
Same-position matching also counts a single inserted or dropped token as an error at
every later position, so ``fr_lcs`` gives the alignment-robust view: the share of
reference tokens in the longest common subsequence of output and reference.

Writes ``exposure_bias{,_quick}.{md,csv,png}`` to ``--out``. Runs live in ``--work``
and a finished variant is not retrained, so an interrupted run resumes.

    python experiments/exposure_bias.py --quick                      # <= 20 min, 2 CPU cores
    python experiments/exposure_bias.py --quick --base runs/default  # reuse a trained model
    python experiments/exposure_bias.py                              # full size (for a GPU)
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from seqjax.app import run_dir
from seqjax.app.train import train
from seqjax.app.translate import output_max_len
from seqjax.config import DecodeConfig, TrainConfig, model_preset
from seqjax.data import load_bundled
from seqjax.data.batching import TokenizedPairs, make_batch
from seqjax.decoding import greedy
from seqjax.metrics import corpus_scores

# Reference-length buckets in words: (label, lowest, highest).
BUCKETS = (("1-15", 1, 15), ("16-30", 16, 30), ("31-45", 31, 45), ("46+", 46, 10**9))


@dataclasses.dataclass(frozen=True)
class Plan:
    """Sizes of one experiment; ``--quick`` fits 20 minutes on two CPU cores."""

    preset: str
    base_steps: int
    ft_steps: int
    mrt_steps: int
    batch_tokens: int
    mrt_batch_tokens: int
    mrt_samples: int
    ft_lr: float
    eval_sentences: int  # 0 = the whole test set


QUICK = Plan("small", 1000, 150, 60, 2048, 512, 8, 5e-4, 500)
FULL = Plan("small", 20000, 2000, 1000, 4096, 1024, 8, 3e-4, 0)


def inverse_sigmoid_k(steps: int, eps_end: float) -> float:
    """``k`` with ``k / (k + exp(steps / k)) = eps_end`` (bisection; eps falls with k)."""
    lo, hi = 1.0, 1e7
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        eps = 1.0 / (1.0 + math.exp(min(steps / mid, 700.0)) / mid)
        lo, hi = (mid, hi) if eps < eps_end else (lo, mid)
    return math.sqrt(lo * hi)


def variants(plan: Plan, base: str, ss_end: float) -> dict[str, dict[str, Any]]:
    """TrainConfig overrides per fine-tuned variant (all start from ``base``)."""
    n = plan.ft_steps
    ss = dict(objective="scheduled-sampling", ss_warmup=0, ss_mode="parallel")
    return {
        "tf": {},
        "ss-linear": {**ss, "ss_schedule": "linear", "ss_k": 1.0, "ss_c": (1 - ss_end) / n},
        "ss-exponential": {**ss, "ss_schedule": "exponential", "ss_k": ss_end ** (1 / n)},
        "ss-inverse_sigmoid": {
            **ss,
            "ss_schedule": "inverse_sigmoid",
            "ss_k": inverse_sigmoid_k(n, ss_end),
        },
        "ss-inverse_sigmoid-seq": {
            **ss,
            "ss_mode": "sequential",
            "ss_schedule": "inverse_sigmoid",
            "ss_k": inverse_sigmoid_k(n, ss_end),
        },
        "mrt": {
            "objective": "mrt",
            "mrt_samples": plan.mrt_samples,
            "batch_tokens": plan.mrt_batch_tokens,
            "total_steps": plan.mrt_steps,
        },
        "distill": {"objective": "distill", "teacher": base},
    }


def train_variant(name: str, run: Path, overrides: dict[str, Any], plan: Plan, base: str) -> float:
    """Fine-tune ``base`` into ``run``; returns the training seconds."""
    values: dict[str, Any] = dict(
        preset=plan.preset,
        init_from=base,
        total_steps=plan.ft_steps,
        max_minutes=0,
        learning_rate=plan.ft_lr,
        warmup_steps=20,
        schedule="cosine",
        batch_tokens=plan.batch_tokens,
        eval_every=10**9,  # validated once, at the end
        save_every=50,
        valid_bleu_sentences=0,
    )
    cfg = TrainConfig(**{**values, **overrides})
    t0 = time.monotonic()
    print(f"[{name}] fine-tuning {cfg.total_steps} steps from {base}", flush=True)
    train(model_preset(plan.preset), cfg, run, log=lambda m: print(f"[{name}] {m}", flush=True))
    return time.monotonic() - t0


@functools.partial(jax.jit, static_argnames=("model", "max_len"))
def _tf_and_greedy(model: Any, params: Any, batch: dict, max_len: int):
    """Teacher-forced argmax ``[B, T]`` and greedy output ``[B, max_len]`` of one batch."""
    mc = model.config
    src = batch["src"]
    mask = src != mc.pad_id
    tf_pred = jnp.argmax(model.forward(params, src, mask, batch["tgt_in"]), axis=-1)
    cache = model.init_cache(params, model.encode(params, src, mask), mask, max_len)
    ids = dict(bos_id=mc.bos_id, eos_id=mc.eos_id, pad_id=mc.pad_id)
    out = greedy(model.step_fn(params), cache, max_len=max_len, **ids)
    return tf_pred, out.tokens[:, 0]


def lcs_length(a: list[int], b: list[int]) -> int:
    """Length of the longest common subsequence of two id lists (O(len(a) * len(b)))."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def evaluate(run: Path, src: list[str], ref: list[str], rows: int = 64) -> dict[str, Any]:
    """Greedy BLEU/chrF (overall and per length bucket) and TF / free-running accuracy."""
    model, params = run_dir.load_model(run, which="latest")
    src_tok, tgt_tok = run_dir.read_tokenizers(run)
    mc = model.config
    cap = mc.max_len - 1
    pairs = TokenizedPairs(
        [x[:cap] for x in src_tok.encode(src)], [y[:cap] for y in tgt_tok.encode(ref)]
    )
    order = sorted(range(len(src)), key=lambda i: -max(len(pairs.src[i]), len(pairs.tgt[i])))
    hyps = [""] * len(src)
    tf_hits = fr_hits = lcs_hits = total = 0
    for start in range(0, len(order), rows):
        chunk = order[start : start + rows]
        need = max(max(len(pairs.src[i]), len(pairs.tgt[i])) for i in chunk) + 1
        length = min(16 * math.ceil(need / 16), mc.max_len)
        batch = make_batch(pairs, chunk, length, rows)
        max_len = output_max_len(DecodeConfig(), length, mc.max_len)
        tf_pred, fr = jax.device_get(
            _tf_and_greedy(model, params, {k: jnp.asarray(v) for k, v in batch.items()}, max_len)
        )
        gold = batch["tgt_out"]
        real = gold != mc.pad_id
        fr = np.pad(fr, ((0, 0), (0, max(0, length - fr.shape[1]))), constant_values=-1)
        tf_hits += int(np.sum((tf_pred == gold) & real))
        fr_hits += int(np.sum((fr[:, :length] == gold) & real))
        total += int(np.sum(real))
        for r in range(len(chunk)):
            lcs_hits += lcs_length(fr[r][fr[r] > 0].tolist(), gold[r][real[r]].tolist())
        for r, text in enumerate(tgt_tok.decode(np.maximum(fr, 0)[: len(chunk)])):
            hyps[chunk[r]] = text
    s = corpus_scores(hyps, ref)
    out: dict[str, Any] = {"bleu": round(s.bleu, 2), "chrf": round(s.chrf, 2)}
    words = [len(r.split()) for r in ref]
    for label, lo, hi in BUCKETS:
        sel = [i for i, w in enumerate(words) if lo <= w <= hi]
        out[f"bleu_{label}"] = (
            round(corpus_scores([hyps[i] for i in sel], [ref[i] for i in sel]).bleu, 2)
            if sel
            else None
        )
    out["tf_acc"] = round(100 * tf_hits / total, 2)
    out["fr_acc"] = round(100 * fr_hits / total, 2)
    out["gap"] = round(out["tf_acc"] - out["fr_acc"], 2)
    out["fr_lcs"] = round(100 * lcs_hits / total, 2)
    out["len_ratio"] = round(sum(len(h.split()) for h in hyps) / max(sum(words), 1), 3)
    return out


def train_base(work: Path, plan: Plan) -> str:
    run = work / "base"
    cfg = TrainConfig(
        preset=plan.preset,
        total_steps=plan.base_steps,
        max_minutes=0,
        batch_tokens=plan.batch_tokens,
        eval_every=10**9,
        valid_bleu_sentences=0,
    )
    if not (run / "base_done").exists():
        print(f"[base] teacher forcing, {plan.base_steps} steps", flush=True)
        train(model_preset(plan.preset), cfg, run, log=lambda m: print(f"[base] {m}", flush=True))
        (run / "base_done").write_text("")
    return str(run)


def write_outputs(rows: list[dict[str, Any]], out: Path, stem: str, title: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / f"{stem}.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    cols = list(rows[0])
    head = "| " + " | ".join(cols) + " |\n|" + "---|" + "---:|" * (len(cols) - 1) + "\n"
    body = "".join("| " + " | ".join(str(r[c]) for c in cols) + " |\n" for r in rows)
    note = (
        "\nGreedy decoding on the test set. `tf_acc`: teacher-forced token accuracy; "
        "`fr_acc`: free-running (greedy output) token accuracy on the same reference "
        "positions; `gap` = tf_acc - fr_acc (points); `fr_lcs`: share of reference tokens "
        "in the longest common subsequence with the greedy output. `bleu_a-b`: corpus BLEU of the "
        "sentences whose reference has a..b words. `train_s`: fine-tuning seconds.\n"
    )
    (out / f"{stem}.md").write_text(f"# {title}\n\n" + head + body + note)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install -e '.[experiments]'): no plot")
        return
    names = [r["method"] for r in rows]
    x = np.arange(len(names))
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2))
    width = 0.8 / len(BUCKETS)
    for j, (label, _, _) in enumerate(BUCKETS):
        vals = [r[f"bleu_{label}"] or 0.0 for r in rows]
        a.bar(x + (j - (len(BUCKETS) - 1) / 2) * width, vals, width, label=f"{label} words")
    a.set_ylabel("test BLEU (greedy)")
    a.set_title("BLEU by reference length")
    b.bar(x - 0.27, [r["tf_acc"] for r in rows], 0.27, label="teacher-forced")
    b.bar(x, [r["fr_lcs"] for r in rows], 0.27, label="free-running, LCS-aligned")
    b.bar(x + 0.27, [r["fr_acc"] for r in rows], 0.27, label="free-running, same position")
    top = max(r["tf_acc"] for r in rows)
    b.set_ylim(0, top * 1.3)  # room for the legend above the bars
    best = max(r[f"bleu_{label}"] or 0.0 for r in rows for label, _, _ in BUCKETS)
    a.set_ylim(0, best * 1.3)
    b.set_ylabel("token accuracy (%)")
    b.set_title("Teacher-forced vs free-running accuracy")
    for ax in (a, b):
        ax.set_xticks(x, names, rotation=35, ha="right", fontsize=8)
        ax.legend(fontsize=8, ncol=2, loc="upper center")
    fig.tight_layout()
    fig.savefig(out / f"{stem}.png", dpi=80)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="small plan: <= 20 min on 2 CPU cores")
    p.add_argument("--base", help="teacher-forced run directory to start from (default: train)")
    p.add_argument("--work", help="run directories (default runs/exposure_bias[_quick])")
    p.add_argument("--out", default="experiments/results", help="where tables and plot go")
    p.add_argument("--ss-end", type=float, default=0.5, help="gold-token prob. at the last step")
    p.add_argument(
        "--only", help="comma-separated subset of variants (tf, ss-linear, ..., mrt, distill)"
    )
    for field in ("base_steps", "ft_steps", "mrt_steps", "eval_sentences"):
        p.add_argument(
            "--" + field.replace("_", "-"), type=int, help=f"override the plan's {field}"
        )
    args = p.parse_args()
    plan = QUICK if args.quick else FULL
    plan = dataclasses.replace(
        plan,
        **{
            f: getattr(args, f)
            for f in ("base_steps", "ft_steps", "mrt_steps", "eval_sentences")
            if getattr(args, f) is not None
        },
    )
    stem = "exposure_bias_quick" if args.quick else "exposure_bias"
    work = Path(args.work or f"runs/{stem}")
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()

    base = args.base or train_base(work, plan)
    test = load_bundled("bible_en_fr", "test")
    n = plan.eval_sentences or len(test.src)
    src, ref = test.src[:n], test.tgt[:n]
    todo = variants(plan, base, args.ss_end)
    if args.only:
        unknown = set(args.only.split(",")) - set(todo)
        if unknown:
            sys.exit(f"--only: unknown variant(s) {', '.join(sorted(unknown))}")
        todo = {k: v for k, v in todo.items() if k in args.only.split(",")}

    rows = []
    for name, run in [("base (TF)", Path(base))] + [(k, work / k) for k in todo]:
        done = run / "exposure_bias_result.json"
        row = json.loads(done.read_text()) if done.exists() else {}
        if "fr_lcs" not in row or row.get("sentences") != n:  # missing or from an older script
            if "train_s" in row:  # trained already: evaluate again only
                train_s = row["train_s"]
            elif name == "base (TF)":
                train_s = 0.0
            else:
                train_s = train_variant(name, run, todo[name], plan, base)
            t0 = time.monotonic()
            row = {"method": name, **evaluate(run, src, ref), "train_s": round(train_s)}
            row["sentences"] = n
            print(f"[{name}] evaluated in {time.monotonic() - t0:.0f}s: {row}", flush=True)
            done.write_text(json.dumps(row))
        rows.append(row)
        write_outputs(
            rows,
            Path(args.out),
            stem,
            f"Exposure bias ({'quick' if args.quick else 'full'}: base {plan.base_steps} TF "
            f"steps, then {plan.ft_steps} fine-tuning steps each, MRT {plan.mrt_steps}; "
            f"test, {n} sentences)",
        )
    print(f"done in {(time.monotonic() - t_start) / 60:.1f} min; wrote {args.out}/{stem}.*")


if __name__ == "__main__":
    main()
