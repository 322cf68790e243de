"""How the numba engine's cost grows, the paper's own Glow as a peer, and the two vector widths timed.

Sections of ``python -m bench.cpu_engine`` (``--only scaling``, ``--only paper``, ``--only lanes``):

- ``scaling_table``: batch 1 / 64 / 4096 / 65536 (D = 21) and D = 6 / 8 / 21 / 43 / 63 (batch 4096), 1 vs 2
  threads, paper-sized MAF and Glow-1D students; each row named by its regime from the numbers themselves:
  *overhead* (a call costs less than 2x a batch-1 call: the fixed per-call work dominates), *memory* (the
  batch's bytes in and out move at >= 50 % of the measured copy bandwidth), else *compute*;
- ``paper_peer_table``: the paper's tabular Glow code (``bench.paper_glow``, its configs: student K = 3 /
  hidden 16, teacher K = 5 / hidden 32) in eager PyTorch against nfkd's Glow-1D of the same sizes
  (``glow1d-official``) on the numba engine, interleaved;
- ``lanes_table``: the engine at 8 and at 16 float32 lanes (``NFKD_CPU_LANES``), each width in its own child
  process (the width is fixed at import), alternated.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["lanes_table", "paper_peer_table", "scaling_table"]


def _per_call(fns: dict, batch: int, rounds: int) -> tuple[dict[str, float], dict[str, float]]:
    """Median wall and thread-CPU seconds per call, round-robin; small batches repeat calls to ~20 ms a sample."""
    reps = max(1, min(2000, (1 << 17) // max(batch, 1)))
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(rounds):
        for k, fn in fns.items():
            t, c = time.perf_counter(), time.thread_time()
            for _ in range(reps):
                fn()
            cpu[k].append((time.thread_time() - c) / reps)
            wall[k].append((time.perf_counter() - t) / reps)
    return ({k: statistics.median(v) for k, v in wall.items()}, {k: statistics.median(v) for k, v in cpu.items()})


def _regime(t: float, t1: float, nbytes: int, bw_gbs: float) -> str:
    if t < 2 * t1:
        return "overhead"
    return "memory" if nbytes / t / 1e9 >= 0.5 * bw_gbs else "compute"


def scaling_table(say, peak: float, bw: float, rounds: int = 7) -> None:
    import numpy as np

    from bench.cpu_engine import _paper_student
    from bench.roofline import useful_flops
    from nfkd import inference

    say("### Scaling of the numba engine: student log_prob, 1 vs 2 threads (median of "
        f"{rounds} round-robin rounds; load average {os.getloadavg()[0]:.1f} at the start)")
    say()
    say("1 thread: CPU time of the calling thread per call (load-robust; rows/s, % of peak, GB/s and the regime "
        "from it). 2 threads: wall time per call against the 1-thread call's wall time (a second thread's work "
        "is not in the caller's CPU time). Regime: *overhead* = under 2x the batch-1 call; *memory* = batch bytes "
        f"(in + out) at >= 50 % of the copy bandwidth ({bw:.1f} GB/s); else *compute*. % of peak: useful GFLOP/s / "
        f"{peak:.1f}.")
    say()
    say("| model | D | batch | 1 thread CPU ms/call | rows/s (1 thr) | % of peak (1 thr) | GB/s in+out | 1 thread wall ms | "
        "2 threads wall ms | 2 thr speed-up (wall) | regime (1 thr) |")
    say("|---|---|---|---|---|---|---|---|---|---|---|")
    for preset in ("maf-paper", "glow1d-paper"):
        for dim in (6, 8, 21, 43, 63):
            flow = _paper_student(preset, dim)
            r1, r2 = inference.load(flow, "numba", threads=1), inference.load(flow, "numba", threads=2)
            t_one = None
            for batch in (1, 64, 4096, 65536) if dim == 21 else (1, 4096):
                x = np.random.default_rng(dim).standard_normal((batch, dim), dtype=np.float32)
                wall, cpu = _per_call({"1": lambda r=r1, x=x: r.log_prob(x), "2": lambda r=r2, x=x: r.log_prob(x)},
                                      batch, rounds)
                t1 = cpu["1"]
                t_one = t1 if t_one is None else t_one
                nbytes = batch * (dim + 1) * 4
                gf = useful_flops(flow, batch, "density") / t1 / 1e9
                say(f"| {preset.split('-')[0]} student | {dim} | {batch} | {t1 * 1e3:.4g} | {batch / t1:.3g} | "
                    f"{100 * gf / peak:.0f} % | {nbytes / t1 / 1e9:.2f} | {wall['1'] * 1e3:.4g} | {wall['2'] * 1e3:.4g} | "
                    f"{wall['1'] / wall['2']:.2f}x | {_regime(t1, t_one, nbytes, bw)} |")
    say()


def paper_peer_table(say, dims: list[int], batch: int, rounds: int, peak: float) -> None:
    import torch

    from bench.cpu_engine import _round_robin
    from bench.iaf import paper_model
    from bench.paper_glow import PaperGlow1D
    from bench.roofline import useful_flops
    from nfkd import inference

    say(f"### The paper's own tabular Glow code (eager PyTorch) vs nfkd's Glow-1D of the same size, log_prob, batch "
        f"{batch}, 1 thread (median of {rounds} round-robin rounds, CPU time)")
    say()
    say("| D | model | paper code ms | nfkd eager ms | nfkd numba ms | numba vs paper code | numba % of peak |")
    say("|---|---|---|---|---|---|---|")
    for dim in dims:
        for role, (steps, hidden) in (("student", (3, 16)), ("teacher", (5, 32))):
            torch.manual_seed(dim)
            paper = PaperGlow1D(dim, steps, hidden).eval()
            ours = paper_model("glow1d-official", role, dim)
            x = torch.randn(batch, dim)
            xn = x.numpy()
            eager, numba = inference.load(ours, "eager", threads=1), inference.load(ours, "numba", threads=1)

            def paper_call(m=paper, x=x):
                with torch.no_grad():
                    return m.log_prob(x)

            _, cpu = _round_robin({"paper": paper_call, "eager": lambda r=eager, x=x: r.log_prob(x),
                                   "numba": lambda r=numba, x=xn: r.log_prob(x)}, rounds)
            gf = useful_flops(ours, batch, "density") / cpu["numba"] / 1e9
            say(f"| {dim} | {role} (K = {steps}, hidden {hidden}, 5 hidden layers) | {cpu['paper'] * 1e3:.2f} | "
                f"{cpu['eager'] * 1e3:.2f} | {cpu['numba'] * 1e3:.2f} | {cpu['paper'] / cpu['numba']:.1f}x | "
                f"{100 * gf / peak:.0f} % |")
    say()


_CHILD_CASES = (("glow1d-paper", 6), ("glow1d-paper", 21), ("glow1d-paper", 63), ("maf-paper", 6),
                ("maf-paper", 21), ("maf-paper", 63), ("iaf-paper", 63))


def _lanes_child(rounds: int = 15) -> dict[str, float]:
    """In a child process (``NFKD_CPU_LANES`` set): median thread-CPU ms of the cases, round-robin."""
    import numpy as np
    import torch

    from bench.cpu_engine import _paper_student, _round_robin
    from kernels.cpu_engine import LANES
    from nfkd import inference

    torch.set_num_threads(1)
    fns = {}
    for preset, dim in _CHILD_CASES:
        r = inference.load(_paper_student(preset, dim), "numba", threads=1)
        key = f"{preset} D={dim} " + ("sample (given noise)" if preset == "iaf-paper" else "log_prob")
        if preset == "iaf-paper":
            z = inference.draw_noise(r.noise_shapes, 4096, seed=0)
            fns[key] = lambda r=r, z=z: r.sample(noise=z)
        else:
            x = np.random.default_rng(dim).standard_normal((4096, dim), dtype=np.float32)
            fns[key] = lambda r=r, x=x: r.log_prob(x)
        fns[key]()  # compile / load from cache outside the timing
    _, cpu = _round_robin(fns, rounds)
    return {"lanes": LANES, **{k: v * 1e3 for k, v in cpu.items()}}


def lanes_table(say, rounds: int = 2) -> None:
    root = Path(__file__).resolve().parents[1]
    runs: dict[int, list[dict[str, float]]] = {8: [], 16: []}
    for _ in range(rounds):
        for lanes in (8, 16):
            env = {**os.environ, "NFKD_CPU_LANES": str(lanes), "PYTHONPATH": f"{root}{os.pathsep}"
                   f"{os.environ.get('PYTHONPATH', '')}"}
            out = subprocess.run([sys.executable, "-m", "bench.engine_scaling", "--lanes-child"], cwd=root, env=env,
                                 capture_output=True, text=True, check=True).stdout
            runs[lanes].append(json.loads(out.strip().splitlines()[-1]))
    say(f"### The engine at 8 and 16 float32 lanes, batch 4096, 1 thread (CPU ms; each width in its own process, "
        f"alternated, {rounds} processes per width, median of 15 rounds in each; the better process shown)")
    say()
    say("| case | 8 lanes ms | 16 lanes ms | 8 / 16 |")
    say("|---|---|---|---|")
    for key in (k for k in runs[8][0] if k != "lanes"):
        a, b = min(r[key] for r in runs[8]), min(r[key] for r in runs[16])
        say(f"| {key} | {a:.3f} | {b:.3f} | {a / b:.2f} |")
    say()


if __name__ == "__main__":
    if sys.argv[1:] == ["--lanes-child"]:
        print(json.dumps(_lanes_child()))
