from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Triton reads TRITON_INTERPRET when it is first imported (torch.compile imports it too): without a
# GPU, kernels must run in the interpreter, so set it before any test imports triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Keep CI on 2 cores predictable.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


@pytest.fixture
def shared_datasets() -> Path:
    root = Path(os.environ.get("NFKD_DATA_ROOT", SHARED))
    if not root.exists():
        pytest.skip(f"shared datasets not found at {root}")
    return root


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """A test that runs a model with threads=N (runners pin it in the calling thread) must not change
    the thread count, and so the float32 reduction order, of the tests after it."""
    n = torch.get_num_threads()
    yield
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
