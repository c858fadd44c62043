/* SPDX-License-Identifier: MIT */
/*
 * Internals shared by libmp's source files: deadlines, the futex layer, the
 * calling thread's id, object tags, the heap's internal entry points.
 *
 * Rules every file follows:
 *  - every public call converts its timeout once, with mp__deadline_init(),
 *    and passes the deadline to every wait inside it;
 *  - only futex.c issues the futex syscall; waits are loops over the real
 *    condition (a wake-up proves nothing), never FUTEX_PRIVATE (the words are
 *    shared between processes);
 *  - every shared atomic is lock-free (checked below at compile time);
 *  - every object in the heap starts with an `mp__tag` and is checked with
 *    mp__tag_ok() at each public entry, so that a freed or foreign pointer gives
 *    -EINVAL in the common cases instead of undefined behaviour.
 */
#ifndef MP_INTERNAL_H
#define MP_INTERNAL_H

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "mp.h"
#include "spin.h"

_Static_assert(ATOMIC_INT_LOCK_FREE == 2, "shared atomics must be lock-free");
_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2, "shared atomics must be lock-free");
_Static_assert(ATOMIC_POINTER_LOCK_FREE == 2, "shared atomics must be lock-free");

#define MP__UNUSED __attribute__((unused))
#define MP__LIKELY(x) __builtin_expect(!!(x), 1)
#define MP__UNLIKELY(x) __builtin_expect(!!(x), 0)

/* ---------------------------------------------------------------- deadlines */

/* An absolute CLOCK_MONOTONIC deadline, or none ("forever"). */
typedef struct mp__deadline {
  struct timespec at; /* valid when !forever */
  bool forever;
  bool nowait; /* the caller passed MP_NOWAIT: try once, never sleep */
} mp__deadline;

/* Turn a public timeout into a deadline, by Python's rule: MP_FOREVER
 * (infinity) -> forever, 0 and every negative value -> now (nowait), NaN ->
 * -EINVAL, too large for a timespec -> forever. Returns 0 or -EINVAL. The
 * forever case is inline: it is the hot path of every blocking call. */
int mp__deadline_init_slow(mp__deadline *d, double timeout);
static inline int mp__deadline_init(mp__deadline *d, double timeout) {
  if (__builtin_expect(timeout == MP_FOREVER, 1)) { /* false for NaN */
    d->forever = true;
    d->nowait = false;
    return 0;
  }
  return mp__deadline_init_slow(d, timeout);
}

/* Whether the deadline has passed (never for forever). */
bool mp__deadline_passed(const mp__deadline *d);

/* Milliseconds left, rounded up, for poll(): -1 for forever, 0 when passed. */
int mp__deadline_poll_ms(const mp__deadline *d);

/* Nanoseconds of CLOCK_MONOTONIC. */
int64_t mp__now_ns(void);

/* What a socket receiver does when recv(..., MSG_DONTWAIT) found nothing:
 * first poll a while, then sleep. A hop whose receiver sleeps costs a
 * wake-up on another CPU (10-50 us on a VM), while a peer that answers at
 * once does so within microseconds. So the first call looks at fd with
 * poll() (which reads the socket's state without taking its lock), yielding
 * its CPU every MP__SPIN_POLL_YIELD looks (a peer waiting for that same CPU
 * then runs at once), for at most MP__SPIN_NS and never past d; *spun
 * (false at first) records that it did. After that: for a forever deadline
 * it clears MSG_DONTWAIT in *flags (the next recv() sleeps in the kernel);
 * otherwise it waits in poll() until fd is readable or the deadline. Returns
 * 0 (call recv() again with *flags) or -ETIMEDOUT (or another negative
 * errno of poll). MP_NOWAIT does not poll. The bound caps what an idle peer
 * costs: one such poll after each message (the budgets: spin.h). */
int mp__recv_wait(int fd, const mp__deadline *d, int *flags, bool *spun);

/* Wait until fd has one of `events` (poll(2) bits), or the deadline: 0 or
 * -ETIMEDOUT (or another negative errno of poll); a signal resumes the wait
 * against the same deadline. */
int mp__wait_fd(int fd, short events, const mp__deadline *d);

/* ---------------------------------------------------------------- logging */

