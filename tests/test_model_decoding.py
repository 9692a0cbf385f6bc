"""Decoders on a real seqjax Transformer: the KV cache, beam 1 vs greedy, compile counts.

A model with random weights tends to emit one token over and over, which would make
token equality prove little; the fixtures use an untied model with scaled-up
weights and check that rows decode to different outputs.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.app.translate import Translator, programs_compiled
from seqjax.config import DecodeConfig, model_preset
from seqjax.decoding import beam_search, greedy
from seqjax.models.transformer import Transformer

MAX_LEN = 12
BEAM = dict(beam_size=4, alpha=0.6, length_penalty="gnmt", min_len=4)


def _varied_params(model: Transformer, seed: int) -> dict:
    # Larger weights than the initialiser gives: sharper, source-dependent outputs.
    params = jax.jit(model.init)(jax.random.key(seed))
    return jax.tree.map(lambda x: x * 4.0 if x.ndim >= 2 else x, params)


@pytest.fixture(scope="module")
def setup():
    cfg = model_preset("tiny", share_embeddings=False, tie_output=False)
    model = Transformer(cfg)
    params = _varied_params(model, 1)
    rng = np.random.default_rng(0)
    src = rng.integers(4, cfg.vocab_size, (4, 9)).astype(np.int32)
    src[1, 6:] = cfg.pad_id  # padded sources too
    src[3, 3:] = cfg.pad_id
    src = jnp.asarray(src)
    mask = src != cfg.pad_id
    ids = dict(bos_id=cfg.bos_id, eos_id=cfg.eos_id, pad_id=cfg.pad_id, max_len=MAX_LEN)

    @functools.partial(jax.jit, static_argnames=("decoder", "cached", "options"))
    def compiled(params, src, decoder, cached, options):
        m = src != cfg.pad_id
        if cached:
            step = model.step_fn(params)
            cache = model.init_cache(params, model.encode(params, src, m), m, MAX_LEN)
        else:
            step = _no_cache_step(model, params)
            tgt = jnp.full((src.shape[0], MAX_LEN), cfg.pad_id, jnp.int32)
            cache = {"src": src, "mask": m, "tgt": tgt}
        fn = greedy if decoder == "greedy" else beam_search
        return fn(step, cache, **ids, **dict(options))

    def run(params, src, *, decoder, cached, **options):
        return compiled(params, src, decoder, cached, tuple(sorted(options.items())))

    return cfg, model, params, src, mask, run


def _no_cache_step(model: Transformer, params: dict):
    """A step function that reruns the teacher-forced ``forward`` on the whole prefix.

    Its cache holds the source and the target tokens fed so far; position ``t``
    writes the input token into column ``t`` and reads row ``t`` of the logits (the
    causal mask makes later, not yet written columns irrelevant).
    """

    def step(token_B, position, cache):
        tgt = jax.lax.dynamic_update_index_in_dim(cache["tgt"], token_B, position, axis=1)
        logits_BxTxV = model.forward(params, cache["src"], cache["mask"], tgt)
        logits = jax.lax.dynamic_index_in_dim(logits_BxTxV, position, 1, keepdims=False)
        return logits, {**cache, "tgt": tgt}

    return step


def _assert_varied(tokens_BxKxL):
    rows = {tuple(np.asarray(r[0]).tolist()) for r in tokens_BxKxL}
    assert len(rows) == tokens_BxKxL.shape[0], "rows decode alike: the test would prove little"
    assert len(set(np.asarray(tokens_BxKxL[:, 0]).ravel().tolist())) > 3


def test_greedy_kv_cache_matches_full_recompute(setup):
    _, _, params, src, _, run = setup
    fast = run(params, src, decoder="greedy", cached=True)
    slow = run(params, src, decoder="greedy", cached=False)
    _assert_varied(fast.tokens)
    np.testing.assert_array_equal(fast.tokens, slow.tokens)
    np.testing.assert_array_equal(fast.lengths, slow.lengths)
    np.testing.assert_allclose(fast.scores, slow.scores, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fast.log_probs, slow.log_probs, rtol=1e-5, atol=1e-5)


def test_beam_kv_cache_matches_full_recompute(setup):
    _, _, params, src, _, run = setup
    fast = run(params, src, decoder="beam", cached=True, n_best=4, **BEAM)
    slow = run(params, src, decoder="beam", cached=False, n_best=4, **BEAM)
    _assert_varied(fast.tokens)
    np.testing.assert_array_equal(fast.tokens, slow.tokens)
    np.testing.assert_array_equal(fast.lengths, slow.lengths)
    np.testing.assert_allclose(fast.scores, slow.scores, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fast.log_probs, slow.log_probs, rtol=1e-5, atol=1e-5)
    # the length penalty is in force: scores are the normalised sums
    lp = ((5.0 + np.asarray(fast.lengths)) / 6.0) ** BEAM["alpha"]
    np.testing.assert_allclose(
        np.asarray(fast.log_probs).sum(-1) / lp, fast.scores, rtol=1e-5, atol=1e-5
    )


def test_beam_size_one_is_greedy(setup):
    """Beam 1 follows the greedy path; it may stop earlier on a better EOS.

    The single live beam extends by the best non-EOS token, i.e. greedy's token while
    greedy has not ended, and every EOS extension along the way is kept as a finished
    hypothesis. So beam 1 equals greedy exactly when EOS cannot win early, and in
    general returns an EOS-ended prefix of the greedy path scoring at least as well.
    """
    _, _, params, src, _, run = setup
    g = run(params, src, decoder="greedy", cached=True, min_len=MAX_LEN)
    b = run(params, src, decoder="beam", cached=True, beam_size=1, alpha=0.0, min_len=MAX_LEN)
    _assert_varied(g.tokens)
    np.testing.assert_array_equal(g.tokens, b.tokens)
    np.testing.assert_array_equal(g.lengths, b.lengths)
    np.testing.assert_allclose(g.scores, b.scores, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g.log_probs, b.log_probs, rtol=1e-5, atol=1e-5)

    g = run(params, src, decoder="greedy", cached=True)
    b = run(params, src, decoder="beam", cached=True, beam_size=1, alpha=0.0)
    _assert_varied(g.tokens)
    same_rows = 0
    for row in range(src.shape[0]):
        lg, lb = int(g.lengths[row, 0]), int(b.lengths[row, 0])
        shared = min(lg, lb) - 1  # tokens before either hypothesis ends
        np.testing.assert_array_equal(g.tokens[row, 0, :shared], b.tokens[row, 0, :shared])
        assert float(b.scores[row, 0]) >= float(g.scores[row, 0]) - 1e-5
        same_rows += lg == lb and bool(jnp.all(g.tokens[row] == b.tokens[row]))
    assert same_rows >= 1


def test_min_len_equal_max_len_gives_exact_lengths(setup):
    _, _, params, src, _, run = setup
    for decoder, options in (("greedy", {}), ("beam", BEAM)):
        options = {**options, "min_len": MAX_LEN}
        r = run(params, src, decoder=decoder, cached=True, **options)
        assert np.all(np.asarray(r.lengths)[:, 0] == MAX_LEN)


def test_decode_step_matches_teacher_forced_modules():
    """``decode_step`` (2-D decode-layout weights) equals the Flax modules' teacher-forced
    pass: the logits, the last layer's cross-attention and the cached keys/values.

    Tied embeddings here; the untied pre-LN and post-LN paths are pinned against
    ``forward`` in test_model_interface.py and above.
    """
    cfg = model_preset("tiny")
    model = Transformer(cfg)
    params = _varied_params(model, 2)
    src = jnp.asarray(np.random.default_rng(2).integers(4, cfg.vocab_size, (3, 7)), jnp.int32)
    mask = src != cfg.pad_id
    prepare = jax.jit(lambda p: model.init_cache(p, model.encode(p, src, mask), mask, 6))
    cache_fast = cache_start = prepare(params)
    tgt = jnp.tile(jnp.asarray([cfg.bos_id, 7, 9, 11], jnp.int32), (3, 1))

    @jax.jit
    def step(tokens, position, cache):
        return model.step_fn(params)(tokens, position, cache)

    @jax.jit
    def teacher_forced(params):
        # ``__call__`` is ``forward``; the decoder layers sow their K/V and attention.
        return model.net.apply(params, src, mask, tgt, mutable=["intermediates"])

    logits_ref, state = teacher_forced(params)
    sown = [
        state["intermediates"][f"decoder_layers_{i}"] for i in range(len(cache_start["layers"]))
    ]
    attn_ref = jnp.mean(sown[-1]["cross_attention"][0], axis=1)  # [B, T, S]
    for t in range(tgt.shape[1]):
        lf, cache_fast, af = step(tgt[:, t], jnp.int32(t), cache_fast)
        np.testing.assert_allclose(lf, logits_ref[:, t], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(af, attn_ref[:, t], rtol=1e-5, atol=1e-6)
    pad = ((0, 0), (0, 0), (0, 6 - tgt.shape[1]), (0, 0))  # unwritten positions stay 0
    cache_ref = {
        **cache_start,
        "layers": tuple(
            {**lc, "k": jnp.pad(s["self_kv"][0][0], pad), "v": jnp.pad(s["self_kv"][0][1], pad)}
            for lc, s in zip(cache_start["layers"], sown, strict=True)
        ),
    }
    for a, b in zip(jax.tree.leaves(cache_fast), jax.tree.leaves(cache_ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


# -- Translator: one compilation per length bucket ----------------------------------

TRACES = {"step_fn": 0}


@dataclasses.dataclass(frozen=True)
class _CountingTransformer(Transformer):
    """A Transformer that counts how often a decoder program is traced: decoders lay
    the weights out (``step_params``, via ``model.step.prepare`` or ``step_fn``) once
    per trace."""

    def step_params(self, params):
        TRACES["step_fn"] += 1
        return super().step_params(params)


class _WordTokenizer:
    """Stand-in tokenizer: word ``w<i>`` is id ``i``; decodes ids back to words."""

    def encode(self, texts):
        return [[int(w[1:]) for w in t.split()] for t in texts]

    def decode(self, ids):
        return [" ".join(f"w{i}" for i in row if i > 3) for row in np.asarray(ids)]


def test_translator_compiles_once_per_bucket():
    cfg = model_preset("tiny", share_embeddings=False, tie_output=False)
    model = _CountingTransformer(cfg)
    tok = _WordTokenizer()
    base = DecodeConfig(method="beam", beam_size=2, max_len=8, batch_size=4)
    tr = Translator(model, _varied_params(model, 1), tok, tok, cfg, base, buckets=(8, 16))
    rng = np.random.default_rng(1)
    # 8 sources in bucket 16 and 8 in bucket 8: two full batches of 4 rows each.
    lengths = [12, 15, 10, 11, 14, 9, 13, 16, 3, 7, 5, 8, 2, 6, 4, 1]
    sentences = [" ".join(f"w{i}" for i in rng.integers(4, 64, n)) for n in lengths]

    def traces(config):
        before, jit_before = TRACES["step_fn"], programs_compiled()
        out = tr.translate(sentences, config)
        assert len(out) == len(sentences)
        return TRACES["step_fn"] - before, programs_compiled() - jit_before

    assert traces(base) == (2, 2)  # one program per source bucket
    assert traces(dataclasses.replace(base, alpha=1.3)) == (0, 0)
    assert traces(base) == (0, 0)
    sample = dataclasses.replace(base, method="sample", temperature=1.0, top_p=1.0)
    assert traces(sample) == (2, 2)
    assert traces(dataclasses.replace(sample, temperature=0.6, top_p=0.8, seed=3)) == (0, 0)


def _avx2_translator(
    monkeypatch, batch_size: int, seed: int, jaxlib: tuple[int, ...] = (0, 10, 2)
) -> Translator:
    """A greedy ``Translator`` of the untied tiny model as on an AVX2 CPU whose weights
    count as large (a 2 kB threshold) under jaxlib ``jaxlib`` (the kernel rule depends on
    it), with ``_decode_batch``'s programs counted afresh."""
    from seqjax.app import translate as translate_mod
    from seqjax.decoding import compile_options

    monkeypatch.setattr(compile_options, "LARGE_WEIGHTS_BYTES", 2048)
    monkeypatch.setattr(compile_options, "host_cpu_flags", lambda: frozenset({"avx", "avx2"}))
    monkeypatch.setattr(compile_options, "jaxlib_version", lambda: jaxlib)
    monkeypatch.setattr(translate_mod, "_PROGRAMS", {})
    monkeypatch.delenv("SEQJAX_CPU_DOTS", raising=False)
    monkeypatch.setenv("XLA_FLAGS", "")
    cfg = model_preset("tiny", share_embeddings=False, tie_output=False)
    model = Transformer(cfg)
    tok = _WordTokenizer()
    config = DecodeConfig(method="greedy", max_len=8, batch_size=batch_size)
    return Translator(model, _varied_params(model, seed), tok, tok, cfg, config, buckets=(8,))


