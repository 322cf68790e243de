"""One permission mode for everything an export writes: what a plain ``open`` would give under the umask.

Files written atomically go through ``tempfile.mkstemp`` (mode 0600) and staging folders through
``mkdtemp`` (0700), so ``manifest.json`` and the export folder came out owner-only while the
graphs beside them (written with ``open``) were readable by the group and others (issue 27).
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
