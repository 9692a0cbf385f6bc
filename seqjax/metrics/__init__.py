"""Metrics: sacrebleu-reported corpus BLEU/chrF and jittable sentence BLEU on token ids."""

from seqjax.metrics.bleu import sentence_bleu
from seqjax.metrics.reported import CorpusScores, corpus_scores

__all__ = ["CorpusScores", "corpus_scores", "sentence_bleu"]
