"""The real ``tritonserver`` binary shipped in the ``nvidia-pytriton`` wheel, started as a child process.

    with TritonServer("model_repository/") as srv:      # waits for /v2/health/ready
        httpx.post(f"{srv.url}/v2/models/m/infer", json=...)

Why the bare binary and not PyTriton's ``bind``: the repository (config.pbtxt + a Python-backend
``model.py``) is the same artifact a Kubernetes deployment of the official Triton image loads, and
the Python package of PyTriton pins ``numpy<2`` (it would downgrade this environment), while the
binary needs none of its Python dependencies. Install the wheel with ``pip install --no-deps
nvidia-pytriton==0.7.0``.

Two traps handled here:

- the Python-backend stub links ``libpython3.X.so.1.0``; a non-system interpreter (pyenv) must
  put its own ``lib/`` first on ``LD_LIBRARY_PATH``, else a system library of another patch version
  fails model loading (``'_thread.RLock' object has no attribute '_recursion_count'``);
- the stub is chosen for the running interpreter's version and copied next to
  ``libtriton_python.so`` (the backend looks for it there).

The server runs in its own process group; ``stop`` sends SIGTERM (Triton drains in-flight requests
for ``exit_timeout_s``), then SIGKILLs whatever is left in the group (Python-backend stubs), so no
process outlives it.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Sequence

from nfkd.errors import InputError

__all__ = ["TritonNotInstalled", "TritonServer", "free_port", "library_path", "prepare_backends", "server_env",
           "triton_home"]

INSTALL_HINT = "pip install --no-deps nvidia-pytriton==0.7.0"
PROJECT_ROOT = Path(__file__).resolve().parents[2]  # where the nfkd package lives (the stub must import it)


class TritonNotInstalled(InputError):
    """The nvidia-pytriton wheel (the tritonserver binary) is not installed."""


def triton_home() -> Path:
    """``.../site-packages/pytriton/tritonserver`` (bin/, backends/, python_backend_stubs/), without importing
    pytriton (its Python dependencies are not installed)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonNotInstalled(f"the Triton engine needs the tritonserver binary of the nvidia-pytriton wheel: "
                                 f"{INSTALL_HINT}")
    home = Path(list(spec.submodule_search_locations)[0]) / "tritonserver"
    if not (home / "bin" / "tritonserver").exists():
        raise TritonNotInstalled(f"{home}/bin/tritonserver is missing; reinstall: {INSTALL_HINT}")
    return home


def prepare_backends(workdir: Path, home: Path | None = None) -> Path:
    """A backend directory whose python backend has the stub for this interpreter's version."""
    home = home or triton_home()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = home / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise TritonNotInstalled(f"the nvidia-pytriton wheel has no Python-backend stub for Python {version}")
    dst = Path(workdir) / "backends" / "python"
    dst.mkdir(parents=True, exist_ok=True)
    for f in ("libtriton_python.so", "triton_python_backend_utils.py"):
        shutil.copy2(home / "backends" / "python" / f, dst / f)
    shutil.copy2(stub, dst / "triton_python_backend_stub")
    return dst.parent


def library_path(home: Path | None = None) -> str:
    """LD_LIBRARY_PATH for the server: the wheel's libraries, and this interpreter's own libpython first (the
    stub would otherwise load the system's, of another patch version)."""
    home = home or triton_home()
    parts = []
    libdir = sysconfig.get_config_var("LIBDIR")
    ldlib = sysconfig.get_config_var("LDLIBRARY") or ""
    if libdir and ldlib.endswith(".so") and Path(libdir, ldlib + ".1.0").exists():
        parts.append(libdir)
    parts.append(str(home.parent.parent / "nvidia_pytriton.libs"))
    if os.environ.get("LD_LIBRARY_PATH"):
        parts.append(os.environ["LD_LIBRARY_PATH"])
    return os.pathsep.join(parts)


def server_env(home: Path | None = None, extra_pythonpath: Sequence[str] = ()) -> dict[str, str]:
    """The server's environment: libraries, this interpreter's bin/ first on PATH, and a PYTHONPATH that
    reaches nfkd and this environment's packages from inside the stub."""
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = library_path(home)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    paths = [*extra_pythonpath, str(PROJECT_ROOT)] + [p for p in sys.path if p and Path(p).is_dir()]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class TritonServer:
    """``tritonserver`` on a model repository, on loopback ports; a context manager (start / stop)."""

    def __init__(self, repository: str | os.PathLike, host: str = "127.0.0.1", http_port: int = 0,
                 grpc_port: int = 0, metrics_port: int = 0, http_threads: int | None = None,
                 exit_timeout_s: int = 30, log_verbose: int = 0, log_file: str | os.PathLike | None = None,
                 strict: bool = True) -> None:
        """``strict=False``: a model that fails to load leaves the server up (and ready) with the others."""
        self.home = triton_home()
        self.repository = Path(repository)
        self.host = host
        self.http_port = http_port or free_port(host)
        self.grpc_port = grpc_port or free_port(host)
        self.metrics_port = metrics_port or free_port(host)
        self.http_threads = http_threads
        self.exit_timeout_s = int(exit_timeout_s)
        self.log_verbose = int(log_verbose)
        self.strict = bool(strict)
        self._work = Path(tempfile.mkdtemp(prefix="nfkd-triton-"))
        self.log_path = Path(log_file) if log_file else self._work / "tritonserver.log"
        self.proc: subprocess.Popen | None = None
        self.ready_s: float | None = None  # seconds from start to ready

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def command(self) -> list[str]:
        cmd = [str(self.home / "bin" / "tritonserver"), f"--model-repository={self.repository}",
               f"--backend-directory={prepare_backends(self._work, self.home)}",
               f"--http-address={self.host}", f"--http-port={self.http_port}",
               f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
               f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}",
               "--allow-gpu-metrics=false", f"--strict-readiness={str(self.strict).lower()}",
               f"--exit-on-error={str(self.strict).lower()}",
               f"--exit-timeout-secs={self.exit_timeout_s}", f"--log-verbose={self.log_verbose}"]
        if self.http_threads:
            cmd.append(f"--http-thread-count={int(self.http_threads)}")
        return cmd

    def start(self, timeout_s: float = 120.0) -> "TritonServer":
        t0 = time.perf_counter()
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=server_env(self.home), start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._cleanup_group()
                raise InputError(f"tritonserver exited with code {self.proc.returncode} before it was ready: "
                                 f"{self.log_tail()}")
            if self.ready():
                self.ready_s = time.perf_counter() - t0
                return self
            time.sleep(0.1)
        self.stop()
        raise InputError(f"tritonserver was not ready within {timeout_s:.0f} s: {self.log_tail()}")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self, lines: int = 8) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        errors = [ln for ln in text if ln.startswith("E") or "Error" in ln or "error" in ln]
        return " | ".join((errors or text)[-lines:])

    def stop(self) -> int | None:
        """SIGTERM (Triton finishes in-flight requests), then SIGKILL to anything left in the process group."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(self.exit_timeout_s + 10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._cleanup_group()
        shutil.rmtree(self._work, ignore_errors=True)
        return self.proc.returncode

    def _cleanup_group(self) -> None:
        """Python-backend stubs share the server's process group; none may outlive it."""
        assert self.proc is not None
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def __enter__(self) -> "TritonServer":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
