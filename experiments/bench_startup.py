"""Start-up time of ``seqjax translate`` with and without JAX's persistent compile cache.

Makes a checkpoint (``seqjax train`` for one step of the ``--preset`` model on the first
2,000 pairs of the bundled corpus; the weights are nearly random, which does not matter
for timing), then runs ``seqjax translate`` as a fresh process on ``--sentences``
validation sentences:

1. with an empty cache directory (first run: every program is compiled and written),
2. again with the same directory (second run: programs are read back, not compiled),
3. with ``--no-compile-cache`` (every run pays the compilation).

Each run is timed from process start to the first output line and to exit. Results go
to ``--out`` as JSON and Markdown. ``--checkout LABEL=DIR`` (repeatable) times another
checkout's code (a ``git worktree`` of an older commit) with this interpreter and its
packages, interleaved in the same way. ``--python LABEL=PATH`` (repeatable) times other
interpreters too, e.g. another checkout's virtual environment, interleaved with this one
round by round (each with its own cache directories), so a before/after comparison
shares the machine's load.

Example::

    python experiments/bench_startup.py --preset small --repeats 3
    python experiments/bench_startup.py --checkpoint RUN --repeats 5 \
        --python before=../before/.venv/bin/python
    git worktree add /tmp/old 173ce84 && python experiments/bench_startup.py --checkpoint RUN \
        --checkout old=/tmp/old
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results_io import write_results


def make_checkpoint(run: Path, preset: str, work: Path) -> None:
    from seqjax.data import load_bundled

    data = load_bundled("bible_en_fr", "train")
    (work / "train.en").write_text("\n".join(data.src[:2000]) + "\n", encoding="utf-8")
    (work / "train.fr").write_text("\n".join(data.tgt[:2000]) + "\n", encoding="utf-8")
    cmd = [sys.executable, "-m", "seqjax.app.cli", "train", "--out", str(run), "--preset", preset,
           "--steps", "1", "--max-minutes", "0", "--no-test", "--no-compile-cache",
           "--src", str(work / "train.en"), "--tgt", str(work / "train.fr")]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True)


# Runs `seqjax` from the checkout in argv[1]: the editable install's import hook and the
# working directory are taken off the path, so that checkout's code is what runs.
_CHECKOUT_RUNNER = """
import runpy, sys
checkout = sys.argv.pop(1)
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path[:] = [checkout] + [p for p in sys.path if p not in ("", ".")]
import seqjax
assert seqjax.__file__.startswith(checkout), seqjax.__file__
sys.argv[0] = "seqjax"
runpy.run_module("seqjax.app.cli", run_name="__main__")
"""


def seqjax_command(python: str = "", checkout: str = "") -> list[str]:
    """The command that runs ``seqjax``: this interpreter, another one, or a checkout's code."""
    if checkout:
        return [sys.executable, "-c", _CHECKOUT_RUNNER, checkout]
    return [python or sys.executable, "-m", "seqjax.app.cli"]


