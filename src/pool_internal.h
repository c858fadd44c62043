/* SPDX-License-Identifier: MIT */
/*
 * The pool's internals, shared by its files: the protocol of the task ring,
 * the structures in the family heap, the parent's records, and the small
 * helpers of the hot paths. Those are static inline here: libmp is built
 * without LTO, and claim, completion, collection and submission must not
 * gain a call across files.
 *
 * Where the pool lives (public header -> file):
 *   pool_internal.h  this protocol, the shared structures and records
 *   pool.c           lifecycle: mp_pool_new, close, terminate, join, free
 *   pool_worker.c    the worker: claim, run, report; the crash points
 *                    pool.* of the table below
 *   pool_handler.c   the handler thread: spawn, collect, deaths, terminate;
 *                    a caller collecting completions itself (mp__pool_wait_own)
 *   pool_submit.c    submission: publishing into the ring, apply and map
 *   pool_result.c    mp_async_result: waiting for a result and reading it
 *   pool_iter.c      imap and imap_unordered
 *
 * Protocol. struct shared lives in the family heap; it holds a ring of
 * RING_CAP task entries and one slot per worker.
 *
 * entry.state, the only word that moves a task between owners:
 *     FREE --parent--> PENDING --worker w (CAS)--> CLAIMED+w --parent--> FREE
 *   - FREE: the entry belongs to the parent, which fills every field and then
 *     stores PENDING (release) and advances `tail` (seq_cst).
 *   - PENDING -> CLAIMED+w: one compare-exchange by worker w. The claim both
 *     takes the task and names its holder, so there is no instant at which a
 *     task is taken but its holder unknown: a worker killed at any step either
 *     left the task PENDING (another worker runs it) or CLAIMED by itself.
 *   - CLAIMED+w: only worker w writes the result fields (status, done_items,
 *     res_*). When done, it appends the entry's index to its slot's done ring
 *     (slot.ring[done_tail % RING_CAP], then done_tail+1 with release): that
 *     append is the completion. The state stays CLAIMED+w.
 *   - The parent's handler drains each done ring (acquire), reads the result
 *     fields, and stores FREE. Only then may the entry be refilled.
 *   `head` is the index of the next task to claim; it is a hint any worker
 *   advances (CAS h -> h+1) once entry h is no longer PENDING, so a worker
 *   killed between its claim and its advance of `head` stalls nobody. A worker
 *   holding a stale `head` may claim a newer task in the same entry out of
 *   order; that is harmless, the claim still names it.
 *   Ring order: the parent fills entry tail % RING_CAP only when it is FREE;
 *   otherwise the task waits in the parent's backlog (FIFO), so the ring never
 *   overflows and every done ring (one per worker, RING_CAP long) has room for
 *   every entry.
 *
 * A map is one job whose chunks are published one entry each from a cursor
 * (job.next_chunk; entry.chunk names the chunk): no allocation per chunk, and
 * the job leaves the backlog with its last chunk. Its result counts chunks
 * down (remaining); terminate fails the chunks never published.
 *
 * Direct maps (DIRECT_IN / DIRECT_OUT in task_desc.flags): the chunk's items
 * and results are addresses in the owner's private memory, which the worker
 * reads and writes with process_vm_readv/writev (see run_chunk_direct, pool_worker.c). The
 * first worker probes once whether the kernel allows it (shared.direct). A
 * worker killed mid-chunk leaves that chunk's results partly written, never
 * anything else: every write is inside the chunk's range, and the map's
 * arrays outlive every worker write (the map is done only after each chunk
 * completed or its worker was reaped). A worker cannot write into a stranger
 * that took the owner's pid: the owner's death SIGKILLs it (PDEATHSIG) before
 * the pid can be reaped and reused.
 *
 * Worker death (SIGKILL or anything else), seen at once by the handler
 * through the worker's pidfd: the handler first drains the dead worker's done
 * ring (those tasks completed), then every entry still CLAIMED+w is the task
 * it held: it fails with -ECONNABORTED (a heap result block the worker had
 * stored in res_ptr is freed), its entry becomes FREE, the backlog is
 * published into the freed entries (when the ring was full, publishing had
 * stopped at one of them, and no completion may come to restart it), the
 * slot's ring is reset, and a new worker is forked into the slot. A death at
 * any instant is covered: before the claim CAS the task is PENDING; after it,
 * CLAIMED+w; after the done-ring append, completed.
 *
 * What a SIGKILL of worker w at each step of one task leaves (crash points in
 * protocol order), all repaired by the handler in worker_ended() (pool_handler.c):
 *   pool.claim.taken     entry CLAIMED+w; `head` not advanced; the wake-up not
 *                        passed on. The task fails (-ECONNABORTED), its entry
 *                        is FREE and refilled from the backlog; any worker
 *                        moves `head` past a non-PENDING entry; the
 *                        replacement starts awake and passes the wake-up on.
 *   pool.claim.advanced  the same, with `head` advanced.
 *   pool.fd.wanted       (fd tasks) fd_want set, the handler not signalled:
 *                        the pidfd wakes it; its send to the dead socket fails,
 *                        the task fails and its copy of the fd is closed.
 *   pool.result.stored   a heap result block recorded in res_ptr: the task
 *                        fails and the block is freed.
 *   pool.task.ran        the result fields written, not appended: the task
 *                        fails, a heap result block is freed.
 *   pool.done.appended   the completion appended, the handler not notified:
 *                        the pidfd wakes it, it drains the done ring first, so
 *                        the task completes with its own status and result.
 *   pool.sleep.counted   `sleepers` one too high, slot.asleep not set: a
 *                        useless futex wake per submission batch, never a lost
 *                        task (see wake-ups).
 * A worker killed inside mp_pool_out_alloc() leaks nothing: the heap frees an
 * earlier result block and clears res_ptr in one journaled step, and allocates
 * the new one and records it in res_ptr in another (mp__heap_alloc_into), so
 * res_ptr always names what the parent must free (tested at the heap's own
 * points, heap.alloc.journaled and heap.alloc.committed, inside a task).
 *
 * Wake-ups, without system calls while both sides are busy:
 *   - workers that find no task spin, then sleep on `work_seq`: they add one
 *     to `sleepers` (and mark slot.asleep), re-check, and futex-wait; the
 *     parent, after publishing, bumps `work_seq` and wakes one sleeper only
 *     if `sleepers` is non-zero (both sides seq_cst: one of them sees the
 *     other); a worker that claims a task with more published behind it
 *     wakes the next sleeper. A worker killed between its wake-up and that
 *     hand-on leaves the others asleep only until its replacement, which
 *     starts awake, claims the next task and wakes on in turn. A worker
 *     killed while asleep has its count removed by the handler (slot.asleep);
 *     a kill inside the two-step announcement leaves `sleepers` one too high,
 *     which costs a useless wake per submission batch, never a lost task.
 *   - the handler, when it finds nothing to do while tasks are outstanding,
 *     first spins (bounded: MP__SPIN_NS) watching the done rings; then it stores
 *     `parent_waiting` = 1, re-checks the done rings and fd requests, and
 *     polls the eventfd and the pidfds; a worker that completes a task
 *     exchanges `parent_waiting` to 0 and writes the eventfd only when it was 1
 *     (seq_cst on both sides). A worker killed before its write leaves a
 *     readable pidfd: no lost wake.
 *   - a caller blocked in mp_pool_apply() or mp_pool_map() collects
 *     completions itself (under the pool mutex, as the handler does) for a
 *     bounded spin. Meanwhile it takes over the handler's wake-up: it exchanges
 *     `parent_waiting` 1 -> 0 (so workers do not write the eventfd), and on
 *     leaving stores 1 again and re-checks the done rings with seq_cst loads,
 *     writing the eventfd itself when something arrived (the same two seq_cst
 *     steps as the handler's; relaxed loads there could be performed before
 *     the store on a weakly ordered CPU such as ARM, the worker could still
 *     read 0, and the completion would go unannounced). It writes the
 *     eventfd when what it collected needs the handler: callbacks to run, or
 *     a pool no longer running. Results without callbacks are final as soon
 *     as any thread collects them; callbacks still run only on the handler
 *     thread, in collection order.
 *   - a result's `done` word: RES_PENDING -> RES_DONE, or RES_PENDING ->
 *     RES_SLEEPER (a waiter, after a bounded spin, announces it will sleep)
 *     -> RES_DONE; the finisher exchanges RES_DONE in and calls futex wake only
 *     when it took RES_SLEEPER out.
 *   - `stopping` (parent) tells idle workers to exit (after close, once every
 *     task is done).
 *
 * File descriptors: a task of kind K_APPLY_FD is claimed like any other; the
 * worker then stores the entry index + 1 in slot.fd_want and wakes the
 * handler, which (or a caller collecting for itself, under the mutex) clears
 * fd_want, sends its copy of the descriptor over the
 * worker's own socketpair (SCM_RIGHTS) and closes its copy. A worker that dies
 * before receiving it fails the task; the handler closes its copy.
 * Apart from that descriptor, a worker holds only 0-2, its socket and the
 * eventfd: it closes everything else it inherited at start (close_inherited),
 * so no Pipe end or Manager socket of the creator stays open in the pool.
 */
