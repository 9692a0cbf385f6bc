"""Paired bootstrap resampling (Koehn 2004) of a system against a baseline, as sacrebleu does it.

``paired_bootstrap`` draws the same resampled test sets as ``sacrebleu --paired-bs``
(``sacrebleu.significance.PairedTest`` with ``test_type="bs"``): ``numpy.random.default_rng(seed)``
choosing ``n_samples x N`` sentence indices once, shared by both systems and every metric, and
corpus scores recomputed from sacrebleu's own per-sentence sufficient statistics. Its p-value
and the system's mean and 95% half-width are sacrebleu's, to the last digit
(tests/test_significance.py checks this); it adds the 95% interval of the *difference*
system - baseline over the same resamples, which sacrebleu does not print.

p-value (sacrebleu's, after multeval): the resampled absolute differences are centred on their
mean (the null: no difference) and ``p = (#{centred > |observed difference|} + 1) / (n + 1)``.

    >>> refs = ["the cat sat on the mat", "a dog ran", "it is raining today"]
    >>> r = paired_bootstrap(refs, ["the cat sat", "a dog", "it rains"], refs, n_samples=50)
    >>> r["bleu"]["delta"] > 0 and 0 < r["bleu"]["p"] <= 1
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import sacrebleu
from sacrebleu.metrics.base import Metric

SACREBLEU_SEED = 12345  # sacrebleu's default (SACREBLEU_SEED unset)


def _metrics() -> dict[str, Metric]:
    return {"bleu": sacrebleu.metrics.BLEU(), "chrf": sacrebleu.metrics.CHRF()}


def _resampled(metric: Metric, stats: np.ndarray, idxs: np.ndarray) -> np.ndarray:
    return np.array([metric._compute_score_from_stats(s.sum(0)).score for s in stats[idxs]])


def _ci(scores: np.ndarray) -> tuple[float, float]:
    """The 2.5th and 97.5th percentiles as sacrebleu's ``estimate_ci`` picks them."""
    s = np.sort(scores)
    lo = len(s) // 40
    return float(s[lo]), float(s[len(s) - lo - 1])


def paired_bootstrap(
    system: Sequence[str],
    baseline: Sequence[str],
    references: Sequence[str],
    *,
    n_samples: int = 1000,
    seed: int = SACREBLEU_SEED,
) -> dict[str, dict[str, Any]]:
    """Per metric (``bleu``, ``chrf``): scores, difference, its 95% CI and the p-value.

    Returns ``{metric: {"system", "baseline", "delta", "delta_lo", "delta_hi", "p",
    "sys_mean", "sys_ci"}}``; ``sys_mean +- sys_ci`` is what sacrebleu prints as
    ``(mu +- 95% CI)`` for the system; ``delta_lo/hi`` bound ``system - baseline``.
    """
    if not (len(system) == len(baseline) == len(references)):
        raise ValueError(
            f"system ({len(system)}), baseline ({len(baseline)}) and references "
            f"({len(references)}) must have the same number of segments"
        )
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    idxs = np.random.default_rng(seed).choice(
        len(system), size=(n_samples, len(system)), replace=True
    )
    out: dict[str, dict[str, Any]] = {}
    for name, metric in _metrics().items():
        refs = [list(references)]
        sys_stats = metric._extract_corpus_statistics(list(system), refs)
        bl_stats = metric._extract_corpus_statistics(list(baseline), refs)
        sys_score = metric._aggregate_and_compute(sys_stats).score
        bl_score = metric._aggregate_and_compute(bl_stats).score
        sys_np = np.array(sys_stats, dtype="float32")
        bl_np = np.array(bl_stats, dtype="float32")
        s_sys = _resampled(metric, sys_np, idxs)
        s_bl = _resampled(metric, bl_np, idxs)
        absdiff = np.abs(s_sys - s_bl)
        centred = absdiff - absdiff.mean()
        p = (np.sum(centred > abs(bl_score - sys_score)).item() + 1) / (n_samples + 1)
        lo, hi = _ci(s_sys - s_bl)
        slo, shi = _ci(s_sys)
        out[name] = {
            "system": sys_score,
            "baseline": bl_score,
            "delta": sys_score - bl_score,
            "delta_lo": lo,
            "delta_hi": hi,
            "p": p,
            "sys_mean": float(np.sort(s_sys).mean()),  # sacrebleu sums the sorted scores
            "sys_ci": 0.5 * (shi - slo),
        }
    return out
