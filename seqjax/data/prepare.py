"""``seqjax prepare``: parallel text files -> tokenizer + pre-tokenised ArrayRecord shards.

Like ``fairseq-preprocess``: run once, train many times. Memory stays bounded whatever the
corpus size: the files are streamed line by line (twice: a scan, then tokenisation), the
tokenizer trains on a seeded reservoir sample of at most ``sample_sentences`` sentences, and
worker processes tokenise chunks of lines while the parent writes their records in order.

The output is written into a hidden sibling directory and renamed into place only when
complete, ``manifest.json`` last, so an interrupted run never leaves a directory that looks
like a dataset. The manifest's ``key`` hashes the input files' contents and every option that
changes the output; preparing the same input again returns at once.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import itertools
import json
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from seqjax.data import shards
from seqjax.data.reader import (
    DataError,
    clean_line,
    empty_error,
    line_flags,
    mismatch_error,
    open_binary,
)
from seqjax.data.reservoir import reservoir_sample
from seqjax.data.tokenizer import Tokenizer, load_tokenizers, train_tokenizers

CHUNK_LINES = 4096
# Needed-position histogram edges (``max(src, tgt + 1)``, the bucketing length).
HIST_EDGES = [0, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024, 2**31 - 1]
Log = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class PrepareOptions:
    """Everything that changes a prepared dataset (all of it goes into the content key).

    ``tokenizer``: a directory holding an existing tokenizer (``spm.model`` or
    ``src.model`` + ``tgt.model``) to use instead of training one (e.g. for fine-tuning).
    ``sample_sentences``: the most sentences SentencePiece trains on (per model), drawn
    uniformly from the training pairs with ``seed``.
    """

    vocab_size: int = 8000
    joint_vocab: bool = True
    model_type: str = "bpe"
    seed: int = 0
    sample_sentences: int = 200_000
    pairs_per_shard: int = 1_000_000
    tokenizer: str | None = None

    def __post_init__(self) -> None:
        for name, low in [("vocab_size", 5), ("sample_sentences", 1), ("pairs_per_shard", 1)]:
            if getattr(self, name) < low:
                raise DataError(f"{name} must be at least {low}, got {getattr(self, name)}")
        if self.model_type not in ("bpe", "unigram", "char", "word"):
            raise DataError(f"model_type {self.model_type!r}: use bpe or unigram")


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A prepared directory; ``reused`` when an identical one was already there."""

    path: Path
    manifest: dict[str, Any]
    reused: bool


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, streamed."""
    with open_binary(Path(path)) as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _tokenizer_sha256(tok_dir: Path) -> str:
    h = hashlib.sha256()
    for tok in load_tokenizers(tok_dir):
        h.update(tok.to_bytes())
    return h.hexdigest()


def content_key(files: dict[str, str], options: PrepareOptions) -> str:
    """Hash of the input files' SHA-256s (``{role: sha}``) and the options: the cache key."""
    opts = dataclasses.asdict(options)
    if options.tokenizer is not None:
        opts["tokenizer"] = _tokenizer_sha256(Path(options.tokenizer))
    blob = json.dumps({"format": shards.FORMAT, "files": files, "options": opts}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


# ---------------------------------------------------------------- pass 1: scan and sample


@dataclasses.dataclass
class _Scan:
    lines: int = 0
    kept: int = 0
    blank: int = 0
    sample: list[tuple[int, Any]] = dataclasses.field(default_factory=list)


def _count_rest(f: Any, name: str, start: int, first: bytes | None) -> tuple[int, bool]:
    """Lines left in ``f`` after line ``start`` (``first`` already read), validating UTF-8;
    return ``(total lines, whether any of them has text)``."""
    if first is None:
        return start, False
    has_text = line_flags(first, name, start + 1)[0]
    n = start + 1
    for n, raw in enumerate(f, start + 2):
        has_text = has_text or line_flags(raw, name, n)[0]
    return n, has_text


def scan_parallel(src: Path, tgt: Path, sample_pairs: int, seed: int) -> _Scan:
    """Validate two aligned files (today's reader errors), count pairs, sample kept pairs.

    A pair is kept when neither side is blank after cleaning. ``sample`` is a reservoir of
    ``(position, (line_no, (src_raw, tgt_raw)))`` of kept pairs (none if ``sample_pairs`` is 0).
    """
    out = _Scan()
    has = [False, False]
    names = (str(src), str(tgt))
    left: list[bytes | None] = [None, None]  # the first line past the shorter file's end
    with open_binary(src) as fs, open_binary(tgt) as ft:

        def kept_pairs() -> Iterator[tuple[int, tuple[bytes, bytes]]]:
            for n, s in enumerate(fs, 1):
                t = next(ft, None)
                if t is None:
                    left[0] = s
                    return
                s_text, s_blank = line_flags(s, names[0], n)
                t_text, t_blank = line_flags(t, names[1], n)
                has[0], has[1] = has[0] or s_text, has[1] or t_text
                out.lines = n
                if s_blank or t_blank:
                    out.blank += 1
                    continue
                yield n, (s, t)
            left[1] = next(ft, None)

        if sample_pairs > 0:
            out.sample, out.kept = reservoir_sample(kept_pairs(), sample_pairs, seed)
        else:
            out.kept = sum(1 for _ in kept_pairs())
        n_src, more_src = _count_rest(fs, names[0], out.lines, left[0])
        n_tgt, more_tgt = _count_rest(ft, names[1], out.lines, left[1])
    for i, name in enumerate(names):
        if not (has[i] or (more_src, more_tgt)[i]):
            raise empty_error(name)
    if n_src != n_tgt:
        raise mismatch_error(src, n_src, tgt, n_tgt)
    return out


def _train_tokenizer(scan: _Scan, src: Path, tgt: Path, opts: PrepareOptions, out: Path) -> int:
    """Train SentencePiece on the scan's sample into ``out``; return the sentences used."""
    src_texts = [clean_line(s, str(src), n)[0] for _, (n, (s, _t)) in scan.sample]
    tgt_texts = [clean_line(t, str(tgt), n)[0] for _, (n, (_s, t)) in scan.sample]
    train_tokenizers(
        src_texts,
        tgt_texts,
        opts.vocab_size,
        out,
        joint=opts.joint_vocab,
        model_type=opts.model_type,
        seed=opts.seed,
        max_sentences=opts.sample_sentences,
    )
    return len(src_texts) + len(tgt_texts) if opts.joint_vocab else len(src_texts)


# ---------------------------------------------------------------- pass 2: tokenise and write

_worker_toks: tuple[Tokenizer, Tokenizer] | None = None


def _init_worker(src_proto: bytes, tgt_proto: bytes) -> None:
    global _worker_toks
    src_tok = Tokenizer.from_bytes(src_proto)
    _worker_toks = (src_tok, src_tok if tgt_proto == src_proto else Tokenizer.from_bytes(tgt_proto))


def _tokenize_chunk(
    names: tuple[str, str], first_line: int, src_raw: list[bytes], tgt_raw: list[bytes]
) -> tuple[list[bytes], np.ndarray, int, int]:
    """Clean, drop blank pairs, tokenise; return ``(records, lengths_Mx2, n_control, n_blank)``.

    Runs in a worker process (the tokenizers come from ``_init_worker``).
    """
    assert _worker_toks is not None
    src_txt, tgt_txt = [], []
    n_control = n_blank = 0
    for i, (s_raw, t_raw) in enumerate(zip(src_raw, tgt_raw, strict=True)):
        s, ns = clean_line(s_raw, names[0], first_line + i)
        t, nt = clean_line(t_raw, names[1], first_line + i)
        n_control += ns + nt
        if not (s.strip() and t.strip()):
            n_blank += 1
            continue
        src_txt.append(s)
        tgt_txt.append(t)
    src_ids, tgt_ids = _worker_toks[0].encode(src_txt), _worker_toks[1].encode(tgt_txt)
    records = [shards.encode_pair(s, t) for s, t in zip(src_ids, tgt_ids, strict=True)]
    lengths = np.asarray([(len(s), len(t)) for s, t in zip(src_ids, tgt_ids, strict=True)])
    return records, lengths.reshape(-1, 2).astype(np.int32), n_control, n_blank


def _chunks(
    src: Path, tgt: Path
) -> Iterator[tuple[tuple[str, str], int, list[bytes], list[bytes]]]:
    names = (str(src), str(tgt))
    with open_binary(src) as fs, open_binary(tgt) as ft:
        first = 1
        while True:
            s_raw = list(itertools.islice(fs, CHUNK_LINES))
            t_raw = list(itertools.islice(ft, len(s_raw)))
            if not s_raw:
                return
            yield names, first, s_raw, t_raw
            first += len(s_raw)


def _results(chunks: Iterator[tuple], workers: int, protos: tuple[bytes, bytes]) -> Iterator[tuple]:
    """``_tokenize_chunk`` over ``chunks`` in order; at most ``2 * workers`` chunks in flight."""
    if workers == 0:
        _init_worker(*protos)
        yield from (_tokenize_chunk(*c) for c in chunks)
        return
    # spawn: safe with threads in the parent (JAX, Grain) and the same on every OS. An
    # executor (not multiprocessing.Pool) so that a worker that dies raises instead of hanging.
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, ctx, initializer=_init_worker, initargs=protos) as pool:
        pending: collections.deque = collections.deque()
        for c in chunks:
            pending.append(pool.submit(_tokenize_chunk, *c))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _histogram(lengths_Nx2: np.ndarray) -> dict[str, Any]:
    needed = np.maximum(lengths_Nx2[:, 0], lengths_Nx2[:, 1] + 1) if len(lengths_Nx2) else []
    counts, _ = np.histogram(needed, bins=HIST_EDGES)
    return {"edges": HIST_EDGES, "needed_positions": counts.tolist()}


