"""Measure every (model, backend) pair a user could deploy: test LL once per model, latency per pair.

Why this shape: a deployment choice trades density quality (test log-likelihood, a property of the
model, computed once in float64) against latency (a property of the model *on a backend*). Every
backend's float32 ``log_prob`` is checked against the float64 reference on test rows, so a fast
backend that computes another density cannot win. Latencies are timed round by round across all
pairs (A, B, C, A, B, C, ...) so that machine drift hits every pair alike; median and IQR of single
calls are reported.
"""
from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from .. import inference
from ..data.splits import TabularSplits
from ..errors import InputError
from ..flows import Flow
from ..inference.registry import BACKENDS, status
from ..inference.runner import draw_noise
from ..metrics.uncertainty import machine_load, mean_2se, paired_diff, spread
from ..progress import bar
from .machine import cpu_info

__all__ = ["DEFAULT_BATCHES", "OPS", "measure_tradeoff", "float64_test_ll", "agreement"]

DEFAULT_BATCHES = (1, 4096)
OPS = ("log_prob", "sample")


def float64_test_ll(flow: Flow, test: np.ndarray, chunk: int = 4096) -> tuple[dict[str, Any], np.ndarray]:
    """(mean test LL ± 2 SE in nats, per-row float64 log p): the eager flow in float64, the reference."""
    ref = copy.deepcopy(flow).to(device="cpu", dtype=torch.float64).eval()
    with torch.no_grad():
        lp = np.concatenate([ref.log_prob(torch.from_numpy(np.asarray(test[i:i + chunk], np.float64))).numpy()
                             for i in range(0, len(test), chunk)])
    est = mean_2se(lp)
    se2 = 0.0 if est.n == 1 else est.se2
    return {"log_likelihood": est.mean, "ll_2se": se2, "n": est.n, "nonfinite": int((~np.isfinite(lp)).sum())}, lp


