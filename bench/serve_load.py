"""Load test of ``python -m nfkd serve`` with hostile clients (issue #19): a benchmark, not a test.

    python -m bench.serve_load                       # a small Glow-1D student, 60 s, 200 small clients
    python -m bench.serve_load --checkpoint student.pt --duration 60 --clients 200 --json out.json
    python -m bench.serve_load --engine triton --instances 2   # the same mix against a real Triton server
    python -m bench.serve_load --no-hostile --think-s 0 --clients 64 [--no-batching]   # closed loop

The one load tester of ``nfkd serve`` (the former ``nfkd.serving.bench`` closed-loop tool is the last
line: 64 clients always in flight, micro-batching on or off).

``--engine triton`` speaks KServe v2 (``bench.serve_api``): JSON, and the binary tensor extension
where the built-in client uses ``.npy``; ``/v2/health/ready`` is the health probe. Oversized bodies
and 10x the row limit are 500/400 there (Triton 2.51 has no body-size limit; ``max_batch_size``).

The server is the real CLI in its own process on 127.0.0.1 (``--port 0``); every client below is
one keep-alive connection of a minimal asyncio HTTP/1.1 client in this process:

- ``small``: ``--clients`` clients, each posting 1-16 rows to ``/log_prob`` (JSON, every fifth
  ``.npy``), then thinking ``--think-s`` (uniform 0..2x) -- the latency that must stay bounded;
- ``sample``: 4 clients, ``/sample`` n in {8, 64, 512} with a seed;
- ``big_sample``: 3 clients, ``/sample`` n = ``max_sample_n`` (npy and JSON answers);
- ``burst``: every 10 s, 14 concurrent ``/sample`` n = ``max_sample_n`` (the issue's attack: some 503);
- hostile: ``oversized`` (Content-Length above the byte limit: 413), ``many_rows`` (a compact
  body of zeros, 10x the row limit, under the byte limit: 413), ``max_json`` (the largest legal
  JSON body, ``max_request_rows`` rows: 200), ``abort`` (half a body, then hang up: 499),
  ``slowloris`` (``--slowloris`` connections sending one header byte per second: dropped after
  the server's header timeout), ``slow_reader`` (``--slow-readers`` clients asking for the largest
  JSON ``/sample`` answer and never reading it: dropped by the write deadline), ``upload``
  (``--uploads`` concurrent clients posting the largest legal JSON body; 503 + Retry-After beyond
  the server's in-flight byte budget);
- ``healthz``: ``GET /healthz`` every 0.1 s.

Every 200 answer is checked against the model directly (``export.runtime`` on the same export
folder: log-densities to 1e-5 relative, samples of the same seed to 1e-4): a wrong or missing row is
a *mismatch*; a request that got no HTTP answer (reset, timeout) is *lost*; any status other than
the one expected for its class is an *error*. Prints one JSON object (and writes it with ``--json``).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from bench.serve_api import Api, BuiltinApi, TritonApi

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# A minimal HTTP/1.1 client
# --------------------------------------------------------------------------------------------
class Conn:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
                      timeout: float = 120.0) -> tuple[int, dict[str, str], bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=1 << 26)
        try:
            return await asyncio.wait_for(self._send(method, path, body, headers or {}), timeout)
        except BaseException:
            self.close()
            raise

    async def _send(self, method, path, body, headers):
        head = f"{method} {path} HTTP/1.1\r\nhost: load\r\ncontent-length: {len(body)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.writer.write(head.encode() + b"\r\n" + body)
        await self.writer.drain()
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        hdrs = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
        payload = await self.reader.readexactly(int(hdrs.get("content-length", "0")))
        if hdrs.get("connection", "").lower() == "close":
            self.close()
        return status, hdrs, payload

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


# --------------------------------------------------------------------------------------------
# Bookkeeping
# --------------------------------------------------------------------------------------------
class Tally:
    def __init__(self) -> None:
        self.status: dict[str, Counter] = defaultdict(Counter)
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, list[str]] = defaultdict(list)
        self.lost: Counter = Counter()
        self.mismatched_rows: Counter = Counter()
        self.checked_rows: Counter = Counter()
        self.dropped: list[float] = []  # slowloris: seconds until the server closed the connection

    def error(self, cls: str, text: str) -> None:
        if len(self.errors[cls]) < 5:
            self.errors[cls].append(text[:300])
        self.errors[cls + "_count"].append("")

    def check(self, cls: str, got: np.ndarray, ref: np.ndarray, rtol: float) -> None:
        got = np.asarray(got, np.float64).reshape(ref.shape) if got.size == ref.size else None
        if got is None:
            self.mismatched_rows[cls] += len(ref)
        else:
            bad = ~np.isclose(got, ref, rtol=rtol, atol=rtol).reshape(len(ref), -1).all(1)
            self.mismatched_rows[cls] += int(bad.sum())
        self.checked_rows[cls] += len(ref)


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(np.asarray(values) * 1000, q)), 1) if values else None


# --------------------------------------------------------------------------------------------
# Client classes
# --------------------------------------------------------------------------------------------
async def timed(tally: Tally, cls: str, conn: Conn, *args, expect=(200,), **kwargs):
    t0 = time.perf_counter()
    try:
        status, hdrs, payload = await conn.request(*args, **kwargs)
    except Exception as exc:  # no HTTP answer at all
        tally.lost[cls] += 1
        tally.error(cls, f"no answer: {type(exc).__name__}: {exc}")
        return None
    tally.latency[cls].append(time.perf_counter() - t0)
    tally.status[cls][str(status)] += 1
    if status not in expect:
        tally.error(cls, f"{status}: {payload[:200]!r}")
    return status, hdrs, payload


async def small_client(ctx, end: float, rng: random.Random) -> None:
    conn = Conn(ctx["host"], ctx["port"])
    await asyncio.sleep(rng.uniform(0, ctx["think_s"]))
    while time.monotonic() < end:
        _, as_text, as_binary, ref = rng.choice(ctx["small_pool"])
        path, body, headers = as_binary if rng.random() < 0.2 else as_text
        res = await timed(ctx["tally"], "small", conn, "POST", path, body, headers, expect=(200, 503))
        if res and res[0] == 200:
            ctx["tally"].check("small", ctx["api"].decode(res[1], res[2], "log_prob"), ref, 1e-5)
        await asyncio.sleep(rng.uniform(0, 2 * ctx["think_s"]))
    conn.close()


async def sample_client(ctx, end: float, rng: random.Random, cls: str, specs: list) -> None:
    conn = Conn(ctx["host"], ctx["port"])
    while time.monotonic() < end:
        (n, t, seed, as_npy), ref = rng.choice(specs)
        path, body, headers = ctx["api"].sample(n, t, seed, as_npy)
        res = await timed(ctx["tally"], cls, conn, "POST", path, body, headers, expect=(200, 503))
        if res and res[0] == 200:
            ctx["tally"].check(cls, ctx["api"].decode(res[1], res[2], "x"), ref, 1e-4)
        elif res and res[0] == 503:
            await asyncio.sleep(0.5)
        await asyncio.sleep(rng.uniform(0, 0.5))
    conn.close()


async def burst_client(ctx, end: float) -> None:
    (n, t, seed, _), ref = ctx["big_specs"][0]
    path, body, headers = ctx["api"].sample(n, t, seed, True)
    while time.monotonic() + 10 < end:
        t0 = time.monotonic()
        conns = [Conn(ctx["host"], ctx["port"]) for _ in range(14)]
        results = await asyncio.gather(*(timed(ctx["tally"], "burst", c, "POST", path, body, headers,
                                               expect=(200, 503)) for c in conns))
        for res in results:
            if res and res[0] == 200:
                ctx["tally"].check("burst", ctx["api"].decode(res[1], res[2], "x"), ref, 1e-4)
        for c in conns:
            c.close()
        await asyncio.sleep(max(0.0, 10 - (time.monotonic() - t0)))


async def hostile_client(ctx, end: float, cls: str) -> None:
    conn = Conn(ctx["host"], ctx["port"])
    api = ctx["api"]
    limit = ctx["meta"]["max_body_bytes"]
    while time.monotonic() < end:
        if cls == "oversized":  # declared above the byte limit: refused before reading (built-in)
            path, body, headers = api.raw(b"{" + b" " * (limit + 10) + b"}")
            await timed(ctx["tally"], cls, conn, "POST", path, body, headers, expect=api.expect[cls])
            conn.close()
        elif cls == "many_rows":  # built-in 503: in-flight byte budget
            path, body, headers = ctx["many_rows_body"]
            await timed(ctx["tally"], cls, conn, "POST", path, body, headers, expect=api.expect[cls])
            conn.close()
        elif cls == "max_json":
            path, body, headers = ctx["max_json"][0]
            res = await timed(ctx["tally"], cls, conn, "POST", path, body, headers, expect=(200, 503))
            if res and res[0] == 200:
                ctx["tally"].check(cls, api.decode(res[1], res[2], "log_prob"), ctx["max_json"][1], 1e-5)
        elif cls == "abort":  # half a body, then hang up
            _, w = await asyncio.open_connection(ctx["host"], ctx["port"])
            w.write(f"POST {ctx['max_json'][0][0]} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                    "content-length: 100000\r\n\r\n".encode() + b'{"x": [[0')
            await w.drain()
            await asyncio.sleep(0.05)
            w.close()
            ctx["tally"].status[cls]["sent"] += 1
        await asyncio.sleep(0.5)
    conn.close()


async def slow_reader(ctx, end: float) -> None:
    """Asks for the largest JSON /sample answer and never reads it (issue #24, defect 3); reconnects once
    the server has dropped the connection (its write deadline) or after 40 s."""
    path, body, _ = ctx["api"].sample(int(ctx["meta"]["max_sample_n"]), 1.0, 5, False)
    head = (f"POST {path} HTTP/1.1\r\nhost: slow\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode()
    while time.monotonic() < end:
        try:
            _, w = await asyncio.open_connection(ctx["host"], ctx["port"], limit=1 << 16)
            w.transport.set_write_buffer_limits(0)
            w.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            w.write(head + body)
            await w.drain()
            w.transport.pause_reading()  # never read the answer
        except OSError as exc:
            ctx["tally"].error("slow_reader", f"connect: {exc}")
            await asyncio.sleep(1)
            continue
        ctx["tally"].status["slow_reader"]["sent"] += 1
        t0 = time.monotonic()
        while time.monotonic() < min(end, t0 + 40) and not w.transport.is_closing():
            await asyncio.sleep(0.5)
        w.close()


async def upload_client(ctx, end: float) -> None:
    """One of ``--uploads`` concurrent clients posting the largest legal JSON body (max_request_rows rows),
    waiting Retry-After on 503."""
    conn = Conn(ctx["host"], ctx["port"])
    while time.monotonic() < end:
        path, body, headers = ctx["max_json"][0]
        res = await timed(ctx["tally"], "upload", conn, "POST", path, body, headers, expect=(200, 503))
        if res and res[0] == 200:
            ctx["tally"].check("upload", ctx["api"].decode(res[1], res[2], "log_prob"), ctx["max_json"][1], 1e-5)
        elif res and res[0] == 503:
            await asyncio.sleep(float(res[1].get("retry-after", "1")))
    conn.close()


async def rss_probe(ctx, end: float, pid: int) -> None:
    """The server's resident memory every 0.2 s (VmRSS), to report its peak besides VmHWM."""
    while time.monotonic() < end:
        try:
            with open(f"/proc/{pid}/status") as f:
                for ln in f:
                    if ln.startswith("VmRSS:"):
                        ctx["rss_kb"].append(int(ln.split()[1]))
        except OSError:
            return
        await asyncio.sleep(0.2)


async def slowloris(ctx, end: float, rng: random.Random) -> None:
    head = (f"POST {ctx['max_json'][0][0]} HTTP/1.1\r\nhost: slow\r\ncontent-type: application/json\r\n"
            "content-length: 10\r\n").encode()
    while time.monotonic() < end:
        t0 = time.monotonic()
        try:
            r, w = await asyncio.open_connection(ctx["host"], ctx["port"])
        except OSError as exc:
            ctx["tally"].error("slowloris", f"connect: {exc}")
            await asyncio.sleep(1)
            continue
        closed = False
        for i in range(len(head)):
            if time.monotonic() > end:
                break
            try:
                w.write(head[i : i + 1])
                await w.drain()
                data = await asyncio.wait_for(r.read(4096), 1.0 + rng.random() * 0.1)
            except asyncio.TimeoutError:
                continue
            except OSError:
                data = b""
            if not data or data.startswith(b"HTTP/1.1 408"):
                closed = True
                break
        w.close()
        if closed:
            ctx["tally"].dropped.append(time.monotonic() - t0)
        else:
            ctx["tally"].status["slowloris"]["held_to_end"] += 1


async def loop_lag(ctx, end: float) -> None:
    """How late this client's own event loop wakes up from a 10 ms sleep: the part of every latency above
    that is the load generator's, not the server's."""
    while time.monotonic() < end:
        t0 = time.perf_counter()
        await asyncio.sleep(0.01)
        ctx["loop_lag"].append(time.perf_counter() - t0 - 0.01)


async def healthz(ctx, end: float) -> None:
    conn = Conn(ctx["host"], ctx["port"])
    while time.monotonic() < end:
        await timed(ctx["tally"], "healthz", conn, "GET", ctx["api"].health_path)
        await asyncio.sleep(0.1)
    conn.close()


# --------------------------------------------------------------------------------------------
# Setup, run, report
# --------------------------------------------------------------------------------------------
def make_student(path: Path, dim: int) -> None:
    import torch

    import nfkd
    from nfkd.flows import Glow1D
    from nfkd.testing import perturb

    torch.manual_seed(0)
    flow = Glow1D(dim, steps=4, hidden=32)
    g = torch.Generator().manual_seed(1)
    flow.normalize.set(2 * torch.randn(dim, generator=g), torch.rand(dim, generator=g) + 0.5)
    nfkd.save(perturb(flow, scale=0.1, seed=3).eval(), path)


def start_server(model: Path, workdir: Path, extra: list[str]) -> tuple[subprocess.Popen, dict[str, Any], Path]:
    log_path = workdir / "server.log"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    logf = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "nfkd", "serve", str(model), "--port", "0",
                             "--cache-dir", str(workdir / "cache"), *extra],
                            stdout=subprocess.DEVNULL, stderr=logf, env=env, cwd=REPO)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("server exited: " + log_path.read_text()[-2000:])
        for ln in log_path.read_text().splitlines():
            if '"listening"' in ln:
                return proc, json.loads(ln), log_path
        time.sleep(0.2)
    proc.kill()
    raise TimeoutError("server did not start")


