"""Decode speed across jax/jaxlib versions: one lever of issue 19, measured side by side.

seqjax admits jax from 0.6 to 0.13 (``pyproject.toml``); which version a user gets depends
on their Python and their pip. This script runs ``bench_decode.py`` (random-weight
Transformer, exact output length) under several Python interpreters, one virtual
environment per jax version, round by round: each round runs every interpreter once, in an
order rotated from round to round, so drift of a shared machine falls on all of them alike.
Per cell (method x batch) it reports the median over rounds of each run's median tokens/s,
and each version's ratio to the first interpreter given.

Make the environments with the same checkout installed, e.g.::

    python3 -m venv /tmp/vj0.8.3 && /tmp/vj0.8.3/bin/pip install -e . jax==0.8.3 jaxlib==0.8.3

and run::

    python experiments/bench_jax_versions.py --python 0.10.2=.venv/bin/python \\
        --python 0.8.3=/tmp/vj0.8.3/bin/python --rounds 3 \\
        --out experiments/results/bench_jax_versions

An interpreter whose run fails (e.g. a jax too old for a feature seqjax uses) is reported
with the last line of its error instead of numbers, and the others go on.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from results_io import write_results  # noqa: E402

DEFAULT_ARGS = "--model base --batches 1,16 --methods greedy,beam --new-tokens 32 --repeats 3"


def run_once(python: str, bench_args: list[str], out: Path) -> dict:
    """One ``bench_decode.py`` run under ``python``: ``{"jax", "cells"}`` or ``{"error"}``."""
    cmd = [python, str(HERE / "bench_decode.py"), *bench_args, "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE.parent)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines() or ["(no output)"]
        # the exception's own line, not JAX's note on filtered frames printed after it
        errors = [ln for ln in lines if re.match(r"^[\w.]+(Error|Exception)\b", ln)]
        return {"error": (errors or lines)[-1][:300]}
    payload = json.loads(out.with_suffix(".json").read_text())
    cells = {f"{r['method']} b{r['batch']}": r["tokens_per_s"] for r in payload["results"]}
    return {"jax": payload["meta"]["jax"], "cells": cells}


def rotated(items: list, k: int) -> list:
    """``items`` rotated left by ``k`` (round ``k``'s running order).

    >>> rotated(["a", "b", "c"], 1), rotated(["a", "b", "c"], 3)
    (['b', 'c', 'a'], ['a', 'b', 'c'])
    """
    k %= len(items) or 1
    return items[k:] + items[:k]


def summarise(labels: list[str], runs: dict[str, list[dict]]) -> dict:
    """Median tokens/s per cell and label over the rounds, and each label's ratio to the
    first label's median (the reference)."""
    table: dict[str, dict] = {}
    for label in labels:
        good = [r for r in runs[label] if "cells" in r]
        for cell in good[0]["cells"] if good else []:
            values = [r["cells"][cell] for r in good if cell in r["cells"]]
            table.setdefault(cell, {})[label] = {"median": statistics.median(values),
                                                 "runs": values}  # fmt: skip
    ref = labels[0]
    for row in table.values():
        for v in row.values():
            if ref in row:
                v["ratio"] = v["median"] / row[ref]["median"]
    return table


def markdown(labels: list[str], table: dict, info: dict, meta: dict) -> str:
    head = " | ".join(f"{lb} (jax {info[lb].get('jax', '?')})" for lb in labels)
    lines = [
        "# Decode throughput across jax versions (bench_decode.py, side by side)",
        "",
        f"`bench_decode.py {meta['bench_args']}`; {meta['rounds']} rounds, every "
        "interpreter once per round in a rotated order; tokens/s = median over rounds of "
        "each run's median; in brackets the ratio to the first column.",
        "",
        f"| cell | {head} |",
        "|---|" + "---:|" * len(labels),
    ]
    for cell, row in table.items():
        vals = [
            f"{row[lb]['median']:.0f} ({row[lb].get('ratio', float('nan')):.2f}x)"
            if lb in row
            else "-"
            for lb in labels
        ]
        lines.append(f"| {cell} | " + " | ".join(vals) + " |")
    for lb in labels:
        if info[lb].get("errors"):
            lines += ["", f"{lb}: failed: `{info[lb]['errors'][0]}`"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--python", action="append", default=[], metavar="LABEL=PATH",
                   help="an interpreter with seqjax and one jax version installed "
                        "(repeatable; the first is the reference of the ratios)")  # fmt: skip
    p.add_argument("--rounds", type=int, default=3, help="runs of each interpreter")
    p.add_argument("--bench-args", default=DEFAULT_ARGS,
                   help=f"arguments for bench_decode.py (default: {DEFAULT_ARGS!r})")  # fmt: skip
    p.add_argument("--out", default="experiments/results/bench_jax_versions",
                   help="writes OUT.json and OUT.md")  # fmt: skip
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error(f"--rounds must be at least 1, got {args.rounds}")
    pythons: dict[str, str] = {}
    for item in args.python:
        label, sep, path = item.partition("=")
        if not sep or not label or not Path(path).exists():
            p.error(f"--python {item!r}: expected LABEL=PATH of an existing Python interpreter")
        pythons[label] = path
    if len(pythons) < 2:
        p.error("give at least two --python LABEL=PATH interpreters to compare")
    labels = list(pythons)
    bench_args = shlex.split(args.bench_args)
    runs: dict[str, list[dict]] = {lb: [] for lb in labels}
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.rounds):
            for label in rotated(labels, k):
                r = run_once(pythons[label], bench_args, Path(tmp) / f"{label}_{k}")
                runs[label].append(r)
                print(f"round {k + 1} {label}: {r.get('cells') or r.get('error')}", flush=True)
    info = {
        lb: {
            "python": pythons[lb],
            "jax": next((r["jax"] for r in runs[lb] if "jax" in r), None),
            "errors": [r["error"] for r in runs[lb] if "error" in r],
        }
        for lb in labels
    }
    table = summarise(labels, runs)
    meta = {"bench_args": args.bench_args, "rounds": args.rounds, "interpreters": info}
    write_results(args.out, meta, [{"table": table, "runs": runs}],
                  markdown(labels, table, info, meta))  # fmt: skip


if __name__ == "__main__":
    main()
