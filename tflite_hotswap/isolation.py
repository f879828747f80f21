"""Prove a model safe to load before a non-verifying backend loads it in-process.

tflite-runtime 2.14 reads a model's flatbuffer without verifying it: a
truncated or corrupted model can crash the whole process in the Interpreter
constructor.  So a child process loads the model and runs it once first; only
if the child survives does the serving process load it.  Verdicts are cached
by sha256, so re-swapping a known model costs nothing.

A model the child refuses with an exception (rather than a crash) is safe to
load here: the same load raises the same error, typed, in this process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import Optional

from .errors import InvalidModelError

_cache: dict[tuple[str, str, Optional[str]], Optional[str]] = {}
_cache_lock = threading.Lock()


def prove_loadable(backend: str, data: bytes, sha256: str, signature: Optional[str] = None,
                   num_threads: Optional[int] = None, timeout: float = 60.0) -> float:
    """Load and run ``data`` once in a child process; return the seconds spent.

    Returns 0.0 when the verdict for this sha256 was already known.

    Raises:
        InvalidModelError: if the child crashed (the signal is named) or did
            not finish within ``timeout`` seconds.
    """
    key = (backend, sha256, signature)
    with _cache_lock:
        known = key in _cache
        verdict = _cache.get(key)
    spent = 0.0
    if not known:
        started = time.perf_counter()
        verdict = _run_child(backend, data, signature, num_threads, timeout)
        spent = time.perf_counter() - started
        with _cache_lock:
            _cache[key] = verdict
    if verdict is not None:
        raise InvalidModelError(verdict)
    return spent


def _run_child(backend: str, data: bytes, signature: Optional[str], num_threads: Optional[int],
               timeout: float) -> Optional[str]:
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    try:
        done = subprocess.run(
            [sys.executable, "-m", "tflite_hotswap._probe", backend, signature or "",
             str(num_threads or 0)],
            input=data, capture_output=True, timeout=timeout, env=env, cwd=package_root)
    except subprocess.TimeoutExpired:
        return f"the model did not load and run within {timeout:g} s in an isolated process; refused"
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        return (f"{backend} crashed ({name}) loading or running the model in an isolated "
                f"process; expected a valid model, refused")
    if done.returncode not in (0, 3):
        detail = done.stderr.decode(errors="replace").strip().splitlines()
        return (f"the isolated process loading the model died with exit status {done.returncode}"
                f"{': ' + detail[-1] if detail else ''}; refused")
    return None
