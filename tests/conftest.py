"""Shared tiny fixtures: JAX compile time dominates small tests, so build things once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Keep CPU tests deterministic and quiet regardless of the developer's environment.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# In-process CLI calls must not fill the user's compile cache (tests/test_sharding.py checks
# the cache in a subprocess with its own directory).
os.environ.setdefault("SEQJAX_NO_COMPILE_CACHE", "1")


# -- compile level --
#
# The default suite's programs are tiny, so XLA's compile time dominates it; LLVM at -O0
# without its expensive passes cuts the suite by ~22% (tests/test_train.py's fine-tunes 107 s
# -> 81 s, test_quantize + test_interop_hf + test_prompt 257 s -> 201 s, jax 0.10.2), and
# XLA's older (non-MLIR) emitters for fused elementwise code by ~25% more (test_quantize +
# test_prompt + test_model_interface + test_beam_loop 168 s -> 125 s). Only for the default
# selection: `pytest -m slow` trains the README's main job in process and must compile as
# users do. Set before any backend starts (XLA reads XLA_FLAGS then); the xdist workers
# inherit it; SEQJAX_TEST_FAST_COMPILE=0 turns it off.
FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
# An XLA that does not know a flag aborts at start, and these may leave a later jaxlib: each is
# used only where a probe process accepts it.
PROBED_FAST_FLAGS = ("--xla_cpu_use_fusion_emitters=false",)


def without_test_flags(xla_flags: str) -> str:
    """``xla_flags`` less the compile flags this file adds (for a subprocess that must compile
    as users do)."""
    drop = {*FAST_COMPILE_FLAGS.split(), *PROBED_FAST_FLAGS}
    return " ".join(f for f in xla_flags.split() if f not in drop)


def _xla_accepts(flag: str) -> bool:
    import subprocess
    import sys

    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flag}
    probe = "import jax; jax.devices()"
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, timeout=120)
    return done.returncode == 0


def pytest_configure(config):
    if os.environ.get("SEQJAX_TEST_FAST_COMPILE", "1") in ("", "0"):
        return
    if "slow" in (config.getoption("markexpr", "") or "").replace("not slow", ""):
        return
    from jax._src import xla_bridge

    assert not xla_bridge._backends, "a JAX backend started before conftest set XLA_FLAGS"
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_backend_optimization_level" not in flags:
        probed = [f for f in PROBED_FAST_FLAGS if _xla_accepts(f)]
        os.environ["XLA_FLAGS"] = " ".join([flags, FAST_COMPILE_FLAGS, *probed]).strip()


# -- the process's memory mappings --
#
# XLA:CPU keeps every compiled program in its own memory mappings (~6 per small program,
# measured with jax 0.10.2), and jit caches keep them alive. The default suite compiles
# several thousand programs in one process; near Linux's per-process limit
# (vm.max_map_count, 65,530 by default) an mmap inside LLVM fails and XLA segfaults while
# compiling. So between test modules, once half the limit is used, drop the compiled
# programs (they recompile on next use).


def _mapping_limit() -> int:
    try:
        return int(open("/proc/sys/vm/max_map_count").read())
    except (OSError, ValueError):
        return 65530


def mapping_count() -> int | None:
    """Memory mappings of this process (None where /proc is absent)."""
    try:
        with open("/proc/self/maps", "rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return None


@pytest.fixture(autouse=True, scope="session")
def _session_compile_cache(tmp_path_factory):
    """One persistent compile cache for the whole run (both xdist workers), in a temporary
    folder.

    Most test programs are compiled many times over: every in-process ``seqjax train`` of the
    tiny flags builds the same train and validation programs, and modules drop compiled
    programs (below). A cache shared by the run turns those recompiles into disk reads
    without touching the user's cache. ``SEQJAX_TEST_COMPILE_CACHE=0`` turns it off.

    Only JAX's cache: seqjax's own uses of it (the exported decoders, the param shapes) stay
    off, as with ``--no-compile-cache``, so that tests which watch ``_decode_batch`` or
    ``model.init`` see them called; ``test_export_cache``/``test_run_dir`` turn them on.
    """
    if os.environ.get("SEQJAX_TEST_COMPILE_CACHE", "1") in ("", "0"):
        yield None
        return
    import jax

    from seqjax import sharding

    patch = pytest.MonkeyPatch()
    patch.setattr(sharding, "compile_cache_dir", lambda: None)
    path = _run_wide_folder(tmp_path_factory, "compile_cache")
    settings = {
        "jax_compilation_cache_dir": str(path),
        "jax_persistent_cache_min_compile_time_secs": 0.05,
        "jax_persistent_cache_min_entry_size_bytes": 0,
        # Another worker may be writing the entry being read: with a size limit JAX takes a
        # file lock (the filelock package) around each read and write.
        "jax_compilation_cache_max_size": 1 << 34,
    }
    old = {name: getattr(jax.config, name) for name in settings}
    for name, value in settings.items():
        jax.config.update(name, value)
    yield path
    for name, value in old.items():
        jax.config.update(name, value)
    patch.undo()


def _run_wide_folder(tmp_path_factory, name: str) -> Path:
    """A folder shared by this run's xdist workers (the worker's own one without xdist).

    JAX's cache key holds the cache folder's path (jax 0.10 puts XLA's GPU autotune folder
    inside it, even on CPU), so the workers find each other's programs only in one folder.
    The two workers compile ~55 of the same programs (599 cache entries shared, 654 apart):
    the default suite's test time fell 1,328 -> 1,266 s (wall 689 -> 657 s, AMD EPYC).
    """
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return tmp_path_factory.mktemp(name)
    path = tmp_path_factory.getbasetemp().parent / name
    path.mkdir(exist_ok=True)
    return path


def subprocess_env(*xla_flags: str, cache: Path | None = None, **extra: str) -> dict[str, str]:
    """Environment for a ``seqjax`` subprocess started by a test.

    JAX on the CPU with this run's compile level (the default selection's fast flags, which
    ``pytest_configure`` put in ``XLA_FLAGS``) plus ``xla_flags`` (e.g. a forced device
    count): replacing ``XLA_FLAGS`` instead would compile every subprocess program with full
    optimisation, ~2x the time. With ``cache``, the subprocess uses JAX's persistent compile
    cache in that folder, so the runs of one test that start the same command again (resume,
    Ctrl-C, kill -9) read their programs instead of compiling them; without it, the cache
    stays off.
    """
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "SEQJAX_NO_COMPILE_CACHE": "1", **extra}
    env["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), *xla_flags]).strip()
    if cache is not None:
        env.update(SEQJAX_NO_COMPILE_CACHE="0", SEQJAX_CACHE_DIR=str(cache))
    return env


@pytest.fixture(scope="session")
def subprocess_cache(tmp_path_factory) -> Path:
    """A compile-cache folder shared by this run's subprocesses (see ``subprocess_env``)."""
    return tmp_path_factory.mktemp("subprocess_compile_cache")


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    yield
    n = mapping_count()
    if n is not None and n > _mapping_limit() // 2:
        import gc

        import jax

        jax.clear_caches()
        gc.collect()


