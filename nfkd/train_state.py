"""Reading ``train_state.pt`` for ``--resume`` safely, and keeping ``metrics.jsonl`` true to the run.

A resume must continue *this* run: a truncated or foreign state file, or one written for another
model config or another dataset, is refused with one CheckpointError instead of a torch traceback
(or, for a same-shaped dataset, silently training on a mix). After a resume the steps since the
last saved state run again, so their metrics rows are dropped first rather than repeated.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import torch

from .checkpoint import atomic_write_bytes
from .errors import CheckpointError

__all__ = ["STATE_KEYS", "load_into", "prepare_metrics", "read_train_state", "run_fingerprint"]

#: Keys every state file written by the trainer has.
STATE_KEYS = ("step", "lr_scale", "best_val", "best_step", "best_state", "evals_without_improvement", "skipped",
              "skd_excluded", "model", "opt", "batch_gen", "noise_gen", "torch_rng", "history")


def run_fingerprint(flow: Any, train: torch.Tensor, val: torch.Tensor) -> str:
    """What a resumed run must share with the saved one: architecture, config and the data itself."""
    h = hashlib.sha256()
    for t in (train, val):
        c = t.detach().cpu().contiguous()
        h.update(f"{c.dtype}{tuple(c.shape)}".encode())
        h.update(memoryview(c.numpy()).cast("B"))
    return json.dumps({"arch": flow.arch, "config": flow.config, "data_sha256": h.hexdigest(),
                       "rows": [len(train), len(val)]}, sort_keys=True, default=str)


def _differences(saved: dict[str, Any], now: dict[str, Any]) -> str:
    parts = []
    if saved.get("arch") != now.get("arch"):
        parts.append(f"architecture {saved.get('arch')} vs {now.get('arch')} now")
    s_cfg, n_cfg = saved.get("config") or {}, now.get("config") or {}
    for key in sorted(set(s_cfg) | set(n_cfg)):
        if s_cfg.get(key) != n_cfg.get(key):
            parts.append(f"{key} {s_cfg.get(key)!r} vs {n_cfg.get(key)!r} now")
    if saved.get("data_sha256") != now.get("data_sha256"):
        parts.append(f"different data ({saved.get('rows')} train/val rows vs {now.get('rows')} now, "
                     "or the same sizes with other values: another dataset, seed or file)")
    return "; ".join(parts[:6])


def read_train_state(path: Path, device: Any, fingerprint: str) -> dict[str, Any]:
    """The saved state, or one CheckpointError saying why it cannot continue this run."""
    advice = f"delete {path} (or choose another --out) to start afresh, or resume with the original settings"
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols: the error below says it
            warnings.simplefilter("ignore")
            # weights_only=True: tensors and plain containers only, no code can run.
            st = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(f"cannot resume from {path}: it is truncated, corrupt or not a training state "
                              f"written by nfkd ({type(exc).__name__}: {first}); {advice}") from None
    missing = [k for k in STATE_KEYS if not isinstance(st, dict) or k not in st]
    if missing:
        raise CheckpointError(f"cannot resume from {path}: it is not a training state written by nfkd "
                              f"(missing {', '.join(missing[:5])}); {advice}")
    saved = st.get("run")
    if saved is not None and saved != fingerprint:
        try:
            why = _differences(json.loads(saved), json.loads(fingerprint))
        except (TypeError, ValueError):
            why = "its run description is unreadable"
        raise CheckpointError(f"cannot resume from {path}: it was written for another run ({why}); {advice}")
    return st


def load_into(path: Path, what: str, module: Any, state: Any) -> None:
    """``load_state_dict`` with a shape/key mismatch turned into one CheckpointError."""
    try:
        module.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise CheckpointError(f"cannot resume from {path}: its {what} does not fit this run ({first}); "
                              f"delete it or resume with the original settings") from None


def prepare_metrics(path: Path, resumed_step: int | None) -> None:
    """Fresh run: start an empty metrics.jsonl. Resume from step s: keep only rows of steps already done.

    Evaluation rows carry the step count after the step (kept when <= s); skipped-step events
    carry the index of the step being tried (kept when < s). A torn last line is dropped.
    """
    if resumed_step is None or not path.exists():
        atomic_write_bytes(path, b"")
        return
    kept = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
            step = int(row["step"])
        except (ValueError, KeyError, TypeError):
            continue
        if step < resumed_step or (step == resumed_step and "event" not in row):
            kept.append(line + "\n")
    atomic_write_bytes(path, "".join(kept).encode())
