"""Every file nfkd writes has the mode a plain ``open`` gives under the umask (export/file_modes.py):
checkpoints and training state, export graphs and manifest, the export cache, engine files, pair bundles
and the FID statistics cache. Run under umask 027, so 0640 / 0750 differ from both mkstemp's 0600 and
the common 0644."""
from __future__ import annotations

import hashlib
import os
import stat

import numpy as np
import pytest
import torch

import nfkd
from export.file_modes import current_umask, plain_mode
from nfkd.flows import MAF

UMASK = 0o027


@pytest.fixture
def umask_027():
    old = os.umask(UMASK)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_plain_mode_is_what_open_and_mkdir_give(tmp_path, umask_027):
    assert current_umask() == UMASK
    with open(tmp_path / "f", "w"):
        pass
    (tmp_path / "d").mkdir()
    assert plain_mode() == _mode(tmp_path / "f") == 0o640
    assert plain_mode(is_dir=True) == _mode(tmp_path / "d") == 0o750


def test_every_file_written_shares_the_plain_mode(tmp_path, umask_027):
    from export.artifacts import atomic_file
    from export.cache import export_flow
    from nfkd.inference.bundle import write_bundle
    from nfkd.metrics.fid import FeatureStats
    from nfkd.train import TrainConfig, TrainData, Trainer

    out = tmp_path / "written"
    torch.manual_seed(0)
    flow = MAF(3, blocks=1, hidden=8).eval()
    ckpt = nfkd.save(flow, out / "ckpt" / "model.pt")  # a checkpoint
    x = torch.randn(120, 3, generator=torch.Generator().manual_seed(0))
    cfg = TrainConfig(steps=4, batch_size=16, eval_every=2, checkpoint_every=2, warmup=1, progress=False)
    Trainer(MAF(3, blocks=1, hidden=4), TrainData(x[:100], x[100:]), cfg, out / "run").run()  # model.pt, state
    export_flow(flow, cache_dir=out / "cache")  # the export cache: a saved flow + its export folder (graphs, manifest)
    atomic_file(out / "engines" / "density.plan", b"plan bytes")  # how export.trt writes engines
    sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    write_bundle(out / "pair", ckpt, ckpt, sha, sha, None)  # a pair bundle
    FeatureStats(np.zeros(2), np.eye(2), 5).save(out / "fid" / "stats.npz")  # the FID statistics cache

    files = [p for p in out.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"model.pt", "train_state.pt", "manifest.json", "density.onnx", "pair.json", "stats.npz",
            "density.plan"} <= names, names
    assert any(p.parent.name == "flows" for p in files)  # the cache's saved flow
    wrong = {str(p.relative_to(out)): oct(_mode(p)) for p in files if _mode(p) != 0o640}
    assert not wrong, wrong
    folders = [out, *(p for p in out.rglob("*") if p.is_dir())]
    wrong = {str(p.relative_to(out)): oct(_mode(p)) for p in folders if _mode(p) != 0o750}
    assert not wrong, wrong
