"""Cross-references inside a TFLite model: every index must name something that exists.

The flatbuffer verifier (``verify``) proves that every table, vector and
string lies inside the model; it cannot know that an ``int`` is an index into
another table.  Backends trust those indices: LiteRT, which verifies the
structure, segfaults in ``AllocateTensors`` on an operator output of -1 and in
``get_input_details`` on a SignatureDef naming a missing subgraph.  This checks
each one, as TFLite defines it:

* operator inputs: a tensor of the subgraph, or -1 (an omitted optional input);
* operator outputs and intermediates, subgraph inputs and outputs: a tensor;
* tensor buffers: a buffer (0, the empty buffer, also when there are none);
* operator opcode indices: an operator code;
* SignatureDef subgraph indices and control-flow options (WHILE, IF,
  CALL_ONCE, CALL, StableHLO regions): a subgraph;
* signature tensor indices: a tensor of the signature's subgraph.

Runs only on a model ``verify`` accepted, so every read is in bounds.  Index
vectors are checked with numpy: the work is linear in the model's size.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from ._tflite_schema import TABLES as _GENERATED_TABLES
from ._tflite_schema import UNIONS

_U8, _U16, _U32, _I32 = (struct.Struct(f) for f in ("<B", "<H", "<I", "<i"))
TABLES: dict[str, tuple[tuple[Any, ...], ...]] = _GENERATED_TABLES


def _slot(name: str, field: str) -> int:
    slot: int = next(f[0] for f in TABLES[name] if f[1] == field)
    return slot


# Options tables' fields that name a subgraph: {table: [(slot, field, is_vector)]}.
_SUBGRAPH_FIELDS = {
    table: [(f[0], f[1], f[2] == "scalars") for f in fields
            if "Subgraph" in f[1] and f[2] in ("scalar", "scalars") and f[3] == 4]
    for table, fields in TABLES.items() if table.endswith("Options")
}
_SUBGRAPH_FIELDS = {k: v for k, v in _SUBGRAPH_FIELDS.items() if v}


class BrokenReference(Exception):
    """An index that names nothing (``verify`` turns it into InvalidModelError)."""


class _Table:
    """Read access to a verified table."""

    def __init__(self, buf: memoryview, pos: int) -> None:
        self.buf, self.pos = buf, pos
        vtable = pos - _I32.unpack_from(buf, pos)[0]
        self.vtable, self.vsize = vtable, _U16.unpack_from(buf, vtable)[0]

    def at(self, slot: int) -> int | None:
        if slot >= self.vsize:
            return None
        rel = _U16.unpack_from(self.buf, self.vtable + slot)[0]
        return self.pos + rel if rel else None

    def u32(self, slot: int, default: int = 0) -> int:
        at = self.at(slot)
        return default if at is None else int(_U32.unpack_from(self.buf, at)[0])

    def i32(self, slot: int) -> int:
        at = self.at(slot)
        return 0 if at is None else int(_I32.unpack_from(self.buf, at)[0])

    def u8(self, slot: int) -> int:
        at = self.at(slot)
        return 0 if at is None else int(_U8.unpack_from(self.buf, at)[0])

    def _vector(self, slot: int) -> tuple[int, int]:
        at = self.at(slot)
        if at is None:
            return 0, 0
        start = at + _U32.unpack_from(self.buf, at)[0]
        return start + 4, int(_U32.unpack_from(self.buf, start)[0])

    def ints(self, slot: int) -> np.ndarray:
        first, n = self._vector(slot)
        return np.frombuffer(self.buf, "<i4", n, first) if n else np.zeros(0, np.int32)

    def tables(self, slot: int) -> list[_Table]:
        first, n = self._vector(slot)
        return [_Table(self.buf, first + 4 * i + _U32.unpack_from(self.buf, first + 4 * i)[0])
                for i in range(n)]

    def table(self, slot: int) -> _Table | None:
        at = self.at(slot)
        return None if at is None else _Table(self.buf, at + _U32.unpack_from(self.buf, at)[0])


def _in_range(values: np.ndarray, low: int, high: int, what: str, names: str) -> None:
    """Raises: BrokenReference: if a value lies outside [low, high)."""
    bad = (values < low) | (values >= high)
    if bad.any():
        i = int(np.argmax(bad))
        allowed = f"-1 or 0 to {high - 1}" if low == -1 else f"0 to {high - 1}"
        if high <= 0:
            allowed = "-1" if low == -1 else "nothing (there are none)"
        raise BrokenReference(f"{what}[{i}] is {int(values[i])}; expected {names} {allowed}")


def check_references(data: bytes) -> None:
    """Check every index in a model that ``verify`` accepted.

    Raises:
        BrokenReference: naming the first index that refers to nothing.
    """
    buf = memoryview(data)
    model = _Table(buf, _U32.unpack_from(buf, 0)[0])
    n_opcodes = model._vector(_slot("Model", "OperatorCodes"))[1]
    n_buffers = model._vector(_slot("Model", "Buffers"))[1]
    subgraphs = model.tables(_slot("Model", "Subgraphs"))
    tensor_counts = []
    for s, sub in enumerate(subgraphs):
        tensors = sub.tables(_slot("SubGraph", "Tensors"))
        n = len(tensors)
        tensor_counts.append(n)
        where = f"subgraph {s}"
        buffers = np.array([t.u32(_slot("Tensor", "Buffer")) for t in tensors], np.int64)
        _in_range(buffers, 0, max(n_buffers, 1), f"{where} tensor buffer", "a buffer index")
        _in_range(sub.ints(_slot("SubGraph", "Inputs")), 0, n, f"{where} inputs", "a tensor index")
        _in_range(sub.ints(_slot("SubGraph", "Outputs")), 0, n, f"{where} outputs", "a tensor index")
        for o, op in enumerate(sub.tables(_slot("SubGraph", "Operators"))):
            what = f"{where} operator {o}"
            _in_range(np.array([op.u32(_slot("Operator", "OpcodeIndex"))]), 0, n_opcodes,
                      f"{what} opcode index", "an operator code index")
            _in_range(op.ints(_slot("Operator", "Inputs")), -1, n, f"{what} inputs",
                      "a tensor index or")
            _in_range(op.ints(_slot("Operator", "Outputs")), 0, n, f"{what} outputs",
                      "a tensor index")
            _in_range(op.ints(_slot("Operator", "Intermediates")), 0, n, f"{what} intermediates",
                      "a tensor index")
            _check_options(op, len(subgraphs), what)
    for g, sig in enumerate(model.tables(_slot("Model", "SignatureDefs"))):
        index = sig.u32(_slot("SignatureDef", "SubgraphIndex"))
        what = f"signature {g}"
        _in_range(np.array([index], np.int64), 0, len(subgraphs), f"{what} subgraph index",
                  "a subgraph index")
        indices = [t.u32(_slot("TensorMap", "TensorIndex"))
                   for slot in (_slot("SignatureDef", "Inputs"), _slot("SignatureDef", "Outputs"))
                   for t in sig.tables(slot)]
        _in_range(np.array(indices, np.int64), 0, tensor_counts[index], f"{what} tensor index",
                  f"a tensor index of subgraph {index}:")


def _check_options(op: _Table, n_subgraphs: int, what: str) -> None:
    """Raises: BrokenReference: if a control-flow option names a missing subgraph."""
    for type_field, union_field, enum in (("BuiltinOptionsType", "BuiltinOptions", "BuiltinOptions"),
                                         ("BuiltinOptions2Type", "BuiltinOptions2", "BuiltinOptions2")):
        member = UNIONS[enum].get(op.u8(_slot("Operator", type_field)))
        fields = _SUBGRAPH_FIELDS.get(member or "")
        options = op.table(_slot("Operator", union_field)) if fields else None
        if options is None or fields is None:
            continue
        for slot, name, is_vector in fields:
            values = (options.ints(slot).astype(np.int64) if is_vector
                      else np.array([options.i32(slot)], np.int64))
            _in_range(values, 0, n_subgraphs, f"{what} {member}.{name}", "a subgraph index")
