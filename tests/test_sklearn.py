"""nfkd.sklearn: scikit-learn's own estimator checks, units, persistence, errors, distill, ONNX.

References: scikit-learn's check suite; a numerical integral of exp(score_samples) over a grid
(a density in the user's units integrates to 1); the flow's chain evaluated by hand in float64
on standardized data plus the standardization's log-Jacobian; onnxruntime on the exported graph.
"""
from __future__ import annotations

import copy
import io
import pickle
import re
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from nfkd.errors import InputError
from nfkd.sklearn import AUTO_MASS, FlowDensity, FlowOutlierDetector

REPO = Path(__file__).resolve().parents[1]
TINY = dict(flow_config={"steps": 2, "hidden": 8}, steps=4, batch_size=32, random_state=0)
TINY_MAF = dict(TINY, arch="maf", flow_config={"blocks": 2, "hidden": 8})

# contamination="auto" flags rows outside the fitted model's own 99 % highest-density region.
# check_outliers_train / check_outliers_fit_predict assume a default detector flags some of the
# 300 training rows of three Gaussian blobs; a flow fitted to them finds none of them in its 1 %
# tail (a correct answer for that data), so with "auto" these two checks are expected to fail.
# The same checks pass for contamination=0.1 (the instance before it in the list).
AUTO_XFAIL = {
    "check_outliers_train": "contamination='auto' thresholds at the model's 1 % density tail; the blob rows have "
                            "none there, the check wants some flagged (passes with contamination=0.1)",
    "check_outliers_fit_predict": "same reason as check_outliers_train (passes with contamination=0.1)",
}


def _expected_failures(est):
    if isinstance(est, FlowOutlierDetector) and est.contamination == "auto":
        return AUTO_XFAIL
    return {}


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models on a shared 2-core box: one torch thread (conftest restores the count after)."""
    torch.set_num_threads(1)


@parametrize_with_checks(
    [FlowDensity(**TINY), FlowDensity(**TINY_MAF), FlowOutlierDetector(contamination=0.1, **TINY),
     FlowOutlierDetector(**TINY)],
    expected_failed_checks=_expected_failures,
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def _gauss(n=400, d=3, seed=0, scale=1.0, shift=0.0):
    rng = np.random.RandomState(seed)
    return (rng.randn(n, d) @ np.array([[1.0, 0.5, 0.0], [0.0, 1.0, 0.3], [0.0, 0.0, 1.0]])[:d, :d]) * scale + shift


# --- units ------------------------------------------------------------------------------------
def test_density_integrates_to_one_in_user_units():
    """exp(score_samples) over a grid in X's units sums to ~1: a missing log|scale| would give 100 or 0.01."""
    rng = np.random.RandomState(1)
    X = rng.randn(600, 2) * np.array([10.0, 0.5]) + np.array([50.0, -3.0])
    est = FlowDensity(flow_config={"steps": 2, "hidden": 16}, steps=60, random_state=0).fit(X)
    g0 = np.linspace(50 - 80, 50 + 80, 241)
    g1 = np.linspace(-3 - 4, -3 + 4, 241)
    xx = np.stack(np.meshgrid(g0, g1, indexing="ij"), -1).reshape(-1, 2)
    mass = np.exp(est.score_samples(xx)).sum() * (g0[1] - g0[0]) * (g1[1] - g1[0])
    assert abs(mass - 1.0) < 0.02, mass


def test_score_is_the_standardized_flow_plus_its_log_jacobian():
    """Reference by hand in float64: the chain on (x - mean) / std, N(0, I), minus sum(log std)."""
    X = _gauss(scale=7.0, shift=20.0)
    est = FlowDensity(**{**TINY, "steps": 30}).fit(X)
    flow = est.flow_
    mean, std = X.mean(0), X.std(0)
    assert np.allclose(flow.normalize.loc.numpy(), mean, rtol=1e-6) and np.allclose(flow.normalize.scale.numpy(), std, rtol=1e-6)
    import copy

    inner = copy.deepcopy(flow).double()
    inner.normalize.set(torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64))
    u = (torch.from_numpy(X) - flow.normalize.loc.double()) / flow.normalize.scale.double()
    ref = inner.log_prob(u).detach().numpy() - np.log(flow.normalize.scale.double().numpy()).sum()
    np.testing.assert_allclose(est.score_samples(X), ref, rtol=1e-10, atol=1e-10)


