"""``python -m nfkd info MODEL``."""
from __future__ import annotations

import argparse

from ..checkpoint import describe, load_checkpoint

__all__ = ["main"]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m nfkd info", description=__doc__)
    parser.add_argument("model", nargs="?", help="an nfkd checkpoint file (e.g. student.pt)")
    parser.add_argument("--presets", action="store_true",
                        help="print the tabular presets' parameter counts at the paper's D = 6, 8, 21, 43, 63")
    parser.add_argument("--defaults", action="store_true",
                        help="print the defaults table: the distillation recipe per student arch and data size, "
                             "and the backend order of backend='auto' per device and arch (nfkd.defaults)")
    args = parser.parse_args(argv)
    if args.defaults:
        from ..defaults import describe_defaults

        print(describe_defaults())
        if args.model is None and not args.presets:
            return 0
    if args.presets:
        from ..presets import parameter_table

        print("effective parameters (LU strict triangles only, as the paper counts) and, in brackets, stored")
        print(parameter_table())
        if args.model is None:
            return 0
    if args.model is None:
        parser.error("give a checkpoint file, --presets or --defaults")
    print(describe(load_checkpoint(args.model)))
    return 0
