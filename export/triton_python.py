"""The Python-backend variant of the Triton model repository: any ``nfkd.inference`` runner on CPU.

    python -m export.triton_model_repository student-export/ -o model_repository/ --platform python
    python -m nfkd serve student.pt --engine triton          # writes one of these, then starts tritonserver

writes::

    model_repository/
      <name>_density/config.pbtxt   1/model.py   1/model/ (the export folder, copied; or a path parameter)
      <name>_sample/config.pbtxt    1/model.py   1/model/

Why a second variant: ONNX Runtime and TensorRT repositories need Triton backends that the CPU-only
``nvidia-pytriton`` wheel does not ship, and the Python backend runs every ``nfkd.inference``
runner (numba, onnxruntime, eager torch) with the same code path as ``python -m nfkd serve``.

Contract (KServe v2, the same limits and messages as the built-in service):

- ``<name>_density``: ``x`` FP32 [B, *event] -> ``log_prob`` FP32 [B, 1]. ``max_batch_size`` = the
  per-request row limit (Triton refuses larger requests with 400); the dynamic batcher hands
  requests to ``execute`` in groups up to ``preferred_batch_size`` rows, waiting at most
  ``max_queue_delay_microseconds``. ``execute`` only validates and queues: the model's own scheduler
  runs the rows shortest-first in calls of ``nfkd_chunk_rows`` (``nfkd.serving.triton_model``), so a
  small request never waits behind a whole 65536-row one; past ``nfkd_max_queue_rows`` rows queued
  per instance, requests get UNAVAILABLE (HTTP 503) with the built-in service's "overloaded" message.
- ``<name>_sample``: ``n`` INT64 [1], optional ``temperature`` FP32 [1] (default 1) and ``seed``
  INT64 [1] -> ``x`` FP32 [n, *event]. ``max_batch_size: 0``: one call per request, never merged
  (two temperatures must not share a call; the scheduler merges only samples of one temperature
  and splits large ``n`` into chunks, the same as density rows). Unlike the ONNX variant, the server draws the noise
  (``numpy.random.default_rng(seed)``): the same samples as every nfkd backend for that seed.

``model.py`` imports ``nfkd``: the server's Python environment must have nfkd installed (the
official Triton image: ``pip install nfkd`` in a derived image, or ``EXECUTION_ENV_PATH``).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Sequence

from nfkd.errors import InputError

from .artifacts import staged_folder

__all__ = ["MODEL_PY", "python_density_config", "python_sample_config", "write_python_repository"]

MODEL_PY = ('"""Triton Python-backend model written by nfkd: the runner lives in nfkd.serving.triton_model."""\n'
            "from nfkd.serving.triton_model import TritonPythonModel  # noqa: F401\n")


def _params(values: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"key": k, "value": {"string_value": str(v)}} for k, v in values.items() if v is not None]


def python_density_config(name: str, event_shape: Sequence[int], max_rows: int, preferred: Sequence[int],
                          queue_delay_us: int, instances: int, params: dict[str, Any]) -> dict[str, Any]:
    from .triton_model_repository import Enum

    return {
        "name": name,
        "backend": "python",
        "max_batch_size": int(max_rows),
        "input": [{"name": "x", "data_type": Enum("TYPE_FP32"), "dims": [int(v) for v in event_shape]}],
        "output": [{"name": "log_prob", "data_type": Enum("TYPE_FP32"), "dims": [1]}],
        "dynamic_batching": {"preferred_batch_size": [int(v) for v in preferred],
                             "max_queue_delay_microseconds": int(queue_delay_us)},
        "instance_group": [{"count": int(instances), "kind": Enum("KIND_CPU")}],
        "parameters": _params({"nfkd_kind": "density", **params}),
    }


def python_sample_config(name: str, event_shape: Sequence[int], instances: int, params: dict[str, Any]) -> dict[str, Any]:
    from .triton_model_repository import Enum

    return {
        "name": name,
        "backend": "python",
        "max_batch_size": 0,
        "input": [{"name": "n", "data_type": Enum("TYPE_INT64"), "dims": [1]},
                  {"name": "temperature", "data_type": Enum("TYPE_FP32"), "dims": [1], "optional": True},
                  {"name": "seed", "data_type": Enum("TYPE_INT64"), "dims": [1], "optional": True}],
        "output": [{"name": "x", "data_type": Enum("TYPE_FP32"), "dims": [-1, *[int(v) for v in event_shape]]}],
        "instance_group": [{"count": int(instances), "kind": Enum("KIND_CPU")}],
        "parameters": _params({"nfkd_kind": "sample", **params}),
    }


def write_python_repository(
    model: str | os.PathLike,
    out_dir: str | os.PathLike,
    event_shape: Sequence[int],
    name: str,
    backend: str = "onnxruntime",
    threads: int | None = None,
    instances: int = 1,
    max_request_rows: int = 65536,
    max_batch: int = 4096,
    queue_delay_us: int = 2000,
    max_sample_n: int | None = None,
    max_queue_rows: int | None = None,
    copy_model: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Write ``<name>_density`` and ``<name>_sample`` (Python backend, KIND_CPU) into ``out_dir``.

    ``max_queue_rows``: rows queued or running per model instance before requests get UNAVAILABLE (default
    4x max(max_request_rows, max_batch), the built-in service's ``--max-queue-rows``).
    ``copy_model``: copy the export folder / checkpoint into each model (a self-contained repository for
    shared storage); else the models name ``model`` by its absolute path (``nfkd serve --engine triton``).
    """
    from .triton_model_repository import model_name

    if (min(instances, max_request_rows, max_batch, max_queue_rows or 1) < 1 or queue_delay_us < 0
            or (threads is not None and threads < 1)):
        raise InputError("instances, threads, max_request_rows, max_batch and max_queue_rows must be >= 1, "
                         "queue_delay_us >= 0")
    src = Path(model)
    if not src.exists():
        raise InputError(f"model not found: {src}")
    base = model_name(name)
    max_batch = min(int(max_batch), int(max_request_rows))
    params = {"nfkd_backend": backend, "nfkd_threads": threads, "nfkd_chunk_rows": max_batch,
              "nfkd_max_sample_n": max_sample_n or max_request_rows, "nfkd_max_queue_rows": max_queue_rows,
              "nfkd_cache_dir": str(Path(cache_dir).resolve()) if cache_dir else None}
    configs = {
        "density": python_density_config(f"{base}_density", event_shape, max_request_rows, [max_batch],
                                          queue_delay_us, instances, params),
        "sample": python_sample_config(f"{base}_sample", event_shape, instances, params),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {kind: str(_install_model(out, cfg, src, copy_model)) for kind, cfg in configs.items()}
    return {"models": {k: c["name"] for k, c in configs.items()}, "paths": paths, "platform": "python",
            "max_batch_size": max_request_rows, "preferred_batch_size": [max_batch], "instance_kind": "KIND_CPU",
            "configs": configs}


def _install_model(out: Path, cfg: dict[str, Any], src: Path, copy_model: bool) -> Path:
    """One model folder (config.pbtxt, 1/model.py, and the model copied or named by path), staged and
    installed whole; adds the ``nfkd_model`` parameter to ``cfg``."""
    from .triton_model_repository import to_pbtxt

    final = out / cfg["name"]
    with staged_folder(final, replace_whole=True) as tmp:
        (tmp / "1").mkdir()
        (tmp / "1" / "model.py").write_text(MODEL_PY)
        if copy_model:
            target = tmp / "1" / ("model" if src.is_dir() else "model" + src.suffix)
            if src.is_dir():
                shutil.copytree(src, target, ignore=shutil.ignore_patterns("*.plan"))
            else:
                shutil.copy2(src, target)
            where = str(Path("1") / target.name)
        else:
            where = str(src.resolve())
        cfg["parameters"].append({"key": "nfkd_model", "value": {"string_value": where}})
        (tmp / "config.pbtxt").write_text("# Written by nfkd (export.triton_python): Python backend, KIND_CPU\n"
                                          + to_pbtxt(cfg) + "\n")
    return final
