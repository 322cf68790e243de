"""README's test command and .ci/run must stay the same steps (the brief: CI calls README's command)."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _normalize(step: str) -> list[str]:
    """A shell step as words, without pip's -q (CI is quieter, the steps are the same)."""
    return [w for w in shlex.split(step) if w != "-q"]


def _readme_commands() -> list[str]:
    section = REPO.joinpath("README.md").read_text().split("## Two commands on a fresh machine", 1)[1]
    return re.findall(r"```bash\n(.+?)\n```", section.split("\n## ", 1)[0], flags=re.S)


def test_ci_runs_the_readme_test_command():
    main_job, tests = _readme_commands()
    readme_steps = [_normalize(s) for s in tests.split("&&")]
    assert readme_steps[-1][:3] == ["python", "-m", "pytest"]
    assert "--slow" in readme_steps[-1]  # both tiers: the quick loop leaves the slow (end-to-end) tier out
    ci_lines = [ln.strip() for ln in REPO.joinpath(".ci/run").read_text().splitlines()]
    ci_steps = [_normalize(ln) for ln in ci_lines if ln and not ln.startswith(("#", "set ", "cd ", "export "))]
    assert ci_steps == readme_steps
    # the main job sets up the same environment before its own last step
    main_steps = [_normalize(s) for s in main_job.split("&&")]
    assert main_steps[:4] == readme_steps[:4] and main_steps[-1][:3] == ["python", "-m", "nfkd"]


def test_readme_names_the_quick_loop_apart_from_the_ci_command():
    section = REPO.joinpath("README.md").read_text().split("## Two commands on a fresh machine", 1)[1].split("\n## ", 1)[0]
    assert "`python -m pytest -q`" in section and "`slow`" in section
