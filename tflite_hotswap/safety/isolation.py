"""Prove a model safe to load before the serving process loads it.

No backend can be trusted with a hostile model: tflite-runtime 2.14 does not
verify a flatbuffer at all, and LiteRT verifies its structure but not its
meaning (an operator output index of -1 crashes it in ``AllocateTensors``).
``verify`` rules out the faults it can name; what is left is caught here: a
separate process runs the caller's check (load, bind, run once) and only if it
survives does the serving process load the model.

That process is a fork of a long-lived prober child (``_probe``) that has
already imported the backend, so a probe costs a fork and a load rather than a
Python start-up.  The check is named, not imported, here (a dotted
``package.module:factory``): this layer sits below ``serving`` and never
imports it.

Every wait on the prober is bounded: a prober that is stopped, wedged or dead
is killed and replaced, and the probe fails with :class:`IsolationError`.
The throwaway process runs under rlimits (address space, CPU time) and a
wall-clock timeout, at a lower priority than the serving process.

Only definite verdicts are cached, by sha256 (bounded, least recently used
first out): loaded fine, refused with an exception, or crashed with a signal
a fault raises (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT).  A timeout, a
SIGKILL (what the OOM killer sends) or a prober failure says as much about the
machine's state as about the model, so the next attempt probes again.

A process forked after the prober started gets its own prober: the sockets of
the parent's are closed in the child (``os.register_at_fork``), and the locks
are new.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from .. import errors
from ..errors import HotswapError, InvalidModelError, IsolationError
from . import _probe

logger = logging.getLogger(__name__)

ENV_TIMEOUT = "TFLITE_HOTSWAP_PROBE_TIMEOUT"
ENV_MEMORY = "TFLITE_HOTSWAP_PROBE_MEMORY_MB"
CACHE_SIZE = 1024
# Signals that a fault in the backend raises: the same model crashes the same way.
DEFINITE_SIGNALS = frozenset({signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL,
                              signal.SIGABRT})
# -c, not -m (runpy warns about a module of an imported package).  -c puts the
# working directory first on sys.path, where a source checkout would shadow
# the installed package: dropped, PYTHONPATH says where this package is.
_MAIN = "import sys; del sys.path[0]; from tflite_hotswap.safety._probe import main; main()"


@dataclass(frozen=True)
class ProbeLimits:
    """Bounds on one probe.

    Attributes:
        timeout: wall-clock seconds the check may take (load, bind, run once).
        memory: address space in bytes the check may map beyond what the
            forked process already maps; None: 1 GiB plus 8 times the model.
        cpu_seconds: CPU time of the check; None: the timeout times the
            number of CPUs (threads add up), rounded up.
        start_timeout: seconds a new prober may take to start (import the
            backend).
        grace: seconds the prober may take beyond ``timeout`` to answer
            before it is taken for wedged, killed and replaced.
    """

    timeout: float = 60.0
    memory: int | None = None
    cpu_seconds: int | None = None
    start_timeout: float = 60.0
    grace: float = 10.0

    @classmethod
    def from_env(cls) -> ProbeLimits:
        """Defaults, with ``TFLITE_HOTSWAP_PROBE_TIMEOUT`` (seconds) and
        ``TFLITE_HOTSWAP_PROBE_MEMORY_MB`` applied when set.

        Raises:
            MisuseError: if a variable is not a positive number.
        """
        timeout = _env_number(ENV_TIMEOUT)
        memory = _env_number(ENV_MEMORY)
        return cls(timeout=timeout if timeout is not None else cls.timeout,
                   memory=int(memory * 2**20) if memory is not None else None)

    def resolved(self, model_size: int) -> tuple[float, int, int]:
        """(timeout, memory headroom, CPU seconds) for a model of ``model_size`` bytes."""
        memory = self.memory if self.memory is not None else 2**30 + 8 * model_size
        cpu = self.cpu_seconds or math.ceil(self.timeout * (os.cpu_count() or 1)) + 1
        return self.timeout, memory, cpu


def _env_number(name: str) -> float | None:
    text = os.environ.get(name)
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise errors.MisuseError(f"{name}: expected a positive number, got {text!r}")
    return value


def prove_loadable(check: str, backend: str, data: bytes, sha256: str,
                   signature: str | None = None, num_threads: int | None = None,
                   limits: ProbeLimits | None = None) -> float:
    """Run ``check`` on ``data`` in a throwaway child process; return the seconds spent.

    Returns 0.0 when a definite verdict for this model was already known.

    Args:
        check: ``package.module:factory``; ``factory(backend)`` returns
            ``check(data, signature, num_threads)``, which raises to refuse.
        backend: the backend's name, passed to the factory.
        data: the model.
        sha256: its hash, the cache key.
        signature: passed to the check.
        num_threads: passed to the check.
        limits: the probe's bounds (default: :meth:`ProbeLimits.from_env`).

    Raises:
        InvalidModelError: if the check crashed (the signal is named), ran
            out of time or memory, or raised (a library error raised by the
            check is re-raised with its own type, e.g. ``MisuseError``).
        IsolationError: if the prober could not start, or did not answer
            within the timeout plus a grace period (it is killed and
            replaced; the verdict is not cached).
    """
    limits = limits or ProbeLimits.from_env()
    resolved = limits.resolved(len(data))
    key = (check, backend, sha256, signature, num_threads, resolved[1])
    state = _state
    with state.cache_lock:
        cached = state.cache.get(key)
        if cached is not None:
            state.cache.move_to_end(key)
    if cached is not None:
        _raise_verdict(cached)
        return 0.0
    started = time.perf_counter()
    answer = _ask(state, check, backend, data, signature, num_threads, resolved, limits)
    spent = time.perf_counter() - started
    verdict = _Verdict.of(answer, backend, resolved[0])
    if verdict.definite:
        with state.cache_lock:
            state.cache[key] = verdict
            while len(state.cache) > CACHE_SIZE:
                state.cache.popitem(last=False)
    if verdict.error is None:
        logger.info("%s: %s loaded and ran the model in an isolated process (%.3f s)",
                    sha256[:12], backend, spent)
    else:
        logger.warning("%s: refused%s: %s", sha256[:12], "" if verdict.definite else " (not cached)",
                       verdict.message)
    _raise_verdict(verdict)
    return spent


@dataclass(frozen=True)
class _Verdict:
    error: type[HotswapError] | None  # None: loaded and ran
    message: str
    definite: bool

    @classmethod
    def of(cls, answer: tuple[int, int, bytes], backend: str, timeout: float) -> _Verdict:
        kind, value, raw = answer
        if kind == _probe.EXITED and value == _probe.OK:
            return cls(None, "", True)
        if kind == _probe.EXITED and value == _probe.REFUSED:
            name, _, text = raw.decode(errors="replace").partition("\0")
            module, _, cls_name = name.rpartition(".")
            error = getattr(errors, cls_name, None) if module == errors.__name__ else None
            if isinstance(error, type) and issubclass(error, HotswapError):
                return cls(error, f"{text} (in an isolated process)", True)
            return cls(InvalidModelError, f"{backend} could not load or run the model in an "
                                          f"isolated process: {cls_name}: {text}", True)
        if kind == _probe.SIGNALED:
            name = _signal_name(value)
            definite = value in DEFINITE_SIGNALS
            cause = "" if definite else " (killed from outside: out of memory?)"
            if value == signal.SIGXCPU:
                cause = " (its CPU-time limit)"
            return cls(InvalidModelError, f"{backend} crashed ({name}){cause} loading or running "
                                          f"the model in an isolated process; expected a valid "
                                          f"model, refused", definite)
        if kind == _probe.TIMED_OUT:
            return cls(InvalidModelError, f"the model did not load and run within {timeout:g} s in "
                                          f"an isolated process; refused", False)
        return cls(InvalidModelError, f"the isolated process loading the model exited with status "
                                      f"{value}; expected 0 or {_probe.REFUSED}, refused", False)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _raise_verdict(verdict: _Verdict) -> None:
    if verdict.error is not None:
        raise verdict.error(verdict.message)


class _Prober:
    """A prober child process and our end of its socket."""

    def __init__(self, check: str, backend: str, start_timeout: float) -> None:
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ)
        # The child imports this very package, wherever this process found it.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        env["OPENBLAS_NUM_THREADS"] = "1"  # no thread pools in a process that forks
        ours, theirs = socket.socketpair()
        try:
            # Its own process group: a Ctrl+C meant for the serving process
            # does not kill the prober mid-probe.
            self.pid = os.posix_spawn(
                sys.executable, [sys.executable, "-c", _MAIN, check, backend], env,
                file_actions=[(os.POSIX_SPAWN_DUP2, theirs.fileno(), _probe.SOCKET_FD)],
                setpgroup=0)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.sock = ours
        self.name = f"{backend} prober (pid {self.pid})"
        try:
            ready = _recv_exact(self.sock, len(_probe.READY), time.monotonic() + start_timeout)
        except BaseException:
            self.kill()
            raise
        if ready != _probe.READY:
            self.kill()
            raise EOFError(f"the prober sent {ready!r}; expected {_probe.READY!r}")
        logger.info("started the %s", self.name)

    def ask(self, data: bytes, signature: str | None, num_threads: int | None,
            resolved: tuple[float, int, int], grace: float) -> tuple[int, int, bytes]:
        timeout, memory, cpu = resolved
        # Sending 50 MB/s at least, even on a board.
        deadline = time.monotonic() + timeout + grace + len(data) / 50e6
        sig = (signature or "").encode()
        header = _probe.REQUEST.pack(len(sig), num_threads or 0, len(data), timeout, memory, cpu)
        self.sock.settimeout(max(deadline - time.monotonic(), 0.001))
        self.sock.sendall(header + sig)
        self.sock.sendall(data)  # sendall's timeout bounds the whole call
        kind, value, length = _probe.ANSWER.unpack(_recv_exact(self.sock, _probe.ANSWER.size, deadline))
        return kind, value, _recv_exact(self.sock, length, deadline)

    def kill(self) -> None:
        """Kill and reap the process; close our socket."""
        self.sock.close()
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _reap(self.pid)

    def close(self, wait: float = 2.0) -> None:
        """Ask the process to end (EOF); kill it if it has not within ``wait`` seconds."""
        self.sock.close()
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if _reap(self.pid, block=False):
                return
            time.sleep(0.01)
        self.kill()

    def abandon(self) -> None:
        """In a forked child: drop our copy of the socket; the process is the parent's."""
        self.sock.close()


