"""Beam sampling (HuggingFace ``do_sample=True, num_beams > 1``): beam search whose
candidates are drawn instead of taken best-first.

At every position each source draws ``2 * beam_size`` candidates *without
replacement* from ``softmax`` over the cumulative scores of all ``beam_size x V``
extensions (Gumbel-top-k: the ``2K`` largest of ``score + Gumbel noise``), where a
step's scores are the temperature-scaled, top-k/top-p-truncated log-probs of
``sample``. Among the drawn candidates the beam core then works as in ``beam_search``:
the ``K`` best unfinished ones stay live, an EOS candidate finishes when it ranks among
the ``K`` best drawn, and finished hypotheses are ranked by the length-penalised sum.

Static: as ``beam_search`` (``step_fn``, ``max_len``, ``beam_size``, ``n_best``,
``length_penalty``, ``early_stopping``, ...). Traced: ``key`` (position ``t`` uses
``fold_in(key, t)``), ``temperature``, ``top_k``, ``top_p``, ``alpha``, ``min_len``,
``repetition_penalty``, the arrays. The same key gives the same result.

Example (``top_k=1`` leaves one candidate per beam: the draw is the greedy path)::

    >>> import jax, jax.numpy as jnp
    >>> table = jnp.log(jnp.array([[.1, .2, .7], [.1, .8, .1], [.1, .3, .6]]))
    >>> step = lambda tok, pos, c: (table[tok], c)
    >>> r = beam_sample(step, None, key=jax.random.key(0), batch_size=1, beam_size=2,
    ...                 max_len=3, bos_id=0, eos_id=1, pad_id=0, top_k=1)
    >>> r.tokens[0, 0].tolist()
    [2, 2, 2]
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from seqjax.decode_checks import STREAM_EVERY
from seqjax.decoding.arg_checks import check_decoder_call
from seqjax.decoding.batch_tree import cache_expander
from seqjax.decoding.beam_loop import (
    SelectFn,
    check_beam_args,
    check_early_stopping,
    run_beam_loop,
)
from seqjax.decoding.logit_processors import make_controls
from seqjax.decoding.outputs import check_outputs, output_widths
from seqjax.decoding.phases import cache_resizer
from seqjax.decoding.result import DecodeResult
from seqjax.decoding.step import StepFn, bind_params
from seqjax.decoding.step_scores import sampling_scores
from seqjax.decoding.streaming import check_stream, emitter


def draw_candidates(key: jax.Array, num_draws: int) -> SelectFn:
    """A ``select_fn`` keeping ``num_draws`` candidates per source, drawn without
    replacement from ``softmax(live_score + step_score)`` over all ``K x V`` of them.

    >>> sel = draw_candidates(jax.random.key(0), 2)
    >>> step = jnp.log(jnp.array([[[0.0, 0.5, 0.3, 0.2]]]))  # B = K = 1, V = 4
    >>> kept = sel(jnp.int32(0), jnp.zeros((1, 1)), step)
    >>> int(jnp.sum(kept > -jnp.inf))  # two of the three possible tokens
    2
    """

    def select(position: jax.Array, live_BxK: jax.Array, step_BxKxV: jax.Array) -> jax.Array:
        B, K, V = step_BxKxV.shape
        totals_BxKV = (live_BxK[..., None] + step_BxKxV).reshape(B, K * V)
        noise = jax.random.gumbel(jax.random.fold_in(key, position), totals_BxKV.shape)
        _, drawn_BxD = lax.top_k(totals_BxKV + noise, min(num_draws, K * V))
        kept = jnp.zeros((B, K * V), bool).at[jnp.arange(B)[:, None], drawn_BxD].set(True)
        return jnp.where(kept.reshape(B, K, V), step_BxKxV, -jnp.inf)

    return select


def beam_sample(
    step_fn: StepFn,
    cache: Any,
    *,
    key: jax.Array,
    max_len: int,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    beam_size: int = 4,
    n_best: int = 1,
    temperature: float | jax.Array = 1.0,
    top_k: int | jax.Array = 0,
    top_p: float | jax.Array = 1.0,
    alpha: float | jax.Array = 0.0,
    length_penalty: str = "gnmt",
    min_len: int | jax.Array = 0,
    no_repeat_ngram_size: int = 0,
    repetition_penalty: float | jax.Array = 1.0,
    prefix: jax.Array | None = None,
    batch_size: int | None = None,
    params: Any = None,
    convention: str = "seqjax",
    forced_eos: bool = False,
    early_stopping: bool | str = "never",
    outputs: tuple[str, ...] = (),
    stream: int | jax.Array | None = None,
    stream_every: int = STREAM_EVERY,
) -> DecodeResult:
    """Beam search over drawn candidates (see the module docstring), ``n_best`` per source.

    ``scores`` are the length-penalised sums of the temperature-scaled step scores (what
    the search ranks, as HuggingFace reports them); ``log_probs`` are the model's.
    ``params``, ``convention``, ``forced_eos``, ``early_stopping``, ``outputs`` and
    ``stream`` and ``stream_every`` as in ``beam_search``.
    """
    check_beam_args(beam_size, n_best, length_penalty)
    check_early_stopping(early_stopping)
    step_fn = bind_params(step_fn, params)
    B, vocab_size, source_len = check_decoder_call(
        step_fn, cache, batch_size=batch_size, max_len=max_len, prefix=prefix,
        token_ids=dict(bos_id=bos_id, eos_id=eos_id, pad_id=pad_id), min_len=min_len,
        repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
        alpha=alpha, temperature=temperature, top_k=top_k, top_p=top_p,
    )  # fmt: skip
    check_outputs(outputs, source_len)
    check_stream(stream, stream_every)
    controls = make_controls(
        eos_id=eos_id, pad_id=pad_id, bos_id=bos_id, max_len=max_len, min_len=min_len,
        repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
        convention=convention, forced_eos=forced_eos, beam=True,
    )  # fmt: skip
    pool = n_best if early_stopping == "never" else beam_size
    result = run_beam_loop(
        sampling_scores(step_fn, controls, temperature=temperature, top_k=top_k, top_p=top_p),
        cache,
        batch_size=B,
        beam_size=beam_size,
        n_best=pool,
        max_len=max_len,
        vocab_size=vocab_size,
        source_len=None,
        alpha=alpha,
        length_penalty_kind=length_penalty,
        coverage=0.0,
        src_mask_BxS=None,
        monotone=True,
        bos_id=bos_id,
        eos_id=eos_id,
        pad_id=pad_id,
        prefix_BxP=prefix,
        early_stopping=early_stopping,
        select_fn=draw_candidates(key, 2 * beam_size),
        output_widths=output_widths(outputs, vocab_size, source_len),
        emit=emitter(stream, stream_every),
        resize=cache_resizer(step_fn),
        expand=cache_expander(step_fn),
    )
    return result if pool == n_best else jax.tree.map(lambda x: x[:, :n_best], result)
