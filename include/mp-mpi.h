/* SPDX-License-Identifier: MIT */
/**
 * @file mp-mpi.h
 * @brief libmp-mpi: libmp's Pool on MPI, across the ranks of an MPI job
 *        (several machines), with the calls of mp/pool.h.
 *
 * A separate library (`pkg-config --cflags --libs libmp-mpi`): programs that
 * do not use it never map MPI's libraries. `<mp.h>` does not include this
 * header, and this header does not include `<mpi.h>`.
 *
 * **The calls.** Every mp_pool_* call of mp/pool.h has a twin here named
 * mp_mpi_pool_* (results: mp_mpi_async_result_*) with the same parameters in
 * the same order and the same result and error conventions. A map task has
 * the very type of mp_pool_map_fn; an apply task differs only in its output
 * handle (#mp_mpi_pool_out, filled with mp_mpi_pool_out_set() or
 * mp_mpi_pool_out_alloc()). A program switches from the fork Pool by changing
 * how it creates the pool; with MP_MPI_SAME_CALLS (end of this header) the
 * other calls keep their mp_pool_* names.
 *
 * **Launch models.**
 *  - `mpiexec -n N ./program`: rank 0 runs the program; ranks 1..N-1 become
 *    workers when they reach mp_mpi_pool_new() (or mp_mpi_pool_serve(), which
 *    a program may call first thing in main() so that workers run nothing
 *    else), serve every pool rank 0 creates, and exit(0) when rank 0
 *    finalizes MPI (libmp-mpi does so at exit when it initialized MPI).
 *    Everything main() does before that call runs on every rank, as in any
 *    MPI program.
 *  - `./program` started alone (an MPI singleton): mp_mpi_pool_new() spawns
 *    its workers with MPI_Comm_spawn(), running the same executable with the
 *    same arguments; they run main() up to mp_mpi_pool_new() (or
 *    mp_mpi_pool_serve()) like Python's spawn start method reruns the main
 *    module. A freed pool's workers wait for the program's next pool (one
 *    that needs no more workers reuses them) and exit when the program
 *    finalizes MPI (at exit when libmp-mpi initialized it). Open MPI needs
 *    slots for them (`OMPI_MCA_rmaps_base_oversubscribe=1` beyond the CPU
 *    count). MPICH 4.0 (Debian 12) cannot spawn: mp_mpi_pool_new() returns
 *    `-EAGAIN`; use mpiexec there.
 *
 * **Functions and ctx across address spaces.** Every rank runs the same
 * executable, but under ASLR at other addresses. libmp-mpi sends a function
 * as (loaded object, offset) and maps it back in the worker. When a pool
 * starts, each worker compares its executable and shared libraries with rank
 * 0's (GNU build-id, else the size of the image): a different executable
 * fails mp_mpi_pool_new() with `-ENOEXEC`; a task whose function lies in a
 * library that differs or is missing on its worker fails with `-ENOEXEC`.
 * A function pointer that lies in no loaded object is refused with
 * `-EINVAL` when submitted. **A ctx (and the initializer's initargs) must be
 * NULL or point into a loaded object's image** — a global or static
 * variable, a string literal, a const table: the task receives the address
 * of the *worker's own copy* of that object (what the worker's copy holds:
 * its initial value, or what the initializer stored there), never the
 * caller's memory. Heap or stack pointers are refused with `-EINVAL`;
 * pointers into libmp's family heap are local to one machine and mean
 * nothing on another rank. Arguments, items and results travel as bytes.
 *
 * **Scheduling.** Dynamic: each worker holds a few chunks at a time (enough
 * to hide the network's latency) and receives the next ones as it returns
 * results; map results come back in input order. Items and results of large
 * chunks go straight from the caller's array and into the caller's array
 * (no copy on the caller's side).
 *
 * **Callbacks** run in rank 0 on the pool's progress thread (the one thread
 * that talks MPI there), one at a time, as in mp/pool.h.
 *
 * **A worker that dies.** MPI (Open MPI 4, MPICH 4) ends the whole job when
 * one of its ranks dies: mpiexec prints which rank died and exits non-zero,
 * within seconds; the caller never hangs waiting for the lost tasks. An MPI
 * with user-level failure mitigation could instead fail them with
 * `-ECONNABORTED`; that code is reserved for it.
 *
 * **Limits.** maxtasksperchild is not supported (`-ENOTSUP`: ranks are not
 * replaced); mp_mpi_pool_terminate() cannot stop a task a worker is already
 * running (MPI cannot interrupt one rank): it fails everything not yet sent
 * at once and drops the results of the rest as they come. MPI is
 * initialized with MPI_THREAD_SERIALIZED or better (libmp-mpi calls
 * MPI_Init_thread() when the program has not initialized MPI; a program that
 * did must ask for at least MPI_THREAD_SERIALIZED and must not itself use
 * MPI while a pool runs).
 *
 * Process rules: a pool may be used only by the process that created it
 * (`-ECHILD` elsewhere). Every call is thread safe within that process.
 */
