"""seqjax.decoding.batch_tree: infer, repeat and gather batch rows."""

from __future__ import annotations

import jax.numpy as jnp
import pytest

from seqjax.decoding.batch_tree import gather_rows, infer_batch_size, repeat_rows


def test_batch_tree_helpers():
    tree = {"a": jnp.arange(6).reshape(3, 2), "step": jnp.array(4)}
    assert infer_batch_size(tree) == 3
    rep = repeat_rows(tree, 2)
    assert rep["a"][:, 0].tolist() == [0, 0, 2, 2, 4, 4] and int(rep["step"]) == 4
    assert gather_rows(tree, jnp.array([2, 0]))["a"][:, 0].tolist() == [4, 0]
    with pytest.raises(ValueError, match="batch_size"):
        infer_batch_size(None)
