"""Device helpers shared by the Glow-step and tabular kernels."""
from __future__ import annotations

import triton.language as tl  # noqa: E402

from ._env import device_fn  # noqa: F401  (imported first: the interpreter switch precedes triton)


@device_fn
def mm(a, b, USE_DOT: tl.constexpr, PREC: tl.constexpr):
    """[M, K] @ [K, N]: tensor cores via tl.dot (all dims >= 16) or broadcast-multiply + sum."""
    if USE_DOT:
        c = tl.dot(a, b, input_precision=PREC)
    else:
        c = tl.sum(a[:, :, None] * b[None, :, :], axis=1)
    return c
