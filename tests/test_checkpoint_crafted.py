"""Crafted checkpoint headers (issue 19 #4, #8): one CheckpointError each, nothing large ever built."""
from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as st_save

import nfkd
from nfkd.__main__ import main as nfkd_main
from nfkd.checkpoint_header import covered_digest, entries_of
from nfkd.errors import CheckpointError
from nfkd.flows import MAF, Glow

from .helpers import perturb

REPO = Path(__file__).resolve().parents[1]


def _split(path: Path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _write(path: Path, header: dict | str, body: bytes) -> Path:
    raw = (header if isinstance(header, str) else json.dumps(header)).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)
    return path


def _crafted(tmp_path: Path, version: str = "2", **config_changes) -> Path:
    """A small MAF checkpoint whose config is edited and whose checksum is then recomputed, as an
    attacker would (a checksum is integrity, not authenticity)."""
    flow = MAF(4, blocks=2, hidden=8)
    tensors = {k: v.contiguous() for k, v in flow.state_dict().items()}
    payload = st_save(tensors)
    (n,) = struct.unpack("<Q", payload[:8])
    meta = {"format": "nfkd-checkpoint", "format_version": version, "arch": "maf",
            "config": json.dumps({**flow.config, **config_changes}), "metadata": "{}"}
    if version == "1":
        meta["tensor_sha256"] = hashlib.sha256(payload[8 + n :]).hexdigest()
    else:
        meta["sha256"] = covered_digest(meta, entries_of(payload), payload[8 + n :])
    path = tmp_path / f"crafted_v{version}.pt"
    path.write_bytes(st_save(tensors, metadata=meta))
    return path


def test_header_is_covered_by_the_checksum(tmp_path):
    """Editing the header (here the metadata) without recomputing the checksum is caught."""
    path = nfkd.save(perturb(MAF(4, blocks=2, hidden=8)), tmp_path / "m.pt", metadata={"dataset": "power"})
    header, body = _split(path)
    header["__metadata__"]["metadata"] = json.dumps({"dataset": "gas"})
    _write(path, header, body)
    with pytest.raises(CheckpointError, match="checksum"):
        nfkd.load(path)
    # The tensor table is covered too: a reshaped tensor with the same bytes.
    path = nfkd.save(perturb(MAF(4, blocks=2, hidden=8)), tmp_path / "m2.pt")
    header, body = _split(path)
    name = next(k for k, v in header.items() if k != "__metadata__" and len(v["shape"]) == 2 and v["shape"][0] != v["shape"][1])
    header[name]["shape"] = header[name]["shape"][::-1]
    _write(path, header, body)
    with pytest.raises(CheckpointError, match="checksum"):
        nfkd.load(path)


def test_format_1_files_still_load(tmp_path):
    flow = perturb(MAF(4, blocks=2, hidden=8), seed=2).eval()
    path = nfkd.save(flow, tmp_path / "v2.pt")
    header, body = _split(path)
    meta = header["__metadata__"]
    del meta["sha256"]
    meta["format_version"] = "1"
    meta["tensor_sha256"] = hashlib.sha256(body).hexdigest()
    _write(tmp_path / "v1.pt", header, body)
    x = torch.randn(5, 4)
    with torch.no_grad():
        assert torch.equal(nfkd.load(tmp_path / "v1.pt").log_prob(x), flow.log_prob(x))
    meta["format_version"] = "7"
    _write(tmp_path / "v7.pt", header, body)
    with pytest.raises(CheckpointError, match="format '7'.*reads formats 1, 2"):
        nfkd.load(tmp_path / "v7.pt")


def test_huge_blocks_is_refused_before_building(tmp_path):
    """`"blocks": 100000000` ran 112 s and 6 GB before; now refused from the stored tensor count.
    Run in a subprocess with a generous hang guard (not a timing threshold: a fixed build returns
    at once, the old one needs minutes)."""
    for version in ("1", "2"):
        path = _crafted(tmp_path, version, blocks=100_000_000)
        code = f"import nfkd; nfkd.load({str(path)!r})"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
        assert out.returncode != 0 and "CheckpointError" in out.stderr
        assert "blocks=100000000 is outside" in out.stderr