def test_translator_compiles_small_batches_with_eigen_dots(monkeypatch):
    """A batch of few decoding rows compiles with XLA's own matmul kernels on CPU
    (``seqjax.decoding.compile_options``; the tiny model's weights count as large
    against a 2 kB threshold), a large one with XLA's defaults; both decode the same tokens
    (the kernels differ only in float rounding)."""
    from seqjax.app import translate as translate_mod

    tr = _avx2_translator(monkeypatch, batch_size=64, seed=3)
    rng = np.random.default_rng(2)
    few = [" ".join(f"w{i}" for i in rng.integers(4, 64, 6)) for _ in range(3)]
    many = few + [" ".join(f"w{i}" for i in rng.integers(4, 64, 6)) for _ in range(61)]
    eigen = (("xla_cpu_experimental_ynn_fusion_type", ""),)
    default = translate_mod._decode_program(())  # jit caches are shared per function:
    before = default._cache_size()  # count what this test adds
    out_auto = tr.translate(few)  # 3 sources -> 4 rows
    assert list(translate_mod._PROGRAMS) == [(), eigen] and default._cache_size() == before
    assert tr.translate(many)[:3] == out_auto  # 64 rows: XLA's defaults
    assert default._cache_size() == before + 1
    monkeypatch.setenv("SEQJAX_CPU_DOTS", "ynnpack")  # the override: defaults at 4 rows too
    assert tr.translate(few) == out_auto
    assert default._cache_size() == before + 2
    assert len(set(out_auto)) == 3  # distinct outputs: the comparison means something


