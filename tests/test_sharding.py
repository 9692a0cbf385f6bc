"""Data parallelism over a device mesh, multi-host helpers and the compile cache.

The 8-device checks run ``tests/multidevice_checks.py`` in a subprocess with
``--xla_force_host_platform_device_count=8`` added to ``XLA_FLAGS``, so the flag never
reaches this process (where JAX sees one CPU device).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import subprocess_env

from seqjax import sharding
from seqjax.config import ConfigError
from seqjax.data import BatchPlan, TokenizedPairs, host_plan, iterate_batches, make_batch

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def eight(toy_corpus, tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("eight")
    out = tmp / "out.json"
    proc = subprocess.run(
        [sys.executable, str(HERE / "multidevice_checks.py"), str(toy_corpus), str(tmp / "run"),
         str(out)],
        env=subprocess_env("--xla_force_host_platform_device_count=8"),
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    result["stderr"] = proc.stderr
    assert result["devices"] == 8
    return result


# -- 8 simulated devices ---------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["data=8", "data=4,model=2"])
def test_train_step_on_8_devices_matches_one_device(eight, spec):
    ref, got = eight["train_step"]["ref_losses"], eight["train_step"][spec]
    np.testing.assert_allclose(got["losses"], ref, rtol=2e-6)
    assert got["param_max_diff"] < 2e-6  # after two AdamW steps (lr 2.5e-4, 5e-4)
    assert got["opt_max_diff"] < 1e-7
    assert got["param_devices"] == [8]


def test_global_batch_is_padded_to_the_data_axis_and_split(eight):
    # 12 rows: data=8 pads to 16 (2 per device; the 4 PAD rows are masked, the losses above
    # equal the unpadded 1-device run); data=4 divides 12 as it is.
    d8, d4 = eight["train_step"]["data=8"], eight["train_step"]["data=4,model=2"]
    assert (d8["batch_rows"], d8["batch_rows_per_device"]) == (16, 2)
    assert (d4["batch_rows"], d4["batch_rows_per_device"]) == (12, 3)


def test_params_replicated_on_data_mesh_and_split_on_model_axis(eight):
    d8, d4 = eight["train_step"]["data=8"], eight["train_step"]["data=4,model=2"]
    assert d8["params_replicated"] and d8["params_split_on_model"] == 0
    # The updated params keep the layout they came in with (the step's output sharding).
    assert not d4["params_replicated"] and d4["params_split_on_model"] >= 4


@pytest.mark.parametrize("method", ["beam", "greedy"])
def test_sharded_decoding_equals_unsharded(eight, method):
    r = eight["decode"][method]
    assert r["src_devices"] == 8 and r["out_rows"] == 8  # 5 sources padded to 8 rows
    assert r["distinct_rows"] == 5  # the rows really differ, so equality means something
    assert r["tokens_equal"]
    assert r["score_max_diff"] < 1e-4


def test_cli_trains_on_an_8_device_mesh(eight):
    cli = eight["cli"]
    assert cli["rc"] == 0
    losses = [r["loss"] for r in cli["records"] if "loss" in r]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    final = [r for r in cli["records"] if r.get("final")]
    assert final and "valid_bleu" in final[0]  # validation decoding ran on the mesh
    assert "mesh data=8 model=1" in eight["stderr"]
    assert cli["bad_rc"] == 2
    assert "--mesh 'data=3'" in eight["stderr"] and "8 device(s)" in eight["stderr"]


# -- mesh specs (this process: one device) -----------------------------------------------------


def test_mesh_auto_uses_every_device():
    mesh = sharding.make_mesh("auto")
    assert dict(mesh.shape) == {"data": jax.device_count(), "model": 1}


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("data=3", "data=3 x model=1 = 3 devices, but 8 device(s)"),
        ("data=2,model=2", "= 4 devices, but 8 device(s)"),
        ("model=3", "model=3 = 3 devices, but 8 device(s)"),
        ("data=x", "'x' is not an integer"),
        ("batch=8", "use auto, data=N or data=N,model=M"),
        ("data=0", "data size must be >= 1"),
    ],
)
def test_bad_mesh_spec_is_one_clear_line(spec, fragment):
    fake_devices = [object()] * 8  # only counted: the errors come before any mesh is built
    with pytest.raises(ConfigError) as e:
        sharding.make_mesh(spec, fake_devices)
    msg = str(e.value)
    assert msg.startswith(f"--mesh {spec!r}") and fragment in msg and "\n" not in msg


def test_mesh_spec_parsing():
    assert sharding.parse_mesh_spec("auto") == {}
    assert sharding.parse_mesh_spec(" Data=4, model=2 ") == {"data": 4, "model": 2}


# -- per-host batches ---------------------------------------------------------------------------


def test_host_plan_pads_and_partitions_rows():
    plan = BatchPlan(np.arange(100, 112), 8, 12)
    parts = [host_plan(plan, row_multiple=8, process_index=p, process_count=2) for p in (0, 1)]
    assert [p.rows for p in parts] == [8, 8]  # global batch 12 -> 16 rows, 8 per process
    np.testing.assert_array_equal(np.concatenate([p.indices for p in parts]), plan.indices)
    assert len(parts[1].indices) == 4  # process 1 gets 4 pairs and 4 PAD rows


def test_processes_together_see_each_pair_once_per_epoch():
    rng = np.random.default_rng(0)
    src = [list(rng.integers(4, 50, rng.integers(1, 10))) for _ in range(37)]
    pairs = TokenizedPairs(src, [s[::-1] for s in src])
    kw = dict(seed=3, batch_tokens=80, buckets=(8, 16))
    whole = iterate_batches(pairs, **kw)
    hosts = [
        iterate_batches(pairs, **kw, row_multiple=4, process_index=p, process_count=2)
        for p in (0, 1)
    ]
    for _ in range(6):
        e, i, full = next(whole)
        parts = [next(h) for h in hosts]
        assert all((p[0], p[1]) == (e, i) for p in parts)
        joined = {k: np.concatenate([p[2][k] for p in parts]) for k in full}
        rows = joined["src"].shape[0]
        assert rows % 4 == 0 and rows - full["src"].shape[0] in range(4)
        for k in full:  # the same rows, then all-PAD filler only
            np.testing.assert_array_equal(joined[k][: len(full[k])], full[k])
            assert not joined[k][len(full[k]) :].any()
    assert make_batch(pairs, [], 8, 2)["tgt_out"].sum() == 0


# -- multi-host start-up and the compile cache -------------------------------------------------


def test_distributed_needs_all_three_variables():
    assert sharding.maybe_initialize_distributed({}) is False
    with pytest.raises(ConfigError, match="JAX_PROCESS_ID missing"):
        sharding.maybe_initialize_distributed(
            {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "2"}
        )


def test_finished_processes_wait_for_process_0_at_shutdown(monkeypatch):
    """Process 0 evaluates the test set alone after training while the others exit: the
    shutdown barrier must wait far longer than JAX's 300 s default, in both launch modes."""
    calls = []

    def initialize(coordinator_address=None, num_processes=None, process_id=None,
                   shutdown_timeout_seconds=300):  # fmt: skip
        calls.append(dict(process_id=process_id, shutdown_timeout_seconds=shutdown_timeout_seconds))

    monkeypatch.setattr(jax.distributed, "initialize", initialize)
    monkeypatch.setattr(sharding, "_initialized", False)
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "2",
           "JAX_PROCESS_ID": "1"}  # fmt: skip
    with _restored_tracebacks_flag():
        assert sharding.maybe_initialize_distributed(env) is True
        monkeypatch.setattr(sharding, "_initialized", False)
        assert sharding.maybe_initialize_distributed(
            {"SEQJAX_DISTRIBUTED": "1", "SLURM_JOB_ID": "7"}
        )
    assert [kw["shutdown_timeout_seconds"] for kw in calls] == [sharding.SHUTDOWN_TIMEOUT_S] * 2
    assert sharding.SHUTDOWN_TIMEOUT_S >= 3600 and calls[0]["process_id"] == 1


