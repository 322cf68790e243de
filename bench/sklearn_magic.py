"""nfkd.sklearn on MAGIC against scikit-learn's own density and outlier estimators.

``python -m bench.sklearn_magic [--steps 2000] [--out bench/results/sklearn_magic.json]``

1. Held-out log-likelihood (nats per event, raw MAGIC units, higher is better) on the project's
   test split (``nfkd.data.load_magic``, seed 0: 10 % test; train + validation rows are the fitting
   rows): FlowDensity teachers (Glow-1D, MAF, default presets, no tuning) and the students
   ``distill`` makes from them, against ``GaussianMixture`` and ``KernelDensity`` tuned by
   ``GridSearchCV`` (3-fold, on standardized rows; their scores are moved back to raw units
   with the scaler's log-Jacobian, so every row of the table is in the same units).
2. Anomaly detection: fit on the gamma events of the fitting rows, score the test split's gammas
   (normal) and hadrons (anomalies); ROC-AUC of "-score_samples" against ``IsolationForest``
   (and the tuned GMM / KDE refitted on gammas).

One torch thread and one BLAS thread for every model; on a shared 2-core machine the whole run takes about 10 minutes.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.neighbors import KernelDensity
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from nfkd.data import load_magic
from nfkd.data.embedded import MAGIC_FILE
from nfkd.data.registry import default_data_root
from nfkd.data.splits import maf_split_sizes, seeded_permutation, tail_split
from nfkd.progress import phase
from nfkd.sklearn import FlowDensity, FlowOutlierDetector

SEED = 0
TEACHER_ARCHS = ("glow1d", "maf")  # the tabular teachers the report compares


def magic_with_labels(root: Path) -> dict[str, np.ndarray]:
    """The project's MAGIC split (seed 0) with each row's class (1 = hadron), checked against load_magic."""
    splits = load_magic(root, seed=SEED)
    lines = [ln for ln in (root / MAGIC_FILE).read_text(encoding="ascii").splitlines() if ln.strip()]
    feats = np.array([[float(v) for v in ln.split(",")[:-1]] for ln in lines])
    hadron = np.array([ln.rsplit(",", 1)[1].strip() == "h" for ln in lines])
    perm, _ = seeded_permutation(len(lines), SEED)
    _, n_val, n_test = maf_split_sizes(len(lines))
    (f_tr, f_va, f_te), (h_tr, h_va, h_te) = tail_split(feats[perm], n_val, n_test), tail_split(hadron[perm], n_val, n_test)
    for mine, theirs in ((f_tr, splits.train), (f_va, splits.val), (f_te, splits.test)):
        assert np.array_equal(mine.astype(np.float32), theirs), "label alignment with load_magic failed"
    return {"fit": np.concatenate([f_tr, f_va]), "fit_hadron": np.concatenate([h_tr, h_va]),
            "test": f_te, "test_hadron": h_te}


def tuned(kind: str, X: np.ndarray, cv: KFold) -> tuple[GridSearchCV, float]:
    if kind == "gmm":
        est = make_pipeline(StandardScaler(), GaussianMixture(covariance_type="full", random_state=SEED))
        grid = {"gaussianmixture__n_components": [5, 10, 20, 40, 60, 80]}
    else:
        est = make_pipeline(StandardScaler(), KernelDensity())
        grid = {"kerneldensity__bandwidth": list(np.round(np.logspace(-1.0, 0.0, 6), 4))}
    t0 = time.perf_counter()
    gs = GridSearchCV(est, grid, cv=cv, n_jobs=1).fit(X)
    return gs, time.perf_counter() - t0


def raw_units_scores(pipe, X: np.ndarray) -> np.ndarray:
    """log p(x) in raw units: the pipeline's density of the scaled rows + log|d scaled / d x|."""
    scaler, est = pipe[0], pipe[-1]
    return est.score_samples(scaler.transform(X)) - np.log(scaler.scale_).sum()


def _2se(v: np.ndarray) -> float:
    return float(2 * v.std(ddof=1) / np.sqrt(len(v)))


def ll_row(name: str, scores: np.ndarray, seconds: float, **extra) -> dict:
    return {"model": name, "test_ll": float(scores.mean()), "ll_2se": _2se(scores), "seconds": round(seconds, 1),
            "scores": scores, **extra}


