"""IAF student vs MAF student (same size) vs zuko's MAF: sampling and density time at batch 4096.

    python -m bench.iaf --dims 43 63 --batch 4096 --threads 1 -o bench/results/iaf.md

Models (random weights perturbed off the identity init; speed does not depend on training): the
``iaf-paper`` student (3 blocks, hidden 32, 2 hidden layers), the ``maf-paper`` student of the same
size, its teacher (6 blocks), and zuko's MAF of the MAF student's size (``bench.suite.build_peer``;
skipped with a note when zuko is not installed). nfkd models run through ``nfkd.inference``
(eager and folded backends). Calls are interleaved round by round (``interleaved_medians``), one
warm-up call excluded; the table gives medians and the ratio to the IAF student (eager).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
from pathlib import Path
from typing import Any, Callable

import torch

from nfkd import inference
from nfkd.flows import build_flow
from nfkd.inference.timing import interleaved_medians
from nfkd.presets import PRESETS
from nfkd.testing import perturb

from .suite import Unavailable, build_peer

IAF_EAGER = "IAF student (iaf-paper), eager"
MAF_EAGER = "MAF student (maf-paper), eager"
TEACHER_EAGER = "MAF teacher (maf-paper), eager"
ZUKO = "zuko MAF (MAF student's size), eager"


def paper_model(preset: str, role: str, dim: int) -> Any:
    cfg = dict(PRESETS[preset][role])
    arch = cfg.pop("arch")
    torch.manual_seed(dim)
    flow = build_flow(arch, dim=dim, **cfg)
    g = torch.Generator().manual_seed(dim + 1)
    flow.normalize.set(2 * torch.randn(dim, generator=g), torch.rand(dim, generator=g) + 0.5)
    return perturb(flow, 0.1, dim + 2).float().eval()


def candidates(dim: int, batch: int, threads: int, direction: str) -> tuple[dict[str, Callable[[], Any]], list[str]]:
    """{row name: call} for one direction at one D, and notes on what was left out."""
    flows = {"IAF student (iaf-paper)": paper_model("iaf-paper", "student", dim),
             "MAF student (maf-paper)": paper_model("maf-paper", "student", dim),
             "MAF teacher (maf-paper)": paper_model("maf-paper", "teacher", dim)}
    fns: dict[str, Callable[[], Any]] = {}
    with torch.no_grad():
        x = flows["MAF student (maf-paper)"].sample(batch, generator=torch.Generator().manual_seed(0)).numpy()
    for name, flow in flows.items():
        for backend in ("eager", "folded"):
            r = inference.load(flow, backend, threads=threads)
            key = f"{name}, {backend}"
            fns[key] = (lambda r=r: r.sample(batch, temperature=1.0, seed=0)) if direction == "sample" else (lambda r=r: r.log_prob(x))
    notes = []
    try:
        cfg = PRESETS["maf-paper"]["student"]
        peer = build_peer("zuko", dim, cfg["blocks"], cfg["hidden"], cfg["n_hidden"])
        xt = torch.from_numpy(x)

        def zuko_call(peer=peer, xt=xt):
            with torch.no_grad():
                return peer().sample((batch,)) if direction == "sample" else peer().log_prob(xt)

        fns[ZUKO] = zuko_call
    except Unavailable as exc:
        notes.append(f"zuko left out: {exc}")
    return fns, notes


def run(dims: list[int], batch: int, threads: int, rounds: int) -> tuple[list[dict[str, Any]], list[str]]:
    torch.set_num_threads(threads)
    rows, notes = [], []
    for dim in dims:
        for direction in ("sample", "density"):
            fns, n = candidates(dim, batch, threads, direction)
            notes += n
            res = interleaved_medians(fns, batch, rounds=rounds, repeats=1)
            ref = res[IAF_EAGER]["median_s"]
            for name, v in res.items():
                rows.append({"dim": dim, "direction": direction, "model": name, "median_ms": 1000 * v["median_s"],
                             "std_ms": 1000 * v["std_s"], "vs_iaf": v["median_s"] / ref})
    return rows, sorted(set(notes))


def markdown(rows: list[dict[str, Any]], notes: list[str], command: str, batch: int, threads: int) -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        "# IAF student sampling vs MAF students and zuko's MAF",
        "",
        f"Command: `{command}`",
        "",
        f"{_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='minutes')}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}, {threads} thread(s), batch {batch}, load average "
        f"{load:.1f} at the end (a shared machine: ratios inside one table are measured interleaved, absolute "
        "times are noisy). Median of interleaved rounds after one warm-up call; `x IAF` = time / the IAF "
        "student's eager time in the same table (higher = slower than the IAF student).",
        "",
        "| D | IAF sampling speed-up vs MAF student | vs zuko MAF | vs MAF teacher | IAF density slow-down vs MAF student |",
        "|---:|---:|---:|---:|---:|",
    ]
    for dim in sorted({r["dim"] for r in rows}):
        t = {(r["direction"], r["model"]): r["median_ms"] for r in rows if r["dim"] == dim}
        iaf_s, iaf_d = t[("sample", IAF_EAGER)], t[("density", IAF_EAGER)]
        zuko = t.get(("sample", ZUKO))
        lines.append(f"| {dim} | {t[('sample', MAF_EAGER)] / iaf_s:.1f}x | "
                     f"{f'{zuko / iaf_s:.1f}x' if zuko else 'n/a'} | {t[('sample', TEACHER_EAGER)] / iaf_s:.1f}x | "
                     f"{iaf_d / t[('density', MAF_EAGER)]:.1f}x |")
    for dim in sorted({r["dim"] for r in rows}):
        for direction in ("sample", "density"):
            sel = [r for r in rows if r["dim"] == dim and r["direction"] == direction]
            what = f"sampling ({batch} samples)" if direction == "sample" else f"density (log_prob of {batch} rows)"
            lines += ["", f"## D = {dim}: {what}", "", "| model, backend | ms (median) | std ms | x IAF |",
                      "|---|---:|---:|---:|"]
            lines += [f"| {r['model']} | {r['median_ms']:.2f} | {r['std_ms']:.2f} | {r['vs_iaf']:.3g} |" for r in sel]
    if notes:
        lines += ["", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.iaf", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dims", type=int, nargs="+", default=[43, 63])
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("-o", "--out", default=None, help="markdown file (default: print)")
    args = ap.parse_args(argv)
    rows, notes = run(args.dims, args.batch, args.threads, args.rounds)
    command = "python -m bench.iaf " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    text = markdown(rows, notes, command.strip(), args.batch, args.threads)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        Path(args.out).with_suffix(".json").write_text(json.dumps({"rows": rows, "notes": notes, "command": command}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
