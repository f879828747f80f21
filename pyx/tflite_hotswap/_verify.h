/* Structural verification of a TFLite flatbuffer, with the GIL released.
 *
 * A swap verifies every new model before any backend reads it.  Written in
 * Python, that walk held the GIL for 0.6-3 ms per model (longer for models
 * of many tables), and the serving loop beside the swap waited for it.  Here
 * it runs in C, called without the GIL.
 *
 * Two passes, both driven by the schema that tflite_hotswap.safety.verify
 * compiles from the generated TFLite layout (_tflite_schema.py):
 *
 * hs_verify_structure walks every table, vector and string the schema defines
 * with the checks of flatbuffers' own Verifier (bounds, alignment, vtable
 * sizes, string terminators, nesting depth) plus the external offset/size
 * pairs the schema cannot express (a Buffer's data, an Operator's large custom
 * options: the backends read base + offset unchecked, and TFLite's own guard
 * wraps around in uint64).  Each table
 * position is walked once per type (a set of the positions seen), so the work
 * is linear in the model's size however many references point at one table.
 *
 * hs_verify_references then checks, on a model the walk accepted (so every
 * field it reads lies inside the model), that every index names something
 * that exists: tensors, buffers, operator codes, subgraphs.  Tables shared
 * by many references are checked at each one, so its work is bounded: a
 * budget of HS_REFERENCE_READS_PER_BYTE indices per byte of the model, which
 * a model without shared tables needs a sixteenth of.
 *
 * Either reports its first fault in an hs_verify_error; the Python side turns
 * it into the message.  Every integer is widened to int64_t before any
 * arithmetic: positions, offsets and lengths are at most 2**32 each.
 */
#ifndef TFLITE_HOTSWAP_VERIFY_H
#define TFLITE_HOTSWAP_VERIFY_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define HS_MAX_BUFFER ((int64_t)2147483647) /* 2**31 - 1: flatbuffers' limit */
#define HS_MAX_DEPTH 64
#define HS_MAX_TABLES 1000000
#define HS_MAX_FIELDS 64 /* per table; TFLite's largest has 16 */
#define HS_REFERENCE_READS_PER_BYTE 4

/* Field kinds (the order of tflite_hotswap.safety.verify.KINDS). */
enum { HS_SCALAR, HS_STRING, HS_TABLE, HS_SCALARS, HS_STRINGS, HS_TABLES, HS_UNION };
/* Columns of a field record: vtable slot, kind, detail (size, table id or
 * union id), slot of a union's type field (-1), and whether the field names
 * a subgraph (control-flow options). */
enum { HS_F_SLOT, HS_F_KIND, HS_F_DETAIL, HS_F_TYPE_SLOT, HS_F_SUBGRAPH, HS_F_COLUMNS };

/* What went wrong.  The meaning of v[] per code is in safety/verify.py. */
enum {
    HS_V_OK = 0,
    HS_V_OUTSIDE,     /* what at byte v0 (+v1) lies outside */
    HS_V_MISALIGNED,  /* what at byte v0 is not v1-byte aligned */
    HS_V_OFFSET,      /* what at byte v0 has offset v1 */
    HS_V_CLAIMS,      /* what at byte v0 claims v1 elements */
    HS_V_NO_NUL,      /* what at byte v0 is not NUL-terminated */
    HS_V_TARGET,      /* what[v0] at byte v1 has offset v2 that points outside */
    HS_V_TOO_MANY,    /* table at byte v0: nested too deep, or too many tables */
    HS_V_VTABLE_SIZE, /* table at byte v0 has vtable size v1 */
    HS_V_EXTERNAL,    /* table's external data at offset v0 (+v1) lies outside */
    HS_V_NO_MEMORY,
    HS_V_REFERENCE,   /* an index that names nothing: v[] as in hs_in_range */
    HS_V_SHARED,      /* the references pass would read more than v0 indices */
};
/* Suffixes of "what" (the order of verify.SUFFIXES). */
enum { HS_W_NONE, HS_W_VTABLE, HS_W_LENGTH, HS_W_TERMINATOR };

typedef struct {
    int code;
    int32_t table;  /* -1: the root table's offset */
    int32_t field;  /* global field index, -1: the table itself */
    int32_t suffix;
    int64_t v[7];
} hs_verify_error;

