"""Run a check in a forked child, so a crash fails one test instead of killing pytest.

The child inherits everything already set up in the test process (imports, a
Runtime, its interpreters), runs ``fn(*args)`` and exits: 0 when it returned,
1 with the traceback on the pipe when it raised.  A child killed by a signal
(SIGSEGV, SIGFPE, SIGBUS, or SIGABRT from a sanitizer report) becomes a
:class:`ChildCrashed` in the parent, naming the signal and the input.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from typing import Any, Callable


class ChildCrashed(AssertionError):
    """The forked child died of a signal: the call under test crashed the process."""


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def run_forked(fn: Callable[..., Any], *args: Any, describe: str = "") -> None:
    """Run ``fn(*args)`` in a forked child and re-raise its outcome here.

    Args:
        fn: the check; it raises AssertionError (or anything) to fail.
        *args: its arguments (inherited by the child, never pickled).
        describe: the reproducing input, shown when the child crashes.

    Raises:
        ChildCrashed: if the child died of a signal or exited without a verdict.
        AssertionError: with the child's traceback if ``fn`` raised.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        payload = b""
        try:
            os.close(read_end)
            fn(*args)
        except BaseException:  # reported to the parent, which raises it
            code = 1
            payload = traceback.format_exc().encode()
        finally:
            try:
                view = memoryview(payload)
                while view:
                    view = view[os.write(write_end, view):]
            finally:
                os._exit(code)
    os.close(write_end)
    chunks = []
    with os.fdopen(read_end, "rb") as pipe:
        for chunk in iter(lambda: pipe.read(65536), b""):
            chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    detail = f"\ninput: {describe}" if describe else ""
    if os.WIFSIGNALED(status):
        raise ChildCrashed(f"the call crashed the process ({_signal_name(os.WTERMSIG(status))}){detail}")
    code = os.WEXITSTATUS(status)
    text = b"".join(chunks).decode(errors="replace")
    if code == 1 and text:
        raise AssertionError(f"in the forked child:\n{text}{detail}")
    if code != 0:
        raise ChildCrashed(f"the child exited with status {code} without a verdict{detail}")
