/* SPDX-License-Identifier: MIT */
/**
 * @file mp/heap.h
 * @brief The family heap: one shared region every libmp process sees at the
 *        same address.
 *
 * The first libmp call that needs shared memory maps one anonymous
 * `MAP_SHARED` region. Every process that libmp forks afterwards inherits it at
 * the same address, so a pointer into it is valid in every process of the
 * family: also for blocks allocated in a child after the fork, and also when
 * the pointer is sent through a queue or pipe. Every libmp object lives here.
 *
 * The region is reserved, not committed: pages cost memory only once touched.
 * Its size is, in order of precedence: `mp_heap_options.size` given to
 * `mp_heap_init()` before any other libmp call, the environment variable
 * `MP_HEAP_SIZE` (bytes, with an optional K, M or G suffix), or 1 GiB.
 *
 * The allocator is shared and crash-safe: a process killed (even by SIGKILL)
 * while inside `mp_heap_alloc()` or `mp_heap_free()` leaves the heap consistent
 * for the others; the operation it was doing either happened whole or not at
 * all. Blocks a dead process still held stay allocated.
 *
 * When the last process of the family exits, the kernel frees the region;
 * nothing is left in /dev/shm or anywhere else in the file system.
 *
 * Fork: a process forked with plain `fork()` before the heap exists gets a
 * heap of its own at its first libmp call; to share, let libmp map the heap
 * first (any libmp constructor or `mp_heap_init()` does).
 */
#ifndef MP_HEAP_H
#define MP_HEAP_H

#include <stddef.h>

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Options for mp_heap_init(). Zero fields mean the default. */
typedef struct mp_heap_options {
  /** Bytes to reserve; 0: `MP_HEAP_SIZE` from the environment, else 1 GiB. */
  size_t size;
} mp_heap_options;

/**
 * @brief Map the family heap now, with the given options.
 *
 * Optional: every libmp call that needs the heap maps it on first use.
 * @param opts NULL for defaults.
 * @return 0 when this call mapped the heap; `-EALREADY` when the heap was
 *         already mapped (its size is not changed); `-EINVAL` for a size below
 *         64 KiB or an unparsable `MP_HEAP_SIZE`; `-ENOMEM` when the address
 *         space cannot be reserved.
 * Thread safety: safe; concurrent first calls map one heap.
 */
MP_EXPORT int mp_heap_init(const mp_heap_options *opts);

/**
 * @brief Allocate @p size bytes, 16-byte aligned, in the family heap.
 *
 * @return the block, or NULL when the heap is exhausted or cannot be mapped
 *         (never a crash). `mp_heap_alloc(0)` returns a unique minimal block.
 * Thread and process safety: safe from every thread of every process of the
 * family. The block is uninitialised.
 */
MP_EXPORT void *mp_heap_alloc(size_t size);

/**
 * @brief Allocate @p n * @p size zeroed bytes in the family heap.
 * @return the block, or NULL on overflow of n * size or exhaustion.
 */
MP_EXPORT void *mp_heap_calloc(size_t n, size_t size);

/**
 * @brief Resize a heap block, keeping its contents up to the smaller size.
 * @return the (possibly moved) block; NULL on exhaustion, in which case @p ptr
 *         is left untouched. `mp_heap_realloc(NULL, n)` is mp_heap_alloc(n).
 */
MP_EXPORT void *mp_heap_realloc(void *ptr, size_t size);

/**
 * @brief Return a block to the family heap. Any process of the family may free
 *        a block any other allocated.
 * @return 0; 0 for NULL; `-EINVAL` for a pointer that is not the start of a
 *         live block of this heap: a pointer into a block, a foreign pointer,
 *         or a block already freed, also after it merged with its neighbours.
 *         Nothing is changed then. (Only a block whose address a later
 *         allocation handed out again is live again, and that one is freed.)
 */
MP_EXPORT int mp_heap_free(void *ptr);

/**
 * @brief Whether @p ptr points into the family heap.
 * @return 1 or 0.
 */
MP_EXPORT int mp_heap_contains(const void *ptr);

/** Usage figures of the family heap, from mp_heap_stats(). */
typedef struct mp_heap_stats {
  size_t size;      /**< bytes reserved */
  size_t used;      /**< bytes in allocated blocks, headers included */
  size_t committed; /**< bytes ever handed out from the reserve (high mark) */
  size_t blocks;    /**< allocated blocks */
} mp_heap_stats;

/**
 * @brief Read the heap's usage figures.
 * @return 0; `-EINVAL` for NULL; `-ENOMEM` when the heap cannot be mapped.
 */
MP_EXPORT int mp_heap_stats_get(mp_heap_stats *out);

/**
 * @brief Write a report of the family heap to descriptor @p fd: its figures
 *        (as mp_heap_stats_get()) and the live libmp objects by kind (Lock,
 *        Semaphore, Event, Condition, Barrier, Process, Value/Array, Queue)
 *        with the count and bytes of the other blocks (user data, messages,
 *        pool and manager state). For finding what a family leaks; under
 *        `MP_LOG=info` the process that mapped the heap logs the same report
 *        at its normal exit.
 * @return 0; `-EBADF` for a negative @p fd; `-ENOMEM` when the heap cannot
 *         be mapped; a negative errno of write(2).
 * Thread and process safety: safe; takes the heap's lock while it counts
 * (the time of one walk over every block).
 */
MP_EXPORT int mp_heap_report(int fd);

#ifdef __cplusplus
}
#endif

#endif /* MP_HEAP_H */
