"""``seqjax evaluate``: translate a split or files and report sacrebleu BLEU and chrF."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from seqjax.app import run_dir
from seqjax.app.translate import Translator, load
from seqjax.config import DecodeConfig
from seqjax.data import read_parallel
from seqjax.metrics import CorpusScores, corpus_scores


def score_translations(
    translator: Translator,
    sources: list[str],
    references: list[str],
    cfg: DecodeConfig,
    *,
    output: str | Path | None = None,
    samples: int = 0,
) -> tuple[CorpusScores, float]:
    """Translate ``sources``, score against ``references``; returns (scores, seconds)."""
    t0 = time.monotonic()
    hyps = translator.translate(sources, cfg, progress=True)
    seconds = time.monotonic() - t0
    if output:
        Path(output).write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
    scores = corpus_scores(hyps, references)
    for i in range(min(samples, len(sources))):
        print(f"  src: {sources[i]}\n  ref: {references[i]}\n  hyp: {hyps[i]}\n")
    return scores, seconds


def evaluate_split(
    run: str | Path,
    cfg: DecodeConfig,
    *,
    split: str = "test",
    output: str | Path | None = None,
    samples: int = 0,
    results_file: str | Path | None = None,
    **load_options: Any,
) -> CorpusScores:
    """Score a run on a split of the corpus it was trained on (bundled, or its valid files).

    ``load_options`` go to ``seqjax.app.translate.load`` (``mesh``, ``dtype``).
    """
    corpus, data = run_dir.evaluation_split(run, split)
    translator = load(str(run), decode_config=cfg, **load_options)
    scores, seconds = score_translations(
        translator, data.src, data.tgt, cfg, output=output, samples=samples
    )
    print(f"{corpus} {split}: {len(data.src)} sentences in {seconds:.1f}s\n{scores.format()}")
    if results_file:
        Path(results_file).write_text(
            json.dumps(
                {
                    "split": split,
                    "sentences": len(data.src),
                    "bleu": scores.bleu,
                    "chrf": scores.chrf,
                    "bleu_signature": scores.bleu_signature,
                    "decode_seconds": seconds,
                    "decode": cfg.__dict__,
                },
                indent=2,
            )
            + "\n"
        )
    return scores


def evaluate_files(
    run: str | Path,
    cfg: DecodeConfig,
    src: str,
    ref: str,
    *,
    output: str | Path | None = None,
    **load_options: Any,
) -> CorpusScores:
    """Score a run on a source file against a reference file (``load_options`` as above)."""
    data = read_parallel(src, ref)
    translator = load(str(run), decode_config=cfg, **load_options)
    scores, seconds = score_translations(translator, data.src, data.tgt, cfg, output=output)
    print(f"{src}: {len(data.src)} sentences in {seconds:.1f}s\n{scores.format()}")
    return scores
