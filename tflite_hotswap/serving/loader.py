"""Load a model into bound interpreters: shared by the runtime and the isolation probe."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Union

import numpy as np

from .._buffers import MappedBytes, mapped_copy, read_mapped
from .._slots import Bound
from ..errors import InputError, InvalidModelError, MisuseError, UnsupportedModelError
from ..safety.isolation import prove_loadable
from ..safety.verify import verify_model
from . import native
from .backend import Backend, load_backend
from .contract import Contract, contract_of, signature_of

ModelSource = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview]
ShapeKey = tuple[tuple[int, ...], ...]  # one shape tuple per input, in contract order

# Every TFLite flatbuffer carries this file identifier at offset 4.
_TFLITE_IDENTIFIER = b"TFL3"

# Tensor types the binding reads and writes as plain memory (numpy dtype names).
# Strings, resources and variants have no fixed layout: refused, never bound
# (reading them raw crashes LiteRT).
SERVABLE_DTYPES = frozenset({"bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64",
                             "int64", "float16", "float32", "float64", "complex64", "complex128"})
SHIPPED_MODEL = resources.files("tflite_hotswap").joinpath("models/demo_v1.tflite")
MAX_RANK = 16  # the binding's fixed shape arrays (_buffers.pxd MAX_DIMS)
_MAX_DIM = 2**31 - 1  # TFLite dimensions are int32


@dataclass(frozen=True)
class LoadedModel:
    """A model read and inspected, not yet allocated."""

    data: bytes
    sha256: str
    signature: str | None
    subgraph: int
    signatures: dict[str, dict[str, list[str]]]
    contract: Contract


def read_model(model: ModelSource) -> bytes:
    """Return the model's bytes from a path or a bytes-like object, verified.

    Every model is verified structurally (``verify``) before any backend sees
    it, whichever backend: it is cheap and gives one error for one fault.

    Raises:
        MisuseError: if ``model`` is neither, or the file cannot be read.
        InvalidModelError: if the bytes are not a valid TFLite flatbuffer.
    """
    # In a memory mapping of their own (_buffers.mapped_copy): freeing a
    # retired version's bytes then never holds the GIL while the kernel tears
    # their pages down, 1.5-9 ms for 20 MB that the serving loop would wait.
    if type(model) is MappedBytes:  # ours already (a Trainer's model): immutable, shared
        data = model
    elif isinstance(model, (bytes, bytearray, memoryview)):
        data = mapped_copy(model)
    elif isinstance(model, (str, os.PathLike)):
        try:
            with open(model, "rb") as f:
                found = os.fstat(f.fileno())
                regular = stat.S_ISREG(found.st_mode)
                read = read_mapped(f.fileno(), found.st_size) if regular else None
                if read is None:  # a pipe, a /proc file, a growing file: its size said nothing
                    if regular:
                        f.seek(0)
                    read = mapped_copy(f.read())
                data = read
        except OSError as e:
            raise MisuseError(f"model: expected a readable .tflite file, got {model!r} ({e})") from e
    else:
        raise MisuseError(f"model: expected a path or bytes, got {type(model).__name__}")
    if len(data) < 8 or data[4:8] != _TFLITE_IDENTIFIER:
        raise InvalidModelError(f"model: expected a TFLite flatbuffer (identifier {_TFLITE_IDENTIFIER!r} "
                                f"at offset 4), got {len(data)} bytes starting {data[:8]!r}")
    verify_model(data)
    return data


def inspect_model(backend: Backend, data: bytes, sha256: str, num_threads: int | None,
                  signature: str | None) -> tuple[Any, LoadedModel]:
    """Construct one interpreter for ``data`` and read its contract.

    Returns the interpreter (tensors not yet allocated, so it can serve as a
    worker's first interpreter) and the model description.

    Raises:
        InvalidModelError: if the backend refuses the model.
        MisuseError: if ``signature`` does not exist or is ambiguous.
    """
    interpreter = backend.interpreter(data, num_threads)
    try:
        full = interpreter._get_full_signature_list()  # once: every read leaks in the backend
        signature = signature_of(full, signature)
        subgraph = 0 if signature is None else \
            int(interpreter._interpreter.GetSubgraphIndexFromSignature(signature))
        contract = contract_of(interpreter, full, signature, subgraph)
        check_servable(contract)
    except (MisuseError, InvalidModelError):
        raise
    except (ValueError, RuntimeError, IndexError, KeyError, TypeError) as e:
        raise InvalidModelError(f"{backend.name} could not read the model's tensors: {e}") from e
    signatures = {name: {"inputs": list(d["inputs"]), "outputs": list(d["outputs"])}
                  for name, d in full.items()}
    loaded = LoadedModel(data, sha256, signature, subgraph, signatures, contract)
    return interpreter, loaded


def check_servable(contract: Contract) -> None:
    """Raises: UnsupportedModelError: naming a tensor the binding cannot serve."""
    for kind, specs in (("input", contract.inputs), ("output", contract.outputs)):
        for spec in specs:
            if spec.dtype not in SERVABLE_DTYPES:
                raise UnsupportedModelError(
                    f"{kind} {spec.name!r}: expected a tensor of one of {sorted(SERVABLE_DTYPES)}, "
                    f"got {spec.dtype}")
            if len(spec.shape) > MAX_RANK:
                raise UnsupportedModelError(
                    f"{kind} {spec.name!r}: expected a tensor of rank <= {MAX_RANK}, "
                    f"got rank {len(spec.shape)}")


def load_proven(backend: Backend, data: bytes, num_threads: int | None, signature: str | None,
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


def probe_check(backend_name: str) -> Callable[[bytes, str | None, int | None], None]:
    """The isolation probe's check: load, bind and run a model exactly as the runtime does.

    Called once in the prober process (so the backend is imported before it
    forks); the returned function runs in each throwaway fork.

    Raises:
        BackendNotFoundError: if the backend is not installed.
    """
    backend = load_backend(backend_name)
    # Resolve the native path once here rather than in every throwaway fork:
    # a backend whose functions are hidden is self-tested in a process of its own.
    native.entry_points(backend.interpreter(SHIPPED_MODEL.read_bytes()))

    def check(data: bytes, signature: str | None, num_threads: int | None) -> None:
        interpreter, model = inspect_model(backend, data, "", num_threads, signature)
        bound = make_bound(backend, model, num_threads, [None] * len(model.contract.inputs),
                           interpreter=interpreter)
        bound.warm_up()

    return check


_MOVES_CACHE_SIZE = 64
_moves: dict[tuple[Any, ...], bool] = {}  # (sha256, subgraph, shapes) -> allocated_at_invoke


def allocated_at_invoke(backend: Backend, model: LoadedModel, key: ShapeKey | None) -> bool:
    """Whether, allocated for ``key``, some tensor of the model's subgraph still has no memory.

    Such tensors (TFLite's kTfLiteDynamic: data-dependent shapes, WHILE
    outputs) get memory during invoke, which may re-plan the arena and move
    every tensor; without one, addresses hold until the next allocation.
    Asked of an interpreter without the default delegate: a delegate keeps the
    tensors inside its partitions out of the arena, so they have no memory
    either, yet never move.  Cached per model and input shapes.

    Raises:
        InvalidModelError: if the backend refuses the model.
    """
    cache_key = (model.sha256, model.subgraph, key)
    if model.sha256 and cache_key in _moves:  # no sha256 (an unnamed probe): not cached
        return _moves[cache_key]
    interpreter = backend.interpreter(model.data, 1, default_delegate=False)
    wrapper = interpreter._interpreter
    try:
        _resize_inputs(wrapper, model, key)
        wrapper.AllocateTensors(-1)
        if model.subgraph:
            wrapper.AllocateTensors(model.subgraph)
        moves = _unallocated_tensor(wrapper, model.subgraph)
    except (ValueError, RuntimeError):  # InputError is a ValueError
        moves = True  # cannot tell: take the path that re-reads
    del wrapper, interpreter
    if model.sha256:
        if len(_moves) >= _MOVES_CACHE_SIZE:
            del _moves[next(iter(_moves))]
        _moves[cache_key] = moves
    return moves


def _resize_inputs(wrapper: Any, model: LoadedModel, key: ShapeKey | None) -> None:
    """Raises: InputError: if the model cannot take the shapes in ``key`` (None: its own)."""
    for spec, shape in zip(model.contract.inputs, key or ()):
        try:
            wrapper.ResizeInputTensor(spec.index, np.array(shape, dtype=np.int32), True, model.subgraph)
        except (ValueError, RuntimeError) as e:
            raise InputError(f"input {spec.name!r}: the model cannot take shape {shape}: {e}") from e


def _unallocated_tensor(wrapper: Any, subgraph: int) -> bool:
    for i in range(wrapper.NumTensors(subgraph)):
        try:
            wrapper.TensorSize(i, subgraph)  # tensor() would crash tflite-runtime on shapeless ones
        except ValueError:
            continue  # no shape: not a tensor any operator reads or writes
        try:
            if np.dtype(wrapper.TensorType(i, subgraph)).name not in SERVABLE_DTYPES:
                return True  # strings, resources, variants: sized at invoke, never read raw
            view = wrapper.tensor(wrapper, i, subgraph)
        except (ValueError, TypeError):  # "Tensor data is null", or a type numpy lacks
            return True
        del view  # a live view would pin the arena
    return False


def check_shape_key(model: LoadedModel, key: ShapeKey) -> None:
    """Raises: InputError: if an input shape does not fit the model's contract."""
    if len(key) != len(model.contract.inputs):
        raise InputError(f"inputs: expected {len(model.contract.inputs)} shapes, got {len(key)}")
    for spec, shape in zip(model.contract.inputs, key):
        if len(shape) != len(spec.shape) or any(
                want not in (-1, got) or not 0 <= got <= _MAX_DIM for want, got in zip(spec.shape, shape)):
            shown = "(" + ", ".join("any" if d == -1 else str(d) for d in spec.shape) + ")"
            raise InputError(f"input {spec.name!r}: expected shape {shown}, got {tuple(shape)}")


def make_bound(backend: Backend, model: LoadedModel, num_threads: int | None,
               kernels: Sequence[Any], key: ShapeKey | None = None,
               interpreter: Any = None,
               prepare: Callable[[Any, LoadedModel], None] | None = None) -> Bound:
    """Allocate an interpreter for input shapes ``key`` (None: the model's own) and bind it.

    ``prepare(interpreter, model)``, when given, runs after the allocation and
    before the binding (and so before any warm-up invoke): the runtime's
    checkpoint restore, which writes trained weights into every interpreter.

    Raises:
        InputError: if the model cannot take the shapes in ``key``.
        InvalidModelError: if the backend cannot allocate the model.
        Whatever ``prepare`` raises (e.g. CheckpointMismatchError).
    """
    if key is not None:
        check_shape_key(model, key)  # before paying for an interpreter
    if interpreter is None:
        interpreter = backend.interpreter(model.data, num_threads)
    wrapper = interpreter._interpreter
    _resize_inputs(wrapper, model, key)
    entry = native.entry_points(interpreter)
    try:
        # The whole interpreter (-1, or Interpreter::AllocateTensors natively):
        # only this applies the backend's default delegate (XNNPACK);
        # allocating one subgraph would silently run without it.  Natively the
        # GIL is released meanwhile; a failure is repeated through the wrapper,
        # which raises the backend's own message.
        if entry is None or native.allocate(entry, interpreter) != 0:
            wrapper.AllocateTensors(-1)
        if model.subgraph:
            # Both allocate the primary subgraph only: a signature of a
            # multi-signature model (train/infer/...) needs its own.
            wrapper.AllocateTensors(model.subgraph)
    except (ValueError, RuntimeError, MemoryError) as e:
        error = InputError if key is not None else InvalidModelError
        raise error(f"{backend.name} could not allocate the model's tensors: {e}") from e
    if prepare is not None:
        prepare(interpreter, model)
    inputs = [(spec.name, spec.index, kernel) for spec, kernel in zip(model.contract.inputs, kernels)]
    outputs = [(spec.name, spec.index) for spec in model.contract.outputs]
    # A -1 dimension alone moves nothing once this allocation has concrete
    # shapes (every Keras export's batch): only a tensor that gets its memory
    # at invoke can re-plan the arena, and with it any address.  Asked of
    # each allocation: a new input shape can change the answer.
    moves = allocated_at_invoke(backend, model, key)
    bound = Bound(interpreter, model.subgraph, inputs, outputs, moves, tuple(key or ()))
    if entry is not None:
        bound.use_native(native.address_of(interpreter), entry.invoke, entry.set_cancellation,
                         entry.set_allocation, native.lend_min_bytes())
        if len(model.data) >= native.REMOVE_DELEGATES_MIN_BYTES:
            bound.free_delegates_with(entry.remove_delegates, entry.release_arena, entry.on_primary_subgraph)
    return bound
