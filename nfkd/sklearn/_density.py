"""``FlowDensity``: a normalizing flow as a scikit-learn density estimator (like ``KernelDensity``)."""
from __future__ import annotations

import copy
import numbers
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, DensityMixin, _fit_context
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from ..errors import InputError
from ..flows import architectures, flow_class
from ..noise import draw_noise
from ..train import TrainConfig
from ..validation import MAX_SEED
from ._fit import EXACT, Scorer, build, flow_from_bytes, flow_to_bytes, train

__all__ = ["FlowDensity"]


def _student_recipe(student_arch: str, method: str | None, n_rows: int, data_free: bool,
                    seed: int) -> tuple[str, str, Any]:
    """(variant, its description, KDConfig): the defaults table's row when ``method`` is None."""
    from ..distill.recipe import describe_share, share_config
    from ..distill.variants import get_variant

    if method is None:
        from ..defaults import DATA_FREE, recommend

        method = DATA_FREE.method if data_free else recommend(student_arch, n_rows).method
    if not flow_class(student_arch).one_pass_density and method in ("iaf", "none"):  # the share recipe ("none",
        share = 0.0 if data_free or method == "none" else None                    # data-free too: share 0)
        return method, describe_share(n_rows, share), share_config(n_rows, share, seed=seed)
    return method, method, get_variant(method).config(n_train=n_rows, seed=seed)


class _TabularArchitectures(StrOptions):
    """``StrOptions`` over the registered tabular architectures, read when checked (a registered flow counts)."""

    def __init__(self) -> None:
        super().__init__(set(architectures(tabular=True)))

    @property
    def options(self) -> set[str]:
        return set(architectures(tabular=True))

    @options.setter
    def options(self, value: set[str]) -> None:  # StrOptions.__init__ assigns; the registry stays the source
        pass

_FLOW_BYTES = "_flow_checkpoint"  # what a pickle carries instead of the torch module


def _seed(random_state: Any) -> int:
    """An int seed: the int itself, or one drawn from a RandomState / the global numpy state."""
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        return int(random_state)
    return int(check_random_state(random_state).randint(0, 2**31 - 1))


def _split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) row indices: a seeded shuffle, at least one row on each side."""
    if n < 2:
        raise InputError(f"n_samples = {n}: a flow needs at least 2 samples (one to train, one to validate)")
    perm = np.random.RandomState(seed % (MAX_SEED + 1)).permutation(n)
    n_val = min(n - 1, max(1, int(round(fraction * n))))
    return perm[n_val:], perm[:n_val]


#: A feature is constant when its spread is below this fraction of its magnitude (float64 round-off),
#: whatever its units: X * 1e-13 is as good a table as X.
RELATIVE_SPREAD = 1e-12
#: Below this std the float32 model (normalization, training batches) cannot resolve a feature.
MIN_FLOAT32_SPREAD = 1e-30


def _standardization(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std of X; a constant feature has no density, so it is refused (scale-free test)."""
    loc, scale = X.mean(axis=0), X.std(axis=0)
    const = np.flatnonzero(~(scale > RELATIVE_SPREAD * np.abs(loc)) | (scale == 0))
    if len(const):
        raise InputError(f"feature(s) {const[:10].tolist()} are constant in X: a continuous density over them is "
                         "degenerate; drop them first (e.g. sklearn.feature_selection.VarianceThreshold)")
    tiny = np.flatnonzero(scale < MIN_FLOAT32_SPREAD)
    if len(tiny):
        raise InputError(f"feature(s) {tiny[:10].tolist()} vary by less than {MIN_FLOAT32_SPREAD:g} (std), below what "
                         "the float32 model resolves; rescale them (e.g. multiply X by a constant)")
    return loc, scale