@contextlib.contextmanager
def _restored_tracebacks_flag():
    """JAX's ``jax_include_full_tracebacks_in_locations`` as it was, after the block."""
    before = getattr(jax.config, sharding._TRACEBACKS_FLAG)
    try:
        yield
    finally:
        jax.config.update(sharding._TRACEBACKS_FLAG, before)


def test_a_multi_process_job_compiles_one_program_per_collective(monkeypatch):
    """Joining a multi-process job turns off whole call stacks in compiled programs: with
    them, the same collective called from two places compiles to two programs (the
    locations differ), and under jax 0.12.1 such processes waited for each other forever
    (``test_two_processes_all_stop_when_the_run_is_locked``). A single process keeps them."""
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: None)
    monkeypatch.setattr(sharding, "_initialized", False)
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "2",
           "JAX_PROCESS_ID": "0"}  # fmt: skip

    def total(x):
        return jnp.sum(x)

    def collective(x):  # as sharding.agree: one place that compiles the program
        jax.clear_caches()  # each call traces afresh, as each process does
        return jax.jit(total).lower(x).as_text(debug_info=True)

    def first_caller(x):
        return collective(x)

    def second_caller(x):
        return collective(x)

    x = jnp.ones(4)
    with _restored_tracebacks_flag():
        jax.config.update(sharding._TRACEBACKS_FLAG, True)
        assert sharding.maybe_initialize_distributed({}) is False  # one process: unchanged
        assert getattr(jax.config, sharding._TRACEBACKS_FLAG) is True
        assert first_caller(x) != second_caller(x)  # the callers' lines are in the program
        assert sharding.maybe_initialize_distributed(env) is True
        assert getattr(jax.config, sharding._TRACEBACKS_FLAG) is False
        assert first_caller(x) == second_caller(x)


