"""``python -m nfkd COMMAND``: each command lives in its own module and is imported only when used."""
from __future__ import annotations

import sys

from .errors import NfkdError

COMMANDS = {
    "info": ("nfkd.cli.info", "print a checkpoint's architecture, sizes, parameters and metadata; --defaults: the defaults table"),
    "data": ("nfkd.data.cli", "list datasets or check one (dims, splits, statistics)"),
    "train": ("nfkd.cli.train", "train a teacher or a plain student"),
    "distill": ("nfkd.cli.distill", "train a student from a teacher (none|lkd|ilkd|skd|...; --arch iaf: a one-pass "
                                    "sampler; --data-free: teacher samples only)"),
    "convert": ("nfkd.cli.distill", "a teacher-sized one-pass sampler of a MAF teacher: convert teacher.pt --to iaf"),
    "evaluate": ("nfkd.cli.evaluate", "test log-likelihood / bpd of a checkpoint as JSON"),
    "experiment": ("nfkd.experiment", "teacher vs students table (paper Table 1 layout)"),
    "demo": ("nfkd.demo", "the main job on an embedded dataset: train, distill, export, benchmark, report"),
    "pair": ("nfkd.cli.pair", "bundle a density model and a sampler (MAF + IAF) as one model, with its faithfulness"),
    "serve": ("nfkd.cli.serve", "HTTP density-estimation service"),
    "tradeoff": ("nfkd.tradeoff.cli", "which model on which backend for a latency budget (LL vs latency)"),
}


def usage() -> str:
    rows = "\n".join(f"  {name:<11} {doc}" for name, (_, doc) in COMMANDS.items())
    return f"usage: python -m nfkd COMMAND [ARGS]\n\ncommands:\n{rows}\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"nfkd: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    import importlib

    try:
        module = importlib.import_module(COMMANDS[name][0])
    except ModuleNotFoundError as exc:
        print(f"nfkd: command {name!r} is not available in this build ({exc})", file=sys.stderr)
        return 2
    try:
        entry = getattr(module, "main_" + name, None) or module.main
        return int(entry(rest) or 0)
    except NfkdError as exc:
        print(f"nfkd {name}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
