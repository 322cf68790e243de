"""Triton and numba inference kernels for folded flows (``nfkd.fold.fold`` output).

Importing this package imports neither triton nor numba. The backends that run them are
``kernels.backend`` (``triton``) and ``kernels.cpu_backend`` (``numba``), reached through
``nfkd.inference.load(model, backend=...)``; each packs the model at load and owns its buffers.
"""

__all__: list[str] = []
