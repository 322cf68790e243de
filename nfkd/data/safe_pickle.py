"""Unpickle data files without letting them run code.

Two published datasets are pickles (CIFAR-10's python batches, MAF's GAS DataFrame). A pickle
names the callables that rebuild its objects, so an ordinary ``pickle.load`` / ``pd.read_pickle``
runs whatever a crafted file names (``os.system``...). Here every name a file asks for is looked
up in an allowlist of what an array / a DataFrame of numbers needs; anything else stops the load
before it is called.
"""
from __future__ import annotations

import importlib
import pickle
from typing import IO, Any, Mapping

__all__ = ["UnsafePickleError", "NUMPY_ARRAYS", "PANDAS_NUMERIC_FRAME", "restricted_load", "load_numeric_frame"]

#: pickled (module, name) -> (module, attribute) it resolves to in the installed libraries.
Allowlist = Mapping[tuple[str, str], tuple[str, str]]


class UnsafePickleError(pickle.UnpicklingError):
    """The file asks for a global outside the allowlist: refused before anything is called."""

    def __init__(self, module: str, name: str, what: str) -> None:
        self.module, self.name, self.what = module, name, what
        super().__init__(f"refusing to load {module}.{name}: {what}")


def _numpy_core(sub: str) -> str:
    """numpy >= 2 keeps multiarray/numeric under numpy._core, numpy 1.x under numpy.core."""
    try:
        importlib.import_module(f"numpy._core.{sub}")
        return f"numpy._core.{sub}"
    except ImportError:  # pragma: no cover - numpy 1.x
        return f"numpy.core.{sub}"


def _with_aliases(target: tuple[str, str], *pickled: tuple[str, str]) -> dict[tuple[str, str], tuple[str, str]]:
    return {key: target for key in (target, *pickled)}


_MULTIARRAY, _NUMERIC = "<numpy-core>.multiarray", "<numpy-core>.numeric"

NUMPY_ARRAYS: dict[tuple[str, str], tuple[str, str]] = {
    **{(m, n): (_MULTIARRAY, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray")
       for n in ("_reconstruct", "scalar")},
    **{(m, "_frombuffer"): (_NUMERIC, "_frombuffer") for m in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): ("numpy", "ndarray"),
    ("numpy", "dtype"): ("numpy", "dtype"),
    ("_codecs", "encode"): ("_codecs", "encode"),  # how Python 3 writes bytes in protocol 2
}

#: What ``DataFrame.to_pickle`` writes for numeric columns with string or integer labels, under
#: the names pandas 0.x (Python 2 era, like MAF's file) to 3.x use for the same objects.
PANDAS_NUMERIC_FRAME: dict[tuple[str, str], tuple[str, str]] = {
    **NUMPY_ARRAYS,
    **_with_aliases(("pandas", "DataFrame"), ("pandas.core.frame", "DataFrame")),
    **_with_aliases(("pandas.core.internals.managers", "BlockManager"), ("pandas.core.internals", "BlockManager")),
    **_with_aliases(("pandas._libs.internals", "_unpickle_block"), ("pandas.core.internals.blocks", "new_block")),
    **_with_aliases(("pandas.core.indexes.base", "_new_Index"), ("pandas.core.index", "_new_Index"),
                    ("pandas.indexes.base", "_new_Index")),
    **_with_aliases(("pandas", "Index"), ("pandas.core.indexes.base", "Index"), ("pandas.core.index", "Index"),
                    ("pandas.indexes.base", "Index"),
                    *((m, n) for m in ("pandas.core.index", "pandas.indexes.numeric", "pandas.core.indexes.numeric")
                      for n in ("Int64Index", "Float64Index", "UInt64Index"))),
    **_with_aliases(("pandas", "RangeIndex"), ("pandas.core.indexes.range", "RangeIndex"),
                    ("pandas.indexes.range", "RangeIndex")),
    ("pandas._libs.arrays", "__pyx_unpickle_NDArrayBacked"): ("pandas._libs.arrays", "__pyx_unpickle_NDArrayBacked"),
    **_with_aliases(("pandas.arrays", "StringArray"), ("pandas.core.arrays.string_", "StringArray")),
    **_with_aliases(("pandas", "StringDtype"), ("pandas.core.arrays.string_", "StringDtype")),
    **_with_aliases(("builtins", "slice"), ("__builtin__", "slice")),
}


def _resolve(target: tuple[str, str]) -> Any:
    module, name = target
    if module.startswith("<numpy-core>."):
        module = _numpy_core(module.split(".", 1)[1])
    return getattr(importlib.import_module(module), name)


class _Restricted:
    """Mixin: ``find_class`` answers only from the allowlist (C and pure-Python unpicklers both ask it)."""

    allowed: Allowlist = {}
    what: str = "the file holds only plain data"

    def find_class(self, module: str, name: str) -> Any:
        target = self.allowed.get((module, name))
        if target is None:
            raise UnsafePickleError(module, name, self.what)
        return _resolve(target)


def restricted_load(file: IO[bytes], allowed: Allowlist, what: str, encoding: str = "ASCII",
                    base: type = pickle.Unpickler) -> Any:
    """``pickle.load`` that refuses (UnsafePickleError) every global not in ``allowed``.

    ``what`` ends the refusal message: it says what the file should contain.
    """
    cls = type("RestrictedUnpickler", (_Restricted, base), {"allowed": allowed, "what": what})
    return cls(file, encoding=encoding).load()


def load_numeric_frame(file: IO[bytes]) -> Any:
    """A pandas DataFrame of numbers from ``to_pickle`` output, any pandas version, no code run.

    Like ``pd.read_pickle``: the standard unpickler first, then pandas' compatibility unpickler
    (objects pickled by old pandas) — both restricted to :data:`PANDAS_NUMERIC_FRAME`.
    ``latin1`` lets numpy arrays pickled by Python 2 load (their bytes are not ASCII).
    """
    what = "a pandas DataFrame of numbers needs only numpy arrays and pandas frame/index classes"
    try:
        return restricted_load(file, PANDAS_NUMERIC_FRAME, what, encoding="latin1")
    except UnsafePickleError:
        raise
    except (AttributeError, ImportError, TypeError, ValueError):
        from pandas.compat.pickle_compat import Unpickler as compat  # what pd.read_pickle falls back to

        file.seek(0)
        return restricted_load(file, PANDAS_NUMERIC_FRAME, what, encoding="latin1", base=compat)
