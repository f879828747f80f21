"""Prove a model safe to load before a non-verifying backend loads it in-process.

tflite-runtime 2.14 reads a model's flatbuffer without verifying it: a
corrupted model can crash the whole process.  ``verify`` rules out every
structural fault first; what is left (semantic faults) is caught here: a
separate process loads the model and runs it once, and only if it survives
does the serving process load it.  That process is a fork of a long-lived
prober child that has already imported the backend, so a probe costs a fork
and a load rather than a Python start-up.  Verdicts are cached by sha256, so
re-swapping a known model costs nothing.

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

from . import _probe
from ..errors import BackendError, InvalidModelError

_cache: dict[tuple[str, str, Optional[str]], Optional[str]] = {}
_cache_lock = threading.Lock()


def prove_loadable(backend: str, data: bytes, sha256: str, signature: Optional[str] = None,
                   num_threads: Optional[int] = None, timeout: float = 60.0) -> float:
    """Load and run ``data`` once in a child process; return the seconds spent.

    Returns 0.0 when the verdict for this sha256 was already known.

    Raises:
        InvalidModelError: if the child crashed (the signal is named) or did
            not finish within ``timeout`` seconds.
        BackendError: if the prober process itself could not be run.
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


class _Prober:
    """A long-lived child that has imported the backend and forks one process per model.

    Forking from it avoids starting Python and importing the backend for every
    new model (about 0.15 s); it is started on first use and restarted if it dies.
    """

    def __init__(self, backend: str, timeout: float) -> None:
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        env["OPENBLAS_NUM_THREADS"] = "1"  # no thread pools in a process that forks
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tflite_hotswap.safety._probe", backend, str(timeout)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=package_root)

    def ask(self, data: bytes, signature: Optional[str], num_threads: Optional[int]) -> tuple[int, int]:
        sig = (signature or "").encode()
        self.proc.stdin.write(_probe.HEADER.pack(len(sig), num_threads or 0, len(data)) + sig + data)
        self.proc.stdin.flush()
        answer = self.proc.stdout.read(_probe.ANSWER.size)
        if len(answer) != _probe.ANSWER.size:
            raise EOFError("the prober process ended")
        return _probe.ANSWER.unpack(answer)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


_probers: dict[tuple[str, float], _Prober] = {}
_probers_lock = threading.Lock()


def _run_child(backend: str, data: bytes, signature: Optional[str], num_threads: Optional[int],
               timeout: float) -> Optional[str]:
    with _probers_lock:
        for attempt in range(2):
            prober = _probers.get((backend, timeout))
            try:
                if prober is None:
                    prober = _probers[(backend, timeout)] = _Prober(backend, timeout)
                kind, value = prober.ask(data, signature, num_threads)
                break
            except (OSError, EOFError) as e:
                _probers.pop((backend, timeout)).close()
                if attempt == 1:
                    raise BackendError(f"the prober process for {backend} failed twice ({e}); "
                                       f"expected it to load models in isolation") from e
    if kind == _probe.KILLED_BY_SIGNAL:
        return (f"{backend} crashed ({signal.Signals(value).name}) loading or running the model "
                f"in an isolated process; expected a valid model, refused")
    if kind == _probe.TIMED_OUT:
        return f"the model did not load and run within {timeout:g} s in an isolated process; refused"
    if value not in (0, _probe.REFUSED):
        return f"the isolated process loading the model died with exit status {value}; refused"
    return None
