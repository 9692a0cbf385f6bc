"""What low-precision weights cost in translation quality: test BLEU/chrF of trained runs
decoded in float32, ``--quantize int8``, ``--quantize w8a8`` and ``--quantize bf16``, each
against float32 with sacrebleu's paired bootstrap (``significance.paired_bootstrap``, 1,000
resamples).

Issue 19's goal is a BLEU loss <= 0.3. Decoding is the run's default (beam 4) on the split of
the corpus it was trained on; every mode decodes the same sentences with the same settings.

    python experiments/quantize_bleu.py --run runs/default --run runs/transformer \\
        --out experiments/results/quantize_bleu
    python experiments/quantize_bleu.py --run runs/transformer --modes bf16 --out /tmp/bf16
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from results_io import write_results  # noqa: E402
from significance import paired_bootstrap  # noqa: E402

from seqjax.app import run_dir  # noqa: E402
from seqjax.app.evaluate import score_translations  # noqa: E402
from seqjax.app.translate import load  # noqa: E402

MODES = ("float32", "int8", "w8a8", "bf16")


def one_run(run: str, split: str, samples: int, modes: tuple[str, ...] = MODES) -> list[dict]:
    """Rows of one run: a row per mode (float32 first), the others against float32."""
    _, data = run_dir.evaluation_split(run, split)
    hyps, rows = {}, []
    for mode in ("float32", *(m for m in modes if m != "float32")):
        translator = load(run, quantize=None if mode == "float32" else mode)
        cfg = translator.decode_config
        out = Path(run) / f"quantize_bleu_{split}_{mode}.txt"
        t0 = time.perf_counter()
        scores, _ = score_translations(translator, data.src, data.tgt, cfg, output=out)
        seconds = time.perf_counter() - t0
        hyps[mode] = out.read_text(encoding="utf-8").split("\n")[: len(data.src)]
        row = {"run": run, "mode": mode, "bleu": scores.bleu, "chrf": scores.chrf}
        row |= {"decode_s": round(seconds, 1), "sentences": len(data.src)}
        if mode != "float32":
            bs = paired_bootstrap(hyps[mode], hyps["float32"], data.tgt, n_samples=samples)
            for metric in ("bleu", "chrf"):
                r = bs[metric]
                row[f"{metric}_delta"] = r["delta"]
                row[f"{metric}_ci"] = [r["delta_lo"], r["delta_hi"]]
                row[f"{metric}_p"] = r["p"]
            same = sum(a == b for a, b in zip(hyps[mode], hyps["float32"], strict=True))
            row["identical_lines"] = same / len(data.src)
        rows.append(row)
        print(row, flush=True)
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "# Low-precision weights: test BLEU against float32",
        "",
        f"Split {meta['split']}, the run's decoding settings; paired bootstrap against float32 "
        f"({meta['samples']} resamples, sacrebleu's). Command: `{meta['command']}`.",
        "",
        "| run | mode | BLEU | chrF | BLEU vs fp32 [95% CI] | p | chrF vs fp32 | "
        "identical lines | decode s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["mode"] == "float32":
            extra = "| — | — | — | — |"
        else:
            lo, hi = r["bleu_ci"]
            extra = (
                f"| {r['bleu_delta']:+.2f} [{lo:+.2f}, {hi:+.2f}] | {r['bleu_p']:.3f} | "
                f"{r['chrf_delta']:+.2f} | {r['identical_lines']:.1%} |"
            )
        lines.append(
            f"| {r['run']} | {r['mode']} | {r['bleu']:.2f} | {r['chrf']:.2f} {extra} "
            f"{r['decode_s']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--run", action="append", required=True, help="a run directory (repeat)")
    p.add_argument(
        "--split", default="test", choices=("valid", "test"), help="bundled split to score"
    )
    p.add_argument("--samples", type=int, default=1000, help="bootstrap resamples")
    p.add_argument(
        "--modes",
        default=",".join(MODES[1:]),
        help=f"comma-separated modes to set against float32 (default {','.join(MODES[1:])})",
    )
    p.add_argument(
        "--out", default="experiments/results/quantize_bleu", help="writes OUT.json and OUT.md"
    )
    args = p.parse_args(argv)
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    bad = [m for m in modes if m not in MODES]
    if bad:
        p.error(f"--modes {args.modes!r}: {bad[0]!r} is not one of {', '.join(MODES)}")
    rows = [row for run in args.run for row in one_run(run, args.split, args.samples, modes)]
    meta = {
        "split": args.split,
        "samples": args.samples,
        "command": "python experiments/quantize_bleu.py " + " ".join(sys.argv[1:]),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_results(args.out, meta, rows, markdown(rows, meta))


if __name__ == "__main__":
    main()
