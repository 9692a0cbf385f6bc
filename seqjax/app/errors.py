"""Errors the command line turns into a one-line message, kept apart from heavy modules.

``seqjax.app.cli`` catches them for every command; defining them here (not in
``seqjax.app.train``) lets it do so without importing the training code (optax, grain),
which ``translate``'s start-up never needs.
"""

from __future__ import annotations


class TrainingDiverged(RuntimeError):
    """Too many consecutive non-finite steps; the last good checkpoint is left as it was."""


__all__ = ["TrainingDiverged"]
