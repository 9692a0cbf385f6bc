"""``seqjax.interop.hf`` without torch: hand-built HF directories (NumPy + JSON) only."""

from __future__ import annotations

import dataclasses
import io
import json
import re
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import sentencepiece as spm

from seqjax.app.cli import main
from seqjax.interop.hf import (
    HFImportError,
    hf_decode_config,
    hf_generation_settings,
    load_hf,
    load_hf_translator,
)
from seqjax.interop.hf_tokenizer import MarianSentencePiece
from seqjax.interop.safetensors_io import SafetensorsError, read_safetensors, write_safetensors
from seqjax.models.transformer import marian_sinusoid_table

V, D, H, F, LAYERS, MAXPOS = 40, 16, 2, 24, 2, 32


def hf_config(kind: str, **overrides) -> dict:
    base = dict(
        vocab_size=V,
        d_model=D,
        encoder_layers=LAYERS,
        decoder_layers=LAYERS,
        encoder_attention_heads=H,
        decoder_attention_heads=H,
        encoder_ffn_dim=F,
        decoder_ffn_dim=F,
        max_position_embeddings=MAXPOS,
        is_encoder_decoder=True,
        tie_word_embeddings=True,
    )
    if kind == "marian":
        base.update(
            model_type="marian",
            architectures=["MarianMTModel"],
            activation_function="swish",
            scale_embedding=True,
            pad_token_id=V - 1,
            decoder_start_token_id=V - 1,
            eos_token_id=0,
            share_encoder_decoder_embeddings=True,
        )
    else:
        base.update(
            model_type="bart",
            architectures=["BartForConditionalGeneration"],
            activation_function="gelu",
            scale_embedding=False,
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
            decoder_start_token_id=2,
        )
    base.update(overrides)
    return base


