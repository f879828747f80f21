"""Shared helpers of the updater tests: a repository, goldens, a checking inference loop."""

from __future__ import annotations

import pathlib
import threading
from importlib.resources import files

import numpy as np

from tflite_hotswap import HotswapError, Runtime

MODELS = files("tflite_hotswap") / "models"


def demo_model(name: str) -> str:
    """Path of a bundled demo model: v1, v2, v3 or v4_slow."""
    return str(MODELS / f"demo_{name}.tflite")


def golden(path: pathlib.Path, version: float, wrong_by: float = 0.0) -> str:
    """A golden sample for a demo model (outputs x + version, version); ``wrong_by`` makes it fail."""
    x = np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 64)
    np.savez(path, **{"inputs/x": x, "outputs/shifted": x + np.float32(version + wrong_by),
                      "outputs/tag": np.array([[version + wrong_by]], np.float32)})
    return str(path)


class Loop:
    """Threads calling ``rt.run`` in a loop; every result must be wholly one version."""

    def __init__(self, rt: Runtime, threads: int = 3) -> None:
        self.rt = rt
        self.calls = 0
        self.failed: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def __enter__(self) -> Loop:  # noqa: PYI034
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()

    def _run(self, seed: int) -> None:
        x = np.random.default_rng(seed).standard_normal((1, 64)).astype(np.float32)
        while not self.stop.is_set():
            try:
                out = self.rt.run(x)
                if not np.array_equal(out["shifted"], x + out["tag"][0, 0]):
                    self.failed.append("mixed result")
            except HotswapError as e:
                self.failed.append(f"{type(e).__name__}: {e}")
            self.calls += 1
            self.stop.wait(0.0002)
