# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Buffer kernels: copy, convert, normalise and quantise straight into tensor memory.

Everything here works on the buffer protocol and raw addresses, built without
numpy's headers, so one build serves numpy 1.x and 2.x.  The per-call path
alone reads small ndarrays' fields and makes output arrays through the few
pieces of numpy's ABI that 1.x and 2.x share (``_numpy_abi.h``): numpy's buffer
export and ``ndarray.copy`` cost more than the tiny model they feed (callgrind:
about 600 and 2,400 instructions per call, against 770 for the invoke).  Where
that ABI is not the known one, the buffer protocol serves.  The Python-level
functions at the bottom expose the same kernels the runtime uses, for tests and
for callers that manage their own buffers.
"""

from cpython.buffer cimport (PyBUF_RECORDS_RO, PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release,
                             PyObject_GetBuffer)
from cpython.bytes cimport PyBytes_AS_STRING
from cpython.ref cimport PyObject
from libc.errno cimport errno
from libc.stdint cimport int8_t, uint8_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp, memcpy

import os

from tflite_hotswap.errors import InputError, UnsupportedModelError

cdef extern from "_buffers_support.h":
    enum: HS_STEP_MAX
    Py_ssize_t hs_affine_bytes(const uint8_t* src, Py_ssize_t n, uint8_t* dst, bint src_signed,
                               bint dst_signed, const float* a, const float* bh, Py_ssize_t m,
                               Py_ssize_t cycle) nogil

cdef extern from "Python.h":
    PyObject* list_item "PyList_GET_ITEM"(object list, Py_ssize_t i) noexcept  # borrowed: no reference taken
    Py_ssize_t refcount "Py_REFCNT"(PyObject* o) noexcept


cdef extern from "_model_bytes.h":
    ctypedef struct PyTypeObject:
        pass
    PyTypeObject hs_mapped_bytes_type
    int hs_mapped_bytes_ready() except -1
    object hs_mapped_bytes_new(Py_ssize_t size)
    Py_ssize_t hs_read_fully(int fd, char* into, Py_ssize_t size) nogil
    void set_size "Py_SET_SIZE"(object o, Py_ssize_t size)

hs_mapped_bytes_ready()
MappedBytes = <object>&hs_mapped_bytes_type  # what mapped_copy and read_mapped return


cdef extern from "_numpy_abi.h":
    const char* HS_NP_LETTERS
    bint hs_np_bind(object capsule, object dtypes)
    bint hs_np_view(object obj, Py_buffer* view, int max_dims, Py_ssize_t max_bytes, bint writable) noexcept
    object hs_np_empty(object descr, int nd, const Py_ssize_t* dims)
    char* hs_np_data(object array) noexcept
    bint hs_np_recyclable(PyObject* array, object descr, const Py_buffer* src) noexcept


cdef bint _bind_numpy():
    try:
        from numpy._core import _multiarray_umath as umath  # numpy 2
    except ImportError:
        from numpy.core import _multiarray_umath as umath  # numpy 1.x
    import numpy
    dtypes = tuple([numpy.dtype(chr(letter)) for letter in (<bytes>HS_NP_LETTERS)])
    return hs_np_bind(getattr(umath, "_ARRAY_API", None), dtypes)


cdef bint numpy_abi = _bind_numpy()


def numpy_abi_bound() -> bool:
    """Whether the per-call path uses numpy's ABI directly (else the buffer protocol and ``copy()``)."""
    return numpy_abi

# Copies at least this big release the GIL; smaller ones would pay more for the
# hand-over (and risk waiting a switch interval to get it back) than they save.
cdef Py_ssize_t NOGIL_BYTES = 64 * 1024

cdef tuple DTYPE_NAMES = ("unknown", "bool", "uint8", "int8", "uint16", "int16", "uint32",
                          "int32", "uint64", "int64", "float16", "float32", "float64",
                          "complex64", "complex128")

cdef int _ONE = 1
cdef bint LITTLE_ENDIAN = (<const char*>&_ONE)[0] == 1


cdef int dtype_code(const char* fmt, Py_ssize_t itemsize) noexcept:
    """Map a buffer-protocol format string to a DType (DT_UNKNOWN if unsupported)."""
    cdef char c
    cdef int code = DT_UNKNOWN
    if fmt == NULL:
        return DT_U8
    if fmt[0] == b'@' or fmt[0] == b'=' or (fmt[0] == b'<' and LITTLE_ENDIAN) \
            or (fmt[0] == b'>' and not LITTLE_ENDIAN):
        fmt += 1
    if fmt[0] == 0:
        return DT_UNKNOWN
    c = fmt[0]
    if c == b'Z':  # complex: "Zf", "Zd"
        if fmt[1] != 0 and fmt[2] == 0:
            code = DT_C64 if fmt[1] == b'f' else DT_C128 if fmt[1] == b'd' else DT_UNKNOWN
    elif fmt[1] != 0:
        return DT_UNKNOWN
    elif c in b"hilq":
        # Integer letters name C types whose size varies ('l' is 4 bytes on
        # armv7l, 8 on aarch64): the itemsize decides.
        code = DT_I16 if itemsize == 2 else DT_I32 if itemsize == 4 else DT_I64
    elif c in b"HILQ":
        code = DT_U16 if itemsize == 2 else DT_U32 if itemsize == 4 else DT_U64
    else:
        code = (DT_BOOL if c == b'?' else DT_U8 if c == b'B' else DT_I8 if c == b'b' else
                DT_F16 if c == b'e' else DT_F32 if c == b'f' else DT_F64 if c == b'd' else
                DT_UNKNOWN)
    return code if code != DT_UNKNOWN and itemsize_of(code) == itemsize else DT_UNKNOWN


