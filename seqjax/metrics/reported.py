"""Reported corpus metrics through sacrebleu (detokenized text in, scores and signatures out)."""

from __future__ import annotations

import dataclasses

import sacrebleu


@dataclasses.dataclass(frozen=True)
class CorpusScores:
    bleu: float
    chrf: float
    bleu_signature: str
    chrf_signature: str

    def format(self) -> str:
        return (
            f"BLEU = {self.bleu:.2f}  ({self.bleu_signature})\n"
            f"chrF = {self.chrf:.2f}  ({self.chrf_signature})"
        )


def corpus_scores(hypotheses: list[str], references: list[str]) -> CorpusScores:
    """Corpus BLEU (13a tokenization) and chrF of detokenized hypotheses vs one reference."""
    if len(hypotheses) != len(references):
        raise ValueError(
            f"{len(hypotheses)} hypotheses but {len(references)} references; they must align"
        )
    bleu = sacrebleu.metrics.BLEU()
    chrf = sacrebleu.metrics.CHRF()
    b = bleu.corpus_score(hypotheses, [references])
    c = chrf.corpus_score(hypotheses, [references])
    return CorpusScores(b.score, c.score, str(bleu.get_signature()), str(chrf.get_signature()))
