"""beam_search(early_stopping=...): HF's True / False / "never" (parity with generate() is
pinned in tests/test_interop_hf_search.py); here the checks that need no torch."""

from __future__ import annotations

import numpy as np
import pytest
from toy_models import RNN_STATIC, assert_same_result, rnn_step

from seqjax.decoding import beam_search, jitted

BEAM = dict(beam_size=3, alpha=1.0, length_penalty="hf", **RNN_STATIC)


def test_never_is_the_default(cache3):
    assert_same_result(
        jitted(beam_search)(rnn_step, cache3, n_best=2, **BEAM),
        jitted(beam_search)(rnn_step, cache3, n_best=2, early_stopping="never", **BEAM),
    )


@pytest.mark.parametrize("early_stopping", [True, False])
def test_n_best_is_the_head_of_the_beam_size_pool(cache3, early_stopping):
    """True/False decide on a pool of beam_size hypotheses; n_best returns its head."""
    full = jitted(beam_search)(rnn_step, cache3, n_best=3, early_stopping=early_stopping, **BEAM)
    head = jitted(beam_search)(rnn_step, cache3, n_best=1, early_stopping=early_stopping, **BEAM)
    np.testing.assert_array_equal(head.tokens, full.tokens[:, :1])
    np.testing.assert_allclose(head.scores, full.scores[:, :1])
    # stopping early never finds a better best hypothesis than the exact search
    never = jitted(beam_search)(rnn_step, cache3, n_best=1, **BEAM)
    assert np.all(np.asarray(head.scores) <= np.asarray(never.scores) + 1e-6)


@pytest.mark.parametrize("bad", ["always", 1, 0, None])
def test_bad_value_is_a_one_line_error(cache3, bad):
    with pytest.raises(ValueError, match="early_stopping must be True, False or 'never'"):
        beam_search(rnn_step, cache3, n_best=1, early_stopping=bad, **BEAM)