cdef Py_ssize_t itemsize_of(int code) noexcept nogil:
    if code == DT_BOOL or code == DT_U8 or code == DT_I8:
        return 1
    if code == DT_U16 or code == DT_I16 or code == DT_F16:
        return 2
    if code == DT_U32 or code == DT_I32 or code == DT_F32:
        return 4
    if code == DT_U64 or code == DT_I64 or code == DT_F64 or code == DT_C64:
        return 8
    if code == DT_C128:
        return 16
    return 0


cdef bint is_contiguous(const Py_buffer* view) noexcept nogil:
    """C-contiguous and aligned for its item type (so typed loads are safe)."""
    cdef Py_ssize_t expected = view.itemsize
    cdef int d
    if view.itemsize <= 0:  # a 0-byte item ('V0', dtype=[]) has no element type at all
        return False
    if (<size_t>view.buf) % <size_t>view.itemsize:
        return False
    if view.strides == NULL:
        return True
    for d in range(view.ndim - 1, -1, -1):
        if view.shape[d] != 1 and view.strides[d] != expected:
            return False
        expected *= view.shape[d]
    return True


cdef bint accepts(const Kernel* k, int src) noexcept:
    if src == DT_UNKNOWN:
        return False
    if not k.affine:
        return src == k.dst
    return src == DT_U8 or src == DT_I8 or src == DT_F32 or src == DT_F64


# ---------------------------------------------------------------- typed loops

ctypedef fused src_t:
    uint8_t
    int8_t
    float
    double

ctypedef fused dst_t:
    float
    int8_t
    uint8_t


cdef inline int _quantize(float v, const Kernel* k) noexcept nogil:
    # Branch-free (selects, min/max, truncation) so loops over it vectorise.
    cdef int i
    cdef float frac
    v = k.nan_value if v != v else v
    v = k.lo if v < k.lo else v
    v = k.hi if v > k.hi else v
    # Round half away from zero (as TFLite's own quantize does): truncate, then
    # step away from zero when the fraction -- exact, |v| < 2**23 -- is >= 0.5.
    i = <int>v
    frac = v - <float>i
    return i + (frac >= 0.5) - (frac <= -0.5)


cdef inline void _affine_span(const src_t* src, Py_ssize_t n, dst_t* dst, const Kernel* k,
                              Py_ssize_t j) noexcept nogil:
    """Element by element, the coefficient index j wrapping at the period."""
    cdef Py_ssize_t i
    cdef float v
    for i in range(n):
        v = <float>src[i] * k.a[j] + k.b[j]
        if dst_t is float:
            dst[i] = v
        else:
            dst[i] = <dst_t>_quantize(v, k)
        j += 1
        if j == k.period:
            j = 0


cdef void _affine_contig(const src_t* src, Py_ssize_t n, dst_t* dst, const Kernel* k,
                         Py_ssize_t j) noexcept nogil:
    cdef Py_ssize_t i, jj, L = k.period
    cdef Py_ssize_t head = min(n, (L - j) % L)
    cdef const float* a = k.a
    cdef const float* b = k.b
    cdef float v
    # Head: up to the start of a coefficient cycle.
    _affine_span(src, head, dst, k, j)
    i = head
    # Body: whole cycles; the fixed inner trip count lets the compiler vectorise.
    while i + L <= n:
        for jj in range(L):
            v = <float>src[i + jj] * a[jj] + b[jj]
            if dst_t is float:
                dst[i + jj] = v
            else:
                dst[i + jj] = <dst_t>_quantize(v, k)
        i += L
    _affine_span(src + i, n - i, dst + i, k, 0)


cdef void _affine_from(const src_t* src, Py_ssize_t n, char* dst, const Kernel* k,
                       Py_ssize_t j0) noexcept nogil:
    if k.dst == DT_F32:
        _affine_contig(src, n, <float*>dst, k, j0)
    elif k.dst == DT_I8:
        _affine_contig(src, n, <int8_t*>dst, k, j0)
    elif k.dst == DT_U8:
        _affine_contig(src, n, <uint8_t*>dst, k, j0)


