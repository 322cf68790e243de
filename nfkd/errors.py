"""One family of exceptions, so that callers (CLI, server) can turn any of them into one clear line."""
from __future__ import annotations

__all__ = ["NfkdError", "InputError", "DataError", "CheckpointError", "ExportError", "StorageError"]


class NfkdError(Exception):
    """Base class: the message says what was wrong, what was expected, and what to do."""


class InputError(NfkdError, ValueError):
    """Bad user input: shape, dtype, NaN/Inf, wrong feature count."""


class DataError(NfkdError):
    """A dataset file is missing, corrupt, or not in the expected layout."""


class CheckpointError(NfkdError):
    """A checkpoint file is missing, truncated, corrupt, unsafe or does not match its config."""


class ExportError(NfkdError):
    """An export failed its parity gate or a target runtime is unavailable."""


class StorageError(NfkdError):
    """A file could not be written (disk full, quota): the previous version of the file is kept."""
