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

import hashlib
import logging
import os
from contextlib import AbstractContextManager
from datetime import datetime, timezone

import numpy as np

from ..errors import IncompatibleModelError, ManifestError, MisuseError
from ..serving.backend import load_backend
from ..serving.contract import Contract, differences
from ..serving.loader import load_proven, read_model
from .manifest import (
    Golden,
    Manifest,
    ModelEntry,
    Rollout,
    Version,
    check_name,
    parse_manifest,
)
from .sources import MANIFEST_NAME
from .store import atomic_write, file_lock, storage_errors

logger = logging.getLogger(__name__)


def publish_lock(repo: str) -> AbstractContextManager[None]:
    """The repository's writer lock: one manifest edit (publish, rollout, experiment) at a time."""
    return file_lock(os.path.join(repo, ".publish.lock"), None)


def _check_folder(repo: str, *, missing_ok: bool) -> None:
    """Raises: MisuseError: if ``repo`` is a file, or is missing and that is not ok."""
    if os.path.isdir(repo) or (missing_ok and not os.path.lexists(repo)):
        return
    found = "a file" if os.path.lexists(repo) else "nothing"
    raise MisuseError(f"repository: expected a folder, found {found} at {repo!r}")


def load_manifest(repo: str, *, required: bool = False) -> Manifest:
    """The repository's manifest (an empty one with serial 0 if there is none yet).

    Args:
        repo: the repository folder.
        required: refuse a folder without a manifest instead of returning an empty one.

    Raises:
        MisuseError: if ``repo`` is not a folder, or has no manifest and ``required``.
        ManifestError: if the manifest exists but is malformed.
        StorageError: if the manifest cannot be read.
    """
    _check_folder(repo, missing_ok=False)
    path = os.path.join(repo, MANIFEST_NAME)
    if not os.path.exists(path):
        if required:
            raise MisuseError(f"repository: expected {MANIFEST_NAME} in {repo!r}, found none "
                              f"(publish a model there first)")
        return Manifest(0, {})
    with storage_errors(f"{path}: expected a manifest"), open(path, "rb") as f:
        return parse_manifest(f.read())


def publish(repo: str, model_file: str, *, model: str, version: str, channel: str | None = None,
            rollout: float | None = None, golden: str | None = None,
            golden_tolerance: float = 1e-5, backend: str = "auto",
            allow_contract_change: bool = False, signature: str | None = None) -> Manifest:
    """Add ``model_file`` to the repository as ``version`` of ``model``; return the new manifest.

    Computes the sha256, size and I/O contract (loading the model, so a model
    that cannot load is refused), copies the file in, optionally points
    ``channel`` at it and starts a staged rollout at ``rollout`` percent, and
    rewrites the manifest atomically with the serial bumped.  Publishing the
    same content again under the same version only updates channel/rollout.

    A version whose I/O contract differs from that of a version on one of the
    model's channels is refused unless ``allow_contract_change``: devices
    following that channel would refuse it.

    ``signature`` names the signature whose contract is recorded and whose
    inputs and outputs a golden sample holds: the one devices run (e.g.
    ``"infer"`` for a trainable model, which also has ``train``,
    ``get_weights`` and ``set_weights``).  None: the model's only signature.

    Raises:
        MisuseError: for a bad name, a repository path that is a file, a
            version id that exists with different content, or a ``signature``
            the model lacks (or None for a model with several).
        IncompatibleModelError: if the I/O contract differs from a channel's
            version and ``allow_contract_change`` is False.
        InvalidModelError: if the model cannot be loaded.
        StorageError: if the repository cannot be written.
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
    _check_folder(repo, missing_ok=True)
    data = read_model(model_file)
    chosen = load_backend(backend)
    _, loaded, _ = load_proven(chosen, data, None, signature, isolate=not chosen.verifies_models)
    sha256 = loaded.sha256
    with storage_errors(f"{repo}: expected a repository folder"):
        os.makedirs(os.path.join(repo, "models", model), exist_ok=True)
    with publish_lock(repo):
        manifest = load_manifest(repo)
        entry = manifest.models.get(model) or ModelEntry({}, {})
        existing = entry.versions.get(version)
        if existing is not None and existing.sha256 != sha256:
            raise MisuseError(f"version {version!r} of {model!r} exists with different content "
                              f"(sha256 {existing.sha256[:12]}..., this file {sha256[:12]}...); "
                              f"expected a new version id")
        if not allow_contract_change:
            _check_contract(entry, model, version, loaded.contract)
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
        logger.info("published %s %s (sha256 %s, %d bytes) as serial %d", model, version, sha256[:12],
                    len(data), updated.serial)
        return updated


def _check_contract(entry: ModelEntry, model: str, version: str, contract: Contract) -> None:
    """Raises: IncompatibleModelError: if ``contract`` cannot stand in for a channel's version."""
    found = []
    for channel, vid in sorted(entry.channels.items()):
        if vid != version:
            found += [f"{channel} ({vid}): {d}" for d in differences(entry.versions[vid].contract, contract)]
    if found:
        raise IncompatibleModelError(
            f"version {version!r} of {model!r}: expected the I/O contract of the versions on its channels, "
            f"got a different one: " + "; ".join(found) + " (pass --allow-contract-change / "
            "allow_contract_change=True to publish anyway)", found)


def _copy_golden(repo: str, model: str, version: str, path: str, tolerance: float, contract: Contract) -> Golden:
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