/* The kinds of index hs_verify_references checks (the order of verify.REFERENCES). */
enum {
    HS_R_TENSOR_BUFFER, HS_R_SUBGRAPH_INPUTS, HS_R_SUBGRAPH_OUTPUTS, HS_R_OPCODE,
    HS_R_OP_INPUTS, HS_R_OP_OUTPUTS, HS_R_OP_INTERMEDIATES, HS_R_OPTION,
    HS_R_SIGNATURE_SUBGRAPH, HS_R_SIGNATURE_TENSOR,
};

typedef struct {
    const int32_t* fields;        /* HS_F_COLUMNS ints per field */
    const int32_t* table_first;   /* table t's fields: table_first[t] .. table_first[t + 1] - 1 */
    const int32_t* union_first;   /* union u's member for type id k: union_members[union_first[u] + k] */
    const int32_t* union_members; /* table id, or -1 */
    int32_t n_tables, n_unions;
    /* Table ids and vtable slots both passes need, looked up by name in Python. */
    int32_t model;
    int32_t external[2][3]; /* (table, offset slot, size slot): Buffer data, Operator large custom options */
    int32_t model_opcodes, model_buffers, model_subgraphs, model_signatures;
    int32_t subgraph_tensors, subgraph_inputs, subgraph_outputs, subgraph_operators;
    int32_t tensor_buffer;
    int32_t op_opcode, op_inputs, op_outputs, op_intermediates;
    int32_t op_options_type[2], op_options[2], options_union[2];
    int32_t signature_subgraph, signature_inputs, signature_outputs, tensor_map_index;
} hs_schema;

/* ---------------------------------------------------------------- reading */

static inline int64_t hs_u8(const uint8_t* b, int64_t at) { return b[at]; }
static inline int64_t hs_u16(const uint8_t* b, int64_t at) { return (int64_t)b[at] | (int64_t)b[at + 1] << 8; }
static inline int64_t hs_u32(const uint8_t* b, int64_t at) {
    return (int64_t)((uint32_t)b[at] | (uint32_t)b[at + 1] << 8 | (uint32_t)b[at + 2] << 16 |
                     (uint32_t)b[at + 3] << 24);
}
static inline int64_t hs_i32(const uint8_t* b, int64_t at) { return (int64_t)(int32_t)(uint32_t)hs_u32(b, at); }
static inline uint64_t hs_u64(const uint8_t* b, int64_t at) {
    return (uint64_t)hs_u32(b, at) | (uint64_t)hs_u32(b, at + 4) << 32;
}

/* -------------------------------------------------- the set of tables seen */

typedef struct {
    uint64_t* keys; /* 0: empty; else (position << 16 | table id + 1) */
    size_t capacity, count;
} hs_seen;

static inline size_t hs_seen_hash(uint64_t key, size_t capacity) {
    return (size_t)((key * 0x9E3779B97F4A7C15ull) >> 17) & (capacity - 1);
}

/* 1: added, 0: there already, -1: out of memory. */
static int hs_seen_add(hs_seen* s, int64_t pos, int32_t table) {
    uint64_t key = (uint64_t)pos << 16 | (uint64_t)(table + 1);
    if (2 * (s->count + 1) > s->capacity) {
        size_t capacity = s->capacity ? 2 * s->capacity : 1024;
        uint64_t* keys = (uint64_t*)calloc(capacity, sizeof(uint64_t));
        if (keys == NULL) return -1;
        for (size_t i = 0; i < s->capacity; i++) {
            if (s->keys[i] == 0) continue;
            size_t j = hs_seen_hash(s->keys[i], capacity);
            while (keys[j]) j = (j + 1) & (capacity - 1);
            keys[j] = s->keys[i];
        }
        free(s->keys);
        s->keys = keys;
        s->capacity = capacity;
    }
    size_t j = hs_seen_hash(key, s->capacity);
    while (s->keys[j]) {
        if (s->keys[j] == key) return 0;
        j = (j + 1) & (s->capacity - 1);
    }
    s->keys[j] = key;
    s->count++;
    return 1;
}

/* ---------------------------------------------------------- the walk */

typedef struct {
    const hs_schema* schema;
    const uint8_t* buf;
    int64_t size;
    hs_seen seen;
    hs_verify_error* err;
} hs_walk;

typedef struct { int32_t table, field, suffix; } hs_what;

static int hs_fail(hs_walk* w, int code, hs_what what, int64_t v0, int64_t v1, int64_t v2) {
    hs_verify_error* e = w->err;
    e->code = code;
    e->table = what.table;
    e->field = what.field;
    e->suffix = what.suffix;
    e->v[0] = v0;
    e->v[1] = v1;
    e->v[2] = v2;
    return -1;
}

