"""pytest-benchmark JSON -> a markdown report in the layout of the paper's Table 2, plus PNG plots.

    python -m bench.report results.json [more.json ...] [-o DIR] [--name report] [--stat median]

Writes ``DIR/<name>.md`` (tables), ``DIR/<name>-<direction>-<arch>.png`` (throughput against
batch size, one line per backend and role; one panel per dimension) and ``DIR/<name>.csv`` (one row
per benchmark, no raw timings). ``DIR`` defaults to the first JSON's folder.

Per benchmark: time per batch = the chosen statistic (``--stat``, default the median over rounds;
the rounds' interquartile range [Q1–Q3] is printed beside it), samples per second = batch / time, and speed-up = time of the
*eager teacher* (nfkd's flow as trained, same direction / arch / dim / batch) / time. Several JSON
files may be combined (e.g. density and sampling run separately); a later file's benchmark replaces
an earlier one of the same name, and a speed-up whose reference comes from another file (another
run, other load) is marked with a dagger.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from nfkd.inference.registry import BACKENDS as _REGISTRY
from nfkd.metrics.uncertainty import is_loaded

STATS = ("median", "min", "mean")
PEERS = ("nflows", "zuko")
BACKEND_ORDER = (*_REGISTRY, *PEERS)  # nfkd's backends in the registry's order, then the outside references
BACKEND_LABEL = {**{name: spec.title for name, spec in _REGISTRY.items()}, **{p: p for p in PEERS}}
#: The rows the report's summaries compare (a choice of presentation, not a capability): speed-ups are
#: against the eager teacher; the portable summary shows the ONNX Runtime export; the engine summary numba.
REFERENCE, PORTABLE, CPU_ENGINE = "eager", "onnxruntime", "numba"
ARCH_LABEL = {"glow1d": "Glow-1D", "maf": "MAF", "glow": "Glow (images)"}  # also the order of the sections
DIRECTION_LABEL = {"density": "density: time to compute the log-likelihood of a batch", "sample": "sampling: time to draw a batch"}


def _tabular(arch: str) -> bool:
    """Whether rows of ``arch`` model tables (D features) or images (a shape): the flow class says."""
    from nfkd.flows import ARCHITECTURES

    cls = ARCHITECTURES.get(arch)
    return cls is None or cls.tabular


def _tabular_archs() -> list[str]:
    return [a for a in ARCH_LABEL if _tabular(a)]


@dataclass
class Row:
    name: str
    direction: str
    arch: str
    dim: int
    shape: str
    batch: int
    role: str
    backend: str
    params: int
    preset: str
    stats: dict[str, float]
    rounds: int
    iterations: int
    source: int = 0
    time_s: float = math.nan
    samples_per_s: float = math.nan
    speedup: float | None = None  # over the eager teacher of the same group
    speedup_other_run: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    peak_gflops: float | None = None  # the matmul peak measured in this row's own run (None: not measured there)
    loaded: bool = False  # other work held the machine at the start or end of this row's run

    @property
    def group(self) -> tuple:
        return (self.direction, self.arch, self.dim, self.batch)


# ------------------------------------------------------------------------------------ arithmetic
def samples_per_second(batch: int, seconds: float) -> float:
    return batch / seconds if seconds > 0 else math.nan


def speedup(reference_s: float, seconds: float) -> float:
    return reference_s / seconds if seconds > 0 else math.nan


def geomean(values: Iterable[float]) -> float:
    vals = [v for v in values if v is not None and v > 0 and math.isfinite(v)]
    return math.exp(sum(map(math.log, vals)) / len(vals)) if vals else math.nan


def load_rows(paths: Sequence[str | Path]) -> tuple[list[Row], list[dict[str, Any]]]:
    """Rows of every benchmark with nfkd's extra_info (later files replace same-named benchmarks)."""
    by_name: dict[str, Row] = {}
    infos = []
    for i, p in enumerate(paths):
        data = json.loads(Path(p).read_text())
        m = data.get("machine_info", {})
        infos.append({"path": str(p), "datetime": data.get("datetime"), "machine_info": m,
                      "version": data.get("version"), "loaded": run_loaded(m)})
        peak = (m.get("roofline") or {}).get("peak_gflops")
        for b in data.get("benchmarks", []):
            e = b.get("extra_info") or {}
            if not {"arch", "role", "backend", "batch", "direction"} <= e.keys():
                continue
            st = b["stats"]
            by_name[b.get("fullname", b["name"])] = Row(
                name=b["name"], direction=e["direction"], arch=e["arch"], dim=int(e.get("dim", 0)),
                shape=str(e.get("shape", e.get("dim", ""))), batch=int(e["batch"]), role=e["role"],
                backend=e["backend"], params=int(e.get("params", 0)), preset=str(e.get("preset", "")),
                stats={k: float(st[k]) for k in ("min", "max", "mean", "stddev", "median", "q1", "q3", "iqr") if k in st},
                rounds=int(st.get("rounds", 0)), iterations=int(st.get("iterations", 1)), source=i, extra=e,
                peak_gflops=float(peak) if peak else None, loaded=infos[-1]["loaded"],
            )
    return list(by_name.values()), infos


