"""The device side of delivery: follow a repository, validate, swap, watch, roll back.

``Updater`` runs the rounds; ``Probation`` says how a new version is watched;
``Runtime.from_store`` (``boot.open_from_store``) starts a device offline.
"""

from .conditions import FreeDisk, MaintenanceWindow, OnPower
from .core import OUTCOMES, ProbationProgress, Updater, UpdateResult, UpdaterStatus
from .probation import Probation

__all__ = [
           "OUTCOMES",
           "FreeDisk",
           "MaintenanceWindow",
           "OnPower",
           "Probation",
           "ProbationProgress",
           "UpdateResult",
           "Updater",
           "UpdaterStatus",
]
