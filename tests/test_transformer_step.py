"""``seqjax.models.transformer_step``: decode-layout weights and the one-position sublayers.

That the whole step equals the teacher-forced ``forward`` for every variant is in
tests/test_model_interface.py; against the modules' sown K/V and attention in
tests/test_model_decoding.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import model_and_params, model_config

from seqjax.models import build_model, transformer_ops, transformer_step


@pytest.mark.parametrize("family", ["transformer", "transformer_bart"])
def test_step_weights_are_the_flax_parameters_reshaped(family):
    model, params = model_and_params(family)
    c, p = model.config, params["params"]
    w = transformer_step.step_weights(c, params)
    hd = c.num_heads * c.head_dim
    layer, lp = w["layers"][1], p["decoder_layers_1"]
    assert layer["qkv"].shape == (c.d_model, 3 * hd)
    q_kernel = lp["qkv"]["kernel"][:, 0].reshape(c.d_model, hd)
    np.testing.assert_array_equal(layer["qkv"][:, :hd], q_kernel)
    np.testing.assert_array_equal(layer["self_out"], lp["self_out"]["kernel"].reshape(hd, -1))
    assert (layer["qkv_b"] is None) == (not c.qkv_bias)
    np.testing.assert_array_equal(w["out_w"], p["logits_dense"]["kernel"])
    if c.final_logits_bias:  # the untied projection's bias and HF's extra bias, summed once
        want = p["logits_dense"]["bias"] + p["final_logits_bias"]
        np.testing.assert_array_equal(w["out_b"], want)
    if c.position_embedding == "learned":  # row t is position t: the offset is dropped
        np.testing.assert_array_equal(
            w["positions"][3], p["decoder_pos"]["embedding"][3 + c.position_offset]
        )


def test_tied_output_is_the_transposed_embedding():
    model = build_model(model_config("transformer", tie_output=True, share_embeddings=True))
    params = model.init(jax.random.key(0))
    w = transformer_step.step_weights(model.config, params)
    np.testing.assert_array_equal(w["out_w"], params["params"]["tgt_embed"]["embedding"].T)
    assert w["out_b"] is None


def test_self_attention_writes_only_its_position():
    model, params = model_and_params("transformer")
    c = model.config
    w = transformer_step.step_weights(c, params)["layers"][0]
    b, t_max = 2, 5
    rng = np.random.default_rng(0)
    kv = tuple(
        jnp.asarray(rng.normal(size=(b, c.num_heads, t_max, c.head_dim)), jnp.float32)
        for _ in range(2)
    )
    x = jnp.asarray(rng.normal(size=(b, c.d_model)), jnp.float32)
    mask = jnp.broadcast_to(jnp.arange(t_max) <= 2, (b, t_max))
    y, (k, v) = transformer_step.self_attention(c, w, kv, jnp.int32(2), mask, x)
    assert y.shape == (b, c.d_model)
    for new, old in ((k, kv[0]), (v, kv[1])):
        np.testing.assert_array_equal(np.delete(new, 2, axis=2), np.delete(old, 2, axis=2))
        assert not np.allclose(new[:, :, 2], old[:, :, 2])


@pytest.mark.parametrize("pre_ln", [True, False])
def test_residual_is_pre_or_post_ln(pre_ln):
    model, _ = model_and_params("transformer", pre_ln=pre_ln)

    def sublayer(h):
        return 2.0 * h + 1.0, "aux"

    def norm(h):
        return h / 10.0

    x = jnp.arange(4.0)
    y, aux = transformer_ops.residual(model.config, sublayer, norm, x)
    want = x + (2.0 * norm(x) + 1.0) if pre_ln else norm(x + 2.0 * x + 1.0)
    np.testing.assert_allclose(y, want)
    assert aux == "aux"


def test_position_tables_are_cached_read_only():
    a = transformer_ops.sinusoid_table(16, 8)
    assert a is transformer_ops.sinusoid_table(16, 8) and not a.flags.writeable
    assert jax.numpy.asarray(a).shape == (16, 8)


@pytest.mark.parametrize("family", ["transformer", "transformer_bart"])
def test_expanded_cache_shares_the_memory_and_steps_like_repeated_rows(family):
    """``expand_cache`` repeats only the self-attention rows; a step over it equals a step
    over the cache with every leaf repeated (the memory read once per source)."""
    model, params = model_and_params(family)
    c = model.config
    rng = np.random.default_rng(1)
    B, K, S = 3, 4, 5
    memory = jnp.asarray(rng.normal(size=(B, S, c.d_model)), jnp.float32)
    mask = jnp.asarray([[1] * S, [1] * 3 + [0] * 2, [1] * 4 + [0]], bool)
    cache = model.init_cache(params, memory, mask, 6)
    shared = transformer_step.expand_cache(cache, K)
    repeated = jax.tree.map(lambda x: jnp.repeat(x, K, axis=0), cache)
    for lc, base in zip(shared["layers"], cache["layers"], strict=True):
        assert lc["ck"] is base["ck"] and lc["cv"] is base["cv"]
        assert lc["k"].shape[0] == B * K
    assert shared["src_mask"] is cache["src_mask"]
    weights = transformer_step.step_weights(c, params)
    tokens = jnp.asarray(rng.integers(4, c.vocab_size, B * K), jnp.int32)
    outs = [
        jax.jit(lambda w, x, t: transformer_step.decode_step(c, w, x, t, jnp.int32(0)))(
            weights, x, tokens
        )
        for x in (shared, repeated)
    ]
    (logits_s, cache_s, attn_s), (logits_r, cache_r, attn_r) = outs
    np.testing.assert_allclose(logits_s, logits_r, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(attn_s, attn_r, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cache_s["layers"][-1]["k"], cache_r["layers"][-1]["k"], atol=1e-5)
    assert cache_s["layers"][0]["ck"].shape[0] == B  # the memory came back per source
