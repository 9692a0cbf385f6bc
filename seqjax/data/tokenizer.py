"""SentencePiece subword tokenizers with the fixed special ids seqjax models assume.

Ids: pad 0, unk 1, bos 2, eos 3 (as in ``ModelConfig``). Models are trained in memory (no
temporary files) with byte fallback, so any character decodes back to itself instead of
``unk``. Text is NFC-normalised by us and SentencePiece's own normaliser is the identity, so
``decode(encode(x)) == x`` for NFC text (up to runs of spaces, which are collapsed) and BLEU is
scored on the characters the user wrote, not on an NFKC rewrite of them.
"""

from __future__ import annotations

import io
import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import sentencepiece as spm

from seqjax.data.reader import DataError

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
JOINT_FILE, SRC_FILE, TGT_FILE = "spm.model", "src.model", "tgt.model"


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


class Tokenizer:
    """A SentencePiece model with ids pad 0, unk 1, bos 2, eos 3.

    Build with ``train_tokenizer``, ``Tokenizer.load(path)`` or ``Tokenizer.from_bytes(b)``.
    """

    pad_id = PAD_ID
    unk_id = UNK_ID
    bos_id = BOS_ID
    eos_id = EOS_ID

    def __init__(self, model_proto: bytes, name: str = "<bytes>") -> None:
        self._proto = bytes(model_proto)
        try:
            self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
        except (RuntimeError, OSError):
            raise DataError(f"{name}: not a valid SentencePiece model; retrain it") from None
        got = (self._sp.pad_id(), self._sp.unk_id(), self._sp.bos_id(), self._sp.eos_id())
        if got != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
            raise DataError(
                f"{name}: special ids (pad, unk, bos, eos) are {got}, seqjax needs (0, 1, 2, 3); "
                "retrain it with seqjax.data.train_tokenizer"
            )
        self.vocab_size: int = self._sp.get_piece_size()

    @classmethod
    def from_bytes(cls, model_proto: bytes) -> Tokenizer:
        """Tokenizer from a serialised SentencePiece model (e.g. stored in a checkpoint)."""
        return cls(model_proto)

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Tokenizer from a ``.model`` file."""
        path = Path(path)
        try:
            return cls(path.read_bytes(), str(path))
        except FileNotFoundError:
            raise DataError(f"{path}: tokenizer model not found; train one first") from None

    def to_bytes(self) -> bytes:
        """The serialised SentencePiece model."""
        return self._proto

    def save(self, path: str | Path) -> None:
        """Write the ``.model`` file (parent folders are created)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self._proto)

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, without BOS/EOS."""
        return self._sp.encode([_nfc(t) for t in texts], out_type=int)

    def decode(self, ids: list[list[int]] | np.ndarray) -> list[str]:
        """Texts from id rows (``ids_BxT``): each row stops at its first EOS; PAD/BOS skipped."""
        if isinstance(ids, np.ndarray):
            if ids.ndim != 2:
                raise ValueError(f"decode expects ids of shape [B, T], got shape {ids.shape}")
            ids = ids.tolist()
        rows = []
        for row in ids:
            kept = []
            for i in row:
                i = int(i)
                if i == EOS_ID:
                    break
                if i not in (PAD_ID, BOS_ID):
                    kept.append(i)
            rows.append(kept)
        return self._sp.decode(rows)

    def pieces(self, text: str) -> list[str]:
        """Subword pieces of one text (for inspection)."""
        return self._sp.encode(_nfc(text), out_type=str)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tokenizer) and self._proto == other._proto

    def __hash__(self) -> int:
        return hash(self._proto)

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size})"


def _sample(texts: list[str], max_sentences: int, seed: int) -> list[str]:
    """At most ``max_sentences`` texts, chosen reproducibly, in their original order."""
    if len(texts) <= max_sentences:
        return texts
    keep = np.sort(np.random.default_rng(seed).choice(len(texts), max_sentences, replace=False))
    return [texts[i] for i in keep]


def _training_error(e: RuntimeError, vocab_size: int) -> DataError:
    """Turn a SentencePiece trainer failure into a one-line message with a fix."""
    msg = str(e)
    too_high = re.search(r"value <= (\d+)", msg)
    if too_high:
        return DataError(
            f"vocab_size {vocab_size} is too large for this text; "
            f"use at most {too_high.group(1)} (or give more text)"
        )
    too_small = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", msg)
    if too_small:
        return DataError(
            f"vocab_size {vocab_size} cannot hold the {too_small.group(2)} required pieces "
            f"(specials, 256 bytes, every character); use a larger vocab_size, at least "
            f"{too_small.group(2)} (--vocab-size of seqjax train or prepare)"
        )
    first_line = msg.strip().splitlines()[0] if msg.strip() else "unknown error"
    return DataError(f"tokenizer training failed: {first_line}")


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    out_path: str | Path,
    *,
    model_type: str = "bpe",
    character_coverage: float = 1.0,
    seed: int = 0,
    max_sentences: int = 200_000,
) -> Tokenizer:
    """Train a SentencePiece model on ``texts`` and write it to ``out_path``.

    Deterministic for fixed input and ``seed``; trains in memory on 2 threads. At most
    ``max_sentences`` non-empty texts are used (a seeded sample when there are more).
    """
    lines = [t for t in (_nfc(t).strip() for t in texts) if t]
    if not lines:
        raise DataError("no non-empty text to train the tokenizer on; check the training files")
    lines = _sample(lines, max_sentences, seed)
    spm.set_random_generator_seed(seed)
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_writer=model,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            byte_fallback=True,
            normalization_rule_name="identity",  # we apply NFC ourselves; see module docstring
            input_sentence_size=0,  # use every line given; sampling was done above, seeded
            num_threads=2,
            minloglevel=2,  # silence the trainer's progress log
        )
    except RuntimeError as e:
        raise _training_error(e, vocab_size) from None
    tok = Tokenizer(model.getvalue())
    tok.save(out_path)
    return tok


def train_tokenizers(
    src_texts: Iterable[str],
    tgt_texts: Iterable[str],
    vocab_size: int,
    out_dir: str | Path,
    joint: bool = True,
    *,
    model_type: str = "bpe",
    seed: int = 0,
    max_sentences: int = 200_000,
) -> tuple[Tokenizer, Tokenizer]:
    """Train source and target tokenizers into ``out_dir``; return ``(src_tok, tgt_tok)``.

    ``joint=True`` (default) trains one model on both sides, written to ``out_dir/spm.model``
    and returned twice (shared embeddings need one vocabulary). ``joint=False`` writes
    ``src.model`` and ``tgt.model``. Model files of the other layout in ``out_dir`` are removed
    so ``load_tokenizers`` can never pick up a stale one. ``max_sentences`` bounds the lines
    each model trains on (see ``train_tokenizer``).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if joint:
        both = [*src_texts, *tgt_texts]
        tok = train_tokenizer(
            both,
            vocab_size,
            out_dir / JOINT_FILE,
            model_type=model_type,
            seed=seed,
            max_sentences=max_sentences,
        )
        for stale in (SRC_FILE, TGT_FILE):
            (out_dir / stale).unlink(missing_ok=True)
        return tok, tok
    kw = dict(model_type=model_type, seed=seed, max_sentences=max_sentences)
    src_tok = train_tokenizer(src_texts, vocab_size, out_dir / SRC_FILE, **kw)
    tgt_tok = train_tokenizer(tgt_texts, vocab_size, out_dir / TGT_FILE, **kw)
    (out_dir / JOINT_FILE).unlink(missing_ok=True)
    return src_tok, tgt_tok


def load_tokenizers(out_dir: str | Path) -> tuple[Tokenizer, Tokenizer]:
    """Load what ``train_tokenizers`` wrote: ``spm.model`` (joint) or ``src.model`` + ``tgt.model``.

    Returns ``(src_tok, tgt_tok)``; the same object twice for a joint model.
    """
    out_dir = Path(out_dir)
    if (out_dir / JOINT_FILE).is_file():
        tok = Tokenizer.load(out_dir / JOINT_FILE)
        return tok, tok
    if (out_dir / SRC_FILE).is_file() and (out_dir / TGT_FILE).is_file():
        return Tokenizer.load(out_dir / SRC_FILE), Tokenizer.load(out_dir / TGT_FILE)
    raise DataError(
        f"{out_dir}: no tokenizer found (expected {JOINT_FILE}, or {SRC_FILE} and {TGT_FILE}); "
        "train them with seqjax.data.train_tokenizers"
    )