cdef void _scalar_contiguous(const Kernel* k, const char* src, int src_code, Py_ssize_t n,
                             char* dst, Py_ssize_t j0) noexcept nogil:
    if not k.affine:
        memcpy(dst, src, n * itemsize_of(src_code))
    elif src_code == DT_U8:
        _affine_from(<const uint8_t*>src, n, dst, k, j0)
    elif src_code == DT_I8:
        _affine_from(<const int8_t*>src, n, dst, k, j0)
    elif src_code == DT_F32:
        _affine_from(<const float*>src, n, dst, k, j0)
    elif src_code == DT_F64:
        _affine_from(<const double*>src, n, dst, k, j0)


# ---------------------------------------------------------------- byte tables
#
# Why: quantising is the costly part of the scalar kernel -- per element a
# multiply, an add, NaN and range checks and a rounding, in a loop over the
# coefficient cycle that does not vectorise for RGB's 3 (a 32x224x224x3 uint8
# batch into int8 took 39x a plain int8 copy).  But a uint8 or int8 source has
# only 256 values, so into int8/uint8 every output is one of 256 * period
# bytes.  The table holds them, computed by the scalar kernel itself
# (``_scalar_contiguous`` over a sample holding every (byte, coefficient)
# pair), so looking them up is exact by construction (about 10x the copy).
# On top of it, hs_affine_bytes (_buffers_support.h) computes the same
# products with SIMD and a cheaper rounding (about 3.5x the copy); it is used
# only when it reproduces the whole table, which makes it exact on any data
# too.  A table is built per write call (once per gather) when the data is
# large enough to repay its ~256 * period scalar steps.

cdef enum:
    TABLE_MAX_PERIOD = 64
    TABLE_MIN_ROUNDS = 8  # a table pays for itself from n >= this * 256 * period


cdef struct ByteTable:
    int src             # the source dtype it was built for (DT_U8 or DT_I8)
    Py_ssize_t period   # the kernel's shortest coefficient cycle (a divisor of k.period)
    Py_ssize_t cycle    # SIMD coefficient cycle (a multiple of period and of HS_STEP_MAX); 0: no SIMD
    const float* a      # a[m % period] for m < cycle + HS_STEP_MAX (SIMD only)
    const float* bh     # b[m % period] + 0.5, likewise
    uint8_t* out        # out[j * 256 + byte]: the output for that byte under coefficient j


cdef Py_ssize_t _shortest_cycle(const Kernel* k) noexcept nogil:
    """The shortest p dividing k.period over which the coefficients repeat, bit for bit.

    Callers repeat short cycles (kernel_for makes RGB's 3 at least 48 long for
    the scalar loop); a table needs only the short one.  0 if p would exceed
    TABLE_MAX_PERIOD.
    """
    cdef Py_ssize_t p, n = k.period
    for p in range(1, min(n, TABLE_MAX_PERIOD) + 1):
        if n % p == 0 and memcmp(k.a, k.a + p, (n - p) * sizeof(float)) == 0 \
                and memcmp(k.b, k.b + p, (n - p) * sizeof(float)) == 0:
            return p
    return 0


cdef Py_ssize_t _gcd(Py_ssize_t x, Py_ssize_t y) noexcept nogil:
    while y:
        x, y = y, x % y
    return x


cdef ByteTable* _table_new(const Kernel* k, int src_code, Py_ssize_t n) noexcept nogil:
    """A table for writing n elements of src_code through k, or NULL where none pays (or no memory)."""
    cdef Kernel short
    cdef Py_ssize_t period, size, cycle, i, j, x
    cdef ByteTable* t
    cdef float* coef
    cdef uint8_t* sample
    if not (k.affine and (k.dst == DT_I8 or k.dst == DT_U8) and (src_code == DT_U8 or src_code == DT_I8)
            and n >= TABLE_MIN_ROUNDS * 256):
        return NULL
    period = _shortest_cycle(k)
    size = 256 * period
    if period == 0 or n < TABLE_MIN_ROUNDS * size:
        return NULL
    short = k[0]
    short.period = period
    cycle = period * HS_STEP_MAX // _gcd(period, HS_STEP_MAX)
    t = <ByteTable*>malloc(sizeof(ByteTable) + 2 * (cycle + HS_STEP_MAX) * sizeof(float) + size)
    sample = <uint8_t*>malloc(3 * size)
    if t == NULL or sample == NULL:
        free(t)
        free(sample)
        return NULL
    coef = <float*>(t + 1)
    for i in range(cycle + HS_STEP_MAX):
        coef[i] = k.a[i % period]
        coef[cycle + HS_STEP_MAX + i] = k.b[i % period] + <float>0.5
    t.src = src_code
    t.period = period
    t.a = coef
    t.bh = coef + cycle + HS_STEP_MAX
    t.out = <uint8_t*>(coef + 2 * (cycle + HS_STEP_MAX))
    # Every (byte, j) pair once: sample[x * period + j] = x meets coefficient j.
    for x in range(256):
        for j in range(period):
            sample[x * period + j] = <uint8_t>x
    _scalar_contiguous(&short, <const char*>sample, src_code, size, <char*>(sample + size), 0)
    for x in range(256):
        for j in range(period):
            t.out[j * 256 + x] = sample[size + x * period + j]
    t.cycle = cycle if (
        hs_affine_bytes(sample, size, sample + 2 * size, src_code == DT_I8, k.dst == DT_I8, t.a, t.bh,
                        0, cycle) == size
        and memcmp(sample + size, sample + 2 * size, size) == 0) else 0
    free(sample)
    return t


