"""seqjax: compiled sequence generation in JAX/Flax.

Two lines to translate with a trained run directory::

    import seqjax
    seqjax.load("runs/default").translate(["In the beginning God created the heavens."])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from seqjax.app.translate import Translator


def load(path: str, **kwargs: Any) -> Translator:
    """Restore a run directory written by ``seqjax train`` as a ``Translator``.

    Keyword arguments go to ``seqjax.app.translate.load`` (``decode_config``, ``which``).
    """
    from seqjax.app.translate import load as _load

    return _load(path, **kwargs)


__all__ = ["__version__", "load"]