def paired(rows: list[dict]) -> None:
    """Each row's mean per-event difference to the first row (the Glow-1D teacher) and to the tuned
    GaussianMixture when present, ± 2 paired SE (the event-to-event spread cancels)."""
    ref = rows[0]["scores"]
    gmm = next((r["scores"] for r in rows if r["model"].startswith("GaussianMixture")), None)
    for r in rows:
        d = r["scores"] - ref
        r["delta_vs_first"], r["delta_2se"] = float(d.mean()), _2se(d) if r is not rows[0] else 0.0
        if gmm is not None:
            d = r["scores"] - gmm
            r["delta_vs_gmm"], r["delta_vs_gmm_2se"] = float(d.mean()), _2se(d) if r["scores"] is not gmm else 0.0
    for r in rows:
        del r["scores"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=2000, help="max training steps of each flow (early stopping)")
    p.add_argument("--flows-only", action="store_true",
                   help="only the FlowDensity log-likelihood rows (for a longer training budget)")
    p.add_argument("--no-anomaly", action="store_true", help="only the log-likelihood table")
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", default="bench/results/sklearn_magic.json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    with threadpool_limits(1):
        return run(args)


def run(args: argparse.Namespace) -> int:
    data = magic_with_labels(Path(args.data_root) if args.data_root else default_data_root())
    X, Xt = data["fit"], data["test"]
    print(f"MAGIC: {len(X)} fitting rows, {len(Xt)} test rows, {X.shape[1]} features", flush=True)
    rows, best = likelihood_rows(args, X, Xt)
    paired(rows)
    auc: list[dict] = []
    if not args.no_anomaly:
        gam = X[~data["fit_hadron"]]  # gammas are the normal class, hadrons the anomalies
        auc = flow_auc_rows(args, gam, Xt, data["test_hadron"].astype(int))
        if not args.flows_only:
            auc += sklearn_auc_rows(gam, Xt, data["test_hadron"].astype(int), best)
    return finish(args, len(X), len(Xt), rows, auc)


def _show(row: dict) -> None:
    print({k: v for k, v in row.items() if k != "scores"}, flush=True)


def likelihood_rows(args: argparse.Namespace, X: np.ndarray, Xt: np.ndarray) -> tuple[list[dict], dict]:
    """1. Held-out log-likelihood rows (teachers, their students, tuned GMM / KDE) and the GMM / KDE grid picks."""
    rows, best = [], {}
    for arch in TEACHER_ARCHS:
        t0 = time.perf_counter()
        with phase(f"sklearn_magic: fitting the {arch} teacher ({args.steps} steps at most)"):
            teacher = FlowDensity(arch=arch, steps=args.steps, random_state=SEED).fit(X)
        rows.append(ll_row(f"FlowDensity {arch} teacher", teacher.score_samples(Xt), time.perf_counter() - t0,
                           params=teacher.flow_.num_parameters(), steps=teacher.n_iter_,
                           best_step=teacher.best_iteration_))
        _show(rows[-1])
        t0 = time.perf_counter()
        with phase(f"sklearn_magic: distilling the {arch} student"):
            student = teacher.distill(X)
        rows.append(ll_row(f"FlowDensity {arch} student ({student.distilled_from_['method']})",
                           student.score_samples(Xt), time.perf_counter() - t0,
                           params=student.flow_.num_parameters(), steps=student.n_iter_,
                           best_step=student.best_iteration_))
        _show(rows[-1])
    cv = KFold(3, shuffle=True, random_state=SEED)
    for kind, label in () if args.flows_only else (("gmm", "GaussianMixture"), ("kde", "KernelDensity")):
        with phase(f"sklearn_magic: GridSearchCV over {label}"):
            gs, secs = tuned(kind, X, cv)
        best[kind] = gs.best_params_
        rows.append(ll_row(f"{label} (GridSearchCV: {gs.best_params_})", raw_units_scores(gs.best_estimator_, Xt),
                           secs))
        _show(rows[-1])
    return rows, best


