"""seqjax.decoding.score: teacher-forced log-probs, the target mask."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from toy_models import (
    IDS,
    rnn_step,
)

from seqjax.decoding import jitted, score
from seqjax.decoding.score import target_mask


def test_score_equals_greedy_log_probs(cache3, rnn_greedy):
    g = rnn_greedy
    lp, total = jitted(score)(rnn_step, cache3, g.tokens[:, 0], **IDS)
    np.testing.assert_allclose(lp, g.log_probs[:, 0], atol=1e-5)
    np.testing.assert_allclose(total, g.scores[:, 0], atol=1e-5)


def test_target_mask_stops_after_first_eos():
    t = jnp.array([[4, 3, 3, 0], [4, 4, 4, 4]])
    assert target_mask(t, 3, 0).tolist() == [[True, True, False, False], [True] * 4]
