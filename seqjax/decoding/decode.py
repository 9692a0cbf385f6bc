"""``decode``: run the decoder a ``DecodeConfig`` names, through ``jitted`` decoders.

Also the split of a config into its static part (``static_part``, a jit cache key) and
its traced numeric options (``numeric_options``), for callers that jit around ``decode``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from seqjax.config import DecodeConfig
from seqjax.decoding.batch_tree import infer_batch_size
from seqjax.decoding.beam_sample import beam_sample
from seqjax.decoding.beam_search import beam_search
from seqjax.decoding.constrained_beam_search import constrained_beam_search
from seqjax.decoding.contrastive import contrastive
from seqjax.decoding.diverse_beam_search import diverse_beam_search
from seqjax.decoding.greedy import greedy
from seqjax.decoding.jitted import jitted
from seqjax.decoding.result import DecodeResult
from seqjax.decoding.sample import sample
from seqjax.decoding.step import StepFn, bind_params, step_output_shapes

# DecodeConfig fields that decoders take as traced values (changing them never recompiles).
NUMERIC_FIELDS: dict[str, type] = {
    "alpha": float,
    "coverage": float,
    "temperature": float,
    "top_k": int,
    "top_p": float,
    "min_len": int,
    "min_new_tokens": int,
    "repetition_penalty": float,
    "contrastive_lambda": float,
    "contrastive_alpha": float,
    "amateur_temperature": float,
    "diversity_penalty": float,  # issue 15: diverse beam search
}


def numeric_options(config: DecodeConfig) -> dict[str, np.ndarray]:
    """The traced options of ``config`` as arrays, for passing through an outer ``jax.jit``.

    Host (numpy) scalars: a jitted call takes them as it takes device arrays, and making
    them compiles nothing (``jnp.asarray`` would compile a conversion per dtype).
    """
    return {
        name: np.asarray(getattr(config, name), np.int32 if kind is int else np.float32)
        for name, kind in NUMERIC_FIELDS.items()
    }


# DecodeConfig fields that never reach a compiled decoder: the PRNG seed (callers pass
# ``key=``) and the host-side batch size (the batch shape is a separate cache key).
HOST_FIELDS = ("seed", "batch_size")


def static_part(config: DecodeConfig) -> DecodeConfig:
    """``config`` with its numeric and host-side options reset: a jit cache key for the rest.

    Pass the PRNG key explicitly (``decode(..., key=...)``) when decoding with it: its
    ``seed`` is reset too, so a new seed does not recompile.
    """
    defaults = DecodeConfig()
    reset = (*NUMERIC_FIELDS, *HOST_FIELDS)
    return dataclasses.replace(config, **{f: getattr(defaults, f) for f in reset})


def _numeric(value: Any, kind: type) -> Any:
    # Python numbers are normalised (int vs float would otherwise retrace); arrays
    # (possibly tracers of an enclosing jit) pass through.
    return value if isinstance(value, jax.Array) else kind(value)


def resolve_numerics(
    config: DecodeConfig, numerics: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The traced options of ``config`` (``NUMERIC_FIELDS``), overridden by ``numerics``.

    >>> resolve_numerics(DecodeConfig(alpha=1), {"top_k": 5})["alpha"]
    1.0
    """
    n = {f: _numeric(getattr(config, f), kind) for f, kind in NUMERIC_FIELDS.items()}
    for f, v in (numerics or {}).items():
        if f not in NUMERIC_FIELDS:
            raise ValueError(f"numerics: {f!r} is not a numeric decode option")
        n[f] = _numeric(v, NUMERIC_FIELDS[f])
    return n