def test_default_cache_dir():
    assert sharding.default_cache_dir({"XDG_CACHE_HOME": "/x"}) == Path("/x/seqjax/jax")
    assert sharding.default_cache_dir({"SEQJAX_CACHE_DIR": "/c"}) == Path("/c")
    assert sharding.default_cache_dir({}) == Path.home() / ".cache" / "seqjax" / "jax"


def test_translate_fills_the_compile_cache_unless_opted_out(toy_corpus, tmp_path):
    from seqjax.app.cli import main

    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--steps", "1", "--preset", "tiny",
                 "--vocab-size", "300", "--max-minutes", "0", "--no-test",
                 "--set", "train.length_buckets=[8, 16, 32]", "--set", "train.batch_tokens=64",
                 "--set", "train.valid_bleu_sentences=0",
                 "--src", str(toy_corpus / "train.src"), "--tgt", str(toy_corpus / "train.tgt")]) == 0  # fmt: skip

    def translate(cache: Path, *flags: str, log: dict | None = None) -> str:
        env = subprocess_env(
            SEQJAX_CACHE_DIR=str(cache), **({"JAX_LOG_COMPILES": "1"} if log is not None else {})
        )
        env.pop("SEQJAX_NO_COMPILE_CACHE", None)
        proc = subprocess.run(
            [sys.executable, "-m", "seqjax.app.cli", "translate", "--checkpoint", str(run),
             "--greedy", "--max-len", "8", *flags],
            input="alpha beta\ngamma\n", env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        if log is not None:
            log["stderr"] = proc.stderr
        return proc.stdout

    on, off = tmp_path / "cache_on", tmp_path / "cache_off"
    out_on = translate(on)
    assert len(out_on.splitlines()) == 2
    assert any(p.is_file() for p in on.rglob("*"))  # the decoder program was written
    # ... and read back: a second process gets its programs from the cache, not the compiler.
    log: dict = {}
    assert translate(on, log=log) == out_on
    assert "Persistent compilation cache hit" in log["stderr"], log["stderr"][-2000:]
    # ... without tracing the decoder or the model's init again (issue 19's start-up): the
    # lowered decoder and the param shapes were kept beside the compiled programs.
    assert list((on / "seqjax-exported").glob("*.jaxexport"))
    assert list((on / "seqjax-param-specs").glob("*.json"))
    traced = re.findall(r"Finished tracing (\S+) for jit", log["stderr"])
    assert traced and not {"_decode_batch", "fn", "init"} & set(traced), traced
    assert translate(off, "--no-compile-cache") == out_on
    assert not off.exists() or not any(off.rglob("*"))
    # A float32 checkpoint decodes in bfloat16 too (same params, bfloat16 activations).
    assert len(translate(off, "--no-compile-cache", "--dtype", "bfloat16").splitlines()) == 2


# -- two real processes (slow: run with -m slow) ------------------------------------------------


def _train_cmd(run: Path, corpus: Path) -> list[str]:
    return [sys.executable, "-m", "seqjax.app.cli", "train", "--out", str(run), "--preset", "tiny",
            "--vocab-size", "300", "--max-minutes", "0", "--no-test", "--no-compile-cache",
            "--steps", "4", "--eval-every", "4", "--mesh", "data=4",
            "--set", "train.length_buckets=[8, 16, 32]", "--set", "train.batch_tokens=100",
            "--set", "train.log_every=2", "--set", "train.valid_bleu_sentences=6",
            "--src", str(corpus / "train.src"), "--tgt", str(corpus / "train.tgt"),
            "--valid-src", str(corpus / "valid.src"), "--valid-tgt", str(corpus / "valid.tgt")]  # fmt: skip


def _records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _two_processes(cmd: list[str]) -> list[subprocess.Popen]:
    """``cmd`` as processes 0 and 1 of one ``jax.distributed`` job on localhost, 2 devices each."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [
        subprocess.Popen(
            cmd,
            env=subprocess_env(
                "--xla_force_host_platform_device_count=2",
                JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                JAX_NUM_PROCESSES="2",
                JAX_PROCESS_ID=str(i),
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]


def test_two_processes_all_stop_when_the_run_is_locked(toy_corpus, tmp_path):
    """Process 0 is refused the lock: every process ends at once with a one-line error,
    none waits at the start barrier for a process 0 that has gone."""
    run = tmp_path / "locked"
    run.mkdir()
    import socket

    holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": "now"}
    (run / "train.lock").write_text(json.dumps(holder) + "\n")
    procs = _two_processes(_train_cmd(run, toy_corpus))
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [2, 2], outs
    errs = [err.strip().splitlines() for _, err in outs]
    assert len(errs[0]) == 1 and "in use by another training run" in errs[0][0], errs[0]
    assert f"pid {os.getpid()}" in errs[0][0]
    assert len(errs[1]) == 1 and "process 0 could not start the run" in errs[1][0], errs[1]
    assert sorted(p.name for p in run.iterdir()) == ["train.lock"]  # nothing written


@pytest.mark.slow
def test_two_processes_train_like_one(toy_corpus, tmp_path):
    """2 processes x 2 devices (jax.distributed over localhost) = 1 process x 4 devices."""
    two = tmp_path / "two"
    procs = _two_processes(_train_cmd(two, toy_corpus))
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
    assert "over 2 process(es)" in outs[0][1] and outs[1][1].strip() == ""  # process 1 is quiet
    one = tmp_path / "one"
    proc = subprocess.run(
        _train_cmd(one, toy_corpus),
        env=subprocess_env("--xla_force_host_platform_device_count=4"),
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    a, b = _records(one), _records(two)
    assert [r["step"] for r in a] == [r["step"] for r in b]  # one writer, no duplicates
    for ra, rb in zip(a, b, strict=True):
        for k in ("loss", "train_nll", "valid_nll"):
            if k in ra:
                assert rb[k] == pytest.approx(ra[k], rel=1e-5)
    assert (two / "checkpoints" / "4").is_dir() and (two / "best" / "4").is_dir()
