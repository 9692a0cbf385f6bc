"""``seqjax.decoding.beam_loop``'s stable beam slots and in-place cache reorder: survivors keep
their slot, a moved row is never another row's source, and copying the moved rows gives
exactly what gathering every row gives, down to the decoded hypotheses."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import JIT, beam_search_shared_and_repeated, model_and_params, model_inputs
from hypothesis import given, settings
from hypothesis import strategies as st

from seqjax.decoding import beam_loop, beam_search
from seqjax.decoding.batch_tree import gather_rows


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6).flatmap(lambda k: st.lists(st.integers(0, k - 1), min_size=k, max_size=k)))
def test_stable_slots_keep_survivors_in_their_slot(parents):
    K = len(parents)
    beam = jnp.asarray([parents], jnp.int32)
    by_slot = np.asarray(beam_loop._stable_slots(beam))[0]
    assert sorted(by_slot) == list(range(K))  # a permutation of the candidates
    parent_of_slot = np.asarray(parents)[by_slot]
    for slot in range(K):
        children = [c for c, p in enumerate(parents) if p == slot]
        if children:  # the best child of a slot stays in it
            assert by_slot[slot] == children[0]
    moved = {s for s in range(K) if parent_of_slot[s] != s}
    assert not moved & set(parent_of_slot.tolist())  # no moved slot is a source


def test_reorder_cache_copies_equal_gathers():
    rng = np.random.default_rng(0)
    B, K = 5, 4
    N = B * K
    parents = rng.integers(0, K, (B, K))
    by_slot = beam_loop._stable_slots(jnp.asarray(parents, jnp.int32))
    beam_BxK = jnp.take_along_axis(jnp.asarray(parents), by_slot, axis=1)
    rows_N = (jnp.arange(B)[:, None] * K + beam_BxK).reshape(N)
    assert 0 < int(jnp.sum(rows_N != jnp.arange(N))) < N
    old = {
        "k": jnp.asarray(rng.standard_normal((N, 4, 16, 32)), jnp.float32),  # 8 KB rows: copied
        "small": jnp.asarray(rng.standard_normal((N, 3)), jnp.float32),  # gathered
        "memory": jnp.asarray(rng.standard_normal((N, 8, 64)), jnp.float32),  # passed through
        "scalar": jnp.float32(1.0),
    }
    new = {**old, "k": old["k"] + 1.0, "small": old["small"] * 2.0}
    got = beam_loop.reorder_cache(new, old, rows_N)  # eager: "memory" stays the same object
    want = gather_rows(new, rows_N)
    for name in ("k", "small", "scalar"):
        np.testing.assert_array_equal(got[name], want[name])
    np.testing.assert_array_equal(got["memory"], old["memory"])


@pytest.mark.parametrize("n_best", [1, 3])
def test_beam_search_same_hypotheses_with_copied_or_gathered_rows(monkeypatch, n_best):
    """Every leaf copied in place vs every leaf gathered: the same search (tokens and lengths
    exactly; scores to float32 rounding, as the two programs may fuse the step differently)."""
    model, params = model_and_params("transformer")
    src, mask, _ = model_inputs(model.config.vocab_size, pad_rows=True)
    cache = JIT["init_cache"](model, params, JIT["encode"](model, params, src, mask), mask, 40)
    eos = model.config.eos_id  # suppressed: every beam runs 40 steps and reorders at each
    ids = dict(bos_id=model.config.bos_id, eos_id=eos, pad_id=0, suppress_tokens=[eos])
    results = []
    for row_bytes in (0, 2**62):
        monkeypatch.setattr(beam_loop, "COPY_ROW_BYTES", row_bytes)
        jax.clear_caches()  # the decoders' inner jits would reuse the other setting's trace
        run = jax.jit(
            lambda p, c: beam_search(
                model.step, c, params=p, beam_size=4, n_best=n_best, max_len=40, **ids
            )
        )
        results.append(run(params, cache))
    copied, gathered = results
    for field in ("tokens", "lengths"):
        np.testing.assert_array_equal(getattr(copied, field), getattr(gathered, field))
    for field in ("scores", "log_probs"):
        a, b = getattr(copied, field), getattr(gathered, field)
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("family", ["transformer", "transformer_bart"])
def test_beam_search_with_shared_memory_equals_repeated_memory(family):
    """The Transformer keeps the memory at one row per source (``expand``); the search is
    the one that K repeated copies of the memory give."""
    model, params = model_and_params(family)
    src, mask, _ = model_inputs(model.config.vocab_size, pad_rows=True)
    cache = JIT["init_cache"](model, params, JIT["encode"](model, params, src, mask), mask, 24)
    ids = dict(bos_id=model.config.bos_id, eos_id=model.config.eos_id, pad_id=0)
    options = dict(beam_size=4, n_best=2, max_len=24, coverage=0.2, src_mask=mask, **ids)
    shared, repeated = beam_search_shared_and_repeated(model, params, cache, **options)
    np.testing.assert_array_equal(shared.tokens, repeated.tokens)
    np.testing.assert_array_equal(shared.lengths, repeated.lengths)
    np.testing.assert_allclose(shared.scores, repeated.scores, rtol=1e-5, atol=1e-5)


def test_reorder_cache_refuses_a_changed_shared_leaf():
    """A step whose ``expand`` kept a leaf per source must pass it through unchanged;
    otherwise the leaf cannot follow the beams, and the loop says so at trace time."""
    N, B = 8, 2
    old = {"k": jnp.zeros((N, 4)), "memory": jnp.zeros((B, 3))}
    new = {"k": old["k"] + 1.0, "memory": old["memory"] + 1.0}
    with pytest.raises(ValueError, match="shared by a source's beams"):
        beam_loop.reorder_cache(new, old, jnp.arange(N))
