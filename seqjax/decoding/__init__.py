"""Model-agnostic compiled decoding: greedy, sampling, beam, contrastive, scoring.

Every decoder works with any *step function* (see ``seqjax.decoding.step``)::

    step_fn(tokens: int32[B], position: int32[], cache) -> (logits: float[B, V], cache)
    step_fn(...) -> (logits, cache, cross_attention: float[B, S])  # for coverage

where ``cache`` is any pytree whose array leaves lead with the batch axis (decoders
repeat it for beams/samples, row ``b * K + k`` belonging to source ``b``, and reorder
it by gathering rows). Each decoder is one ``lax.while_loop`` (stopping early once
every row is done) and returns a ``DecodeResult`` with ``tokens [B, K, L]``,
``lengths [B, K]``, ``scores [B, K]`` and per-token ``log_probs [B, K, L]``.

Compile once, decode many times. Shape-setting options (``max_len``, ``beam_size``,
``num_samples``, ``n_best``, ``no_repeat_ngram_size``, ``length_penalty``, token
ids) and the step function are static; numeric options (``alpha``, ``beta``,
``temperature``, ``top_k``, ``top_p``, ``min_len``, ``repetition_penalty``,
contrastive ``lambda``/``alpha``) are traced, so changing them does not recompile::

    import functools, jax
    from seqjax.decoding import beam_search, jitted

    step = model.step_fn(params)  # build once: the step function is a static argument
    run = jax.jit(functools.partial(beam_search, step, beam_size=4, max_len=64,
                                    bos_id=2, eos_id=3, pad_id=0))
    result = run(cache, alpha=0.6)   # compiles
    result = run(cache2, alpha=1.0)  # same shapes: no recompile

    # or let ``jitted`` mark the static arguments for you:
    result = jitted(beam_search)(step, cache, beam_size=4, max_len=64, alpha=0.6,
                                 bos_id=2, eos_id=3, pad_id=0)

``decode(step_fn, cache, DecodeConfig(...), ...)`` dispatches on a config through the
same ``jitted`` decoders. ``score`` gives teacher-forced log-probs of given targets.
"""

from seqjax.decoding.beam import beam_search
from seqjax.decoding.contrastive_search import contrastive
from seqjax.decoding.dispatch import (
    NUMERIC_FIELDS,
    STATIC_ARGNAMES,
    decode,
    jitted,
    numeric_options,
    static_part,
)
from seqjax.decoding.greedy_search import greedy
from seqjax.decoding.result import DecodeResult
from seqjax.decoding.sampling import sample
from seqjax.decoding.scoring import score

__all__ = [
    "DecodeResult",
    "NUMERIC_FIELDS",
    "STATIC_ARGNAMES",
    "beam_search",
    "contrastive",
    "decode",
    "greedy",
    "jitted",
    "numeric_options",
    "sample",
    "score",
    "static_part",
]
