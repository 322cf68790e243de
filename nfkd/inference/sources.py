"""What ``load`` was given: a flow, a checkpoint or an export folder, resolved once into a ``ModelSource``."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..flows import Flow
from ..folder_files import MAX_MANIFEST_BYTES, read_member
from .runner import ModelMeta

__all__ = ["ModelSource", "resolve_source", "trained_flow"]

MANIFEST_NAME = "manifest.json"


@dataclass
class ModelSource:
    meta: ModelMeta
    flow: Flow | None = None  # the trained flow (None for an export folder)
    checkpoint: Path | None = None
    export_folder: Path | None = None
    metadata: dict[str, Any] = field(default_factory=dict)  # the checkpoint's free-form metadata (dataset, normalization)


def _manifest_meta(folder: Path) -> ModelMeta:
    try:
        m = json.loads(read_member(folder, MANIFEST_NAME, MANIFEST_NAME, MAX_MANIFEST_BYTES, InputError))
        return ModelMeta(arch=m["arch"], config=dict(m["config"]), event_shape=tuple(m["event_shape"]),
                         noise_shapes=tuple(tuple(s) for s in m["noise_shapes"]),
                         checkpoint_sha256=str(m.get("source", {}).get("sha256", "")), source=str(folder))
    except InputError:
        raise
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise InputError(f"{folder / MANIFEST_NAME} is unreadable ({exc}); re-export the model") from None


def resolve_source(model: Any) -> ModelSource:
    """A Flow, a checkpoint file (.pt) or an export folder (with manifest.json); a ModelSource as it is."""
    if isinstance(model, ModelSource):  # already resolved (load_pair checks both sides before loading them)
        return model
    if isinstance(model, Flow):
        return ModelSource(ModelMeta.of_flow(model, source=f"<{type(model).__name__} object>"), flow=model,
                           metadata=dict(getattr(model, "checkpoint_metadata", None) or {}))
    if not isinstance(model, (str, os.PathLike)):
        raise InputError(f"model must be an nfkd Flow, a checkpoint path or an export folder, got {type(model).__name__}")
    path = Path(model)
    if not path.exists():
        raise InputError(f"model not found: {path} (expected a checkpoint .pt or an export folder with manifest.json)")
    if path.is_dir():
        if not os.path.lexists(path / MANIFEST_NAME):
            raise InputError(f"{path} is a folder without manifest.json; expected an export folder "
                             f"(python -m export.onnx student.pt -o DIR) or a checkpoint file")
        return ModelSource(_manifest_meta(path), export_folder=path)
    from ..checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    return ModelSource(ModelMeta.of_flow(ckpt.flow, ckpt.sha256, str(path)), flow=ckpt.flow, checkpoint=path,
                       metadata=dict(ckpt.metadata))


def trained_flow(source: ModelSource, backend: str) -> Flow:
    """The PyTorch flow a backend runs, or one clear error for an export folder."""
    if source.flow is None:
        raise InputError(f"backend {backend!r} runs the PyTorch flow and needs the checkpoint file (.pt) or a Flow, "
                         f"not the export folder {source.export_folder}")
    return source.flow
