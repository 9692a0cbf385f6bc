"""constrained_beam_search (issue 15): lexically constrained beam search with dynamic beam
allocation. Exact against an exhaustive enumeration when the beam holds every prefix; no
returned hypothesis ever lacks a phrase; without constraints it is beam_search."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (
    JIT,
    beam_search_shared_and_repeated,
    model_and_params,
    model_inputs,
    recording_step,
)
from toy_models import (
    IDS,
    V,
    assert_same_result,
    bigram_step,
    brute_force,
    hyp,
    make_rnn_cache,
    np_expert_path_probs,
    rnn_step,
    rnn_step_no_attention,
)

from seqjax.config import DecodeConfig
from seqjax.decoding import beam_search, constrained_beam_search, decode, jitted

cbs = jitted(constrained_beam_search)
GENERATED = (1, 3, 4)  # the toy RNN's tokens other than PAD (never) and EOS


def contains(seq: list[int], phrase: list[int]) -> bool:
    n = len(phrase)
    return any(seq[i : i + n] == phrase for i in range(len(seq) - n + 1))


def phrases_of(constraints: np.ndarray, b: int) -> list[list[int]]:
    return [[t for t in p if t != -1] for p in constraints[b].tolist() if p[0] != -1]


def body(seq: list[int]) -> list[int]:
    return seq[:-1] if seq and seq[-1] == IDS["eos_id"] else seq


# (1) exhaustive: with a beam that holds every candidate, the n best complete hypotheses
# are the n best of all sequences that contain the phrases. Phrases of distinct tokens: a
# hypothesis then meets them exactly when it contains them (see the module docstring).
EXACT_LEN, EXACT_BEAM = 5, 128  # 81 live prefixes + 27 EOS ends at most, per step
EXACT_PHRASES = np.array(
    [
        [[1, 3], [-1, -1]],  # one 2-token phrase
        [[3, -1], [-1, -1]],  # one 1-token phrase
        [[3, -1], [4, 1]],  # two phrases
        [[1, 3], [4, -1]],
    ],
    np.int32,
)


@pytest.mark.parametrize(
    "kind, alpha, coverage",
    [("gnmt", 0.0, 0.0), ("gnmt", 0.6, 0.0), ("hf", 1.0, 0.0), ("gnmt", 0.6, 0.4)],
)
def test_exhaustive_beam_finds_the_best_constrained_sequences(kind, alpha, coverage):
    cache = make_rnn_cache(4, seed=5)
    n_best = 4
    r = cbs(
        rnn_step, cache, constraints=jnp.asarray(EXACT_PHRASES), beam_size=EXACT_BEAM,
        n_best=n_best, alpha=alpha, length_penalty=kind, coverage=coverage,
        src_mask=cache["src_mask"], max_len=EXACT_LEN, **IDS,
    )  # fmt: skip
    for b in range(4):
        phrases = phrases_of(EXACT_PHRASES, b)
        every = brute_force(cache, b, EXACT_LEN, alpha, kind, coverage)
        allowed = [(s, q) for s, q in every if all(contains(body(q), p) for p in phrases)]
        expected = allowed[:n_best]
        assert len(expected) == n_best
        # the constraint changes the answer: the unconstrained best lacks a phrase
        assert every[0][1] != expected[0][1]
        assert [hyp(r, b, k) for k in range(n_best)] == [q for _, q in expected]
        np.testing.assert_allclose(r.scores[b], [s for s, _ in expected], rtol=1e-4)
        for k in range(n_best):  # reported log-probs are the model's
            seq = hyp(r, b, k)
            probs = np_expert_path_probs(cache, b, seq)
            np.testing.assert_allclose(
                r.log_probs[b, k, : len(seq)], np.log(probs[np.arange(len(seq)), seq]), atol=1e-4
            )


# (2) no returned hypothesis omits a phrase: random phrases (1-3 tokens, up to 3 per
# source, different per source, tokens may repeat and overlap), small beams.
def _random_constraints(rng: np.random.Generator, B: int, max_total: int) -> np.ndarray:
    out = np.full((B, 3, 3), -1, np.int32)
    for b in range(B):
        total = 0
        for c in range(int(rng.integers(1, 4))):
            n = int(rng.integers(1, 4))
            if total + n > max_total:
                break
            out[b, c, :n] = rng.choice(GENERATED, n)
            total += n
    return out


@pytest.mark.parametrize("beam_size", [1, 3])
def test_every_returned_hypothesis_contains_every_phrase(beam_size):
    B, max_len, n_best = 4, 7, beam_size
    for seed in range(25):
        rng = np.random.default_rng(seed)
        constraints = _random_constraints(rng, B, max_total=max_len - 1)
        cache = make_rnn_cache(B, seed=seed)
        r = cbs(
            rnn_step_no_attention, cache, constraints=jnp.asarray(constraints),
            beam_size=beam_size, n_best=n_best, max_len=max_len, alpha=0.0, **IDS,
        )  # fmt: skip
        for b in range(B):
            phrases = phrases_of(constraints, b)
            # some hypothesis always exists: the phrases fit before max_len
            assert r.scores[b, 0] > -np.inf, (seed, b, phrases)
            for k in range(n_best):
                if r.scores[b, k] == -np.inf:
                    assert r.lengths[b, k] == 0
                    continue
                seq = hyp(r, b, k)
                for p in phrases:
                    assert contains(body(seq), p), (seed, b, k, seq, phrases)
                # alpha 0: the score is the hypothesis's summed model log-prob
                np.testing.assert_allclose(r.scores[b, k], r.log_probs[b, k].sum(), rtol=1e-5)


def test_rows_are_searched_independently():
    """A source's hypotheses do not depend on the other sources' constraints."""
    rng = np.random.default_rng(7)
    constraints = _random_constraints(rng, 3, max_total=5)
    cache = make_rnn_cache(3, seed=7)
    kw = dict(beam_size=3, n_best=2, max_len=7, alpha=0.6, **IDS)
    together = cbs(rnn_step_no_attention, cache, constraints=jnp.asarray(constraints), **kw)
    for b in range(3):
        alone = cbs(
            rnn_step_no_attention, jax.tree.map(lambda x, b=b: x[b : b + 1], cache),
            constraints=jnp.asarray(constraints[b : b + 1]), **kw,
        )  # fmt: skip
        assert_same_result(jax.tree.map(lambda x, b=b: x[b : b + 1], together), alone)


def test_bigram_multi_token_phrases_per_row():
    """The bigram table loves "a EOS" and "c c c"; phrases pull other tokens in."""
    A, B_, C = 3, 4, 5
    constraints = np.array([[[B_, C], [-1, -1]], [[C, -1], [B_, A]]], np.int32)
    r = cbs(
        bigram_step, None, constraints=jnp.asarray(constraints), batch_size=2, beam_size=2,
        n_best=2, max_len=6, **IDS,
    )  # fmt: skip
    for b in range(2):
        for k in range(2):
            assert all(contains(body(hyp(r, b, k)), p) for p in phrases_of(constraints, b))


# (3) without constraints: beam_search, whatever the options
@pytest.mark.parametrize(
    "options",
    [
        dict(beam_size=4, n_best=3, alpha=1.0, length_penalty="hf", coverage=0.3),
        dict(beam_size=3, n_best=1, alpha=0.6, early_stopping=False, min_len=2),
        dict(beam_size=2, n_best=2, alpha=0.0, early_stopping=True, no_repeat_ngram_size=2),
    ],
)
def test_without_constraints_equals_beam_search(options):
    cache = make_rnn_cache(3, seed=3)
    kw = dict(max_len=6, src_mask=cache["src_mask"], **IDS, **options)
    plain = jitted(beam_search)(rnn_step, cache, **kw)
    assert_same_result(cbs(rnn_step, cache, constraints=None, **kw), plain)
    if "coverage" in options:  # phrases of only padding: none at all, in a wider array
        absent = jnp.full((3, 2, 2), -1, jnp.int32)
        assert_same_result(cbs(rnn_step, cache, constraints=absent, **kw), plain)


def test_bigram_without_constraints_equals_beam_search():
    kw = dict(batch_size=2, beam_size=3, n_best=3, max_len=6, alpha=0.6, **IDS)
    plain = jitted(beam_search)(bigram_step, None, **kw)
    assert_same_result(cbs(bigram_step, None, constraints=None, **kw), plain)


def test_constraint_values_are_traced():
    """New phrases of the same shape reuse the compiled program."""
    cache = make_rnn_cache(2, seed=0)
    kw = dict(beam_size=2, max_len=6, **IDS)
    cbs(rnn_step_no_attention, cache, constraints=jnp.array([[[3, -1]], [[4, 4]]]), **kw)
    size = cbs._cache_size()
    r = cbs(rnn_step_no_attention, cache, constraints=jnp.array([[[4, 1]], [[1, -1]]]), **kw)
    assert cbs._cache_size() == size
    assert contains(body(hyp(r, 0, 0)), [4, 1]) and 1 in body(hyp(r, 1, 0))


def test_unreachable_constraints_leave_empty_slots():
    """A phrase the bans forbid is never met: the source gets no hypothesis."""
    cache = make_rnn_cache(2, seed=0)
    r = cbs(
        rnn_step_no_attention, cache, constraints=jnp.array([[[3, 3]], [[4, -1]]]),
        suppress_tokens=(3,), beam_size=2, max_len=5, **IDS,
    )  # fmt: skip
    assert r.scores[0, 0] == -np.inf and r.lengths[0, 0] == 0
    assert r.scores[1, 0] > -np.inf and 4 in hyp(r, 1, 0)


def test_decode_dispatches_constraints_to_the_constrained_search():
    cache = make_rnn_cache(2, seed=4)
    constraints = jnp.array([[[3, 4]], [[1, -1]]])
    cfg = DecodeConfig(beam_size=3, n_best=2, alpha=0.6, max_len=6, early_stopping="false")
    r = decode(rnn_step_no_attention, cache, cfg, constraints=constraints, **IDS)
    direct = cbs(
        rnn_step_no_attention, cache, constraints=constraints, beam_size=3, n_best=2,
        alpha=0.6, max_len=6, early_stopping=False, **IDS,
    )  # fmt: skip
    assert_same_result(r, direct)
    for method in ("greedy", "sample", "contrastive"):
        with pytest.raises(ValueError, match="constraints need method 'beam'"):
            decode(rnn_step_no_attention, cache, DecodeConfig(method=method, max_len=6),
                   constraints=constraints, **IDS)  # fmt: skip
    with pytest.raises(ValueError, match="constraints need method 'beam'"):
        decode(rnn_step_no_attention, cache, DecodeConfig(beam_size=2, diverse_groups=2),
               constraints=constraints, **IDS)  # fmt: skip
    with pytest.raises(ValueError, match="prefix is not supported with constraints"):
        decode(rnn_step_no_attention, cache, cfg, constraints=constraints,
               prefix=jnp.array([[3], [4]]), **IDS)  # fmt: skip


# (4) one-line ValueErrors naming the argument
@pytest.mark.parametrize(
    "constraints, max_len, needle",
    [
        ([[[3, V]]], 6, f"constraints must hold token ids in [0, {V})"),
        ([[[3, -2]]], 6, "got -2"),
        ([[[3, 3, 4, 4, 3, 4, 3]]], 6, "row 0 phrase 0 has 7 tokens, more than max_len (6)"),
        ([[[3, 4, 3], [4, 3, 4]]], 5, "constraints of row 0 need 6 tokens in all"),
        ([[[3, 2]]], 6, "must not contain eos_id 2 (row 0, phrase 0)"),
        ([[[0, 3]]], 6, "must not contain pad_id 0"),
        ([[[-1, 3]]], 6, "row 0 phrase 0 has a token after its -1 padding"),
        ([[3, 4]], 6, "constraints must have shape [1, C, P]"),
        ([[[3]], [[4]]], 6, "constraints must have shape [1, C, P]"),
        ([[[3.0]]], 6, "constraints must hold integer token ids"),
    ],
)
@pytest.mark.parametrize("decoder", [constrained_beam_search, cbs], ids=["eager", "jitted"])
def test_bad_constraints_are_one_line_errors(constraints, max_len, needle, decoder):
    cache = make_rnn_cache(1, seed=0)
    with pytest.raises(ValueError) as e:
        decoder(rnn_step_no_attention, cache, constraints=np.array(constraints),
                beam_size=2, max_len=max_len, **IDS)  # fmt: skip
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_shapes_are_checked_under_an_outer_jit():
    cache = make_rnn_cache(2, seed=0)

    @jax.jit
    def run(c):
        return constrained_beam_search(
            rnn_step_no_attention, cache, constraints=c, beam_size=2, max_len=5, **IDS
        )

    with pytest.raises(ValueError, match=r"constraints must have shape \[2, C, P\]"):
        run(jnp.zeros((3, 1, 1), jnp.int32))


@pytest.mark.parametrize("family", ["transformer", "rnn_bahdanau"])
def test_constraints_over_a_shared_memory_equal_repeated_rows(family):
    """Constrained search folds the model's cache with its ``expand`` (memory per source)
    and the constraint progress per beam; the result is the fully repeated cache's."""
    model, params = model_and_params(family)
    src, mask, _ = model_inputs(model.config.vocab_size, pad_rows=True)
    cache = JIT["init_cache"](model, params, JIT["encode"](model, params, src, mask), mask, 10)
    ids = dict(bos_id=model.config.bos_id, eos_id=model.config.eos_id, pad_id=0)
    constraints = jnp.asarray([[[5, 6], [7, -1]], [[8, -1], [-1, -1]], [[9, 10], [-1, -1]]])
    options = dict(constraints=constraints, beam_size=3, n_best=2, max_len=10, coverage=0.2,
                   src_mask=mask, **ids)  # fmt: skip
    shared, repeated = beam_search_shared_and_repeated(
        model, params, cache, decoder=constrained_beam_search, **options
    )
    np.testing.assert_array_equal(shared.tokens, repeated.tokens)
    np.testing.assert_allclose(shared.scores, repeated.scores, rtol=1e-5, atol=1e-5)
    assert (np.asarray(shared.scores) > -np.inf).any()  # the phrases were placed
    step = recording_step(model.step)
    jax.jit(lambda p, c: constrained_beam_search(step, c, params=p, **options))(params, cache)
    assert {3, 3 * 3} in step.calls  # the loop's step: per-source leaves at B = 3 rows
