"""Run directories and Orbax checkpoints: round-trips, retention, best tracking, damage."""

from __future__ import annotations

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from seqjax.checkpoint import (
    BEST_DIR,
    LATEST_DIR,
    Checkpointer,
    CheckpointError,
    CheckpointWarning,
)

# Reading a damaged array leaves an Orbax coroutine whose exception surfaces at garbage
# collection, in whichever test runs then; the damage tests assert on the outcome instead.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def make_params(seed: int = 0, width: int = 8) -> dict:
    # The embedding is > 1 KiB so it lands in an OCDBT data file rather than inline metadata.
    k1, k2 = jax.random.split(jax.random.key(seed))
    return {
        "encoder": {"embed": jax.random.normal(k1, (64, width))},
        "decoder": {
            "layer_0": {"attn": {"query": {"kernel": jax.random.normal(k2, (width, 4, 2))}}}
        },
    }


def make_opt_state(params: dict) -> optax.OptState:
    tx = optax.adamw(1e-2)
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    _, state = tx.update(grads, state, params)  # non-zero moments and count
    return state


def abstract(tree):
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def assert_tree_equal(a, b) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def step_dirs(path: Path) -> list[str]:
    return sorted((p.name for p in path.iterdir() if p.name.isdigit()), key=int)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    return run


@pytest.fixture
def ckpt(run_dir: Path):
    with Checkpointer(run_dir, keep_last=2) as c:
        yield c


def save_steps(c: Checkpointer, steps, scores=None) -> dict[int, dict]:
    """Save ``steps`` with params seeded by the step; return those params by step."""
    saved = {}
    for i, step in enumerate(steps):
        params = make_params(seed=step)
        score = None if scores is None else scores[i]
        c.save(step, params, make_opt_state(params), {"epoch": 0}, valid_score=score)
        saved[step] = params
    c.wait()
    return saved


# ---------------------------------------------------------------------------- round trips


def test_save_restore_roundtrip_params_and_adamw_state(run_dir: Path):
    params = make_params()
    opt_state = make_opt_state(params)
    key = jax.random.key(42)
    meta = {
        "data": {"epoch": 3, "index": np.int64(17)},
        "rng": jax.random.key_data(key),
        "metrics": {"loss": np.float32(1.5)},
    }
    with Checkpointer(run_dir) as c:
        assert c.latest_step() is None
        assert c.save(7, params, opt_state, meta) is True
    # A new Checkpointer is a restarted process: nothing is cached in memory.
    with Checkpointer(run_dir) as c:
        assert c.latest_step() == 7
        p, o, m = c.restore(abstract(params), abstract(opt_state))
    assert_tree_equal(p, params)
    assert_tree_equal(o, opt_state)
    assert isinstance(o, tuple) and isinstance(o[0], optax.ScaleByAdamState)
    assert int(o[0].count) == 1
    assert m["step"] == 7
    assert m["data"] == {"epoch": 3, "index": 17}
    assert m["metrics"] == {"loss": 1.5}
    restored_key = jax.random.wrap_key_data(jnp.asarray(m["rng"], dtype=jnp.uint32))
    np.testing.assert_array_equal(jax.random.key_data(restored_key), jax.random.key_data(key))
    assert "array_specs" not in m


def test_restore_into_concrete_targets_and_prng_key_meta(run_dir: Path):
    params = make_params()
    opt_state = make_opt_state(params)
    with Checkpointer(run_dir, async_save=False) as c:
        c.save(1, params, opt_state, {"rng": jax.random.key(3)})
        zeros_p = jax.tree.map(jnp.zeros_like, params)
        zeros_o = jax.tree.map(jnp.zeros_like, opt_state)
        p, o, m = c.restore(zeros_p, zeros_o, step=1)
    assert_tree_equal(p, params)
    assert_tree_equal(o, opt_state)
    assert m["rng"] == jax.random.key_data(jax.random.key(3)).tolist()


def test_meta_must_be_jsonable(ckpt: Checkpointer):
    params = make_params()
    with pytest.raises(CheckpointError, match="meta/bad: cannot store object"):
        ckpt.save(1, params, make_opt_state(params), {"bad": object()})


# ---------------------------------------------------------------------------- retention


def test_keep_last_n_leaves_exactly_n_step_dirs(ckpt: Checkpointer, run_dir: Path):
    save_steps(ckpt, [1, 2, 3, 4])
    assert step_dirs(run_dir / LATEST_DIR) == ["3", "4"]
    assert ckpt.latest_step() == 4
    assert not (run_dir / BEST_DIR).exists()  # no score given, no best


