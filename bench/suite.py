"""What the benchmark suite runs: settings, cases, models, backends and the calibrated measurement.

Kept apart from ``conftest.py`` so that it can be imported (and unit-tested) without pytest.

Backends (``all_backends()``), all measured through the API a user calls:

- nfkd's own (``nfkd_backends()``: every backend of ``nfkd.inference.registry``, so a new one is
  measured without a change here): ``nfkd.inference.load(checkpoint, backend=...)`` then ``runner.log_prob(x)`` /
  ``runner.sample(n, seed=0)`` -- the one door, so the suite measures exactly what users run
  (exports are parity-gated and cached by checkpoint hash under ``--bench-cache``);
- ``nflows`` / ``zuko``: the same MAF (D, blocks, hidden, n_hidden, reversed orders) built with
  those libraries, as an outside reference (MAF only; ``flow.log_prob`` / ``flow.sample`` and
  ``flow().log_prob`` / ``flow().sample``).

Every nfkd row is checked against the eager float64 flow on every row of its batch, at the export
gate's float32 tolerances (``export.parity.TOLERANCE``): log-densities and, since every backend
draws its noise from ``numpy.random.default_rng(seed)``, samples too.

Sampling times include drawing the noise (nfkd: numpy's generator; peers: torch's).
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

PEERS = ("nflows", "zuko")
ROLES = ("teacher", "student")
DIRECTIONS = ("density", "sample")
ARCHS = ("glow1d", "maf", "glow")
PAPER_DIMS = (6, 8, 21, 43, 63)  # the paper's five tabular datasets (power, gas, hepmass, miniboone, bsds300)
IMAGE_SHAPE = (3, 32, 32)

DEFAULT_PRESETS = {"glow1d": "glow1d-paper", "maf": "maf-paper", "glow": "glow-cpu"}
GPU_IMAGE_PRESET = "glow-cifar10-paper"
TABULAR_PERTURB, IMAGE_PERTURB = 0.05, 0.01  # keep random flows well conditioned (finite samples)
PEER_ARCH = "maf"  # what the peers (nflows, zuko) implement: their rows are MAF rows


def is_image(arch: str) -> bool:
    """Image flows bench at IMAGE_SHAPE, tabular ones at each D: the flow class says (``Flow.tabular``)."""
    from nfkd.flows import flow_class

    return not flow_class(arch).tabular


class Unavailable(Exception):
    """A backend / model that cannot run here; the test is skipped with this message."""


# ---------------------------------------------------------------------------------------- backends
def _registry() -> dict:
    from nfkd.inference.registry import BACKENDS

    return BACKENDS


def nfkd_backends() -> tuple[str, ...]:
    """nfkd's backends, read from the registry when asked (a backend registered later is included)."""
    return tuple(_registry())


def all_backends() -> tuple[str, ...]:
    return (*nfkd_backends(), *PEERS)


def default_backends(full: bool) -> tuple[str, ...]:
    """Quick runs leave out backends that compile every model on first call (minutes of warm-up)."""
    return tuple(b for b in all_backends() if full or b in PEERS or not _registry()[b].compiles_per_model)


def compiles_per_model(backend: str) -> bool:
    spec = _registry().get(backend)
    return bool(spec and spec.compiles_per_model)


def __getattr__(name: str):  # the old constants, live
    if name == "BACKENDS":
        return all_backends()
    if name == "NFKD_BACKENDS":
        return nfkd_backends()
    raise AttributeError(name)


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
    backends: tuple[str, ...] | None = None  # None: default_backends(mode == "full"), read when used
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

    @property
    def backend_list(self) -> tuple[str, ...]:
        return self.backends if self.backends is not None else default_backends(self.mode == "full")

    def dims_for(self, arch: str) -> tuple[int, ...]:
        return (math.prod(IMAGE_SHAPE),) if is_image(arch) else self.dims

    def batches_for(self, arch: str) -> tuple[int, ...]:
        return self.image_batches if is_image(arch) else self.batches

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
    export_roles=ROLES, compile_models="all", budget_s=1.0, min_rounds=3,
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
    specs = _registry()
    for arch in settings.archs:
        for dim in settings.dims_for(arch):
            for batch in settings.batches_for(arch):
                for backend in settings.backend_list:
                    spec = specs.get(backend)
                    if (backend in PEERS and arch != PEER_ARCH) or (spec is not None and not spec.runs(arch)):
                        continue
                    if spec is not None and spec.compiles_per_model and not settings.compiles(arch, dim):
                        continue
                    for role in settings.roles:
                        if spec is not None and spec.runs_exports and role not in settings.export_roles:
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
    if is_image(arch):
        cfg["in_shape"] = list(IMAGE_SHAPE)
    else:
        cfg["dim"] = dim
    return cfg


