"""Structural verification of a TFLite flatbuffer, before any backend reads it.

tflite-runtime 2.14 follows a model's internal offsets without checking them,
so a truncated or corrupted file makes it read outside the buffer and crash.
The walk (``_verify.h``, in C with the GIL released: a swap verifies each new
model beside the serving loop) visits every table, vector and string the
TFLite schema defines, with the checks of flatbuffers' own Verifier (bounds,
alignment, vtable sizes, string terminators, nesting depth) plus what the
schema cannot express, the external ``offset``/``size`` pairs of a Buffer's
data and an Operator's large custom options (TFLite's own check of the
latter wraps around), so that everything the backend reads lies inside the
model.  Each table
position is walked once per type: a model pointing a million references at
one table costs a million lookups, not a million walks.

Then every index must name something that exists.  Backends trust them:
LiteRT, which verifies the structure, segfaults in ``AllocateTensors`` on an
operator output of -1 and in ``get_input_details`` on a SignatureDef naming a
missing subgraph.  As TFLite defines them:

* operator inputs: a tensor of the subgraph, or -1 (an omitted optional input);
* operator outputs and intermediates, subgraph inputs and outputs: a tensor;
* tensor buffers: a buffer (0, the empty buffer, also when there are none);
* operator opcode indices: an operator code;
* SignatureDef subgraph indices and control-flow options (WHILE, IF,
  CALL_ONCE, CALL, StableHLO regions): a subgraph;
* signature tensor indices: a tensor of the signature's subgraph.

A table shared by many references has its indices checked at each one; the
checks stop at REFERENCE_READS_PER_BYTE (4) per byte of the model (16 times what an unshared model needs),
so that no model makes them quadratic.

What is left -- semantic faults no walk can see -- is for the isolated probe
(``isolation``).  This module compiles the generated schema
(``_tflite_schema.py``) into the arrays the walk reads, once, and words the
fault the walk reports.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import _verify
from .._verify import FIELD_COLUMNS, MAX_BUFFER, MAX_DEPTH, MAX_TABLES, REFERENCE_READS_PER_BYTE, Schema, verify
from ..errors import InvalidModelError
from ._tflite_schema import TABLES as _GENERATED_TABLES
from ._tflite_schema import UNIONS

# Generated data of mixed tuples: (slot, field, kind, detail[, type slot]).
TABLES: dict[str, tuple[tuple[Any, ...], ...]] = _GENERATED_TABLES
KINDS = ("scalar", "string", "table", "scalars", "strings", "tables", "union")  # _verify.h's order
SUFFIXES = ("", " vtable", " length", " terminator")

_TABLE_NAMES = sorted(TABLES)
_UNION_NAMES = sorted(UNIONS)
_FIELDS = [(name, field) for name in _TABLE_NAMES for field in TABLES[name]]


def _names_subgraph(table: str, field: tuple[Any, ...]) -> bool:
    """Options fields that hold subgraph indices (WHILE's body, IF's branches, ...)."""
    return (table.endswith("Options") and "Subgraph" in field[1] and field[2] in ("scalar", "scalars")
            and field[3] == 4)


def schema_arrays() -> tuple[bytes, bytes, bytes, bytes, dict[str, Any]]:
    """The generated schema as :class:`Schema` takes it (fields, table_first, union_first, union_members, ids)."""
    table_id = {name: i for i, name in enumerate(_TABLE_NAMES)}
    union_id = {name: i for i, name in enumerate(_UNION_NAMES)}
    rows = []
    for table, field in _FIELDS:
        kind = KINDS.index(field[2])
        detail = (table_id[field[3]] if field[2] in ("table", "tables") else
                  union_id[field[3]] if field[2] == "union" else field[3])
        rows.append((field[0], kind, detail, field[4] if field[2] == "union" else -1,
                     int(_names_subgraph(table, field))))
    table_first = np.cumsum([0] + [len(TABLES[name]) for name in _TABLE_NAMES])
    members = [[table_id.get(UNIONS[u].get(k, ""), -1) for k in range(max(UNIONS[u]) + 1)] for u in _UNION_NAMES]
    union_first = np.cumsum([0] + [len(m) for m in members])

    def slot(table: str, field: str) -> int:
        found: int = next(f[0] for f in TABLES[table] if f[1] == field)
        return found

    ids: dict[str, Any] = {
        "model": table_id["Model"],
        "external": ((table_id["Buffer"], slot("Buffer", "Offset"), slot("Buffer", "Size")),
                     (table_id["Operator"], slot("Operator", "LargeCustomOptionsOffset"),
                      slot("Operator", "LargeCustomOptionsSize"))),
        "model_opcodes": slot("Model", "OperatorCodes"), "model_buffers": slot("Model", "Buffers"),
        "model_subgraphs": slot("Model", "Subgraphs"), "model_signatures": slot("Model", "SignatureDefs"),
        "subgraph_tensors": slot("SubGraph", "Tensors"), "subgraph_inputs": slot("SubGraph", "Inputs"),
        "subgraph_outputs": slot("SubGraph", "Outputs"), "subgraph_operators": slot("SubGraph", "Operators"),
        "tensor_buffer": slot("Tensor", "Buffer"),
        "op_opcode": slot("Operator", "OpcodeIndex"), "op_inputs": slot("Operator", "Inputs"),
        "op_outputs": slot("Operator", "Outputs"), "op_intermediates": slot("Operator", "Intermediates"),
        "op_options_type": (slot("Operator", "BuiltinOptionsType"), slot("Operator", "BuiltinOptions2Type")),
        "op_options": (slot("Operator", "BuiltinOptions"), slot("Operator", "BuiltinOptions2")),
        "options_union": (union_id["BuiltinOptions"], union_id["BuiltinOptions2"]),
        "signature_subgraph": slot("SignatureDef", "SubgraphIndex"),
        "signature_inputs": slot("SignatureDef", "Inputs"), "signature_outputs": slot("SignatureDef", "Outputs"),
        "tensor_map_index": slot("TensorMap", "TensorIndex"),
    }
    assert len(rows[0]) == FIELD_COLUMNS
    ints = np.dtype(np.int32)  # native byte order, as the walk reads them
    return (np.array(rows, ints).tobytes(), np.array(table_first, ints).tobytes(),
            np.array(union_first, ints).tobytes(),
            np.array([m for member in members for m in member], ints).tobytes(), ids)


_SCHEMA = Schema(*schema_arrays())

# The walk's structural faults, worded: {what} is the structure, {size} the model's.
_STRUCTURE = {
    _verify.OUTSIDE: "{what} at byte {0} (+{1}) lies outside the {size}-byte model",
    _verify.MISALIGNED: "{what} at byte {0} is not {1}-byte aligned",
    _verify.OFFSET: "{what} at byte {0} has offset {1}; expected 1 to 2**31-1",
    _verify.CLAIMS: "{what} at byte {0} claims {1} elements",
    _verify.NO_NUL: "{what} at byte {0} is not NUL-terminated",
    _verify.TARGET: "{what}[{0}] at byte {1} has offset {2}; expected one that points inside the {size}-byte model",
    _verify.TOO_MANY: f"{{what}} at byte {{0}}: nesting deeper than {MAX_DEPTH} or more than {MAX_TABLES} tables",
    _verify.VTABLE_SIZE: "{what} at byte {0}: vtable size {1}; expected an even size >= 4",
    _verify.EXTERNAL: "{what} at offset {0} (+{1}) lies outside the {size}-byte model",
    _verify.SHARED: ("its tables are shared by so many references that checking their indices would "
                     f"read more than {{0}} of them ({REFERENCE_READS_PER_BYTE} per byte of the model)"),
}
_EXTERNAL = {"Buffer": "Buffer data", "Operator": "Operator large custom options"}
# _verify.h's kinds of index (HS_R_*): where it is, and what it must name.
_REFERENCES = (
    ("subgraph {s} tensor buffer", "a buffer index"),
    ("subgraph {s} inputs", "a tensor index"),
    ("subgraph {s} outputs", "a tensor index"),
    ("subgraph {s} operator {o} opcode index", "an operator code index"),
    ("subgraph {s} operator {o} inputs", "a tensor index or"),
    ("subgraph {s} operator {o} outputs", "a tensor index"),
    ("subgraph {s} operator {o} intermediates", "a tensor index"),
    ("subgraph {s} operator {o} {option}", "a subgraph index"),
    ("signature {s} subgraph index", "a subgraph index"),
    ("signature {s} tensor index", "a tensor index of subgraph {o}:"),
)


def _what(table: int, field: int, suffix: int) -> str:
    if table < 0:
        base = "root table"
    elif field < 0:
        base = _TABLE_NAMES[table]
    else:
        base = f"{_FIELDS[field][0]}.{_FIELDS[field][1][1]}"
    return base + SUFFIXES[suffix]


def _reference(table: int, field: int, values: tuple[int, ...]) -> str:
    kind, s, o, i, value, low, high = values
    where, names = _REFERENCES[kind]
    option = f"{_TABLE_NAMES[table]}.{_FIELDS[field][1][1]}" if "{option}" in where else ""
    allowed = f"-1 or 0 to {high - 1}" if low == -1 else f"0 to {high - 1}"
    if high <= 0:
        allowed = "-1" if low == -1 else "nothing (there are none)"
    return (f"{where.format(s=s, o=o, option=option)}[{i}] is {value}; "
            f"expected {names.format(o=o)} {allowed}")


def verify_model(data: bytes) -> int:
    """Check that ``data`` is a valid TFLite flatbuffer whose indices all name something.

    The walk runs with the GIL released; ``data`` must not change meanwhile
    (``bytes`` cannot).

    Returns the number of distinct tables verified (each once, however many
    references point at it: the verifier's work is bounded by the model's size).

    Raises:
        InvalidModelError: naming the first structure found outside the
            buffer, misaligned, or malformed, or the first index (tensor,
            buffer, operator code, subgraph) that names nothing.
        MemoryError: if the set of tables seen cannot grow.
    """
    if len(data) > MAX_BUFFER:
        raise InvalidModelError(f"model: expected at most {MAX_BUFFER} bytes, got {len(data)}")
    found = verify(data, _SCHEMA)
    if isinstance(found, int):
        return found
    code, table, field, suffix, *values = found
    if code == _verify.REFERENCE:
        raise InvalidModelError(f"model refers to something it does not have: "
                                f"{_reference(table, field, tuple(values))}") from None
    if code == _verify.NO_MEMORY:
        raise MemoryError("verifying the model: no memory for the set of tables seen")
    if code == _verify.EXTERNAL:  # unsigned 64-bit values
        values = [v % 2**64 for v in values]
    what = _EXTERNAL[_TABLE_NAMES[table]] if code == _verify.EXTERNAL else _what(table, field, suffix)
    message = _STRUCTURE[code].format(*values, what=what, size=len(data))
    raise InvalidModelError(f"model is not a valid TFLite flatbuffer: {message}") from None
