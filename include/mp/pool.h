/* SPDX-License-Identifier: MIT */
/**
 * @file mp/pool.h
 * @brief Pool: a set of worker processes that run tasks, as Python's
 *        `multiprocessing.Pool`, that never hangs when a worker dies.
 *
 * Workers are forked by the pool's own result-handler thread (a thread of the
 * process that called mp_pool_new(), started by it). Tasks are C functions:
 * they are valid in the workers because the workers are forks of the caller.
 * Arguments and results cross through the family heap (see mp/heap.h); when
 * the caller's input or output array already lives in the heap, workers read
 * and write it in place, with no copy.
 *
 * Every task returns an `int` status: `>= 0` is success, negative is failure,
 * and the status reaches mp_async_result_get(), the callbacks and the
 * iterators unchanged. libmp itself reports two codes for tasks:
 *  - `-ECONNABORTED`: the worker running the task died (killed by a signal,
 *    a crash, or exit() called in the task). Only that task fails; a new
 *    worker takes the dead one's place; every other task still runs.
 *  - `-ESHUTDOWN`: the task was dropped or stopped by mp_pool_terminate()
 *    (or mp_pool_free() on a pool still running).
 *
 * Callbacks run in the process that created the pool (same pid), on the
 * pool's result-handler thread, one at a time, in the order results are
 * collected. A callback must return promptly (while it runs, no other result
 * is delivered); its return value is ignored, so a failing callback never
 * stops the pool.
 *
 * Never hang: a worker's death is seen at once through its pidfd; the pool
 * knows which task each worker holds (a worker claims a task with one atomic
 * operation that names it), so the dead worker's task fails with
 * `-ECONNABORTED` and everything else completes. Workers die with the
 * parent (`PR_SET_PDEATHSIG(SIGKILL)`, also when the parent is killed).
 *
 * Process rules: a pool may be used only by the process that created it; any
 * call from a worker or another process returns `-ECHILD`. Every call is
 * thread safe within that process.
 *
 * Descriptors: a worker keeps only stdin, stdout, stderr and its own channel
 * to the pool; every other descriptor the creator had when the worker was
 * forked is closed in the worker. So a Pipe end or a socket closed by the
 * creator is closed for good (its peer sees end of file) while the pool
 * lives, and a task gets a descriptor only through mp_pool_apply_async_fd()
 * (or opens its own, e.g. in the initializer).
 */
#ifndef MP_POOL_H
#define MP_POOL_H

#include <stddef.h>

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

/** A pool of worker processes (Python's `multiprocessing.Pool`). */
typedef struct mp_pool mp_pool;

/** The pending result of an asynchronous call (Python's `AsyncResult`). */
typedef struct mp_async_result mp_async_result;

/** The iterator of mp_pool_imap() and mp_pool_imap_unordered(). */
typedef struct mp_pool_iter mp_pool_iter;

/** Where an apply task writes its result; valid only during the task. */
typedef struct mp_pool_out mp_pool_out;

/**
 * A map task: read one item, write one result.
 * @param item points to `item_size` bytes (read-only).
 * @param result points to `result_size` bytes to fill.
 * @param ctx the `ctx` given to the map call, passed as is: it must be
 *            meaningful in the worker (a heap pointer, or memory that existed
 *            when the worker was forked, such as a global).
 * @return `>= 0` for success, negative for failure.
 */
typedef int (*mp_pool_map_fn)(const void *item, void *result, void *ctx);

/**
 * An apply task: read a byte argument, produce a byte result of any size
 * with mp_pool_out_alloc() or mp_pool_out_set() (no result: an empty one).
 * @return `>= 0` for success, negative for failure.
 */
typedef int (*mp_pool_apply_fn)(const void *arg, size_t len, mp_pool_out *out, void *ctx);

/**
 * An apply task that carries a file descriptor (mp_pool_apply_async_fd()):
 * @p fd is the worker's own copy; libmp closes it when the task returns.
 */
typedef int (*mp_pool_fd_fn)(int fd, const void *arg, size_t len, mp_pool_out *out, void *ctx);

