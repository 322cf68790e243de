"""A user's own table (.csv, .parquet, .npy, .npz) wherever a dataset name is accepted.

``--data`` takes a registered name or a file; ``load_dataset`` sends files here, so ``train``,
``distill``, ``convert``, ``experiment``, ``evaluate``, ``tradeoff`` and ``data check`` all read
them the same way. The spec ``PATH:col1,col2`` keeps only those columns (names from a CSV
header or Parquet schema, or 0-based indices for any format); the spec, not a separate flag,
carries the choice so that a checkpoint's metadata names exactly the data it was trained on.

Split rule (as the embedded tables): rows shuffled by ``np.random.RandomState(seed)`` (``--seed``,
default 0), then test = the last int(0.1 N) shuffled rows, validation = the last int(0.1 (N - test))
before them, train = the rest (about 81/9/10). Every bad file gives one InputError line.
"""
from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .embedded import seeded_splits
from .splits import TabularSplits

__all__ = ["SUFFIXES", "MIN_ROWS", "SPLIT_RULE", "DataSpec", "UserTableSplits", "parse_spec", "file_sha256",
    "read_table", "load_user_table"]

SUFFIXES = (".csv", ".parquet", ".npy", ".npz")
#: Enough rows for the 10 % / 10 % rule to leave every split non-empty (as the bundled readers).
MIN_ROWS = 20
SPLIT_RULE = ("rows shuffled by numpy RandomState(seed); test = last int(0.1 N), validation = last "
              "int(0.1 (N - test)) before them, train = the rest")


@dataclass(frozen=True)
class DataSpec:
    """A ``--data`` value that names a file, with the columns to keep (None: all)."""

    path: Path
    columns: tuple[str, ...] | None = None

    @property
    def text(self) -> str:
        """The spec with an absolute path: what goes into a checkpoint's metadata."""
        cols = f":{','.join(self.columns)}" if self.columns else ""
        return f"{self.path.expanduser().resolve()}{cols}"


@dataclass(frozen=True, eq=False)
class UserTableSplits(TabularSplits):
    """TabularSplits plus where they came from, for the checkpoint metadata."""

    file: dict[str, Any]


def _looks_like_file(text: str) -> bool:
    # Registered names are bare words: anything with a path separator, a dot or a colon is a file.
    return any(c in text for c in "/\\.:") or Path(text).is_file()


def parse_spec(text: str) -> DataSpec | None:
    """The file a ``--data`` value names, or None when it is a registered dataset name."""
    if not isinstance(text, str) or not _looks_like_file(text.strip()):
        return None
    text = text.strip()
    if Path(text).expanduser().is_file() or ":" not in text:
        return DataSpec(Path(text).expanduser())
    head, tail = text.rsplit(":", 1)
    if Path(head).suffix.lower() not in SUFFIXES:
        return DataSpec(Path(text).expanduser())
    cols = tuple(c.strip() for c in tail.split(","))
    if not tail.strip() or any(not c for c in cols):
        raise InputError(f"--data {text}: after ':' give comma-separated column names or 0-based indices, "
                         f"e.g. {head}:x,y,z")
    return DataSpec(Path(head).expanduser(), cols)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _csv_has_header(path: Path) -> bool:
    """The first line is a header when any of its comma-separated fields is not a number."""
    with open(path, encoding="utf-8-sig") as fh:
        first = fh.readline()
    for field in first.strip().split(","):
        try:
            float(field.strip().strip('"'))
        except ValueError:
            return True
    return False


def _numeric_frame(df: Any, path: Path, header: bool) -> np.ndarray:
    """Each text column parsed as numbers; non-numeric columns and empty fields named with their line."""
    import pandas as pd

    out = np.empty(df.shape, dtype=np.float64)
    bad: list[str] = []
    for j, name in enumerate(df.columns):
        text = df[name].astype(str).str.strip()
        empty = np.flatnonzero((text == "").to_numpy())
        if empty.size:
            raise InputError(f"{path}: line {empty[0] + 1 + header}, column {name!r} is empty (a missing value); "
                             "fill or drop the rows with missing values")
        values = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64)
        wrong = np.flatnonzero(np.isnan(values) & ~text.str.lower().str.lstrip("+-").eq("nan").to_numpy())
        if wrong.size:
            bad.append(f"{name!r} (line {wrong[0] + 1 + header}: {text.iloc[wrong[0]]!r})")
        out[:, j] = values
    if bad:
        raise InputError(f"{path}: non-numeric column(s) {', '.join(bad)}; keep numeric columns with "
                         f"{path}:col1,col2,... or convert them")
    return out


def _read_csv(path: Path) -> tuple[np.ndarray, list[str]]:
    import pandas as pd

    try:
        header = _csv_has_header(path)
        df = pd.read_csv(path, header=0 if header else None, dtype=str, keep_default_na=False,
                         skip_blank_lines=False, encoding="utf-8-sig")
    except (UnicodeDecodeError, pd.errors.ParserError, OSError) as exc:
        raise InputError(f"{path}: cannot read it as CSV ({type(exc).__name__}: {str(exc).strip()})") from None
    except pd.errors.EmptyDataError:
        raise InputError(f"{path}: the file is empty") from None
    if not header:
        df.columns = [str(i) for i in range(df.shape[1])]
    return _numeric_frame(df, path, header), [str(c) for c in df.columns]


