"""`nfkd data list` and `nfkd data check NAME`: see what exists and whether it loads, before training.

``main(argv)`` takes the arguments after ``data`` and returns an exit code; dataset problems are
printed as one message (exit 2), never as a traceback.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence, TextIO

import numpy as np

from ..errors import NfkdError
from .images import ImageSplits
from .registry import default_data_root, list_datasets, load_dataset
from .splits import TabularSplits

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nfkd data", description="List datasets or check that one loads.")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="table of the known datasets and the files each needs")
    check = sub.add_parser("check", help="load one dataset and print its splits and statistics")
    check.add_argument("name")
    check.add_argument("--data-root", default=None, help="folder holding the dataset files "
                       "(default: $NFKD_DATA_ROOT, else the shared datasets folder)")
    check.add_argument("--seed", type=int, default=0, help="split seed for the seeded datasets")
    check.add_argument("--size", type=int, default=None, help="image side (celeba)")
    check.add_argument("--limit", type=int, default=None, help="load only the first N images (celeba)")
    return p


def _print_list(out: TextIO) -> None:
    rows = [("NAME", "KIND", "SHAPE", "FILES (under the data root)", "DESCRIPTION")]
    for info in list_datasets():
        files = ", ".join(info.files) or "(bundled with scikit-learn)"
        rows.append((info.name, info.kind, "x".join(map(str, info.shape)), files, info.description))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4], file=out)
    print(f"\ndefault data root: {default_data_root()}", file=out)


def _range(v: np.ndarray) -> str:
    return f"[{v.min():.4g}, {v.max():.4g}]"


def _print_tabular(ds: TabularSplits, out: TextIO) -> None:
    print(f"{ds.name}: tabular, dim {ds.dim}; {ds.source}", file=out)
    header = f"{'split':<6}{'rows':>9}  {'per-dim mean range':<24}{'per-dim std range':<24}{'min':>11}{'max':>11}"
    print(header, file=out)
    for split, x in (("train", ds.train), ("val", ds.val), ("test", ds.test)):
        x64 = x.astype(np.float64)
        print(f"{split:<6}{len(x):>9}  {_range(x64.mean(0)):<24}{_range(x64.std(0)):<24}"
              f"{x.min():>11.4g}{x.max():>11.4g}", file=out)
    print(f"train statistics for the flow's input normalization: mean {_range(ds.mean)}, std {_range(ds.std)}",
          file=out)


def _print_images(ds: ImageSplits, out: TextIO) -> None:
    t = ds.train
    print(f"{ds.name}: images {'x'.join(map(str, ds.shape))}, {t.n_levels} levels ({t.n_bits} bits)", file=out)
    print(f"{'split':<6}{'images':>9}  {'min':>5}{'max':>5}{'mean':>9}{'std':>9}  labels", file=out)
    for split, s in (("train", ds.train), ("val", ds.val), ("test", ds.test)):
        labels = "none" if s.labels is None else " ".join(map(str, np.bincount(s.labels)))
        x = s.images
        stats = f"{x.min():>5}{x.max():>5}{x.mean():>9.3f}{x.std():>9.3f}" if len(s) else f"{'-':>28}"
        print(f"{split:<6}{len(s):>9}  {stats}  {labels}", file=out)


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    try:
        args = _parser().parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:  # argparse already printed usage or help
        return int(exc.code or 0)
    if args.command == "list":
        _print_list(out)
        return 0
    options = {k: v for k, v in (("size", args.size), ("limit", args.limit)) if v is not None}
    try:
        ds = load_dataset(args.name, args.data_root, seed=args.seed, **options)
    except NfkdError as exc:
        print(f"error: {exc}", file=err)
        return 2
    (_print_images if isinstance(ds, ImageSplits) else _print_tabular)(ds, out)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