/**
 * A callback, run in the pool's creator on the result-handler thread.
 * @param res the result (its data is readable with mp_async_result_data());
 *            the callback may call mp_async_result_free() on it.
 * @param status the task's status (map: 0, or the failing item's status).
 * @return ignored (a failing callback does not disturb the pool).
 */
typedef int (*mp_pool_callback)(mp_async_result *res, int status, void *arg);

/** Callbacks of an asynchronous call (Python's `callback`, `error_callback`). */
typedef struct mp_pool_callbacks {
  /** Run when the status is `>= 0`; may be NULL. */
  mp_pool_callback callback;
  /** Run when the status is negative (the task failed, its worker died, or
   *  the pool was terminated); may be NULL. */
  mp_pool_callback error_callback;
  /** Passed to both. */
  void *arg;
} mp_pool_callbacks;

/** Options for mp_pool_new(). Zeroed fields (or NULL) mean the default. */
typedef struct mp_pool_options {
  /** Run once in each worker, before its first task (also in replacement
   *  workers). */
  void (*initializer)(void *arg);
  /** Passed to the initializer. */
  void *initargs;
  /** A worker exits after this many tasks (a map chunk counts as one) and a
   *  new one replaces it; 0: workers live as long as the pool. */
  unsigned long maxtasksperchild;
} mp_pool_options;

/**
 * @brief Start a pool of @p processes workers (Python's `Pool(processes)`).
 *
 * Maps the family heap if needed, starts the result-handler thread and forks
 * the workers from it. Returns when every worker has been forked.
 * @param processes 0 for mp_cpu_count(); at most 1024.
 * @return 0; `-EINVAL` for a negative or too large count or NULL @p ret;
 *         `-ENOMEM`; `-EAGAIN`/`-EMFILE` when the kernel refuses a process,
 *         thread or descriptor.
 */
MP_EXPORT int mp_pool_new(int processes, const mp_pool_options *opts, mp_pool **ret);

/**
 * @brief Run one task and wait for it (Python's `apply`).
 * @param arg @p len bytes copied to the worker (NULL when @p len is 0), as in
 *            mp_pool_apply_async().
 * @param[out] result NULL to drop the result; else a malloc()ed copy of the
 *             task's result (free() it; NULL for an empty result), written
 *             when the call returns a status.
 * @param[out] result_len may be NULL.
 * @return the task's status (`>= 0`, or its negative failure), or
 *         `-ECONNABORTED` when its worker died; `-EPIPE` when the pool is
 *         closed or terminated; `-ECHILD` from another process; `-EINVAL`;
 *         `-ENOMEM`.
 */
MP_EXPORT int mp_pool_apply(mp_pool *pool, mp_pool_apply_fn fn, const void *arg, size_t len,
                            void *ctx, void **result, size_t *result_len);

/**
 * @brief Submit one task (Python's `apply_async`); never blocks.
 * @param arg @p len bytes, copied before the call returns (also when they lie
 *            in the family heap): the caller may reuse or free its buffer at
 *            once. To hand a large heap block to a task without a copy, pass
 *            its address as the argument (`&ptr`, `sizeof ptr`) and keep the
 *            block unchanged until the result is ready.
 * @param cb NULL for no callbacks.
 * @param[out] ret the result; free it with mp_async_result_free().
 * @return 0; `-EPIPE` when the pool is closed or terminated; `-ECHILD`;
 *         `-EINVAL`; `-ENOMEM`.
 */
MP_EXPORT int mp_pool_apply_async(mp_pool *pool, mp_pool_apply_fn fn, const void *arg, size_t len,
                                  void *ctx, const mp_pool_callbacks *cb, mp_async_result **ret);

/**
 * @brief Submit a task that receives a copy of @p fd in its worker (for
 *        example an accepted socket, served there).
 *
 * The pool keeps its own copy of @p fd until the worker has received it; the
 * caller may close @p fd at once. The worker's copy is closed when the task
 * returns.
 * @return as mp_pool_apply_async(); `-EBADF` for an invalid @p fd.
 */
