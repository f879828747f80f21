"""Typed stubs for the training step (pyx/tflite_hotswap/_train.pyx)."""

from typing import Any

from ._slots import LatencyStats

class TrainStep:
    steps: int
    path: str
    def __init__(self, interpreter: Any, subgraph: int, inputs: list[tuple[str, int, Any, Any]],
                 loss: tuple[str, int], lock: Any, stats: LatencyStats,
                 native: tuple[int, int, int, int, int] | None = ..., signature: str = ...) -> None: ...
    def step(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> float:
        """Raises: InputError, InferenceError, RuntimeClosedError."""
    def release(self) -> None: ...
