"""One table of defaults (issue 27): the CLI, FlowDensity, the demo and the docs agree with ``nfkd.defaults``."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import nfkd
from nfkd.cli.distill import _kd_config, _method, _parser
from nfkd.defaults import DATA_FREE, DEFAULTS, auto_backend, backend_order, describe_defaults, recommend
from nfkd.distill.recipe import SMALL_DATA_ROWS, share_config
from nfkd.distill.variants import VARIANTS, demo_recipe, get_variant
from nfkd.inference.registry import ranking
from nfkd.sklearn import FlowDensity

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"small": SMALL_DATA_ROWS - 1, "large": SMALL_DATA_ROWS}


def test_table_rows_are_known_variants_and_keep_the_measured_best():
    assert all(d.method in VARIANTS and d.measured and d.why for d in (*DEFAULTS, DATA_FREE))
    assert recommend("glow1d", 455, "warm-start").method == "fkl"  # breast_cancer: 68 % of the gap, 3/3
    assert recommend("iaf", 455).method == recommend("iaf", 12000).method == "iaf"  # the share recipe
    assert recommend("maf", 455).method == recommend("maf", 12000).method == "ilkd"  # least harmful
    assert recommend("glow", 1457, "warm-start").method == "ilkd-aligned"  # no warm-start row: equal budget
    assert "no method measurably helps" in recommend("maf", 10).why
    text = describe_defaults()
    assert all(d.measured in text for d in DEFAULTS) and "numba" in text


def _cli_kd(arch: str, n: int, *extra: str):
    args = _parser().parse_args(["--teacher", "t.pt", "--data", "d", "--out", "o", *extra])
    return _kd_config(args, _method(args, arch), arch, n)


@pytest.mark.parametrize("arch", ["glow1d", "maf", "iaf", "glow"])
@pytest.mark.parametrize("size", ["small", "large"])
@pytest.mark.parametrize("warm", [False, True])
def test_cli_default_method_is_the_table(arch, size, warm):
    n = SIZES[size]
    d = recommend(arch, n, "warm-start" if warm else "equal-budget")
    kd, recipe = _cli_kd(arch, n, *(["--init-from", "base.pt"] if warm else []))
    want = share_config(n, seed=0) if d.method == "iaf" else get_variant(d.method).config(n_train=n, seed=0)
    assert (kd.method, kd.weights, kd.init_from_teacher, kd.align, kd.kd_scale) == \
        (want.method, want.weights, want.init_from_teacher, want.align, want.kd_scale)
    assert d.measured in recipe


def test_cli_data_free_and_explicit_flags():
    kd, recipe = _cli_kd("maf", 500, "--data-free")
    assert kd.method == DATA_FREE.method and DATA_FREE.measured in recipe
    kd, _ = _cli_kd("glow1d", 5000, "--align-every", "10")  # a flag the user sets adjusts the table's recipe
    assert kd.method == "ilkd" and kd.align and kd.kd_scale == "mean" and kd.align_every == 10
    kd, recipe = _cli_kd("glow1d", 5000, "--method", "skd")
    assert kd.method == "skd" and recipe == "--method skd"


def test_cli_run_records_the_table_recipe(tmp_path, capsys):
    from nfkd.__main__ import main

    common = ["--data", "wine", "--steps", "6", "--batch-size", "32", "--eval-every", "3", "--no-progress",
              "--threads", "1"]
    assert main(["train", *common, "--arch", "glow1d", "--out", str(tmp_path / "t")]) == 0
    assert main(["distill", *common, "--teacher", str(tmp_path / "t" / "model.pt"), "--out", str(tmp_path / "s")]) == 0
    meta = nfkd.load_checkpoint(tmp_path / "s" / "model.pt").metadata
    assert meta["recipe"].startswith("init ") and meta["training"]["kd"]["init_from_teacher"] is True
    capsys.readouterr()


def _gauss(n: int, d: int = 3) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, d))


TINY = dict(flow_config={"blocks": 1, "hidden": 8}, steps=3, batch_size=64, random_state=0)


@pytest.mark.parametrize("arch,student_arch", [("glow1d", None), ("maf", None), ("maf", "iaf")])
@pytest.mark.parametrize("size", ["small", "large"])
def test_flowdensity_default_method_is_the_table(arch, student_arch, size):
    X = _gauss(SIZES[size])  # FlowDensity.distill counts the rows it is given
    cfg = {"steps": 1, "hidden": 8} if arch == "glow1d" else {"blocks": 1, "hidden": 8}
    teacher = FlowDensity(**{**TINY, "arch": arch, "flow_config": cfg}).fit(X)
    student = teacher.distill(X, student=cfg, steps=2, arch=student_arch)
    want = recommend(student_arch or arch, len(X)).method
    assert student.distilled_from_["variant"] == want
    if size == "small":
        free = teacher.distill(None, student=cfg, steps=2, arch=student_arch)
        assert free.distilled_from_["variant"] == DATA_FREE.method


@pytest.mark.parametrize("arch", ["glow1d", "maf", "glow"])
def test_demo_recipe_is_the_table(arch):
    d = recommend(arch, None, "warm-start")
    assert demo_recipe(arch)[:2] == (d.method, d.protocol) and d.measured in demo_recipe(arch)[2]
    assert demo_recipe("glow1d")[:2] == ("fkl", "warm-start")


def test_backend_order_is_derived_from_the_ranking():
    for arch in ("glow1d", "maf"):
        assert backend_order("cpu", arch) == ranking("cpu", arch) and auto_backend("cpu", arch) == "numba"
    assert "numba" not in backend_order("cpu", "glow")  # numba runs tabular flows only


BACKEND_NAMES = {"numba": "numba", "onnx runtime": "onnxruntime", "onnxruntime": "onnxruntime",
                 "folded": "folded", "eager": "eager", "tensorrt": "tensorrt", "triton": "triton",
                 "compile": "compile"}


def _docs() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("path", _docs(), ids=lambda p: p.name)
def test_docs_name_no_default_backend_that_contradicts_the_table(path):
    """Where a doc says what ``auto`` (or "the default backend") runs on CPU, it names the table's pick first."""
    text = " ".join(re.sub(r"(?m)^\s*#\s*", " ", path.read_text()).split()).lower()
    pattern = "|".join(re.escape(n) for n in sorted(BACKEND_NAMES, key=len, reverse=True))
    for m in re.finditer(r"\bauto\b|default backend", text):
        clause = re.split(r"[.;]\s|\)\s", text[m.end():m.end() + 200])[0]
        if "cpu" not in clause:
            continue
        names = re.findall(pattern, clause)
        if names:
            assert BACKEND_NAMES[names[0]] == auto_backend("cpu", "glow1d"), f"{path.name}: ...{clause}"


def test_flowdensity_verbose_prints_progress_and_default_is_silent(capsys):
    """Issue 27, item 2: verbose=1 reports each training phase (as scikit-learn does); the default prints nothing."""
    X = _gauss(200)
    FlowDensity(**{**TINY, "arch": "maf"}).fit(X)
    assert capsys.readouterr().out == ""
    FlowDensity(**{**TINY, "arch": "maf", "verbose": 1}).fit(X)
    out = capsys.readouterr().out
    assert "training a maf teacher on 180 rows" in out and "kept step" in out
