"""The ``seqjax`` command: prepare, train, translate, evaluate.

Every user error (bad file, bad option, missing checkpoint) ends in one line
``seqjax: error: ...`` and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from seqjax.app.errors import TrainingDiverged
from seqjax.config import (
    MODEL_PRESETS,
    ConfigError,
    DecodeConfig,
    ModelConfig,
    TrainConfig,
    from_dict,
    model_preset,
    read_toml,
    to_dict,
)
from seqjax.decode_checks import STREAM_EVERY

DEFAULT_RUN = "runs/default"
FAMILY_PRESETS = {"transformer": "small", "rnn": "rnn_small"}  # --model picks the CPU default


class UsageError(Exception):
    """Reported as one line with exit code 2."""


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # bare strings: --set model.family=rnn


def _apply_sets(sections: dict[str, dict[str, Any]], sets: list[str]) -> None:
    for item in sets:
        key, sep, value = item.partition("=")
        section, dot, field = key.partition(".")
        if not sep or not dot or section not in ("model", "train", "decode"):
            raise UsageError(
                f"--set {item!r}: use SECTION.FIELD=VALUE with SECTION model|train|decode"
            )
        sections.setdefault(section, {})[field] = _parse_value(value)


# -- decoding options (shared by translate and evaluate) ----------------------------------


def add_decode_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("decoding (default: beam 4 with GNMT length penalty, alpha 0.6)")
    m = g.add_mutually_exclusive_group()
    m.add_argument("--greedy", action="store_true", help="greedy (argmax) decoding")
    m.add_argument(
        "--sample",
        action="store_true",
        help="ancestral sampling (see --temperature, --top-k, --top-p)",
    )
    m.add_argument(
        "--contrastive", action="store_true", help="contrastive decoding (needs --amateur)"
    )
    g.add_argument("--beam", type=int, metavar="N", help="beam size (default 4)")
    g.add_argument("--alpha", type=float, help="length penalty exponent (default 0.6; 0 = none)")
    g.add_argument(
        "--length-penalty",
        choices=["gnmt", "hf"],
        help="gnmt: ((5+len)/6)^alpha (default); hf: len^alpha",
    )
    g.add_argument(
        "--coverage", type=float, metavar="W", help="GNMT coverage penalty weight (default 0)"
    )
    g.add_argument(
        "--n-best",
        type=int,
        metavar="N",
        help="print the N best hypotheses per line, tab-separated with scores",
    )
    g.add_argument("--temperature", type=float, help="sampling temperature (default 1.0)")
    g.add_argument("--top-k", type=int, help="sample from the k most likely tokens (0 = off)")
    g.add_argument("--top-p", type=float, help="nucleus sampling mass (1.0 = off)")
    g.add_argument("--num-samples", type=int, help="samples per input with --sample (default 1)")
    g.add_argument("--max-len", type=int, help="hard cap on output tokens (default 256)")
    g.add_argument("--min-len", type=int, help="minimum output tokens before EOS (default 0)")
    g.add_argument(
        "--no-repeat-ngram", type=int, metavar="N", help="never repeat an n-gram of this size"
    )
    g.add_argument("--repetition-penalty", type=float, help="CTRL repetition penalty (1.0 = off)")
    _add_generation_args(g)
    g.add_argument("--batch-size", type=int, help="sentences per decoding batch (default 64)")
    g.add_argument("--seed", type=int, help="PRNG seed for sampling (default 0)")
    g.add_argument(
        "--decode-config", metavar="FILE.toml", help="read [decode] options from a TOML file"
    )
    g.add_argument(
        "--amateur",
        metavar="DIR",
        help="contrastive: run directory of the small amateur model (same target tokenizer)",
    )
    _add_search_variant_args(p)


def _add_search_variant_args(p: argparse.ArgumentParser) -> None:
    """Issue 15: beam-search variants (DecodeConfig early_stopping, diverse_groups, ...)."""
    g = p.add_argument_group("beam-search variants (with beam search, the default method)")
    g.add_argument(
        "--early-stopping",
        choices=["never", "true", "false"],
        help="HF's stop rule: never = exact (default); true = once beam-size hypotheses are "
        "done; false = HF's heuristic",
    )
    g.add_argument(
        "--diverse-groups",
        type=int,
        metavar="G",
        help="diverse beam search: split the beam into G groups (G must divide --beam)",
    )
    g.add_argument(
        "--diversity-penalty",
        type=float,
        metavar="W",
        help="diverse beam search: Hamming penalty per earlier group's choice (default 0)",
    )
    g.add_argument(
        "--beam-sample",
        action="store_true",
        help="beam sampling: draw beam candidates (with --temperature, --top-k, --top-p)",
    )


def _token_ids(text: str) -> tuple[int, ...]:
    """``"5,17"`` -> ``(5, 17)`` (argparse ``type``)."""
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated token ids, e.g. 5,17; got {text!r}"
        ) from None


def _add_generation_args(g: Any) -> None:
    """HF-style generation options: new-token counts, token bans, conventions."""
    g.add_argument(
        "--max-new-tokens",
        type=int,
        metavar="N",
        help="at most N generated tokens per line, EOS included (replaces --max-len and "
        "the source-length rule)",
    )
    g.add_argument(
        "--min-new-tokens", type=int, metavar="N", help="no EOS before N generated tokens"
    )
    g.add_argument(
        "--suppress-tokens",
        type=_token_ids,
        metavar="IDS",
        help="comma-separated target token ids never generated (HF suppress_tokens)",
    )
    g.add_argument(
        "--begin-suppress-tokens",
        type=_token_ids,
        metavar="IDS",
        help="comma-separated target token ids not generated first (HF begin_suppress_tokens)",
    )
    g.add_argument(
        "--convention",
        choices=["seqjax", "hf"],
        help="hf: HuggingFace generate()'s conventions (decoder start token counted by "
        "--repetition-penalty and --no-repeat-ngram; beam search penalises log-probs); "
        "default seqjax, or hf with --hf",
    )
    g.add_argument(
        "--forced-eos",
        action="store_true",
        default=None,
        help="force EOS at the last position (HF forced_eos_token_id)",
    )


def decode_config_from_args(
    args: argparse.Namespace, base: dict[str, Any] | None = None
) -> DecodeConfig:
    """Decoding options: ``base`` (e.g. a checkpoint's own), then the TOML file, then flags."""
    values: dict[str, Any] = dict(base or {})
    # the base's length and beam-only rule give way to a flag that replaces them
    if args.max_len is not None:
        values.pop("max_new_tokens", None)
    if args.greedy or args.sample or args.contrastive:
        values.pop("early_stopping", None)
    if args.decode_config:
        values.update(read_toml(args.decode_config).get("decode", {}))
    if args.greedy:
        values["method"] = "greedy"
    elif args.sample:
        values["method"] = "sample"
    elif args.contrastive:
        values["method"] = "contrastive"
    for flag, field in [
        ("beam", "beam_size"),
        ("alpha", "alpha"),
        ("length_penalty", "length_penalty"),
        ("coverage", "coverage"),
        ("n_best", "n_best"),
        ("temperature", "temperature"),
        ("top_k", "top_k"),
        ("top_p", "top_p"),
        ("num_samples", "num_samples"),
        ("max_len", "max_len"),
        ("min_len", "min_len"),
        ("no_repeat_ngram", "no_repeat_ngram_size"),
        ("repetition_penalty", "repetition_penalty"),
        ("max_new_tokens", "max_new_tokens"),
        ("min_new_tokens", "min_new_tokens"),
        ("suppress_tokens", "suppress_tokens"),
        ("begin_suppress_tokens", "begin_suppress_tokens"),
        ("convention", "convention"),
        ("forced_eos", "forced_eos"),
        ("batch_size", "batch_size"),
        ("seed", "seed"),
    ]:
        v = getattr(args, flag)
        if v is not None:
            values[field] = v
    _search_variant_values(args, values)
    if values.get("method", "beam") != "sample" and values.get("temperature") == 0:
        del values["temperature"]  # only sampling divides by it: 0 is harmless elsewhere
    return from_dict(DecodeConfig, values, where="decoding options")


def _search_variant_values(args: argparse.Namespace, values: dict[str, Any]) -> None:
    for flag, field in [
        ("early_stopping", "early_stopping"),
        ("diverse_groups", "diverse_groups"),
        ("diversity_penalty", "diversity_penalty"),
    ]:
        if getattr(args, flag) is not None:
            values[field] = getattr(args, flag)
    if args.beam_sample:
        values["beam_sample"] = True
    if values.get("diversity_penalty") and values.get("diverse_groups", 1) == 1:
        raise UsageError("--diversity-penalty needs --diverse-groups G with G >= 2")


# -- devices, precision and the compile cache (shared by every command) -------------------


def add_runtime_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("devices and precision")
    g.add_argument(
        "--mesh",
        metavar="SPEC",
        help="device mesh: auto (default: every device on the data axis), data=N or "
        "data=N,model=M; the sizes must multiply to the number of devices",
    )
    g.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        help="activation/matmul dtype (params, softmax and losses stay float32)",
    )
    g.add_argument(
        "--no-compile-cache",
        action="store_true",
        help="do not use JAX's persistent compilation cache (~/.cache/seqjax/jax; also "
        "SEQJAX_NO_COMPILE_CACHE=1)",
    )


