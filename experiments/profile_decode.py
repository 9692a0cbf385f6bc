"""Where one decode step's time goes: a per-op profile of seqjax's compiled decoders.

The model is bench_vs_peers' random transformer-base Marian (6+6 layers, d512, 8 heads,
ffn 2048, vocab 8000, swish), built from its HF config with ``hf_model_config`` (no torch
needed). Each case (greedy / beam 4 x batch 1 / 16) runs the real jitted decoder
(``greedy`` or ``beam_search`` with ``min_len = max_len = N``) under ``jax.profiler.trace``;
XLA:CPU records one event per executed thunk (fusion, YNNPACK dot, gather, ...), inside
the ``while`` loop too. Events are summed by HLO instruction, divided by the N steps and
the rounds, and attributed to the seqjax source function that emitted the op (from the
compiled HLO's ``source_file``/``source_line`` metadata). Thunk times of the two intra-op
threads add up, so shares are of summed thunk time; the wall time per step is measured
separately. The decoders compile with seqjax's choice of matmul kernels
(``seqjax.decoding.compile_options``); where that is XLA's own (Eigen, small batches of
this model on CPU) the dot thunks' events cover only part of their work (a greedy
batch-16 step: 7.7 ms of thunks in a 19.5 ms step), so profile with
``SEQJAX_CPU_DOTS=ynnpack`` for shares.

``--isa AVX2`` caps XLA's code generation at AVX2 (``--xla_cpu_max_isa``), emulating an
AVX2-only CPU such as the EPYC of issue 19; the script checks that the cap changes the
generated code (the ``target-features`` of the dumped LLVM IR) and times one GEMM under it.
``--threads 1`` runs XLA with one intra-op thread.

    python experiments/profile_decode.py --isa AVX2 --out experiments/results/profile_decode_avx2
    python experiments/profile_decode.py --out experiments/results/profile_decode_native
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile
import time
from pathlib import Path

MARIAN = {
    "model_type": "marian",
    "architectures": ["MarianMTModel"],
    "activation_function": "swish",
    "d_model": 512,
    "encoder_layers": 6,
    "decoder_layers": 6,
    "encoder_attention_heads": 8,
    "decoder_attention_heads": 8,
    "encoder_ffn_dim": 2048,
    "decoder_ffn_dim": 2048,
    "max_position_embeddings": 512,
    "vocab_size": 8000,
    "decoder_vocab_size": 8000,
    "pad_token_id": 7999,
    "decoder_start_token_id": 7999,
    "eos_token_id": 0,
    "scale_embedding": True,
    "share_encoder_decoder_embeddings": True,
    "tie_word_embeddings": True,
}


def set_xla_flags(isa: str | None, threads: int | None) -> str:
    """Append the ISA cap / one-thread flags to XLA_FLAGS (before jax is imported)."""
    flags = os.environ.get("XLA_FLAGS", "").split()
    if isa:
        flags.append(f"--xla_cpu_max_isa={isa}")
    if threads == 1:
        flags += ["--xla_cpu_multi_thread_eigen=false", "intra_op_parallelism_threads=1"]
    os.environ["XLA_FLAGS"] = " ".join(flags)
    return os.environ["XLA_FLAGS"]


def isa_check() -> dict:
    """The target features of XLA's generated code and one GEMM's speed under the flags."""
    import jax
    import jax.numpy as jnp

    dump = tempfile.mkdtemp(prefix="xla_dump_")
    f = jax.jit(lambda x, w: jnp.tanh(x @ w) * 2.0)
    x, w = jnp.ones((64, 512)), jnp.ones((512, 2048))
    opts = {"xla_dump_to": dump}
    try:
        jax.jit(lambda x: jnp.tanh(x) * 2.0 + 1.0).lower(x).compile(compiler_options=opts)
    except Exception as e:  # noqa: BLE001 (a report, not a failure)
        return {"error": str(e)[:200]}
    asm = ""
    for path in glob.glob(f"{dump}/*.o"):
        asm += os.popen(f"objdump -d {path} 2>/dev/null").read()
    f(x, w).block_until_ready()
    t0, n = time.perf_counter(), 50
    for _ in range(n):
        y = f(x, w)
    y.block_until_ready()
    dt = (time.perf_counter() - t0) / n
    return {
        "zmm_instructions": asm.count("%zmm"),  # AVX-512 registers in XLA's own code
        "ymm_instructions": asm.count("%ymm"),
        "gemm_64x512x2048_gflops": 2 * 64 * 512 * 2048 / dt / 1e9,
    }


def _frames(hlo_text: str) -> dict[int, str]:
    """stack_frame_id -> "file.py:function < caller" from the HLO's stack-frame tables."""
    sections: dict[str, dict[int, str]] = {}
    current = None
    for line in hlo_text.splitlines():
        if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
            current = sections.setdefault(line, {})
        elif current is not None and (m := re.match(r"^(\d+) (.*)$", line)):
            current[int(m.group(1))] = m.group(2)
        elif not line.strip():
            current = None
    files = {k: Path(v.strip('"')).name for k, v in sections.get("FileNames", {}).items()}
    funcs = {k: v.strip('"') for k, v in sections.get("FunctionNames", {}).items()}
    locs = {}
    for k, v in sections.get("FileLocations", {}).items():
        f = re.search(r"file_name_id=(\d+) function_name_id=(\d+)", v)
        locs[k] = (
            (files.get(int(f.group(1)), "?"), funcs.get(int(f.group(2)), "?")) if f else ("?", "?")
        )
    frames: dict[int, tuple[int, int]] = {}
    for k, v in sections.get("StackFrames", {}).items():
        f = re.search(r"file_location_id=(\d+) parent_frame_id=(\d+)", v)
        if f:
            frames[k] = (int(f.group(1)), int(f.group(2)))
    out = {}
    for k, (loc, parent) in frames.items():
        file, func = locs.get(loc, ("?", "?"))
        caller = (
            locs.get(frames[parent][0], ("?", "?"))[1] if parent in frames and parent != k else ""
        )
        out[k] = f"{file}:{func}" + (f" < {caller}" if caller and caller != func else "")
    return out


