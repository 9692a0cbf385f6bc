"""seqjax.decoding.diverse_beam_search: each group equals an exhaustive search of its
objective (log-probs minus the Hamming penalty of earlier groups' choices), and
width-1 groups equal a hand-written sequential greedy over the penalised scores."""

from __future__ import annotations

import jax
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
    BOS,
    EOS,
    EXPERT_W,
    IDS,
    PAD,
    RNN_STATIC,
    V,
    assert_same_result,
    hyp,
    make_rnn_cache,
    np_length_penalty,
    np_rnn_step,
    rnn_step,
)

from seqjax.decoding import beam_search, jitted
from seqjax.decoding.diverse_beam_search import diverse_beam_search

L = 4
WIDTH = (V - 2) ** (L - 1)  # a group this wide keeps every live prefix: it is exhaustive


def _row(cache, b):
    return (np.asarray(cache[k][b], np.float64) for k in ("h", "keys")), np.asarray(
        cache["src_mask"][b]
    )


def brute_force_penalised(cache, b, alpha, penalty_TxV):
    """All hypotheses of source ``b`` under ``sum_t (log p - penalty[t, y_t]) / lp``."""
    (h0, keys), mask = _row(cache, b)
    hyps = []

    def expand(prefix, h, total):
        logp, h, _ = np_rnn_step(EXPERT_W, prefix[-1] if prefix else BOS, h, keys, mask)
        t = len(prefix)
        for tok in range(V):
            if tok == PAD:
                continue
            seq, tot = prefix + [tok], total + logp[tok] - penalty_TxV[t, tok]
            if tok == EOS or len(seq) == L:
                hyps.append((tot / np_length_penalty(len(seq), alpha, "gnmt"), seq))
            else:
                expand(seq, h, tot)

    expand([], h0, 0.0)
    return sorted(hyps, key=lambda x: -x[0])


@pytest.mark.parametrize("alpha, lam", [(0.0, 0.7), (0.8, 0.3)])
def test_each_group_is_an_exhaustive_search_of_its_objective(alpha, lam):
    """Two exhaustive-width groups. Group 0 keeps every live prefix, so at step t < L-1
    it holds the 3^(t+1) non-EOS prefixes: each non-EOS token was chosen by 3^t of its
    beams (none at the last step, where everything finishes). Group 1's objective is
    then log p minus lam * that count; both groups must find their exhaustive optimum."""
    cache = make_rnn_cache(2, seed=1)
    r = jitted(diverse_beam_search)(
        rnn_step, cache, beam_size=2 * WIDTH, num_groups=2, diversity_penalty=lam,
        alpha=alpha, per_group=True, max_len=L, **IDS,
    )  # fmt: skip
    counts = np.zeros((L, V))
    for t in range(L - 1):
        counts[t, [v for v in range(V) if v not in (PAD, EOS)]] = 3**t
    top = 5
    for b in range(2):
        for g, pen in enumerate([np.zeros((L, V)), lam * counts]):
            expected = brute_force_penalised(cache, b, alpha, pen)[:top]
            got = [hyp(r, b, g * WIDTH + k) for k in range(top)]
            assert got == [seq for _, seq in expected], (b, g)
            np.testing.assert_allclose(
                r.scores[b, g * WIDTH : g * WIDTH + top], [s for s, _ in expected], rtol=1e-4
            )
        # the penalty changed what group 1 found
        assert [hyp(r, b, k) for k in range(top)] != [hyp(r, b, WIDTH + k) for k in range(top)]


def np_sequential_greedy(cache, b, groups, lam, max_len):
    """Width-1 groups, alpha 0: each group takes the best penalised token; an EOS that
    ranks first finishes the group (its live beam, the best other token, still counts
    at that step); counts are of earlier, unfinished groups' live tokens this step."""
    (h0, keys), mask = _row(cache, b)
    state = [dict(seq=[], h=h0, total=0.0, done=False) for _ in range(groups)]
    live_prev = [BOS] * groups
    for t in range(max_len):
        counts = np.zeros(V)
        for g, s in enumerate(state):
            if s["done"]:
                continue
            logp, h, _ = np_rnn_step(EXPERT_W, live_prev[g], s["h"], keys, mask)
            scores = logp - lam * counts
            scores[PAD] = -np.inf
            best = int(np.argmax(scores))
            other = int(np.argmax(np.where(np.arange(V) == EOS, -np.inf, scores)))
            if best == EOS or t == max_len - 1:
                s.update(seq=s["seq"] + [best], total=s["total"] + scores[best], done=True)
                if t < max_len - 1:
                    counts[other] += 1
            else:
                s.update(seq=s["seq"] + [best], total=s["total"] + scores[best], h=h)
                live_prev[g] = best
                counts[best] += 1
    return [(s["total"], s["seq"]) for s in state]


