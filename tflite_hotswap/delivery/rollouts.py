"""Editing a repository's staged rollout and experiments, and simulating a fleet.

So nobody hand-edits ``manifest.json``: each change takes the publish lock,
rewrites the manifest atomically with the serial bumped, and never writes one
that clients would refuse.

Precedence on a device (``manifest.choose_version``): its experiment arm,
then the rollout while it applies (``manifest.rollout_applies``: until the
channel serves the rollout's version or a newer one), then the channel.
Rollout membership is ``sha256("model:version:device_id") < percent``: the salt
is fixed per version, so raising the percentage only adds devices and
lowering it removes the last added first.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Callable

from ..errors import ManifestError, MisuseError
from .manifest import Arm, Experiment, Manifest, ModelEntry, Rollout, check_name, choose_version, parse_manifest
from .repository import load_manifest, publish_lock
from .sources import MANIFEST_NAME
from .store import atomic_write

logger = logging.getLogger(__name__)

#: Devices in the simulated fleet of ``repo show`` and ``fleet_shares``.
FLEET_SIZE = 10_000


def _edit(repo: str, model: str, change: Callable[[ModelEntry], ModelEntry]) -> Manifest:
    with publish_lock(repo):
        manifest = load_manifest(repo)
        entry = manifest.models.get(model)
        if entry is None:
            raise MisuseError(f"model: expected one of {sorted(manifest.models)} in {repo}, got {model!r}")
        models = dict(manifest.models)
        models[model] = change(entry)
        updated = Manifest(manifest.serial + 1, models)
        try:
            parse_manifest(updated.to_json())  # never write a manifest clients would refuse
        except ManifestError as e:
            raise MisuseError(f"the change would make an invalid manifest: {e}") from None
        atomic_write(os.path.join(repo, MANIFEST_NAME), updated.to_json())
        return updated


def _listed(entry: ModelEntry, version: str) -> None:
    if version not in entry.versions:
        raise MisuseError(f"version: expected one of {sorted(entry.versions)}, got {version!r}")


def set_rollout(repo: str, model: str, version: str, percent: float) -> Manifest:
    """Roll ``version`` out to ``percent`` of devices (0 ends it for everyone but keeps the record).

    Raises:
        MisuseError: for an unknown model or version, or a percentage outside 0-100.
    """
    if not 0 <= percent <= 100:
        raise MisuseError(f"percent: expected 0 to 100, got {percent!r}")

    def change(entry: ModelEntry) -> ModelEntry:
        _listed(entry, version)
        return ModelEntry(entry.versions, entry.channels, Rollout(version, float(percent), f"{model}:{version}"),
                          entry.experiments)
    return _edit(repo, model, change)


def end_rollout(repo: str, model: str) -> Manifest:
    """Remove the staged rollout.

    Raises:
        MisuseError: for an unknown model.
    """
    return _edit(repo, model, lambda e: ModelEntry(e.versions, e.channels, None, e.experiments))


def set_experiment(repo: str, model: str, name: str, arms: Sequence[tuple[str, float]],
                   salt: str | None = None) -> Manifest:
    """Add (or replace, by name) an A/B experiment with weighted arms.

    Only the first experiment of a model assigns devices; a new one is added last.

    Raises:
        MisuseError: for an unknown model or version, a bad name, no arms or a weight <= 0.
    """
    try:
        check_name(name, "experiment name")
    except ManifestError as e:
        raise MisuseError(str(e)) from None
    if not arms or any(not w > 0 for _, w in arms):
        raise MisuseError(f"arms: expected at least one (version, weight > 0), got {list(arms)!r}")

    def change(entry: ModelEntry) -> ModelEntry:
        for version, _ in arms:
            _listed(entry, version)
        experiment = Experiment(name, salt or f"{model}:{name}", tuple(Arm(v, float(w)) for v, w in arms))
        kept = [e for e in entry.experiments if e.name != name]
        index = next((i for i, e in enumerate(entry.experiments) if e.name == name), len(kept))
        kept.insert(index, experiment)
        return ModelEntry(entry.versions, entry.channels, entry.rollout, tuple(kept))
    return _edit(repo, model, change)


def remove_experiment(repo: str, model: str, name: str) -> Manifest:
    """Remove an experiment by name.

    Raises:
        MisuseError: for an unknown model or experiment.
    """
    def change(entry: ModelEntry) -> ModelEntry:
        if name not in [e.name for e in entry.experiments]:
            raise MisuseError(f"experiment: expected one of {[e.name for e in entry.experiments]}, got {name!r}")
        return ModelEntry(entry.versions, entry.channels, entry.rollout,
                          tuple(e for e in entry.experiments if e.name != name))
    return _edit(repo, model, change)


def fleet_ids(n: int = FLEET_SIZE) -> list[str]:
    """The device ids of the simulated fleet."""
    return [f"device-{i:05d}" for i in range(n)]


def fleet_assignment(entry: ModelEntry, channel: str, devices: Sequence[str],
                     client_version: str | None = None) -> dict[str, str]:
    """The version each device of ``devices`` on ``channel`` would get."""
    return {d: choose_version(entry, d, channel, client_version) for d in devices}


def fleet_shares(entry: ModelEntry, channel: str, n: int = FLEET_SIZE,
                 client_version: str | None = None) -> dict[str, float]:
    """Share (0-1) of a simulated fleet of ``n`` devices on ``channel`` that would get each version."""
    counts: dict[str, int] = {}
    for version in fleet_assignment(entry, channel, fleet_ids(n), client_version).values():
        counts[version] = counts.get(version, 0) + 1
    return {v: c / n for v, c in sorted(counts.items())}


def fleet_table(manifest: Manifest, n: int = FLEET_SIZE) -> str:
    """For each model and channel, the share of a simulated fleet of ``n`` devices per version."""
    lines = [f"simulated fleet of {n:,} device ids"]
    for name, entry in sorted(manifest.models.items()):
        for channel in sorted(entry.channels):
            shares = fleet_shares(entry, channel, n)
            text = ", ".join(f"{v} {s:.1%}" for v, s in sorted(shares.items(), key=lambda kv: -kv[1]))
            lines.append(f"  {name} [{channel}]: {text}")
    return "\n".join(lines)