def run_loaded(machine_info: dict[str, Any]) -> bool:
    """Whether other work loaded the machine at the start or the end of a run (load average vs CPUs; at the end
    the run's own threads are subtracted)."""
    cpus, threads = machine_info.get("cpu_count"), int(machine_info.get("bench_threads") or 0)
    start, end = (machine_info.get(k) for k in ("loadavg_start", "loadavg_end"))
    first = (lambda v: float(v[0]) if isinstance(v, list) and v else None)
    return is_loaded(first(start), cpus) or is_loaded(first(end), cpus, threads)


def pct_of_peak(r: Row) -> float | None:
    """GFLOP/s as a share of the matmul peak measured in the same run; None when that run measured no peak."""
    g = r.extra.get("gflops")
    return None if g is None or not r.peak_gflops else 100 * g / r.peak_gflops


def derive(rows: list[Row], stat: str = "median") -> list[Row]:
    """Fill time_s, samples_per_s and speed-up over the eager teacher of the same group (in place)."""
    if stat not in STATS:
        raise ValueError(f"stat must be one of {STATS}")
    ref: dict[tuple, Row] = {}
    for r in rows:
        r.time_s = r.stats[stat]
        r.samples_per_s = samples_per_second(r.batch, r.time_s)
        if r.backend == REFERENCE and r.role == "teacher":
            ref[r.group] = r
    for r in rows:
        base = ref.get(r.group)
        r.speedup = speedup(base.time_s, r.time_s) if base is not None else None
        r.speedup_other_run = base is not None and base.source != r.source
    return rows


def sort_key(r: Row) -> tuple:
    return (
        ("density", "sample").index(r.direction) if r.direction in ("density", "sample") else 9,
        list(ARCH_LABEL).index(r.arch) if r.arch in ARCH_LABEL else 9,
        r.dim, r.batch, BACKEND_ORDER.index(r.backend) if r.backend in BACKEND_ORDER else 99,
        0 if r.role == "teacher" else 1,
    )


# ------------------------------------------------------------------------------------ formatting
def fmt_ms(seconds: float) -> str:
    ms = seconds * 1e3
    if not math.isfinite(ms):
        return "-"
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    if ms >= 1:
        return f"{ms:.2f}"
    return f"{ms:.3f}"


def fmt_time(r: Row) -> str:
    """The chosen statistic with the rounds' IQR in ms: 'time [Q1–Q3]' (a spread one slow round cannot blow up)."""
    if r.rounds < 2 or "q1" not in r.stats:
        return f"{fmt_ms(r.time_s)} [n/a]"
    return f"{fmt_ms(r.time_s)} [{fmt_ms(r.stats['q1'])}–{fmt_ms(r.stats['q3'])}]"


def fmt_rate(v: float) -> str:
    if not math.isfinite(v):
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if v >= scale:
            return f"{v / scale:.3g} {unit}"
    return f"{v:.3g}"


def fmt_x(v: float | None, dagger: bool = False) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    txt = f"{v:.3g}x" if v < 100 else f"{v:.0f}x"
    return txt + ("†" if dagger else "")


def fmt_k(params: int) -> str:
    return f"{params / 1e3:.1f}" if params < 1e6 else f"{params / 1e3:.0f}"


def table(header: Sequence[str], body: Iterable[Sequence[str]], align: Sequence[str] | None = None) -> str:
    body = [list(map(str, b)) for b in body]
    align = align or ["---"] * len(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(b) + " |" for b in body]
    return "\n".join(lines)


