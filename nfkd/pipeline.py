"""Glue between datasets, flows and the trainer: build a flow for a dataset, train, evaluate."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import load_dataset
from .data.images import ImageSplits
from .data.splits import TabularSplits
from .data.user_files import UserTableSplits
from .errors import InputError
from .flows import Flow, architectures, bits_per_dim, flow_class
from .train import TrainData

__all__ = ["get_data", "shaped_flow", "flow_for", "train_data", "data_metadata", "split_array", "evaluate"]

Dataset = TabularSplits | ImageSplits


def get_data(name: str, root: str | Path | None = None, seed: int = 0, **kw: Any) -> Dataset:
    """A registered dataset by name, or a user's table file (.csv/.parquet/.npy/.npz, ``PATH:cols``)."""
    return load_dataset(name, root=root, seed=seed, **kw)


def shaped_flow(config: dict[str, Any], event_shape: tuple[int, ...], tabular: bool, n_levels: int = 256,
                normalization: tuple[Any, Any] | None = None) -> Flow:
    """A flow of ``config`` (with 'arch') for data of ``event_shape``; tables get ``normalization`` (loc, scale).

    One clear error when the architecture is of the other kind (``Flow.tabular``): what pipeline's
    datasets and data-free students (``nfkd.distill.datafree``) share.
    """
    cfg = dict(config)
    arch = cfg.pop("arch")
    cls = flow_class(arch)
    if cls.tabular != tabular:
        fits = " or ".join(architectures(tabular=tabular, teacher=True))
        raise InputError(f"{arch} is {'tabular' if cls.tabular else 'for images'}; use --arch {fits} for "
                         f"{'tables' if tabular else 'image data'}")
    flow = cls.for_event(event_shape, n_levels, **cfg)
    if normalization is not None:
        flow.normalize.set(*normalization)
    return flow


def flow_for(data: Dataset, config: dict[str, Any]) -> Flow:
    """Build a flow shaped for the data; tabular flows get the training split's normalization."""
    if isinstance(data, ImageSplits):
        return shaped_flow(config, tuple(data.shape), False, int(data.train.n_levels))
    norm = (torch.from_numpy(data.mean), torch.from_numpy(np.maximum(data.std, 1e-12)))
    return shaped_flow(config, (data.dim,), True, normalization=norm)


def train_data(data: Dataset) -> TrainData:
    if isinstance(data, ImageSplits):
        return TrainData(torch.from_numpy(data.train.images), torch.from_numpy(data.val.images), int(data.train.n_levels))
    return TrainData(torch.from_numpy(data.train), torch.from_numpy(data.val))


def data_metadata(data: Dataset) -> dict[str, Any]:
    meta: dict[str, Any] = {"dataset": data.name, "split_sizes": list(data.sizes)}
    if isinstance(data, TabularSplits):
        meta["normalization"] = {"mean": data.mean.tolist(), "std": data.std.tolist(), "fitted_on": "train"}
        if isinstance(data, UserTableSplits):  # path, sha256, columns, seed and split rule of a user's file
            meta["data_file"] = dict(data.file)
    else:
        meta["image_shape"] = list(data.shape)
        meta["n_levels"] = int(data.train.n_levels)
    return meta


def split_array(data: Dataset, split: str):
    if split not in ("train", "val", "test"):
        raise ValueError("split must be train, val or test")
    part = getattr(data, split)
    return part.images if isinstance(data, ImageSplits) else part


@torch.no_grad()
def evaluate(flow: Flow, data: Dataset, split: str = "test", batch: int = 4096, device: str = "cpu") -> dict[str, Any]:
    """Mean log-likelihood in nats ± 2 standard errors (tables), bits/dim for images."""
    flow = flow.to(device).eval()
    arr = split_array(data, split)
    lps = []
    for i in range(0, len(arr), batch):
        x = torch.from_numpy(np.asarray(arr[i : i + batch]))
        if isinstance(data, ImageSplits):
            n = int(data.train.n_levels)
            x = (x.float() + 0.5) / n - 0.5  # bin centres: deterministic; dequantized bound needs noise
        lps.append(flow.log_prob(x.float().to(device)).double().cpu())
    lp = torch.cat(lps)
    n = len(lp)
    out: dict[str, Any] = {
        "dataset": data.name, "split": split, "n": n, "arch": flow.arch, "params": flow.num_parameters(),
        "log_likelihood": float(lp.mean()), "ll_2se": float(2 * lp.std() / math.sqrt(n)) if n > 1 else 0.0,
        "median_log_likelihood": float(lp.nan_to_num(nan=-math.inf).median()) if n else math.nan,
        "nonfinite": int((~torch.isfinite(lp)).sum()),
    }
    if isinstance(data, ImageSplits):
        bpd = bits_per_dim(lp, flow.dim, int(data.train.n_levels))
        out["bpd"] = float(bpd.mean())
        out["bpd_2se"] = float(2 * bpd.std() / math.sqrt(n)) if n > 1 else 0.0
    return out
