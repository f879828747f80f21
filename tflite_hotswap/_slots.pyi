"""Typed stubs for the slot table (pyx/tflite_hotswap/_slots.pyx)."""

from collections.abc import Mapping, Sequence
from typing import Any, Callable

from ._typing import Buffer

Inputs = Buffer | Mapping[str, Buffer]
Outputs = Any | dict[str, Any]

GAP: int
CLOSED: int
FAILED: int

class LatencyStats:
    def snapshot(self) -> dict[str, Any]: ...
    def record_outcome(self, outcome: int) -> None: ...

class Bound:
    shape_key: tuple[tuple[int, ...], ...]
    def __init__(self, interpreter: Any, subgraph: int, inputs: list[tuple[str, int, Any]],
                 outputs: list[tuple[str, int]], dynamic: bool,
                 shape_key: tuple[tuple[int, ...], ...]) -> None: ...
    def warm_up(self) -> None:
        """Raises: InvalidModelError: if the backend fails the warm-up call or leaves an output unreadable."""
    def release(self) -> None: ...
    def input_shapes(self) -> tuple[tuple[int, ...], ...]: ...
    def use_native(self, interpreter: int, invoke: int, set_cancellation: int = ...,
                   set_allocation: int = ..., lend_min_bytes: int = ...,
                   remove_delegates: int = ..., on_primary_subgraph: bool = ...) -> None: ...
    def cancel(self, on: bool = ...) -> bool: ...
    @property
    def lends(self) -> bool: ...
    @property
    def moves_at_invoke(self) -> bool: ...
    @property
    def native(self) -> bool: ...

class Worker:
    def __init__(self, first: Bound, make: Callable[..., Bound],
                 retire: Callable[[Bound], None]) -> None: ...
    def add(self, bound: Bound) -> None: ...
    def shape_keys(self) -> list[tuple[tuple[int, ...], ...]]: ...
    def release(self) -> None: ...
    def cancel(self, on: bool = ...) -> bool: ...

class Slot:
    info: Any
    def __init__(self, workers: list[Worker], stats: LatencyStats, info: Any) -> None: ...
    @property
    def native(self) -> bool: ...
    def cancel(self, on: bool = ...) -> bool: ...
    def workers_list(self) -> list[Worker]: ...
    def _reset_after_fork(self) -> None: ...
    def release_all(self) -> None: ...

class SlotTable:
    wait_timeout: float
    gap_stats: LatencyStats
    def run(self, inputs: Inputs, *, out: Outputs | None = ...) -> Outputs:
        """Run one inference on the serving model.

        Args:
            inputs: an array for a single-input model, or a mapping of input
                name to array.  Its dtype and shape must match the input (with
                a Normalize preprocess: uint8, int8, float32 or float64).
            out: optional array (single output) or dict of arrays to write the
                outputs into; then nothing is allocated and ``out`` is returned.

        Returns:
            An array for a single-output model, else a dict keyed by output name.

        Raises:
            InputError: wrong name, shape, dtype or type of an input or ``out``.
            InferenceError: the backend failed while running.
            RuntimeClosedError: the runtime is closed.
            RuntimeBusyError: no worker (or, mid resource-policy swap, no model)
                became available within ``wait_timeout``.
            ModelUnavailableError: no model is serving (a resource-policy swap
                and the reload of the old model both failed).
            KeyboardInterrupt: Ctrl+C while waiting.
        """
    def run_batch(self, samples: Sequence[Inputs], *, out: Outputs | None = ...) -> Outputs:
        """Gather per-sample inputs straight into the batch input tensor and run once.

        Args:
            samples: per-sample arrays (single-input model) or mappings; each
                without the batch dimension.  A dynamic batch dimension is
                resized to ``len(samples)``; one allocation is kept per batch
                size seen (up to 8).
            out: as for :meth:`run`.

        Returns:
            As for :meth:`run`, with the batch dimension.

        Raises:
            InputError: empty or non-sequence ``samples``, a sample of the wrong
                shape or dtype, or a batch size a fixed-batch model cannot take.
            InferenceError, RuntimeClosedError, RuntimeBusyError: as for run.
        """
    @staticmethod
    def _capacity() -> int: ...
    def _publish(self, index: int, slot: Slot) -> int: ...
    def _unpublish(self, state: int) -> int: ...
    def _slot_list(self) -> list[Slot | None]: ...
    def _current(self) -> int: ...
    def _reset_after_fork(self) -> None: ...
    def _inside_call(self) -> bool: ...
    def _readers(self, index: int) -> int: ...
    def _take(self, index: int) -> Slot | None: ...

def resolve_symbol(library: str, symbol: bytes) -> int: ...
def load_bias(library: str) -> int: ...
def owner_of(address: int) -> str | None: ...
def call_status_nogil(method: int, self_address: int, repeat: int = ...) -> int: ...
