"""Measurements on 8 simulated CPU devices, run by tests/test_sharding.py in a subprocess.

``XLA_FLAGS=--xla_force_host_platform_device_count=8`` must be set before JAX starts,
and it would change every other test, so this module runs as its own process::

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/multidevice_checks.py \\
        CORPUS_DIR RUN_DIR OUT.json

It writes the raw observations (differences, shapes, shardings, exit codes) as JSON; the
assertions live in tests/test_sharding.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from seqjax import sharding
from seqjax.app.translate import _decode_batch
from seqjax.config import DecodeConfig, TrainConfig, model_preset
from seqjax.decoding import numeric_options, static_part
from seqjax.models import build_model
from seqjax.training.optimizer import make_optimizer
from seqjax.training.steps import TrainState, init_train_state, make_train_step


def _batch(vocab: int, rows: int, length: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    src = rng.integers(4, vocab, (rows, length)).astype(np.int32)
    src[:, length - 2 :] = 0  # some source padding
    tgt = src[:, ::-1].copy()
    tgt_in = np.concatenate([np.full((rows, 1), 2), tgt[:, :-1]], 1).astype(np.int32)
    return {"src": src, "tgt_in": tgt_in, "tgt_out": tgt}


def _max_diff(a, b) -> float:
    leaves = jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(x - y))), a, b))
    return max(leaves)


def train_step_checks() -> dict:
    """Two train steps on 1 device (12 rows) vs meshes of 8 devices (rows padded to 16)."""
    cfg = model_preset("tiny", dropout=0.0)
    model = build_model(cfg)
    opt = make_optimizer(TrainConfig(learning_rate=1e-3, warmup_steps=4))
    step = make_train_step(model, opt, label_smoothing=0.1, pad_id=0)
    params = jax.device_get(model.init(jax.random.key(1)))  # host copy: steps donate the state
    key = jax.random.key(0)
    batches = [_batch(cfg.vocab_size, 12, 10, s) for s in (0, 1)]
    one = jax.devices()[0]

    def run(mesh):
        state = init_train_state(params, opt)
        if mesh is None:
            state = jax.device_put(state, one)
        else:
            state = TrainState(
                sharding.place_replicated(state.step, mesh),
                sharding.place_params(state.params, mesh),
                sharding.place_params(state.opt_state, mesh),
            )
        losses = []
        for b in batches:
            if mesh is None:
                dev = jax.device_put(b, one)
            else:
                rows = sharding.padded_rows(12, mesh)
                dev = sharding.shard_rows(
                    {k: sharding.pad_rows(v, rows, 0) for k, v in b.items()}, mesh
                )
            state, m = step(state, dev, key)
            losses.append(float(m["loss"]))
        return state, losses, dev

    ref_state, ref_losses, _ = run(None)
    out: dict = {"ref_losses": ref_losses}
    # The tiny model's matrices are below the size that is split along ``model``; lower the
    # threshold so the model-axis run really splits them (2048-element tables and matrices).
    sharding.MIN_MODEL_SHARD_SIZE = 1024
    for spec in ("data=8", "data=4,model=2"):
        mesh = sharding.make_mesh(spec)
        state, losses, dev = run(mesh)
        leaf = jax.tree.leaves(state.params)
        out[spec] = {
            "losses": losses,
            "param_max_diff": _max_diff(
                jax.device_get(state.params), jax.device_get(ref_state.params)
            ),
            "opt_max_diff": _max_diff(
                jax.device_get(state.opt_state), jax.device_get(ref_state.opt_state)
            ),
            "batch_rows": int(dev["src"].shape[0]),
            "batch_rows_per_device": int(dev["src"].addressable_shards[0].data.shape[0]),
            "param_devices": sorted({len(x.sharding.device_set) for x in leaf}),
            "params_replicated": all(x.sharding.is_fully_replicated for x in leaf),
            "params_split_on_model": sum(
                "model" in tuple(x.sharding.spec) for x in leaf if hasattr(x.sharding, "spec")
            ),
        }
    return out


def beam_checks() -> dict:
    """Beam search (and greedy) over a row-sharded batch vs one device."""
    cfg = model_preset("tiny", dropout=0.0)
    model = build_model(cfg)
    params = model.init(jax.random.key(3))
    params = jax.tree.map(lambda x: x * 3.0, params)  # varied outputs across rows
    rng = np.random.default_rng(5)
    src = rng.integers(4, cfg.vocab_size, (5, 12)).astype(np.int32)  # 5 rows: padded to 8
    src[1, 7:] = 0
    src[3, 4:] = 0
    out: dict = {}
    mesh = sharding.make_mesh("data=8")
    for name, dc in [
        ("beam", DecodeConfig(method="beam", beam_size=4, n_best=2, alpha=0.6)),
        ("greedy", DecodeConfig(method="greedy")),
    ]:
        args = (jax.random.key(0), numeric_options(dc), static_part(dc), 16)
        one = _decode_batch(model, params, jnp.asarray(src), *args)
        rows = sharding.padded_rows(5, mesh)
        padded = sharding.pad_rows(src, rows, cfg.pad_id)
        dev = sharding.shard_rows({"src": padded}, mesh)["src"]
        many = _decode_batch(model, sharding.place_params(params, mesh), dev, *args)
        t1, tm = np.asarray(one.tokens), sharding.to_host(many.tokens)[:5]
        out[name] = {
            "tokens_equal": bool(np.array_equal(t1, tm)),
            "score_max_diff": float(
                np.max(np.abs(np.asarray(one.scores) - sharding.to_host(many.scores)[:5]))
            ),
            "distinct_rows": len({tuple(r.ravel()) for r in t1}),
            "src_devices": len(dev.sharding.device_set),
            "out_rows": int(many.tokens.shape[0]),
        }
    return out


def cli_checks(corpus: Path, run_dir: Path) -> dict:
    """``seqjax train --mesh data=8`` end to end (with validation BLEU decoding), then a bad spec."""
    from seqjax.app.cli import main

    common = ["--preset", "tiny", "--vocab-size", "300", "--max-minutes", "0", "--no-test",
              "--set", "train.length_buckets=[8, 16, 32]", "--set", "train.batch_tokens=100",
              "--set", "train.log_every=2", "--set", "train.valid_bleu_sentences=6",
              "--set", "train.warmup_steps=2", "--no-compile-cache",
              "--src", str(corpus / "train.src"), "--tgt", str(corpus / "train.tgt"),
              "--valid-src", str(corpus / "valid.src"), "--valid-tgt", str(corpus / "valid.tgt")]  # fmt: skip
    rc = main(["train", "--out", str(run_dir), "--steps", "4", "--eval-every", "4",
               "--mesh", "data=8", *common])  # fmt: skip
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    bad_rc = main(["train", "--out", str(run_dir.with_name("bad")), "--steps", "1",
                   "--mesh", "data=3", *common])  # fmt: skip
    return {"rc": rc, "records": records, "bad_rc": bad_rc}


def main() -> None:
    corpus, run_dir, out = map(Path, sys.argv[1:4])
    result = {"devices": jax.device_count()}
    result["train_step"] = train_step_checks()
    result["decode"] = beam_checks()
    result["cli"] = cli_checks(corpus, run_dir)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
