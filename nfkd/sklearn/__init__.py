"""scikit-learn estimators over nfkd flows: ``FlowDensity`` (like ``KernelDensity`` / ``GaussianMixture``)
and ``FlowOutlierDetector`` (like ``IsolationForest``). Needs ``pip install 'nfkd[sklearn]'``.

``import nfkd`` does not import this module (nor scikit-learn); import it as ``nfkd.sklearn``.
See docs/sklearn.md.
"""
from __future__ import annotations

import sklearn as _sklearn

_MIN_SKLEARN = (1, 6)  # validate_data and __sklearn_tags__ are public from 1.6 on
if tuple(int(p) for p in _sklearn.__version__.split(".")[:2] if p.isdigit()) < _MIN_SKLEARN:
    raise ImportError(f"nfkd.sklearn needs scikit-learn>=1.6, found {_sklearn.__version__} "
                      "(pip install 'nfkd[sklearn]')")

from ._density import FlowDensity  # noqa: E402
from ._outlier import AUTO_MASS, FlowOutlierDetector  # noqa: E402

__all__ = ["AUTO_MASS", "FlowDensity", "FlowOutlierDetector"]