def flow_auc_rows(args: argparse.Namespace, gam: np.ndarray, Xt: np.ndarray, y: np.ndarray) -> list[dict]:
    """2. ROC-AUC of FlowOutlierDetector teachers and students fitted on gammas (hadrons = 1 in ``y``)."""
    auc = []
    for arch in () if args.flows_only else TEACHER_ARCHS:
        t0 = time.perf_counter()
        with phase(f"sklearn_magic: fitting the {arch} outlier detector"):
            det = FlowOutlierDetector(arch=arch, steps=args.steps, random_state=SEED).fit(gam)
        s = det.score_samples(Xt)
        flagged = det.predict(Xt) == -1
        auc.append({"model": f"FlowOutlierDetector {arch} teacher", "roc_auc": float(roc_auc_score(y, -s)),
                    "auto_flags_gamma": float(flagged[y == 0].mean()), "auto_flags_hadron": float(flagged[y == 1].mean()),
                    "seconds": round(time.perf_counter() - t0, 1)})
        print(auc[-1], flush=True)
        t0 = time.perf_counter()
        with phase(f"sklearn_magic: distilling the {arch} outlier detector"):
            stu = det.distill(gam)
        s = stu.score_samples(Xt)
        auc.append({"model": f"FlowOutlierDetector {arch} student ({stu.distilled_from_['method']})",
                    "roc_auc": float(roc_auc_score(y, -s)), "seconds": round(time.perf_counter() - t0, 1)})
        print(auc[-1], flush=True)
    return auc


def sklearn_auc_rows(gam: np.ndarray, Xt: np.ndarray, y: np.ndarray, best: dict) -> list[dict]:
    """2. ROC-AUC of IsolationForest and of the tuned GMM / KDE refitted on gammas."""
    t0 = time.perf_counter()
    iso = IsolationForest(n_estimators=300, random_state=SEED).fit(gam)
    auc = [{"model": "IsolationForest (300 trees)", "roc_auc": float(roc_auc_score(y, -iso.score_samples(Xt))),
            "seconds": round(time.perf_counter() - t0, 1)}]
    print(auc[-1], flush=True)
    for kind, est in (("gmm", GaussianMixture(covariance_type="full", random_state=SEED)), ("kde", KernelDensity())):
        t0 = time.perf_counter()
        pipe = make_pipeline(StandardScaler(), est).set_params(**best[kind]).fit(gam)
        auc.append({"model": f"{type(est).__name__} ({best[kind]})",
                    "roc_auc": float(roc_auc_score(y, -raw_units_scores(pipe, Xt))),
                    "seconds": round(time.perf_counter() - t0, 1)})
        print(auc[-1], flush=True)
    return auc


def finish(args: argparse.Namespace, n_fit: int, n_test: int, rows: list[dict], auc: list[dict]) -> int:
    result = {"dataset": "magic", "split": "nfkd.data.load_magic(seed=0): fit = train + val, test = 10 %",
              "n_fit": n_fit, "n_test": n_test, "steps": args.steps, "torch_threads": 1,
              "log_likelihood": rows, "anomaly_auc": auc}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1, default=str))
    print(markdown(result))
    return 0


def markdown(result: dict) -> str:
    lines = ["| model | params | test log-likelihood (nats) ± 2 SE | vs Glow-1D teacher (paired ± 2 SE) | "
             "vs GaussianMixture (paired ± 2 SE) | train s |", "|---|---:|---:|---:|---:|---:|"]
    for r in result["log_likelihood"]:
        vs_gmm = f"{r['delta_vs_gmm']:+.3f} ± {r['delta_vs_gmm_2se']:.3f}" if "delta_vs_gmm" in r else ""
        lines.append(f"| {r['model']} | {r.get('params', '')} | {r['test_ll']:.3f} ± {r['ll_2se']:.3f} | "
                     f"{r['delta_vs_first']:+.3f} ± {r['delta_2se']:.3f} | {vs_gmm} | {r['seconds']:.0f} |")
    if not result["anomaly_auc"]:
        return "\n".join(lines)
    lines += ["", "| model | ROC-AUC (gamma vs hadron) | train s |", "|---|---:|---:|"]
    for r in result["anomaly_auc"]:
        lines.append(f"| {r['model']} | {r['roc_auc']:.4f} | {r['seconds']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
