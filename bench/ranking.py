"""Write ``nfkd/inference/ranking.json`` (what ``backend="auto"`` follows) from a benchmark CSV.

    python -m bench.ranking [bench/results/cpu-report.csv]

Architectures the CSV does not cover keep their order from the current ``ranking.json``.

Per device and architecture, backends are ordered by the geometric mean over batch sizes and
both directions (density, sampling) of the student's median time: measured, not guessed.
"""
from __future__ import annotations

import csv
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "nfkd" / "inference" / "ranking.json"


def nfkd_backends() -> tuple[str, ...]:
    """The backends that can be ranked: every one in the registry (read when asked)."""
    from nfkd.inference.registry import BACKENDS

    return tuple(BACKENDS)


def rank(rows: list[dict[str, str]]) -> dict[str, list[str]]:
    """{arch: [backend fastest first]} over the rows where every compared backend ran."""
    times: dict[str, dict[tuple, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    ranked = nfkd_backends()
    for r in rows:
        if r.get("role", "student") == "student" and r["backend"] in ranked:
            times[r["arch"]][(r["direction"], r["dim"], r["batch"])][r["backend"]] = float(r["median_s"])
    out = {}
    for arch, cases in sorted(times.items()):
        names = set.intersection(*(set(c) for c in cases.values()))
        score = {b: sum(math.log(c[b]) for c in cases.values()) / len(cases) for b in names}
        out[arch] = sorted(score, key=score.get)
    return out


def _name(src: Path) -> str:
    return str(src.relative_to(ROOT)) if src.is_relative_to(ROOT) else str(src)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    src = Path(argv[0]) if argv else ROOT / "bench" / "results" / "cpu-report.csv"
    with open(src, newline="") as f:
        cpu = rank(list(csv.DictReader(f)))
    source = _name(src)
    # architectures this CSV did not measure keep their recorded order (and say where it came from)
    old = json.loads(OUT.read_text()) if OUT.exists() else {}
    kept = {a: o for a, o in old.get("ranking", {}).get("cpu", {}).items() if a not in cpu}
    if kept:
        cpu = {**kept, **cpu}
        source = f"{source} ({', '.join(sorted(set(cpu) - set(kept)))}); {old.get('source', '?')} ({', '.join(sorted(kept))})"
    data = {
        "source": source,
        "rule": "geometric mean of the student's median time over batch sizes, dims and both directions",
        # No GPU run recorded yet: the recorded CUDA order (kernels and engines first) is kept as it is.
        "ranking": {"cpu": cpu, "cuda": old.get("ranking", {}).get("cuda", {})},
        **({"notes": old["notes"]} if "notes" in old else {}),
    }
    OUT.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {OUT.relative_to(ROOT)}: {json.dumps(data['ranking'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