@pytest.mark.parametrize("changes,match", [
    ({"hidden": 3_000_000}, r"hidden=3000000 is outside"),
    ({"hidden": -8}, r"hidden=-8 is outside"),
    ({"blocks": 60_000}, r"implies a far larger model than the \d+ stored tensors"),  # within the size bound
    ({"blocks": 3}, r"does not match its maf config: missing \['blocks\.2"),
    ({"hidden": 9}, r"does not match its maf config.*stored \(8, 4\) F32, config implies \(9, 4\)"),
    ({"hidden": [8]}, r"cannot rebuild|config"),
    ({"hidden": {"a": 1}}, r"config hidden holds a dict"),
    ({"no_such_option": 1}, r"cannot rebuild the model from its config"),
])
def test_crafted_config_is_refused(tmp_path, changes, match):
    with pytest.raises(CheckpointError, match=match):
        nfkd.load(_crafted(tmp_path, "2", **changes))


def _valid_parts(tmp_path: Path) -> tuple[dict, bytes]:
    return _split(nfkd.save(MAF(4, blocks=1, hidden=4), tmp_path / "ok.pt"))


def _crafted_headers(tmp_path: Path) -> dict[str, Path]:
    header, body = _valid_parts(tmp_path)
    name = next(k for k in header if k != "__metadata__")
    cases = {}

    def variant(key: str, edit) -> None:
        h = json.loads(json.dumps(header))
        edit(h)
        cases[key] = _write(tmp_path / f"{key}.pt", h, body)

    variant("missing-data-offsets", lambda h: h[name].pop("data_offsets"))
    variant("metadata-is-a-string", lambda h: h.__setitem__("__metadata__", "nfkd-checkpoint"))
    variant("junk-entry", lambda h: h.__setitem__("junk", 5))
    variant("negative-dims", lambda h: h[name].__setitem__("shape", [-1, *h[name]["shape"][1:]]))
    variant("bool-dims", lambda h: h[name].__setitem__("shape", [True] * len(h[name]["shape"])))
    variant("offsets-past-end", lambda h: h[name].__setitem__("data_offsets", [0, 10**12]))
    variant("config-not-json", lambda h: h["__metadata__"].__setitem__("config", "{blocks: 1"))
    variant("config-deeply-nested", lambda h: h["__metadata__"].__setitem__("config", "[" * 100_000 + "]" * 100_000))
    variant("metadata-a-list", lambda h: h["__metadata__"].__setitem__("metadata", "[1, 2]"))
    variant("no-arch", lambda h: h["__metadata__"].pop("arch"))
    nested = '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}"
    cases["header-deeply-nested"] = _write(tmp_path / "nested.pt", nested, body)
    cases["header-a-list"] = _write(tmp_path / "list.pt", "[1]" + " " * 8, body)
    return cases


def test_crafted_headers_give_one_line_through_the_cli(tmp_path, capsys):
    """KeyError / AttributeError / RecursionError before: now exit 2 and one line each."""
    for key, path in _crafted_headers(tmp_path).items():
        with pytest.raises(CheckpointError):
            nfkd.load(path)
        rc = nfkd_main(["info", str(path)])
        err = capsys.readouterr().err
        assert rc == 2, key
        assert err.startswith("nfkd info: error: ") and err.count("\n") == 1, (key, err)
        assert "Traceback" not in err and len(err) < 600, (key, err)


def test_crafted_header_cli_subprocess_has_no_traceback(tmp_path):
    paths = _crafted_headers(tmp_path)
    for key in ("missing-data-offsets", "header-deeply-nested"):
        out = subprocess.run([sys.executable, "-m", "nfkd", "info", str(paths[key])], capture_output=True, text=True,
                             cwd=REPO, timeout=120)
        assert out.returncode == 2 and "Traceback" not in out.stderr and out.stderr.count("\n") == 1, out.stderr


def test_glow_round_trip_passes_the_config_check(tmp_path):
    """The meta-device build must reproduce every stored name, shape and dtype (Glow has buffers too)."""
    flow = perturb(Glow((3, 8, 8), levels=2, steps=2, hidden=8), seed=1).eval()
    x = torch.rand(3, 3, 8, 8) - 0.5
    with torch.no_grad():
        assert torch.equal(nfkd.load(nfkd.save(flow, tmp_path / "g.pt")).log_prob(x), flow.log_prob(x))