#ifndef MP_POOL_INTERNAL_H
#define MP_POOL_INTERNAL_H

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#include "internal.h"

#define RING_CAP 2048u
#define INLINE_MAX 64

enum { E_FREE = 0, E_PENDING = 1, E_CLAIMED = 2 /* + slot */ };
enum { K_APPLY, K_APPLY_FD, K_CHUNK };

/* The task as the parent describes it: copied into an entry when published. */
typedef void (*anyfn)(void); /* a task function, cast back by kind */

/* task_desc.flags: a chunk's items or results are addresses in the pool
 * owner's own memory, copied by the worker (run_chunk_direct). */
enum { DIRECT_IN = 1, DIRECT_OUT = 2 };
/* shared.direct: whether workers may copy from and to the owner's memory */
enum { DIRECT_UNKNOWN = 0, DIRECT_YES = 1, DIRECT_NO = 2 };

struct task_desc {
  uint32_t kind;
  uint32_t item_size, result_size;
  uint32_t flags;
  anyfn fn;
  void *ctx;
  const void *in; /* chunk items, or an apply argument's heap copy; NULL: arg_buf */
  void *out;      /* chunk results (heap) */
  uint64_t count; /* chunk: items; apply: argument length */
  unsigned char arg_buf[INLINE_MAX];
};

