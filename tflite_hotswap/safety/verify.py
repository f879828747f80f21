"""Structural verification of a TFLite flatbuffer, before any backend reads it.

tflite-runtime 2.14 follows a model's internal offsets without checking them,
so a truncated or corrupted file makes it read outside the buffer and crash.
This walks every table, vector and string the TFLite schema defines (the
checks of flatbuffers' own Verifier: bounds, alignment, vtable sizes,
string terminators, nesting depth) plus the one reference the schema cannot
express, a buffer's external ``offset``/``size``, so that everything the
backend reads lies inside the model.  Then ``references`` checks that every
index names something that exists.  What is left -- semantic faults no table
walk can see -- is for the isolated probe (``isolation``).

Each table position is verified once per type, and vectors of offsets are
checked with numpy: a model pointing a million references at one table costs
a million integer checks, not a million table walks.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from ..errors import InvalidModelError
from ._tflite_schema import TABLES as _GENERATED_TABLES
from ._tflite_schema import UNIONS
from .references import BrokenReference, check_references

# Generated data of mixed tuples: (slot, field, kind, detail[, type slot]).
TABLES: dict[str, tuple[tuple[Any, ...], ...]] = _GENERATED_TABLES
_MAX_DEPTH = 64
_MAX_TABLES = 1_000_000
_MAX_BUFFER = 2**31 - 1
_U8, _U16, _U32, _I32, _U64 = (struct.Struct(f) for f in ("<B", "<H", "<I", "<i", "<Q"))
_SCALAR = {1: _U8, 2: _U16, 4: _U32, 8: _U64}


class _Invalid(Exception):
    pass


class _Verifier:
    def __init__(self, data: bytes) -> None:
        self.buf = memoryview(data)
        self.size = len(data)
        self.seen: set[tuple[int, str]] = set()

    def need(self, pos: int, length: int, align: int, what: str) -> None:
        if pos < 0 or length < 0 or pos + length > self.size:
            raise _Invalid(f"{what} at byte {pos} (+{length}) lies outside the {self.size}-byte model")
        if pos % align:
            raise _Invalid(f"{what} at byte {pos} is not {align}-byte aligned")

    def offset(self, at: int, what: str) -> int:
        """Follow the uoffset stored at ``at``; return the target position."""
        self.need(at, 4, 4, what)
        o: int = _U32.unpack_from(self.buf, at)[0]
        if o == 0 or o >= 2**31:
            raise _Invalid(f"{what} at byte {at} has offset {o}; expected 1 to 2**31-1")
        self.need(at + o, 1, 1, what)
        return at + o

    def vector(self, at: int, elem_size: int, what: str) -> tuple[int, int]:
        """Check a vector (or string) whose offset is at ``at``; return (first element, count)."""
        start = self.offset(at, what)
        self.need(start, 4, 4, what + " length")
        n = _U32.unpack_from(self.buf, start)[0]
        if n >= _MAX_BUFFER // max(elem_size, 1):
            raise _Invalid(f"{what} at byte {start} claims {n} elements")
        self.need(start + 4, n * elem_size, 1, what)
        return start + 4, n

    def string(self, start: int, what: str) -> None:
        """Check the string starting at ``start`` (its length field)."""
        self.need(start, 4, 4, what + " length")
        n = _U32.unpack_from(self.buf, start)[0]
        first = start + 4
        self.need(first, n + 1, 1, what + " terminator")
        if self.buf[first + n] != 0:
            raise _Invalid(f"{what} at byte {first} is not NUL-terminated")

    def targets(self, at: int, what: str) -> list[int]:
        """Check a vector of offsets (tables or strings); return its distinct targets.

        A hostile model can point a million entries at one table: each target
        is checked once, and the entries themselves with numpy, not one by one.
        """
        first, n = self.vector(at, 4, what)
        offsets = np.frombuffer(self.buf, "<u4", n, first).astype(np.int64)
        positions = first + 4 * np.arange(n, dtype=np.int64)
        bad = (offsets == 0) | (offsets >= 2**31) | (positions + offsets >= self.size)
        if bad.any():
            i = int(np.argmax(bad))
            raise _Invalid(f"{what}[{i}] at byte {int(positions[i])} has offset {int(offsets[i])}; "
                           f"expected one that points inside the {self.size}-byte model")
        return [int(t) for t in np.unique(positions + offsets)]

    def table(self, pos: int, name: str, depth: int) -> None:
        if (pos, name) in self.seen:  # verified already, through another reference
            return
        self.seen.add((pos, name))
        if depth > _MAX_DEPTH or len(self.seen) > _MAX_TABLES:
            raise _Invalid(f"{name} at byte {pos}: nesting deeper than {_MAX_DEPTH} or more than "
                           f"{_MAX_TABLES} tables")
        self.need(pos, 4, 4, name)
        vtable = pos - _I32.unpack_from(self.buf, pos)[0]
        self.need(vtable, 4, 2, name + " vtable")
        vsize = _U16.unpack_from(self.buf, vtable)[0]
        if vsize & 1 or vsize < 4:
            raise _Invalid(f"{name} at byte {pos}: vtable size {vsize}; expected an even size >= 4")
        self.need(vtable, vsize, 2, name + " vtable")
        buf = self.buf
        present: dict[int, tuple[int, tuple[Any, ...]]] = {}
        for field in TABLES[name]:
            slot = field[0]
            if slot >= vsize:
                continue
            rel = _U16.unpack_from(buf, vtable + slot)[0]
            if rel:
                present[slot] = (pos + rel, field)
        for at, field in present.values():
            _, field_name, kind, detail = field[:4]
            what = f"{name}.{field_name}"
            if kind == "scalar":
                self.need(at, detail, detail, what)
            elif kind == "string":
                self.string(self.offset(at, what), what)
            elif kind == "table":
                self.table(self.offset(at, what), detail, depth + 1)
            elif kind == "scalars":
                self.vector(at, detail, what)
            elif kind == "strings":
                for target in self.targets(at, what):
                    self.string(target, what)
            elif kind == "tables":
                for target in self.targets(at, what):
                    self.table(target, detail, depth + 1)
            else:  # union: its type lives in another slot
                type_at = present.get(field[4])
                member = UNIONS[detail].get(_U8.unpack_from(buf, type_at[0])[0]) if type_at else None
                if member is not None:
                    self.table(self.offset(at, what), member, depth + 1)
        if name == "Buffer":
            self.external_data(present)

    def external_data(self, present: dict[int, tuple[int, tuple[Any, ...]]]) -> None:
        # Models over 2 GB keep buffer contents after the flatbuffer, located by
        # offset/size (slots 6 and 8); the backend reads there unchecked.
        if 6 in present:
            start = _U64.unpack_from(self.buf, present[6][0])[0]
            length = _U64.unpack_from(self.buf, present[8][0])[0] if 8 in present else 0
            if start > 1 and start + length > self.size:
                raise _Invalid(f"Buffer data at offset {start} (+{length}) lies outside the "
                               f"{self.size}-byte model")


def verify_model(data: bytes) -> int:
    """Check that ``data`` is a valid TFLite flatbuffer whose indices all name something.

    Returns the number of distinct tables verified (each once, however many
    references point at it: the verifier's work is bounded by the model's size).

    Raises:
        InvalidModelError: naming the first structure found outside the
            buffer, misaligned, or malformed, or the first index (tensor,
            buffer, operator code, subgraph) that names nothing.
    """
    if len(data) > _MAX_BUFFER:
        raise InvalidModelError(f"model: expected at most {_MAX_BUFFER} bytes, got {len(data)}")
    verifier = _Verifier(data)
    try:
        verifier.table(verifier.offset(0, "root table"), "Model", 0)
    except _Invalid as e:
        raise InvalidModelError(f"model is not a valid TFLite flatbuffer: {e}") from None
    try:
        check_references(data)
    except BrokenReference as e:
        raise InvalidModelError(f"model refers to something it does not have: {e}") from None
    return len(verifier.seen)
