"""The suite's guard against running out of memory mappings (see conftest.py) works."""

from __future__ import annotations

import gc
import sys

import jax
import jax.numpy as jnp
import pytest
from conftest import mapping_count


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts /proc/self/maps")
def test_clearing_jit_caches_releases_the_mappings_of_compiled_programs():
    # Earlier modules in this worker leave compiled programs behind; released while this
    # test compiles (a collection it triggers), they made the count fall instead of grow.
    jax.clear_caches()
    gc.collect()
    before = mapping_count()
    fns = [jax.jit(lambda x, i=i: x * i + 1) for i in range(60)]
    for i, f in enumerate(fns):
        f(jnp.ones((i + 1,))).block_until_ready()  # 60 distinct programs
    grown = mapping_count()
    assert grown - before >= 60, (before, grown)  # each program holds mappings
    del fns, f
    jax.clear_caches()
    gc.collect()
    after = mapping_count()
    assert grown - after >= 60, (before, grown, after)  # ...which the guard can release