struct entry {
  _Atomic uint32_t state;
  uint32_t pad0;
  void *cookie;   /* the parent's job: opaque to workers */
  uint64_t chunk; /* a map's chunk: its index (parent only) */
  struct task_desc d;
  /* written by the claiming worker */
  int32_t status;
  uint32_t res_inline;
  uint64_t done_items;
  void *res_ptr;
  uint64_t res_len;
  unsigned char res_buf[INLINE_MAX];
};

struct slot {
  _Atomic uint32_t done_tail; /* worker */
  _Atomic uint32_t fd_want;   /* worker sets index + 1; the handler clears */
  _Atomic uint32_t asleep;    /* worker */
  char pad0[52];
  _Atomic uint32_t done_head; /* handler */
  char pad1[60];
  uint32_t ring[RING_CAP];
};

struct shared {
  _Atomic uint64_t head;
  char pad0[56];
  _Atomic uint64_t tail;
  char pad1[56];
  _Atomic uint32_t work_seq;
  _Atomic uint32_t sleepers;
  _Atomic uint32_t stopping;
  _Atomic uint32_t parent_waiting;
  _Atomic uint32_t direct; /* DIRECT_*: set once, by the first worker's probe */
  char pad2[44];
  struct entry ring[RING_CAP];
  /* struct slot slots[nslots] follows */
};

static inline struct slot *mp__pool_slot(struct shared *sh, unsigned w) {
  return (struct slot *)((char *)sh + sizeof *sh) + w;
}

/* Parent-side records, in the creating process's memory. */

#define POOL_MAGIC 0x6d70504cu   /* "mpPL" */
#define RESULT_MAGIC 0x6d704152u /* "mpAR" */
#define ITER_MAGIC 0x6d704954u   /* "mpIT" */

enum { P_RUNNING, P_CLOSED, P_TERMINATING, P_FINISHED };
enum { R_APPLY, R_MAP };
/* mp_async_result.done: PENDING -> (SLEEPER: a waiter is or may be asleep) ->
 * DONE. The finisher exchanges DONE in and wakes only when it took SLEEPER
 * out, so a result nobody sleeps on costs no system call. */
