"""Recognise a trainable model's form from its signatures, and move its weights.

Two forms:

* **weights** (builtin-only, what :func:`make_trainable` writes): ``train``,
  ``infer``, ``get_weights`` (no inputs; returns every variable) and
  ``set_weights`` (one input per variable).  Runs on every backend.
* **flex** (TensorFlow's on-device training guide): ``train``, ``infer``,
  ``save(checkpoint_path)`` and ``restore(checkpoint_path)``, which use the
  Flex ops ``tf.raw_ops.Save``/``Restore``: only the ``tensorflow`` backend
  has them.  Recognised from the names and the string input, before anything
  runs (binding a string tensor crashes LiteRT).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import FlexOpsRequiredError, InferenceError, InputError, NotTrainableError

# name -> (numpy dtype name, shape)
VariableSpecs = dict[str, tuple[str, tuple[int, ...]]]

_FLEX_OP = re.compile(rb"Flex[A-Z][A-Za-z0-9_]*")
FLEX_BACKENDS = ("tensorflow",)


@dataclass(frozen=True)
class SignatureNames:
    """The signature names of a trainable model (change them for a model that names them otherwise)."""

    train: str = "train"
    infer: str = "infer"
    get_weights: str = "get_weights"
    set_weights: str = "set_weights"
    save: str = "save"
    restore: str = "restore"


@dataclass(frozen=True)
class Form:
    """What kind of trainable model this is.

    Attributes:
        kind: ``"weights"`` or ``"flex"``.
        flex_ops: the Flex ops found in the model (sorted).
    """

    kind: str
    flex_ops: tuple[str, ...]


def flex_ops(data: bytes) -> list[str]:
    """The Flex (Select TensorFlow) custom op names in a model's bytes, sorted."""
    return sorted({m.decode() for m in _FLEX_OP.findall(data)})


def recognise(signatures: Mapping[str, Any], data: bytes, backend: str, names: SignatureNames,
              string_inputs: set[str] | None = None) -> Form:
    """Decide the model's form and whether ``backend`` can train it.

    Args:
        signatures: the model's signature defs (name -> {"inputs", "outputs"}).
        data: the model's bytes (scanned for Flex ops).
        backend: the backend's name.
        names: the signature names to look for.
        string_inputs: signatures that have a string input (the Flex
            ``save``/``restore`` take a path).

    Raises:
        FlexOpsRequiredError: if the model needs Flex ops and the backend has none.
        NotTrainableError: if the signatures are not one of the two forms.
    """
    have = set(signatures)
    ops = flex_ops(data)
    weights = {names.train, names.infer, names.get_weights, names.set_weights}
    flex = {names.train, names.infer, names.save, names.restore}
    if weights <= have:
        kind = "weights"
    elif flex <= have or (string_inputs and {names.save, names.restore} & string_inputs):
        kind = "flex"
        if not ops:  # save/restore with a path can only be Save/Restore
            ops = ["FlexRestore", "FlexSave"]
    else:
        raise NotTrainableError(
            f"model: expected signatures {sorted(weights)} (builtin form, from make_trainable) or "
            f"{sorted(flex)} (TensorFlow's on-device training guide), got {sorted(have)}")
    if ops and backend not in FLEX_BACKENDS:
        raise FlexOpsRequiredError(
            f"model: needs the Flex ops {ops}, which the {backend} backend does not have (only "
            f"backend='tensorflow' does); expected a builtin-only model: rebuild it with "
            f"tflite_hotswap.training.make_trainable (or `tflite-hotswap make-trainable SAVED_MODEL "
            f"OUT.tflite`), which moves weights through get_weights/set_weights", ops)
    return Form(kind, tuple(ops))


class SignatureCall:
    """A raw call to one signature of one interpreter: indices resolved once.

    Unlike the backends' ``SignatureRunner`` it does not re-read the
    signature list (which leaks in the backends) and never resizes.

    Args:
        interpreter: a backend ``Interpreter`` with tensors allocated.
        signatures: ``interpreter._get_full_signature_list()``.
        name: the signature.
    """

    def __init__(self, interpreter: Any, signatures: Mapping[str, Any], name: str) -> None:
        wrapper = interpreter._interpreter
        self.interpreter = interpreter
        self.name = name
        self.subgraph = int(wrapper.GetSubgraphIndexFromSignature(name))
        self.inputs: dict[str, int] = dict(signatures[name]["inputs"])
        self.outputs: dict[str, int] = dict(signatures[name]["outputs"])

    def on(self, interpreter: Any) -> SignatureCall:
        """The same call on another interpreter of the same model (no signature read)."""
        other = object.__new__(SignatureCall)
        other.__dict__.update(self.__dict__)
        other.interpreter = interpreter
        return other

    def specs(self) -> VariableSpecs:
        """name -> (dtype, shape) of each input."""
        out: VariableSpecs = {}
        for n, i in self.inputs.items():
            d = self.interpreter._get_tensor_details(i, self.subgraph)
            out[n] = (np.dtype(d["dtype"]).name, tuple(int(x) for x in d["shape"]))
        return out

    def __call__(self, inputs: Mapping[str, np.ndarray], resize: bool = False) -> dict[str, np.ndarray]:
        """Set the inputs (resized to their shapes with ``resize``), invoke, return copies of the outputs.

        Raises:
            InputError: for missing or unknown names, or a wrong dtype or shape.
            InferenceError: if the backend fails.
        """
        if set(inputs) != set(self.inputs):
            raise InputError(f"{self.name}: expected inputs {sorted(self.inputs)}, got {sorted(inputs)}")
        wrapper = self.interpreter._interpreter
        try:
            if resize:
                for n, i in self.inputs.items():
                    shape = np.array(np.shape(inputs[n]), np.int32)
                    wrapper.ResizeInputTensor(i, shape, False, self.subgraph)
            wrapper.AllocateTensors(self.subgraph)  # a no-op once allocated
        except (RuntimeError, ValueError) as e:
            raise InferenceError(f"{self.name}: the backend could not allocate it: {e}") from e
        for n, i in self.inputs.items():
            try:
                wrapper.SetTensor(i, np.asarray(inputs[n], order="C"), self.subgraph)
            except ValueError as e:
                raise InputError(f"{self.name}: input {n!r}: {e}") from e
        try:
            wrapper.Invoke(self.subgraph)
        except (RuntimeError, ValueError) as e:
            raise InferenceError(f"{self.name}: the backend failed to run it: {e}") from e
        return {n: wrapper.GetTensor(i, self.subgraph) for n, i in self.outputs.items()}


def weights_call(interpreter: Any, signatures: Mapping[str, Any], names: SignatureNames) -> SignatureCall:
    """The ``set_weights`` call of ``interpreter`` (``signatures``: the model's signature names).

    Raises:
        NotTrainableError: if the model has no get_weights/set_weights
            (FlexOpsRequiredError for the Flex form).
    """
    if names.set_weights not in signatures or names.get_weights not in signatures:
        if names.save in signatures or names.restore in signatures:
            raise FlexOpsRequiredError(
                f"checkpoints: the model has {names.save!r}/{names.restore!r} (Flex form: "
                f"tf.raw_ops.Save/Restore) but no {names.get_weights!r}/{names.set_weights!r}; expected a "
                "builtin-only model: rebuild it with tflite_hotswap.training.make_trainable",
                ["FlexRestore", "FlexSave"])
        raise NotTrainableError(f"checkpoints: expected signatures {names.get_weights!r} and "
                                f"{names.set_weights!r} to restore weights, got {sorted(signatures)}")
    return SignatureCall(interpreter, interpreter._get_full_signature_list(), names.set_weights)
