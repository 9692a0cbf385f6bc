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
# HF GenerationConfig fields that hf_decode_config maps (or refuses, when set to a value
# seqjax cannot reproduce).
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
    "suppress_tokens",
    "begin_suppress_tokens",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "do_sample",
    "num_return_sequences",
    "decoder_start_token_id",
    "eos_token_id",
)
# Fields that never change the tokens generate() returns: outputs, caching, compilation,
# bookkeeping, assistant-model tuning, and the sampling options (HF reads them only with
# do_sample, which is refused).
_GEN_NEUTRAL = frozenset(
    {
        "temperature", "top_k", "top_p", "min_p", "top_h", "typical_p", "epsilon_cutoff",
        "eta_cutoff", "pad_token_id", "bos_token_id", "output_attentions",
        "output_hidden_states", "output_scores", "output_logits", "return_dict_in_generate",
        "use_cache", "cache_implementation", "cache_config", "max_cache_len", "compile_config",
        "disable_compile", "prefill_chunk_size", "continuous_batching_config", "low_memory",
        "transformers_version", "is_assistant", "num_assistant_tokens",
        "num_assistant_tokens_schedule", "assistant_confidence_threshold",
        "assistant_lookbehind", "target_lookbehind", "max_matching_ngram_size",
    }
)  # fmt: skip
# Other fields (group beam search, constraints, sequence bias, guidance, ...) are refused
# unless they hold their "off" value: None, False, an empty list, or the value below.
_GEN_OFF = {
    "num_beam_groups": 1,
    "diversity_penalty": 0.0,
    "encoder_repetition_penalty": 1.0,
    "encoder_no_repeat_ngram_size": 0,
    "guidance_scale": 1.0,
    "penalty_alpha": 0.0,
}
# Generation fields with no "off" value above that seqjax refuses when set (listed so that
# ``hf_generation_settings`` reads them from an older checkpoint's config.json too).
_GEN_REFUSED = (
    "max_time", "stop_strings", "renormalize_logits", "remove_invalid_values",
    "exponential_decay_length_penalty", "sequence_bias", "token_healing",
    "watermarking_config", "force_words_ids", "constraints", "forced_decoder_ids",
    "prompt_lookup_num_tokens", "assistant_early_exit", "dola_layers", "use_mtp",
    "speculation_type",
)  # fmt: skip
_HF_DEFAULT_NEW_TOKENS = 20  # generate()'s new tokens without max_length / max_new_tokens


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
    if kind is None and {"model", "train"} <= hf.keys():
        raise HFImportError(
            "config.json: this is a seqjax run directory, not a HuggingFace checkpoint; "
            "load it with --checkpoint DIR (Python: seqjax.app.translate.load)"
        )
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
    """Generation options of a checkpoint, as ``generate()`` reads them: every field of
    ``generation_config.json`` when the file exists, else the generation fields of
    ``config.json`` (those ``hf_decode_config`` maps and those it refuses)."""
    path = Path(path)
    gen_file = path / "generation_config.json"
    if gen_file.is_file():
        read_hf_config(path)  # the directory is a checkpoint
        try:
            gen = json.loads(gen_file.read_text())
        except json.JSONDecodeError as e:
            raise HFImportError(f"{gen_file}: line {e.lineno}: invalid JSON ({e.msg})") from None
        if not isinstance(gen, dict):
            raise HFImportError(f"{gen_file}: expected a JSON object")
        return gen
    hf = read_hf_config(path)
    known = (*_GEN_FIELDS, *_GEN_OFF, *_GEN_REFUSED)
    return {k: hf[k] for k in known if k in hf}


