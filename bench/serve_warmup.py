"""What the service's warm-up buys: the first /log_prob after GET /ready, against a cold model's first call.

    python -m bench.serve_warmup [--backend numba] [--dim 8]

Each measurement runs in a fresh process (numba compiles per process): ``cold`` times a new Runner's
first and second ``log_prob`` (what the first request paid before the warm-up); ``served`` starts the
service, times start -> /ready (the warm-up) and then the first and second request. Prints one JSON
line per process. Name the CPU beside any figure quoted from it.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

__all__ = ["main"]


def _checkpoint(folder: Path, dim: int) -> Path:
    import nfkd
    from nfkd.flows import MAF

    torch.manual_seed(0)
    path = folder / "maf.pt"
    nfkd.save(MAF(dim, blocks=4, hidden=32).eval(), path, metadata={"dataset": "bench"})
    return path


def _cold(ckpt: Path, backend: str, x: np.ndarray) -> dict:
    from nfkd.serving import load_model

    runner = load_model(ckpt, backend, threads=1)
    out = {}
    for key in ("first_call_s", "second_call_s"):
        t0 = time.perf_counter()
        runner.log_prob(x)
        out[key] = round(time.perf_counter() - t0, 4)
    return out


def _served(ckpt: Path, backend: str, x: np.ndarray) -> dict:
    import httpx

    from nfkd.serving import ServeConfig, create_app, load_model
    from nfkd.serving.http_server import BackgroundServer

    runner = load_model(ckpt, backend, threads=1)
    t0 = time.perf_counter()
    with BackgroundServer(create_app(runner, ServeConfig()), wait_ready=False) as srv, \
            httpx.Client(base_url=srv.url, timeout=120.0) as c:
        while c.get("/ready").status_code != 200:
            time.sleep(0.005)
        out = {"start_to_ready_s": round(time.perf_counter() - t0, 4), "warmup_s": c.get("/ready").json()["warmup_s"]}
        for key in ("first_request_s", "second_request_s"):
            t1 = time.perf_counter()
            assert c.post("/log_prob", json={"x": x.tolist()}).status_code == 200
            out[key] = round(time.perf_counter() - t1, 4)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="numba")
    ap.add_argument("--dim", type=int, default=8)
    ap.add_argument("--mode", choices=("cold", "served"), default=None, help="(internal) one measurement")
    ap.add_argument("--ckpt", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    x = np.random.default_rng(0).standard_normal((4, args.dim)).astype(np.float32)
    if args.mode is not None:
        fn = _cold if args.mode == "cold" else _served
        print(json.dumps({"mode": args.mode, "backend": args.backend, **fn(Path(args.ckpt), args.backend, x)}))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = _checkpoint(Path(tmp), args.dim)
        for mode in ("cold", "served"):
            subprocess.run([sys.executable, "-m", "bench.serve_warmup", "--mode", mode, "--backend", args.backend,
                            "--dim", str(args.dim), "--ckpt", str(ckpt)], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
