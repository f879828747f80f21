"""Shared helpers of the delivery tests."""

from __future__ import annotations

import hashlib
import os

from tflite_hotswap.serving.contract import Contract
from tflite_hotswap.delivery.sources import FetchConfig
from tflite_hotswap.delivery.manifest import Version

# Short timeouts and backoff so fault tests finish quickly.
FAST = FetchConfig(connect_timeout=2, read_timeout=1, deadline=20, max_attempts=4, backoff_base=0.01,
                   backoff_max=0.05, chunk_bytes=16 * 1024, disk_margin_bytes=0, lock_timeout=30)


def blob(size: int, seed: int = 0) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (size // 32) + b"x" * (size % 32)


def version_for(data: bytes, url: str = "models/m/v1.bin", vid: str = "v1") -> Version:
    return Version(vid, url, hashlib.sha256(data).hexdigest(), len(data), Contract((), ()),
                   "2026-01-01T00:00:00+00:00")


def store_is_consistent(root: str) -> None:
    """Every object matches its name; no partial file lacks its description."""
    objects = os.path.join(root, "objects")
    for name in os.listdir(objects):
        with open(os.path.join(objects, name), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == name, name
