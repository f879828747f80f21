"""A probe for whether an action releases the GIL, shared by the tests of the GIL-free paths."""

from __future__ import annotations

import sys
import threading


def another_thread_runs_during(make_action) -> bool:
    """Whether a thread waiting for the GIL got it while an action ran.

    The switch interval is made huge meanwhile, so only a release of the GIL
    by the action itself lets the waiting thread in.  Tried a few times, each
    with a new action from ``make_action()`` (made before the waiting starts):
    the waiting thread may not have been scheduled yet during a short release
    (CI once saw five 16 MB reads of ``/dev/zero`` in a row go by without it,
    on a loaded machine).  Stops at the first success, so only a probe that
    must fail pays for every attempt.
    """
    return any(_got_in_once(make_action()) for _ in range(25))


def _got_in_once(action) -> bool:
    ran = []
    ready, gate = threading.Event(), threading.Lock()
    gate.acquire()

    def waiter():
        ready.set()
        with gate:  # blocks without the GIL; then needs the GIL to go on
            ran.append(True)

    saved = sys.getswitchinterval()
    sys.setswitchinterval(100.0)
    try:
        thread = threading.Thread(target=waiter)
        thread.start()
        ready.wait()  # returns once the waiter has let go of the GIL, at the gate
        gate.release()  # it now waits for the GIL alone
        action()
        got_in = bool(ran)  # read before anything else could let it in
    finally:
        sys.setswitchinterval(saved)
    thread.join()
    return got_in


def read_zeros(size: int) -> None:
    with open("/dev/zero", "rb", buffering=0) as zeros:
        zeros.read(size)  # a single read(2), GIL released
