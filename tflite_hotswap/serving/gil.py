"""Short GIL turns while a swap loads a model beside a serving loop.

CPython gives the GIL to a waiting thread only when the holder releases it or,
failing that, after the *switch interval* (``sys.getswitchinterval()``, 5 ms by
default).  A serving loop releases the GIL in every invoke; while a swap runs
Python code on another thread (reading, verifying, binding the new model) the
loop then waits up to 5 ms after each invoke to get it back: a camera loop at
30 frames/s misses its deadline.  For the duration of a load the interval is
lowered to ``SWITCH_INTERVAL`` so the loop waits at most that long, and restored
afterwards.  It is a process-wide setting: nested or concurrent loads share one
lowering, and a value someone else set meanwhile is left alone.
``TFLITE_HOTSWAP_SWITCH_INTERVAL`` (seconds; ``0`` leaves the interval alone)
overrides it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Iterator

logger = logging.getLogger(__name__)

ENV_VAR = "TFLITE_HOTSWAP_SWITCH_INTERVAL"
SWITCH_INTERVAL = 1e-4  # seconds: a loop waits at most about this long for the GIL

_lock = threading.Lock()
_depth = 0
_saved = 0.0  # the interval before the outermost load
_ours = 0.0  # the interval we set


def _wanted() -> float:
    try:
        return float(os.environ.get(ENV_VAR, SWITCH_INTERVAL))
    except ValueError:
        logger.warning("%s=%r is not a number of seconds; using %g", ENV_VAR, os.environ[ENV_VAR],
                       SWITCH_INTERVAL)
        return SWITCH_INTERVAL


@contextlib.contextmanager
def short_turns() -> Iterator[None]:
    """Lower the switch interval for the body (never raise it); restore it after the last one."""
    global _depth, _saved, _ours
    wanted = _wanted()
    with _lock:
        if _depth == 0:
            _saved = sys.getswitchinterval()
            _ours = min(wanted, _saved) if wanted > 0 else _saved
            if _ours != _saved:
                sys.setswitchinterval(_ours)
                _ours = sys.getswitchinterval()  # CPython keeps whole microseconds: compare with that
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth = max(_depth - 1, 0)  # a fork inside the body reset the child's count
            if _depth == 0:
                _restore()


def _restore() -> None:
    """Put back the interval from before the loads, unless someone else has set one since."""
    if _ours != _saved and abs(sys.getswitchinterval() - _ours) < 1e-7:
        sys.setswitchinterval(_saved)


def _after_fork_in_child() -> None:
    """A fork during a load: the child has no loading thread, so nothing is lowered for it."""
    global _lock, _depth
    _lock = threading.Lock()  # possibly held by a thread that does not exist here
    if _depth:
        _restore()
    _depth = 0


os.register_at_fork(after_in_child=_after_fork_in_child)
