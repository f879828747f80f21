/* Native entry points of a TFLite backend, resolved at run time.
 *
 * tflite-runtime's extension module exports the C++ interpreter's own methods
 * (tflite::impl::Interpreter::Invoke(), AllocateTensors()); calling them with
 * the GIL released lets an inference loop run while another thread allocates
 * a new model (XNNPACK packs weights there, for tens of milliseconds).  They
 * are looked up in the already-loaded module (RTLD_NOLOAD): no link-time
 * dependency, and nothing at all when a backend lacks them.
 *
 * A non-virtual C++ member function taking no arguments is called, on the
 * Itanium ABI that gcc and clang use on Linux (x86_64, aarch64, arm), as a
 * plain function whose first argument is `this`.  TfLiteStatus is a C enum.
 */
#ifndef TFLITE_HOTSWAP_NATIVE_H
#define TFLITE_HOTSWAP_NATIVE_H

#include <dlfcn.h>
#ifdef __linux__
#include <link.h>
#endif
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef int (*hs_status_method)(void *self);
/* void Interpreter::SetCancellationFunction(void* data, bool (*check)(void*)) */
typedef void (*hs_set_cancellation_method)(void *self, void *data, bool (*check)(void *));

static inline void *hs_resolve(const char *library, const char *symbol) {
    void *handle = dlopen(library, RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD);
    void *fn;
    if (handle == NULL) return NULL;
    fn = dlsym(handle, symbol);
    dlclose(handle); /* NOLOAD took a reference; the module itself stays loaded */
    return fn;
}

/* Where `library` is loaded: the difference between its addresses in memory
 * and in the file (link_map.l_addr), 0 if it is not loaded.  A hidden symbol's
 * address is this plus its value in the file's .symtab (glibc and musl both
 * have dlinfo; Python.h defines _GNU_SOURCE before anything is included). */
static inline uintptr_t hs_load_bias(const char *library) {
#ifdef __linux__
    void *handle = dlopen(library, RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD);
    struct link_map *map = NULL;
    uintptr_t bias = 0;
    if (handle == NULL) return 0;
    if (dlinfo(handle, RTLD_DI_LINKMAP, &map) == 0 && map != NULL) bias = (uintptr_t)map->l_addr;
    dlclose(handle);
    return bias;
#else
    (void)library; /* ELF symbol tables only: elsewhere nothing hidden is looked for */
    return 0;
#endif
}

/* The file of the loaded object that contains `address`, or NULL. */
static inline const char *hs_owner(const void *address) {
    Dl_info info;
    if (dladdr(address, &info) == 0) return NULL;
    return info.dli_fname;
}

static inline int hs_call_status(void *method, void *self) {
    return ((hs_status_method)method)(self);
}

/* The first fields of TfLiteContext (tensorflow/lite/core/c/common.h; the
 * same since TF 1.x in both backends). */
typedef struct {
    size_t tensors_size;
    void *get_execution_plan;
    void *tensors;
    void *impl_; /* the tflite::Subgraph this context belongs to */
} hs_context_head;

/* The interpreter's primary subgraph (a tflite::Subgraph*), or NULL when what
 * is found is not the layout known.  tflite::impl::Interpreter has no virtual
 * methods and its first member is `TfLiteContext* context_`, the primary
 * subgraph's context; that context is a member of the subgraph (40 bytes in,
 * in both backends) and its impl_ points back at it.  Checked: both pointers
 * are aligned, the context counts the tensors the wrapper counts, and it lies
 * just inside the subgraph. */
static inline void *hs_primary_subgraph(void *interpreter, size_t n_tensors) {
    hs_context_head *context;
    uintptr_t at, subgraph;
    if ((uintptr_t)interpreter % _Alignof(hs_context_head *)) return NULL;
    context = *(hs_context_head **)interpreter;
    if (context == NULL || (uintptr_t)context % _Alignof(hs_context_head)) return NULL;
    if (context->tensors_size != n_tensors) return NULL;
    at = (uintptr_t)context;
    subgraph = (uintptr_t)context->impl_;
    if (subgraph == 0 || at <= subgraph || at - subgraph > 256) return NULL;
    return (void *)subgraph;
}

/* The interpreter asks this between operators (in every subgraph, so also in
 * each iteration of a WHILE body): a call stuck in invoke ends with an error
 * once its flag is set. */
static bool hs_cancel_requested(void *flag) {
    return __atomic_load_n((int *)flag, __ATOMIC_RELAXED) != 0;
}

static inline void hs_install_cancellation(void *method, void *self, int *flag) {
    ((hs_set_cancellation_method)method)(self, flag, hs_cancel_requested);
}

/* TfLiteCustomAllocation (tensorflow/lite/core/c/common.h): memory a tensor
 * uses instead of the arena.  Interpreter::SetCustomAllocationForTensor(int
 * tensor_index, const TfLiteCustomAllocation&, int64_t flags) points a tensor at
 * it: lending a caller's input array to the interpreter for one call. */
typedef struct {
    void *data;
    size_t bytes;
} hs_custom_allocation;
typedef int (*hs_set_allocation_method)(void *self, int tensor, const hs_custom_allocation *allocation,
                                        int64_t flags);

static inline int hs_set_allocation(void *method, void *self, int tensor, void *data, size_t bytes) {
    hs_custom_allocation allocation = {data, bytes};
    return ((hs_set_allocation_method)method)(self, tensor, &allocation, 0);
}

#endif