#ifndef MP_MPI_H
#define MP_MPI_H

#include <stddef.h>

#include <mp/common.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(MP_MPI_BUILDING) && defined(__GNUC__)
#define MP_MPI_EXPORT __attribute__((visibility("default")))
#else
#define MP_MPI_EXPORT
#endif

/** A pool of MPI worker ranks. */
typedef struct mp_mpi_pool mp_mpi_pool;

/** The pending result of an asynchronous call. */
typedef struct mp_mpi_async_result mp_mpi_async_result;

/** The iterator of mp_mpi_pool_imap() and mp_mpi_pool_imap_unordered(). */
typedef struct mp_mpi_pool_iter mp_mpi_pool_iter;

/** Where an apply task writes its result; valid only during the task. */
typedef struct mp_mpi_pool_out mp_mpi_pool_out;

/**
 * A map task (the same type as mp_pool_map_fn): read one item, write one
 * result. @p ctx: see "Functions and ctx" above.
 * @return `>= 0` for success, negative for failure.
 */
typedef int (*mp_mpi_pool_map_fn)(const void *item, void *result, void *ctx);

/** An apply task: read @p len bytes, produce a result with
 *  mp_mpi_pool_out_set() or mp_mpi_pool_out_alloc() (none: empty).
 *  @return `>= 0` for success, negative for failure. */
typedef int (*mp_mpi_pool_apply_fn)(const void *arg, size_t len, mp_mpi_pool_out *out, void *ctx);

/** A callback, run in rank 0 on the pool's progress thread; its return
 *  value is ignored. It may call mp_mpi_async_result_free() on @p res. */
typedef int (*mp_mpi_pool_callback)(mp_mpi_async_result *res, int status, void *arg);

/** Callbacks of an asynchronous call (Python's `callback`, `error_callback`). */
typedef struct mp_mpi_pool_callbacks {
  /** Run when the status is `>= 0`; may be NULL. */
  mp_mpi_pool_callback callback;
  /** Run when the status is negative; may be NULL. */
  mp_mpi_pool_callback error_callback;
  /** Passed to both (a plain pointer: callbacks run in rank 0). */
  void *arg;
} mp_mpi_pool_callbacks;

/** Options for mp_mpi_pool_new(). Zeroed fields (or NULL) mean the default. */
typedef struct mp_mpi_pool_options {
  /** Run once in each worker before its first task of this pool; a function
   *  of the executable or of a shared library (mapped like a task's). */
  void (*initializer)(void *arg);
  /** Passed to the initializer: NULL or a pointer into a loaded object's
   *  image, as a ctx. */
  void *initargs;
  /** Must be 0 (`-ENOTSUP` otherwise): MPI ranks are not replaced. */
  unsigned long maxtasksperchild;
  /** Chunks a worker holds at once (sent ahead of its need); 0: 64 for small
   *  chunks, fewer for large ones (about 4 MiB of items in flight). */
  unsigned prefetch;
} mp_mpi_pool_options;

/**
 * @brief On a worker rank, serve pools until the job ends, then exit(0); on
 *        rank 0 (or a singleton), return 0 at once.
 *
 * Initializes MPI when the program has not. Calling it first in main() keeps
 * worker ranks from running the rest of main(); mp_mpi_pool_new() does the
 * same for programs that do not call it.
 * @return 0 on rank 0; never returns on a worker rank (a worker that cannot
 *         start prints why on stderr and exits 1); `-ENOTSUP` when MPI gives
 *         less than MPI_THREAD_SERIALIZED; `-EPROTO` when MPI fails to
 *         initialize. Not thread safe: call it before starting threads.
 */