class FlowDensity(DensityMixin, BaseEstimator):
    """Normalizing-flow density estimator with the scikit-learn API (fit / score_samples / score / sample).

    Parameters
    ----------
    arch : {"glow1d", "maf", "iaf"}, default="glow1d"
        Flow architecture (``nfkd.flows``). "iaf" only where ``nfkd.flows`` provides it.
    preset : str or None, default=None
        Size preset (``nfkd.presets.PRESETS``); None: the CPU preset of the architecture.
    role : {"teacher", "student"}, default="teacher"
        Which of the preset's two sizes to build (``distill`` returns a "student").
    flow_config : dict or None, default=None
        Overrides of the architecture config, e.g. ``{"hidden": 32}`` (Glow-1D: steps, hidden, depth;
        MAF: blocks, hidden, n_hidden).
    steps : int, default=1000
        Optimizer steps at most (training stops earlier when the validation score stops improving).
    batch_size : int, default=256
    lr : float, default=1e-3
        Peak learning rate (AdamW, linear warmup, cosine decay; ``nfkd.train``).
    validation_fraction : float in (0, 0.5], default=0.1
        Share of rows held out for model selection and early stopping.
    n_iter_no_change : int, default=10
        Evaluations (every ``max(1, steps // 20)`` steps) without improvement before stopping.
    device : str, default="cpu"
        Where to train ("cpu", "cuda", "cuda:N").
    backend : str, default="exact"
        How ``score_samples`` and ``sample`` run: "exact" is float64 eager torch, every row's value
        independent of the batch; any ``nfkd.inference`` backend name ("auto", "folded",
        "onnxruntime", ...) scores in float32 through that backend (faster on big tables).
    random_state : int, RandomState or None, default=None
        Fixes the weight init, the validation split and the batches: same seed, identical scores.
    verbose : int or bool, default=False
        0 / False: silent. > 0: a line when training starts and ends (rows, steps, kept step, validation
        score, seconds) and, on a terminal, a progress bar with the current figures.

    Attributes
    ----------
    flow_ : nfkd.flows.Flow
        The fitted flow (its input normalization included), on the CPU.
    n_features_in_, feature_names_in_ :
        As in scikit-learn.
    n_iter_ : int
        Optimizer steps taken.
    best_iteration_ : int
        The step whose weights were kept (best validation log-likelihood).
    validation_score_ : float
        Mean log-likelihood (nats) of the held-out validation rows at ``best_iteration_``.
    """

    _parameter_constraints: dict = {
        "arch": [_TabularArchitectures()],
        "preset": [str, None],
        "role": [StrOptions({"teacher", "student"})],
        "flow_config": [dict, None],
        "steps": [Interval(numbers.Integral, 1, None, closed="left")],
        "batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "lr": [Interval(numbers.Real, 0, None, closed="neither")],
        "validation_fraction": [Interval(numbers.Real, 0, 0.5, closed="right")],
        "n_iter_no_change": [Interval(numbers.Integral, 1, None, closed="left")],
        "device": [str],
        "backend": [str],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(self, arch: str = "glow1d", preset: str | None = None, role: str = "teacher",
                 flow_config: dict | None = None, steps: int = 1000, batch_size: int = 256, lr: float = 1e-3,
                 validation_fraction: float = 0.1, n_iter_no_change: int = 10, device: str = "cpu",
                 backend: str = EXACT, random_state: Any = None, verbose: bool = False) -> None:
        self.arch = arch
        self.preset = preset
        self.role = role
        self.flow_config = flow_config
        self.steps = steps
        self.batch_size = batch_size
        self.lr = lr
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.device = device
        self.backend = backend
        self.random_state = random_state
        self.verbose = verbose

    # --- fitting -----------------------------------------------------------------------------
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Train a flow on the rows of X (y is ignored)."""
        X = self._validate(X, reset=True)
        loc, scale = _standardization(X)
        self._fit_rows(X, loc, scale, _seed(self.random_state))
        self._post_fit(X)
        return self

    def _train_config(self, seed: int, steps: int | None = None) -> TrainConfig:
        steps = int(steps or self.steps)
        return TrainConfig(
            steps=steps, batch_size=int(self.batch_size), lr=float(self.lr), warmup=max(1, min(100, steps // 10)),
            eval_every=max(1, steps // 20), patience=int(self.n_iter_no_change), checkpoint_every=steps + 1,
            snapshot_every=25, seed=seed % (MAX_SEED + 1), device=self.device, progress=bool(self.verbose),
        )

    def _fit_rows(self, X: np.ndarray, loc: np.ndarray, scale: np.ndarray, seed: int, teacher=None, kd=None,
                  steps: int | None = None) -> None:
        """Build, split, train (optionally distilling from ``teacher``), and set the fitted attributes."""
        train_idx, val_idx = _split(len(X), float(self.validation_fraction), seed)
        cfg = self._train_config(seed, steps)
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=[]):  # seeds torch's global generator without leaking it
            torch.manual_seed(cfg.seed)
            flow = build(self.arch, self.preset, self.role, self.flow_config, X.shape[1], loc, scale)
            if kd is not None:
                kd = replace(kd, seed=cfg.seed)
                teacher = teacher if kd.needs_teacher else None  # as nfkd experiment does
            self._say(f"{type(self).__name__}: training a {self.arch} {self.role} on {len(train_idx)} rows "
                      f"({len(val_idx)} to validate), up to {cfg.steps} steps"
                      + (f", distilling ({kd.method})" if kd is not None else ""))
            out = train(flow, X[train_idx], X[val_idx], cfg, teacher=teacher, kd=kd)
        self.flow_ = out.flow
        self.n_train_samples_ = int(len(X))
        self.n_iter_ = int(out.steps_done)
        self.best_iteration_ = int(out.best_step)
        self.validation_score_ = -float(out.best_val_nll)
        self.fit_seconds_ = time.perf_counter() - t0
        self._scorer = Scorer(self.flow_)
        self._say(f"{type(self).__name__}: {self.n_iter_} steps in {self.fit_seconds_:.1f} s; kept step "
                  f"{self.best_iteration_} (validation log-likelihood {self.validation_score_:.4f})")

    def _say(self, line: str) -> None:
        """verbose > 0: one line per phase, as scikit-learn estimators print (the bar only on a TTY)."""
        if self.verbose:
            print(line, flush=True)

    def _post_fit(self, X: np.ndarray) -> None:
        """Hook for subclasses (the outlier detector sets its threshold here)."""

    # --- scoring -----------------------------------------------------------------------------
    def score_samples(self, X):
        """log p(x) per row, in nats, in the units of X (the internal standardization is accounted for)."""
        check_is_fitted(self)
        X = self._validate(X, reset=False)
        return self._log_prob(X)

    def score(self, X, y=None):
        """Mean log-likelihood of the rows of X (nats; higher is better): what GridSearchCV maximizes."""
        return float(np.mean(self.score_samples(X)))

    def sample(self, n_samples: int = 1, random_state=None):
        """``n_samples`` rows drawn from the fitted density, in the units of the training data.

        scikit-learn's ``sample(n_samples, random_state)`` convention (as ``KernelDensity``), the one
        exception to nfkd's ``sample(n, *, temperature, seed, noise)``. The noise comes from
        ``nfkd.noise.draw_noise`` as in ``nfkd.inference``: the same integer ``random_state`` gives the
        same rows on every backend.
        """
        check_is_fitted(self)
        if isinstance(n_samples, bool) or not isinstance(n_samples, numbers.Integral) or n_samples < 1:
            raise InputError(f"n_samples must be a positive integer, got {n_samples!r}")
        noise = draw_noise([s[1:] for s in self.flow_.noise_shapes(1)], int(n_samples), _seed(random_state))
        return self._scorer.decode(noise, self.backend, self.device)

    def _log_prob(self, X: np.ndarray) -> np.ndarray:
        return self._scorer.log_prob(X, self.backend, self.device)

    # --- distillation and export -------------------------------------------------------------
    def _student_arch(self, arch: str | None) -> str:
        """The student's architecture: this one, or one that trains on samples alone (the share recipe)."""
        student_arch = self.arch if arch is None else arch
        tabular = architectures(tabular=True)
        if student_arch not in tabular:
            raise InputError(f"arch must be one of {tabular} or None, got {arch!r}")
        # another architecture only where no taps need pairing: its density costs D passes, so it learns from
        # samples by maximum likelihood (the share recipe)
        by_share = [a for a in tabular if not flow_class(a).one_pass_density]
        if student_arch != self.arch and student_arch not in by_share:
            raise InputError(f"a {self.arch} flow distils into a {' or '.join([self.arch, *by_share])} student, "
                             f"not {student_arch}")
        return student_arch

    def distill(self, X=None, *, method: str | None = None, student: dict | None = None, steps: int | None = None,
                random_state=None, arch: str | None = None):
        """A fitted student (same estimator class, ``role="student"``) distilled from this flow.

        X : the training table (the paper's setting); None trains on as many samples of this flow as
            it was fitted on (data-free distillation).
        method : an ``nfkd.distill`` variant (``python -m nfkd experiment --methods`` lists them);
            None: the equal-budget row of the defaults table (``nfkd.defaults``, ``python -m nfkd info
            --defaults``) for the student's architecture and the number of rows: ``init`` for Glow-1D below
            1000 rows, ``ilkd-aligned`` above, ``ilkd`` for MAF (no method measurably helps it), the share
            recipe for an ``arch="iaf"`` student; without X, maximum likelihood on the teacher's samples.
        student : overrides of the preset's student config (e.g. ``{"hidden": 16}``).
        steps : training steps (default: this estimator's ``steps``).
        arch : the student's architecture (default: this estimator's); ``"iaf"`` gives a one-pass sampler.
        """
        check_is_fitted(self)
        student_arch = self._student_arch(arch)
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1):
            raise InputError(f"steps must be a positive integer or None, got {steps!r}")
        if student is not None and not isinstance(student, dict):
            raise InputError(f"student must be a dict of config overrides or None, got {type(student).__name__}")
        seed = _seed(self.random_state if random_state is None else random_state)
        data_free = X is None
        if data_free:
            X = self.sample(self.n_train_samples_, random_state=seed)
        else:
            X = self._validate(X, reset=False)
        method, name, kd = _student_recipe(student_arch, method, len(X), data_free, seed)
        from ..presets import student_preset

        preset = self.preset if student_arch == self.arch else student_preset(self.preset, student_arch)
        est = type(self)(**{**self.get_params(deep=False), "arch": student_arch, "preset": preset, "role": "student",
                            "flow_config": student})
        est.n_features_in_ = self.n_features_in_
        if hasattr(self, "feature_names_in_"):
            est.feature_names_in_ = self.feature_names_in_
        loc = self.flow_.normalize.loc.double().numpy()
        scale = self.flow_.normalize.scale.double().numpy()  # the teacher's units: KD compares latents
        teacher = copy.deepcopy(self.flow_)  # the Trainer moves its teacher to the device, in place
        est._fit_rows(X, loc, scale, seed, teacher=teacher.eval(), kd=kd, steps=steps)
        est.distilled_from_ = {"method": name, "variant": method, "teacher_arch": self.flow_.arch, "teacher_config": dict(self.flow_.config),
                               "teacher_parameters": int(self.flow_.num_parameters()), "data_free": data_free}
        est._post_fit(X)
        return est

    def to_onnx(self, path, **options):
        """Export the fitted flow (parity-gated) to the folder ``path``, through ``nfkd.inference``.

        Writes ``density.onnx`` (float32 ``x`` in the units of X -> ``log_prob`` in nats; the
        standardization is inside the graph), ``sample.onnx`` and ``manifest.json``; returns the
        folder. Without ``options`` this is ``inference.load(..., backend="onnxruntime",
        export_dir=path)`` (the registry's loader exports and checks it). ``options`` (``fp16``,
        ``opset``, ``maf_sampling``, ...) go to ``export.onnx.export_onnx``, which ``inference.load``
        cannot pass on yet.
        """
        import tempfile

        from .. import inference

        check_is_fitted(self)
        with tempfile.TemporaryDirectory(prefix="nfkd-sklearn-") as tmp:
            ckpt = Path(tmp) / "model.pt"
            ckpt.write_bytes(flow_to_bytes(self.flow_, self._metadata()))
            if not options:
                inference.load(ckpt, backend="onnxruntime", device="cpu", export_dir=path)
                return Path(path)
            try:  # export options: not an inference.load option (nfkd/inference OPTIONS), so export is asked
                from export.onnx import export_onnx
            except ImportError as exc:  # pragma: no cover - export/ ships with nfkd
                raise InputError(f"ONNX export needs the export package of nfkd and onnx ({exc})") from None
            export_onnx(ckpt, path, **options)
        return Path(path)

    def _metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"source": "nfkd.sklearn." + type(self).__name__, "n_features_in": self.n_features_in_}
        if hasattr(self, "feature_names_in_"):
            meta["feature_names_in"] = [str(n) for n in self.feature_names_in_]
        return meta

    # --- input checks, tags, pickling --------------------------------------------------------
    def _validate(self, X, reset: bool) -> np.ndarray:
        """scikit-learn's validation (shape, NaN/Inf, feature names), its errors raised as InputError."""
        try:
            X = validate_data(self, X, reset=reset, dtype=np.float64, ensure_min_samples=1 if not reset else 2)
        except ValueError as exc:
            if isinstance(exc, InputError) or type(exc).__name__ == "InvalidParameterError":
                raise
            raise InputError(str(exc)) from None
        return X

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False
        return tags

    def __getstate__(self):
        state = super().__getstate__()
        state = dict(state)
        state.pop("_scorer", None)
        flow = state.pop("flow_", None)
        if flow is not None:
            state[_FLOW_BYTES] = flow_to_bytes(flow, self._metadata())
        return state

    def __setstate__(self, state):
        state = dict(state)
        data = state.pop(_FLOW_BYTES, None)
        super().__setstate__(state)
        if data is not None:
            self.flow_ = flow_from_bytes(data)
            self._scorer = Scorer(self.flow_)
