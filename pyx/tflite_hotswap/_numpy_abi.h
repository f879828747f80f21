/* The two pieces of numpy's C ABI the per-call path uses, without numpy's
 * headers at build time (so one build serves numpy 1.x and 2.x, and building
 * from the sdist on a board needs no numpy):
 *
 *   - the function table numpy publishes as the capsule _ARRAY_API, the one
 *     `import_array()` reads: entry 0 PyArray_GetNDArrayCVersion, entry 2
 *     &PyArray_Type, entry 94 PyArray_NewFromDescr (the same indices in the
 *     1.x and 2.x tables);
 *   - the head of an ndarray (PyArrayObject_fields: data, nd, dimensions,
 *     strides, base, descr, flags, weakreflist), unchanged from 1.x to 2.x
 *     (weakreflist is checked against ndarray's tp_weaklistoffset at bind).
 *
 * dtypes are never read: an array qualifies only if its dtype *is* one of the
 * builtin dtype objects hs_np_bind() was given (np.dtype("f") and so on, which
 * numpy shares between all arrays of that type), so a dtype with fields,
 * metadata or another byte order takes the buffer protocol.
 *
 * hs_np_bind() accepts only the two ABI versions those facts were read from
 * (NPY_ABI_VERSION 0x01000009 for 1.x, 0x02000000 for 2.x); with any other,
 * nothing here is used and the buffer protocol serves, as before.
 */
#ifndef TFLITE_HOTSWAP_NUMPY_ABI_H
#define TFLITE_HOTSWAP_NUMPY_ABI_H

#include <Python.h>
#include <stddef.h>
#include <string.h>

typedef struct {
    PyObject_HEAD
    char *data;
    int nd;
    Py_ssize_t *dimensions; /* npy_intp, pointer-sized as Py_ssize_t */
    Py_ssize_t *strides;
    PyObject *base;
    PyObject *descr;
    int flags; /* NPY_ARRAY_WRITEABLE = 0x0400 in 1.x and 2.x */
    PyObject *weakreflist;
} hs_ndarray;

#define HS_NPY_ARRAY_C_CONTIGUOUS 0x0001
#define HS_NPY_ARRAY_OWNDATA 0x0004
#define HS_NPY_ARRAY_WRITEABLE 0x0400
#define HS_NPY_ARRAY_WARN_ON_WRITE (1u << 31) /* numpy-internal: a broadcast result; writing warns */

/* The builtin dtypes an array may have to be read directly, with the buffer
 * protocol's format letter and item size of each. */
#define HS_NP_LETTERS "?bBhHiIlLqQefdg"
#define HS_NP_TYPES 15

typedef PyObject *(*hs_new_from_descr)(PyTypeObject *, PyObject *, int, const Py_ssize_t *,
                                       const Py_ssize_t *, void *, int, PyObject *);

static void **hs_np_api = NULL;
static PyObject *hs_np_dtypes[HS_NP_TYPES];

/* Bind to numpy's table if its ABI is one of the two known, with dtypes the
 * builtin dtype of each letter of HS_NP_LETTERS, in order (kept for good);
 * 1 if bound. */
static int hs_np_bind(PyObject *capsule, PyObject *dtypes) {
    void **api;
    unsigned int abi;
    int i;
    if (!PyCapsule_CheckExact(capsule) || !PyTuple_CheckExact(dtypes) || PyTuple_GET_SIZE(dtypes) != HS_NP_TYPES)
        return 0;
    api = (void **)PyCapsule_GetPointer(capsule, NULL);
    if (api == NULL) {
        PyErr_Clear();
        return 0;
    }
    abi = ((unsigned int (*)(void))api[0])();
    if (abi != 0x01000009u && abi != 0x02000000u) return 0;
    if (sizeof(Py_ssize_t) != sizeof(void *)) return 0;
    /* hs_np_recyclable reads weak references from the struct: only where numpy keeps them there. */
    if (((PyTypeObject *)api[2])->tp_weaklistoffset != (Py_ssize_t)offsetof(hs_ndarray, weakreflist) ||
        ((PyTypeObject *)api[2])->tp_basicsize < (Py_ssize_t)sizeof(hs_ndarray))
        return 0;
    for (i = 0; i < HS_NP_TYPES; i++) {
        hs_np_dtypes[i] = PyTuple_GET_ITEM(dtypes, i);
        Py_INCREF(hs_np_dtypes[i]);
    }
    hs_np_api = api;
    return 1;
}

/* obj is exactly an ndarray (not a subclass, whose buffer export may differ). */
static inline int hs_np_is_array(PyObject *obj) {
    return hs_np_api != NULL && Py_TYPE(obj) == (PyTypeObject *)hs_np_api[2];
}