cdef void _lookup(const uint8_t* table, Py_ssize_t period, const uint8_t* src, Py_ssize_t n,
                  uint8_t* dst, Py_ssize_t j) noexcept nogil:
    """dst[i] = table[j * 256 + src[i]], j wrapping at the period."""
    cdef Py_ssize_t i = 0, jj
    cdef const uint8_t* t1
    cdef const uint8_t* t2
    # Head: up to the start of a coefficient cycle.
    while j != 0 and i < n:
        dst[i] = table[j * 256 + src[i]]
        i += 1
        j += 1
        if j == period:
            j = 0
    # Whole cycles (grey and RGB unrolled: a loop of one or three trips costs more
    # than the lookups), then what is left of one.
    if period == 1:
        while i + 4 <= n:
            dst[i] = table[src[i]]
            dst[i + 1] = table[src[i + 1]]
            dst[i + 2] = table[src[i + 2]]
            dst[i + 3] = table[src[i + 3]]
            i += 4
    elif period == 3:
        t1 = table + 256
        t2 = table + 512
        while i + 6 <= n:
            dst[i] = table[src[i]]
            dst[i + 1] = t1[src[i + 1]]
            dst[i + 2] = t2[src[i + 2]]
            dst[i + 3] = table[src[i + 3]]
            dst[i + 4] = t1[src[i + 4]]
            dst[i + 5] = t2[src[i + 5]]
            i += 6
    while i + period <= n:
        for jj in range(period):
            dst[i + jj] = table[jj * 256 + src[i + jj]]
        i += period
    for jj in range(n - i):
        dst[i + jj] = table[jj * 256 + src[i + jj]]


cdef void _write_contiguous(const Kernel* k, const ByteTable* t, const char* src, int src_code,
                            Py_ssize_t n, char* dst, Py_ssize_t j0) noexcept nogil:
    cdef Py_ssize_t done = 0
    if t == NULL or t.src != src_code:
        _scalar_contiguous(k, src, src_code, n, dst, j0)
        return
    j0 %= t.period
    if t.cycle:
        done = hs_affine_bytes(<const uint8_t*>src, n, <uint8_t*>dst, src_code == DT_I8,
                               k.dst == DT_I8, t.a, t.bh, j0, t.cycle)
    _lookup(t.out, t.period, <const uint8_t*>src + done, n - done, <uint8_t*>dst + done,
            (j0 + done) % t.period)


cdef void write_contiguous(const Kernel* k, const char* src, int src_code, Py_ssize_t n,
                           char* dst, Py_ssize_t j0) noexcept nogil:
    """Write n contiguous, aligned source elements; j0 is the first coefficient index."""
    cdef ByteTable* t = _table_new(k, src_code, n)
    _write_contiguous(k, t, src, src_code, n, dst, j0)
    free(t)


cdef inline float _load(const char* p, int code) noexcept nogil:
    # memcpy, not a cast: strided or unaligned sources must not fault (armv7l).
    cdef uint8_t u8
    cdef int8_t i8
    cdef float f32
    cdef double f64
    if code == DT_U8:
        memcpy(&u8, p, 1)
        return <float>u8
    if code == DT_I8:
        memcpy(&i8, p, 1)
        return <float>i8
    if code == DT_F32:
        memcpy(&f32, p, 4)
        return f32
    memcpy(&f64, p, 8)
    return <float>f64


cdef void _write_row(const Kernel* k, const ByteTable* t, const char* src, int src_code,
                     Py_ssize_t stride, Py_ssize_t n, char* dst, Py_ssize_t j) noexcept nogil:
    """One row of a strided source, element by element."""
    cdef Py_ssize_t i, isz = itemsize_of(src_code)
    cdef float v
    if not k.affine:
        for i in range(n):
            memcpy(dst + i * isz, src + i * stride, isz)
        return
    if t != NULL and t.src == src_code:
        j %= t.period
        for i in range(n):
            (<uint8_t*>dst)[i] = t.out[j * 256 + (<const uint8_t*>src)[i * stride]]
            j += 1
            if j == t.period:
                j = 0
        return
    for i in range(n):
        v = _load(src + i * stride, src_code) * k.a[j] + k.b[j]
        if k.dst == DT_F32:
            (<float*>dst)[i] = v
        elif k.dst == DT_I8:
            (<int8_t*>dst)[i] = <int8_t>_quantize(v, k)
        else:
            (<uint8_t*>dst)[i] = <uint8_t>_quantize(v, k)
        j += 1
        if j == k.period:
            j = 0


