"""The CPU engine's numbers (issue #14), one run, side by side: ``python -m bench.cpu_engine [-o FILE.md]``.

- student ``log_prob``, batch 4096, paper-sized Glow-1D and MAF at D = 6, 8, 21, 43, 63 on every CPU
  technique (numba engine, ONNX Runtime with ORT_ENABLE_ALL, torch.compile, folded and eager
  PyTorch) and the peers (zuko / nflows MAF of the same size), with achieved GFLOP/s and % of the
  single-thread float32 matmul peak measured in the same run (``bench.roofline``); GFLOP/s count the
  arithmetic the model needs (``useful_flops``: a MADE's masked zeros are not counted, for every
  backend, since the numba engine skips them and a dense count would flatter it);
- MAF student sampling at D = 43, batch 4096;
- a contiguous float32 torch tensor vs the same data as numpy through ``Runner.log_prob`` (issue #29:
  the door must not copy, convert or check twice);
- IAF student sampling (one MADE pass per block) against zuko's MAF sampling and the MAF student's
  numba sampling, D = 63, batch 4096 (``--only iaf --only door``: these two sections alone);
- the engine's % of the 1-thread peak from adjacent engine / matmul pairs (``--only peak``: the ratio per
  pair, median and quartiles; the VM's speed drifts too much between a median and a median);
- batch-1 ``log_prob`` latency p50 / p99 through ``Runner.log_prob`` (what a service calls);
- issue #29's second pass (``bench.engine_scaling``): scaling with batch, D and threads (each row named
  overhead / compute / memory from its numbers), the paper's own tabular Glow code (``bench.paper_glow``)
  against nfkd's Glow-1D of the same size, and the engine at 8 and at 16 float32 lanes.

``--only SECTION`` (repeatable) runs a subset: iaf, door, density, peak, sampling, latency, scaling, paper, lanes.

Backends of one group are timed round-robin (A, B, C, A, B, C, ...) so that the load of a shared
machine hits them alike; the median per backend is reported. Every nfkd backend goes through
``nfkd.inference.load`` (the suite's ``Registry``), so the numbers are what users run; each result
is checked against the eager float64 flow at the export gate's tolerance before it is timed.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

DENSITY_BACKENDS = ("numba", "onnxruntime", "openvino", "compile", "folded", "eager", "zuko", "nflows")
SAMPLE_BACKENDS = ("numba", "onnxruntime", "folded", "eager", "zuko", "nflows")
LATENCY_BACKENDS = ("numba", "onnxruntime", "folded", "eager")
TABLE_ARCHS = ("glow1d", "maf")  # the tables' rows (the IAF has its own section: --only iaf)


def _round_robin(fns: dict, rounds: int) -> tuple[dict[str, float], dict[str, float]]:
    """Median wall seconds and median CPU seconds of the calling thread, per backend.

    With 1 thread every backend computes in the calling thread (torch, ONNX Runtime intra-op 1,
    numba's serial entry point), so thread CPU time is the load-robust measure on a shared machine:
    wall time also counts the time the OS gave the core to other jobs.
    """
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t, c = time.perf_counter(), time.thread_time()
            fn()
            cpu[k].append(time.thread_time() - c)
            wall[k].append(time.perf_counter() - t)
    return ({k: statistics.median(v) for k, v in wall.items()}, {k: statistics.median(v) for k, v in cpu.items()})


def _openvino_density(reg, arch: str, dim: int, batch: int):
    """OpenVINO (CPU plugin, 1 inference thread, latency hint) on the student's exported ONNX density graph,
    reshaped to the static batch (its best case): another CPU technique, compared in the same run."""
    from bench.suite import Unavailable

    try:
        import openvino as ov
    except ImportError:
        raise Unavailable("openvino not installed (pip install openvino)") from None
    exported = reg.nfkd("onnxruntime", arch, "student", dim)  # the parity-gated export, cached
    core = ov.Core()
    model = core.read_model(str(exported.manifest.graph_path(exported.folder, "density")))
    model.reshape({"x": [batch, dim]})
    compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": 1, "NUM_STREAMS": 1,
                                                 "PERFORMANCE_HINT": "LATENCY"})
    request, out = compiled.create_infer_request(), compiled.output(0)
    _, xn = reg.inputs(arch, dim, batch)
    return lambda: request.infer({"x": xn})[out]


def _latency(fn, calls: int) -> tuple[float, float]:
    import numpy as np

    for _ in range(min(200, calls)):
        fn()
    ts = np.empty(calls)
    for i in range(calls):
        t = time.perf_counter_ns()
        fn()
        ts[i] = time.perf_counter_ns() - t
    return float(np.percentile(ts, 50)) / 1e3, float(np.percentile(ts, 99)) / 1e3


def cpu_line() -> str:
    """The CPU model and the widest float32 vector the host has (``kernels.cpu_engine.LANES``: what the engine uses)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    width = "AVX-512 (16 lanes)" if "avx512f" in flags else ("AVX2 (8 lanes)" if "avx2" in flags else "unknown")
    return f"CPU {model}, {os.cpu_count()} CPUs, widest float32 vector: {width}"


def _paper_student(preset: str, dim: int):
    """The paper-sized student of ``preset`` (``bench.iaf``'s models: random weights off the identity init, a
    non-trivial input normalization; speed does not depend on training)."""
    from bench.iaf import paper_model

    return paper_model(preset, "student", dim)


def _sample_error(flow, runner, batch: int) -> float:
    """Max |numba - eager float64| over one batch decoded from the same noise (checked before timing)."""
    import copy

    import torch

    from nfkd.inference import draw_noise

    noise = draw_noise(runner.noise_shapes, batch, seed=1)
    with torch.no_grad():
        want = copy.deepcopy(flow).double().sample(batch, temperature=1.0, noise=[torch.from_numpy(z).double() for z in noise])
    return float((torch.from_numpy(runner.sample(noise=noise)).double() - want).abs().max())


def iaf_sampling(say, dim: int, batch: int, rounds: int) -> None:
    """IAF student sampling vs zuko's MAF sampling and the MAF student's numba sampling, interleaved (issue #29)."""
    import numpy as np

    from nfkd import inference
    from nfkd.presets import PRESETS

    from .suite import Unavailable, build_peer

    iaf, maf = _paper_student("iaf-paper", dim), _paper_student("maf-paper", dim)
    runners = {"IAF student, numba": inference.load(iaf, "numba", threads=1),
               "MAF student, numba": inference.load(maf, "numba", threads=1),
               "IAF student, eager": inference.load(iaf, "eager", threads=1)}
    ref = "IAF student, numba"
    errs = {k: _sample_error(iaf if k.startswith("IAF") else maf, r, batch) for k, r in runners.items()}
    fns = {k: (lambda r=r: r.sample(batch, temperature=1.0, seed=0)) for k, r in runners.items()}
    # the same decode from given noise: drawing the unit noise is shared by every backend and hides the
    # engine's own ratio. The draw itself, both ways (the same values: numba's copy of numpy's normals is
    # what ``seed=`` uses once numba is imported, see nfkd.noise); and the IAF with numpy's own draw
    noise = inference.draw_noise(runners[ref].noise_shapes, batch, seed=0)
    for k in ("IAF student, numba", "MAF student, numba"):
        fns[f"{k}, given noise"] = lambda r=runners[k]: r.sample(noise=noise)
    shape = (batch, *runners[ref].noise_shapes[0])
    fns["the draw alone, numba's copy of numpy's normals"] = lambda: inference.draw_noise([shape[1:]], batch, 0)
    fns["the draw alone, numpy"] = lambda: np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    fns["IAF student, numba, numpy's own draw"] = lambda r=runners[ref]: r.sample(
        noise=[np.random.default_rng(0).standard_normal(shape, dtype=np.float32)])
    cfg = PRESETS["maf-paper"]["student"]
    try:
        peer = build_peer("zuko", dim, cfg["blocks"], cfg["hidden"], cfg["n_hidden"])
        fns["zuko MAF (MAF student's size)"] = lambda: peer().sample((batch,))
    except Unavailable as exc:
        say(f"zuko left out: {exc}")
    wall, cpu = _round_robin(fns, rounds)
    say(f"### IAF student sampling, D = {dim}, batch {batch}, 1 thread (median of {rounds} round-robin rounds; "
        "noise drawing included, except in the rows *given noise*)")
    say()
    say("| model, backend | CPU ms | wall ms | IAF numba speed-up (CPU) | (wall) | max abs err vs eager float64 |")
    say("|---|---|---|---|---|---|")
    for k in fns:
        base = f"{ref}, given noise" if k.endswith("given noise") else ref  # ratios within the same kind of call
        err = f"{errs[k]:.2g}" if k in errs else "-"
        say(f"| {k} | {cpu[k] * 1e3:.2f} | {wall[k] * 1e3:.2f} | {cpu[k] / cpu[base]:.1f}x | "
            f"{wall[k] / wall[base]:.1f}x | {err} |")
    say()


DOOR_BLOCK = 20  # calls per timed block: one 0.4 ms call is below the noise of a shared VM


def _abba(fns: dict, rounds: int) -> tuple[dict[str, float], dict[str, float]]:
    """Like ``_round_robin`` for two callables, but each sample is a block of ``DOOR_BLOCK`` calls and the
    order flips every round (A B, B A, ...): whoever runs second no longer always inherits the first's cache."""
    names = list(fns)
    wall: dict[str, list[float]] = {k: [] for k in names}
    cpu: dict[str, list[float]] = {k: [] for k in names}
    for i in range(rounds):
        for k in (names if i % 2 == 0 else names[::-1]):
            t, c = time.perf_counter(), time.thread_time()
            for _ in range(DOOR_BLOCK):
                fns[k]()
            cpu[k].append((time.thread_time() - c) / DOOR_BLOCK)
            wall[k].append((time.perf_counter() - t) / DOOR_BLOCK)
    return ({k: statistics.median(v) for k, v in wall.items()}, {k: statistics.median(v) for k, v in cpu.items()})


def door_cost(say, dims: tuple[int, ...], batch: int, rounds: int) -> None:
    """MAF student log_prob on numba with a torch tensor in / out vs the same data as a numpy array (issue #29)."""
    import numpy as np
    import torch

    from nfkd import inference

    say(f"### The door: torch tensor vs numpy array through Runner.log_prob, MAF student on numba, batch {batch}, "
        f"1 thread (median of {rounds} rounds of {DOOR_BLOCK} calls each, the order alternating A-B / B-A)")
    say()
    say("| D | numpy CPU ms | torch CPU ms | torch / numpy (CPU) | numpy wall ms | torch wall ms | torch / numpy (wall) |")
    say("|---|---|---|---|---|---|---|")
    for dim in dims:
        r = inference.load(_paper_student("maf-paper", dim), "numba", threads=1)
        xn = np.random.default_rng(dim).standard_normal((batch, dim), dtype=np.float32)
        # the same memory: a copy sits elsewhere in the caches and pages, which alone moved the ratio by
        # up to +-10 % (numpy against a numpy copy measured 0.97-1.03x)
        xt = torch.from_numpy(xn)
        if not np.array_equal(r.log_prob(xt).numpy(), r.log_prob(xn)):
            say(f"| {dim} | torch and numpy results differ | | | | | |")
            continue
        wall, cpu = _abba({"numpy": lambda r=r, a=xn: r.log_prob(a), "torch": lambda r=r, a=xt: r.log_prob(a)},
                          rounds)
        say(f"| {dim} | {cpu['numpy'] * 1e3:.3f} | {cpu['torch'] * 1e3:.3f} | {cpu['torch'] / cpu['numpy']:.3f} | "
            f"{wall['numpy'] * 1e3:.3f} | {wall['torch'] * 1e3:.3f} | {wall['torch'] / wall['numpy']:.3f} |")
    say()


def _callables(reg, direction: str, arch: str, dim: int, batch: int, names) -> tuple[dict, dict, dict]:
    """{backend: call}, {backend: useful FLOPs}, {backend: note} for one case; a failing backend is noted, not fatal."""
    from bench.suite import Case, Unavailable

    fns, flops, notes = {}, {}, {}
    for b in names:
        c = Case(direction, arch, dim, batch, "student", b)
        try:
            fn = _openvino_density(reg, arch, dim, batch) if b == "openvino" else reg.runner(c)
            dev = reg.deviation(c, fn)
            if dev is not None and not dev <= 1.0:
                notes[b] = f"deviation {dev:.2g} x tolerance"
            fns[b] = fn
            flops[b] = reg.useful_flops(replace(c, backend="onnxruntime") if b == "openvino" else c)
        except Unavailable as exc:
            notes[b] = f"unavailable: {exc}"
        except Exception as exc:  # a backend failing here is reported, not fatal
            notes[b] = f"failed: {type(exc).__name__}: {str(exc)[:120]}"
    return fns, flops, notes


PEAK_N = 1024  # the in-run peak's matmul: n x n x n float32, as bench.roofline.matmul_peak_gflops


def _peak_call():
    """One 1-thread 1024^3 float32 matmul (and its FLOPs), timed inside the round-robin like a backend."""
    import torch

    a, b, out = torch.randn(PEAK_N, PEAK_N), torch.randn(PEAK_N, PEAK_N), torch.empty(PEAK_N, PEAK_N)
    return (lambda: torch.mm(a, b, out=out)), 2 * PEAK_N**3


def density_table(say, reg, dims: list[int], batch: int, rounds: int, chosen: list[str], peak: float) -> None:
    """Student log_prob on every chosen backend, per arch and D, round-robin, with % of the peak.

    The peak is also timed *inside* the round-robin (one matmul per round, the median like every backend):
    this VM's speed drifted by up to 1.5x between minutes, and the start-of-run best-of peak then compares
    a fast minute against slow ones; the in-run column is a ratio measured in the same rounds."""
    say(f"### Student log_prob, batch {batch}, 1 thread (median of {rounds} round-robin rounds)")
    say()
    say("CPU ms: CPU time of the calling thread (load-robust; GFLOP/s and % of peak from it); wall ms: elapsed. "
        f"% of peak: against the start-of-run peak ({peak:.1f} GFLOP/s); in-run: against the median of a "
        f"{PEAK_N}^3 matmul timed in the same rounds.")
    say()
    say("| arch | D | backend | CPU ms | wall ms | useful GFLOP/s | % of 1-thread peak | % of in-run peak | "
        "numba speed-up (CPU) | (wall) |")
    say("|---|---|---|---|---|---|---|---|---|---|")
    mm, mm_flops = _peak_call()
    for arch in TABLE_ARCHS:
        for dim in dims:
            fns, flops, notes = _callables(reg, "density", arch, dim, batch, chosen)
            wall, cpu = _round_robin({**fns, "__peak__": mm}, rounds)
            run_peak = mm_flops / cpu["__peak__"] / 1e9
            for b in chosen:
                if b not in cpu:
                    say(f"| {arch} | {dim} | {b} | - | - | - | - | - | {notes.get(b, '')} | |")
                    continue
                gf = flops[b] / cpu[b] / 1e9
                peer = " (MAF of the same size)" if b in ("zuko", "nflows") else ""
                sp = f"{cpu[b] / cpu['numba']:.2f}x | {wall[b] / wall['numba']:.2f}x" if "numba" in cpu else "- | -"
                say(f"| {arch} | {dim} | {b}{peer} | {cpu[b] * 1e3:.2f} | {wall[b] * 1e3:.2f} | {gf:.1f} | "
                    f"{100 * gf / peak:.0f} % | {100 * gf / run_peak:.0f} % of {run_peak:.0f} | {sp} |"
                    + (f" {notes[b]}" if b in notes else ""))
    say()


def peak_pairs(say, reg, dims: list[int], batch: int, pairs: int) -> None:
    """The numba engine's fraction of the 1-thread peak, each figure a ratio of two adjacent timings.

    Why: this VM's speed drifts by up to 1.5x from minute to minute (and within one), so a median engine time
    over a median peak time from other moments moves +-10 % between runs. Here every sample is one block of
    engine calls (~10 ms) and the 1024^3 matmul right after it, both in thread CPU time; the ratio of the
    two rates is taken per pair, and the table gives the median and the quartiles of those ratios."""
    mm, mm_flops = _peak_call()
    say(f"### % of the 1-thread peak, adjacent pairs (numba engine, batch {batch}, {pairs} pairs per row)")
    say()
    say("Each pair: a block of engine `log_prob` calls (~10 ms), then one 1024^3 float32 matmul; ratio of the two "
        "useful-GFLOP/s rates per pair; median [quartiles] of the pairs. Peak column: the median matmul rate.")
    say()
    say("| arch | D | engine ms / call | useful GFLOP/s | peak GFLOP/s | % of peak, median [q1, q3] |")
    say("|---|---|---|---|---|---|")
    for arch in TABLE_ARCHS:
        for dim in dims:
            fns, flops, notes = _callables(reg, "density", arch, dim, batch, ["numba"])
            if "numba" not in fns:
                say(f"| {arch} | {dim} | - | - | - | {notes.get('numba', '')} |")
                continue
            fn = fns["numba"]
            fn()
            c = time.thread_time()
            fn()
            calls = max(1, int(0.010 / max(time.thread_time() - c, 1e-5)))
            ratios, eng, pk = [], [], []
            for _ in range(pairs):
                c = time.thread_time()
                for _ in range(calls):
                    fn()
                te = (time.thread_time() - c) / calls
                c = time.thread_time()
                mm()
                tp = time.thread_time() - c
                eng.append(te)
                pk.append(mm_flops / tp / 1e9)
                ratios.append((flops["numba"] / te) / (mm_flops / tp))
            q1, med, q3 = statistics.quantiles(ratios, n=4)
            te = statistics.median(eng)
            say(f"| {arch} | {dim} | {te * 1e3:.3f} | {flops['numba'] / te / 1e9:.1f} | {statistics.median(pk):.0f} | "
                f"**{100 * med:.0f} %** [{100 * q1:.0f}, {100 * q3:.0f}] |")
    say()


def sampling_table(say, reg, dim: int, batch: int, rounds: int) -> None:
    """MAF student sampling on every sampling backend, round-robin."""
    say(f"### MAF student sampling, D = {dim}, batch {batch}, 1 thread (median of {rounds} rounds; "
        "noise drawing included)")
    say()
    say("| backend | CPU ms | wall ms | useful GFLOP/s (D MADE passes counted, CPU time) | numba speed-up (CPU) | (wall) |")
    say("|---|---|---|---|---|---|")
    fns, flops, notes = _callables(reg, "sample", "maf", dim, batch, SAMPLE_BACKENDS)
    wall, cpu = _round_robin(fns, rounds)
    for b in SAMPLE_BACKENDS:
        if b not in cpu:
            say(f"| {b} | - | - | - | {notes.get(b, '')} | |")
            continue
        say(f"| {b} | {cpu[b] * 1e3:.1f} | {wall[b] * 1e3:.1f} | {flops[b] / cpu[b] / 1e9:.1f} | "
            f"{cpu[b] / cpu['numba']:.2f}x | {wall[b] / wall['numba']:.2f}x |")
    say()


def latency_table(say, reg, calls: int) -> None:
    """Batch-1 log_prob p50 / p99 through Runner.log_prob (what a service calls)."""
    from bench.suite import Unavailable

    say(f"### Batch-1 log_prob latency through Runner.log_prob (numpy float32 in; {calls} calls), µs")
    say()
    say("| model | backend | p50 | p99 |")
    say("|---|---|---|---|")
    for arch in TABLE_ARCHS:
        dim = 6
        _, xn = reg.inputs(arch, dim, 1)
        for b in LATENCY_BACKENDS:
            try:
                r = reg.nfkd(b, arch, "student", dim)
            except Unavailable as exc:
                say(f"| {arch} D={dim} student | {b} | - | {exc} |")
                continue
            p50, p99 = _latency(lambda r=r, xn=xn: r.log_prob(xn), calls)
            say(f"| {arch} D={dim} student | {b} | {p50:.1f} | {p99:.1f} |")
    say()


SECTIONS = ("iaf", "door", "density", "peak", "sampling", "latency", "scaling", "paper", "lanes")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.cpu_engine", description=__doc__.split("\n")[0])
    p.add_argument("-o", "--out", default=None, help="write the tables (markdown) here as well")
    p.add_argument("--dims", default="6,8,21,43,63")
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--sample-dim", type=int, default=43)
    p.add_argument("--sample-rounds", type=int, default=3)
    p.add_argument("--latency-calls", type=int, default=2000)
    p.add_argument("--backends", default=",".join(DENSITY_BACKENDS), help="density backends (comma list)")
    p.add_argument("--iaf-dim", type=int, default=63)
    p.add_argument("--iaf-rounds", type=int, default=15)
    p.add_argument("--peak-pairs", type=int, default=21, help="engine/matmul pairs per row of the peak section")
    p.add_argument("--only", choices=SECTIONS, action="append", default=[],
                   help="run only these sections (repeatable; default: all)")
    return p


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from bench.roofline import copy_bandwidth_gbs, matmul_peak_gflops
    from bench.suite import Registry, Settings

    from .engine_scaling import lanes_table, paper_peer_table, scaling_table

    reg = Registry(Settings(mode="cpu-engine", device="cpu", threads=1))
    dims = [int(d) for d in a.dims.split(",")]
    lines: list[str] = []

    def say(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    peak = matmul_peak_gflops(1)
    bw = copy_bandwidth_gbs(1)
    say(f"Single-thread float32 matmul peak (1024^3, best of 20): **{peak:.1f} GFLOP/s**; copy bandwidth 1 thread "
        f"{bw:.1f} GB/s; load average at start {os.getloadavg()[0]:.1f}; torch {torch.__version__}, threads 1 "
        "everywhere.")
    say(cpu_line() + f"; engine micro-kernels: {_engine_lanes()} lanes.")
    say()
    run = set(a.only or SECTIONS)
    steps = {
        "iaf": lambda: iaf_sampling(say, a.iaf_dim, a.batch, a.iaf_rounds),
        "door": lambda: door_cost(say, (6, 63), a.batch, a.iaf_rounds),
        "density": lambda: density_table(say, reg, dims, a.batch, a.rounds, [b for b in a.backends.split(",") if b],
                                         peak),
        "peak": lambda: peak_pairs(say, reg, dims, a.batch, a.peak_pairs),
        "sampling": lambda: sampling_table(say, reg, a.sample_dim, a.batch, a.sample_rounds),
        "latency": lambda: latency_table(say, reg, a.latency_calls),
        "scaling": lambda: scaling_table(say, peak, bw),
        "paper": lambda: paper_peer_table(say, dims, a.batch, a.rounds, peak),
        "lanes": lambda: lanes_table(say),
    }
    for name in SECTIONS:
        if name in run:
            steps[name]()
    return _finish(say, lines, a.out)


def _engine_lanes() -> int:
    from kernels.cpu_engine import LANES

    return LANES


def _finish(say, lines: list[str], out: str | None) -> int:
    """The closing load average; the tables to ``out`` as well, if given."""
    say(f"load average at end {os.getloadavg()[0]:.1f}")
    if out:
        Path(out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