/* A new, uninitialised C-ordered array of descr (a dtype object) and shape;
 * NULL with an exception set on failure. */
static inline PyObject *hs_np_empty(PyObject *descr, int nd, const Py_ssize_t *dims) {
    Py_INCREF(descr); /* PyArray_NewFromDescr steals it */
    return ((hs_new_from_descr)hs_np_api[94])((PyTypeObject *)hs_np_api[2], descr, nd, dims, NULL, NULL, 0, NULL);
}

static inline char *hs_np_data(PyObject *array) { return ((hs_ndarray *)array)->data; }

/* Whether array, made by hs_np_empty(descr, src->ndim, src->shape) and since
 * held in a list only, may be filled again and returned as a new result:
 * the list's is its only reference (no variable, view -- a view holds its
 * base --, buffer export or weak reference can see it) and nothing about it
 * was changed in place (dtype, shape, strides, data, writeability). */
static inline int hs_np_recyclable(PyObject *array, PyObject *descr, const Py_buffer *src) {
    hs_ndarray *a = (hs_ndarray *)array;
    Py_ssize_t stride = src->itemsize;
    int d;
#ifdef Py_GIL_DISABLED
    return 0; /* a refcount of 1 proves nothing while other threads count concurrently */
#endif
    if (Py_REFCNT(array) != 1 || !hs_np_is_array(array) || a->weakreflist != NULL || a->descr != descr ||
        a->base != NULL || a->nd != src->ndim)
        return 0;
    if ((a->flags & (HS_NPY_ARRAY_C_CONTIGUOUS | HS_NPY_ARRAY_OWNDATA | HS_NPY_ARRAY_WRITEABLE)) !=
            (HS_NPY_ARRAY_C_CONTIGUOUS | HS_NPY_ARRAY_OWNDATA | HS_NPY_ARRAY_WRITEABLE) ||
        (a->flags & HS_NPY_ARRAY_WARN_ON_WRITE))
        return 0;
    for (d = a->nd - 1; d >= 0; d--) {
        if (a->dimensions[d] != src->shape[d] || (a->strides[d] != stride && a->dimensions[d] > 1)) return 0;
        stride *= a->dimensions[d];
    }
    return 1;
}

/* Fill view from obj if it is an exact, non-empty ndarray of one of the
 * bound builtin dtypes, at most max_dims dimensions and under max_bytes (and
 * writeable without a warning, if asked); 1 if filled, 0 to go through the
 * buffer protocol instead, which raises whatever error is due (and gives an
 * empty array the strides it expects).  The view holds no reference
 * (view->obj is NULL: PyBuffer_Release does nothing): it is valid only while
 * the caller holds obj and the GIL -- hence max_bytes, below which a copy
 * runs without releasing the GIL. */
static inline int hs_np_view(PyObject *obj, Py_buffer *view, int max_dims, Py_ssize_t max_bytes, int writable) {
    static const char *formats[HS_NP_TYPES] = {"?", "b", "B", "h", "H", "i", "I", "l", "L", "q", "Q",
                                               "e", "f", "d", "g"};
    static const Py_ssize_t sizes[HS_NP_TYPES] = {1, 1, 1, 2, 2, 4, 4, sizeof(long), sizeof(long), 8, 8,
                                                  2, 4, 8, sizeof(long double)};
    hs_ndarray *array = (hs_ndarray *)obj;
    Py_ssize_t n;
    int d, t;
    if (!hs_np_is_array(obj) || array->nd > max_dims) return 0;
    if (writable && (!(array->flags & HS_NPY_ARRAY_WRITEABLE) || (array->flags & HS_NPY_ARRAY_WARN_ON_WRITE)))
        return 0;
    for (t = 0; t < HS_NP_TYPES && hs_np_dtypes[t] != array->descr; t++) {
    }
    if (t == HS_NP_TYPES) return 0;
    n = sizes[t];
    for (d = 0; d < array->nd; d++) {
        if (array->dimensions[d] != 0 && n > PY_SSIZE_T_MAX / array->dimensions[d]) return 0;
        n *= array->dimensions[d];
    }
    if (n == 0 || n >= max_bytes) return 0;
    view->buf = array->data;
    view->obj = NULL;
    view->len = n;
    view->itemsize = sizes[t];
    view->readonly = !writable;
    view->ndim = array->nd;
    view->format = (char *)formats[t];
    view->shape = array->dimensions;
    view->strides = array->strides;
    view->suboffsets = NULL;
    view->internal = NULL;
    return 1;
}

#endif
