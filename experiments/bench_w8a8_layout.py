"""w8a8 int8 weights stored output-major (``[N, K]``, the default) vs as the float kernel
(``[K, N]``), decoding transformer-base (issue 19).

``quantize_params(params, "w8a8")`` stores each int8 matrix output-major, as the bf16 mode
does. This script measures that choice on the CPU it runs on. The layout is fixed per
process (``quantize._OUT_MAJOR_ACTS``, read when the decoders trace), so each layout runs
in a fresh child process, the two alternating for ``--rounds`` rounds; a child decodes
every cell (``--cells``, exactly ``--new-tokens`` tokens a row) ``--calls`` times after a
warm-up and reports the median tokens/s and a checksum of its tokens. The table gives the
median over rounds per layout, their ratio, and whether the tokens agree.

The model is ``profile_decode``'s random transformer-base Marian (``--preset marian``), a
seqjax preset (``--preset tiny`` for a quick check) or an HF checkpoint (``--hf DIR``).

    python experiments/bench_w8a8_layout.py --out experiments/results/bench_w8a8_layout_zen2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_one_row import build, parse_cells  # noqa: E402
from results_io import require_positive, write_results  # noqa: E402

LAYOUTS = ("stored", "output-major")


def child(args: argparse.Namespace) -> dict:
    """Decode every cell in this process with ``args.layout``; tokens/s and checksums."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from profile_decode import decoder

    from seqjax.models import quantize

    if args.layout == "stored":  # w8a8's int8 weights in the float kernel's [K, N] order
        quantize._OUT_MAJOR_ACTS = tuple(a for a in quantize._OUT_MAJOR_ACTS if a != "int8")
    model, params = build(args.preset, args.hf)
    qp = quantize.quantize_params(params, "w8a8")
    out = {}
    for method, batch in args.cells:
        rows = batch * (1 if method == "greedy" else args.beam_size)
        fn = decoder(model, method, args.beam_size, args.new_tokens, rows, qp)
        rng = np.random.default_rng(args.seed)
        src = jnp.asarray(rng.integers(4, model.config.vocab_size, (batch, 32)), jnp.int32)
        tokens = np.asarray(fn(qp, src))
        times = []
        for _ in range(args.calls):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(qp, src))
            times.append(time.perf_counter() - t0)
        out[f"{method}:{batch}"] = {
            "tokens_per_s": batch * args.new_tokens / statistics.median(times),
            "checksum": int(tokens.astype(np.int64).sum() % 1_000_003),
        }
    return out


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        "# w8a8 int8 weights: stored [K, N] vs output-major [N, K]\n",
        f"Model: {args.hf or args.preset}; exactly {args.new_tokens} output tokens; each "
        f"layout in a fresh process, alternating, {args.rounds} rounds of {args.calls} calls "
        "(median per round, then median over rounds). `same tokens`: the two layouts' token "
        "checksums agree in every round.\n",
        "| cell | stored tok/s | output-major tok/s | output-major / stored | per round | same tokens |",
        "|---|---:|---:|---:|---|---|",
    ]
    for r in rows:
        per = " / ".join(f"{x:.2f}" for x in r["ratio_per_round"])
        lines.append(
            f"| {r['cell']} | {r['stored']:.0f} | {r['output-major']:.0f} | "
            f"{r['ratio']:.2f}x | {per} | {'yes' if r['same_tokens'] else 'NO'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--preset", default="marian", help="'marian' (transformer-base) or a preset")
    p.add_argument("--hf", help="an HF checkpoint directory to load instead")
    p.add_argument(
        "--cells",
        type=parse_cells,
        default=parse_cells("greedy:1,greedy:16,beam:1,greedy:64"),
        help="method:batch pairs (beam: --beam-size rows per source)",
    )
    p.add_argument("--beam-size", type=int, default=4, help="beams for the beam cells")
    p.add_argument("--new-tokens", type=int, default=64, help="exact output tokens per row")
    p.add_argument("--calls", type=int, default=5, help="timed calls per cell per process")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds of both layouts")
    p.add_argument("--seed", type=int, default=0, help="seed of the source tokens")
    p.add_argument("--out", help="output stem: writes OUT.json and OUT.md")
    p.add_argument("--layout", choices=LAYOUTS, help=argparse.SUPPRESS)  # a child process
    args = p.parse_args(argv)
    require_positive(p, args, "beam_size", "new_tokens", "calls", "rounds")
    if args.layout:
        print(json.dumps(child(args)))
        return
    if not args.out:
        p.error("--out is required")
    cells = ",".join(f"{m}:{b}" for m, b in args.cells)
    base = [sys.executable, str(Path(__file__).resolve()), "--cells", cells]
    base += ["--preset", args.preset, "--beam-size", str(args.beam_size)]
    base += ["--new-tokens", str(args.new_tokens), "--calls", str(args.calls)]
    base += ["--seed", str(args.seed)] + (["--hf", args.hf] if args.hf else [])
    runs: dict[str, list[dict]] = {k: [] for k in LAYOUTS}
    for r in range(args.rounds):
        for layout in LAYOUTS if r % 2 == 0 else LAYOUTS[::-1]:
            done = subprocess.run(
                [*base, "--layout", layout], capture_output=True, text=True, check=True
            )
            runs[layout].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(layout, runs[layout][-1], flush=True)
    rows = []
    for cell in runs["stored"][0]:
        speed = {k: [run[cell]["tokens_per_s"] for run in runs[k]] for k in LAYOUTS}
        sums = {run[cell]["checksum"] for k in LAYOUTS for run in runs[k]}
        stored, nt = statistics.median(speed["stored"]), statistics.median(speed["output-major"])
        rows.append(
            {
                "cell": cell,
                "stored": stored,
                "output-major": nt,
                "ratio": nt / stored,
                "ratio_per_round": [b / a for a, b in zip(*speed.values(), strict=True)],
                "same_tokens": len(sums) == 1,
                "runs": speed,
            }
        )
    meta = {k: v for k, v in vars(args).items() if k not in ("cells", "layout")}
    meta["cells"] = cells.split(",")
    write_results(args.out, meta, rows, markdown(rows, args))


if __name__ == "__main__":
    main()
