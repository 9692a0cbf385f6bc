"""seqjax.decoding.penalties: length and coverage penalties."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.decoding.penalties import coverage_penalty, length_penalty


def test_length_and_coverage_penalties():
    lengths = jnp.arange(1, 6)
    np.testing.assert_allclose(length_penalty(lengths, 0.7, "gnmt"), ((5 + lengths) / 6) ** 0.7)
    np.testing.assert_allclose(length_penalty(lengths, 1.3, "hf"), lengths**1.3, rtol=1e-6)
    np.testing.assert_allclose(length_penalty(lengths, 0.0, "hf"), 1.0)
    with pytest.raises(ValueError):
        length_penalty(lengths, 1.0, "fairseq")
    cov = jnp.array([[0.25, 3.0, 0.0], [0.5, 0.5, 0.5]])
    np.testing.assert_allclose(coverage_penalty(cov, 2.0), [2 * np.log(0.25), 6 * np.log(0.5)])
    mask = jnp.array([[True, True, False], [True, False, False]])
    np.testing.assert_allclose(coverage_penalty(cov, 1.0, mask), [np.log(0.25), np.log(0.5)])
    assert float(coverage_penalty(cov, 0.0, jnp.ones((2, 3), bool))[0]) == 0.0  # no NaN
