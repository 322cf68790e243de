"""What the estimators need from the rest of nfkd: build a flow, train it with the project's Trainer,
score it, and move it through pickles as safe checkpoint bytes.

Kept apart from the estimator classes so that the sklearn-facing code is only the API contract.
"""
from __future__ import annotations

import copy
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import load as load_checkpoint_file
from ..checkpoint import save as save_checkpoint_file
from ..distill import KDConfig
from ..errors import InputError
from ..flows import Flow, architectures, build_flow, flow_class
from ..presets import PRESETS, resolve
from ..train import TrainConfig, TrainData, Trainer, TrainResult

__all__ = ["EXACT", "FitOutcome", "Scorer", "build", "flow_from_bytes", "flow_to_bytes", "train"]

#: The estimators' default scoring: float64 eager on the fitted flow (the reference every backend is checked against).
EXACT = "exact"
_CHUNK = 65536


def _flow_class(arch: str) -> type[Flow]:
    """A registered tabular architecture's class, or one clear error (not a KeyError deep down)."""
    tabular = architectures(tabular=True)
    if arch not in tabular:
        raise InputError(f"arch={arch!r} is not a tabular architecture of nfkd.flows; use one of {tabular}")
    return flow_class(arch)


def _role_for(arch: str, role: str, preset: str | None) -> str:
    """A preset whose ``role`` is another architecture (an IAF preset pairs a MAF teacher with an IAF student):
    a flow of ``arch`` fitted on data by maximum likelihood uses the preset's ``arch`` role, whatever ``role``."""
    name = preset or flow_class(arch).default_preset
    if name in PRESETS and PRESETS[name][role]["arch"] != arch:
        return next((r for r, cfg in PRESETS[name].items() if cfg["arch"] == arch), role)
    return role


def build(arch: str, preset: str | None, role: str, overrides: dict[str, Any] | None, dim: int,
          loc: np.ndarray, scale: np.ndarray) -> Flow:
    """A flow from the preset's config for ``role`` with ``overrides``, normalizing by (loc, scale) inside.

    The normalization is the flow's own ``FixedAffine`` (with its log-Jacobian), so log-densities,
    samples and exports are in the user's units.
    """
    cls = _flow_class(arch)
    if dim < cls.min_dim:
        fits = [a for a in architectures(tabular=True) if flow_class(a).min_dim <= dim]
        hint = f"; use arch={fits[0]!r} for {dim}" if fits else ""
        raise InputError(f"arch={arch!r} needs at least {cls.min_dim} features, got n_features = {dim}{hint}")
    try:
        cfg = resolve(arch, _role_for(arch, role, preset), preset, overrides)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    cfg.pop("arch")
    try:
        flow = build_flow(arch, dim=dim, **cfg)
    except (TypeError, ValueError) as exc:
        raise InputError(f"cannot build a {arch} flow with config {cfg} for {dim} features: {exc}") from None
    flow.normalize.set(torch.as_tensor(loc, dtype=torch.float32), torch.as_tensor(scale, dtype=torch.float32))
    return flow


class _InMemoryTrainer(Trainer):
    """The project's Trainer, minus the run folder's artefacts (model.pt, loss_curve.png): the
    estimator keeps the flow in memory; the folder it trains in is a temporary one."""

    def _finish(self, result: TrainResult) -> None:
        return None


@dataclass
class FitOutcome:
    flow: Flow
    steps_done: int
    best_step: int
    best_val_nll: float
    seconds: float
    skipped_steps: int
    history: list[dict[str, Any]] = field(default_factory=list)


def train(flow: Flow, train_rows: np.ndarray, val_rows: np.ndarray, cfg: TrainConfig,
          teacher: Flow | None = None, kd: KDConfig | None = None) -> FitOutcome:
    """Train with nfkd.train.Trainer (warmup + cosine, clipping, validation model selection, early
    stopping, NaN guard), in a temporary folder; returns the best-by-validation flow on the CPU."""
    td_train = torch.as_tensor(np.ascontiguousarray(train_rows), dtype=torch.float32)
    td_val = torch.as_tensor(np.ascontiguousarray(val_rows), dtype=torch.float32)
    with tempfile.TemporaryDirectory(prefix="nfkd-sklearn-") as tmp:
        trainer = _InMemoryTrainer(flow, TrainData(td_train, td_val), cfg, tmp, teacher=teacher, kd=kd)
        res = trainer.run()
    if not math.isfinite(res.best_val_nll):
        raise InputError("training never reached a finite validation log-likelihood; lower lr or check the data "
                         "(constant or near-duplicate columns make the density degenerate)")
    return FitOutcome(res.flow.cpu().eval(), res.steps_done, res.best_step, res.best_val_nll, res.seconds,
                      res.skipped_steps, res.history)


def flow_to_bytes(flow: Flow, metadata: dict[str, Any] | None = None) -> bytes:
    """The flow as nfkd checkpoint bytes (safetensors + JSON header): what a pickle carries."""
    with tempfile.TemporaryDirectory(prefix="nfkd-sklearn-") as tmp:
        path = save_checkpoint_file(flow, Path(tmp) / "model.pt", metadata=metadata)
        return path.read_bytes()


def flow_from_bytes(data: bytes) -> Flow:
    """Rebuild through nfkd.load: verified, no code runs, the config checked against the tensors."""
    with tempfile.TemporaryDirectory(prefix="nfkd-sklearn-") as tmp:
        path = Path(tmp) / "model.pt"
        path.write_bytes(data)
        return load_checkpoint_file(path)


class Scorer:
    """Log-densities and samples of one fitted flow, on the estimator's backend.

    ``exact``: float64 eager torch on a copy of the flow: every row's result is independent of the
    other rows in the call (float32 kernels are not, at ~1e-6), which scikit-learn's contracts
    assume. Any other name goes through ``nfkd.inference.load`` (float32; ``auto`` = fastest here).
    Runners are built on first use and kept per (backend, device); none of this is pickled.
    """

    def __init__(self, flow: Flow) -> None:
        self.flow = flow
        self._flow64: Flow | None = None
        self._runners: dict[tuple[str, str], Any] = {}

    def _exact(self) -> Flow:
        if self._flow64 is None:
            self._flow64 = copy.deepcopy(self.flow).double().eval()
        return self._flow64

    def runner(self, backend: str, device: str):
        key = (backend, device)
        if key not in self._runners:
            from .. import inference

            self._runners[key] = inference.load(self.flow, backend=backend, device=device)
        return self._runners[key]

    @torch.no_grad()
    def log_prob(self, X: np.ndarray, backend: str, device: str) -> np.ndarray:
        if backend == EXACT:
            flow = self._exact()
            out = [flow.log_prob_unchecked(torch.tensor(X[i : i + _CHUNK], dtype=torch.float64))
                   for i in range(0, len(X), _CHUNK)]
            return torch.cat(out).numpy() if out else np.zeros(0)
        # float64 in: the runner refuses values beyond float32 by name (a cast here made them "NaN or Inf").
        lp = self.runner(backend, device).log_prob(np.ascontiguousarray(X))
        return np.asarray(lp, dtype=np.float64)

    @torch.no_grad()
    def decode(self, noise: list[np.ndarray], backend: str, device: str) -> np.ndarray:
        if backend == EXACT:
            x = self._exact().inverse([torch.tensor(z, dtype=torch.float64) for z in noise]).x
            return x.reshape(len(x), -1).numpy()
        x = self.runner(backend, device).sample(noise=noise)
        return np.asarray(x, dtype=np.float64).reshape(len(noise[0]), -1)