cdef Py_ssize_t _elements(const Py_buffer* view) noexcept nogil:
    cdef Py_ssize_t n = 1
    cdef int d
    for d in range(view.ndim):
        n *= view.shape[d]
    return n


cdef void _write(const Kernel* k, const ByteTable* t, const Py_buffer* src, int src_code, char* dst,
                 Py_ssize_t j0) noexcept nogil:
    cdef Py_ssize_t n = _elements(src), rows, inner, r, offset, period = k.period if k.affine else 1
    cdef Py_ssize_t idx[MAX_DIMS]
    cdef Py_ssize_t dst_step = itemsize_of(k.dst)
    cdef int d, ndim = src.ndim
    if n == 0:
        return
    if is_contiguous(src):
        _write_contiguous(k, t, <const char*>src.buf, src_code, n, dst, j0)
        return
    if ndim == 0:  # a single unaligned element
        _write_row(k, t, <const char*>src.buf, src_code, src.itemsize, 1, dst, j0)
        return
    inner = src.shape[ndim - 1]
    rows = n // inner
    for d in range(ndim):
        idx[d] = 0
    offset = 0
    for r in range(rows):
        _write_row(k, t, <const char*>src.buf + offset, src_code, src.strides[ndim - 1], inner,
                   dst + r * inner * dst_step, (j0 + r * inner) % period)
        # Odometer over the outer dimensions, keeping the byte offset current.
        d = ndim - 2
        while d >= 0:
            idx[d] += 1
            offset += src.strides[d]
            if idx[d] < src.shape[d]:
                break
            offset -= idx[d] * src.strides[d]
            idx[d] = 0
            d -= 1


cdef void write(const Kernel* k, const Py_buffer* src, int src_code, char* dst,
                Py_ssize_t j0) noexcept nogil:
    """Write a whole source buffer, in C order, to dst (contiguous, k.dst typed)."""
    cdef ByteTable* t = _table_new(k, src_code, _elements(src))
    _write(k, t, src, src_code, dst, j0)
    free(t)


# ------------------------------------------------------- checked entry points

cdef str _shape_str(const Py_ssize_t* shape, int ndim):
    return "(" + ", ".join([str(shape[d]) for d in range(ndim)]) + ("," if ndim == 1 else "") + ")"


cdef str _expected_str(const Kernel* k):
    if k.affine:
        return "uint8, int8, float32 or float64 (preprocessed to %s)" % DTYPE_NAMES[k.dst]
    return DTYPE_NAMES[k.dst]


cdef int acquire(object obj, Py_buffer* view, object name) except -1:
    """Get a strided, formatted buffer view of obj, or raise InputError."""
    try:
        PyObject_GetBuffer(obj, view, PyBUF_RECORDS_RO)
    except (TypeError, BufferError, ValueError) as e:
        raise InputError(f"input {name!r}: expected an array (any object with the buffer "
                         f"protocol), got {type(obj).__name__}") from e
    if view.ndim > MAX_DIMS:
        PyBuffer_Release(view)
        raise InputError(f"input {name!r}: expected at most {MAX_DIMS} dimensions, got {view.ndim}")
    return 0


cdef int check_dtype(const Kernel* k, const Py_buffer* view, object name) except -1:
    cdef int code = dtype_code(view.format, view.itemsize)
    if not accepts(k, code):
        found = DTYPE_NAMES[code] if code else "unsupported format %r" % (
            (<bytes>view.format).decode() if view.format != NULL else "B")
        raise InputError(f"input {name!r}: expected dtype {_expected_str(k)}, got {found}")
    return code


cdef bint same_shape(const Py_buffer* view, const Py_ssize_t* shape, int ndim) noexcept:
    cdef int d
    if view.ndim != ndim:
        return False
    for d in range(ndim):
        if view.shape[d] != shape[d]:
            return False
    return True


cdef str shape_of(const Py_buffer* view):
    return _shape_str(view.shape, view.ndim)


