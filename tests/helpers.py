"""Shared test utilities: random (non-identity) parameters and brute-force references."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from nfkd.testing import perturb  # noqa: F401  (re-exported for the tests)


def brute_logabsdet(fn, x: torch.Tensor) -> torch.Tensor:
    """log|det J| of fn at each sample of x, from the full float64 autograd Jacobian."""
    out = []
    for i in range(x.shape[0]):
        xi = x[i : i + 1]

        def flat(v: torch.Tensor, xi: torch.Tensor = xi) -> torch.Tensor:
            return fn(v.view_as(xi)).reshape(-1)

        jac = torch.autograd.functional.jacobian(flat, xi.reshape(-1))
        out.append(torch.linalg.slogdet(jac)[1])
    return torch.stack(out)


def one_line_error(capsys, argv: list[str]) -> str:
    """Run ``nfkd ARGV`` in-process; it must exit 2 with one ``error:`` line and no traceback."""
    from nfkd.__main__ import main

    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, (argv, err)
    assert err.count("\n") == 1 and "error: " in err and "Traceback" not in err, err
    return err


def run_nfkd(*args: str, cwd=None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m nfkd ARGS`` in a subprocess (from the repository root); it must exit 0."""
    r = subprocess.run([sys.executable, "-m", "nfkd", *args], capture_output=True, text=True,
                       cwd=cwd or Path(__file__).resolve().parents[1], timeout=timeout)
    assert r.returncode == 0, r.stderr[-2000:]
    return r


def cli_teacher_then_student(tmp_path: Path, arch: str, steps: int, *distill_args: str) -> Path:
    """``nfkd train`` a teacher on wine, then ``nfkd distill`` a student from it (fresh processes); the
    student's checkpoint path."""
    common = ["--data", "wine", "--steps", str(steps), "--batch-size", "32", "--eval-every", str(steps // 2),
              "--no-progress", "--threads", "1"]
    run_nfkd("train", *common, "--arch", arch, "--out", str(tmp_path / "t"))
    run_nfkd("distill", *common, "--teacher", str(tmp_path / "t" / "model.pt"), *distill_args,
             "--out", str(tmp_path / "s"))
    return tmp_path / "s" / "model.pt"
