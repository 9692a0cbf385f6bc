"""``seqjax evaluate``: translate a split or files and report sacrebleu BLEU and chrF."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from seqjax.app import run_dir
from seqjax.app.translate import Translator, load, pharaoh
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
    alignments: str | Path | None = None,
) -> tuple[CorpusScores, float]:
    """Translate ``sources``, score against ``references``; returns (scores, seconds).

    ``alignments``: also write each translation's hard alignment there, one Pharaoh line
    per source line (``Translator.translate_aligned``).
    """
    t0 = time.monotonic()
    if alignments:
        nbest, aligned = translator.translate_aligned(sources, cfg, progress=True)
        hyps = [n[0][0] for n in nbest]
    else:
        hyps = translator.translate(sources, cfg, progress=True)
    seconds = time.monotonic() - t0
    if output:
        Path(output).write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
    if alignments:
        text = "".join(pharaoh(a[0]) + "\n" for a in aligned)
        Path(alignments).write_text(text, encoding="utf-8")
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
    alignments: str | Path | None = None,
    **load_options: Any,
) -> CorpusScores:
    """Score a run on a split of the corpus it was trained on (bundled, or its valid files).

    ``load_options`` go to ``seqjax.app.translate.load`` (``mesh``, ``dtype``);
    ``alignments`` as in ``score_translations``.
    """
    corpus, data = run_dir.evaluation_split(run, split)
    translator = load(str(run), decode_config=cfg, **load_options)
    scores, seconds = score_translations(
        translator, data.src, data.tgt, cfg, output=output, samples=samples, alignments=alignments
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
    alignments: str | Path | None = None,
    **load_options: Any,
) -> CorpusScores:
    """Score a run on a source file against a reference file (``load_options`` and
    ``alignments`` as above)."""
    data = read_parallel(src, ref)
    translator = load(str(run), decode_config=cfg, **load_options)
    scores, seconds = score_translations(
        translator, data.src, data.tgt, cfg, output=output, alignments=alignments
    )
    print(f"{src}: {len(data.src)} sentences in {seconds:.1f}s\n{scores.format()}")
    return scores
