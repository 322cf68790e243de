"""A density + sampler pair as one deployable model (``nfkd.inference.pair``, ``python -m nfkd pair``).

References: the MAF's own float64 ``log_prob`` for ``log_prob``; the IAF's float64 ``inverse`` of
noise drawn here with ``numpy.random.default_rng(seed)`` for ``sample``; the bundle's faithfulness
recomputed from those float64 flows with ``energy_distance`` and the MAF's ``log_prob``. Flows are
tiny, untrained but perturbed off the identity, on the embedded wine table's 13 features.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

import nfkd
from nfkd import inference
from nfkd.__main__ import main as nfkd_main
from nfkd.errors import CheckpointError, InputError
from nfkd.flows import IAF, MAF, Glow
from nfkd.inference.bundle import pair_sha256
from nfkd.metrics.tabular import energy_distance
from nfkd.pipeline import data_metadata, get_data

from .helpers import perturb

DATA = "wine"


@pytest.fixture(scope="module")
def wine():
    return get_data(DATA)


def _flow(cls, data, seed: int, **kw):
    torch.manual_seed(seed)
    flow = cls(dim=data.dim, blocks=2, hidden=16, **kw)
    flow.normalize.set(torch.from_numpy(data.mean), torch.from_numpy(np.maximum(data.std, 1e-12)))
    return perturb(flow, scale=0.1, seed=seed).eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory, wine):
    """maf.pt (the density model), iaf.pt (the sampler), teacher.pt, all with wine's normalization."""
    root = tmp_path_factory.mktemp("pair")
    meta = data_metadata(wine)
    out = {}
    for name, cls, seed in (("maf", MAF, 1), ("iaf", IAF, 2), ("teacher", MAF, 3)):
        out[name] = root / f"{name}.pt"
        nfkd.save(_flow(cls, wine, seed), out[name], metadata=meta)
    out["root"] = root
    return out


def _f64(path: Path):
    return nfkd.load(path).double().eval()


def _iaf_samples(path: Path, n: int, seed: int, temperature: float = 1.0) -> np.ndarray:
    """The reference: the IAF's float64 decode of default_rng(seed) standard-normal float32 noise."""
    flow = _f64(path)
    z = np.random.default_rng(seed).standard_normal((n, flow.dim), dtype=np.float32)
    with torch.no_grad():
        return flow.inverse([torch.from_numpy(z).double() * temperature]).x.numpy()


