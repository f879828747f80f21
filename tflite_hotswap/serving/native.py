"""The native path: call the backend's C++ interpreter directly, with the GIL released.

tflite-runtime 2.14 (its last release: the ABI is frozen) exports
``tflite::impl::Interpreter::AllocateTensors()`` and ``Invoke()`` from its
extension module, and ``Interpreter._interpreter.interpreter()`` gives the C++
interpreter's address.  Allocating through it lets an inference loop keep
running while a swap packs a new model's weights (XNNPACK does that inside
``AllocateTensors``, tens of milliseconds for a 20 MB model, with the GIL held
on the Python path), and a call skips the wrapper's Python-level bookkeeping.

The symbols are resolved at run time in the already-loaded module; where one
is missing (LiteRT does not export them) or ``TFLITE_HOTSWAP_NATIVE=0`` is set,
the wrapper's own methods serve, and ``ModelInfo.path`` says which path serves.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from typing import Any

from .. import _slots

logger = logging.getLogger(__name__)

ENV_VAR = "TFLITE_HOTSWAP_NATIVE"

# Itanium-ABI names of the no-argument methods, returning TfLiteStatus.
_INVOKE = b"_ZN6tflite4impl11Interpreter6InvokeEv"
_ALLOCATE = b"_ZN6tflite4impl11Interpreter15AllocateTensorsEv"
_SET_CANCELLATION = b"_ZN6tflite4impl11Interpreter23SetCancellationFunctionEPvPFbS2_E"
# SetCustomAllocationForTensor(int, const TfLiteCustomAllocation&, int64_t): int64_t
# is `long` on 64-bit Linux ("l") and `long long` on 32-bit ARM ("x").
_SET_ALLOCATION = tuple(b"_ZN6tflite4impl11Interpreter28SetCustomAllocationForTensorEiRK22TfLiteCustomAllocation"
                        + suffix for suffix in (b"l", b"x"))

LEND_ENV_VAR = "TFLITE_HOTSWAP_ZERO_COPY_MIN_BYTES"
# Inputs at least this big are lent to the interpreter instead of copied: below
# it a copy costs less than re-pointing the tensor (and XNNPACK re-reading it).
LEND_MIN_BYTES = 1 << 20


@dataclass(frozen=True)
class NativeEntryPoints:
    """Addresses of the C++ interpreter methods in the backend's extension module."""

    invoke: int
    allocate: int
    set_cancellation: int  # 0 where the backend lacks it: calls then cannot be cancelled
    set_allocation: int  # 0 where the backend lacks it: inputs are always copied


_resolved: dict[str, NativeEntryPoints | None] = {}


def backend_library(interpreter: Any) -> str | None:
    """The file of the extension module behind ``interpreter``, where native calls are resolved.

    None when disabled by ``TFLITE_HOTSWAP_NATIVE=0``, or when the wrapper
    gives no interpreter address or its module no file.
    """
    if os.environ.get(ENV_VAR, "1") == "0":
        return None
    wrapper = interpreter._interpreter
    library = getattr(sys.modules.get(type(wrapper).__module__), "__file__", None)
    if library is None or not callable(getattr(wrapper, "interpreter", None)):
        return None
    return str(library)


def entry_points(interpreter: Any) -> NativeEntryPoints | None:
    """The native entry points for interpreters of ``interpreter``'s backend, or None.

    None when :func:`backend_library` is None or the module lacks a symbol.
    """
    library = backend_library(interpreter)
    if library is None:
        return None
    if library not in _resolved:
        _resolved[library] = _resolve(library)
    return _resolved[library]


def _resolve(library: str) -> NativeEntryPoints | None:
    invoke = _slots.resolve_symbol(library, _INVOKE)
    allocate = _slots.resolve_symbol(library, _ALLOCATE)
    if not (invoke and allocate):
        logger.info("native path unavailable for %s: Interpreter::Invoke/AllocateTensors not exported",
                    library)
        return None
    set_cancellation = _slots.resolve_symbol(library, _SET_CANCELLATION)
    set_allocation = next((a for a in (_slots.resolve_symbol(library, name) for name in _SET_ALLOCATION) if a), 0)
    logger.info("native path: %s exports Interpreter::Invoke and AllocateTensors%s%s", library,
                " and SetCancellationFunction" if set_cancellation else "",
                " and SetCustomAllocationForTensor" if set_allocation else "")
    return NativeEntryPoints(invoke, allocate, set_cancellation, set_allocation)


def address_of(interpreter: Any) -> int:
    """The C++ interpreter's address."""
    return int(interpreter._interpreter.interpreter())


def allocate(native: NativeEntryPoints, interpreter: Any) -> int:
    """``Interpreter::AllocateTensors()`` with the GIL released; returns the TfLiteStatus."""
    return int(_slots.call_status_nogil(native.allocate, address_of(interpreter)))


def lend_min_bytes() -> int:
    """Inputs of at least this many bytes are lent, not copied (0: never); see LEND_MIN_BYTES."""
    value = os.environ.get(LEND_ENV_VAR)
    try:
        return LEND_MIN_BYTES if value is None else max(int(value), 0)
    except ValueError:
        logger.warning("%s=%r is not a number of bytes; using %d", LEND_ENV_VAR, value, LEND_MIN_BYTES)
        return LEND_MIN_BYTES

