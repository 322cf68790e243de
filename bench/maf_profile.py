"""Where the MAF student's density time goes in the CPU engine: ``python -m bench.maf_profile [--dims 21 63]``.

Why: ``kernels.cpu_engine`` fuses a whole MAF density pass per tile, so a sampling profiler sees one
function. Instead this script compiles *copies* of the engine module with one part removed (the dense
layers, the MADE epilogue ``_made_scale``, the tile transposes, everything) and times each copy on the
same packed paper-sized student (``maf-paper``: 3 blocks, hidden 32, 2 hidden layers), 1 thread,
batch 4096, thread CPU time, all variants interleaved round-robin; a part's cost is the full time
minus the time without it. The copies compute garbage where a part is removed: they are timed, never
checked (the real engine is checked by tests/test_cpu_engine.py).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["VARIANTS", "main", "variant_module"]

import numpy as np

_ENGINE = Path(__file__).resolve().parent.parent / "kernels" / "cpu_engine.py"

# variant name -> [(text in the engine's source, its replacement)]; each text must occur exactly once
VARIANTS: dict[str, list[tuple[str, str]]] = {
    "full": [],
    "no epilogue (a copy instead)": [
        ("def _made_scale(h, mo, ld, D, d4, rows, clamp, out, iperm, w, loc, inv):\n",
         "def _made_scale(h, mo, ld, D, d4, rows, clamp, out, iperm, w, loc, inv):\n    for j in range(D):\n"
         "        xj, dst = _row(h, j), _row(out, j)\n        for r in range(rows):\n            dst[r] = xj[r]\n"
         "    return\n")],
    "epilogue without tanh": [("na = _vmul(nc, _vtanh(_vmul(_vload(mo, a), ic)))",
                               "na = _vmul(nc, _vmul(_vload(mo, a), ic))")],
    "epilogue without exp": [("_vexp(_vload(mo, (d4 + j) * TILE + r)))\n            _vstore(out, c * TILE + r,",
                              "_vload(mo, (d4 + j) * TILE + r))\n            _vstore(out, c * TILE + r,")],
    "no dense layers": [('    The pass MAF density and IAF sampling share: hidden layers skip the staircase\'s zeros (``kin``)."""',
                         '    The pass MAF density and IAF sampling share: hidden layers skip the staircase\'s zeros (``kin``)."""'
                         '\n    return')],
    "no output layer": [("    _dense(a, 0, H, w, offs[k, o], OP, OP, w, offs[k, o + 1], mo, 0, rows, False, kin, nhid * G)",
                         "    pass")],
    "no transposes": [("    _to_tile(x, r0, n, rows, h, D, w, offs[blocks, 0], offs[blocks, 1], _ONE)\n    o = 2 * nhid",
                       "    o = 2 * nhid"),
                      ("    _finish_log_prob(h, ld, n, D, const, out, r0)\n\n\n@nb.njit(**_JIT)\ndef _maf_sample_tile",
                       "    out[r0] = ld[0]\n\n\n@nb.njit(**_JIT)\ndef _maf_sample_tile")],
    "call only (no tiles)": [("    for r0 in range(0, B, TILE):\n        _maf_lp_tile(", "    for r0 in range(0, 0, TILE):\n"
                              "        _maf_lp_tile(")],
}


def variant_module(name: str, folder: Path, rev: str | None = None):
    """The engine's source with VARIANTS[name] applied (``rev``: the engine at that git revision, unpatched),
    imported as a fresh module (compiled afresh)."""
    if rev is not None:
        src = subprocess.run(["git", "show", f"{rev}:kernels/cpu_engine.py"], cwd=_ENGINE.parent, check=True,
                             capture_output=True, text=True).stdout
    else:
        src = _ENGINE.read_text()
    src = src.replace("cache=_CACHE", "cache=False")
    for old, new in VARIANTS.get(name, []) if rev is None else []:
        if src.count(old) != 1:
            raise RuntimeError(f"variant {name!r}: its patch no longer matches kernels/cpu_engine.py: {old[:60]!r}")
        src = src.replace(old, new)
    path = folder / f"engine_{abs(hash((name, rev)))}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _args(dim: int, batch: int):
    """(x, the packed trailing arguments of maf_log_prob) for the paper-sized MAF student at ``dim``."""
    import torch

    from bench.iaf import paper_model
    from nfkd import inference

    flow = paper_model("maf-paper", "student", dim)
    runner = inference.load(flow, "numba", threads=1)
    with torch.no_grad():
        x = flow.sample(batch, generator=torch.Generator().manual_seed(0)).numpy().astype(np.float32)
    _, args, _, _ = runner._serial()
    return np.ascontiguousarray(x), args


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dims", type=int, nargs="+", default=[21, 63])
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=31)
    ap.add_argument("--only", action="append", help="variant names (default: all)")
    ap.add_argument("--against", action="append", default=[], help="also time the engine at this git revision")
    a = ap.parse_args(argv)
    names = a.only or list(VARIANTS)
    with tempfile.TemporaryDirectory() as tmp:
        sys.path.insert(0, tmp)
        mods = {n: variant_module(n, Path(tmp)) for n in names}
        mods.update({f"engine at {rev}": variant_module(rev, Path(tmp), rev) for rev in a.against})
        names = list(mods)
        print(f"load average {os.getloadavg()[0]:.2f}; batch {a.batch}, 1 thread, median of {a.rounds} interleaved"
              f" rounds, thread CPU ms; engine lanes {mods[names[0]].LANES}")
        for dim in a.dims:
            x, args = _args(dim, a.batch)
            out = np.empty(a.batch, np.float32)
            times: dict[str, list[float]] = {n: [] for n in names}
            for n in names:
                mods[n].maf_log_prob(x, out, *args)  # compile
            for _ in range(a.rounds):
                for n in names:
                    c = time.thread_time()
                    mods[n].maf_log_prob(x, out, *args)
                    times[n].append(time.thread_time() - c)
            med = {n: statistics.median(v) * 1e3 for n, v in times.items()}
            full = med.get("full", float("nan"))
            print(f"\nD = {dim} (load average {os.getloadavg()[0]:.2f})\n\n| variant | CPU ms | full minus it |\n|---|---|---|")
            for n in names:
                print(f"| {n} | {med[n]:.3f} | {full - med[n]:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