def _maf_log_prob(path: Path, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return _f64(path).log_prob(torch.from_numpy(np.asarray(x, np.float64))).numpy()


def _lower_median(v: np.ndarray) -> float:
    """torch.median's convention (metrics.tabular.teacher_score): the lower of the two middle values."""
    return float(np.sort(v)[(len(v) - 1) // 2])


def _rows(wine, n: int = 64) -> np.ndarray:
    return np.ascontiguousarray(wine.test[:n], np.float32)


# --------------------------------------------------------------------------------------------
# PairRunner / load_pair
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["auto", "eager"])
def test_pair_routes_log_prob_to_the_maf_and_sample_to_the_iaf(files, wine, backend):
    pair = inference.load_pair(files["maf"], files["iaf"], backend=backend, threads=1)
    assert isinstance(pair, inference.PairRunner) and isinstance(pair, inference.Runner)
    x = _rows(wine)
    np.testing.assert_allclose(pair.log_prob(x), _maf_log_prob(files["maf"], x), rtol=1e-4, atol=1e-4)
    xs = pair.sample(50, seed=7).numpy()
    np.testing.assert_allclose(xs, _iaf_samples(files["iaf"], 50, 7), rtol=1e-4, atol=1e-4)
    # given noise (numpy in, numpy out) and a temperature: the IAF's decode of that noise
    z = np.random.default_rng(3).standard_normal((5, wine.dim)).astype(np.float32)
    with torch.no_grad():
        ref = _f64(files["iaf"]).inverse([torch.from_numpy(z).double() * 0.7]).x.numpy()
    got = pair.sample(noise=[z], temperature=0.7)
    assert isinstance(got, np.ndarray)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_auto_picks_a_backend_per_side_and_info_reports_both(files):
    pair = inference.load_pair(files["maf"], files["iaf"], threads=1)
    assert pair.density.meta.arch == "maf" and pair.sampler.meta.arch == "iaf"
    expected = "numba" if inference.registry.status("numba").available else "onnxruntime"
    assert pair.density.backend == expected and pair.sampler.backend == expected  # ranking.json: numba first
    info = pair.info()
    assert info["arch"] == "pair" and info["backend"] == f"{pair.density.backend}+{pair.sampler.backend}"
    sides = info["pair"]
    assert (sides["density"]["arch"], sides["sampler"]["arch"]) == ("maf", "iaf")
    d_sha, s_sha = (nfkd.checkpoint.load_checkpoint(files[k]).sha256 for k in ("maf", "iaf"))
    assert (sides["density"]["checkpoint_sha256"], sides["sampler"]["checkpoint_sha256"]) == (d_sha, s_sha)
    assert info["checkpoint_sha256"] == pair_sha256(d_sha, s_sha)
    assert sides["faithfulness"] is None  # not measured without a bundle
    json.dumps(info, allow_nan=False)


def test_one_backend_per_side(files, wine):
    pair = inference.load_pair(files["maf"], files["iaf"], backend="eager", sampler_backend="folded", threads=1)
    assert (pair.density.backend, pair.sampler.backend) == ("eager", "folded")


def test_mismatched_models_are_refused(files, wine, tmp_path):
    other = tmp_path / "iaf5.pt"
    torch.manual_seed(0)
    nfkd.save(IAF(dim=5, blocks=2, hidden=8), other)
    with pytest.raises(InputError, match=r"takes 13 features per row and the sampler \(iaf\) makes 5"):
        inference.load_pair(files["maf"], other)
    glow = Glow((1, 4, 4), levels=1, steps=1, hidden=8)
    with pytest.raises(InputError, match="tabular model .* image one"):
        inference.load_pair(MAF(dim=16, blocks=1, hidden=8), glow)
    shifted = tmp_path / "iaf-other-data.pt"
    meta = data_metadata(wine)
    meta["normalization"]["mean"] = [v + 1.0 for v in meta["normalization"]["mean"]]
    nfkd.save(_flow(IAF, wine, 2), shifted, metadata=meta)
    with pytest.raises(InputError, match="different data normalizations"):
        inference.load_pair(files["maf"], shifted)


# --------------------------------------------------------------------------------------------
# The bundle: python -m nfkd pair
# --------------------------------------------------------------------------------------------
N = 512


@pytest.fixture(scope="module")
def bundle(files):
    out = files["root"] / "bundle"
    rc = nfkd_main(["pair", "--density", str(files["maf"]), "--sampler", str(files["iaf"]), "--n", str(N),
                    "--seed", "5", "-o", str(out)])
    assert rc == 0
    return out


def test_bundle_files_and_faithfulness_match_a_direct_computation(bundle, files, wine):
    record = json.loads((bundle / "pair.json").read_text())
    assert sorted(p.name for p in bundle.iterdir()) == ["density.pt", "pair.json", "sampler.pt"]
    for role, src in (("density", "maf"), ("sampler", "iaf")):
        entry = record["files"][role]
        assert entry["file"] == f"{role}.pt"
        assert (bundle / entry["file"]).read_bytes() == files[src].read_bytes()
        assert entry["sha256"] == nfkd.checkpoint.load_checkpoint(files[src]).sha256
    f = record["faithfulness"]
    assert (f["n"], f["seed"], f["reference"]["role"], f["reference"]["file"]) == (N, 5, "density", "maf.pt")
    # direct: IAF samples from default_rng(5), MAF samples from default_rng(6) (the MAF's own float64 decode)
    xs = _iaf_samples(files["iaf"], N, 5)
    z = np.random.default_rng(6).standard_normal((N, wine.dim), dtype=np.float32)
    with torch.no_grad():
        own = _f64(files["maf"]).inverse([torch.from_numpy(z).double()]).x.numpy()
    lp_s, lp_o = _maf_log_prob(files["maf"], xs), _maf_log_prob(files["maf"], own)
    got_s, got_o = f["reference_log_prob_of_sampler_samples"], f["reference_log_prob_of_own_samples"]
    np.testing.assert_allclose([got_s["mean"], got_s["median"]], [lp_s.mean(), _lower_median(lp_s)], rtol=1e-6)
    np.testing.assert_allclose([got_o["mean"], got_o["median"]], [lp_o.mean(), _lower_median(lp_o)], rtol=1e-6)
    loc, scale = wine.mean, np.maximum(wine.std, 1e-12)
    ed = energy_distance(torch.from_numpy((xs - loc) / scale), torch.from_numpy((own - loc) / scale))
    assert f["energy_distance"]["value"] == pytest.approx(ed, rel=1e-6)
    assert f["energy_distance"]["n_reference"] == N
    assert "iaf samples at" in f["summary"] and "its own samples" in f["summary"]


def test_bundle_with_a_teacher_and_the_test_split(files, wine, tmp_path):
    out = tmp_path / "b"
    rc = nfkd_main(["pair", "--density", str(files["maf"]), "--sampler", str(files["iaf"]), "--reference",
                    str(files["teacher"]), "--data", DATA, "--n", "256", "-o", str(out)])
    assert rc == 0
    f = json.loads((out / "pair.json").read_text())["faithfulness"]
    assert f["reference"]["role"] == "teacher" and f["reference"]["file"] == "teacher.pt"
    test = wine.test[:256].astype(np.float64)
    xs = _iaf_samples(files["iaf"], 256, 0)
    loc, scale = wine.mean, np.maximum(wine.std, 1e-12)
    ed = energy_distance(torch.from_numpy((xs - loc) / scale), torch.from_numpy((test - loc) / scale))
    assert f["energy_distance"]["value"] == pytest.approx(ed, rel=1e-6)
    assert f["energy_distance"]["n_reference"] == len(test) and DATA in f["energy_distance"]["against"]
    lp = _maf_log_prob(files["teacher"], xs)
    assert f["reference_log_prob_of_sampler_samples"]["median"] == pytest.approx(_lower_median(lp), rel=1e-6)


def test_load_of_a_bundle_is_a_pair_runner(bundle, files, wine):
    pair = inference.load(bundle, backend="eager", threads=1)
    assert isinstance(pair, inference.PairRunner)
    x = _rows(wine, 16)
    np.testing.assert_allclose(pair.log_prob(x), _maf_log_prob(files["maf"], x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(pair.sample(8, seed=1).numpy(), _iaf_samples(files["iaf"], 8, 1), rtol=1e-5, atol=1e-5)
    info = pair.info()
    record = json.loads((bundle / "pair.json").read_text())
    assert info["pair"]["faithfulness"] == record["faithfulness"]
    assert info["checkpoint_sha256"] == record["pair_sha256"] and info["source"] == str(bundle)
    mixed = inference.load(bundle, backend="eager", sampler_backend="folded")
    assert mixed.backend == "eager+folded"


def _copy(bundle: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(bundle, out)
    return out


def _edit(folder: Path, role: str, name: str) -> None:
    rec = json.loads((folder / "pair.json").read_text())
    rec["files"][role]["file"] = name
    (folder / "pair.json").write_text(json.dumps(rec))


def test_tampered_bundles_are_refused(bundle, files, tmp_path):
    # another valid checkpoint in place of the sampler: its hash is not the recorded one
    b = _copy(bundle, tmp_path / "hash")
    nfkd.save(_flow(IAF, get_data(DATA), 9), b / "sampler.pt")
    with pytest.raises(CheckpointError, match="does not match the SHA-256 in pair.json"):
        inference.load(b)
    # names that leave the folder, even when the file they name is the right one
    for name in ("../iaf.pt", str(files["iaf"]), "sub/sampler.pt", ".."):
        b = _copy(bundle, tmp_path / f"name{abs(hash(name))}")
        shutil.copy(files["iaf"], b.parent / "iaf.pt")
        _edit(b, "sampler", name)
        with pytest.raises(InputError, match="plain files inside its folder"):
            inference.load(b)
    # a symlink to the very same bytes (the hash would pass): refused for being a link
    b = _copy(bundle, tmp_path / "link")
    (b / "sampler.pt").unlink()
    os.symlink(files["iaf"], b / "sampler.pt")
    with pytest.raises(InputError, match="symlink"):
        inference.load(b)
    b = _copy(bundle, tmp_path / "dir")
    (b / "sampler.pt").unlink()
    (b / "sampler.pt").mkdir()
    with pytest.raises(InputError, match="not a regular file"):
        inference.load(b)
    b = _copy(bundle, tmp_path / "missing")
    (b / "density.pt").unlink()
    with pytest.raises(InputError, match="missing"):
        inference.load(b)


# --------------------------------------------------------------------------------------------
# Serving
# --------------------------------------------------------------------------------------------
def test_serve_routes_log_prob_and_sample_and_shows_the_pair(bundle, files, wine):
    from nfkd.serving import ServeConfig, create_app, load_model, load_pair_model
    from nfkd.serving.http_server import BackgroundServer

    x = _rows(wine, 12)
    record = json.loads((bundle / "pair.json").read_text())
    for backend in (load_model(bundle, "torch", threads=1),
                    load_pair_model(files["maf"], files["iaf"], "auto", threads=1, sampler_backend="torch")):
        with BackgroundServer(create_app(backend, ServeConfig(max_wait_ms=1))) as srv, \
                httpx.Client(base_url=srv.url, timeout=30.0) as c:
            r = c.post("/log_prob", json={"x": x.tolist()})
            assert r.status_code == 200, r.text
            np.testing.assert_allclose(r.json()["log_prob"], _maf_log_prob(files["maf"], x), rtol=1e-4, atol=1e-4)
            r = c.post("/sample", json={"n": 6, "temperature": 1.0, "seed": 4})
            assert r.status_code == 200, r.text
            np.testing.assert_allclose(r.json()["x"], _iaf_samples(files["iaf"], 6, 4), rtol=1e-4, atol=1e-4)
            meta = c.get("/metadata").json()
            assert meta["arch"] == "pair"
            assert (meta["pair"]["density"]["arch"], meta["pair"]["sampler"]["arch"]) == ("maf", "iaf")
            assert meta["pair"]["sampler"]["backend"] in ("eager", "folded")
            r = c.post("/log_prob", json={"x": [[0.0] * 5]})
            assert r.status_code == 422 and "13" in r.json()["error"]
    assert meta["pair"]["faithfulness"] is None
    assert load_model(bundle, "torch").info()["pair"]["faithfulness"] == record["faithfulness"]


def test_serve_cli_refuses_half_a_pair(files, bundle, capsys):
    assert nfkd_main(["serve", "--density", str(files["maf"])]) == 2
    assert "--density and --sampler" in capsys.readouterr().err
    assert nfkd_main(["serve", str(bundle), "--density", str(files["maf"]), "--sampler", str(files["iaf"])]) == 2
    assert nfkd_main(["serve", str(files["maf"]), "--sampler-backend", "torch"]) == 2
    assert "apply to a pair" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# ONNX export of a bundle
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_onnx_export_of_a_bundle_is_gated_and_routes(bundle, files, wine, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from export.manifest import Manifest
    from export.onnx import main as export_main

    out = tmp_path / "onnx"
    assert export_main([str(bundle), "-o", str(out)]) == 0
    assert "density.onnx from density.pt (maf), sample.onnx from sampler.pt (iaf)" in capsys.readouterr().out
    m = Manifest.load(out)
    record = json.loads((bundle / "pair.json").read_text())
    assert m.arch == "pair" and m.maf_sampling is None  # neither sequential direction was exported
    assert m.graphs["density"]["source"] == {"role": "density", "checkpoint": "density.pt", "arch": "maf",
                                             "sha256": record["files"]["density"]["sha256"]}
    assert m.graphs["sample"]["source"]["checkpoint"] == "sampler.pt" and m.graphs["sample"]["source"]["arch"] == "iaf"
    assert m.source["sha256"] == record["pair_sha256"]
    assert m.parity["passed"] and m.parity["per_graph"]["density"]["directions"] == ["density"]
    assert m.parity["per_graph"]["sample"]["directions"] == ["sample"]
    assert "sample_max_abs_err" not in m.parity["per_graph"]["density"]
    assert "log_prob_max_rel_err" not in m.parity["per_graph"]["sample"]
    model = inference.load(out, threads=1)  # auto: an export folder runs on ONNX Runtime
    assert model.backend == "onnxruntime"
    x = _rows(wine, 16)
    np.testing.assert_allclose(model.log_prob(x), _maf_log_prob(files["maf"], x), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(model.sample(8, seed=2).numpy(), _iaf_samples(files["iaf"], 8, 2), rtol=1e-4, atol=1e-4)
    info = model.info()
    assert info["checkpoint_sha256"] == record["pair_sha256"]
    assert info["pair"]["faithfulness"] == record["faithfulness"]
    assert (info["pair"]["density"]["arch"], info["pair"]["sampler"]["arch"]) == ("maf", "iaf")


def test_pair_cli_refuses_a_mismatch_in_one_line(files, tmp_path):
    import subprocess
    import sys

    other = tmp_path / "iaf5.pt"
    nfkd.save(IAF(dim=5, blocks=1, hidden=8), other)
    r = subprocess.run([sys.executable, "-m", "nfkd", "pair", "--density", str(files["maf"]), "--sampler", str(other),
                        "-o", str(tmp_path / "b")], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "features" in r.stderr, r.stderr
    assert not (tmp_path / "b").exists()
