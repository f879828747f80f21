"""Typed events: every transition of an update round.

Each event is passed to the updater's ``on_event`` callback and logged (one
``logging`` record, at the event's level) by the logger of this module.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Event:
    """Base class: something happened to ``model`` on this device.

    Attributes:
        model: the model name.
        at: wall-clock time of the event (seconds since the epoch).
    """

    model: str
    at: float = field(default=0.0, compare=False)

    level = logging.INFO

    def message(self) -> str:
        """A one-line human description."""
        return type(self).__name__


@dataclass(frozen=True)
class CheckStarted(Event):
    manual: bool = False

    level = logging.DEBUG

    def message(self) -> str:
        return f"{self.model}: check started" + (" (check_now)" if self.manual else "")


@dataclass(frozen=True)
class ConditionsNotMet(Event):
    failing: tuple[str, ...] = ()

    def message(self) -> str:
        return f"{self.model}: check delayed, conditions not met: {', '.join(self.failing)}"


@dataclass(frozen=True)
class ManifestChecked(Event):
    serial: int = 0
    changed: bool = False
    target: str | None = None

    level = logging.DEBUG

    def message(self) -> str:
        return (f"{self.model}: manifest serial {self.serial} ({'new' if self.changed else 'not modified'}), "
                f"this device's version {self.target}")


@dataclass(frozen=True)
class UpToDate(Event):
    version: str | None = None
    reason: str | None = None

    level = logging.DEBUG

    def message(self) -> str:
        return f"{self.model}: up to date on {self.version}" + (f" ({self.reason})" if self.reason else "")


@dataclass(frozen=True)
class Downloaded(Event):
    version: str = ""
    bytes: int = 0
    seconds: float = 0.0

    def message(self) -> str:
        return f"{self.model} {self.version}: stored ({self.bytes} bytes downloaded in {self.seconds:.2f} s)"


@dataclass(frozen=True)
class Validated(Event):
    """The candidate passed validation; ``checkpoint``: the personalised weights it was also run with."""

    version: str = ""
    seconds: float = 0.0
    golden: bool = False
    checkpoint: str | None = None

    def message(self) -> str:
        what = "loads, runs and matches its golden sample" if self.golden else "loads and runs (no golden sample)"
        if self.checkpoint is not None:
            what += f"; with checkpoint {self.checkpoint} restored its outputs are finite"
        return f"{self.model} {self.version}: validated in {self.seconds:.2f} s: {what}"


@dataclass(frozen=True)
class Refused(Event):
    """Validation failed: the version is marked bad on this device; serving never changed."""

    version: str = ""
    reason: str = ""

    level = logging.WARNING

    def message(self) -> str:
        return f"{self.model} {self.version}: refused before any swap: {self.reason}"


@dataclass(frozen=True)
class Swapped(Event):
    version: str = ""
    previous: str | None = None
    seconds: float = 0.0

    def message(self) -> str:
        return f"{self.model}: swapped {self.previous} -> {self.version} in {self.seconds * 1e3:.1f} ms"


@dataclass(frozen=True)
class ProbationStarted(Event):
    version: str = ""
    calls: int = 0
    seconds: float = 0.0

    def message(self) -> str:
        return (f"{self.model} {self.version}: on probation until {self.calls} calls and "
                f"{self.seconds:g} s")


@dataclass(frozen=True)
class Promoted(Event):
    """Probation passed: the version is current and last-known-good.

    ``latency_us`` is its (p50, p99) latency when judged; ``baseline_us`` the
    previous version's (p50, p99) it was compared with (None: not compared).
    """

    version: str = ""
    calls: int = 0
    seconds: float = 0.0
    latency_us: tuple[float, float] = (0.0, 0.0)
    baseline_us: tuple[float, float] | None = None

    def message(self) -> str:
        latency = f"p50 {self.latency_us[0]:.0f} us, p99 {self.latency_us[1]:.0f} us"
        if self.baseline_us is not None:
            latency += f"; the previous version's {self.baseline_us[0]:.0f} and {self.baseline_us[1]:.0f} us"
        return (f"{self.model} {self.version}: promoted after {self.calls} calls and {self.seconds:.1f} s "
                f"of probation ({latency})")


@dataclass(frozen=True)
class Switched(Event):
    """Swapped straight to a version already proven good (by another process sharing the store)."""

    version: str = ""
    previous: str | None = None

    def message(self) -> str:
        return f"{self.model}: switched {self.previous} -> {self.version} (already known good)"


@dataclass(frozen=True)
class RolledBack(Event):
    """Probation failed (or was interrupted): swapped back to last-known-good."""

    version: str = ""
    to: str | None = None
    reason: str = ""

    level = logging.WARNING

    def message(self) -> str:
        return f"{self.model} {self.version}: rolled back to {self.to}: {self.reason}"


@dataclass(frozen=True)
class MarkedBad(Event):
    version: str = ""
    reason: str = ""

    level = logging.WARNING

    def message(self) -> str:
        return f"{self.model} {self.version}: marked bad on this device: {self.reason}"


@dataclass(frozen=True)
class DiedDuringProbation(Event):
    """At start-up: a process died while ``version`` was on probation (crash-loop protection)."""

    version: str = ""
    deaths: int = 0
    serving: str | None = None

    level = logging.WARNING

    def message(self) -> str:
        return (f"{self.model} {self.version}: a process died during its probation (death {self.deaths}); "
                f"serving {self.serving}")


@dataclass(frozen=True)
class CheckFailed(Event):
    error: str = ""
    failures: int = 0
    retry_in: float | None = None

    level = logging.WARNING

    def message(self) -> str:
        retry = f"; retry in {self.retry_in:.1f} s" if self.retry_in is not None else ""
        return f"{self.model}: check failed ({self.failures} in a row): {self.error}{retry}"


EventHandler = Callable[[Event], None]


def emit(event: Event, on_event: EventHandler | None) -> None:
    """Log ``event`` and pass it to ``on_event``; a failing callback is logged, never raised."""
    logger.log(event.level, "%s", event.message())
    if on_event is not None:
        try:
            on_event(event)
        except Exception:
            logger.exception("on_event callback failed on %s", type(event).__name__)