def test_translator_decodes_one_row_from_an_output_major_copy(monkeypatch):
    """One row per step (greedy at batch 1, streaming) on an AVX2 CPU reads a float32 copy
    of the weights stored output-major (``compile_options.one_row_output_major``; the tiny
    model's weights count as large against a 2 kB threshold), made once and compiled with
    XLA's defaults; the text is the one decoded from the params as they are."""
    from seqjax.app import translate as translate_mod
    from seqjax.models.quantize import QuantizedArray

    tr = _avx2_translator(monkeypatch, batch_size=1, seed=4)
    one, model = tr.decode_config, tr.model
    rng = np.random.default_rng(3)
    sentences = [" ".join(f"w{i}" for i in rng.integers(4, 64, 6)) for _ in range(4)]
    out = tr.translate(sentences)
    copy = tr.decode_params(1)
    kernels = [x for x in jax.tree.leaves(copy, is_leaf=lambda x: isinstance(x, QuantizedArray))]
    assert any(isinstance(x, QuantizedArray) and x.act == "f32" for x in kernels)
    assert tr.decode_params(1) is copy  # made once
    assert tr.decode_params(2) is tr.params  # more rows: the params as they are
    bf16 = Transformer(dataclasses.replace(model.config, dtype="bfloat16"))
    assert dataclasses.replace(tr, model=bf16).decode_params(1) is tr.params  # float32 only
    assert list(translate_mod._PROGRAMS) == [()]  # one row: XLA's defaults, not Eigen
    pieces: list[str] = []
    translate_mod.translate_streaming(tr, sentences, one, pieces.append)
    assert "".join(pieces).splitlines() == out
    monkeypatch.setenv("SEQJAX_CPU_DOTS", "ynnpack")  # the override: the stored layout
    assert tr.decode_params(1) is tr.params
    assert tr.translate(sentences) == out
    monkeypatch.delenv("SEQJAX_CPU_DOTS")
    tr.params = _varied_params(model, 5)  # new params: a new copy
    assert tr.decode_params(1) is not copy
    assert len(set(out)) == 4  # distinct outputs: the comparison means something