/* The logger's level (mp/log.h), -1 until MP_LOG is read. */
extern _Atomic int mp__log_level;
int mp__log_init(void);
/* Whether a message at `level` would be emitted: one relaxed load when on
 * or off (relaxed: a stale level only logs or skips one message). */
static inline bool mp__log_enabled(int level) {
  int l = atomic_load_explicit(&mp__log_level, memory_order_relaxed);
  if (MP__UNLIKELY(l < 0))
    l = mp__log_init();
  return level >= l;
}
/* Emit one message (printf format) at `level`, prefixed with the level and
 * the process's name; errno is kept. Safe after fork and from any thread. */
void mp__log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* In a child that closed its inherited descriptors (a Manager's server, a
 * pool worker): keep the level, send messages to standard error rather than
 * to a handler whose descriptors are gone (their numbers may be reused). */
void mp__log_route_to_stderr(void);
#define MP__LOG(level, ...)                                                                   \
  do {                                                                                        \
    if (MP__UNLIKELY(mp__log_enabled(level)))                                                 \
      mp__log(level, __VA_ARGS__);                                                            \
  } while (0)

/* ------------------------------------------------------------------ futexes */

/* Sleep while *word == expected, until woken or the deadline passes.
 * Returns 0 when woken, when *word differed (EAGAIN), or on a signal (the
 * caller re-checks its condition and calls again with the same deadline);
 * -ETIMEDOUT when the deadline passed; -EFAULT when word is not mapped and
 * -EINVAL when it is misaligned or the deadline is malformed: those two are
 * persistent, so a caller must return them, never loop on them. Never
 * returns -EINTR. */
int mp__futex_wait(_Atomic uint32_t *word, uint32_t expected, const mp__deadline *d);

/* Sleep until any *words[i] != expected[i], a wake on any of them, or the
 * deadline (futex_waitv, Linux 5.16). 1 <= n <= MP__FUTEX_WAITV_MAX. Returns
 * as mp__futex_wait(), or -ENOSYS when the kernel lacks the call, -EINVAL for
 * a bad n. */
#define MP__FUTEX_WAITV_MAX 128
int mp__futex_waitv(_Atomic uint32_t *const *words, const uint32_t *expected, unsigned n,
                    const mp__deadline *d);

/* Wake up to n sleepers on word (INT_MAX for all). Returns the number woken. */
int mp__futex_wake(_Atomic uint32_t *word, int n);

/* ---------------------------------------------------------------- identity */

/* The calling thread's kernel id, cached per thread and refreshed after fork.
 * initial-exec TLS: one instruction instead of a __tls_get_addr call on every
 * lock operation; the variable is small enough for glibc's static TLS reserve
 * even when libmp is loaded with dlopen. */
extern __thread pid_t mp__cached_tid __attribute__((tls_model("initial-exec")));
pid_t mp__tid_slow(void);

/* The calling process's pid, cached (glibc's getpid() is a system call) and
 * cleared in every child by the same fork handler as the tid: libmp's one pid
 * cache (sys.c), used by every area. */
pid_t mp__pid(void);
/* A copy of this process's authentication key (process.c), made first if
 * need be: 0, -EMSGSIZE when longer than cap, or -errno of getrandom(). */
int mp__process_authkey_copy(void *buf, size_t cap, size_t *len);
static inline pid_t mp__tid(void) {
  pid_t t = mp__cached_tid;
  return MP__LIKELY(t != 0) ? t : mp__tid_slow();
}

/* ---------------------------------------------------------------- object tags */

/* The first word of every libmp object in the heap. */
typedef _Atomic uint32_t mp__tag;

enum {
  MP__TAG_FREED = 0x6d70dead,
  MP__TAG_LOCK = 0x6d704c4b,      /* "mpLK" */
  MP__TAG_SEMAPHORE = 0x6d70534d, /* "mpSM" */
  MP__TAG_EVENT = 0x6d704556,     /* "mpEV" */
  MP__TAG_CONDITION = 0x6d70434e, /* "mpCN" */
  MP__TAG_BARRIER = 0x6d704252,   /* "mpBR" */
  MP__TAG_PROCESS = 0x6d705052,   /* "mpPR" */
  MP__TAG_VALUE = 0x6d70564c,     /* "mpVL" */
  MP__TAG_QUEUE = 0x6d705155,     /* "mpQU" */
};