MP_EXPORT int mp_pool_apply_async_fd(mp_pool *pool, mp_pool_fd_fn fn, int fd, const void *arg,
                                     size_t len, void *ctx, const mp_pool_callbacks *cb,
                                     mp_async_result **ret);

/**
 * @brief Apply @p fn to each of @p n items and wait (Python's `map`).
 *
 * Item i is `(const char *)items + i * item_size`; its result goes to
 * `(char *)results + i * result_size`, in order. Items are sent in chunks of
 * @p chunksize (0: ceil(n / (4 * workers)), as Python). When @p items or
 * @p results lies in the family heap, workers use it in place. Other memory
 * is copied through the heap, chunk by chunk, while the workers run (the
 * heap blocks are reused warm by the next map of a similar size) — up to
 * 16 MiB of items and results together. Above that, or when the heap has no
 * room, the workers copy items from and results to the caller's memory
 * themselves (process_vm_readv and process_vm_writev: no heap space, no work
 * for the caller), provided chunks hold at least 4 KiB and the system lets a
 * child access its parent's memory (Yama ptrace_scope 0 or no Yama).
 * @param results may be NULL when @p result_size is 0.
 * @return 0 when every item succeeded (all results written); otherwise the
 *         status of the failing item with the lowest index (its chunk stops
 *         there; results of the other chunks are written), `-ECONNABORTED`
 *         when a worker died in a chunk (results of that chunk may be partly
 *         written; nothing outside @p results is), `-EFAULT` when workers
 *         copying directly found part of @p items unreadable or of
 *         @p results unwritable (through the heap such memory crashes the
 *         caller, as memcpy would); `-EPIPE`, `-ECHILD`, `-EINVAL` (NULL with a
 *         non-zero size, a size above 4 GiB), `-ENOMEM`. 0 at once when
 *         @p n is 0.
 */
MP_EXPORT int mp_pool_map(mp_pool *pool, mp_pool_map_fn fn, void *ctx, const void *items, size_t n,
                          size_t item_size, void *results, size_t result_size, size_t chunksize);

/**
 * @brief mp_pool_map() with the item and result sizes taken from the arrays'
 *        element types, so that they cannot be swapped with @p n or with
 *        each other: `MP_POOL_MAP(pool, fn, ctx, items, n, results, chunksize)`
 *        is `mp_pool_map(pool, fn, ctx, items, n, sizeof *(items), results,
 *        sizeof *(results), chunksize)`. @p items and @p results must be typed
 *        pointers (or arrays), not `void *`.
 */
#define MP_POOL_MAP(pool, fn, ctx, items, n, results, chunksize)                               \
  mp_pool_map((pool), (fn), (ctx), (items), (n), sizeof *(items), (results), sizeof *(results), \
              (chunksize))

/**
 * @brief mp_pool_map() without waiting (Python's `map_async`). The arrays must
 *        stay valid until the result is ready; @p results is complete then.
 * @return 0 and the result in @p ret; errors as mp_pool_apply_async().
 */
MP_EXPORT int mp_pool_map_async(mp_pool *pool, mp_pool_map_fn fn, void *ctx, const void *items,
                                size_t n, size_t item_size, void *results, size_t result_size,
                                size_t chunksize, const mp_pool_callbacks *cb,
                                mp_async_result **ret);

/**
 * @brief Python's `starmap`: in C an argument tuple is a struct, so each item
 *        is one struct and @p fn unpacks its fields; this is mp_pool_map()
 *        under the struct-per-item convention (the same call, named for
 *        readers coming from Python).
 */
MP_EXPORT int mp_pool_starmap(mp_pool *pool, mp_pool_map_fn fn, void *ctx, const void *items,
                              size_t n, size_t item_size, void *results, size_t result_size,
                              size_t chunksize);

/** @brief Python's `starmap_async`: mp_pool_map_async() with struct items. */
MP_EXPORT int mp_pool_starmap_async(mp_pool *pool, mp_pool_map_fn fn, void *ctx, const void *items,
                                    size_t n, size_t item_size, void *results, size_t result_size,
                                    size_t chunksize, const mp_pool_callbacks *cb,
                                    mp_async_result **ret);

