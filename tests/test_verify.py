"""The structural verifier's walk (``_verify.h``): every fault it words, its limits, and the GIL.

Each fault is made in a minimal TFLite flatbuffer built byte by byte here, so
that the position in each message is known.  Mutated real models come from
hypothesis: the verifier must accept or refuse each with InvalidModelError,
never crash or read outside the model (this file also runs under ASan).
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from conftest import model_bytes
from fuzzing import FUZZ
from gil_probe import another_thread_runs_during
from hypothesis import given, strategies as st

from tflite_hotswap import InvalidModelError
from tflite_hotswap._verify import Schema, verify
from tflite_hotswap.safety.verify import schema_arrays, verify_model

BUFFER_VTABLE = 36  # where _model puts the Buffer tables' shared vtable


def _model(n_buffers: int = 1, *, one_table: bool = False, description: bytes = b"ok") -> bytearray:
    """A Model whose fields are Description (slot 10) and Buffers (slot 12), each Buffer table empty.

    0: root offset (24), 4: "TFL3", 8: the Model's vtable, 24: the Model
    table, 36: the Buffers' shared vtable, 40: the Buffers vector (count, then
    an offset per entry), then the Buffer tables (one only if ``one_table``:
    every entry points at it), then the Description string.
    """
    tables = 1 if one_table else n_buffers
    first_table = 44 + 4 * n_buffers
    string = first_table + 4 * tables
    out = bytearray()
    out += struct.pack("<I4s", 24, b"TFL3")
    out += struct.pack("<7H2x", 14, 12, 0, 0, 0, 8, 4)  # vtable: size, table size, slots 4..12
    out += struct.pack("<iII", 24 - 8, 40 - 28, string - 32)  # Model: soffset, Buffers, Description
    out += struct.pack("<2H", 4, 4)  # Buffer vtable: no fields
    out += struct.pack("<I", n_buffers)
    out += b"".join(struct.pack("<I", first_table + 4 * (0 if one_table else i) - (44 + 4 * i))
                    for i in range(n_buffers))
    out += b"".join(struct.pack("<i", first_table + 4 * j - BUFFER_VTABLE) for j in range(tables))
    out += struct.pack("<I", len(description)) + description + b"\0"
    out += b"\0" * (-len(out) % 4)
    return out


def _model_with_external_data(offset: int, size: int) -> bytes:
    """One Buffer table whose Offset (slot 6) and Size (slot 8) say where its data lies.

    Buffer vtable at 32, the vector at 44, the Buffer table at 56 with the two
    uint64 fields at 64 and 72: an 80-byte model.
    """
    out = bytearray(struct.pack("<I4s", 24, b"TFL3"))
    out += struct.pack("<7H2x", 14, 8, 0, 0, 0, 0, 4)  # Model: Buffers only
    out += struct.pack("<iI", 24 - 8, 44 - 28)
    out += struct.pack("<5H2x", 10, 24, 0, 8, 16)  # Buffer vtable at 32: Data absent, Offset, Size
    out += struct.pack("<II4x", 1, 56 - 48)  # the vector at 44, then padding
    out += struct.pack("<i4xQQ", 56 - 32, offset, size)
    assert len(out) == 80
    return bytes(out)


def _set(data: bytearray, at: int, fmt: str, value: int) -> bytes:
    struct.pack_into(fmt, data, at, value)
    return bytes(data)


def _refused(data: bytes, message: str) -> None:
    with pytest.raises(InvalidModelError) as caught:
        verify_model(data)
    assert str(caught.value) == f"model is not a valid TFLite flatbuffer: {message}"


def test_a_well_formed_model_is_walked_table_by_table():
    assert verify_model(bytes(_model(3))) == 4  # the Model and three Buffers
    assert verify_model(bytes(_model(1000, one_table=True))) == 2  # each table once
    assert verify_model(_model_with_external_data(60, 20)) == 2  # data up to the model's end


def test_each_fault_is_named_where_it_lies():
    model = _model(2)  # 68 bytes: tables at 52 and 56, the string at 60
    size = len(model)
    _refused(bytes(model[:-3]), f"Model.Description terminator at byte 64 (+3) lies outside the {size - 3}-byte model")
    _refused(_set(_model(2), 0, "<I", 0), "root table at byte 0 has offset 0; expected 1 to 2**31-1")
    _refused(_set(_model(2), 0, "<I", 25), "Model at byte 25 is not 4-byte aligned")
    _refused(_set(_model(2), 40, "<I", 2**31 - 1), "Model.Buffers at byte 40 claims 2147483647 elements")
    _refused(_set(_model(2), 48, "<I", 4_000_000_000),
             f"Model.Buffers[1] at byte 48 has offset 4000000000; expected one that points inside the "
             f"{size}-byte model")
    _refused(_set(_model(2), 66, "<B", ord("!")), "Model.Description at byte 64 is not NUL-terminated")
    _refused(_set(_model(2), BUFFER_VTABLE, "<H", 3), "Buffer at byte 52: vtable size 3; expected an even size >= 4")
    _refused(_set(_model(2), 8, "<H", 100), f"Model vtable at byte 8 (+100) lies outside the {size}-byte model")
    _refused(_model_with_external_data(70, 20), "Buffer data at offset 70 (+20) lies outside the 80-byte model")
    _refused(_model_with_external_data(2**64 - 8, 16),
             f"Buffer data at offset {2**64 - 8} (+16) lies outside the 80-byte model")


def test_a_million_tables_is_the_limit():
    assert verify_model(bytes(_model(999_999))) == 1_000_000
    with pytest.raises(InvalidModelError, match="nesting deeper than 64 or more than 1000000 tables"):
        verify_model(bytes(_model(1_000_000)))


def test_indices_that_name_nothing_are_worded_as_before():
    with pytest.raises(InvalidModelError, match=r"^model refers to something it does not have: subgraph 0 "
                       r"operator 1 WhileOptions.BodySubgraphIndex\[0\] is 3; expected a subgraph index 0 to 0$"):
        verify_model(model_bytes("hostile_while_missing_subgraph"))


def test_the_walk_releases_the_gil():
    data = bytes(_model(900_000))  # milliseconds of walking
    assert another_thread_runs_during(lambda: lambda: verify_model(data))


SEEDS = ["version_1", "multi_io", "while_positive", "trainable_linear", "quant_uint8", "image_small_uint8"]


@FUZZ
@given(name=st.sampled_from(SEEDS), cut=st.one_of(st.none(), st.integers(0, 1 << 16)),
       edits=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=8))
def test_mutated_models_are_accepted_or_refused_never_misread(name, cut, edits):
    data = bytearray(model_bytes(name))
    for at, value in edits:
        data[at % len(data)] = value
    if cut is not None:
        del data[cut % len(data):]
    try:
        assert verify_model(bytes(data)) >= 1
    except InvalidModelError as e:
        assert str(e).startswith(("model is not a valid TFLite flatbuffer: ",
                                  "model refers to something it does not have: "))


def test_a_schema_that_names_what_does_not_exist_is_refused_before_any_walk():
    """The walk trusts the compiled schema: each of its indices is checked once, at import."""
    good = schema_arrays()  # fields, table_first, union_first, union_members, ids
    Schema(*good)
    fields = np.frombuffer(good[0], np.int32).reshape(-1, 5).copy()
    for kind, column, value in ((5, 2, 10_000), (5, 1, 9), (5, 0, 3), (0, 2, 0)):
        bad = fields.copy()  # a table id, a kind, an odd slot; a scalar of size 0 (its alignment)
        bad[np.argmax(bad[:, 1] == kind), column] = value  # the first field of that kind
        with pytest.raises(ValueError, match="schema"):
            Schema(bad.tobytes(), *good[1:])
    members = np.frombuffer(good[3], np.int32).copy()
    members[0] = 10_000
    with pytest.raises(ValueError, match="names no table"):
        Schema(good[0], good[1], good[2], members.tobytes(), good[4])
    made = Schema(*good)
    with pytest.raises(TypeError, match="already made"):
        made.__init__(*good)  # a walk without the GIL may be reading its arrays
    with pytest.raises(ValueError, match="never ran"):
        verify(model_bytes("tiny_f32"), Schema.__new__(Schema))
    with pytest.raises(TypeError):
        verify(bytearray(model_bytes("tiny_f32")), made)  # mutable: could change under the walk


def test_external_data_that_wraps_around_is_refused():
    """offset + size wraps to the model's length in uint64: TFLite's own check passes, and both
    backends then read 2**40 bytes before the model (found by review; segfaulted them)."""
    data = model_bytes("hostile_large_custom_options_wrap")
    offset = 2**64 - 2**40
    _refused(data, f"Operator large custom options at offset {offset} (+{(len(data) - offset) % 2**64}) "
                   f"lies outside the {len(data)}-byte model")


@pytest.mark.parametrize("name", ["hostile_shared_operator", "hostile_shared_signature"])
def test_shared_tables_cannot_make_the_index_checks_quadratic(name):
    """4,000 references to one table of 4,000 indices: 16 million checks in a 33 KB model (a 4 MB
    one ran for minutes).  The checks stop at 4 per byte of the model, 16x what it needs unshared."""
    data = model_bytes(name)
    _refused(data, "its tables are shared by so many references that checking their indices would "
                   f"read more than {4 * len(data) + 4096} of them (4 per byte of the model)")
