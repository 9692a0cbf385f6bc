"""Every module of seqjax.decoding (and the model interface): its docstring examples run
and pass (``doctest``)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import seqjax.decoding

MODULES = sorted(
    f"seqjax.decoding.{m.name}" for m in pkgutil.iter_modules(seqjax.decoding.__path__)
) + ["seqjax.models.interface"]
# Modules whose docstrings hold no runnable example (a dataclass of results).
NO_EXAMPLES = {"seqjax.decoding.result"}


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    # import_module, not getattr: `seqjax.decoding.greedy` is the function, not the module
    module = importlib.import_module(name)
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    result = doctest.testmod(module, optionflags=flags)
    assert result.failed == 0
    assert result.attempted > 0 or name in NO_EXAMPLES, f"{name} has no doctest example"
