"""The parity gate: an exported graph must reproduce the EAGER PyTorch flow before it is kept.

Reference: the original (unfolded) flow, in float64, evaluated at exactly the float32 inputs the
graph received. Held-out inputs:

- density: tabular flows get x drawn from the flow itself (eager, float64, temperature 1, fixed
  seed); image flows get x ~ U[-0.5, 0.5] (the dequantized pixel range);
- sampling: fresh standard-normal noise for every level (fixed seed) at temperature 0.8, so the
  ``temperature`` input is exercised too. Rows where the float64 flow itself overflows (a
  badly conditioned inverse) are not compared and are counted in ``sample_rows_skipped``.

Far-out inputs (anomaly scoring lives there): the held-out rows pushed away from their mean by x2,
x5 and x10, and rows with one extreme coordinate (mean +- 20 standard deviations). Their log-density
must be finite wherever the eager float64 flow's is (and representable in float32); values are
not compared there, since float32 round-off grows with the distance.

Tolerances (documented; the gate fails when any is exceeded):

=========  ==============================================  ===============================
float32    log_prob: |got - ref| / max(1, |ref|) <= 1e-4   latent, sample: |got - ref| <=
                                                           1e-3 + 1e-3 * |ref|
float16    log_prob: |got - ref| / max(1, |ref|) <= 1e-2   latent, sample: |got - ref| <=
                                                           5e-2 + 5e-2 * |ref|
=========  ==============================================  ===============================

float16 numbers are measured on every export and stored in the manifest; on small test models
the measured float16 log_prob error is ~1e-3 relative and the sample error ~1e-2 (see
export/README.md). ONNX Runtime's CPU provider runs some float16 nodes through inserted Casts to
float32, so CPU-measured float16 error can understate what a GPU's native half kernels produce;
``export.trt`` re-runs the gate on the GPU for the engines it builds.
"""
from __future__ import annotations

import copy
from typing import Callable, Sequence

import numpy as np
import torch

from nfkd.errors import ExportError
from nfkd.flows import Flow
from nfkd.flows.base import standard_normal_logpdf

__all__ = [
    "DEFAULT_BATCHES", "DIRECTIONS", "PARITY_SEED", "PARITY_TEMPERATURE", "TOLERANCE", "TOLERANCE_DEFINITION",
    "check_parity", "far_out_inputs", "far_out_failures", "held_out_inputs", "measure", "reference_outputs", "tolerance_for",
]

DensityRunner = Callable[[np.ndarray], "tuple[np.ndarray, np.ndarray]"]
SampleRunner = Callable[[Sequence[np.ndarray], float], np.ndarray]

TOLERANCE: dict[str, dict[str, float]] = {
    "float32": {"log_prob_rel": 1e-4, "latent_abs": 1e-3, "latent_rel": 1e-3, "sample_abs": 1e-3, "sample_rel": 1e-3},
    "float16": {"log_prob_rel": 1e-2, "latent_abs": 5e-2, "latent_rel": 5e-2, "sample_abs": 5e-2, "sample_rel": 5e-2},
}
TOLERANCE_DEFINITION = (
    "log_prob: max |got - ref| / max(1, |ref|) <= log_prob_rel; latent and sample: "
    "|got - ref| <= abs + rel * |ref| elementwise; ref = eager PyTorch float64 on the original flow"
)
DEFAULT_BATCHES = (1, 7, 128)
PARITY_TEMPERATURE = 0.8
PARITY_SEED = 20240601
DIRECTIONS = ("density", "sample")


def tolerance_for(fp16: bool) -> dict[str, float]:
    return dict(TOLERANCE["float16" if fp16 else "float32"])


