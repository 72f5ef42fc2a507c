/* ugram/_ordering.h: the memory-ordering primitives of ugram._speedups (ugram/ordering.py
 * gives the argument, record by record). A header of its own so that it can be compiled,
 * and its machine code checked, for targets whose system headers are not here (macOS:
 * tests/unit/test_helper_builds.py). gcc and clang only: the __atomic builtins. */
#ifndef UGRAM_ORDERING_H
#define UGRAM_ORDERING_H

#include <stdint.h>

#if !defined(__GNUC__) && !defined(__clang__)
#error "ugram._speedups needs gcc or clang (the __atomic builtins)"
#endif

/* Kept out of line: tests/unit/test_arm64_ordering.py finds them by symbol in the arm64
 * build and checks their machine code (one call per record or batch: nothing measurable). */
#define UGRAM_NOINLINE __attribute__((noinline))

/* ---- memory ordering -------------------------------------------------------------------
 *
 * Only lock-free atomics work between processes (a lock-based fallback would take a lock
 * private to each process), and only a lock-free 8-byte atomic is one access that never
 * tears. Refused at build time where they are not; PyInit checks again at import. */
_Static_assert(__atomic_always_lock_free(8, 0), "ugram needs lock-free 8-byte atomics: "
                                                "only those work between processes");
_Static_assert(sizeof(uint64_t) == 8 && _Alignof(uint64_t) == 8,
               "u64 words must be 8-aligned for single-copy atomicity");

/* An acquire load: no later load or store of this thread is performed before it (ldar /
 * ldapr on arm64, a plain mov on x86-64). */
static inline uint64_t load_acquire(const uint64_t *p)
{
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

/* A release store: every earlier load and store of this thread is performed before it
 * (stlr on arm64, a plain mov on x86-64). */
static inline void store_release(uint64_t *p, uint64_t v)
{
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}

/* A counter that only this process writes: read (its own value: relaxed), store released. */
static inline void add_release(uint64_t *p, uint64_t n)
{
    store_release(p, __atomic_load_n(p, __ATOMIC_RELAXED) + n);
}

/* A full barrier, store-load included (dmb ish on arm64, mfence or a locked op on x86-64):
 * the sleep/wake handshake is Dekker's pattern, which release/acquire alone does not order. */
static inline void fence_seq_cst(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

#endif /* UGRAM_ORDERING_H */
