"""export.trt without a GPU: the builder wiring against a recording stand-in for the tensorrt module.

The real engine build and GPU parity need TensorRT and CUDA (run ``python -m export.trt`` on such a
machine); this checks what can be checked here: explicit-batch flags per major version, one
profile over the batch of every dynamic input, FP16 flag, workspace limit, timing cache persisted,
parser errors surfaced as one ExportError.
"""
from __future__ import annotations

import types

import pytest

from export import trt as export_trt
from nfkd.errors import ExportError


class _Enum:
    def __init__(self, **members):
        self.__dict__.update(members)


def fake_trt(version: str, inputs, parse_ok: bool = True, build_ok: bool = True):
    log: dict = {"profiles": [], "flags": [], "pool": None, "cache_in": None}

    class Tensor:
        def __init__(self, name, shape):
            self.name, self.shape = name, shape

    class Network:
        num_inputs = len(inputs)

        def get_input(self, i):
            return Tensor(*inputs[i])

    class Parser:
        num_errors = 0 if parse_ok else 1

        def __init__(self, network, logger):
            pass

        def parse(self, data):
            log["parsed"] = data
            return parse_ok

        def get_error(self, i):
            return "In node 3 (Det): UNSUPPORTED_NODE"

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, lo, opt, hi):
            self.shapes[name] = (lo, opt, hi)

    class Cache:
        def __init__(self, data):
            self.data = data

        def serialize(self):
            return memoryview(b"CACHE:" + self.data)

    class Config:
        def set_memory_pool_limit(self, pool, n):
            log["pool"] = (pool, n)

        def set_flag(self, flag):
            log["flags"].append(flag)

        def add_optimization_profile(self, p):
            log["profiles"].append(p.shapes)

        def create_timing_cache(self, data):
            log["cache_in"] = data
            return Cache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache

        def get_timing_cache(self):
            return self.cache

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            log["network_flags"] = flags
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            return memoryview(b"PLAN") if build_ok else None

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    mod = types.SimpleNamespace(
        __version__=version, Logger=Logger, Builder=Builder, OnnxParser=Parser,
        NetworkDefinitionCreationFlag=_Enum(EXPLICIT_BATCH=0),
        MemoryPoolType=_Enum(WORKSPACE="workspace"), BuilderFlag=_Enum(FP16="fp16"),
    )
    return mod, log


def test_build_engine_trt10_profile_fp16_and_timing_cache(tmp_path):
    trt, log = fake_trt("10.3.0", [("noise_0", (-1, 6, 4, 4)), ("noise_1", (-1, 24, 2, 2)), ("temperature", (1,))])
    cache = tmp_path / "timing.cache"
    plan = export_trt.build_engine(trt, b"onnx", fp16=True, min_batch=1, opt_batch=256, max_batch=4096,
                                   timing_cache=cache, workspace_bytes=1 << 30)
    assert plan == b"PLAN" and log["parsed"] == b"onnx"
    assert log["network_flags"] == 0  # TensorRT 10: networks are explicit-batch, flag deprecated
    assert log["flags"] == ["fp16"] and log["pool"] == ("workspace", 1 << 30)
    assert log["profiles"] == [{
        "noise_0": ((1, 6, 4, 4), (256, 6, 4, 4), (4096, 6, 4, 4)),
        "noise_1": ((1, 24, 2, 2), (256, 24, 2, 2), (4096, 24, 2, 2)),
    }]  # temperature is static: no profile entry
    assert log["cache_in"] == b"" and cache.read_bytes() == b"CACHE:"
    export_trt.build_engine(trt, b"onnx", fp16=False, min_batch=1, opt_batch=2, max_batch=8, timing_cache=cache)
    assert log["cache_in"] == b"CACHE:"  # the persisted cache is fed back to the next build


def test_build_engine_trt8_sets_explicit_batch():
    trt, log = fake_trt("8.6.1", [("x", (-1, 8))])
    export_trt.build_engine(trt, b"onnx", fp16=False, min_batch=1, opt_batch=2, max_batch=4)
    assert log["network_flags"] == 1 << 0 and log["flags"] == []