def _loop_computations(hlo_text: str) -> set[str]:
    """Computations run inside a while loop (bodies and everything they call)."""
    calls: dict[str, set[str]] = collections.defaultdict(set)
    bodies: set[str] = set()
    comp = None
    for line in hlo_text.splitlines():
        head = re.match(r"^(?:ENTRY )?%([\w.\-]+) ", line)
        if head and line.rstrip().endswith("{"):
            comp = head.group(1)
            continue
        if comp is None:
            continue
        for kind, name in re.findall(
            r"(body|condition|calls|to_apply|branch_computations)=\{?%([\w.\-]+)", line
        ):
            calls[comp].add(name)
            if kind in ("body", "condition"):
                bodies.add(name)
    inside, todo = set(), list(bodies)
    while todo:
        c = todo.pop()
        if c not in inside:
            inside.add(c)
            todo.extend(calls[c])
    return inside


def hlo_sources(hlo_text: str) -> dict[str, tuple[str, str]]:
    """Instruction name -> (opcode, "file.py:function < caller") from compiled HLO metadata;
    "[once] " marks instructions outside the decoding loop (encoder, init_cache, prepare)."""
    frames = _frames(hlo_text)
    loop = _loop_computations(hlo_text)
    out = {}
    inst = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*? ([a-z][\w\-]*)\(")
    comp = None
    for line in hlo_text.splitlines():
        head = re.match(r"^(?:ENTRY )?%([\w.\-]+) ", line)
        if head and line.rstrip().endswith("{"):
            comp = head.group(1)
            continue
        m = inst.match(line)
        if not m:
            continue
        name, opcode = m.groups()
        sf = re.search(r"stack_frame_id=(\d+)", line)
        op = re.search(r'op_name="([^"]+)"', line)
        where = frames.get(int(sf.group(1)), "?") if sf else "?"
        if where == "?" and op:
            where = op.group(1).split("/")[-1]
        if where == "?":
            where = f"? ({opcode}, no metadata)"
        out[name] = (opcode, where if comp in loop else f"[once] {where}")
    return out


SKIP = ("ThreadpoolListener", "SlinkyThreadPool", "ThunkExecutor", "end: ", "PjitFunction", "$")
CONTAINERS = {"while", "conditional", "call"}


def thunk_times(trace_dir: str) -> dict[str, float]:
    """Summed event nanoseconds per thunk name over XLA's CPU threads."""
    import jax

    (path,) = glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)
    data = jax.profiler.ProfileData.from_file(path)
    total: dict[str, float] = collections.defaultdict(float)
    for plane in data.planes:
        if plane.name != "/host:CPU":
            continue
        for line in plane.lines:
            if not line.name.startswith(("tf_XLA", "XLA")):
                continue
            for ev in line.events:
                if not ev.name.startswith(SKIP):
                    total[ev.name] += ev.duration_ns
    return total


