"""``ensemble``: several models as one step function, usable by every decoder.

``ensemble(step_a, step_b, ...)`` returns one step whose cache is the tuple of the
members' caches and whose logits are the members' combined log-probabilities:

- ``mode="prob"`` (default, fairseq's ``EnsembleModel``): the log of the mean of the
  members' probabilities, ``logsumexp_m(log p_m) - log M``;
- ``mode="log_prob"``: the mean of the members' log-probabilities (a normalised
  geometric mean once the decoder applies ``log_softmax``).

Either way the result is a proper log-distribution, so a model ensembled with itself
decodes exactly as the model alone. Cross-attention (for coverage and alignments) is
the mean over the members that return it; ``None`` when none does.

Static/traced contract: the ``Ensemble`` object is static (a frozen dataclass, equal
and hashable whenever its members are, so ``jax.jit`` reuses one compilation for equal
ensembles); the caches are traced. With the decoders' ``params=``, pass the tuple of
the members' params (each member then has the params form
``step(params, tokens, position, cache)``): one compilation serves every set of weights.
Each member's optional ``prepare(params)`` runs once per call, and the ensemble's
``capacity(cache)`` is the smallest of the members' capacities.

Example (two bigram tables; the ensemble of a table with itself is the table)::

    >>> import jax.numpy as jnp
    >>> from seqjax.decoding import greedy
    >>> t1 = jnp.log(jnp.array([[.1, .2, .7], [.1, .8, .1], [.3, .3, .4]]))
    >>> t2 = jnp.log(jnp.array([[.1, .6, .3], [.1, .8, .1], [.3, .3, .4]]))
    >>> step1 = lambda tok, pos, c: (t1[tok], c)
    >>> step2 = lambda tok, pos, c: (t2[tok], c)
    >>> both = ensemble(step1, step2)
    >>> logits, cache = both(jnp.array([0]), jnp.int32(0), (None, None))
    >>> [round(float(x), 3) for x in jnp.exp(logits[0])]  # mean of the probabilities
    [0.1, 0.4, 0.5]
    >>> r = greedy(both, (None, None), batch_size=1, max_len=3, bos_id=0, eos_id=1, pad_id=0)
    >>> r.tokens[0, 0].tolist()
    [2, 2, 2]
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from seqjax.decoding.batch_tree import tuple_expander
from seqjax.decoding.phases import tuple_resizer
from seqjax.decoding.step import StepFn, call_step

ENSEMBLE_MODES = ("prob", "log_prob")


@dataclasses.dataclass(frozen=True)
class Ensemble:
    """Members' steps (static) averaged as one step; see the module docstring.

    Called with three arguments ``(tokens_B, position, caches)`` the members are
    3-argument steps; with four, ``(params, tokens_B, position, caches)``, they are
    params-form steps and ``params`` is the tuple of their (prepared) params.
    """

    members: tuple[Any, ...]
    mode: str = "prob"

    def __post_init__(self) -> None:
        if len(self.members) < 1:
            raise ValueError("ensemble needs at least one step function, got none")
        if self.mode not in ENSEMBLE_MODES:
            raise ValueError(f"mode must be one of {ENSEMBLE_MODES}, got {self.mode!r}")

    def __call__(self, *args: Any) -> tuple:
        if len(args) == 4:
            params, tokens_B, position, caches = args
            self._check_tuple("params", params)
            bound = [
                _bind(m, p) for m, p in zip(self.members, params, strict=True)
            ]  # already prepared by ``prepare``
        elif len(args) == 3:
            tokens_B, position, caches = args
            bound = list(self.members)
        else:
            raise TypeError(f"an Ensemble step takes 3 or 4 arguments, got {len(args)}")
        self._check_tuple("cache", caches)
        outs = [call_step(m, tokens_B, position, c) for m, c in zip(bound, caches, strict=True)]
        logits = combine_log_probs([o[0] for o in outs], self.mode)
        new_caches = tuple(o[1] for o in outs)
        attention = [o[2].astype(jnp.float32) for o in outs if o[2] is not None]
        if not attention:
            return logits, new_caches
        return logits, new_caches, sum(attention[1:], attention[0]) / len(attention)

    def prepare(self, params: tuple) -> tuple:
        """Each member's ``prepare(params)`` (when it has one), once per decoder call."""
        self._check_tuple("params", params)
        return tuple(
            p if getattr(m, "prepare", None) is None else m.prepare(p)
            for m, p in zip(self.members, params, strict=True)
        )

    def capacity(self, caches: tuple) -> int | None:
        """The smallest capacity any member reports for its cache (``None``: unknown)."""
        self._check_tuple("cache", caches)
        found = [
            m.capacity(c)
            for m, c in zip(self.members, caches, strict=True)
            if getattr(m, "capacity", None) is not None
        ]
        found = [f for f in found if f is not None]
        return min(found) if found else None

    @property
    def resize(self) -> Callable | None:
        """The members' ``resize`` over the cache tuple (``seqjax.decoding.phases``)."""
        return tuple_resizer(self.members)

    @property
    def expand(self) -> Callable:
        """The members' ``expand`` over the cache tuple (``batch_tree.cache_expander``)."""
        return tuple_expander(self.members)

    def _check_tuple(self, name: str, value: Any) -> None:
        if not isinstance(value, tuple | list) or len(value) != len(self.members):
            raise ValueError(
                f"{name} of an ensemble of {len(self.members)} must be a tuple with one "
                f"entry per member, got {type(value).__name__}"
            )


def _bind(member: Any, weights: Any) -> StepFn:
    return lambda tokens_B, position, cache: member(weights, tokens_B, position, cache)


def combine_log_probs(logits: list[jax.Array], mode: str = "prob") -> jax.Array:
    """``float32[B, V]`` log-probs combining the members' ``logits`` (see ``Ensemble``).

    >>> a, b = jnp.log(jnp.array([[.5, .5]])), jnp.log(jnp.array([[.9, .1]]))
    >>> [round(float(x), 2) for x in jnp.exp(combine_log_probs([a, b]))[0]]
    [0.7, 0.3]
    """
    lp = jnp.stack([jax.nn.log_softmax(x.astype(jnp.float32), axis=-1) for x in logits])
    if len(logits) == 1:
        return lp[0]
    if mode == "prob":
        return jax.nn.logsumexp(lp, axis=0) - math.log(len(logits))
    return jax.nn.log_softmax(jnp.mean(lp, axis=0), axis=-1)


def ensemble(*step_fns: Any, mode: str = "prob") -> Ensemble:
    """One step function averaging ``step_fns`` (see the module docstring); cache = tuple.

    >>> import jax.numpy as jnp
    >>> step = lambda tok, pos, c: (jnp.zeros((tok.shape[0], 3)), c)
    >>> ensemble(step, step) == ensemble(step, step)  # equal, so jit reuses a compilation
    True
    """
    return Ensemble(tuple(step_fns), mode)
