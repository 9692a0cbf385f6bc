"""experiments/significance.py against sacrebleu's own paired bootstrap (--paired-bs)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from sacrebleu.metrics import BLEU, CHRF
from sacrebleu.significance import PairedTest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
from significance import paired_bootstrap  # noqa: E402

REFS = [
    "the cat sat on the mat",
    "a dog ran across the road quickly",
    "it is raining again today",
    "we will go home after the game",
    "she reads a book every night",
    "the children played in the garden",
    "he bought bread and milk",
    "they arrived late at the station",
]
BASE = [
    "the cat sat on mat",
    "a dog ran across road",
    "it rains today",
    "we go home after game",
    "she reads book every night",
    "children played in garden",
    "he bought bread",
    "they arrived at the station",
]
SYS = [
    "the cat sat on the mat",
    "a dog ran the road quickly",
    "it is raining today",
    "we will go home after game",
    "she reads a book at night",
    "the children played in garden",
    "he bought bread and milk",
    "they came late to station",
]


def _sacrebleu(n: int) -> dict[str, object]:
    test = PairedTest(
        [("base", BASE), ("sys", SYS)],
        {"BLEU": BLEU(), "chrF": CHRF()},
        references=[REFS],
        test_type="bs",
        n_samples=n,
    )
    _, scores = test()
    return {"bleu": scores["BLEU"][1], "chrf": scores["chrF2"][1]}


@pytest.mark.parametrize("n", [50, 1000])
def test_matches_sacrebleu_paired_bs(n, monkeypatch):
    monkeypatch.delenv("SACREBLEU_SEED", raising=False)
    ours = paired_bootstrap(SYS, BASE, REFS, n_samples=n)
    theirs = _sacrebleu(n)
    for m in ("bleu", "chrf"):
        assert ours[m]["system"] == pytest.approx(theirs[m].score, abs=1e-9)
        assert ours[m]["p"] == pytest.approx(theirs[m].p_value, abs=1e-12)
        assert ours[m]["sys_mean"] == pytest.approx(theirs[m].mean, abs=1e-9)
        assert ours[m]["sys_ci"] == pytest.approx(theirs[m].ci, abs=1e-9)


def test_delta_interval_brackets_the_difference_and_self_is_null():
    r = paired_bootstrap(SYS, BASE, REFS, n_samples=300)
    for m in ("bleu", "chrf"):
        assert r[m]["delta"] == pytest.approx(r[m]["system"] - r[m]["baseline"])
        assert r[m]["delta_lo"] <= r[m]["delta"] <= r[m]["delta_hi"]
    same = paired_bootstrap(BASE, BASE, REFS, n_samples=300)
    for m in ("bleu", "chrf"):
        assert same[m]["delta"] == 0 and same[m]["delta_lo"] == same[m]["delta_hi"] == 0
        assert same[m]["p"] == pytest.approx(1 / 301)  # no centred diff is > 0: (0 + 1)/(n + 1)


def test_delta_interval_is_percentiles_of_resampled_differences():
    # brute force: resample with the same generator, score each resample with sacrebleu itself
    r = paired_bootstrap(SYS, BASE, REFS, n_samples=40, seed=7)
    idx = np.random.default_rng(7).choice(len(REFS), size=(40, len(REFS)), replace=True)
    diffs = sorted(
        BLEU().corpus_score([SYS[i] for i in row], [[REFS[i] for i in row]]).score
        - BLEU().corpus_score([BASE[i] for i in row], [[REFS[i] for i in row]]).score
        for row in idx
    )
    assert r["bleu"]["delta_lo"] == pytest.approx(diffs[1], abs=1e-6)
    assert r["bleu"]["delta_hi"] == pytest.approx(diffs[-2], abs=1e-6)


def test_lengths_must_match():
    with pytest.raises(ValueError, match="same number of segments"):
        paired_bootstrap(SYS[:3], BASE, REFS)
