"""A density model and a sampler deployed as one model: ``log_prob`` to one, ``sample`` to the other.

A MAF scores in one pass per block but samples in D; an IAF distilled from it samples in one pass
but scores in D. ``PairRunner`` is a Runner whose ``log_prob`` goes to the density model's Runner
and ``sample`` to the sampler's, each on its own backend, so serving and benchmarks take it like
any other model. Both sides must model the same data: same event shape (so the same feature
count, and both images or both tables) and, when both checkpoints record one, the same data
normalization.

    from nfkd import inference
    pair = inference.load_pair("maf.pt", "iaf.pt")        # auto: numba for both sides on CPU (ranking.json)
    pair = inference.load("bundle/")                        # python -m nfkd pair ... -o bundle/
    pair.log_prob(x); pair.sample(1000, seed=0); pair.info()["pair"]
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import InputError
from ..noise import SampleCount
from ..validation import dims_text
from .bundle import pair_sha256, read_bundle
from .runner import ModelMeta, Runner
from .sources import ModelSource, resolve_source

__all__ = ["PAIR_ARCH", "PairRunner", "check_compatible", "load_bundle", "load_pair"]

PAIR_ARCH = "pair"
NORMALIZATION_RTOL = 1e-6


def _kind(shape: Sequence[int]) -> str:
    return "image" if len(shape) > 1 else "tabular"


def _normalization(metadata: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    norm = metadata.get("normalization") if isinstance(metadata, dict) else None
    if not isinstance(norm, dict) or "mean" not in norm or "std" not in norm:
        return None
    try:
        return np.asarray(norm["mean"], np.float64).ravel(), np.asarray(norm["std"], np.float64).ravel()
    except (TypeError, ValueError):
        return None


def check_compatible(density: ModelSource, sampler: ModelSource) -> None:
    """Refuse (one InputError) a density model and a sampler that do not model the same data."""
    d, s = tuple(density.meta.event_shape), tuple(sampler.meta.event_shape)
    fix = "pair two models trained on the same data (e.g. a MAF and the IAF distilled from it)"
    if _kind(d) != _kind(s):
        raise InputError(f"the density model ({density.meta.arch}) is an {_kind(d)} model of shape ({dims_text(d)}) "
                         f"and the sampler ({sampler.meta.arch}) a {_kind(s)} one of shape ({dims_text(s)}); {fix}")
    if density.meta.dim != sampler.meta.dim:
        raise InputError(f"the density model ({density.meta.arch}) takes {density.meta.dim} features per row and the "
                         f"sampler ({sampler.meta.arch}) makes {sampler.meta.dim}; {fix}")
    if d != s:
        raise InputError(f"the density model takes shape ({dims_text(d)}) and the sampler makes ({dims_text(s)}); {fix}")
    nd, ns = _normalization(density.metadata), _normalization(sampler.metadata)
    if nd is not None and ns is not None:
        same = all(a.shape == b.shape and np.allclose(a, b, rtol=NORMALIZATION_RTOL, atol=0) for a, b in zip(nd, ns))
        if not same:
            raise InputError("the density model and the sampler record different data normalizations in their "
                             "checkpoint metadata ('normalization' mean/std): they were trained on different data "
                             f"or splits; {fix}")


class PairRunner(Runner):
    """``log_prob`` from the density Runner, ``sample`` from the sampler Runner; ``info`` reports both.

    The pair's noise shapes are the sampler's (``sample(noise=...)`` decodes with the sampler),
    its ``max_batch`` the smaller of the two, its ``checkpoint_sha256`` the pair id
    (``bundle.pair_sha256`` of the two checkpoints' hashes).
    """

    def __init__(self, density: Runner, sampler: Runner, faithfulness: dict[str, Any] | None = None,
                 source: str = "") -> None:
        dm, sm = density.meta, sampler.meta
        meta = ModelMeta(
            arch=PAIR_ARCH,
            config={"density": {"arch": dm.arch, "config": dm.config}, "sampler": {"arch": sm.arch, "config": sm.config}},
            event_shape=tuple(dm.event_shape), noise_shapes=tuple(tuple(s) for s in sm.noise_shapes),
            checkpoint_sha256=pair_sha256(dm.checkpoint_sha256, sm.checkpoint_sha256)
            if dm.checkpoint_sha256 and sm.checkpoint_sha256 else "",
            source=source or f"{dm.source} + {sm.source}",
        )
        limits = [b for b in (density.max_batch, sampler.max_batch) if b]
        super().__init__(meta, density.device, density.threads, min(limits) if limits else None)
        self.backend = f"{density.backend}+{sampler.backend}"
        self.density = density
        self.sampler = sampler
        self.faithfulness = faithfulness

    def log_prob(self, x: Any, validate: bool = True) -> np.ndarray | torch.Tensor:
        """log p(x) from the density model (nats per row, the user's units)."""
        return self.density.log_prob(x, validate=validate)

    def sample(self, n: SampleCount = None, *, temperature: float = 1.0, seed: int | None = None,
               noise: Sequence[Any] | Any | None = None) -> torch.Tensor:
        """Samples from the sampler (its noise shapes; the same seed gives the sampler's own samples)."""
        return self.sampler.sample(n, temperature=temperature, seed=seed, noise=noise)

    def _log_prob(self, x):
        return self.density._log_prob(self.density._to_native(x))

    def _decode(self, noise: list, temperature: float):
        return self.sampler._decode([self.sampler._to_native(z) for z in noise], temperature)

    def pin_threads(self) -> None:
        self.density.pin_threads()
        self.sampler.pin_threads()

    def info(self) -> dict[str, Any]:
        return {**super().info(), "pair": {"density": self.density.info(), "sampler": self.sampler.info(),
                                            "faithfulness": self.faithfulness}}

    def __repr__(self) -> str:
        return f"PairRunner(density={self.density!r}, sampler={self.sampler!r})"


def _source(model: Any) -> ModelSource:
    return resolve_source(os.fspath(model) if isinstance(model, os.PathLike) else model)


def _load_sides(density: ModelSource, sampler: ModelSource, backend: str, density_backend: str | None,
                sampler_backend: str | None, device: Any, threads: int | None, options: dict[str, Any],
                faithfulness: dict[str, Any] | None, source: str) -> PairRunner:
    from . import load

    check_compatible(density, sampler)
    d = load(density, backend=density_backend or backend, device=device, threads=threads, **options)
    s = load(sampler, backend=sampler_backend or backend, device=device, threads=threads, **options)
    return PairRunner(d, s, faithfulness=faithfulness, source=source)


def load_pair(density: Any, sampler: Any, backend: str = "auto", density_backend: str | None = None,
              sampler_backend: str | None = None, device: str | torch.device | None = None,
              threads: int | None = None, **options: Any) -> PairRunner:
    """A PairRunner: ``log_prob`` from ``density``, ``sample`` from ``sampler`` (each a Flow, checkpoint or export).

    ``backend`` applies to both sides unless ``density_backend`` / ``sampler_backend`` name one;
    ``auto`` picks per model (e.g. numba for a MAF density, folded PyTorch for an IAF sampler on CPU).
    Refused with one InputError when the two do not model the same data (feature count, image vs
    tabular, the normalization their checkpoints record).
    """
    d, s = _source(density), _source(sampler)
    return _load_sides(d, s, backend, density_backend, sampler_backend, device, threads, options, None, "")


def load_bundle(folder: str | os.PathLike, backend: str = "auto", device: str | torch.device | None = None,
                threads: int | None = None, density_backend: str | None = None, sampler_backend: str | None = None,
                **options: Any) -> PairRunner:
    """The PairRunner of a bundle written by ``python -m nfkd pair`` (hashes and file names checked)."""
    bundle = read_bundle(folder)
    sources = {
        role: ModelSource(ModelMeta.of_flow(ck.flow, ck.sha256, str(bundle.paths[role])), flow=ck.flow,
                          checkpoint=bundle.paths[role], metadata=dict(ck.metadata))
        for role, ck in bundle.checkpoints.items()
    }
    return _load_sides(sources["density"], sources["sampler"], backend, density_backend, sampler_backend, device,
                       threads, options, bundle.record.get("faithfulness"), str(bundle.folder))
