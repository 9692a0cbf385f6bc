"""Where one training step's time goes: a per-op profile of ``bench_train.py``'s step.

The training peer of issue 19 runs the ``base`` step at 0.57-0.94x of PyTorch on two CPUs,
and ``hlo_copies.py`` lists ~1 GB of copies and transposes per step without saying what
they cost. This script runs the same jitted step (``bench_train.bench_step``: forward,
backward, clipping, AdamW, dropout as in the preset) under ``jax.profiler.trace`` and sums
XLA:CPU's events per executed thunk (fusion, dot, copy, ...) over ``--steps`` steps. Each
op is put in one class:

- ``dot``: matmuls (``dot`` ops and fusions whose computation holds one, e.g. the YNNPACK
  fusions XLA:CPU builds around the step's matmuls), with their FLOPs from the HLO and
  their GFLOP/s, by source and by pass (forward, or backward: ``transpose(jvp(...))``);
- ``copy/transpose``: ops or fusions named after a copy or transpose (``hlo_copies.py``);
- ``dropout``: the masks' threefry random bits and the masked multiplies (source in
  Flax's ``Dropout`` or ``jax._src.prng``);
- ``optimizer``: AdamW, clipping and the finite guard (source in optax or
  ``apply_if_finite``);
- ``other``: the remaining element-wise and reduction fusions (LayerNorm, softmax, loss,
  dropout multiplies, embedding gathers and scatters).

Sources come from the compiled HLO's metadata (``profile_decode.hlo_sources``). Thunk times
of the two intra-op threads add up; the wall time of a step is measured separately, and an
XLA (Eigen) matmul's event may not cover the work its helper thread does, so the summed
thunk time can fall short of the threads' busy time: read shares within a class, and
compare the classes' totals across variants of one machine, not against the wall time.

``--torch`` also profiles the PyTorch training peer (``bench_train.TorchPeer``, the same
architecture and step) with ``torch.profiler`` and puts its time per class beside seqjax's
(ATen ops by name: ``mm``/``addmm``/``bmm`` are matmuls, ``copy_``/``clone`` copies,
``native_dropout``/``bernoulli_`` dropout, ``_foreach_*``/fused Adam the optimizer).

Example::

    python experiments/profile_train.py --preset base --batch 32 --steps 3 --torch \\
        --out experiments/results/profile_train_base_b32

writes ``OUT.json`` and ``OUT.md``.
"""

from __future__ import annotations

import argparse
import collections
import math
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import add_step_args  # noqa: E402
from results_io import require_positive, write_results  # noqa: E402

CLASSES = ("dot", "copy/transpose", "dropout", "optimizer", "other")
_OPTIMIZER_SOURCES = ("transform.py", "alias.py", "update.py", "numerics.py", "clipping.py",
                      "combine.py", "schedule.py", "apply_if_finite")  # fmt: skip
_DROPOUT_SOURCES = ("Dropout", "prng.py", "random.py", "threefry")


_DECL = re.compile(r"^\s*(?:ROOT )?%([\w\-.]+) = \w+\[([\d,]*)\]\S* ([\w\-]+)\((.*)$")


def dot_flops(hlo: str) -> dict[str, float]:
    """Instruction name -> matmul FLOPs (2 x output elements x contracted size) for every
    ``dot`` and every fusion whose computation holds one, from compiled HLO text.

    >>> text = '''%fused_computation.1 (param_0: f32[4,8], param_1: f32[8,2]) -> f32[4,2] {
    ...   %param_0 = f32[4,8]{1,0} parameter(0)
    ...   %param_1 = f32[8,2]{1,0} parameter(1)
    ...   ROOT %dot.1 = f32[4,2]{1,0} dot(%param_0, %param_1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
    ... }
    ...
    ... ENTRY %main (a: f32[4,8], b: f32[8,2]) -> f32[4,2] {
    ...   %a = f32[4,8]{1,0} parameter(0)
    ...   %b = f32[8,2]{1,0} parameter(1)
    ...   ROOT %ynn_fusion.3 = f32[4,2]{1,0} fusion(%a, %b), kind=kCustom, calls=%fused_computation.1
    ... }'''
    >>> dot_flops(text)
    {'dot.1': 128.0, 'ynn_fusion.3': 128.0}
    """
    per_computation: dict[str, float] = collections.defaultdict(float)
    flops: dict[str, float] = {}
    fusions: list[tuple[str, str]] = []
    for block in re.split(r"\n(?=\S)", hlo):
        head = re.match(r"^(?:ENTRY )?%([\w\-.]+) ", block)
        if not head:
            continue
        shapes: dict[str, list[int]] = {}
        for line in block.splitlines()[1:]:
            m = _DECL.match(line)
            if not m:
                continue
            name, dims, op, rest = m.groups()
            shapes[name] = [int(d) for d in dims.split(",") if d]
            if op == "dot":
                lhs = re.match(r"%([\w\-.]+)", rest)
                contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", rest)
                lhs_shape = shapes.get(lhs.group(1), []) if lhs else []
                k = math.prod(lhs_shape[int(d)] for d in contracting.group(1).split(",") if d) if contracting and lhs_shape else 0  # fmt: skip
                flops[name] = 2.0 * math.prod(shapes[name]) * k
                per_computation[head.group(1)] += flops[name]
            elif op == "fusion" and (called := re.search(r"calls=%([\w\-.]+)", rest)):
                fusions.append((name, called.group(1)))
    for name, called in fusions:
        if per_computation.get(called):
            flops[name] = per_computation[called]
    return flops


