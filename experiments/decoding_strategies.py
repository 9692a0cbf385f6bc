"""Greedy vs beam (sizes, length penalties) vs sampling vs contrastive on one trained model.

Writes ``decoding_strategies.{md,csv,png}`` under ``--out`` with, per strategy: test
BLEU and chrF (sacrebleu), the hypothesis/reference length ratio (large beams without a
length penalty shrink outputs) and distinct-1/2 (the share of unique uni/bigrams,
a diversity measure), plus decoding seconds.

    python experiments/decoding_strategies.py --checkpoint runs/default --limit 400
    python experiments/decoding_strategies.py --checkpoint runs/default \\
        --amateur runs/tiny   # adds contrastive decoding (amateur = a weaker model)
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import time
from pathlib import Path

from seqjax.app.translate import load
from seqjax.config import DecodeConfig
from seqjax.data import load_bundled
from seqjax.metrics import corpus_scores


def distinct_n(texts: list[str], n: int) -> float:
    """Unique n-grams / all n-grams over the whole output (whitespace tokens)."""
    grams = [tuple(t[i : i + n]) for t in (x.split() for x in texts) for i in range(len(t) - n + 1)]
    return len(set(grams)) / max(len(grams), 1)


def strategies(with_contrastive: bool) -> list[tuple[str, DecodeConfig]]:
    out = [("greedy", DecodeConfig(method="greedy"))]
    for k in (1, 2, 4, 8, 16):
        out.append((f"beam{k} no-LP", DecodeConfig(beam_size=k, alpha=0.0)))
        out.append((f"beam{k} len^1", DecodeConfig(beam_size=k, alpha=1.0, length_penalty="hf")))
    out.append(("beam4 GNMT 0.6", DecodeConfig(beam_size=4, alpha=0.6, length_penalty="gnmt")))
    out.append(("beam4 GNMT 1.0 +cov 0.2",
                DecodeConfig(beam_size=4, alpha=1.0, length_penalty="gnmt", coverage=0.2)))  # fmt: skip
    for t in (0.5, 1.0):
        out.append((f"sample T={t}", DecodeConfig(method="sample", temperature=t)))
    out.append(("sample top-k 10", DecodeConfig(method="sample", top_k=10)))
    out.append(("sample top-p 0.9", DecodeConfig(method="sample", top_p=0.9)))
    if with_contrastive:
        out.append(("contrastive greedy", DecodeConfig(method="contrastive", beam_size=1)))
        out.append(("contrastive beam4",
                    DecodeConfig(method="contrastive", beam_size=4, alpha=1.0, length_penalty="hf")))  # fmt: skip
    return out


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--checkpoint", required=True, help="run directory (seqjax train --out)")
    p.add_argument("--amateur", help="run directory of a weaker model, for contrastive decoding")
    p.add_argument("--split", default="test", choices=["valid", "test"])
    p.add_argument("--limit", type=int, default=0, help="first N sentences only (0 = all)")
    p.add_argument("--out", default="experiments/results", help="output folder")
    args = p.parse_args()

    tr = load(args.checkpoint)
    if args.amateur:
        tr = dataclasses.replace(tr, amateur=load(args.amateur))
    data = load_bundled("bible_en_fr", args.split)
    src, ref = data.src, data.tgt
    if args.limit:
        src, ref = src[: args.limit], ref[: args.limit]
    ref_words = sum(len(r.split()) for r in ref)
    rows = []
    for name, cfg in strategies(args.amateur is not None):
        t0 = time.monotonic()
        hyps = tr.translate(src, cfg)
        seconds = time.monotonic() - t0
        s = corpus_scores(hyps, ref)
        row = {
            "strategy": name,
            "bleu": round(s.bleu, 2),
            "chrf": round(s.chrf, 2),
            "len_ratio": round(sum(len(h.split()) for h in hyps) / max(ref_words, 1), 3),
            "distinct1": round(distinct_n(hyps, 1), 3),
            "distinct2": round(distinct_n(hyps, 2), 3),
            "seconds": round(seconds, 1),
        }
        rows.append(row)
        print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "decoding_strategies.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    head = "| " + " | ".join(rows[0]) + " |\n|" + "---|" * len(rows[0]) + "\n"
    body = "".join("| " + " | ".join(str(v) for v in r.values()) + " |\n" for r in rows)
    (out / "decoding_strategies.md").write_text(
        f"# Decoding strategies ({args.split}, {len(src)} sentences, {args.checkpoint})\n\n"
        + head
        + body
    )
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install -e '.[experiments]'): no plot")
        return
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for suffix, style in (("no-LP", "o-"), ("len^1", "s-")):
        sel = [
            r for r in rows if r["strategy"].startswith("beam") and r["strategy"].endswith(suffix)
        ]
        ks = [int(r["strategy"].split()[0][4:]) for r in sel]
        a.plot(ks, [r["bleu"] for r in sel], style, label=f"beam, {suffix}")
        b.plot(ks, [r["len_ratio"] for r in sel], style, label=f"beam, {suffix}")
    greedy = rows[0]
    a.axhline(greedy["bleu"], color="gray", ls="--", label="greedy")
    b.axhline(greedy["len_ratio"], color="gray", ls="--", label="greedy")
    for ax, label in ((a, "BLEU"), (b, "hypothesis / reference length")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("beam size")
        ax.set_ylabel(label)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "decoding_strategies.png", dpi=90)
    print(f"wrote {out}/decoding_strategies.{{md,csv,png}}")


if __name__ == "__main__":
    main()
