"""Import HuggingFace Marian and BART checkpoints into the seqjax Transformer.

::

    from seqjax.interop.hf import load_hf
    model, params, tokenizer = load_hf("opus-mt-en-de/")  # a local directory, no download
    memory = model.encode(params, src_BxS, src_BxS != model.config.pad_id)

A checkpoint directory holds ``config.json`` and ``model.safetensors`` (HuggingFace's
``save_pretrained`` layout). Loading needs neither torch nor transformers: the config
is JSON and ``seqjax.interop.safetensors_io`` reads the weights with NumPy. The
weights land in seqjax's own ``Transformer`` (``ModelConfig`` fields ``activation``,
``position_embedding``, ``qkv_bias``, ``layernorm_embedding``, ``final_logits_bias``,
``layer_norm_eps``), so every decoder, the CLI and Orbax checkpoints work with them.

Supported: ``MarianMTModel`` (sinusoidal positions with sines and cosines in halves,
post-LN, scaled embeddings, ``final_logits_bias``) and
``BartForConditionalGeneration`` (learned positions offset by 2,
``layernorm_embedding``). Every config field that changes the computation is mapped
or, when seqjax cannot compute it, refused with a one-line ``HFImportError`` naming
the field. ``pytorch_model.bin`` is a pickle and is never opened: convert it to
safetensors first (see ``PYTORCH_BIN_HINT``).

Special ids: the decoder starts from ``decoder_start_token_id`` (``ModelConfig.bos_id``;
Marian: the pad id, BART: eos). Generation settings in the checkpoint
(``generation_config.json`` or ``config.json``) map to a ``DecodeConfig`` through
``hf_decode_config``; beam scores then use the HF length penalty ``sum / len**alpha``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import numpy as np

from seqjax.config import ConfigError, DecodeConfig, ModelConfig
from seqjax.interop.safetensors_io import SafetensorsError, read_safetensors
from seqjax.models.transformer import Transformer

SUPPORTED_ARCHITECTURES = {"marian": "MarianMTModel", "bart": "BartForConditionalGeneration"}
# HF ``activation_function`` -> ModelConfig.activation
ACTIVATIONS = {
    "relu": "relu",
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "swish": "swish",
    "silu": "swish",
}
PYTORCH_BIN_HINT = (
    "pytorch_model.bin is a pickle, which seqjax never loads (unpickling runs code); "
    "convert it once where transformers is installed: "
    "AutoModelForSeq2SeqLM.from_pretrained(DIR).save_pretrained(DIR, safe_serialization=True)"
)
# Config fields of older BART/Marian releases that change the computation, with the only
# value the HF models we support (and so seqjax) compute.
_FIXED_FIELDS: dict[str, Any] = {
    "normalize_before": False,
    "add_final_layer_norm": False,
    "static_position_embeddings": False,
    "add_bias_logits": False,
    "is_encoder_decoder": True,
}
_BART_FIXED = {"normalize_embedding": True, "extra_pos_embeddings": 2}
# Generation options: mapped by hf_decode_config, or refused there when unsupported.
_GEN_FIELDS = (
    "num_beams",
    "length_penalty",
    "max_length",
    "max_new_tokens",
    "min_length",
    "min_new_tokens",
    "early_stopping",
    "no_repeat_ngram_size",
    "repetition_penalty",
    "bad_words_ids",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "do_sample",
    "num_return_sequences",
    "temperature",
    "top_k",
    "top_p",
)


class HFImportError(ConfigError):
    """A HuggingFace checkpoint cannot be imported; the message names the file or field."""


def read_hf_config(path: str | Path) -> dict[str, Any]:
    """``config.json`` of a checkpoint directory as a dict."""
    path = Path(path)
    if not path.is_dir():
        raise HFImportError(f"{path}: not a directory (expected a HuggingFace checkpoint folder)")
    cfg_file = path / "config.json"
    try:
        return json.loads(cfg_file.read_text())
    except FileNotFoundError:
        raise HFImportError(
            f"{cfg_file}: not found; a HuggingFace checkpoint directory needs config.json"
        ) from None
    except json.JSONDecodeError as e:
        raise HFImportError(f"{cfg_file}: line {e.lineno}: invalid JSON ({e.msg})") from None


def _model_type(hf: dict[str, Any]) -> str:
    kind = hf.get("model_type")
    if kind not in SUPPORTED_ARCHITECTURES:
        raise HFImportError(
            f"config.json: model_type {kind!r} is not supported; seqjax imports "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    archs = hf.get("architectures") or [SUPPORTED_ARCHITECTURES[kind]]
    allowed = {SUPPORTED_ARCHITECTURES[kind], "MarianModel", "BartModel"}
    if any(a not in allowed for a in archs):
        raise HFImportError(
            f"config.json: architectures {archs} are not supported; seqjax imports "
            f"{SUPPORTED_ARCHITECTURES[kind]}"
        )
    return kind


def _int_id(hf: dict[str, Any], name: str) -> int:
    value = hf.get(name)
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, int) or isinstance(value, bool):
        raise HFImportError(f"config.json: {name} must be one integer id for seqjax, got {value!r}")
    return value


def hf_model_config(hf: dict[str, Any]) -> ModelConfig:
    """The ``ModelConfig`` computing what a HF Marian/BART config computes (or refuse)."""
    kind = _model_type(hf)

    def same(a: str, b: str) -> Any:
        if hf.get(a) != hf.get(b):
            raise HFImportError(
                f"config.json: {b} ({hf.get(b)}) differs from {a} ({hf.get(a)}); "
                "seqjax needs the same value on both sides"
            )
        return hf[a]

    for name, value in _FIXED_FIELDS.items():
        if name in hf and hf[name] != value:
            raise HFImportError(
                f"config.json: {name}={hf[name]!r} is not supported (seqjax computes "
                f"{name}={value!r}, as transformers' {SUPPORTED_ARCHITECTURES[kind]} does)"
            )
    if kind == "bart":
        for name, value in _BART_FIXED.items():
            if name in hf and hf[name] != value:
                raise HFImportError(
                    f"config.json: {name}={hf[name]!r} is not supported (need {value!r})"
                )
    activation = hf.get("activation_function", "gelu")
    if activation not in ACTIVATIONS:
        raise HFImportError(
            f"config.json: activation_function {activation!r} is not supported; "
            f"use one of {', '.join(ACTIVATIONS)}"
        )
    vocab = hf.get("vocab_size")
    if kind == "marian" and hf.get("decoder_vocab_size") not in (None, vocab):
        raise HFImportError(
            f"config.json: decoder_vocab_size ({hf['decoder_vocab_size']}) differs from "
            f"vocab_size ({vocab}); seqjax needs one vocabulary"
        )
    share = bool(hf.get("share_encoder_decoder_embeddings", True)) if kind == "marian" else True
    heads = same("encoder_attention_heads", "decoder_attention_heads")
    d_ff = same("encoder_ffn_dim", "decoder_ffn_dim")
    pad = _int_id(hf, "pad_token_id")
    eos = _int_id(hf, "eos_token_id")
    start = _int_id(hf, "decoder_start_token_id")
    try:
        return ModelConfig(
            family="transformer",
            vocab_size=int(vocab),
            d_model=int(hf["d_model"]),
            num_heads=int(heads),
            num_encoder_layers=int(hf["encoder_layers"]),
            num_decoder_layers=int(hf["decoder_layers"]),
            d_ff=int(d_ff),
            dropout=0.0,
            attention_dropout=0.0,
            pre_ln=False,
            share_embeddings=share,
            tie_output=bool(hf.get("tie_word_embeddings", True)),
            scale_embeddings=bool(hf.get("scale_embedding", False)),
            max_len=int(hf["max_position_embeddings"]),
            pad_id=pad,
            unk_id=int(hf.get("unk_token_id") or 1),
            bos_id=start,
            eos_id=eos,
            activation=ACTIVATIONS[activation],
            position_embedding="sinusoidal_marian" if kind == "marian" else "learned",
            position_offset=0 if kind == "marian" else 2,
            qkv_bias=True,
            layernorm_embedding=kind == "bart",
            final_logits_bias=True,
            layer_norm_eps=1e-5,
        )
    except KeyError as e:
        raise HFImportError(f"config.json: required field {e.args[0]} is missing") from None
    except (TypeError, ValueError) as e:
        raise HFImportError(f"config.json: {e}") from None


# -- weights --------------------------------------------------------------------------


class _Weights:
    """Name lookup over a checkpoint's tensors (with or without the ``model.`` prefix)."""

    def __init__(self, tensors: dict[str, np.ndarray], where: str) -> None:
        self.tensors = {k.removeprefix("model."): v for k, v in tensors.items()}
        self.where = where
        self.used: set[str] = set()

    def get(self, *names: str) -> np.ndarray:
        for name in names:
            if name in self.tensors:
                self.used.add(name)
                return np.asarray(self.tensors[name], np.float32)
        raise HFImportError(f"{self.where}: tensor {names[0]} is missing")

    def has(self, name: str) -> bool:
        return name in self.tensors


