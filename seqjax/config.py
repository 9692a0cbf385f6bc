"""Frozen configuration dataclasses, one per concern, with JSON and TOML round-trips.

- ``ModelConfig``: architecture (what a checkpoint needs to rebuild the network).
- ``TrainConfig``: data, optimisation, schedule, logging and checkpoint cadence.
- ``DecodeConfig``: which decoder and its options.

Unknown keys are rejected with a message naming the key, so a typo in a TOML file
never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from pathlib import Path
from typing import Any, TypeVar

from seqjax.decode_checks import (
    RULES,
    STREAM_EVERY,
    check_options,
    check_output_names,
    check_stream_every,
    check_token_lists,
)

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value or file is invalid; the message says which field and why."""


def _field_types(cls: type) -> dict[str, Any]:
    return {f.name: f.type for f in dataclasses.fields(cls)}


_EXPECTED = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false"}


def _coerce(field: str, value: Any, type_str: str, prefix: str) -> Any:
    """``value`` checked against a field's annotation (as written: ``"int | None"``); ints
    become floats for float fields, lists tuples. The error names field, value and type."""
    if value is None and type_str.endswith(" | None"):
        return None
    base = type_str.removesuffix(" | None")
    if base == "tuple[tuple[int, ...], ...]":  # e.g. bad_words: lists of token ids
        expected = "a list of lists of integers"
        if isinstance(value, (list, tuple)):
            try:
                return tuple(_coerce(field, v, "tuple[int, ...]", prefix) for v in value)
            except ConfigError:
                pass
    elif base.startswith("tuple["):
        item = base[len("tuple[") :].split(",")[0].strip()
        expected = f"a list of {_EXPECTED[item].removeprefix('an ').removeprefix('a ')}s"
        if isinstance(value, (list, tuple)):
            try:
                return tuple(_coerce(field, v, item, prefix) for v in value)
            except ConfigError:
                pass
    else:
        expected = _EXPECTED[base]
        is_int = isinstance(value, int) and not isinstance(value, bool)
        if base == "float" and (is_int or isinstance(value, float)):
            return float(value)
        if {"int": is_int, "str": isinstance(value, str), "bool": isinstance(value, bool)}.get(
            base, False
        ):
            return value
    if type_str.endswith(" | None"):
        expected += " (or left out)"
    raise ConfigError(f"{prefix}{field}={value!r}: expected {expected}")


