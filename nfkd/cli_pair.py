"""``python -m nfkd pair``: bundle a density model and a sampler as one deployable model, with its faithfulness.

    python -m nfkd pair --density maf.pt --sampler iaf.pt -o bundle/
    python -m nfkd pair --density maf.pt --sampler iaf.pt --reference teacher.pt --data magic -o bundle/

The bundle folder holds ``density.pt``, ``sampler.pt`` (copies) and ``pair.json``: each file's
SHA-256 and how faithful the sampler is (``nfkd.metrics.faithfulness``): the energy distance of its
samples to the test split (``--data``) or to the reference's samples, and the reference's
(``--reference``, else the density model's) mean / median log-density of the sampler's samples
next to its own samples'. ``nfkd.inference.load(bundle)`` and ``python -m nfkd serve bundle/`` run it.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m nfkd pair", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--density", required=True, help="checkpoint that answers log_prob (e.g. a MAF)")
    ap.add_argument("--sampler", required=True, help="checkpoint that answers sample (e.g. the IAF distilled from it)")
    ap.add_argument("--reference", default=None,
                    help="checkpoint that scores the samples (e.g. the teacher; default: the density model)")
    ap.add_argument("--data", default=None, help="dataset whose test split the energy distance is measured against")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--n", type=int, default=None, help="samples (and test rows) measured (default 4096)")
    ap.add_argument("--seed", type=int, default=None, help="seed of the sampler's noise (default 0)")
    ap.add_argument("-o", "--out", required=True, help="bundle folder to write")
    return ap


def _standardization(data: Any, density: Any) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The training mean / std: the dataset's, else the density checkpoint's record, else its own normalization."""
    if data is not None:
        return data.mean, np.maximum(data.std, 1e-12)
    norm = density.metadata.get("normalization")
    if isinstance(norm, dict) and "mean" in norm and "std" in norm:
        return np.asarray(norm["mean"], np.float64), np.maximum(np.asarray(norm["std"], np.float64), 1e-12)
    affine = getattr(density.flow, "normalize", None)
    if affine is not None and hasattr(affine, "loc") and hasattr(affine, "scale"):
        return affine.loc.double().numpy(), affine.scale.double().numpy()
    return None, None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .checkpoint import load_checkpoint
    from .inference.bundle import write_bundle
    from .inference.pair import check_compatible
    from .inference.runner import ModelMeta
    from .inference.sources import ModelSource
    from .metrics.faithfulness import DEFAULT_N, DEFAULT_SEED, faithfulness

    n = DEFAULT_N if args.n is None else args.n
    seed = DEFAULT_SEED if args.seed is None else args.seed
    if n < 2:
        raise InputError(f"--n must be at least 2 (the energy distance needs two rows a side), got {n}")
    if seed < 0:
        raise InputError(f"--seed must be a non-negative integer, got {seed}")
    ckpts = {role: load_checkpoint(getattr(args, role)) for role in ("density", "sampler")}

    def source(ck: Any, path: str) -> ModelSource:
        return ModelSource(ModelMeta.of_flow(ck.flow, ck.sha256, path), flow=ck.flow, metadata=dict(ck.metadata))

    check_compatible(source(ckpts["density"], args.density), source(ckpts["sampler"], args.sampler))
    reference, role = ckpts["density"], "density"
    if args.reference:
        reference, role = load_checkpoint(args.reference), "teacher"
        check_compatible(source(reference, args.reference), source(ckpts["sampler"], args.sampler))
    data = None
    if args.data:
        from .data.splits import TabularSplits
        from .pipeline import get_data

        data = get_data(args.data, args.data_root)
        if not isinstance(data, TabularSplits):
            raise InputError(f"--data {args.data} is an image dataset; the pair's faithfulness is measured on tables")
        if data.dim != ckpts["sampler"].flow.dim:
            raise InputError(f"--data {args.data} has {data.dim} features; the pair models {ckpts['sampler'].flow.dim}")
    loc, scale = _standardization(data, ckpts["density"])
    record = faithfulness(ckpts["sampler"].flow, reference.flow, data.test if data is not None else None, loc, scale,
                          n=n, seed=seed, reference_role=role, data_name=args.data)
    record["reference"].update(file=Path(args.reference or args.density).name, sha256=reference.sha256)
    out = write_bundle(args.out, args.density, args.sampler, ckpts["density"].sha256, ckpts["sampler"].sha256, record)
    print(json.dumps({"bundle": str(out), "faithfulness": record["summary"]}))
    return 0
