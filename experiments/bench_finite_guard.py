"""The finite guard of the train step: the library's select against two candidates.

``seqjax.training.steps.apply_if_finite`` keeps an optimizer update only when the loss and
the gradient norm are finite: it computes the update and chooses ``jnp.where(ok, new,
old)`` over params and optimizer state. With the state donated, XLA copies every Adam
moment per step to do that (385 MB per ``base`` step, ``hlo_copies.py``): the params'
update recomputes the new moments from the old ones, so two fusions read each old
moment while one of them overwrites it. Two candidates remove those copies:

- ``cond``: the update runs inside ``lax.cond`` and writes the state in place;
- ``adam``: the select moves *into* Adam (``guarded_adam``): the moments are kept or
  replaced first and the update is computed from the kept ones, so one fusion reads
  and rewrites each moment; the params are still selected outside. Same optimizer state
  layout as ``optax.adamw`` (checkpoints would not change).

This script runs the three forms of the same ``bench_train`` step side by side, step by
step interleaved, and reports per form:

- the median wall and CPU time per step, and its speed-up over the library's select;
- what the compiled step copies (``hlo_copies.layout_moves``, MB per step) and its
  temporary memory (XLA's ``memory_analysis``);
- whether it gives the library's bits: from one initial state and the same batches, every
  parameter and optimizer-state leaf after ``--check-steps`` updates is compared exactly
  (a change of the guard must not change what a run learns, e.g. the main job's BLEU);
- whether a step with a non-finite loss is still skipped (params and optimizer state
  unchanged).

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

from bench_train import add_step_args, timed  # noqa: E402
from results_io import require_positive, write_results  # noqa: E402

FORMS = ("select", "cond", "adam")  # the library's first: speed-ups are over it


def cond_guard(optimizer, state, loss, grads):
    """The update runs inside ``lax.cond`` and writes the state in place."""
    import optax
    from jax import lax

    from seqjax.training.steps import TrainState, update_is_finite

    ok, grad_norm = update_is_finite(loss, grads)

    def update(params, opt_state):
        updates, new_opt = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_opt

    keep = lambda params, opt_state: (params, opt_state)  # noqa: E731
    params, opt_state = lax.cond(ok, update, keep, state.params, state.opt_state)
    return TrainState(state.step + 1, params, opt_state), ok, grad_norm


def guarded_adam(b1: float, b2: float, eps: float):
    """``optax.scale_by_adam`` (same state, same arithmetic) whose new moments are kept
    only where the extra argument ``finite`` is true; the update reads the kept ones."""
    import jax
    import jax.numpy as jnp
    import optax

    def update(updates, state, params=None, *, finite, **extra):
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
        mu = keep(optax.tree.update_moment(updates, state.mu, b1, 1), state.mu)
        nu = keep(optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2), state.nu)
        count = jnp.where(finite, optax.safe_increment(state.count), state.count)
        mu_hat = optax.tree.bias_correction(mu, b1, count)
        nu_hat = optax.tree.bias_correction(nu, b2, count)
        out = jax.tree.map(lambda m, v: m / (jnp.sqrt(v + 0.0) + eps), mu_hat, nu_hat)
        return out, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformationExtraArgs(optax.scale_by_adam(b1, b2, eps).init, update)


def guarded_optimizer(cfg):
    """``make_optimizer(cfg)`` with ``guarded_adam`` in place of Adam's scaling."""
    import optax

    from seqjax.training import optimizer as lib

    adamw = optax.chain(
        guarded_adam(0.9, cfg.adam_b2, 1e-9),
        optax.add_decayed_weights(cfg.weight_decay, lib._decay_mask),
        optax.scale_by_learning_rate(lib.learning_rate_schedule(cfg)),
    )
    return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), adamw)


def adam_guard(optimizer, state, loss, grads):
    """Params selected outside as in the library; Adam's state left to ``guarded_adam``
    (selecting its moments again outside brings the copies back: XLA does not fold
    ``where(ok, where(ok, a, b), b)``); every other state leaf selected outside."""
    import jax
    import jax.numpy as jnp
    import optax

    from seqjax.training.steps import TrainState, update_is_finite

    ok, grad_norm = update_is_finite(loss, grads)
    updates, new_opt = optimizer.update(grads, state.opt_state, state.params, finite=ok)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)  # noqa: E731
    adam = lambda x: isinstance(x, optax.ScaleByAdamState)  # noqa: E731
    opt = jax.tree.map(lambda n, o: n if adam(n) else keep(n, o),
                       new_opt, state.opt_state, is_leaf=adam)  # fmt: skip
    params = keep(optax.apply_updates(state.params, updates), state.params)
    return TrainState(state.step + 1, params, opt), ok, grad_norm


