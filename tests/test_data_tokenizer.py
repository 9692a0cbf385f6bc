"""SentencePiece tokenizers: fixed special ids, exact round trips, save/load, determinism."""

import io
import re
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from seqjax.data import (
    DataError,
    Tokenizer,
    load_bundled,
    load_tokenizers,
    make_batch,
    tokenize_pairs,
    train_tokenizer,
    train_tokenizers,
)

VOCAB = 500  # 4 specials + 256 bytes + ~80 characters + merges; trains in well under a second


@pytest.fixture(scope="module")
def corpus() -> tuple[list[str], list[str]]:
    pt = load_bundled("bible_en_fr", "train")
    return pt.src[:300], pt.tgt[:300]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory, corpus: tuple[list[str], list[str]]) -> Path:
    out = tmp_path_factory.mktemp("tok")
    train_tokenizers(*corpus, VOCAB, out)
    return out


@pytest.fixture(scope="module")
def tok(tok_dir: Path) -> Tokenizer:
    return load_tokenizers(tok_dir)[0]


SAMPLES = [
    "Au commencement, Dieu créa les cieux et la terre.",
    "L'Éternel dit à Moïse: « Lève-toi! » — Où es-tu? Ça coûte 12,50 €; naïf, cœur, façade.",
    "In the beginning, God created the heavens and the earth.",
    "Unseen characters still round-trip: 日本語, Ωμέγα, emoji 🙂, tab-free (a) [b] {c} #5.",
]


def test_special_ids_fixed(tok: Tokenizer) -> None:
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)
    assert tok.vocab_size == VOCAB


def test_joint_layout_and_same_object(tok_dir: Path) -> None:
    assert sorted(p.name for p in tok_dir.iterdir()) == ["spm.model"]
    src_tok, tgt_tok = load_tokenizers(tok_dir)
    assert src_tok is tgt_tok


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip(tok: Tokenizer, text: str) -> None:
    ids = tok.encode([text])
    assert tok.decode(ids) == [text]


def test_round_trip_training_text(tok: Tokenizer, corpus: tuple[list[str], list[str]]) -> None:
    texts = corpus[0][:50] + corpus[1][:50]
    assert tok.decode(tok.encode(texts)) == texts


def test_ids_in_range_and_no_specials(tok: Tokenizer) -> None:
    ids = tok.encode(SAMPLES)
    flat = [i for row in ids for i in row]
    assert min(flat) > tok.eos_id and max(flat) < tok.vocab_size  # byte fallback: never unk


def test_decode_stops_at_eos_and_skips_pad_bos(tok: Tokenizer) -> None:
    a, b = tok.encode(["Dieu dit.", "La terre."])
    rows = np.zeros((2, 20), dtype=np.int32)
    rows[0, 0] = tok.bos_id
    rows[0, 1 : 1 + len(a)] = a
    rows[0, 1 + len(a)] = tok.eos_id
    rows[0, 2 + len(a) : 2 + 2 * len(a)] = a  # after EOS: ignored
    rows[1, : len(b)] = b  # no EOS: runs into padding
    assert tok.decode(rows) == ["Dieu dit.", "La terre."]
    assert tok.decode([[tok.bos_id, *a, tok.eos_id, *b]]) == ["Dieu dit."]


def test_decode_rejects_1d_array(tok: Tokenizer) -> None:
    with pytest.raises(ValueError, match="shape"):
        tok.decode(np.array([4, 5, 6]))


def test_save_load_and_bytes_identical(tok: Tokenizer, tmp_path: Path) -> None:
    tok.save(tmp_path / "x" / "copy.model")
    again = Tokenizer.load(tmp_path / "x" / "copy.model")
    from_bytes = Tokenizer.from_bytes(tok.to_bytes())
    assert again == tok == from_bytes
    assert again.encode(SAMPLES) == tok.encode(SAMPLES) == from_bytes.encode(SAMPLES)


def test_training_is_deterministic(
    tmp_path: Path, corpus: tuple[list[str], list[str]], tok: Tokenizer
) -> None:
    again = train_tokenizer(corpus[0] + corpus[1], VOCAB, tmp_path / "again.model")
    assert again.to_bytes() == tok.to_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.model"]  # no temp files


def test_separate_vocabularies(tmp_path: Path, corpus: tuple[list[str], list[str]]) -> None:
    (tmp_path / "spm.model").write_bytes(b"stale")  # replaced layout must not shadow the new one
    src_tok, tgt_tok = train_tokenizers(*corpus, 400, tmp_path, joint=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.model", "tgt.model"]
    loaded_src, loaded_tgt = load_tokenizers(tmp_path)
    assert loaded_src == src_tok and loaded_tgt == tgt_tok and src_tok != tgt_tok
    assert loaded_tgt.decode(loaded_tgt.encode(corpus[1][:5])) == corpus[1][:5]


def test_vocab_too_large_is_one_line_with_suggestion(
    tmp_path: Path, corpus: tuple[list[str], list[str]]
) -> None:
    with pytest.raises(DataError, match=r"vocab_size 100000 is too large.*use at most \d+") as e:
        train_tokenizer(corpus[0][:50], 100_000, tmp_path / "big.model")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "big.model").exists()


def test_vocab_too_small_is_reported(tmp_path: Path, corpus: tuple[list[str], list[str]]) -> None:
    with pytest.raises(DataError, match=r"use a larger vocab_size, at least (\d+)") as e:
        train_tokenizer(corpus[0][:50], 100, tmp_path / "small.model")
    # the size the message names is enough
    least = int(re.search(r"at least (\d+)", str(e.value)).group(1))
    train_tokenizer(corpus[0][:50], least, tmp_path / "least.model")
    assert (tmp_path / "least.model").exists()


def test_no_text_and_missing_model(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no non-empty text"):
        train_tokenizer(["", "  "], 300, tmp_path / "x.model")
    with pytest.raises(DataError, match="no tokenizer found"):
        load_tokenizers(tmp_path)
    with pytest.raises(DataError, match="not found"):
        Tokenizer.load(tmp_path / "missing.model")


def test_rejects_garbage_and_foreign_special_ids(
    tmp_path: Path, corpus: tuple[list[str], list[str]]
) -> None:
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(DataError, match="bad.model: not a valid SentencePiece model"):
        Tokenizer.load(bad)
    model = io.BytesIO()  # SentencePiece defaults: unk 0, bos 1, eos 2, no pad
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus[0][:50]), model_writer=model, vocab_size=100, minloglevel=2
    )
    with pytest.raises(DataError, match=r"special ids .* are \(-1, 0, 1, 2\)"):
        Tokenizer.from_bytes(model.getvalue())


def test_batch_decodes_back_to_text(tok: Tokenizer) -> None:
    pt = load_bundled("bible_en_fr", "valid")
    pairs = tokenize_pairs(pt, tok, tok)
    batch = make_batch(pairs, [0, 1, 2], length=128, rows=4)
    assert tok.decode(batch["tgt_out"])[:3] == pt.tgt[:3]
    assert tok.decode(batch["tgt_in"])[:3] == pt.tgt[:3]
    assert tok.decode(batch["src"])[:3] == pt.src[:3]
