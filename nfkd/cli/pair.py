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

from ..errors import InputError

__all__ = ["build_parser", "bundle_pair", "main"]


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


def bundle_pair(density: str | Path, sampler: str | Path, out: str | Path, reference: str | Path | None = None,
                data: Any = None, n: int | None = None, seed: int | None = None) -> tuple[Path, dict[str, Any]]:
    """Check the two models fit together, measure the sampler's faithfulness, write the bundle.

    ``reference``: the checkpoint that scores the samples (default: the density model); ``data``: a
    loaded table whose test split the energy distance is measured against. Returns (folder, record).
    """
    from ..checkpoint import load_checkpoint
    from ..inference.bundle import write_bundle
    from ..inference.pair import check_compatible
    from ..inference.runner import ModelMeta
    from ..inference.sources import ModelSource
    from ..metrics.faithfulness import DEFAULT_N, DEFAULT_SEED, faithfulness

    n = DEFAULT_N if n is None else n
    seed = DEFAULT_SEED if seed is None else seed
    if n < 2:
        raise InputError(f"--n must be at least 2 (the energy distance needs two rows a side), got {n}")
    if seed < 0:
        raise InputError(f"--seed must be a non-negative integer, got {seed}")
    ckpts = {"density": load_checkpoint(density), "sampler": load_checkpoint(sampler)}

    def source(ck: Any, path: Any) -> ModelSource:
        return ModelSource(ModelMeta.of_flow(ck.flow, ck.sha256, str(path)), flow=ck.flow, metadata=dict(ck.metadata))

    check_compatible(source(ckpts["density"], density), source(ckpts["sampler"], sampler))
    ref, role = ckpts["density"], "density"
    if reference:
        ref, role = load_checkpoint(reference), "teacher"
        check_compatible(source(ref, reference), source(ckpts["sampler"], sampler))
    if data is not None and data.dim != ckpts["sampler"].flow.dim:
        raise InputError(f"--data {data.name} has {data.dim} features; the pair models {ckpts['sampler'].flow.dim}")
    loc, scale = _standardization(data, ckpts["density"])
    record = faithfulness(ckpts["sampler"].flow, ref.flow, data.test if data is not None else None, loc, scale,
                          n=n, seed=seed, reference_role=role, data_name=data.name if data is not None else None)
    record["reference"].update(file=Path(reference or density).name, sha256=ref.sha256)
    folder = write_bundle(out, density, sampler, ckpts["density"].sha256, ckpts["sampler"].sha256, record)
    return folder, record


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    data = None
    if args.data:
        from ..data.splits import TabularSplits
        from ..pipeline import get_data

        data = get_data(args.data, args.data_root)
        if not isinstance(data, TabularSplits):
            raise InputError(f"--data {args.data} is an image dataset; the pair's faithfulness is measured on tables")
    out, record = bundle_pair(args.density, args.sampler, args.out, args.reference, data, args.n, args.seed)
    print(json.dumps({"bundle": str(out), "faithfulness": record["summary"]}))
    return 0
