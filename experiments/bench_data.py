"""The data path at scale: `prepare` and the Grain pipeline against today's in-memory path.

Synthetic parallel corpora of 30k, 1M and 10M pairs are generated into ``--tmp`` (never
committed): each side's line joins two halves drawn from pools of 200k distinct synthetic
"sentences" over a Zipf-distributed lexicon of invented words, so lines are varied enough for
SentencePiece and for realistic tokenisation cost (the target is the source's words mapped
through a second lexicon, in reverse order).

Every measurement runs in a fresh child process so its peak RSS is its own:

- **prepare**: ``seqjax.data.prepare.prepare`` with the default options (vocab 8000, a
  200k-sentence tokenizer sample) and ``--prepare-workers`` tokenizer processes. Reported:
  wall time, lines/s (both sides' lines: 2 per pair) and per core (CPU seconds of the parent and
  its workers), peak RSS of the parent and of the largest worker (``getrusage``).
- **pipeline**: ``seqjax.data.pipeline.train_iterator`` over the prepared directory with the
  ``base`` training defaults (``batch_tokens`` 2048, buckets 16..128, max length 128), 0, 1 and 2
  worker processes. Reported: target tokens/s delivered (real target tokens, padding not
  counted; and padded tokens), time to the first batch (start-up from prepared data), and the
  peak RSS of the whole process tree while iterating.
- **before**: today's path in one process — ``read_parallel`` + ``drop_empty_pairs``,
  ``train_tokenizers`` (which samples 200k sentences), ``tokenize_pairs``, ``filter_long`` —
  as ``seqjax train`` runs it before the first step, for the corpora given in ``--before``;
  larger ones are extrapolated linearly from the largest measured (stated in the table).

The ``base`` train step's target tokens/s on this CPU comes from
``experiments/results/bench_train.json`` (``experiments/bench_train.py``); the H100 figure is an
estimate scaled from a published A100 figure (see ``GPU_NOTE``).

Example::

    python experiments/bench_data.py --sizes 30k,1M,10M --before 30k,1M
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from results_io import write_results

HERE = Path(__file__).resolve().parent
SIZES = {"30k": 30_000, "100k": 100_000, "1M": 1_000_000, "10M": 10_000_000}
GPU_NOTE = (
    "Published: NVIDIA DeepLearningExamples, PyTorch/Translation/Transformer README "
    "(fairseq Transformer-big, ~210M parameters, WMT14 en-de), 1x A100 40GB, mixed precision: "
    "82,059 tokens/s. Estimate for seqjax `base` (48M parameters, ~4.4x fewer FLOPs per token) "
    "on one H100 (about 2x an A100 on bf16 transformer training): 82k x 4.4 x 2 = ~700k target "
    "tokens/s. Stated estimate, not a measurement."
)
H100_BASE_TOKENS_PER_S = 700_000


# ---------------------------------------------------------------- synthetic corpora


def _lexicon(rng: np.random.Generator, n: int) -> list[str]:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyzéèàç"))
    lengths = rng.integers(2, 10, size=n)
    return ["".join(rng.choice(letters, size=k)) for k in lengths]


def _pool(rng: np.random.Generator, n: int, src_lex: list[str], tgt_lex: list[str]):  # noqa: ANN202
    """``n`` synthetic (src, tgt) half-sentences of 1..12 Zipf-distributed words."""
    src, tgt = [], []
    v = len(src_lex)
    for k in rng.integers(1, 13, size=n):
        words = np.minimum(rng.zipf(1.2, size=k), v) - 1
        src.append(" ".join(src_lex[w] for w in words))
        tgt.append(" ".join(tgt_lex[w] for w in words[::-1]))
    return src, tgt


def make_corpus(n_pairs: int, out_dir: Path, seed: int = 0) -> tuple[Path, Path]:
    """Write ``n_pairs`` synthetic pairs to ``out_dir/train.{src,tgt}`` (reused if present)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    src_path, tgt_path = out_dir / "train.src", out_dir / "train.tgt"
    if src_path.exists() and tgt_path.exists():
        return src_path, tgt_path
    rng = np.random.default_rng(seed)
    src_lex, tgt_lex = _lexicon(rng, 50_000), _lexicon(rng, 50_000)
    pool_s, pool_t = _pool(rng, 200_000, src_lex, tgt_lex)
    tmp_s, tmp_t = (p.with_name(p.name + ".part") for p in (src_path, tgt_path))
    with tmp_s.open("w", encoding="utf-8") as fs, tmp_t.open("w", encoding="utf-8") as ft:
        for start in range(0, n_pairs, 100_000):
            m = min(100_000, n_pairs - start)
            a, b = rng.integers(0, len(pool_s), size=(2, m))
            fs.write("".join(f"{pool_s[i]} {pool_s[j]}\n" for i, j in zip(a, b, strict=True)))
            ft.write("".join(f"{pool_t[j]} {pool_t[i]}\n" for i, j in zip(a, b, strict=True)))
    tmp_s.rename(src_path)
    tmp_t.rename(tgt_path)
    return src_path, tgt_path