def _backends(rows: Iterable[Row]) -> list[str]:
    present = {r.backend for r in rows}
    return [b for b in BACKEND_ORDER if b in present] + sorted(present - set(BACKEND_ORDER))


def _index(rows: Iterable[Row]) -> dict[tuple, Row]:
    return {(r.direction, r.arch, r.dim, r.batch, r.role, r.backend): r for r in rows}


# ------------------------------------------------------------------------------------ sections
def header_section(infos: list[dict[str, Any]], stat: str, rows: list[Row]) -> str:
    out = []
    for info in infos:
        m = info["machine_info"]
        cpu = (m.get("cpu") or {}).get("brand_raw", m.get("processor", ""))
        out.append(
            f"- `{Path(info['path']).name}` ({info.get('datetime') or '?'}): mode **{m.get('bench_mode', '?')}**, device "
            f"{m.get('bench_device', '?')}{' (' + m['gpu'] + ')' if m.get('gpu') else ''}, {m.get('cpu_count', '?')} CPUs "
            f"({cpu}), threads {m.get('bench_threads', '?')} (torch + ONNX Runtime intra-op), OMP_WAIT_POLICY="
            f"{m.get('omp_wait_policy') or 'unset'}, load average {_load(m.get('loadavg_start'))} at start / "
            f"{_load(m.get('loadavg_end'))} at end; torch {m.get('torch', '?')}, onnxruntime {m.get('onnxruntime', '-')}, "
            f"nflows {m.get('nflows', '-')}, zuko {m.get('zuko', '-')}, pytest-benchmark {info.get('version', '?')}; "
            f"presets {m.get('presets', {})}"
        )
    for info in infos:
        if info.get("loaded"):
            out.append(f"  - `{Path(info['path']).name}`: **the machine was loaded** during this run; its times and "
                       "% of peak measure shared CPUs — compare rows of this run with each other only")
        roof = info["machine_info"].get("roofline")
        if roof:
            out.append(
                f"  - roofline (measured in the same run): float32 matmul peak {roof['peak_gflops_1t']:.1f} GFLOP/s "
                f"on 1 thread, {roof['peak_gflops']:.1f} on {roof['threads']}; copy bandwidth "
                f"{roof['copy_gbs_1t']:.1f} / {roof['copy_gbs']:.1f} GB/s"
            )
    n = len(rows)
    bk = ", ".join(BACKEND_LABEL.get(b, b) for b in _backends(rows))
    return "\n".join([
        f"{n} benchmarks; backends: {bk}.",
        "",
        *out,
        "",
        f"Time per batch: **{stat}** over rounds in ms, with the rounds' [Q1–Q3] (interquartile range); "
        "samples/s = batch / time; "
        "speed-up = eager teacher time / time, same direction, architecture, dimension and batch "
        "(eager = the nfkd flow as trained, `flow.log_prob` / `flow.sample` under `torch.no_grad`). "
        "Sampling times include drawing the noise. Models have random (perturbed) weights: speed does "
        "not depend on training. IQR 'n/a': a single round (long calls). GFLOP/s = the folded model's "
        "useful FLOPs (matmuls and convolutions without a MADE's masked zeros, `bench/roofline.py`) / time; "
        "% peak = of the matmul peak measured in the same run at its thread count ('-' when that run measured "
        "none); 'loaded': the run's machine was loaded (1-min load average, less the run's threads, above half "
        "the CPUs at its start or end), so both the time and the peak measure shared CPUs; above 100 % the peak "
        "itself was measured under load.",
    ])


def _load(v) -> str:
    return "/".join(f"{x:.1f}" for x in v[:1]) if isinstance(v, list) and v else "?"


