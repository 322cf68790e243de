"""A pair bundle on disk: ``density.pt`` + ``sampler.pt`` + ``pair.json`` (hashes, faithfulness).

A bundle is what ``python -m nfkd pair`` writes and ``nfkd.inference.load(BUNDLE)`` opens. Loading
trusts nothing in ``pair.json`` beyond what it can check: every file it names must be a plain name
inside the folder (no path separators, no ``..``, not absolute), a regular file and not a symlink,
and the bytes the checkpoint loader reads must hash to the SHA-256 recorded for them.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, InputError

__all__ = ["PAIR_FILE", "PAIR_FORMAT", "ROLES", "PairBundle", "is_pair_bundle", "member_path", "pair_sha256",
           "read_bundle", "write_bundle"]

PAIR_FILE = "pair.json"
PAIR_FORMAT = "nfkd-pair"
PAIR_FORMAT_VERSION = "1"
ROLES = ("density", "sampler")
FILE_NAMES = {"density": "density.pt", "sampler": "sampler.pt"}
MAX_PAIR_JSON = 1 << 20


@dataclass(frozen=True)
class PairBundle:
    """A verified bundle: its record and, per role, the checkpoint that was read and hash-checked."""

    folder: Path
    record: dict[str, Any]
    checkpoints: dict[str, Any]  # role -> nfkd.checkpoint.Checkpoint
    paths: dict[str, Path]


def pair_sha256(density_sha256: str, sampler_sha256: str) -> str:
    """The pair's identity: the same two checkpoints give the same id as a bundle, a load_pair or an export."""
    return hashlib.sha256(f"{PAIR_FORMAT}\n{density_sha256}\n{sampler_sha256}\n".encode()).hexdigest()


def is_pair_bundle(path: Any) -> bool:
    """A folder holding ``pair.json`` (``load`` sends it to the pair loader)."""
    if not isinstance(path, (str, os.PathLike)):
        return False
    p = Path(path)
    return p.is_dir() and os.path.lexists(p / PAIR_FILE)


def member_path(folder: Path, name: Any, what: str) -> Path:
    """``folder / name`` when ``name`` is a plain file name there and the file is regular (not a symlink)."""
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name \
            or "\x00" in name or os.path.isabs(name):
        raise InputError(f"{folder / PAIR_FILE} names {what} as {str(name)[:80]!r}; a bundle may only name plain "
                         f"files inside its folder (no paths, no '..'); re-create it with python -m nfkd pair")
    path = folder / name
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise InputError(f"{path} is missing; the pair bundle is incomplete ({what})") from None
    if stat.S_ISLNK(st.st_mode):
        raise InputError(f"{path} is a symlink; a pair bundle holds its own files ({what}); re-create it with "
                         f"python -m nfkd pair")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{path} is not a regular file ({what}); re-create the bundle with python -m nfkd pair")
    return path


def _read_record(folder: Path) -> dict[str, Any]:
    path = member_path(folder, PAIR_FILE, "the pair record")
    if path.stat().st_size > MAX_PAIR_JSON:
        raise InputError(f"{path} is larger than {MAX_PAIR_JSON} bytes; not a pair record written by nfkd")
    try:
        record = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path} is not valid JSON ({exc}); re-create the bundle with python -m nfkd pair") from None
    if not isinstance(record, dict) or record.get("format") != PAIR_FORMAT:
        raise InputError(f"{path} is not an nfkd pair record (format {str(record.get('format') if isinstance(record, dict) else None)[:40]!r}, "
                         f"expected {PAIR_FORMAT!r})")
    files = record.get("files")
    if not isinstance(files, dict) or any(not isinstance(files.get(r), dict) for r in ROLES):
        raise InputError(f"{path} has no 'files' entry for both the density model and the sampler")
    return record


def read_bundle(folder: str | os.PathLike) -> PairBundle:
    """Open a bundle: check its record's file names, load both checkpoints and check their hashes."""
    from ..checkpoint import load_checkpoint

    folder = Path(folder)
    record = _read_record(folder)
    checkpoints, paths = {}, {}
    for role in ROLES:
        entry = record["files"][role]
        path = member_path(folder, entry.get("file"), f"the {role} model")
        ckpt = load_checkpoint(path)  # hashes the exact bytes it reads: checked below, no window
        if ckpt.sha256 != entry.get("sha256"):
            raise CheckpointError(f"{path} does not match the SHA-256 in {PAIR_FILE}: it was changed after the "
                                  f"bundle was written; re-create it with python -m nfkd pair")
        checkpoints[role], paths[role] = ckpt, path
    want = record.get("pair_sha256")
    if want is not None and want != pair_sha256(checkpoints["density"].sha256, checkpoints["sampler"].sha256):
        raise CheckpointError(f"{folder / PAIR_FILE}: its pair_sha256 does not match its two checkpoints; re-create it")
    return PairBundle(folder, record, checkpoints, paths)


def write_bundle(out_dir: str | os.PathLike, density: str | os.PathLike, sampler: str | os.PathLike,
                 density_sha256: str, sampler_sha256: str, faithfulness: dict[str, Any] | None) -> Path:
    """Copy both checkpoints into ``out_dir`` and write ``pair.json``; staged, so a failure leaves nothing.

    An existing ``out_dir`` is replaced only when it is empty or itself a pair bundle.
    """
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not is_pair_bundle(out))):
        raise InputError(f"{out} exists and is not an empty folder or a pair bundle; choose another -o")
    from export.file_modes import set_plain_mode

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        set_plain_mode(tmp)  # mkdtemp's 0700 -> what mkdir gives under the umask (export.file_modes)
        files = {}
        for role, src, sha in (("density", density, density_sha256), ("sampler", sampler, sampler_sha256)):
            dst = tmp / FILE_NAMES[role]
            shutil.copyfile(src, dst)
            if hashlib.sha256(dst.read_bytes()).hexdigest() != sha:
                raise CheckpointError(f"{src} changed while the bundle was written; run python -m nfkd pair again")
            files[role] = {"file": FILE_NAMES[role], "sha256": sha, "copied_from": Path(src).name}
        record = {
            "format": PAIR_FORMAT, "format_version": PAIR_FORMAT_VERSION, "files": files,
            "pair_sha256": pair_sha256(density_sha256, sampler_sha256), "faithfulness": faithfulness,
            "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        (tmp / PAIR_FILE).write_text(json.dumps(record, indent=2, sort_keys=True, allow_nan=False) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
