"""Child process of ``isolation``: load models and run them once, in throwaway processes.

``python -m tflite_hotswap._probe BACKEND`` serves requests on stdin: it
imports the backend once, then forks one short-lived process per model, so a
model that crashes the backend kills only that fork.  Request: a header
``<III`` (signature length, num_threads, model length), the signature, the
model.  Answer: ``<ii`` (kind, value): kind 0 -- the fork exited with status
``value`` (0 loaded and ran, 3 refused with an exception); kind 1 -- it died
of signal ``value``; kind 2 -- it ran past the timeout and was killed.
"""

import os
import struct
import sys
import time

HEADER = struct.Struct("<III")
ANSWER = struct.Struct("<ii")
EXITED, KILLED_BY_SIGNAL, TIMED_OUT = 0, 1, 2
REFUSED = 3


def check(backend, data: bytes, signature, num_threads) -> int:
    """Load and run the model once, exactly as the runtime does; return the exit status."""
    from ..serving.loader import inspect_model, make_bound

    try:
        interpreter, model = inspect_model(backend, data, "", num_threads, signature)
        bound = make_bound(backend, model, num_threads, [None] * len(model.contract.inputs),
                           interpreter=interpreter)
        bound.warm_up()
    except Exception as e:  # the verdict, whatever was raised
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return REFUSED
    return 0


def _read(stream, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = stream.read(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def serve(backend_name: str, timeout: float) -> None:
    from ..serving.backend import load_backend
    from ..serving import loader  # noqa: F401  (imported before forking, so forks start warm)

    backend = load_backend(backend_name)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        try:
            sig_len, threads, model_len = HEADER.unpack(_read(stdin, HEADER.size))
            signature = _read(stdin, sig_len).decode() or None
            data = _read(stdin, model_len)
        except EOFError:
            return
        pid = os.fork()
        if pid == 0:  # the throwaway process
            os._exit(check(backend, data, signature, threads or None))
        stdout.write(ANSWER.pack(*_wait(pid, timeout)))
        stdout.flush()


def _wait(pid: int, timeout: float) -> tuple:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            if os.WIFSIGNALED(status):
                return KILLED_BY_SIGNAL, os.WTERMSIG(status)
            return EXITED, os.WEXITSTATUS(status)
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            return TIMED_OUT, 0
        time.sleep(0.001)


if __name__ == "__main__":
    serve(sys.argv[1], float(sys.argv[2]))