MP_MPI_EXPORT int mp_mpi_pool_serve(void);

/**
 * @brief Start a pool of @p processes worker ranks (Python's `Pool(processes)`).
 *
 * Under mpiexec (more than one rank) the workers are ranks 1..@p processes
 * of MPI_COMM_WORLD; started alone, the program spawns @p processes workers.
 * On a worker rank the call serves (see mp_mpi_pool_serve()) and never
 * returns. Blocks until every worker has checked its executable against
 * rank 0's and run the initializer.
 * @param processes 0: every other rank under mpiexec; the number of CPUs
 *        when spawning.
 * @return 0; `-EINVAL` for a negative count, more than the other ranks, NULL
 *         @p ret, or an initializer or initargs that lies in no loaded
 *         object; `-ENOTSUP` for maxtasksperchild, or an MPI without
 *         MPI_THREAD_SERIALIZED; `-ENOEXEC` when a worker runs another
 *         executable; `-EBUSY` when another pool of the same MPI_COMM_WORLD
 *         ranks is running (under mpiexec one pool at a time; spawned pools
 *         may run side by side when MPI gives MPI_THREAD_MULTIPLE); `-EAGAIN` when MPI cannot spawn
 * the workers;
 *         `-EPROTO` when MPI fails; `-ENOMEM`.
 */
MP_MPI_EXPORT int mp_mpi_pool_new(int processes, const mp_mpi_pool_options *opts,
                                  mp_mpi_pool **ret);

/** @brief The number of worker ranks. @return the count; `-ECHILD`;
 *         `-EINVAL`. Thread safe. */
MP_MPI_EXPORT int mp_mpi_pool_size(mp_mpi_pool *pool);

/**
 * @brief Run one task on a worker and wait for it (Python's `apply`).
 * @param arg @p len bytes sent to the worker (NULL when @p len is 0).
 * @param ctx NULL or a pointer into a loaded object's image (see above).
 * @param[out] result NULL to drop the result; else a malloc()ed copy of the
 *             task's result (free() it; NULL when empty).
 * @param[out] result_len may be NULL.
 * @return the task's status, or `-ENOEXEC` (its function is not the same on
 *         the worker); `-ESHUTDOWN` after terminate; `-EPIPE` when the pool
 *         is closed; `-ECHILD`; `-EINVAL` (also for a function or ctx outside
 *         every loaded object); `-ENOMEM`. Blocks without timeout.
 */
MP_MPI_EXPORT int mp_mpi_pool_apply(mp_mpi_pool *pool, mp_mpi_pool_apply_fn fn, const void *arg,
                                    size_t len, void *ctx, void **result, size_t *result_len);

/**
 * @brief Submit one task (Python's `apply_async`); never blocks. @p arg is
 *        copied before the call returns.
 * @param cb NULL for no callbacks.
 * @param[out] ret the result; free it with mp_mpi_async_result_free().
 * @return 0; `-EPIPE` when the pool is closed or terminated; `-ECHILD`;
 *         `-EINVAL`; `-ENOMEM`.
 */
MP_MPI_EXPORT int mp_mpi_pool_apply_async(mp_mpi_pool *pool, mp_mpi_pool_apply_fn fn,
                                          const void *arg, size_t len, void *ctx,
                                          const mp_mpi_pool_callbacks *cb,
                                          mp_mpi_async_result **ret);

/**
 * @brief Apply @p fn to each of @p n items and wait (Python's `map`).
 *
 * Item i is `(const char *)items + i * item_size`, its result goes to
 * `(char *)results + i * result_size`. Chunks of @p chunksize items (0:
 * ceil(n / (4 * workers)), as Python, at most 256 KiB of items and results)
 * go to whichever worker is free next.
 * @return 0 when every item succeeded; else the status of the failing item
 *         with the lowest index (its chunk stops there; other chunks'
 *         results are written); `-ENOEXEC`; `-ESHUTDOWN` after terminate;
 *         `-EPIPE`; `-ECHILD`; `-EINVAL` (NULL with a non-zero size, a size
 *         above 1 GiB, a function or ctx outside every loaded object);
 *         `-ENOMEM`. 0 at once when @p n is 0. Blocks without timeout.
 */
