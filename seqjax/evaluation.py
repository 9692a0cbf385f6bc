"""``seqjax evaluate``: translate a split or files and report sacrebleu BLEU and chrF."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from seqjax import checkpoint
from seqjax.config import DecodeConfig
from seqjax.data import DataError, load_bundled, read_parallel
from seqjax.inference import Translator, load
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
    run_dir: str | Path,
    cfg: DecodeConfig,
    *,
    split: str = "test",
    output: str | Path | None = None,
    samples: int = 0,
    results_file: str | Path | None = None,
    **load_options: Any,
) -> CorpusScores:
    """Score a run on a split of the corpus it was trained on (bundled, or its valid files).

    ``load_options`` go to ``seqjax.inference.load`` (``mesh``, ``dtype``).
    """
    _, train_cfg = checkpoint.read_run_config(run_dir)
    if train_cfg.src is not None:
        if split != "valid" or train_cfg.valid_src is None:
            raise DataError(
                f"{run_dir} was trained on user files; evaluate with --src FILE --ref FILE"
            )
        data = read_parallel(train_cfg.valid_src, train_cfg.valid_tgt)
    else:
        data = load_bundled(train_cfg.corpus, split)
    translator = load(str(run_dir), decode_config=cfg, **load_options)
    scores, seconds = score_translations(
        translator, data.src, data.tgt, cfg, output=output, samples=samples
    )
    print(
        f"{train_cfg.corpus if train_cfg.src is None else 'valid'} {split}: "
        f"{len(data.src)} sentences in {seconds:.1f}s\n{scores.format()}"
    )
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
    run_dir: str | Path,
    cfg: DecodeConfig,
    src: str,
    ref: str,
    *,
    output: str | Path | None = None,
    **load_options: Any,
) -> CorpusScores:
    """Score a run on a source file against a reference file (``load_options`` as above)."""
    data = read_parallel(src, ref)
    translator = load(str(run_dir), decode_config=cfg, **load_options)
    scores, seconds = score_translations(translator, data.src, data.tgt, cfg, output=output)
    print(f"{src}: {len(data.src)} sentences in {seconds:.1f}s\n{scores.format()}")
    return scores