def _attention(w: _Weights, prefix: str, cfg: ModelConfig) -> dict[str, dict[str, np.ndarray]]:
    h, dh, d = cfg.num_heads, cfg.head_dim, cfg.d_model

    def proj(names: tuple[str, ...]) -> dict[str, np.ndarray]:
        # HF Linear weight [out, in] -> kernel [D, n, H, Dh]; bias [n, H, Dh]
        kernels = [w.get(f"{prefix}.{n}_proj.weight").T.reshape(d, h, dh) for n in names]
        biases = [w.get(f"{prefix}.{n}_proj.bias").reshape(h, dh) for n in names]
        return {"kernel": np.stack(kernels, axis=1), "bias": np.stack(biases, axis=0)}

    out = {
        "kernel": w.get(f"{prefix}.out_proj.weight").T.reshape(h, dh, d),
        "bias": w.get(f"{prefix}.out_proj.bias"),
    }
    return {"qkv": proj(("q", "k", "v")), "q": proj(("q",)), "kv": proj(("k", "v")), "out": out}


def _ln(w: _Weights, name: str) -> dict[str, np.ndarray]:
    return {"scale": w.get(f"{name}.weight"), "bias": w.get(f"{name}.bias")}


def _ffn(w: _Weights, prefix: str) -> dict[str, dict[str, np.ndarray]]:
    return {
        "wi": {"kernel": w.get(f"{prefix}.fc1.weight").T, "bias": w.get(f"{prefix}.fc1.bias")},
        "wo": {"kernel": w.get(f"{prefix}.fc2.weight").T, "bias": w.get(f"{prefix}.fc2.bias")},
    }


