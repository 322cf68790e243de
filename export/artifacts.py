"""Artifacts on disk, done once: staged folders installed atomically, files written atomically,
and files read back only when they still match the SHA-256 recorded for them.

Every exporter (ONNX graphs, TensorRT plans, Triton Inference Server model folders) writes through
``staged_folder`` / ``atomic_file`` and every runtime reads through ``read_verified``: a crash never
leaves half an export, and a file changed after the parity gate is refused.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

from nfkd.errors import ExportError
from nfkd.folder_files import read_member

from .file_modes import set_plain_mode
from .manifest import MANIFEST_NAME, sha256_bytes

__all__ = ["atomic_file", "install_folder", "read_verified", "staged_folder", "verified_path"]


def verified_path(folder: Path, entry: dict[str, Any], what: str) -> Path:
    """``folder / entry["file"]`` when it is a regular file inside the folder that still has the recorded SHA-256."""
    read_verified(folder, entry, what)
    return Path(folder) / entry["file"]


def read_verified(folder: Path, entry: dict[str, Any], what: str) -> bytes:
    """The bytes of a recorded file, hashed as read (no window between check and use). The name must be
    a plain file name inside ``folder`` and the file a regular one of bounded size (``nfkd.folder_files``)."""
    data = read_member(folder, entry.get("file"), what)
    path = Path(folder) / entry["file"]
    if sha256_bytes(data) != entry.get("sha256"):
        raise ExportError(f"{path} does not match the SHA-256 in manifest.json: it was changed after the parity "
                          f"gate; re-export")
    return data


def install_folder(tmp: Path, out_dir: Path, stale: Sequence[str] = (), replace_whole: bool = False) -> None:
    """Move a finished staging folder into place.

    A new ``out_dir`` is one rename. An existing one is either replaced whole (``replace_whole``)
    or updated file by file with ``manifest.json`` last, after removing ``stale`` files made
    from what it held before.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir} exists and is not a folder")
    if not out_dir.exists():
        os.replace(tmp, out_dir)
        return
    if replace_whole:
        shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
        return
    for name in stale:
        with contextlib.suppress(FileNotFoundError):
            (out_dir / name).unlink()
    for f in sorted(tmp.iterdir(), key=lambda p: p.name == MANIFEST_NAME):
        os.replace(f, out_dir / f.name)
    tmp.rmdir()


@contextlib.contextmanager
def staged_folder(out_dir: str | os.PathLike, stale: Sequence[str] = (), replace_whole: bool = False) -> Iterator[Path]:
    """A temporary folder beside ``out_dir`` to write into; installed on success, removed on any error."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        set_plain_mode(tmp)  # mkdtemp made it 0700; the installed folder gets the mode mkdir would give
        yield tmp
        install_folder(tmp, out_dir, stale, replace_whole)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_file(path: str | os.PathLike, data: bytes) -> None:
    """Write bytes to a temporary file beside ``path``, then rename (never half a file)."""
    from nfkd.checkpoint import atomic_write_bytes

    atomic_write_bytes(path, data)
    set_plain_mode(path)
