"""Greedy vs beam (sizes 1-64, with and without length normalisation) vs sampling vs contrastive.

On one trained model (the converged base of experiments/exposure_bias.py), per strategy:
test BLEU and chrF (sacrebleu) with the **paired bootstrap against greedy** (sacrebleu's
``--paired-bs``, 1,000 resamples: the difference, its 95% CI and the p-value; see
experiments/significance.py), the hypothesis/reference length ratio (large beams without
length normalisation shrink outputs: the beam-search curse), the share of **empty** outputs
and of **truncated** ones (as long as the length cap ``max_len_a * source + max_len_b`` of
their batch: no EOS; counted on the re-encoded hypothesis, so approximate),
distinct-1/2 (unique uni/bigrams over the output) and decoding seconds.

"len-norm" is ``length_penalty="hf", alpha=1``: the beam ranks finished hypotheses by
log-probability per token; "no-LP" ranks by the raw sum (alpha 0).

Contrastive decoding (Li et al. 2023) needs a genuinely smaller *amateur* trained on the
same data with the same tokenizer: ``--train-amateur`` trains preset ``rnn_tiny`` on the
expert's prepared data (``seqjax train --preset rnn_tiny --data EXPERT/data``), once.

    python experiments/decoding_strategies.py --checkpoint runs/eb_rnn_base \\
        --train-amateur runs/eb_rnn_tiny
    python experiments/decoding_strategies.py --checkpoint runs/default --limit 200 --max-beam 16
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from significance import paired_bootstrap  # noqa: E402

from seqjax.app.translate import load, output_max_len  # noqa: E402
from seqjax.config import DecodeConfig  # noqa: E402
from seqjax.data import load_bundled  # noqa: E402
from seqjax.metrics import corpus_scores  # noqa: E402

BEAMS = (1, 2, 4, 8, 16, 32, 64)


def distinct_n(texts: list[str], n: int) -> float:
    """Unique n-grams / all n-grams over the whole output (whitespace tokens)."""
    grams = [tuple(t[i : i + n]) for t in (x.split() for x in texts) for i in range(len(t) - n + 1)]
    return len(set(grams)) / max(len(grams), 1)


def strategies(max_beam: int, with_contrastive: bool) -> list[tuple[str, DecodeConfig]]:
    out = [("greedy", DecodeConfig(method="greedy"))]
    for k in (b for b in BEAMS if b <= max_beam):
        out.append((f"beam{k} no-LP", DecodeConfig(beam_size=k, alpha=0.0)))
        out.append((f"beam{k} len-norm", DecodeConfig(beam_size=k, alpha=1.0, length_penalty="hf")))
    out.append(("beam4 GNMT 0.6", DecodeConfig(beam_size=4, alpha=0.6, length_penalty="gnmt")))
    out.append(("sample T=0.5", DecodeConfig(method="sample", temperature=0.5)))
    out.append(("sample top-p 0.9", DecodeConfig(method="sample", top_p=0.9)))
    if with_contrastive:
        out.append(("contrastive greedy", DecodeConfig(method="contrastive", beam_size=1)))
        out.append(("contrastive beam4 len-norm",
                    DecodeConfig(method="contrastive", beam_size=4, alpha=1.0, length_penalty="hf")))  # fmt: skip
    return out


def length_caps(tr, src: list[str], cfg: DecodeConfig) -> list[int]:
    """The output length cap each sentence decodes under (Translator's batching, replayed)."""
    ids = tr.src_tokenizer.encode(list(src))
    cap = tr.max_source_tokens
    ids = [x[:cap] for x in ids]
    todo = sorted(
        (i for i, x in enumerate(ids) if x and src[i].strip()), key=lambda i: -len(ids[i])
    )
    caps = [0] * len(src)
    for start in range(0, len(todo), cfg.batch_size):
        chunk = todo[start : start + cfg.batch_size]
        longest = max(len(ids[i]) for i in chunk)
        width = min(b for b in tr.buckets if b >= longest)
        for i in chunk:
            caps[i] = output_max_len(cfg, width, tr.config.max_len)
    return caps


def train_amateur(expert: str, out: str) -> str:
    """``seqjax train --preset rnn_tiny --data EXPERT/data --out OUT`` (default steps), once."""
    if not (Path(out) / "best").exists():
        cmd = ["seqjax", "train", "--preset", "rnn_tiny", "--data", f"{expert}/data", "--out", out]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--checkpoint", required=True, help="run directory (seqjax train --out)")
    p.add_argument("--amateur", help="run directory of a smaller model, for contrastive decoding")
    p.add_argument("--train-amateur", metavar="DIR", help="train rnn_tiny into DIR as amateur")
    p.add_argument(
        "--split", default="test", choices=["valid", "test"], help="bundled split to decode"
    )
    p.add_argument("--limit", type=int, default=0, help="first N sentences only (0 = all)")
    p.add_argument("--max-beam", type=int, default=64, help="largest beam size (default 64)")
    p.add_argument("--out", default="experiments/results", help="output folder")
    p.add_argument("--work", help="where hypotheses are kept (resume); default CHECKPOINT/..")
    args = p.parse_args()

    amateur = args.amateur or (
        train_amateur(args.checkpoint, args.train_amateur) if args.train_amateur else None
    )
    tr = load(args.checkpoint)
    if amateur:
        tr = dataclasses.replace(tr, amateur=load(amateur))
    data = load_bundled("bible_en_fr", args.split)
    src, ref = data.src, data.tgt
    if args.limit:
        src, ref = src[: args.limit], ref[: args.limit]
    work = Path(args.work or f"runs/decoding_strategies_{args.split}_{len(src)}")
    work.mkdir(parents=True, exist_ok=True)
    ref_words = sum(len(r.split()) for r in ref)
    rows, greedy_hyps = [], None
    for name, cfg in strategies(args.max_beam, amateur is not None):
        done = work / (name.replace(" ", "_") + ".json")
        if done.exists():
            saved = json.loads(done.read_text())
            hyps, seconds = saved["hyps"], saved["seconds"]
        else:
            t0 = time.monotonic()
            hyps = tr.translate(src, cfg)
            seconds = time.monotonic() - t0
            done.write_text(json.dumps({"hyps": hyps, "seconds": seconds}))
        greedy_hyps = greedy_hyps or hyps
        caps = length_caps(tr, src, cfg)
        lengths = [len(x) for x in tr.tgt_tokenizer.encode(hyps)]
        s = corpus_scores(hyps, ref)
        bs = paired_bootstrap(hyps, greedy_hyps, ref, n_samples=1000)
        row = {"strategy": name, "bleu": round(s.bleu, 2), "chrf": round(s.chrf, 2)}
        for m in ("bleu", "chrf"):
            row[f"d_{m}"] = round(bs[m]["delta"], 2)
            row[f"d_{m}_ci"] = f"[{bs[m]['delta_lo']:+.2f}, {bs[m]['delta_hi']:+.2f}]"
            # sacrebleu gives identical outputs p = 1/(n+1); say "identical" instead
            row[f"p_{m}"] = "identical" if hyps == greedy_hyps else round(bs[m]["p"], 4)
        row.update(
            len_ratio=round(sum(len(h.split()) for h in hyps) / max(ref_words, 1), 3),
            empty_pct=round(100 * sum(not h.strip() for h in hyps) / len(hyps), 2),
            trunc_pct=round(
                100 * sum(n >= c > 0 for n, c in zip(lengths, caps, strict=True)) / len(hyps), 2
            ),
            distinct1=round(distinct_n(hyps, 1), 3),
            distinct2=round(distinct_n(hyps, 2), 3),
            seconds=round(seconds, 1),
        )
        rows.append(row)
        print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
        write(rows, Path(args.out), args, len(src), amateur)


def write(rows: list[dict], out: Path, args: argparse.Namespace, n: int, amateur) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "decoding_strategies.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    head = "| " + " | ".join(rows[0]) + " |\n|" + "---|" + "---:|" * (len(rows[0]) - 1) + "\n"
    body = "".join("| " + " | ".join(str(v) for v in r.values()) + " |\n" for r in rows)
    (out / "decoding_strategies.md").write_text(
        f"# Decoding strategies ({args.split}, {n} sentences, {args.checkpoint})\n\n"
        f"Command: `python experiments/decoding_strategies.py {' '.join(sys.argv[1:])}`\n\n"
        f"Amateur (contrastive): {amateur or 'none'}. `d_*`: minus greedy, sacrebleu paired "
        "bootstrap (1,000 resamples), 95% CI and p-value. `trunc_pct`: outputs as long as "
        "their length cap (no EOS), counted on re-encoded text.\n\n" + head + body
    )
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install -e '.[experiments]'): no plot")
        return
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for suffix, style in (("no-LP", "o-"), ("len-norm", "s-")):
        sel = [
            r for r in rows if r["strategy"].startswith("beam") and r["strategy"].endswith(suffix)
        ]
        if not sel:
            continue
        ks = [int(r["strategy"].split()[0][4:]) for r in sel]
        lo = [r["d_bleu"] - float(r["d_bleu_ci"].strip("[]").split(",")[0]) for r in sel]
        hi = [float(r["d_bleu_ci"].strip("[]").split(",")[1]) - r["d_bleu"] for r in sel]
        a.errorbar(ks, [r["d_bleu"] for r in sel], yerr=[lo, hi], fmt=style, capsize=3,
                   label=f"beam, {suffix}")  # fmt: skip
        b.plot(ks, [r["len_ratio"] for r in sel], style, label=f"beam, {suffix}")
    a.axhline(0, color="gray", ls="--", label="greedy")
    b.axhline(rows[0]["len_ratio"], color="gray", ls="--", label="greedy")
    for ax, label in ((a, "BLEU - greedy (95% CI)"), (b, "hypothesis / reference length")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("beam size")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "decoding_strategies.png", dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
