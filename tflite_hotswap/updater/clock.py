"""Time for the updater, injectable so tests never sleep for an interval.

The updater reads time and waits only through a :class:`Clock`.  The default
is the system's; :class:`ManualClock` moves only when told to, and records
each wait the updater starts, so a test can see the delay the scheduler chose
and jump over it.
"""

from __future__ import annotations

import queue
import threading
import time

#: How often (real seconds) a :class:`ManualClock` wait looks at its event.
_POLL = 0.002


class Clock:
    """The system clock."""

    def time(self) -> float:
        """Wall-clock time (seconds since the epoch): for status and local-time windows."""
        return time.time()

    def monotonic(self) -> float:
        """Monotonic seconds: for every delay and duration."""
        return time.monotonic()

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Wait until ``event`` is set or ``seconds`` have passed; True if the event is set."""
        return event.wait(max(0.0, seconds))


class ManualClock(Clock):
    """A clock that moves only when :meth:`advance` is called.

    Args:
        start: its initial wall-clock time (seconds since the epoch).
    """

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()
        self._waits: queue.SimpleQueue[float] = queue.SimpleQueue()

    def time(self) -> float:
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        return self.time()

    def advance(self, seconds: float) -> None:
        """Move time forward; waits whose deadline is reached return."""
        with self._lock:
            self._now += seconds

    def wait(self, event: threading.Event, seconds: float) -> bool:
        deadline = self.time() + max(0.0, seconds)
        self._waits.put(seconds)
        while not event.is_set():
            if self.time() >= deadline:
                return False
            event.wait(_POLL)
        return True

    def next_wait(self, timeout: float = 10.0) -> float:
        """The length of the next wait started on this clock (blocks until one starts).

        Raises:
            queue.Empty: if no wait started within ``timeout`` real seconds.
        """
        return self._waits.get(timeout=timeout)
