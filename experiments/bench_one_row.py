"""Float32 weights as stored vs output-major for decoders of few rows per step (issue 19).

``Translator.decode_params`` decodes one row per step (greedy or one sample at batch 1,
streaming translation) from a copy of the float32 weights stored output-major
(``quantize.output_major``: ``[N, K]`` for a ``[K, N]`` kernel) where
``compile_options.one_row_output_major`` says so: x86 CPUs with AVX2 and without AVX-512,
matrices of at least 64 MB. This script measures that choice on the CPU it runs on. For
each cell (method x batch) it compiles the same decoder three ways and times them in
alternating calls on the same source:

- ``stored, rule``: the params as stored, with the kernels ``decode_compiler_options``
  picks for them (XLA's own at <= 32 rows on AVX2, YNNPACK's elsewhere): what one-row
  decoders did before the copy;
- ``stored, YNNPACK``: the params as stored, XLA's default kernels;
- ``output-major, YNNPACK``: the copy (its dots keep XLA's defaults, ``compile_options``).

The model is ``profile_decode``'s random transformer-base Marian (6+6 layers, d512, 8
heads, ffn 2048, vocab 8000; built from its HF config, no torch needed), or a seqjax
preset (``--preset tiny`` for a quick check); exactly ``--new-tokens`` tokens per row
(EOS banned until then). Median tokens/s of ``--rounds`` calls per program, the ratio
of the output-major program to the rule's, and the share of rows whose tokens equal the
rule's (the kernels sum in different orders).

    python experiments/bench_one_row.py --out experiments/results/bench_one_row_zen2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from profile_decode import MARIAN, decoder  # noqa: E402
from results_io import require_positive, write_results  # noqa: E402

from seqjax.decoding.compile_options import decode_compiler_options  # noqa: E402
from seqjax.models.quantize import output_major  # noqa: E402

LAYOUTS = ("stored, rule", "stored, YNNPACK", "output-major, YNNPACK")


def build(preset: str, hf_dir: str | None = None):
    """``(model, params)``: an HF checkpoint, the Marian of ``profile_decode`` or a preset."""
    from seqjax.models import build_model

    if hf_dir:
        from seqjax.interop.hf import load_hf

        model, params, _ = load_hf(hf_dir)
        return model, params
    if preset == "marian":
        from seqjax.interop.hf import hf_model_config

        model = build_model(hf_model_config(MARIAN))
    else:
        from seqjax.config import model_preset

        model = build_model(model_preset(preset))
    return model, jax.jit(model.init)(jax.random.key(0))


def bench_cell(model, params, nt_params, method: str, batch: int, args) -> dict:
    rows = batch * (1 if method == "greedy" else args.beam_size)

    def program(options: dict | None):  # None: the library's choice for the stored params
        return decoder(model, method, args.beam_size, args.new_tokens, rows, params, options)

    programs = {
        LAYOUTS[0]: (program(None), params),
        LAYOUTS[1]: (program({}), params),
        LAYOUTS[2]: (program({}), nt_params),
    }
    rng = np.random.default_rng(args.seed)
    src = jnp.asarray(rng.integers(4, model.config.vocab_size, (batch, args.src_len)), jnp.int32)
    tokens = {k: np.asarray(fn(p, src)) for k, (fn, p) in programs.items()}  # compile, warm
    times: dict[str, list[float]] = {k: [] for k in programs}
    for _ in range(args.rounds):
        for k, (fn, p) in programs.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(p, src))
            times[k].append(time.perf_counter() - t0)
    tok_s = {k: batch * args.new_tokens / statistics.median(v) for k, v in times.items()}
    ref = tokens[LAYOUTS[0]]
    return {
        "method": method,
        "batch": batch,
        "rows": rows,
        "rule_options": decode_compiler_options(rows, params),
        "tokens_per_s": tok_s,
        "tokens_per_s_runs": {k: [batch * args.new_tokens / t for t in v] for k, v in times.items()},
        "output_major_over_rule": tok_s[LAYOUTS[2]] / tok_s[LAYOUTS[0]],
        "rows_equal_to_rule": {k: float(np.mean(np.all(v == ref, axis=-1))) for k, v in tokens.items()},
    }  # fmt: skip


def markdown(results: list[dict], args) -> str:
    head = "| method | batch | rows | " + " | ".join(f"{k} tok/s" for k in LAYOUTS)
    lines = [
        "# Float32 weights as stored vs output-major, by rows per step\n",
        f"Model: {args.hf or args.preset}; source {args.src_len} tokens, exactly {args.new_tokens} output "
        f"tokens; median of {args.rounds} alternating calls per program. `stored, rule`: the "
        "kernels `decode_compiler_options` picks for the stored params (what one-row decoders "
        "used before `Translator.decode_params`); the output-major copy runs XLA's defaults. "
        "`equal rows`: share of rows whose tokens equal the rule's, per layout.\n",
        head + " | output-major / rule | equal rows |",
        "|---|---:|---:|" + "---:|" * len(LAYOUTS) + "---:|---|",
    ]
    for r in results:
        speeds = " | ".join(f"{r['tokens_per_s'][k]:.0f}" for k in LAYOUTS)
        equal = " / ".join(f"{r['rows_equal_to_rule'][k]:.2f}" for k in LAYOUTS)
        lines.append(
            f"| {r['method']} | {r['batch']} | {r['rows']} | {speeds} | "
            f"{r['output_major_over_rule']:.2f}x | {equal} |"
        )
    return "\n".join(lines) + "\n"


def parse_cells(text: str) -> list[tuple[str, int]]:
    """``"greedy:1,beam:1"`` -> ``[("greedy", 1), ("beam", 1)]``.

    >>> parse_cells("greedy:1, beam:4")
    [('greedy', 1), ('beam', 4)]
    """
    cells = []
    for part in text.split(","):
        method, _, batch = part.strip().partition(":")
        if method not in ("greedy", "beam") or not batch.isdigit() or int(batch) < 1:
            raise argparse.ArgumentTypeError(f"cell {part.strip()!r}: use greedy:N or beam:N")
        cells.append((method, int(batch)))
    return cells


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--preset", default="marian", help="'marian' (transformer-base) or a preset")
    p.add_argument(
        "--hf",
        help="an HF checkpoint directory to load instead (e.g. bench_vs_peers' marian_hf, "
        "made with --workdir)",
    )
    p.add_argument(
        "--cells",
        type=parse_cells,
        default=parse_cells("greedy:1,beam:1,greedy:4"),
        help="method:batch pairs (beam: --beam-size rows per source)",
    )
    p.add_argument("--beam-size", type=int, default=4, help="beams for the beam cells")
    p.add_argument("--src-len", type=int, default=32, help="source tokens per row")
    p.add_argument("--new-tokens", type=int, default=64, help="exact output tokens per row")
    p.add_argument("--rounds", type=int, default=8, help="timed calls per program")
    p.add_argument("--seed", type=int, default=0, help="seed of the source tokens")
    p.add_argument("--out", required=True, help="output stem: writes OUT.json and OUT.md")
    args = p.parse_args(argv)
    require_positive(p, args, "beam_size", "src_len", "new_tokens", "rounds")
    model, params = build(args.preset, args.hf)
    nt_params = output_major(params)
    results = []
    for method, batch in args.cells:
        r = bench_cell(model, params, nt_params, method, batch, args)
        print(f"{method} b{batch}: {r['tokens_per_s']}", flush=True)
        results.append(r)
    meta = {k: v for k, v in vars(args).items() if k != "cells"}
    meta["cells"] = [f"{m}:{b}" for m, b in args.cells]
    write_results(args.out, meta, results, markdown(results, args))


if __name__ == "__main__":
    main()