/**
 * @brief Iterate over the results of @p fn over @p n items in order, as they
 *        arrive (Python's `imap`).
 *
 * Bounded buffering: at most about four chunks per worker are in flight or
 * waiting to be read; more are submitted as mp_pool_iter_next() consumes
 * results. Inputs outside the heap are copied one chunk at a time.
 * @p items must stay valid until the iterator is freed. @p chunksize 0 means 1.
 * @return 0; errors as mp_pool_apply_async().
 */
MP_EXPORT int mp_pool_imap(mp_pool *pool, mp_pool_map_fn fn, void *ctx, const void *items, size_t n,
                           size_t item_size, size_t result_size, size_t chunksize,
                           mp_pool_iter **ret);

/** @brief As mp_pool_imap(), but results come in completion order (Python's
 *         `imap_unordered`); mp_pool_iter_next() tells each item's index. */
MP_EXPORT int mp_pool_imap_unordered(mp_pool *pool, mp_pool_map_fn fn, void *ctx, const void *items,
                                     size_t n, size_t item_size, size_t result_size,
                                     size_t chunksize, mp_pool_iter **ret);

/**
 * @brief The next result of an iterator (Python's `next(it, timeout)`).
 * @param result receives `result_size` bytes when the item succeeded; may be
 *        NULL when the result size is 0.
 * @param[out] index the item's index; may be NULL.
 * @return the item's status (`>= 0`: @p result written); a failing item's
 *         negative status; `-ECANCELED` for the items after a failing one in
 *         the same chunk (not run); `-ECONNABORTED` for the items of a chunk
 *         whose worker died; `-ESHUTDOWN` after terminate; `-EPIPE` when every
 *         item has been returned (Python's `StopIteration`); `-ETIMEDOUT`;
 *         `-ECHILD`; `-EINVAL`. Use from one thread at a time.
 */
MP_EXPORT int mp_pool_iter_next(mp_pool_iter *it, void *result, size_t *index, double timeout);

/**
 * @brief Free an iterator; chunks still running finish in the workers and are
 *        discarded.
 * @return 0; 0 for NULL; `-ECHILD`; `-EINVAL`.
 */
MP_EXPORT int mp_pool_iter_free(mp_pool_iter *it);

/**
 * @brief Refuse further tasks; workers exit once every submitted task is done
 *        (Python's `close`). Never blocks.
 * @return 0 (also when already closed or terminated); `-ECHILD`; `-EINVAL`.
 */
MP_EXPORT int mp_pool_close(mp_pool *pool);

/**
 * @brief Stop at once (Python's `terminate`): every worker is killed
 *        (SIGKILL), every unfinished task fails with `-ESHUTDOWN` (its error
 *        callback runs), and the call returns when the workers are reaped.
 *        Prompt whatever the number of queued tasks.
 * @return 0 (also when already terminated); `-ECHILD`; `-EINVAL`.
 */
MP_EXPORT int mp_pool_terminate(mp_pool *pool);

/**
 * @brief Wait for the workers to exit after mp_pool_close() or
 *        mp_pool_terminate() (Python's `join`).
 * @return 0; `-ETIMEDOUT`; `-EINVAL` when the pool is still running (as
 *         Python's `ValueError`), or for NULL; `-ECHILD`; `-EDEADLK` from a
 *         callback (the handler thread would wait for itself).
 */
MP_EXPORT int mp_pool_join(mp_pool *pool, double timeout);

/**
 * @brief Terminate the pool if it still runs, join it and free it (Python's
 *        `with Pool() as p:` exit). Results and iterators made by the pool stay
 *        valid and ready; free them separately.
 * @return 0; 0 for NULL; `-ECHILD`; `-EINVAL`; `-EDEADLK` from a callback.
 */
MP_EXPORT int mp_pool_free(mp_pool *pool);

/**
 * @brief The pids of the current workers (for diagnostics and tests).
 * @param out room for @p cap pids, or NULL with @p cap 0 to count.
 * @return the number of workers (may exceed @p cap); `-ECHILD`; `-EINVAL`.
 */
