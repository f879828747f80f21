"""Pick the TFLite backend: tflite-runtime, ai-edge-litert (LiteRT) or tensorflow.lite.

All three expose the same ``Interpreter`` class.  They differ in what they
accept: only ``tensorflow.lite`` has Flex (Select TF) ops, and tflite-runtime
2.14 does not verify a model's flatbuffer before reading it, so a corrupt
model can crash the process (see ``isolation``).
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Any

from ..errors import BackendNotFoundError, InvalidModelError, MisuseError

ENV_VAR = "TFLITE_HOTSWAP_BACKEND"


@dataclass(frozen=True)
class _Candidate:
    name: str
    module: str
    package: str
    verifies_models: bool


# The order "auto" tries them in.
_CANDIDATES = (
    _Candidate("tflite-runtime", "tflite_runtime.interpreter", "tflite-runtime", False),
    # LiteRT verifies a flatbuffer's structure but not its meaning: an operator
    # output index of -1 or a signature naming a missing subgraph crashes it
    # (design.md, measured fact 8).  So it is isolated like the others.
    _Candidate("litert", "ai_edge_litert.interpreter", "ai-edge-litert", False),
    # TensorFlow's interpreter shares tflite-runtime's model loading; treated as
    # non-verifying to be safe.
    _Candidate("tensorflow", "tensorflow.lite.python.interpreter", "tensorflow-cpu", False),
)

_ALIASES = {
    "tflite-runtime": "tflite-runtime", "tflite_runtime": "tflite-runtime",
    "litert": "litert", "ai-edge-litert": "litert", "ai_edge_litert": "litert",
    "tensorflow": "tensorflow", "tf": "tensorflow",
}


@dataclass(frozen=True)
class Backend:
    """A loaded TFLite backend.

    Attributes:
        name: ``"tflite-runtime"``, ``"litert"`` or ``"tensorflow"``.
        interpreter_class: its ``Interpreter`` class.
        verifies_models: whether it rejects malformed flatbuffers itself
            instead of crashing on them.
    """

    name: str
    interpreter_class: Any
    verifies_models: bool

    def interpreter(self, model: bytes, num_threads: int | None = None, *,
                    default_delegate: bool = True) -> Any:
        """Create an interpreter for ``model`` (tensors not yet allocated).

        ``default_delegate=False`` leaves out the backend's default delegate
        (XNNPACK), whose partitions keep their inner tensors out of the arena.

        Raises:
            InvalidModelError: if the backend refuses the model.
        """
        options: dict[str, Any] = {}
        if not default_delegate:
            resolver = importlib.import_module(self.interpreter_class.__module__).OpResolverType
            options["experimental_op_resolver_type"] = resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        try:
            return self.interpreter_class(model_content=model, num_threads=num_threads, **options)
        except (ValueError, RuntimeError, MemoryError, UnicodeDecodeError, IndexError) as e:
            raise InvalidModelError(f"{self.name} could not load the model: {e}") from e


def load_backend(name: str = "auto") -> Backend:
    """Import a backend by name, or the first importable one for ``"auto"``.

    With ``"auto"``, the ``TFLITE_HOTSWAP_BACKEND`` environment variable, when
    set, names the backend instead.

    Args:
        name: ``"auto"``, ``"tflite-runtime"``, ``"litert"`` or ``"tensorflow"``
            (``"ai-edge-litert"``, ``"tflite_runtime"`` and ``"tf"`` also work).

    Raises:
        MisuseError: for an unknown name.
        BackendNotFoundError: if the backend (or, for auto, every backend) is
            not installed; the message names the package to install.
    """
    if name == "auto":
        name = os.environ.get(ENV_VAR, "auto") or "auto"
    if name == "auto":
        for candidate in _CANDIDATES:
            try:
                return _import(candidate)
            except BackendNotFoundError:
                continue
        raise BackendNotFoundError(
            "no TFLite backend is installed; expected one of: pip install tflite-runtime "
            "(Python <= 3.11, numpy < 2), pip install ai-edge-litert, pip install tensorflow-cpu")
    canonical = _ALIASES.get(name.lower())
    if canonical is None:
        raise MisuseError(f"backend: expected 'auto' or one of {sorted(set(_ALIASES))}, got {name!r}")
    return _import(next(c for c in _CANDIDATES if c.name == canonical))


def _import(candidate: _Candidate) -> Backend:
    try:
        module = importlib.import_module(candidate.module)
        interpreter_class = module.Interpreter
    except (ImportError, AttributeError) as e:
        raise BackendNotFoundError(
            f"backend {candidate.name!r} is not usable ({e}); install it with: "
            f"pip install {candidate.package}") from e
    return Backend(candidate.name, interpreter_class, candidate.verifies_models)
