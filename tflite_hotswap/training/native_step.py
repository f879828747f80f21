"""The training step's native path: tflite-runtime's ``SignatureRunner``, called with the GIL released.

The serving path's native invoke (:mod:`tflite_hotswap.serving.native`) runs
the interpreter's primary subgraph; a ``train`` signature is another one.
tflite-runtime 2.14 exports ``Interpreter::GetSignatureRunner(const char*)``
and ``SignatureRunner::Invoke()``, ``input_tensor(const char*)`` and
``output_tensor(const char*) const``; ``SignatureRunner::Invoke`` is the
subgraph's ``Invoke`` followed by ``EnsureTensorDataIsReadable`` on its outputs,
what the wrapper's ``Invoke(subgraph)`` does.  They are resolved at run time in
the already-loaded module, like the serving path's; where one is missing
(LiteRT) or ``TFLITE_HOTSWAP_NATIVE=0`` is set, the step goes through the
wrapper, and ``Trainer.path`` says which.
"""

from __future__ import annotations

import logging
from typing import Any

from .. import _slots
from ..serving.native import address_of, backend_library

logger = logging.getLogger(__name__)

# Itanium-ABI names.
_GET_RUNNER = b"_ZN6tflite4impl11Interpreter18GetSignatureRunnerEPKc"
_INVOKE = b"_ZN6tflite4impl15SignatureRunner6InvokeEv"
_INPUT = b"_ZN6tflite4impl15SignatureRunner12input_tensorEPKc"
_OUTPUT = b"_ZNK6tflite4impl15SignatureRunner13output_tensorEPKc"

_resolved: dict[str, tuple[int, int, int, int] | None] = {}


def entry_points(interpreter: Any) -> tuple[int, int, int, int, int] | None:
    """(interpreter address, GetSignatureRunner, Invoke, input_tensor, output_tensor), or None.

    None when :func:`~tflite_hotswap.serving.native.backend_library` is None
    or the backend's module lacks a symbol.
    """
    library = backend_library(interpreter)
    if library is None:
        return None
    if library not in _resolved:
        _resolved[library] = _resolve(library)
    found = _resolved[library]
    return None if found is None else (address_of(interpreter), *found)


def _resolve(library: str) -> tuple[int, int, int, int] | None:
    found = tuple(_slots.resolve_symbol(library, name) for name in (_GET_RUNNER, _INVOKE, _INPUT, _OUTPUT))
    if not all(found):
        logger.info("native train step unavailable for %s: SignatureRunner methods not exported", library)
        return None
    logger.info("native train step: %s exports Interpreter::GetSignatureRunner and SignatureRunner", library)
    return found[0], found[1], found[2], found[3]