def test_scaling_the_data_shifts_log_density_by_log_scale():
    """Fit on X and on 10 X with the same seed: the same internal problem, so scores differ by D log 10."""
    X = _gauss()
    a = FlowDensity(**{**TINY, "steps": 20}).fit(X)
    b = FlowDensity(**{**TINY, "steps": 20}).fit(10 * X)
    np.testing.assert_allclose(b.score_samples(10 * X), a.score_samples(X) - 3 * np.log(10.0), atol=2e-3)


# --- training, scoring, sampling -------------------------------------------------------------
def test_same_seed_same_scores_other_seed_other_scores():
    X = _gauss()
    s1 = FlowDensity(**TINY).fit(X).score_samples(X)
    s2 = FlowDensity(**TINY).fit(X).score_samples(X)
    s3 = FlowDensity(**{**TINY, "random_state": 1}).fit(X).score_samples(X)
    assert np.array_equal(s1, s2) and not np.allclose(s1, s3)


def test_fit_does_not_touch_torch_global_rng():
    state = torch.get_rng_state()
    FlowDensity(**TINY).fit(_gauss())
    assert torch.equal(state, torch.get_rng_state())


def test_sample_is_in_user_units_and_seeded():
    X = _gauss(scale=10.0, shift=100.0)
    est = FlowDensity(**{**TINY, "steps": 60}).fit(X)
    s = est.sample(4000, random_state=3)
    assert s.shape == (4000, 3) and s.dtype == np.float64
    assert np.allclose(s.mean(0), X.mean(0), atol=2.0) and np.allclose(s.std(0), X.std(0), rtol=0.25)
    assert np.array_equal(s, est.sample(4000, random_state=3))
    # the same seed decodes the same noise on an nfkd.inference backend (float32)
    np.testing.assert_allclose(est.set_params(backend="eager").sample(50, random_state=3), s[:50], rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("backend", ["folded", "eager"])
def test_inference_backend_scores_match_exact(backend):
    X = _gauss()
    est = FlowDensity(**TINY_MAF).fit(X)
    exact = est.score_samples(X)
    fast = est.set_params(backend=backend).score_samples(X)
    assert fast.dtype == np.float64
    np.testing.assert_allclose(fast, exact, rtol=1e-5, atol=1e-4)


def test_early_stopping_keeps_the_best_validation_step():
    X = _gauss(n=200)
    est = FlowDensity(flow_config={"steps": 2, "hidden": 64}, steps=400, n_iter_no_change=2, lr=3e-2,
                      random_state=0).fit(X)
    # stopped 2 evaluations (of every 400 // 20 = 20 steps) after the best one, whose weights were kept
    assert est.n_iter_ < 400 and est.best_iteration_ == est.n_iter_ - 2 * 20
    val_rows = np.random.RandomState(0).permutation(len(X))[: round(0.1 * len(X))]
    assert est.validation_score_ == pytest.approx(est.score_samples(X[val_rows]).mean(), abs=1e-4)


# --- model selection and persistence ---------------------------------------------------------
def test_grid_search_over_a_pipeline_picks_by_held_out_log_likelihood():
    X = _gauss(n=300)
    pipe = make_pipeline(StandardScaler(), FlowDensity(**{**TINY, "steps": 20}))
    grid = {"flowdensity__lr": [1e-5, 1e-2]}
    cv = KFold(3, shuffle=True, random_state=0)
    gs = GridSearchCV(pipe, grid, cv=cv).fit(X)
    scores = gs.cv_results_["mean_test_score"]
    assert gs.best_index_ == int(np.argmax(scores)) and gs.best_params_ == {"flowdensity__lr": 1e-2}
    # split 0's score is the mean held-out log-density of the pipeline fitted on the other folds
    train, test = next(cv.split(X))
    manual = make_pipeline(StandardScaler(), FlowDensity(**{**TINY, "steps": 20, "lr": 1e-2})).fit(X[train])
    assert gs.cv_results_["split0_test_score"][1] == pytest.approx(manual[-1].score_samples(manual[0].transform(X[test])).mean())


class _RecordingUnpickler(pickle.Unpickler):
    def __init__(self, f):
        super().__init__(f)
        self.globals: set[str] = set()

    def find_class(self, module, name):
        self.globals.add(f"{module}.{name}")
        return super().find_class(module, name)


@pytest.mark.parametrize("cls", [FlowDensity, FlowOutlierDetector])
def test_pickle_carries_the_safe_checkpoint_not_torch(cls):
    X = _gauss()
    est = cls(**TINY).fit(X)
    blob = pickle.dumps(est)
    up = _RecordingUnpickler(io.BytesIO(blob))
    back = up.load()
    assert not [g for g in up.globals if g.startswith(("torch", "nfkd.flows", "collections.OrderedDict"))], up.globals
    assert np.array_equal(back.score_samples(X), est.score_samples(X))
    assert back.flow_.checkpoint_metadata["source"] == f"nfkd.sklearn.{cls.__name__}"  # came through nfkd.load


def test_joblib_round_trip_scores_identically(tmp_path):
    X = _gauss()
    est = FlowOutlierDetector(**TINY).fit(X)
    joblib.dump(est, tmp_path / "det.joblib")
    back = joblib.load(tmp_path / "det.joblib")
    assert np.array_equal(back.score_samples(X), est.score_samples(X))
    assert np.array_equal(back.predict(X), est.predict(X)) and back.offset_ == est.offset_


# --- errors ----------------------------------------------------------------------------------
def test_clear_errors():
    X = _gauss()
    est = FlowDensity(**TINY)
    with pytest.raises(NotFittedError):
        est.score_samples(X)
    bad = X.copy()
    bad[3, 1] = np.nan
    with pytest.raises(InputError, match="NaN"):
        est.fit(bad)
    est.fit(X)
    with pytest.raises(InputError, match="NaN"):
        est.score_samples(bad)
    with pytest.raises(InputError, match="X has 2 features, but FlowDensity is expecting 3 features"):
        est.score_samples(X[:, :2])
    with pytest.raises(InputError, match=r"feature\(s\) \[1\] are constant"):
        FlowDensity(**TINY).fit(np.c_[X[:, :1], np.ones(len(X)), X[:, 2:]])
    with pytest.raises(InputError, match="unknown method 'nope'"):
        est.distill(X, method="nope")
    with pytest.raises(InputError, match="steps must be a positive integer"):
        est.distill(X, steps=0)
    with pytest.raises(InputError, match="unknown preset"):
        FlowDensity(**{**TINY, "preset": "nope"}).fit(X)
    with pytest.raises(InputError, match="n_samples must be a positive integer"):
        est.sample(0)


def test_iaf_estimator_fits_scores_samples_and_pickles():
    """arch='iaf': an IAF fitted by maximum likelihood (its exact, sequential density), scored in the
    user's units (reference: the fitted flow's own float64 log_prob of the standardized rows plus the
    standardization's log-Jacobian, i.e. the flow called directly), sampled in one pass per block."""
    from nfkd.flows import IAF

    X = _gauss(n=300, d=3, scale=5.0, shift=2.0)
    est = FlowDensity(arch="iaf", flow_config={"blocks": 2, "hidden": 8}, steps=30, batch_size=64,
                      random_state=0).fit(X)
    flow = est.flow_
    assert isinstance(flow, IAF)
    got = est.score_samples(X[:50])
    with torch.no_grad():
        ref = copy.deepcopy(flow).double().log_prob(torch.as_tensor(X[:50], dtype=torch.float64)).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-9)
    assert np.isfinite(est.sample(20, random_state=1)).all()
    again = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(again.score_samples(X[:50]), got)