enum { RES_PENDING = 0, RES_DONE = 1, RES_SLEEPER = 2 };

struct job {
  struct mp_async_result *res;
  struct mp_pool_iter *it;
  struct job *next;      /* backlog, or the iterator's list */
  struct job *next_done; /* unordered iterator's completion list */
  size_t start, count;
  void *in_tmp, *out_tmp;
  int fd;
  int status;
  int lost; /* every item fails with status (died, terminated) */
  uint64_t done_items;
  int done;
  /* a map: one job for every chunk, published from a cursor */
  int map;
  size_t next_chunk, nchunks, chunksize, n;
  size_t ready;       /* chunks whose items are in place (copied in, or not copied) */
  struct task_desc d; /* a map's: in and out are the bases, count is n */
};

struct mp_async_result {
  uint32_t magic;
  _Atomic uint32_t done; /* futex word: RES_* (final after the callback) */
  _Atomic uint32_t refs; /* the user's and the pool's */
  pid_t owner;
  pthread_t handler;
  int kind;
  int status;
  int death; /* how the worker that failed it died (exit code; 0: none did) */
  /* map, under the pool mutex */
  size_t remaining, fail_index;
  size_t items_total;        /* a map's n (1 for an apply) */
  _Atomic size_t items_done; /* written under the mutex, read by progress() */
  int fail_status;
  void *user_out, *out_tmp;
  void *in_tmp;
  size_t rsize;
  int copying_in; /* the submitter still copies items into in_tmp */
  /* apply */
  const void *data;
  size_t len;
  void *heap_data;
  mp_pool_callbacks cb;
  struct mp_async_result *next_fin;
  struct job job; /* an apply's or a map's job: no allocation per task or chunk */
  unsigned char inline_data[INLINE_MAX] __attribute__((aligned(16)));
};

struct mp_pool_iter {
  uint32_t magic;
  _Atomic uint32_t seq; /* futex word: bumped at each chunk completion */
  pid_t owner;
  struct mp_pool *pool;
  mp_pool_map_fn fn;
  void *ctx;
  const char *items;
  size_t n, isize, rsize, chunksize, nchunks;
  int ordered, in_heap, freed, counted_active;
  size_t submitted, inflight, returned, cur_pos;
  struct job *sub_head, *sub_tail;   /* ordered: in submission order */
  struct job *done_head, *done_tail; /* unordered: in completion order */
};

struct worker {
  pid_t pid;
  int pidfd, sock;
  int alive;
};

struct mp_pool {
  uint32_t magic;
  pid_t owner;
  pthread_mutex_t mu;
  int state;                 /* P_*, under mu */
  int last_death;            /* the worker now ending: exit code, under mu */
  _Atomic uint32_t finished; /* futex word: the handler has ended */
  _Atomic uint32_t started;  /* futex word: 1 ok, 2 failed */
  int start_err;
  int refs; /* the user's + live iterators, under mu */
  pthread_t thread;
  sigset_t child_mask;
  int efd;
  unsigned nslots;
  struct shared *sh;
  struct worker *workers;
  mp_pool_options opts;
  struct job *backlog_head, *backlog_tail;
  size_t outstanding;                          /* jobs submitted and not completed */
  size_t iters_active;                         /* iterators with chunks still to submit */
  struct mp_async_result *fin_head, *fin_tail; /* results to deliver */
  _Atomic uint32_t collectors;                 /* callers collecting for themselves */
};

/* pool_worker.c: the body of worker w, in the child that spawn() forked. */
_Noreturn void mp__pool_worker_main(struct mp_pool *p, unsigned w, int sock);
/* pool_handler.c: the handler thread, and a caller collecting for itself. */
void *mp__pool_handler_main(void *arg);
int mp__pool_wait_own(struct mp_pool *p, struct mp_async_result *r);
/* pool_submit.c: fill the ring from the backlog (mu held); how many went in. */
unsigned mp__pool_publish_backlog(struct mp_pool *p);
/* pool_result.c */
int mp__pool_result_wait(struct mp_async_result *r, double timeout);
/* pool.c: free a pool whose last reference is gone. */
void mp__pool_destroy(struct mp_pool *p);

