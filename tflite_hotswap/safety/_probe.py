"""The prober: a child process that runs a check on models, each in a throwaway fork.

Started by ``isolation`` as ``python -c "...; main()"`` (not ``-m``: running a
module of an already imported package makes runpy warn that it is found in
``sys.modules``, an error under ``PYTHONWARNINGS=error``).  Its arguments: the
check, as a dotted name ``package.module:factory``.  ``factory(backend)`` is
called once, here, so that the backend is imported before any fork and every
fork starts warm; it returns the check, ``check(data, signature,
num_threads)``, which raises to refuse a model.  This module imports nothing of
the layers above it: what to check is named on the command line.

The conversation runs over a Unix socket on file descriptor 3.  After start-up
the prober sends ``READY``.  Request: ``REQUEST`` (signature length,
num_threads, model length, wall-clock timeout, address-space headroom,
CPU-time limit), the signature, the model.  Answer: ``ANSWER`` (kind, value, message
length), the message: kind ``EXITED`` -- the fork exited with status
``value`` (``OK`` or ``REFUSED``; the message is the exception's class,
a NUL, and its text); ``SIGNALED``
-- it died of signal ``value``; ``TIMED_OUT`` -- it ran past the timeout and
was killed.
"""

from __future__ import annotations

import importlib
import os
import resource
import select
import signal
import socket
import struct
import sys
import time
from typing import Callable, Optional

Check = Callable[[bytes, Optional[str], Optional[int]], None]

SOCKET_FD = 3
READY = b"R"
REQUEST = struct.Struct("<IIQdQQ")
ANSWER = struct.Struct("<iiI")
EXITED, SIGNALED, TIMED_OUT = 0, 1, 2
OK, REFUSED = 0, 3
_MAX_MESSAGE = 2000


def load_check(name: str) -> Callable[[str], Check]:
    """Import ``package.module:factory`` and return the factory.

    Raises:
        ValueError: if ``name`` has no ``:``.
        ImportError, AttributeError: if the module or attribute does not exist.
    """
    module, sep, attribute = name.partition(":")
    if not sep:
        raise ValueError(f"check: expected 'package.module:factory', got {name!r}")
    factory: Callable[[str], Check] = getattr(importlib.import_module(module), attribute)
    return factory


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    parts = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            raise EOFError
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


def _die_with_parent(prober_pid: int) -> None:
    """Linux: be killed when the prober dies, so no probe outlives its timeout's keeper.

    Safe here because the prober is single-threaded (the death signal follows
    the parent *thread*).
    """
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != prober_pid:  # the prober died before prctl took effect
        os._exit(REFUSED)


def _mapped_bytes() -> int:
    """The process's current address-space size (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[0]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return 0


def _run_fork(check: Check, data: bytes, signature: str | None, num_threads: int | None,
              address_space: int, cpu_seconds: int, message_fd: int, prober_pid: int) -> int:
    """The throwaway process: limit itself, run the check, return the exit status."""
    # Nothing of the conversation may leak into (or out of) this process.
    os.close(SOCKET_FD)
    _die_with_parent(prober_pid)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    # Yield the CPU to the serving process: on a 2-core board a probe must not
    # raise the inference loop's latency.
    os.nice(10)
    mapped = _mapped_bytes()
    if address_space and mapped:
        # Headroom above what the fork already maps (the interpreter and the
        # backend's libraries): a cost bomb fails to allocate instead of
        # driving the board into the OOM killer.
        limit = mapped + address_space
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if cpu_seconds:
        # SIGXCPU at the soft limit, SIGKILL one second later.
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    try:
        check(data, signature, num_threads)
    except BaseException as e:  # noqa: BLE001 (the verdict, whatever was raised)
        # "module.Class\0message": the parent re-raises library errors by type.
        kind = f"{type(e).__module__}.{type(e).__qualname__}"
        os.write(message_fd, f"{kind}\0{e}".encode(errors="replace")[:_MAX_MESSAGE])
        return REFUSED
    return OK


def _wait(pid: int, message_fd: int, timeout: float) -> tuple[int, int, bytes]:
    """Wait for the fork (its end closes ``message_fd``) up to ``timeout``; kill it past that."""
    deadline = time.monotonic() + timeout
    message = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        ready, _, _ = select.select([message_fd], [], [], remaining)
        if not ready:
            break
        chunk = os.read(message_fd, 4096)
        if not chunk:  # the fork has exited (or is exiting): reap it
            _, status = os.waitpid(pid, 0)
            if os.WIFSIGNALED(status):
                return SIGNALED, os.WTERMSIG(status), message
            return EXITED, os.WEXITSTATUS(status), message
        message = (message + chunk)[:_MAX_MESSAGE]
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return TIMED_OUT, 0, message


def serve(check_name: str, backend: str) -> None:
    """Answer requests on the socket until the parent closes it."""
    with socket.socket(fileno=SOCKET_FD) as sock:
        check = load_check(check_name)(backend)
        sock.sendall(READY)
        _serve(sock, check)


def _serve(sock: socket.socket, check: Check) -> None:
    while True:
        try:
            sig_len, threads, model_len, timeout, address_space, cpu = REQUEST.unpack(
                _recv_exact(sock, REQUEST.size))
            signature = _recv_exact(sock, sig_len).decode() or None
            data = _recv_exact(sock, model_len)
        except (EOFError, ConnectionError):
            return
        message_r, message_w = os.pipe()
        prober_pid = os.getpid()
        pid = os.fork()
        if pid == 0:
            os.close(message_r)
            status = REFUSED
            try:
                status = _run_fork(check, data, signature, threads or None, address_space, cpu,
                                   message_w, prober_pid)
            finally:
                os._exit(status)
        os.close(message_w)
        try:
            kind, value, message = _wait(pid, message_r, timeout)
        finally:
            os.close(message_r)
        sock.sendall(ANSWER.pack(kind, value, len(message)) + message)


def main() -> None:
    """Entry point: ``main()`` with ``sys.argv[1:] == [check, backend]``."""
    # Thread pools (OpenBLAS) in a process that forks are not worth their risk.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    serve(sys.argv[1], sys.argv[2])