# ---------------------------------------------------------------- child measurements


def _maxrss_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux: kilobytes


def _cpu_s() -> float:
    own, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def child_prepare(args: dict[str, Any]) -> dict[str, Any]:
    from seqjax.data.prepare import prepare

    t0 = time.perf_counter()
    res = prepare(args["src"], args["tgt"], args["out"], workers=args["workers"])
    wall = time.perf_counter() - t0
    train = res.manifest["splits"]["train"]
    return {
        "wall_s": wall,
        "cpu_s": _cpu_s(),
        "reused": res.reused,
        "pairs": train["pairs"],
        "lines": 2 * train["lines"],
        "tokenize_s": res.manifest.get("tokenize_seconds"),
        "workers": res.manifest.get("workers"),
        "sample_sentences": res.manifest["tokenizer"]["sample_sentences"],
        "rss_parent_mb": _maxrss_mb(resource.RUSAGE_SELF),
        "rss_worker_mb": _maxrss_mb(resource.RUSAGE_CHILDREN),
        "disk_mb": sum(f.stat().st_size for f in Path(args["out"]).rglob("*") if f.is_file())
        / 2**20,
    }


class _TreeRss:
    """Peak memory of this process and its children, sampled every 0.2 s in a thread.

    Both the sum of RSS (counts shared libraries once per process) and the sum of PSS
    (shared pages split between the processes sharing them: the tree's real footprint).
    """

    def __init__(self) -> None:
        import psutil

        self.proc, self.rss, self.pss, self._stop = psutil.Process(), 0, 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _sample(self) -> tuple[int, int]:
        rss = pss = 0
        for p in [self.proc, *self.proc.children(recursive=True)]:
            try:
                m = p.memory_full_info()
            except Exception:  # noqa: BLE001 - a child may exit between listing and reading
                continue
            rss, pss = rss + m.rss, pss + m.pss
        return rss, pss

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            rss, pss = self._sample()
            self.rss, self.pss = max(self.rss, rss), max(self.pss, pss)

    def stop(self) -> tuple[float, float]:
        self._stop.set()
        self._t.join()
        rss, pss = self._sample()  # a last look: a fast run may end between two samples
        return max(self.rss, rss) / 2**20, max(self.pss, pss) / 2**20


def child_pipeline(args: dict[str, Any]) -> dict[str, Any]:
    from seqjax.config import TrainConfig
    from seqjax.data.pipeline import BatchSpec, split_stats, train_iterator

    rss = _TreeRss()
    cfg = TrainConfig()
    spec = BatchSpec(
        cfg.batch_tokens, cfg.length_buckets, cfg.max_src_len, cfg.max_tgt_len, seed=cfg.seed
    )
    t0 = time.perf_counter()
    per_epoch, kept, _ = split_stats(args["data"], "train", spec)
    it = train_iterator(args["data"], spec, workers=args["workers"])
    next(it)
    first = time.perf_counter() - t0
    for _ in range(args["warmup"]):
        next(it)
    real = padded = 0
    t1 = time.perf_counter()
    for _ in range(args["batches"]):
        b = next(it)
        real += int((b["tgt_out"] != 0).sum())
        padded += b["tgt_out"].size
    dt = time.perf_counter() - t1
    it.close()
    rss_mb, pss_mb = rss.stop()
    return {
        "workers": args["workers"],
        "batches": args["batches"],
        "batches_per_epoch": per_epoch,
        "pairs_kept": kept,
        "first_batch_s": first,
        "tgt_tokens_per_s": real / dt,
        "padded_tokens_per_s": padded / dt,
        "batches_per_s": args["batches"] / dt,
        "rss_tree_peak_mb": rss_mb,
        "pss_tree_peak_mb": pss_mb,
    }


