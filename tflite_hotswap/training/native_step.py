"""The training step's native path: the backend's ``SignatureRunner``, called with the GIL released.

The serving path's native invoke (:mod:`tflite_hotswap.serving.native`) runs
the interpreter's primary subgraph; a ``train`` signature is another one.
tflite-runtime 2.14 exports ``Interpreter::GetSignatureRunner(const char*)``
and ``SignatureRunner::Invoke()``, ``input_tensor(const char*)`` and
``output_tensor(const char*) const``; ``SignatureRunner::Invoke`` is the
subgraph's ``Invoke`` followed by ``EnsureTensorDataIsReadable`` on its outputs,
what the wrapper's ``Invoke(subgraph)`` does.  They are resolved at run time in
the already-loaded module like the serving path's (hidden ones in LiteRT's
library, after the same self-test); where one is missing or
``TFLITE_HOTSWAP_NATIVE=0`` is set, the step goes through the
wrapper, and ``Trainer.path`` says which.
"""

from __future__ import annotations

import logging
from typing import Any

from ..serving.native import address_of, backend_library, trusted
from ..serving.symbols import find_functions

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
        _resolved[library] = _resolve(library, interpreter)
    found = _resolved[library]
    return None if found is None else (address_of(interpreter), *found)


def _resolve(library: str, interpreter: Any) -> tuple[int, int, int, int] | None:
    found = find_functions(library, (_GET_RUNNER, _INVOKE, _INPUT, _OUTPUT), required=4)
    if found is None or not trusted(found, interpreter):
        logger.info("native train step unavailable for %s: SignatureRunner methods %s", library,
                    "not found" if found is None else "failed the self-test")
        return None
    logger.info("native train step: %s %s Interpreter::GetSignatureRunner and SignatureRunner",
                found.library, "has (hidden, self-tested)" if found.hidden else "exports")
    get_runner, invoke, input_tensor, output_tensor = found.addresses
    return get_runner, invoke, input_tensor, output_tensor
