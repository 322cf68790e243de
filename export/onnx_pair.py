"""ONNX export of a pair bundle: ``density.onnx`` from the density model, ``sample.onnx`` from the sampler.

    python -m export.onnx bundle/ -o bundle-onnx/        # a folder written by python -m nfkd pair

Each graph is traced from its own model's folded form and gated by parity against that model's
eager float64 flow (``export.parity`` with one direction each), so neither sequential direction
(MAF sampling, IAF density) is exported at all. The result is an ordinary export folder: one
``manifest.json`` whose ``graphs[name]["source"]`` names the checkpoint each graph came from and
whose ``source["pair"]`` carries both hashes and the bundle's faithfulness record, so
``nfkd.inference.load(folder, backend="onnxruntime")`` (and ``nfkd serve``) run it like any export.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from nfkd.inference.bundle import read_bundle
from nfkd.inference.pair import PAIR_ARCH, check_compatible
from nfkd.inference.runner import ModelMeta
from nfkd.inference.sources import ModelSource

from . import parity
from .artifacts import staged_folder
from .manifest import Manifest
from .onnx import (
    DEFAULT_MAX_BATCH,
    DENSITY_FILE,
    SAMPLE_FILE,
    STALE_ON_REEXPORT,
    _graph_entries,
    _latent_layout,
    _opset_of,
    _save_graph,
    build_graphs,
    checked_batches,
    ort_runners,
    provenance,
)

__all__ = ["export_pair_onnx", "pair_summary"]

GRAPH_ROLE = {"density": "density", "sample": "sampler"}  # graph name -> the bundle role it is traced from


def _gate_one(flow, blobs: dict[str, bytes], n_levels: int, graph: str, fp16: bool,
              batches: Sequence[int]) -> dict[str, Any]:
    from nfkd.errors import ExportError

    try:
        density, sample = ort_runners(blobs["density"], blobs["sample"], n_levels)
    except Exception as exc:
        raise ExportError(f"ONNX Runtime cannot load the exported graphs: {str(exc).strip().splitlines()[0]}") from exc
    try:
        return parity.check_parity(flow, density, sample, fp16=fp16, batches=batches, directions=(graph,))
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"parity gate could not run the {graph} graph in ONNX Runtime: "
                          f"{str(exc).strip().splitlines()[0]}") from exc


def _merged_parity(res: dict[str, dict[str, Any]], roles: dict[str, str]) -> dict[str, Any]:
    """One parity record in the single-model layout (what summaries and runtimes read), per graph inside."""
    d, s = res["density"], res["sample"]
    out = {k: v for k, v in d.items() if k not in ("per_batch", "directions", "reference")}
    out.update({k: v for k, v in s.items() if k.startswith("sample_")})
    out["passed"] = bool(d["passed"] and s["passed"])
    out["reference"] = (f"eager PyTorch float64: the density graph against {roles['density']}, the sampling graph "
                        f"against {roles['sample']}")
    out["per_graph"] = res
    return out


def _pair_graphs(flows: dict[str, Any], fp16: bool, opset: int | None, maf_sampling: str,
                 max_batch: int) -> tuple[dict[str, Any], str | None, list[str]]:
    """Each graph traced from its own model: (models, the sequential direction's form if one is exported, notes)."""
    models, modes, notes = {}, {}, []
    for graph, role in GRAPH_ROLE.items():
        built, modes[graph], n = build_graphs(flows[role], fp16=fp16, opset=opset, maf_sampling=maf_sampling,
                                              max_batch=max_batch, which=(graph,))
        models[graph] = built[graph]
        notes += [f"{graph} graph: {x}" for x in n]
    return models, modes["density"] or modes["sample"], notes  # neither for a MAF density + IAF sampler


def _pair_manifest(b: Any, flows: dict[str, Any], models: dict[str, Any], blobs: dict[str, bytes],
                   merged: dict[str, Any], sequential: str | None, fp16: bool, max_batch: int) -> Manifest:
    """The single-model manifest layout, with each graph's source checkpoint and the bundle's record."""
    ck = b.checkpoints
    density, sampler = flows["density"], flows["sampler"]
    graphs = {}
    for graph, role in GRAPH_ROLE.items():
        entry = _graph_entries(flows[role], {graph: models[graph]}, blobs)[graph]
        entry["source"] = {"role": role, "checkpoint": b.record["files"][role]["file"], "sha256": ck[role].sha256,
                           "arch": flows[role].arch}
        graphs[graph] = entry
    sides = {role: {"checkpoint": b.record["files"][role]["file"], "sha256": ck[role].sha256,
                    "arch": flows[role].arch, "config": dict(ck[role].config)} for role in GRAPH_ROLE.values()}
    return Manifest(
        arch=PAIR_ARCH, config={role: {"arch": s["arch"], "config": s["config"]} for role, s in sides.items()},
        event_shape=list(density.event_shape), noise_shapes=[list(s[1:]) for s in sampler.noise_shapes(1)],
        latent_layout=_latent_layout(density), dim=int(density.dim), max_batch=int(max_batch),
        opset=_opset_of(models["density"]), fp16=bool(fp16), maf_sampling=sequential, graphs=graphs,
        source={"checkpoint": b.folder.name, "sha256": b.record["pair_sha256"],
                "pair": {**sides, "faithfulness": b.record.get("faithfulness")}},
        parity=merged, **provenance(fp16),
    )


def export_pair_onnx(
    bundle: str | os.PathLike,
    out_dir: str | os.PathLike,
    fp16: bool = False,
    opset: int | None = None,
    maf_sampling: str = "auto",
    *,
    max_batch: int = DEFAULT_MAX_BATCH,
    parity_batches: Sequence[int] | None = None,
) -> Manifest:
    """Export a pair bundle to ``out_dir/{density,sample}.onnx`` + ``manifest.json``, each graph parity-gated."""
    b = read_bundle(bundle)  # file names and hashes checked
    ck = b.checkpoints
    flows = {role: c.flow.eval() for role, c in ck.items()}
    check_compatible(*(ModelSource(ModelMeta.of_flow(c.flow, c.sha256), flow=c.flow, metadata=dict(c.metadata))
                       for c in (ck["density"], ck["sampler"])))
    parity_batches = checked_batches(max_batch, parity_batches)
    models, sequential, notes = _pair_graphs(flows, fp16, opset, maf_sampling, max_batch)
    files = {"density": DENSITY_FILE, "sample": SAMPLE_FILE}
    n_levels = len(flows["sampler"].noise_shapes(1))
    with staged_folder(Path(out_dir), stale=STALE_ON_REEXPORT) as tmp:
        blobs = {}
        for graph, model in models.items():
            _save_graph(model, tmp / files[graph])
            blobs[graph] = (tmp / files[graph]).read_bytes()  # the exact bytes that are gated and hashed
        res = {graph: _gate_one(flows[role], blobs, n_levels, graph, fp16, parity_batches)
               for graph, role in GRAPH_ROLE.items()}
        roles = {g: f"{b.record['files'][r]['file']} ({flows[r].arch})" for g, r in GRAPH_ROLE.items()}
        merged = _merged_parity(res, roles)
        if notes:
            merged["notes"] = notes
        manifest = _pair_manifest(b, flows, models, blobs, merged, sequential, fp16, max_batch)
        manifest.save(tmp)
    return manifest


def pair_summary(manifest: Manifest, out_dir: Path) -> str:
    p, t, pair = manifest.parity, manifest.tolerance, manifest.source["pair"]
    return (
        f"exported the pair to {out_dir}: density.onnx from {pair['density']['checkpoint']} ({pair['density']['arch']}), "
        f"sample.onnx from {pair['sampler']['checkpoint']} ({pair['sampler']['arch']}), manifest.json; opset "
        f"{manifest.opset}{', fp16' if manifest.fp16 else ''}; parity vs each model's eager float64 at batches "
        f"{p['batches']}: log_prob rel err {p['log_prob_max_rel_err']:.2g} (tol {t['log_prob_rel']:g}), sample abs err "
        f"{p['sample_max_abs_err']:.2g} (tol {t['sample_abs']:g} + {t['sample_rel']:g}*|x|)"
    )
