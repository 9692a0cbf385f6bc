"""Options every decoder honours (``min_len``, repetition penalty, n-gram bans, forced
prefixes), behaviourally on a bigram table; the per-step pieces are in
test_logit_processors.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from toy_models import (
    B_,
    BIGRAM_STATIC,
    EOS,
    PAD,
    A,
    C,
    bigram_step,
    hyp,
)

from seqjax.decoding import beam_search, greedy, jitted, sample


def _greedy_bigram(**options) -> list[list[int]]:
    r = jitted(greedy)(bigram_step, None, **BIGRAM_STATIC, **options)
    return [hyp(r, b, 0) for b in range(2)]


NUMERIC_DEFAULTS = dict(min_len=0, repetition_penalty=1.0)  # passed explicitly: one compile


def test_min_len_bans_eos_until_reached():
    assert _greedy_bigram(**NUMERIC_DEFAULTS)[0] == [A, EOS]
    for min_len in (1, 3):
        seq = _greedy_bigram(min_len=min_len, repetition_penalty=1.0)[0]
        assert EOS not in seq[:min_len] and seq[-1] == EOS
        assert seq == [A] * min_len + [EOS]  # after a, the next best token is a


def test_repetition_penalty_discourages_repeats():
    repeats = _greedy_bigram(min_len=3, repetition_penalty=1.0)[0]
    assert repeats == [A, A, A, EOS]
    # a's logit 2.5 / 3 falls below b's 1; then after b, a (3 / 3) still beats b (2 / 3)
    penalised = _greedy_bigram(min_len=3, repetition_penalty=3.0)[0]
    assert penalised == [A, B_, A, EOS]


def test_no_repeat_ngram_size_blocks_repeated_bigrams():
    r = jitted(greedy)(
        bigram_step,
        None,
        no_repeat_ngram_size=2,
        min_len=3,
        repetition_penalty=1.0,
        **BIGRAM_STATIC,
    )
    seq = hyp(r, 0, 0)
    assert seq == [A, A, B_, A, EOS]  # a a -> a banned -> b; then a; then eos
    bigrams = list(zip(seq, seq[1:], strict=False))
    assert len(bigrams) == len(set(bigrams))


PREFIX = jnp.array([[C, PAD], [B_, A]])  # ragged: row 0 forces one token, row 1 two


def test_prefix_is_forced_and_max_len_caps_length():
    out = _greedy_bigram(**NUMERIC_DEFAULTS, prefix=PREFIX)
    assert out[0] == [C] * 6  # forced c, then c -> c never stops: capped at max_len
    assert out[1] == [B_, A, EOS]  # b a forced, then the model's eos
    r = jitted(beam_search)(
        bigram_step, None, beam_size=3, n_best=3, prefix=PREFIX, **BIGRAM_STATIC
    )
    s = jitted(sample)(
        bigram_step,
        None,
        key=jax.random.key(5),
        num_samples=5,
        prefix=PREFIX,
        temperature=2.0,
        **BIGRAM_STATIC,
    )
    for res, k_count in ((r, 3), (s, 5)):
        assert res.tokens.shape[-1] == 6 and np.all(np.asarray(res.lengths) <= 6)
        for k in range(k_count):
            assert hyp(res, 0, k)[:1] == [C]
            assert hyp(res, 1, k)[:2] == [B_, A]
    # beam weighs whole sequences: after the forced c, ending now beats c^6
    assert hyp(r, 0, 0) == [C, EOS]


def test_prefix_overrides_bans():
    # row 1 forces "b b": with n-gram size 1 the second b would be banned
    prefix = jnp.array([[B_, B_], [A, PAD]])
    r = jitted(greedy)(
        bigram_step,
        None,
        prefix=prefix,
        no_repeat_ngram_size=1,
        min_len=0,
        repetition_penalty=1.0,
        **BIGRAM_STATIC,
    )
    seq0, seq1 = hyp(r, 0, 0), hyp(r, 1, 0)
    assert seq0[:2] == [B_, B_] and seq1 == [A, EOS]
    assert len(set(seq0[2:])) == len(seq0[2:]) and B_ not in seq0[2:]