def table2_section(rows: list[Row]) -> str:
    """Paper layout: per direction and architecture, one row per (dim, batch), teacher and student
    side by side for every backend (time in ms, speed-up over the eager teacher)."""
    out = []
    idx = _index(rows)
    for direction in ("density", "sample"):
        for arch in ARCH_LABEL:
            sub = [r for r in rows if r.direction == direction and r.arch == arch]
            if not sub:
                continue
            backends = _backends(sub)
            cols = [(b, role) for b in backends for role in ("teacher", "student")
                    if any(r.backend == b and r.role == role for r in sub)]
            head = ["D" if _tabular(arch) else "shape", "batch", "params T / S (k)"]
            head += [f"{'T' if role == 'teacher' else 'S'} {BACKEND_LABEL.get(b, b)}" for b, role in cols]
            body = []
            for dim, batch in sorted({(r.dim, r.batch) for r in sub}):
                pt = idx.get((direction, arch, dim, batch, "teacher", REFERENCE))
                ps = idx.get((direction, arch, dim, batch, "student", REFERENCE))
                shape = next(r.shape for r in sub if r.dim == dim)
                params = f"{fmt_k(pt.params) if pt else '-'} / {fmt_k(ps.params) if ps else '-'}"
                cells = [shape, str(batch), params]
                for b, role in cols:
                    r = idx.get((direction, arch, dim, batch, role, b))
                    if r is None:
                        cells.append("-")
                    elif b == REFERENCE and role == "teacher":
                        cells.append(f"{fmt_ms(r.time_s)}")
                    else:
                        cells.append(f"{fmt_ms(r.time_s)} ({fmt_x(r.speedup, r.speedup_other_run)})")
                body.append(cells)
            out.append(f"### {ARCH_LABEL.get(arch, arch)}, {DIRECTION_LABEL[direction]}\n\n"
                       "Time per batch in ms (speed-up over the eager teacher). T = teacher, S = student"
                       + ("; nflows / zuko: the same MAF built with those libraries (teacher and student sizes)."
                          if any(b in PEERS for b in backends) else ".")
                       + "\n\n" + table(head, body))
    return "\n\n".join(out)


def headline_section(rows: list[Row]) -> str:
    idx = _index(rows)
    parts = [*_ort_vs_teacher(rows, idx), *_engine(rows, idx), *_student_vs_teacher(rows, idx), *_peers(rows, idx)]
    return "\n\n".join(parts)


def _ort_vs_teacher(rows: list[Row], idx: dict) -> list[str]:
    """ONNX Runtime student vs eager teacher, tabular density at the largest common batch <= 4096."""
    parts: list[str] = []
    dens = [r for r in rows if r.direction == "density" and _tabular(r.arch)]
    batches = sorted({r.batch for r in dens})
    if dens and any(r.backend == PORTABLE and r.role == "student" for r in dens):
        hb = 4096 if 4096 in batches else max(batches)
        body, gains = [], []
        for arch in _tabular_archs():
            for dim in sorted({r.dim for r in dens if r.arch == arch}):
                t = idx.get(("density", arch, dim, hb, "teacher", REFERENCE))
                s = idx.get(("density", arch, dim, hb, "student", PORTABLE))
                st = idx.get(("density", arch, dim, hb, "teacher", PORTABLE))
                if t is None or s is None:
                    continue
                gains.append(s.speedup)
                body.append([ARCH_LABEL[arch], dim, fmt_time(t), fmt_rate(t.samples_per_s), fmt_time(s),
                             fmt_rate(s.samples_per_s), fmt_x(s.speedup, s.speedup_other_run),
                             fmt_x(st.speedup) if st else "-"])
        if body:
            g = geomean(gains)
            parts.append(
                f"### ONNX Runtime student vs eager teacher: tabular density, batch {hb}\n\n"
                + table(["arch", "D", "eager teacher ms", "teacher samples/s", "ORT student ms", "student samples/s",
                         "speed-up", "(ORT teacher speed-up)"], body)
                + f"\n\nGeometric mean speed-up of the ONNX Runtime student over the eager teacher: **{fmt_x(g)}**."
            )
    return parts


