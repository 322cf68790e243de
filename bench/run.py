"""Run the benchmark suite, then the report: ``python -m bench.run [--quick | --full] [-o DIR] [-- PYTEST ARGS]``.

    python -m bench.run                       # quick mode -> bench/out/quick.json + bench/out/quick.md
    python -m bench.run --full -o bench/results --name cpu-report
    python -m bench.run --full -- --bench-dims 8,63 -k density   # anything after -- goes to pytest

The raw pytest-benchmark JSON is written next to the report (``NAME.json``; ignored by git in
bench/, about 2 kB per benchmark). Exit status: pytest's (the report is still written when some
benchmarks failed, if any JSON was produced).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from nfkd.progress import enabled as progress_enabled
from nfkd.progress import phase

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _warn_if_loaded(threads: int) -> None:
    """Say before the run when other work holds the CPUs: the report will flag it too, but a user can wait now."""
    from nfkd.metrics.uncertainty import is_loaded, machine_load

    load, cpus = machine_load(), os.cpu_count()
    if is_loaded(load, cpus):
        print(f"bench.run: load average {load:.1f} on {cpus} logical CPUs before the run: other work holds the "
              f"machine, so its times (and the measured peak) will measure shared CPUs ({threads} threads asked)",
              file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="CI mode (default)")
    mode.add_argument("--full", action="store_true", help="the full grid")
    p.add_argument("-o", "--out", default=str(HERE / "out"), help="folder for the JSON and the report (default bench/out)")
    p.add_argument("--name", default=None, help="file stem (default: quick / full)")
    p.add_argument("--threads", type=int, default=2, help="--bench-threads (default 2)")
    p.add_argument("--stat", default="median", choices=("median", "min", "mean"))
    a = p.parse_args(argv)
    name = a.name or ("full" if a.full else "quick")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    js = out / f"{name}.json"
    cmd = [
        sys.executable, "-m", "pytest", str(HERE), "--bench-full" if a.full else "--bench-quick",
        f"--bench-threads={a.threads}", f"--benchmark-json={js}", "-p", "no:cacheprovider",
        "-v" if progress_enabled() else "-q",  # on a terminal: one line per benchmark as it starts
        "--benchmark-columns=min,median,mean,stddev,rounds,iterations", *extra,
    ]
    _warn_if_loaded(a.threads)
    print("+", " ".join(cmd), flush=True)
    with phase(f"bench.run: the {name} benchmarks"):
        rc = subprocess.call(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])})
    if not js.exists():
        print(f"bench.run: pytest wrote no {js} (exit {rc})", file=sys.stderr)
        return rc or 1
    from bench.report import build_report

    md = build_report([js], out, name, a.stat)
    print(f"report: {md}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