def test_parser_and_builder_failures_are_export_errors():
    trt, _ = fake_trt("10.0.1", [("x", (-1, 8))], parse_ok=False)
    with pytest.raises(ExportError, match=r"parser rejected the density graph: In node 3 \(Det\)"):
        export_trt.build_engine(trt, b"onnx", fp16=False, min_batch=1, opt_batch=1, max_batch=1, what="density")
    trt, _ = fake_trt("10.0.1", [("x", (-1, 8))], build_ok=False)
    with pytest.raises(ExportError, match="failed to build an engine"):
        export_trt.build_engine(trt, b"onnx", fp16=False, min_batch=1, opt_batch=1, max_batch=1)
    trt, _ = fake_trt("10.0.1", [("x", (-1, -1))])
    with pytest.raises(ExportError, match="dynamic non-batch dimension"):
        export_trt.build_engine(trt, b"onnx", fp16=False, min_batch=1, opt_batch=1, max_batch=1)


def test_batch_profile_arguments_are_checked(tmp_path):
    with pytest.raises(ExportError, match="min_batch <= opt_batch <= max_batch"):
        export_trt.build_engines(tmp_path / "x.pt", tmp_path, min_batch=8, opt_batch=4, max_batch=16)


def test_build_engines_exports_gates_installs_and_records(tmp_path, monkeypatch):
    """The orchestration of build_engines without TensorRT: ONNX export, one build per graph, the GPU
    parity gate (ONNX Runtime sessions stand in for the engines, so the gate sees real numbers),
    plans installed and recorded with their hashes; a failing gate installs nothing."""
    import hashlib

    import numpy as np
    import onnxruntime as ort

    import nfkd
    from nfkd.flows import Glow1D
    from nfkd.testing import perturb

    ckpt = tmp_path / "student.pt"
    nfkd.save(perturb(Glow1D(5, steps=2, hidden=8), seed=3), ckpt)
    out = tmp_path / "export"
    built: list[str] = []

    def fake_build(trt, onnx_bytes, *, what, **kw):
        built.append(what)
        return b"PLAN:" + onnx_bytes  # the "engine" carries its graph

    class OrtEngine:
        broken = False

        def __init__(self, trt, plan: bytes) -> None:
            self.sess = ort.InferenceSession(plan[len(b"PLAN:"):], providers=["CPUExecutionProvider"])

        def run(self, feeds):
            res = dict(zip([o.name for o in self.sess.get_outputs()], self.sess.run(None, {
                k: np.asarray(v, np.float32) for k, v in feeds.items()}), strict=True))
            if OrtEngine.broken and "log_prob" in res:
                res["log_prob"] = res["log_prob"] + 1.0
            return res

    monkeypatch.setattr(export_trt, "require_tensorrt", lambda: types.SimpleNamespace(__version__="10.9.0"))
    monkeypatch.setattr(export_trt, "build_engine", fake_build)
    monkeypatch.setattr(export_trt, "TrtEngine", OrtEngine)
    monkeypatch.setattr(export_trt, "_gpu_name", lambda: "stand-in GPU")

    OrtEngine.broken = True
    with pytest.raises(ExportError, match="parity") as err:
        export_trt.build_engines(ckpt, out, opt_batch=8, max_batch=64)
    assert "TensorRT 10.9.0 on stand-in GPU" in str(err.value), err.value
    assert not (out / "density.plan").exists() and not (out / "sample.plan").exists()

    OrtEngine.broken = False
    m = export_trt.build_engines(ckpt, out, min_batch=1, opt_batch=8, max_batch=64)
    assert built == ["density", "sample"] * 2
    for name in ("density", "sample"):
        plan = (out / f"{name}.plan").read_bytes()
        assert m.engines[name]["sha256"] == hashlib.sha256(plan).hexdigest()
    assert m.engines["profile"] == {"min": 1, "opt": 8, "max": 64} and m.engines["device"] == "stand-in GPU"
    assert m.engines["parity"]["log_prob_max_rel_err"] < 1e-4
    from export.manifest import Manifest

    assert Manifest.load(out).engines["tensorrt"] == "10.9.0"  # recorded on disk, not only returned
