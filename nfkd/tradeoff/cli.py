"""``python -m nfkd tradeoff MODEL.pt [MODEL.pt ...] --data NAME --out DIR``: which model on which backend.

Measures every model on every backend available here (test LL in float64 once per model, each
backend's agreement with it, log_prob and sample latency at each batch on --threads threads,
interleaved) and writes tradeoff.md, tradeoff.json and tradeoff.png (test LL vs latency for --op at
--batch, Pareto front drawn). With --budget-ms it also prints the pick for that budget. The first
model is the teacher unless --teacher names another (or one is named 'teacher').
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from ..errors import InputError
from .choose import fmt_seconds, pick
from .measure import DEFAULT_BATCHES, OPS, measure_tradeoff
from .report import default_budgets, plot_caption, plot_tradeoff, render_tradeoff_markdown

__all__ = ["main", "default_names"]


def default_names(paths: list[str]) -> list[str]:
    """runs/teacher/model.pt -> 'teacher' (the folder when the file is model.pt), else the file's stem."""
    names = []
    for p in map(Path, paths):
        base = p.parent.name if p.stem == "model" and p.parent.name else p.stem
        name, k = base, 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.append(name)
    return names


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m nfkd tradeoff", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", metavar="MODEL.pt", help="checkpoints (teacher and students)")
    parser.add_argument("--data", required=True, help="tabular dataset whose test split scores the models")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--seed", type=int, default=None, help="split seed (default: the first model's training seed)")
    parser.add_argument("--names", nargs="+", default=None, help="one name per model (default: folder or file name)")
    parser.add_argument("--teacher", default=None, help="which name is the teacher (default: 'teacher' or the first)")
    parser.add_argument("--backends", nargs="+", default=None, help="backends to measure (default: all; the ones "
                        "that cannot run here are listed with the reason)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batches", type=int, nargs="+", default=list(DEFAULT_BATCHES))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-call-s", type=float, default=5.0, help="skip a measurement whose one call takes longer")
    parser.add_argument("--budget-ms", type=float, default=None, help="print the best pair for this latency budget")
    parser.add_argument("--op", default="sample", help="log_prob or sample: the op of --budget-ms and the plot")
    parser.add_argument("--batch", type=int, default=None, help="the batch of --budget-ms and the plot (default: "
                        "the first of --batches)")
    parser.add_argument("--export-dir", default=None, help="keep the ONNX exports here (default: a temporary folder)")
    parser.add_argument("--out", required=True, help="folder for tradeoff.md, tradeoff.json, tradeoff.png")
    return parser


def _check(args: argparse.Namespace) -> None:
    """Every bad setting as one line before anything is measured."""
    from ..inference.registry import BACKENDS

    missing = [m for m in args.models if not Path(m).is_file()]
    if missing:
        raise InputError(f"model not found: {missing[0]} (expected a checkpoint .pt file)")
    if args.names is not None and len(args.names) != len(args.models):
        raise InputError(f"--names gives {len(args.names)} names for {len(args.models)} models")
    if args.names is not None and len(set(args.names)) != len(args.names):
        raise InputError(f"--names must be distinct, got {args.names}")
    unknown = [b for b in args.backends or [] if b not in BACKENDS]
    if unknown:
        raise InputError(f"unknown backend {unknown[0]!r}; choose from {', '.join(BACKENDS)}")
    if args.op not in OPS:
        raise InputError(f"--op must be one of {', '.join(OPS)}, got {args.op!r}")
    if args.threads < 1 or args.rounds < 1 or any(b < 1 for b in args.batches):
        raise InputError("--threads, --rounds and --batches must be positive")
    if args.batch is not None and args.batch not in args.batches:
        raise InputError(f"--batch {args.batch} is not one of --batches {args.batches}")
    if args.budget_ms is not None and not (math.isfinite(args.budget_ms) and args.budget_ms > 0):
        raise InputError(f"--budget-ms must be a positive number, got {args.budget_ms}")
    if not args.max_call_s > 0:
        raise InputError(f"--max-call-s must be positive, got {args.max_call_s}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; give a folder")


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    _check(args)
    from ..checkpoint import atomic_write_bytes, load_checkpoint
    from ..pipeline import get_data

    names = args.names or default_names(args.models)
    if args.teacher is not None and args.teacher not in names:
        raise InputError(f"--teacher {args.teacher!r} is not one of the model names {names}")
    first = load_checkpoint(args.models[0])
    seed = args.seed if args.seed is not None else first.metadata.get("training", {}).get("train_config", {}).get("seed", 0)
    data = get_data(args.data, args.data_root, seed=seed)
    result = measure_tradeoff(dict(zip(names, args.models)), data, args.backends, args.threads, args.batches,
                              args.rounds, teacher=args.teacher, export_dir=args.export_dir, max_call_s=args.max_call_s)
    result["split_seed"] = seed
    batch = args.batch if args.batch is not None else result["batches"][0]
    budgets = default_budgets(result)
    if args.budget_ms is not None:
        result["pick"] = pick(result, args.budget_ms / 1e3, args.op, batch)
        given = (args.op, batch, args.budget_ms / 1e3)
        budgets = [given, *(b for b in budgets if b != given)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    front = plot_tradeoff(result, out / "tradeoff.png", args.op, batch)
    result["pareto_front"] = {"op": args.op, "batch": batch, "pairs": [[c["model"], c["backend"]] for c in front]}
    text = render_tradeoff_markdown(result, budgets) + "\n" + plot_caption(args.op, batch, front)
    atomic_write_bytes(out / "tradeoff.json", json.dumps(result, indent=1, default=str).encode())
    atomic_write_bytes(out / "tradeoff.md", text.encode())
    if "pick" in result:
        p = result["pick"]
        print(f"pick for {fmt_seconds(p['budget_s'])} ({p['op']}, batch {p['batch']}): "
              + (f"{p['model']} on {p['backend']}" if p["model"] else "none") + f" — {p['why']}")
    print(f"trade-off: {out / 'tradeoff.md'}")
    return 0