static inline hs_what hs_with(hs_what what, int32_t suffix) {
    what.suffix = suffix;
    return what;
}

static int hs_need(hs_walk* w, int64_t pos, int64_t length, int64_t align, hs_what what) {
    if (pos < 0 || length < 0 || pos + length > w->size) return hs_fail(w, HS_V_OUTSIDE, what, pos, length, 0);
    if (pos % align) return hs_fail(w, HS_V_MISALIGNED, what, pos, align, 0);
    return 0;
}

/* Follow the uoffset stored at `at`: its target, or -1. */
static int64_t hs_offset(hs_walk* w, int64_t at, hs_what what) {
    if (hs_need(w, at, 4, 4, what)) return -1;
    int64_t o = hs_u32(w->buf, at);
    if (o == 0 || o >= ((int64_t)1 << 31)) return hs_fail(w, HS_V_OFFSET, what, at, o, 0);
    if (hs_need(w, at + o, 1, 1, what)) return -1;
    return at + o;
}

/* A vector (or string) whose offset is at `at`: its first element and count, or -1. */
static int64_t hs_vector(hs_walk* w, int64_t at, int64_t elem_size, hs_what what, int64_t* count) {
    int64_t start = hs_offset(w, at, what);
    if (start < 0 || hs_need(w, start, 4, 4, hs_with(what, HS_W_LENGTH))) return -1;
    int64_t n = hs_u32(w->buf, start);
    if (n >= HS_MAX_BUFFER / (elem_size > 1 ? elem_size : 1)) return hs_fail(w, HS_V_CLAIMS, what, start, n, 0);
    if (hs_need(w, start + 4, n * elem_size, 1, what)) return -1;
    *count = n;
    return start + 4;
}

/* The string whose length field is at `start`. */
static int hs_string(hs_walk* w, int64_t start, hs_what what) {
    if (hs_need(w, start, 4, 4, hs_with(what, HS_W_LENGTH))) return -1;
    int64_t n = hs_u32(w->buf, start), first = start + 4;
    if (hs_need(w, first, n + 1, 1, hs_with(what, HS_W_TERMINATOR))) return -1;
    if (w->buf[first + n] != 0) return hs_fail(w, HS_V_NO_NUL, what, first, 0, 0);
    return 0;
}

/* A vector of offsets (tables or strings): every entry must point inside the
 * model before any target is walked.  Returns the first entry, or -1. */
static int64_t hs_targets(hs_walk* w, int64_t at, hs_what what, int64_t* count) {
    int64_t first = hs_vector(w, at, 4, what, count);
    if (first < 0) return -1;
    for (int64_t i = 0; i < *count; i++) {
        int64_t pos = first + 4 * i, o = hs_u32(w->buf, pos);
        if (o == 0 || o >= ((int64_t)1 << 31) || pos + o >= w->size) return hs_fail(w, HS_V_TARGET, what, i, pos, o);
    }
    return first;
}

static int hs_table(hs_walk* w, int64_t pos, int32_t table, int depth);

