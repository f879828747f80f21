"""Every exception tflite_hotswap raises, split by cause.

Catch :class:`HotswapError` for all of them, or one branch:

* :class:`MisuseError` -- the caller passed something wrong (arguments,
  input names, shapes, dtypes).  Fix the calling code.
* :class:`ModelError` -- the model itself: :class:`InvalidModelError` (cannot be
  loaded or run) and :class:`IncompatibleModelError` (its I/O contract differs
  from the serving model's).
* :class:`RuntimeClosedError`, :class:`RuntimeBusyError` -- the runtime's state.
* :class:`BackendError` -- no usable TFLite backend, the backend failed
  while running a model that had loaded, or the isolation prober failed
  (:class:`IsolationError`).
* :class:`DeliveryError` -- getting a model onto the device: manifest,
  transport, verification and storage errors.
* :class:`TrainingError` -- on-device training: checkpoints that cannot be
  read or written or do not fit the model, and trained weights ``publish``
  refused.  (A model that cannot be trained here raises
  :class:`NotTrainableError` / :class:`FlexOpsRequiredError`, both
  :class:`InvalidModelError`.)

Each also derives from the closest built-in (``ValueError``, ``OSError``, ...)
so generic handlers keep working.  Messages say what was expected and what was
found.
"""

from __future__ import annotations


class HotswapError(Exception):
    """Base class of every error raised by tflite_hotswap."""


# --------------------------------------------------------------------- misuse


class MisuseError(HotswapError, ValueError):
    """Bad arguments: the calling code must change."""


class InputError(MisuseError):
    """An input or ``out=`` array has the wrong name, shape, dtype or type."""


# --------------------------------------------------------------------- models


class ModelError(HotswapError):
    """Something is wrong with a model."""


class InvalidModelError(ModelError, ValueError):
    """The model cannot be loaded or run (corrupt, truncated, unsupported ops)."""


class UnsupportedModelError(InvalidModelError):
    """The model is valid but uses something this library cannot serve.

    For example a string, resource or variant input or output, or a tensor of
    rank above 16.  The message names the tensor and what it is.
    """


class IncompatibleModelError(ModelError):
    """The model's I/O contract differs from the serving model's.

    Attributes:
        differences: one human-readable line per difference.
    """

    def __init__(self, message: str, differences: list[str] | None = None) -> None:
        super().__init__(message)
        self.differences = list(differences or [])


# -------------------------------------------------------------- runtime state


class RuntimeClosedError(HotswapError, RuntimeError):
    """The runtime was closed."""


class RuntimeBusyError(HotswapError, TimeoutError):
    """A call or swap waited longer than ``wait_timeout`` (all workers busy, a swap gap,
    or retired versions still in use)."""


class ModelUnavailableError(HotswapError, RuntimeError):
    """No model is serving: a resource-policy swap failed and the previous model
    could not be reloaded either.  A later successful ``swap()`` recovers."""


# ------------------------------------------------------------------- backends


class BackendError(HotswapError, RuntimeError):
    """A TFLite backend is missing or failed."""


class BackendNotFoundError(BackendError, ImportError):
    """The requested TFLite backend is not installed."""


class InferenceError(BackendError):
    """The backend raised while running a loaded model."""


class IsolationError(BackendError):
    """The isolation prober failed or did not answer in time: the model was not judged.

    Not the model's fault as far as anyone knows (the prober was stopped,
    killed or could not start); the prober is replaced, so trying again may
    succeed.
    """


# ------------------------------------------------------------------- delivery


class DeliveryError(HotswapError):
    """Base class of errors while getting a model onto the device."""


class ManifestError(DeliveryError, ValueError):
    """The repository manifest is malformed or violates the schema."""


class SerialRollbackError(ManifestError):
    """The manifest's serial is lower than one already seen (a replay or rollback)."""


class TransportError(DeliveryError, OSError):
    """The source could not be reached or did not answer properly."""


class HTTPStatusError(TransportError):
    """The server answered with an unexpected HTTP status.

    Attributes:
        status: the HTTP status code.
    """

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class DownloadTimeoutError(TransportError, TimeoutError):
    """A connect or read timeout, or the total deadline, ran out."""


class VerificationError(DeliveryError):
    """Downloaded bytes do not match what the manifest promised."""


class HashMismatchError(VerificationError):
    """The sha256 of the downloaded bytes differs from the manifest's."""


class SizeExceededError(VerificationError):
    """More bytes arrived than the manifest announced."""


class StorageError(DeliveryError, OSError):
    """The on-device store could not be read or written."""


class DiskFullError(StorageError):
    """Not enough free disk space for the download."""


class LockTimeoutError(StorageError, TimeoutError):
    """Another process held the store's lock for too long."""


# ------------------------------------------------------------------- training


class TrainingError(HotswapError):
    """Base class of errors of on-device training (``tflite_hotswap.training``)."""


class NotTrainableError(UnsupportedModelError):
    """The model lacks the signatures training needs (``train``, ``infer`` and
    ``get_weights``/``set_weights`` or ``save``/``restore``); the message lists
    what it has."""


class FlexOpsRequiredError(NotTrainableError):
    """The model needs Flex (Select TensorFlow) ops the backend does not have.

    Attributes:
        ops: the Flex ops the model uses, e.g. ``["FlexRestore", "FlexSave"]``.
    """

    def __init__(self, message: str, ops: list[str] | None = None) -> None:
        super().__init__(message)
        self.ops = list(ops or [])


class CheckpointError(TrainingError, OSError):
    """A checkpoint could not be written, read or parsed."""


class CheckpointMismatchError(TrainingError, ValueError):
    """A checkpoint does not fit the model: other variables, shapes or dtypes.

    Attributes:
        differences: one human-readable line per difference.
    """

    def __init__(self, message: str, differences: list[str] | None = None) -> None:
        super().__init__(message)
        self.differences = list(differences or [])


class ValidationFailedError(TrainingError):
    """``publish`` refused trained weights: their held-out metric fell below the
    serving weights', or their outputs were not finite.  Nothing was swapped.

    Attributes:
        metric: the metric's name.
        candidate: the trained weights' value.
        serving: the serving weights' value.
    """

    def __init__(self, message: str, metric: str = "", candidate: float = float("nan"),
                 serving: float = float("nan")) -> None:
        super().__init__(message)
        self.metric = metric
        self.candidate = candidate
        self.serving = serving


# -------------------------------------------------------------------- updater


class UpdaterError(HotswapError):
    """Base class of errors raised by the updater (``tflite_hotswap.updater``)."""


class ValidationError(UpdaterError, ModelError):
    """A candidate version failed validation before any swap.

    It did not load and run in an isolated process, its outputs on the
    published golden sample were outside the tolerance or not finite, or its
    I/O contract differs from the serving one.

    Attributes:
        version: the version that failed.
        reason: what was expected and what was found (also the message).
    """

    def __init__(self, version: str, reason: str) -> None:
        super().__init__(f"{version}: {reason}")
        self.version = version
        self.reason = reason


class UpdaterBusyError(UpdaterError, TimeoutError):
    """Another process (or thread) held the store's update round for longer than allowed."""
