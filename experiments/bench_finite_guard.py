"""The finite guard of the train step: the library's select against ``lax.cond``.

``seqjax.training.steps.apply_if_finite`` keeps an optimizer update only when the loss and
the gradient norm are finite: it computes the update and chooses ``jnp.where(ok, new,
old)`` over params and optimizer state. With the state donated, XLA copies every Adam
moment per step to do that (385 MB per ``base`` step, ``hlo_copies.py``). The candidate
here runs the update inside ``lax.cond`` instead, which removes those copies. This script
runs both forms of the same ``bench_train`` step side by side, step by step interleaved,
and reports:

- the median wall and CPU time per step of each, and their ratio;
- whether the two give the same bits: from one initial state and the same batches, every
  parameter and optimizer-state leaf after ``--check-steps`` updates is compared exactly
  (a change of the guard must not change what a run learns, e.g. the main job's BLEU);
- whether a step with a non-finite loss is still skipped (params unchanged).

Example::

    python experiments/bench_finite_guard.py --preset base --batch 32 --repeats 9 \\
        --out experiments/results/bench_finite_guard_base_b32
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import add_step_args, require_positive, timed  # noqa: E402
from results_io import write_results  # noqa: E402


def cond_guard(optimizer, state, loss, grads):
    """The candidate: the update runs inside ``lax.cond`` and writes the state in place."""
    import jax.numpy as jnp
    import optax
    from jax import lax

    from seqjax.training.steps import TrainState

    grad_norm = optax.global_norm(grads)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    def update(params, opt_state):
        updates, new_opt = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_opt

    keep = lambda params, opt_state: (params, opt_state)  # noqa: E731
    params, opt_state = lax.cond(ok, update, keep, state.params, state.opt_state)
    return TrainState(state.step + 1, params, opt_state), ok, grad_norm


def compiled_steps(cfg, state: Any, batch: dict, key) -> tuple[Any, Any]:
    """``(cond_step, select_step)``: bench_train's step for ``cfg`` compiled in both forms
    for these shapes (each a ``jax.stages.Compiled``; the state is donated when called)."""
    from bench_train import bench_step

    from seqjax.training import steps

    compiled = []
    for guard in (cond_guard, steps.apply_if_finite):
        _, _, step = bench_step(cfg)
        library_guard = steps.apply_if_finite
        steps.apply_if_finite = guard  # build_step's step reads the global when traced
        try:
            compiled.append(step.lower(state, batch, key).compile())
        finally:
            steps.apply_if_finite = library_guard
    return compiled[0], compiled[1]


def same_bits(a: Any, b: Any) -> tuple[bool, int]:
    """Whether two pytrees are bit-identical (NaNs included), and how many leaves differ."""
    import jax
    import numpy as np

    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    bits = lambda x: np.ascontiguousarray(np.asarray(x)).view(np.uint8)  # noqa: E731 (NaN == NaN)
    differ = sum(not np.array_equal(bits(x), bits(y)) for x, y in zip(la, lb, strict=True))
    return differ == 0 and len(la) == len(lb), differ


def run(args) -> dict:
    import jax
    import numpy as np
    from bench_train import bench_step, random_batch

    from seqjax.config import model_preset
    from seqjax.training.steps import init_train_state

    cfg = model_preset(args.preset)
    rng = np.random.default_rng(0)
    batches = [random_batch(cfg, args.batch, args.src_len, args.tgt_len, rng)
               for _ in range(args.check_steps)]  # fmt: skip
    key = jax.random.key(1)
    model, opt, _ = bench_step(cfg)
    params = jax.jit(model.init)(jax.random.key(0))
    fresh = lambda: init_train_state(jax.tree.map(jax.numpy.copy, params), opt)  # noqa: E731

    cond_step, select_step = compiled_steps(cfg, fresh(), batches[0], key)

    # Same bits: the same updates from the same state through both forms.
    states = []
    for step in (cond_step, select_step):
        state = fresh()
        for b in batches:
            state, _ = step(state, b, key)
        states.append(jax.device_get(state))
    identical, differ = same_bits(states[0], states[1])

    # A non-finite step is skipped by both: one NaN in every parameter makes the loss NaN.
    skipped = {}
    for name, step in (("cond", cond_step), ("select", select_step)):
        state = fresh()
        nan_state = state._replace(
            params=jax.tree.map(lambda x: x.at[(0,) * x.ndim].set(np.nan), state.params)
        )
        before = jax.device_get(nan_state.params)
        out, m = step(nan_state, batches[0], key)
        skipped[name] = {"skipped": int(m["skipped"]),
                         "params_unchanged": same_bits(before, jax.device_get(out.params))[0]}  # fmt: skip

    # Speed, interleaved step by step.
    cond_state, select_state = fresh(), fresh()
    for _ in range(2):  # warm
        cond_state, _ = cond_step(cond_state, batches[0], key)
        select_state, _ = select_step(select_state, batches[0], key)
    t = {"cond": ([], []), "select": ([], [])}
    for _ in range(args.repeats):
        (cond_state, _), w, c = timed(cond_step, cond_state, batches[0], key)
        t["cond"][0].append(w)
        t["cond"][1].append(c)
        (select_state, _), w, c = timed(select_step, select_state, batches[0], key)
        t["select"][0].append(w)
        t["select"][1].append(c)
    med = {k: (statistics.median(w), statistics.median(c)) for k, (w, c) in t.items()}
    return {
        "preset": args.preset,
        "batch": args.batch,
        "tokens_per_step": args.batch * args.tgt_len,
        "check_steps": args.check_steps,
        "bit_identical": identical,
        "leaves_differing": differ,
        "nonfinite_step": skipped,
        "wall_s_runs": {k: v[0] for k, v in t.items()},
        "cpu_s_runs": {k: v[1] for k, v in t.items()},
        "median_wall_s": {k: v[0] for k, v in med.items()},
        "median_cpu_s": {k: v[1] for k, v in med.items()},
        "speedup_wall": med["select"][0] / med["cond"][0],
        "speedup_cpu": med["select"][1] / med["cond"][1],
    }


def markdown(r: dict, meta: dict) -> str:
    tok = r["tokens_per_step"]
    rows = [
        f"| {k} | {1e3 * r['median_wall_s'][k]:.0f} | {1e3 * r['median_cpu_s'][k]:.0f} | "
        f"{tok / r['median_wall_s'][k]:.0f} | {r['nonfinite_step'][k]['skipped']} / "
        f"{r['nonfinite_step'][k]['params_unchanged']} |"
        for k in ("select", "cond")
    ]
    return (
        "\n".join(
            [
                f"# The finite guard: `lax.cond` vs select, `{r['preset']}` batch {r['batch']}",
                "",
                f"{meta['src_len']}/{meta['tgt_len']} tokens per sentence; median of "
                f"{meta['repeats']} steps of each form, interleaved step by step.",
                "",
                "| guard | wall ms/step | CPU ms/step | target tokens/s (wall) | "
                "NaN step: skipped / params unchanged |",
                "|---|---:|---:|---:|---|",
                *rows,
                "",
                f"cond / select speed-up: **{r['speedup_wall']:.3f}x** by wall clock, "
                f"{r['speedup_cpu']:.3f}x by CPU time.",
                "",
                f"Same bits after {r['check_steps']} updates from one state on the same batches: "
                f"**{'yes' if r['bit_identical'] else 'no'}** "
                f"({r['leaves_differing']} leaves of params and optimizer state differ).",
            ]
        )
        + "\n"
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_step_args(p)
    p.add_argument("--repeats", type=int, default=7, help="timed steps of each form")
    p.add_argument("--check-steps", type=int, default=5, help="updates compared bit for bit")
    p.add_argument("--out", default="experiments/results/bench_finite_guard",
                   help="writes OUT.json and OUT.md")  # fmt: skip
    args = p.parse_args(argv)
    require_positive(p, args, "batch", "src_len", "tgt_len", "repeats", "check_steps")
    r = run(args)
    meta = {"src_len": args.src_len, "tgt_len": args.tgt_len, "repeats": args.repeats}
    write_results(args.out, meta, [r], markdown(r, meta))


if __name__ == "__main__":
    main()
