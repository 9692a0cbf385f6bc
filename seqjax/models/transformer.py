"""Transformer encoder-decoder (Vaswani et al. 2017) as functional Flax linen.

The Flax module ``TransformerNet`` (``seqjax.models.transformer_net``) holds the layers;
``Transformer`` wraps it in the pure functions every decoder relies on (see DESIGN.md,
"The model interface") and imports it only when a function traces it::

    model = Transformer(model_preset("tiny"))
    params = model.init(jax.random.key(0))
    memory_BxSxD = model.encode(params, src_BxS, src_mask_BxS)
    cache = model.init_cache(params, memory_BxSxD, src_mask_BxS, max_len=T)
    logits_BxV, cache, cross_attn_BxS = model.decode_step(params, cache, token_B, position)
    logits_BxTxV = model.forward(params, src_BxS, src_mask_BxS, tgt_in_BxT)

The Flax modules do teacher forcing (``forward``, ``encode``) and project the memory
for the cache (``init_cache``). Incremental decoding (``decode_step`` / ``step_fn``)
runs one position at a time in ``transformer_step`` on the same parameters, laid out
once as 2-D matrices; the cache layout is described there. Both share
``transformer_ops`` (positions, embedding, pre/post-LN residual, attention,
activations), and tests pin the step against ``forward``.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from seqjax.models import transformer_step
from seqjax.models.interface import Cache, EncoderDecoder, ImportedOnUse, Params, moved_names
from seqjax.models.transformer_ops import (
    activation_fn,
    attention,
    fixed_position_table,
    layer_norm,
    marian_sinusoid_table,
    sinusoid_table,
)

# Re-exported: the position tables and helpers used to live here.
__all__ = [
    "Transformer",
    "activation_fn",
    "attention",
    "count_params",
    "fixed_position_table",
    "layer_norm",
    "marian_sinusoid_table",
    "sinusoid_table",
]


@dataclasses.dataclass(frozen=True)
class Transformer(EncoderDecoder):
    """The Transformer on the shared interface; ``decode_step`` runs ``transformer_step``."""

    takes_int8 = True  # Dense/Embed/projections handle QuantizedArray kernels

    net_class = ImportedOnUse(
        "seqjax.models.transformer_net:TransformerNet"
    )  # Flax: imported when traced

    def decode_step(
        self, params: Params, cache: Cache, token_B: jax.Array, position: jax.Array
    ) -> tuple[jax.Array, Cache, jax.Array]:
        """One target position: ``(logits [B, V], new cache, cross-attention [B, S])``."""
        weights = transformer_step.step_weights(self.config, params)
        return transformer_step.decode_step(self.config, weights, cache, token_B, position)

    def step_params(self, params: Params) -> Params:
        """Decode-layout weights (``transformer_step.step_weights``): made once per
        decoder call, outside the loop (``model.step.prepare`` / ``step_fn``)."""
        return transformer_step.step_weights(self.config, params)

    def cache_capacity(self, cache: Cache) -> int | None:
        layers = cache["layers"]
        return layers[0]["k"].shape[2] if layers else None

    def max_decode_len(self) -> int | None:
        return self.config.max_len  # rows of the position table

    def resize_cache(self, cache: Cache, length: int) -> Cache:
        """The self-attention cache cut or padded to ``length`` positions (decoding in
        phases, ``seqjax.decoding.phases``; layout in ``transformer_step``)."""
        return transformer_step.resize_cache(cache, length)

    def expand_cache(self, cache: Cache, times: int) -> Cache:
        """``times`` beams per source: the self-attention keys/values repeated, the
        memory's keys/values and mask kept at one row per source (``transformer_step``)."""
        return transformer_step.expand_cache(cache, times)

    def prepared_step(
        self, weights: Params, cache: Cache, token_B: jax.Array, position: jax.Array
    ) -> tuple[jax.Array, Cache, jax.Array]:
        return transformer_step.decode_step(self.config, weights, cache, token_B, position)

    def prepared_prefill(
        self, weights: Params, cache: Cache, tokens_BxP: jax.Array
    ) -> tuple[jax.Array, Cache]:
        """A prompt's positions in one forward pass (``transformer_step.prefill``)."""
        return transformer_step.prefill(self.config, weights, cache, tokens_BxP)


def count_params(params: Params) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


_MOVED = (
    "TransformerNet",
    "MultiHeadProjection",
    "OutputProjection",
    "FeedForward",
    "EncoderLayer",
    "DecoderLayer",
    "Dense",
    "Embed",
)  # Flax layers, now in seqjax.models.transformer_net


# Old imports of the layers from here still work, without importing Flax up front.
__getattr__ = moved_names(__name__, "seqjax.models.transformer_net", _MOVED)