def test_best_tracked_across_restart(run_dir: Path):
    with Checkpointer(run_dir) as c:
        saved = save_steps(c, [1, 2, 3], scores=[10.0, 20.0, 15.0])
        assert c.best_score == 20.0
    assert step_dirs(run_dir / BEST_DIR) == ["2"]

    with Checkpointer(run_dir) as c:
        assert c.best_score == 20.0  # read back from the best checkpoint's meta
        save_steps(c, [4], scores=[12.0])
        assert step_dirs(run_dir / BEST_DIR) == ["2"]
        params, meta = c.restore_params(abstract(saved[2]))
        assert_tree_equal(params, saved[2])
        assert meta["step"] == 2 and meta["valid_score"] == 20.0

        saved.update(save_steps(c, [5], scores=[25.0]))
    assert step_dirs(run_dir / BEST_DIR) == ["5"]
    assert step_dirs(run_dir / LATEST_DIR) == ["4", "5"]
    with Checkpointer(run_dir) as c:
        assert c.best_score == 25.0


def test_restore_params_prefers_best(ckpt: Checkpointer):
    saved = save_steps(ckpt, [1, 2], scores=[5.0, None])
    target = abstract(saved[1])

    params, meta = ckpt.restore_params(target)
    assert_tree_equal(params, saved[1])
    assert meta["step"] == 1

    params, meta = ckpt.restore_params(target, which="latest")
    assert_tree_equal(params, saved[2])
    assert meta["step"] == 2

    # Without a target: nested dicts rebuilt from the recorded shapes, on a local device.
    params, _ = ckpt.restore_params()
    assert_tree_equal(params, saved[1])


def test_restore_params_without_target_ignores_saved_devices(ckpt: Checkpointer, run_dir: Path):
    saved = save_steps(ckpt, [1], scores=[1.0])
    # Pretend the run was trained on a GPU: Orbax's sharding file names a device absent here.
    sharding = run_dir / BEST_DIR / "1" / "params" / "_sharding"
    text = sharding.read_text()
    sharding.write_text(re.sub(r'(device_str\\": \\")[^\\"]+', r"\1cuda:0", text))
    assert "cuda:0" in sharding.read_text()
    with Checkpointer(run_dir) as c:
        params, _ = c.restore_params()
    assert_tree_equal(params, saved[1])
    assert jax.tree.leaves(params)[0].devices() == {jax.local_devices()[0]}


def test_restore_params_falls_back_to_latest_without_best(ckpt: Checkpointer, run_dir: Path):
    saved = save_steps(ckpt, [1, 2])
    params, meta = ckpt.restore_params(abstract(saved[2]))
    assert_tree_equal(params, saved[2])
    assert meta["step"] == 2
    assert not (run_dir / BEST_DIR).exists()  # reading never creates directories


def test_shape_mismatch_names_path_and_both_shapes(ckpt: Checkpointer):
    saved = save_steps(ckpt, [1], scores=[1.0])
    wide = make_params(width=16)
    expected = (
        r"params/decoder/layer_0/attn/query/kernel: "
        r"checkpoint has \(8, 4, 2\), model expects \(16, 4, 2\)"
    )
    with pytest.raises(CheckpointError, match=expected):
        ckpt.restore_params(abstract(wide))
    # Training restore reports it too, instead of falling back through every step.
    with pytest.raises(CheckpointError, match=expected):
        ckpt.restore(abstract(wide), abstract(make_opt_state(wide)))
    fewer = {"encoder": saved[1]["encoder"]}
    with pytest.raises(CheckpointError, match="only in checkpoint: decoder/layer_0"):
        ckpt.restore_params(abstract(fewer))
    more = {**saved[1], "extra": {"bias": jnp.zeros(3)}}
    with pytest.raises(CheckpointError, match="not in checkpoint: extra/bias"):
        ckpt.restore_params(abstract(more))


# ---------------------------------------------------------------------------- damage


def _damage(step_dir: Path, how: str) -> None:
    data = [p for p in (step_dir / "params").rglob("*") if p.is_file() and p.stat().st_size > 1024]
    assert data, "expected an OCDBT data file holding the embedding"
    if how == "truncate":
        for f in data:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif how == "delete":
        for f in data:
            f.unlink()
    elif how == "missing_item":
        for f in sorted((step_dir / "opt_state").rglob("*"), reverse=True):
            f.unlink() if f.is_file() else f.rmdir()
        (step_dir / "opt_state").rmdir()
    elif how == "bad_meta":
        (step_dir / "meta" / "metadata").write_text('{"step": 4, "epo')