def write_split(
    src: Path,
    tgt: Path,
    split_dir: Path,
    scan: _Scan,
    toks: tuple[Tokenizer, Tokenizer],
    *,
    workers: int,
    pairs_per_shard: int,
    keep_text: bool = False,
) -> dict[str, Any]:
    """Tokenise the kept pairs of ``src``/``tgt`` into ``split_dir``; return its manifest entry."""
    split_dir.mkdir(parents=True)
    writer = shards.ShardWriter(split_dir, scan.kept, pairs_per_shard)
    lengths = np.lib.format.open_memmap(
        split_dir / shards.LENGTHS, mode="w+", dtype=np.int32, shape=(scan.kept, 2)
    )
    n_control = n_blank = 0
    protos = (toks[0].to_bytes(), toks[1].to_bytes())
    try:
        for records, lens, nc, nb in _results(_chunks(src, tgt), workers, protos):
            if writer.written + len(records) > scan.kept:
                raise DataError(f"{src} or {tgt} changed while being prepared; run it again")
            lengths[writer.written : writer.written + len(records)] = lens
            for r in records:
                writer.write(r)
            n_control, n_blank = n_control + nc, n_blank + nb
    finally:
        writer.close()
    if writer.written != scan.kept:
        raise DataError(f"{src} or {tgt} changed while being prepared; run it again")
    if keep_text:
        _write_text(src, tgt, split_dir)
    lengths.flush()
    return {
        "pairs": writer.written,
        "lines": scan.lines,
        "skipped": {"empty_side": n_blank},
        "control_chars_replaced": n_control,
        "shards": writer.names,
        "pairs_per_shard": writer.per_shard,
        "src_tokens": int(lengths[:, 0].sum(dtype=np.int64)),
        "tgt_tokens": int(lengths[:, 1].sum(dtype=np.int64)),
        "length_histogram": _histogram(lengths),
    }


