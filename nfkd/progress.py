"""Progress output for the long phases (export, FID, benchmarks, trade-off timing, distillation).

Why one helper: no phase over ~10 s should run silently (issue 27), yet tests, CI logs and pipes
must not fill with bar redraws. The rule is tqdm's ``disable=None``: bars and phase lines go to
stderr only when stderr is a terminal. ``NFKD_PROGRESS=1`` forces them on (a log file you tail),
``NFKD_PROGRESS=0`` off (tests/conftest.py sets it, so the suite is quiet even under ``-s``).

    with phase("export: parity gate"):        # "export: parity gate ..." then "... done in 3.2 s"
        check()
    for chunk in bar(chunks, desc="teacher samples"):   # a tqdm bar (a no-op object when off)
        ...
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Any, Iterable, Iterator

__all__ = ["ENV", "bar", "enabled", "note", "phase"]

ENV = "NFKD_PROGRESS"
_ON = frozenset({"1", "true", "yes", "on"})
_OFF = frozenset({"0", "false", "no", "off"})


def enabled() -> bool:
    """``NFKD_PROGRESS`` when set to 1/0 (true/false, yes/no, on/off); otherwise whether stderr is a TTY."""
    value = os.environ.get(ENV, "").strip().lower()
    if value in _ON:
        return True
    if value in _OFF:
        return False
    stream = sys.stderr
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def bar(iterable: Iterable[Any] | None = None, *, desc: str | None = None, total: float | None = None,
        unit: str = "it", enable: bool = True, **kwargs: Any):
    """A tqdm bar on stderr (left on screen only while it runs), or a disabled one that prints nothing.

    ``enable=False`` lets a caller's own switch (``progress=False``) turn it off as well.
    """
    from tqdm.auto import tqdm

    kwargs.setdefault("leave", False)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, desc=desc, total=total, unit=unit, file=sys.stderr,
                disable=not (enable and enabled()), **kwargs)


def note(message: str) -> None:
    """One progress line on stderr (when progress is on): for steps that are not a loop."""
    if enabled():
        print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def phase(desc: str) -> Iterator[None]:
    """``desc ...`` on entry and ``desc: done in X s`` (or ``failed after X s``) on exit, when progress is on."""
    if not enabled():
        yield
        return
    note(f"{desc} ...")
    t0 = time.perf_counter()
    try:
        yield
    except BaseException:
        note(f"{desc}: failed after {time.perf_counter() - t0:.1f} s")
        raise
    note(f"{desc}: done in {time.perf_counter() - t0:.1f} s")