static inline bool mp__tag_ok(const void *obj, uint32_t tag) {
  /* relaxed: the tag is written before the handle is published and only
   * changes at free, after which any use is the caller's bug we try to catch */
  return obj && atomic_load_explicit((mp__tag *)obj, memory_order_relaxed) == tag;
}

/* ---------------------------------------------------------------- the heap */

/* A free block of at least this many bytes gives its pages back to the kernel
 * (they read as zeros and must be faulted in again); smaller free blocks keep
 * theirs, so reusing them costs no page faults. */
#define MP__HEAP_TRIM (16u << 20)

/* Map the heap if it is not yet mapped. Returns 0 or -ENOMEM/-EINVAL. */
int mp__heap_ensure(void);

/* Walk every block and free list of the heap and check their invariants.
 * Returns 0, or -N naming the first broken invariant (see heap.c). For tests. */
int mp__heap_check(void);

/* How many times a process found the heap's mutex owner-dead and undid the dead
 * holder's half-done operation. For tests. */
long mp__heap_recoveries(void);

/* Whether the workers of pool p copy a map's items and results straight from
 * and to its owner's memory (1) or through the heap (0), after waiting up to
 * `timeout` seconds for the first worker's probe (-ETIMEDOUT). For tests. */
struct mp_pool;
int mp__pool_direct(struct mp_pool *p, double timeout);

/* Well-known words in the heap's header, one per area that keeps a single
 * family-wide object (so that a process finds what another created after the
 * fork that separated them). Each starts NULL; publish with compare-exchange. */
enum { MP__ROOT_SHM = 0, MP__HEAP_ROOTS = 8 };
/* The address of root `slot`; NULL when the heap is not mapped and `map` is
 * false (or mapping it failed). */
_Atomic(void *) *mp__heap_root(unsigned slot, bool map);

/* Called by process.c when a process ends normally: at exit() in a process
 * that started children (after joining them) and when a libmp child's target
 * returns. Unlinks this process's tracked shared memory blocks and those of
 * dead creators (shm.c). */
void mp__shm_at_exit(void);

/* mp_heap_alloc() that also stores the block's address in the shared word
 * *where within the same journaled operation, and mp_heap_free() of the block
 * *where holds that also clears it: a process killed at any step leaves
 * either no block and *where unchanged, or the block recorded in *where, so
 * whoever repairs after a death can free what *where names and nothing leaks
 * (pool_worker.c's results, queue_ring.c's blocks). `where` must lie in the family heap:
 * the journal that may restore it is replayed by whichever process next takes
 * the heap's lock, and only the heap is mapped at one address in all of them
 * (a `where` outside it gets NULL / -EINVAL). mp__heap_free_from() returns 0
 * (also when *where is NULL) or -EINVAL when *where is not a live block. */
void *mp__heap_alloc_into(size_t size, void **where);
int mp__heap_free_from(void **where);

/* The number of entries in the family's SharedMemory registry (of owner pid,
 * or all for 0), walking the list under its mutex; -ELOOP when the list does
 * not end. For tests (shm.c). */
long mp__shm_registry_entries(pid_t pid);

/* How long a ShareableList reader or writer waits for another writer of the
 * slot before -ETIMEDOUT (10 s; shm_list.c). Tests shorten it. */
extern double mp__shm_list_wait_s;

/* Allocate zeroed memory for an object and set its tag. NULL on exhaustion. */
void *mp__object_new(size_t size, uint32_t tag);

/* Mark an object freed and return it to the heap. */
void mp__object_free(void *obj);

/* Handles that live in one process's private memory (a connection, a
 * listener): zeroed memory of `size` bytes, or NULL. mp__handle_free() takes
 * it back after the caller wrote its dead magic, and never gives it to
 * malloc's free(): a second close reads a dead handle, not freed memory, and
 * gets -EINVAL. Dead handles are reused oldest first, only once more than a
 * few dozen are dead (connection.c). */
void *mp__handle_new(size_t size);
void mp__handle_free(void *handle);

/* ---------------------------------------------------------------- locks */

/* Initialise a process-shared robust mutex in place (lock.c). Returns 0 or a
 * negative errno. */
int mp__robust_mutex_init(void *mutex, bool recursive);