def add_quantize_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--quantize",
        choices=["int8", "w8a8", "bf16"],  # models.quantize.QUANT_MODES (not imported)
        help="low-precision weights for the big matrices. int8 (4x smaller, per-output-channel "
        "scales): weight-only, dequantised inside the compiled matmuls (the same outputs as "
        "float weights of those values; no faster on CPU); w8a8: the Transformer also "
        "quantises its activations per row and runs int8 x int8 -> int32 GEMMs "
        "(like CTranslate2's int8: faster on CPUs with VNNI/AMX, small extra rounding; "
        "the RNN runs it as int8); bf16 (2x smaller): weights and matmul inputs rounded to "
        "bfloat16, float32 sums and everything else float32 (1.1-1.4x faster on a CPU with "
        "AVX512_BF16; the RNN runs it as float32 on the rounded weights)",
    )


def _quantize(translator: Any, args: argparse.Namespace) -> None:
    """Apply --quantize to a loaded translator (and its amateur)."""
    from seqjax.models.quantize import quantize_params

    for tr in (translator, translator.amateur):
        if tr is not None:
            tr.params = quantize_params(tr.params, args.quantize)


def _mesh(args: argparse.Namespace) -> Any:
    from seqjax.sharding import make_mesh

    return make_mesh(args.mesh or "auto")


