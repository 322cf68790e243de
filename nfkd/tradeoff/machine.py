"""The machine a trade-off was measured on: CPU name, vector width, load. Latency only means
something next to the machine that produced it."""
from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch

from ..metrics.uncertainty import load_note

__all__ = ["cpu_info", "machine_line"]


def _cpuinfo_fields(text: str) -> tuple[str, set[str]]:
    name, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not name:
            name = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return name, flags


def cpu_info(cpuinfo: str | None = None) -> dict[str, Any]:
    """CPU model name and float vector width (avx512f -> 512 bit, avx2 -> 256 bit) from /proc/cpuinfo."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    name, flags = _cpuinfo_fields(cpuinfo)
    if "avx512f" in flags:
        isa, bits = "AVX-512", 512
    elif "avx2" in flags:
        isa, bits = "AVX2", 256
    elif "sse2" in flags:
        isa, bits = "SSE2", 128
    else:
        isa, bits = "unknown", None
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    return {"cpu": name or platform.processor() or platform.machine() or "unknown CPU", "isa": isa,
            "vector_bits": bits, "fma": "fma" in flags, "logical_cpus": os.cpu_count(), "load_average": load,
            "torch": torch.__version__}


def machine_line(machine: dict[str, Any], threads: int) -> str:
    """One sentence: 'AMD EPYC (AVX2, 256-bit vectors), 1 thread, ..., load average 0.3 at start / 1.2 at end on
    2 logical CPUs' (flagged when other work loaded the machine)."""
    width = f"{machine['vector_bits']}-bit vectors" if machine.get("vector_bits") else "vector width unknown"
    load = machine.get("load_average")
    load_txt = (", " + load_note(load[0], machine.get("load_end"), machine.get("logical_cpus"), threads,
                                  int(machine.get("busy_before", 0)))) if load else ""
    return (f"{machine['cpu']} ({machine['isa']}, {width}), {threads} thread{'s' if threads != 1 else ''}, "
            f"torch {machine.get('torch')}{load_txt}")
