"""The per-size choice of XLA:CPU matmul kernels for compiled decoders."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.config import model_preset
from seqjax.decoding.compile_options import SMALL_ROWS, decode_compiler_options
from seqjax.models.quantize import quantize_params
from seqjax.models.transformer import Transformer

EIGEN = {"xla_cpu_experimental_ynn_fusion_type": ""}


def test_few_rows_get_xlas_own_kernels_on_cpu_only():
    for rows in (1, 4, 16, SMALL_ROWS):
        assert decode_compiler_options(rows, platform="cpu", env={}) == EIGEN
    for rows in (SMALL_ROWS + 1, 64, 256):
        assert decode_compiler_options(rows, platform="cpu", env={}) == {}
    for platform in ("gpu", "tpu", "cuda"):
        assert decode_compiler_options(4, platform=platform, env={}) == {}


def test_environment_overrides_and_bad_values():
    def opts(rows, **env):
        return decode_compiler_options(rows, platform="cpu", env=env)

    assert opts(4, SEQJAX_CPU_DOTS="ynnpack") == {}
    assert opts(256, SEQJAX_CPU_DOTS="eigen") == EIGEN
    assert opts(4, SEQJAX_CPU_DOTS=" Auto ") == EIGEN
    # the user's own XLA flag for the same choice wins: no option would override it
    assert opts(4, XLA_FLAGS="--xla_cpu_experimental_ynn_fusion_type=dot") == {}
    assert (
        opts(4, SEQJAX_CPU_DOTS="eigen", XLA_FLAGS="--xla_cpu_experimental_ynn_fusion_type=") == {}
    )
    assert opts(4, XLA_FLAGS="--xla_cpu_multi_thread_eigen=false") == EIGEN  # other flags
    with pytest.raises(ValueError, match="SEQJAX_CPU_DOTS='mkl': use one of auto, ynnpack, eigen"):
        opts(4, SEQJAX_CPU_DOTS="mkl")


def test_w8a8_weights_keep_the_integer_kernels():
    model = Transformer(model_preset("tiny"))
    params = jax.jit(model.init)(jax.random.key(0))
    weight_only = quantize_params(params, "int8", min_size=0)
    w8a8 = quantize_params(params, "w8a8", min_size=0)
    assert decode_compiler_options(4, params, platform="cpu", env={}) == EIGEN
    assert decode_compiler_options(4, weight_only, platform="cpu", env={}) == EIGEN
    assert decode_compiler_options(4, w8a8, platform="cpu", env={}) == {}
    assert decode_compiler_options(4, (params, w8a8), platform="cpu", env={}) == {}  # ensemble
    # forced: the user asked for it
    assert (
        decode_compiler_options(4, w8a8, platform="cpu", env={"SEQJAX_CPU_DOTS": "eigen"}) == EIGEN
    )


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
