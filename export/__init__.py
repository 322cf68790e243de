"""Export of trained flows for production: ONNX graphs (parity-gated), TensorRT engines, runtimes.

    python -m export.onnx student.pt -o out/            # density.onnx, sample.onnx, manifest.json
    python -m export.check out/density.onnx --target tensorrt
    python -m export.trt student.pt -o out/ --fp16      # density.plan, sample.plan (needs TensorRT + GPU)

    from export import runtime
    m = runtime.load("out/")                            # ONNX Runtime, CPU
    m.log_prob(x); m.sample(1000, temperature=0.8, seed=0)

Everything is traced from ``nfkd.fold.fold(flow)``, the one inference form.
"""
from __future__ import annotations

__all__ = ["Manifest", "check_tensorrt_compat", "export_onnx", "load"]

_LAZY = {
    "Manifest": ("manifest", "Manifest"),
    "check_tensorrt_compat": ("check", "check_tensorrt_compat"),
    "export_onnx": ("onnx", "export_onnx"),
    "load": ("runtime", "load"),
}


def __getattr__(name: str):
    # Lazy, so that `python -m export.<module>` runs cleanly and `import export` stays cheap.
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{mod}", __name__), attr)
    raise AttributeError(f"module 'export' has no attribute {name!r}")
