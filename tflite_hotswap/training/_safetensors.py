"""Read and write the safetensors format, without the ``safetensors`` package.

The format (https://github.com/huggingface/safetensors, "Format"): an 8-byte
little-endian unsigned header length N, then N bytes of UTF-8 JSON, then the
tensor bytes.  The JSON maps each tensor name to ``{"dtype", "shape",
"data_offsets": [begin, end]}`` (offsets into the byte buffer after the
header, little-endian, C order) and may hold ``"__metadata__"``, a map of
string to string.  Any tool that reads safetensors (``safetensors.numpy.load_file``,
PyTorch, JAX, Rust, C++) reads these files.

Written here in a few lines so that boards without a ``safetensors`` wheel
(armv6, or a Python it has no wheel for) still work; the tests check files
against the ``safetensors`` package both ways.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping

import numpy as np

from ..errors import CheckpointError

# safetensors dtype names <-> numpy dtypes (little-endian).
_TO_NUMPY = {"BOOL": "bool", "U8": "uint8", "I8": "int8", "U16": "uint16", "I16": "int16",
             "U32": "uint32", "I32": "int32", "U64": "uint64", "I64": "int64", "F16": "float16",
             "F32": "float32", "F64": "float64"}
_FROM_NUMPY = {v: k for k, v in _TO_NUMPY.items()}
MAX_HEADER = 100 << 20  # the reference implementation's limit


def dumps(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> bytes:
    """Serialise ``tensors`` (and string ``metadata``) to safetensors bytes.

    Tensors are laid out in name order, as the reference implementation does.

    Raises:
        CheckpointError: for a dtype safetensors has no name for, or
            non-string metadata.
    """
    header: dict[str, object] = {}
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise CheckpointError(f"metadata: expected a map of str to str, got {dict(metadata)!r}")
        header["__metadata__"] = dict(metadata)
    chunks: list[bytes] = []
    offset = 0
    for name in sorted(tensors):
        array = np.asarray(tensors[name])
        dtype = _FROM_NUMPY.get(array.dtype.name)
        if dtype is None:
            raise CheckpointError(f"tensor {name!r}: expected one of {sorted(_FROM_NUMPY)}, "
                                  f"got {array.dtype}")
        raw = np.asarray(array, dtype=array.dtype.newbyteorder("<"), order="C").tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the reference pads the header to 8 bytes with spaces
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def loads(data: bytes, what: str = "checkpoint") -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Parse safetensors bytes into (tensors, metadata); every field is checked.

    Raises:
        CheckpointError: if ``data`` is not a well-formed safetensors file.
    """
    if len(data) < 8:
        raise CheckpointError(f"{what}: expected a safetensors file (8-byte header length), "
                              f"got {len(data)} bytes")
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER or 8 + n > len(data):
        raise CheckpointError(f"{what}: header length {n} does not fit the file's {len(data)} bytes")
    try:
        header = json.loads(data[8:8 + n])
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{what}: expected a JSON header, got {e}") from e
    if not isinstance(header, dict):
        raise CheckpointError(f"{what}: expected a JSON object as header, got {type(header).__name__}")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{what}: expected __metadata__ to map str to str, got {metadata!r}")
    body = memoryview(data)[8 + n:]
    tensors: dict[str, np.ndarray] = {}
    for name, entry in header.items():
        try:
            dtype = np.dtype(_TO_NUMPY[entry["dtype"]]).newbyteorder("<")
            shape = tuple(int(d) for d in entry["shape"])
            begin, end = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{what}: tensor {name!r}: expected dtype, shape and data_offsets, "
                                  f"got {entry!r}") from e
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if any(d < 0 for d in shape) or not 0 <= begin <= end <= len(body) or end - begin != expected:
            raise CheckpointError(f"{what}: tensor {name!r}: expected {expected} bytes for shape {shape} "
                                  f"inside the {len(body)}-byte buffer, got offsets [{begin}, {end}]")
        array = np.frombuffer(body[begin:end], dtype=dtype).reshape(shape)
        tensors[name] = array.astype(dtype.newbyteorder("="))  # a native-order copy
    return tensors, {str(k): v for k, v in metadata.items()}


def numpy_dtype(name: str) -> str:
    """The numpy dtype name of a safetensors dtype name.

    Raises:
        CheckpointError: for a dtype this reader does not know.
    """
    try:
        return _TO_NUMPY[name]
    except KeyError:
        raise CheckpointError(f"dtype: expected one of {sorted(_TO_NUMPY)}, got {name!r}") from None
