"""The one door for running a trained model: every backend behind one ``load``.

>>> import torch
>>> from nfkd import inference
>>> from nfkd.flows import MAF
>>> flow = MAF(dim=3, blocks=2, hidden=8).eval()
>>> [b.name for b in inference.backends()][:3]
['eager', 'folded', 'compile']
>>> model = inference.load(flow, backend="folded")
>>> model.log_prob(torch.zeros(2, 3)).shape
torch.Size([2])
>>> model.sample(4, temperature=0.7, seed=0).shape
torch.Size([4, 3])

``load(model, backend="auto", device=None, threads=None, **options)`` takes a ``Flow``, a
checkpoint path or an export folder and returns a ``Runner`` with ``log_prob(x)``,
``sample(n, *, temperature=1.0, seed=None, noise=None)`` and ``info()``. ``backend="auto"`` picks the
fastest backend available here for the device and architecture, in the order measured by the
benchmark suite (``ranking.json``, written by ``python -m bench.ranking``). The same seed gives
the same samples on every backend (noise is drawn with ``numpy.random.default_rng(seed)``).
Options: ``cache_dir`` (where onnxruntime / tensorrt exports are kept), ``export_dir`` (export into
this folder instead); any other keyword is refused (a misspelt ``cachedir=`` used to be ignored).

A density model and a sampler deploy as one Runner (``log_prob`` to one, ``sample`` to the other):
``load_pair(density, sampler, backend="auto", density_backend=None, sampler_backend=None, ...)``,
or ``load(BUNDLE)`` on a folder written by ``python -m nfkd pair`` (``pair.json``); see ``pair``.
"""
from __future__ import annotations

import os
from typing import Any

import torch

from ..errors import InputError
from .bundle import is_pair_bundle
from .pair import PairRunner, load_bundle, load_pair
from .registry import BACKENDS, BackendStatus, backends, canonical, loader, ranking, register, status
from .runner import ModelMeta, Runner, draw_noise
from .sources import ModelSource, resolve_source

__all__ = ["BACKENDS", "BackendStatus", "ModelMeta", "PairRunner", "Runner", "backends", "draw_noise", "load",
           "load_pair", "ranking", "register"]


def _device(device: str | torch.device | None) -> str:
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    d = str(device)
    if d.split(":")[0] not in ("cpu", "cuda"):
        raise InputError(f"device must be 'cpu' or 'cuda' (optionally 'cuda:N'), got {d!r}")
    return d


def _threads(threads: Any) -> int | None:
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise InputError(f"threads must be a positive integer or None, got {threads!r}")
    return threads


#: The keyword options ``load`` passes on to backends (see export/runtime.py).
OPTIONS = ("cache_dir", "export_dir")


#: Extra options of a pair bundle: one backend per side.
PAIR_OPTIONS = ("density_backend", "sampler_backend")


def _check_options(options: dict[str, Any], pair: bool = False) -> None:
    """A misspelt option (``cachedir=``, ``thread=``) silently did nothing: name the valid ones instead."""
    valid = OPTIONS + PAIR_OPTIONS if pair else OPTIONS
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise InputError(f"unknown option(s) {', '.join(map(repr, unknown))} for inference.load; valid: "
                         f"backend, device, threads, {', '.join(valid)}")


def _kind(source: ModelSource) -> str:
    """Which of the registry's inputs ``source`` is: 'export', 'checkpoint' or 'flow'."""
    return "export" if source.export_folder is not None else "checkpoint" if source.checkpoint is not None else "flow"


def _choose(source: ModelSource, device: str) -> str:
    tried = []
    kind = _kind(source)
    order = ranking(device, source.meta.arch)
    if kind == "export":  # an export runs on a backend that takes exports, ranked for its arch or not
        order += [b for b, s in BACKENDS.items() if s.accepts(kind) and b not in order]
    for name in order:
        if name not in BACKENDS or not BACKENDS[name].accepts(kind) or not BACKENDS[name].runs(source.meta.arch):
            continue
        st = status(name)
        if not st.available or device.split(":")[0] not in st.devices:
            tried.append(f"{name}: {st.reason if not st.available else 'not on ' + device}")
            continue
        return name
    raise InputError(f"no backend can run this {source.meta.arch} model on {device}: " + "; ".join(tried))


def load(model: Any, backend: str = "auto", device: str | torch.device | None = None, threads: int | None = None,
         **options: Any) -> Runner:
    """A Runner for ``model`` (Flow, checkpoint path, export folder or pair bundle) on ``backend`` ('auto': fastest here).

    A pair bundle (a folder with ``pair.json``) gives a ``PairRunner``; options ``density_backend`` /
    ``sampler_backend`` override ``backend`` for one side.

    >>> import numpy as np
    >>> from nfkd.flows import Glow1D
    >>> runner = load(Glow1D(dim=4, steps=2, hidden=8), backend="eager", threads=1)
    >>> runner.log_prob(np.zeros((3, 4), np.float32)).shape     # numpy in, numpy out
    (3,)
    >>> bool((runner.sample(2, seed=7) == runner.sample(2, seed=7)).all())
    True
    """
    _check_options(options, pair=is_pair_bundle(model))
    device = _device(device)
    threads = _threads(threads)
    backend = canonical(backend)  # an alias ("torch") names its backend; an unknown name is refused
    if is_pair_bundle(model):
        return load_bundle(model, backend=backend, device=device, threads=threads, **options)
    source = resolve_source(os.fspath(model) if isinstance(model, os.PathLike) else model)
    name = _choose(source, device) if backend == "auto" else backend
    st = status(name)
    if not st.available:
        raise InputError(f"backend {name!r} is not available here: {st.reason}")
    if device.split(":")[0] not in st.devices:
        raise InputError(f"backend {name!r} does not run on {device} here (it runs on {', '.join(st.devices)})")
    if not BACKENDS[name].accepts(_kind(source)):
        raise InputError(f"backend {name!r} runs the PyTorch flow and needs the checkpoint file (.pt) or a Flow, "
                         f"not the export folder {source.export_folder}")
    if not BACKENDS[name].runs(source.meta.arch):
        raise InputError(f"backend {name!r} runs {', '.join(BACKENDS[name].archs or ())} models, not "
                         f"{source.meta.arch}; use backend='auto'")
    return loader(name)(source, device, threads, options)