static int hs_fields(hs_walk* w, int64_t pos, int32_t table, int depth, int64_t vtable, int64_t vsize) {
    const hs_schema* s = w->schema;
    int32_t first = s->table_first[table], end = s->table_first[table + 1];
    int64_t present[HS_MAX_FIELDS]; /* a field's position, 0 if absent (the schema is checked for the size) */
    for (int32_t f = first; f < end; f++) {
        int64_t slot = s->fields[f * HS_F_COLUMNS + HS_F_SLOT];
        int64_t rel = slot < vsize ? hs_u16(w->buf, vtable + slot) : 0;
        present[f - first] = rel ? pos + rel : 0;
    }
    for (int32_t f = first; f < end; f++) {
        int64_t at = present[f - first], n, element;
        if (!at) continue;
        const int32_t* field = &s->fields[f * HS_F_COLUMNS];
        int32_t detail = field[HS_F_DETAIL];
        hs_what what = {table, f, HS_W_NONE};
        switch (field[HS_F_KIND]) {
        case HS_SCALAR:
            if (hs_need(w, at, detail, detail, what)) return -1;
            break;
        case HS_STRING:
            if ((element = hs_offset(w, at, what)) < 0 || hs_string(w, element, what)) return -1;
            break;
        case HS_TABLE:
            if ((element = hs_offset(w, at, what)) < 0 || hs_table(w, element, detail, depth + 1)) return -1;
            break;
        case HS_SCALARS:
            if (hs_vector(w, at, detail, what, &n) < 0) return -1;
            break;
        case HS_STRINGS:
        case HS_TABLES:
            if ((element = hs_targets(w, at, what, &n)) < 0) return -1;
            for (int64_t i = 0; i < n; i++) {
                int64_t entry = element + 4 * i, target = entry + hs_u32(w->buf, entry);
                if (field[HS_F_KIND] == HS_STRINGS ? hs_string(w, target, what)
                                                   : hs_table(w, target, detail, depth + 1))
                    return -1;
            }
            break;
        default: { /* HS_UNION: its type lives in another slot, a scalar walked before it */
            int64_t type_at = 0;
            for (int32_t g = first; g < end; g++)
                if (s->fields[g * HS_F_COLUMNS + HS_F_SLOT] == field[HS_F_TYPE_SLOT]) type_at = present[g - first];
            if (!type_at || type_at >= w->size) break;
            int64_t type = hs_u8(w->buf, type_at);
            int32_t members = s->union_first[detail + 1] - s->union_first[detail];
            int32_t member = type < members ? s->union_members[s->union_first[detail] + type] : -1;
            if (member >= 0 && ((element = hs_offset(w, at, what)) < 0 || hs_table(w, element, member, depth + 1)))
                return -1;
        }
        }
    }
    for (int x = 0; x < 2; x++) {
        /* Models over 2 GB keep buffer contents (and large custom options)
         * after the flatbuffer, located by offset/size; the backends read there
         * unchecked.  Both fields are scalars of 8 bytes, walked above. */
        if (table != s->external[x][0]) continue;
        int64_t at_offset = 0, at_size = 0;
        for (int32_t f = first; f < end; f++) {
            if (s->fields[f * HS_F_COLUMNS + HS_F_SLOT] == s->external[x][1]) at_offset = present[f - first];
            if (s->fields[f * HS_F_COLUMNS + HS_F_SLOT] == s->external[x][2]) at_size = present[f - first];
        }
        if (at_offset) {
            uint64_t start = hs_u64(w->buf, at_offset), length = at_size ? hs_u64(w->buf, at_size) : 0;
            if (start > 1 && (length > (uint64_t)w->size || start > (uint64_t)w->size - length))
                /* uint64 values, passed as their bits */
                return hs_fail(w, HS_V_EXTERNAL, (hs_what){table, -1, HS_W_NONE}, (int64_t)start, (int64_t)length, 0);
        }
    }
    return 0;
}

static int hs_table(hs_walk* w, int64_t pos, int32_t table, int depth) {
    hs_what what = {table, -1, HS_W_NONE};
    int added = hs_seen_add(&w->seen, pos, table);
    if (added < 0) return hs_fail(w, HS_V_NO_MEMORY, what, pos, 0, 0);
    if (added == 0) return 0; /* walked already, through another reference */
    if (depth > HS_MAX_DEPTH || w->seen.count > HS_MAX_TABLES) return hs_fail(w, HS_V_TOO_MANY, what, pos, 0, 0);
    if (hs_need(w, pos, 4, 4, what)) return -1;
    int64_t vtable = pos - hs_i32(w->buf, pos);
    if (hs_need(w, vtable, 4, 2, hs_with(what, HS_W_VTABLE))) return -1;
    int64_t vsize = hs_u16(w->buf, vtable);
    if (vsize & 1 || vsize < 4) return hs_fail(w, HS_V_VTABLE_SIZE, what, pos, vsize, 0);
    if (hs_need(w, vtable, vsize, 2, hs_with(what, HS_W_VTABLE))) return -1;
    return hs_fields(w, pos, table, depth, vtable, vsize);
}

/* The number of distinct tables walked, or -1 with *err filled in. */
static int64_t hs_verify_structure(const hs_schema* schema, const uint8_t* buf, int64_t size, hs_verify_error* err) {
    hs_walk w = {schema, buf, size, {NULL, 0, 0}, err};
    memset(err, 0, sizeof(*err));
    int64_t root = hs_offset(&w, 0, (hs_what){-1, -1, HS_W_NONE});
    int failed = root < 0 || hs_table(&w, root, schema->model, 0);
    int64_t count = (int64_t)w.seen.count;
    free(w.seen.keys);
    return failed ? -1 : count;
}

/* ---------------------------------------------------------- references */

/* Read access to a table the walk accepted. */
typedef struct { const uint8_t* buf; int64_t pos, vtable, vsize; } hs_ref_table;

