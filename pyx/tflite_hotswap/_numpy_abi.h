/* The three pieces of numpy's C ABI the per-call path uses, without numpy's
 * headers at build time (so one build serves numpy 1.x and 2.x, and building
 * from the sdist on a board needs no numpy):
 *
 *   - the function table numpy publishes as the capsule _ARRAY_API, the one
 *     `import_array()` reads: entry 0 PyArray_GetNDArrayCVersion, entry 2
 *     &PyArray_Type, entry 94 PyArray_NewFromDescr (the same indices in the
 *     1.x and 2.x tables);
 *   - the head of an ndarray (PyArrayObject_fields: data, nd, dimensions,
 *     strides, base, descr, flags), unchanged from 1.x to 2.x;
 *   - the head of a dtype up to type_num (PyArray_Descr), which 2.x keeps in
 *     place on purpose ("_former_flags ... to ensure type_num is stable").
 *
 * hs_np_bind() accepts only the two ABI versions those facts were read from
 * (NPY_ABI_VERSION 0x01000009 for 1.x, 0x02000000 for 2.x); with any other,
 * nothing here is used and the buffer protocol serves, as before.
 */
#ifndef TFLITE_HOTSWAP_NUMPY_ABI_H
#define TFLITE_HOTSWAP_NUMPY_ABI_H

#include <Python.h>
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
} hs_ndarray;

#define HS_NPY_ARRAY_WRITEABLE 0x0400

typedef struct {
    PyObject_HEAD
    PyTypeObject *typeobj;
    char kind;
    char type;      /* the buffer-protocol format letter of a builtin type */
    char byteorder; /* '=' native, '|' not applicable, '<' / '>' explicit */
    char flags_or_former_flags;
    int type_num;
} hs_descr_head;

typedef PyObject *(*hs_new_from_descr)(PyTypeObject *, PyObject *, int, const Py_ssize_t *,
                                       const Py_ssize_t *, void *, int, PyObject *);

static void **hs_np_api = NULL;

/* Bind to numpy's table if its ABI is one of the two known; 1 if bound. */
static int hs_np_bind(PyObject *capsule) {
    void **api;
    unsigned int abi;
    if (!PyCapsule_CheckExact(capsule)) return 0;
    api = (void **)PyCapsule_GetPointer(capsule, NULL);
    if (api == NULL) {
        PyErr_Clear();
        return 0;
    }
    abi = ((unsigned int (*)(void))api[0])();
    if (abi != 0x01000009u && abi != 0x02000000u) return 0;
    if (sizeof(Py_ssize_t) != sizeof(void *)) return 0;
    hs_np_api = api;
    return 1;
}

/* obj is exactly an ndarray (not a subclass, whose buffer export may differ). */
static inline int hs_np_is_array(PyObject *obj) {
    return hs_np_api != NULL && Py_TYPE(obj) == (PyTypeObject *)hs_np_api[2];
}

/* A new C-ordered array of descr (a dtype object) and shape, holding a copy of
 * nbytes from src; NULL with an exception set on failure. */
static inline PyObject *hs_np_copy_of(PyObject *descr, int nd, const Py_ssize_t *dims, const void *src,
                                      Py_ssize_t nbytes) {
    PyObject *array;
    Py_INCREF(descr); /* PyArray_NewFromDescr steals it */
    array = ((hs_new_from_descr)hs_np_api[94])((PyTypeObject *)hs_np_api[2], descr, nd, dims, NULL, NULL, 0,
                                               NULL);
    if (array != NULL && nbytes > 0) memcpy(((hs_ndarray *)array)->data, src, (size_t)nbytes);
    return array;
}

/* Fill view from obj if it is an exact ndarray of a builtin numeric dtype in
 * native byte order, at most max_dims dimensions and under max_bytes (and
 * writeable, if asked); 1 if filled, 0 to go through the buffer protocol
 * instead, which raises whatever error is due.  The view holds no
 * reference (view->obj is NULL: PyBuffer_Release does nothing): it is valid
 * only while the caller holds obj and the GIL -- hence max_bytes, below which
 * a copy runs without releasing the GIL. */
static inline int hs_np_view(PyObject *obj, Py_buffer *view, int max_dims, Py_ssize_t max_bytes, int writable) {
    static const char letters[] = "?bBhHiIlLqQefdg";
    static const char *formats[] = {"?", "b", "B", "h", "H", "i", "I", "l", "L", "q", "Q", "e", "f", "d", "g"};
    static const Py_ssize_t sizes[] = {1, 1, 1, 2, 2, 4, 4, sizeof(long), sizeof(long), 8, 8, 2, 4, 8,
                                       sizeof(long double)};
    hs_ndarray *array = (hs_ndarray *)obj;
    hs_descr_head *descr;
    const char *at;
    Py_ssize_t n;
    int d;
    if (!hs_np_is_array(obj) || array->nd > max_dims) return 0;
    if (writable && !(array->flags & HS_NPY_ARRAY_WRITEABLE)) return 0;
    descr = (hs_descr_head *)array->descr;
    if ((descr->type_num > 13 && descr->type_num != 23) || descr->type_num < 0) return 0; /* NPY_HALF = 23 */
    if (descr->byteorder != '=' && descr->byteorder != '|') return 0;
    at = descr->type != 0 ? strchr(letters, descr->type) : NULL;
    if (at == NULL) return 0;
    n = sizes[at - letters];
    for (d = 0; d < array->nd; d++) {
        if (array->dimensions[d] != 0 && n > PY_SSIZE_T_MAX / array->dimensions[d]) return 0;
        n *= array->dimensions[d];
    }
    if (n >= max_bytes) return 0;
    view->buf = array->data;
    view->obj = NULL;
    view->len = n;
    view->itemsize = sizes[at - letters];
    view->readonly = !writable;
    view->ndim = array->nd;
    view->format = (char *)formats[at - letters];
    view->shape = array->dimensions;
    view->strides = array->strides;
    view->suboffsets = NULL;
    view->internal = NULL;
    return 1;
}

#endif
