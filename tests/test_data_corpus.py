"""The bundled English-French Bible corpus ships inside the package and loads aligned."""

from importlib import resources

import pytest

from seqjax.data import DataError, bundled_meta, bundled_names, bundled_splits, load_bundled

EXPECTED = {"train": 28761, "valid": 1008, "test": 1028}


def test_names_and_splits() -> None:
    assert "bible_en_fr" in bundled_names()
    assert bundled_splits("bible_en_fr") == sorted(EXPECTED)


@pytest.mark.parametrize("split", sorted(EXPECTED))
def test_split_sizes_and_alignment(split: str) -> None:
    pt = load_bundled("bible_en_fr", split)
    assert len(pt.src) == len(pt.tgt) == EXPECTED[split]
    assert all(s.strip() and t.strip() for s, t in zip(pt.src, pt.tgt, strict=True))
    assert pt.n_control == 0
    assert pt.src_name == f"bible_en_fr/{split}.en"


def test_first_verse_is_genesis_1_1() -> None:
    pt = load_bundled()
    assert pt.src[0].startswith("In the beginning")
    assert pt.tgt[0] == "Au commencement, Dieu créa les cieux et la terre."


def test_meta_matches_split_sizes() -> None:
    meta = bundled_meta("bible_en_fr")
    assert {k: v["pairs"] for k, v in meta["splits"].items()} == EXPECTED
    assert meta["src"]["licence"] == meta["tgt"]["licence"] == "public domain"


def test_each_call_returns_fresh_lists() -> None:
    a = load_bundled(split="valid")
    a.src.clear()
    assert len(load_bundled(split="valid").src) == EXPECTED["valid"]


def test_provenance_is_shipped() -> None:
    text = (resources.files("seqjax.data") / "bundled" / "PROVENANCE.md").read_text()
    assert "World English Bible" in text and "Louis Segond" in text and "public domain" in text


def test_unknown_name_lists_choices() -> None:
    with pytest.raises(DataError, match="choose one of: .*bible_en_fr"):
        load_bundled("klingon_en_tlh")


def test_unknown_split_lists_choices() -> None:
    with pytest.raises(DataError, match="no split 'dev'; choose one of: test, train, valid"):
        load_bundled("bible_en_fr", "dev")


def test_write_bundled_gives_the_same_text(tmp_path) -> None:  # noqa: ANN001
    from seqjax.data import read_parallel, write_bundled

    src, tgt = write_bundled("bible_en_fr", "valid", tmp_path)
    assert (src.name, tgt.name) == ("valid.en", "valid.fr")
    pt, ref = read_parallel(src, tgt), load_bundled("bible_en_fr", "valid")
    assert (pt.src, pt.tgt) == (ref.src, ref.tgt)
    before = src.stat().st_mtime_ns
    write_bundled("bible_en_fr", "valid", tmp_path)
    assert src.stat().st_mtime_ns == before  # unchanged files are not rewritten