def test_dataframe_feature_names():
    pd = pytest.importorskip("pandas", reason="pandas is optional for nfkd.sklearn")
    X = _gauss()
    df = pd.DataFrame(X, columns=["a", "b", "c"])
    est = FlowDensity(**TINY).fit(df)
    assert list(est.feature_names_in_) == ["a", "b", "c"]
    with pytest.warns(UserWarning, match="valid feature names"):  # scikit-learn's own warning
        plain = est.score_samples(X.copy())
    assert np.array_equal(est.score_samples(df), plain)
    with pytest.raises(InputError, match="feature names"):
        est.score_samples(df.rename(columns={"a": "z"}))


def test_import_nfkd_does_not_import_sklearn():
    code = "import sys, nfkd, nfkd.train, nfkd.inference; assert 'sklearn' not in sys.modules, 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# --- outliers ----------------------------------------------------------------------------------
def test_outlier_conventions_and_auto_threshold():
    X = _gauss(n=500)
    det = FlowOutlierDetector(**{**TINY, "steps": 30}).fit(X)
    np.testing.assert_allclose(det.decision_function(X), det.score_samples(X) - det.offset_)
    # "auto": about AUTO_MASS of the model's own samples fall below offset_ (by construction)
    flagged = (det.predict(det.sample(10000, random_state=5)) == -1).mean()
    assert abs(flagged - AUTO_MASS) < 0.005
    far = X[:5] + 50.0
    assert (det.predict(far) == -1).all()
    det10 = FlowOutlierDetector(**{**TINY, "steps": 30, "contamination": 0.1}).fit(X)
    assert (det10.predict(X) == -1).mean() == pytest.approx(0.1, abs=0.005)