MP_MPI_EXPORT int mp_mpi_pool_map(mp_mpi_pool *pool, mp_mpi_pool_map_fn fn, void *ctx,
                                  const void *items, size_t n, size_t item_size, void *results,
                                  size_t result_size, size_t chunksize);

/**
 * @brief mp_mpi_pool_map() without waiting (Python's `map_async`): both
 *        arrays must stay valid until the result is ready.
 * @return 0 and the result in @p ret; errors as mp_mpi_pool_apply_async().
 */
MP_MPI_EXPORT int mp_mpi_pool_map_async(mp_mpi_pool *pool, mp_mpi_pool_map_fn fn, void *ctx,
                                        const void *items, size_t n, size_t item_size,
                                        void *results, size_t result_size, size_t chunksize,
                                        const mp_mpi_pool_callbacks *cb, mp_mpi_async_result **ret);

/** @brief Python's `starmap`: mp_mpi_pool_map() with one struct per item.
 *  @return as mp_mpi_pool_map(). */
MP_MPI_EXPORT int mp_mpi_pool_starmap(mp_mpi_pool *pool, mp_mpi_pool_map_fn fn, void *ctx,
                                      const void *items, size_t n, size_t item_size, void *results,
                                      size_t result_size, size_t chunksize);

/** @brief Python's `starmap_async`: mp_mpi_pool_map_async() with struct
 *  items. @return as mp_mpi_pool_map_async(). */
MP_MPI_EXPORT int mp_mpi_pool_starmap_async(mp_mpi_pool *pool, mp_mpi_pool_map_fn fn, void *ctx,
                                            const void *items, size_t n, size_t item_size,
                                            void *results, size_t result_size, size_t chunksize,
                                            const mp_mpi_pool_callbacks *cb,
                                            mp_mpi_async_result **ret);

/**
 * @brief Iterate over the results in input order as they arrive (Python's
 *        `imap`). @p items must stay valid until the iterator is freed; the
 *        iterator keeps every result until it is read. @p chunksize 0 means 1.
 * @return 0; errors as mp_mpi_pool_apply_async().
 */
MP_MPI_EXPORT int mp_mpi_pool_imap(mp_mpi_pool *pool, mp_mpi_pool_map_fn fn, void *ctx,
                                   const void *items, size_t n, size_t item_size,
                                   size_t result_size, size_t chunksize, mp_mpi_pool_iter **ret);

/** @brief As mp_mpi_pool_imap() in completion order (Python's
 *  `imap_unordered`). @return as mp_mpi_pool_imap(). */
MP_MPI_EXPORT int mp_mpi_pool_imap_unordered(mp_mpi_pool *pool, mp_mpi_pool_map_fn fn, void *ctx,
                                             const void *items, size_t n, size_t item_size,
                                             size_t result_size, size_t chunksize,
                                             mp_mpi_pool_iter **ret);

/**
 * @brief The next result of an iterator (Python's `next(it, timeout)`).
 * @param result receives `result_size` bytes when the item succeeded.
 * @param[out] index the item's index; may be NULL.
 * @return the item's status (`>= 0`: @p result written); a failing item's
 *         status; `-ECANCELED` for the items after a failing one in its
 *         chunk; `-ENOEXEC`; `-ESHUTDOWN` after terminate; `-EPIPE` when
 *         every item has been returned; `-ETIMEDOUT`; `-ECHILD`; `-EINVAL`.
 *         Use from one thread at a time.
 */
MP_MPI_EXPORT int mp_mpi_pool_iter_next(mp_mpi_pool_iter *it, void *result, size_t *index,
                                        double timeout);

/** @brief Free an iterator (chunks still running finish and are dropped).
 *  @return 0; 0 for NULL; `-ECHILD`. */
MP_MPI_EXPORT int mp_mpi_pool_iter_free(mp_mpi_pool_iter *it);

/** @brief Refuse further tasks (Python's `close`); never blocks.
 *  @return 0 (also when already closed); `-ECHILD`; `-EINVAL`. */
MP_MPI_EXPORT int mp_mpi_pool_close(mp_mpi_pool *pool);