def _read_parquet(path: Path) -> tuple[np.ndarray, list[str]]:
    if importlib.util.find_spec("pyarrow") is None:
        raise InputError(f"{path}: reading .parquet needs the pyarrow package (pip install pyarrow), which is not "
                         "installed; or save the table as .csv or .npy")
    import pandas as pd

    try:
        df = pd.read_parquet(path, engine="pyarrow")
    except Exception as exc:  # pyarrow raises ArrowInvalid/OSError depending on the damage
        raise InputError(f"{path}: cannot read it as Parquet ({type(exc).__name__}: {exc})") from None
    bad = [f"{c!r} ({df[c].dtype})" for c in df.columns
           if not (pd.api.types.is_integer_dtype(df[c]) or pd.api.types.is_float_dtype(df[c]))]
    if bad:
        raise InputError(f"{path}: non-numeric column(s) {', '.join(bad)}; keep numeric columns with "
                         f"{path}:col1,col2,...")
    return df.to_numpy(dtype=np.float64), [str(c) for c in df.columns]


def _read_numpy(path: Path) -> tuple[np.ndarray, list[str]]:
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                keys = list(loaded.keys())
                key = keys[0] if len(keys) == 1 else "data" if "data" in keys else None
                if key is None:
                    raise InputError(f"{path}: holds arrays {keys}; keep one array, or name the table 'data'")
                loaded = loaded[key]
    except InputError:
        raise
    except Exception as exc:  # ValueError (pickled objects), OSError, EOFError, BadZipFile ...
        raise InputError(f"{path}: cannot read it as {path.suffix} ({type(exc).__name__}: {exc})") from None
    arr = np.asarray(loaded)
    if arr.ndim != 2:
        raise InputError(f"{path}: expected a 2-D array [rows, features], found shape {arr.shape}"
                         + ("; for one feature save x[:, None]" if arr.ndim == 1 else ""))
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise InputError(f"{path}: expected numbers (float or int), found dtype {arr.dtype}")
    return arr.astype(np.float64), [str(i) for i in range(arr.shape[1])]


_READERS = {".csv": _read_csv, ".parquet": _read_parquet, ".npy": _read_numpy, ".npz": _read_numpy}


def _select(data: np.ndarray, names: list[str], columns: tuple[str, ...] | None, path: Path) -> tuple[np.ndarray, list[str]]:
    """Columns by name first, else by 0-based index."""
    if columns is None:
        return data, names
    idx = []
    for c in columns:
        if c in names:
            idx.append(names.index(c))
        elif c.lstrip("-").isdigit() and -len(names) <= int(c) < len(names):
            idx.append(int(c) % len(names))
        else:
            shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
            raise InputError(f"{path}: no column {c!r}; its columns are {shown} (or 0-based indices 0..{len(names) - 1})")
    return data[:, idx], [names[i] for i in idx]


def _check(data: np.ndarray, names: list[str], path: Path, header_lines: int) -> None:
    """Rows enough, finite values, no constant column: each refused with where it is."""
    n, d = data.shape
    if d == 0:
        raise InputError(f"{path}: no columns")
    if n < MIN_ROWS:
        raise InputError(f"{path}: {n} rows; at least {MIN_ROWS} are needed so that the 10% test / 10% validation "
                         "split leaves every split non-empty")
    bad = ~np.isfinite(data)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        where = f"line {row + 1 + header_lines}" if path.suffix.lower() == ".csv" else f"row {row}"
        raise InputError(f"{path}: {where}, column {names[col]!r} is {data[row, col]} ({int(bad.sum())} non-finite "
                         "value(s) in all); drop or fill those rows")
    flat = [j for j in range(d) if data[0, j] == data[:, j].min() == data[:, j].max()]
    if flat:
        shown = ", ".join(f"{names[j]!r} (always {data[0, j]:g})" for j in flat[:10])
        raise InputError(f"{path}: constant column(s) {shown}: a density has no spread to learn there; drop them "
                         f"with {path}:col1,col2,...")


def read_table(spec: DataSpec) -> tuple[np.ndarray, list[str]]:
    """The checked float64 [N, D] table a spec names, and its column names."""
    path = spec.path
    suffix = path.suffix.lower()
    if suffix not in _READERS:
        raise InputError(f"--data {path}: unknown file type {suffix or '(no extension)'!r}; use .csv, .parquet, "
                         ".npy or .npz, or a registered dataset name (python -m nfkd data list)")
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "not found"
        raise InputError(f"--data {path}: file {what}")
    data, names = _READERS[suffix](path)
    data, names = _select(data, names, spec.columns, path)
    _check(data, names, path, int(suffix == ".csv" and _csv_has_header(path)))
    return data, names


def load_user_table(spec: DataSpec, seed: int = 0) -> UserTableSplits:
    """Read, check and split a user's table; the file's sha256 and the split rule travel with it."""
    data, names = read_table(spec)
    splits = seeded_splits(spec.text, data, seed, f"{spec.path} ({len(data)} rows, seed {seed})")
    info = {"path": str(spec.path.expanduser().resolve()), "format": spec.path.suffix.lower().lstrip("."),
            "sha256": file_sha256(spec.path), "columns": names, "rows": int(len(data)), "seed": int(seed),
            "split_rule": SPLIT_RULE}
    return UserTableSplits(**{f.name: getattr(splits, f.name) for f in fields(TabularSplits)}, file=info)