def op_class(name: str, opcode: str, where: str, is_dot: bool = False) -> str:
    """The class of one executed op (see the module docstring), from its name and source;
    ``is_dot``: the op is a matmul or a fusion around one (``dot_flops``).

    >>> op_class("dot.12", "dot", "transformer_ops.py:attention")
    'dot'
    >>> op_class("ynn_fusion.197", "fusion", "linear.py:Embed.attend", is_dot=True)
    'dot'
    >>> op_class("copy_bitcast_fusion.3", "fusion", "steps.py:step")
    'copy/transpose'
    >>> op_class("broadcast_add_fusion.86", "fusion", "stochastic.py:Dropout.__call__")
    'dropout'
    >>> op_class("fusion.9", "fusion", "transform.py:update_moment < update_fn")
    'optimizer'
    >>> op_class("ynn_fusion.3", "fusion", "transformer_ops.py:layer_norm")
    'other'
    """
    base = re.sub(r"[.\d]+$", "", name)
    if is_dot or opcode == "dot":
        return "dot"
    if "copy" in base or "transpose" in base or opcode in ("copy", "transpose"):
        return "copy/transpose"
    if any(s in where for s in _DROPOUT_SOURCES):
        return "dropout"
    if any(s in where for s in _OPTIMIZER_SOURCES):
        return "optimizer"
    return "other"


def profile_step(preset: str, batch: int, src_len: int, tgt_len: int, steps: int) -> dict:
    """Wall times and summed thunk times per op of ``steps`` train steps (after a warm one)."""
    import jax
    import numpy as np
    from bench_train import bench_step, random_batch, step_flops
    from profile_decode import CONTAINERS, hlo_sources, thunk_times

    from seqjax.config import model_preset
    from seqjax.training.steps import init_train_state

    cfg = model_preset(preset)
    model, opt, step = bench_step(cfg)
    state = init_train_state(jax.jit(model.init)(jax.random.key(0)), opt)
    data = random_batch(cfg, batch, src_len, tgt_len, np.random.default_rng(0))
    key = jax.random.key(1)
    hlo = step.lower(state, data, key).compile().as_text()
    sources, flops = hlo_sources(hlo), dot_flops(hlo)
    backward = {n for n, o in re.findall(r"%([\w\-.]+) = .*?op_name=\"([^\"]+)\"", hlo)
                if "transpose(" in o}  # fmt: skip
    for _ in range(2):  # compiles, then one warm step
        state, m = step(state, data, key)
    jax.block_until_ready(m)
    wall = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, m = step(state, data, key)
        jax.block_until_ready(m)
        wall.append(time.perf_counter() - t0)
    trace = tempfile.mkdtemp(prefix="profile_train_")
    with jax.profiler.trace(trace):
        for _ in range(steps):
            state, m = step(state, data, key)
        jax.block_until_ready(m)
    ops = []
    for name, ns in thunk_times(trace).items():
        opcode, where = sources.get(name, ("?", "?"))
        if opcode in CONTAINERS:
            continue
        where = where.removeprefix("[once] ")  # no decoding loop here: every op runs once
        ops.append({"op": name, "opcode": opcode, "where": where,
                    "pass": "backward" if name in backward else "forward",
                    "class": op_class(name, opcode, where, name in flops),
                    "gflop": flops.get(name, 0.0) / 1e9, "ms_per_step": ns / steps / 1e6})  # fmt: skip
    ops.sort(key=lambda r: -r["ms_per_step"])
    by_class = {c: sum(r["ms_per_step"] for r in ops if r["class"] == c) for c in CLASSES}
    by_source: dict[str, float] = collections.defaultdict(float)
    for r in ops:
        by_source[r["where"]] += r["ms_per_step"]
    dots: dict[str, dict] = {}
    for r in ops:
        if r["class"] == "dot":
            d = dots.setdefault(f"{r['where']} ({r['pass']})", {"ms": 0.0, "gflop": 0.0, "ops": 0})
            d["ms"] += r["ms_per_step"]
            d["gflop"] += r["gflop"]
            d["ops"] += 1
    for d in dots.values():
        d["gflops_per_s"] = d["gflop"] / (d["ms"] / 1e3) if d["ms"] else 0.0
    flops = step_flops(cfg, batch, src_len, tgt_len)
    return {
        "preset": preset,
        "batch": batch,
        "tokens_per_step": batch * tgt_len,
        "step_gflop": flops / 1e9,
        "wall_ms_runs": [w * 1e3 for w in wall],
        "wall_ms_per_step": statistics.median(wall) * 1e3,
        "thunk_ms_per_step": sum(r["ms_per_step"] for r in ops),
        "dot_gflop_hlo": sum(r["gflop"] for r in ops),
        "dot_gflops_per_thunk_s": sum(r["gflop"] for r in ops) / (by_class["dot"] / 1e3 or 1),
        "dots": dict(sorted(dots.items(), key=lambda kv: -kv[1]["ms"])),
        "by_class": by_class,
        "by_source": dict(sorted(by_source.items(), key=lambda kv: -kv[1])),
        "ops": ops,
    }