async def get_json(host: str, port: int, path: str) -> dict[str, Any]:
    c = Conn(host, port)
    try:
        _, _, payload = await c.request("GET", path)
        return json.loads(payload)
    finally:
        c.close()


def prepare(meta: dict[str, Any], runtime, seed: int, api: Api) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    dim, max_rows, max_n = int(meta["dim"]), int(meta["max_request_rows"]), int(meta["max_sample_n"])
    pool = []
    for _ in range(512):
        n = int(rng.integers(1, 17))
        x = (rng.standard_normal((n, dim)) * rng.choice([0.5, 1.0, 2.0, 4.0])).astype(np.float32)
        pool.append((x, api.log_prob(x, False), api.log_prob(x, True), np.asarray(runtime.log_prob(x), np.float64)))
    specs = []
    for n in (8, 64, 512):
        for t in (0.7, 1.0):
            for s in (1, 2):
                specs.append(((n, t, s, n == 512), np.asarray(runtime.sample(n, temperature=t, seed=s), np.float64)))
    # .npy answers: decoding 65536 rows of JSON would stall this client's own event loop for ~1 s
    big = [(spec, _chunked_sample(runtime, *spec[:3]).astype(np.float64))
           for spec in ((max_n, 0.8, 11, True), (max_n, 1.0, 12, True))]
    xmax = rng.standard_normal((max_rows, dim)).astype(np.float32)
    ref_max = np.concatenate([np.asarray(runtime.log_prob(xmax[i : i + 4096])) for i in range(0, max_rows, 4096)])
    zeros_row = b"[" + b",".join([b"0"] * dim) + b"]"
    many = min(10 * max_rows, (int(meta["max_body_bytes"]) - 16) // (len(zeros_row) + 1))
    if isinstance(api, BuiltinApi):
        many_rows = api.raw(b'{"x":[' + b",".join([zeros_row] * many) + b"]}")
    else:  # the same rows of zeros in KServe v2 JSON
        many_rows = api.raw(b'{"inputs":[{"name":"x","datatype":"FP32","shape":[%d,%d],"data":[' % (many, dim)
                            + b",".join([b"0"] * (many * dim)) + b"]}]}")
    return {"small_pool": pool, "specs": specs, "big_specs": big,
            "max_json": (api.log_prob(xmax, False), ref_max.astype(np.float64)),
            "many_rows_body": many_rows, "many_rows": many}


def _chunked_sample(runtime, n: int, t: float, seed: int) -> np.ndarray:
    """runtime.sample(n, t, seed) for n above the runtime's max batch: the same noise, decoded in pieces."""
    from nfkd.inference import draw_noise

    noise = draw_noise(runtime.noise_shapes, n, seed)
    step = runtime.max_batch
    return np.concatenate([runtime.decode([z[i : i + step] for z in noise], t) for i in range(0, n, step)])


async def run(ctx: dict[str, Any], duration: float, clients: int, n_slowloris: int, seed: int,
              hostile: bool = True) -> float:
    end = time.monotonic() + duration
    rng = random.Random(seed)
    tasks = [small_client(ctx, end, random.Random(rng.random())) for _ in range(clients)]
    tasks += [sample_client(ctx, end, random.Random(rng.random()), "sample", ctx["specs"]) for _ in range(4)]
    if hostile:
        tasks += [sample_client(ctx, end, random.Random(rng.random()), "big_sample", ctx["big_specs"])
                  for _ in range(3)]
        tasks += [burst_client(ctx, end)]
        tasks += [hostile_client(ctx, end, cls) for cls in ("oversized", "many_rows", "max_json", "abort")]
        tasks += [slowloris(ctx, end, random.Random(rng.random())) for _ in range(n_slowloris)]
        tasks += [slow_reader(ctx, end) for _ in range(ctx["slow_readers"])]
        tasks += [upload_client(ctx, end) for _ in range(ctx["uploads"])]
    tasks += [healthz(ctx, end), rss_probe(ctx, end, ctx["pid"]), loop_lag(ctx, end)]
    t0 = time.perf_counter()
    await asyncio.gather(*tasks)
    return time.perf_counter() - t0


def _server_latency(records: list[dict[str, Any]]) -> dict[str, Any]:
    """p50/p99/max of the server's own access-log latency (arrival of the headers -> answer sent): without
    this client's event-loop lag."""
    groups: dict[str, list[float]] = defaultdict(list)
    for r in records:
        if r.get("logger") != "nfkd.serve.access" or r.get("status") != 200:
            continue
        if r.get("path") == "/log_prob" and (r.get("rows") or 0) <= 16:
            groups["small_log_prob"].append(r["latency_ms"] / 1000)
        elif r.get("path") == "/healthz":
            groups["healthz"].append(r["latency_ms"] / 1000)
    return {k: {"n": len(v), "p50": pct(v, 50), "p99": pct(v, 99), "max": pct(v, 100)} for k, v in groups.items()}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.serve_load", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=None, help="default: a small Glow-1D student (dim 8)")
    ap.add_argument("--dim", type=int, default=8)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--clients", type=int, default=200, help="small /log_prob clients")
    ap.add_argument("--think-s", type=float, default=0.5, help="mean pause of a small client between requests "
                    "(0: a closed loop, every client sends its next request as soon as it has the answer)")
    ap.add_argument("--slowloris", type=int, default=50, help="slow-loris connections held open at once")
    ap.add_argument("--slow-readers", type=int, default=50, help="clients asking for the largest JSON /sample "
                    "answer and never reading it")
    ap.add_argument("--uploads", type=int, default=30, help="concurrent clients posting the largest legal JSON body")
    ap.add_argument("--max-request-rows", type=int, default=65536)
    ap.add_argument("--header-timeout", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=1, help="model threads (per instance with --engine triton)")
    ap.add_argument("--engine", choices=("builtin", "triton"), default="builtin")
    ap.add_argument("--instances", type=int, default=1, help="--engine triton: model instances")
    ap.add_argument("--http-threads", type=int, default=None, help="--engine triton: the server's --http-threads")
    ap.add_argument("--max-queue-rows", type=int, default=None,
                    help="the server's --max-queue-rows (default: its own; per model instance with --engine triton)")
    ap.add_argument("--backend", default="auto", help="the server's --backend (torch / eager: the checkpoint is "
                    "served, else its export folder)")
    ap.add_argument("--no-batching", action="store_true",
                    help="--engine builtin: one model call per request (micro-batching's baseline)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-hostile", action="store_true",
                    help="only the small, sample and healthz clients (the baseline of the same machine)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.no_batching and args.engine != "builtin":
        ap.error("--no-batching is a built-in service option (Triton: --max-wait-ms 0 / a config without "
                 "dynamic_batching)")
    return args


def server_args(args: argparse.Namespace, max_sample_n: int) -> list[str]:
    """The ``nfkd serve`` options both engines share, and each engine's own."""
    extra = ["--threads", str(args.threads), "--max-request-rows", str(args.max_request_rows),
             "--max-sample-n", str(max_sample_n), "--log-level", "info", "--engine", args.engine,
             "--backend", args.backend] + (["--max-queue-rows", str(args.max_queue_rows)] if args.max_queue_rows else [])
    if args.engine == "triton":
        return extra + ["--instances", str(args.instances)] + (["--http-threads", str(args.http_threads)]
                                                               if args.http_threads else [])
    return extra + ["--header-timeout", str(args.header_timeout)] + (["--no-batching"] if args.no_batching else [])


def engine_api(args: argparse.Namespace, rec: dict[str, Any], proc: subprocess.Popen, runtime,
               max_sample_n: int) -> tuple[str, int, dict[str, Any], Api, int]:
    """(host, port, the server's limits as /metadata gives them, the wire protocol, the pid whose memory counts)."""
    if args.engine == "builtin":
        host, port = rec["host"], int(rec["port"])
        return host, port, asyncio.run(get_json(host, port, "/metadata")), BuiltinApi(), proc.pid
    host, port = rec["url"].rsplit("/", 1)[-1].split(":")
    dim = int(np.prod(runtime.event_shape))
    meta = {"arch": runtime.meta.arch, "dim": dim, "config": {}, "max_request_rows": args.max_request_rows,
            "max_sample_n": max_sample_n, "threads": args.threads, "instances": args.instances,
            "max_body_bytes": args.max_request_rows * dim * 32 + 64 * 1024}
    return host, int(port), meta, TritonApi(rec["models"]), int(rec["pid"])


def server_stats(engine: str, host: str, port: int, rec: dict[str, Any]) -> dict[str, Any]:
    if engine == "builtin":
        return asyncio.run(get_json(host, port, "/stats"))
    return {"triton": {m: asyncio.run(get_json(host, port, f"/v2/models/{m}/stats"))["model_stats"][0]
                       for m in rec["models"].values()}}


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


def class_rows(t: Tally) -> dict[str, Any]:
    """Per client class: statuses, lost, unexpected, rows checked / mismatched, client-side latency."""
    classes = sorted(set(t.status) | set(t.latency) | set(t.lost))
    return {cls: {
        "requests": sum(v for k, v in t.status[cls].items() if k.isdigit()),
        "status": dict(t.status[cls]), "lost": t.lost[cls], "errors": len(t.errors.get(cls + "_count", [])),
        "error_examples": t.errors.get(cls, []),
        "checked_rows": t.checked_rows[cls], "mismatched_rows": t.mismatched_rows[cls],
        "latency_ms": {"p50": pct(t.latency[cls], 50), "p99": pct(t.latency[cls], 99), "max": pct(t.latency[cls], 100)},
    } for cls in classes}


def cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) so far of the server: its whole process group (tritonserver and its
    Python-backend stubs) when it has its own, else the one process; and of this load generator."""
    tick = os.sysconf("SC_CLK_TCK")
    group = os.getpgid(pid)
    out: dict[str, float] = defaultdict(float)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                head, rest = f.read().rsplit(")", 1)
        except OSError:
            continue
        fields = rest.split()
        if int(entry) == pid or (group != os.getpgid(0) and int(fields[2]) == group):
            out[head.split("(", 1)[1]] += (int(fields[11]) + int(fields[12])) / tick
    out["load generator"] = time.process_time()
    return dict(out)


def server_memory(rss_kb: list[int], vm: dict[str, int]) -> dict[str, float | None]:
    return {"rss_at_start": round(rss_kb[0] / 1024, 1) if rss_kb else None,
            "rss_peak_sampled": round(max(rss_kb) / 1024, 1) if rss_kb else None,
            "vm_hwm": round(vm.get("VmHWM", 0) / 1024, 1), "rss_at_end": round(vm.get("VmRSS", 0) / 1024, 1)}


def log_counts(records: list[dict[str, Any]]) -> dict[str, int]:
    return {"tracebacks": sum("exc" in r for r in records),
            "errors": sum(r.get("level") == "error" for r in records),
            "client_aborted": sum(r.get("msg") == "client aborted" for r in records),
            "slow_clients_dropped": sum(r.get("msg") == "slow client dropped" for r in records),
            "slow_readers_dropped": sum(r.get("msg") == "slow reader dropped" for r in records)}


def report(args: argparse.Namespace, ctx: dict[str, Any], readiness_s: float, wall: float, stats: dict[str, Any],
           vm: dict[str, int], records: list[dict[str, Any]]) -> dict[str, Any]:
    t: Tally = ctx["tally"]
    meta = ctx["meta"]
    return {
        "engine": args.engine, "instances": args.instances if args.engine == "triton" else None,
        "max_queue_rows": args.max_queue_rows, "http_threads": args.http_threads,
        "backend": args.backend, "batching": not args.no_batching, "readiness_s": round(readiness_s, 2),
        "duration_s": round(wall, 1), "cpu_count": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
        "model": {"arch": meta["arch"], "dim": meta["dim"], "config": meta["config"]},
        "server": {k: meta[k] for k in ("max_request_rows", "max_sample_n", "max_body_bytes", "max_queue_rows",
                                        "sample_chunk_rows", "header_timeout_s", "body_timeout_s", "threads")
                   if k in meta},
        "hostile": not args.no_hostile,
        "clients": {"small": args.clients, "think_s": args.think_s, "sample": 4, "big_sample": 3, "burst": 14,
                    "hostile": 4, "slowloris": args.slowloris, "healthz": 1},
        "classes": class_rows(t),
        "slowloris": {"dropped": len(t.dropped), "held_to_end": t.status["slowloris"]["held_to_end"],
                      "seconds_to_drop_p50": round(float(np.median(t.dropped)), 2) if t.dropped else None},
        "totals": {"lost": sum(t.lost.values()), "mismatched_rows": sum(t.mismatched_rows.values()),
                   "checked_rows": sum(t.checked_rows.values()),
                   "errors": sum(len(v) for k, v in t.errors.items() if k.endswith("_count"))},
        "server_stats": {k: stats[k] for k in ("http_by_status", "queue", "log_prob", "sample", "model", "memory",
                                               "triton") if k in stats},
        "throughput_rows_per_s": round(sum(t.checked_rows.values()) / wall, 1),
        "small_requests_per_s": round(sum(v for k, v in t.status["small"].items() if k == "200") / wall, 1),
        "server_memory_mb": server_memory(ctx["rss_kb"], vm),
        "client_loop_lag_ms": {"p50": pct(ctx["loop_lag"], 50), "p99": pct(ctx["loop_lag"], 99),
                               "max": pct(ctx["loop_lag"], 100)},
        "slow_readers": {"sent": t.status["slow_reader"]["sent"], "clients": args.slow_readers},
        "server_side_latency_ms": _server_latency(records),
        "server_log": log_counts(records),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="nfkd-serve-load-"))
    try:
        out = measure(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Export (cached in ``work``), start the server, run the mix for ``--duration``, stop it, report."""
    from export.cache import ensure_export
    from export.runtime import load

    checkpoint = args.checkpoint or work / "student.pt"
    if args.checkpoint is None:
        make_student(checkpoint, args.dim)
    folder = ensure_export(checkpoint, work / "cache")
    from nfkd.inference import registry

    # an export folder where the backend runs one (the server's memory is then serving alone), else the checkpoint
    model = folder if args.backend != "auto" and registry.spec(args.backend).runs_exports else checkpoint
    runtime = load(folder, intra_op_threads=1)  # the reference every answer is checked against
    max_sample_n = min(args.max_request_rows, int(runtime.max_batch))  # the built-in service's default, both engines
    t_start = time.perf_counter()
    proc, rec, log_path = start_server(model, work, server_args(args, max_sample_n))
    readiness_s = time.perf_counter() - t_start  # process start -> listening and ready (model loaded)
    try:
        host, port, meta, api, pid = engine_api(args, rec, proc, runtime, max_sample_n)
        ctx = {"host": host, "port": port, "meta": meta, "tally": Tally(), "think_s": args.think_s, "api": api,
               "pid": pid, "rss_kb": [], "loop_lag": [], "slow_readers": args.slow_readers, "uploads": args.uploads,
               **prepare(meta, runtime, args.seed, api)}
        cpu0 = cpu_seconds(pid)
        wall = asyncio.run(run(ctx, args.duration, args.clients, args.slowloris, args.seed, not args.no_hostile))
        cpu = {k: round(v - cpu0.get(k, 0.0), 1) for k, v in cpu_seconds(pid).items()}
        stats = server_stats(args.engine, host, port, rec)
        with open(f"/proc/{pid}/status") as f:
            vm = {ln.split(":")[0]: int(ln.split()[1]) for ln in f if ln.startswith(("VmHWM", "VmRSS"))}
    finally:
        stop_server(proc)
    records = [json.loads(ln) for ln in log_path.read_text().splitlines() if ln.startswith("{")]
    return {**report(args, ctx, readiness_s, wall, stats, vm, records), "served_backend": rec.get("backend"),
            "cpu_seconds_during_run": cpu}


if __name__ == "__main__":
    sys.exit(main())
