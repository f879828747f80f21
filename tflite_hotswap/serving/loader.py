"""Load a model into bound interpreters: shared by the runtime and the isolation probe."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from .._slots import Bound
from .backend import Backend, load_backend
from .contract import Contract, contract_of, signature_of
from ..errors import InputError, InvalidModelError, MisuseError
from ..safety.isolation import prove_loadable
from ..safety.verify import verify_model

ModelSource = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview]
ShapeKey = tuple  # one shape tuple per input, in contract order

# Every TFLite flatbuffer carries this file identifier at offset 4.
_TFLITE_IDENTIFIER = b"TFL3"


@dataclass(frozen=True)
class LoadedModel:
    """A model read and inspected, not yet allocated."""

    data: bytes
    sha256: str
    signature: Optional[str]
    subgraph: int
    signatures: dict
    contract: Contract
    dynamic: bool


def read_model(model: ModelSource) -> bytes:
    """Return the model's bytes from a path or a bytes-like object, verified.

    Every model is verified structurally (``verify``) before any backend sees
    it, whichever backend: it is cheap and gives one error for one fault.

    Raises:
        MisuseError: if ``model`` is neither, or the file cannot be read.
        InvalidModelError: if the bytes are not a valid TFLite flatbuffer.
    """
    if isinstance(model, (bytes, bytearray, memoryview)):
        data = bytes(model)
    elif isinstance(model, (str, os.PathLike)):
        try:
            with open(model, "rb") as f:
                data = f.read()
        except OSError as e:
            raise MisuseError(f"model: expected a readable .tflite file, got {model!r} ({e})") from e
    else:
        raise MisuseError(f"model: expected a path or bytes, got {type(model).__name__}")
    if len(data) < 8 or data[4:8] != _TFLITE_IDENTIFIER:
        raise InvalidModelError(f"model: expected a TFLite flatbuffer (identifier {_TFLITE_IDENTIFIER!r} "
                                f"at offset 4), got {len(data)} bytes starting {data[:8]!r}")
    verify_model(data)
    return data


def inspect_model(backend: Backend, data: bytes, sha256: str, num_threads: Optional[int],
                  signature: Optional[str]) -> tuple[Any, LoadedModel]:
    """Construct one interpreter for ``data`` and read its contract.

    Returns the interpreter (tensors not yet allocated, so it can serve as a
    worker's first interpreter) and the model description.

    Raises:
        InvalidModelError: if the backend refuses the model.
        MisuseError: if ``signature`` does not exist or is ambiguous.
    """
    interpreter = backend.interpreter(data, num_threads)
    try:
        signature, subgraph = signature_of(interpreter, signature)
        contract = contract_of(interpreter, signature)
        dynamic = _has_dynamic_tensors(interpreter._interpreter, subgraph)
    except MisuseError:
        raise
    except (ValueError, RuntimeError, IndexError, KeyError, TypeError) as e:
        raise InvalidModelError(f"{backend.name} could not read the model's tensors: {e}") from e
    loaded = LoadedModel(data, sha256, signature, subgraph,
                         dict(interpreter.get_signature_list()), contract, dynamic)
    return interpreter, loaded


def load_proven(backend: Backend, data: bytes, num_threads: Optional[int], signature: Optional[str],
                isolate: bool) -> tuple[Any, LoadedModel, float]:
    """Prove ``data`` loadable in isolation when ``isolate``, then :func:`inspect_model` it here.

    Returns (interpreter, model, seconds spent proving it).

    Raises:
        InvalidModelError: if the isolated load crashed or the backend refuses it.
        MisuseError: if ``signature`` does not exist or is ambiguous.
    """
    sha256 = hashlib.sha256(data).hexdigest()
    probe_seconds = (prove_loadable(PROBE_CHECK, backend.name, data, sha256, signature, num_threads)
                     if isolate else 0.0)
    interpreter, model = inspect_model(backend, data, sha256, num_threads, signature)
    return interpreter, model, probe_seconds


# What the isolation probe runs, named rather than imported: safety/ is a lower
# layer than serving/ and must not import it.
PROBE_CHECK = "tflite_hotswap.serving.loader:probe_check"


def probe_check(backend_name: str) -> Callable[[bytes, Optional[str], Optional[int]], None]:
    """The isolation probe's check: load, bind and run a model exactly as the runtime does.

    Called once in the prober process (so the backend is imported before it
    forks); the returned function runs in each throwaway fork.

    Raises:
        BackendNotFoundError: if the backend is not installed.
    """
    backend = load_backend(backend_name)

    def check(data: bytes, signature: Optional[str], num_threads: Optional[int]) -> None:
        interpreter, model = inspect_model(backend, data, "", num_threads, signature)
        bound = make_bound(backend, model, num_threads, [None] * len(model.contract.inputs),
                           interpreter=interpreter)
        bound.warm_up()

    return check


def _has_dynamic_tensors(wrapper: Any, subgraph: int) -> bool:
    """Whether any tensor of the subgraph has a dimension of unknown size."""
    for i in range(wrapper.NumTensors(subgraph)):
        try:
            # TensorSize raises for tensors without a shape; TensorSizeSignature
            # would crash tflite-runtime 2.14 on those, so it is asked second.
            wrapper.TensorSize(i, subgraph)
        except ValueError:
            continue
        if -1 in np.asarray(wrapper.TensorSizeSignature(i, subgraph)):
            return True
    return False


def check_shape_key(model: LoadedModel, key: ShapeKey) -> None:
    """Raises: InputError: if an input shape does not fit the model's contract."""
    if len(key) != len(model.contract.inputs):
        raise InputError(f"inputs: expected {len(model.contract.inputs)} shapes, got {len(key)}")
    for spec, shape in zip(model.contract.inputs, key):
        if len(shape) != len(spec.shape) or any(
                want not in (-1, got) for want, got in zip(spec.shape, shape)):
            shown = "(" + ", ".join("any" if d == -1 else str(d) for d in spec.shape) + ")"
            raise InputError(f"input {spec.name!r}: expected shape {shown}, got {tuple(shape)}")


def make_bound(backend: Backend, model: LoadedModel, num_threads: Optional[int],
               kernels: Sequence[Any], key: Optional[ShapeKey] = None,
               interpreter: Any = None) -> Bound:
    """Allocate an interpreter for input shapes ``key`` (None: the model's own) and bind it.

    Raises:
        InputError: if the model cannot take the shapes in ``key``.
        InvalidModelError: if the backend cannot allocate the model.
    """
    if interpreter is None:
        interpreter = backend.interpreter(model.data, num_threads)
    wrapper = interpreter._interpreter
    if key is not None:
        check_shape_key(model, key)
        for spec, shape in zip(model.contract.inputs, key):
            try:
                wrapper.ResizeInputTensor(spec.index, np.array(shape, dtype=np.int32), True,
                                          model.subgraph)
            except (ValueError, RuntimeError) as e:
                raise InputError(f"input {spec.name!r}: the model cannot take shape {shape}: {e}") from e
    try:
        # All subgraphs (-1): only this applies the backend's default delegate
        # (XNNPACK); allocating one subgraph would silently run without it.
        wrapper.AllocateTensors(-1)
    except (ValueError, RuntimeError, MemoryError) as e:
        error = InputError if key is not None else InvalidModelError
        raise error(f"{backend.name} could not allocate the model's tensors: {e}") from e
    inputs = [(spec.name, spec.index, kernel) for spec, kernel in zip(model.contract.inputs, kernels)]
    outputs = [(spec.name, spec.index) for spec in model.contract.outputs]
    return Bound(interpreter, model.subgraph, inputs, outputs, model.dynamic, tuple(key or ()))