def _engine(rows: list[Row], idx: dict) -> list[str]:
    """The numba CPU engine's student vs ONNX Runtime's student and zuko's MAF of the same size (issue #14)."""
    eng = [r for r in rows if r.backend == CPU_ENGINE and r.role == "student"]
    if not eng:
        return []
    hb = 4096 if any(r.batch == 4096 for r in eng) else max(r.batch for r in eng)
    body, vs_ort, vs_zuko = [], [], []
    for direction in ("density", "sample"):
        for arch in _tabular_archs():
            for dim in sorted({r.dim for r in eng if r.arch == arch}):
                n = idx.get((direction, arch, dim, hb, "student", CPU_ENGINE))
                if n is None:
                    continue
                o = idx.get((direction, arch, dim, hb, "student", PORTABLE))
                z = idx.get((direction, "maf", dim, hb, "student", "zuko"))
                if o:
                    vs_ort.append(speedup(o.time_s, n.time_s))
                if z:
                    vs_zuko.append(speedup(z.time_s, n.time_s))
                body.append([direction, ARCH_LABEL[arch], dim, fmt_ms(n.time_s), _fmt_roof(n),
                             f"{fmt_ms(o.time_s)} ({fmt_x(speedup(o.time_s, n.time_s))})" if o else "-",
                             f"{fmt_ms(z.time_s)} ({fmt_x(speedup(z.time_s, n.time_s))})" if z else "-"])
    if not body:
        return []
    summary = [f"{name}: geometric mean {fmt_x(geomean(v))} over {len(v)} cases" for name, v in
               (("numba vs ONNX Runtime (student)", vs_ort), ("numba vs zuko (MAF of the same size)", vs_zuko)) if v]
    return ["### numba CPU engine (student) vs ONNX Runtime and zuko, batch " + str(hb) + "\n\n"
            "Other backend's time / numba's time in parentheses (above 1x the engine is faster); zuko is always the "
            "MAF of the same size (for Glow-1D rows too, as in issue #14). Details: `bench/results/cpu-engine.md`.\n\n"
            + table(["direction", "arch", "D", "numba ms", "GFLOP/s (% of peak)", "ORT student ms", "zuko ms"], body)
            + ("\n\n" + "\n".join(f"- {s}" for s in summary) if summary else "")]


def _student_vs_teacher(rows: list[Row], idx: dict) -> list[str]:
    """Student vs teacher at equal backend (geometric mean over dims)."""
    parts: list[str] = []
    body = []
    for direction in ("density", "sample"):
        for arch in ARCH_LABEL:
            sub = [r for r in rows if r.direction == direction and r.arch == arch]
            for b in _backends(sub):
                if b in PEERS:
                    continue
                cells = [direction, ARCH_LABEL[arch], BACKEND_LABEL.get(b, b)]
                any_val = False
                for batch in sorted({r.batch for r in rows if r.arch == arch}):
                    ratios = []
                    for dim in sorted({r.dim for r in sub}):
                        t = idx.get((direction, arch, dim, batch, "teacher", b))
                        s = idx.get((direction, arch, dim, batch, "student", b))
                        if t and s:
                            ratios.append(speedup(t.time_s, s.time_s))
                    any_val |= bool(ratios)
                    cells.append(fmt_x(geomean(ratios)) if ratios else "-")
                if any_val:
                    body.append((cells, arch))
    if body:
        for tabular in (True, False):
            arch_group = [a for a in ARCH_LABEL if _tabular(a) == tabular]
            sel = [c for c, a in body if a in arch_group]
            if not sel:
                continue
            bs = sorted({r.batch for r in rows if r.arch in arch_group})
            parts.append(
                f"### Student vs teacher at equal backend ({'tabular' if tabular else 'images'})\n\n"
                "Teacher time / student time on the same backend, geometric mean over dimensions.\n\n"
                + table(["direction", "arch", "backend", *[f"batch {b}" for b in bs]], sel)
            )
    return parts