def convert_weights(tensors: dict[str, np.ndarray], cfg: ModelConfig, where: str) -> dict:
    """HF tensor dict -> seqjax params ``{"params": ...}`` (float32 NumPy arrays)."""
    w = _Weights(tensors, where)
    shared = ("shared.weight", "decoder.embed_tokens.weight", "encoder.embed_tokens.weight")
    p: dict[str, Any] = {}
    if cfg.share_embeddings:
        p["tgt_embed"] = {"embedding": w.get(*shared, "lm_head.weight")}
    else:
        p["src_embed"] = {"embedding": w.get("encoder.embed_tokens.weight")}
        p["tgt_embed"] = {"embedding": w.get("decoder.embed_tokens.weight", "shared.weight")}
    if not cfg.tie_output:
        kernel = w.get("lm_head.weight").T
        p["logits_dense"] = {"kernel": kernel, "bias": np.zeros(kernel.shape[1], np.float32)}
    if w.has("final_logits_bias"):
        p["final_logits_bias"] = w.get("final_logits_bias").reshape(-1)
    else:  # BartModel / MarianModel checkpoints have no output bias
        p["final_logits_bias"] = np.zeros(cfg.vocab_size, np.float32)
    for side in ("encoder", "decoder"):
        if cfg.position_embedding == "learned":
            p[f"{side}_pos"] = {"embedding": w.get(f"{side}.embed_positions.weight")}
        if cfg.layernorm_embedding:
            p[f"{side}_ln_emb"] = _ln(w, f"{side}.layernorm_embedding")
    for i in range(cfg.num_encoder_layers):
        pre = f"encoder.layers.{i}"
        a = _attention(w, f"{pre}.self_attn", cfg)
        p[f"encoder_layers_{i}"] = {
            "qkv": a["qkv"],
            "out": a["out"],
            "ffn": _ffn(w, pre),
            "ln_attn": _ln(w, f"{pre}.self_attn_layer_norm"),
            "ln_ffn": _ln(w, f"{pre}.final_layer_norm"),
        }
    for i in range(cfg.num_decoder_layers):
        pre = f"decoder.layers.{i}"
        a = _attention(w, f"{pre}.self_attn", cfg)
        c = _attention(w, f"{pre}.encoder_attn", cfg)
        p[f"decoder_layers_{i}"] = {
            "qkv": a["qkv"],
            "self_out": a["out"],
            "cross_q": c["q"],
            "cross_kv": c["kv"],
            "cross_out": c["out"],
            "ffn": _ffn(w, pre),
            "ln_self": _ln(w, f"{pre}.self_attn_layer_norm"),
            "ln_cross": _ln(w, f"{pre}.encoder_attn_layer_norm"),
            "ln_ffn": _ln(w, f"{pre}.final_layer_norm"),
        }
    ignorable = ("embed_positions.weight", "embed_tokens.weight", "shared.weight", "lm_head.weight")
    unused = sorted(k for k in w.tensors if k not in w.used and not k.endswith(ignorable))
    if unused:
        raise HFImportError(
            f"{where}: tensor {unused[0]} ({len(unused)} in all) has no place in the seqjax "
            "model; the config does not describe these weights"
        )
    return {"params": p}


