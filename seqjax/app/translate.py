"""Text in, text out: batching, bucketing and decoding for a trained model.

::

    tr = seqjax.load("runs/default")
    tr.translate(["In the beginning God created the heavens and the earth."])

Sources are sorted by length, cut into batches of at most ``DecodeConfig.batch_size``
rows, padded to a length bucket and to a power-of-two row count, so a stream of
inputs compiles once per (bucket, rows) pair and never per batch.

Output is line-aligned with input whatever the model emits: a blank input line (only
whitespace, including NBSP or U+3000) gives an empty output line, and every character that
could break a line or a tab-separated field (C0 controls incl. TAB/LF/VT/FF/CR, DEL, U+0085,
U+2028, U+2029) is replaced by one space in every decoded text (see ``single_line``).

With a ``mesh`` (``seqjax.sharding.make_mesh``) the rows of every batch are split along
its ``data`` axis (padded to a multiple of it), the params are replicated (or split along
``model``), and the results are gathered back to the host.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from seqjax import sharding
from seqjax.app import export_cache, run_dir
from seqjax.app.progress import Progress
from seqjax.config import ConfigError, DecodeConfig, ModelConfig
from seqjax.data import Tokenizer, decode_lines, pad_batch
from seqjax.data.reader import _read_bytes
from seqjax.decode_checks import check_token_ids
from seqjax.decoding import DecodeResult, decode, ensemble, numeric_options, static_part
from seqjax.decoding.compile_options import call_compiler_options, one_row_output_major
from seqjax.decoding.outputs import hard_alignment
from seqjax.models import build_model
from seqjax.models.quantize import output_major

DECODE_BUCKETS = (16, 32, 48, 64, 96, 128, 192, 256)

# Characters that end a line for some reader (str.splitlines, editors) or split a TSV field.
_LINE_BREAKING_RE = re.compile("[\x00-\x1f\x7f\x85\u2028\u2029]")


def single_line(text: str) -> str:
    """``text`` with each line-breaking/tab/control character replaced by one space.

    Byte-fallback pieces let a model emit any character, so this runs on every decoded text:
    one output line per input line, and n-best TSV fields stay tab-free.
    """
    return _LINE_BREAKING_RE.sub(" ", text)


def input_lines(data: bytes, name: str) -> list[str]:
    """Lines to translate from raw bytes: N lines in, N out, blank lines included.

    Like ``seqjax.data.decode_lines`` (BOM, CRLF, control characters, one-line UTF-8
    errors), except that empty input is no input and a file of only blank lines is that
    many empty lines (training refuses both; translation must keep alignment).
    """
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError:
        return decode_lines(data, name)[0]  # raises the error naming line and column
    if text.strip():
        return decode_lines(data, name)[0]
    return [""] * (text.count("\n") + (text != "" and not text.endswith("\n")))


def read_input(path: str | Path | None) -> list[str]:
    """``input_lines`` of a file, or of stdin when ``path`` is None."""
    if path is None:
        return input_lines(sys.stdin.buffer.read(), "<stdin>")
    return input_lines(_read_bytes(Path(path)), str(path))


def phrase_ids(tokenizer: Any, phrases: Sequence[str], eos_id: int) -> tuple[tuple[int, ...], ...]:
    """Token ids of text phrases, each tokenised as a whole sentence with EOS dropped;
    blank phrases (and phrases of no tokens) are skipped."""
    phrases = [p.strip() for p in phrases if p.strip()]
    rows = tokenizer.encode(phrases) if phrases else []
    words = (tuple(int(t) for t in row if int(t) != eos_id) for row in rows)
    return tuple(w for w in words if w)


def read_bad_words(path: str | Path, tokenizer: Any, eos_id: int) -> tuple[tuple[int, ...], ...]:
    """Token-id sequences of the phrases in ``path`` (one per line, blank lines skipped),
    tokenised with ``tokenizer`` (the target side's) as whole sentences, EOS dropped."""
    return phrase_ids(tokenizer, read_input(path), eos_id)


CONSTRAINT_SEPARATOR = "\t"


def read_constraints(path: str | Path, num_lines: int) -> list[list[str]]:
    """The constraint phrases of each input line: ``path`` holds one line per input line
    (``num_lines`` of them), its phrases separated by tabs; an empty line has none."""
    lines = read_input(path)
    if len(lines) != num_lines:
        raise ConfigError(
            f"--constraints {path}: {len(lines)} line(s), but the input has {num_lines}; "
            "give one line of tab-separated phrases per input line (an empty line for none)"
        )
    return [[p for p in line.split(CONSTRAINT_SEPARATOR) if p.strip()] for line in lines]


def _pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def constraint_array(rows: Sequence[Sequence[tuple[int, ...]]], num_rows: int) -> np.ndarray:
    """``int32[num_rows, C, P]`` phrases padded with -1; ``C`` and ``P`` rounded up to powers
    of two (a few compiled shapes), rows past ``len(rows)`` without phrases.

    >>> constraint_array([[(5, 6, 7)], [(8,), (9,)]], 3)[:, :, :3].tolist()
    [[[5, 6, 7], [-1, -1, -1]], [[8, -1, -1], [9, -1, -1]], [[-1, -1, -1], [-1, -1, -1]]]
    """
    C = _pow2(max([len(r) for r in rows] + [1]))
    P = _pow2(max([len(p) for r in rows for p in r] + [1]))
    out = np.full((num_rows, C, P), -1, np.int32)
    for b, phrases in enumerate(rows):
        for c, phrase in enumerate(phrases):
            out[b, c, : len(phrase)] = phrase
    return out


def _row_bucket(n: int, cap: int) -> int:
    """Smallest power of two >= n, at most ``cap`` (bounds the set of compiled shapes)."""
    rows = 1
    while rows < n:
        rows *= 2
    return min(rows, cap)


def output_max_len(cfg: DecodeConfig, src_len: int, model_max_len: int) -> int:
    """Longest output for a source bucket: ``a * src_len + b`` capped by the config and model;
    ``max_new_tokens`` (capped by the model) when the config sets it."""
    if cfg.max_new_tokens is not None:
        return min(cfg.max_new_tokens, model_max_len)
    return max(1, min(cfg.max_len, int(cfg.max_len_a * src_len + cfg.max_len_b), model_max_len))


def loop_rows(config: DecodeConfig, batch: int) -> int:
    """Rows the decoding loop multiplies per step: ``batch`` x beams (or samples).

    >>> loop_rows(DecodeConfig(method="beam", beam_size=4), 16)
    64
    >>> loop_rows(DecodeConfig(method="greedy"), 16)
    16
    """
    if config.method == "greedy":
        return batch
    if config.method == "sample":
        return batch * config.num_samples
    return batch * config.beam_size  # beam search (every variant) and contrastive


def _decode_options(params: Any, src_BxS: Any, config: DecodeConfig) -> dict:
    """XLA compile options of ``_decode_batch`` at this size (``compile_options``); an
    ensemble's params are a tuple, read whole (w8a8 if any member is). {} inside a
    trace (an export: the outer jit's options apply)."""
    rows = loop_rows(config, src_BxS.shape[0])
    return call_compiler_options(rows, params, (params, src_BxS))


def _decode_batch(
    model: Any,
    params: Any,
    src_BxS: Any,
    key: jax.Array,
    numerics: dict[str, jax.Array],
    config: DecodeConfig,
    max_len: int,
    amateur_model: Any = None,
    amateur_params: Any = None,
    stream: Any = None,
    constraints: jax.Array | None = None,
) -> DecodeResult:
    """Encode and decode one padded batch; compiled once per (shape, static options).

    Compiled with the XLA:CPU matmul kernels that suit its rows per step
    (``seqjax.decoding.compile_options``): one jitted program per choice of options.
    A tuple of models (with a tuple of params) decodes as their ensemble (issue 15);
    ``constraints [B, C, P]`` make it constrained beam search (issue 15).
    """
    options = _decode_options(params, src_BxS, config)
    program = _decode_program(tuple(sorted(options.items())))
    return program(
        model, params, src_BxS, key, numerics, config, max_len,
        amateur_model, amateur_params, stream, constraints,
    )  # fmt: skip


# One jitted ``_decode_body`` per choice of compile options, by their sorted items.
_PROGRAMS: dict[tuple[tuple[str, str], ...], Any] = {}


def _decode_program(options: tuple[tuple[str, str], ...]) -> Any:
    """``_decode_body`` under ``jax.jit`` with these compile options (made once)."""
    if options not in _PROGRAMS:
        _PROGRAMS[options] = jax.jit(
            _decode_body,
            static_argnames=("model", "config", "max_len", "amateur_model"),
            compiler_options=dict(options) or None,
        )
    return _PROGRAMS[options]


def programs_compiled() -> int:
    """Programs ``_decode_batch`` has compiled in this process, over every choice of
    compile options (tests count recompilations with it)."""
    return sum(p._cache_size() for p in _PROGRAMS.values())


def _decode_body(
    model: Any,
    params: Any,
    src_BxS: jax.Array,
    key: jax.Array,
    numerics: dict[str, jax.Array],
    config: DecodeConfig,
    max_len: int,
    amateur_model: Any = None,
    amateur_params: Any = None,
    stream: Any = None,
    constraints: jax.Array | None = None,
) -> DecodeResult:
    """``_decode_batch``'s program: encode, then decode with ``config``'s method."""
    mc: ModelConfig = (model[0] if isinstance(model, tuple) else model).config
    mask = src_BxS != mc.pad_id

    def prepare(m: Any, p: Any) -> tuple[Any, Any]:
        if isinstance(m, tuple):  # an ensemble: one step, the tuple of the caches
            members = [prepare(mi, pi) for mi, pi in zip(m, p, strict=True)]
            return ensemble(*(s for s, _ in members)), tuple(c for _, c in members)
        return m.step, m.init_cache(p, m.encode(p, src_BxS, mask), mask, max_len)

    step_fn, cache = prepare(model, params)
    amateur = prepare(amateur_model, amateur_params) if amateur_model is not None else None
    return decode(
        step_fn,
        cache,
        config,
        key=key,
        max_len=max_len,
        bos_id=mc.bos_id,
        eos_id=mc.eos_id,
        pad_id=mc.pad_id,
        src_mask=mask,
        numerics=numerics,
        amateur=amateur,
        params=params,  # weights are traced: model.step is the params form
        amateur_params=amateur_params,
        stream=stream,
        constraints=constraints,
    )


@dataclasses.dataclass
class Translator:
    """A model, its parameters and tokenizers, ready to translate text."""

    model: Any
    params: Any
    src_tokenizer: Tokenizer
    tgt_tokenizer: Tokenizer
    config: ModelConfig
    decode_config: DecodeConfig = dataclasses.field(default_factory=DecodeConfig)
    buckets: tuple[int, ...] = DECODE_BUCKETS
    warn_stream: Any = None
    amateur: Translator | None = None  # small model for contrastive decoding (same vocab)
    mesh: Mesh | None = None  # data-parallel decoding over this mesh (None: one device)
    # (params, their output-major copy) for one-row decoders, made on first use
    _one_row: tuple[Any, Any] | None = dataclasses.field(
        default=None, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if self.mesh is not None and self.mesh.size == 1:
            self.mesh = None  # one device: the plain path is the same program
        if self.mesh is not None:
            self.params = sharding.place_params(self.params, self.mesh)

    def decode_params(self, rows: int) -> Any:
        """The params a decoder of ``rows`` rows per step reads: ``self.params``, or where
        ``compile_options.one_row_output_major`` says so (one row per step, float32
        weights on an AVX2 CPU) a copy stored output-major (``quantize.output_major``),
        made on first use and kept (the weight matrices once more in memory) while
        ``self.params`` stays the same object. The same values; the matmuls sum in another
        order, so a token may differ where two candidates tie to float rounding."""
        if self.mesh is not None or not getattr(self.model, "takes_int8", False):
            return self.params  # sharded params, ensembles (a tuple), the RNN: as they are
        if self.model.config.dtype != "float32":  # measured in float32 only; bf16 dots round x
            return self.params
        if not one_row_output_major(rows, self.params):
            return self.params
        if self._one_row is None or self._one_row[0] is not self.params:
            self._one_row = (self.params, output_major(self.params))
        return self._one_row[1]

    @property
    def max_source_tokens(self) -> int:
        return min(max(self.buckets), self.config.max_len)

    def translate(
        self,
        sentences: Sequence[str],
        config: DecodeConfig | None = None,
        *,
        progress: bool = False,
        constraints: Sequence[Sequence[str]] | None = None,
    ) -> list[str]:
        """Best translation per sentence, line-aligned: ``out[i]`` translates ``sentences[i]``.

        A blank sentence (only whitespace) gives ``""``. Every text is one line without tabs:
        line-breaking and control characters the model emits become spaces (``single_line``).
        ``constraints``: text phrases per sentence that its translation must contain
        (``translate_nbest``).
        """
        nbest = self.translate_nbest(sentences, config, progress=progress, constraints=constraints)
        return [hyps[0][0] for hyps in nbest]

    def translate_nbest(
        self,
        sentences: Sequence[str],
        config: DecodeConfig | None = None,
        *,
        progress: bool = False,
        constraints: Sequence[Sequence[str]] | None = None,
    ) -> list[list[tuple[str, float]]]:
        """Up to ``n_best`` (beam) or ``num_samples`` (sampling) ``(text, score)`` per sentence.

        In input order, blank sentences and texts as in ``translate``. ``constraints`` (beam
        search only): one list of text phrases per sentence, tokenised with the target
        tokenizer; each translation contains every phrase of its sentence
        (``seqjax.decoding.constrained_beam_search``; an empty text when none can). A batch's
        output length grows to fit its phrases (up to the model's ``max_len``).
        """
        return self._translate(sentences, config or self.decode_config, progress, constraints)[0]

    def translate_aligned(
        self,
        sentences: Sequence[str],
        config: DecodeConfig | None = None,
        *,
        progress: bool = False,
        constraints: Sequence[Sequence[str]] | None = None,
    ) -> tuple[list[list[tuple[str, float]]], list[list[list[tuple[int, int]]]]]:
        """``translate_nbest``'s hypotheses and, for each, its hard alignment.

        ``alignments[i][k]`` lists ``(source position, target position)`` pairs of
        hypothesis ``k`` of sentence ``i``: each target token with the source token its
        cross-attention weighs most (``seqjax.decoding.outputs.hard_alignment``). Positions
        are subword-token positions from 0: source pieces as the source tokenizer cuts the
        (possibly truncated) sentence, target pieces of the hypothesis up to EOS (EOS, PAD
        and BOS are not counted; a piece that detokenises to nothing, such as a lone ``▁``,
        is). A blank sentence has one empty alignment.
        """
        cfg = config or self.decode_config
        if "alignments" not in cfg.outputs:
            cfg = dataclasses.replace(cfg, outputs=(*cfg.outputs, "alignments"))
        return self._translate(sentences, cfg, progress, constraints)

    def _translate(
        self,
        sentences: Sequence[str],
        cfg: DecodeConfig,
        progress: bool,
        constraints: Sequence[Sequence[str]] | None = None,
    ) -> tuple[list[list[tuple[str, float]]], list[list[list[tuple[int, int]]]]]:
        """Hypotheses per sentence and, with ``"alignments"`` in ``cfg.outputs``, theirs."""
        self._check_token_ids(cfg)
        wanted = self._constraint_ids(sentences, constraints)
        ids = self.src_tokenizer.encode(list(sentences))
        cap = self.max_source_tokens
        too_long = [i for i, x in enumerate(ids) if len(x) > cap]
        if too_long:
            # Policy: over-long inputs are truncated (never dropped, so output stays aligned).
            stream = self.warn_stream or sys.stderr
            print(
                f"warning: {len(too_long)} input line(s) longer than {cap} tokens were "
                f"truncated (first: line {too_long[0] + 1})",
                file=stream,
            )
            ids = [x[:cap] for x in ids]
        out: list[list[tuple[str, float]]] = [[("", 0.0)] for _ in ids]
        aligned: list[list[list[tuple[int, int]]]] = [[[]] for _ in ids]
        blank = [not s.strip() for s in sentences]  # e.g. NBSP alone still has byte pieces
        todo = sorted(
            (i for i, x in enumerate(ids) if x and not blank[i]), key=lambda i: -len(ids[i])
        )
        bar = Progress(len(todo), "translate", unit="sent") if progress and todo else None
        amateur: tuple[Any, ...] = ()
        if cfg.method == "contrastive":
            if self.amateur is None:
                raise ValueError("contrastive decoding needs an amateur model (--amateur DIR)")
            amateur_params = self.amateur.params
            if self.mesh is not None:
                amateur_params = sharding.place_params(amateur_params, self.mesh)
            amateur = (self.amateur.model, amateur_params)
        for start in range(0, len(todo), cfg.batch_size):
            chunk = todo[start : start + cfg.batch_size]
            rows = sharding.padded_rows(_row_bucket(len(chunk), cfg.batch_size), self.mesh)
            src, n = pad_batch([ids[i] for i in chunk], self.buckets, self.config.pad_id, rows)
            max_len = output_max_len(cfg, src.shape[1], self.config.max_len)
            batch = {"src": src}
            if wanted is not None:
                rows_ids = [wanted[i] for i in chunk]
                batch["constraints"] = constraint_array(rows_ids, src.shape[0])
                need = max(sum(len(p) for p in r) for r in rows_ids)
                max_len = max(max_len, min(need + 1, self.config.max_len))  # room for EOS
            res = None
            if self.mesh is None and not amateur and "constraints" not in batch:
                res = self._exported_decode(cfg, max_len, batch["src"], start)
            if res is None:
                if self.mesh is None:
                    dev = {k: jnp.asarray(v) for k, v in batch.items()}
                else:
                    dev = sharding.shard_rows(batch, self.mesh)
                res = _decode_batch(
                    self.model,
                    self.decode_params(loop_rows(cfg, src.shape[0])),
                    dev["src"],
                    jax.random.fold_in(jax.random.key(cfg.seed), start),
                    numeric_options(cfg),
                    static_part(cfg),
                    max_len,
                    *amateur,
                    **({"constraints": dev["constraints"]} if "constraints" in dev else {}),
                )
            tokens = sharding.to_host(res.tokens)[:n]
            scores = sharding.to_host(res.scores)[:n]
            keep = cfg.n_best if cfg.method == "beam" else tokens.shape[1]
            attention = None if res.alignments is None else sharding.to_host(res.alignments)[:n]
            for r, i in enumerate(chunk):
                texts = self.tgt_tokenizer.decode(tokens[r, :keep])
                texts = [single_line(t) for t in texts]
                out[i] = list(zip(texts, scores[r, :keep].tolist(), strict=True))
                if attention is not None:
                    aligned[i] = [
                        self._alignment(tokens[r, k], attention[r, k], len(ids[i]))
                        for k in range(keep)
                    ]
            if bar:
                bar.update(len(chunk))
        if bar:
            bar.close()
        return out, aligned

    def _exported_decode(
        self, cfg: DecodeConfig, max_len: int, src_BxS: np.ndarray, start: int
    ) -> DecodeResult | None:
        """``_decode_batch`` through ``export_cache``; None where that cannot serve it.

        Host values go in as numpy arrays and the PRNG key is made inside the program (the
        same bits as ``fold_in(key(seed), start)`` outside it), so a new process compiles
        no small programs before the decoder (~0.1 s of start-up).
        """
        model = self.model
        if isinstance(model, tuple) or not 0 <= cfg.seed < 2**31:  # ensembles; int32 seeds
            return None
        static_cfg = static_part(cfg)

        def fn(params: Any, src: Any, seed_start: Any, numerics: Any) -> DecodeResult:
            key = jax.random.fold_in(jax.random.key(seed_start[0]), seed_start[1])
            return _decode_batch(model, params, src, key, numerics, static_cfg, max_len)

        params = self.decode_params(loop_rows(cfg, src_BxS.shape[0]))
        args = (params, src_BxS, np.array([cfg.seed, start], np.int32), numeric_options(cfg))
        what = getattr(model, "config", None)
        static = f"_decode_batch {type(model).__qualname__} {what!r} {static_cfg!r} {max_len}"
        options = _decode_options(params, src_BxS, static_cfg)
        call = export_cache.exported(fn, static, args, compiler_options=options)
        return None if call is None else call(*args)

    def _check_token_ids(self, cfg: DecodeConfig) -> None:
        """Token ids given by number must exist in this model's target vocabulary: the
        decoder's own check, run before decoding (inside its first call it is a traceback)."""
        ids = {
            n: np.asarray(getattr(cfg, n), np.int64)
            for n in ("suppress_tokens", "begin_suppress_tokens")
        }
        try:
            check_token_ids(self.config.vocab_size, **ids)
        except ValueError as e:
            raise ConfigError(f"decoding options: {e}") from None

    def _constraint_ids(
        self, sentences: Sequence[str], constraints: Sequence[Sequence[str]] | None
    ) -> list[tuple[tuple[int, ...], ...]] | None:
        """Each sentence's phrases as target token ids; refuses phrases that cannot fit."""
        if constraints is None:
            return None
        if len(constraints) != len(sentences):
            raise ConfigError(
                f"constraints: {len(constraints)} list(s) of phrases for {len(sentences)} "
                "sentence(s); give one per sentence"
            )
        eos, limit = self.config.eos_id, self.config.max_len
        wanted = [phrase_ids(self.tgt_tokenizer, list(p), eos) for p in constraints]
        for i, phrases in enumerate(wanted):
            need = sum(len(p) for p in phrases)
            if need > limit and sentences[i].strip():
                raise ConfigError(
                    f"constraints of line {i + 1} need {need} target tokens, more than the "
                    f"model's max_len ({limit})"
                )
        return wanted

    def _alignment(
        self, tokens_L: Any, attention_LxS: Any, source_len: int
    ) -> list[tuple[int, int]]:
        c = self.config
        return hard_alignment(
            tokens_L, attention_LxS, source_len, eos_id=c.eos_id, skip_ids=(c.pad_id, c.bos_id)
        )


def pharaoh(pairs: Sequence[tuple[int, int]]) -> str:
    """Pharaoh format: ``"i-j"`` pairs (source-target), space-separated.

    >>> pharaoh([(1, 0), (0, 1)])
    '1-0 0-1'
    """
    return " ".join(f"{i}-{j}" for i, j in pairs)


class _LineStream:
    """Writes the text each new token adds to one streamed output line."""

    def __init__(self, tokenizer: Tokenizer, write: Any) -> None:
        self.tokenizer, self.write, self.ids, self.text = tokenizer, write, [], ""

    def emit(self, text: str) -> None:
        # a detokeniser may rewrite earlier text; only extensions can be printed
        if text.startswith(self.text) and len(text) > len(self.text):
            self.write(text[len(self.text) :])
            self.text = text

    def on_token(self, position: int, tokens: Any) -> None:
        self.ids.append(int(tokens[0]))
        self.emit(single_line(self.tokenizer.decode([self.ids])[0]))


def translate_streaming(
    translator: Translator,
    sentences: Sequence[str],
    cfg: DecodeConfig,
    write: Any,
    on_alignment: Any = None,
) -> None:
    """Issue 15: ``write`` each sentence's text as its tokens leave the compiled loop.

    One sentence at a time (batch 1), greedy or one sample; ``write(piece)`` receives the
    text added by each new token, then a newline after each sentence (line-aligned, as
    ``Translator.translate``). All sentences share one compiled program per bucket.
    ``on_alignment(pairs)`` (optional) receives each sentence's hard alignment once it
    is done (as ``Translator.translate_aligned``; ``[]`` for a blank sentence).
    """
    from seqjax.decoding.streaming import consumer

    cfg = dataclasses.replace(cfg, stream=True)
    if on_alignment is not None and "alignments" not in cfg.outputs:
        cfg = dataclasses.replace(cfg, outputs=(*cfg.outputs, "alignments"))
    tok, key = translator.tgt_tokenizer, jax.random.key(cfg.seed)
    for i, sentence in enumerate(sentences):
        ids = translator.src_tokenizer.encode([sentence])[0][: translator.max_source_tokens]
        if not sentence.strip() or not ids:
            write("\n")
            if on_alignment is not None:
                on_alignment([])
            continue
        src, _ = pad_batch([ids], translator.buckets, translator.config.pad_id, 1)
        max_len = output_max_len(cfg, src.shape[1], translator.config.max_len)
        line = _LineStream(tok, write)
        with consumer(line.on_token) as sid:
            res = _decode_batch(
                translator.model, translator.decode_params(loop_rows(cfg, 1)), jnp.asarray(src),
                jax.random.fold_in(key, i),
                numeric_options(cfg), static_part(cfg), max_len, stream=sid,
            )  # fmt: skip
            tokens = sharding.to_host(res.tokens)[0, 0]
            line.emit(single_line(tok.decode(tokens[None])[0]))
        write("\n")
        if on_alignment is not None:
            attention = sharding.to_host(res.alignments)[0, 0]
            on_alignment(translator._alignment(tokens, attention, len(ids)))


def ensemble_translator(first: Translator, others: Sequence[Translator]) -> Translator:
    """Issue 15: one ``Translator`` decoding ``first`` and ``others`` as an ensemble
    (fairseq's mean of the probabilities). All must share both tokenizers."""
    for other in others:
        if (other.src_tokenizer, other.tgt_tokenizer) != (first.src_tokenizer, first.tgt_tokenizer):
            raise ConfigError("--ensemble: every model must use the same tokenizers")
    members = [first, *others]
    return dataclasses.replace(
        first,
        model=tuple(t.model for t in members),
        params=tuple(t.params for t in members),
    )


def with_dtype(model: Any, dtype: str | None) -> Any:
    """``model`` rebuilt to compute in ``dtype`` (params unchanged); ``None`` keeps it."""
    if dtype is None or dtype == model.config.dtype:
        return model
    try:
        return build_model(dataclasses.replace(model.config, dtype=dtype))
    except ValueError as e:
        raise ConfigError(f"--dtype: {e}") from None


def load(
    path: str | Path,
    *,
    decode_config: DecodeConfig | None = None,
    which: str | int = "best",
    mesh: Mesh | None = None,
    dtype: str | None = None,
    amateur: str | Path | None = None,
    quantize: str | None = None,
) -> Translator:
    """Restore a run directory (config + tokenizer + Orbax params) as a ``Translator``.

    ``which`` is ``best`` (best validation BLEU; falls back to latest), ``latest`` or a step.
    ``mesh``: decode data-parallel over it. ``dtype``: activation/matmul dtype to decode
    in (e.g. ``"bfloat16"``; params stay float32), instead of the one trained with.
    ``amateur``: run directory of the small model for contrastive decoding (its best params;
    it must share the target tokenizer).
    ``quantize``: ``"int8"`` stores the big matrices as int8 with per-channel scales,
    ``"w8a8"`` also quantises the Transformer's activations per row (integer matmuls),
    ``"bf16"`` stores them as bfloat16 for bfloat16 matmuls with float32 sums
    (``seqjax.models.quantize``); None keeps float32.
    """
    model, params = run_dir.load_model(path, which=which, keep_params=True)
    if quantize is not None:
        from seqjax.models.quantize import quantize_params

        params = quantize_params(params, quantize)
    model = with_dtype(model, dtype)
    src_tok, tgt_tok = run_dir.read_tokenizers(path)
    small = None
    if amateur is not None:
        small = load(amateur, mesh=mesh, dtype=dtype)
        if small.tgt_tokenizer != tgt_tok:
            raise ConfigError(
                f"--amateur {amateur}: its target tokenizer differs from {path}'s; contrastive "
                "decoding needs both models on the same vocabulary"
            )
    return Translator(
        model,
        params,
        src_tok,
        tgt_tok,
        model.config,
        decode_config=decode_config or DecodeConfig(),
        mesh=mesh,
        amateur=small,
    )