def test_translator_keeps_the_stored_weights_for_one_row_from_jaxlib_0_12_1(monkeypatch):
    """With jaxlib 0.12.1 YNNPACK's one-row products of the stored weights were the fastest
    (``compile_options.ONE_ROW_YNNPACK_FROM``): no output-major copy, XLA's defaults for
    one row, XLA's own kernels still for a few rows; the text is the older rule's."""
    from seqjax.app import translate as translate_mod

    rng = np.random.default_rng(3)
    sentences = [" ".join(f"w{i}" for i in rng.integers(4, 64, 6)) for _ in range(4)]
    out = _avx2_translator(monkeypatch, batch_size=1, seed=4).translate(sentences)
    tr = _avx2_translator(monkeypatch, batch_size=1, seed=4, jaxlib=(0, 12, 1))
    assert tr.decode_params(1) is tr.params  # no copy
    assert tr.translate(sentences) == out
    assert list(translate_mod._PROGRAMS) == [()]  # one row: XLA's defaults
    tr.decode_config = dataclasses.replace(tr.decode_config, batch_size=4)
    tr.translate(sentences)  # four rows: XLA's own kernels, as before
    assert list(translate_mod._PROGRAMS) == [(), (("xla_cpu_experimental_ynn_fusion_type", ""),)]
