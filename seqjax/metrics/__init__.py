"""Metrics: sacrebleu-reported corpus BLEU/chrF."""

from seqjax.metrics.reported import CorpusScores, corpus_scores

__all__ = ["CorpusScores", "corpus_scores"]