/**
 * @brief Stop (Python's `terminate`): tasks not yet sent fail at once with
 *        `-ESHUTDOWN`, tasks on workers fail with `-ESHUTDOWN` and their
 *        results are dropped; returns when the workers have given back every
 *        task they held (a task cannot be interrupted on its rank).
 * @return 0 (also when already terminated); `-ECHILD`; `-EINVAL`.
 */
MP_MPI_EXPORT int mp_mpi_pool_terminate(mp_mpi_pool *pool);

/**
 * @brief Wait until every task is done and the workers have left the pool,
 *        after close or terminate (Python's `join`).
 * @return 0; `-ETIMEDOUT`; `-EINVAL` when the pool is still open, or NULL;
 *         `-ECHILD`; `-EDEADLK` from a callback.
 */
MP_MPI_EXPORT int mp_mpi_pool_join(mp_mpi_pool *pool, double timeout);

/**
 * @brief Terminate the pool if it still runs, join and free it. Results and
 *        iterators stay valid; free them separately. The workers wait for
 *        rank 0's next pool (spawned ones are reused by it when it needs
 *        no more of them).
 * @return 0; 0 for NULL; `-ECHILD`; `-EDEADLK` from a callback.
 */
MP_MPI_EXPORT int mp_mpi_pool_free(mp_mpi_pool *pool);

/** @brief In an apply task: room for a result of @p size bytes (16-byte
 *  aligned); a second call replaces the first. @return 0; `-ENOMEM`; `-EINVAL`. */
MP_MPI_EXPORT int mp_mpi_pool_out_alloc(mp_mpi_pool_out *out, size_t size, void **buf);

/** @brief In an apply task: the result is a copy of @p len bytes.
 *  @return 0; `-ENOMEM`; `-EINVAL`. */
MP_MPI_EXPORT int mp_mpi_pool_out_set(mp_mpi_pool_out *out, const void *data, size_t len);

/**
 * @brief Wait for the result and return the task's status (Python's `get`).
 * @return as mp_mpi_pool_apply() / mp_mpi_pool_map(); `-ETIMEDOUT`; `-EINVAL`.
 *         Thread safe; `-ECHILD` in another process.
 */
MP_MPI_EXPORT int mp_mpi_async_result_get(mp_mpi_async_result *res, double timeout);

/** @brief Wait until ready (Python's `wait`). @return 0; `-ETIMEDOUT`;
 *  `-ECHILD`; `-EINVAL`. */
MP_MPI_EXPORT int mp_mpi_async_result_wait(mp_mpi_async_result *res, double timeout);

/** @brief Whether the result is ready. @return 1, 0, `-ECHILD`, `-EINVAL`. */
MP_MPI_EXPORT int mp_mpi_async_result_ready(mp_mpi_async_result *res);

/** @brief Whether the call succeeded (Python's `successful`). @return 1 or 0;
 *  `-EAGAIN` when not ready; `-ECHILD`; `-EINVAL`. */
MP_MPI_EXPORT int mp_mpi_async_result_successful(mp_mpi_async_result *res);

/** @brief The bytes an apply task produced (empty for a map).
 *  @param[out] data valid until mp_mpi_async_result_free(); NULL when empty.
 *  @param[out] len may be NULL.
 *  @return 0; `-EAGAIN` when not ready; `-ECHILD`; `-EINVAL`. */
MP_MPI_EXPORT int mp_mpi_async_result_data(mp_mpi_async_result *res, const void **data,
                                           size_t *len);

/** @brief Release the result; allowed before it is ready and inside its own
 *  callback. @return 0; 0 for NULL; `-ECHILD`. */
MP_MPI_EXPORT int mp_mpi_async_result_free(mp_mpi_async_result *res);

#ifdef __cplusplus
}
#endif

