"""``Runner``: what ``nfkd.inference.load`` returns, the same surface for every backend.

A backend implements two methods on already-checked inputs: ``_log_prob(x)`` (float32, batch
checked) and ``_decode(noise, temperature)`` (unit noise per level). Everything users touch —
input checks, noise drawing from a seed, numpy/torch conversion, thread pinning, ``info()`` —
lives here once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import InputError
from ..noise import SampleCount, draw_noise, sample_shape
from ..validation import check_batch, check_count, check_noise, check_seed, check_temperature, numpy_view

__all__ = ["ModelMeta", "Runner", "draw_noise", "sample_shape"]


@dataclass(frozen=True)
class ModelMeta:
    """What every backend knows about the model it runs (from the flow or an export manifest)."""

    arch: str
    config: dict[str, Any]
    event_shape: tuple[int, ...]
    noise_shapes: tuple[tuple[int, ...], ...]  # per level, without the batch dimension
    checkpoint_sha256: str = ""
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return math.prod(self.event_shape)

    @classmethod
    def of_flow(cls, flow, checkpoint_sha256: str = "", source: str = "") -> "ModelMeta":
        return cls(
            arch=flow.arch, config=dict(flow.config), event_shape=tuple(flow.event_shape),
            noise_shapes=tuple(tuple(s[1:]) for s in flow.noise_shapes(1)),
            checkpoint_sha256=checkpoint_sha256, source=source,
        )


def _refuse_nan(out: np.ndarray | torch.Tensor) -> None:
    """Finite float32 rows can still overflow inside the model (``3e38`` gave NaN on eager): say so, never NaN."""
    nan = torch.isnan(out) if isinstance(out, torch.Tensor) else np.isnan(out)
    if bool(nan.any()):
        rows = (nan.nonzero().flatten() if isinstance(out, torch.Tensor) else np.flatnonzero(nan))[:5].tolist()
        raise InputError(f"x rows {rows} overflow float32 inside the model (values too large for it); rescale "
                         "them, or score them with the float64 flow (flow.double().log_prob)")


class Runner:
    """A loaded model on one backend: ``log_prob``, ``sample``, ``info``.

    ``log_prob`` returns the kind it was given (numpy in, numpy out; a tensor in, a tensor out);
    ``sample`` returns a ``torch.Tensor`` (numpy when given numpy noise).
    """

    backend: str = ""
    native: str = "torch"  # the array kind _log_prob / _decode take: "torch" or "numpy"
    #: True: max_batch bounds one backend call, not a request; larger batches are split here (issue 27).
    splits_batches: bool = False

    def __init__(self, meta: ModelMeta, device: str = "cpu", threads: int | None = None,
                 max_batch: int | None = None) -> None:
        self.meta = meta
        self.device = str(device)
        self.threads = threads
        self.max_batch = max_batch

    # --- the shared surface -------------------------------------------------------------------
    @property
    def event_shape(self) -> tuple[int, ...]:
        return self.meta.event_shape

    @property
    def noise_shapes(self) -> list[tuple[int, ...]]:
        return [tuple(s) for s in self.meta.noise_shapes]

    @property
    def dim(self) -> int:
        return self.meta.dim

    def log_prob(self, x: Any, validate: bool = True) -> np.ndarray | torch.Tensor:
        """log p(x) in nats per row, in the user's units.

        ``validate=False`` skips the input checks, for callers that already ran them (the service
        checks every request body once, before batching).
        """
        # A CPU float tensor on a numpy-native backend is viewed as numpy once, here: the checks and the
        # backend read that view (the same memory), so a tensor pays no second detach / conversion (issue #29)
        view = numpy_view(x) if isinstance(x, torch.Tensor) and self.native == "numpy" else None
        if validate:
            checked = check_batch(x if view is None else view, self.event_shape, "x", self._request_limit,
                                  float32=True)
            if view is None:
                x = checked  # a list becomes an array
        as_numpy = isinstance(x, np.ndarray)
        native = self._to_native(x if view is None else view)
        out = self._in_chunks(lambda rows: self._log_prob(native[rows]), len(native))
        if validate:  # the service maps a non-finite score to its own answer
            _refuse_nan(out)
        return self._to_numpy(out) if as_numpy else self._to_torch(out)

    def sample(self, n: SampleCount = None, *, temperature: float = 1.0, seed: int | None = None,
               noise: Sequence[Any] | Any | None = None) -> torch.Tensor:
        """n samples at a temperature; noise from ``default_rng(seed)`` (``draw_noise``), or decode the given unit noise.

        The one sample signature of nfkd (``Flow.sample`` too). ``n`` is a count or, as in
        torch.distributions, a sample shape (``(2, 3)`` -> [2, 3, *event_shape]). Returns a
        ``torch.Tensor``; numpy arrays when ``noise`` was given as numpy arrays.
        """
        temperature = check_temperature(temperature)
        shape = sample_shape(n)
        count = math.prod(shape) if shape is not None else n
        as_numpy = False
        if noise is None:
            if count is None:
                raise InputError("pass n (how many samples) or noise (one unit-noise array per level)")
            count = check_count(count, "n", self._request_limit)
            noise = draw_noise(self.noise_shapes, count, check_seed(seed))
        else:
            noise = self._check_noise(noise)
            as_numpy = isinstance(noise[0], np.ndarray)
            if count is not None and check_count(count, "n") != noise[0].shape[0]:
                raise InputError(f"n = {n} but the noise has {noise[0].shape[0]} rows; pass one or the other")
        native = [self._to_native(z) for z in noise]
        out = self._in_chunks(lambda rows: self._decode([z[rows] for z in native], temperature), len(native[0]))
        if shape is not None:
            out = out.reshape(*shape, *out.shape[1:])
        # Samples are data, not a graph: never requires_grad, whatever the backend computed them with.
        return self._to_numpy(out) if as_numpy else self._to_torch(out).detach()

    def info(self) -> dict[str, Any]:
        m = self.meta
        return {
            "backend": self.backend, "device": self.device, "threads": self.threads, "max_batch": self.max_batch,
            "arch": m.arch, "config": m.config, "event_shape": list(m.event_shape), "dim": m.dim,
            "noise_shapes": [list(s) for s in m.noise_shapes], "checkpoint_sha256": m.checkpoint_sha256,
            "source": m.source, **m.extra,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(backend={self.backend!r}, arch={self.meta.arch!r}, device={self.device!r})"

    # --- for backends -------------------------------------------------------------------------
    @property
    def _request_limit(self) -> int | None:
        """The most rows one request may have: none where this Runner splits larger batches itself."""
        return None if self.splits_batches else self.max_batch

    def _in_chunks(self, fn, n: int):
        """fn(slice) over row chunks of at most max_batch when this backend splits; results concatenated."""
        step = self.max_batch
        if not self.splits_batches or step is None or n <= step:
            return fn(slice(None))
        parts = [fn(slice(i, i + step)) for i in range(0, n, step)]
        return torch.cat(parts) if isinstance(parts[0], torch.Tensor) else np.concatenate(parts)

    def _log_prob(self, x):  # pragma: no cover - abstract
        raise NotImplementedError

    def _decode(self, noise: list, temperature: float):  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_noise(self, noise: Sequence[Any] | Any) -> list:
        return check_noise(noise, self.noise_shapes, self._request_limit, float32=True)

    def pin_threads(self) -> None:
        """torch's intra-op thread count is per calling thread (OpenMP): set it where the call runs."""
        if self.threads and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)

    def _to_native(self, a):
        if self.native == "numpy":
            if isinstance(a, torch.Tensor):
                view = numpy_view(a)  # a CPU float tensor's own memory; else a copy to the CPU
                a = view if view is not None else a.detach().cpu().float().numpy()
            return np.ascontiguousarray(a, dtype=np.float32)
        t = torch.from_numpy(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else a
        return t.to(device=self.device, dtype=torch.float32)

    @staticmethod
    def _to_numpy(a) -> np.ndarray:
        return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)

    @staticmethod
    def _to_torch(a) -> torch.Tensor:
        return a if isinstance(a, torch.Tensor) else torch.from_numpy(np.asarray(a))
