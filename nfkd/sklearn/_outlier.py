"""``FlowOutlierDetector``: flow log-densities as outlier scores, with scikit-learn's detector conventions.

As ``IsolationForest``: ``score_samples`` is higher for more normal rows (here: the log-density in
nats), ``decision_function = score_samples - offset_`` is negative for outliers, ``predict``
returns -1 (outlier) or 1 (inlier).
"""
from __future__ import annotations

import numbers
from typing import Any

import numpy as np
from sklearn.base import OutlierMixin
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from ._density import FlowDensity, _seed
from ._fit import EXACT

__all__ = ["AUTO_MASS", "FlowOutlierDetector"]

#: contamination="auto": a row is an outlier when it lies outside the model's own highest-density
#: region of this probability mass' complement, i.e. its log-density is below the AUTO_MASS quantile
#: of the log-densities of the model's samples. No share of the training rows is assumed to be bad.
AUTO_MASS = 0.01
_AUTO_SAMPLES = 10_000


class FlowOutlierDetector(OutlierMixin, FlowDensity):
    """Outlier detection by normalizing-flow density (``FlowDensity`` underneath).

    Parameters are those of :class:`FlowDensity` plus

    contamination : "auto" or float in (0, 0.5], default="auto"
        A float: the expected share of outliers in the training rows; ``offset_`` is that quantile
        of their log-densities (as in ``IsolationForest``). "auto": ``offset_`` is the
        ``AUTO_MASS`` (1 %) quantile of the log-densities of 10,000 samples of the fitted flow, so
        ``predict`` flags rows outside the model's 99 % highest-density region.

    Attributes: those of :class:`FlowDensity` and ``offset_`` (log-density threshold, nats).
    """

    _parameter_constraints: dict = {
        **FlowDensity._parameter_constraints,
        "contamination": [StrOptions({"auto"}), Interval(numbers.Real, 0, 0.5, closed="right")],
    }

    def __init__(self, arch: str = "glow1d", preset: str | None = None, role: str = "teacher",
                 flow_config: dict | None = None, steps: int = 1000, batch_size: int = 256, lr: float = 1e-3,
                 validation_fraction: float = 0.1, n_iter_no_change: int = 10, device: str = "cpu",
                 backend: str = EXACT, random_state: Any = None, verbose: bool = False,
                 contamination: str | float = "auto") -> None:
        super().__init__(arch=arch, preset=preset, role=role, flow_config=flow_config, steps=steps,
                         batch_size=batch_size, lr=lr, validation_fraction=validation_fraction,
                         n_iter_no_change=n_iter_no_change, device=device, backend=backend,
                         random_state=random_state, verbose=verbose)
        self.contamination = contamination

    def _post_fit(self, X: np.ndarray) -> None:
        if self.contamination == "auto":
            ref = self._log_prob(self.sample(_AUTO_SAMPLES, random_state=_seed(self.random_state) + 1))
            self.offset_ = float(np.quantile(ref[np.isfinite(ref)], AUTO_MASS))
        else:
            self.offset_ = float(np.percentile(self._log_prob(X), 100.0 * self.contamination))

    def decision_function(self, X):
        """score_samples(X) - offset_: negative for outliers."""
        return self.score_samples(X) - self.offset_

    def predict(self, X):
        """-1 for outliers, 1 for inliers."""
        check_is_fitted(self)
        return np.where(self.decision_function(X) >= 0, 1, -1)
