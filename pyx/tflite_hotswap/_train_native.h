/* A trainable model's train signature, called through tflite::impl::SignatureRunner.
 *
 * tflite-runtime 2.14's extension module exports Interpreter::GetSignatureRunner(
 * const char*), SignatureRunner::Invoke(), input_tensor(const char*) and
 * output_tensor(const char*) const.  SignatureRunner::Invoke is the subgraph's
 * Invoke plus EnsureTensorDataIsReadable on its outputs -- what the Python
 * wrapper's Invoke(subgraph) does -- without the wrapper, and callable with the
 * GIL released.  The addresses are resolved at run time (see
 * tflite_hotswap.training.native_step); nothing here links against the backend.
 *
 * Non-virtual C++ member functions are called, on the Itanium ABI (gcc and
 * clang on Linux: x86_64, aarch64, arm), as plain functions whose first
 * argument is `this`.
 *
 * hs_tensor_head is the leading part of TfLiteTensor (tensorflow/lite/core/c/
 * common.h), a C struct whose first fields have kept this order since TF 1.x.
 * The binding checks it against what the wrapper reports (address, shape,
 * bytes, type of every input) before using it, and falls back to the wrapper
 * when anything differs.
 */
#ifndef TFLITE_HOTSWAP_TRAIN_NATIVE_H
#define TFLITE_HOTSWAP_TRAIN_NATIVE_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    int size;
    int data[1]; /* really `size` entries */
} hs_int_array;

typedef struct {
    int type;                 /* TfLiteType */
    void *data;               /* TfLitePtrUnion */
    hs_int_array *dims;
    struct {
        float scale;
        int32_t zero_point;
    } params;                 /* TfLiteQuantizationParams */
    int allocation_type;      /* TfLiteAllocationType */
    size_t bytes;
} hs_tensor_head;

typedef void *(*hs_get_runner_method)(void *interpreter, const char *signature_key);
typedef hs_tensor_head *(*hs_runner_tensor_method)(void *runner, const char *name);
typedef int (*hs_runner_invoke_method)(void *runner);

static inline void *hs_get_runner(void *method, void *interpreter, const char *key) {
    return ((hs_get_runner_method)method)(interpreter, key);
}

static inline hs_tensor_head *hs_runner_tensor(void *method, void *runner, const char *name) {
    return ((hs_runner_tensor_method)method)(runner, name);
}

static inline int hs_runner_invoke(void *method, void *runner) {
    return ((hs_runner_invoke_method)method)(runner);
}

#endif