def compiled_steps(cfg, params: Any, batch: dict, key) -> dict[str, tuple[Any, Any]]:
    """``{form: (compiled step, optimizer)}``: bench_train's step for ``cfg`` compiled in
    each form for these shapes (the state is donated when called)."""
    from bench_train import bench_step

    from seqjax.training import steps
    from seqjax.training.optimizer import make_optimizer

    guards = {"select": steps.apply_if_finite, "cond": cond_guard, "adam": adam_guard}
    out = {}
    for form in FORMS:
        _, opt, step = bench_step(cfg, guarded_optimizer if form == "adam" else make_optimizer)
        library_guard = steps.apply_if_finite
        steps.apply_if_finite = guards[form]  # build_step's step reads the global when traced
        try:
            state = steps.init_train_state(params, opt)
            out[form] = (step.lower(state, batch, key).compile(), opt)
        finally:
            steps.apply_if_finite = library_guard
    return out


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
    from hlo_copies import layout_moves

    from seqjax.config import model_preset
    from seqjax.training.steps import init_train_state

    cfg = model_preset(args.preset)
    rng = np.random.default_rng(0)
    batches = [random_batch(cfg, args.batch, args.src_len, args.tgt_len, rng)
               for _ in range(args.check_steps)]  # fmt: skip
    key = jax.random.key(1)
    model, _, _ = bench_step(cfg)
    params = jax.jit(model.init)(jax.random.key(0))
    steps = compiled_steps(cfg, params, batches[0], key)
    fresh = lambda form: init_train_state(jax.tree.map(jax.numpy.copy, params), steps[form][1])  # noqa: E731

    compiled = {}
    for form, (step, _) in steps.items():
        memory = step.memory_analysis()
        compiled[form] = {
            "copied_mb": sum(m["bytes"] for m in layout_moves(step.as_text())) / 1e6,
            "temp_mb": memory.temp_size_in_bytes / 1e6 if memory is not None else None,
        }

    # Same bits: the same updates from the same state through every form.
    final = {}
    for form, (step, _) in steps.items():
        state = fresh(form)
        for b in batches:
            state, _ = step(state, b, key)
        final[form] = jax.device_get(state)
    bits = {form: same_bits(final["select"], final[form]) for form in FORMS}

    # A non-finite step is skipped: one NaN in every parameter makes the loss NaN.
    skipped = {}
    for form, (step, _) in steps.items():
        state = fresh(form)
        nan_state = state._replace(
            params=jax.tree.map(lambda x: x.at[(0,) * x.ndim].set(np.nan), state.params)
        )
        before = jax.device_get(nan_state)
        out, m = step(nan_state, batches[0], key)
        after = jax.device_get(out)
        skipped[form] = {"skipped": int(m["skipped"]),
                         "params_unchanged": same_bits(before.params, after.params)[0],
                         "opt_state_unchanged": same_bits(before.opt_state, after.opt_state)[0]}  # fmt: skip

    # Speed, interleaved step by step.
    states = {form: fresh(form) for form in FORMS}
    for _ in range(2):  # warm
        for form in FORMS:
            states[form], _ = steps[form][0](states[form], batches[0], key)
    t = {form: ([], []) for form in FORMS}
    for _ in range(args.repeats):
        for form in FORMS:
            (states[form], _), w, c = timed(steps[form][0], states[form], batches[0], key)
            t[form][0].append(w)
            t[form][1].append(c)
    med = {k: (statistics.median(w), statistics.median(c)) for k, (w, c) in t.items()}
    return {
        "preset": args.preset,
        "batch": args.batch,
        "tokens_per_step": args.batch * args.tgt_len,
        "check_steps": args.check_steps,
        "bit_identical": {form: bits[form][0] for form in FORMS},
        "leaves_differing": {form: bits[form][1] for form in FORMS},
        "nonfinite_step": skipped,
        "compiled": compiled,
        "wall_s_runs": {k: v[0] for k, v in t.items()},
        "cpu_s_runs": {k: v[1] for k, v in t.items()},
        "median_wall_s": {k: v[0] for k, v in med.items()},
        "median_cpu_s": {k: v[1] for k, v in med.items()},
        "speedup_wall": {k: med["select"][0] / med[k][0] for k in FORMS},
        "speedup_cpu": {k: med["select"][1] / med[k][1] for k in FORMS},
    }


def markdown(r: dict, meta: dict) -> str:
    tok = r["tokens_per_step"]

    def row(k: str) -> str:
        c, n = r["compiled"][k], r["nonfinite_step"][k]
        temp = "n/a" if c["temp_mb"] is None else f"{c['temp_mb']:.0f}"
        return (
            f"| {k} | {1e3 * r['median_wall_s'][k]:.0f} | {1e3 * r['median_cpu_s'][k]:.0f} | "
            f"{tok / r['median_wall_s'][k]:.0f} | {r['speedup_wall'][k]:.3f}x / "
            f"{r['speedup_cpu'][k]:.3f}x | {c['copied_mb']:.0f} | {temp} | "
            f"{'yes' if r['bit_identical'][k] else 'no'} ({r['leaves_differing'][k]}) | "
            f"{n['skipped']} / {n['params_unchanged']} / {n['opt_state_unchanged']} |"
        )

    return (
        "\n".join(
            [
                f"# The finite guard in three forms, `{r['preset']}` batch {r['batch']}",
                "",
                f"{meta['src_len']}/{meta['tgt_len']} tokens per sentence; median of "
                f"{meta['repeats']} steps of each form, interleaved step by step. Speed-up "
                "is over the library's `select`; copies and temp memory are read from the "
                f"compiled step; bits compared with `select` after {r['check_steps']} "
                "updates from one state on the same batches (leaves differing).",
                "",
                "| guard | wall ms/step | CPU ms/step | target tokens/s (wall) | speed-up "
                "wall / CPU | copied MB/step | temp MB | same bits | NaN step: skipped / "
                "params unchanged / optimizer state unchanged |",
                "|---|---:|---:|---:|---:|---:|---:|---|---|",
                *(row(k) for k in FORMS),
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