def child_before(args: dict[str, Any]) -> dict[str, Any]:
    import tempfile

    from seqjax.config import TrainConfig
    from seqjax.data import (
        drop_empty_pairs,
        filter_long,
        read_parallel,
        tokenize_pairs,
        train_tokenizers,
    )

    cfg = TrainConfig()
    t0 = time.perf_counter()
    text, _ = drop_empty_pairs(read_parallel(args["src"], args["tgt"]))
    t_read = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        toks = train_tokenizers(text.src, text.tgt, 8000, tmp, seed=cfg.seed)
    t_tok = time.perf_counter() - t0 - t_read
    pairs, _ = filter_long(
        tokenize_pairs(text, *toks), cfg.max_src_len, cfg.max_tgt_len, cfg.length_buckets
    )
    wall = time.perf_counter() - t0
    return {
        "wall_s": wall,
        "read_s": t_read,
        "tokenizer_s": t_tok,
        "tokenize_s": wall - t_read - t_tok,
        "pairs": len(pairs),
        "rss_mb": _maxrss_mb(resource.RUSAGE_SELF),
    }


CHILDREN = {"prepare": child_prepare, "pipeline": child_pipeline, "before": child_before}


def run_child(kind: str, **args: Any) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter; its result is the last stdout line."""
    load0 = os.getloadavg()[0]
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, json.dumps(args, default=str)],
        capture_output=True,
        text=True,
        cwd=HERE,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{kind} child failed ({out.returncode}): {out.stderr[-3000:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["load_1min"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    print(f"  {kind} {args.get('workers', '')}: {json.dumps(res)}", file=sys.stderr, flush=True)
    return res


def _from_log(path: str | None) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Measurements an earlier, interrupted invocation printed: ``{(size, kind, workers): row}``.

    Lets a rerun measure only what is missing (its prepared directories must still exist).
    """
    import ast

    done: dict[tuple[str, str, str], dict[str, Any]] = {}
    label = ""
    for line in Path(path).read_text().splitlines() if path else []:
        if line.endswith(": generating"):
            label = line.split(":")[0]
        elif line.startswith("  ") and ": {" in line:
            head, body = line.strip().split(": ", 1)
            kind, _, workers = head.partition(" ")
            row = json.loads(body) if body.startswith('{"') else ast.literal_eval(body)
            row["from_earlier_invocation"] = True
            done[(label, kind, workers)] = row
    return done


# ---------------------------------------------------------------- the table


def base_step_tokens_per_s() -> tuple[float, str]:
    """The ``base`` train step's target tokens/s on this CPU, from bench_train's results."""
    path = HERE / "results" / "bench_train.json"
    data = json.loads(path.read_text())
    rates = [r["tokens_per_s"] for r in data["results"] if r["model"] == "base"]
    return max(rates), f"{path.relative_to(HERE.parent)} ({data['meta']['time_utc']})"


