"""Loopback load test of ``python -m nfkd serve``: requests/s and latency, micro-batched vs one call per request.

    python -m nfkd.serving.bench student-export/ [--requests 2000 --rows 16 --concurrency 64]
    python -m nfkd.serving.bench student.pt --backend torch --threads 1 --modes batched

For each mode the server runs as its own process (the real CLI, ``--port 0``); the client is a
minimal asyncio HTTP/1.1 keep-alive client (``concurrency`` connections, each sending its share
of the requests back to back) so that the client costs as little CPU as possible on the same
machine. Every answer is checked (status 200, one log_prob per row). Prints one JSON object.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["run_mode", "main"]


async def _connection(host: str, port: int, bodies: list[bytes], latencies: list[float], rows: int) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for body in bodies:
            t0 = time.perf_counter()
            writer.write(
                b"POST /log_prob HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\n\r\n" % len(body) + body
            )
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = next(int(ln.split(b":", 1)[1]) for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length"))
            payload = await reader.readexactly(length)
            latencies.append(time.perf_counter() - t0)
            if status != 200 or len(json.loads(payload)["log_prob"]) != rows:
                raise RuntimeError(f"bad answer: {status} {payload[:200]!r}")
    finally:
        writer.close()


async def _drive(host: str, port: int, bodies: list[bytes], concurrency: int, rows: int, timeout_s: float):
    latencies: list[float] = []
    t0 = time.perf_counter()
    await asyncio.wait_for(
        asyncio.gather(*(_connection(host, port, bodies[i::concurrency], latencies, rows) for i in range(concurrency))),
        timeout_s,
    )
    return time.perf_counter() - t0, latencies


def _start_server(model: str, extra: list[str]) -> tuple[subprocess.Popen, str, int, list[str]]:
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "nfkd", "serve", model, "--port", "0", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    lines: list[str] = []  # JSON log lines (access log included: the server runs as configured by default)
    threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True).start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("server exited: " + "".join(lines))
        for ln in list(lines):
            if '"listening"' in ln:
                rec = json.loads(ln)
                return proc, rec["host"], rec["port"], lines
        time.sleep(0.05)
    proc.kill()
    raise TimeoutError("server did not start: " + "".join(lines))


def _get(host: str, port: int, path: str) -> dict[str, Any]:
    import http.client

    c = http.client.HTTPConnection(host, port, timeout=10)
    try:
        c.request("GET", path)
        return json.loads(c.getresponse().read())
    finally:
        c.close()


def run_mode(model: str, mode: str, requests: int, rows: int, concurrency: int, max_wait_ms: float,
             threads: int | None, dim: int | None, seed: int = 0, backend: str = "onnxruntime") -> dict[str, Any]:
    extra = ["--max-wait-ms", str(max_wait_ms), "--backend", backend]
    extra += ["--no-batching"] if mode == "unbatched" else []
    if threads:
        extra += ["--threads", str(threads)]
    proc, host, port, _ = _start_server(model, extra)
    try:
        meta = _get(host, port, "/metadata")
        d = dim or int(meta["dim"])
        rng = np.random.default_rng(seed)
        bodies = [json.dumps({"x": rng.standard_normal((rows, d)).astype(np.float32).tolist()}).encode()
                  for _ in range(requests)]
        # warm-up (not measured)
        asyncio.run(_drive(host, port, bodies[: min(len(bodies), concurrency * 2)], concurrency, rows, 120))
        before = _get(host, port, "/stats")["log_prob"]
        wall, lat = asyncio.run(_drive(host, port, bodies, concurrency, rows, 600))
        after = _get(host, port, "/stats")["log_prob"]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    lat_ms = np.asarray(lat) * 1000
    calls = after["model_calls"] - before["model_calls"]
    return {
        "backend": backend,
        "mode": mode,
        "requests": requests,
        "rows_per_request": rows,
        "concurrency": concurrency,
        "requests_per_s": round(requests / wall, 1),
        "rows_per_s": round(requests * rows / wall, 1),
        "latency_ms": {"p50": round(float(np.percentile(lat_ms, 50)), 2), "p90": round(float(np.percentile(lat_ms, 90)), 2),
                       "p99": round(float(np.percentile(lat_ms, 99)), 2), "max": round(float(lat_ms.max()), 2)},
        "model_calls": calls,
        "mean_requests_per_call": round(requests / calls, 2) if calls else None,
        "wall_s": round(wall, 3),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nfkd.serving.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="export folder or checkpoint (as for python -m nfkd serve)")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--max-wait-ms", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=None, help="model intra-op threads (server --threads)")
    ap.add_argument("--modes", default="batched,unbatched")
    ap.add_argument("--backend", default="onnxruntime", help="server --backend (torch needs a checkpoint)")
    args = ap.parse_args(argv)
    if not (1 <= args.requests <= 1_000_000 and 1 <= args.concurrency <= 1024 and 1 <= args.rows <= 65536):
        ap.error("requests in [1, 1e6], concurrency in [1, 1024], rows in [1, 65536]")
    results = [run_mode(args.model, m.strip(), args.requests, args.rows, args.concurrency, args.max_wait_ms,
                        args.threads, None, backend=args.backend) for m in args.modes.split(",") if m.strip()]
    print(json.dumps({"cpu_count": os.cpu_count(), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