def agreement(got: np.ndarray, ref: np.ndarray, rtol: float = 1e-3) -> dict[str, Any]:
    """Max |backend - float64 reference| per row (equal infinities count as agreeing); relative to max(1, |ref|)."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    with np.errstate(invalid="ignore"):
        diff = np.where(got == ref, 0.0, np.abs(got - ref))
    diff = np.where(np.isnan(diff), np.inf, diff)
    rel = diff / np.maximum(1.0, np.where(np.isfinite(ref), np.abs(ref), 1.0))
    max_abs = float(diff.max()) if len(diff) else 0.0
    max_rel = float(rel.max()) if len(rel) else 0.0
    return {"rows": int(len(ref)), "max_abs_diff": max_abs, "max_rel_diff": max_rel, "rtol": rtol,
            "agrees": bool(max_rel <= rtol)}


def _test_split(data: Any) -> tuple[str, np.ndarray]:
    if isinstance(data, TabularSplits):
        return data.name, np.ascontiguousarray(data.test, dtype=np.float32)
    if isinstance(data, np.ndarray) and data.ndim == 2:
        return "array", np.ascontiguousarray(data, dtype=np.float32)
    what = f"{data.name!r} is an image dataset" if hasattr(data, "name") else f"got {type(data).__name__}"
    raise InputError(f"the trade-off is measured on a table ({what}); give a tabular dataset (python -m nfkd data "
                     f"list) or a 2-d array of test rows")


def _resolve(name: str, model: Any, dim: int, dataset: str) -> tuple[Flow, Any, str]:
    """(trained flow, what inference.load gets, checkpoint sha256) for a Flow or a checkpoint path."""
    if isinstance(model, Flow):
        flow, source, sha = model, model, ""
    elif isinstance(model, (str, Path)):
        from ..checkpoint import load_checkpoint

        path = Path(model)
        if not path.is_file():
            raise InputError(f"model {name!r}: checkpoint not found: {path}")
        ckpt = load_checkpoint(path)
        flow, source, sha = ckpt.flow, str(path), ckpt.sha256
    else:
        raise InputError(f"model {name!r} must be an nfkd Flow or a checkpoint path, got {type(model).__name__}")
    if len(flow.event_shape) != 1:
        raise InputError(f"model {name!r} is an image flow ({flow.arch}); the trade-off is measured on tables")
    if flow.dim != dim:
        raise InputError(f"model {name!r} takes {flow.dim} features but {dataset} has {dim} columns")
    return flow.eval(), source, sha


def _backends(names: Sequence[str] | None) -> list[str]:
    if names is None:
        return list(BACKENDS)
    names = list(dict.fromkeys(names))
    unknown = [b for b in names if b not in BACKENDS]
    if unknown:
        raise InputError(f"unknown backend {unknown[0]!r}; choose from {', '.join(BACKENDS)}")
    if not names:
        raise InputError("no backends given")
    return names


def _check_batches(batches: Sequence[int]) -> list[int]:
    out = list(dict.fromkeys(batches))
    if not out or any(isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1 for b in out):
        raise InputError(f"batches must be positive integers, got {list(batches)}")
    return [int(b) for b in out]


def _load(model_src: Any, backend: str, device: str, threads: int, arch: str, export_root: Path,
          name: str) -> tuple[Any, str]:
    """(runner, '') or (None, why it cannot run here)."""
    st = status(backend)
    if not st.available:
        return None, st.reason
    if not BACKENDS[backend].runs(arch):
        return None, f"runs {', '.join(BACKENDS[backend].archs or ())} models, not {arch}"
    if device not in st.devices:
        return None, f"runs on {', '.join(st.devices)}, not {device}"
    if device not in BACKENDS[backend].devices:  # e.g. the Triton interpreter (TRITON_INTERPRET=1) on CPU
        return None, f"only emulated on {device} here (for tests); its timings mean nothing"
    options: dict[str, Any] = {}
    if BACKENDS[backend].runs_exports:
        options = {"cache_dir": export_root / "cache", "export_dir": export_root / f"{name}-{backend}"}
    try:
        return inference.load(model_src, backend, device=device, threads=threads, **options), ""
    except Exception as exc:  # a backend that fails to load is a recorded row, not a failed measurement
        return None, f"failed to load: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _check_args(models: Mapping[str, Any], threads: Any, rounds: Any, teacher: str | None) -> str:
    """One clear error per bad argument; returns the teacher's name."""
    if not models:
        raise InputError("no models given")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise InputError(f"threads must be a positive integer, got {threads!r}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise InputError(f"rounds must be a positive integer, got {rounds!r}")
    teacher = teacher if teacher is not None else ("teacher" if "teacher" in models else next(iter(models)))
    if teacher not in models:
        raise InputError(f"teacher {teacher!r} is not one of the models {list(models)}")
    return teacher


def _model_infos(resolved: dict[str, tuple[Flow, Any, str]], test: np.ndarray, teacher: str,
                 references: Mapping[str, np.ndarray] | None, log: Callable[[str], Any]):
    """({name: arch, params, test LL ± 2 SE, paired differences vs the teacher and references}, per-row refs)."""
    infos, refs = {}, {}
    for name, (flow, _, sha) in resolved.items():
        ll, refs[name] = float64_test_ll(flow, test)
        infos[name] = {"arch": flow.arch, "params": flow.num_parameters(), "config": dict(flow.config),
                       "checkpoint_sha256": sha, **ll}
        log(f"tradeoff: {name} ({flow.arch}, {infos[name]['params']:,} params): test LL "
            f"{ll['log_likelihood']:.3f} ± {ll['ll_2se']:.3f} nats (float64, n={ll['n']})")
    for name, info in infos.items():
        pairs = {teacher: refs[teacher], **(references or {})}
        for ref, rows in pairs.items():
            if ref != name:
                info["vs_" + ("teacher" if ref == teacher else ref)] = paired_diff(refs[name], rows).as_dict()
    return infos, refs


def _load_rows(resolved: dict[str, tuple[Flow, Any, str]], backend_names: list[str], device: str, threads: int,
               export_root: Path, test: np.ndarray, refs: dict[str, np.ndarray], agree_rows: int, agree_rtol: float,
               log: Callable[[str], Any]) -> tuple[list[dict[str, Any]], dict]:
    """One row per (model, backend): loaded and checked against the float64 reference, or skipped with why."""
    rows, runners = [], {}
    for name, (flow, src, _) in resolved.items():
        for backend in backend_names:
            runner, why = _load(src, backend, device, threads, flow.arch, export_root, name)
            row: dict[str, Any] = {"model": name, "backend": backend, "status": "ok" if runner else "skipped",
                                   "reason": why, "timings": {op: {} for op in OPS}}
            if runner is not None:
                k = min(agree_rows, len(test))
                row["agreement"] = agreement(runner.log_prob(test[:k]), refs[name][:k], agree_rtol)
                runners[(name, backend)] = runner
                log(f"tradeoff: {name} on {backend}: loaded; log_prob max |diff| vs float64 "
                    f"{row['agreement']['max_abs_diff']:.2e} nats on {k} test rows")
            else:
                log(f"tradeoff: {name} on {backend}: skipped ({why})")
            rows.append(row)
    return rows, runners


def _time_rounds(tasks: list[dict[str, Any]], rounds: int, log: Callable[[str], Any]) -> None:
    """Round by round across all pairs; each pair's median [IQR] lands in its row."""
    for r in range(rounds):
        for task in bar(tasks, desc=f"tradeoff: round {r + 1}/{rounds}", unit="timing"):
            for _ in range(task["calls"]):
                task["times"].append(_timed(task["fn"]))
        log(f"tradeoff: round {r + 1}/{rounds} done")
    for task in tasks:
        task["row"]["timings"][task["op"]][str(task["batch"])] = spread(task["times"])


def measure_tradeoff(models: Mapping[str, Flow | str | Path], data: Any, backends: Sequence[str] | None = None,
                     threads: int = 1, batches: Sequence[int] = DEFAULT_BATCHES, rounds: int = 5,
                     log: Callable[[str], Any] = print, teacher: str | None = None, device: str = "cpu",
                     export_dir: str | Path | None = None, agree_rows: int = 256, agree_rtol: float = 1e-3,
                     max_call_s: float = 5.0, round_s: float = 0.05, seed: int = 0,
                     references: Mapping[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Test LL per model and log_prob / sample latency per (model, backend, batch), as one JSON-able dict.

    ``models``: name -> Flow or checkpoint path; ``teacher``: which name is the teacher (default
    'teacher' when present, else the first). ``backends``: names from ``nfkd.inference.backends()``
    (default all; the ones that cannot run here or cannot run an architecture are rows with the
    reason). ``export_dir``: where ONNX exports go (default a temporary folder, removed afterwards).
    Each call is timed alone; per round a pair gets ``round_s`` seconds of calls (at least one), and a
    pair whose single call takes over ``max_call_s`` is skipped with that reason. ``references``:
    name -> per-row log p of the test rows (e.g. the true density) each model is also paired against.
    """
    teacher = _check_args(models, threads, rounds, teacher)
    dataset, test = _test_split(data)
    if len(test) < 1:
        raise InputError(f"{dataset} has an empty test split")
    dim = test.shape[1]
    backend_names, batches = _backends(backends), _check_batches(batches)
    resolved = {name: _resolve(name, m, dim, dataset) for name, m in models.items()}
    started = time.perf_counter()
    machine = cpu_info()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    tmp = tempfile.TemporaryDirectory(prefix="nfkd-tradeoff-") if export_dir is None else None
    export_root = Path(tmp.name if tmp else export_dir)
    try:
        infos, refs = _model_infos(resolved, test, teacher, references, log)
        rows, runners = _load_rows(resolved, backend_names, device, threads, export_root, test, refs, agree_rows,
                                   agree_rtol, log)
        _time_rounds(_tasks(rows, runners, test, batches, seed, max_call_s, round_s, log), rounds, log)
    finally:
        torch.set_num_threads(previous_threads)
        if tmp is not None:
            tmp.cleanup()
    machine["load_end"] = machine_load()
    return {
        "dataset": dataset, "dim": dim, "n_test": len(test), "teacher": teacher, "device": device,
        "threads": threads, "batches": batches, "rounds": rounds, "ops": list(OPS), "machine": machine,
        "models": infos, "rows": rows, "seconds": time.perf_counter() - started,
        "method": {"log_prob": "the test rows tiled to the batch, float32, through Runner.log_prob (input checks included)",
                   "sample": "decode pre-drawn unit noise (the same for every backend; drawing it is not timed)",
                   "timing": f"single calls timed round by round across all pairs ({rounds} rounds, about "
                             f"{round_s * 1e3:.0f} ms of calls per pair per round, at least one); median and IQR",
                   "agreement": f"each backend's log_prob on {min(agree_rows, len(test))} test rows against the "
                                f"float64 eager flow; agrees when max |diff| <= {agree_rtol} x max(1, |log p|)"},
    }


def _tasks(rows: list[dict[str, Any]], runners: dict, test: np.ndarray, batches: list[int], seed: int,
           max_call_s: float, round_s: float, log: Callable[[str], Any]) -> list[dict[str, Any]]:
    """One timed call per (pair, op, batch), warmed up (compilation, allocation) and sized by its first timing."""
    tasks = []
    for row in bar(rows, desc="tradeoff: warm-up", unit="pair"):  # compilation can take seconds per pair
        runner = runners.get((row["model"], row["backend"]))
        if runner is None:
            continue
        for batch in batches:
            x = np.ascontiguousarray(np.resize(test, (batch, test.shape[1])))
            noise = draw_noise(runner.noise_shapes, batch, seed)
            for op, fn in (("log_prob", lambda r=runner, x=x: r.log_prob(x)),
                           ("sample", lambda r=runner, z=noise: r.sample(noise=z))):
                try:
                    fn()  # warm-up: compilation, first allocations
                    first = _timed(fn)
                except Exception as exc:  # recorded, the other pairs still run
                    row["timings"][op][str(batch)] = {"skipped": f"{type(exc).__name__}: {exc}"}
                    continue
                if first > max_call_s:
                    row["timings"][op][str(batch)] = {"skipped": f"one call takes {first:.1f} s (> {max_call_s} s cap)"}
                    log(f"tradeoff: {row['model']} on {row['backend']}: {op} at batch {batch} skipped ({first:.1f} s)")
                    continue
                calls = max(1, min(200, int(round_s / max(first, 1e-7))))
                tasks.append({"row": row, "op": op, "batch": batch, "fn": fn, "calls": calls, "times": []})
    return tasks
