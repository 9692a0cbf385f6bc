"""The Flax module base a model family's layers subclass (``EncoderDecoder.net_class``).

Kept apart from ``seqjax.models.interface`` so that the pure-function interface imports
without Flax (see there).
"""

from __future__ import annotations

import flax.linen as nn
import jax


class EncoderDecoderNet(nn.Module):
    """Base of a family's Flax module: ``forward`` is ``decode(encode(src), tgt_in)``.

    Subclasses define ``encode(src, mask, deterministic)`` and
    ``decode(memory, mask, tgt_in, deterministic)``; ``__call__`` is ``forward`` (for init).
    """

    def forward(
        self,
        src_BxS: jax.Array,
        src_mask_BxS: jax.Array,
        tgt_in_BxT: jax.Array,
        deterministic: bool = True,
    ) -> jax.Array:
        """Teacher-forced logits ``[B, T, V]``."""
        memory = self.encode(src_BxS, src_mask_BxS, deterministic)
        return self.decode(memory, src_mask_BxS, tgt_in_BxT, deterministic)

    def __call__(self, src_BxS, src_mask_BxS, tgt_in_BxT, deterministic: bool = True):
        return self.forward(src_BxS, src_mask_BxS, tgt_in_BxT, deterministic)
