"""pytest-benchmark throughput suite: options, the case grid, and the calibrated measurement.

    python -m pytest bench --bench-quick --benchmark-json=quick.json    # CI: seconds, cannot rot
    python -m pytest bench --bench-full --benchmark-json=full.json      # the paper's Table 2 grid

Every (direction, arch, dim, batch) is one pytest-benchmark group whose roles and backends run
back to back, so their ratios are measured under the same machine load. Options (``--bench-*``)
override the mode's defaults; see ``bench/README.md``.
"""
from __future__ import annotations

import os

# Before torch (and its OpenMP runtime) is loaded: idle OpenMP workers sleep instead of spinning.
# On a shared, loaded machine spinning workers fight the other jobs and 2-thread eager PyTorch
# slows down by up to ~50x at small batches (measured: Glow-1D D=63 batch 256, 0.29 s vs 6 ms).
# Export OMP_WAIT_POLICY=ACTIVE to measure the default behaviour; the report shows the value used.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import math  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from bench import suite  # noqa: E402


def pytest_addoption(parser):
    g = parser.getgroup("nfkd-bench", "nfkd throughput benchmarks")
    g.addoption("--bench-quick", action="store_true", help="CI mode (the default): dim 6, batches 1/256, "
                "image batch 1, ONNX Runtime for students only, no torch.compile, 2-3 rounds")
    g.addoption("--bench-full", action="store_true", help="the full grid: dims 6/8/21/43/63, batches "
                "1/256/4096/65536 (images 1/32/256), every backend, ~1 s of rounds per benchmark")
    g.addoption("--bench-threads", type=int, default=2, help="torch intra-op threads and ONNX Runtime intra_op_num_threads (default 2)")
    g.addoption("--bench-device", choices=("auto", "cpu", "cuda"), default="auto", help="default: cuda when available")
    g.addoption("--bench-archs", default=None, help="comma list of glow1d,maf,glow")
    g.addoption("--bench-dims", default=None, help="tabular dims, comma list")
    g.addoption("--bench-batches", default=None, help="tabular batch sizes, comma list")
    g.addoption("--bench-image-batches", default=None, help="image batch sizes, comma list")
    g.addoption("--bench-roles", default=None, help="teacher,student")
    g.addoption("--bench-backends", default=None, help="comma list of " + ",".join(suite.all_backends()))
    g.addoption("--bench-export-roles", default=None, help="roles exported for onnxruntime/tensorrt")
    g.addoption("--bench-compile-models", default=None,
                help="where torch.compile runs: all | none | comma list of ARCH or ARCH:DIM (e.g. maf:63,glow1d)")
    g.addoption("--bench-preset", action="append", default=[], metavar="ARCH=PRESET",
                help="nfkd preset per arch (default glow1d-paper, maf-paper, glow-cpu; glow-cifar10-paper on cuda)")
    g.addoption("--bench-budget-s", type=float, default=None, help="measuring time per benchmark")
    g.addoption("--bench-min-rounds", type=int, default=None)
    g.addoption("--bench-max-rounds", type=int, default=None)
    g.addoption("--bench-long-call-s", type=float, default=None, help="calls at least this long get --bench-long-rounds rounds")
    g.addoption("--bench-long-rounds", type=int, default=None)
    g.addoption("--bench-max-call-s", type=float, default=None,
                help="skip cases predicted (linearly from the previous batch of the same series) to take longer per call")
    g.addoption("--bench-cache", default=None, help="checkpoints + ONNX exports (default $NFKD_BENCH_CACHE or ~/.cache/nfkd-bench)")


def _settings(config) -> suite.Settings:
    opt = config.getoption
    if opt("--bench-quick") and opt("--bench-full"):
        raise pytest.UsageError("choose one of --bench-quick and --bench-full")
    s = suite.FULL if opt("--bench-full") else suite.QUICK
    device = opt("--bench-device")
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    presets = dict(s.presets)
    if device == "cuda":
        presets["glow"] = suite.GPU_IMAGE_PRESET
    for item in opt("--bench-preset"):
        arch, _, name = item.partition("=")
        if arch not in suite.ARCHS or not name:
            raise pytest.UsageError(f"--bench-preset expects ARCH=PRESET with ARCH in {suite.ARCHS}, got {item!r}")
        presets[arch] = name
    kw = dict(device=device, threads=int(opt("--bench-threads")), presets=presets)
    lists = {
        "archs": ("--bench-archs", str), "dims": ("--bench-dims", int), "batches": ("--bench-batches", int),
        "image_batches": ("--bench-image-batches", int), "roles": ("--bench-roles", str),
        "backends": ("--bench-backends", str), "export_roles": ("--bench-export-roles", str),
    }
    for field, (name, conv) in lists.items():
        if opt(name) is not None:
            kw[field] = suite.parse_list(opt(name), conv)
    for field, name in (("budget_s", "--bench-budget-s"), ("min_rounds", "--bench-min-rounds"),
                        ("max_rounds", "--bench-max-rounds"), ("long_call_s", "--bench-long-call-s"),
                        ("long_rounds", "--bench-long-rounds"), ("max_call_s", "--bench-max-call-s"),
                        ("compile_models", "--bench-compile-models")):
        if opt(name) is not None:
            kw[field] = opt(name)
    if opt("--bench-cache"):
        kw["cache"] = Path(opt("--bench-cache"))
    s = replace(s, **kw)
    bad = [b for b in s.backend_list if b not in suite.all_backends()] + [a for a in s.archs if a not in suite.ARCHS]
    bad += [r for r in s.roles + s.export_roles if r not in suite.ROLES]
    if bad:
        raise pytest.UsageError(f"unknown backend / arch / role: {bad}")
    if s.threads < 1:
        raise pytest.UsageError("--bench-threads must be >= 1")
    return s


