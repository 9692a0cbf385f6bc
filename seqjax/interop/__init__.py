"""Interoperability with other toolkits' checkpoints (``seqjax.interop.hf``: HuggingFace)."""
