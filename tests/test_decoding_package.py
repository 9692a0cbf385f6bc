"""seqjax.decoding's public names: each is the function, defined in the module named after it."""

from __future__ import annotations

import importlib
import types

import pytest

import seqjax.decoding

PUBLIC = ["greedy", "sample", "beam_search", "contrastive", "score", "decode", "jitted",
          "constrained_beam_search"]  # fmt: skip


@pytest.mark.parametrize("name", PUBLIC)
def test_public_name_is_the_function_of_its_module(name):
    public = getattr(seqjax.decoding, name)
    assert callable(public) and not isinstance(public, types.ModuleType)
    module = importlib.import_module(f"seqjax.decoding.{name}")
    assert isinstance(module, types.ModuleType)
    assert getattr(module, name) is public
    assert name in seqjax.decoding.__all__


def test_from_imports_reach_function_and_module_names():
    from seqjax.decoding import greedy
    from seqjax.decoding.greedy import greedy as same
    from seqjax.decoding.score import target_mask

    assert greedy is same and callable(target_mask)
