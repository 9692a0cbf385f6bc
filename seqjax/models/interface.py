"""The pure-function model interface shared by every family (see DESIGN.md).

A family subclasses ``EncoderDecoder`` and names its Flax module class in ``net_class``
(the class, or ``ImportedOnUse("module:Name")``); the module (an ``EncoderDecoderNet``,
``seqjax.models.net``) provides ``encode``, ``decode`` and ``init_cache``, and
``decode_step`` unless the family overrides ``EncoderDecoder.decode_step`` (the
Transformer's step lives in ``transformer_step``); ``forward`` comes from the base. The
wrapper is a frozen (hashable) dataclass so it can be a static ``jax.jit`` argument.

This module, the families' wrappers (``Transformer``, ``RNN``) and the step functions do
not import Flax: a process that only runs a program it finds compiled on disk (a warm
``seqjax translate``) never traces the model, and importing ``flax.linen`` costs ~0.2 s
of its ~1.6 s start-up (issue 19). The built-in families name theirs with
``ImportedOnUse``, so the module is imported when ``net_class`` is first read.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from seqjax.config import ModelConfig
from seqjax.models.quantize import dequantize

Params = Any
Cache = dict[str, Any]


class ImportedOnUse:
    """A class attribute naming a class as ``"module:Name"``, imported when first read.

    >>> class Holder:
    ...     cls = ImportedOnUse("collections:OrderedDict")
    >>> Holder.cls.__name__
    'OrderedDict'
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        module, _, name = self.path.partition(":")
        return getattr(importlib.import_module(module), name)