cdef int describe_tensor(object tensor, Kernel* k, int* ndim, Py_ssize_t* shape, char** address,
                         str kind, object name) except -1:
    """Bind a tensor view (the wrapper's ``tensor()``): set k.dst, ndim, shape and its address.

    ``kind`` and ``name`` ("input", "x") name the tensor in errors only: a
    model whose tensors move binds before every call.

    Raises:
        UnsupportedModelError: if it is not a numeric tensor of rank <= MAX_DIMS.
        InputError: if k preprocesses into a dtype other than float32, int8 or uint8.
    """
    cdef Py_buffer view
    cdef int d, code
    PyObject_GetBuffer(tensor, &view, PyBUF_RECORDS_RO)
    try:
        code = dtype_code(view.format, view.itemsize)
        if code == DT_UNKNOWN or view.ndim > MAX_DIMS:
            raise UnsupportedModelError(f"{kind} {name!r}: expected a numeric tensor of rank <= {MAX_DIMS}, "
                                        f"got format {view.format!r} of rank {view.ndim}")
        if k.affine and code not in (DT_F32, DT_I8, DT_U8):
            raise InputError(f"{kind} {name!r}: preprocessing needs a float32, int8 or uint8 tensor")
        k.dst = code
        ndim[0] = view.ndim
        for d in range(view.ndim):
            shape[d] = view.shape[d]
        address[0] = <char*>view.buf
        return 0
    finally:
        PyBuffer_Release(&view)


cdef int write_input(const Kernel* k, object src, const Py_ssize_t* shape, int ndim, char* dst,
                     object name) except -1:
    """Check src against (dtype, shape) and write it into dst.

    Returns 0 when written, 1 (writing nothing) when only the shape differs, so
    the caller can pick an allocation for that shape.  Raises InputError for
    anything else.
    """
    cdef Py_buffer view
    cdef int code
    cdef Py_ssize_t nbytes
    if not hs_np_view(src, &view, MAX_DIMS, NOGIL_BYTES, False):  # a small ndarray: its fields, read directly
        acquire(src, &view, name)
    try:
        code = check_dtype(k, &view, name)
        if not same_shape(&view, shape, ndim):
            return 1
        nbytes = view.len
        if nbytes >= NOGIL_BYTES:
            with nogil:
                write(k, &view, code, dst, 0)
        else:
            write(k, &view, code, dst, 0)
        return 0
    finally:
        PyBuffer_Release(&view)


cdef int gather_input(const Kernel* k, tuple samples, const Py_ssize_t* sample_shape, int ndim,
                      char* dst, object name) except -1:
    """Write each sample into consecutive slices of dst (no np.stack).

    ``samples`` is a tuple -- a snapshot the caller took once: a list another
    thread grows meanwhile must not change how many rows are written.
    """
    cdef Py_ssize_t n = len(samples), i, got = 0, elems = 1
    cdef Py_ssize_t dst_step
    cdef int d
    cdef ByteTable* table
    cdef Py_buffer* views = <Py_buffer*>malloc(max(n, 1) * sizeof(Py_buffer))
    cdef int* codes = <int*>malloc(max(n, 1) * sizeof(int))
    if views == NULL or codes == NULL:
        free(views)
        free(codes)
        raise MemoryError()
    for d in range(ndim):
        elems *= sample_shape[d]
    dst_step = elems * itemsize_of(k.dst)
    try:
        for i in range(n):
            acquire(samples[i], &views[i], f"{name}[{i}]")
            got += 1
            codes[i] = check_dtype(k, &views[i], f"{name}[{i}]")
            if not same_shape(&views[i], sample_shape, ndim):
                raise InputError(f"input {name!r}, sample {i}: expected shape "
                                 f"{_shape_str(sample_shape, ndim)}, got {shape_of(&views[i])}")
        with nogil:
            # One table for the whole batch (samples of another dtype go without).
            table = _table_new(k, codes[0], n * elems) if n else NULL
            for i in range(n):
                _write(k, table, &views[i], codes[i], dst + i * dst_step,
                       (i * elems) % k.period if k.affine else 0)
            free(table)
        return 0
    finally:
        for i in range(got):
            PyBuffer_Release(&views[i])
        free(views)
        free(codes)


cdef object copy_tensor(object tensor, object dtype, const Py_buffer* src, list spares, int first):
    """A new array holding a copy of a tensor (``tensor.copy()``, made directly when numpy's ABI is bound).

    ``tensor`` is the tensor's numpy view, ``dtype`` its dtype and ``src`` a
    buffer held on it (C-contiguous, as every tensor).  ``spares[first]`` and
    ``spares[first + 1]`` keep the last two small results: one that nothing
    else refers to any more is filled again instead of allocating (numpy's
    allocation is most of what a call costs beyond the invoke).  Two, so that
    ``y = rt.run(x)``, whose ``y`` holds the previous result during the call,
    recycles too.
    """
    cdef char* data
    cdef int k
    if not numpy_abi:
        return tensor.copy()
    if src.len < NOGIL_BYTES:
        for k in range(first, first + 2):
            if hs_np_recyclable(list_item(spares, k), dtype, src):
                result = <object>list_item(spares, k)
                memcpy(hs_np_data(result), src.buf, src.len)
                _drop_stale(spares, 2 * first + 1 - k)
                return result
    result = hs_np_empty(dtype, src.ndim, src.shape)
    data = hs_np_data(result)
    if src.len >= NOGIL_BYTES:
        with nogil:
            memcpy(data, src.buf, src.len)
        return result
    memcpy(data, src.buf, src.len)
    if not _drop_stale(spares, first):
        spares[first + 1] = spares[first]  # the newer spare stays; the older gives way
    spares[first] = result
    return result


