"""What the benchmark suite runs: settings, cases, models, backends and the calibrated measurement.

Kept apart from ``conftest.py`` so that it can be imported (and unit-tested) without pytest.

Backends (``BACKENDS``), all measured through the API a user calls:

- ``eager``: the nfkd flow as trained (``flow.log_prob(x)`` / ``flow.sample(n)``), ``torch.no_grad``;
- ``folded``: ``kernels.dispatch.fast_log_prob`` / ``fast_sample`` with kernels off: the folded
  inference form (``nfkd.fold``) in PyTorch, what nfkd runs on CPU;
- ``compile``: ``torch.compile(fold(flow).log_prob / .sample, dynamic=True)``; MAF sampling compiles
  one MADE pass (its D sequential passes per block stay a Python loop: unrolling 6 x 63 passes
  would take minutes to compile); compiled once per model and reused for every batch size;
- ``onnxruntime``: ``export.runtime.load(export_onnx(...))`` (CPU provider; CUDA provider on GPU);
- ``tensorrt``: ``export.trt.build_engines`` + ``load(..., backend="tensorrt")`` (GPU + TensorRT only);
- ``triton``: ``fast_log_prob`` / ``fast_sample`` with ``use_kernels(True)`` on CUDA tensors (GPU only);
- ``nflows`` / ``zuko``: the same MAF (D, blocks, hidden, n_hidden, reversed orders) built with
  those libraries, as an outside reference (MAF only; ``flow.log_prob`` / ``flow.sample`` and
  ``flow().log_prob`` / ``flow().sample``).

Sampling times include drawing the noise (each backend with its own generator: torch, numpy).
"""
from __future__ import annotations

import contextlib
import math
import os
import time
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

BACKENDS = ("eager", "folded", "compile", "onnxruntime", "tensorrt", "triton", "nflows", "zuko")
NFKD_BACKENDS = ("eager", "folded", "compile", "onnxruntime", "tensorrt", "triton")
PEERS = ("nflows", "zuko")
EXPORTED = ("onnxruntime", "tensorrt")
ROLES = ("teacher", "student")
DIRECTIONS = ("density", "sample")
TABULAR = ("glow1d", "maf")
ARCHS = ("glow1d", "maf", "glow")
PAPER_DIMS = (6, 8, 21, 43, 63)  # the paper's five tabular datasets (power, gas, hepmass, miniboone, bsds300)
IMAGE_SHAPE = (3, 32, 32)

DEFAULT_PRESETS = {"glow1d": "glow1d-paper", "maf": "maf-paper", "glow": "glow-cpu"}
GPU_IMAGE_PRESET = "glow-cifar10-paper"
TABULAR_PERTURB, IMAGE_PERTURB = 0.05, 0.01  # keep random flows well conditioned (finite samples)


class Unavailable(Exception):
    """A backend / model that cannot run here; the test is skipped with this message."""


# ---------------------------------------------------------------------------------------- settings
def default_cache() -> Path:
    env = os.environ.get("NFKD_BENCH_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nfkd-bench"


@dataclass(frozen=True)
class Settings:
    mode: str = "quick"
    device: str = "cpu"
    threads: int = 2
    archs: tuple[str, ...] = ARCHS
    dims: tuple[int, ...] = (6,)
    batches: tuple[int, ...] = (1, 256)
    image_batches: tuple[int, ...] = (1,)
    roles: tuple[str, ...] = ROLES
    backends: tuple[str, ...] = tuple(b for b in BACKENDS if b != "compile")
    export_roles: tuple[str, ...] = ("student",)  # roles exported for onnxruntime / tensorrt
    compile_models: str = "none"  # "all" | "none" | comma list of "arch" or "arch:dim"
    presets: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_PRESETS))
    budget_s: float = 0.05  # measuring time per benchmark (rounds x iterations x call time)
    min_rounds: int = 2
    max_rounds: int = 3
    round_target_s: float = 0.002  # short calls are repeated (iterations) up to this per round
    long_call_s: float = 1.0  # calls at least this long get at most long_rounds rounds
    long_rounds: int = 1
    max_call_s: float = math.inf  # skip a case predicted (from the smaller batch) to take longer
    cache: Path = field(default_factory=default_cache)

    def dims_for(self, arch: str) -> tuple[int, ...]:
        return (math.prod(IMAGE_SHAPE),) if arch == "glow" else self.dims

    def batches_for(self, arch: str) -> tuple[int, ...]:
        return self.image_batches if arch == "glow" else self.batches

    def compiles(self, arch: str, dim: int) -> bool:
        spec = self.compile_models.strip().lower()
        if spec in ("all", "*"):
            return True
        if spec in ("none", ""):
            return False
        items = {s.strip() for s in spec.split(",") if s.strip()}
        return arch in items or f"{arch}:{dim}" in items


