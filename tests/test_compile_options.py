"""The choice of XLA:CPU matmul kernels for compiled decoders (rows, weight size, mode)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.config import ConfigError, model_preset
from seqjax.decoding import compile_options
from seqjax.decoding.compile_options import (
    SMALL_ROWS,
    decode_compiler_options,
    matrix_bytes,
    one_row_output_major,
)
from seqjax.models.quantize import output_major, quantize_params
from seqjax.models.transformer import Transformer

EIGEN = {"xla_cpu_experimental_ynn_fusion_type": ""}
MB = 1 << 20
BIG = {"enc": jax.ShapeDtypeStruct((4096, 4096), jnp.float32), "b": jnp.zeros(8)}  # 64 MB
AVX2 = frozenset({"sse4_2", "avx", "avx2", "fma"})  # Zen 3: where Eigen was measured faster
AVX512 = AVX2 | {"avx512f", "avx512bw", "avx512_vnni"}  # Zen 4, Xeon: where it was not


OLD_JAXLIB, NEW_JAXLIB = (0, 10, 2), (0, 12, 1)  # one row per step: Eigen / YNNPACK


def _opts(rows, params=BIG, large=32 * MB, flags=AVX2, jaxlib=OLD_JAXLIB, **env):
    return decode_compiler_options(
        rows, params, platform="cpu", env=env, large_bytes=large, cpu_flags=flags, jaxlib=jaxlib
    )


def test_few_rows_on_weights_from_memory_get_xlas_own_kernels_on_cpu_only():
    for rows in (1, 4, 16, SMALL_ROWS):
        assert _opts(rows) == EIGEN
    for rows in (SMALL_ROWS + 1, 64, 256):
        assert _opts(rows) == {}
    for platform in ("gpu", "tpu", "cuda"):
        assert decode_compiler_options(4, BIG, platform=platform, env={}, cpu_flags=AVX2) == {}


def test_one_row_keeps_ynnpack_from_jaxlib_0_12_1():
    """From ``ONE_ROW_YNNPACK_FROM`` YNNPACK's one-row products are the fastest on AVX2
    (Zen 2, bench_one_row_zen2_jax0121.md); two or more rows keep XLA's own kernels."""
    assert compile_options.ONE_ROW_YNNPACK_FROM == NEW_JAXLIB
    for version in (NEW_JAXLIB, (0, 12, 2), (0, 13), (1, 0, 0)):
        assert _opts(1, jaxlib=version) == {}
        assert all(_opts(rows, jaxlib=version) == EIGEN for rows in (2, 4, 16, SMALL_ROWS))
    for version in (OLD_JAXLIB, (0, 11, 2), (0, 12, 0)):
        assert _opts(1, jaxlib=version) == EIGEN
    assert _opts(1, jaxlib=NEW_JAXLIB, SEQJAX_CPU_DOTS="eigen") == EIGEN  # still forced


def test_jaxlib_version_is_read_as_integers():
    import jaxlib

    version = compile_options.jaxlib_version()
    assert len(version) >= 2 and all(isinstance(v, int) for v in version)
    assert jaxlib.__version__.startswith(".".join(map(str, version[:3])))


def test_cpus_with_avx512_or_without_avx2_keep_ynnpack():
    """Eigen's kernels lose to YNNPACK's with AVX-512 (Zen 4: 0.82-0.96x whole decoders at
    1-16 rows), and were never measured off x86 (no flags: another OS or an ARM CPU)."""
    for rows in (1, 4, 16, SMALL_ROWS):
        assert _opts(rows, flags=AVX512) == {}
        assert _opts(rows, flags=frozenset()) == {}
        assert _opts(rows, flags={"sse4_2", "avx"}) == {}
        assert _opts(rows, flags=AVX512, SEQJAX_CPU_DOTS="eigen") == EIGEN  # still forced


def test_cpu_flags_are_read_from_cpuinfo():
    text = "processor\t: 0\nflags\t\t: fpu avx2 avx512f\n\nprocessor\t: 1\nflags\t\t: fpu\n"
    assert compile_options.parse_cpu_flags(text) == {"fpu", "avx2", "avx512f"}  # the first
    assert compile_options.parse_cpu_flags("processor : 0\n") == frozenset()
    assert isinstance(compile_options.host_cpu_flags(), frozenset)


