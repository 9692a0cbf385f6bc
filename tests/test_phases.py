"""``seqjax.decoding.phases``: decoding in phases of growing cache length.

The invariant: a phased decoder returns what the one-loop program returns (same tokens,
same scores up to float rounding), for every decoder that runs the model's step, with
rows ending inside a phase, between phases and never.
"""

import jax
import jax.extend.core as jax_core
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import JIT, model_and_params, model_inputs
from toy_models import BareStep

from seqjax.decoding import beam_search, contrastive, ensemble, greedy, phases, sample
from seqjax.decoding.phases import FIRST_PHASE, phase_lengths, run_phases, tuple_resizer
from seqjax.models import transformer_step

MAX_LEN = 40  # phases of 16, 32 and 40 positions


@pytest.fixture(autouse=True)
def phases_at_any_rows(monkeypatch):
    """The fixture's few rows would get the one loop (``phases.MIN_ROWS``): test phases
    at every size, except where a test restores the limit."""
    monkeypatch.setattr(phases, "MIN_ROWS", 1)


@pytest.fixture(scope="module")
def setup():
    model, params = model_and_params("transformer")
    src, mask, _ = model_inputs(model.config.vocab_size, pad_rows=True)
    cache = JIT["init_cache"](model, params, JIT["encode"](model, params, src, mask), mask, MAX_LEN)
    return model, params, cache, mask


def _straddling_eos(model, params, cache) -> int:
    """A token the one-loop greedy emits within the first phase in some rows and only
    later (or never) in others: as EOS, rows end inside and after the first phase."""
    ids = dict(bos_id=model.config.bos_id, eos_id=model.config.eos_id, pad_id=0)
    r = greedy(BareStep(model.step), cache, params=params, max_len=MAX_LEN, min_len=MAX_LEN, **ids)
    rows = np.asarray(r.tokens[:, 0])
    for token in np.unique(rows):
        first = [list(row).index(token) if token in row else MAX_LEN for row in rows]
        if min(first) < FIRST_PHASE - 1 and max(first) > FIRST_PHASE:
            return int(token)
    raise AssertionError("no token straddles the first phase; change the fixture")


def _decoders(eos: int | None):
    """The decoders with ``eos`` as EOS and the model's own EOS suppressed (None: the
    model's EOS, and rows run to max_len)."""

    def ids(model):
        suppress = [model.config.eos_id]
        end = model.config.eos_id if eos is None else eos
        return dict(bos_id=model.config.bos_id, eos_id=end, pad_id=0, max_len=MAX_LEN,
                    suppress_tokens=suppress)  # fmt: skip

    return {
        "greedy": lambda m, st, c, p: greedy(st, c, params=p, **ids(m)),
        "beam": lambda m, st, c, p: beam_search(st, c, params=p, beam_size=3, n_best=2, **ids(m)),
        "sample": lambda m, st, c, p: sample(
            st, c, params=p, key=jax.random.key(0), num_samples=2, **ids(m)
        ),
    }


@pytest.mark.parametrize("ends_early", [False, True])
@pytest.mark.parametrize("decoder", ["greedy", "beam", "sample"])
def test_phased_equals_one_loop(setup, decoder, ends_early):
    model, params, cache, _ = setup
    if ends_early:  # rows end inside a phase, and the loop stops before the last phase
        run = _decoders(_straddling_eos(model, params, cache))[decoder]
    else:  # every row runs to max_len: every phase is used
        run = _decoders(None)[decoder]
    phased = run(model, model.step, cache, params)
    single = run(model, BareStep(model.step), cache, params)
    np.testing.assert_array_equal(phased.tokens, single.tokens)
    np.testing.assert_array_equal(phased.lengths, single.lengths)
    np.testing.assert_allclose(phased.scores, single.scores, rtol=1e-5, atol=1e-5)
    lengths = np.asarray(phased.lengths)
    if not ends_early:
        assert lengths.min() == MAX_LEN
    elif decoder == "greedy":
        assert lengths.min() < FIRST_PHASE < lengths.max()


def _while_loops(fn) -> int:
    """The decode loops of ``fn``'s program: ``while`` loops not nested in another one (the
    beam step's in-place cache reorder runs a loop of its own inside each)."""

    def count(jaxpr: jax_core.Jaxpr) -> int:
        n = 0
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "while":
                n += 1
                continue
            for sub in jax_core.jaxprs_in_params(eqn.params):
                n += count(sub)
        return n

    return count(jax.make_jaxpr(fn)().jaxpr)