static inline int mp__pool_check(struct mp_pool *p) {
  if (!p || p->magic != POOL_MAGIC)
    return -EINVAL;
  return p->owner == mp__pid() ? 0 : -ECHILD;
}

static inline void mp__pool_efd_signal(int efd) {
  uint64_t one = 1;
  ssize_t r = write(efd, &one, sizeof one);
  (void)r; /* EAGAIN: the counter is already non-zero, the reader wakes */
}

static inline void mp__pool_result_unref(struct mp_async_result *r) {
  if (atomic_fetch_sub(&r->refs, 1) != 1)
    return;
  mp_heap_free(r->heap_data);
  r->magic = 0;
  free(r);
}

/* Publish a result as final and drop the pool's reference to it. */
static inline void mp__pool_result_mark_done(struct mp_async_result *r) {
  /* seq_cst (release included): pairs with mp__pool_result_is_done()'s acquire load
   * and mp__pool_result_wait()'s loads, which then read status and data written
   * before; and with mp__pool_result_wait()'s CAS to RES_SLEEPER: one of the two
   * sees the other, so a sleeper is always woken */
  if (atomic_exchange(&r->done, RES_DONE) == RES_SLEEPER)
    mp__futex_wake(&r->done, INT_MAX);
  mp__pool_result_unref(r);
}

/* Mark a result final (mu held). Without callbacks it is done at once, by
 * whichever thread collected it; with callbacks it is queued for the handler,
 * which runs them in this order and then marks each done. */
static inline void mp__pool_result_finish(struct mp_pool *p, struct mp_async_result *r) {
  if (!r->cb.callback && !r->cb.error_callback) {
    mp__pool_result_mark_done(r);
    return;
  }
  r->next_fin = NULL;
  if (p->fin_tail)
    p->fin_tail->next_fin = r;
  else
    p->fin_head = r;
  p->fin_tail = r;
}

static inline int mp__pool_result_is_done(struct mp_async_result *r) {
  /* acquire: pairs with mp__pool_result_mark_done()'s exchange */
  return atomic_load_explicit(&r->done, memory_order_acquire) == RES_DONE;
}

static inline void mp__pool_iter_release_job(struct mp_pool_iter *it, struct job *j) {
  mp_heap_free(j->in_tmp);
  mp_heap_free(j->out_tmp);
  free(j);
  it->inflight--;
}

static inline void mp__pool_unref_locked(struct mp_pool *p, int *free_it) {
  *free_it = --p->refs == 0;
}

/* After publishing: wake one sleeping worker; each worker that claims a task
 * with more left behind it wakes the next (see claim). Woken together,
 * sleepers tend to be queued on one CPU (the one each last ran on, idle at
 * that instant) and stay there behind the first for a time slice while
 * another CPU idles; woken one by one from a busy CPU, each lands on an idle
 * one. */
static inline void mp__pool_wake_workers(struct mp_pool *p) {
  struct shared *sh = p->sh;
  /* seq_cst: after the seq_cst store of `tail`, this load of `sleepers`
   * pairs with claim()'s increment of `sleepers` and its re-check of `tail`;
   * the bump of work_seq makes a futex wait that read the old value return */
  atomic_fetch_add(&sh->work_seq, 1);
  if (atomic_load(&sh->sleepers))
    mp__futex_wake(&sh->work_seq, 1);
}

/* Append a job to the backlog (mu held); publishing is the caller's. */
static inline void mp__pool_backlog_append(struct mp_pool *p, struct job *j) {
  j->next = NULL;
  if (p->backlog_tail)
    p->backlog_tail->next = j;
  else
    p->backlog_head = j;
  p->backlog_tail = j;
}

/* Queue a job (mu held): into the ring when there is room, else the backlog.
 * Returns 1 when it went into the ring. */
static inline int mp__pool_enqueue(struct mp_pool *p, struct job *j) {
  p->outstanding++;
  mp__pool_backlog_append(p, j);
  return (int)mp__pool_publish_backlog(p);
}

static inline int mp__pool_in_heap(const void *ptr, size_t bytes) {
  return ptr && bytes && mp_heap_contains(ptr) && mp_heap_contains((const char *)ptr + bytes - 1);
}

#endif /* MP_POOL_INTERNAL_H */
