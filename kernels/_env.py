"""Environment shared by the Triton kernels: interpreter selection, availability, test hooks.

Triton decides *when a kernel is defined* (at ``@triton.jit`` decoration) whether it is compiled for
a GPU or run by the CPU interpreter: ``triton.jit`` reads ``TRITON_INTERPRET`` then (triton 3.x:
``triton.knobs.runtime.interpret``).  ``select_mode()``, called by each kernel module of this
package before it imports triton, therefore fixes the mode of its kernels:

- ``TRITON_INTERPRET`` already set (to anything): left alone;
- no CUDA device visible: set to ``1`` (a compiled Triton kernel cannot run anyway, and the
  interpreter lets the kernels be tested on CPU tensors);
- CUDA visible: left unset, kernels are compiled for the GPU.

Test hook: ``poison_outputs()`` makes every buffer a launcher allocates start as NaN, so an element
a kernel forgets to write shows up as NaN in the result.
"""
from __future__ import annotations

import contextlib
import os

import torch


def select_mode() -> None:
    """Called by each kernel module before ``import triton`` / ``@triton.jit`` (idempotent).

    Not run on import of this module: ``kernels.backend`` (whose probe runs on CPU machines) must not change the process environment unless kernels are actually used.
    """
    if "TRITON_INTERPRET" not in os.environ:
        try:
            has_cuda = torch.cuda.is_available()
        except Exception:  # pragma: no cover - broken driver
            has_cuda = False
        if not has_cuda:
            os.environ["TRITON_INTERPRET"] = "1"


_POISON = False


def triton_available() -> bool:
    """Whether triton is installed (optional dependency).  Does not import it: triton's own
    ``triton.language`` helpers (``tl.zeros``, ``tl.sum``...) are ``@jit`` functions whose
    interpreted-or-compiled mode is fixed at *triton's* import, so the first import must come
    after ``select_mode()``."""
    import importlib.util

    try:
        return importlib.util.find_spec("triton") is not None
    except Exception:  # pragma: no cover
        return False


def is_interpreted(kernel) -> bool:
    """Whether a ``@triton.jit`` object was built for the CPU interpreter."""
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except Exception:  # pragma: no cover - very old triton
        return False
    return isinstance(kernel, InterpretedFunction)


def can_launch(kernel, device: torch.device) -> bool:
    """A compiled kernel needs CUDA tensors; an interpreted one needs CPU tensors."""
    return (device.type == "cpu") if is_interpreted(kernel) else (device.type == "cuda")


@contextlib.contextmanager
def poison_outputs(flag: bool = True):
    """Test hook: buffers allocated by the launchers start as NaN instead of uninitialised memory."""
    global _POISON
    prev, _POISON = _POISON, flag
    try:
        yield
    finally:
        _POISON = prev


def alloc(shape, device, dtype=torch.float32, memory_format=torch.contiguous_format) -> torch.Tensor:
    """``torch.empty`` for kernel outputs (NaN-filled under ``poison_outputs``)."""
    if len(shape) == 4:
        t = torch.empty(shape, device=device, dtype=dtype, memory_format=memory_format)
    else:
        t = torch.empty(shape, device=device, dtype=dtype)
    if _POISON:
        t.fill_(float("nan"))
    return t


def interpreting() -> bool:
    """Whether ``@triton.jit`` defined now builds interpreter objects (probed, version independent)."""
    global _INTERPRETING
    if _INTERPRETING is None:
        select_mode()
        import triton

        def _probe():  # pragma: no cover - never called
            pass

        mode = is_interpreted(triton.jit(_probe))
        import triton.language as tl
        from triton.runtime.jit import JITFunction

        z = getattr(tl, "zeros", None)
        std_mode = True if is_interpreted(z) else (False if isinstance(z, JITFunction) else None)
        if std_mode is not None and std_mode != mode:
            raise RuntimeError(
                "triton was imported before TRITON_INTERPRET was set (its tl.* helpers are in the other "
                "mode than new kernels); set TRITON_INTERPRET=1 before anything imports triton, or "
                "import kernels.tabular / kernels.glow_step first")
        _INTERPRETING = mode
    return _INTERPRETING


_INTERPRETING: bool | None = None


def device_fn(fn):
    """``triton.jit`` for device helper functions; a plain function under the interpreter.

    The interpreter re-patches ``triton.language`` on every call of a jit'd helper (~2 ms each),
    which made an interpreted MAF sampling pass ~50x slower than the math.  Plain functions run in
    the caller's already-patched scope with identical semantics (every helper assignment already
    yields a tensor), so tests stay fast; compiled kernels are unaffected.
    """
    if interpreting():
        return fn
    import triton

    return triton.jit(fn)


def next_pow2(n: int, minimum: int = 1) -> int:
    p = 1
    while p < n:
        p *= 2
    return max(p, minimum)
