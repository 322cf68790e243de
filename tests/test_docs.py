"""The runnable examples in public docstrings run and print what they say (doctest)."""
from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["nfkd.flows.base", "nfkd.flows.glow", "nfkd.flows.maf", "nfkd.flows.iaf", "nfkd.fold", "nfkd.inference"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
