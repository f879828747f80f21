"""Publishing into a model repository (a folder any static HTTP server can serve).

Layout::

    manifest.json
    models/<model>/<version>.tflite
    models/<model>/<version>.golden.npz     (optional golden sample)

A publish writes the model file first and the manifest last, each atomically,
so a crash leaves the previous manifest (perhaps beside an unlisted file) or
the new one, never a manifest naming a missing or partial file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from datetime import datetime, timezone
from typing import Iterator, Optional

import numpy as np

from ..serving.backend import load_backend
from ..errors import ManifestError, MisuseError
from .sources import MANIFEST_NAME
from ..serving.loader import load_proven, read_model
from .manifest import Golden, Manifest, ModelEntry, Rollout, Version, check_name, parse_manifest
from .store import atomic_write


@contextlib.contextmanager
def _publish_lock(repo: str) -> Iterator[None]:
    with open(os.path.join(repo, ".publish.lock"), "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def load_manifest(repo: str) -> Manifest:
    """The repository's manifest (an empty one with serial 0 if there is none yet).

    Raises:
        ManifestError: if the manifest exists but is malformed.
    """
    path = os.path.join(repo, MANIFEST_NAME)
    if not os.path.exists(path):
        return Manifest(0, {})
    with open(path, "rb") as f:
        return parse_manifest(f.read())


def publish(repo: str, model_file: str, *, model: str, version: str, channel: Optional[str] = None,
            rollout: Optional[float] = None, golden: Optional[str] = None,
            golden_tolerance: float = 1e-5, backend: str = "auto") -> Manifest:
    """Add ``model_file`` to the repository as ``version`` of ``model``; return the new manifest.

    Computes the sha256, size and I/O contract (loading the model, so a model
    that cannot load is refused), copies the file in, optionally points
    ``channel`` at it and starts a staged rollout at ``rollout`` percent, and
    rewrites the manifest atomically with the serial bumped.  Publishing the
    same content again under the same version only updates channel/rollout.

    Raises:
        MisuseError: for a bad name, or a version id that exists with different content.
        InvalidModelError: if the model cannot be loaded.
        ManifestError: if the existing manifest is malformed, or the golden
            file is not an ``.npz`` with the model's inputs and outputs.
    """
    for value, what in ((model, "model"), (version, "version")) + (((channel, "channel"),) if channel else ()):
        try:
            check_name(value, what)
        except ManifestError as e:
            raise MisuseError(str(e)) from None
    if rollout is not None and not 0 <= rollout <= 100:
        raise MisuseError(f"rollout: expected a percentage from 0 to 100, got {rollout}")
    data = read_model(model_file)
    chosen = load_backend(backend)
    _, loaded, _ = load_proven(chosen, data, None, None, isolate=not chosen.verifies_models)
    sha256 = loaded.sha256
    os.makedirs(os.path.join(repo, "models", model), exist_ok=True)
    with _publish_lock(repo):
        manifest = load_manifest(repo)
        entry = manifest.models.get(model) or ModelEntry({}, {})
        existing = entry.versions.get(version)
        if existing is not None and existing.sha256 != sha256:
            raise MisuseError(f"version {version!r} of {model!r} exists with different content "
                              f"(sha256 {existing.sha256[:12]}..., this file {sha256[:12]}...); "
                              f"expected a new version id")
        url = f"models/{model}/{version}.tflite"
        if existing is None:
            atomic_write(os.path.join(repo, *url.split("/")), data)
        golden_ref = existing.golden if existing else None
        if golden is not None:
            golden_ref = _copy_golden(repo, model, version, golden, golden_tolerance, loaded.contract)
        created = existing.created if existing else datetime.now(timezone.utc).isoformat(timespec="seconds")
        versions = dict(entry.versions)
        versions[version] = Version(version, url, sha256, len(data), loaded.contract, created,
                                    existing.min_client_version if existing else None, golden_ref)
        channels = dict(entry.channels)
        if channel:
            channels[channel] = version
        new_rollout = entry.rollout
        if channel and new_rollout is not None and new_rollout.version != version:
            new_rollout = None  # the channel moved on: the rollout ends (see manifest.rollout_applies)
        if rollout is not None:
            # The salt is fixed per version, so a device inside 10% stays inside at 50%.
            new_rollout = Rollout(version, float(rollout), f"{model}:{version}")
        models = dict(manifest.models)
        models[model] = ModelEntry(versions, channels, new_rollout, entry.experiments)
        updated = Manifest(manifest.serial + 1, models)
        parse_manifest(updated.to_json())  # never write a manifest clients would refuse
        atomic_write(os.path.join(repo, MANIFEST_NAME), updated.to_json())
        return updated


def _copy_golden(repo: str, model: str, version: str, path: str, tolerance: float, contract) -> Golden:
    try:
        with open(path, "rb") as f:
            data = f.read()
        with np.load(path) as npz:
            keys = set(npz.files)
    except (OSError, ValueError) as e:
        raise ManifestError(f"golden file {path}: expected an .npz of inputs and outputs ({e})") from e
    wanted = {f"inputs/{t.name}" for t in contract.inputs} | {f"outputs/{t.name}" for t in contract.outputs}
    if not wanted <= keys:
        raise ManifestError(f"golden file {path}: expected arrays {sorted(wanted)}, got {sorted(keys)}")
    url = f"models/{model}/{version}.golden.npz"
    atomic_write(os.path.join(repo, *url.split("/")), data)
    return Golden(url, hashlib.sha256(data).hexdigest(), len(data), float(tolerance))


def show(manifest: Manifest) -> str:
    """The manifest as a readable table."""
    lines = [f"schema {manifest.schema_version}, serial {manifest.serial}, {len(manifest.models)} model(s)"]
    for name, entry in sorted(manifest.models.items()):
        lines.append("")
        lines.append(f"model {name}")
        lines.append(f"  {'version':<16}{'size':>12}  {'sha256':<14}{'created':<27}{'channels':<20}notes")
        for vid, v in sorted(entry.versions.items(), key=lambda kv: kv[1].created):
            channels = ",".join(sorted(c for c, target in entry.channels.items() if target == vid)) or "-"
            notes = []
            if entry.rollout and entry.rollout.version == vid:
                notes.append(f"rollout {entry.rollout.percent:g}%")
            for e in entry.experiments:
                notes += [f"{e.name}:{a.weight:g}" for a in e.arms if a.version == vid]
            if v.golden:
                notes.append("golden")
            if v.min_client_version:
                notes.append(f"client>={v.min_client_version}")
            lines.append(f"  {vid:<16}{v.size:>12,}  {v.sha256[:12]:<14}{v.created:<27}{channels:<20}"
                         f"{' '.join(notes)}")
    return "\n".join(lines)