# --- distillation and export -------------------------------------------------------------------
@pytest.mark.parametrize("method", [None, "skd"])
def test_distill_returns_a_fitted_smaller_student(method):
    from nfkd.defaults import recommend

    X = _gauss()
    teacher = FlowDensity(flow_config={"steps": 3, "hidden": 16}, steps=20, random_state=0).fit(X)
    student = teacher.distill(X, method=method, student={"steps": 2, "hidden": 8}, steps=10)
    assert isinstance(student, FlowDensity) and student.role == "student" and student.n_features_in_ == 3
    assert student.distilled_from_["method"] == (method or recommend("glow1d", len(X)).method)
    assert student.flow_.num_parameters() < teacher.flow_.num_parameters()
    assert np.isfinite(student.score(X)) and np.isfinite(student.score_samples(X)).all()
    assert torch.equal(student.flow_.normalize.scale, teacher.flow_.normalize.scale)


def test_distill_without_data_uses_teacher_samples():
    X = _gauss()
    det = FlowOutlierDetector(**{**TINY_MAF, "steps": 20}).fit(X)
    student = det.distill(steps=10)
    assert isinstance(student, FlowOutlierDetector) and np.isfinite(student.offset_)
    assert student.n_train_samples_ == len(X) and np.isfinite(student.score(X))


def test_to_onnx_matches_score_samples_in_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    X = _gauss(scale=5.0, shift=-7.0)
    est = FlowDensity(**{**TINY, "steps": 20}).fit(X)
    folder = est.to_onnx(tmp_path / "onnx")
    sess = ort.InferenceSession(str(folder / "density.onnx"), providers=["CPUExecutionProvider"])
    lp = sess.run(["log_prob"], {"x": X.astype(np.float32)})[0]
    np.testing.assert_allclose(lp, est.score_samples(X), rtol=1e-5, atol=1e-3)


@pytest.mark.slow
def test_readme_example_runs(tmp_path, monkeypatch):
    text = (REPO / "README.md").read_text()
    block = re.search(r"## scikit-learn estimators\n.*?```python\n(.+?)\n```", text, flags=re.S).group(1)
    assert "steps=200" in block
    block = block.replace("steps=200", "steps=5")  # the same calls, shorter training
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(block, "README.md", "exec"), ns)  # noqa: S102 - our own README
    assert (tmp_path / "wine-student" / "density.onnx").exists() and np.isfinite(ns["log_p"]).all()


def test_constancy_is_scale_free():
    """Issue 24 #11: X * 1e-13 was refused as "features are constant" (X * 1e-8 worked)."""
    X = _gauss(n=120)
    for scale in (1e-13, 1e-8, 1e13):
        est = FlowDensity(**TINY).fit(X * scale)
        assert np.isfinite(est.score_samples(X[:5] * scale)).all()
    # a constant column is still refused at any scale, and so is a near-constant one (float64 round-off)
    for value in (1e-13, 3.0, 1e13):
        with pytest.raises(InputError, match=r"feature\(s\) \[1\] are constant"):
            FlowDensity(**TINY).fit(np.c_[X[:, :1], np.full(len(X), value), X[:, 2:]])
    with pytest.raises(InputError, match=r"feature\(s\) \[0\] vary by less than 1e-30"):
        FlowDensity(**TINY).fit(np.c_[X[:, :1] * 1e-35, X[:, 1:]])


def test_rows_beyond_float32_are_named_on_a_float32_backend():
    """Issue 24 #11: backend="auto" said "x contains NaN or Inf" for finite float64 rows beyond float32."""
    X = _gauss(n=120)
    est = FlowDensity(**{**TINY, "backend": "auto"}).fit(X)
    bad = X[:4].copy()
    bad[2, 0] = 1e39
    with pytest.raises(InputError, match=r"beyond the float32 range .* in rows \[2\]") as err:
        est.score_samples(bad)
    assert "NaN" not in str(err.value).split(";")[0]
    assert np.isfinite(est.set_params(backend="exact").score_samples(bad)).all()