def _peers(rows: list[Row], idx: dict) -> list[str]:
    """nfkd MAF vs the same MAF in the peer libraries."""
    parts: list[str] = []
    peer_rows = [r for r in rows if r.backend in PEERS]
    if peer_rows:
        body = []
        for direction in ("density", "sample"):
            for role in ("teacher", "student"):
                for dim in sorted({r.dim for r in peer_rows}):
                    for batch in sorted({r.batch for r in peer_rows}):
                        n = idx.get((direction, "maf", dim, batch, role, REFERENCE))
                        if n is None:
                            continue
                        best = min((r for r in rows if r.group == n.group and r.role == role
                                    and r.backend not in PEERS), key=lambda r: r.time_s)
                        cells = [direction, role, dim, batch, fmt_ms(n.time_s), f"{fmt_ms(best.time_s)} ({best.backend})"]
                        have = False
                        for p in PEERS:
                            pr = idx.get((direction, "maf", dim, batch, role, p))
                            cells.append(f"{fmt_ms(pr.time_s)} ({fmt_x(speedup(pr.time_s, n.time_s))})" if pr else "-")
                            have |= pr is not None
                        if have:
                            body.append(cells)
        if body:
            summary = []
            for direction in ("density", "sample"):
                for p in PEERS:
                    vals = [speedup(idx[k].time_s, idx[(*k[:5], REFERENCE)].time_s)
                            for k in idx if k[0] == direction and k[5] == p and (*k[:5], REFERENCE) in idx]
                    if vals:
                        summary.append(f"{direction}: {p} time / nfkd eager time = {fmt_x(geomean(vals))} (geometric mean, "
                                       f"{len(vals)} cases)")
            parts.append(
                "### nfkd MAF vs the same MAF in nflows / zuko\n\n"
                "Same D, blocks, hidden width, hidden layers and reversed orders (equal parameter counts), same "
                "inputs. Peer cells: time in ms (peer time / nfkd eager time: above 1x nfkd is faster).\n\n"
                + table(["direction", "size", "D", "batch", "nfkd eager ms", "nfkd best ms", *[f"{p} ms" for p in PEERS]], body)
                + ("\n\n" + "\n".join(f"- {s}" for s in summary) if summary else "")
            )
    return parts


def _fmt_roof(r: Row) -> str:
    """'GFLOP/s (% of the same run's peak)', flagged when that run's machine was loaded or the share is impossible."""
    g, pct = r.extra.get("gflops"), pct_of_peak(r)
    if g is None:
        return "-"
    if pct is None:
        return f"{g:.2f} (-)"
    flag = "; peak measured under load" if pct > 100 else "; loaded" if r.loaded else ""
    return f"{g:.2f} ({pct:.1f} %{flag})"


def full_section(rows: list[Row]) -> str:
    out = []
    for direction in ("density", "sample"):
        for arch in ARCH_LABEL:
            sub = sorted((r for r in rows if r.direction == direction and r.arch == arch), key=sort_key)
            if not sub:
                continue
            body = [[r.shape, r.batch, r.role, BACKEND_LABEL.get(r.backend, r.backend), fmt_k(r.params), fmt_time(r),
                     fmt_ms(r.stats.get("min", math.nan)), fmt_rate(r.samples_per_s),
                     fmt_x(r.speedup, r.speedup_other_run), _fmt_roof(r), f"{r.rounds}x{r.iterations}"] for r in sub]
            out.append(f"### {ARCH_LABEL.get(arch, arch)}, {direction}\n\n" + table(
                ["D" if _tabular(arch) else "shape", "batch", "role", "backend", "params (k)", "ms [IQR]", "min ms",
                 "samples/s", "speed-up", "GFLOP/s (% peak)", "rounds x iter"], body))
    return "\n\n".join(out)


def render(rows: list[Row], infos: list[dict[str, Any]], stat: str, plots: Sequence[str] = (),
           notes: Sequence[str] = ()) -> str:
    rows = sorted(rows, key=sort_key)
    parts = ["# nfkd throughput: teachers, students, backends", *notes, header_section(infos, stat, rows)]
    head = headline_section(rows)
    if head:
        parts += ["## Key comparisons", head]
    parts += ["## Table 2 layout", table2_section(rows)]
    if plots:
        parts += ["## Throughput against batch size", "\n".join(f"![{Path(p).stem}]({Path(p).name})" for p in plots)]
    parts += ["## All measurements", full_section(rows)]
    return "\n\n".join(p for p in parts if p) + "\n"


