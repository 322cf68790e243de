"""One training loop for teachers and students (plain or distilled).

- AdamW, linear warmup then cosine decay, gradient clipping;
- model selection by validation NLL (never by a loss that includes KD terms), early stopping; the
  criterion is the *trimmed* validation NLL (the worst ``select_trim`` share of rows left out, a
  non-finite row counting as the worst), so a few exploding rows cannot make selection keep a
  near-identity step; the plain mean, the median and the non-finite count are logged beside it;
- a tqdm bar with NLL and each KD term, metrics as JSONL, a loss-curve PNG;
- atomic training-state files every N steps and ``resume=True`` (a killed run continues where it
  stopped, bit for bit: the batch, dequantization and SKD noise come from saved generators);
- a guard that skips a NaN/Inf step, halves the learning rate and restores the last good state;
- CPU or CUDA, and DistributedDataParallel under ``torchrun`` (gloo on CPU): every rank draws the
  same global batch and keeps its shard, so gradients equal one process on the global batch.
"""
from __future__ import annotations

import copy
import io
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from .checkpoint import atomic_write_bytes, save
from .cli.checks import check_train_config
from .distill import KDConfig, build_objective
from .errors import InputError
from .flows import Flow, initialize_actnorm
from .train_state import load_into, prepare_metrics, read_train_state, run_fingerprint
from .train_state_fields import check_state_fields

__all__ = ["TrainConfig", "TrainData", "TrainResult", "ValidationNLL", "lr_factor", "mean_nll", "validation_nll",
    "Trainer", "plot_curves", "train_flow"]


@dataclass
class TrainConfig:
    steps: int = 2000
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-6
    warmup: int = 100
    min_lr_ratio: float = 0.05  # cosine decays to lr * this
    clip_grad: float = 5.0
    eval_every: int = 100
    patience: int = 10  # evaluations without validation improvement before stopping
    checkpoint_every: int = 200
    snapshot_every: int = 25  # in-memory "last good state" for the NaN guard
    seed: int = 0
    device: str = "cpu"
    progress: bool = True
    eval_batch: int = 4096
    max_bad_steps: int = 20
    select_trim: float = 0.01  # share of the worst validation rows left out of the selection criterion


@dataclass
class TrainData:
    """Training and validation data as tensors: float rows, or uint8 images with ``n_levels``."""

    train: Tensor
    val: Tensor
    n_levels: int | None = None  # images: number of intensity levels (uniform dequantization)

    @property
    def is_image(self) -> bool:
        return self.n_levels is not None

    def to_model(self, batch: Tensor, generator: torch.Generator | None) -> Tensor:
        """Images: (k + U[0,1)) / n_levels − 0.5; tables: as they are (float32)."""
        if not self.is_image:
            return batch.float()
        u = torch.rand(batch.shape, generator=generator) if generator is not None else torch.full(batch.shape, 0.5)
        return (batch.float() + u) / self.n_levels - 0.5


@dataclass
class TrainResult:
    flow: Flow
    best_val_nll: float
    best_step: int
    steps_done: int
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)
    skipped_steps: int = 0
    skd_excluded: int = 0
    best_val_trimmed: float = math.nan  # the selection criterion at the kept step (trimmed validation NLL)
    best_val_nonfinite: int = 0  # non-finite validation rows at the kept step


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def lr_factor(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class ValidationNLL:
    """Validation NLL in nats per sample: the plain mean, the trimmed mean that selection uses, the median."""

    mean: float
    trimmed: float
    median: float
    nonfinite: int
    n: int

    def row(self) -> dict[str, float]:
        return {"val_nll": self.mean, "val_nll_trimmed": self.trimmed, "val_nll_median": self.median,
                "val_nonfinite": self.nonfinite}


def trimmed_nll(nll: Tensor, trim: float) -> float:
    """Mean NLL after leaving out the worst ``floor(trim * n)`` rows (non-finite rows count as the worst).

    One-sided: only the rows the model explains worst are dropped, which is where a collapsing
    flow's few astronomically bad rows sit. More non-finite rows than the trim leaves out: +inf.
    The floor keeps small validation sets (under 1/trim rows) on the plain mean: there one row is
    a large share of the evidence, and dropping it hid a teacher's overfitting (breast_cancer, 57
    validation rows: the trimmed criterion kept step 600 where the mean rose from step 300).
    """
    if not 0.0 <= trim < 0.5:
        raise ValueError(f"select_trim must be in [0, 0.5), got {trim}")
    v = torch.where(torch.isfinite(nll), nll, torch.full_like(nll, math.inf))
    k = math.floor(trim * len(v) + 1e-9)
    kept = torch.sort(v).values[: len(v) - k] if k else v
    return float(kept.mean()) if len(kept) else math.inf


@torch.no_grad()
def validation_nll(flow: Flow, data: Tensor, td: TrainData, batch: int = 4096, device: str = "cpu",
                   trim: float = 0.01) -> ValidationNLL:
    """Per-row validation NLL summarised (images: at the bin centres, deterministic)."""
    was = flow.training
    flow.eval()
    parts = []
    for i in range(0, len(data), batch):
        x = td.to_model(data[i : i + batch], None).to(device)
        parts.append(-flow.log_prob_unchecked(x).double().cpu())
    flow.train(was)
    nll = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)
    finite = torch.isfinite(nll)
    mean = float(nll.mean()) if bool(finite.all()) else math.inf
    median = float(torch.where(finite, nll, torch.full_like(nll, math.inf)).median()) if len(nll) else math.inf
    return ValidationNLL(mean, trimmed_nll(nll, trim), median, int((~finite).sum()), len(nll))