def _reap(pid: int, block: bool = True) -> bool:
    try:
        done, _ = os.waitpid(pid, 0 if block else os.WNOHANG)
    except ChildProcessError:
        return True
    return done != 0


def _recv_exact(sock: socket.socket, n: int, deadline: float) -> bytes:
    parts = []
    while n:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("timed out")
        sock.settimeout(remaining)  # recv waits in poll(), without the GIL
        chunk = sock.recv(min(n, 1 << 16))
        if not chunk:
            raise EOFError("the prober process ended")
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


class _State:
    """Everything that must not cross a fork: probers, their sockets, the locks."""

    def __init__(self, cache: OrderedDict[tuple[object, ...], _Verdict]) -> None:
        self.lock = threading.Lock()  # one probe at a time per process
        self.probers: dict[tuple[str, str], _Prober] = {}
        self.cache_lock = threading.Lock()
        self.cache = cache


_state = _State(OrderedDict())


def _ask(state: _State, check: str, backend: str, data: bytes, signature: str | None,
         num_threads: int | None, resolved: tuple[float, int, int],
         limits: ProbeLimits) -> tuple[int, int, bytes]:
    # The lock is held across the probe; its own wait is bounded too, so that a
    # second swap waits for the first probe's bound, not forever.
    lock_wait = limits.start_timeout + resolved[0] + limits.grace + len(data) / 50e6
    if not state.lock.acquire(timeout=lock_wait):
        raise IsolationError(f"another probe held the prober for more than {lock_wait:g} s; "
                             f"expected it to finish within its timeout")
    try:
        for attempt in (1, 2):
            prober = state.probers.get((check, backend))
            try:
                if prober is None:
                    prober = _Prober(check, backend, limits.start_timeout)
                    state.probers[(check, backend)] = prober
                return prober.ask(data, signature, num_threads, resolved, limits.grace)
            except socket.timeout as e:
                # Stopped or wedged: asking again would wait as long again.
                _discard(state, check, backend)
                logger.warning("the %s prober did not answer in time (%s); killed it", backend, e)
                raise IsolationError(
                    f"the {backend} prober did not answer within {resolved[0] + limits.grace:g} s "
                    f"(the probe's timeout plus {limits.grace:g} s); killed it, the model was not judged; "
                    f"expected an answer") from e
            except (OSError, EOFError) as e:
                _discard(state, check, backend)
                logger.warning("the %s prober failed (%s); restarting it (attempt %d)",
                               backend, e, attempt)
                if attempt == 2:
                    raise IsolationError(
                        f"the {backend} prober failed twice ({e}); expected it to load models in "
                        f"isolation (is the backend importable in a fresh process?)") from e
        raise AssertionError("unreachable")
    finally:
        state.lock.release()


def _discard(state: _State, check: str, backend: str) -> None:
    prober = state.probers.pop((check, backend), None)
    if prober is not None:
        prober.kill()


def _after_fork_in_child() -> None:
    """A forked child must not talk to its parent's prober (answers would interleave)."""
    global _state
    old = _state
    for prober in old.probers.values():
        prober.abandon()
    # Verdicts stay true; locks held by the parent's other threads would never be released.
    _state = _State(OrderedDict(old.cache))


def _close_all() -> None:
    state = _state
    for prober in list(state.probers.values()):
        prober.close()
    state.probers.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_all)
