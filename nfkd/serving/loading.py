"""What the service serves: MODEL (checkpoint, export folder or pair bundle) -> an ``nfkd.inference`` Runner.

    load_model("student.pt")                     # auto: the fastest backend here
    load_model("student.pt", "onnxruntime")      # export on the fly (parity-gated) into a cache folder
    load_model("student-export/", "onnxruntime") # an export folder (manifest.json)
    load_model("student.pt", "torch")            # the eager flow ("torch" is an alias of "eager")
    load_model("bundle/")                        # a pair (python -m nfkd pair): log_prob to one model, sample to the other
    load_pair_model("maf.pt", "iaf.pt")          # the same without a bundle

The service takes the Runner as it is (``create_app(runner)``): no adapter. This module only adds
what the command line needs before ``nfkd.inference.load``: the backend choices (``auto``, the
registry's names and aliases, read live from ``nfkd.inference.registry``) and one clear error for a
MODEL path or option that cannot work.
A cached export is never trusted on its own word: reusing one re-runs a small parity check
against the checkpoint (``export.cache.verify_export``); a failing cache is rebuilt.
"""
from __future__ import annotations

import os
from pathlib import Path

from nfkd.errors import InputError
from nfkd.inference import Runner, registry

__all__ = ["BACKEND_CHOICES", "backend_name", "load_model", "load_pair_model"]

#: 'auto', every registered backend and its aliases ("torch" is eager): a live view of the registry.
BACKEND_CHOICES = registry.NAMES


def backend_name(backend: str | None, what: str = "backend") -> str | None:
    """A choice of BACKEND_CHOICES -> the registry's name (aliases resolved); None stays None."""
    if backend is None:
        return None
    if backend not in BACKEND_CHOICES:
        raise InputError(f"{what} must be one of {tuple(BACKEND_CHOICES)}, got {backend!r}")
    return registry.canonical(backend)


def _side_options(density_backend: str | None, sampler_backend: str | None) -> dict[str, str]:
    sides = {"density_backend": backend_name(density_backend, "density_backend"),
             "sampler_backend": backend_name(sampler_backend, "sampler_backend")}
    return {k: v for k, v in sides.items() if v is not None}


def load_model(model: str | os.PathLike, backend: str = "auto", threads: int | None = None,
               cache_dir: str | os.PathLike | None = None, device: str | None = None,
               density_backend: str | None = None, sampler_backend: str | None = None) -> Runner:
    """MODEL = checkpoint ``.pt``, export folder or pair bundle -> ``nfkd.inference.load(...)``'s Runner.

    For a pair bundle ``density_backend`` / ``sampler_backend`` override ``backend`` for one side.
    ``threads``: ONNX Runtime's session, and torch's count, set inside the service's model thread.
    """
    from nfkd import inference
    from nfkd.inference.bundle import is_pair_bundle

    name = backend_name(backend)
    path = Path(model)
    if not path.exists():
        raise InputError(f"model not found: {path} (expected a checkpoint .pt, an export folder with manifest.json "
                         f"or a pair bundle with pair.json)")
    pair = is_pair_bundle(path)
    sides = _side_options(density_backend, sampler_backend)
    if sides and not pair:
        raise InputError(f"--density-backend / --sampler-backend apply to a pair; {path} is one model: use --backend")
    if path.is_dir() and not pair and name != "auto" and not registry.spec(name).accepts("export"):
        raise InputError(f"backend {backend!r} runs the PyTorch flow and needs the checkpoint file (.pt), not the "
                         f"export folder {path}")
    return inference.load(path, backend=name, device=device, threads=threads, cache_dir=cache_dir, **sides)


def load_pair_model(density: str | os.PathLike, sampler: str | os.PathLike, backend: str = "auto",
                    threads: int | None = None, cache_dir: str | os.PathLike | None = None, device: str | None = None,
                    density_backend: str | None = None, sampler_backend: str | None = None) -> Runner:
    """``/log_prob`` from ``density``, ``/sample`` from ``sampler`` (``nfkd.inference.load_pair``), without a bundle."""
    from nfkd import inference

    return inference.load_pair(density, sampler, backend=backend_name(backend), device=device, threads=threads,
                               cache_dir=cache_dir, **_side_options(density_backend, sampler_backend))
