# Buffer kernels: one pass from a caller's buffer into tensor memory, with the
# dtype conversion, normalisation and quantisation fused into that pass.
from cpython.buffer cimport Py_buffer

cdef enum:
    MAX_DIMS = 16

# Element types, numbered independently of numpy so the extension never needs
# numpy's C API (one build then serves numpy 1.x and 2.x).
cdef enum DType:
    DT_UNKNOWN = 0
    DT_BOOL
    DT_U8
    DT_I8
    DT_U16
    DT_I16
    DT_U32
    DT_I32
    DT_U64
    DT_I64
    DT_F16
    DT_F32
    DT_F64
    DT_C64
    DT_C128

cdef struct Kernel:
    # How source elements become destination elements.  ``affine`` false means
    # a plain copy (source and destination dtypes are equal).  Otherwise
    # v = float32(x) * a[j] + b[j], j cycling over ``period`` coefficients that
    # repeat the per-channel values; float32 destinations store v, int8/uint8
    # destinations store v rounded half away from zero, saturated to [lo, hi],
    # with NaN mapped to ``nan_value`` (the zero point).  From uint8/int8 into
    # int8/uint8, large writes go through a table of those outputs (or a SIMD
    # body checked against it): see "byte tables" in _buffers.pyx.
    bint affine
    int dst
    Py_ssize_t period
    const float* a
    const float* b
    float lo
    float hi
    float nan_value

cdef int dtype_code(const char* fmt, Py_ssize_t itemsize) noexcept
cdef Py_ssize_t itemsize_of(int code) noexcept nogil
cdef bint is_contiguous(const Py_buffer* view) noexcept nogil
cdef bint accepts(const Kernel* k, int src) noexcept
cdef void write(const Kernel* k, const Py_buffer* src, int src_code, char* dst,
                Py_ssize_t j0) noexcept nogil
cdef void write_contiguous(const Kernel* k, const char* src, int src_code,
                           Py_ssize_t n, char* dst, Py_ssize_t j0) noexcept nogil

cdef int set_affine(Kernel* k, object a, object b, float lo, float hi, float nan_value) except -1
cdef int acquire(object obj, Py_buffer* view, object name) except -1
cdef int check_dtype(const Kernel* k, const Py_buffer* view, object name) except -1
cdef bint same_shape(const Py_buffer* view, const Py_ssize_t* shape, int ndim) noexcept
cdef str shape_of(const Py_buffer* view)
cdef int describe_tensor(object tensor, Kernel* k, int* ndim, Py_ssize_t* shape, char** address,
                         str kind, object name) except -1
cdef int write_input(const Kernel* k, object src, const Py_ssize_t* shape, int ndim, char* dst,
                     object name) except -1
cdef int gather_input(const Kernel* k, tuple samples, const Py_ssize_t* sample_shape, int ndim,
                      char* dst, object name) except -1
cdef object copy_tensor(object tensor, object dtype, const Py_buffer* src, list spares, int first)
cdef int read_output(const Py_buffer* src, object out, object name) except -1