def decode(
    step_fn: StepFn,
    cache: Any,
    config: DecodeConfig,
    *,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    key: jax.Array | None = None,
    max_len: int | None = None,
    amateur: tuple[StepFn, Any] | None = None,
    src_mask: jax.Array | None = None,
    prefix: jax.Array | None = None,
    batch_size: int | None = None,
    numerics: dict[str, Any] | None = None,
    params: Any = None,
    amateur_params: Any = None,
    processors: tuple = (),
    stream: Any = None,
    constraints: jax.Array | None = None,
) -> DecodeResult:
    """Decode with the method and options of ``config``, through ``jitted`` decoders.

    ``numerics`` overrides the numeric options of ``config`` (``NUMERIC_FIELDS``) with
    values that may be tracers: a caller that jits around ``decode`` passes
    ``static_part(cfg)`` as a static argument and ``numeric_options(cfg)`` as a traced
    one, so new alpha/temperature/top-p values reuse the compiled program.

    ``max_len`` defaults to ``config.max_len`` (callers applying ``max_len_a * S +
    max_len_b`` pass the result). ``key`` defaults to ``jax.random.key(config.seed)``
    for sampling. ``method="contrastive"`` needs ``amateur=(step_fn, cache)``; it uses
    ``config.beam_size`` (1 = greedy contrastive). ``config.coverage`` is passed as the
    decoders' ``coverage`` and needs a step function returning cross-attention.
    Numeric options are passed as Python floats/ints (traced), so configs differing
    only in them share one compilation. Static: ``step_fn``, ``static_part(config)``,
    the token ids, ``max_len``, ``batch_size``; traced: the rest. With ``params``
    (and ``amateur_params``) the step functions take the params form
    ``step(params, tokens, position, cache)`` and the weights are traced too.
    ``processors`` (static) are the user's logits processors
    (``seqjax.decoding.processors``). With ``config.max_new_tokens`` set, the length is
    the prompt width plus it, and ``max_len`` / ``config.max_len`` are not used.
    ``config.outputs`` asks every method for those ``DecodeResult`` fields
    (``seqjax.decoding.outputs``). ``stream``: a consumer ID
    (``seqjax.decoding.streaming``) that every method calls from inside its loop; a
    config with ``stream=True`` requires it (an ID alone streams too).
    ``constraints`` (``int[B, C, P]``, traced; method ``beam`` only): phrases every
    hypothesis must contain (``constrained_beam_search``); constraints are data, one set
    per source, so they are an argument and not a ``DecodeConfig`` field.

    Example (a bigram table that prefers ``previous + 1``; EOS = 3)::

        >>> import jax.numpy as jnp
        >>> table = jnp.log(jnp.array([[.1, .8, .05, .05], [.1, .1, .7, .1],
        ...                            [.1, .1, .1, .7], [.25, .25, .25, .25]]))
        >>> step = lambda tok, pos, c: (table[tok], c)
        >>> ids = dict(bos_id=0, eos_id=3, pad_id=0, batch_size=1)
        >>> decode(step, None, DecodeConfig(method="greedy", max_len=5), **ids).tokens.tolist()
        [[[1, 2, 3, 0, 0]]]
        >>> cfg = DecodeConfig(method="beam", beam_size=2, n_best=2, max_len=5)
        >>> decode(step, None, cfg, **ids).lengths.tolist()  # "1 2 EOS", then "1 EOS"
        [[3, 2]]
    """
    c = config
    n = resolve_numerics(c, numerics)
    common = dict(
        **_lengths(c, max_len),
        min_new_tokens=n["min_new_tokens"],
        score_prompt=c.score_prompt,
        bad_words=c.bad_words,
        suppress_tokens=c.suppress_tokens,
        begin_suppress_tokens=c.begin_suppress_tokens,
        processors=tuple(processors),
        bos_id=bos_id,
        eos_id=eos_id,
        pad_id=pad_id,
        min_len=n["min_len"],
        no_repeat_ngram_size=c.no_repeat_ngram_size,
        repetition_penalty=n["repetition_penalty"],
        prefix=prefix,
        batch_size=batch_size,
        params=params,
        convention=c.convention,
        forced_eos=c.forced_eos,
    )
    if c.method in ("beam", "contrastive") and c.coverage:
        B = infer_batch_size(cache, batch_size)
        if step_output_shapes(bind_params(step_fn, params), B, cache)[1] is None:
            raise ValueError("coverage > 0 needs a step_fn returning cross-attention")
    if c.stream and stream is None:
        raise ValueError("stream: the config streams; pass the consumer as decode(stream=ID)")
    if c.outputs:  # left out when empty: the call (and jit's cache key) stays as before
        common["outputs"] = c.outputs
    streamed = {} if stream is None else {"stream": stream, "stream_every": c.stream_every}
    if constraints is not None and (c.method != "beam" or c.diverse_groups > 1 or c.beam_sample):
        raise ValueError(
            "constraints need method 'beam' (constrained beam search), without "
            "diverse_groups or beam_sample"
        )
    if c.method == "greedy":
        return jitted(greedy)(step_fn, cache, **common, **streamed)
    if c.method == "sample":
        key = jax.random.key(c.seed) if key is None else key
        return _decode_sample(step_fn, cache, c, n, key, {**common, **streamed})
    ranked = dict(n_best=c.n_best, alpha=n["alpha"], length_penalty=c.length_penalty)
    ranked.update(coverage=n["coverage"], src_mask=src_mask, beam_size=c.beam_size)
    if constraints is not None:
        return _decode_constrained(step_fn, cache, c, constraints, ranked, common, streamed)
    if c.method == "beam" and (c.diverse_groups > 1 or c.beam_sample):
        return _decode_beam_variant(step_fn, cache, c, n, key, ranked, common, streamed)
    if c.method == "beam" and c.early_stopping != "never":
        ranked.update(early_stopping=c.early_stopping == "true")
    if c.method == "beam":
        return jitted(beam_search)(step_fn, cache, **ranked, **common, **streamed)
    if c.method == "contrastive":
        if amateur is None:
            raise ValueError("method 'contrastive' needs amateur=(step_fn, cache)")
        return _decode_contrastive(
            step_fn, cache, amateur, c, n, ranked, {**common, **streamed}, amateur_params
        )
    raise ValueError(f"unknown decode method {c.method!r}")


def _lengths(c: DecodeConfig, max_len: int | None) -> dict[str, Any]:
    """``max_len`` (explicit, else the config's) or the config's ``max_new_tokens``."""
    if c.max_new_tokens is not None:
        return dict(max_len=None, max_new_tokens=c.max_new_tokens)
    return dict(max_len=c.max_len if max_len is None else int(max_len))