def _reference_flow(flow: Flow) -> Flow:
    ref = copy.deepcopy(flow).to("cpu", torch.float64).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def held_out_inputs(ref: Flow, batch: int, seed: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """x (density) and one noise array per level (sampling), float32, reproducible from seed."""
    g = torch.Generator().manual_seed(seed)
    if len(ref.event_shape) == 1:
        with torch.no_grad():
            x = ref.sample(batch, temperature=1.0, generator=g)
        if not bool(torch.isfinite(x).all()):  # a badly trained flow can overflow; stay finite
            x = torch.randn(batch, *ref.event_shape, generator=g, dtype=torch.float64)
    else:
        x = torch.rand(batch, *ref.event_shape, generator=g, dtype=torch.float64) - 0.5
    noise = [torch.randn(s, generator=g, dtype=torch.float64) for s in ref.noise_shapes(batch)]
    return x.float().numpy(), [z.float().numpy() for z in noise]


def reference_outputs(
    ref: Flow, x: np.ndarray, noise: Sequence[np.ndarray], temperature: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eager float64 log_prob, flattened latents and samples at exactly the given inputs."""
    with torch.no_grad():
        x64 = torch.from_numpy(np.asarray(x, np.float64))
        out = ref(x64)
        same = type(ref).log_prob is Flow.log_prob and type(ref).log_prob_unchecked is Flow.log_prob_unchecked
        if same:  # the protocol's log_prob (Flow.log_prob_unchecked), from this same forward pass
            lp = sum(standard_normal_logpdf(z) for z in out.latents) + out.logdet
        else:  # an architecture with its own log_prob: call it
            lp = ref.log_prob(x64)
        latent = torch.cat([z.flatten(1) for z in out.latents], 1)
        z64 = [torch.from_numpy(np.asarray(z, np.float64)) for z in noise]
        xs = ref.sample(z64[0].shape[0], temperature=temperature, noise=z64)
    return lp.numpy(), latent.numpy(), xs.numpy()


FAR_OUT_FACTORS = (2.0, 5.0, 10.0)
FAR_OUT_SIGMAS = 20.0
FAR_OUT_COORDS = 8  # single-coordinate outliers for the first few features


def far_out_inputs(x: np.ndarray) -> np.ndarray:
    """Rows far from the held-out data: scaled about its mean, and single extreme coordinates."""
    flat = np.asarray(x, np.float64).reshape(x.shape[0], -1)
    mean = flat.mean(0)
    std = flat.std(0) if flat.shape[0] > 1 else np.ones_like(mean)
    std = np.where(std > 0, std, 1.0)
    rows = [mean + k * (flat - mean) for k in FAR_OUT_FACTORS]
    for j in range(min(FAR_OUT_COORDS, flat.shape[1])):
        for sign in (1.0, -1.0):
            r = mean.copy()
            r[j] += sign * FAR_OUT_SIGMAS * std[j]
            rows.append(r[None])
    return np.concatenate(rows, 0).reshape(-1, *x.shape[1:]).astype(np.float32)


def far_out_failures(ref: Flow, density: DensityRunner, x: np.ndarray) -> tuple[int, int]:
    """(rows checked, rows where the graph's log_prob is non-finite but the eager float64 one is finite)."""
    far = far_out_inputs(x)
    with torch.no_grad():
        lp_ref = ref.log_prob(torch.from_numpy(far.astype(np.float64))).numpy()
    lp = np.asarray(density(far)[0], np.float64)
    must = np.isfinite(lp_ref) & (np.abs(lp_ref) < 1e30)
    return int(must.sum()), int((must & ~np.isfinite(lp)).sum())


def _finite_rows(ref: np.ndarray) -> np.ndarray:
    return np.isfinite(ref.reshape(ref.shape[0], -1)).all(1)


def _ratio(got: np.ndarray, ref: np.ndarray, abs_tol: float, rel_tol: float, what: str) -> tuple[float, float, int]:
    """(max abs error, max error / allowed, rows skipped) over the rows where the float64 reference is
    finite; a non-finite graph output there counts as infinitely wrong."""
    got = np.asarray(got, np.float64)
    if got.shape != ref.shape:
        raise ExportError(f"{what} output has shape {got.shape}; the eager flow gives {ref.shape}")
    keep = _finite_rows(ref)
    if not keep.any():
        raise ExportError(
            f"the eager float64 flow itself gives non-finite {what} for every held-out row; the model is "
            f"numerically broken, parity cannot be checked"
        )
    got, ref = got[keep], ref[keep]
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(got - ref)
    err = np.where(np.isfinite(err), err, np.inf)
    return float(err.max()), float((err / (abs_tol + rel_tol * np.abs(ref))).max()), int((~keep).sum())


def measure(
    flow: Flow,
    density: DensityRunner | None,
    sample: SampleRunner | None,
    tol: dict[str, float],
    batches: Sequence[int] = DEFAULT_BATCHES,
    temperature: float = PARITY_TEMPERATURE,
    seed: int = PARITY_SEED,
    directions: Sequence[str] = DIRECTIONS,
) -> dict:
    """Run each direction (both by default) at each batch size against the eager float64 flow; return the errors.

    ``directions=("density",)`` or ``("sample",)`` gates one graph alone (a pair export takes its
    density graph from one model and its sampling graph from another).
    """
    unknown = set(directions) - set(DIRECTIONS)
    if unknown or not directions:
        raise ExportError(f"parity directions must be a non-empty subset of {DIRECTIONS}, got {list(directions)}")
    ref = _reference_flow(flow)
    rows = []
    for b in batches:
        x, noise = held_out_inputs(ref, int(b), seed + int(b))
        lp_ref, lat_ref, xs_ref = reference_outputs(ref, x, noise, temperature)
        row: dict = {"batch": int(b)}
        if "density" in directions:
            lp, lat = density(x)
            lp = np.asarray(lp, np.float64)
            if lp.shape != lp_ref.shape:
                raise ExportError(f"log_prob output has shape {lp.shape}; expected {lp_ref.shape}")
            with np.errstate(invalid="ignore", over="ignore"):
                lp_err = np.abs(lp - lp_ref) / np.maximum(1.0, np.abs(lp_ref))
            lat_abs, lat_ratio, _ = _ratio(lat, lat_ref, tol["latent_abs"], tol["latent_rel"], "latent")
            row.update(log_prob_max_rel_err=float(np.where(np.isfinite(lp_err), lp_err, np.inf).max()),
                       latent_max_abs_err=lat_abs, latent_err_over_tol=lat_ratio)
        if "sample" in directions:
            xs = sample(noise, temperature)
            xs_abs, xs_ratio, skipped = _ratio(xs, xs_ref, tol["sample_abs"], tol["sample_rel"], "sample")
            row.update(sample_max_abs_err=xs_abs, sample_err_over_tol=xs_ratio, sample_rows_skipped=skipped)
        rows.append(row)
    worst = {k: max(r[k] for r in rows) for k in rows[0] if k not in ("batch", "sample_rows_skipped")}
    passed = True
    if "sample" in directions:
        worst["sample_rows_skipped"] = sum(r["sample_rows_skipped"] for r in rows)
        passed = worst["sample_err_over_tol"] <= 1.0
    if "density" in directions:
        x_far, _ = held_out_inputs(ref, max(int(b) for b in batches), seed)
        worst["far_out_rows"], worst["far_out_nonfinite"] = far_out_failures(ref, density, x_far)
        passed = (passed and worst["log_prob_max_rel_err"] <= tol["log_prob_rel"]
                  and worst["latent_err_over_tol"] <= 1.0 and worst["far_out_nonfinite"] == 0)
    return {
        "passed": bool(passed),
        "reference": "eager PyTorch float64, original (unfolded) flow",
        "temperature": temperature,
        "seed": seed,
        "batches": [int(b) for b in batches],
        **({} if tuple(directions) == DIRECTIONS else {"directions": list(directions)}),
        **worst,
        "per_batch": rows,
    }


def check_parity(
    flow: Flow,
    density: DensityRunner | None,
    sample: SampleRunner | None,
    fp16: bool = False,
    batches: Sequence[int] = DEFAULT_BATCHES,
    runtime: str = "onnxruntime CPUExecutionProvider",
    tol: dict[str, float] | None = None,
    directions: Sequence[str] = DIRECTIONS,
) -> dict:
    """Measure and gate: returns the results, or raises ExportError naming what was off and by how much."""
    tol = dict(tol or tolerance_for(fp16))
    res = measure(flow, density, sample, tol, batches, directions=directions)
    res["runtime"] = runtime
    if not res["passed"]:
        problems = []
        if not res.get("log_prob_max_rel_err", 0.0) <= tol["log_prob_rel"]:
            problems.append(f"log_prob relative error {res['log_prob_max_rel_err']:.3g} > {tol['log_prob_rel']:g}")
        if not res.get("latent_err_over_tol", 0.0) <= 1.0:
            problems.append(
                f"latent error {res['latent_max_abs_err']:.3g} ({res['latent_err_over_tol']:.3g}x the allowed "
                f"{tol['latent_abs']:g} + {tol['latent_rel']:g}*|ref|)"
            )
        if not res.get("sample_err_over_tol", 0.0) <= 1.0:
            problems.append(
                f"sample error {res['sample_max_abs_err']:.3g} ({res['sample_err_over_tol']:.3g}x the allowed "
                f"{tol['sample_abs']:g} + {tol['sample_rel']:g}*|ref|)"
            )
        if res.get("far_out_nonfinite"):
            problems.append(
                f"log_prob is non-finite on {res['far_out_nonfinite']} of {res['far_out_rows']} far-out rows where "
                f"the eager flow's is finite"
            )
        raise ExportError(
            f"parity gate failed on {runtime} ({'float16' if fp16 else 'float32'}) against eager PyTorch float64: "
            + "; ".join(problems)
            + ". Nothing was written."
        )
    return res