def hf_decode_config(
    settings: dict[str, Any], model_config: ModelConfig, **overrides: Any
) -> DecodeConfig:
    """The ``DecodeConfig`` with which seqjax reproduces HF ``generate()`` token for token.

    ``settings`` are HF generation options (a ``GenerationConfig`` as a dict, or
    ``hf_generation_settings(path)``). Mapped, with HF's precedence rules:

    - ``num_beams`` (1: greedy), ``length_penalty`` (``length_penalty="hf"``),
      ``early_stopping`` (HF's default, unset, is its heuristic ``False``),
      ``num_return_sequences`` (beam ``n_best``);
    - ``max_new_tokens`` (over ``max_length``, which counts the decoder start token, so
      seqjax's ``max_len`` is one less; neither: HF's 20 new tokens, within the
      model's positions); ``min_new_tokens`` (over ``min_length``, likewise one less);
      both ``*_new_tokens`` count tokens after a prompt (``prefix``), as in HF;
    - ``no_repeat_ngram_size``, ``repetition_penalty`` (under ``convention="hf"``: the
      decoder start token counts as history, and beam search penalises log-probs);
    - ``bad_words_ids`` (``bad_words``; HF drops a lone ``[eos]``, and so does this),
      ``suppress_tokens``, ``begin_suppress_tokens``;
    - ``forced_eos_token_id`` (the model's EOS only: ``forced_eos``, EOS with log-prob
      0 at the last position, which in beam search changes rankings and scores).

    Settings that do not change the tokens (outputs, caching, the sampling options
    without ``do_sample``) are ignored. Anything else seqjax cannot reproduce is refused
    with a one-line ``HFImportError`` naming the setting: sampling (``do_sample``, HF's
    torch random stream), ``forced_bos_token_id`` (pass the token as a ``prefix``), an
    ``eos_token_id`` or ``decoder_start_token_id`` other than the model's, group and
    constrained beam search, sequence bias, guidance and any unknown field set to
    other than its "off" value. seqjax never generates PAD; HF 5 can, unless
    ``bad_words_ids`` holds ``[pad]`` (opus-mt configs do). ``overrides`` replace
    fields of the result.

    >>> m = ModelConfig(family="transformer", vocab_size=8, pad_id=7, eos_id=0, bos_id=7)
    >>> c = hf_decode_config({"num_beams": 4, "max_length": 10, "bad_words_ids": [[7], [0]],
    ...                       "suppress_tokens": [3]}, m)
    >>> c.method, c.max_len, c.bad_words, c.suppress_tokens, c.early_stopping
    ('beam', 9, ((7,),), (3,), 'false')
    >>> hf_decode_config({"diversity_penalty": 0.5}, m)
    Traceback (most recent call last):
    ...
    seqjax.interop.hf.HFImportError: generation: diversity_penalty=0.5 is not supported by seqjax's HF mapping
    """
    s = dict(settings)
    _refuse_unmapped(s)
    if s.get("do_sample"):
        raise HFImportError("generation: do_sample=true is not mapped; use seqjax's --sample")
    if s.get("forced_bos_token_id") is not None:
        raise HFImportError(
            "generation: forced_bos_token_id is not supported; pass the token as a decoding "
            "prefix instead"
        )
    eos = model_config.eos_id
    for name, model_value in (
        ("eos_token_id", eos),
        ("decoder_start_token_id", model_config.bos_id),
    ):
        value = s.get(name)
        if value is not None and value not in (model_value, [model_value]):
            raise HFImportError(
                f"generation: {name} {value} differs from the model's ({model_value}); "
                "not supported"
            )
    forced_eos = s.get("forced_eos_token_id")
    if forced_eos is not None and forced_eos not in (eos, [eos]):
        raise HFImportError(
            f"generation: forced_eos_token_id {forced_eos} is not supported (only the EOS id {eos})"
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
        "max_len_b": 1_000_000,  # max_len alone bounds the output, as HF's max_length
        **_hf_lengths(s, model_config),
        **_hf_token_bans(s, eos),
    }
    if beams > 1:
        stop = s.get("early_stopping")
        values["early_stopping"] = "never" if stop == "never" else str(bool(stop)).lower()
        if s.get("num_return_sequences"):
            values["n_best"] = int(s["num_return_sequences"])
    if s.get("no_repeat_ngram_size"):
        values["no_repeat_ngram_size"] = int(s["no_repeat_ngram_size"])
    if s.get("repetition_penalty"):
        values["repetition_penalty"] = float(s["repetition_penalty"])
    values.update(overrides)
    try:
        return DecodeConfig(**values)
    except (TypeError, ValueError) as e:
        raise HFImportError(f"generation: {e}") from None


def _refuse_unmapped(s: dict[str, Any]) -> None:
    """Refuse, naming it, a setting that changes HF's output and that seqjax does not map."""
    for name, value in s.items():
        if name in _GEN_FIELDS or name in _GEN_NEUTRAL or name.startswith("_"):
            continue
        off = value is None or value is False or value == [] or value == {}
        if not off and not (name in _GEN_OFF and value == _GEN_OFF[name]):
            raise HFImportError(
                f"generation: {name}={value!r} is not supported by seqjax's HF mapping"
            )


def _hf_lengths(s: dict[str, Any], model_config: ModelConfig) -> dict[str, Any]:
    """``max_len``/``max_new_tokens``/``min_len``/``min_new_tokens`` as HF resolves them."""
    out: dict[str, Any] = {}
    if s.get("max_new_tokens") is not None:  # HF: takes precedence over max_length
        out["max_new_tokens"] = out["max_len"] = int(s["max_new_tokens"])
    elif s.get("max_length") is not None:  # counts the decoder start token
        out["max_len"] = max(1, int(s["max_length"]) - 1)
    else:  # HF's default: 20 new tokens, within the model's positions
        new = min(_HF_DEFAULT_NEW_TOKENS, model_config.max_len - 1)
        out["max_new_tokens"] = out["max_len"] = new
    if s.get("min_new_tokens") is not None:  # HF: replaces min_length
        out["min_new_tokens"] = int(s["min_new_tokens"])
    elif s.get("min_length"):
        out["min_len"] = max(0, int(s["min_length"]) - 1)
    return out


def _hf_token_bans(s: dict[str, Any], eos: int) -> dict[str, Any]:
    """``bad_words`` / ``suppress_tokens`` / ``begin_suppress_tokens`` from HF's lists."""

    def ids(name: str, value: Any) -> tuple[int, ...]:
        if not isinstance(value, list | tuple) or not all(
            isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value
        ):
            raise HFImportError(f"generation: {name} must be a list of token ids, got {value!r}")
        return tuple(value)

    out: dict[str, Any] = {}
    bad = s.get("bad_words_ids")
    if bad is not None:
        if not isinstance(bad, list | tuple) or not all(isinstance(w, list | tuple) for w in bad):
            raise HFImportError(f"generation: bad_words_ids must be a list of lists, got {bad!r}")
        words = [ids("bad_words_ids", w) for w in bad]
        # HF drops a lone EOS from the bad words (a model must be able to stop)
        out["bad_words"] = tuple(w for w in words if w and w != (eos,))
    for name in ("suppress_tokens", "begin_suppress_tokens"):
        if s.get(name) is not None:
            out[name] = ids(name, s[name])
    return out


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