def mean_nll(flow: Flow, data: Tensor, td: TrainData, batch: int = 4096, device: str = "cpu") -> float:
    """Validation NLL in nats per sample, the plain mean (+inf when a row is not finite)."""
    return validation_nll(flow, data, td, batch, device, trim=0.0).mean


def _state_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


class Trainer:
    def __init__(
        self,
        flow: Flow,
        data: TrainData,
        cfg: TrainConfig,
        out_dir: str | os.PathLike,
        teacher: Flow | None = None,
        kd: KDConfig | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        if len(data.train) == 0 or len(data.val) == 0:
            raise InputError("training and validation splits must both be non-empty")
        check_train_config(cfg)
        self.flow, self.data, self.cfg = flow.to(cfg.device), data, cfg
        self.kd = kd or KDConfig()
        self.teacher = teacher.to(cfg.device) if teacher is not None else None
        self.out = Path(out_dir)
        self.metadata = dict(metadata or {})
        self.rank, self.world = _rank_world()
        if cfg.batch_size % self.world:
            raise ValueError(f"batch size {cfg.batch_size} must divide evenly over {self.world} processes")
        torch.manual_seed(cfg.seed)
        self.batch_gen = torch.Generator().manual_seed(cfg.seed)
        self.noise_gen = torch.Generator().manual_seed(cfg.seed + 1)
        if self.kd.init_from_teacher:
            if self.teacher is None:
                raise ValueError("init_from_teacher needs a teacher")
            from .distill import init_from_teacher

            self.metadata["init_from_teacher"] = init_from_teacher(self.flow, self.teacher)
        self.objective = build_objective(self.flow, self.teacher, self.kd)
        self.opt = torch.optim.AdamW(self.flow.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.step = 0
        self.lr_scale = 1.0
        self.best_val = math.inf
        self.best_step = -1
        self.best_state: dict[str, Tensor] | None = None
        self.evals_without_improvement = 0
        self.skipped = 0
        self.skd_excluded = 0
        self.history: list[dict[str, Any]] = []
        self.running: dict[str, float] = {}  # moving averages of the train terms (saved: metrics resume exactly)
        self.good: dict[str, Any] | None = None
        self.nan_hook = None  # tests inject a NaN through this: fn(step, loss) -> loss
        self.run_id = run_fingerprint(self.flow, data.train, data.val)  # what --resume must match

    # ---- state ---------------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.out / "train_state.pt"

    def _state(self) -> dict[str, Any]:
        return {
            "step": self.step, "lr_scale": self.lr_scale, "best_val": self.best_val, "best_step": self.best_step,
            "best_state": self.best_state, "evals_without_improvement": self.evals_without_improvement,
            "skipped": self.skipped, "skd_excluded": self.skd_excluded,
            "model": self.flow.state_dict(), "opt": self.opt.state_dict(),
            "batch_gen": self.batch_gen.get_state(), "noise_gen": self.noise_gen.get_state(),
            "torch_rng": torch.get_rng_state(), "history": json.dumps(self.history), "run": self.run_id,
            "running": json.dumps(self.running),
        }

    def save_state(self) -> None:
        if self.rank == 0:
            atomic_write_bytes(self.state_path, _state_bytes(self._state()))

    def load_state(self) -> bool:
        if not self.state_path.exists():
            return False
        st = read_train_state(self.state_path, self.cfg.device, self.run_id)  # refuses foreign/damaged files
        check_state_fields(self.state_path, st, self.flow.state_dict())  # every field, before any is used
        load_into(self.state_path, "model", self.flow, st["model"])
        load_into(self.state_path, "optimizer state", self.opt, st["opt"])
        self.batch_gen.set_state(st["batch_gen"])
        self.noise_gen.set_state(st["noise_gen"])
        torch.set_rng_state(st["torch_rng"])
        for key in ("step", "lr_scale", "best_val", "best_step", "best_state", "evals_without_improvement",
                    "skipped", "skd_excluded"):
            setattr(self, key, st[key])
        self.history = json.loads(st["history"])
        self.running = json.loads(st.get("running", "{}"))
        return True

    def _snapshot(self) -> None:
        self.good = {"model": copy.deepcopy(self.flow.state_dict()), "opt": copy.deepcopy(self.opt.state_dict())}

    def _restore_good(self) -> None:
        if self.good is not None:
            self.flow.load_state_dict(self.good["model"])
            self.opt.load_state_dict(self.good["opt"])

    # ---- loop ----------------------------------------------------------------------------------
    def _batch(self) -> Tensor:
        idx = torch.randint(0, len(self.data.train), (self.cfg.batch_size,), generator=self.batch_gen)
        x = self.data.to_model(self.data.train[idx], self.batch_gen)
        return x[self.rank :: self.world].to(self.cfg.device)

    def _noise(self, n: int) -> list[Tensor] | None:
        if not self.objective.needs_noise:
            return None
        shapes = self.flow.noise_shapes(n)
        noise = [torch.randn(s, generator=self.noise_gen) for s in shapes]
        return [z[self.rank :: self.world].to(self.cfg.device) for z in noise]

    def _set_lr(self) -> float:
        lr = self.cfg.lr * lr_factor(self.step, self.cfg) * self.lr_scale
        for group in self.opt.param_groups:
            group["lr"] = lr
        return lr

    def run(self, resume: bool = False) -> TrainResult:
        """Train to ``cfg.steps`` (or early stop): steps, the non-finite guard, evaluation, checkpoints."""
        cfg = self.cfg
        model, resumed = self._prepare(resume)
        t0 = time.time()
        bar = self._progress_bar()
        if self.rank == 0:  # a resume drops the rows of steps it will run again; a fresh run starts empty
            prepare_metrics(self.out / "metrics.jsonl", self.step if resumed else None)
        metrics = (self.out / "metrics.jsonl").open("a") if self.rank == 0 else None
        bad_in_row = 0
        try:
            while self.step < cfg.steps:
                lr = self._set_lr()
                terms = self._train_step(model)
                if terms is None:  # the guard: skip, lower the lr, go back to the last good state
                    bad_in_row += 1
                    self._recover(metrics, bad_in_row)
                    continue
                bad_in_row = 0
                self._after_step(terms, bar)
                if self.step % cfg.eval_every == 0 or self.step == cfg.steps:
                    if self._evaluate(lr, self.running, metrics):
                        break
                if self.step % cfg.checkpoint_every == 0:
                    self.save_state()
        finally:
            if bar is not None:
                bar.close()
            if metrics:
                metrics.close()
        return self._finish_run(t0)

    def _prepare(self, resume: bool) -> tuple[torch.nn.Module, bool]:
        """(the module to call per step, whether a saved state was resumed)."""
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        resumed = resume and self.load_state()
        if not resumed:
            init_idx = torch.arange(min(len(self.data.train), max(cfg.batch_size, 512)))
            initialize_actnorm(self.flow, self.data.to_model(self.data.train[init_idx], None).to(cfg.device))
        model = self.objective
        if self.world > 1:
            model = torch.nn.parallel.DistributedDataParallel(self.objective, broadcast_buffers=False)
        self.flow.train()
        self._snapshot()
        return model, resumed

    def _progress_bar(self):
        if not (self.cfg.progress and self.rank == 0):
            return None
        from .progress import bar  # off when stderr is not a TTY (or NFKD_PROGRESS=0)

        return bar(total=self.cfg.steps, initial=self.step, desc=self.kd.method if self.teacher else "train")

    def _train_step(self, model: torch.nn.Module) -> dict[str, Any] | None:
        """One optimizer step; None (and no update) when the loss or the gradient is not finite."""
        x = self._batch()
        noise = self._noise(self.kd.skd_batch or self.cfg.batch_size)
        loss, terms = model(x, noise)
        if self.nan_hook is not None:
            loss = self.nan_hook(self.step, loss)
        self.opt.zero_grad(set_to_none=True)
        if not bool(torch.isfinite(loss)):
            return None
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(self.flow.parameters(), self.cfg.clip_grad)
        if not bool(torch.isfinite(gnorm)):
            return None
        self.opt.step()
        return terms

    def _recover(self, metrics, bad_in_row: int) -> None:
        """After a non-finite step: halve the lr, restore the last good state, count and log it."""
        self.skipped += 1
        self.lr_scale *= 0.5
        self._restore_good()
        if metrics:
            metrics.write(json.dumps({"step": self.step, "event": "nonfinite_step_skipped",
                                      "lr_scale": self.lr_scale}) + "\n")
        if bad_in_row > self.cfg.max_bad_steps:
            raise RuntimeError(f"{bad_in_row} non-finite steps in a row; giving up (lower the lr?)")
        self.step += 1

    def _after_step(self, terms: dict[str, Any], bar) -> None:
        self.step += 1
        self.skd_excluded += int(terms.get("skd_excluded", 0))
        running = self.running
        for k, v in terms.items():
            running[k] = 0.9 * running.get(k, float(v)) + 0.1 * float(v)
        if self.step % self.cfg.snapshot_every == 0:
            self._snapshot()
        if bar is not None:
            bar.update(1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in running.items() if k != "skd_excluded"})

    def _finish_run(self, t0: float) -> TrainResult:
        """Save the final state, keep the best-by-validation weights, write the artefacts (rank 0)."""
        self.save_state()
        if self.best_state is not None:
            self.flow.load_state_dict(self.best_state)
        self.flow.eval()
        kept = self._kept_row()
        result = TrainResult(self.flow, float(kept.get("val_nll", self.best_val)), self.best_step, self.step,
                             time.time() - t0, self.history, self.skipped, self.skd_excluded, self.best_val,
                             int(kept.get("val_nonfinite", 0)))
        if self.rank == 0:
            self._finish(result)
        return result

    def _evaluate(self, lr: float, running: dict[str, float], metrics) -> bool:
        val = validation_nll(self.flow, self.data.val, self.data, self.cfg.eval_batch, self.cfg.device,
                             self.cfg.select_trim)
        self.flow.train()
        improved = val.trimmed < self.best_val
        if improved:
            self.best_val, self.best_step = val.trimmed, self.step
            self.best_state = copy.deepcopy(self.flow.state_dict())
            self.evals_without_improvement = 0
        else:
            self.evals_without_improvement += 1
        row = {"step": self.step, "lr": lr, **val.row(), **{f"train_{k}": v for k, v in running.items()}}
        self.history.append(row)
        if metrics:
            metrics.write(json.dumps(row) + "\n")
            metrics.flush()
        return self.evals_without_improvement >= self.cfg.patience

    def _kept_row(self) -> dict[str, Any]:
        """The validation row of the kept step (its plain mean NLL is what ``best_val_nll`` reports)."""
        rows = [h for h in self.history if h.get("step") == self.best_step and "val_nll" in h]
        return rows[-1] if rows else {}

    def _finish(self, result: TrainResult) -> None:
        summary = {
            "best_val_nll": result.best_val_nll, "best_val_nll_trimmed": result.best_val_trimmed,
            "best_val_nonfinite": result.best_val_nonfinite, "selection": f"trimmed validation NLL "
            f"(worst {self.cfg.select_trim:.0%} of rows left out)", "best_step": result.best_step, "steps": result.steps_done,
            "seconds": round(result.seconds, 2), "skipped_nonfinite_steps": result.skipped_steps,
            "skd_excluded_samples": result.skd_excluded, "method": self.kd.method if self.teacher else "none",
            "train_config": asdict(self.cfg), "kd": {k: v for k, v in asdict(self.kd).items()},
        }
        meta = {**self.metadata, "training": summary}
        save(self.flow, self.out / "model.pt", metadata=meta)
        plot_curves(self.history, self.out / "loss_curve.png")


def plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, [h["val_nll"] for h in history], label="validation NLL (nats)")
    if "val_nll_trimmed" in history[0]:
        ax.plot(steps, [h.get("val_nll_trimmed", np.nan) for h in history], ":", label="trimmed (selection)")
    if "train_nll" in history[0]:
        dim_hint = history[0].get("dim", None)
        ax2 = ax.twinx()
        for key in [k for k in history[0] if k.startswith("train_") and k != "train_skd_excluded"]:
            ax2.plot(steps, [h.get(key, np.nan) for h in history], "--", alpha=0.6, label=key)
        ax2.set_ylabel("train terms (per dim)")
        ax2.legend(loc="upper center", fontsize=7)
        del dim_hint
    ax.set_xlabel("step")
    ax.set_ylabel("validation NLL")
    ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def train_flow(flow: Flow, data: TrainData, cfg: TrainConfig, out_dir, teacher: Flow | None = None,
               kd: KDConfig | None = None, metadata: dict | None = None, resume: bool = False) -> TrainResult:
    """Convenience wrapper: build a Trainer and run it."""
    return Trainer(flow, data, cfg, out_dir, teacher, kd, metadata).run(resume=resume)
