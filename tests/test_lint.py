"""The linter configured in pyproject.toml (ruff: pyflakes, import order, bugbear) passes on the tree.

Run inside the test suite so that README's test command (what .ci/run runs) includes it.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _ruff() -> list[str]:
    exe = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if not Path(exe).exists():
        pytest.fail("ruff is not installed: it is part of the dev extra (pip install -e '.[dev]')")
    return [exe]


def test_ruff_check_passes():
    r = subprocess.run([*_ruff(), "check", "--no-cache", "."], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