# ------------------------------------------------------------------------------------ plots, csv
def plot(rows: list[Row], out_dir: Path, stem: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = dict(zip(BACKEND_ORDER, ("#000000", "#1f77b4", "#9467bd", "#d62728", "#ff7f0e", "#2ca02c", "#7f7f7f", "#bcbd22")))
    files = []
    for direction in ("density", "sample"):
        for arch in ARCH_LABEL:
            sub = [r for r in rows if r.direction == direction and r.arch == arch]
            if not sub:
                continue
            dims = sorted({r.dim for r in sub})
            width = 2.8 * len(dims) + 1.9
            fig, axes = plt.subplots(1, len(dims), figsize=(width, 3.0), squeeze=False, sharey=True)
            for ax, dim in zip(axes[0], dims):
                for b in _backends(sub):
                    for role, style in (("teacher", "--"), ("student", "-")):
                        pts = sorted((r.batch, r.samples_per_s) for r in sub if r.dim == dim and r.backend == b and r.role == role)
                        if not pts:
                            continue
                        xs, ys = zip(*pts)
                        ax.plot(xs, ys, style, marker="o", ms=3, lw=1.2, color=colors.get(b, "k"),
                                label=f"{b} {role[0].upper()}")
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                shape = next(r.shape for r in sub if r.dim == dim)
                ax.set_title(f"D={shape}" if _tabular(arch) else shape, fontsize=9)
                ax.set_xlabel("batch", fontsize=8)
                ax.tick_params(labelsize=7)
                ax.grid(True, which="major", alpha=0.3)
            axes[0][0].set_ylabel("samples / s", fontsize=8)
            handles, labels = axes[0][0].get_legend_handles_labels()
            seen = dict(zip(labels, handles))
            for ax in axes[0][1:]:
                for h, lab in zip(*ax.get_legend_handles_labels()):
                    seen.setdefault(lab, h)
            fig.legend(list(seen.values()), list(seen.keys()), fontsize=7, loc="center right", frameon=False)
            fig.suptitle(f"{ARCH_LABEL.get(arch, arch)} {direction} (T dashed = teacher, S solid = student)", fontsize=9)
            fig.tight_layout(rect=(0, 0, 1 - 1.7 / width, 0.94))
            path = out_dir / f"{stem}-{direction}-{arch}.png"
            fig.savefig(path, dpi=80)
            plt.close(fig)
            files.append(path)
    return files


CSV_FIELDS = ("direction", "arch", "dim", "shape", "batch", "role", "backend", "preset", "params", "min_s", "median_s",
              "mean_s", "stddev_s", "rounds", "iterations", "time_s", "samples_per_s", "speedup_vs_eager_teacher",
              "gflops", "pct_of_peak")


def write_csv(rows: list[Row], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_FIELDS)
        for r in sorted(rows, key=sort_key):
            w.writerow([r.direction, r.arch, r.dim, r.shape, r.batch, r.role, r.backend, r.preset, r.params,
                        f"{r.stats.get('min', math.nan):.6g}", f"{r.stats.get('median', math.nan):.6g}",
                        f"{r.stats.get('mean', math.nan):.6g}", f"{r.stats.get('stddev', math.nan):.6g}", r.rounds,
                        r.iterations, f"{r.time_s:.6g}", f"{r.samples_per_s:.6g}",
                        "" if r.speedup is None else f"{r.speedup:.4g}",
                        f"{r.extra['gflops']:.4g}" if "gflops" in r.extra else "",
                        f"{pct:.3g}" if (pct := pct_of_peak(r)) is not None else ""])


def build_report(paths: Sequence[str | Path], out_dir: str | Path | None = None, stem: str = "report",
                 stat: str = "median", plots: bool = True, write_rows_csv: bool = True,
                 notes: Sequence[str] = ()) -> Path:
    rows, infos = load_rows(paths)
    if not rows:
        raise SystemExit(f"no nfkd benchmarks (with extra_info) in {', '.join(map(str, paths))}")
    derive(rows, stat)
    out = Path(out_dir) if out_dir else Path(paths[0]).resolve().parent
    out.mkdir(parents=True, exist_ok=True)
    pngs = plot(rows, out, stem) if plots else []
    if write_rows_csv:
        write_csv(rows, out / f"{stem}.csv")
    md = out / f"{stem}.md"
    md.write_text(render(rows, infos, stat, [str(p) for p in pngs], notes))
    return md


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("\n")[0])
    p.add_argument("json", nargs="+", help="pytest-benchmark --benchmark-json files")
    p.add_argument("-o", "--out", default=None, help="output folder (default: the first JSON's folder)")
    p.add_argument("--name", default="report", help="file stem: NAME.md, NAME.csv, NAME-<direction>-<arch>.png")
    p.add_argument("--stat", choices=STATS, default="median", help="time statistic for samples/s and speed-ups")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-csv", action="store_true")
    p.add_argument("--note", action="append", default=[], help="a paragraph (markdown) printed under the title; repeatable")
    a = p.parse_args(argv)
    md = build_report(a.json, a.out, a.name, a.stat, plots=not a.no_plots, write_rows_csv=not a.no_csv, notes=a.note)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