def test_weights_that_fit_in_cache_keep_ynnpack():
    assert matrix_bytes(BIG) == 64 * MB  # the 1-D leaf does not count
    assert _opts(4, large=64 * MB) == EIGEN
    assert _opts(4, large=64 * MB + 1) == {}
    assert _opts(4, params=None) == {}  # unknown weights: XLA's defaults


@pytest.mark.parametrize("preset,eigen", [("small", False), ("rnn_small", False), ("base", True)])
def test_the_size_threshold_is_the_same_on_every_machine(preset, eigen):
    """The presets fall on the measured sides of the fixed 64 MB threshold (the main
    job's ``rnn_small``, 22 MB, keeps XLA's defaults; transformer-base, 183 MB, does
    not), whatever cache this machine has: the kernels, hence the decoded tokens, do
    not depend on it."""
    from seqjax.models import build_model

    model = build_model(model_preset(preset))
    shapes = jax.eval_shape(model.init, jax.random.key(0))
    assert (matrix_bytes(shapes) >= compile_options.LARGE_WEIGHTS_BYTES) is eigen
    got = decode_compiler_options(4, shapes, platform="cpu", env={}, cpu_flags=AVX2)
    assert got == (EIGEN if eigen else {})


def test_environment_overrides_and_bad_values():
    assert _opts(4, SEQJAX_CPU_DOTS="ynnpack") == {}
    assert _opts(256, SEQJAX_CPU_DOTS="eigen") == EIGEN
    assert _opts(4, params=None, SEQJAX_CPU_DOTS="eigen") == EIGEN
    assert _opts(4, SEQJAX_CPU_DOTS=" Auto ") == EIGEN
    # the user's own XLA flag for the same choice wins: no option would override it
    assert _opts(4, XLA_FLAGS="--xla_cpu_experimental_ynn_fusion_type=dot") == {}
    assert (
        _opts(4, SEQJAX_CPU_DOTS="eigen", XLA_FLAGS="--xla_cpu_experimental_ynn_fusion_type=") == {}
    )
    assert _opts(4, XLA_FLAGS="--xla_cpu_multi_thread_eigen=false") == EIGEN  # other flags
    with pytest.raises(ConfigError, match="SEQJAX_CPU_DOTS='mkl': use one of auto, ynnpack, eigen"):
        _opts(4, SEQJAX_CPU_DOTS="mkl")