def hf_tensors(kind: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights under transformers' names (``model.`` prefix, [out, in] Linear weights)."""
    rng = np.random.default_rng(seed)

    def r(*shape: int, scale: float = 0.3) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    t = {"model.shared.weight": r(V, D, scale=1.0), "final_logits_bias": r(1, V)}
    if kind == "bart":
        for side in ("encoder", "decoder"):
            t[f"model.{side}.embed_positions.weight"] = r(MAXPOS + 2, D)
            t[f"model.{side}.layernorm_embedding.weight"] = 1 + r(D, scale=0.1)
            t[f"model.{side}.layernorm_embedding.bias"] = r(D, scale=0.1)

    def attn(prefix: str) -> None:
        for n in "qkvo":
            name = "out_proj" if n == "o" else f"{n}_proj"
            t[f"{prefix}.{name}.weight"] = r(D, D)
            t[f"{prefix}.{name}.bias"] = r(D, scale=0.1)

    def block(prefix: str, lns: tuple[str, ...]) -> None:
        t[f"{prefix}.fc1.weight"], t[f"{prefix}.fc1.bias"] = r(F, D), r(F, scale=0.1)
        t[f"{prefix}.fc2.weight"], t[f"{prefix}.fc2.bias"] = r(D, F), r(D, scale=0.1)
        for ln in lns:
            t[f"{prefix}.{ln}.weight"] = 1 + r(D, scale=0.1)
            t[f"{prefix}.{ln}.bias"] = r(D, scale=0.1)

    for i in range(LAYERS):
        attn(f"model.encoder.layers.{i}.self_attn")
        block(f"model.encoder.layers.{i}", ("self_attn_layer_norm", "final_layer_norm"))
        attn(f"model.decoder.layers.{i}.self_attn")
        attn(f"model.decoder.layers.{i}.encoder_attn")
        block(
            f"model.decoder.layers.{i}",
            ("self_attn_layer_norm", "encoder_attn_layer_norm", "final_layer_norm"),
        )
    return t


def write_dir(path: Path, config: dict, tensors: dict[str, np.ndarray] | None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    if tensors is not None:
        write_safetensors(path / "model.safetensors", tensors, {"format": "pt"})
    return path


@pytest.fixture(scope="module", params=["marian", "bart"])
def hand_built(request, tmp_path_factory):
    kind = request.param
    tensors = hf_tensors(kind)
    d = write_dir(tmp_path_factory.mktemp(kind), hf_config(kind), tensors)
    return kind, d, tensors


def test_safetensors_round_trip(tmp_path):
    arrays = {
        "a": np.arange(12, dtype=np.float32).reshape(3, 4),
        "b": np.array([1.5, -2.25], dtype=ml_dtypes.bfloat16),
        "c": np.array([[7]], dtype=np.int64),
        "empty": np.zeros((0, 3), np.float16),
    }
    write_safetensors(tmp_path / "x.safetensors", arrays)
    back = read_safetensors(tmp_path / "x.safetensors")
    assert sorted(back) == sorted(arrays)
    for k, v in arrays.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape
        np.testing.assert_array_equal(back[k], v)


def test_safetensors_rejects_bad_offsets(tmp_path):
    write_safetensors(tmp_path / "x.safetensors", {"a": np.ones(4, np.float32)})
    raw = (tmp_path / "x.safetensors").read_bytes()
    (tmp_path / "y.safetensors").write_bytes(raw.replace(b'"shape":[4]', b'"shape":[5]'))
    with pytest.raises(ValueError, match="tensor a: data_offsets do not match"):
        read_safetensors(tmp_path / "y.safetensors")


def _with_header(path: Path, header: object, buffer: bytes = b"\0" * 16) -> Path:
    head = json.dumps(header).encode()
    path.write_bytes(len(head).to_bytes(8, "little") + head + buffer)
    return path


MALFORMED_HEADERS = {
    "header-list": ([{"dtype": "F32"}], "not an object of tensors"),
    "entry-list": ({"a": [1, 2]}, "tensor a: entry is a JSON list"),
    "offsets-missing": ({"a": {"dtype": "F32", "shape": [4]}}, "tensor a: data_offsets"),
    "offsets-short": ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0]}}, "data_offsets"),
    "offsets-reversed": (
        {"a": {"dtype": "F32", "shape": [0], "data_offsets": [8, 0]}},
        "data_offsets",
    ),
    "offsets-negative": (
        {"a": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}},
        "data_offsets",
    ),
    "shape-negative": (
        {"a": {"dtype": "F32", "shape": [-1, -4], "data_offsets": [0, 16]}},
        "tensor a: shape",
    ),
    "shape-not-list": ({"a": {"dtype": "F32", "shape": 4, "data_offsets": [0, 16]}}, "shape"),
    "shape-float": ({"a": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}}, "shape"),
    "dtype-list": ({"a": {"dtype": ["F32"], "shape": [4], "data_offsets": [0, 16]}}, "dtype"),
    "offsets-past-end": (
        {"a": {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]}},
        "data_offsets",
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED_HEADERS))
def test_malformed_safetensors_header_is_a_named_error(case, tmp_path):
    header, expect = MALFORMED_HEADERS[case]
    path = _with_header(tmp_path / "x.safetensors", header)
    with pytest.raises(SafetensorsError, match=re.escape(expect)) as e:
        read_safetensors(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("case", ["header-list", "offsets-missing", "shape-negative"])
def test_cli_malformed_model_safetensors_is_one_line(case, tmp_path, one_line_error):
    d = write_dir(tmp_path / "m", hf_config("marian"), None)
    _with_header(d / "model.safetensors", MALFORMED_HEADERS[case][0])
    assert main(["translate", "--hf", str(d), "--greedy"]) == 2
    one_line_error("model.safetensors", MALFORMED_HEADERS[case][1])


def test_weights_land_where_they_belong(hand_built):
    kind, d, t = hand_built
    model, params, tokenizer = load_hf(d)
    p, c = params["params"], model.config
    assert tokenizer is None
    assert (c.bos_id, c.eos_id, c.pad_id) == ((V - 1, 0, V - 1) if kind == "marian" else (2, 2, 1))
    assert c.position_embedding == ("sinusoidal_marian" if kind == "marian" else "learned")
    assert c.activation == ("swish" if kind == "marian" else "gelu")
    layer = p["decoder_layers_1"]
    wq = t["model.decoder.layers.1.self_attn.q_proj.weight"]  # [out, in]
    np.testing.assert_array_equal(layer["qkv"]["kernel"][:, 0].reshape(D, D), wq.T)
    wv_b = t["model.decoder.layers.1.self_attn.v_proj.bias"]
    np.testing.assert_array_equal(layer["qkv"]["bias"][2].reshape(D), wv_b)
    wk = t["model.decoder.layers.1.encoder_attn.k_proj.weight"]
    np.testing.assert_array_equal(layer["cross_kv"]["kernel"][:, 0].reshape(D, D), wk.T)
    wo = t["model.decoder.layers.1.encoder_attn.out_proj.weight"]
    np.testing.assert_array_equal(layer["cross_out"]["kernel"].reshape(D, D), wo.T)
    np.testing.assert_array_equal(p["final_logits_bias"], t["final_logits_bias"][0])
    if kind == "bart":
        np.testing.assert_array_equal(
            p["encoder_pos"]["embedding"], t["model.encoder.embed_positions.weight"]
        )


def test_imported_model_cached_steps_match_forward(hand_built):
    """The decode step handles every imported option (biases, positions, LN, bias)."""
    _, d, _ = hand_built
    model, params, _ = load_hf(d)
    c = model.config
    src = jnp.asarray([[5, 6, 7, 8, c.eos_id], [9, 10, c.eos_id, c.pad_id, c.pad_id]])
    mask = src != c.pad_id
    tgt = jnp.asarray([[c.bos_id, 11, 12, 13], [c.bos_id, 14, 15, 16]])
    full = model.forward(params, src, mask, tgt)
    assert np.isfinite(np.asarray(full)).all()
    cache = model.init_cache(params, model.encode(params, src, mask), mask, max_len=6)
    step = jax.jit(model.step_fn(params))
    steps = []
    for t in range(tgt.shape[1]):
        logits, cache, _ = step(tgt[:, t], jnp.int32(t), cache)
        steps.append(logits)
    np.testing.assert_allclose(jnp.stack(steps, 1), full, atol=3e-5, rtol=3e-5)
    # and the un-jitted interface decode_step of the same model
    cache = model.init_cache(params, model.encode(params, src, mask), mask, max_len=6)
    slow = model.decode_step(params, cache, tgt[:, 0], jnp.int32(0))[0]
    np.testing.assert_allclose(slow, full[:, 0], atol=3e-5, rtol=3e-5)


def test_marian_position_table_layout():
    table = marian_sinusoid_table(5, 8)
    pos, i = 3, 1  # feature pair i: sin in column i, cos in column 4 + i
    freq = 1 / 10000 ** (2 * i / 8)
    np.testing.assert_allclose(table[pos, i], np.sin(pos * freq), rtol=1e-6)
    np.testing.assert_allclose(table[pos, 4 + i], np.cos(pos * freq), rtol=1e-6)


@pytest.mark.parametrize(
    "kind, field, value",
    [
        ("marian", "model_type", "t5"),
        ("marian", "architectures", ["MarianForCausalLM"]),
        ("marian", "activation_function", "tanh"),
        ("marian", "decoder_attention_heads", 4),
        ("marian", "decoder_ffn_dim", 48),
        ("marian", "decoder_vocab_size", 30),
        ("marian", "normalize_before", True),
        ("marian", "eos_token_id", [0, 3]),
        ("bart", "add_final_layer_norm", True),
        ("bart", "normalize_embedding", False),
        ("bart", "static_position_embeddings", True),
        ("bart", "decoder_start_token_id", None),
    ],
)
def test_unsupported_config_is_refused_naming_the_field(tmp_path, kind, field, value):
    d = write_dir(tmp_path, hf_config(kind, **{field: value}), hf_tensors(kind))
    with pytest.raises(HFImportError) as e:
        load_hf(d)
    message = str(e.value)
    assert field in message and "\n" not in message


def test_a_seqjax_run_given_as_hf_checkpoint_points_to_checkpoint(tmp_path):
    run_cfg = {"model": {"family": "transformer"}, "train": {"total_steps": 10}}
    d = write_dir(tmp_path, run_cfg, hf_tensors("marian"))
    with pytest.raises(HFImportError, match=r"seqjax run directory.*--checkpoint DIR"):
        load_hf(d)


def test_missing_or_extra_tensors_are_named(tmp_path):
    t = hf_tensors("marian")
    del t["model.decoder.layers.1.encoder_attn.v_proj.bias"]
    d = write_dir(tmp_path / "missing", hf_config("marian"), t)
    with pytest.raises(HFImportError, match="decoder.layers.1.encoder_attn.v_proj.bias"):
        load_hf(d)
    t = hf_tensors("marian")
    t["model.decoder.layer_norm.weight"] = np.ones(D, np.float32)  # an mBART-style final LN
    d = write_dir(tmp_path / "extra", hf_config("marian"), t)
    with pytest.raises(HFImportError, match="decoder.layer_norm.weight"):
        load_hf(d)
    t = hf_tensors("marian")
    t["model.shared.weight"] = np.zeros((V + 1, D), np.float32)
    d = write_dir(tmp_path / "shape", hf_config("marian"), t)
    with pytest.raises(HFImportError, match=r"has shape \(41, 16\), the config needs \(40, 16\)"):
        load_hf(d)


def test_pytorch_bin_is_refused_without_unpickling(tmp_path):
    d = write_dir(tmp_path, hf_config("marian"), None)
    # not a valid pickle: any attempt to unpickle it would raise a different error
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04definitely not loaded")
    with pytest.raises(HFImportError) as e:
        load_hf(d)
    assert "pytorch_model.bin" in str(e.value) and "save_pretrained" in str(e.value)
    (d / "pytorch_model.bin").unlink()
    with pytest.raises(HFImportError, match="model.safetensors: not found"):
        load_hf(d)


def test_generation_settings_map_to_decode_config(tmp_path):
    d = write_dir(tmp_path, hf_config("marian", num_beams=2), None)
    (d / "generation_config.json").write_text(
        json.dumps({"num_beams": 5, "length_penalty": 0.8, "max_length": 33, "min_length": 4})
    )
    cfg_model = load_hf_config_model(d)
    dc = hf_decode_config(hf_generation_settings(d), cfg_model)
    assert (dc.method, dc.beam_size, dc.alpha, dc.length_penalty) == ("beam", 5, 0.8, "hf")
    assert (dc.max_len, dc.min_len) == (32, 3)  # HF lengths count the decoder start token
    greedy = hf_decode_config({"num_beams": 1, "max_new_tokens": 7}, cfg_model)
    assert (greedy.method, greedy.max_len) == ("greedy", 7)
    with pytest.raises(HFImportError, match="forced_bos_token_id"):
        hf_decode_config({"forced_bos_token_id": 0}, cfg_model)
    words = hf_decode_config({"bad_words_ids": [[5], [0], [6, 0]]}, cfg_model).bad_words
    assert words == ((5,), (6, 0))  # HF drops a lone EOS (id 0 here)


@pytest.mark.parametrize(
    "settings, named",
    [
        ({"num_beam_groups": 2, "diversity_penalty": 0.5}, "num_beam_groups"),
        ({"sequence_bias": [[[5], -1.0]]}, "sequence_bias"),
        ({"renormalize_logits": True}, "renormalize_logits"),
        ({"some_future_option": 3}, "some_future_option"),
        ({"eos_token_id": [0, 5]}, "eos_token_id"),
        ({"decoder_start_token_id": 3}, "decoder_start_token_id"),
        ({"bad_words_ids": [5]}, "bad_words_ids"),
        ({"suppress_tokens": [-1]}, "suppress_tokens"),
        ({"do_sample": True}, "do_sample"),
    ],
)
def test_generation_settings_seqjax_cannot_reproduce_are_refused(tmp_path, settings, named):
    cfg_model = load_hf_config_model(write_dir(tmp_path, hf_config("marian"), None))
    with pytest.raises(HFImportError, match=named) as e:
        hf_decode_config(settings, cfg_model)
    assert "\n" not in str(e.value)


def test_generation_settings_follow_hf_precedence(tmp_path):
    """generation_config.json replaces config.json's settings; *_new_tokens win over
    *_length; off values and output-only settings are accepted; HF's default length."""
    d = write_dir(tmp_path, hf_config("marian", num_beams=3, diversity_penalty=0.5), None)
    (d / "generation_config.json").write_text(
        json.dumps({"max_length": 9, "max_new_tokens": 4, "min_length": 7, "min_new_tokens": 2,
                    "num_beam_groups": 1, "output_scores": True, "top_k": 50,
                    "transformers_version": "5.0", "early_stopping": True})
    )  # fmt: skip
    cfg_model = load_hf_config_model(d)
    dc = hf_decode_config(hf_generation_settings(d), cfg_model)
    assert dc.method == "greedy"  # num_beams of config.json is not read
    assert (dc.max_new_tokens, dc.min_new_tokens, dc.min_len) == (4, 2, 0)
    (d / "generation_config.json").unlink()
    with pytest.raises(HFImportError, match="diversity_penalty"):
        hf_decode_config(hf_generation_settings(d), cfg_model)
    default = hf_decode_config({"num_beams": 2}, cfg_model)
    assert (default.max_new_tokens, default.early_stopping) == (20, "false")
    assert (
        hf_decode_config({"num_beams": 2, "early_stopping": "never"}, cfg_model).early_stopping
        == "never"
    )


def load_hf_config_model(d: Path):
    from seqjax.interop.hf import hf_model_config, read_hf_config

    return hf_model_config(read_hf_config(d))


def test_cli_translate_hf_token_ids(hand_built, tmp_path, capsys):
    kind, d, _ = hand_built
    inp = tmp_path / "in.txt"
    eos = 0 if kind == "marian" else 2
    inp.write_text(f"5 6 7 {eos}\n\n9 10 {eos}\n")
    assert (
        main(["translate", "--hf", str(d), "--input", str(inp), "--greedy", "--max-len", "6"]) == 0
    )
    lines = capsys.readouterr().out.split("\n")
    assert len(lines) == 4 and lines[1] == "" and lines[3] == ""
    for line in (lines[0], lines[2]):
        ids = [int(x) for x in line.split()]
        assert 1 <= len(ids) <= 6 and all(0 <= i < V and i != eos for i in ids)
    # the same through the Python API
    tr = load_hf_translator(d)
    assert tr.decode_config.method == "greedy"  # no num_beams in config.json
    # HF's default length is 20 new tokens (max_new_tokens, which max_len does not replace)
    assert tr.decode_config.max_new_tokens == min(20, MAXPOS - 1)
    cfg = dataclasses.replace(tr.decode_config, max_new_tokens=6)
    assert tr.translate([f"5 6 7 {eos}"], cfg) == [lines[0]]


def test_cli_flags_replace_the_checkpoints_length_and_beam_rule(hand_built, tmp_path, capsys):
    """--greedy drops the checkpoint's beam-only early_stopping, --max-len its
    max_new_tokens (which would otherwise take precedence)."""
    kind, _, tensors = hand_built
    d = write_dir(tmp_path / "m", hf_config(kind), tensors)
    (d / "generation_config.json").write_text(json.dumps({"num_beams": 3, "max_new_tokens": 9}))
    assert (
        hf_decode_config(hf_generation_settings(d), load_hf_config_model(d)).early_stopping
        == "false"
    )
    eos = 0 if kind == "marian" else 2
    inp = tmp_path / "in.txt"
    inp.write_text(f"5 6 7 {eos}\n")
    assert (
        main(["translate", "--hf", str(d), "--input", str(inp), "--greedy", "--max-len", "2"]) == 0
    )
    assert 1 <= len(capsys.readouterr().out.split()) <= 2


def test_cli_hf_errors_are_one_line(tmp_path, capsys):
    assert main(["translate", "--hf", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("seqjax: error:") and "not a directory" in err and "\n" not in err
    d = write_dir(tmp_path / "m", hf_config("marian", activation_function="tanh"), None)
    assert main(["translate", "--hf", str(d)]) == 2
    assert "activation_function" in capsys.readouterr().err


@pytest.fixture(scope="module")
def marian_with_tokenizer(tmp_path_factory):
    """A hand-built Marian directory with source.spm/target.spm/vocab.json (opus-mt layout)."""
    d = tmp_path_factory.mktemp("marian_spm")
    words = "the cat sat on a mat and dog ran far away".split()
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, 5)) for _ in range(200)]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, vocab_size=30, minloglevel=2
    )
    for name in ("source.spm", "target.spm"):
        (d / name).write_bytes(model.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    pieces = [
        sp.id_to_piece(i)
        for i in range(sp.get_piece_size())
        if not (sp.is_control(i) or sp.is_unknown(i))
    ]
    vocab = {"</s>": 0, "<unk>": 1, **{p: i + 2 for i, p in enumerate(pieces)}, "<pad>": V - 1}
    assert len(vocab) <= V
    (d / "vocab.json").write_text(json.dumps(vocab))
    write_dir(d, hf_config("marian", num_beams=2, max_length=8), hf_tensors("marian", 1))
    return d, vocab


def test_marian_tokenizer_round_trip(marian_with_tokenizer):
    d, vocab = marian_with_tokenizer
    _, _, tok = load_hf(d)
    assert isinstance(tok, MarianSentencePiece)
    ids = tok.encode(["the cat sat on a mat", ">>fr<< the dog", ""])
    assert ids[0][-1] == 0 and ids[2] == []  # </s> appended; empty stays empty
    assert ids[1][0] == vocab["<unk>"]  # a language code absent from the vocab is <unk>
    assert all(1 < i < V - 1 for i in ids[0][:-1])
    pad = V - 1
    assert tok.decode(np.array([[pad] + ids[0] + [pad, pad]])) == ["the cat sat on a mat"]


def test_cli_translate_hf_text_end_to_end(marian_with_tokenizer, tmp_path, capsys):
    d, _ = marian_with_tokenizer
    inp = tmp_path / "in.txt"
    inp.write_text("the cat sat\n\na dog ran far away\n")
    assert main(["translate", "--hf", str(d), "--input", str(inp)]) == 0  # beam 2 from config
    lines = capsys.readouterr().out.split("\n")
    assert len(lines) == 4 and lines[1] == ""
    for line in (lines[0], lines[2]):  # random weights: some text made of target pieces
        assert line.strip() and not any(t in line for t in ("</s>", "<pad>", "\u2581"))
    tr = load_hf_translator(d)
    assert (tr.decode_config.method, tr.decode_config.beam_size) == ("beam", 2)
    assert tr.decode_config.max_len == 7  # max_length 8 minus the decoder start token
    assert tr.translate(["the cat sat", "", "a dog ran far away"]) == lines[:3]


def test_marian_language_code_is_kept_whole(marian_with_tokenizer, tmp_path):
    """A leading ``>>xx<<`` in the vocabulary is one token, not split into pieces."""
    src, vocab = marian_with_tokenizer
    d = tmp_path / "marian_fr"
    shutil.copytree(src, d)
    code_id = max(i for i in vocab.values() if i < V - 1) + 1
    assert code_id < V - 1
    (d / "vocab.json").write_text(json.dumps({**vocab, ">>fr<<": code_id}))
    _, _, tok = load_hf(d)
    assert tok.pieces(">>fr<< the dog")[0] == ">>fr<<"
    with_code, plain = tok.encode([">>fr<< the dog", "the dog"])
    assert with_code == [code_id, *plain]
    assert tok.encode([">>fr<<the dog"]) == [[code_id, *plain]]
    # only a leading code is special; elsewhere the text is ordinary pieces
    assert code_id not in tok.encode(["the >>fr<< dog"])[0]
