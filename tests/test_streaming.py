"""seqjax.decoding.streaming: tokens leave the compiled loop in order, one call per
position; every consumer shares one compiled program; no callback when off."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from toy_models import (
    BIGRAM_STATIC,
    RNN_STATIC,
    amateur_step,
    bigram_step,
    make_rnn_cache,
    rnn_step,
)

from seqjax.decoding import (
    STATIC_ARGNAMES,
    beam_sample,
    beam_search,
    contrastive,
    diverse_beam_search,
    greedy,
    jitted,
    sample,
    streaming,
)
from seqjax.decoding.streaming import consumer, register, unregister


def _collect():
    events = []
    return events, lambda t, tokens: events.append((t, tokens.copy()))


@pytest.mark.parametrize(
    "decoder, kw",
    [(greedy, {}), (sample, dict(key=jax.random.key(0), num_samples=2, temperature=2.0))],
)
def test_token_loops_stream_each_rows_token_in_order(cache3, decoder, kw):
    events, fn = _collect()
    with consumer(fn) as sid:
        r = jax.block_until_ready(jitted(decoder)(rnn_step, cache3, stream=sid, **kw, **RNN_STATIC))
    steps = int(np.max(r.lengths))  # the loop stops once every row is done
    assert [t for t, _ in events] == list(range(steps))
    streamed = np.stack([tokens for _, tokens in events], axis=1)  # [N, steps]
    np.testing.assert_array_equal(
        streamed, np.asarray(r.tokens).reshape(streamed.shape[0], -1)[:, :steps]
    )
    # streaming changes nothing in the result
    ref = jitted(decoder)(rnn_step, cache3, **kw, **RNN_STATIC)
    np.testing.assert_array_equal(r.tokens, ref.tokens)


@pytest.mark.parametrize(
    "decoder, kw", [(beam_search, {}), (beam_sample, dict(key=jax.random.key(1)))]
)
def test_beam_streams_the_best_hypothesis_and_ends_with_the_result(cache3, decoder, kw):
    events, fn = _collect()
    kw = dict(beam_size=3, n_best=2, alpha=0.6, **kw, **RNN_STATIC)
    with consumer(fn) as sid:
        r = jax.block_until_ready(jitted(decoder)(rnn_step, cache3, stream=sid, **kw))
    assert [t for t, _ in events] == list(range(len(events)))
    np.testing.assert_array_equal(events[-1][1], r.tokens[:, 0])
    for t, tokens in events:  # live prefixes fill columns 0..t only
        assert tokens.shape == (3, RNN_STATIC["max_len"])
        assert not np.any(tokens[:, t + 1 :] != RNN_STATIC["pad_id"])


def test_beam_one_without_eos_streams_the_greedy_path():
    """EOS banned until the last position: beam 1's live hypothesis is greedy's path."""
    L = BIGRAM_STATIC["max_len"]
    events, fn = _collect()
    with consumer(fn) as sid:
        r = jitted(beam_search)(
            bigram_step, None, beam_size=1, min_len=L - 1, stream=sid, **BIGRAM_STATIC
        )
        jax.block_until_ready(r)  # the calls happen while the program runs
    path = jitted(greedy)(bigram_step, None, min_len=L - 1, **BIGRAM_STATIC).tokens[:, 0]
    assert len(events) == L
    for t, tokens in events:
        np.testing.assert_array_equal(tokens[:, : t + 1], path[:, : t + 1])


def test_one_compilation_serves_every_consumer_and_none_has_no_callback(cache3):
    run = jax.jit(greedy, static_argnames=STATIC_ARGNAMES[greedy])
    got, sizes = {}, []
    for name in ("a", "b", "c"):
        sid = register(lambda t, tok, name=name: got.setdefault(name, []).append(t))
        jax.block_until_ready(run(rnn_step, cache3, stream=sid, **RNN_STATIC))
        unregister(sid)
        sizes.append(run._cache_size())  # jit's cache is shared with earlier tests
    assert sizes[0] == sizes[1] == sizes[2]  # consumers b and c compiled nothing
    assert got["a"] == got["b"] == got["c"] and got["a"][0] == 0  # each got its own calls
    off = run.lower(rnn_step, cache3, **RNN_STATIC).as_text()
    on = run.lower(rnn_step, cache3, stream=1, **RNN_STATIC).as_text()
    assert "callback" in on and "callback" not in off


def test_bad_stream_is_a_one_line_error(cache3):
    with pytest.raises(ValueError, match="stream must be None or a registered consumer ID"):
        greedy(rnn_step, cache3, stream="stdout", **RNN_STATIC)


def test_greedy_contrastive_streams_each_rows_token_in_order(cache3):
    events, fn = _collect()
    args = (rnn_step, cache3, amateur_step, make_rnn_cache(3, seed=9))
    kw = dict(beam_size=1, contrastive_lambda=1.0, **RNN_STATIC)
    with consumer(fn) as sid:
        r = jax.block_until_ready(jitted(contrastive)(*args, stream=sid, **kw))
    steps = int(np.max(r.lengths))
    assert [t for t, _ in events] == list(range(steps))
    streamed = np.stack([tokens for _, tokens in events], axis=1)
    np.testing.assert_array_equal(streamed, np.asarray(r.tokens)[:, 0, :steps])
    np.testing.assert_array_equal(r.tokens, jitted(contrastive)(*args, **kw).tokens)


@pytest.mark.parametrize(
    "decoder, kw",
    [
        # (the options of test_contrastive / test_outputs: the unstreamed runs are compiled once)
        (contrastive, dict(beam_size=3, n_best=3, contrastive_lambda=1.0, contrastive_alpha=0.1)),
        (diverse_beam_search, dict(beam_size=4, num_groups=2, n_best=4, diversity_penalty=1.0)),
    ],
)
def test_contrastive_beam_and_diverse_stream_the_best_and_end_with_it(cache3, decoder, kw):
    events, fn = _collect()
    args = (rnn_step, cache3)
    if decoder is contrastive:
        args = (*args, amateur_step, make_rnn_cache(3, seed=9))
    with consumer(fn) as sid:
        r = jax.block_until_ready(jitted(decoder)(*args, stream=sid, **kw, **RNN_STATIC))
    assert [t for t, _ in events] == list(range(len(events)))
    np.testing.assert_array_equal(events[-1][1], r.tokens[:, 0])
    for t, tokens in events:
        assert tokens.shape == (3, RNN_STATIC["max_len"])
        assert not np.any(tokens[:, t + 1 :] != RNN_STATIC["pad_id"])
    np.testing.assert_array_equal(r.tokens, jitted(decoder)(*args, **kw, **RNN_STATIC).tokens)


def test_one_group_streams_what_beam_search_streams(cache3):
    """Diverse beam search with one group is beam search: the same calls, in order."""
    kw = dict(alpha=0.6, n_best=2, **RNN_STATIC)
    (beam, beam_fn), (one, one_fn) = _collect(), _collect()
    with consumer(beam_fn) as sid:
        jax.block_until_ready(jitted(beam_search)(rnn_step, cache3, beam_size=3, stream=sid, **kw))
    with consumer(one_fn) as sid:
        r = jitted(diverse_beam_search)(
            rnn_step, cache3, beam_size=3, num_groups=1, stream=sid, **kw
        )
        jax.block_until_ready(r)
    assert [t for t, _ in one] == [t for t, _ in beam] and len(beam) > 1
    for (_, a), (_, b) in zip(one, beam, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("decoder", [greedy, beam_search])
def test_stream_every_sends_bursts_but_calls_the_consumer_once_per_position(
    cache3, decoder, monkeypatch
):
    """``stream_every=k``: ceil(steps / k) host callbacks, the last at the loop's end, and
    the consumer sees exactly the per-position calls of ``stream_every=1``."""
    sends = []
    real = streaming._dispatch

    def counting(sid, last, count, items):
        sends.append((int(last), int(count)))
        return real(sid, last, count, items)

    monkeypatch.setattr(streaming, "_dispatch", counting)  # traced below: new programs
    kw = dict(RNN_STATIC, beam_size=3) if decoder is beam_search else RNN_STATIC
    seen = {}
    for k in (1, 2, 5, 64):
        sends.clear()
        events, fn = _collect()
        run = jax.jit(decoder, static_argnames=STATIC_ARGNAMES[decoder])
        with consumer(fn) as sid:
            jax.block_until_ready(run(rnn_step, cache3, stream=sid, stream_every=k, **kw))
        steps = len(events)
        assert [t for t, _ in events] == list(range(steps)) and steps > 2
        assert len(sends) == -(-steps // k)  # ceil
        assert [c for _, c in sends[:-1]] == [k] * (len(sends) - 1)
        assert sends[-1][0] == steps - 1 and sum(c for _, c in sends) == steps
        seen[k] = events
    for k in (2, 5, 64):
        assert len(seen[k]) == len(seen[1])
        for (_, a), (_, b) in zip(seen[k], seen[1], strict=True):
            np.testing.assert_array_equal(a, b)


def test_bad_stream_every_is_a_one_line_error(cache3):
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="stream_every must be an integer >= 1"):
            greedy(rnn_step, cache3, stream=1, stream_every=bad, **RNN_STATIC)


def test_a_streaming_program_has_no_effects_so_jit_keeps_its_fast_dispatch(cache3):
    """An effect (io_callback, debug.callback) would send every call of the decoder down
    jit's Python dispatch path, ~11 us per argument leaf (2-3 ms per call of a model)."""
    jaxpr = jax.make_jaxpr(lambda c: greedy(rnn_step, c, stream=1, **RNN_STATIC))(cache3)
    assert "pure_callback" in str(jaxpr) and not jaxpr.effects
