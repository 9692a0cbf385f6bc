"""Tokenizers for imported HuggingFace checkpoints (same ``encode``/``decode`` as seqjax's).

- ``MarianSentencePiece``: a Marian directory's ``source.spm`` / ``target.spm`` +
  ``vocab.json`` (the vocabulary maps pieces to model ids, which are not the
  SentencePiece ids). Encoding appends ``</s>`` and keeps a leading ``>>xx<<``
  language code as one token, as ``MarianTokenizer`` does; it does not run Moses
  punctuation normalisation (``MarianTokenizer`` does when ``sacremoses`` is installed).
- ``IdTokenizer``: whitespace-separated token ids in and out, for checkpoints without a
  tokenizer seqjax can run (e.g. BART's byte-level BPE).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import sentencepiece as spm

from seqjax.config import ModelConfig
from seqjax.data import DataError

_SPIECE_UNDERLINE = "\u2581"


def _rows(ids: list[list[int]] | np.ndarray) -> list[list[int]]:
    if isinstance(ids, np.ndarray):
        if ids.ndim != 2:
            raise ValueError(f"decode expects ids of shape [B, T], got shape {ids.shape}")
        return ids.tolist()
    return [list(r) for r in ids]


def _until_eos(row: list[int], eos: int, skip: set[int]) -> list[int]:
    kept = []
    for i in row:
        i = int(i)
        if i == eos:
            break
        if i not in skip:
            kept.append(i)
    return kept


class IdTokenizer:
    """Token ids as text: ``"12 7 5 2"`` <-> ``[12, 7, 5, 2]``; decoding stops at EOS."""

    def __init__(self, cfg: ModelConfig) -> None:
        self.eos_id, self.pad_id, self.start_id = cfg.eos_id, cfg.pad_id, cfg.bos_id
        self.vocab_size = cfg.vocab_size

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Each line's whitespace-separated ids, as given (include the EOS id yourself)."""
        out = []
        for n, text in enumerate(texts, 1):
            try:
                ids = [int(t) for t in text.split()]
            except ValueError:
                raise DataError(
                    f"line {n}: this checkpoint has no tokenizer seqjax can run, so input "
                    "lines must be whitespace-separated token ids"
                ) from None
            bad = [i for i in ids if not 0 <= i < self.vocab_size]
            if bad:
                raise DataError(f"line {n}: token id {bad[0]} is outside [0, {self.vocab_size})")
            out.append(ids)
        return out

    def decode(self, ids: list[list[int]] | np.ndarray) -> list[str]:
        skip = {self.pad_id, self.start_id} - {self.eos_id}
        return [" ".join(map(str, _until_eos(r, self.eos_id, skip))) for r in _rows(ids)]


class MarianSentencePiece:
    """``MarianTokenizer``'s encode/decode on ``source.spm``, ``target.spm`` and ``vocab.json``."""

    def __init__(self, path: str | Path, cfg: ModelConfig) -> None:
        path = Path(path)
        self.source = self._spm(path / "source.spm")
        self.target = self._spm(path / "target.spm")
        self.vocab = self._vocab(path / "vocab.json")
        target_vocab = path / "target_vocab.json"
        decoder_vocab = self._vocab(target_vocab) if target_vocab.is_file() else self.vocab
        self.inverse = {i: p for p, i in decoder_vocab.items()}
        self.eos_id, self.pad_id, self.start_id = cfg.eos_id, cfg.pad_id, cfg.bos_id
        self.unk_id = self.vocab.get("<unk>", cfg.unk_id)
        self.special = {"</s>", "<unk>", "<pad>"}
        self.vocab_size = cfg.vocab_size

    @staticmethod
    def _spm(file: Path) -> spm.SentencePieceProcessor:
        try:
            return spm.SentencePieceProcessor(model_file=str(file))
        except (OSError, RuntimeError):
            raise DataError(f"{file}: not a readable SentencePiece model") from None

    @staticmethod
    def _vocab(file: Path) -> dict[str, int]:
        try:
            vocab = json.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"{file}: not found (Marian tokenizers need vocab.json)") from None
        except json.JSONDecodeError as e:
            raise DataError(f"{file}: line {e.lineno}: invalid JSON ({e.msg})") from None
        if not isinstance(vocab, dict):
            raise DataError(f"{file}: expected a JSON object mapping pieces to ids")
        return {str(k): int(v) for k, v in vocab.items()}

    def pieces(self, text: str) -> list[str]:
        """Source pieces of one text (a leading ``>>xx<<`` language code kept whole)."""
        code: list[str] = []
        if text.startswith(">>") and (end := text.find("<<")) != -1:
            code, text = [text[: end + 2]], text[end + 2 :]
        return code + self.source.encode(text, out_type=str)

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Model ids of each text, ``</s>`` appended (an empty text stays empty)."""
        out = []
        for text in texts:
            if not text.strip():
                out.append([])
                continue
            out.append([self.vocab.get(p, self.unk_id) for p in self.pieces(text)] + [self.eos_id])
        return out

    def decode(self, ids: list[list[int]] | np.ndarray) -> list[str]:
        """Texts from id rows: each row stops at EOS; special tokens are dropped."""
        skip = {self.pad_id, self.start_id} - {self.eos_id}
        texts = []
        for row in _rows(ids):
            pieces = [self.inverse.get(i, "<unk>") for i in _until_eos(row, self.eos_id, skip)]
            pieces = [p for p in pieces if p not in self.special]
            texts.append(self.target.decode_pieces(pieces).replace(_SPIECE_UNDERLINE, " ").strip())
        return texts


def load_hf_tokenizer(path: str | Path, cfg: ModelConfig) -> MarianSentencePiece | None:
    """The Marian SentencePiece adapter when the directory has its files, else None."""
    path = Path(path)
    if all((path / f).is_file() for f in ("source.spm", "target.spm", "vocab.json")):
        return MarianSentencePiece(path, cfg)
    return None
