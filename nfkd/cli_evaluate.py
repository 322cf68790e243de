"""``python -m nfkd evaluate MODEL --data NAME --split test`` -> JSON (LL ± 2 SE, bpd, params)."""
from __future__ import annotations

import argparse
import json

import torch

from .checkpoint import load_checkpoint
from .pipeline import evaluate, get_data


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m nfkd evaluate", description=__doc__)
    parser.add_argument("model")
    parser.add_argument("--data", default=None, help="dataset (default: the one in the checkpoint's metadata)")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument("--seed", type=int, default=None, help="split seed (default: the training seed)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", "-o", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    ckpt = load_checkpoint(args.model)
    name = args.data or ckpt.metadata.get("dataset")
    if not name:
        parser.error("--data is required: the checkpoint does not name its dataset")
    seed = args.seed if args.seed is not None else ckpt.metadata.get("training", {}).get("train_config", {}).get("seed", 0)
    data = get_data(name, args.data_root, seed=seed)
    result = evaluate(ckpt.flow, data, args.split, device=args.device)
    result["checkpoint_sha256"] = ckpt.sha256
    text = json.dumps(result, indent=1)
    print(text)
    if args.output:
        from pathlib import Path

        Path(args.output).write_text(text + "\n")
    return 0
