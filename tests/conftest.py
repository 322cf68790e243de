from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Triton reads TRITON_INTERPRET when it is first imported (torch.compile imports it too): without a
# GPU, kernels must run in the interpreter, so set it before any test imports triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Progress bars and phase lines (nfkd.progress) stay off in tests even under `pytest -s`;
# tests/test_progress.py turns them on where it checks them. NFKD_PROGRESS=1 in the shell wins.
os.environ.setdefault("NFKD_PROGRESS", "0")

# Keep CI on 2 cores predictable.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


# --- two tiers: the quick developer loop and CI ------------------------------------------------------
# `python -m pytest -q` deselects tests marked `slow` (end-to-end runs: the demo, fresh-process CLI
# round trips, experiments, the real Triton server, real-Inception FID, full AOT compiles);
# `--slow` runs both tiers, as .ci/run and README's test command do. Tests named by node id
# (`pytest tests/test_demo.py::test_x`) run whatever their tier.


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true", default=False,
                     help="also run the tests marked slow (CI runs both tiers; the default is the quick loop)")


def _runs_slow(config: pytest.Config) -> bool:
    return config.getoption("--slow") or any("::" in str(a) for a in config.args)


def pytest_report_header(config: pytest.Config) -> str:
    return "tiers: quick + slow" if _runs_slow(config) else "tiers: quick only (tests marked slow deselected; --slow runs them)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _runs_slow(config):
        return
    slow = [item for item in items if item.get_closest_marker("slow") is not None]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if item.get_closest_marker("slow") is None]


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


@pytest.fixture(autouse=True)
def _keep_loggers():
    """A test that runs the service's CLI in-process points nfkd's loggers at that test's captured stderr
    (``configure_logging``); once the capture closes, a later log line would print a logging error into
    another test's stderr. Each test gets the loggers back as they were."""
    import logging

    names = ("nfkd", "uvicorn", "uvicorn.error")
    saved = {n: (list(logging.getLogger(n).handlers), logging.getLogger(n).level, logging.getLogger(n).propagate)
             for n in names}
    yield
    for n, (handlers, level, propagate) in saved.items():
        lg = logging.getLogger(n)
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate = propagate
