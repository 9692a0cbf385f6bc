"""``seqjax.app.export_cache``: a decoder exported by one process is reused by the next
without tracing, with the same outputs; damaged files are rewritten; keys keep apart what
differs; without a compile cache nothing is exported."""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest

from seqjax.app import export_cache, translate
from seqjax.config import DecodeConfig
from seqjax.models.quantize import quantize_params

SENTENCES = ["alpha beta gamma", "delta", "eps zeta eta theta iota", "kappa mu"]
CONFIGS = {
    "beam": DecodeConfig(method="beam", beam_size=3, n_best=2),
    "sample": DecodeConfig(method="sample", top_k=5, num_samples=2, seed=7),
}


@pytest.fixture(scope="module")
def translator(trained):
    return translate.load(trained)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An export folder for this test, and a process with nothing loaded yet."""
    monkeypatch.setattr(export_cache, "cache_dir", lambda: tmp_path / "exported")
    monkeypatch.setattr(export_cache, "_LOADED", {})
    return tmp_path / "exported"


def _new_process(monkeypatch) -> None:
    """What a new process has: the files on disk, nothing loaded, no export, no tracing."""
    monkeypatch.setattr(export_cache, "_LOADED", {})

    def refuse(*args, **kw):
        raise AssertionError("traced or exported although the program is on disk")

    monkeypatch.setattr(jax.export, "export", refuse)
    monkeypatch.setattr(translate, "_decode_batch", refuse)


def _nbest(tr, cfg):
    return tr.translate_nbest(SENTENCES, cfg)


def _assert_same(got, want, exact: bool) -> None:
    """Equal n-best lists: exactly, or the same texts with scores equal to float rounding."""
    if exact:
        assert got == want
        return
    assert [[t for t, _ in hyps] for hyps in got] == [[t for t, _ in hyps] for hyps in want]
    np.testing.assert_allclose(
        [[s for _, s in hyps] for hyps in got], [[s for _, s in hyps] for hyps in want], rtol=1e-6
    )


@pytest.mark.parametrize("dots", ["ynnpack", "eigen"])
@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_reused_program_gives_the_same_outputs_without_tracing(
    translator, cache, monkeypatch, method, dots
):
    """With XLA's default kernels the exported program gives the plain path's outputs
    exactly. With XLA's own kernels (``eigen``, what ``auto`` picks for small batches of
    a large model) the same texts, and scores equal to float rounding: XLA compiles the deserialised module's
    dots into kernels that may round differently (seen with sampling's scores)."""
    cfg = CONFIGS[method]
    monkeypatch.setenv("SEQJAX_CPU_DOTS", dots)
    with monkeypatch.context() as m:
        m.setattr(export_cache, "cache_dir", lambda: None)
        plain = _nbest(translator, cfg)  # the ordinary jit path
    first = _nbest(translator, cfg)  # exports and writes
    files = sorted(cache.glob("*.jaxexport"))
    assert files, "nothing was exported"
    with monkeypatch.context() as m:
        _new_process(m)
        again = _nbest(translator, cfg)
    assert again == first  # the same exported program: texts and float scores, exactly
    _assert_same(first, plain, exact=dots == "ynnpack")
    # `_without_lapack_setup` skips JAX's LAPACK set-up: the decoders must not call LAPACK.
    for path in files:
        text = jax.export.deserialize(bytearray(path.read_bytes())).mlir_module()
        targets = set(re.findall(r"custom_call @(\w+)", text))
        assert not [t for t in targets if "lapack" in t.lower()], targets


def test_damaged_file_is_exported_again(translator, cache, monkeypatch):
    cfg = CONFIGS["beam"]
    want = _nbest(translator, cfg)
    (path,) = cache.glob("*.jaxexport")
    path.write_bytes(path.read_bytes()[:100])  # torn by a crash
    monkeypatch.setattr(export_cache, "_LOADED", {})
    assert _nbest(translator, cfg) == want
    with monkeypatch.context() as m:
        _new_process(m)  # the rewritten file is whole again
        assert _nbest(translator, cfg) == want


def test_keys_keep_programs_apart(translator, cache):
    _nbest(translator, CONFIGS["beam"])
    n = len(list(cache.glob("*.jaxexport")))
    _nbest(translator, DecodeConfig(method="beam", beam_size=2, n_best=2))  # another static
    assert len(list(cache.glob("*.jaxexport"))) == 2 * n
    # A numeric option is traced: the same program serves it.
    _nbest(translator, DecodeConfig(method="beam", beam_size=3, n_best=2, alpha=0.3))
    assert len(list(cache.glob("*.jaxexport"))) == 2 * n


@pytest.mark.parametrize("mode", ["int8", "w8a8"])
def test_int8_weights_go_through_the_export(translator, cache, monkeypatch, mode):
    """Quantised params take the exported path too: the same texts as the plain jit path,
    scores equal to float rounding (XLA compiles the deserialised module's dequantising
    dots into kernels that may round differently: seen with int8 once the few-row beam
    ran one loop instead of phases), and exactly the same outputs from the reloaded file."""
    q = translate.Translator(
        translator.model,
        quantize_params(translator.params, mode),
        translator.src_tokenizer,
        translator.tgt_tokenizer,
        translator.config,
    )
    with monkeypatch.context() as m:
        m.setattr(export_cache, "cache_dir", lambda: None)
        plain = _nbest(q, CONFIGS["beam"])
    exported = _nbest(q, CONFIGS["beam"])
    _assert_same(exported, plain, exact=False)
    with monkeypatch.context() as m:
        _new_process(m)
        assert _nbest(q, CONFIGS["beam"]) == exported


def test_without_a_compile_cache_nothing_is_exported(translator, tmp_path, monkeypatch):
    monkeypatch.setattr(export_cache, "_LOADED", {})
    assert export_cache.cache_dir() is None  # the suite runs without a compile cache
    calls = []
    monkeypatch.setattr(jax.export, "export", lambda *a, **k: calls.append(1))
    out = _nbest(translator, CONFIGS["beam"])
    assert calls == [] and len(out) == len(SENTENCES)
    assert np.all([len(o) == 2 for o in out])