def _decode_sample(
    step_fn: StepFn,
    cache: Any,
    c: DecodeConfig,
    n: dict[str, Any],
    key: jax.Array,
    common: dict[str, Any],
) -> DecodeResult:
    return jitted(sample)(
        step_fn,
        cache,
        key=key,
        num_samples=c.num_samples,
        temperature=n["temperature"],
        top_k=n["top_k"],
        top_p=n["top_p"],
        **common,
    )


# Options the beam variants do not take yet (processors, token bans, new-token counts).
_ISSUE14_OPTIONS = ("max_new_tokens", "min_new_tokens", "score_prompt", "bad_words",
                    "suppress_tokens", "begin_suppress_tokens", "processors")  # fmt: skip


def _without_issue14_options(
    c: DecodeConfig, common: dict[str, Any], variant: str
) -> dict[str, Any]:
    """``common`` less the options the beam variants lack; one the config or caller set
    is refused in one line rather than dropped (read from the static config: inside
    ``jit`` the numeric ones are traced)."""
    given = dict(
        max_new_tokens=c.max_new_tokens is not None, min_new_tokens=bool(c.min_new_tokens),
        score_prompt=c.score_prompt, bad_words=bool(c.bad_words),
        suppress_tokens=bool(c.suppress_tokens),
        begin_suppress_tokens=bool(c.begin_suppress_tokens),
        processors=bool(common.get("processors")),
    )  # fmt: skip
    for name in _ISSUE14_OPTIONS:
        if given[name]:
            raise ValueError(f"{name} is not supported with {variant} yet; leave it unset")
    return {k: v for k, v in common.items() if k not in _ISSUE14_OPTIONS}


def _decode_beam_variant(
    step_fn: StepFn,
    cache: Any,
    c: DecodeConfig,
    n: dict[str, Any],
    key: jax.Array | None,
    ranked: dict[str, Any],
    common: dict[str, Any],
    streamed: dict[str, Any],
) -> DecodeResult:
    """Issue 15's beam variants: diverse (group) beam search or beam sampling."""
    variant = "diverse_groups" if c.diverse_groups > 1 else "beam_sample"
    common = {**_without_issue14_options(c, common, variant), **streamed}
    if c.early_stopping != "never":
        ranked = {**ranked, "early_stopping": c.early_stopping == "true"}
    if c.diverse_groups > 1:
        return jitted(diverse_beam_search)(
            step_fn, cache, num_groups=c.diverse_groups,
            diversity_penalty=n["diversity_penalty"], **ranked, **common,
        )  # fmt: skip
    ranked = {k: v for k, v in ranked.items() if k not in ("coverage", "src_mask")}
    return jitted(beam_sample)(
        step_fn, cache, key=jax.random.key(c.seed) if key is None else key,
        temperature=n["temperature"], top_k=n["top_k"], top_p=n["top_p"], **ranked, **common,
    )  # fmt: skip


# Prompt options constrained beam search does not take.
_PROMPT_OPTIONS = ("prefix", "max_new_tokens", "min_new_tokens", "score_prompt")


def _decode_constrained(
    step_fn: StepFn,
    cache: Any,
    c: DecodeConfig,
    constraints: jax.Array,
    ranked: dict[str, Any],
    common: dict[str, Any],
    streamed: dict[str, Any],
) -> DecodeResult:
    """Issue 15: lexically constrained beam search; prompts are refused by name."""
    given = dict(
        prefix=common["prefix"] is not None, max_new_tokens=c.max_new_tokens is not None,
        min_new_tokens=bool(c.min_new_tokens), score_prompt=c.score_prompt,
    )  # fmt: skip
    for name in _PROMPT_OPTIONS:
        if given[name]:
            raise ValueError(f"{name} is not supported with constraints yet; leave it unset")
    common = {k: v for k, v in common.items() if k not in _PROMPT_OPTIONS}
    if c.early_stopping != "never":
        ranked = {**ranked, "early_stopping": c.early_stopping == "true"}
    return jitted(constrained_beam_search)(
        step_fn, cache, constraints=constraints, **ranked, **common, **streamed
    )


def _decode_contrastive(
    step_fn: StepFn,
    cache: Any,
    amateur: tuple[StepFn, Any],
    c: DecodeConfig,
    n: dict[str, Any],
    ranked: dict[str, Any],
    common: dict[str, Any],
    amateur_params: Any,
) -> DecodeResult:
    if c.beam_size == 1:  # greedy contrastive ignores the ranking options
        ranked = dict(n_best=1, beam_size=1, coverage=n["coverage"], src_mask=ranked["src_mask"])
    return jitted(contrastive)(
        step_fn,
        cache,
        amateur[0],
        amateur[1],
        contrastive_lambda=n["contrastive_lambda"],
        contrastive_alpha=n["contrastive_alpha"],
        amateur_temperature=n["amateur_temperature"],
        amateur_params=amateur_params,
        **ranked,
        **common,
    )
