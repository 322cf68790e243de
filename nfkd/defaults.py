"""The one table of defaults: which distillation recipe and which inference backend run when none is named.

``distill`` (CLI), ``FlowDensity.distill``, ``nfkd demo`` (``variants.demo_recipe``) and the docs
read it, so they cannot disagree. Each row carries the figure it rests on (docs/experiments.md,
3 seeds unless it says otherwise). The backend rows are derived from the recorded benchmark
ranking (``nfkd/inference/ranking.json``), the same list ``inference.load(backend="auto")`` walks.
"""
from __future__ import annotations

from dataclasses import dataclass

from .distill.recipe import SMALL_DATA_ROWS

__all__ = ["Default", "DEFAULTS", "DATA_FREE", "PROTOCOLS", "size_of", "recommend", "backend_order",
           "auto_backend", "describe_defaults"]

#: "equal-budget": a fresh student trained for the budget (``distill`` without ``--init-from``,
#: ``FlowDensity.distill``); "warm-start": every student continues one trained no-KD student for the same
#: extra steps (``nfkd demo``, ``distill --init-from``), so the extra steps are not credited to distillation.
PROTOCOLS = ("equal-budget", "warm-start")


@dataclass(frozen=True)
class Default:
    """One recommendation: a ``nfkd.distill.variants`` name for a student arch, data size and protocol."""

    arch: str  # the student's architecture
    size: str  # "small" (< SMALL_DATA_ROWS training rows), "large" or "any"
    protocol: str  # one of PROTOCOLS
    method: str  # a variant name (``python -m nfkd experiment --methods``)
    measured: str  # the figure it rests on
    why: str


DEFAULTS: tuple[Default, ...] = (
    Default("glow1d", "small", "warm-start", "fkl",
            "+1.29 ± 0.85 nats over the equally continued no-KD student, 3/3 seeds, 68 % of the gap (breast_cancer)",
            "half of every batch from the teacher's samples is a teacher-smoothed stream the few rows cannot give"),
    Default("glow1d", "small", "equal-budget", "init",
            "+0.19 ± 0.82 nats over no-KD, 2/3 seeds, 7 % of the gap (breast_cancer); skd +0.13, 3/3, 4 %; fkl -0.53",
            "largest mean paired gain for a fresh student; fkl only helps a student that has already fitted the data"),
    Default("glow1d", "large", "equal-budget", "ilkd-aligned",
            "+0.040 ± 0.048 nats, 2/3 seeds, 2 % of the gap (MAGIC); skd +0.019; fkl+init -1.04",
            "no method measurably helps with plenty of rows; aligned ILKD has the largest mean and is cheap"),
    Default("glow1d", "large", "warm-start", "skd",
            "+0.001 ± 0.004 nats, 2/3 seeds, 0 % (MAGIC); ilkd-aligned -0.003; fkl -0.32 (0/3)",
            "no method measurably helps; the paper's SKD is the least harmful, fkl costs nats"),
    Default("maf", "any", "equal-budget", "ilkd",
            "+0.004 ± 0.007 nats, 2/3 seeds, 0 % of the gap (MAGIC); warm start +0.002, 3/3; fkl -0.44",
            "no method measurably helps a MAF student: ILKD is the least harmful (and cheap); MAGIC only"),
    Default("iaf", "small", "equal-budget", "iaf",
            "+9.66 ± 6.11 nats over the MAF student, 3/3 seeds (breast_cancer, 455 rows)",
            "the share recipe: maximum likelihood, half of every batch teacher samples (data are scarce)"),
    Default("iaf", "large", "equal-budget", "iaf",
            "+0.043 ± 0.003 nats over the MAF student, 3/3 seeds (MAGIC, 12k rows)",
            "the share recipe: maximum likelihood on the data alone (every teacher share tried cost nats)"),
    Default("glow", "any", "equal-budget", "ilkd-aligned",
            "-0.011 ± 0.003 bpd, 3/3 seeds, 2 % of the gap (digits); skd +0.000; warm-start fkl:0.2 -0.014 (5 %)",
            "the only method with a paired gain at equal budget on images; SKD changed nothing"),
)
#: Distillation without data (``--data-free``, ``FlowDensity.distill(None)``), every architecture.
DATA_FREE = Default("any", "any", "equal-budget", "none",
                    "MAF -0.255 ± 0.029 nats vs the data-trained student (MAGIC); +5.88 on breast_cancer",
                    "maximum likelihood on the teacher's samples, trained and selected on them")


def size_of(n_train: int | None) -> str:
    """The size bucket of a training table (None: the demo's embedded tables, which are small)."""
    return "small" if n_train is None or n_train < SMALL_DATA_ROWS else "large"


def recommend(arch: str, n_train: int | None, protocol: str = "equal-budget") -> Default:
    """The row for a student ``arch`` on ``n_train`` training rows; without a ``protocol`` row, the equal-budget one."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    rows = [d for d in DEFAULTS if d.arch == arch and d.size in (size_of(n_train), "any")]
    if not rows:  # an architecture nobody has measured yet (a newly registered flow): plain maximum likelihood
        return Default(arch, "any", "equal-budget", "none", "not measured for this architecture",
                       "no recipe has been measured for it: maximum likelihood, the baseline every method is "
                       "compared against")
    return next((d for d in rows if d.protocol == protocol), next(d for d in rows if d.protocol == "equal-budget"))


def backend_order(device: str, arch: str) -> list[str]:
    """What ``inference.load(backend="auto")`` tries, in order (the benchmark ranking, minus non-runners)."""
    from .inference.registry import BACKENDS, ranking

    return [b for b in ranking(device, arch) if b in BACKENDS and BACKENDS[b].runs(arch)]


def auto_backend(device: str, arch: str) -> str:
    """The backend ``auto`` picks when everything is installed: the first of ``backend_order``."""
    return backend_order(device, arch)[0]


def describe_defaults() -> str:
    """The table as ``python -m nfkd info --defaults`` prints it."""
    lines = [f"distillation (size: small < {SMALL_DATA_ROWS} training rows; docs/experiments.md):"]
    for d in (*DEFAULTS, DATA_FREE):
        arch = "data-free" if d is DATA_FREE else d.arch
        lines.append(f"  {arch:<9} {d.size:<5} {d.protocol:<12} {d.method:<12} {d.measured}")
        lines.append(f"  {'':<41}why: {d.why}")
    lines.append("inference backend, backend='auto' (the first installed of, from inference/ranking.json):")
    from .flows import ARCHITECTURES

    for device in ("cpu", "cuda"):
        for arch in ARCHITECTURES:
            lines.append(f"  {device:<5} {arch:<7} {', '.join(backend_order(device, arch))}")
    return "\n".join(lines)
