"""Build a builtin-only trainable ``.tflite`` model (form (a)) with TensorFlow.

This is the only part of the library that needs TensorFlow (``pip install
"tflite_hotswap[convert]"``); it runs on a workstation, not on the board.

The model it writes has four signatures, all made of TFLite builtin ops so
that tflite-runtime and LiteRT (which have no Flex ops) can run them:

* ``train(x, y) -> {"loss"}``: one optimizer step on a batch of the fixed
  training batch size;
* ``infer(x) -> {"outputs"}``: the forward pass, any batch size;
* ``get_weights() -> {name: tensor}``: every variable (weights, optimizer
  state, the step counter ``train_step``);
* ``set_weights(name=tensor, ...) -> {"train_step"}``: one input per variable.

Gradients that would need Flex ops are avoided by construction: ReLU is
written ``tf.maximum(x, 0)`` (``tf.nn.relu``'s gradient is ``ReluGrad``, a
Flex op), the cross-entropy is a hand-written log-softmax
(``softmax_cross_entropy_with_logits`` is Flex), and the training batch size
is fixed (an unknown batch dimension makes broadcasting gradients use
``BroadcastGradientArgs``, Flex again).  The optimizers are written out with
plain variables so that their state is part of the weights.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import tempfile
from collections.abc import Sequence
from typing import Any, Callable

from ..errors import BackendNotFoundError, MisuseError, UnsupportedModelError

logger = logging.getLogger(__name__)

LOSSES = ("sparse_categorical_crossentropy", "categorical_crossentropy", "mse")
OPTIMIZERS = ("sgd", "adam")
STEP_VARIABLE = "train_step"
OPTIMIZER_PREFIX = "opt_"

LossFn = Callable[[Any, Any], Any]


def _tensorflow() -> Any:
    """Import TensorFlow lazily.

    Raises:
        BackendNotFoundError: if TensorFlow is not installed.
    """
    try:
        return importlib.import_module("tensorflow")
    except ImportError as e:
        raise BackendNotFoundError(
            f"make_trainable needs TensorFlow, which is not installed ({e}); expected it on the machine "
            "that prepares models: pip install 'tflite_hotswap[convert]' (tensorflow-cpu). "
            "Running and training the resulting model on the board needs no TensorFlow.") from e


def make_trainable(model: Any, loss: str | LossFn = "sparse_categorical_crossentropy",
                   optimizer: str = "sgd", *, input_shape: Sequence[int], batch_size: int = 32,
                   learning_rate: float = 0.01, momentum: float = 0.0, beta_1: float = 0.9,
                   beta_2: float = 0.999, epsilon: float = 1e-7, num_outputs: int | None = None,
                   output: str | os.PathLike[str] | None = None) -> bytes:
    """Convert a ``tf.Module`` or a Keras model into a trainable builtin-only TFLite model.

    Args:
        model: a ``tf.Module`` whose ``__call__(x)`` returns the outputs
            (logits for the cross-entropy losses) and whose
            ``trainable_variables`` are the weights to train; it must avoid
            ops whose gradients need Flex (use ``tf.maximum(x, 0)``, not
            ``tf.nn.relu``).  Or a Keras model made of ``Dense``, ``Flatten``,
            ``Dropout``, ``Activation``, ``Rescaling`` and ``InputLayer``
            layers, which is rebuilt that way with its current weights.
        loss: ``"sparse_categorical_crossentropy"`` (int32 labels of shape
            (batch,)), ``"categorical_crossentropy"`` (float32 one-hot
            labels), ``"mse"`` (float32 labels shaped like the outputs), or a
            function ``loss(labels, outputs) -> scalar`` of TensorFlow ops.
        optimizer: ``"sgd"`` (with ``momentum``) or ``"adam"``.
        input_shape: one sample's shape, without the batch dimension.
        batch_size: the fixed batch size of ``train``.
        learning_rate: the optimizer's learning rate.
        momentum: SGD momentum (0: plain SGD, no optimizer state).
        beta_1: Adam's first-moment decay.
        beta_2: Adam's second-moment decay.
        epsilon: Adam's epsilon.
        num_outputs: the outputs' last dimension (number of classes); read
            from the model when None.
        output: also write the model to this path.

    Returns:
        The ``.tflite`` model's bytes.

    Raises:
        BackendNotFoundError: if TensorFlow is not installed.
        MisuseError: for bad arguments.
        UnsupportedModelError: for a Keras layer or activation that cannot be
            rebuilt, or a model whose gradients still need Flex ops.
    """
    tf = _tensorflow()
    if isinstance(loss, str) and loss not in LOSSES:
        raise MisuseError(f"loss: expected one of {LOSSES} or a function, got {loss!r}")
    if optimizer not in OPTIMIZERS:
        raise MisuseError(f"optimizer: expected one of {OPTIMIZERS}, got {optimizer!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise MisuseError(f"batch_size: expected an int >= 1, got {batch_size!r}")
    shape = tuple(int(d) for d in input_shape)
    if any(d < 1 for d in shape):
        raise MisuseError(f"input_shape: expected fixed positive dimensions (no batch), got {input_shape!r}")
    forward, variables, final = _forward(tf, model)
    x_spec = tf.TensorSpec((batch_size, *shape), tf.float32, name="x")
    out_dim = num_outputs or int(forward(tf.zeros((1, *shape), tf.float32)).shape[-1])
    names = _variable_names(variables)
    module = _Trainable(tf, forward, final, variables, names, loss, optimizer, learning_rate, momentum,
                        beta_1, beta_2, epsilon)
    if loss == "sparse_categorical_crossentropy":
        y_spec = tf.TensorSpec((batch_size,), tf.int32, name="y")
    elif loss == "categorical_crossentropy":
        y_spec = tf.TensorSpec((batch_size, out_dim), tf.float32, name="y")
    else:
        y_out = forward(tf.zeros((batch_size, *shape), tf.float32))
        y_spec = tf.TensorSpec(tuple(y_out.shape), tf.float32, name="y")
    signatures = module.signatures(x_spec, y_spec, shape)
    data = _convert(tf, module, signatures)
    if output is not None:
        with open(output, "wb") as f:
            f.write(data)
    logger.info("make_trainable: %d variables (%d trainable), batch %d, %s/%s, %d bytes",
                len(module.all_names), len(variables), batch_size,
                loss if isinstance(loss, str) else "custom loss", optimizer, len(data))
    return data


def _variable_names(variables: Sequence[Any]) -> list[str]:
    """Signature-safe, unique names for the variables (their own names, cleaned)."""
    names: list[str] = []
    for i, v in enumerate(variables):
        base = re.sub(r"[^0-9A-Za-z_]", "_", v.name.split(":")[0]).strip("_") or f"w{i}"
        if base[0].isdigit():
            base = "w_" + base
        name, n = base, 1
        while name in names or name == STEP_VARIABLE or name.startswith(OPTIMIZER_PREFIX):
            name, n = f"{base}_{n}", n + 1
        names.append(name)
    return names


def _forward(tf: Any, model: Any) -> tuple[Callable[[Any], Any], list[Any], str]:
    """The model as (function x -> outputs before the final activation, variables, final activation)."""
    keras = getattr(tf, "keras", None)
    if keras is not None and isinstance(model, keras.Model):
        return _keras_forward(tf, model)
    if isinstance(model, tf.Module) and callable(model):
        variables = list(model.trainable_variables)
        if not variables:
            raise MisuseError("model: expected a tf.Module with trainable variables, got none")
        return model, variables, "linear"
    raise MisuseError(f"model: expected a callable tf.Module or a Keras model, got {type(model).__name__}")


_ACTIVATIONS = ("linear", "relu", "sigmoid", "tanh", "softmax")


def _activation_name(layer: Any) -> str:
    fn = getattr(layer, "activation", None)
    name = getattr(fn, "__name__", "linear") if fn is not None else "linear"
    if name not in _ACTIVATIONS:
        raise UnsupportedModelError(
            f"layer {layer.name!r}: expected an activation among {_ACTIVATIONS}, got {name!r}")
    return str(name)


def _apply(tf: Any, name: str, x: Any) -> Any:
    if name == "relu":
        return tf.maximum(x, 0.0)  # tf.nn.relu's gradient (ReluGrad) is a Flex op
    if name == "sigmoid":
        return tf.math.sigmoid(x)
    if name == "tanh":
        return tf.math.tanh(x)
    if name == "softmax":
        return tf.nn.softmax(x)
    return x


def _keras_forward(tf: Any, model: Any) -> tuple[Callable[[Any], Any], list[Any], str]:
    """Rebuild a Keras model of supported layers as plain variables and ops."""
    steps: list[tuple[str, Any, Any, str]] = []
    variables: list[Any] = []
    for layer in model.layers:
        kind = type(layer).__name__
        if kind in ("InputLayer", "Dropout"):
            continue
        if kind == "Flatten":
            steps.append(("flatten", None, None, "linear"))
        elif kind == "Rescaling":
            steps.append(("rescale", float(layer.scale), float(layer.offset), "linear"))
        elif kind == "Activation":
            steps.append(("activation", None, None, _activation_name(layer)))
        elif kind == "Dense":
            kernel, *rest = layer.get_weights()
            k = tf.Variable(kernel, name=f"{layer.name}_kernel")
            b = tf.Variable(rest[0], name=f"{layer.name}_bias") if rest else None
            variables += [k] + ([b] if b is not None else [])
            steps.append(("dense", k, b, _activation_name(layer)))
        else:
            raise UnsupportedModelError(
                f"layer {layer.name!r}: make_trainable rebuilds Keras models of Dense, Flatten, Dropout, "
                f"Activation, Rescaling and InputLayer layers; got {kind}. Write the model as a tf.Module "
                "instead (see make_trainable's docstring)")
    if not variables:
        raise MisuseError("model: expected a Keras model with at least one Dense layer, got none")
    final = steps[-1][3] if steps and steps[-1][0] in ("dense", "activation") else "linear"

    def forward(x: Any) -> Any:
        for i, (kind, a, b, act) in enumerate(steps):
            if kind == "flatten":
                x = tf.reshape(x, (tf.shape(x)[0], -1))
            elif kind == "rescale":
                x = x * a + b
            elif kind == "dense":
                x = tf.matmul(x, a) + b if b is not None else tf.matmul(x, a)
            if i < len(steps) - 1 or act != final:
                x = _apply(tf, act, x)
        return x

    return forward, variables, final


class _Trainable:
    """Holds the variables and optimizer state, and builds the four signatures."""

    def __init__(self, tf: Any, forward: Callable[[Any], Any], final: str, variables: list[Any],
                 names: list[str], loss: str | LossFn, optimizer: str, learning_rate: float,
                 momentum: float, beta_1: float, beta_2: float, epsilon: float) -> None:
        self.tf = tf
        self.module = tf.Module(name="trainable")
        self.forward = forward
        self.final = final
        self.variables = variables
        self.loss = loss
        self.optimizer = optimizer
        self.hyper = (float(learning_rate), float(momentum), float(beta_1), float(beta_2), float(epsilon))
        self.step = tf.Variable(0, dtype=tf.int32, name=STEP_VARIABLE)
        self.slots: list[tuple[str, Any]] = []
        if optimizer == "adam":
            for n, v in zip(names, variables):
                self.slots.append((f"{OPTIMIZER_PREFIX}m_{n}", tf.Variable(tf.zeros_like(v), name=f"m_{n}")))
            for n, v in zip(names, variables):
                self.slots.append((f"{OPTIMIZER_PREFIX}v_{n}", tf.Variable(tf.zeros_like(v), name=f"v_{n}")))
        elif momentum:
            for n, v in zip(names, variables):
                self.slots.append((f"{OPTIMIZER_PREFIX}momentum_{n}",
                                   tf.Variable(tf.zeros_like(v), name=f"momentum_{n}")))
        self.all_names = names + [n for n, _ in self.slots] + [STEP_VARIABLE]
        self.all_vars = variables + [s for _, s in self.slots] + [self.step]
        self.module.tracked = self.all_vars  # so the SavedModel keeps them

    def _loss(self, y: Any, logits: Any) -> Any:
        tf = self.tf
        if callable(self.loss):
            return self.loss(y, _apply(tf, self.final, logits))
        if self.loss == "mse":
            return tf.reduce_mean(tf.square(_apply(tf, self.final, logits) - y))
        if self.final not in ("linear", "softmax"):
            raise UnsupportedModelError(
                f"loss {self.loss!r}: expected logits (a linear or softmax final activation), "
                f"got {self.final!r}")
        # Hand-written log-softmax: softmax_cross_entropy_with_logits' gradient is Flex.
        z = logits - tf.stop_gradient(tf.reduce_max(logits, axis=-1, keepdims=True))
        log_p = z - tf.math.log(tf.reduce_sum(tf.exp(z), axis=-1, keepdims=True))
        if self.loss == "sparse_categorical_crossentropy":
            y = tf.one_hot(y, tf.shape(logits)[-1], dtype=logits.dtype)
        return -tf.reduce_mean(tf.reduce_sum(y * log_p, axis=-1))

    def _apply_gradients(self, grads: list[Any]) -> None:
        tf = self.tf
        lr, momentum, beta_1, beta_2, eps = self.hyper
        self.step.assign_add(1)
        if self.optimizer == "adam":
            n = len(self.variables)
            t = tf.cast(self.step, tf.float32)
            lr_t = lr * tf.sqrt(1.0 - tf.pow(beta_2, t)) / (1.0 - tf.pow(beta_1, t))
            for i, (v, g) in enumerate(zip(self.variables, grads)):
                m, s = self.slots[i][1], self.slots[n + i][1]
                m.assign(beta_1 * m + (1.0 - beta_1) * g)
                s.assign(beta_2 * s + (1.0 - beta_2) * tf.square(g))
                v.assign_sub(lr_t * m / (tf.sqrt(s) + eps))
        elif momentum:
            for (_, m), v, g in zip(self.slots, self.variables, grads):
                m.assign(momentum * m - lr * g)
                v.assign_add(m)
        else:
            for v, g in zip(self.variables, grads):
                v.assign_sub(lr * g)

    def signatures(self, x_spec: Any, y_spec: Any, shape: tuple[int, ...]) -> dict[str, Any]:
        tf = self.tf

        @tf.function(input_signature=[x_spec, y_spec])  # type: ignore[untyped-decorator]
        def train(x: Any, y: Any) -> dict[str, Any]:
            with tf.GradientTape() as tape:
                loss = self._loss(y, self.forward(x))
            grads = tape.gradient(loss, self.variables)
            self._apply_gradients(grads)
            return {"loss": loss}

        @tf.function(input_signature=[tf.TensorSpec((None, *shape), tf.float32, name="x")])  # type: ignore[untyped-decorator]
        def infer(x: Any) -> dict[str, Any]:
            return {"outputs": _apply(tf, self.final, self.forward(x))}

        @tf.function(input_signature=[])  # type: ignore[untyped-decorator]
        def get_weights() -> dict[str, Any]:
            return {n: tf.identity(v) for n, v in zip(self.all_names, self.all_vars)}

        specs = [tf.TensorSpec(v.shape, v.dtype, name=n) for n, v in zip(self.all_names, self.all_vars)]

        @tf.function(input_signature=specs)  # type: ignore[untyped-decorator]
        def set_weights(*values: Any) -> dict[str, Any]:
            for v, value in zip(self.all_vars, values):
                v.assign(value)
            return {STEP_VARIABLE: tf.identity(self.step)}

        return {"train": train.get_concrete_function(), "infer": infer.get_concrete_function(),
                "get_weights": get_weights.get_concrete_function(),
                "set_weights": set_weights.get_concrete_function()}


def _convert(tf: Any, trainable: _Trainable, signatures: dict[str, Any]) -> bytes:
    """SavedModel round trip (the converter keeps signature names from it), builtins only."""
    with tempfile.TemporaryDirectory() as folder:
        tf.saved_model.save(trainable.module, folder, signatures=signatures)
        converter = tf.lite.TFLiteConverter.from_saved_model(folder, signature_keys=list(signatures))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        converter.experimental_enable_resource_variables = True
        try:
            return bytes(converter.convert())
        except Exception as e:  # the converter raises ConverterError, a plain Exception subclass
            ops = sorted(set(re.findall(r"tf\.([A-Za-z0-9_]+)", str(e))))
            raise UnsupportedModelError(
                "make_trainable: expected a model whose training graph needs only TFLite builtin ops, "
                f"but the converter found ops it cannot express without Flex: {ops or str(e)[:500]}. "
                "Write ReLU as tf.maximum(x, 0), avoid tf.nn.softmax_cross_entropy_with_logits and "
                "broadcasting against an unknown batch size") from e
