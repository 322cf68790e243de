"""nfkd: normalizing flows, distilled into small students, made fast."""
from __future__ import annotations

__version__ = "0.1.0"

from .checkpoint import load, load_checkpoint, save  # noqa: E402
from .errors import CheckpointError, DataError, InputError, NfkdError  # noqa: E402
from .flows import IAF, MAF, Flow, Glow, Glow1D, build_flow  # noqa: E402

__all__ = [
    "IAF", "MAF", "CheckpointError", "DataError", "Flow", "Glow", "Glow1D", "InputError", "NfkdError",
    "build_flow", "load", "load_checkpoint", "save", "__version__",
]
