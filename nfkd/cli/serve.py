"""``python -m nfkd serve MODEL``: the command line of the HTTP density-estimation service (``nfkd.serving``).

    python -m nfkd serve student.pt                      # ONNX Runtime; exported on the fly (parity-gated, cached)
    python -m nfkd serve student-export/ --port 8000     # an export folder (manifest.json)
    python -m nfkd serve student.pt --backend torch      # the eager flow
    python -m nfkd serve student-export/ --backend tensorrt
    python -m nfkd serve bundle/                         # a pair (python -m nfkd pair): /log_prob to one model,
    python -m nfkd serve --density maf.pt --sampler iaf.pt   # /sample to the other; /metadata shows both
    python -m nfkd serve student.pt --engine triton --instances 2   # a real Triton server (KServe v2)

    curl -s localhost:8000/log_prob -H 'Content-Type: application/json' -d '{"x": [[0.1, 0.2, ...]]}'
    curl -s localhost:8000/sample -H 'Content-Type: application/json' -d '{"n": 4, "temperature": 0.8, "seed": 0}'

Concurrent ``/log_prob`` requests are merged into one model call (``--max-batch`` rows, waiting
at most ``--max-wait-ms``); ``--no-batching`` runs one call per request. SIGTERM / Ctrl-C stop
accepting connections, finish every request in flight, drain the queue and exit 0. Logs are
JSON lines on stderr. See docs/serving.md.

Engines: ``builtin`` (default: FastAPI + uvicorn, one process, every limit and the npy/JSON API of
docs/serving.md, nothing beyond the dev extra) or ``triton`` (the ``tritonserver`` binary of the
``nvidia-pytriton`` wheel: KServe v2 HTTP/gRPC, Prometheus metrics, model instances; see
``nfkd.serving.triton_engine``).
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from ..errors import InputError

__all__ = ["build_parser", "main_serve"]

log = logging.getLogger("nfkd.serve")
SWITCH_INTERVAL_S = 0.001


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _non_negative_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not v >= 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return v


def _positive_float(text: str) -> float:
    v = _non_negative_float(text)
    if v == 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return v


def _add_model_args(ap: argparse.ArgumentParser, backends: tuple[str, ...]) -> None:
    """MODEL (or a --density / --sampler pair) and the backend each runs on."""
    ap.add_argument("model", nargs="?", default=None,
                    help="checkpoint (.pt), export folder (with manifest.json) or pair bundle (with pair.json)")
    ap.add_argument("--density", default=None, help="with --sampler, instead of MODEL: the model that answers /log_prob")
    ap.add_argument("--sampler", default=None, help="with --density, instead of MODEL: the model that answers /sample")
    ap.add_argument("--backend", choices=backends, default="auto",
                    help="any nfkd.inference backend; auto (default): the fastest here from the benchmark ranking "
                         "(CPU: the numba engine for Glow-1D / MAF when installed, else ONNX Runtime; CUDA: "
                         "TensorRT, then the Triton kernels); torch = eager")
    ap.add_argument("--density-backend", choices=backends, default=None,
                    help="a pair's density side on this backend (default: --backend)")
    ap.add_argument("--sampler-backend", choices=backends, default=None,
                    help="a pair's sampler side on this backend (default: --backend)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default=None,
                    help="default: cuda when a GPU is visible, else cpu")
    ap.add_argument("--threads", type=_positive_int, default=None,
                    help="intra-op threads of the model (ONNX Runtime / torch; default: CPU count - 1, at least 1)")
    ap.add_argument("--cache-dir", default=None,
                    help="where checkpoints are exported on the fly (default $NFKD_CACHE_DIR or ~/.cache/nfkd/exports)")


def _add_engine_args(ap: argparse.ArgumentParser) -> None:
    """Which server, where it listens, how it logs and stops."""
    ap.add_argument("--engine", choices=("builtin", "triton"), default="builtin",
                    help="builtin (default): FastAPI service; triton: a real Triton Inference Server (KServe v2 "
                         "HTTP + gRPC, metrics; pip install --no-deps nvidia-pytriton==0.7.0)")
    ap.add_argument("--instances", type=_positive_int, default=1,
                    help="model instances (processes) of each model; --engine triton only")
    ap.add_argument("--grpc-port", type=int, default=None,
                    help="--engine triton: KServe v2 gRPC port (default port+1; any free one with --port 0)")
    ap.add_argument("--metrics-port", type=int, default=None,
                    help="--engine triton: Prometheus metrics port (default port+2; any free one with --port 0)")
    ap.add_argument("--http-threads", type=_positive_int, default=None,
                    help="--engine triton: HTTP front-end threads (default: Triton's own, 8); each connection is "
                         "served by one, so a large JSON body blocks the others on its thread while it is parsed")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    ap.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any free port, logged)")
    ap.add_argument("--graceful-timeout", type=_non_negative_float, default=30.0,
                    help="seconds to finish in-flight requests on shutdown")
    ap.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))


def _add_limit_args(ap: argparse.ArgumentParser) -> None:
    """Batching and every limit of ``ServeConfig``."""
    ap.add_argument("--max-batch", type=_positive_int, default=4096, help="rows merged into one model call")
    ap.add_argument("--max-wait-ms", type=_non_negative_float, default=2.0,
                    help="how long a queued request may wait for others to merge with (default 2)")
    ap.add_argument("--no-batching", action="store_true", help="one model call per request (for comparison)")
    ap.add_argument("--max-request-rows", type=_positive_int, default=65536, help="rows per /log_prob request")
    ap.add_argument("--max-sample-n", type=_positive_int, default=None,
                    help="n per /sample request (default: min(max-request-rows, the model's max batch))")
    ap.add_argument("--max-body-bytes", type=_positive_int, default=None,
                    help="request body limit (default: from max-request-rows and the event size)")
    ap.add_argument("--max-queue-rows", type=_positive_int, default=None,
                    help="rows of /log_prob and /sample queued or running before requests are refused with 503 "
                         "(default 4x max(max-request-rows, max-batch); --engine triton: per model instance, UNAVAILABLE / 503)")
    ap.add_argument("--sample-chunk", type=_positive_int, default=None,
                    help="rows per sampling model call; larger /sample requests are split so /log_prob runs "
                         "between chunks (default min(max-batch, 1024))")
    ap.add_argument("--request-timeout", type=_positive_float, default=60.0,
                    help="seconds a request may wait for the model before 504")
    ap.add_argument("--header-timeout", type=_positive_float, default=10.0,
                    help="seconds a connection may take to send a request's headers (then 408 and closed)")
    ap.add_argument("--body-timeout", type=_positive_float, default=30.0,
                    help="seconds a client may take to send a request's body after its headers (then 408)")
    ap.add_argument("--write-timeout", type=_positive_float, default=30.0,
                    help="seconds a client that falls behind may take to read its whole answer (then the "
                         "connection is dropped and the answer freed; default 30)")
    ap.add_argument("--max-inflight-bytes", type=_positive_int, default=None,
                    help="request bodies and answers held at once, all clients together; more: 503 with Retry-After "
                         "(default max(4x max-body-bytes, 64 MiB))")


def build_parser() -> argparse.ArgumentParser:
    from ..serving.loading import BACKEND_CHOICES

    ap = argparse.ArgumentParser(prog="python -m nfkd serve", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_model_args(ap, BACKEND_CHOICES)
    _add_engine_args(ap)
    _add_limit_args(ap)
    return ap


def _load(args: argparse.Namespace, threads: int):
    """The Runner for MODEL, or for the pair --density / --sampler."""
    from ..serving.loading import load_model, load_pair_model

    sides = {"density_backend": args.density_backend, "sampler_backend": args.sampler_backend}
    common = {"threads": threads, "cache_dir": args.cache_dir, "device": args.device, **sides}
    if args.density or args.sampler:
        if args.model or not (args.density and args.sampler):
            raise InputError("serve one MODEL, or a pair with both --density and --sampler (not MODEL as well)")
        return load_pair_model(args.density, args.sampler, args.backend, **common)
    if not args.model:
        raise InputError("name the MODEL to serve (a checkpoint, an export folder or a pair bundle), or a pair "
                         "with --density and --sampler")
    return load_model(args.model, args.backend, **common)


def _config(args: argparse.Namespace):
    from ..serving import ServeConfig

    return ServeConfig(
        max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_request_rows=args.max_request_rows,
        max_sample_n=args.max_sample_n, max_body_bytes=args.max_body_bytes, max_queue_rows=args.max_queue_rows,
        sample_chunk_rows=args.sample_chunk, batching=not args.no_batching, request_timeout_s=args.request_timeout,
        header_timeout_s=args.header_timeout, body_timeout_s=args.body_timeout,
        write_timeout_s=args.write_timeout, max_inflight_bytes=args.max_inflight_bytes,
    )


def _serve_triton(args: argparse.Namespace, threads: int) -> int:
    from ..inference.bundle import is_pair_bundle
    from ..serving.triton_engine import serve_triton

    if args.model is None or is_pair_bundle(args.model):
        raise InputError("--engine triton serves one model (a checkpoint or an export folder); serve a density + "
                         "sampler pair with the built-in engine")
    for name, offset in (("grpc_port", 1), ("metrics_port", 2)):
        if getattr(args, name) is None:
            setattr(args, name, args.port + offset if args.port else 0)
    return serve_triton(args, threads)


def _run_uvicorn(app, args: argparse.Namespace, backend: str) -> int:
    """Listen, serve until SIGTERM / Ctrl-C, drain; 0 after a clean stop."""
    import uvicorn

    from ..serving.http_server import bind, uvicorn_config

    try:
        sock = bind(args.host, args.port)
    except OSError as exc:
        raise InputError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    host, port = sock.getsockname()[:2]
    log.info("listening", extra={"url": f"http://{host}:{port}", "host": host, "port": port, "backend": backend,
                                 "model": str(args.model or f"{args.density} + {args.sampler}")})
    server = uvicorn.Server(uvicorn_config(app, graceful_timeout_s=args.graceful_timeout))
    # uvicorn re-raises the signal that stopped it once it has shut down gracefully; make that a clean exit.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
    if not server.started:
        log.error("the server did not start")
        return 1
    log.info("stopped")
    return 0


def main_serve(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..serving import create_app
    from ..serving.jsonlog import configure_logging

    configure_logging(args.log_level)
    # The event loop releases the GIL at every socket call; with a CPU-bound thread (a large body's
    # parse, numpy glue of the model thread) it waits up to the switch interval to get it back, each
    # time. 1 ms instead of 5 keeps /healthz and small requests moving while large bodies are parsed.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    # Leave one core to the event loop (HTTP parsing, JSON): ONNX Runtime's intra-op threads spin while waiting.
    threads = args.threads or max(1, (os.cpu_count() or 2) - 1)
    if args.engine == "triton":
        return _serve_triton(args, threads)
    if args.instances != 1:
        raise InputError("--instances needs --engine triton (the built-in service runs one model thread)")
    runner = _load(args, threads)
    return _run_uvicorn(create_app(runner, _config(args)), args, runner.backend)


main = main_serve

if __name__ == "__main__":
    sys.exit(main_serve())
