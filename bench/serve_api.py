"""The two wire protocols ``bench.serve_load`` drives: the built-in service's and KServe v2 (Triton).

Each ``Api`` turns a request (rows for log_prob; n, temperature, seed for sampling) into
``(path, body, headers)`` and an answer back into an array, in a text form (JSON) and a binary form
(``.npy`` for the built-in service; KServe v2's binary tensor extension for Triton), and says which
statuses each hostile class must get from that engine.
"""
from __future__ import annotations

import io
import json
from typing import Any

import numpy as np

__all__ = ["Api", "BuiltinApi", "TritonApi"]

Request = tuple[str, bytes, dict[str, str]]


class Api:
    engine = ""
    health_path = ""
    # hostile class -> statuses that count as correct
    expect: dict[str, tuple[int, ...]] = {}

    def log_prob(self, x: np.ndarray, binary: bool) -> Request:  # pragma: no cover - abstract
        raise NotImplementedError

    def sample(self, n: int, temperature: float, seed: int | None, binary: bool) -> Request:  # pragma: no cover
        raise NotImplementedError

    def decode(self, hdrs: dict[str, str], payload: bytes, key: str) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def raw(self, body: bytes) -> Request:  # pragma: no cover - abstract
        """A log_prob request carrying an arbitrary (hostile) JSON body."""
        raise NotImplementedError


class BuiltinApi(Api):
    engine = "builtin"
    health_path = "/healthz"
    expect = {"oversized": (413,), "many_rows": (413, 503)}

    def log_prob(self, x: np.ndarray, binary: bool) -> Request:
        if binary:
            buf = io.BytesIO()
            np.save(buf, x, allow_pickle=False)
            return "/log_prob", buf.getvalue(), {"content-type": "application/x-npy", "accept": "application/x-npy"}
        return "/log_prob", json.dumps({"x": x.tolist()}).encode(), {"content-type": "application/json"}

    def sample(self, n: int, temperature: float, seed: int | None, binary: bool) -> Request:
        headers = {"content-type": "application/json", **({"accept": "application/x-npy"} if binary else {})}
        return "/sample", json.dumps({"n": n, "temperature": temperature, "seed": seed}).encode(), headers

    def decode(self, hdrs: dict[str, str], payload: bytes, key: str) -> np.ndarray:
        if hdrs.get("content-type", "").startswith("application/x-npy"):
            return np.load(io.BytesIO(payload), allow_pickle=False)
        return np.asarray(json.loads(payload)[key], dtype=np.float64)

    def raw(self, body: bytes) -> Request:
        return "/log_prob", body, {"content-type": "application/json"}


class TritonApi(Api):
    """KServe v2 on ``<name>_density`` / ``<name>_sample`` (export.triton_python's contract)."""

    engine = "triton"
    health_path = "/v2/health/ready"
    # Triton 2.51 has no request-body byte limit: a body of spaces is read whole, then refused by its JSON
    # parser (500 in 2.51); rows above max_batch_size: 400
    expect = {"oversized": (400, 500), "many_rows": (400,)}

    def __init__(self, models: dict[str, str]) -> None:
        self.density = f"/v2/models/{models['density']}/infer"
        self.sample_path = f"/v2/models/{models['sample']}/infer"

    @staticmethod
    def _binary(header: dict[str, Any], tensors: list[np.ndarray]) -> tuple[bytes, dict[str, str]]:
        head = json.dumps(header).encode()
        body = head + b"".join(np.ascontiguousarray(t).tobytes() for t in tensors)
        return body, {"content-type": "application/octet-stream", "inference-header-content-length": str(len(head))}

    def log_prob(self, x: np.ndarray, binary: bool) -> Request:
        x = np.ascontiguousarray(x, np.float32)
        spec = {"name": "x", "shape": list(x.shape), "datatype": "FP32"}
        if binary:
            header = {"inputs": [{**spec, "parameters": {"binary_data_size": x.nbytes}}],
                      "outputs": [{"name": "log_prob", "parameters": {"binary_data": True}}]}
            body, headers = self._binary(header, [x])
            return self.density, body, headers
        return self.density, json.dumps({"inputs": [{**spec, "data": x.ravel().tolist()}]}).encode(), \
            {"content-type": "application/json"}

    def sample(self, n: int, temperature: float, seed: int | None, binary: bool) -> Request:
        inputs = [{"name": "n", "shape": [1], "datatype": "INT64", "data": [n]},
                  {"name": "temperature", "shape": [1], "datatype": "FP32", "data": [temperature]}]
        if seed is not None:
            inputs.append({"name": "seed", "shape": [1], "datatype": "INT64", "data": [seed]})
        body: dict[str, Any] = {"inputs": inputs}
        if binary:
            body["outputs"] = [{"name": "x", "parameters": {"binary_data": True}}]
        return self.sample_path, json.dumps(body).encode(), {"content-type": "application/json"}

    def decode(self, hdrs: dict[str, str], payload: bytes, key: str) -> np.ndarray:
        n_head = int(hdrs.get("inference-header-content-length", len(payload)))
        head = json.loads(payload[:n_head])
        out = head["outputs"][0]
        if "binary_data_size" in out.get("parameters", {}):
            return np.frombuffer(payload[n_head:n_head + out["parameters"]["binary_data_size"]], np.float32) \
                .reshape(out["shape"]).astype(np.float64)
        return np.asarray(out["data"], np.float64).reshape(out["shape"])

    def raw(self, body: bytes) -> Request:
        return self.density, body, {"content-type": "application/json"}