cdef bint _drop_stale(list spares, int k):
    """Free the spare at ``k`` if the list holds its only reference.

    Called for the spare this call does not refill: one the caller dropped but
    that cannot be refilled (a weak reference, changed in place) would
    otherwise outlive the caller's last reference for as long as the other
    spare keeps being refilled.
    """
    if refcount(list_item(spares, k)) == 1:
        spares[k] = None
        return True
    return False


cdef int read_output(const Py_buffer* src, object out, object name) except -1:
    """Copy a tensor's bytes into the caller's array ``out`` (same dtype and shape)."""
    cdef Py_buffer view
    cdef Kernel k
    if not hs_np_view(out, &view, MAX_DIMS, NOGIL_BYTES, True):  # a small ndarray: its fields, read directly
        try:
            PyObject_GetBuffer(out, &view, PyBUF_RECORDS_RO | PyBUF_WRITABLE)
        except (TypeError, BufferError, ValueError) as e:
            raise InputError(f"out[{name!r}]: expected a writable array, got {type(out).__name__}") from e
    try:
        src_code = dtype_code(src.format, src.itemsize)
        code = dtype_code(view.format, view.itemsize)
        if src_code == DT_UNKNOWN or src.ndim > MAX_DIMS:
            raise InputError(f"out[{name!r}]: the output tensor's type or rank is not supported")
        if code != src_code or not same_shape(&view, src.shape, src.ndim) or not is_contiguous(&view):
            raise InputError(
                f"out[{name!r}]: expected a writable C-contiguous {DTYPE_NAMES[src_code]} array of "
                f"shape {shape_of(src)}, got {DTYPE_NAMES[code]} of shape {shape_of(&view)}"
                + ("" if is_contiguous(&view) else " (not contiguous)"))
        k.affine = False
        k.dst = src_code
        if view.len >= NOGIL_BYTES:
            with nogil:
                write(&k, src, src_code, <char*>view.buf, 0)
        else:
            write(&k, src, src_code, <char*>view.buf, 0)
        return 0
    finally:
        PyBuffer_Release(&view)


cdef int set_affine(Kernel* k, object a, object b, float lo, float hi, float nan_value) except -1:
    """Point k at the coefficient cycles a and b (float32 buffers the caller keeps alive)."""
    cdef const float[::1] av = a
    cdef const float[::1] bv = b
    if av.shape[0] != bv.shape[0] or av.shape[0] == 0:
        raise InputError(f"coefficients: expected a and b of one equal, non-zero length, "
                         f"got {av.shape[0]} and {bv.shape[0]}")
    k.affine = True
    k.a = &av[0]
    k.b = &bv[0]
    k.period = av.shape[0]
    k.lo = lo
    k.hi = hi
    k.nan_value = nan_value
    return 0


# ------------------------------------------------------ Python-level kernels

cdef class _Coefficients:
    """Holds a Kernel and the float32 coefficient arrays it points into."""
    cdef Kernel k
    cdef object a_bytes, b_bytes

    def __init__(self, int dst, a=None, b=None, float zero_point=0.0):
        self.k.dst = dst
        self.k.affine = False
        if a is None:
            return
        if dst not in (DT_F32, DT_I8, DT_U8):
            raise InputError(f"affine destination: expected float32, int8 or uint8, got {DTYPE_NAMES[dst]}")
        import array
        self.a_bytes = array.array("f", a)
        self.b_bytes = array.array("f", b)
        lo, hi = (-128.0, 127.0) if dst == DT_I8 else (0.0, 255.0)
        set_affine(&self.k, self.a_bytes, self.b_bytes, lo, hi, zero_point)


cdef int _writable(object dst, Py_buffer* view) except -1:
    try:
        PyObject_GetBuffer(dst, view, PyBUF_RECORDS_RO | PyBUF_WRITABLE)
    except (TypeError, BufferError, ValueError) as e:
        raise InputError(f"dst: expected a writable array, got {type(dst).__name__}") from e
    if view.itemsize <= 0:
        PyBuffer_Release(view)
        raise InputError("dst: expected an array of a numeric dtype, got 0-byte items")
    if not is_contiguous(view):
        PyBuffer_Release(view)
        raise InputError("dst: expected a C-contiguous, aligned array")
    return 0