MP_EXPORT int mp_pool_worker_pids(mp_pool *pool, int *out, size_t cap);

/**
 * @brief In a task: make room for the result and get a pointer to it.
 *        A second call replaces the first result.
 * @param[out] buf @p size writable bytes (16-byte aligned).
 * @return 0; `-ENOMEM` (the task may return it); `-EINVAL`.
 */
MP_EXPORT int mp_pool_out_alloc(mp_pool_out *out, size_t size, void **buf);

/** @brief In a task: set the result to a copy of @p len bytes.
 *  @return 0; `-ENOMEM`; `-EINVAL`. */
MP_EXPORT int mp_pool_out_set(mp_pool_out *out, const void *data, size_t len);

/**
 * @brief Wait for the result and return the task's status (Python's `get`).
 * @return the status (`>= 0`, or the failure: see mp_pool_map() and
 *         mp_pool_apply()); `-ETIMEDOUT` when not ready within @p timeout (a
 *         task that itself returns `-ETIMEDOUT` is told apart with
 *         mp_async_result_ready()); `-EINVAL`.
 * Safe from any thread of the creating process; `-ECHILD` elsewhere.
 */
MP_EXPORT int mp_async_result_get(mp_async_result *res, double timeout);

/** @brief Wait until ready (Python's `wait`). @return 0; `-ETIMEDOUT`;
 *         `-ECHILD`; `-EINVAL`. */
MP_EXPORT int mp_async_result_wait(mp_async_result *res, double timeout);

/** @brief Whether the result is ready. @return 1, 0, `-ECHILD`, `-EINVAL`. */
MP_EXPORT int mp_async_result_ready(mp_async_result *res);

/**
 * @brief Whether the call succeeded (Python's `successful`).
 * @return 1 or 0; `-EAGAIN` when not ready yet (Python's `ValueError`);
 *         `-ECHILD`; `-EINVAL`.
 */
MP_EXPORT int mp_async_result_successful(mp_async_result *res);

/**
 * @brief How the worker died when the task (or a chunk of the map) failed
 *        with `-ECONNABORTED`, for telling a crash from a kill.
 * @param[out] exitcode written only when 1 is returned, in Process's
 *        convention: minus the signal that killed the worker (`-SIGSEGV`:
 *        often memory that did not exist when the workers were forked, such
 *        as data malloc'ed after mp_pool_new()), or the code a task's
 *        `exit()` gave.
 * @return 1 when a worker's death failed the task; 0 when none did; `-EAGAIN`
 *         when not ready yet; `-ECHILD`; `-EINVAL` (also for NULL
 *         @p exitcode).
 */
MP_EXPORT int mp_async_result_death(mp_async_result *res, int *exitcode);

/**
 * @brief How far an asynchronous map has come: items whose chunk completed
 *        successfully, of all items (for a progress bar; Python has no twin).
 * @param[out] done items done so far (a snapshot; for an apply: 1 once
 *        ready, else 0).
 * @param[out] total the map's item count (1 for an apply).
 * @return 0; `-ECHILD` in another process than the pool's; `-EINVAL` (also
 *         for NULL outputs).
 * Thread safety: safe from any thread of the pool's process, while the map
 * runs.
 */
MP_EXPORT int mp_async_result_progress(mp_async_result *res, size_t *done, size_t *total);

/**
 * @brief The bytes an apply task produced (empty for a map).
 * @param[out] data valid until mp_async_result_free(); NULL when empty.
 * @param[out] len may be NULL.
 * @return 0; `-EAGAIN` when not ready; `-ECHILD`; `-EINVAL`.
 */
MP_EXPORT int mp_async_result_data(mp_async_result *res, const void **data, size_t *len);

/**
 * @brief Release the result. Allowed before it is ready (the pool frees it
 *        once done, after its callback), and inside its own callback.
 * @return 0; 0 for NULL; `-ECHILD`; `-EINVAL`.
 */
MP_EXPORT int mp_async_result_free(mp_async_result *res);

#ifdef __cplusplus
}
#endif

#endif /* MP_POOL_H */