def _write_text(src: Path, tgt: Path, split_dir: Path) -> None:
    """The cleaned text of the kept pairs (validation BLEU needs the references as text)."""
    with (
        open_binary(src) as fs,
        open_binary(tgt) as ft,
        (split_dir / "text.src").open("w", encoding="utf-8") as out_s,
        (split_dir / "text.tgt").open("w", encoding="utf-8") as out_t,
    ):
        for n, (s_raw, t_raw) in enumerate(zip(fs, ft, strict=True), 1):
            s, t = clean_line(s_raw, str(src), n)[0], clean_line(t_raw, str(tgt), n)[0]
            if s.strip() and t.strip():
                out_s.write(s + "\n")
                out_t.write(t + "\n")


# ---------------------------------------------------------------- the whole prepare


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (another user's counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True


def _remove_stale_temps(out: Path) -> None:
    """Delete temp dirs of prepares of ``out`` whose process is gone (killed mid-way)."""
    for tmp in out.parent.glob(f".{out.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _publish(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` to ``out``, replacing an older prepared dataset there."""
    if out.exists():
        if not (out / shards.MANIFEST).exists() and any(out.iterdir()):
            raise DataError(
                f"{out}: exists and is not a prepared dataset; give a new or empty --out"
            )
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


def _roles(
    src: str | Path, tgt: str | Path, valid_src: str | Path | None, valid_tgt: str | Path | None
) -> dict[str, str | Path]:
    roles: dict[str, str | Path] = {"src": src, "tgt": tgt}
    if valid_src is not None or valid_tgt is not None:
        if valid_src is None or valid_tgt is None:
            raise DataError("give both validation files (valid_src and valid_tgt) or neither")
        roles.update(valid_src=valid_src, valid_tgt=valid_tgt)
    return roles


def _manifest_with_key(out: Path, key: str) -> dict[str, Any] | None:
    if not (out / shards.MANIFEST).exists():
        return None
    try:
        manifest = shards.read_manifest(out)
    except DataError:
        return None
    return manifest if manifest.get("key") == key else None


def is_prepared(
    out: str | Path,
    src: str | Path,
    tgt: str | Path,
    *,
    valid_src: str | Path | None = None,
    valid_tgt: str | Path | None = None,
    options: PrepareOptions = PrepareOptions(),
) -> bool:
    """Whether ``out`` holds exactly what ``prepare`` with these arguments would write."""
    roles = _roles(src, tgt, valid_src, valid_tgt)
    key = content_key({r: file_sha256(p) for r, p in roles.items()}, options)
    return _manifest_with_key(Path(out), key) is not None


def auto_workers(n_pairs: int) -> int:
    """Tokenizer processes for ``n_pairs``: none below 50k pairs (start-up would dominate)."""
    return 0 if n_pairs < 50_000 else max(1, min(os.cpu_count() or 1, 16))


def prepare(
    src: str | Path,
    tgt: str | Path,
    out: str | Path,
    *,
    valid_src: str | Path | None = None,
    valid_tgt: str | Path | None = None,
    options: PrepareOptions = PrepareOptions(),
    workers: int | None = None,
    log: Log | None = None,
) -> Prepared:
    """Prepare ``src``/``tgt`` (and optional validation files) into the directory ``out``.

    Returns at once (``reused=True``) when ``out`` already holds the same input prepared with
    the same options. ``workers``: tokenizer processes (``None``: ``auto_workers``).
    """
    if workers is not None and workers < 0:
        raise DataError(f"workers must be >= 0 (0: tokenize in this process), got {workers}")
    log = log or (lambda msg: None)
    out = Path(out)
    roles = _roles(src, tgt, valid_src, valid_tgt)
    t0 = time.monotonic()
    sha = {role: file_sha256(path) for role, path in roles.items()}
    key = content_key(sha, options)
    manifest = _manifest_with_key(out, key)
    if manifest is not None:
        return Prepared(out, manifest, True)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        manifest = _prepare_into(tmp, roles, sha, key, options, workers, log)
        manifest["seconds"] = round(time.monotonic() - t0, 2)
        # The manifest is written last: a directory without it is never taken for a dataset.
        (tmp / shards.MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", "utf-8")
        _publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Prepared(out, manifest, False)


def _prepare_into(
    tmp: Path,
    roles: dict[str, str | Path],
    sha: dict[str, str],
    key: str,
    opts: PrepareOptions,
    workers: int | None,
    log: Log,
) -> dict[str, Any]:
    src, tgt = Path(roles["src"]), Path(roles["tgt"])
    t0 = time.monotonic()
    sample_pairs = opts.sample_sentences // 2 if opts.joint_vocab else opts.sample_sentences
    scan = scan_parallel(src, tgt, 0 if opts.tokenizer else sample_pairs, opts.seed)
    if scan.kept == 0:
        raise DataError(f"{src}: no pair with text on both sides; check the files")
    scan_s = time.monotonic() - t0
    t1 = time.monotonic()
    tok_dir = tmp / "tokenizer"
    if opts.tokenizer is not None:
        src_tok, tgt_tok = load_tokenizers(opts.tokenizer)
        tok_dir.mkdir()
        if src_tok is tgt_tok:
            src_tok.save(tok_dir / "spm.model")
        else:
            src_tok.save(tok_dir / "src.model")
            tgt_tok.save(tok_dir / "tgt.model")
        n_sample = 0
    else:
        n_sample = _train_tokenizer(scan, src, tgt, opts, tok_dir)
        log(
            f"trained {'joint ' if opts.joint_vocab else ''}SentencePiece "
            f"{opts.model_type.upper()} (vocab {opts.vocab_size}) on {n_sample} sentences in "
            f"{time.monotonic() - t1:.1f}s"
        )
    scan.sample = []  # free the sample before the workers start
    toks = load_tokenizers(tok_dir)
    n_workers = auto_workers(scan.kept) if workers is None else workers
    t2 = time.monotonic()
    splits = {
        "train": write_split(
            src, tgt, tmp / "train", scan, toks, workers=n_workers,
            pairs_per_shard=opts.pairs_per_shard,
        )
    }  # fmt: skip
    tokenize_s = time.monotonic() - t2
    log(
        f"read {scan.lines} lines in {scan_s:.1f}s; tokenised the {scan.kept} kept pairs with "
        f"{n_workers} worker process(es) in {tokenize_s:.1f}s"
    )
    if "valid_src" in roles:
        vs, vt = Path(roles["valid_src"]), Path(roles["valid_tgt"])
        v_scan = scan_parallel(vs, vt, 0, opts.seed)
        splits["valid"] = write_split(
            vs, vt, tmp / "valid", v_scan, toks, workers=0,
            pairs_per_shard=opts.pairs_per_shard, keep_text=True,
        )  # fmt: skip
    files = {
        role: {"path": str(Path(p).resolve()), "sha256": sha[role], "bytes": Path(p).stat().st_size}
        for role, p in roles.items()
    }
    return {
        "format": shards.FORMAT,
        "key": key,
        "complete": True,
        "files": files,
        "options": dataclasses.asdict(opts),
        "tokenizer": {
            "joint": toks[0] is toks[1],
            "vocab_size": toks[1].vocab_size,
            "sha256": _tokenizer_sha256(tok_dir),
            "sample_sentences": n_sample,
        },
        "splits": splits,
        "workers": n_workers,
        "tokenize_seconds": round(tokenize_s, 2),
    }
