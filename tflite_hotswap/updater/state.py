"""The updater's own durable state in the store folder, beside the store's.

Files (in the store's root)::

    updater.json          per model: the probation in progress (and its owner
                          process), deaths during probation per version, the
                          experiment arm
    .updater-state.lock   serialises read-modify-write of updater.json
    .updater-round.lock   held for a whole update round: one round at a time
                          per store, across processes

``updater.json`` is replaced atomically like the store's own files.  Lock
order: the updater-state lock may be taken before the store's lock, never
while holding it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any, Callable, TypeVar

from ..delivery.store import Store, atomic_write
from ..errors import StorageError, UpdaterBusyError

logger = logging.getLogger(__name__)

STATE_NAME = "updater.json"
_FORMAT = 1
T = TypeVar("T")


@dataclass(frozen=True)
class ProbationRecord:
    """A probation in progress, as recorded durably before the swap.

    Attributes:
        version: the version on probation.
        previous: the last-known-good it would roll back to.
        started: wall-clock time it started.
        owner: the process running it (pid, start time, boot id).
    """

    version: str
    previous: str | None
    started: float
    owner: dict[str, Any]


@dataclass(frozen=True)
class Recovery:
    """What start-up recovery did about a probation whose process died."""

    version: str
    deaths: int
    marked_bad: bool
    serving: str | None


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def owner_token() -> dict[str, Any]:
    """Identifies this process across pid reuse and reboots."""
    pid = os.getpid()
    return {"pid": pid, "start": _start_time(pid), "boot": _boot_id()}


def owner_alive(owner: dict[str, Any]) -> bool:
    """Whether the process ``owner`` names still runs (same boot, same pid, same start time)."""
    if owner.get("boot") != _boot_id():
        return False
    pid = owner.get("pid")
    if not isinstance(pid, int):
        return False
    start = _start_time(pid)
    if start is None:
        if os.path.isdir("/proc"):
            return False
        try:  # no /proc: fall back on the pid alone
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return owner.get("start") is None or start == owner.get("start")


@contextlib.contextmanager
def _flock(path: str, timeout: float | None) -> Iterator[bool]:
    """Hold an exclusive lock on ``path``; yields False if ``timeout`` ran out (0: do not wait)."""
    f: IO[bytes] = open(path, "a+b")  # noqa: SIM115 (closed in finally; yields inside)
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(0.01)
        yield True
    finally:
        f.close()


class UpdaterState:
    """Read and change ``updater.json`` of one store.

    Args:
        root: the store's folder.
        lock_timeout: seconds to wait for another process's read-modify-write.
    """

    def __init__(self, root: str, lock_timeout: float = 60.0) -> None:
        self.root = os.path.abspath(root)
        self.lock_timeout = lock_timeout

    @property
    def path(self) -> str:
        return os.path.join(self.root, STATE_NAME)

    def _read(self) -> dict[str, Any]:
        try:
            with open(self.path, "rb") as f:
                state = json.load(f)
        except FileNotFoundError:
            return {"format": _FORMAT, "models": {}}
        except (OSError, ValueError) as e:
            raise StorageError(f"{self.path}: expected the updater's state record, could not read it ({e})") from e
        if not isinstance(state, dict) or state.get("format") != _FORMAT or not isinstance(state.get("models"), dict):
            raise StorageError(f"{self.path}: expected updater state format {_FORMAT}, got "
                               f"{state.get('format') if isinstance(state, dict) else type(state).__name__!r}")
        return state

    def model(self, model: str) -> dict[str, Any]:
        """A copy of ``model``'s record: ``probation`` (dict or None), ``deaths``, ``arm``.

        Raises:
            StorageError: if the file exists but cannot be read.
        """
        m = self._read()["models"].get(model) or {}
        return {"probation": m.get("probation"), "deaths": dict(m.get("deaths") or {}), "arm": m.get("arm")}

    def probation(self, model: str) -> ProbationRecord | None:
        """The recorded probation of ``model``, if any."""
        p = self.model(model)["probation"]
        return ProbationRecord(p["version"], p.get("previous"), p["started"], p["owner"]) if p else None

    def update(self, model: str, change: Callable[[dict[str, Any]], T]) -> T:
        """Apply ``change`` to ``model``'s record under the lock and write it atomically.

        Raises:
            LockTimeoutError-like UpdaterBusyError: if the lock is held too long.
            StorageError: if the file cannot be read or written.
        """
        with _flock(os.path.join(self.root, ".updater-state.lock"), self.lock_timeout) as held:
            if not held:
                raise UpdaterBusyError(f"{self.root}: expected the updater state lock within "
                                       f"{self.lock_timeout:g} s, another process held it")
            state = self._read()
            m = state["models"].setdefault(model, {"probation": None, "deaths": {}, "arm": None})
            m.setdefault("deaths", {})
            result = change(m)
            atomic_write(self.path, json.dumps(state, indent=1, sort_keys=True).encode())
            return result

    def start_probation(self, model: str, version: str, previous: str | None, now: float) -> None:
        """Record, durably, that ``version`` goes on probation in this process."""
        record = {"version": version, "previous": previous, "started": now, "owner": owner_token()}
        self.update(model, lambda m: m.__setitem__("probation", record))

    def end_probation(self, model: str, *, passed: bool) -> None:
        """Clear the probation record; a pass also forgets that version's deaths."""
        def change(m: dict[str, Any]) -> None:
            p = m.get("probation")
            if passed and p:
                m["deaths"].pop(p["version"], None)
            m["probation"] = None
        self.update(model, change)

    def set_arm(self, model: str, arm: str | None) -> None:
        if self.model(model)["arm"] != arm:
            self.update(model, lambda m: m.__setitem__("arm", arm))

    @contextlib.contextmanager
    def round_lock(self, timeout: float | None) -> Iterator[bool]:
        """Hold the store's update-round lock; yields False if ``timeout`` ran out (0: do not wait)."""
        with _flock(os.path.join(self.root, ".updater-round.lock"), timeout) as held:
            yield held


def recover(store: Store, state: UpdaterState, model: str, max_deaths: int = 2) -> Recovery | None:
    """Crash-loop protection: count a probation whose process died, and end it.

    If ``updater.json`` records a probation of X whose owner process no
    longer runs, the process died during it: X's death count goes up, the
    store's current goes back to last-known-good, and at ``max_deaths``
    deaths X is marked bad.  Exactly one caller counts a given death (the
    record is cleared under the lock).

    Returns:
        What was done, or None if there was nothing to recover.

    Raises:
        StorageError: if the state cannot be read or written.
    """
    if state.probation(model) is None:
        return None  # the common case: no lock taken

    def change(m: dict[str, Any]) -> tuple[str, int] | None:
        p = m.get("probation")
        if not p or owner_alive(p["owner"]):
            return None
        deaths = int(m["deaths"].get(p["version"], 0)) + 1
        m["deaths"][p["version"]] = deaths
        m["probation"] = None
        return p["version"], deaths

    found = state.update(model, change)
    if found is None:
        return None
    version, deaths = found
    marked = deaths >= max_deaths
    lkg = store.state(model).last_known_good
    if marked:
        store.mark_bad(model, version, f"the process died during its probation {deaths} times "
                                       f"(crash-loop protection, limit {max_deaths})")
    if lkg is not None and lkg != version:
        store.mark_current(model, lkg)
    logger.warning("%s %s: a process died during its probation (death %d of %d)%s", model, version,
                   deaths, max_deaths, "; marked bad" if marked else "")
    return Recovery(version, deaths, marked, lkg)