@pytest.mark.parametrize("how", ["truncate", "delete", "missing_item", "bad_meta"])
def test_corrupted_latest_falls_back_to_previous_step(run_dir: Path, how: str):
    with Checkpointer(run_dir, keep_last=3) as c:
        saved = save_steps(c, [2, 3, 4])
    _damage(run_dir / LATEST_DIR / "4", how)

    target_p = abstract(saved[3])
    target_o = abstract(make_opt_state(saved[3]))
    with Checkpointer(run_dir, keep_last=3) as c:
        with pytest.warns(CheckpointWarning, match=r"checkpoint .*checkpoints/4 is unreadable"):
            params, opt_state, meta = c.restore(target_p, target_o)
        assert meta["step"] == 3
        assert_tree_equal(params, saved[3])
        assert_tree_equal(opt_state, make_opt_state(saved[3]))

        # An explicit step is not silently replaced by another one.
        with pytest.raises(CheckpointError, match="no readable checkpoint"):
            c.restore(target_p, target_o, step=4)


def test_no_readable_checkpoint_raises(run_dir: Path):
    with Checkpointer(run_dir) as c:
        saved = save_steps(c, [1, 2])
    for step in ("1", "2"):
        _damage(run_dir / LATEST_DIR / step, "delete")
    with Checkpointer(run_dir) as c, pytest.warns(CheckpointWarning):
        with pytest.raises(CheckpointError, match=r"no readable checkpoint in .*checkpoints/2"):
            c.restore(abstract(saved[2]), abstract(make_opt_state(saved[2])))


def test_empty_run_has_no_checkpoint(ckpt: Checkpointer, run_dir: Path):
    with pytest.raises(CheckpointError, match=f"no checkpoints in {run_dir}"):
        ckpt.restore_params()
    with pytest.raises(CheckpointError, match="no such checkpoint step"):
        ckpt.restore({}, {}, step=3)


@pytest.mark.parametrize(
    "tmp_name", ["5.orbax-checkpoint-tmp", "5.orbax-checkpoint-tmp-1712345678"]
)
def test_leftover_tmp_dir_is_ignored(run_dir: Path, tmp_name: str):
    with Checkpointer(run_dir) as c:
        saved = save_steps(c, [3, 4])
    # What a crash in the middle of writing step 5 leaves behind.
    tmp = run_dir / LATEST_DIR / tmp_name
    (tmp / "params").mkdir(parents=True)
    (tmp / "params" / "manifest.ocdbt").write_bytes(b"\0" * 10)

    with Checkpointer(run_dir) as c:
        assert c.latest_step() == 4
        _, _, meta = c.restore(abstract(saved[4]), abstract(make_opt_state(saved[4])))
        assert meta["step"] == 4
        saved.update(save_steps(c, [5]))  # the retried save of step 5 succeeds
        assert c.latest_step() == 5
        params, _, _ = c.restore(abstract(saved[5]), abstract(make_opt_state(saved[5])))
    assert_tree_equal(params, saved[5])


def test_resuming_from_earlier_step_replaces_abandoned_steps(run_dir: Path):
    with Checkpointer(run_dir, keep_last=3) as c:
        old = save_steps(c, [1, 2, 3], scores=[1.0, 2.0, 3.0])
    for step in ("2", "3"):
        _damage(run_dir / LATEST_DIR / step, "delete")

    with Checkpointer(run_dir, keep_last=3) as c:
        with pytest.warns(CheckpointWarning, match="unreadable"):
            _, _, meta = c.restore(abstract(old[1]), abstract(make_opt_state(old[1])))
        assert meta["step"] == 1
        # Training goes on from step 1 and reaches step 2 again: the damaged step 2 and the
        # abandoned step 3 must not shadow the new history.
        with pytest.warns(CheckpointWarning, match=r"checkpoints: replacing step\(s\) \[2, 3\]"):
            new = save_steps(c, [2], scores=[2.5])
        assert c.latest_step() == 2
        params, _, meta = c.restore(abstract(new[2]), abstract(make_opt_state(new[2])))
        assert_tree_equal(params, new[2])
        # The best model stays the best model, whichever history produced it ...
        assert step_dirs(run_dir / BEST_DIR) == ["3"]
        # ... until this history beats it, at a step it had already reached.
        new.update(save_steps(c, [3], scores=[3.5]))
        params, meta = c.restore_params(abstract(new[3]))
        assert_tree_equal(params, new[3])
        assert c.restore_params()[1]["valid_score"] == 3.5
    assert step_dirs(run_dir / LATEST_DIR) == ["1", "2", "3"]
    assert step_dirs(run_dir / BEST_DIR) == ["3"]