def _check_shapes(params: dict, target: Any, where: str) -> None:
    got = dict(jax.tree_util.tree_flatten_with_path(params)[0])
    want = dict(jax.tree_util.tree_flatten_with_path(target)[0])
    for path, spec in want.items():
        name = jax.tree_util.keystr(path)
        if path not in got:
            raise HFImportError(f"{where}: no weights for {name}")
        if tuple(got[path].shape) != tuple(spec.shape):
            raise HFImportError(
                f"{where}: {name} has shape {tuple(got[path].shape)}, the config needs "
                f"{tuple(spec.shape)}"
            )


def _weights_file(path: Path) -> Path:
    st = path / "model.safetensors"
    if st.is_file():
        return st
    if (path / "model.safetensors.index.json").is_file():
        raise HFImportError(
            f"{path}: sharded safetensors (model.safetensors.index.json) are not supported; "
            "save the model unsharded (save_pretrained(..., max_shard_size='100GB'))"
        )
    if (path / "pytorch_model.bin").is_file():
        raise HFImportError(f"{path / 'pytorch_model.bin'}: unsupported. {PYTORCH_BIN_HINT}")
    raise HFImportError(f"{st}: not found; the directory needs model.safetensors")


def load_hf(path: str | Path) -> tuple[Transformer, dict, Any]:
    """``(model, params, tokenizer_or_None)`` of a local HF Marian/BART directory.

    The tokenizer is a ``MarianTokenizer``-compatible adapter when the directory holds
    ``source.spm``, ``target.spm`` and ``vocab.json``; otherwise ``None`` (token ids in/out).
    """
    path = Path(path)
    cfg = hf_model_config(read_hf_config(path))
    wfile = _weights_file(path)
    try:
        tensors = read_safetensors(wfile)
    except SafetensorsError as e:
        raise HFImportError(str(e)) from None
    params = convert_weights(tensors, cfg, str(wfile))
    model = Transformer(cfg)
    _check_shapes(params, jax.eval_shape(model.init, jax.random.key(0)), str(wfile))
    params = jax.tree.map(jax.numpy.asarray, params)
    from seqjax.interop.hf_tokenizer import load_hf_tokenizer

    return model, params, load_hf_tokenizer(path, cfg)


def load_hf_translator(
    path: str | Path,
    decode_config: DecodeConfig | None = None,
    *,
    mesh: Any = None,
    dtype: str | None = None,
    quantize: str | None = None,
) -> Any:
    """A ``seqjax.inference.Translator`` for a HF checkpoint directory.

    Text in/out when the directory has a Marian tokenizer, whitespace-separated token ids
    otherwise. ``decode_config`` defaults to the checkpoint's generation settings
    (``hf_decode_config``). ``mesh``, ``dtype`` and ``quantize`` as for
    ``seqjax.app.translate.load``.
    """
    from seqjax.app.translate import Translator, with_dtype
    from seqjax.interop.hf_tokenizer import IdTokenizer

    model, params, tokenizer = load_hf(path)
    model = with_dtype(model, dtype)
    if quantize is not None:
        from seqjax.models.quantize import quantize_params

        params = quantize_params(params, quantize)
    if decode_config is None:
        decode_config = hf_decode_config(hf_generation_settings(path), model.config)
    tokenizer = tokenizer or IdTokenizer(model.config)
    return Translator(
        model, params, tokenizer, tokenizer, model.config, decode_config=decode_config, mesh=mesh
    )


# -- generation settings ------------------------------------------------------------------