static hs_ref_table hs_ref_open(const uint8_t* buf, int64_t pos) {
    hs_ref_table t = {buf, pos, pos - hs_i32(buf, pos), 0};
    t.vsize = hs_u16(buf, t.vtable);
    return t;
}

static int64_t hs_ref_at(const hs_ref_table* t, int32_t slot) {
    if (slot < 0 || slot >= t->vsize) return 0;
    int64_t rel = hs_u16(t->buf, t->vtable + slot);
    return rel ? t->pos + rel : 0;
}

static int64_t hs_ref_u32(const hs_ref_table* t, int32_t slot) {
    int64_t at = hs_ref_at(t, slot);
    return at ? hs_u32(t->buf, at) : 0;
}

/* A vector field's first element and count (0 when absent). */
static int64_t hs_ref_vector(const hs_ref_table* t, int32_t slot, int64_t* count) {
    int64_t at = hs_ref_at(t, slot);
    *count = 0;
    if (!at) return 0;
    int64_t start = at + hs_u32(t->buf, at);
    *count = hs_u32(t->buf, start);
    return start + 4;
}

static hs_ref_table hs_ref_element(const hs_ref_table* t, int64_t first, int64_t i) {
    int64_t entry = first + 4 * i;
    return hs_ref_open(t->buf, entry + hs_u32(t->buf, entry));
}

typedef struct { hs_verify_error* err; int64_t* budget; int kind; int64_t where, where2; } hs_ref_site;

/* Is `value` (the i-th of its kind) in [low, high)?  v[]: kind, where, where2, i, value, low, high.
 * Each call spends one of the budget's reads. */
static int hs_in_range(const hs_ref_site* site, int64_t i, int64_t value, int64_t low, int64_t high) {
    hs_verify_error* e = site->err;
    if (--*site->budget < 0) {
        e->code = HS_V_SHARED;
        return -1;
    }
    if (value >= low && value < high) return 0;
    e->code = HS_V_REFERENCE;
    int64_t v[7] = {site->kind, site->where, site->where2, i, value, low, high};
    memcpy(e->v, v, sizeof(v));
    return -1;
}

/* Every int32 of a vector field (absent: none) in [low, high). */
static int hs_ints_in_range(const hs_ref_site* site, const hs_ref_table* t, int32_t slot, int64_t low, int64_t high) {
    int64_t n, first = hs_ref_vector(t, slot, &n);
    for (int64_t i = 0; i < n; i++)
        if (hs_in_range(site, i, hs_i32(t->buf, first + 4 * i), low, high)) return -1;
    return 0;
}

static int hs_options(const hs_schema* s, const hs_ref_table* op, int64_t sub, int64_t o, int64_t n_subgraphs,
                      hs_verify_error* err, int64_t* budget) {
    for (int u = 0; u < 2; u++) {
        int64_t type_at = hs_ref_at(op, s->op_options_type[u]), options_at = hs_ref_at(op, s->op_options[u]);
        if (!type_at || !options_at) continue;
        int32_t union_id = s->options_union[u], type = (int32_t)hs_u8(op->buf, type_at);
        if (type >= s->union_first[union_id + 1] - s->union_first[union_id]) continue;
        int32_t member = s->union_members[s->union_first[union_id] + type];
        if (member < 0) continue;
        hs_ref_table options = hs_ref_open(op->buf, options_at + hs_u32(op->buf, options_at));
        for (int32_t f = s->table_first[member]; f < s->table_first[member + 1]; f++) {
            const int32_t* field = &s->fields[f * HS_F_COLUMNS];
            if (!field[HS_F_SUBGRAPH]) continue;
            hs_ref_site site = {err, budget, HS_R_OPTION, sub, o};
            err->table = member;
            err->field = f;
            if (field[HS_F_KIND] == HS_SCALARS) {
                if (hs_ints_in_range(&site, &options, field[HS_F_SLOT], 0, n_subgraphs)) return -1;
            } else {
                int64_t at = hs_ref_at(&options, field[HS_F_SLOT]);
                if (hs_in_range(&site, 0, at ? hs_i32(op->buf, at) : 0, 0, n_subgraphs)) return -1;
            }
        }
    }
    return 0;
}

