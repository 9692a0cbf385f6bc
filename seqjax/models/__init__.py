"""Model families behind one interface: ``encode``, ``init_cache``, ``decode_step``, ``forward``."""

from __future__ import annotations

from typing import Any

from seqjax.config import ModelConfig
from seqjax.models.rnn import RNN
from seqjax.models.transformer import Transformer


def build_model(config: ModelConfig) -> Any:
    """The model object for ``config.family`` (pure functions over an explicit params pytree)."""
    if config.family == "transformer":
        return Transformer(config)
    if config.family == "rnn":
        return RNN(config)
    raise NotImplementedError(f"model family {config.family!r} is not available yet")


__all__ = ["RNN", "Transformer", "build_model"]
