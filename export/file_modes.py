"""One permission mode for every file nfkd writes: what a plain ``open`` / ``mkdir`` gives under the umask.

The rule: files 0666 and folders 0777, less the process umask (0644 / 0755 under the usual 022;
0600 / 0700 under a private 077). Why this one: most of what we write (the ONNX graphs, pair.json,
metrics.jsonl, plots) goes through ``open`` and already gets it, and the umask is the user's own
policy for sharing; a file that is owner-only while the graphs beside it are not protects nothing
(they hold the same weights) but breaks a server running as another user of the group.

The exceptions were the atomic writes: ``tempfile.mkstemp`` makes 0600 files and ``mkdtemp`` 0700
folders, so ``manifest.json``, the export folder, checkpoints (``model.pt``, ``train_state.pt``),
TensorRT engines and their timing cache, the export cache's saved flows, the FID statistics cache
and pair bundle folders came out owner-only (issue 27). Each now takes this mode:
``nfkd.checkpoint.atomic_write_bytes`` (checkpoints, engines, caches), ``Manifest.save``,
``export.artifacts.staged_folder``, ``nfkd.inference.bundle.write_bundle`` and
``nfkd.metrics.fid.FeatureStats.save``. tests/test_file_modes.py stats every file they write.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

__all__ = ["current_umask", "plain_mode", "set_plain_mode"]

_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask can only set it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def plain_mode(is_dir: bool = False) -> int:
    """0666 (files) or 0777 (folders) less the umask: the mode ``open`` / ``mkdir`` give."""
    return (0o777 if is_dir else 0o666) & ~current_umask()


def set_plain_mode(path: str | os.PathLike) -> None:
    """chmod a file or folder written through mkstemp/mkdtemp to the mode a plain open/mkdir gives."""
    path = Path(path)
    os.chmod(path, plain_mode(path.is_dir()))
