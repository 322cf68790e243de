"""Reading a file that an artifact names (an export folder's manifest): inside the folder, regular, bounded.

A manifest is data written by whoever made the folder, so a name in it is never followed as a path.
It must be one plain file name (no separator, not ``.`` / ``..``, not absolute); the entry must be a
regular file, checked with ``lstat`` *before* it is opened (a link, a FIFO, a device or a folder is
refused); it is opened relative to the folder's descriptor with ``O_NOFOLLOW | O_NONBLOCK`` (a link
swapped in after the check is refused, a FIFO swapped in cannot block the open), checked again on the
open descriptor (same inode, still regular), and read up to ``max_bytes`` (a file that grows past the
bound is refused, never read to the end).
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import ExportError, NfkdError

__all__ = ["MAX_ARTIFACT_BYTES", "MAX_MANIFEST_BYTES", "check_member_name", "read_member"]

MAX_ARTIFACT_BYTES = 1 << 30  # one graph / engine: 1 GiB (ONNX protobufs stop at 2 GiB; ours are KB to MB)
MAX_MANIFEST_BYTES = 1 << 20  # manifest.json: 1 MiB (ours are a few KB)
_READ_CHUNK = 1 << 20
_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


def check_member_name(name: object, what: str, error: type[NfkdError] = ExportError) -> str:
    """``name`` when it is one plain file name inside its folder; else ``error`` with one line."""
    if not isinstance(name, str) or not name or len(name) > 255:
        raise error(f"{what}: the file name {str(name)[:80]!r} in the manifest is not a file name; re-export")
    if name in (".", "..") or any(c in name for c in ("/", "\\", "\0")) or os.path.isabs(name):
        raise error(f"{what}: the manifest names {name[:80]!r}, which is not a plain file name inside the export "
                    f"folder (no folders, no '..', no absolute paths); refusing to read it, re-export")
    return name


def _kind(mode: int) -> str:
    for test, kind in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a folder"),
                       (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"


def read_member(folder: str | os.PathLike, name: object, what: str, max_bytes: int = MAX_ARTIFACT_BYTES,
                error: type[NfkdError] = ExportError) -> bytes:
    """The bytes of the regular file ``folder/name`` (``name`` checked by ``check_member_name``),
    at most ``max_bytes``; anything else is one ``error`` line."""
    name = check_member_name(name, what, error)
    path = Path(folder) / name
    dir_fd = None
    if os.open in os.supports_dir_fd and os.lstat in os.supports_dir_fd:
        try:
            dir_fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise error(f"{what}: cannot open the export folder {folder} ({exc.strerror or exc})") from None
    try:
        try:
            st = os.lstat(name, dir_fd=dir_fd) if dir_fd is not None else os.lstat(path)
        except FileNotFoundError:
            raise error(f"{path} is missing; the export folder is incomplete ({what})") from None
        except OSError as exc:
            raise error(f"{what}: cannot read {path} ({exc.strerror or exc})") from None
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{path} is {_kind(st.st_mode)}, not a regular file; an export folder holds only regular "
                        f"files ({what}); refusing to read it")
        if st.st_size > max_bytes:
            raise error(f"{path} has {st.st_size} bytes, above the limit of {max_bytes} bytes for {what}; "
                        f"refusing to read it")
        try:
            fd = os.open(name, _FLAGS, dir_fd=dir_fd) if dir_fd is not None else os.open(path, _FLAGS)
        except OSError as exc:
            raise error(f"{what}: cannot open {path} ({exc.strerror or exc}); it changed while being checked") from None
        with os.fdopen(fd, "rb", buffering=0) as f:
            fst = os.fstat(f.fileno())
            if not stat.S_ISREG(fst.st_mode) or (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
                raise error(f"{path} changed while being checked ({what}); refusing to read it")
            chunks, total = [], 0
            while True:
                chunk = f.read(min(_READ_CHUNK, max_bytes + 1 - total))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
                if total > max_bytes:
                    raise error(f"{path} grew above the limit of {max_bytes} bytes for {what} while being read; "
                                f"refusing it")
        return b"".join(chunks)
    finally:
        if dir_fd is not None:
            os.close(dir_fd)