_TORCH_CLASSES = (
    ("dot", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_addmm_activation")),
    ("copy/transpose", ("aten::copy_", "aten::clone", "aten::contiguous", "aten::_to_copy")),
    ("dropout", ("aten::bernoulli_", "aten::native_dropout", "aten::native_dropout_backward")),
    ("optimizer", ("aten::_foreach", "aten::_fused_adam", "Optimizer.", "aten::clamp")),
)


def torch_op_class(name: str) -> str:
    """The class of one PyTorch op (as ``op_class`` for XLA's), by its ATen name.

    >>> torch_op_class("aten::addmm"), torch_op_class("aten::_foreach_mul_")
    ('dot', 'optimizer')
    >>> torch_op_class("aten::native_layer_norm")
    'other'
    """
    for cls, prefixes in _TORCH_CLASSES:
        if name.startswith(prefixes):
            return cls
    return "other"


def profile_torch(preset: str, batch: int, src_len: int, tgt_len: int, steps: int) -> dict:
    """The training peer's step (``bench_train.TorchPeer``) under ``torch.profiler``: self
    CPU time per ATen op, summed by class, on the same batch shapes and threads."""
    import os

    import numpy as np
    import torch
    from bench_train import TorchPeer, random_batch, step_flops

    from seqjax.config import model_preset

    cfg = model_preset(preset)
    data = random_batch(cfg, batch, src_len, tgt_len, np.random.default_rng(0))
    peer = TorchPeer(cfg, os.cpu_count() or 1)
    for _ in range(2):
        peer.step(data)
    wall = []
    for _ in range(steps):
        t0 = time.perf_counter()
        peer.step(data)
        wall.append(time.perf_counter() - t0)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            peer.step(data)
    ops = [{"op": e.key, "class": torch_op_class(e.key),
            "ms_per_step": e.self_cpu_time_total / steps / 1e3} for e in prof.key_averages()]  # fmt: skip
    ops = sorted((o for o in ops if o["ms_per_step"] > 0), key=lambda o: -o["ms_per_step"])
    by_class = {c: sum(o["ms_per_step"] for o in ops if o["class"] == c) for c in CLASSES}
    flops = step_flops(cfg, batch, src_len, tgt_len)
    return {
        "wall_ms_runs": [w * 1e3 for w in wall],
        "wall_ms_per_step": statistics.median(wall) * 1e3,
        "self_ms_per_step": sum(o["ms_per_step"] for o in ops),
        "dot_gflops_per_s": flops / 1e9 / (by_class["dot"] / 1e3 or 1),
        "by_class": by_class,
        "ops": ops,
    }


def markdown(case: dict, meta: dict, top: int) -> str:
    total = case["thunk_ms_per_step"] or 1.0
    lines = [
        f"# Per-op profile of the `{case['preset']}` train step, batch {case['batch']}",
        "",
        f"{meta['src_len']}/{meta['tgt_len']} tokens per sentence; median wall "
        f"**{case['wall_ms_per_step']:.0f} ms** per step over {meta['steps']} steps "
        f"({case['tokens_per_step'] / case['wall_ms_per_step'] * 1e3:.0f} target tokens/s); "
        f"summed thunk time {case['thunk_ms_per_step']:.0f} ms per step over XLA's threads; "
        f"{case['step_gflop']:.1f} GFLOP per step by bench_train's count, "
        f"{case['dot_gflop_hlo']:.1f} in the compiled step's matmuls; those run at "
        f"{case['dot_gflops_per_thunk_s']:.0f} GFLOP per second of their thunk time.",
        "",
    ]
    peer = case.get("torch")  # its columns beside seqjax's when --torch profiled it
    lines += [
        "| class | ms/step | share of thunk time |"
        + (" PyTorch ms/step | PyTorch share |" if peer else ""),
        "|---|---:|---:|" + ("---:|---:|" if peer else ""),
    ]
    for c, ms in case["by_class"].items():
        row = f"| {c} | {ms:.1f} | {100 * ms / total:.1f}% |"
        if peer:
            row += (f" {peer['by_class'][c]:.1f} | "
                    f"{100 * peer['by_class'][c] / (peer['self_ms_per_step'] or 1):.1f}% |")  # fmt: skip
        lines.append(row)
    if peer:
        lines += [
            "",
            f"PyTorch (`bench_train.TorchPeer`, {meta['steps']} steps under `torch.profiler`, "
            f"self CPU time per ATen op): median wall **{peer['wall_ms_per_step']:.0f} ms** "
            f"per step, summed self time {peer['self_ms_per_step']:.0f} ms; its matmuls run "
            f"at {peer['dot_gflops_per_s']:.0f} GFLOP/s. PyTorch's whole step is "
            f"{peer['wall_ms_per_step'] / case['by_class']['dot']:.2f}x seqjax's matmul time "
            f"(the most seqjax could gain with every other op free). Its steps run after "
            f"seqjax's here, not interleaved: for the ratio of the two steps use "
            f"`bench_train.py --torch`.",
        ]
    lines += [
        "",
        "Matmuls by source and pass:",
        "",
        "| matmul source (pass) | ops | ms/step | GFLOP/step | GFLOP/s |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {w} | {d['ops']} | {d['ms']:.1f} | {d['gflop']:.1f} | {d['gflops_per_s']:.0f} |"
        for w, d in case["dots"].items()
    ]
    lines += ["", "| source (file:function < caller) | ms/step | share |", "|---|---:|---:|"]
    lines += [
        f"| {w} | {ms:.1f} | {100 * ms / total:.1f}% |"
        for w, ms in list(case["by_source"].items())[:top]
    ]
    lines += [
        "",
        "| op | opcode | class | source | ms/step | share |",
        "|---|---|---|---|---:|---:|",
    ]
    lines += [
        f"| {r['op']} | {r['opcode']} | {r['class']} | {r['where']} | {r['ms_per_step']:.2f} | "
        f"{100 * r['ms_per_step'] / total:.1f}% |"
        for r in case["ops"][:top]
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_step_args(p)
    p.add_argument("--steps", type=int, default=3, help="timed steps, then as many traced")
    p.add_argument("--top", type=int, default=30, help="sources and ops listed")
    p.add_argument("--torch", action="store_true",
                   help="also profile the PyTorch training peer (bench_train.TorchPeer)")  # fmt: skip
    p.add_argument("--out", default="experiments/results/profile_train",
                   help="writes OUT.json and OUT.md")  # fmt: skip
    args = p.parse_args(argv)
    require_positive(p, args, "batch", "src_len", "tgt_len", "steps")
    case = profile_step(args.preset, args.batch, args.src_len, args.tgt_len, args.steps)
    if args.torch:
        case["torch"] = profile_torch(
            args.preset, args.batch, args.src_len, args.tgt_len, args.steps
        )
    meta = {"src_len": args.src_len, "tgt_len": args.tgt_len, "steps": args.steps}
    write_results(args.out, meta, [case], markdown(case, meta, args.top))
    print(
        f"{args.preset} b{args.batch}: {case['wall_ms_per_step']:.0f} ms/step; "
        + ", ".join(f"{c} {ms:.0f} ms" for c, ms in case["by_class"].items())
    )


if __name__ == "__main__":
    main()