def time_translate(run: Path, lines: str, cache: Path, *flags: str, command: list[str]) -> dict:
    """Wall seconds from start to the first output line and to exit of one translate process."""
    env = {**os.environ, "SEQJAX_CACHE_DIR": str(cache)}
    env.pop("SEQJAX_NO_COMPILE_CACHE", None)
    cmd = [*command, "translate", "--checkpoint", str(run), *flags]
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        cwd=cache.parent,  # not a checkout: its seqjax/ would shadow the one meant
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(lines.encode())
    proc.stdin.close()
    proc.stdout.readline()
    first = time.perf_counter() - t0
    proc.stdout.read()
    err = proc.stderr.read() if proc.stderr else b""
    if proc.wait() != 0:
        raise RuntimeError(f"translate failed: {err.decode()[-2000:]}")
    return {"first_line_s": first, "total_s": time.perf_counter() - t0}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--preset", default="small", help="model preset of the checkpoint")
    p.add_argument("--checkpoint", help="use this run directory instead of making one")
    p.add_argument("--sentences", type=int, default=8, help="validation sentences to translate")
    p.add_argument("--repeats", type=int, default=3, help="rounds (each: empty, warm, off)")
    p.add_argument(
        "--out", default="experiments/results/bench_startup", help="writes STEM.json and STEM.md"
    )
    p.add_argument(
        "--python", action="append", default=[], metavar="LABEL=PATH",
        help="also time this interpreter (another checkout's venv), interleaved; repeatable",
    )  # fmt: skip
    p.add_argument(
        "--checkout", action="append", default=[], metavar="LABEL=DIR",
        help="also time another checkout's code (e.g. a git worktree) with this interpreter",
    )  # fmt: skip
    args = p.parse_args(argv)
    pythons = {"this": sys.executable}
    commands = {"this": seqjax_command()}
    for item in args.python:
        label, sep, path = item.partition("=")
        if not sep or not label or label in commands or not Path(path).is_file():
            p.error(f"--python {item!r}: expected LABEL=PATH of a Python interpreter")
        pythons[label], commands[label] = path, seqjax_command(python=path)
    for item in args.checkout:
        label, sep, path = item.partition("=")
        if not sep or not label or label in commands or not (Path(path) / "seqjax").is_dir():
            p.error(f"--checkout {item!r}: expected LABEL=DIR of a seqjax checkout")
        path = str(Path(path).resolve())
        pythons[label], commands[label] = (
            f"{sys.executable} + {path}",
            seqjax_command(checkout=path),
        )
    from seqjax.data import load_bundled

    lines = "\n".join(load_bundled("bible_en_fr", "valid").src[: args.sentences]) + "\n"
    kinds = ("first run (empty cache)", "second run (cache)", "--no-compile-cache")
    rows: dict[str, list[dict]] = {f"{who}: {k}": [] for who in pythons for k in kinds}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        run = Path(args.checkpoint).resolve() if args.checkpoint else work / "run"
        if not args.checkpoint:
            make_checkpoint(run, args.preset, work)
        for r in range(args.repeats):
            for who, command in commands.items():
                cache = work / f"cache_{who}_{r}"
                timed = [
                    time_translate(run, lines, cache, command=command),
                    time_translate(run, lines, cache, command=command),
                    time_translate(
                        run, lines, work / "unused", "--no-compile-cache", command=command
                    ),
                ]
                for kind, t in zip(kinds, timed, strict=True):
                    rows[f"{who}: {kind}"].append(t)
                print(who, dict(zip(kinds, timed, strict=True)), flush=True)
        cache0 = work / "cache_this_0"
        cache_mb = sum(f.stat().st_size for f in cache0.rglob("*") if f.is_file()) / 1e6
    summary = {
        k: {m: statistics.median(x[m] for x in v) for m in ("first_line_s", "total_s")}
        for k, v in rows.items()
    }
    preset = args.preset
    if args.checkpoint:  # the run's own preset, not --preset's default
        doc = json.loads((Path(args.checkpoint) / "config.json").read_text())
        preset = doc.get("train", {}).get("preset") or doc.get("model", {}).get("family", "?")
    meta = {
        "preset": preset,
        "checkpoint": str(Path(args.checkpoint).resolve()) if args.checkpoint else None,
        "sentences": args.sentences,
        "repeats": args.repeats,
        "decoding": "default (beam 4, GNMT alpha 0.6)",
        "cache_mb": cache_mb,
        "platform": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "pythons": pythons,
        "load": list(os.getloadavg()),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    md = [
        f"# `seqjax translate` start-up: {preset} checkpoint, {args.sentences} sentences",
        "",
        f"{meta['platform']}, load {meta['load'][0]:.1f}; median of {args.repeats} rounds; "
        f"cache size after one run {cache_mb:.1f} MB. {meta['time_utc']}. Interpreters "
        f"(interleaved per round): {', '.join(f'{k} = `{v}`' for k, v in pythons.items())}.",
        "",
        "| run | to first output line (s) | to exit (s) |",
        "|---|---:|---:|",
        *(f"| {k} | {v['first_line_s']:.2f} | {v['total_s']:.2f} |" for k, v in summary.items()),
    ]
    write_results(args.out, meta | {"summary": summary}, rows, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