def pytest_configure(config):
    if not hasattr(config.option, "bench_quick"):  # pragma: no cover - conftest loaded without its options
        return
    config._nfkd_bench = _settings(config)
    config.addinivalue_line("filterwarnings", "ignore::DeprecationWarning:torch")  # torch.compile internals
    try:
        config._nfkd_loadavg = list(os.getloadavg())
    except OSError:  # pragma: no cover
        config._nfkd_loadavg = None
    import torch

    torch.set_num_threads(config._nfkd_bench.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already started: leave it
        pass


def pytest_report_header(config):
    s = getattr(config, "_nfkd_bench", None)
    if s is None:
        return None
    return (f"nfkd bench: mode={s.mode} device={s.device} threads={s.threads} OMP_WAIT_POLICY="
            f"{os.environ.get('OMP_WAIT_POLICY', '')} backends={','.join(s.backend_list)} cache={s.cache}")


def pytest_generate_tests(metafunc):
    if "case" not in metafunc.fixturenames:
        return
    settings = metafunc.config._nfkd_bench
    direction = metafunc.module.DIRECTION
    cs = suite.cases(settings, direction)
    metafunc.parametrize("case", cs, ids=[c.id for c in cs])


def pytest_benchmark_update_machine_info(config, machine_info):
    s = getattr(config, "_nfkd_bench", None)
    if s is not None:
        machine_info.update(suite.machine_info(s))
        machine_info["loadavg_start"] = getattr(config, "_nfkd_loadavg", None)


def pytest_benchmark_update_json(config, benchmarks, output_json):
    reg = getattr(config, "_nfkd_registry", None)
    info = output_json.setdefault("machine_info", {})
    try:
        info["loadavg_end"] = list(os.getloadavg())
    except OSError:  # pragma: no cover
        pass
    if reg is not None:
        info["export_seconds"] = {k: round(v, 2) for k, v in reg.export_seconds.items()}
        info["compile_seconds"] = {k: round(v, 2) for k, v in reg.compile_seconds.items()}
        info["roofline"] = {k: round(v, 2) for k, v in reg.roofline().items()}


@pytest.fixture(scope="session")
def registry(request) -> suite.Registry:
    reg = suite.Registry(request.config._nfkd_bench)
    request.config._nfkd_registry = reg
    return reg


@pytest.fixture
def run_case(benchmark, registry, request):
    """Measure one case: build (or reuse) its runner, skip what cannot run here, warm up, time."""
    settings: suite.Settings = request.config._nfkd_bench

    def run(case: suite.Case):
        benchmark.group = case.group
        compiles = suite.compiles_per_model(case.backend)
        predicted = registry.predict(case)
        if predicted is not None and predicted > settings.max_call_s:
            pytest.skip(f"predicted {predicted:.1f} s per call (linear in batch from the previous batch) "
                        f"> --bench-max-call-s {settings.max_call_s:g}")
        try:
            fn = registry.runner(case)
            params = registry.params(case)
        except suite.Unavailable as exc:
            pytest.skip(str(exc))
        try:
            plan = suite.plan_rounds(settings, fn, compiles=compiles)  # warm-up (e.g. torch.compile compiles on its first call)
        except suite.Unavailable as exc:
            pytest.skip(str(exc))
        except Exception as exc:
            if compiles:  # e.g. no C++ compiler for inductor: not a failure of the suite
                pytest.skip(f"{case.backend} failed to compile here: {suite._first_line(exc)}")
            raise
        if compiles:
            registry.compile_seconds.setdefault(f"{case.direction} {case.arch} d={case.dim} {case.role}",
                                                plan.first_call_s)
        deviation = registry.deviation(case, fn)
        benchmark.extra_info.update({
            "arch": case.arch, "role": case.role, "backend": case.backend, "dim": case.dim,
            "batch": case.batch, "params": int(params), "direction": case.direction,
            "preset": settings.presets[case.arch] if case.backend not in suite.PEERS else f"{case.backend} ({settings.presets['maf']} size)",
            "shape": "x".join(map(str, suite.IMAGE_SHAPE)) if case.arch == "glow" else str(case.dim),
            "device": settings.device, "threads": settings.threads, "mode": settings.mode,
            "first_call_s": plan.first_call_s, "rounds_planned": plan.rounds, "iterations": plan.iterations,
        })
        if deviation is not None:
            benchmark.extra_info["err_over_tol_vs_eager64"] = deviation
        benchmark.pedantic(fn, rounds=plan.rounds, iterations=plan.iterations, warmup_rounds=0)
        try:
            median = float(benchmark.stats.stats.median)
        except AttributeError:  # pragma: no cover - benchmarks disabled (--benchmark-disable)
            median = plan.estimate_s
        registry.remember(case, median)
        flops, peak = registry.useful_flops(case), registry.roofline()["peak_gflops"]  # masked zeros not counted
        benchmark.extra_info.update({"flops": flops, "gflops": flops / median / 1e9,
                                     "pct_of_peak": 100 * flops / median / 1e9 / peak})
        if deviation is not None and not (math.isfinite(deviation) and deviation <= 1.0):
            pytest.fail(f"{case.id}: {case.direction} deviates from the eager float64 flow by {deviation:.3g}x "
                        f"the export gate's float32 tolerance")

    return run