# -- train ---------------------------------------------------------------------------------


def _same_file(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return False
    try:
        return Path(a).samefile(b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def _train_configs(args: argparse.Namespace) -> tuple[ModelConfig, TrainConfig]:
    sections: dict[str, dict[str, Any]] = {}
    if args.config:
        sections = read_toml(args.config)
        # A shared file may carry [decode] for translate: checked here, not used by train.
        from_dict(DecodeConfig, sections.get("decode", {}), where=f"{args.config} [decode]")
    decode_sets = [s for s in args.set or [] if s.startswith("decode.")]
    if decode_sets:
        raise UsageError(
            f"--set {decode_sets[0]!r}: train does not decode with [decode] options (validation "
            "decodes greedily); give them to seqjax translate or evaluate"
        )
    _apply_sets(sections, args.set or [])
    train_values = dict(sections.get("train", {}))
    if args.model is not None and args.preset is None:
        train_values.setdefault("preset", FAMILY_PRESETS[args.model])
    for flag, field in [
        ("preset", "preset"),
        ("max_minutes", "max_minutes"),
        ("steps", "total_steps"),
        ("batch_tokens", "batch_tokens"),
        ("lr", "learning_rate"),
        ("seed", "seed"),
        ("src", "src"),
        ("tgt", "tgt"),
        ("valid_src", "valid_src"),
        ("valid_tgt", "valid_tgt"),
        ("data", "data"),
        ("data_workers", "data_workers"),
        ("eval_every", "eval_every"),
        ("objective", "objective"),
        ("init_from", "init_from"),
        ("ss_mode", "ss_mode"),
        ("ss_schedule", "ss_schedule"),
        ("ss_k", "ss_k"),
        ("mrt_samples", "mrt_samples"),
        ("mrt_alpha", "mrt_alpha"),
        ("mrt_mle_weight", "mrt_mle_weight"),
        ("teacher", "teacher"),
        ("distill_ema", "distill_ema"),
        ("distill_temperature", "distill_temperature"),
        ("mesh", "mesh"),
    ]:
        v = getattr(args, flag)
        if v is not None:
            train_values[field] = v
    train_cfg = from_dict(TrainConfig, train_values, where="train options")
    for a, b in (("src", "tgt"), ("valid_src", "valid_tgt")):
        if _same_file(getattr(train_cfg, a), getattr(train_cfg, b)):
            flags = f"--{a.replace('_', '-')} and --{b.replace('_', '-')}"
            raise UsageError(f"{flags} name the same file ({getattr(train_cfg, a)}); give the "
                             "source and target sides of the corpus as two files")  # fmt: skip
    model_values = dict(sections.get("model", {}))
    if args.vocab_size is not None:
        model_values["vocab_size"] = args.vocab_size
    if args.dtype is not None:
        model_values["dtype"] = args.dtype
    return model_preset(train_cfg.preset, **model_values), train_cfg


def cmd_train(args: argparse.Namespace) -> int:
    from seqjax.app.train import train
    from seqjax.sharding import is_primary

    model_cfg, train_cfg = _train_configs(args)
    t0 = time.monotonic()
    result = train(model_cfg, train_cfg, args.out)
    if not is_primary():
        return 0  # process 0 reports (and runs the test-set evaluation)
    print(
        f"trained {result.step} steps in {result.minutes:.1f} min "
        f"({result.params / 1e6:.2f}M parameters) -> {result.run_dir}"
    )
    bundled = train_cfg.src is None and train_cfg.data is None
    if bundled and not args.no_test and result.step > 0:
        from seqjax.app import run_dir
        from seqjax.app.evaluate import evaluate_split

        evaluate_split(
            result.run_dir,
            DecodeConfig(),
            split="test",
            samples=3,
            results_file=Path(result.run_dir) / run_dir.TEST_RESULTS_FILE,
        )
    print(f"total wall time {(time.monotonic() - t0) / 60:.1f} min")
    return 0


# -- prepare -------------------------------------------------------------------------------


def cmd_prepare(args: argparse.Namespace) -> int:
    from seqjax.data.prepare import PrepareOptions, prepare

    options = PrepareOptions(
        vocab_size=args.vocab_size,
        joint_vocab=not args.separate_vocab,
        model_type=args.model_type,
        seed=args.seed,
        sample_sentences=args.sample_sentences,
        pairs_per_shard=args.pairs_per_shard,
        tokenizer=args.tokenizer,
    )
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    res = prepare(
        args.src, args.tgt, args.out, valid_src=args.valid_src, valid_tgt=args.valid_tgt,
        options=options, workers=args.workers, log=log,
    )  # fmt: skip
    m = res.manifest
    for name, split in m["splits"].items():
        skipped = split["skipped"]["empty_side"]
        print(
            f"{name}: {split['pairs']} pairs ({skipped} with an empty side skipped, "
            f"{split['control_chars_replaced']} control characters replaced), "
            f"{split['src_tokens']} + {split['tgt_tokens']} tokens in {len(split['shards'])} "
            "shard(s)"
        )
    state = "already prepared (same files and options)" if res.reused else f"{m['seconds']}s"
    print(f"tokenizer vocab {m['tokenizer']['vocab_size']}; {state} -> {res.path}")
    return 0


# -- translate / evaluate ------------------------------------------------------------------


def _one_line_warnings(cmd: Any) -> Any:
    """Run ``cmd`` with each Python warning (e.g. a checkpoint fallback) shown as one line."""

    @functools.wraps(cmd)
    def run(args: argparse.Namespace) -> int:
        def show(message: Any, *_: Any, **__: Any) -> None:
            print(f"seqjax: warning: {message}", file=sys.stderr)

        with warnings.catch_warnings():
            warnings.showwarning = show
            return cmd(args)

    return run


def _check_amateur(args: argparse.Namespace, cfg: DecodeConfig) -> None:
    if cfg.method == "contrastive" and not args.amateur:
        raise UsageError("contrastive decoding needs --amateur DIR (a smaller run, same vocab)")


def _check_output(path: str | None, flag: str = "--output") -> None:
    """Refuse an ``--output`` (or ``flag``) that cannot be written, before any decoding."""
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{flag} {path}: is a directory; give the path of a file")
    parent = p.parent
    if not parent.is_dir():
        raise UsageError(f"{flag} {path}: directory {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise UsageError(f"{flag} {path}: permission denied")


def _check_alignments(args: argparse.Namespace) -> None:
    """``--alignments FILE``: writable, and not the file the translations go to."""
    _check_output(args.alignments, "--alignments")
    if args.alignments and args.output and _same_file(args.alignments, args.output):
        raise UsageError("--alignments and --output name the same file; give two files")


def _translate_extras(args: argparse.Namespace, cfg: DecodeConfig, translator: Any) -> DecodeConfig:
    """What needs the loaded model: ``--bad-words`` (its tokenizer), ``--max-new-tokens``."""
    from seqjax.app.translate import read_bad_words

    limit = translator.config.max_len
    if cfg.max_new_tokens is not None and cfg.max_new_tokens > limit:
        raise UsageError(
            f"--max-new-tokens must be <= {limit} (the model's max_len), got {cfg.max_new_tokens}"
        )
    if not args.bad_words:
        return cfg
    words = read_bad_words(args.bad_words, translator.tgt_tokenizer, translator.config.eos_id)
    return from_dict(DecodeConfig, {**to_dict(cfg), "bad_words": words}, where="--bad-words")


@_one_line_warnings
def cmd_translate(args: argparse.Namespace) -> int:
    from seqjax.app.translate import load, read_input

    _check_output(args.output)
    _check_alignments(args)
    if args.hf:
        from seqjax.interop.hf import hf_decode_config, hf_generation_settings, load_hf_translator

        translator = load_hf_translator(args.hf, mesh=_mesh(args), dtype=args.dtype)
        base = to_dict(hf_decode_config(hf_generation_settings(args.hf), translator.config))
        cfg = decode_config_from_args(args, base)
    else:
        cfg = decode_config_from_args(args)
    # N lines in, N lines out: blank lines and an empty input (no lines) are not errors.
    lines = read_input(args.input)
    from seqjax.sharding import is_primary

    _check_amateur(args, cfg)
    _check_stream(args, cfg)
    if args.stream_every is not None:
        if not args.stream:
            raise UsageError("--stream-every needs --stream")
        cfg = from_dict(DecodeConfig, {**to_dict(cfg), "stream_every": args.stream_every},
                        where="--stream-every")  # fmt: skip
    constraints = _read_constraints(args, cfg, len(lines))
    if not args.hf:
        translator = load(
            args.checkpoint,
            decode_config=cfg,
            mesh=_mesh(args),
            dtype=args.dtype,
            amateur=args.amateur,
        )
    elif args.amateur:
        translator.amateur = load(args.amateur, mesh=_mesh(args), dtype=args.dtype)
    if args.quantize:
        _quantize(translator, args)
    cfg = _translate_extras(args, cfg, translator)
    if args.ensemble:
        translator = _with_ensemble(args, translator)
    if args.stream:
        return _stream_translate(args, translator, lines, cfg)
    progress = args.input is not None
    if args.alignments:
        nbest, aligned = translator.translate_aligned(
            lines, cfg, progress=progress, constraints=constraints
        )
    else:
        nbest = translator.translate_nbest(lines, cfg, progress=progress, constraints=constraints)
        aligned = None
    if not is_primary():
        return 0  # every process decodes its rows; process 0 writes the whole output
    several = cfg.n_best > 1 or (cfg.method == "sample" and cfg.num_samples > 1)
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout  # noqa: SIM115
    try:
        for hyps in nbest:
            # Texts are already single lines without tabs (Translator: single_line).
            if several:
                out.write("\t".join(f"{t}\t{s:.4f}" for t, s in hyps) + "\n")
            else:
                out.write(hyps[0][0] + "\n")
    finally:
        if args.output:
            out.close()
    if aligned is not None:
        _write_alignments(args.alignments, aligned, several)
    return 0


def _write_alignments(path: str, aligned: list, several: bool) -> None:
    """One Pharaoh line per input line; with several hypotheses per line, theirs
    tab-separated in the order of the output's fields."""
    from seqjax.app.translate import pharaoh

    rows = (aligned_i if several else aligned_i[:1] for aligned_i in aligned)
    text = "".join("\t".join(pharaoh(pairs) for pairs in row) + "\n" for row in rows)
    Path(path).write_text(text, encoding="utf-8")


def _read_constraints(
    args: argparse.Namespace, cfg: DecodeConfig, num_lines: int
) -> list[list[str]] | None:
    """Issue 15: --constraints FILE, one line of tab-separated phrases per input line."""
    if not args.constraints:
        return None
    from seqjax.app.translate import read_constraints

    if cfg.method != "beam" or cfg.diverse_groups > 1 or cfg.beam_sample:
        raise UsageError(
            "--constraints needs beam search (the default method), without --diverse-groups "
            "or --beam-sample"
        )
    if cfg.max_new_tokens is not None or cfg.min_new_tokens:
        raise UsageError("--constraints cannot be combined with --max-new-tokens or "
                         "--min-new-tokens yet")  # fmt: skip
    return read_constraints(args.constraints, num_lines)


def _with_ensemble(args: argparse.Namespace, translator: Any) -> Any:
    """Issue 15: --ensemble DIR1,DIR2 decodes with those runs' models too (averaged)."""
    from seqjax.app.translate import ensemble_translator, load

    dirs = [d for d in args.ensemble.split(",") if d]
    if not dirs or args.hf or args.amateur:
        raise UsageError("--ensemble DIR1,DIR2 needs run directories, with --checkpoint only")
    others = [load(d, mesh=_mesh(args), dtype=args.dtype) for d in dirs]
    return ensemble_translator(translator, others)


def _check_stream(args: argparse.Namespace, cfg: DecodeConfig) -> None:
    """Issue 15: --stream prints one hypothesis as it grows: greedy or one sample."""
    if not args.stream:
        return
    one = cfg.method == "greedy" or (cfg.method == "sample" and cfg.num_samples == 1)
    if not one:
        raise UsageError(
            "--stream needs --greedy or --sample (one sample): beam hypotheses change "
            "until the search ends"
        )


def _stream_translate(args: argparse.Namespace, translator: Any, lines: list, cfg: Any) -> int:
    from seqjax.app.translate import translate_streaming

    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout  # noqa: SIM115
    try:

        def write(text: str) -> None:
            out.write(text)
            out.flush()

        aligned: list = []
        on_alignment = None if not args.alignments else lambda pairs: aligned.append([pairs])
        translate_streaming(translator, lines, cfg, write, on_alignment)
    finally:
        if args.output:
            out.close()
    if args.alignments:
        _write_alignments(args.alignments, aligned, False)
    return 0


@_one_line_warnings
def cmd_evaluate(args: argparse.Namespace) -> int:
    from seqjax.app.evaluate import evaluate_files, evaluate_split

    cfg = decode_config_from_args(args)
    if (args.src is None) != (args.ref is None):
        raise UsageError("give both --src and --ref, or neither (then --split is used)")
    _check_output(args.output)
    _check_alignments(args)
    _check_amateur(args, cfg)
    options = dict(mesh=_mesh(args), dtype=args.dtype, amateur=args.amateur)
    if args.quantize:
        options["quantize"] = args.quantize
    files = dict(output=args.output, alignments=args.alignments)
    if args.src:
        evaluate_files(args.checkpoint, cfg, args.src, args.ref, **files, **options)
    else:
        evaluate_split(args.checkpoint, cfg, split=args.split, **files, **options)
    return 0


# -- parser --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="seqjax",
        description="Compiled sequence-to-sequence training and decoding in JAX.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    _add_prepare_parser(sub)
    _add_train_parser(sub)
    _add_translate_parser(sub)
    _add_evaluate_parser(sub)
    return p


def _add_train_parser(sub: Any) -> None:
    t = sub.add_parser(
        "train",
        help="train a model (default: the LSTM rnn_small preset on the bundled en->fr corpus)",
        description="Train a model into --out. Rerunning with the same --out resumes from its "
        "latest checkpoint. With no options: the 'rnn_small' preset (bi-LSTM with attention) on "
        "the bundled Bible en->fr corpus for 1,500 updates (the same model and BLEU on every "
        "machine with the same instruction set and core count; about 11-26 minutes on 2 CPU "
        "cores), then test BLEU/chrF and sample translations.",
    )
    t.add_argument("--out", default=DEFAULT_RUN, help=f"run directory (default {DEFAULT_RUN})")
    t.add_argument(
        "--config", metavar="FILE.toml", help="TOML file with [model] and [train] tables"
    )
    t.add_argument(
        "--preset", choices=sorted(MODEL_PRESETS), help="model size preset (default rnn_small)"
    )
    t.add_argument(
        "--model",
        choices=sorted(FAMILY_PRESETS),
        help="model family; picks its CPU preset (transformer: small, rnn: rnn_small)",
    )
    t.add_argument(
        "--set",
        action="append",
        metavar="SECTION.FIELD=VALUE",
        help="override any config field, e.g. --set model.d_model=128 (repeatable)",
    )
    t.add_argument(
        "--max-minutes",
        type=float,
        help="optional wall-clock cap on the train loop in minutes (default 0 = none: the run "
        "length is --steps, so results do not depend on the machine's speed or load)",
    )
    t.add_argument("--steps", type=int, help="number of updates to train for (default 1500)")
    t.add_argument(
        "--batch-tokens", type=int, help="target tokens per batch incl. padding (default 2048)"
    )
    t.add_argument("--lr", type=float, help="peak learning rate (default 3e-3)")
    t.add_argument("--seed", type=int, help="seed for init, data order and dropout (default 0)")
    t.add_argument("--vocab-size", type=int, help="SentencePiece vocabulary size (preset default)")
    t.add_argument(
        "--src", help="training source file, one segment per line (default: bundled corpus)"
    )
    t.add_argument("--tgt", help="training target file, line-aligned with --src")
    t.add_argument("--valid-src", help="validation source file")
    t.add_argument("--valid-tgt", help="validation target file")
    t.add_argument(
        "--data",
        metavar="DIR",
        help="train on a directory written by `seqjax prepare` (instead of --src/--tgt)",
    )
    t.add_argument(
        "--data-workers",
        type=int,
        metavar="N",
        help="processes building batches (default 0: one prefetch thread; use a few on GPU/TPU "
        "hosts with cores to spare)",
    )
    t.add_argument(
        "--eval-every", type=int, help="validate (loss + BLEU) every N steps (default 500)"
    )
    t.add_argument("--no-test", action="store_true", help="skip the final test-set evaluation")
    _add_objective_args(t)
    add_runtime_args(t)
    t.set_defaults(func=cmd_train)


def _add_prepare_parser(sub: Any) -> None:
    p = sub.add_parser(
        "prepare",
        help="tokenize a parallel corpus once into shards for `seqjax train --data`",
        description="Stream two line-aligned text files, train a SentencePiece tokenizer on a "
        "random sample of them, tokenize every pair in worker processes and write "
        "ArrayRecord shards plus manifest.json into --out. Rerunning with the same files and "
        "options does nothing; an interrupted run never leaves a directory that looks "
        "complete.",
    )
    p.add_argument("--src", required=True, help="source file, one segment per line")
    p.add_argument("--tgt", required=True, help="target file, line-aligned with --src")
    p.add_argument("--valid-src", help="validation source file (kept as text too, for BLEU)")
    p.add_argument("--valid-tgt", help="validation target file")
    p.add_argument("--out", required=True, metavar="DIR", help="directory to write")
    p.add_argument(
        "--vocab-size", type=int, default=8000, help="SentencePiece vocabulary size (default 8000)"
    )
    p.add_argument(
        "--separate-vocab",
        action="store_true",
        help="one tokenizer per side instead of one joint tokenizer",
    )
    p.add_argument(
        "--model-type",
        choices=["bpe", "unigram"],
        default="bpe",
        help="SentencePiece model type (default bpe)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the tokenizer sample and training (default 0)"
    )
    p.add_argument(
        "--sample-sentences",
        type=int,
        default=200_000,
        metavar="N",
        help="most sentences the tokenizer trains on, drawn at random (default 200000)",
    )
    p.add_argument(
        "--pairs-per-shard",
        type=int,
        default=1_000_000,
        metavar="N",
        help="pairs per ArrayRecord file (default 1000000)",
    )
    p.add_argument(
        "--tokenizer",
        metavar="DIR",
        help="use this tokenizer (a run's tokenizer/ or a prepared directory's) instead of "
        "training one, e.g. to fine-tune a model on new data",
    )
    p.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="tokenizer processes, 0 = tokenize in this process (default: one per CPU; "
        "none below 50k pairs)",
    )
    p.set_defaults(func=cmd_prepare, no_compile_cache=True)


def _add_objective_args(t: argparse.ArgumentParser) -> None:
    o = t.add_argument_group("objective (default mle: teacher forcing with label smoothing)")
    o.add_argument(
        "--objective",
        choices=["mle", "scheduled-sampling", "mrt", "distill"],
        help="training objective; mrt and distill usually start from --init-from",
    )
    o.add_argument(
        "--init-from", metavar="DIR", help="start from this run's best params and tokenizer"
    )
    o.add_argument(
        "--ss-mode",
        choices=["parallel", "sequential"],
        help="scheduled sampling: two-pass parallel (Transformer) or exact sequential scan",
    )
    o.add_argument(
        "--ss-schedule",
        type=lambda v: v.replace("-", "_"),
        choices=["linear", "exponential", "inverse_sigmoid"],
        help="decay of the gold-token probability (default inverse_sigmoid)",
    )
    o.add_argument("--ss-k", type=float, help="schedule constant k (see TrainConfig docs)")
    o.add_argument("--mrt-samples", type=int, help="MRT candidates per source (default 8)")
    o.add_argument(
        "--mrt-alpha", type=float, help="MRT sharpness over summed log-probs (default 0.005)"
    )
    o.add_argument(
        "--mrt-mle-weight", type=float, help="weight of token MLE mixed into MRT (default 0)"
    )
    o.add_argument("--teacher", metavar="DIR", help="distill: run directory of the teacher model")
    o.add_argument(
        "--distill-ema",
        type=float,
        metavar="DECAY",
        help="distill: the teacher is an EMA of the student with this decay (e.g. 0.999), "
        "instead of --teacher; the EMA is checkpointed with the optimizer state",
    )
    o.add_argument(
        "--distill-temperature", type=float, help="distill: softmax temperature T (default 2)"
    )


def add_alignments_arg(p: argparse.ArgumentParser, lines: str) -> None:
    p.add_argument(
        "--alignments",
        metavar="FILE",
        help=f"also write one line per {lines} with the hard alignment of its translation in "
        "Pharaoh format, i-j = source token i, target token j (subword positions from 0; "
        "each target token with the source token its cross-attention weighs most; "
        "hypotheses tab-separated with --n-best)",
    )


def _add_translate_parser(sub: Any) -> None:
    tr = sub.add_parser(
        "translate",
        help="translate lines of text with a trained model",
        description="Translate one segment per line from --input (or stdin) to --output (or "
        "stdout). Output is line-aligned with input: an empty line gives an empty line.",
    )
    which = tr.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", metavar="DIR", help="run directory written by seqjax train")
    which.add_argument(
        "--hf",
        metavar="DIR",
        help="local HuggingFace Marian/BART directory (config.json + model.safetensors); "
        "text in/out with a Marian tokenizer (source.spm, target.spm, vocab.json), else token "
        "ids; decoding defaults come from its generation settings",
    )
    tr.add_argument("--input", metavar="FILE", help="input file (default: stdin)")
    tr.add_argument("--output", metavar="FILE", help="output file (default: stdout)")
    add_alignments_arg(tr, "input line")
    add_decode_args(tr)
    tr.add_argument(
        "--bad-words",
        metavar="FILE",
        help="phrases never generated, one per line (UTF-8), tokenised with the target "
        "tokenizer as at the start of a sentence (HF bad_words_ids)",
    )
    tr.add_argument(
        "--constraints",
        metavar="FILE",
        help="phrases each translation must contain (lexically constrained beam search): "
        "one line per input line, its phrases separated by tabs (an empty line: none), "
        "tokenised with the target tokenizer; needs beam search",
    )
    tr.add_argument(
        "--stream",
        action="store_true",
        help="print each line's tokens as the compiled loop produces them (with --greedy "
        "or --sample; one sentence at a time)",
    )
    tr.add_argument(
        "--stream-every",
        type=int,
        metavar="N",
        help="with --stream: tokens leave the compiled loop every N positions (default "
        f"{STREAM_EVERY}; "
        "1 = each token at once, which can triple the time of a small model's decode: "
        "each host call costs about 0.1-0.3 ms)",
    )
    tr.add_argument(
        "--ensemble",
        metavar="DIR1,DIR2",
        help="decode with these run directories' models as well, averaging the models' "
        "probabilities (fairseq); same tokenizers as --checkpoint",
    )
    add_runtime_args(tr)
    add_quantize_arg(tr)
    tr.set_defaults(func=cmd_translate)


def _add_evaluate_parser(sub: Any) -> None:
    ev = sub.add_parser(
        "evaluate",
        help="score a model with sacrebleu BLEU and chrF",
        description="Translate a bundled split (--split) or your own files (--src/--ref) and "
        "print corpus BLEU and chrF with their sacrebleu signatures.",
    )
    ev.add_argument(
        "--checkpoint", required=True, metavar="DIR", help="run directory written by seqjax train"
    )
    ev.add_argument(
        "--split",
        default="test",
        choices=["train", "valid", "test"],
        help="split of the corpus the model was trained on (default test)",
    )
    ev.add_argument("--src", help="source file to translate")
    ev.add_argument("--ref", help="reference translations, line-aligned with --src")
    ev.add_argument("--output", metavar="FILE", help="also write the hypotheses here")
    add_alignments_arg(ev, "source line")
    add_decode_args(ev)
    add_runtime_args(ev)
    add_quantize_arg(ev)
    ev.set_defaults(func=cmd_evaluate)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from seqjax.checkpoint import CheckpointError
    from seqjax.data import DataError
    from seqjax.sharding import enable_compile_cache, maybe_initialize_distributed

    try:
        # Before any device is touched: join a multi-host job, turn on the compile cache.
        maybe_initialize_distributed()
        if not args.no_compile_cache:
            enable_compile_cache()
        return args.func(args)
    except (UsageError, ConfigError, DataError, CheckpointError, FileNotFoundError) as e:
        print(f"seqjax: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except TrainingDiverged as e:
        print(f"seqjax: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["main", "build_parser"]