def test_width_one_groups_equal_sequential_greedy(cache3):
    lam, G = 1.2, 3
    r = jitted(diverse_beam_search)(
        rnn_step, cache3, beam_size=G, num_groups=G, diversity_penalty=lam, alpha=0.0,
        per_group=True, **RNN_STATIC,
    )  # fmt: skip
    for b in range(3):
        expected = np_sequential_greedy(cache3, b, G, lam, RNN_STATIC["max_len"])
        assert [hyp(r, b, g) for g in range(G)] == [seq for _, seq in expected]
        np.testing.assert_allclose(r.scores[b], [s for s, _ in expected], rtol=1e-4)
    assert len({tuple(hyp(r, 0, g)) for g in range(G)}) == G  # the groups diverged


def test_one_group_is_beam_search_and_n_best_merges_groups(cache3):
    kw = dict(alpha=0.6, coverage=0.2, src_mask=cache3["src_mask"], **RNN_STATIC)
    one = jitted(diverse_beam_search)(rnn_step, cache3, beam_size=3, num_groups=1, n_best=2, **kw)
    assert_same_result(one, jitted(beam_search)(rnn_step, cache3, beam_size=3, n_best=2, **kw))
    pools = jitted(diverse_beam_search)(
        rnn_step, cache3, beam_size=4, num_groups=2, diversity_penalty=0.5, per_group=True, **kw
    )
    best = jitted(diverse_beam_search)(
        rnn_step, cache3, beam_size=4, num_groups=2, diversity_penalty=0.5, n_best=3, **kw
    )
    order = np.argsort(-np.asarray(pools.scores), axis=1, kind="stable")[:, :3]
    np.testing.assert_allclose(best.scores, np.take_along_axis(np.asarray(pools.scores), order, 1))


@pytest.mark.parametrize("groups", [0, 3])
def test_groups_must_divide_the_beam(cache3, groups):
    with pytest.raises(ValueError, match=r"num_groups must be >= 1 and divide beam_size \(4\)"):
        diverse_beam_search(rnn_step, cache3, beam_size=4, num_groups=groups, **RNN_STATIC)


@pytest.mark.parametrize("family", ["transformer", "rnn_luong"])
def test_groups_over_a_shared_memory_equal_repeated_rows(family):
    """The model's ``expand`` keeps the memory at one row per source for all ``G x G_k``
    beams; the groups find what they find with every cache leaf repeated."""
    model, params = model_and_params(family)
    src, mask, _ = model_inputs(model.config.vocab_size, pad_rows=True)
    cache = JIT["init_cache"](model, params, JIT["encode"](model, params, src, mask), mask, 12)
    ids = dict(bos_id=model.config.bos_id, eos_id=model.config.eos_id, pad_id=0)
    options = dict(beam_size=4, num_groups=2, diversity_penalty=0.7, per_group=True,
                   max_len=12, coverage=0.2, src_mask=mask, **ids)  # fmt: skip
    shared, repeated = beam_search_shared_and_repeated(
        model, params, cache, decoder=diverse_beam_search, **options
    )
    np.testing.assert_array_equal(shared.tokens, repeated.tokens)
    np.testing.assert_array_equal(shared.lengths, repeated.lengths)
    np.testing.assert_allclose(shared.scores, repeated.scores, rtol=1e-5, atol=1e-5)
    step = recording_step(model.step)
    jax.jit(lambda p, c: diverse_beam_search(step, c, params=p, **options))(params, cache)
    assert {3, 3 * 4} in step.calls  # the loop's step: per-source leaves at B = 3 rows
