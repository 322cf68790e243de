"""A toy backend for the registry test: eager PyTorch under another name, its probe, loader and Runner
in this one module, as every backend's are (tests/test_inference.py registers it with one line)."""
from __future__ import annotations

import copy
from typing import Any

from nfkd.inference.sources import ModelSource, trained_flow
from nfkd.inference.torch_runners import TorchRunner

__all__ = ["ToyRunner", "probe", "load"]


class ToyRunner(TorchRunner):
    backend = "toy"


def probe() -> tuple[bool, str, tuple[str, ...]]:
    return True, "toy: eager PyTorch under another name", ("cpu",)


def load(source: ModelSource, device: str, threads: int | None, options: dict[str, Any]) -> ToyRunner:
    return ToyRunner(copy.deepcopy(trained_flow(source, "toy")), source.meta, "toy", device, threads)
