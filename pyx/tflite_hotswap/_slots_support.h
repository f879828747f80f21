/* C helpers of the slot table (_slots.pyx): atomics and per-thread call counts. */
#ifndef TFLITE_HOTSWAP_SLOTS_SUPPORT_H
#define TFLITE_HOTSWAP_SLOTS_SUPPORT_H

#include <stdint.h>

/* GCC/Clang __atomic builtins: portable to aarch64 and armv7l (on armv6,
 * 64-bit ones need libatomic; setup.py links it where needed). */
#define HS_LOAD(p) __atomic_load_n((p), __ATOMIC_SEQ_CST)
#define HS_XCHG(p, v) __atomic_exchange_n((p), (v), __ATOMIC_SEQ_CST)
#define HS_ADD(p, v) __atomic_add_fetch((p), (v), __ATOMIC_SEQ_CST)
#define HS_COUNT(p, v) __atomic_add_fetch((p), (v), __ATOMIC_RELAXED)
#define HS_STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_SEQ_CST)

static inline int hs_claim(int *flag) {
    int expected = 0;
    return __atomic_compare_exchange_n(flag, &expected, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED);
}

static inline void hs_max(uint64_t *p, uint64_t v) {
    uint64_t cur = __atomic_load_n(p, __ATOMIC_RELAXED);
    while (v > cur && !__atomic_compare_exchange_n(p, &cur, v, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
}

static inline int hs_msb(uint64_t v) { return 63 - __builtin_clzll(v); }

/* How many calls of which runtimes this thread is inside.  close() or a
 * resource-policy swap() from inside a call (a mapping's __getitem__, a
 * signal handler, another greenlet of the same thread) would wait for that
 * very call to finish.  Counters rather than a chain of stack frames: exits
 * may come in any order (greenlets), and nothing points into a dead frame. */
#define HS_TRACKED 8
typedef struct {
    const void *tables[HS_TRACKED];
    int depths[HS_TRACKED];
} hs_calls_t;
/* In a shared object a thread-local's address costs a call to __tls_get_addr,
 * which gcc repeats inside the loops below (7 calls per run() in callgrind);
 * behind a function that is not inlined it is looked up once per use. */
static __thread hs_calls_t hs_calls;
__attribute__((noinline)) static hs_calls_t *hs_this_thread(void) { return &hs_calls; }

static inline void hs_enter_call(const void *table) {
    hs_calls_t *c = hs_this_thread();
    int i, free_slot = -1;
    for (i = 0; i < HS_TRACKED; i++) {
        if (c->tables[i] == table && c->depths[i] > 0) { c->depths[i]++; return; }
        if (free_slot < 0 && c->depths[i] == 0) free_slot = i;
    }
    if (free_slot >= 0) { c->tables[free_slot] = table; c->depths[free_slot] = 1; }
    /* More than HS_TRACKED runtimes nested on one thread: not tracked. */
}

static inline void hs_leave_call(const void *table) {
    hs_calls_t *c = hs_this_thread();
    int i;
    for (i = 0; i < HS_TRACKED; i++) {
        if (c->tables[i] == table && c->depths[i] > 0) { c->depths[i]--; return; }
    }
}

static inline int hs_inside_call(const void *table) {
    hs_calls_t *c = hs_this_thread();
    int i;
    for (i = 0; i < HS_TRACKED; i++) {
        if (c->tables[i] == table && c->depths[i] > 0) return 1;
    }
    return 0;
}

#endif
