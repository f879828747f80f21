/* A model's bytes in a memory mapping of their own, unmapped with the GIL released.
 *
 * A model's bytes live as long as a version serves and are freed when it is
 * retired.  As an ordinary bytes object, 20 MB of them are freed by glibc,
 * with the GIL held: the kernel tearing down their pages (munmap, or glibc
 * trimming its heap, which also takes whatever freed memory lies next to them,
 * such as XNNPACK's packed weights) costs 1.5-9 ms that every other thread,
 * the serving loop first, waits for.
 *
 * So the bytes object is a subclass of bytes (the backends take any bytes:
 * PyBytes_AsStringAndSize) placed in an anonymous mapping of its own, headed
 * by the mapping's length.  Its tp_free unmaps the whole mapping with the GIL
 * released, as CPython's own mmap objects do in their dealloc, wherever and
 * whenever the last reference goes; glibc's heap never sees it.  Freeing a
 * bytes object (bytes_dealloc) is a call of its type's tp_free and nothing
 * else, in every CPython 3 release.
 */
#ifndef TFLITE_HOTSWAP_MODEL_BYTES_H
#define TFLITE_HOTSWAP_MODEL_BYTES_H

#include <Python.h>
#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef Py_TPFLAGS_DISALLOW_INSTANTIATION /* Python 3.9: tp_alloc alone refuses */
#define Py_TPFLAGS_DISALLOW_INSTANTIATION 0
#endif

/* Before the object, as long as malloc's alignment, so the object keeps it. */
typedef union {
    size_t length; /* of the whole mapping, this head included */
    max_align_t align;
} hs_mapping_head;

static void hs_mapped_bytes_free(void *object) {
    hs_mapping_head *head = (hs_mapping_head *)object - 1;
    size_t length = head->length;
    Py_BEGIN_ALLOW_THREADS
    munmap(head, length);
    Py_END_ALLOW_THREADS
}

/* Only hs_mapped_bytes_new makes these: memory from anywhere else must never
 * reach hs_mapped_bytes_free (bytes.__new__(MappedBytes) and unpickling would
 * allocate through tp_alloc). */
static PyObject *hs_mapped_bytes_alloc(PyTypeObject *type, Py_ssize_t n) {
    (void)n;
    PyErr_Format(PyExc_TypeError, "cannot create '%s' instances", type->tp_name);
    return NULL;
}

/* Pickled and copied as plain bytes. */
static PyObject *hs_mapped_bytes_reduce(PyObject *self, PyObject *unused) {
    (void)unused;
    return Py_BuildValue("(O(y#))", (PyObject *)&PyBytes_Type, PyBytes_AS_STRING(self), PyBytes_GET_SIZE(self));
}

static PyMethodDef hs_mapped_bytes_methods[] = {
    {"__reduce__", hs_mapped_bytes_reduce, METH_NOARGS, "pickled as plain bytes"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject hs_mapped_bytes_type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tflite_hotswap._buffers.MappedBytes",
    .tp_doc = "bytes in a memory mapping of their own, unmapped with the GIL released",
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .tp_methods = hs_mapped_bytes_methods,
    .tp_alloc = hs_mapped_bytes_alloc,
    .tp_free = hs_mapped_bytes_free,
};

/* Once, at import: 0, or -1 with an exception set. */
static int hs_mapped_bytes_ready(void) {
    hs_mapped_bytes_type.tp_base = &PyBytes_Type;
    hs_mapped_bytes_type.tp_basicsize = PyBytes_Type.tp_basicsize;
    hs_mapped_bytes_type.tp_itemsize = PyBytes_Type.tp_itemsize;
    return PyType_Ready(&hs_mapped_bytes_type);
}

/* A new bytes object of `size` bytes, contents to be filled in by the caller
 * before anyone else sees it; NULL with MemoryError. */
static PyObject *hs_mapped_bytes_new(Py_ssize_t size) {
    size_t header = sizeof(hs_mapping_head) + offsetof(PyBytesObject, ob_sval) + 1;
    size_t length;
    void *mapping;
    PyBytesObject *object;
    if (size < 0 || (size_t)size > (size_t)PY_SSIZE_T_MAX - header) return PyErr_NoMemory();
    length = header + (size_t)size;
    mapping = mmap(NULL, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mapping == MAP_FAILED) return PyErr_NoMemory();
    ((hs_mapping_head *)mapping)->length = length;
    object = (PyBytesObject *)((hs_mapping_head *)mapping + 1);
    PyObject_InitVar((PyVarObject *)object, &hs_mapped_bytes_type, size);
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#endif
    object->ob_shash = -1; /* not hashed yet */
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
    object->ob_sval[size] = '\0';
    return (PyObject *)object;
}

/* Read up to `size` bytes of `fd` into `into`: how many were read (fewer only
 * at end of file), or -1 with errno set.  Call without the GIL. */
static Py_ssize_t hs_read_fully(int fd, char *into, Py_ssize_t size) {
    Py_ssize_t done = 0;
    while (done < size) {
        ssize_t n = read(fd, into + done, (size_t)(size - done) < (1u << 30) ? (size_t)(size - done) : (1u << 30));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return -1;
        if (n == 0) break;
        done += n;
    }
    return done;
}

#endif