def build(hf_dir: str | None):
    import jax

    from seqjax.interop.hf import hf_model_config, load_hf
    from seqjax.models import build_model

    if hf_dir:
        model, params, _ = load_hf(hf_dir)
        return model, params
    model = build_model(hf_model_config(MARIAN))
    return model, model.init(jax.random.key(0))


def decoder(model, method: str, beam: int, n: int, rows: int, params, options=None):
    """The jitted encode + decode of exactly ``n`` tokens a row (``.tokens [B, K, n]``),
    compiled with ``options`` (default: the library's choice for ``rows`` and ``params``)."""
    import jax

    from seqjax.decoding import beam_search, greedy
    from seqjax.decoding.compile_options import decode_compiler_options

    c = model.config

    def run(params, src_BxS):
        mask = src_BxS != c.pad_id
        cache = model.init_cache(params, model.encode(params, src_BxS, mask), mask, n)
        common = dict(max_len=n, min_len=n, bos_id=c.bos_id, eos_id=c.eos_id, pad_id=c.pad_id)
        if method == "greedy":
            return greedy(model.step, cache, params=params, **common).tokens
        return beam_search(
            model.step, cache, params=params, beam_size=beam, alpha=1.0, **common
        ).tokens

    # the library's per-size choice of XLA:CPU matmul kernels (SEQJAX_CPU_DOTS overrides)
    if options is None:
        options = decode_compiler_options(rows, params)
    return jax.jit(run, compiler_options=options or None)


def profile_case(model, params, method: str, batch: int, args) -> dict:
    import jax
    import numpy as np

    rows = batch * (1 if method == "greedy" else args.beam_size)
    fn = decoder(model, method, args.beam_size, args.new_tokens, rows, params)
    rng = np.random.default_rng(0)
    src = rng.integers(2, model.config.vocab_size - 1, (batch, args.src_len))
    src[:, -1] = model.config.eos_id
    src = jax.numpy.asarray(src, jax.numpy.int32)
    fn(params, src).block_until_ready()
    t0 = time.perf_counter()
    for _ in range(args.rounds):
        fn(params, src).block_until_ready()
    wall = (time.perf_counter() - t0) / args.rounds
    sources = hlo_sources(fn.lower(params, src).compile().as_text())
    trace = tempfile.mkdtemp(prefix="profile_decode_")
    with jax.profiler.trace(trace):
        for _ in range(args.rounds):
            fn(params, src).block_until_ready()
    times = thunk_times(trace)
    steps = args.rounds * args.new_tokens
    rows = []
    for name, ns in times.items():
        opcode, where = sources.get(name, ("?", "?"))
        if opcode in CONTAINERS:
            continue
        rows.append({"op": name, "opcode": opcode, "where": where, "us_per_step": ns / steps / 1e3})
    rows.sort(key=lambda r: -r["us_per_step"])
    loop_us = sum(r["us_per_step"] for r in rows if not r["where"].startswith("[once]"))
    by_where: dict[str, float] = collections.defaultdict(float)
    for r in rows:
        by_where[r["where"]] += r["us_per_step"]
    return {
        "method": method if method == "greedy" else f"beam{args.beam_size}",
        "batch": batch,
        "wall_ms_per_call": wall * 1e3,
        "wall_us_per_step": wall / args.new_tokens * 1e6,
        "loop_thunk_us_per_step": loop_us,
        "ops": rows,
        "by_source": dict(sorted(by_where.items(), key=lambda kv: -kv[1])),
    }