@pytest.fixture(scope="session")
def toy_corpus(tmp_path_factory):
    """A small synthetic parallel corpus on disk: target = reversed, upper-cased source words."""
    import numpy as np

    rng = np.random.default_rng(0)
    words = "alpha beta gamma delta eps zeta eta theta iota kappa lambda mu".split()
    d = tmp_path_factory.mktemp("corpus")
    src, tgt = [], []
    for _ in range(300):
        n = int(rng.integers(2, 7))
        s = [words[i] for i in rng.integers(0, len(words), n)]
        src.append(" ".join(s))
        tgt.append(" ".join(w.upper() for w in reversed(s)))
    for name, lines in [("train.src", src[:260]), ("train.tgt", tgt[:260]),
                        ("valid.src", src[260:]), ("valid.tgt", tgt[260:])]:  # fmt: skip
        (d / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return d


# -- a tiny trained run directory, shared by the train/translate/evaluate/CLI/run_dir tests --

# Flags of the tiny CLI runs: a 44k-parameter Transformer, short buckets, small batches.
TINY = ["--preset", "tiny", "--vocab-size", "300", "--max-minutes", "0",
        "--set", "train.length_buckets=[8, 16, 32]", "--set", "train.batch_tokens=256",
        "--set", "train.log_every=5", "--set", "train.valid_bleu_sentences=8",
        "--set", "train.warmup_steps=5"]  # fmt: skip


@pytest.fixture(scope="session")
def tiny_flags() -> list[str]:
    return list(TINY)


@pytest.fixture(scope="session")
def train_cli(toy_corpus):
    """``train_cli(out, steps, *extra)``: ``seqjax train`` (in-process) on the toy corpus."""
    from seqjax.app.cli import main

    def run(out, steps, *extra):
        c = toy_corpus
        args = ["train", "--out", str(out), "--steps", str(steps), "--eval-every", "10", *TINY,
                "--src", str(c / "train.src"), "--tgt", str(c / "train.tgt"),
                "--valid-src", str(c / "valid.src"), "--valid-tgt", str(c / "valid.tgt"),
                *extra]  # fmt: skip
        assert main(args) == 0

    return run


@pytest.fixture(scope="session")
def trained(train_cli, tmp_path_factory):
    """A run directory trained for 20 steps (with validation); tests must not modify it."""
    run = tmp_path_factory.mktemp("runs") / "straight"
    train_cli(run, 20)
    return run


@pytest.fixture
def one_line_error(capsys):
    """``one_line_error(*needles)``: stderr is one ``seqjax: error: ...`` line holding them."""

    def check(*needles: str) -> str:
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("seqjax: error: "), err
        for n in needles:
            assert n in err, err
        return err

    return check


# Decoding toys (tests/toy_models.py), computed once per test module.
@pytest.fixture(scope="module")
def cache3():
    """A 3-source cache of the toy RNN (``toy_models.rnn_step``)."""
    from toy_models import make_rnn_cache

    return make_rnn_cache(3, seed=0)


@pytest.fixture(scope="module")
def rnn_greedy(cache3):
    """Greedy decode of ``cache3``: the reference other decoders are compared against."""
    from toy_models import RNN_STATIC, rnn_step

    from seqjax.decoding import greedy, jitted

    return jitted(greedy)(rnn_step, cache3, **RNN_STATIC)


# -- the model interface: configs and jitted entry points shared by the model tests ------

# name -> (preset, overrides); untied embeddings give rows that differ more.
MODEL_FAMILIES = {
    "transformer": ("tiny", {}),  # pre-LN
    "transformer_post_ln": ("tiny", {"pre_ln": False}),
    # the options HF imports use: BART-like (learned offset positions, embedding LN,
    # post-LN, gelu) and Marian-like (Marian sinusoids, scaled embeddings, swish)
    "transformer_bart": (
        "tiny",
        dict(
            pre_ln=False,
            qkv_bias=True,
            layernorm_embedding=True,
            final_logits_bias=True,
            position_embedding="learned",
            position_offset=2,
            activation="gelu",
            layer_norm_eps=1e-5,
        ),
    ),
    "transformer_marian": (
        "tiny",
        dict(
            pre_ln=False,
            qkv_bias=True,
            final_logits_bias=True,
            position_embedding="sinusoidal_marian",
            scale_embeddings=True,
            activation="swish",
            layer_norm_eps=1e-5,
        ),
    ),
    "rnn_bahdanau": ("rnn_tiny", {"rnn_attention": "bahdanau"}),
    "rnn_luong": ("rnn_tiny", {"rnn_attention": "luong", "rnn_hidden": 24}),  # H != E
}


def model_config(family: str, **overrides):
    from seqjax.config import model_preset

    preset, base = MODEL_FAMILIES[family]
    options = dict(share_embeddings=False, tie_output=False, **base)
    return model_preset(preset, **{**options, **overrides})


def _jitted_entry_points():
    import jax

    # Jitted once per session (eager dispatch of the many small ops dominates otherwise);
    # the model is a static argument, so each configuration compiles once.
    return dict(
        init=lambda m, key: m.init(key),  # jitted inside, at a cheaper compile level
        forward=jax.jit(lambda m, *a, **k: m.forward(*a, **k), static_argnums=0),
        encode=jax.jit(lambda m, *a: m.encode(*a), static_argnums=0),
        init_cache=jax.jit(lambda m, *a: m.init_cache(*a), static_argnums=(0, 4)),
    )


JIT = _jitted_entry_points()


def model_and_params(family: str, seed: int = 1, **overrides):
    """Model for ``family`` with ``overrides``; params depend only on family and seed."""
    from seqjax.models import build_model

    model = build_model(model_config(family, **overrides))
    return model, JIT["init"](build_model(model_config(family)), _key(seed))


def _key(seed: int):
    import jax

    return jax.random.key(seed)


def model_inputs(vocab: int, pad_rows: bool):
    """``(src [3, 9], src_mask, tgt_in [3, 7])``; with ``pad_rows`` two rows are padded."""
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    src = rng.integers(4, vocab, (3, 9)).astype(np.int32)
    if pad_rows:
        src[1, 6:] = 0
        src[2, 2:] = 0
    tgt = rng.integers(4, vocab, (3, 7)).astype(np.int32)
    src = jnp.asarray(src)
    return src, src != 0, jnp.asarray(tgt)


class without_expand:  # noqa: N801 (used like a function)
    """``model.step`` without its ``expand``: decoders then repeat every cache leaf (the
    reference for the shared-memory layout)."""

    def __init__(self, step):
        self.step = step
        self.prepare, self.capacity, self.resize = step.prepare, step.capacity, step.resize
        self.prefill = step.prefill

    def __call__(self, *args):
        return self.step(*args)


class recording_step(without_expand):  # noqa: N801 (used like a function)
    """``model.step`` with its ``expand``, recording for each call (at trace time) the set
    of row counts of the cache leaves: shows whether a decoder used the shared layout."""

    def __init__(self, step):
        super().__init__(step)
        self.expand = step.expand
        self.calls: list[set[int]] = []

    def __call__(self, *args):
        import jax

        cache = args[-1]
        self.calls.append({x.shape[0] for x in jax.tree.leaves(cache) if x.ndim})
        return self.step(*args)


def beam_search_shared_and_repeated(model, params, cache, *, decoder=None, **options):
    """``decoder`` (default ``beam_search``) with ``model.step`` (its ``expand`` shares
    per-source leaves) and with ``without_expand(model.step)`` (every leaf repeated):
    ``(shared, repeated)`` results."""
    import jax

    from seqjax.decoding import beam_search

    decoder = decoder or beam_search
    out = []
    for step in (model.step, without_expand(model.step)):
        run = jax.jit(lambda p, c, step=step: decoder(step, c, params=p, **options))
        out.append(run(params, cache))
    return tuple(out)
