"""tflite_hotswap: run TensorFlow Lite models and replace them while inference keeps running."""

from . import _extensions  # noqa: F401  (first: a missing build gives a clear error)
from .errors import (
                     BackendError,
                     BackendNotFoundError,
                     HotswapError,
                     IncompatibleModelError,
                     InferenceError,
                     InputError,
                     InvalidModelError,
                     MisuseError,
                     ModelError,
                     ModelUnavailableError,
                     RuntimeBusyError,
                     RuntimeClosedError,
                     UnsupportedModelError,
)
from .serving.backend import Backend, load_backend
from .serving.contract import Contract, TensorSpec
from .serving.preprocess import Normalize
from .serving.runtime import ModelInfo, Runtime, VersionStats
from .updater import Probation, Updater, UpdateResult, UpdaterStatus

__all__ = [
    "Backend", "BackendError", "BackendNotFoundError", "Contract", "HotswapError",
    "IncompatibleModelError", "InferenceError", "InputError", "InvalidModelError", "MisuseError",
    "ModelError", "ModelInfo", "ModelUnavailableError", "Normalize", "Probation", "Runtime",
    "RuntimeBusyError", "RuntimeClosedError", "TensorSpec", "UnsupportedModelError", "UpdateResult",
    "Updater", "UpdaterStatus", "VersionStats", "load_backend",
]
__version__ = "0.1.0"