def hf_generation_settings(path: str | Path) -> dict[str, Any]:
    """Generation options of a checkpoint: ``generation_config.json`` over ``config.json``."""
    path = Path(path)
    hf = read_hf_config(path)
    settings = {k: hf[k] for k in _GEN_FIELDS if k in hf}
    gen_file = path / "generation_config.json"
    if gen_file.is_file():
        try:
            gen = json.loads(gen_file.read_text())
        except json.JSONDecodeError as e:
            raise HFImportError(f"{gen_file}: line {e.lineno}: invalid JSON ({e.msg})") from None
        settings.update({k: gen[k] for k in _GEN_FIELDS if k in gen})
    return settings


def hf_decode_config(
    settings: dict[str, Any], model_config: ModelConfig, **overrides: Any
) -> DecodeConfig:
    """The ``DecodeConfig`` matching HF ``generate()`` for these generation settings.

    Maps ``num_beams`` (1: greedy), ``length_penalty`` (``length_penalty="hf"``),
    ``max_length``/``max_new_tokens`` (HF's ``max_length`` counts the decoder start
    token, so seqjax's ``max_len`` is one less), ``min_length``/``min_new_tokens``,
    ``no_repeat_ngram_size``, ``repetition_penalty``, ``num_return_sequences``. Beam
    results equal HF's with ``early_stopping="never"`` (seqjax stops only when no live
    beam can win); HF's default heuristic may stop sooner. Refuses sampling,
    ``bad_words_ids`` other than ``[[pad]]`` (seqjax never generates pad anyway) and a
    ``forced_bos_token_id``. ``forced_eos_token_id`` (the model's EOS) is applied as
    HF does (``forced_eos``): EOS is forced at the last position with log-prob 0, which
    in beam search changes rankings and scores; another id is refused. The config uses
    ``convention="hf"``: the decoder start token counts as history for
    ``repetition_penalty`` and ``no_repeat_ngram_size``, and beam search applies the
    repetition penalty to log-probs.
    """
    s = dict(settings)
    if s.get("do_sample"):
        raise HFImportError("generation: do_sample=true is not mapped; use seqjax's --sample")
    bad = s.get("bad_words_ids")
    if bad not in (None, [], [[model_config.pad_id]]):
        raise HFImportError(
            f"generation: bad_words_ids {bad} is not supported (only [[pad_token_id]])"
        )
    if s.get("forced_bos_token_id") is not None:
        raise HFImportError(
            "generation: forced_bos_token_id is not supported; pass the token as a decoding "
            "prefix instead"
        )
    forced_eos = s.get("forced_eos_token_id")
    if forced_eos is not None and forced_eos != model_config.eos_id:
        raise HFImportError(
            f"generation: forced_eos_token_id {forced_eos} is not supported (only the EOS id "
            f"{model_config.eos_id})"
        )
    beams = int(s.get("num_beams") or 1)
    values: dict[str, Any] = {
        "convention": "hf",
        "forced_eos": forced_eos is not None,
        "method": "beam" if beams > 1 else "greedy",
        "beam_size": beams,
        "alpha": float(s.get("length_penalty", 1.0)),
        "length_penalty": "hf",
        "max_len_a": 0.0,
    }
    if s.get("max_new_tokens"):
        values["max_len"] = int(s["max_new_tokens"])
    elif s.get("max_length"):
        values["max_len"] = max(1, int(s["max_length"]) - 1)
    else:
        values["max_len"] = 19  # HF's default max_length 20, minus the start token
    values["max_len_b"] = 1_000_000  # max_len alone bounds the output, as HF's max_length
    if s.get("min_new_tokens"):
        values["min_len"] = int(s["min_new_tokens"])
    elif s.get("min_length"):
        values["min_len"] = max(0, int(s["min_length"]) - 1)
    if s.get("no_repeat_ngram_size"):
        values["no_repeat_ngram_size"] = int(s["no_repeat_ngram_size"])
    if s.get("repetition_penalty"):
        values["repetition_penalty"] = float(s["repetition_penalty"])
    if s.get("num_return_sequences") and beams > 1:
        values["n_best"] = int(s["num_return_sequences"])
    values.update(overrides)
    try:
        return DecodeConfig(**values)
    except (TypeError, ValueError) as e:
        raise HFImportError(f"generation: {e}") from None


__all__ = [
    "HFImportError",
    "convert_weights",
    "hf_decode_config",
    "hf_generation_settings",
    "hf_model_config",
    "load_hf",
    "load_hf_translator",
    "read_hf_config",
]
