"""Layout copies in a compiled train step: what XLA:CPU copies or transposes per step.

The training peer of issue 19 (``bench_train.py --torch``) runs the ``base`` step at
0.57-0.94x of PyTorch's on two CPUs; an earlier per-op profile put "layout copies and
transposes around the attention projections" at 15-20% of the step's op time. This
script compiles one ``make_train_step`` (the same shapes as ``bench_train.py``) and reads
its optimised HLO: every instruction of the entry computation that is a ``copy`` or a
fusion XLA named after a copy or transpose (``copy_bitcast_fusion``,
``transpose_copy_fusion``, ...), grouped by output shape, with the bytes it writes. No
timing: the table says which tensors are moved and how much, for the next profile.

Example::

    python experiments/hlo_copies.py --preset base --batch 32 --out /tmp/hlo_copies

writes ``/tmp/hlo_copies.{json,md}``. Small copies (under ``--min-elements``) are counted
in the total but not listed.
"""

from __future__ import annotations

import argparse
import collections
import math
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import add_step_args  # noqa: E402
from results_io import require_positive, write_results  # noqa: E402

# One HLO instruction: ``%name = f32[8000,1024]{1,0} op(`` (tuples and tokens are skipped).
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w\-.]+) = (\w+)\[([\d,]*)\]\S* ([\w\-]+)\(", re.M)
_BYTES = {"f64": 8, "s64": 8, "u64": 8, "f32": 4, "s32": 4, "u32": 4, "bf16": 2, "f16": 2,
          "s16": 2, "u16": 2, "s8": 1, "u8": 1, "pred": 1}  # fmt: skip


def entry_computation(hlo: str) -> str:
    """The ``ENTRY`` computation of an HLO module's text (the step's top-level program)."""
    for block in re.split(r"\n(?=\S)", hlo):
        if block.startswith("ENTRY"):
            return block
    raise ValueError("no ENTRY computation in this HLO text")


def layout_moves(hlo: str) -> list[dict]:
    """Copies and transposes of the entry computation: name, kind, dtype, shape, bytes.

    ``kind`` is the op (``copy``, ``transpose``) or, for a fusion, its name without the
    number (``copy_bitcast_fusion``); only those whose kind mentions a copy or transpose.

    >>> text = '''HloModule m
    ... ENTRY %main (p: f32[4,8]) -> f32[8,4] {
    ...   %p = f32[4,8]{1,0} parameter(0)
    ...   %copy.3 = f32[8,4]{1,0} copy(%p)
    ...   %transpose_copy_fusion.2 = bf16[2,8]{1,0} fusion(%p), kind=kLoop
    ...   ROOT %add.1 = f32[8,4]{1,0} add(%copy.3, %copy.3)
    ... }'''
    >>> [(m["kind"], m["shape"], m["bytes"]) for m in layout_moves(text)]
    [('copy', (8, 4), 128), ('transpose_copy_fusion', (2, 8), 32)]
    """
    moves = []
    for name, dtype, dims, op in _INSTRUCTION.findall(entry_computation(hlo)):
        kind = re.sub(r"[.\d]+$", "", name) if op == "fusion" else op
        if "copy" not in kind and "transpose" not in kind:
            continue
        shape = tuple(int(d) for d in dims.split(",") if d)
        elements = math.prod(shape)
        moves.append({"name": name, "kind": kind, "dtype": dtype, "shape": shape,
                      "elements": elements, "bytes": elements * _BYTES.get(dtype, 4)})  # fmt: skip
    return moves


def grouped(moves: list[dict], min_elements: int) -> list[dict]:
    """Moves of at least ``min_elements`` by (kind, dtype, shape), largest total first."""
    groups: dict[tuple, dict] = collections.defaultdict(lambda: {"count": 0, "bytes": 0})
    for m in moves:
        if m["elements"] >= min_elements:
            g = groups[(m["kind"], m["dtype"], m["shape"])]
            g["count"] += 1
            g["bytes"] += m["bytes"]
    rows = [{"kind": k, "dtype": d, "shape": list(s), **v} for (k, d, s), v in groups.items()]
    return sorted(rows, key=lambda r: -r["bytes"])


def compiled_train_step_hlo(preset: str, batch: int, src_len: int, tgt_len: int) -> str:
    """Optimised HLO text of ``bench_train.py``'s step for ``preset`` at these shapes."""
    import jax
    import numpy as np
    from bench_train import bench_step, random_batch

    from seqjax.config import model_preset
    from seqjax.training.steps import init_train_state

    cfg = model_preset(preset)
    model, opt, step = bench_step(cfg)
    state = jax.eval_shape(lambda: init_train_state(model.init(jax.random.key(0)), opt))
    data = random_batch(cfg, batch, src_len, tgt_len, np.random.default_rng(0))
    return step.lower(state, data, jax.random.key(1)).compile().as_text()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_step_args(p)
    p.add_argument("--min-elements", type=int, default=65536,
                   help="list copies of at least this many elements (all count in the total)")  # fmt: skip
    p.add_argument("--out", default="experiments/results/hlo_copies",
                   help="writes OUT.json and OUT.md")  # fmt: skip
    args = p.parse_args(argv)
    require_positive(p, args, "batch", "src_len", "tgt_len")
    hlo = compiled_train_step_hlo(args.preset, args.batch, args.src_len, args.tgt_len)
    moves = layout_moves(hlo)
    rows = grouped(moves, args.min_elements)
    total = sum(m["bytes"] for m in moves)
    meta = {"preset": args.preset, "batch": args.batch, "src_len": args.src_len,
            "tgt_len": args.tgt_len, "instructions": len(moves), "bytes_total": total}  # fmt: skip
    md = [
        f"# Layout copies in the compiled `{args.preset}` train step",
        "",
        f"Batch {args.batch} x {args.src_len}/{args.tgt_len} tokens; {len(moves)} copy or "
        f"transpose instructions in the entry computation writing {total / 1e6:.1f} MB per "
        f"step; those of >= {args.min_elements} elements by shape:",
        "",
        "| kind | dtype | shape | count | MB written |",
        "|---|---|---|---:|---:|",
        *(
            f"| {r['kind']} | {r['dtype']} | {'x'.join(map(str, r['shape']))} | {r['count']} "
            f"| {r['bytes'] / 1e6:.1f} |"
            for r in rows
        ),
    ]
    write_results(args.out, meta, rows, "\n".join(md) + "\n")  # prints it too


if __name__ == "__main__":
    main()
