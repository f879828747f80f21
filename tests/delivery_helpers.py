"""Shared helpers of the delivery tests."""

from __future__ import annotations

import hashlib
import json
import os

from tflite_hotswap.delivery.manifest import Manifest, ModelEntry, Version
from tflite_hotswap.delivery.sources import FetchConfig
from tflite_hotswap.serving.contract import Contract

# Short timeouts and backoff so fault tests finish quickly.
FAST = FetchConfig(connect_timeout=2, read_timeout=1, deadline=20, max_attempts=4, backoff_base=0.01,
                   backoff_max=0.05, chunk_bytes=16 * 1024, disk_margin_bytes=0, lock_timeout=30)


def blob(size: int, seed: int = 0) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (size // 32) + b"x" * (size % 32)


def version_for(data: bytes, url: str = "models/m/v1.bin", vid: str = "v1") -> Version:
    return Version(vid, url, hashlib.sha256(data).hexdigest(), len(data), Contract((), ()),
                   "2026-01-01T00:00:00+00:00")


def blob_repo(root: str, count: int, size: int, serial: int = 1) -> Manifest:
    """A repository folder with ``count`` versions of model "m" (plain blobs, no model loading)."""
    os.makedirs(os.path.join(root, "models", "m"), exist_ok=True)
    versions = {}
    for i in range(count):
        data = blob(size + i, seed=i)
        version = version_for(data, f"models/m/v{i}.bin", f"v{i}")
        with open(os.path.join(root, version.url), "wb") as f:
            f.write(data)
        versions[version.id] = version
    manifest = Manifest(serial, {"m": ModelEntry(versions, {"stable": "v0"})})
    with open(os.path.join(root, "manifest.json"), "wb") as f:
        f.write(manifest.to_json())
    return manifest


def store_is_consistent(root: str) -> None:
    """Every object matches its name; every recorded version's file is there; current and
    last-known-good are recorded versions."""
    objects = os.path.join(root, "objects")
    for name in os.listdir(objects):
        with open(os.path.join(objects, name), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == name, name
    state_path = os.path.join(root, "state.json")
    if not os.path.exists(state_path):
        return
    with open(state_path) as f:
        state = json.load(f)
    for model, m in state["models"].items():
        for vid, entry in m["versions"].items():
            assert os.path.isfile(os.path.join(objects, entry["sha256"])), (model, vid, "recorded, file missing")
        for role in ("current", "last_known_good"):
            assert m[role] is None or m[role] in m["versions"], (model, role, m[role], sorted(m["versions"]))