/*
 * The same call names (opt-in): with MP_MPI_SAME_CALLS defined before this
 * header, the mp_pool_* and mp_async_result_* names of mp/pool.h also accept
 * the handles of this header (C11 _Generic on the first argument), so a
 * program written for the fork Pool changes only its pool's type and
 * creation:
 *
 *     #define MP_MPI_SAME_CALLS
 *     #include <mp-mpi.h>
 *     mp_mpi_pool *p;                       // was: mp_pool *p;
 *     mp_mpi_pool_new(0, NULL, &p);         // was: mp_pool_new(0, NULL, &p);
 *     mp_pool_map(p, func, NULL, in, n, sizeof *in, out, sizeof *out, 0);
 *     mp_pool_free(p);
 *
 * Apply tasks take an mp_mpi_pool_out * (mp_pool_out_set() works on it);
 * callbacks come in an mp_mpi_pool_callbacks. Handles of the fork Pool keep
 * working as before. C11 and C only.
 */
#ifdef MP_MPI_SAME_CALLS
#if defined(__cplusplus) || !defined(__STDC_VERSION__) || __STDC_VERSION__ < 201112L
#error "MP_MPI_SAME_CALLS needs C11 (_Generic)"
#endif
#include <mp/pool.h>
#define MP_MPI__ON_POOL(name, p) _Generic((p), mp_mpi_pool *: mp_mpi_##name, default: mp_##name)
#define MP_MPI__ON_ITER(name, it)                                                                  \
  _Generic((it), mp_mpi_pool_iter *: mp_mpi_##name, default: mp_##name)
#define MP_MPI__ON_RES(name, r)                                                                    \
  _Generic((r), mp_mpi_async_result *: mp_mpi_##name, default: mp_##name)
#define MP_MPI__ON_OUT(name, o) _Generic((o), mp_mpi_pool_out *: mp_mpi_##name, default: mp_##name)
#define mp_pool_apply(p, ...) MP_MPI__ON_POOL(pool_apply, p)(p, __VA_ARGS__)
#define mp_pool_apply_async(p, ...) MP_MPI__ON_POOL(pool_apply_async, p)(p, __VA_ARGS__)
#define mp_pool_map(p, ...) MP_MPI__ON_POOL(pool_map, p)(p, __VA_ARGS__)
#define mp_pool_map_async(p, ...) MP_MPI__ON_POOL(pool_map_async, p)(p, __VA_ARGS__)
#define mp_pool_starmap(p, ...) MP_MPI__ON_POOL(pool_starmap, p)(p, __VA_ARGS__)
#define mp_pool_starmap_async(p, ...) MP_MPI__ON_POOL(pool_starmap_async, p)(p, __VA_ARGS__)
#define mp_pool_imap(p, ...) MP_MPI__ON_POOL(pool_imap, p)(p, __VA_ARGS__)
#define mp_pool_imap_unordered(p, ...) MP_MPI__ON_POOL(pool_imap_unordered, p)(p, __VA_ARGS__)
#define mp_pool_close(p) MP_MPI__ON_POOL(pool_close, p)(p)
#define mp_pool_terminate(p) MP_MPI__ON_POOL(pool_terminate, p)(p)
#define mp_pool_join(p, t) MP_MPI__ON_POOL(pool_join, p)(p, t)
#define mp_pool_free(p) MP_MPI__ON_POOL(pool_free, p)(p)
#define mp_pool_iter_next(it, ...) MP_MPI__ON_ITER(pool_iter_next, it)(it, __VA_ARGS__)
#define mp_pool_iter_free(it) MP_MPI__ON_ITER(pool_iter_free, it)(it)
#define mp_pool_out_alloc(o, ...) MP_MPI__ON_OUT(pool_out_alloc, o)(o, __VA_ARGS__)
#define mp_pool_out_set(o, ...) MP_MPI__ON_OUT(pool_out_set, o)(o, __VA_ARGS__)
#define mp_async_result_get(r, t) MP_MPI__ON_RES(async_result_get, r)(r, t)
#define mp_async_result_wait(r, t) MP_MPI__ON_RES(async_result_wait, r)(r, t)
#define mp_async_result_ready(r) MP_MPI__ON_RES(async_result_ready, r)(r)
#define mp_async_result_successful(r) MP_MPI__ON_RES(async_result_successful, r)(r)
#define mp_async_result_data(r, ...) MP_MPI__ON_RES(async_result_data, r)(r, __VA_ARGS__)
#define mp_async_result_free(r) MP_MPI__ON_RES(async_result_free, r)(r)
#endif /* MP_MPI_SAME_CALLS */

#endif /* MP_MPI_H */