def test_w8a8_and_bf16_weights_keep_the_low_precision_kernels():
    model = Transformer(model_preset("tiny"))
    params = jax.jit(model.init)(jax.random.key(0))
    weight_only = quantize_params(params, "int8", min_size=0)
    w8a8 = quantize_params(params, "w8a8", min_size=0)
    tiny = 2048  # a threshold small enough that the tiny model's weights count as large
    assert _opts(4, params, large=tiny) == EIGEN
    assert _opts(4, weight_only, large=tiny // 4) == EIGEN  # int8 bytes: a quarter
    assert _opts(4, w8a8, large=tiny // 4) == {}
    assert _opts(4, (params, w8a8), large=tiny // 4) == {}  # an ensemble with a w8a8 member
    assert _opts(4, w8a8, large=tiny // 4, SEQJAX_CPU_DOTS="eigen") == EIGEN  # forced
    bf16 = quantize_params(params, "bf16", min_size=0)  # bfloat16 dots: YNNPACK's as well
    assert _opts(4, bf16, large=tiny // 4) == {}
    assert _opts(4, (params, bf16), large=tiny // 4) == {}


def test_one_row_reads_output_major_float32_weights_on_avx2_only():
    """One row per step on large float32 weights on an AVX2 CPU: the output-major copy
    (and XLA's defaults for it); every other condition keeps the params as they are."""
    model = Transformer(model_preset("tiny"))
    params = jax.jit(model.init)(jax.random.key(0))
    tiny = 2048

    def ask(rows, p=params, flags=AVX2, platform="cpu", jaxlib=OLD_JAXLIB, **env):
        return one_row_output_major(
            rows, p, platform=platform, env=env, large_bytes=tiny, cpu_flags=flags, jaxlib=jaxlib
        )

    assert ask(1) and ask(1, jaxlib=(0, 12, 0))
    assert not ask(1, jaxlib=NEW_JAXLIB)  # there the copy lost to the stored weights
    assert not any(ask(rows) for rows in (2, 4, 16, 64))
    assert not ask(1, flags=AVX512) and not ask(1, flags=frozenset({"avx", "sse4_2"}))
    assert not ask(1, platform="gpu") and not ask(1, p=None)
    assert not ask(1, SEQJAX_CPU_DOTS="ynnpack") and not ask(1, SEQJAX_CPU_DOTS="eigen")
    assert not ask(1, XLA_FLAGS="--xla_cpu_experimental_ynn_fusion_type=dot")
    assert ask(1, SEQJAX_CPU_DOTS=" Auto ")
    assert not one_row_output_major(1, params, platform="cpu", env={}, cpu_flags=AVX2)  # 64 MB
    for mode in ("int8", "w8a8", "bf16"):  # quantised weights keep their own path
        assert not ask(1, p=quantize_params(params, mode, min_size=0))
    nt = output_major(params, min_size=0)
    assert not ask(1, p=nt)  # already output-major
    # its program: YNNPACK's kernels (XLA's own ran [N, K] products 3-7x slower)
    assert _opts(1, params, large=tiny) == EIGEN and _opts(1, nt, large=tiny) == {}


def test_the_option_compiles_and_computes_the_same_product():
    """The option is one XLA accepts (a typo would fail to compile) and changes only
    the kernel: a decode-shaped product agrees with the default's to float rounding."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((4, 64)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((64, 256)), jnp.float32)
    default = jax.jit(jnp.matmul)(x, w)
    ours = jax.jit(jnp.matmul, compiler_options=EIGEN)(x, w)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(default), rtol=1e-5, atol=1e-5)
    with pytest.raises(Exception, match="no_such_option"):
        jax.jit(jnp.matmul, compiler_options={"xla_cpu_no_such_option": ""})(x, w)


def test_jitted_decoders_pick_the_kernels_per_call(monkeypatch):
    """``jitted(decoder)`` compiles a small call on large weights with XLA's own kernels
    (here the tiny model's weights count as large against a 2 kB threshold), large calls
    and calls inside another jit with XLA's defaults; the tokens are the same."""
    from seqjax.decoding import beam_search, greedy, jitted

    monkeypatch.setattr(compile_options, "LARGE_WEIGHTS_BYTES", 2048)
    monkeypatch.setattr(compile_options, "host_cpu_flags", lambda: AVX2)
    monkeypatch.delenv("SEQJAX_CPU_DOTS", raising=False)
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    model = Transformer(model_preset("tiny"))
    params = jax.tree.map(lambda x: x * 4.0, jax.jit(model.init)(jax.random.key(1)))
    src = jnp.asarray(np.random.default_rng(0).integers(4, 64, (3, 7)), jnp.int32)
    mask = src > 0
    cache = model.init_cache(params, model.encode(params, src, mask), mask, 8)
    c = model.config
    ids = dict(max_len=8, bos_id=c.bos_id, eos_id=c.eos_id, pad_id=c.pad_id, params=params)
    key = tuple(EIGEN.items())
    for decoder, extra in ((greedy, {}), (beam_search, {"beam_size": 4})):
        fast = jitted(decoder)
        fast._with_options.clear()
        small = fast(model.step, cache, **ids, **extra)  # 3 or 12 rows
        assert list(fast._with_options) == [key]
        monkeypatch.setenv("SEQJAX_CPU_DOTS", "ynnpack")
        default = fast(model.step, cache, **ids, **extra)
        monkeypatch.delenv("SEQJAX_CPU_DOTS")
        np.testing.assert_array_equal(np.asarray(small.tokens), np.asarray(default.tokens))
        inner = jax.jit(
            lambda p, ca, f=fast, e=extra: f(model.step, ca, **{**ids, "params": p}, **e)
        )
        np.testing.assert_array_equal(
            np.asarray(inner(params, cache).tokens), np.asarray(small.tokens)
        )
    assert len(set(map(tuple, np.asarray(small.tokens)[:, 0].tolist()))) > 1  # rows differ
