"""Former name of ``export.triton_server`` (the Triton *Inference Server* model repository writer;
the Triton *kernel language* lives in ``kernels/``). Kept so ``python -m export.triton_repo`` and old
imports keep working; new code should use ``export.triton_server``."""
from __future__ import annotations

import sys

from .triton_server import *  # noqa: F401,F403
from .triton_server import __all__, main  # noqa: F401

if __name__ == "__main__":
    print("note: `python -m export.triton_repo` is now `python -m export.triton_server`", file=sys.stderr)
    sys.exit(main())