QUICK = Settings()
FULL = Settings(
    mode="full", dims=PAPER_DIMS, batches=(1, 256, 4096, 65536), image_batches=(1, 32, 256),
    backends=BACKENDS, export_roles=ROLES, compile_models="all", budget_s=1.0, min_rounds=3,
    max_rounds=50, round_target_s=0.005, long_call_s=1.0, long_rounds=2,
)


def parse_list(text: str, conv=str) -> tuple:
    return tuple(conv(s.strip()) for s in str(text).split(",") if s.strip())


# ------------------------------------------------------------------------------------------- cases
@dataclass(frozen=True)
class Case:
    direction: str
    arch: str
    dim: int
    batch: int
    role: str
    backend: str

    @property
    def id(self) -> str:
        return f"{self.arch}-d{self.dim}-b{self.batch}-{self.role}-{self.backend}"

    @property
    def group(self) -> str:
        return group_name(self.direction, self.arch, self.dim, self.batch)

    @property
    def series(self) -> tuple:
        return (self.direction, self.arch, self.dim, self.role, self.backend)


def group_name(direction: str, arch: str, dim: int, batch: int) -> str:
    return f"{direction} {arch} d={dim} batch={batch}"


def cases(settings: Settings, direction: str) -> list[Case]:
    """Every case of one direction, ordered so that each (arch, dim, batch) group runs consecutively
    (all roles and backends back to back: their ratios are measured under the same load)."""
    out = []
    for arch in settings.archs:
        for dim in settings.dims_for(arch):
            for batch in settings.batches_for(arch):
                for backend in settings.backends:
                    if backend in PEERS and arch != "maf":
                        continue
                    if backend == "compile" and not settings.compiles(arch, dim):
                        continue
                    for role in settings.roles:
                        if backend in EXPORTED and role not in settings.export_roles:
                            continue
                        out.append(Case(direction, arch, dim, batch, role, backend))
    return out


# ------------------------------------------------------------------------------------------ models
def perturb(module, scale: float, seed: int):
    """Move every parameter off its (often identity) initial value (nfkd.testing.perturb)."""
    from nfkd.testing import perturb as _perturb

    return _perturb(module, scale, seed)


def stable_seed(*parts: Any) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode()) & 0x7FFFFFFF


def model_config(settings: Settings, arch: str, role: str, dim: int) -> dict[str, Any]:
    from nfkd.presets import resolve

    cfg = resolve(arch, role, settings.presets[arch])
    cfg.pop("arch")
    if arch == "glow":
        cfg["in_shape"] = list(IMAGE_SHAPE)
    else:
        cfg["dim"] = dim
    return cfg


def model_name(settings: Settings, arch: str, role: str, dim: int) -> str:
    shape = "x".join(map(str, IMAGE_SHAPE)) if arch == "glow" else f"d{dim}"
    return f"{settings.presets[arch]}-{role}-{shape}"


def build_nfkd(settings: Settings, arch: str, role: str, dim: int):
    """A deterministic random flow of a preset (float32, eval, on CPU); tabular ones get a
    non-trivial data normalization, shared by teacher and student."""
    import torch

    from nfkd.flows import build_flow

    cfg = model_config(settings, arch, role, dim)
    torch.manual_seed(stable_seed(arch, role, dim, settings.presets[arch]))
    flow = build_flow(arch, **cfg)
    if arch != "glow":
        g = torch.Generator().manual_seed(stable_seed("data", arch, dim))
        flow.normalize.set(2 * torch.randn(dim, generator=g), torch.rand(dim, generator=g) + 0.5)
    scale = IMAGE_PERTURB if arch == "glow" else TABULAR_PERTURB
    return perturb(flow, scale, stable_seed("perturb", arch, role, dim)).float().eval()


