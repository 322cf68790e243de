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


def _public_modules() -> list[Path]:
    return [p for pkg in ("nfkd", "export", "kernels") for p in sorted((REPO / pkg).rglob("*.py"))
            if not p.name.startswith("_") or p.name == "__init__.py"]


def test_public_modules_declare_all_before_their_definitions():
    """``__all__`` at the top of every public module (after its imports), listing only defined names."""
    import ast

    problems = []
    for p in _public_modules():
        tree = ast.parse(p.read_text())
        defs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
        if not defs:
            continue
        first = min(min([n.lineno] + [d.lineno for d in n.decorator_list]) for n in defs)
        alls = [n for n in tree.body if isinstance(n, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "__all__" for t in n.targets)]
        rel = p.relative_to(REPO)
        if not alls:
            problems.append(f"{rel}: no __all__")
        elif alls[0].lineno > first:
            problems.append(f"{rel}: __all__ at line {alls[0].lineno}, after the first definition (line {first})")
    assert not problems, "\n".join(problems)