def model_name(settings: Settings, arch: str, role: str, dim: int) -> str:
    shape = "x".join(map(str, IMAGE_SHAPE)) if is_image(arch) else f"d{dim}"
    return f"{settings.presets[arch]}-{role}-{shape}"


def build_nfkd(settings: Settings, arch: str, role: str, dim: int):
    """A deterministic random flow of a preset (float32, eval, on CPU); tabular ones get a
    non-trivial data normalization, shared by teacher and student."""
    import torch

    from nfkd.flows import build_flow

    cfg = model_config(settings, arch, role, dim)
    torch.manual_seed(stable_seed(arch, role, dim, settings.presets[arch]))
    flow = build_flow(arch, **cfg)
    if not is_image(arch):
        g = torch.Generator().manual_seed(stable_seed("data", arch, dim))
        flow.normalize.set(2 * torch.randn(dim, generator=g), torch.rand(dim, generator=g) + 0.5)
    scale = IMAGE_PERTURB if is_image(arch) else TABULAR_PERTURB
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

    def params(self, case: Case) -> int:
        if case.backend in PEERS:
            return num_params(self.peer(case.backend, case.role, case.dim))
        return self.flow_cpu(case.arch, case.role, case.dim).num_parameters()

    def inputs(self, arch: str, dim: int, batch: int):
        """(torch x on the device, the same x as a float32 numpy array): data-like inputs, one per group."""

        def build():
            import torch

            g = torch.Generator().manual_seed(stable_seed("x", arch, dim, batch))
            if is_image(arch):
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

    def nfkd(self, backend: str, arch: str, role: str, dim: int):
        """``nfkd.inference.load`` of this model's checkpoint on a backend (exports cached by hash)."""

        def build():
            from nfkd import inference
            from nfkd.errors import NfkdError

            ckpt, _ = self.checkpoint(arch, role, dim)
            t = time.perf_counter()
            try:
                runner = inference.load(ckpt, backend=backend, device=self.s.device, threads=self.s.threads,
                                        cache_dir=self.s.cache / "exports")
            except NfkdError as exc:
                raise Unavailable(f"{backend}: {_first_line(exc)}") from None
            if _registry()[backend].runs_exports:
                self.export_seconds[f"{model_name(self.s, arch, role, dim)} ({backend})"] = time.perf_counter() - t
            return runner

        return self._memo(("nfkd", backend, arch, role, dim), build)

    # --- peers --------------------------------------------------------------------------------
    def peer(self, name: str, role: str, dim: int):
        def build():
            cfg = model_config(self.s, PEER_ARCH, role, dim)
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
        if b in _registry():
            r = self.nfkd(b, c.arch, c.role, c.dim)
            inp = xn if _registry()[b].native == "numpy" else x  # numpy in, numpy out: no conversion timed
            return lambda: r.log_prob(inp)
        if b == "nflows":
            p = self.peer(b, c.role, c.dim)
            return _no_grad(lambda: p.log_prob(x))
        if b == "zuko":
            p = self.peer(b, c.role, c.dim)
            return _no_grad(lambda: p().log_prob(x))
        raise ValueError(f"unknown backend {b!r}")

    def _sample(self, c: Case) -> Callable[[], Any]:
        n, b = c.batch, c.backend
        if b in _registry():
            r = self.nfkd(b, c.arch, c.role, c.dim)
            return lambda: r.sample(n, temperature=1.0, seed=0)
        if b == "nflows":
            p = self.peer(b, c.role, c.dim)
            return _no_grad(lambda: p.sample(n))
        if b == "zuko":
            p = self.peer(b, c.role, c.dim)
            return _no_grad(lambda: p().sample((n,)))
        raise ValueError(f"unknown backend {b!r}")

    # --- checks and bookkeeping ---------------------------------------------------------------
    def deviation(self, c: Case, fn: Callable[[], Any]) -> float | None:
        """Worst error of this row's output against the eager float64 flow, as a multiple of the export
        gate's float32 tolerance (<= 1 passes): every row of the batch, density or samples (same seed,
        same noise). Peers define other densities and draw other noise: None."""
        if c.backend in PEERS:
            return None
        import numpy as np
        import torch

        from export.parity import TOLERANCE
        from nfkd.inference import draw_noise

        tol = TOLERANCE["float32"]
        key = ("ref", c.direction, c.arch, c.role, c.dim, c.batch)
        if key not in self._cache:
            flow = self.flow_cpu(c.arch, c.role, c.dim)
            ref64 = self._memo(("ref64", c.arch, c.role, c.dim), lambda: _float64_copy(flow))
            with torch.no_grad():
                if c.direction == "density":
                    x, _ = self.inputs(c.arch, c.dim, c.batch)
                    ref = ref64.log_prob(x.cpu().double())
                else:
                    noise = draw_noise([s[1:] for s in flow.noise_shapes(1)], c.batch, 0)
                    ref = ref64.sample(c.batch, temperature=1.0, noise=[torch.from_numpy(z).double() for z in noise])
            self._cache[key] = ref.numpy()
        ref = self._cache[key]
        out = fn()
        got = out.detach().double().cpu().numpy() if hasattr(out, "detach") else np.asarray(out, np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            if c.direction == "density":
                ratio = np.abs(got - ref) / np.maximum(1.0, np.abs(ref)) / tol["log_prob_rel"]
            else:
                ratio = np.abs(got - ref) / (tol["sample_abs"] + tol["sample_rel"] * np.abs(ref))
        ratio = np.where(np.isfinite(ref), ratio, 0.0)  # rows where float64 itself overflows: not compared
        return float(np.nan_to_num(ratio, nan=np.inf).max())

    def roofline(self) -> dict[str, float]:
        """The machine's float32 matmul peak and copy bandwidth, 1 thread and the run's threads (once per run)."""
        from .roofline import copy_bandwidth_gbs, matmul_peak_gflops

        def build():
            t = self.s.threads
            return {"threads": t, "peak_gflops_1t": matmul_peak_gflops(1), "peak_gflops": matmul_peak_gflops(t),
                    "copy_gbs_1t": copy_bandwidth_gbs(1), "copy_gbs": copy_bandwidth_gbs(t)}

        return self._memo(("roofline",), build)

    def useful_flops(self, c: Case) -> int:
        """FLOPs of this call without a MADE's masked multiply-adds (``bench.roofline.useful_flops``)."""
        from .roofline import useful_flops

        arch = PEER_ARCH if c.backend in PEERS else c.arch
        return self._memo(("useful_flops", arch, c.role, c.dim, c.batch, c.direction),
                          lambda: useful_flops(self.flow_cpu(arch, c.role, c.dim), c.batch, c.direction))

    def predict(self, c: Case) -> float | None:
        """Seconds per call predicted from the same series at its previous (smaller) batch, linearly;
        only from a batch of at least 256 (small batches are dominated by per-call overhead)."""
        last = self._last.get(c.series)
        if not last or last[0] >= c.batch or last[0] < 256:
            return None
        return last[1] * c.batch / last[0]

    def remember(self, c: Case, seconds: float) -> None:
        self._last[c.series] = (c.batch, seconds)


def _float64_copy(flow):
    import copy

    import torch

    return copy.deepcopy(flow).to("cpu", dtype=torch.float64).eval()


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

    for dist in ("onnxruntime", "onnxruntime-gpu", "numpy", "numba", "nflows", "zuko", "tensorrt", "triton",
                 "pytest-benchmark"):
        with contextlib.suppress(Exception):
            info[dist.replace("-gpu", "")] = metadata.version(dist)
    if settings.device == "cuda":
        with contextlib.suppress(Exception):
            info["gpu"] = torch.cuda.get_device_name(0)
    return info


__all__ = [
    "Case", "FULL", "QUICK", "Plan", "Registry", "Settings", "Unavailable", "all_backends", "cases",
    "compiles_per_model", "default_backends", "group_name", "nfkd_backends",
    "machine_info", "plan_rounds", "replace",
]