def markdown(cases: list[dict], meta: dict, top: int) -> str:
    lines = [
        f"# Per-op profile of one decode step ({meta['label']})",
        "",
        f"XLA_FLAGS=`{meta['xla_flags']}`; ISA check: {meta['isa_check']}; "
        f"{meta['new_tokens']} tokens per call, {meta['rounds']} traced calls; "
        f"load before `{meta['uptime_before']}`, after `{meta['uptime_after']}`.",
        "",
        "Times are summed thunk time per decode step over XLA's threads (two threads can "
        "overlap, so the total may exceed the wall time); the encoder and init_cache run "
        "once per call and are spread over its steps.",
    ]
    for c in cases:
        total = sum(r["us_per_step"] for r in c["ops"]) or 1.0
        lines += [
            "",
            f"## {c['method']}, batch {c['batch']}: wall {c['wall_us_per_step']:.0f} us/step, "
            f"summed thunks {total:.0f} us/step, of which in the loop "
            f"{c['loop_thunk_us_per_step']:.0f}",
            "",
            "| source (file:function) | us/step | share |",
            "|---|---:|---:|",
        ]
        lines += [
            f"| {w} | {us:.1f} | {100 * us / total:.1f}% |" for w, us in c["by_source"].items()
        ]
        lines += ["", "| op | opcode | source | us/step | share |", "|---|---|---|---:|---:|"]
        lines += [
            f"| {r['op']} | {r['opcode']} | {r['where']} | {r['us_per_step']:.1f} | "
            f"{100 * r['us_per_step'] / total:.1f}% |"
            for r in c["ops"][:top]
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--isa", help="cap XLA's code generation, e.g. AVX2 (--xla_cpu_max_isa)")
    p.add_argument("--threads", type=int, choices=(1, 2), help="1: one intra-op thread")
    p.add_argument(
        "--cases", default="greedy:1,greedy:16,beam:1,beam:16", help="method:batch pairs"
    )
    p.add_argument("--beam-size", type=int, default=4, help="beams for the beam method")
    p.add_argument("--src-len", type=int, default=32, help="source tokens per row")
    p.add_argument("--new-tokens", type=int, default=32, help="output tokens per call")
    p.add_argument("--rounds", type=int, default=3, help="profiled calls per case")
    p.add_argument("--top", type=int, default=15, help="ops listed per case")
    p.add_argument("--hf", help="a HF Marian dir (default: the random Marian-base config)")
    p.add_argument(
        "--quantize",
        choices=("int8", "w8a8", "bf16"),
        help="low-precision weights (models/quantize.py modes)",
    )
    p.add_argument(
        "--out", default="experiments/results/profile_decode", help="writes OUT.json and OUT.md"
    )
    args = p.parse_args(argv)
    flags = set_xla_flags(args.isa, args.threads)

    sys.path.insert(0, str(Path(__file__).parent))
    from results_io import write_results

    before = os.popen("uptime").read().strip()
    check = isa_check()
    print("ISA check:", check, flush=True)
    model, params = build(args.hf)
    if args.quantize:
        from seqjax.models.quantize import quantize_params

        params = quantize_params(params, args.quantize)
    cases = []
    for case in args.cases.split(","):
        method, batch = case.split(":")
        c = profile_case(model, params, method, int(batch), args)
        print(
            f"{c['method']} b{batch}: {c['wall_us_per_step']:.0f} us/step; top: "
            + ", ".join(f"{w} {us:.0f}" for w, us in list(c["by_source"].items())[:4]),
            flush=True,
        )
        cases.append(c)
    meta = {
        "label": (f"ISA cap {args.isa}" if args.isa else "native ISA")
        + (f", --quantize {args.quantize}" if args.quantize else ""),
        "xla_flags": flags,
        "isa_check": check,
        "new_tokens": args.new_tokens,
        "rounds": args.rounds,
        "uptime_before": before,
        "uptime_after": os.popen("uptime").read().strip(),
    }
    write_results(args.out, meta, cases, markdown(cases, meta, args.top))


if __name__ == "__main__":
    main()
