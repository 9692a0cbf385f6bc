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
ids) and the step function are static; numeric options (``alpha``, ``coverage``,
``temperature``, ``top_k``, ``top_p``, ``min_len``, ``repetition_penalty``,
contrastive ``lambda``/``alpha``) are traced, so changing them does not recompile::

    import functools, jax
    from seqjax.decoding import beam_search, jitted

    # weights are data: ``model.step`` (static, one per architecture) takes the
    # params as a traced argument, so new weights never recompile
    run = jax.jit(functools.partial(beam_search, model.step, beam_size=4, max_len=64,
                                    bos_id=2, eos_id=3, pad_id=0))
    result = run(cache, params=params, alpha=0.6)    # compiles
    result = run(cache2, params=params2, alpha=1.0)  # same shapes: no recompile

    # or let ``jitted`` mark the static arguments (and check the values) for you:
    result = jitted(beam_search)(model.step, cache, params=params, beam_size=4,
                                 max_len=64, alpha=0.6, bos_id=2, eos_id=3, pad_id=0)

``model.step_fn(params)`` (the 3-argument form, weights closed over) still works, but
each set of weights is then a new static argument and a new compilation. Bad
arguments are one-line ``ValueError``s before any decoding (``arg_checks``).

``decode(step_fn, cache, DecodeConfig(...), ...)`` dispatches on a config through the
same ``jitted`` decoders. ``score`` gives teacher-forced log-probs of given targets.

Layout: each public function lives in a module of the same name (``greedy.py``
defines ``greedy``, ``beam_search.py`` defines ``beam_search``, ..., ``jitted.py``,
``decode.py``, ``score.py``); the loops they share are ``token_loop`` (one token per
row: greedy, sampling, greedy contrastive) and ``beam_loop`` (beam search and
contrastive beam search); ``step`` holds the ``StepFn`` contract and ``bind_params``,
``arg_checks`` the call-site checks, ``step_scores``
what a search step yields (``StepScores``, ``ScoreFn``). The package imports every
function *after* its module, so ``seqjax.decoding.greedy`` is the function, never the
module; reach a module's other names with ``from seqjax.decoding.greedy import ...``
(the import system finds the module itself) or ``importlib.import_module``.
"""

# Each function below shadows the module of the same name as a package attribute, on
# purpose: `seqjax.decoding.greedy` is the decoder. Importing every such module here,
# before anything else can, keeps that binding stable.
from seqjax.decoding.beam_sample import beam_sample
from seqjax.decoding.beam_search import beam_search
from seqjax.decoding.constrained_beam_search import constrained_beam_search
from seqjax.decoding.contrastive import contrastive
from seqjax.decoding.decode import NUMERIC_FIELDS, decode, numeric_options, static_part
from seqjax.decoding.diverse_beam_search import diverse_beam_search
from seqjax.decoding.ensemble import ensemble
from seqjax.decoding.greedy import greedy
from seqjax.decoding.jitted import STATIC_ARGNAMES, jitted
from seqjax.decoding.result import DecodeResult
from seqjax.decoding.sample import sample
from seqjax.decoding.score import score

__all__ = [
    "DecodeResult",
    "NUMERIC_FIELDS",
    "STATIC_ARGNAMES",
    "beam_sample",
    "beam_search",
    "constrained_beam_search",
    "contrastive",
    "decode",
    "diverse_beam_search",
    "ensemble",
    "greedy",
    "jitted",
    "numeric_options",
    "sample",
    "score",
    "static_part",
]