/* Lock a process-shared robust mutex by deadline d (lock.c): a try, then sleeps
 * in it of at most 0.1 s each until d. A robust mutex can lose its wake-up
 * when a process is killed inside it (see lock.c); the slices turn that loss
 * into a delay. Returns 0, -EOWNERDEAD (held; the caller repairs and marks it
 * consistent), -ETIMEDOUT (at once for nowait), or another negative errno
 * from pthread_mutex_clocklock(). */
int mp__robust_mutex_lock(void *mutex, const mp__deadline *d);

/* libmp's one way to take a robust mutex whose holder may have died (lock.c):
 * lock it by deadline d (mp__robust_mutex_lock) and, when the holder died,
 * call repair(arg) (NULL: the structure needs none) while holding it, then
 * mark it consistent. Returns 0, -EOWNERDEAD (held, repaired, consistent),
 * -ETIMEDOUT, or another negative errno. mp__robust_mutex_try() is the same
 * for one attempt: 0, -EOWNERDEAD, -EBUSY. */
int mp__robust_mutex_take(void *mutex, const mp__deadline *d, void (*repair)(void *), void *arg);
/* Inline: it is the first attempt of every queue put and get, where a call
 * of its own cost 24 of 680 instructions per 8-byte put+get (callgrind). */
static inline int mp__robust_mutex_try(void *mutex, void (*repair)(void *), void *arg) {
  int r = pthread_mutex_trylock(mutex);
  if (MP__UNLIKELY(r == EOWNERDEAD)) {
    if (repair)
      repair(arg);
    pthread_mutex_consistent(mutex);
  }
  return -r;
}

/* Internal lock entry points used by other areas with a deadline already made. */
int mp__lock_acquire(mp_lock *lock, const mp__deadline *d);
int mp__lock_release(mp_lock *lock);
/* Whether the calling thread holds the lock. */
bool mp__lock_is_mine(mp_lock *lock);
/* Release every level the caller holds; returns the count to restore, or a
 * negative errno (-EPERM when not held). */
int mp__lock_release_all(mp_lock *lock);
/* Re-acquire after mp__lock_release_all(), restoring the count. */
int mp__lock_restore(mp_lock *lock, int count, const mp__deadline *d);
/* A Condition's `waiters` and `tokens` counters (sync.c). For tests. */
int mp__condition_counts(mp_condition *cond, int *waiters, int *tokens);

/* ---------------------------------------------------------------- queues */

struct mp_queue;
/* For mp_connection_wait() (connection_wait.c) over queues (queue.c).
 * mp__queue_watch_begin(): if a get on q would not block now (a message is
 * there, or the queue is closed and drained), returns 1 and registers nothing.
 * Otherwise registers the caller as a watcher, so that every later put or close
 * changes *word and wakes all futex sleepers on it, stores that word and its
 * current value, and returns 0; the caller then sleeps with
 * mp__futex_wait(*word, *snapshot, ...), re-checks, and always ends with
 * mp__queue_watch_end(q). Negative errno for a bad handle. */
int mp__queue_watch_begin(struct mp_queue *q, _Atomic uint32_t **word, uint32_t *snapshot);
void mp__queue_watch_end(struct mp_queue *q);

/* ---------------------------------------------------------------- manager */

/* How many calls of this process were answered through a manager's shared
 * channel (manager_channel.c). For tests. */
long mp__manager_channel_calls(void);

/* ---------------------------------------------------------------- processes */

/* Called in a child right after fork, before anything else (process.c). */
void mp__process_after_fork_child(void);

/* Called by sys.c's fork handler in the child of every fork, libmp's or the
 * program's own: forgets the parent's children (process.c). */
void mp__process_atfork_child(void);

/* Tie the calling child's life to its parent *process* `parent` (the pid the
 * parent had before fork): when that process ends, `sig` is raised in the
 * child (SIGKILL for a daemon Process or a pool worker, SIGTERM for a Manager
 * server whose handler cleans up). Unlike a bare PR_SET_PDEATHSIG, the end of
 * the forking *thread* alone does not count. If the parent is already gone,
 * `sig` is raised at once. The one idiom every area uses (process.c). Returns
 * 0 or a negative errno. */
int mp__tie_to_parent(pid_t parent, int sig);

#endif /* MP_INTERNAL_H */