static int hs_subgraph_references(const hs_schema* s, const hs_ref_table* sub, int64_t index, int64_t n_opcodes,
                                  int64_t n_buffers, int64_t n_subgraphs, hs_verify_error* err, int64_t* budget) {
    int64_t n, first = hs_ref_vector(sub, s->subgraph_tensors, &n), n_ops;
    hs_ref_site site = {err, budget, HS_R_TENSOR_BUFFER, index, 0};
    for (int64_t i = 0; i < n; i++) {
        hs_ref_table tensor = hs_ref_element(sub, first, i);
        if (hs_in_range(&site, i, hs_ref_u32(&tensor, s->tensor_buffer), 0, n_buffers > 1 ? n_buffers : 1)) return -1;
    }
    site.kind = HS_R_SUBGRAPH_INPUTS;
    if (hs_ints_in_range(&site, sub, s->subgraph_inputs, 0, n)) return -1;
    site.kind = HS_R_SUBGRAPH_OUTPUTS;
    if (hs_ints_in_range(&site, sub, s->subgraph_outputs, 0, n)) return -1;
    int64_t ops = hs_ref_vector(sub, s->subgraph_operators, &n_ops);
    for (int64_t o = 0; o < n_ops; o++) {
        hs_ref_table op = hs_ref_element(sub, ops, o);
        hs_ref_site at_op = {err, budget, HS_R_OPCODE, index, o};
        if (hs_in_range(&at_op, 0, hs_ref_u32(&op, s->op_opcode), 0, n_opcodes)) return -1;
        at_op.kind = HS_R_OP_INPUTS; /* -1: an omitted optional input */
        if (hs_ints_in_range(&at_op, &op, s->op_inputs, -1, n)) return -1;
        at_op.kind = HS_R_OP_OUTPUTS;
        if (hs_ints_in_range(&at_op, &op, s->op_outputs, 0, n)) return -1;
        at_op.kind = HS_R_OP_INTERMEDIATES;
        if (hs_ints_in_range(&at_op, &op, s->op_intermediates, 0, n)) return -1;
        if (hs_options(s, &op, index, o, n_subgraphs, err, budget)) return -1;
    }
    return 0;
}

/* 0, or -1 with *err filled in (HS_V_REFERENCE, or HS_V_SHARED with the
 * budget in v[0]).  Only on a model of `size` bytes that hs_verify_structure
 * accepted. */
static int hs_verify_references(const hs_schema* s, const uint8_t* buf, int64_t size, hs_verify_error* err) {
    int64_t budget = HS_REFERENCE_READS_PER_BYTE * size + 4096;
    memset(err, 0, sizeof(*err));
    err->v[0] = budget;
    hs_ref_table model = hs_ref_open(buf, hs_u32(buf, 0));
    int64_t n_opcodes, n_buffers, n_subgraphs, n_signatures;
    hs_ref_vector(&model, s->model_opcodes, &n_opcodes);
    hs_ref_vector(&model, s->model_buffers, &n_buffers);
    int64_t subgraphs = hs_ref_vector(&model, s->model_subgraphs, &n_subgraphs);
    for (int64_t i = 0; i < n_subgraphs; i++) {
        hs_ref_table sub = hs_ref_element(&model, subgraphs, i);
        if (hs_subgraph_references(s, &sub, i, n_opcodes, n_buffers, n_subgraphs, err, &budget)) return -1;
    }
    int64_t signatures = hs_ref_vector(&model, s->model_signatures, &n_signatures);
    for (int64_t g = 0; g < n_signatures; g++) {
        hs_ref_table sig = hs_ref_element(&model, signatures, g);
        int64_t index = hs_ref_u32(&sig, s->signature_subgraph), n_tensors, j = 0;
        hs_ref_site site = {err, &budget, HS_R_SIGNATURE_SUBGRAPH, g, 0};
        if (hs_in_range(&site, 0, index, 0, n_subgraphs)) return -1;
        hs_ref_table sub = hs_ref_element(&model, subgraphs, index);
        hs_ref_vector(&sub, s->subgraph_tensors, &n_tensors);
        site = (hs_ref_site){err, &budget, HS_R_SIGNATURE_TENSOR, g, index};
        int32_t maps[2] = {s->signature_inputs, s->signature_outputs};
        for (int m = 0; m < 2; m++) {
            int64_t n, first = hs_ref_vector(&sig, maps[m], &n);
            for (int64_t i = 0; i < n; i++, j++) {
                hs_ref_table map = hs_ref_element(&sig, first, i);
                if (hs_in_range(&site, j, hs_ref_u32(&map, s->tensor_map_index), 0, n_tensors)) return -1;
            }
        }
    }
    return 0;
}

#endif /* TFLITE_HOTSWAP_VERIFY_H */
