"""The export cache: one parity-gated export folder per checkpoint, reused only while it still matches.

Used by ``nfkd.inference`` (the onnxruntime / tensorrt backends given a checkpoint or a flow), and
so by the service, the benchmarks and ``export.triton_model_repository``. Folders are keyed on the checkpoint's
SHA-256. A cached export is never trusted on its own word: on reuse, a small parity check against
the checkpoint runs again (``verify_export``); a folder that fails it is rebuilt (logged).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from nfkd.errors import ExportError, InputError

from .manifest import MANIFEST_NAME, reusable_export, sha256_file

log = logging.getLogger("nfkd.serve")
RECHECK_BATCHES = (7,)  # rows of the parity re-check of a reused export: cheap, both directions

__all__ = ["RECHECK_BATCHES", "default_cache_dir", "ensure_export", "ensure_verified_export", "export_flow",
           "is_export_folder", "verify_export"]


def default_cache_dir() -> Path:
    root = os.environ.get("NFKD_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "nfkd"
    )
    return Path(root) / "exports"


def is_export_folder(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_dir() and (p / MANIFEST_NAME).exists()


def _cache_root(cache_dir: str | os.PathLike | None) -> Path:
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # never fall back to a shared folder (/tmp): anyone could plant an export there
        raise InputError(f"cannot create the export cache folder {root} ({exc.strerror or exc}); pass a writable "
                         f"--cache-dir (or set NFKD_CACHE_DIR)") from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise InputError(f"the export cache folder {root} is not writable; pass a writable --cache-dir "
                         f"(or set NFKD_CACHE_DIR)")
    return root


def verify_export(folder: Path, checkpoint: Path, backend: str = "onnxruntime", device: str | None = None) -> dict[str, Any]:
    """Re-run the parity gate (``RECHECK_BATCHES`` rows, both directions) of an export folder against
    the checkpoint's eager flow; raises ``ExportError`` when the graphs do not reproduce it."""
    from nfkd.checkpoint import load_checkpoint

    from . import parity
    from . import runtime as rt_mod

    flow = load_checkpoint(checkpoint).flow.eval()
    runtime = rt_mod.load(folder, backend=backend, device=device, intra_op_threads=1)  # engines take no thread count
    res = parity.check_parity(flow, runtime.density, runtime.decode, batches=RECHECK_BATCHES,
                              runtime=f"{backend} (re-check of a reused export)")
    return {"passed": bool(res["passed"]), "batches": list(RECHECK_BATCHES),
            "log_prob_max_rel_err": res["log_prob_max_rel_err"], "sample_max_abs_err": res["sample_max_abs_err"]}


def _reuse(folder: Path, checkpoint: Path, sha: str, engines: bool) -> dict[str, Any] | None:
    """The re-check result when ``folder`` is an intact export of this checkpoint that still passes the
    parity gate against it; None (logged when it was there but failed) means export again."""
    if reusable_export(folder, sha, engines) is None:
        return None
    try:
        checks = {"onnxruntime": verify_export(folder, checkpoint, "onnxruntime", "cpu")}
        if engines:
            checks["tensorrt"] = verify_export(folder, checkpoint, "tensorrt")
    except ExportError as exc:
        log.warning("cached export failed the parity re-check against the checkpoint; rebuilding it",
                    extra={"folder": str(folder), "reason": str(exc)})
        return None
    except Exception as exc:  # an unloadable graph is a failed re-check as well
        log.warning("cached export cannot be run; rebuilding it",
                    extra={"folder": str(folder), "reason": f"{type(exc).__name__}: {exc}"})
        return None
    log.info("reusing export (parity re-checked)", extra={"folder": str(folder)})
    return checks["tensorrt" if engines else "onnxruntime"]


def ensure_verified_export(checkpoint: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                           engines: bool = False,
                           folder: str | os.PathLike | None = None) -> tuple[Path, dict[str, Any] | None]:
    """(export folder, re-check result or None when freshly exported) for a checkpoint.

    ``folder``: where the export lives (default: the cache, ``<stem>-<sha256[:16]>``).
    """
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise InputError(f"model not found: {checkpoint} (expected a checkpoint .pt or an export folder)")
    sha = sha256_file(checkpoint)
    folder = Path(folder) if folder is not None else _cache_root(cache_dir) / f"{checkpoint.stem}-{sha[:16]}"
    recheck = _reuse(folder, checkpoint, sha, engines)
    if recheck is not None:
        return folder, recheck
    from .onnx import export_onnx

    log.info("exporting to ONNX (parity-gated)", extra={"checkpoint": str(checkpoint), "folder": str(folder)})
    export_onnx(checkpoint, folder)
    if engines:
        from .trt import build_engines

        log.info("building TensorRT engines", extra={"checkpoint": str(checkpoint), "folder": str(folder)})
        build_engines(checkpoint, folder)
    return folder, None


def ensure_export(checkpoint: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                  engines: bool = False, folder: str | os.PathLike | None = None) -> Path:
    """The export folder of a checkpoint (see ``ensure_verified_export``)."""
    return ensure_verified_export(checkpoint, cache_dir, engines, folder)[0]


def _flow_key(flow) -> str:
    """A content key of an in-memory flow: architecture, config and every tensor's bytes."""
    h = hashlib.sha256(json.dumps([flow.arch, flow.config], sort_keys=True).encode())
    for name, t in sorted(flow.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def export_flow(flow, cache_dir: str | os.PathLike | None = None, engines: bool = False,
                folder: str | os.PathLike | None = None) -> tuple[Path, dict[str, Any] | None]:
    """ensure_verified_export for an in-memory flow: saved once as a checkpoint keyed by its content."""
    import nfkd

    root = _cache_root(cache_dir)
    kept = root / "flows" / f"{flow.arch}-{_flow_key(flow)[:16]}.pt"
    if not kept.exists():
        nfkd.save(flow, kept)  # atomic
    return ensure_verified_export(kept, root, engines, folder)