def affine_into(src, dst, a=None, b=None, zero_point=0.0) -> None:
    """Write ``src`` into ``dst`` through the runtime's fused kernel.

    Without coefficients this is a plain copy (dtypes must match).  With them,
    element i becomes ``float32(x) * a[i % P] + b[i % P]`` (P = len(a)), stored
    as float32, or for int8/uint8 ``dst`` rounded half away from zero and
    saturated, NaN becoming ``zero_point``.

    Raises:
        InputError: if a buffer is missing, of the wrong dtype, not writable,
            not contiguous (dst), or the element counts differ.
    """
    cdef Py_buffer sv, dv
    cdef int dst_code, code
    cdef Py_ssize_t d, n = 1
    _writable(dst, &dv)
    try:
        dst_code = dtype_code(dv.format, dv.itemsize)
        c = _Coefficients(dst_code, a, b, zero_point)
        acquire(src, &sv, "src")
        try:
            code = check_dtype(&(<_Coefficients>c).k, &sv, "src")
            for d in range(sv.ndim):
                n *= sv.shape[d]
            if n * itemsize_of(dst_code) != dv.len:
                raise InputError(f"dst: expected {n} elements, got {dv.len // dv.itemsize}")
            with nogil:
                write(&(<_Coefficients>c).k, &sv, code, <char*>dv.buf, 0)
        finally:
            PyBuffer_Release(&sv)
    finally:
        PyBuffer_Release(&dv)


def gather_into(samples, dst, a=None, b=None, zero_point=0.0) -> None:
    """Write ``samples[i]`` into ``dst[i]`` for every i, through the fused kernel.

    Coefficients are as for :func:`affine_into`; the coefficient cycle runs on
    across samples, exactly as if the samples had been stacked first.

    Raises:
        InputError: if a sample's dtype or shape does not fit ``dst[i]``, or
            ``dst`` has a different number of rows.
    """
    cdef Py_buffer dv
    cdef tuple snapshot = tuple(samples)
    _writable(dst, &dv)
    try:
        if dv.ndim < 1 or dv.shape[0] != len(snapshot):
            raise InputError(f"dst: expected {len(snapshot)} rows, got shape {shape_of(&dv)}")
        c = _Coefficients(dtype_code(dv.format, dv.itemsize), a, b, zero_point)
        gather_input(&(<_Coefficients>c).k, snapshot, dv.shape + 1, dv.ndim - 1, <char*>dv.buf, "samples")
    finally:
        PyBuffer_Release(&dv)


def kernel_body(src, dst, a, b, zero_point=0.0) -> str:
    """Which body ``affine_into(src, dst, a, b, zero_point)`` runs (for tests).

    "simd" (the SIMD body, verified against the byte table), "table" (byte
    table lookups) or "scalar" (the element-by-element kernel).
    """
    cdef Py_buffer sv, dv
    cdef const Kernel* k
    cdef ByteTable* t
    _writable(dst, &dv)
    try:
        c = _Coefficients(dtype_code(dv.format, dv.itemsize), a, b, zero_point)
    finally:
        PyBuffer_Release(&dv)
    k = &(<_Coefficients>c).k
    acquire(src, &sv, "src")
    try:
        t = _table_new(k, check_dtype(k, &sv, "src"), _elements(&sv))
    finally:
        PyBuffer_Release(&sv)
    body = "scalar" if t == NULL else "simd" if t.cycle else "table"
    free(t)
    return body


def mapped_copy(src):  # a bytes subclass: no "-> bytes" (Cython would demand exactly bytes)
    """A copy of the bytes-like ``src`` in a memory mapping of its own (``_model_bytes.h``).

    Copied with the GIL released; the copy's memory goes back to the kernel
    with the GIL released too, whichever thread drops it last.

    Raises:
        TypeError: if ``src`` does not export a buffer.
        MemoryError: if the mapping cannot be made.
    """
    cdef Py_buffer view
    cdef char* into
    try:
        PyObject_GetBuffer(src, &view, PyBUF_SIMPLE)
    except (BufferError, ValueError):  # not contiguous (numpy says ValueError): a copy of it is
        src = bytes(src)
        PyObject_GetBuffer(src, &view, PyBUF_SIMPLE)
    try:
        data = hs_mapped_bytes_new(view.len)
        into = PyBytes_AS_STRING(data)
        with nogil:
            memcpy(into, view.buf, view.len)
    finally:
        PyBuffer_Release(&view)
    return data


def read_mapped(int fd, Py_ssize_t size):
    """Read the file ``fd`` (``size`` bytes, by fstat) into bytes in a mapping of their own.

    Read with the GIL released.  A file found shorter gives fewer bytes; one
    found longer (growing, or a /proc file whose size says 0) gives None.

    Raises:
        OSError: if reading fails.
        MemoryError: if the mapping cannot be made.
    """
    cdef char more
    cdef Py_ssize_t got, extra
    data = hs_mapped_bytes_new(size)
    cdef char* into = PyBytes_AS_STRING(data)
    with nogil:
        got = hs_read_fully(fd, into, size)
        extra = hs_read_fully(fd, &more, 1) if got == size else 0
    if got < 0 or extra < 0:
        raise OSError(errno, os.strerror(errno))
    if extra:
        return None
    if got < size:  # the file shrank meanwhile: nobody has seen the object yet
        set_size(data, got)
        into[got] = 0
    return data
