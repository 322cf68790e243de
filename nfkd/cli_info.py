"""``python -m nfkd info MODEL``."""
from __future__ import annotations

import argparse

from .checkpoint import describe, load_checkpoint


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m nfkd info", description=__doc__)
    parser.add_argument("model", help="an nfkd checkpoint file (e.g. student.pt)")
    args = parser.parse_args(argv)
    print(describe(load_checkpoint(args.model)))
    return 0