def moved_names(old: str, new: str, names: tuple[str, ...]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``old`` that finds ``names`` in module ``new`` on use.

    Old import paths of names that moved keep working without importing ``new`` up
    front (the families' Flax layers moved out so a warm start imports no Flax).

    >>> __getattr__ = moved_names("mine", "collections", ("OrderedDict",))
    >>> __getattr__("OrderedDict").__name__
    'OrderedDict'
    >>> __getattr__("Missing")
    Traceback (most recent call last):
    AttributeError: module 'mine' has no attribute 'Missing'
    """

    def __getattr__(name: str) -> Any:
        if name in names:
            return getattr(importlib.import_module(new), name)
        raise AttributeError(f"module {old!r} has no attribute {name!r}")

    return __getattr__


@dataclasses.dataclass(frozen=True)
class EncoderDecoder:
    """Pure functions over an explicit params pytree; the Flax module holds the layers."""

    config: ModelConfig
    net_class: ClassVar[Any]  # the family's EncoderDecoderNet subclass (or ImportedOnUse)
    # Whether the net's modules take int8 ``QuantizedArray`` leaves as they are (their
    # matmuls then run the quantisation mode's dots); otherwise the int8 weights are
    # dequantised at the start of each jitted function.
    takes_int8: ClassVar[bool] = False

    @property
    def net(self) -> Any:
        """The Flax module (``net_class(config)``) behind the pure functions."""
        return self.net_class(self.config)

    def init(self, key: jax.Array) -> Params:
        """Random parameters (``{"params": ...}``) for this configuration.

        Jitted: run eagerly, every initialiser call and layer op of the dummy forward
        pass compiles its own small XLA program (~80 for ``tiny``, ~0.1 s each). As one
        program XLA compiles once and drops the forward pass, whose outputs ``init``
        discards. The values are those of the eager init (tests pin this).
        """
        if isinstance(key, jax.core.Tracer):  # inside a caller's jit/eval_shape already
            return self._init_eager(key)
        return _jitted_init(self, key)

    def _float_unless_taken(self, params: Params) -> Params:
        """int8 weights: converted inside the caller's program unless ``takes_int8``."""
        return params if self.takes_int8 else dequantize(params)

    def _init_eager(self, key: jax.Array) -> Params:
        src = jnp.ones((1, 4), jnp.int32)
        return self.net.init(key, src, src > 0, src)

    def encode(self, params: Params, src_BxS: jax.Array, src_mask_BxS: jax.Array) -> jax.Array:
        """Encoder output ``memory [B, S, ...]`` (padding positions are masked downstream)."""
        params = self._float_unless_taken(params)
        return self.net.apply(params, src_BxS, src_mask_BxS, method="encode")

    def init_cache(
        self, params: Params, memory: jax.Array, src_mask_BxS: jax.Array, max_len: int
    ) -> Cache:
        """Decoder state for up to ``max_len`` steps plus what it needs of the memory."""
        limit = self.max_decode_len()
        if not 1 <= max_len <= (max_len if limit is None else limit):
            bound = "" if limit is None else f", <= {limit} (the model's max_len)"
            raise ValueError(f"init_cache: max_len must be >= 1{bound}, got {max_len}")
        params = self._float_unless_taken(params)
        return self.net.apply(params, memory, src_mask_BxS, max_len, method="init_cache")

    def decode_step(
        self, params: Params, cache: Cache, token_B: jax.Array, position: jax.Array
    ) -> tuple[jax.Array, Cache, jax.Array]:
        """One target position: ``(logits [B, V], new cache, cross-attention [B, S])``."""
        position = jnp.asarray(position, jnp.int32)
        params = dequantize(params)  # inside the step: int8 stays the loop's input
        return self.net.apply(params, cache, token_B, position, method="decode_step")

    def step_params(self, params: Params) -> Params:
        """``params`` laid out for ``prepared_step`` (identity unless a family overrides)."""
        return params

    def prepared_step(
        self, weights: Params, cache: Cache, token_B: jax.Array, position: jax.Array
    ) -> tuple[jax.Array, Cache, jax.Array]:
        """``decode_step`` on weights already passed through ``step_params``."""
        return self.decode_step(weights, cache, token_B, position)

    # Positions 0 .. P-1 of a prompt in one pass, ``prepared_prefill(weights, cache,
    # tokens_BxP) -> (logits [B, P, V], cache)``, for a family whose cache is positional
    # (a row's positions beyond its own prompt are rewritten as decoding reaches them).
    # None: the decoders feed a prompt token by token (the RNN: its state is not).
    prepared_prefill: ClassVar[Callable | None] = None
    # ``resize_cache(cache, length) -> cache`` with room for exactly ``length`` positions
    # (earlier positions kept), for a family whose cache grows with the positions
    # decoded; decoders then run in phases of growing cache length
    # (``seqjax.decoding.phases``). None: the cache has no time axis (the RNN).
    resize_cache: ClassVar[Callable | None] = None
    # ``expand_cache(cache, times) -> cache``: the cache with ``times`` beams per source
    # folded into its rows, leaves that a source's beams share kept at one row per source
    # (``seqjax.decoding.batch_tree``). None: every leaf is repeated.
    expand_cache: ClassVar[Callable | None] = None

    @property
    def step(self) -> ModelStep:
        """The params-form step ``step(params, tokens [B], position [], cache)``.

        Weights are data: ``greedy(model.step, cache, params=params, ...)`` compiles once
        per architecture, as ``model.step`` is hashable and equal for equal configs.
        """
        return ModelStep(self)

    def step_fn(self, params: Params) -> Callable:
        """``step_fn(tokens [B], position [], cache)`` closed over ``params``.

        The weights become constants of a compiled decoder (a recompile per set of
        weights); prefer ``model.step`` with the decoders' ``params=``.
        """
        weights = self.step_params(params)

        def step(token_B: jax.Array, position: jax.Array, cache: Cache):
            return self.prepared_step(weights, cache, token_B, position)

        step.capacity = self.cache_capacity  # decoders check max_len against it
        if self.prepared_prefill is not None:
            step.prefill = lambda tokens, cache: self.prepared_prefill(weights, cache, tokens)
        if self.resize_cache is not None:
            step.resize = self.resize_cache  # decoding in phases (seqjax.decoding.phases)
        if self.expand_cache is not None:
            step.expand = self.expand_cache  # beams share the projected memory
        return step

    def cache_capacity(self, cache: Cache) -> int | None:
        """Positions ``cache`` holds (its ``init_cache(max_len=)``); None = unbounded."""
        del cache
        return None

    def max_decode_len(self) -> int | None:
        """The longest ``init_cache(max_len=)`` the model supports; None = unbounded."""
        return None

    def forward(
        self,
        params: Params,
        src_BxS: jax.Array,
        src_mask_BxS: jax.Array,
        tgt_in_BxT: jax.Array,
        *,
        dropout_rng: jax.Array | None = None,
    ) -> jax.Array:
        """Teacher-forced logits ``[B, T, V]``; dropout is on iff ``dropout_rng`` is given."""
        train = dropout_rng is not None
        params = self._float_unless_taken(params)
        return self.net.apply(
            params,
            src_BxS,
            src_mask_BxS,
            tgt_in_BxT,
            not train,
            rngs={"dropout": dropout_rng} if train else None,
            method="forward",
        )


@dataclasses.dataclass(frozen=True)
class ModelStep:
    """A model's decode step in params form; hashable, so a static ``jax.jit`` argument.

    ``seqjax.decoding`` runs ``prepare(params)`` once per decoder call (outside the
    loop) and calls the step with its result.
    """

    model: EncoderDecoder

    def prepare(self, params: Params) -> Params:
        return self.model.step_params(params)

    def capacity(self, cache: Cache) -> int | None:
        return self.model.cache_capacity(cache)

    @property
    def resize(self) -> Callable | None:
        """``resize(cache, length)``: the cache with room for ``length`` positions, where
        the model offers it (``resize_cache``); None otherwise."""
        return self.model.resize_cache

    @property
    def expand(self) -> Callable | None:
        """``expand(cache, times)``: beams folded into the cache's rows, the leaves they
        share kept per source, where the model offers it (``expand_cache``); None
        otherwise (decoders then repeat every leaf)."""
        return self.model.expand_cache

    @property
    def prefill(self) -> Callable | None:
        """``prefill(weights, tokens_BxP, cache)``: a prompt in one pass, where the model
        offers it (``prepared_prefill``); None otherwise."""
        if self.model.prepared_prefill is None:
            return None
        return lambda weights, tokens_BxP, cache: self.model.prepared_prefill(
            weights, cache, tokens_BxP
        )

    def __call__(self, weights: Params, token_B: jax.Array, position: jax.Array, cache: Cache):
        return self.model.prepared_step(weights, cache, token_B, position)


# XLA:CPU's default backend optimisation level (3) makes compiling the ~60 unrolled
# threefry initialisers slow (tiny: ~8 s CPU); level 2 compiles in ~1.4 s and gives the
# same values (tests pin them against the eager init). Init runs once per process.
@functools.partial(
    jax.jit, static_argnums=0, compiler_options={"xla_backend_optimization_level": 2}
)
def _jitted_init(model: EncoderDecoder, key: jax.Array) -> Params:
    return model._init_eager(key)


# EncoderDecoderNet moved to seqjax.models.net (Flax); imported here only when asked for.
__getattr__ = moved_names(__name__, "seqjax.models.net", ("EncoderDecoderNet",))