def test_one_loop_per_phase_and_only_where_it_applies(setup):
    model, params, cache, _ = setup
    ids = dict(bos_id=model.config.bos_id, eos_id=model.config.eos_id, pad_id=0)
    phases = len(phase_lengths(MAX_LEN))
    assert phases == 3
    count = lambda st, **kw: _while_loops(  # noqa: E731
        lambda: beam_search(st, cache, params=params, beam_size=2, **{**ids, **kw})
    )
    assert count(model.step, max_len=MAX_LEN) == phases
    assert count(BareStep(model.step), max_len=MAX_LEN) == 1
    assert count(model.step, max_len=FIRST_PHASE) == 1  # short outputs: one loop
    # a prefilled prompt starts mid-cache: the single loop keeps it
    prefix = jnp.full((3, 4), 7, jnp.int32)
    assert count(model.step, max_len=MAX_LEN, prefix=prefix, score_prompt=False) == 1


def test_phases_need_many_rows(setup, monkeypatch):
    """With the library's limit (``MIN_ROWS`` = 64), a loop of fewer rows compiles one
    loop and a loop of 64 rows or more runs in phases: greedy by its rows, beam search
    by its sources x beams."""
    monkeypatch.setattr(phases, "MIN_ROWS", 64)
    model, params, cache, _ = setup
    rows = jax.tree.leaves(cache)[0].shape[0]
    ids = dict(bos_id=model.config.bos_id, eos_id=model.config.eos_id, pad_id=0, max_len=MAX_LEN)
    beam = lambda k: _while_loops(  # noqa: E731
        lambda: beam_search(model.step, cache, params=params, beam_size=k, **ids)
    )
    assert rows * 2 < 64 <= rows * 32
    assert beam(2) == 1 and beam(32) == len(phase_lengths(MAX_LEN))
    many = jax.tree.map(lambda x: jnp.repeat(x, -(-64 // rows), axis=0), cache)
    greedy_loops = lambda c: _while_loops(  # noqa: E731
        lambda: greedy(model.step, c, params=params, **ids)
    )
    assert greedy_loops(cache) == 1 and greedy_loops(many) == len(phase_lengths(MAX_LEN))


def test_rnn_step_has_no_resize():
    model, _ = model_and_params("rnn_bahdanau")
    assert model.step.resize is None
    assert not hasattr(model.step_fn(_), "resize")


def test_resize_keeps_the_prefix_and_pads_with_zeros(setup):
    model, params, cache, _ = setup
    filled = jax.tree.map(lambda x: x, cache)
    layers = tuple({**lc, "k": lc["k"] + 1.0} for lc in filled["layers"])
    filled = {**filled, "layers": layers}
    short = transformer_step.resize_cache(filled, 7)
    assert short["layers"][0]["k"].shape[2] == 7
    assert short["layers"][0]["ck"] is filled["layers"][0]["ck"]  # memory passed through
    back = transformer_step.resize_cache(short, MAX_LEN)
    k = np.asarray(back["layers"][1]["k"])
    np.testing.assert_array_equal(k[:, :, :7], np.asarray(filled["layers"][1]["k"])[:, :, :7])
    assert not k[:, :, 7:].any()
    assert model.step.capacity(back) == MAX_LEN


def test_contrastive_and_ensemble_resize_their_cache_tuples(setup):
    model, params, cache, _ = setup
    ids = dict(bos_id=model.config.bos_id, eos_id=model.config.eos_id, pad_id=0, max_len=MAX_LEN)
    amateur_params = JIT["init"](model, jax.random.key(5))
    out = {}
    for name, st in (("phased", model.step), ("single", BareStep(model.step))):
        out[name] = contrastive(
            st, cache, st, cache, params=params, amateur_params=amateur_params,
            contrastive_lambda=0.5, beam_size=2, **ids,
        )  # fmt: skip
    np.testing.assert_array_equal(out["phased"].tokens, out["single"].tokens)
    both = ensemble(model.step, model.step)
    assert both.resize is not None
    assert ensemble(BareStep(model.step)).resize is None
    r = greedy(both, (cache, cache), params=(params, params), **ids)
    single = greedy(BareStep(model.step), cache, params=params, **ids)
    np.testing.assert_array_equal(r.tokens, single.tokens)


def test_tuple_resizer_passes_through_members_without_resize():
    resize = tuple_resizer(
        (BareStep(None), type("S", (), {"resize": staticmethod(lambda c, n: n)})())
    )
    assert resize(("state", 3), 16) == ("state", 16)


def test_run_phases_stops_early_between_phases():
    from typing import NamedTuple

    class S(NamedTuple):
        position: jax.Array
        cache: jax.Array

    calls = []

    def resize(c, n):
        calls.append(n)
        return jnp.pad(c, (0, n - c.shape[0])) if n > c.shape[0] else c[:n]

    body = lambda s: S(s.position + 1, s.cache.at[s.position].add(1))  # noqa: E731
    out = run_phases(lambda s: s.position < 10, body, S(jnp.int32(0), jnp.zeros(64)),
                     max_len=64, resize=resize, rows=1)  # fmt: skip
    assert calls == [16, 32, 64]  # every phase is traced; the later loops do not run
    assert int(out.position) == 10 and float(out.cache.sum()) == 10.0