def build_peer(name: str, dim: int, blocks: int, hidden: int, n_hidden: int):
    """The MAF of nfkd's maf presets in nflows or zuko: ``blocks`` MADEs (ReLU, ``n_hidden`` hidden
    layers of ``hidden``), orders reversed between blocks, standard normal base. Same parameter count."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(stable_seed("peer", name, dim, blocks, hidden, n_hidden))
    if name == "nflows":
        try:
            from nflows.distributions.normal import StandardNormal
            from nflows.flows.base import Flow
            from nflows.transforms.autoregressive import MaskedAffineAutoregressiveTransform
            from nflows.transforms.base import CompositeTransform
            from nflows.transforms.permutations import ReversePermutation
        except Exception as exc:
            raise Unavailable(f"nflows cannot be imported ({type(exc).__name__}: {exc}); pip install nflows") from None
        layers = []
        for _ in range(blocks):
            layers.append(MaskedAffineAutoregressiveTransform(
                features=dim, hidden_features=hidden, num_blocks=n_hidden - 1, use_residual_blocks=False,
                activation=F.relu,
            ))
            layers.append(ReversePermutation(features=dim))
        return Flow(CompositeTransform(layers), StandardNormal([dim])).eval()
    if name == "zuko":
        try:
            import zuko
        except Exception as exc:
            raise Unavailable(f"zuko cannot be imported ({type(exc).__name__}: {exc}); pip install zuko") from None
        return zuko.flows.MAF(
            features=dim, context=0, transforms=blocks, randperm=False, hidden_features=[hidden] * n_hidden
        ).eval()
    raise ValueError(f"unknown peer {name!r}")


def num_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------- registry
def _no_grad(fn: Callable[[], Any]) -> Callable[[], Any]:
    import torch

    def run():
        with torch.no_grad():
            return fn()

    return run


def _synced(fn: Callable[[], Any], device: str) -> Callable[[], Any]:
    if device != "cuda":
        return fn
    import torch

    def run():
        out = fn()
        torch.cuda.synchronize()
        return out

    return run


def _first_line(exc: BaseException) -> str:
    text = next((ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()), "")
    return f"{type(exc).__name__}: {text}"[:300]


def _mark_batch_dynamic(t, unbacked: bool) -> None:
    import torch

    if unbacked:  # one graph for every batch size, batch 1 included (no 0/1 specialization)
        torch._dynamo.decorators.mark_unbacked(t, 0)


def _maf_pass(x, u, weights: list, biases: list, clamp: float, tanh: bool):
    """One MADE pass of MAF sampling (FoldedMADE.inverse's loop body): x <- u * exp(alpha(x)) + mu(x)."""
    import torch
    import torch.nn.functional as F

    h = x
    n = len(weights)
    for i in range(n):
        h = F.linear(h, weights[i], biases[i])
        if i < n - 1:
            h = torch.tanh(h) if tanh else torch.relu(h)
    d = u.shape[1]
    alpha = clamp * torch.tanh(h[:, d:] / clamp)
    return u * torch.exp(alpha) + h[:, :d]


class Registry:
    """Session cache of models, inputs, exports, compiled functions and peers (built on first use)."""

    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self._cache: dict[tuple, Any] = {}
        self._failed: dict[tuple, str] = {}
        self._last: dict[tuple, tuple[int, float]] = {}  # series -> (batch, seconds per call)
        self.export_seconds: dict[str, float] = {}
        self.compile_seconds: dict[str, float] = {}

    # --- generic memo -------------------------------------------------------------------------
    def _memo(self, key: tuple, build: Callable[[], Any]) -> Any:
        if key in self._failed:
            raise Unavailable(self._failed[key])
        if key not in self._cache:
            try:
                self._cache[key] = build()
            except Unavailable as exc:
                self._failed[key] = str(exc)
                raise
        return self._cache[key]

    # --- models and inputs --------------------------------------------------------------------
    def flow_cpu(self, arch: str, role: str, dim: int):
        return self._memo(("flow_cpu", arch, role, dim), lambda: build_nfkd(self.s, arch, role, dim))

    def flow(self, arch: str, role: str, dim: int):
        def build():
            import copy

            f = self.flow_cpu(arch, role, dim)
            return copy.deepcopy(f).to(self.s.device) if self.s.device != "cpu" else f

        return self._memo(("flow", arch, role, dim), build)

    def folded(self, arch: str, role: str, dim: int):
        from nfkd.fold import fold

        return self._memo(("folded", arch, role, dim), lambda: fold(self.flow(arch, role, dim)))

    def params(self, case: Case) -> int:
        if case.backend in PEERS:
            return num_params(self.peer(case.backend, case.role, case.dim))
        return self.flow_cpu(case.arch, case.role, case.dim).num_parameters()

    def inputs(self, arch: str, dim: int, batch: int):
        """(torch x on the device, the same x as a float32 numpy array): data-like inputs, one per group."""

        def build():
            import torch

            g = torch.Generator().manual_seed(stable_seed("x", arch, dim, batch))
            if arch == "glow":
                x = torch.rand(batch, *IMAGE_SHAPE, generator=g) - 0.5
            else:
                norm = self.flow_cpu(arch, "teacher", dim).normalize
                x = norm.loc + norm.scale * torch.randn(batch, dim, generator=g)
            x = x.float().contiguous()
            return x.to(self.s.device), x.numpy()

        return self._memo(("x", arch, dim, batch), build)

    # --- exports ------------------------------------------------------------------------------
    def checkpoint(self, arch: str, role: str, dim: int) -> tuple[Path, str]:
        def build():
            import nfkd
            from export.manifest import sha256_file

            folder = self.s.cache / model_name(self.s, arch, role, dim)
            path = folder / "model.pt"
            # safetensors writes header metadata in no fixed order, so the file bytes (which exports
            # are keyed on) differ between processes: keep an existing file of the same model.
            tmp = folder / "model.pt.new"
            nfkd.save(self.flow_cpu(arch, role, dim), tmp, metadata={"dataset": "random (bench)"})
            if path.exists() and _checkpoint_identity(path) == _checkpoint_identity(tmp):
                tmp.unlink()
            else:
                os.replace(tmp, path)
            return path, sha256_file(path)

        return self._memo(("ckpt", arch, role, dim), build)

    def export_dir(self, arch: str, role: str, dim: int) -> Path:
        def build():
            try:
                from export.onnx import _versions, export_onnx
            except Exception as exc:
                raise Unavailable(f"export.onnx cannot be imported: {_first_line(exc)}") from None
            ckpt, sha = self.checkpoint(arch, role, dim)
            out = ckpt.parent / "export"
            if _reusable_export(out, sha, _versions(), max(self.s.batches_for(arch))):
                return out
            t = time.perf_counter()
            try:
                export_onnx(ckpt, out, parity_batches=(1, 7))
            except Exception as exc:
                raise Unavailable(f"ONNX export failed: {_first_line(exc)}") from None
            self.export_seconds[model_name(self.s, arch, role, dim)] = time.perf_counter() - t
            return out

        return self._memo(("export", arch, role, dim), build)

    def ort(self, arch: str, role: str, dim: int):
        def build():
            try:
                import onnxruntime as ort
            except Exception as exc:
                raise Unavailable(f"onnxruntime cannot be imported: {_first_line(exc)}") from None
            if self.s.device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
                raise Unavailable("ONNX Runtime has no CUDAExecutionProvider here (install onnxruntime-gpu)")
            from export.runtime import load

            return load(self.export_dir(arch, role, dim), device=self.s.device, intra_op_threads=self.s.threads)

        return self._memo(("ort", arch, role, dim), build)

    def trt(self, arch: str, role: str, dim: int):
        def build():
            import importlib.util

            import torch

            if self.s.device != "cuda" or not torch.cuda.is_available():
                raise Unavailable("TensorRT runs on CUDA GPUs only (run with --bench-device cuda on a GPU)")
            if importlib.util.find_spec("tensorrt") is None:
                raise Unavailable("tensorrt is not installed (pip install 'nfkd[gpu]')")
            from export.runtime import load
            from export.trt import build_engines

            out = self.export_dir(arch, role, dim)
            ckpt, _ = self.checkpoint(arch, role, dim)
            batches = self.s.batches_for(arch)
            t = time.perf_counter()
            try:
                build_engines(ckpt, out, min_batch=1, opt_batch=sorted(batches)[len(batches) // 2],
                              max_batch=max(batches))
            except Exception as exc:
                raise Unavailable(f"TensorRT engine build failed: {_first_line(exc)}") from None
            self.export_seconds[model_name(self.s, arch, role, dim) + " (tensorrt)"] = time.perf_counter() - t
            return load(out, backend="tensorrt", device="cuda")

        return self._memo(("trt", arch, role, dim), build)

    # --- torch.compile ------------------------------------------------------------------------
    def compiled(self, arch: str, role: str, dim: int, direction: str):
        """A compiled callable: density(x) or sample(n). Compiles at its first call (the warm-up)."""

        def build():
            import torch

            if not hasattr(torch, "compile"):
                raise Unavailable("this torch has no torch.compile")
            folded = self.folded(arch, role, dim)
            if direction == "density":
                fn = torch.compile(folded.log_prob, dynamic=True)

                def density(x):
                    return fn(x)

                return density
            shapes = self.flow(arch, role, dim).noise_shapes
            dev = self.s.device
            if arch == "maf":
                step = self._memo(("maf_pass",), lambda: torch.compile(_maf_pass, dynamic=True))
                blocks = [
                    ([getattr(b, f"w{i}") for i in range(b.n_layers)], [getattr(b, f"b{i}") for i in range(b.n_layers)], b)
                    for b in folded.blocks
                ]

                first = [True]

                def sample_maf(n):
                    h = torch.randn(n, dim, device=dev)
                    for ws, bs, blk in reversed(blocks):
                        u = (h[:, blk.inv_perm] - blk.post_shift) / blk.post_scale
                        x = torch.zeros_like(u)
                        if first[0]:  # compiled with an unbacked batch: one graph for every batch size
                            _mark_batch_dynamic(x, True)
                            _mark_batch_dynamic(u, True)
                            first[0] = False
                        for _ in range(blk.dim):
                            x = step(x, u, ws, bs, blk.alpha_clamp, blk.tanh)
                        h = x
                    return h / folded.inv_scale + folded.loc

                return sample_maf
            fn = torch.compile(folded.sample, dynamic=True)
            first = [arch != "glow"]  # convolutions reject an unbacked batch: images recompile for batch 1

            def sample(n):
                noise = [torch.randn(s, device=dev) for s in shapes(n)]
                if first[0]:
                    for z in noise:
                        _mark_batch_dynamic(z, True)
                    first[0] = False
                return fn(noise)

            return sample

        return self._memo(("compiled", arch, role, dim, direction), build)

    # --- peers --------------------------------------------------------------------------------
    def peer(self, name: str, role: str, dim: int):
        def build():
            cfg = model_config(self.s, "maf", role, dim)
            return build_peer(name, dim, cfg["blocks"], cfg["hidden"], cfg["n_hidden"]).to(self.s.device)

        return self._memo(("peer", name, role, dim), build)

    # --- the timed callables ------------------------------------------------------------------
    def runner(self, case: Case) -> Callable[[], Any]:
        """The zero-argument callable whose time is measured (inputs prepared outside it)."""
        fn = self._density(case) if case.direction == "density" else self._sample(case)
        return _synced(fn, self.s.device)

    def _density(self, c: Case) -> Callable[[], Any]:
        x, xn = self.inputs(c.arch, c.dim, c.batch)
        b = c.backend
        if b == "eager":
            flow = self.flow(c.arch, c.role, c.dim)
            return _no_grad(lambda: flow.log_prob(x))
        if b in ("folded", "triton"):
            flow = self.flow(c.arch, c.role, c.dim)
            return self._dispatch(c, lambda: _fast_log_prob(flow, x))
        if b == "compile":
            fn = self.compiled(c.arch, c.role, c.dim, "density")
            xc = x.clone()
            _mark_batch_dynamic(xc, unbacked=c.arch != "glow")
            return _no_grad(lambda: fn(xc))
        if b == "onnxruntime":
            m = self.ort(c.arch, c.role, c.dim)
            return lambda: m.log_prob(xn)
        if b == "tensorrt":
            m = self.trt(c.arch, c.role, c.dim)
            return lambda: m.log_prob(xn)
        if b == "nflows":
            p = self.peer(b, c.role, c.dim)
            return _no_grad(lambda: p.log_prob(x))
        if b == "zuko":
            p = self.peer(b, c.role, c.dim)
            return _no_grad(lambda: p().log_prob(x))
        raise ValueError(f"unknown backend {b!r}")

    def _sample(self, c: Case) -> Callable[[], Any]:
        n, b = c.batch, c.backend
        if b == "eager":
            flow = self.flow(c.arch, c.role, c.dim)
            return _no_grad(lambda: flow.sample(n))
        if b in ("folded", "triton"):
            flow = self.flow(c.arch, c.role, c.dim)
            return self._dispatch(c, lambda: _fast_sample(flow, n))
        if b == "compile":
            fn = self.compiled(c.arch, c.role, c.dim, "sample")
            return _no_grad(lambda: fn(n))
        if b == "onnxruntime":
            m = self.ort(c.arch, c.role, c.dim)
            return lambda: m.sample(n, 1.0, seed=0)
        if b == "tensorrt":
            m = self.trt(c.arch, c.role, c.dim)
            return lambda: m.sample(n, 1.0, seed=0)
        if b == "nflows":
            p = self.peer(b, c.role, c.dim)
            return _no_grad(lambda: p.sample(n))
        if b == "zuko":
            p = self.peer(b, c.role, c.dim)
            return _no_grad(lambda: p().sample((n,)))
        raise ValueError(f"unknown backend {b!r}")

    def _dispatch(self, c: Case, fn: Callable[[], Any]) -> Callable[[], Any]:
        from kernels.dispatch import kernels_enabled, use_kernels

        if c.backend == "triton":
            if self.s.device != "cuda":
                raise Unavailable("the Triton kernels run on CUDA GPUs only (CPU: see the folded backend)")
            try:
                with use_kernels(None):
                    ok = kernels_enabled("cuda")
            except Exception as exc:
                raise Unavailable(f"Triton kernels unavailable: {_first_line(exc)}") from None
            if not ok:
                raise Unavailable("Triton kernels unavailable here (triton missing, or NFKD_KERNELS=0)")
        flag = c.backend == "triton"

        def run():
            with use_kernels(flag):
                return fn()

        return run

    # --- checks and bookkeeping ---------------------------------------------------------------
    def check_density(self, c: Case, fn: Callable[[], Any]) -> float | None:
        """Max relative deviation of a density backend from the eager flow on this batch (first 64 rows
        compared; a wiring error shows as a large value). Peers define other densities: None."""
        if c.backend in PEERS or c.backend == "eager" or c.batch > 4096:  # (one more call: not at the largest batch)
            return None
        import numpy as np
        import torch

        key = ("ref", c.arch, c.role, c.dim, c.batch)
        if key not in self._cache:
            x, _ = self.inputs(c.arch, c.dim, c.batch)
            flow = self.flow(c.arch, c.role, c.dim)
            with torch.no_grad():
                self._cache[key] = flow.log_prob(x[:64]).double().cpu().numpy()
        ref = self._cache[key]
        out = fn()
        got = (out.detach().double().cpu().numpy() if hasattr(out, "detach") else np.asarray(out, np.float64))[:64]
        return float(np.max(np.abs(got - ref) / np.maximum(1.0, np.abs(ref))))

    def predict(self, c: Case) -> float | None:
        """Seconds per call predicted from the same series at its previous (smaller) batch, linearly;
        only from a batch of at least 256 (small batches are dominated by per-call overhead)."""
        last = self._last.get(c.series)
        if not last or last[0] >= c.batch or last[0] < 256:
            return None
        return last[1] * c.batch / last[0]

    def remember(self, c: Case, seconds: float) -> None:
        self._last[c.series] = (c.batch, seconds)


def _fast_log_prob(flow, x):
    from kernels.dispatch import fast_log_prob

    return fast_log_prob(flow, x)


def _fast_sample(flow, n: int):
    from kernels.dispatch import fast_sample

    return fast_sample(flow, n=n)


def _checkpoint_identity(path: Path) -> tuple | None:
    """(arch, config, tensor sha256, parameters) from a checkpoint's safetensors header, or None."""
    import json
    import struct

    try:
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            meta = json.loads(f.read(n)).get("__metadata__") or {}
    except Exception:
        return None
    keys = ("format", "format_version", "arch", "config", "metadata", "tensor_sha256", "sha256", "num_parameters")
    return tuple(meta.get(k) for k in keys)


def _reusable_export(out: Path, sha: str, versions: dict, max_batch: int) -> bool:
    """An export of this very checkpoint by the same torch / onnx / onnxruntime / nfkd, intact."""
    from export.manifest import Manifest, sha256_file

    if not (out / "manifest.json").exists():
        return False
    try:
        m = Manifest.load(out)
    except Exception:
        return False
    if m.source.get("sha256") != sha or m.fp16 or m.max_batch < max_batch or m.versions != versions:
        return False
    for g in m.graphs.values():
        p = out / g["file"]
        if not p.exists() or sha256_file(p) != g["sha256"]:
            return False
    return True


# ------------------------------------------------------------------------------------- measurement
@dataclass
class Plan:
    rounds: int
    iterations: int
    first_call_s: float
    estimate_s: float


def plan_rounds(settings: Settings, fn: Callable[[], Any], clock=time.perf_counter, compiles: bool = False) -> Plan:
    """Warm up (one call; a second, timed, call when the first was short or compiled) and size the
    measurement: iterations so that a round lasts about ``round_target_s``, rounds to fill
    ``budget_s`` within [min_rounds, max_rounds], at most ``long_rounds`` for calls longer than
    ``long_call_s``."""
    t0 = clock()
    fn()
    first = clock() - t0
    est = first
    if first < 0.5 or compiles:
        t0 = clock()
        fn()
        est = clock() - t0
    est = max(est, 1e-7)
    iterations = max(1, min(1000, int(settings.round_target_s / est))) if est < settings.round_target_s else 1
    rounds = int(settings.budget_s / (est * iterations))
    rounds = max(settings.min_rounds, min(settings.max_rounds, rounds))
    if est >= settings.long_call_s:
        rounds = max(1, min(rounds, settings.long_rounds))
    return Plan(rounds=rounds, iterations=iterations, first_call_s=first, estimate_s=est)


def machine_info(settings: Settings) -> dict[str, Any]:
    import platform

    import torch

    info: dict[str, Any] = {
        "bench_mode": settings.mode,
        "bench_device": settings.device,
        "bench_threads": settings.threads,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "presets": dict(settings.presets),
    }
    from importlib import metadata

    for dist in ("onnxruntime", "onnxruntime-gpu", "numpy", "nflows", "zuko", "tensorrt", "triton", "pytest-benchmark"):
        with contextlib.suppress(Exception):
            info[dist.replace("-gpu", "")] = metadata.version(dist)
    if settings.device == "cuda":
        with contextlib.suppress(Exception):
            info["gpu"] = torch.cuda.get_device_name(0)
    return info


__all__ = [
    "BACKENDS", "Case", "FULL", "QUICK", "Plan", "Registry", "Settings", "Unavailable", "cases", "group_name",
    "machine_info", "plan_rounds", "replace",
]
