"""Decode a .tflite flatbuffer into a plain tree, edit it, encode it back.

For the tools that make hostile models and fuzz swaps: editing a field the
converter left out (a default value) or changing a vector's length needs a
re-encode, not a byte patch.  Driven by the schema table the library's
verifier uses (tflite_hotswap.safety._tflite_schema), so no TensorFlow is
needed; encoding needs the ``flatbuffers`` package (ai-edge-litert's
environment has it).

A table decodes to a dict: ``"_type"`` its table name, then one entry per field
present: scalar -> raw little-endian bytes; string -> bytes; table -> dict;
scalars -> ``Vec(elem_size, bytes)``; strings -> list of bytes; tables -> list
of dicts; union -> dict (its type stays in its own scalar field).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from tflite_hotswap.safety._tflite_schema import TABLES, UNIONS

_U8, _U16, _U32, _I32 = (struct.Struct(f) for f in ("<B", "<H", "<I", "<i"))


@dataclass
class Vec:
    """A vector of scalars: element size and raw bytes."""

    size: int
    raw: bytes

    def ints(self) -> list[int]:
        fmt = {1: "b", 2: "h", 4: "i", 8: "q"}[self.size]
        return list(struct.unpack(f"<{len(self.raw) // self.size}{fmt}", self.raw))

    @classmethod
    def of_ints(cls, size: int, values: list[int]) -> Vec:
        fmt = {1: "b", 2: "h", 4: "i", 8: "q"}[size]
        return cls(size, struct.pack(f"<{len(values)}{fmt}", *values))


def field(table: str, name: str) -> tuple[Any, ...]:
    return next(f for f in TABLES[table] if f[1] == name)


def decode(data: bytes) -> dict[str, Any]:
    buf = memoryview(data)

    def vector(at: int) -> tuple[int, int]:
        start = at + _U32.unpack_from(buf, at)[0]
        return start + 4, _U32.unpack_from(buf, start)[0]

    def string(at: int) -> bytes:
        first, n = vector(at)
        return bytes(buf[first:first + n])

    def table(pos: int, name: str) -> dict[str, Any]:
        vt = pos - _I32.unpack_from(buf, pos)[0]
        vsize = _U16.unpack_from(buf, vt)[0]
        node: dict[str, Any] = {"_type": name}
        present = {}
        for f in TABLES[name]:
            if f[0] < vsize and (rel := _U16.unpack_from(buf, vt + f[0])[0]):
                present[f[0]] = pos + rel
        for f in TABLES[name]:
            if f[0] not in present:
                continue
            at, kind, detail = present[f[0]], f[2], f[3]
            if kind == "scalar":
                node[f[1]] = bytes(buf[at:at + detail])
            elif kind == "string":
                node[f[1]] = string(at)
            elif kind == "table":
                node[f[1]] = table(at + _U32.unpack_from(buf, at)[0], detail)
            elif kind == "scalars":
                first, n = vector(at)
                node[f[1]] = Vec(detail, bytes(buf[first:first + n * detail]))
            elif kind in ("strings", "tables"):
                first, n = vector(at)
                items = [first + 4 * i + _U32.unpack_from(buf, first + 4 * i)[0] for i in range(n)]
                node[f[1]] = ([bytes(buf[p + 4:p + 4 + _U32.unpack_from(buf, p)[0]]) for p in items]
                              if kind == "strings" else [table(p, detail) for p in items])
            else:
                type_at = present.get(f[4])
                member = UNIONS[detail].get(buf[type_at]) if type_at is not None else None
                if member:
                    node[f[1]] = table(at + _U32.unpack_from(buf, at)[0], member)
        return node

    return table(_U32.unpack_from(buf, 0)[0], "Model")


def encode(model: dict[str, Any]) -> bytes:
    import flatbuffers

    b = flatbuffers.Builder(1024)
    b.ForceDefaults(True)

    def raw_vector(vec: Vec, align: int) -> int:
        b.StartVector(vec.size, len(vec.raw) // vec.size, align)
        b.head -= len(vec.raw)
        b.Bytes[b.head:b.head + len(vec.raw)] = vec.raw
        return int(b.EndVector(len(vec.raw) // vec.size))

    def offsets(items: list[int]) -> int:
        b.StartVector(4, len(items), 4)
        for off in reversed(items):
            b.PrependUOffsetTRelative(off)
        return int(b.EndVector(len(items)))

    done: dict[int, int] = {}  # id(node) -> offset: one node listed twice is one table

    def table(node: dict[str, Any]) -> int:
        if id(node) in done:
            return done[id(node)]
        done[id(node)] = offset = build(node)
        return offset

    def build(node: dict[str, Any]) -> int:
        name = node["_type"]
        built: dict[int, int] = {}
        for f in TABLES[name]:
            if f[1] not in node or f[2] == "scalar":
                continue
            value, kind = node[f[1]], f[2]
            if kind == "string":
                built[f[0]] = b.CreateString(value)
            elif kind in ("table", "union"):
                built[f[0]] = table(value)
            elif kind == "scalars":
                # Buffer data 16-byte aligned, as the converter writes it.
                built[f[0]] = raw_vector(value, 16 if name == "Buffer" else max(value.size, 4))
            elif kind == "strings":
                built[f[0]] = offsets([b.CreateString(s) for s in value])
            else:
                built[f[0]] = offsets([table(t) for t in value])
        b.StartObject(max((f[0] - 4) // 2 + 1 for f in TABLES[name]) if TABLES[name] else 0)
        for f in sorted(TABLES[name], key=lambda f: -(f[3] if f[2] == "scalar" else 4)):
            slot = (f[0] - 4) // 2
            if f[0] in built:
                b.PrependUOffsetTRelativeSlot(slot, built[f[0]], 0)
            elif f[2] == "scalar" and f[1] in node:
                raw = node[f[1]]
                value = int.from_bytes(raw, "little")
                {1: b.PrependUint8Slot, 2: b.PrependUint16Slot, 4: b.PrependUint32Slot,
                 8: b.PrependUint64Slot}[len(raw)](slot, value, value ^ 1)
        return int(b.EndObject())

    b.Finish(table(model), file_identifier=b"TFL3")
    return bytes(b.Output())


def i32(value: int) -> bytes:
    return _I32.pack(value)


def u32(value: int) -> bytes:
    return _U32.pack(value)
