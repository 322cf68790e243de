"""Checkpoint files: exact round trips, and one clear error for every kind of bad file."""
from __future__ import annotations

import json
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as st_save

import nfkd
from nfkd.checkpoint import load_checkpoint
from nfkd.errors import CheckpointError
from nfkd.flows import MAF, Glow, Glow1D

from .helpers import perturb


@pytest.mark.parametrize(
    "factory,shape",
    [
        (lambda: Glow((3, 8, 8), levels=2, steps=2, hidden=8), (3, 8, 8)),
        (lambda: Glow1D(6, steps=3, hidden=8), (6,)),
        (lambda: MAF(6, blocks=3, hidden=8, batch_norm=True), (6,)),
    ],
)
def test_round_trip_gives_identical_log_prob(tmp_path, factory, shape):
    flow = perturb(factory(), seed=4).eval()
    x = torch.randn(5, *shape) * 0.3
    meta = {"dataset": "toy", "normalization": {"mean": [0.0] * 2}, "training": {"steps": 10}}
    path = nfkd.save(flow, tmp_path / "student.pt", metadata=meta)
    ckpt = load_checkpoint(path)
    assert ckpt.metadata == meta
    assert ckpt.arch == flow.arch
    with torch.no_grad():
        assert torch.equal(ckpt.flow.log_prob(x), flow.log_prob(x))
    assert not list(tmp_path.glob("*.tmp")), "atomic save left a temp file"


class _Payload:
    """Pickling this object makes the unpickler call os.system: the classic malicious checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "payload_ran"
    bad = tmp_path / "student.pt"
    with open(bad, "wb") as f:
        pickle.dump({"state_dict": _Payload(marker)}, f)
    # Prove the payload is live: unpickling it *would* create the marker.
    probe = tmp_path / "probe_ran"
    subprocess.run([sys.executable, "-c", f"import pickle; pickle.loads({pickle.dumps(_Payload(probe))!r})"], check=False)
    assert probe.exists()
    with pytest.raises(CheckpointError, match="refuses to unpickle"):
        nfkd.load(bad)
    assert not marker.exists()
    # The same holds for a torch.save zip archive.
    torch.save({"x": _Payload(marker)}, tmp_path / "zip.pt")
    with pytest.raises(CheckpointError, match="pickle"):
        nfkd.load(tmp_path / "zip.pt")
    assert not marker.exists()


def _saved(tmp_path) -> Path:
    return nfkd.save(perturb(Glow1D(4, steps=2, hidden=8)), tmp_path / "m.pt", metadata={"dataset": "toy"})


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        nfkd.load(tmp_path / "nope.pt")


def test_truncated_file(tmp_path):
    path = _saved(tmp_path)
    data = path.read_bytes()
    for cut in (5, 200, len(data) - 7):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="truncated|unreadable"):
            nfkd.load(path)


def test_corrupt_tensor_bytes(tmp_path):
    path = _saved(tmp_path)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        nfkd.load(path)


def test_garbage_file(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"hello world, not a model at all" * 10)
    with pytest.raises(CheckpointError, match="not an nfkd checkpoint|truncated"):
        nfkd.load(path)


def test_config_mismatch(tmp_path):
    """Weights of a 3-step model under a header that claims 2 steps."""
    import hashlib

    flow = Glow1D(4, steps=3, hidden=8)
    tensors = {k: v.contiguous() for k, v in flow.state_dict().items()}
    blob = st_save(tensors)
    (n,) = struct.unpack("<Q", blob[:8])
    meta = {
        "format": "nfkd-checkpoint", "format_version": "1", "arch": "glow1d",
        "config": json.dumps({"dim": 4, "steps": 2, "hidden": 8, "additive": False}),
        "metadata": "{}", "tensor_sha256": hashlib.sha256(blob[8 + n :]).hexdigest(),
    }
    path = tmp_path / "mismatch.pt"
    path.write_bytes(st_save(tensors, metadata=meta))
    with pytest.raises(CheckpointError, match="does not match its glow1d config"):
        nfkd.load(path)


def test_info_cli(tmp_path):
    path = _saved(tmp_path)
    out = subprocess.run([sys.executable, "-m", "nfkd", "info", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "glow1d" in out.stdout and "parameters" in out.stdout and "toy" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "nfkd", "info", str(tmp_path / "x.pt")], capture_output=True, text=True)
    assert bad.returncode == 2 and "not found" in bad.stderr and "Traceback" not in bad.stderr


def test_every_header_length_loads(tmp_path):
    """A safetensors header length whose low byte is 0x80 must not be mistaken for a pickle."""
    flow = Glow1D(3, steps=1, hidden=4)
    for pad in range(256):
        path = nfkd.save(flow, tmp_path / "m.pt", metadata={"pad": "x" * pad})
        nfkd.load(path)
