# cython: language_level=3, boundscheck=False, wraparound=False
"""The flatbuffer verifier's walk, in C with the GIL released (``_verify.h``).

tflite_hotswap.safety.verify compiles the TFLite schema into a :class:`Schema`
once, calls :func:`verify` for each model and words the fault it reports.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport int32_t, int64_t, uint8_t

cdef extern from "_verify.h":
    enum: HS_F_COLUMNS
    enum:
        HS_F_SLOT
        HS_F_KIND
        HS_F_DETAIL
        HS_SCALAR
        HS_SCALARS
        HS_TABLE
        HS_TABLES
        HS_UNION
    const int64_t HS_MAX_BUFFER
    enum: HS_MAX_FIELDS
    enum: HS_MAX_DEPTH
    enum: HS_MAX_TABLES
    enum: HS_REFERENCE_READS_PER_BYTE
    enum:
        HS_V_OUTSIDE
        HS_V_MISALIGNED
        HS_V_OFFSET
        HS_V_CLAIMS
        HS_V_NO_NUL
        HS_V_TARGET
        HS_V_TOO_MANY
        HS_V_VTABLE_SIZE
        HS_V_EXTERNAL
        HS_V_NO_MEMORY
        HS_V_REFERENCE
        HS_V_SHARED
    ctypedef struct hs_verify_error:
        int code
        int32_t table
        int32_t field
        int32_t suffix
        int64_t v[7]
    ctypedef struct hs_schema:
        const int32_t* fields
        const int32_t* table_first
        const int32_t* union_first
        const int32_t* union_members
        int32_t n_tables, n_unions
        int32_t model
        int32_t external[2][3]
        int32_t model_opcodes, model_buffers, model_subgraphs, model_signatures
        int32_t subgraph_tensors, subgraph_inputs, subgraph_outputs, subgraph_operators
        int32_t tensor_buffer
        int32_t op_opcode, op_inputs, op_outputs, op_intermediates
        int32_t op_options_type[2]
        int32_t op_options[2]
        int32_t options_union[2]
        int32_t signature_subgraph, signature_inputs, signature_outputs, tensor_map_index
    int64_t hs_verify_structure(const hs_schema* schema, const uint8_t* buf, int64_t size,
                                hs_verify_error* err) noexcept nogil
    int hs_verify_references(const hs_schema* schema, const uint8_t* buf, int64_t size,
                             hs_verify_error* err) noexcept nogil

FIELD_COLUMNS = HS_F_COLUMNS
MAX_DEPTH = HS_MAX_DEPTH
MAX_TABLES = HS_MAX_TABLES
MAX_BUFFER = HS_MAX_BUFFER
REFERENCE_READS_PER_BYTE = HS_REFERENCE_READS_PER_BYTE
# The faults verify() reports, as its tuples' first item.
OUTSIDE, MISALIGNED, OFFSET, CLAIMS, NO_NUL, TARGET = (
    HS_V_OUTSIDE, HS_V_MISALIGNED, HS_V_OFFSET, HS_V_CLAIMS, HS_V_NO_NUL, HS_V_TARGET)
TOO_MANY, VTABLE_SIZE, EXTERNAL, NO_MEMORY, REFERENCE, SHARED = (
    HS_V_TOO_MANY, HS_V_VTABLE_SIZE, HS_V_EXTERNAL, HS_V_NO_MEMORY, HS_V_REFERENCE, HS_V_SHARED)


cdef const int32_t* _ints(bytes data):
    return <const int32_t*><const char*>data


cdef class Schema:
    """The TFLite layout as the walk reads it: int32 arrays (native byte order) and named ids.

    ``fields``: HS_F_COLUMNS ints per field; ``table_first``: n_tables + 1
    indices into the fields; ``union_first``: n_unions + 1 indices into
    ``union_members`` (a table id per type id, -1 for none); ``ids``: every
    table id and vtable slot that ``hs_schema`` names, by its field name
    (the pairs ``op_options_type``, ``op_options`` and ``options_union`` as
    two-item sequences, and ``external`` as two (table, offset slot, size
    slot) triples).  Made once: a second ``__init__`` is refused, so no walk
    ever sees the arrays change under it.
    """

    cdef hs_schema schema
    cdef tuple _keep  # the arrays the schema points into
    cdef bint ready

    def __init__(self, bytes fields not None, bytes table_first not None, bytes union_first not None,
                 bytes union_members not None, dict ids not None):
        if self.ready:
            raise TypeError("schema: already made")
        # The walk trusts these arrays as it trusts nothing in a model: every
        # index in them is checked here, once, before any is kept.
        cdef Py_ssize_t n_tables = len(table_first) // 4 - 1, n_unions = len(union_first) // 4 - 1
        cdef const int32_t* firsts = _ints(table_first)
        cdef const int32_t* members = _ints(union_first)
        cdef const int32_t* field
        cdef Py_ssize_t t, f
        if (n_tables < 1 or n_tables >= 0xffff or n_unions < 1 or firsts[0] != 0 or members[0] != 0
                or len(fields) != 4 * HS_F_COLUMNS * firsts[n_tables] or len(union_members) != 4 * members[n_unions]):
            raise ValueError("schema: the arrays disagree in size")
        for t in range(n_tables):
            if not 0 <= firsts[t + 1] - firsts[t] <= HS_MAX_FIELDS:
                raise ValueError(f"schema: table {t} has more than {HS_MAX_FIELDS} fields")
        for t in range(n_unions):
            if members[t + 1] < members[t]:
                raise ValueError(f"schema: union {t} has a negative number of members")
        for t in range(members[n_unions]):
            if not -1 <= _ints(union_members)[t] < n_tables:
                raise ValueError(f"schema: union member {t} names no table")
        for f in range(firsts[n_tables]):
            field = &_ints(fields)[f * HS_F_COLUMNS]
            kind, detail = field[HS_F_KIND], field[HS_F_DETAIL]
            sized = kind in (HS_SCALAR, HS_SCALARS)  # the size is also the alignment: 1, 2, 4 or 8
            limit = {HS_TABLE: n_tables, HS_TABLES: n_tables, HS_UNION: n_unions}.get(kind, 9)
            if (field[HS_F_SLOT] < 4 or field[HS_F_SLOT] % 2 or not HS_SCALAR <= kind <= HS_UNION
                    or not 0 <= detail < limit or (sized and detail not in (1, 2, 4, 8))):
                raise ValueError(f"schema: field {f} is malformed")
        self._keep = (fields, table_first, union_first, union_members)
        self.schema.fields = _ints(fields)
        self.schema.table_first = firsts
        self.schema.union_first = members
        self.schema.union_members = _ints(union_members)
        self.schema.n_tables = <int32_t>n_tables
        self.schema.n_unions = <int32_t>n_unions
        s = &self.schema
        s.model = ids["model"]
        for t in range(2):
            s.external[t][0], s.external[t][1], s.external[t][2] = ids["external"][t]
            if not 0 <= s.external[t][0] < n_tables:
                raise ValueError("schema: external names no table")
        (s.model_opcodes, s.model_buffers, s.model_subgraphs, s.model_signatures) = (
            ids["model_opcodes"], ids["model_buffers"], ids["model_subgraphs"], ids["model_signatures"])
        (s.subgraph_tensors, s.subgraph_inputs, s.subgraph_outputs, s.subgraph_operators) = (
            ids["subgraph_tensors"], ids["subgraph_inputs"], ids["subgraph_outputs"], ids["subgraph_operators"])
        s.tensor_buffer = ids["tensor_buffer"]
        (s.op_opcode, s.op_inputs, s.op_outputs, s.op_intermediates) = (
            ids["op_opcode"], ids["op_inputs"], ids["op_outputs"], ids["op_intermediates"])
        for t in range(2):
            s.op_options_type[t] = ids["op_options_type"][t]
            s.op_options[t] = ids["op_options"][t]
            s.options_union[t] = ids["options_union"][t]
            if not 0 <= s.options_union[t] < n_unions:
                raise ValueError("schema: options_union names no union")
        (s.signature_subgraph, s.signature_inputs, s.signature_outputs, s.tensor_map_index) = (
            ids["signature_subgraph"], ids["signature_inputs"], ids["signature_outputs"], ids["tensor_map_index"])
        if not 0 <= s.model < n_tables:
            raise ValueError("schema: model names no table")
        self.ready = True


def verify(object data, Schema schema not None):
    """Walk ``data`` (structure, then references) with the GIL released.

    ``bytes`` only: the walk reads some values twice (checked, then used), so
    the buffer must not change while the GIL is released.

    Returns the number of distinct tables walked, or the first fault as a
    tuple ``(code, table, field, suffix, v0, ..., v6)`` (``_verify.h``).
    """
    cdef hs_verify_error err
    cdef int64_t count
    if not isinstance(data, bytes):  # subclasses too (MappedBytes): immutable all the same
        raise TypeError(f"data: expected bytes, got {type(data).__name__}")
    cdef const uint8_t* buf = <const uint8_t*>PyBytes_AS_STRING(data)
    cdef int64_t size = PyBytes_GET_SIZE(data)
    if not schema.ready:
        raise ValueError("schema: not made (Schema.__init__ never ran)")
    with nogil:
        count = hs_verify_structure(&schema.schema, buf, size, &err)
        if count >= 0 and hs_verify_references(&schema.schema, buf, size, &err) != 0:
            count = -1
    if count >= 0:
        return count
    return (err.code, err.table, err.field, err.suffix) + tuple(err.v[i] for i in range(7))
