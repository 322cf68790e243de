"""``python -m nfkd serve MODEL --engine triton``: the model behind a real Triton Inference Server.

The model is loaded once here (to resolve ``auto``, export and parity-check on the fly, and fail
early with one clear line), a Python-backend repository is written to a temporary folder
(``export.triton_python``), and the wheel's ``tritonserver`` serves it: KServe v2 over HTTP and gRPC,
the dynamic batcher, Prometheus metrics, ``--instances`` stub processes of ``--threads`` threads each;
inside each, the rows run shortest-first in chunks of ``--max-batch`` rows (``--max-queue-rows`` per
instance, then 503), so small requests do not queue behind bulk ones (``nfkd.serving.triton_scheduler``).
SIGTERM / Ctrl-C stop Triton gracefully (in-flight requests finish) and remove the repository.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import signal
import tempfile
import threading
from pathlib import Path

__all__ = ["serve_triton"]

log = logging.getLogger("nfkd.serve")


def serve_triton(args: argparse.Namespace, threads: int) -> int:
    from export.triton_python import write_python_repository
    from nfkd import inference

    from .triton_binary import TritonServer, triton_home

    triton_home()  # fail before loading anything when the wheel is missing
    runner = inference.load(args.model, backend=args.backend,
                            device="cpu", threads=threads, cache_dir=args.cache_dir)
    backend, event_shape = runner.backend, tuple(runner.event_shape)
    del runner
    work = Path(tempfile.mkdtemp(prefix="nfkd-triton-repo-"))
    try:
        name = Path(args.model).stem or "model"
        res = write_python_repository(
            args.model, work / "repository", event_shape, name, backend=backend, threads=threads,
            instances=args.instances, max_request_rows=args.max_request_rows, max_batch=args.max_batch,
            queue_delay_us=int(args.max_wait_ms * 1000), max_sample_n=args.max_sample_n,
            max_queue_rows=args.max_queue_rows, copy_model=False,
            cache_dir=args.cache_dir)
        port = args.port if args.port else 0
        server = TritonServer(work / "repository", host=args.host, http_port=port, grpc_port=args.grpc_port,
                              metrics_port=args.metrics_port, http_threads=args.http_threads, exit_timeout_s=int(args.graceful_timeout),
                              log_file=work / "tritonserver.log")
        stop = threading.Event()
        previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            server.start()
            log.info("listening", extra={"engine": "triton", "url": server.url, "grpc": f"{args.host}:{server.grpc_port}",
                                         "metrics": server.metrics_url, "models": res["models"], "backend": backend,
                                         "instances": args.instances, "threads": threads, "ready_s": server.ready_s,
                                         "pid": server.proc.pid})
            while not stop.wait(0.5):
                if server.proc.poll() is not None:
                    log.error("tritonserver exited", extra={"code": server.proc.returncode, "log": server.log_tail()})
                    return 1
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
            server.stop()
        log.info("stopped")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)
