"""Conditions an update round waits for: power, disk space, a maintenance window.

A condition is any callable returning a bool; the round is delayed while one
is false (and ``Updater.status().conditions`` says which).  Its name in status
and events is its ``str()`` for the built-ins, else its ``__name__``.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from typing import Callable

from ..errors import MisuseError
from .clock import Clock

logger = logging.getLogger(__name__)

Condition = Callable[[], bool]

#: Where Linux exposes batteries and power adapters.
POWER_SUPPLY_ROOT = "/sys/class/power_supply"


def describe(condition: Condition) -> str:
    """The name shown for ``condition`` in status and events."""
    if isinstance(condition, (OnPower, FreeDisk, MaintenanceWindow)):
        return str(condition)
    return str(getattr(condition, "__name__", None) or repr(condition))


class OnPower:
    """True on external power (AC/USB online) or with a battery charged to ``min_battery`` percent.

    Reads the Linux power-supply class.  A machine that exposes no power
    supply at all (most boards on a wall adapter, servers) counts as powered.

    Args:
        min_battery: the battery level (percent) that is enough without external power.
        root: the power-supply folder (injectable for tests).

    Raises:
        MisuseError: if ``min_battery`` is not within 0-100.
    """

    def __init__(self, min_battery: float = 50.0, root: str = POWER_SUPPLY_ROOT) -> None:
        if not 0 <= min_battery <= 100:
            raise MisuseError(f"min_battery: expected a percentage from 0 to 100, got {min_battery!r}")
        self.min_battery = float(min_battery)
        self.root = root

    def __str__(self) -> str:
        return f"on power or battery >= {self.min_battery:g}%"

    def __call__(self) -> bool:
        try:
            names = sorted(os.listdir(self.root))
        except OSError:
            return True  # no power-supply class: a mains-powered machine
        batteries: list[float] = []
        for name in names:
            kind = _read(os.path.join(self.root, name, "type"))
            if kind in ("Mains", "USB", "USB_C", "USB_PD", "Wireless"):
                if _read(os.path.join(self.root, name, "online")) == "1":
                    return True
            elif kind == "Battery":
                level = _read(os.path.join(self.root, name, "capacity"))
                if level is not None and level.isdigit():
                    batteries.append(float(level))
        if not batteries:
            # Only adapters, all offline, would be odd; nothing at all means mains.
            return not any(_read(os.path.join(self.root, n, "type")) for n in names)
        return max(batteries) >= self.min_battery


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


class FreeDisk:
    """True while the disk holding ``path`` has more than ``margin_bytes`` free.

    Args:
        path: a folder on the disk (usually the store).
        margin_bytes: free space to keep beyond it.
    """

    def __init__(self, path: str, margin_bytes: int = 256 * 1024 * 1024) -> None:
        self.path = path
        self.margin_bytes = int(margin_bytes)

    def __str__(self) -> str:
        return f"free disk > {self.margin_bytes / 1e6:g} MB"

    def __call__(self) -> bool:
        try:
            return shutil.disk_usage(self.path).free > self.margin_bytes
        except OSError as e:
            logger.warning("free disk of %s: %s", self.path, e)
            return False


class MaintenanceWindow:
    """True between ``start`` and ``end`` (``"HH:MM"``, local time); the window may wrap midnight.

    Args:
        start: opening time, e.g. ``"02:00"``.
        end: closing time, e.g. ``"05:00"`` (``"23:00"``-``"01:00"`` wraps).
        clock: where the time comes from (injectable for tests).

    Raises:
        MisuseError: for a time that is not ``HH:MM``.
    """

    def __init__(self, start: str, end: str, clock: Clock | None = None) -> None:
        self.start, self.end = _minutes(start, "start"), _minutes(end, "end")
        self._text = f"maintenance window {start}-{end} local"
        self.clock = clock or Clock()

    def __str__(self) -> str:
        return self._text

    def __call__(self) -> bool:
        now = time.localtime(self.clock.time())
        minute = now.tm_hour * 60 + now.tm_min
        if self.start <= self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end


def _minutes(text: str | object, what: str) -> int:
    try:
        assert isinstance(text, str)
        hours, minutes = text.split(":")
        h, m = int(hours), int(minutes)
        if not (0 <= h <= 23 and 0 <= m <= 59):
            raise ValueError
        return h * 60 + m
    except (AssertionError, ValueError):
        raise MisuseError(f"{what}: expected a local time as 'HH:MM', got {text!r}") from None