def _f(x: float, nd: int = 0) -> str:
    return f"{x:,.{nd}f}"


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    base, h100 = meta["base_step_tokens_per_s"], H100_BASE_TOKENS_PER_S
    lines = [
        f"# Data path at scale: prepare + Grain pipeline vs today's in-memory path ({meta['time_utc']})",
        "",
        f"{meta['platform']}; {meta['cpus']} CPUs shared with other work (1-min load "
        f"average {meta['load_start']} at the start, {meta['load_end']} at the end; each row "
        "gives it before/after the measurement). Synthetic corpora (see the script).",
        "",
        "## Before and after: getting from text files to the first training batch",
        "",
        "| pairs | before: time | before: peak RSS | prepare: time (workers) | prepare lines/s "
        "| per core | prepare peak RSS parent / worker | disk | after: first batch | "
        "after: pipeline peak PSS / RSS (2 workers, tree) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        b, p = r.get("before"), r["prepare"]
        pipe = {x["workers"]: x for x in r["pipeline"]}
        before = (
            (f"{_f(b['wall_s'], 1)} s", f"{_f(b['rss_mb'] / 1024, 2)} GB")
            if b and not b.get("extrapolated")
            else (
                (f"~{_f(b['wall_s'])} s (extrap.)", f"~{_f(b['rss_mb'] / 1024, 1)} GB (extrap.)")
                if b
                else ("-", "-")
            )
        )
        lines.append(
            f"| {r['label']} | {before[0]} | {before[1]} | {_f(p['wall_s'], 1)} s "
            f"({p['workers']}) | {_f(p['lines'] / p['wall_s'])} | "
            f"{_f(p['lines'] / max(p['cpu_s'], 1e-9))} | {_f(p['rss_parent_mb'])} / "
            f"{_f(p['rss_worker_mb'])} MB | {_f(p['disk_mb'])} MB | "
            f"{_f(pipe[0]['first_batch_s'], 2)} s | "
            f"{_f(pipe[max(pipe)]['pss_tree_peak_mb'])} / {_f(pipe[max(pipe)]['rss_tree_peak_mb'])} MB |"
        )
    lines += [
        "",
        "## Host pipeline throughput (target tokens/s the loader alone delivers)",
        "",
        f"`base` train step on this CPU: **{_f(base)}** target tokens/s "
        f"(from {meta['base_step_source']}). H100 estimate for `base`: ~{_f(h100)} tokens/s "
        f"({GPU_NOTE})",
        "",
        "| pairs | workers | real tgt tokens/s | padded tokens/s | batches/s | x `base` step "
        "(CPU) | share of an H100's need | first batch | peak PSS / RSS (tree) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        for x in r["pipeline"]:
            lines.append(
                f"| {r['label']} | {x['workers']} | {_f(x['tgt_tokens_per_s'])} | "
                f"{_f(x['padded_tokens_per_s'])} | {_f(x['batches_per_s'], 1)} | "
                f"{_f(x['tgt_tokens_per_s'] / base, 1)}x | "
                f"{_f(100 * x['tgt_tokens_per_s'] / h100)}% | {_f(x['first_batch_s'], 2)} s | "
                f"{_f(x['pss_tree_peak_mb'])} / {_f(x['rss_tree_peak_mb'])} MB |"
            )
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="30k,1M,10M", help="corpora, from: " + ", ".join(SIZES))
    ap.add_argument("--before", default="30k,1M", help="corpora to run today's path on")
    ap.add_argument("--workers", default="0,1,2", help="pipeline worker counts")
    ap.add_argument("--prepare-workers", type=int, default=None, help="default: all CPUs")
    ap.add_argument("--batches", type=int, default=2000, help="timed pipeline batches")
    ap.add_argument("--tmp", default="/tmp/seqjax_bench_data", help="corpora and prepared data")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    ap.add_argument(
        "--out", default=str(HERE / "results" / "bench_data"), help="writes OUT.json and OUT.md"
    )
    ap.add_argument(
        "--from-log",
        metavar="LOG",
        help="stderr of an interrupted run: reuse its measurements, run only the missing ones",
    )
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, child_args = args.child
        print(json.dumps(CHILDREN[kind](json.loads(child_args))))
        return
    tmp = Path(args.tmp)
    base, source = base_step_tokens_per_s()
    meta = {
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "platform": f"{platform.machine()} {platform.processor() or 'cpu'}, Python "
        f"{platform.python_version()}",
        "cpus": os.cpu_count(),
        "load_start": round(os.getloadavg()[0], 2),
        "base_step_tokens_per_s": base,
        "base_step_source": source,
        "h100_base_tokens_per_s_estimate": H100_BASE_TOKENS_PER_S,
        "gpu_note": GPU_NOTE,
    }
    done = _from_log(args.from_log)
    meta["measurements_from_earlier_invocation"] = len(done)
    workers = [int(w) for w in args.workers.split(",")]
    before_sizes = [s for s in args.before.split(",") if s]
    rows = []
    for label in args.sizes.split(","):
        n = SIZES[label]
        print(f"{label}: generating", file=sys.stderr, flush=True)
        src, tgt = make_corpus(n, tmp / label)
        row: dict[str, Any] = {"label": label, "pairs_requested": n}
        if label in before_sizes:
            row["before"] = done.get((label, "before", "")) or run_child("before", src=src, tgt=tgt)
        data = tmp / f"{label}.prepared"
        if (label, "prepare", "None") in done and data.is_dir():
            row["prepare"] = done[(label, "prepare", "None")]
        else:
            shutil.rmtree(data, ignore_errors=True)
            row["prepare"] = run_child(
                "prepare", src=src, tgt=tgt, out=data, workers=args.prepare_workers
            )
        row["pipeline"] = [
            done.get((label, "pipeline", str(w)))
            or run_child("pipeline", data=data, workers=w, warmup=20, batches=args.batches)
            for w in workers
        ]
        rows.append(row)
        if not args.keep:
            shutil.rmtree(tmp / label, ignore_errors=True)
            shutil.rmtree(data, ignore_errors=True)
    _extrapolate_before(rows)
    meta["load_end"] = round(os.getloadavg()[0], 2)
    write_results(args.out, meta, rows, markdown(rows, meta))


def _extrapolate_before(rows: list[dict[str, Any]]) -> None:
    """Linear extrapolation of today's path (time and RSS per pair) from the largest measured."""
    measured = [r for r in rows if r.get("before")]
    if not measured:
        return
    ref = max(measured, key=lambda r: r["pairs_requested"])
    scale_of = ref["pairs_requested"]
    for r in rows:
        if r.get("before") is None and r["pairs_requested"] > scale_of:
            k = r["pairs_requested"] / scale_of
            b = ref["before"]
            r["before"] = {
                "extrapolated": True,
                "from": ref["label"],
                "wall_s": b["wall_s"] * k,
                "rss_mb": b["rss_mb"] * k,
            }


if __name__ == "__main__":
    main()
