"""seqjax.decoding.result: DecodeResult is a pytree."""

from __future__ import annotations

import jax


def test_result_is_a_pytree(rnn_greedy):
    leaves = jax.tree.leaves(rnn_greedy)
    assert len(leaves) == 4
    assert jax.tree.map(lambda x: x.shape, rnn_greedy).lengths == (3, 1)
