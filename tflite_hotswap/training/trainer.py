"""Trainer: runs a model's ``train`` signature on its own interpreter, saves and publishes.

A training step goes through ``TrainStep`` (``pyx/tflite_hotswap/_train.pyx``):
inputs written by the same fused kernels as ``Runtime.run`` (so they get the
same :class:`~tflite_hotswap.Normalize` treatment as at inference), the train
signature invoked through tflite-runtime's C++ ``SignatureRunner`` with the GIL
released, and the loss read in place (see :mod:`.native_step`; the backend's
wrapper where that is not available): a step costs one invoke plus well under
a microsecond on the native path.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Union

import numpy as np

from .._buffers import affine_into
from .._slots import LatencyStats
from .._train import TrainStep
from ..errors import (
    CheckpointMismatchError,
    FlexOpsRequiredError,
    InferenceError,
    InputError,
    MisuseError,
    NotTrainableError,
    RuntimeClosedError,
    ValidationFailedError,
)
from ..serving.backend import load_backend
from ..serving.contract import Contract, TensorSpec, contract_of
from ..serving.loader import ModelSource, check_servable, read_model
from ..serving.preprocess import Normalize, kernel_for
from .checkpoints import CheckpointInfo, Checkpoints, check_variables, variable_differences
from .data import batches
from .forms import Form, SignatureCall, SignatureNames, VariableSpecs, recognise
from .native_step import entry_points

logger = logging.getLogger(__name__)

Weights = dict[str, np.ndarray]
Callback = Union[Callable[[int, dict[str, float]], Any], Any]
Preprocess = Union[Normalize, Mapping[str, Normalize], None]
EVAL_CHUNK = 256


@dataclass
class History:
    """What :meth:`Trainer.fit` did.

    Attributes:
        epochs: one dict of metrics per finished epoch (``loss``, ``steps``,
            ``seconds`` and, with validation data, ``val_*``).
        stopped: whether ``stop`` ended it early (the last epoch may then be
            partial and is included with the steps it took).
    """

    epochs: list[dict[str, float]] = field(default_factory=list)
    stopped: bool = False

    @property
    def loss(self) -> list[float]:
        """The mean training loss of each epoch."""
        return [e["loss"] for e in self.epochs]


@dataclass(frozen=True)
class PublishInfo:
    """What :meth:`Trainer.publish` put into service.

    Attributes:
        checkpoint: the checkpoint saved for the published weights.
        metrics: the trained weights' held-out metrics.
        serving_metrics: the previously serving weights' metrics on the same data.
        model: the runtime's :class:`~tflite_hotswap.ModelInfo` after the swap.
    """

    checkpoint: CheckpointInfo
    metrics: dict[str, float]
    serving_metrics: dict[str, float]
    model: Any


class Trainer:
    """Trains a model on the device, on its own interpreter.

    Args:
        model: path or bytes of a trainable ``.tflite`` model (see
            :mod:`tflite_hotswap.training.forms`; :func:`make_trainable`
            writes one).
        checkpoints: where :meth:`save` writes; the latest checkpoint for the
            model is restored at once (``restore=True``).
        backend: as for :class:`~tflite_hotswap.Runtime`.
        num_threads: threads for the interpreter.
        preprocess: a :class:`~tflite_hotswap.Normalize` for the features (the
            train and infer signatures' first input), or a mapping of input
            name to Normalize, fused into the copy as at inference.
        names: the signature names, if the model names them otherwise.
        restore: restore the latest checkpoint at once.
        metric: the held-out metric ``"accuracy"`` (higher is better) or
            ``"mse"`` (lower is better); None picks accuracy for a
            classifier (outputs with a last dimension > 1), else mse.

    Raises:
        MisuseError: for bad arguments.
        BackendNotFoundError: if the backend is not installed.
        InvalidModelError: if the model cannot be loaded.
        NotTrainableError: if its signatures are not a trainable form.
        FlexOpsRequiredError: if it needs Flex ops the backend lacks (the
            guide's save/restore form on tflite-runtime or LiteRT).
        CheckpointMismatchError: if the latest checkpoint does not fit it.
    """

    def __init__(self, model: ModelSource, *, checkpoints: Checkpoints | None = None,
                 backend: str = "auto", num_threads: int | None = None, preprocess: Preprocess = None,
                 names: SignatureNames | None = None, restore: bool = True,
                 metric: str | None = None) -> None:
        if metric not in (None, "accuracy", "mse"):
            raise MisuseError(f"metric: expected None, 'accuracy' or 'mse', got {metric!r}")
        if checkpoints is not None and not isinstance(checkpoints, Checkpoints):
            raise MisuseError(f"checkpoints: expected a Checkpoints, got {type(checkpoints).__name__}")
        self.names = names or (checkpoints.names if checkpoints is not None else SignatureNames())
        self._data = read_model(model)
        self.sha256 = hashlib.sha256(self._data).hexdigest()
        self._backend = load_backend(backend)
        self._num_threads = num_threads
        self._checkpoints = checkpoints
        self._preprocess = preprocess
        self._lock = threading.RLock()
        self._eval: tuple[Any, SignatureCall, SignatureCall] | None = None
        self._closed = False
        interpreter = self._backend.interpreter(self._data, num_threads)
        signatures = interpreter._get_full_signature_list()
        self.form: Form = recognise(signatures, self._data, self._backend.name, self.names,
                                    _string_inputs(interpreter, signatures, self.names))
        wrapper = interpreter._interpreter
        subgraph = int(wrapper.GetSubgraphIndexFromSignature(self.names.train))
        self.contract: Contract = contract_of(interpreter, signatures, self.names.train, subgraph)
        check_servable(self.contract)
        wrapper.AllocateTensors(-1)  # the default delegate; then the train subgraph itself
        wrapper.AllocateTensors(subgraph)
        first = self.contract.inputs[0]
        self.batch_size: int | None = first.shape[0] if first.shape and first.shape[0] > 0 else None
        self._input_names = tuple(t.name for t in self.contract.inputs)
        self._input_dtypes = tuple(np.dtype(t.dtype) for t in self.contract.inputs)
        self._kernels = _kernels(preprocess, self.contract)
        outputs = [t.name for t in self.contract.outputs]
        self._loss_name = "loss" if "loss" in outputs else outputs[0]
        self._single = len(outputs) == 1
        self._step_stats = LatencyStats()
        # A fixed-shape train signature runs through TrainStep (zero copy, native where the
        # backend allows); one with a dynamic batch (the guide's models) through a resizing
        # call on the same interpreter, which holds the variables.
        self._fast: TrainStep | None = None
        self._resizing: SignatureCall | None = None
        self._resizing_steps = 0
        if any(-1 in t.shape for t in self.contract.inputs):
            self._resizing = SignatureCall(interpreter, signatures, self.names.train)
        else:
            inputs = [(t.name, t.index, k, dtype)
                      for t, k, dtype in zip(self.contract.inputs, self._kernels, self._input_dtypes)]
            self._fast = TrainStep(interpreter, subgraph, inputs, (self._loss_name, self._loss_index()),
                                   self._lock, self._step_stats, entry_points(interpreter), self.names.train)
        self._interpreter = interpreter
        self._signatures = signatures
        self._infer = SignatureCall(interpreter, signatures, self.names.infer)
        self.restored: CheckpointInfo | None = None
        self.metric = metric
        if self.form.kind == "weights":
            self._get = SignatureCall(interpreter, signatures, self.names.get_weights)
            self._set = SignatureCall(interpreter, signatures, self.names.set_weights)
            self.variables: VariableSpecs = self._set.specs()
            self.base_weights: Weights = self._get({})
            if checkpoints is not None and restore:
                info, weights = checkpoints.resolve_and_load(self.sha256, self.variables)
                if info is not None and weights is not None:
                    self.set_weights(weights)
                    self.restored = info
                    logger.info("trainer: restored checkpoint %s (step %d)", info.id, info.step)
        else:
            self.variables = {}
            self.base_weights = {}
        logger.info("trainer: %s form on %s, train inputs %s, batch size %s, step path %s", self.form.kind,
                    self._backend.name, list(self._input_names), self.batch_size, self.path)

    @property
    def steps(self) -> int:
        """Train calls this trainer has run."""
        return self._fast.steps if self._fast is not None else self._resizing_steps

    @property
    def path(self) -> str:
        """How a step runs.

        ``"native"``: through the C++ SignatureRunner, GIL released;
        ``"python"``: through the backend's wrapper (with the reason in
        parentheses when the native path was available but refused);
        ``"resizing"``: a train signature without a fixed batch size.
        """
        return self._fast.path if self._fast is not None else "resizing"

    # ------------------------------------------------------------- training

    def step(self, *args: Any, **kwargs: Any) -> float:
        """Run one ``train`` call; return its loss.

        Inputs by position in the train signature's order (e.g.
        ``step(features, labels)``), by name (``step(x=..., y=...)``) or as
        one mapping.  Arrays must have the training batch size; a dtype that
        differs from the tensor's (int64 labels for int32) is cast, except
        for an input with a Normalize (which takes uint8/int8/float32/float64).

        Raises:
            InputError: wrong number, names, shapes or dtypes of inputs.
            InferenceError: if the backend fails.
            RuntimeClosedError: after :meth:`close`.
            FlexOpsRequiredError: for the Flex form on a backend without Flex ops.
        """
        fast = self._fast
        if fast is not None:
            return fast.step(args, kwargs)
        if len(args) == 1 and not kwargs and isinstance(args[0], Mapping):
            kwargs, args = dict(args[0]), ()
        if args:
            if kwargs or len(args) != len(self._input_names):
                raise InputError(f"step: expected {len(self._input_names)} inputs {list(self._input_names)} "
                                 f"by position or by name, got {len(args)} by position and {sorted(kwargs)}")
            kwargs = dict(zip(self._input_names, args))
        for name, dtype, kernel in zip(self._input_names, self._input_dtypes, self._kernels):
            value = kwargs.get(name)
            if kernel is None and value is not None and getattr(value, "dtype", None) != dtype:
                kwargs[name] = np.asarray(value, dtype=dtype)
        resizing = self._resizing
        if resizing is None or self._closed:
            raise RuntimeClosedError("the trainer is closed; expected an open Trainer")
        if self._preprocess is not None:
            raise MisuseError("preprocess: needs a train signature with a fixed batch size")
        with self._lock:
            try:
                out = resizing(kwargs, resize=True)
            except InferenceError as e:
                if "Select TensorFlow op" not in str(e):
                    raise
                raise FlexOpsRequiredError(
                    f"step: the {self._backend.name} backend here has no Flex delegate linked "
                    f"(TensorFlow 2.21's tf.lite.Interpreter has none), so the ops "
                    f"{list(self.form.flex_ops)} cannot run; expected a builtin-only model from "
                    "make_trainable", list(self.form.flex_ops)) from e
            self._resizing_steps += 1
        loss: Any = out if self._single else out[self._loss_name]
        return float(loss)

    def fit(self, dataset: Any, *, epochs: int = 1, validation: tuple[Any, Any] | None = None,
            callbacks: Sequence[Callback] = (), stop: threading.Event | None = None,
            shuffle: bool = True, seed: int | None = 0, last: str = "drop",
            progress: Callable[[int, int], None] | None = None) -> History:
        """Train for ``epochs`` epochs; report each to ``callbacks`` and the log.

        Args:
            dataset: ``(features, labels)`` arrays (cut by :func:`batches`
                into the training batch size, shuffled with ``seed + epoch``),
                an iterable of ready batches (tuples in the train signature's
                input order, or mappings), or a function ``epoch -> iterable``.
            epochs: how many passes.
            validation: held-out ``(features, labels)``: ``val_*`` metrics
                are computed after each epoch (see :meth:`evaluate`).
            callbacks: each called after every epoch as ``cb(epoch, logs)``,
                or ``cb.on_epoch_end(epoch, logs)`` if it has that method.
            stop: an event checked before every step; when set, ``fit``
                returns early with ``History.stopped``.
            shuffle: shuffle the arrays every epoch.
            seed: the shuffle's base seed (None: fresh each time).
            last: ``"drop"`` or ``"pad"`` the last partial batch (see :func:`batches`).
            progress: called as ``progress(epoch, steps_done)`` after every step.

        Returns:
            The :class:`History`.

        Raises:
            MisuseError: for bad arguments (arrays with a model whose
                training batch size is not fixed).
            InputError, InferenceError: as for :meth:`step`.
        """
        if not isinstance(epochs, int) or epochs < 1:
            raise MisuseError(f"epochs: expected an int >= 1, got {epochs!r}")
        history = History()
        for epoch in range(epochs):
            started = time.perf_counter()
            total, count = 0.0, 0
            for batch in self._epoch_batches(dataset, epoch, shuffle, seed, last):
                if stop is not None and stop.is_set():
                    history.stopped = True
                    break
                total += self.step(batch) if isinstance(batch, Mapping) else self.step(*batch)
                count += 1
                if progress is not None:
                    progress(epoch, count)
            if count == 0 and history.stopped:
                break
            logs = {"loss": total / count if count else math.nan, "steps": float(count),
                    "seconds": time.perf_counter() - started}
            if validation is not None and not history.stopped:
                logs.update({f"val_{k}": v for k, v in self.evaluate(*validation).items() if k != "finite"})
            history.epochs.append(logs)
            logger.info("epoch %d/%d: %s", epoch + 1, epochs,
                        ", ".join(f"{k} {v:.4g}" for k, v in logs.items()))
            for callback in callbacks:
                hook = getattr(callback, "on_epoch_end", callback)
                hook(epoch, dict(logs))
            if history.stopped:
                break
        return history

    def _epoch_batches(self, dataset: Any, epoch: int, shuffle: bool, seed: int | None,
                       last: str) -> Iterable[Any]:
        if callable(dataset):
            return dataset(epoch)  # type: ignore[no-any-return]
        if isinstance(dataset, tuple) and all(hasattr(a, "shape") for a in dataset):
            if self.batch_size is None:
                raise MisuseError("dataset: arrays need a model with a fixed training batch size; "
                                  "this one's is not fixed: pass ready batches instead")
            return batches(dataset, self.batch_size, shuffle=shuffle,
                           seed=None if seed is None else seed + epoch, last=last)
        return dataset  # type: ignore[no-any-return]

    # ------------------------------------------------------------- evaluation

    def predict(self, features: Any, weights: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        """Run ``infer`` on ``features`` (any number of rows, in chunks).

        With ``weights``, on a separate interpreter holding those weights
        (the trainer's own are untouched); else on the trainer's interpreter.

        Raises:
            InputError: if the features do not fit the infer signature.
            CheckpointMismatchError: if ``weights`` do not fit the model.
        """
        features = np.asarray(features)
        with self._lock:
            if weights is None:
                interpreter, infer = self._interpreter, self._infer
            else:
                interpreter, infer, setter = self._eval_interpreter()
                self._check(weights)
                setter(dict(weights))
            return _predict(interpreter, infer, features, self._infer_kernel())

    def evaluate(self, features: Any, labels: Any,
                 weights: Mapping[str, np.ndarray] | None = None) -> dict[str, float]:
        """Held-out metrics: ``accuracy`` and ``loss`` (cross-entropy) for a classifier, else ``mse``.

        Also ``finite`` (1.0 when every output is finite, else 0.0).

        Raises:
            InputError: if features and labels do not fit.
        """
        outputs = self.predict(features, weights)
        return _metrics(outputs, np.asarray(labels), self.metric)

    # ------------------------------------------------------------- weights

    def weights(self) -> Weights:
        """Every variable's current value (weights, optimizer state, step counter).

        Raises:
            NotTrainableError: for the Flex form (its weights stay inside TF checkpoints).
        """
        self._need_weights("weights()")
        with self._lock:
            return self._get({})

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        """Replace every variable.

        Raises:
            CheckpointMismatchError: naming each variable that is missing, extra
                or of another shape or dtype.
            NotTrainableError: for the Flex form.
        """
        self._need_weights("set_weights()")
        self._check(weights)
        with self._lock:
            self._set({k: np.asarray(v) for k, v in weights.items()})

    def reset_weights(self) -> None:
        """Back to the base model's own weights (checkpoints on disk are kept)."""
        self.set_weights(self.base_weights)

    def restore(self, checkpoint: str | CheckpointInfo | None = None) -> CheckpointInfo | None:
        """Load a checkpoint (default: the one :meth:`Checkpoints.resolve` picks) into the trainer.

        Returns:
            The checkpoint restored; None if there was none (weights unchanged).

        Raises:
            MisuseError: without checkpoints.
            CheckpointMismatchError: if it does not fit the model.
        """
        ckpts = self._need_checkpoints("restore()")
        self._need_weights("restore()")
        if checkpoint is None:
            info = ckpts.resolve(self.sha256, self.variables)
        else:
            info = checkpoint if isinstance(checkpoint, CheckpointInfo) else ckpts.get(checkpoint)
            check_variables(info, self.variables)
        if info is not None:
            self.set_weights(ckpts.load(info))
            self.restored = info
        return info

    def step_count(self) -> int:
        """Steps taken: the model's ``train_step`` variable when it has one, else this trainer's count."""
        if self.form.kind == "weights" and "train_step" in self.variables:
            return int(self.weights()["train_step"])
        return self.steps + (self.restored.step if self.restored else 0)

    def save(self, metrics: Mapping[str, float] | None = None) -> str:
        """Save the current weights as a checkpoint (atomically); return its id.

        Raises:
            MisuseError: without checkpoints.
            NotTrainableError: for the Flex form.
            CheckpointError: if it cannot be written.
        """
        ckpts = self._need_checkpoints("save()")
        info = ckpts.save(self.weights(), base_sha256=self.sha256, step=self.step_count(), metrics=metrics)
        return info.id

    # ------------------------------------------------------------- service

    def publish(self, rt: Any, validate: tuple[Any, Any], *, min_delta: float = 0.0,
                version: str | None = None, metrics: Mapping[str, float] | None = None) -> PublishInfo:
        """Put the trained weights into service through ``rt.swap``, if they validate.

        The trained weights are loaded into a fresh interpreter and scored on
        ``validate``; so are the weights the runtime serves now.  Unless every
        output is finite and the metric is at least the serving one's (minus
        ``min_delta``; accuracy: higher is better, mse: lower), nothing is
        saved or swapped.  Otherwise they are saved as a checkpoint and the
        runtime swaps to the same model, whose new interpreters restore that
        checkpoint; calls keep running on the old weights until the swap
        publishes, and no call mixes the two.  If the swap fails, the
        checkpoint is deleted again.

        Args:
            rt: a :class:`~tflite_hotswap.Runtime` serving this trainer's
                model with ``checkpoints=`` (the same folder).
            validate: held-out ``(features, labels)``.
            min_delta: how far the metric may fall below the serving one's.
            version: the runtime version name (default: the one it serves now,
                so an :class:`~tflite_hotswap.Updater` following a repository
                still recognises the version; ``rt.info.checkpoint`` says
                which weights serve).
            metrics: extra metrics to store with the checkpoint.

        Returns:
            A :class:`PublishInfo`.

        Raises:
            ValidationFailedError: if the trained weights do not validate.
            MisuseError: if ``rt`` serves another model or has no (or other) checkpoints.
            Whatever ``rt.swap`` raises (the checkpoint is then deleted).
        """
        ckpts = self._need_checkpoints("publish()")
        self._need_weights("publish()")
        served_by = getattr(rt, "checkpoints", None)
        if not isinstance(served_by, Checkpoints) or served_by.directory != ckpts.directory:
            raise MisuseError(f"publish: expected a Runtime created with checkpoints= the folder "
                              f"{ckpts.directory!r}, got {served_by!r}")
        if rt.info.sha256 != self.sha256:
            raise MisuseError(f"publish: expected a runtime serving base model {self.sha256[:12]}, it serves "
                              f"{rt.info.version} ({rt.info.sha256[:12]})")
        features, labels = validate
        trained = self.weights()
        candidate = self.evaluate(features, labels, weights=trained)
        served_id = served_by.served(self.sha256)
        serving_weights = ckpts.load(served_id) if served_id is not None else self.base_weights
        serving = self.evaluate(features, labels, weights=serving_weights)
        name = "accuracy" if "accuracy" in candidate else "mse"
        better = 1.0 if name == "accuracy" else -1.0
        if candidate["finite"] != 1.0:
            raise ValidationFailedError("publish: the trained weights give non-finite outputs on the "
                                        "validation data; expected finite outputs (nothing swapped)",
                                        name, candidate[name], serving[name])
        if better * (candidate[name] - serving[name]) < -min_delta:
            raise ValidationFailedError(
                f"publish: expected held-out {name} of the trained weights at least as good as the serving "
                f"weights' {serving[name]:.4f} (min_delta {min_delta:g}), got {candidate[name]:.4f} "
                "(nothing swapped)", name, candidate[name], serving[name])
        stored = {f"val_{k}": v for k, v in candidate.items() if k != "finite"}
        stored.update(metrics or {})
        info = ckpts.save(trained, base_sha256=self.sha256, step=self.step_count(), metrics=stored)
        try:
            model = rt.swap(self._data, version=version or rt.info.version)
        except BaseException:
            ckpts.delete(info.id)
            raise
        if model.checkpoint != info.id:
            logger.warning("publish: the runtime restored checkpoint %s, expected %s (another save raced?)",
                           model.checkpoint, info.id)
        logger.info("published checkpoint %s: %s %.4f (serving had %.4f)", info.id, name, candidate[name],
                    serving[name])
        return PublishInfo(info, candidate, serving, model)

    # ------------------------------------------------------------- lifecycle

    def stats(self) -> dict[str, float]:
        """Train-step latency (microseconds) and counts, as the runtime's statistics."""
        snapshot: dict[str, float] = self._step_stats.snapshot()
        return snapshot

    def close(self) -> None:
        """Free the interpreters; later steps raise RuntimeClosedError."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._fast is not None:
                self._fast.release()
            self._resizing = None
            self._eval = None

    def __enter__(self) -> Trainer:  # noqa: PYI034 -- Trainer is not meant to be subclassed
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<Trainer {self.form.kind} form, backend={self._backend.name!r}, "
                f"batch_size={self.batch_size}, steps={self.steps}>")

    # -------------------------------------------------------------- helpers

    def _loss_index(self) -> int:
        return next(t.index for t in self.contract.outputs if t.name == self._loss_name)

    def _need_weights(self, what: str) -> None:
        if self.form.kind != "weights":
            raise NotTrainableError(
                f"{what}: the model is in the Flex form (save/restore through TF checkpoints), whose "
                "weights this library cannot read; expected the builtin form from make_trainable")

    def _need_checkpoints(self, what: str) -> Checkpoints:
        if self._checkpoints is None:
            raise MisuseError(f"{what}: expected a Trainer created with checkpoints=, got none")
        return self._checkpoints

    def _check(self, weights: Mapping[str, np.ndarray]) -> None:
        have = {k: (np.asarray(v).dtype.name, tuple(np.shape(v))) for k, v in weights.items()}
        found = variable_differences(have, self.variables)
        if found:
            raise CheckpointMismatchError("weights do not fit the model's variables: " + "; ".join(found),
                                          found)

    def _eval_interpreter(self) -> tuple[Any, SignatureCall, SignatureCall]:
        if self._eval is None:
            interpreter = self._backend.interpreter(self._data, self._num_threads)
            interpreter._interpreter.AllocateTensors(-1)
            self._eval = (interpreter, self._infer.on(interpreter), self._set.on(interpreter))
        return self._eval

    def _infer_kernel(self) -> Any:
        pre = self._preprocess
        if pre is None:
            return None
        spec_index = self._infer.inputs[next(iter(self._infer.inputs))]
        details = self._interpreter._get_tensor_details(spec_index, self._infer.subgraph)
        spec = TensorSpec(next(iter(self._infer.inputs)), np.dtype(details["dtype"]).name,
                          tuple(int(d) for d in details["shape_signature"]))
        norm = pre if isinstance(pre, Normalize) else pre.get(spec.name)
        return None if norm is None else kernel_for(norm, spec)


def _kernels(preprocess: Preprocess, contract: Contract) -> list[Any]:
    if preprocess is None:
        return [None] * len(contract.inputs)
    if isinstance(preprocess, Normalize):
        preprocess = {contract.inputs[0].name: preprocess}
    for name in preprocess:
        contract.input(name)  # MisuseError for an unknown name
    return [kernel_for(preprocess[t.name], t) if t.name in preprocess else None for t in contract.inputs]


def _string_inputs(interpreter: Any, signatures: Mapping[str, Any], names: SignatureNames) -> set[str]:
    """The save/restore signatures that take a string (read from tensor details, never bound)."""
    found = set()
    for name in (names.save, names.restore):
        if name not in signatures:
            continue
        subgraph = int(interpreter._interpreter.GetSubgraphIndexFromSignature(name))
        for index in signatures[name]["inputs"].values():
            if np.dtype(interpreter._get_tensor_details(index, subgraph)["dtype"]).kind in "SUO":
                found.add(name)
    return found


def _predict(interpreter: Any, infer: SignatureCall, features: np.ndarray, kernel: Any) -> np.ndarray:
    """``infer`` over ``features`` in chunks (resizing its input once per chunk size)."""
    wrapper = interpreter._interpreter
    (name, index), = infer.inputs.items()
    out_index = next(iter(infer.outputs.values()))
    results = []
    current: tuple[int, ...] | None = None
    for start in range(0, max(len(features), 1), EVAL_CHUNK):
        chunk = features[start:start + EVAL_CHUNK]
        if chunk.shape != current:
            wrapper.ResizeInputTensor(index, np.array(chunk.shape, np.int32), False, infer.subgraph)
            wrapper.AllocateTensors(infer.subgraph)
            current = chunk.shape
        if kernel is None:
            try:
                wrapper.SetTensor(index, np.asarray(chunk, order="C"), infer.subgraph)
            except ValueError as e:
                raise InputError(f"{infer.name}: input {name!r}: {e}") from e
        else:
            view = wrapper.tensor(wrapper, index, infer.subgraph)
            a, b, _, _, zero_point = kernel
            affine_into(np.asarray(chunk, order="C"), view, a, b, zero_point)
            del view
        wrapper.Invoke(infer.subgraph)
        results.append(wrapper.GetTensor(out_index, infer.subgraph))
    return np.concatenate(results) if results else np.empty((0,))


def _metrics(outputs: np.ndarray, labels: np.ndarray, metric: str | None) -> dict[str, float]:
    finite = float(bool(np.all(np.isfinite(outputs))))
    classifier = outputs.ndim >= 2 and outputs.shape[-1] > 1
    if metric == "mse" or (metric is None and not classifier):
        target = labels.reshape(outputs.shape).astype(np.float64)
        return {"mse": float(np.mean((outputs.astype(np.float64) - target) ** 2)), "finite": finite}
    if labels.ndim == outputs.ndim:  # one-hot
        labels = labels.argmax(axis=-1)
    labels = labels.astype(np.int64).reshape(outputs.shape[:-1])
    predicted = outputs.argmax(axis=-1)
    o = outputs.astype(np.float64)
    if np.all(o >= 0) and np.allclose(o.sum(axis=-1), 1.0, atol=1e-3):
        log_p = np.log(np.clip(o, 1e-12, None))  # probabilities
    else:
        z = o - o.max(axis=-1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    loss = -float(np.mean(np.take_along_axis(log_p, labels[..., None], axis=-1))) if labels.size else math.nan
    return {"accuracy": float(np.mean(predicted == labels)) if labels.size else math.nan, "loss": loss,
            "finite": finite}