def test_saving_a_saved_step_again_keeps_it_but_updates_best(ckpt: Checkpointer, run_dir: Path):
    params = make_params()
    opt_state = make_opt_state(params)
    assert ckpt.save(10, params, opt_state, {"epoch": 1}) is True
    # e.g. a periodic save, then the validation at the same step
    assert ckpt.save(10, params, opt_state, {"epoch": 2}, valid_score=1.0) is False
    ckpt.wait()
    assert step_dirs(run_dir / LATEST_DIR) == ["10"]
    assert step_dirs(run_dir / BEST_DIR) == ["10"]
    assert ckpt.restore_params(which="latest")[1]["epoch"] == 1
    assert ckpt.restore_params(which="best")[1]["valid_score"] == 1.0


def test_relative_run_dir_saves_and_restores(tmp_path, monkeypatch):
    """`seqjax train --out runs/default` passes a relative path; Orbax needs absolute ones."""
    import jax.numpy as jnp

    from seqjax.checkpoint import Checkpointer

    monkeypatch.chdir(tmp_path)
    (tmp_path / "rel").mkdir()
    params = {"w": jnp.arange(6.0).reshape(2, 3)}
    ck = Checkpointer("rel", keep_last=1, async_save=True)
    ck.save(1, params, {"count": jnp.zeros(())}, {"note": "x"})
    ck.wait()
    restored, _ = ck.restore_params(params, which="latest")
    ck.close()
    assert (tmp_path / "rel" / "checkpoints" / "1").is_dir()
    assert float(restored["w"][1, 2]) == 5.0


# ---------------------------------------------------------------------------- best: tie-break


def test_best_tie_on_score_is_broken_by_tie_break(run_dir: Path):
    with Checkpointer(run_dir) as c:
        for step, tie in [(1, -2.0), (2, -1.0), (3, -3.0), (4, None)]:
            p = make_params(seed=step)
            c.save(step, p, make_opt_state(p), {}, valid_score=5.0, tie_break=tie)
        c.wait()
        assert step_dirs(run_dir / BEST_DIR) == ["2"]  # equal BLEU, lowest loss
        p = make_params(seed=5)
        c.save(5, p, make_opt_state(p), {}, valid_score=4.0, tie_break=0.0)
        c.wait()
    # The tie-break survives a restart (read back from best's meta).
    with Checkpointer(run_dir) as c:
        assert c.best_score == 5.0
        p = make_params(seed=6)
        c.save(6, p, make_opt_state(p), {}, valid_score=5.0, tie_break=-1.5)
        c.wait()
        assert step_dirs(run_dir / BEST_DIR) == ["2"]
        c.save(7, p, make_opt_state(p), {}, valid_score=5.0, tie_break=-0.5)
        c.wait()
    assert step_dirs(run_dir / BEST_DIR) == ["7"]


def test_symlinked_step_dir_is_refused_before_training_writes(ckpt: Checkpointer, run_dir: Path):
    save_steps(ckpt, [1])
    elsewhere = run_dir.parent / "elsewhere"
    (run_dir / LATEST_DIR / "1").rename(elsewhere)
    (run_dir / LATEST_DIR / "1").symlink_to(elsewhere)
    with pytest.raises(CheckpointError, match="symbolic link") as e:
        Checkpointer(run_dir).check_step_dirs()
    assert len(str(e.value).splitlines()) == 1 and "checkpoints/1" in str(e.value)


def test_the_two_managers_wait_on_barriers_of_their_own(run_dir: Path, monkeypatch):
    """A new best saves to both managers at once. Over several processes their background
    threads synchronise through named barriers, and two threads waiting on one name abort
    the run (seen in the two-process test: "Barrier ... is already ongoing"): every name
    carries its manager's prefix. One process runs the same calls, so the names show here."""
    from orbax.checkpoint._src.multihost import multihost

    keys: list[str] = []

    def recording_barrier(processes=None):
        return lambda key, timeout_ms: keys.append(key)

    monkeypatch.setattr(multihost, "get_barrier_sync_fn", recording_barrier)
    with Checkpointer(run_dir) as c:
        save_steps(c, [1, 2], scores=[10.0, 20.0])
    progress = [k for k in keys if "ThreadSaveMultiHostValueHolder" in k]
    assert {k.split("_Thread")[0] for k in progress} == {
        f"seqjax_{LATEST_DIR}",
        f"seqjax_{BEST_DIR}",
    }, keys