def from_dict(
    cls: type[T], data: dict[str, Any], *, where: str = "", required: tuple[str, ...] = ()
) -> T:
    """Build ``cls`` from a dict, rejecting unknown keys, missing ``required`` keys and values
    of the wrong type (each error names the field); lists become tuples."""
    known = _field_types(cls)
    prefix = f"{where}: " if where else ""
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(
            f"{prefix}unknown {cls.__name__} field(s) {', '.join(unknown)}; "
            f"known fields: {', '.join(sorted(known))}"
        )
    missing = [k for k in required if k not in data]
    if missing:
        raise ConfigError(f"{prefix}missing {cls.__name__} field(s) {', '.join(missing)}")
    clean = {k: _coerce(k, v, known[k], prefix) for k, v in data.items()}
    try:
        return cls(**clean)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{prefix}{e}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    out = dataclasses.asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def save_json(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(json.dumps(to_dict(cfg), indent=2, sort_keys=True) + "\n")


def load_json(cls: type[T], path: str | Path) -> T:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from None
    return from_dict(cls, data, where=str(path))


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # JSON string escapes are valid TOML basic strings
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if v is None:
        raise ConfigError("TOML cannot hold None; leave the key out instead")
    raise ConfigError(f"cannot write {type(v).__name__} to TOML")


def dumps_toml(sections: dict[str, Any]) -> str:
    """Write configs as TOML tables, e.g. ``{"model": ModelConfig(...), "train": ...}``."""
    lines: list[str] = []
    for name, cfg in sections.items():
        lines.append(f"[{name}]")
        for k, v in to_dict(cfg).items():
            if v is not None:
                lines.append(f"{k} = {_toml_value(v)}")
        lines.append("")
    return "\n".join(lines)


def read_toml(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read a TOML config file into its tables (``[model]``, ``[train]``, ``[decode]``)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a directory; give a TOML file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML ({e})") from None
    allowed = {"model", "train", "decode"}
    for key, val in data.items():
        if key not in allowed or not isinstance(val, dict):
            raise ConfigError(
                f"{path}: unexpected top-level key {key!r}; use tables [model], [train], [decode]"
            )
    return data


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "swish")
POSITION_EMBEDDINGS = ("sinusoidal", "sinusoidal_marian", "learned")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of an encoder-decoder.

    ``family`` selects the implementation (``"transformer"``; ``"rnn"`` when present).
    Special ids follow the SentencePiece layout used by ``seqjax.data.tokenizer``:
    pad 0, unk 1, bos 2, eos 3. ``bos_id`` is the token the decoder starts from (an
    imported Marian model starts from its pad id, BART from its eos id).

    The fields from ``activation`` on describe imported checkpoints
    (``seqjax.interop.hf``); their defaults are seqjax's own architecture, and configs
    written before they existed load unchanged.
    """

    family: str = "transformer"
    vocab_size: int = 8000
    d_model: int = 256
    num_heads: int = 4
    num_encoder_layers: int = 3
    num_decoder_layers: int = 3
    d_ff: int = 1024
    dropout: float = 0.1
    attention_dropout: float = 0.0
    pre_ln: bool = True
    share_embeddings: bool = True  # one table for source and target tokens
    tie_output: bool = True  # output projection = target embedding transposed
    scale_embeddings: bool = True  # multiply embeddings by sqrt(d_model)
    max_len: int = 256  # longest position the sinusoid table covers
    pad_id: int = 0
    unk_id: int = 1
    bos_id: int = 2
    eos_id: int = 3
    dtype: str = "float32"  # activation/matmul dtype; params stay float32
    rnn_attention: str = "bahdanau"  # rnn family: "bahdanau" (additive) or "luong" (general)
    rnn_hidden: int = 0  # rnn family: LSTM size per direction; 0 = d_model
    activation: str = "relu"  # FFN activation: relu, gelu (erf), gelu_tanh, swish (= silu)
    # sinusoidal: sin/cos interleaved; sinusoidal_marian: [sin half | cos half] (HF Marian);
    # learned: a trained table per side, position p at row p + position_offset (BART: 2)
    position_embedding: str = "sinusoidal"
    position_offset: int = 0
    qkv_bias: bool = False  # biases on the query/key/value projections (HF models have them)
    layernorm_embedding: bool = False  # LayerNorm on embedding + position, per side (BART)
    final_logits_bias: bool = False  # learned bias added to the tied output logits (HF)
    layer_norm_eps: float = 1e-6  # HF models: 1e-5

    def __post_init__(self) -> None:
        _check(self.family in ("transformer", "rnn"), f"family: unknown {self.family!r}")
        _check(self.vocab_size > 4, f"vocab_size must be > 4, got {self.vocab_size}")
        _check(self.d_model > 0 and self.d_ff > 0, "d_model and d_ff must be positive")
        _check(
            self.num_heads > 0 and self.d_model % self.num_heads == 0,
            f"d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads})",
        )
        _check(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        _check(self.dtype in ("float32", "bfloat16", "float16"), f"dtype: unknown {self.dtype!r}")
        _check(
            self.rnn_attention in ("bahdanau", "luong"),
            f"rnn_attention: unknown {self.rnn_attention!r}; use bahdanau or luong",
        )
        _check(self.rnn_hidden >= 0, f"rnn_hidden must be >= 0, got {self.rnn_hidden}")
        _check(
            self.activation in ACTIVATIONS,
            f"activation: unknown {self.activation!r}; use one of {', '.join(ACTIVATIONS)}",
        )
        _check(
            self.position_embedding in POSITION_EMBEDDINGS,
            f"position_embedding: unknown {self.position_embedding!r}; "
            f"use one of {', '.join(POSITION_EMBEDDINGS)}",
        )
        _check(self.position_offset >= 0, "position_offset must be >= 0")
        _check(self.layer_norm_eps > 0, f"layer_norm_eps must be > 0, got {self.layer_norm_eps}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads


MODEL_PRESETS: dict[str, dict[str, Any]] = {
    # Tests: compiles in seconds.
    "tiny": dict(
        vocab_size=64,
        d_model=32,
        num_heads=4,
        num_encoder_layers=2,
        num_decoder_layers=2,
        d_ff=64,
        dropout=0.0,
        max_len=64,
    ),
    # CPU default: about 1.9M parameters, sized so that ~10 minutes on 2 CPU cores covers
    # several epochs of the bundled corpus (a wider model sees too few updates in that time).
    "small": dict(
        vocab_size=4000,
        d_model=128,
        num_heads=4,
        num_encoder_layers=3,
        num_decoder_layers=3,
        d_ff=512,
        dropout=0.1,
    ),
    # Transformer-base (Vaswani et al. 2017): 6+6 layers, d512, 8 heads, ffn 2048.
    "base": dict(
        vocab_size=8000,
        d_model=512,
        num_heads=8,
        num_encoder_layers=6,
        num_decoder_layers=6,
        d_ff=2048,
        dropout=0.1,
    ),
    # RNN family (bi-LSTM encoder, attentional LSTM decoder). Tests: compiles in seconds.
    "rnn_tiny": dict(
        family="rnn",
        vocab_size=512,  # enough for a byte-fallback tokenizer on the bundled corpus
        d_model=32,
        num_encoder_layers=2,
        num_decoder_layers=2,
        dropout=0.0,
        max_len=64,
    ),
    # RNN CPU default: about 6M parameters (2+2 layers, 256 units per direction).
    "rnn_small": dict(
        family="rnn",
        vocab_size=4000,
        d_model=256,
        num_encoder_layers=2,
        num_decoder_layers=2,
        dropout=0.2,
    ),
}


def model_preset(name: str, **overrides: Any) -> ModelConfig:
    """``ModelConfig`` for a named preset (tiny, small, base), with field overrides."""
    if name not in MODEL_PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(MODEL_PRESETS)}")
    return from_dict(ModelConfig, {**MODEL_PRESETS[name], **overrides}, where=f"preset {name}")


# Fields every config.json has held since run format 1: one missing is a damaged file (an
# error naming it). Fields added later default when absent, so older runs still load.
MODEL_FIELDS_V1 = (
    "family", "vocab_size", "d_model", "num_heads", "num_encoder_layers",
    "num_decoder_layers", "d_ff", "dropout", "attention_dropout", "pre_ln",
    "share_embeddings", "tie_output", "scale_embeddings", "max_len", "pad_id", "unk_id",
    "bos_id", "eos_id", "dtype",
)  # fmt: skip
TRAIN_FIELDS_V1 = (
    "preset", "corpus", "src", "tgt", "valid_src", "valid_tgt", "joint_vocab",
    "max_src_len", "max_tgt_len", "batch_tokens", "length_buckets", "learning_rate",
    "warmup_steps", "schedule", "total_steps", "max_minutes", "weight_decay", "clip_norm",
    "label_smoothing", "seed", "eval_every", "valid_bleu_sentences", "save_every",
    "keep_last", "log_every",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Data, optimisation and bookkeeping for ``seqjax train``.

    ``corpus`` names a bundled corpus; ``src``/``tgt`` (and ``valid_src``/``valid_tgt``)
    point to user files instead and take precedence when set; ``data`` is a directory written
    by ``seqjax prepare`` (tokenizer + shards), used instead of both.
    """

    # The main job: the LSTM wins the 2-CPU budget on the bundled corpus (README: 21.6 vs 13.3
    # test BLEU for the small Transformer); --model transformer picks "small".
    preset: str = "rnn_small"
    corpus: str = "bible_en_fr"
    src: str | None = None
    tgt: str | None = None
    valid_src: str | None = None
    valid_tgt: str | None = None
    data: str | None = None  # a prepared directory (seqjax prepare) instead of text files
    data_workers: int = 0  # processes building batches (0: one prefetch thread); runtime
    joint_vocab: bool = True
    max_src_len: int = 128  # tokens; longer training pairs are dropped and counted
    max_tgt_len: int = 128
    batch_tokens: int = 2048  # target tokens per batch (padding included)
    length_buckets: tuple[int, ...] = (16, 24, 32, 48, 64, 96, 128)
    learning_rate: float = 3e-3
    warmup_steps: int = 300
    schedule: str = "inverse_sqrt"  # or "cosine"
    total_steps: int = 1500  # updates; the run's length (and the cosine horizon)
    max_minutes: float = 0.0  # optional wall-clock cap of the train loop; 0 = no limit
    weight_decay: float = 0.01
    clip_norm: float = 1.0
    adam_b2: float = 0.98
    label_smoothing: float = 0.1
    seed: int = 0
    eval_every: int = 500
    valid_bleu_sentences: int = 200  # decoded at each validation (0 disables BLEU)
    save_every: int = 500
    keep_last: int = 2
    log_every: int = 50
    max_bad_steps: int = 20  # consecutive non-finite (skipped) steps before the run stops
    # Device mesh (seqjax.sharding): "auto" = every device on the data axis, or
    # "data=N" / "data=N,model=M". A runtime choice: a run may resume on another mesh.
    mesh: str = "auto"
    # Objective: mle (teacher forcing), scheduled-sampling, mrt, distill.
    objective: str = "mle"
    init_from: str | None = None  # run directory whose best params start this run
    ss_mode: str = "parallel"  # parallel (two-pass, Transformer) or sequential (any family)
    ss_schedule: str = "inverse_sigmoid"  # linear, exponential, inverse_sigmoid
    ss_k: float | None = None  # schedule constant k (None: the schedule's default)
    ss_c: float = 2.5e-4  # slope of the linear schedule
    ss_eps_min: float = 0.0  # floor of the teacher-forcing probability
    ss_warmup: int = 1000  # steps of pure teacher forcing first
    ss_sample: bool = False  # feed samples instead of argmax predictions
    mrt_samples: int = 8  # candidates per source
    mrt_alpha: float = 0.005  # sharpness of Q over summed log-probs
    mrt_mle_weight: float = 0.0  # lambda of the token-level MLE mix
    mrt_include_reference: bool = True
    mrt_candidates: str = "sample"  # sample or beam
    teacher: str | None = None  # distill: run directory of the teacher
    distill_ema: float | None = None  # distill: teacher = EMA of the student (decay)
    distill_temperature: float = 2.0
    distill_top_p: float = 0.9

    def __post_init__(self) -> None:
        _check(
            self.objective in ("mle", "scheduled-sampling", "mrt", "distill"),
            f"objective: unknown {self.objective!r}; use mle, scheduled-sampling, mrt or distill",
        )
        _check(self.ss_mode in ("parallel", "sequential"), "ss_mode: use parallel or sequential")
        _check(
            self.ss_schedule in ("linear", "exponential", "inverse_sigmoid"),
            f"ss_schedule: unknown {self.ss_schedule!r}; use linear, exponential, inverse_sigmoid",
        )
        _check(self.mrt_samples >= 1, "mrt_samples must be >= 1")
        _check(self.mrt_candidates in ("sample", "beam"), "mrt_candidates: use sample or beam")
        _check(
            self.objective != "distill" or (self.teacher is None) != (self.distill_ema is None),
            "objective distill needs exactly one teacher: a run directory (--teacher DIR) "
            "or an EMA of the student (--distill-ema DECAY)",
        )
        _check(
            self.distill_ema is None or 0.0 < self.distill_ema < 1.0,
            "distill_ema must be in (0, 1), e.g. 0.999",
        )
        _check(self.distill_temperature > 0, "distill_temperature must be > 0")
        _check(self.schedule in ("inverse_sqrt", "cosine"), f"schedule: unknown {self.schedule!r}")
        _check(self.batch_tokens > 0, "batch_tokens must be positive")
        _check(self.learning_rate > 0, "learning_rate must be positive")
        _check((self.src is None) == (self.tgt is None), "give both src and tgt, or neither")
        _check(
            (self.valid_src is None) == (self.valid_tgt is None),
            "give both valid_src and valid_tgt (--valid-src/--valid-tgt), or neither",
        )
        for name in ("total_steps", "eval_every", "save_every", "log_every"):
            _check(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        _check(
            self.max_minutes >= 0 and not math.isnan(self.max_minutes),
            f"max_minutes must be >= 0 (0 = no limit), got {self.max_minutes}",
        )
        _check(0 <= self.seed < 2**32, f"seed must be in [0, 2**32), got {self.seed}")
        _check(
            self.data is None or (self.src is None and self.valid_src is None),
            "data (a prepared directory) replaces src/tgt and valid_src/valid_tgt; give one",
        )
        _check(self.data_workers >= 0, "data_workers must be >= 0")
        _check(
            list(self.length_buckets) == sorted(self.length_buckets) and self.length_buckets,
            "length_buckets must be a non-empty increasing list",
        )
        _check(0.0 <= self.label_smoothing < 1.0, "label_smoothing must be in [0, 1)")
        _check(self.keep_last >= 1, "keep_last must be >= 1")
        _check(self.max_bad_steps >= 1, "max_bad_steps must be >= 1")
        _check(isinstance(self.mesh, str), "mesh must be a string like auto or data=8")


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    """Decoder choice and options (CLI: ``seqjax translate --beam 4 --alpha 0.6 ...``).

    ``method``: ``beam`` (default), ``greedy``, ``sample`` or ``contrastive``.
    ``max_len`` is ``max_len_a * source_length + max_len_b`` capped at ``max_len``;
    ``max_new_tokens`` (when set) replaces it and, like ``min_new_tokens``, counts
    generated tokens only (a prompt is not counted, nor scored unless ``score_prompt``).
    ``bad_words`` (token-id sequences), ``suppress_tokens`` and ``begin_suppress_tokens``
    are HF ``generate()``'s ``bad_words_ids``, ``suppress_tokens`` and
    ``begin_suppress_tokens`` (``seqjax.decoding.processors``).
    ``length_penalty``: ``gnmt`` uses ((5+len)/6)**alpha; ``hf`` uses len**alpha (the
    HuggingFace convention; with alpha 1 the score is the mean token log-prob).
    ``outputs`` (``("alignments", "step_log_probs")`` or a subset) fills those
    ``DecodeResult`` fields; ``stream=True`` compiles the decoder with its streaming
    callback and ``decode()`` then takes the consumer as ``stream=ID``
    (``seqjax.decoding.streaming``); tokens reach the host every ``stream_every``
    positions (the consumer is still called once per position).
    Lexically constrained beam search is method ``beam`` given per-source phrases
    (``decode(..., constraints=...)``, ``seqjax translate --constraints FILE``): the
    phrases are data, one set per source, so they are not a field here.
    """

    method: str = "beam"
    beam_size: int = 4
    n_best: int = 1
    alpha: float = 0.6
    length_penalty: str = "gnmt"
    coverage: float = 0.0
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    num_samples: int = 1
    max_len: int = 256
    max_len_a: float = 1.5
    max_len_b: int = 10
    min_len: int = 0
    max_new_tokens: int | None = None  # generated tokens only (the prompt not counted)
    min_new_tokens: int = 0
    score_prompt: bool = False  # score the prompt (prefix) tokens and count them
    no_repeat_ngram_size: int = 0
    repetition_penalty: float = 1.0
    contrastive_lambda: float = 0.5
    contrastive_alpha: float = 0.1
    amateur_temperature: float = 1.0
    convention: str = "seqjax"  # or "hf": HF generate()'s (see seqjax.decoding.prompt)
    forced_eos: bool = False  # force EOS at the last position (HF forced_eos_token_id)
    bad_words: tuple[tuple[int, ...], ...] = ()  # token-id sequences never generated
    suppress_tokens: tuple[int, ...] = ()  # never generated (HF suppress_tokens)
    begin_suppress_tokens: tuple[int, ...] = ()  # not generated first
    seed: int = 0
    batch_size: int = 64
    # Issue 15: beam-search variants (method "beam" only). early_stopping: HF's rule,
    # "never" (exact, the default) | "true" | "false"; diverse_groups > 1: diverse (group)
    # beam search with the Hamming diversity_penalty; beam_sample: draw beam candidates
    # (temperature, top_k, top_p apply).
    early_stopping: str = "never"
    diverse_groups: int = 1
    diversity_penalty: float = 0.0
    beam_sample: bool = False
    # Issue 15: optional outputs and streaming (every method). outputs: DecodeResult fields
    # to fill, a tuple of "alignments" (cross-attention per token) and "step_log_probs";
    # stream: compile the decoder with its streaming callback (decode() then needs stream=ID).
    outputs: tuple[str, ...] = ()
    stream: bool = False
    stream_every: int = STREAM_EVERY  # positions per host callback when streaming

    def __post_init__(self) -> None:
        _check(
            self.method in ("beam", "greedy", "sample", "contrastive"),
            f"method: unknown {self.method!r}; use beam, greedy, sample or contrastive",
        )
        # the ranges are the decoders' own (seqjax.decode_checks), written once
        try:
            check_options(**{f: getattr(self, f) for f in RULES})
            check_token_lists(bad_words=self.bad_words, suppress_tokens=self.suppress_tokens,
                              begin_suppress_tokens=self.begin_suppress_tokens)  # fmt: skip
        except ValueError as e:
            raise ConfigError(str(e)) from None
        _check(
            self.method != "beam" or self.n_best <= self.beam_size,
            f"n_best ({self.n_best}) cannot exceed beam_size ({self.beam_size})",
        )
        _check(self.length_penalty in ("gnmt", "hf"), "length_penalty: use gnmt or hf")
        _check(self.convention in ("seqjax", "hf"), "convention: use seqjax or hf")
        _check(self.batch_size >= 1, "batch_size must be >= 1")
        self._check_search_variants()
        _check(isinstance(self.outputs, tuple), f"outputs must be a tuple, got {self.outputs!r}")
        try:
            check_output_names(self.outputs)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        _check(isinstance(self.stream, bool), f"stream must be true or false, got {self.stream!r}")
        try:
            check_stream_every(self.stream_every)  # the decoders' own check
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def _check_search_variants(self) -> None:
        _check(
            self.early_stopping in ("never", "true", "false"),
            f"early_stopping: unknown {self.early_stopping!r}; use never, true or false",
        )
        _check(self.diverse_groups >= 1, "diverse_groups must be >= 1")
        _check(self.diversity_penalty >= 0, "diversity_penalty must be >= 0")
        variant = self.diverse_groups > 1 or self.beam_sample or self.early_stopping != "never"
        _check(
            not variant or self.method == "beam",
            "early_stopping, diverse_groups and beam_sample need method beam",
        )
        _check(
            self.beam_size % self.diverse_groups == 0,
            f"diverse_groups ({self.diverse_groups}) must divide beam_size ({self.beam_size})",
        )
        _check(
            not (self.beam_sample and self.diverse_groups > 1),
            "beam_sample and diverse_groups > 1 cannot be combined",
        )
