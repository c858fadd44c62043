/* SPDX-License-Identifier: MIT */
/*
 * Pool: worker processes fed through a task ring in the family heap, results
 * collected by a handler thread of the creating process.
 *
 * Map of this file:
 *   1. the shared structures and their protocol
 *   2. parent-side records (pool, jobs, results, iterators)
 *   3. the worker: claim, run, report
 *   4. the handler thread: spawn, collect, deaths, terminate
 *   5. submission
 *   6. public entry points
 *
 * 1. Protocol. struct shared lives in the family heap; it holds a ring of
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
 * reads and writes with process_vm_readv/writev (see run_chunk_direct). The
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
 * protocol order), all repaired by the handler in worker_ended():
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
 *     first spins (bounded: SPIN_NS) watching the done rings; then it stores
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
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdio_ext.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "crash.h"
#include "internal.h"

#define RING_CAP 2048u
#define INLINE_MAX 64
#define MAX_WORKERS 1024
#define WORKER_SPIN 2000
/* How many chunks per worker an iterator keeps submitted and unread. */
#define ITER_WINDOW_PER_WORKER 4

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

static inline struct slot *slot_at(struct shared *sh, unsigned w) {
  return (struct slot *)((char *)sh + sizeof *sh) + w;
}

/* ------------------------------------------------------------ 2. parent side */

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
  size_t items_total;          /* a map's n (1 for an apply) */
  _Atomic size_t items_done;   /* written under the mutex, read by progress() */
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

static pid_t my_pid(void) { return mp__pid(); }

static int check_pool(struct mp_pool *p) {
  if (!p || p->magic != POOL_MAGIC)
    return -EINVAL;
  return p->owner == my_pid() ? 0 : -ECHILD;
}

static void efd_signal(int efd) {
  uint64_t one = 1;
  ssize_t r = write(efd, &one, sizeof one);
  (void)r; /* EAGAIN: the counter is already non-zero, the reader wakes */
}

/* Spinning before a sleep: a hand-off between CPUs that both stay awake takes
 * well under a microsecond, while waking a sleeper costs tens on a VM. Every
 * spin is bounded in time (SPIN_NS), so an idle waiter stops using the CPU
 * soon; the clock is read once every SPIN_CHECK pauses. */
#define SPIN_NS 30000
#define SPIN_CHECK 64

/* One step of a spin. A pool usually has as many workers as CPUs, so the
 * parent's threads and the workers outnumber the CPUs: a spinner that only
 * paused would keep the thread it waits for off the CPU for the rest of its
 * time slice. Every SPIN_CHECK steps it offers the CPU instead. */
static inline void spin_pause(unsigned i) {
  if (i % SPIN_CHECK == 0)
    sched_yield();
  else
    mp__cpu_relax();
}

/* Whether a spin at step i may go on: every SPIN_CHECK steps it reads the
 * clock, and it ends SPIN_NS after the first reading (*until starts at 0;
 * a spinner that made progress sets it back to 0 to start a new span). */
static inline bool spin_budget(unsigned i, int64_t *until) {
  if (i % SPIN_CHECK)
    return true;
  int64_t now = mp__now_ns();
  if (!*until)
    *until = now + SPIN_NS;
  return now < *until;
}

/* ------------------------------------------------------------ 3. the worker */

struct mp_pool_out {
  struct entry *e;
};

MP_EXPORT int mp_pool_out_alloc(mp_pool_out *out, size_t size, void **buf) {
  if (!out || !out->e || !buf)
    return -EINVAL;
  struct entry *e = out->e;
  /* An earlier result block is freed and forgotten in one journaled step, and
   * a new one allocated and recorded in another (heap.c): a death at any
   * instruction leaves res_ptr naming exactly the block the parent must free,
   * or NULL. res_inline is cleared first, so the parent looks at res_ptr. */
  if (!e->res_inline && e->res_ptr)
    mp__heap_free_from(&e->res_ptr);
  if (size <= INLINE_MAX) {
    e->res_inline = 1;
    e->res_len = size;
    *buf = e->res_buf;
    return 0;
  }
  e->res_inline = 0;
  void *p = mp__heap_alloc_into(size, &e->res_ptr);
  if (!p)
    return -ENOMEM;
  e->res_len = size;
  MP__CRASH(POOL_RESULT_STORED);
  *buf = p;
  return 0;
}

MP_EXPORT int mp_pool_out_set(mp_pool_out *out, const void *data, size_t len) {
  if (!out || (!data && len))
    return -EINVAL;
  void *buf;
  int r = mp_pool_out_alloc(out, len, &buf);
  if (r == 0 && len)
    memcpy(buf, data, len);
  return r;
}

/* After the seq_cst store of done_tail: the seq_cst load of parent_waiting
 * pairs with the waiter's seq_cst store of 1 followed by its seq_cst loads of
 * done_tail (handler_main's anything_to_collect(), pool_wait_own()'s
 * completions_announced()): either this load sees 1, or the waiter sees our
 * done_tail. */
static void notify_parent(struct shared *sh, int efd) {
  if (atomic_load(&sh->parent_waiting) && atomic_exchange(&sh->parent_waiting, 0))
    efd_signal(efd);
}

/* Claim the next task for worker w; its entry index in *idx. Returns 0, or -1
 * when the pool tells idle workers to stop. */
static int claim(struct shared *sh, unsigned w, uint32_t *idx) {
  struct slot *s = slot_at(sh, w);
  unsigned spins = 0;
  for (;;) {
    /* seq_cst: `tail` pairs with the parent's seq_cst store in
     * publish_backlog() and, with `sleepers` below, forms the Dekker pair
     * against wake_workers() (see the wake-up protocol). */
    uint64_t h = atomic_load(&sh->head);
    if (h < atomic_load(&sh->tail)) {
      struct entry *e = &sh->ring[h % RING_CAP];
      /* acquire: pairs with the release store of E_PENDING in
       * publish_backlog(), after which the entry's fields are the task's */
      uint32_t st = atomic_load_explicit(&e->state, memory_order_acquire);
      if (st == E_PENDING) {
        /* seq_cst (acquire included): the claim reads the PENDING written
         * by that same release store, so the task's fields are visible */
        if (atomic_compare_exchange_strong(&e->state, &st, E_CLAIMED + w)) {
          *idx = (uint32_t)(h % RING_CAP); /* before the CAS below rewrites h on failure */
          MP__CRASH(POOL_CLAIM_TAKEN);
          /* more work behind this task: pass the wake-up on (wake_workers) */
          if (atomic_load(&sh->sleepers) && atomic_load(&sh->tail) > h + 1)
            mp__futex_wake(&sh->work_seq, 1);
          atomic_compare_exchange_strong(&sh->head, &h, h + 1);
          MP__CRASH(POOL_CLAIM_ADVANCED);
          return 0;
        }
      } else {
        atomic_compare_exchange_strong(&sh->head, &h, h + 1);
      }
      continue;
    }
    /* seq_cst: pairs with the handler's store of `stopping`, made once
     * nothing is outstanding; the work_seq bump after it ends a sleep */
    if (atomic_load(&sh->stopping))
      return -1;
    if (spins++ < WORKER_SPIN) {
      spin_pause(spins);
      continue;
    }
    /* All seq_cst: the increment of `sleepers` and the re-check of
     * head/tail pair with wake_workers()'s store of `tail` and load of
     * `sleepers`; one of the two sides sees the other. */
    uint32_t seq = atomic_load(&sh->work_seq);
    atomic_fetch_add(&sh->sleepers, 1);
    MP__CRASH(POOL_SLEEP_COUNTED);
    atomic_store(&s->asleep, 1);
    if (atomic_load(&sh->head) >= atomic_load(&sh->tail) && !atomic_load(&sh->stopping))
      mp__futex_wait(&sh->work_seq, seq, NULL);
    atomic_store(&s->asleep, 0);
    atomic_fetch_sub(&sh->sleepers, 1);
    spins = WORKER_SPIN / 2;
  }
}

static int recv_fd(int sock) {
  char byte;
  struct iovec iov = {.iov_base = &byte, .iov_len = 1};
  union {
    struct cmsghdr h;
    char buf[CMSG_SPACE(sizeof(int))];
  } c;
  struct msghdr m = {
      .msg_iov = &iov, .msg_iovlen = 1, .msg_control = c.buf, .msg_controllen = sizeof c.buf};
  for (;;) {
    ssize_t r = recvmsg(sock, &m, MSG_CMSG_CLOEXEC);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      return -1;
    break;
  }
  struct cmsghdr *h = CMSG_FIRSTHDR(&m);
  if (!h || h->cmsg_type != SCM_RIGHTS)
    return -1;
  int fd;
  memcpy(&fd, CMSG_DATA(h), sizeof fd);
  return fd;
}

static int send_fd(int sock, int fd) {
  char byte = 0;
  struct iovec iov = {.iov_base = &byte, .iov_len = 1};
  union {
    struct cmsghdr h;
    char buf[CMSG_SPACE(sizeof(int))];
  } c;
  memset(&c, 0, sizeof c);
  struct msghdr m = {
      .msg_iov = &iov, .msg_iovlen = 1, .msg_control = c.buf, .msg_controllen = sizeof c.buf};
  struct cmsghdr *h = CMSG_FIRSTHDR(&m);
  h->cmsg_level = SOL_SOCKET;
  h->cmsg_type = SCM_RIGHTS;
  h->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(h), &fd, sizeof fd);
  for (;;) {
    ssize_t r = sendmsg(sock, &m, MSG_NOSIGNAL);
    if (r < 0 && errno == EINTR)
      continue;
    return r < 0 ? -errno : 0;
  }
}

/* Copy len bytes between this worker's buffer and address `remote` of process
 * pid (the pool's owner). Returns 0 or -errno (-EFAULT: remote is not mapped
 * there, -EPERM: the owner's memory is no longer open to its children, as
 * after a setuid or PR_SET_DUMPABLE 0). */
static int cross_copy(pid_t pid, void *local, uintptr_t remote, size_t len, int to_remote) {
  char *l = local;
  while (len) {
    struct iovec lv = {.iov_base = l, .iov_len = len};
    struct iovec rv = {.iov_base = (void *)remote, .iov_len = len};
    ssize_t k = to_remote ? process_vm_writev(pid, &lv, 1, &rv, 1, 0)
                          : process_vm_readv(pid, &lv, 1, &rv, 1, 0);
    if (k < 0 && errno == EINTR)
      continue;
    if (k < 0)
      return -errno;
    if (k == 0)
      return -EFAULT;
    l += k;
    remote += (size_t)k;
    len -= (size_t)k;
  }
  return 0;
}

/* Whether this worker may read its owner's memory: one small read of the
 * owner's pool record, which must show the pool's magic. */
static void probe_direct(struct mp_pool *p) {
  /* seq_cst: one CAS decides, read by map_submit(); the value is all it
   * carries (no other data is published with it) */
  if (atomic_load(&p->sh->direct) != DIRECT_UNKNOWN)
    return;
  uint32_t v = 0, expect = DIRECT_UNKNOWN;
  int r = cross_copy(p->owner, &v, (uintptr_t)&p->magic, sizeof v, 0);
  atomic_compare_exchange_strong(&p->sh->direct, &expect,
                                 r == 0 && v == POOL_MAGIC ? DIRECT_YES : DIRECT_NO);
}

/* A direct chunk: items are read from the owner's memory and results written
 * back to it in blocks of DIRECT_BLOCK bytes through this worker's bounce
 * buffer, one process_vm_readv/writev each: one copy per byte each way, into
 * pages that stay warm from block to block and from chunk to chunk, and none
 * of it done by the owner. The results of items before a failing one are
 * written back. */
#define DIRECT_BLOCK (512u << 10)
static char *bounce; /* this worker's */
static size_t bounce_cap;

static void run_chunk_direct(struct mp_pool *p, struct entry *e) {
  struct task_desc *d = &e->d;
  mp_pool_map_fn fn = (mp_pool_map_fn)d->fn;
  size_t isz = d->item_size, rsz = d->result_size;
  size_t widest = isz > rsz ? isz : rsz;
  size_t per = widest && widest < DIRECT_BLOCK ? DIRECT_BLOCK / widest : 1;
  size_t need = per * (isz + rsz);
  e->done_items = 0;
  if (need > bounce_cap) {
    free(bounce);
    bounce = malloc(need);
    bounce_cap = bounce ? need : 0;
    if (!bounce) {
      e->status = -ENOMEM;
      return;
    }
  }
  char *bin = bounce, *bout = bounce + per * isz;
  uintptr_t in = (uintptr_t)d->in, out = (uintptr_t)d->out;
  uint64_t i = 0;
  int st = 0;
  while (i < d->count && st == 0) {
    size_t k = d->count - i < per ? (size_t)(d->count - i) : per;
    const char *src = in ? (const char *)(in + i * isz) : NULL;
    if (d->flags & DIRECT_IN) {
      st = cross_copy(p->owner, bin, in + i * isz, k * isz, 0);
      if (st < 0)
        break;
      src = bin;
    }
    char *dst = (d->flags & DIRECT_OUT) ? bout : out ? (char *)(out + i * rsz) : NULL;
    size_t j = 0;
    for (; j < k; j++) {
      int r = fn(src ? src + j * isz : NULL, dst ? dst + j * rsz : NULL, d->ctx);
      if (r < 0) {
        st = r;
        break;
      }
    }
    if ((d->flags & DIRECT_OUT) && j) {
      int w = cross_copy(p->owner, bout, out + i * rsz, j * rsz, 1);
      if (w < 0) {
        st = w;
        break;
      }
    }
    i += j;
  }
  e->done_items = i;
  e->status = st;
}

static void run_entry(struct mp_pool *p, struct entry *e, unsigned w, uint32_t idx, int sock) {
  struct task_desc *d = &e->d;
  e->res_inline = 1;
  e->res_len = 0;
  e->res_ptr = NULL;
  if (d->kind == K_CHUNK && (d->flags & (DIRECT_IN | DIRECT_OUT))) {
    run_chunk_direct(p, e);
    return;
  }
  if (d->kind == K_CHUNK) {
    mp_pool_map_fn fn = (mp_pool_map_fn)d->fn;
    const char *in = d->in;
    char *out = d->out;
    uint64_t i = 0;
    int st = 0;
    for (; i < d->count; i++) {
      int r = fn(in ? in + i * d->item_size : NULL, out ? out + i * d->result_size : NULL, d->ctx);
      if (r < 0) {
        st = r;
        break;
      }
    }
    e->done_items = i;
    e->status = st;
    return;
  }
  mp_pool_out o = {e};
  const void *arg = d->in ? d->in : d->arg_buf;
  if (d->kind == K_APPLY) {
    e->status = ((mp_pool_apply_fn)d->fn)(arg, d->count, &o, d->ctx);
    return;
  }
  struct slot *s = slot_at(p->sh, w);
  /* seq_cst: read by collect() (the handler, or a collecting caller) after
   * the eventfd write below or, if we die first, after our pidfd fires */
  atomic_store(&s->fd_want, idx + 1);
  MP__CRASH(POOL_FD_WANTED);
  atomic_store(&p->sh->parent_waiting, 0);
  efd_signal(p->efd);
  int fd = recv_fd(sock);
  if (fd < 0)
    _exit(3); /* the parent is gone or broke the protocol: the task fails */
  e->status = ((mp_pool_fd_fn)d->fn)(fd, arg, d->count, &o, d->ctx);
  close(fd);
}

/* Flush stdout and stderr when they hold output: a check of two pointers when
 * they do not (fflush(NULL) would walk and lock every stream after every
 * task). Other streams are flushed when the worker exits. */
static void flush_std(void) {
  if (__fpending(stdout))
    fflush(stdout);
  if (__fpending(stderr))
    fflush(stderr);
}

/* Start worker w on a CPU of its own: the w-th of the CPUs it may use (when
 * the pool has no more workers than those), then let it go anywhere again.
 * Forked from one thread, workers would otherwise all begin, and be woken,
 * on the CPU they last ran on together, and two of them could share one
 * for a time slice while another idled. A hint, not a binding. */
static void spread(unsigned w, unsigned nworkers) {
  cpu_set_t all, one;
  if (sched_getaffinity(0, sizeof all, &all) < 0 || (unsigned)CPU_COUNT(&all) < nworkers ||
      CPU_COUNT(&all) < 2)
    return;
  unsigned k = 0, want = w % (unsigned)CPU_COUNT(&all);
  for (int c = 0; c < CPU_SETSIZE; c++) {
    if (CPU_ISSET(c, &all) && k++ == want) {
      CPU_ZERO(&one);
      CPU_SET(c, &one);
      if (sched_setaffinity(0, sizeof one, &one) == 0) /* moves this process there */
        sched_setaffinity(0, sizeof all, &all);
      return;
    }
  }
}

/* Close [lo, hi] (hi may be UINT_MAX), ignoring what is not open. */
static void close_span(unsigned lo, unsigned hi) {
  if (lo > hi)
    return;
  if (syscall(SYS_close_range, lo, hi, 0) == 0)
    return;
  /* Linux before 5.9: one close per possible descriptor */
  struct rlimit rl;
  unsigned top =
      getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < UINT_MAX ? (unsigned)rl.rlim_cur : 65536u;
  for (unsigned fd = lo; fd <= hi && fd < top; fd++)
    close((int)fd);
}

/* A worker keeps only the descriptors it needs: stdin, stdout and stderr,
 * its socket to the handler and the handler's eventfd. Everything else the
 * parent had when it forked (a Pipe's write end, a Manager's socket, the
 * other workers' channels, the user's files) would otherwise stay open as
 * long as the worker lives: a reader would never see end of file, and a
 * Manager would not see its dead client's connection close. */
static void close_inherited(int a, int b) {
  unsigned keep[2] = {(unsigned)(a < b ? a : b), (unsigned)(a < b ? b : a)};
  unsigned from = 3;
  for (int i = 0; i < 2; i++) {
    if (keep[i] < from)
      continue; /* one of 0-2 (a parent that had closed stdin, say) */
    if (keep[i] > from)
      close_span(from, keep[i] - 1);
    from = keep[i] + 1;
  }
  close_span(from, UINT_MAX);
}

static _Noreturn void worker_main(struct mp_pool *p, unsigned w, int sock) {
  mp__process_after_fork_child();
  /* The mask first: the tie unblocks its own signal, which a mask taken from
   * the pool's creator (who may block it) must not block again. */
  pthread_sigmask(SIG_SETMASK, &p->child_mask, NULL);
  mp__tie_to_parent(p->owner, SIGKILL);
  close_inherited(sock, p->efd);
  /* A log handler's descriptors were the parent's and are closed now: a task
   * that logs (a repair inside it) must not write where one used to be. */
  mp__log_route_to_stderr();
  struct shared *sh = p->sh;
  struct slot *s = slot_at(sh, w);
  probe_direct(p);
  spread(w, p->nslots);
  if (p->opts.initializer)
    p->opts.initializer(p->opts.initargs);
  unsigned long n = 0;
  uint32_t idx;
  while (claim(sh, w, &idx) == 0) {
    struct entry *e = &sh->ring[idx];
    run_entry(p, e, w, idx, sock);
    flush_std(); /* what a task printed appears when it ends */
    MP__CRASH(POOL_TASK_RAN);
    uint32_t t = atomic_load_explicit(&s->done_tail, memory_order_relaxed); /* ours only */
    s->ring[t % RING_CAP] = idx;
    /* seq_cst (release included): pairs with collect()'s acquire load, which
     * then reads the ring slot and the entry's result fields written above;
     * seq_cst also for the Dekker pair of notify_parent() */
    atomic_store(&s->done_tail, t + 1);
    MP__CRASH(POOL_DONE_APPENDED);
    notify_parent(sh, p->efd);
    if (p->opts.maxtasksperchild && ++n >= p->opts.maxtasksperchild)
      break;
  }
  fflush(NULL);
  _exit(0);
}

/* ------------------------------------------------------------ 4. the handler */

/* Fork a worker into slot w (handler thread, mu held). */
static int spawn(struct mp_pool *p, unsigned w) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
    return -errno;
  struct slot *s = slot_at(p->sh, w);
  atomic_store(&s->done_head, 0);
  atomic_store(&s->done_tail, 0);
  atomic_store(&s->fd_want, 0);
  atomic_store(&s->asleep, 0);
  fflush(NULL); /* else buffered output would be written twice */
  pid_t pid = fork();
  if (pid == 0) {
    close(sv[0]);
    worker_main(p, w, sv[1]);
  }
  int e = errno;
  close(sv[1]);
  if (pid < 0) {
    close(sv[0]);
    return -e;
  }
  int fd = (int)syscall(SYS_pidfd_open, pid, 0);
  if (fd < 0) {
    e = errno;
    kill(pid, SIGKILL);
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
    }
    close(sv[0]);
    return -e;
  }
  p->workers[w] = (struct worker){.pid = pid, .pidfd = fd, .sock = sv[0], .alive = 1};
  return 0;
}

static void result_unref(struct mp_async_result *r);

/* Publish a result as final and drop the pool's reference to it. */
static void result_mark_done(struct mp_async_result *r) {
  /* seq_cst (release included): pairs with result_is_done()'s acquire load
   * and result_wait()'s loads, which then read status and data written
   * before; and with result_wait()'s CAS to RES_SLEEPER: one of the two
   * sees the other, so a sleeper is always woken */
  if (atomic_exchange(&r->done, RES_DONE) == RES_SLEEPER)
    mp__futex_wake(&r->done, INT_MAX);
  result_unref(r);
}

/* Mark a result final (mu held). Without callbacks it is done at once, by
 * whichever thread collected it; with callbacks it is queued for the handler,
 * which runs them in this order and then marks each done. */
static void result_finish(struct mp_pool *p, struct mp_async_result *r) {
  if (!r->cb.callback && !r->cb.error_callback) {
    result_mark_done(r);
    return;
  }
  r->next_fin = NULL;
  if (p->fin_tail)
    p->fin_tail->next_fin = r;
  else
    p->fin_head = r;
  p->fin_tail = r;
}

static void result_unref(struct mp_async_result *r) {
  if (atomic_fetch_sub(&r->refs, 1) != 1)
    return;
  mp_heap_free(r->heap_data);
  r->magic = 0;
  free(r);
}

static void iter_release_job(struct mp_pool_iter *it, struct job *j) {
  mp_heap_free(j->in_tmp);
  mp_heap_free(j->out_tmp);
  free(j);
  it->inflight--;
}

static void pool_unref_locked(struct mp_pool *p, int *free_it) { *free_it = --p->refs == 0; }

static void pool_destroy(struct mp_pool *p);

static void iter_maybe_destroy(struct mp_pool_iter *it) {
  /* mu held; the caller frees the pool if this dropped its last reference */
  it->magic = 0;
  free(it);
}

/* A job has ended with its entry's results copied in (mu held). */
static void job_complete(struct mp_pool *p, struct job *j, int *pool_gone) {
  p->outstanding--;
  if (j->fd >= 0) {
    close(j->fd);
    j->fd = -1;
  }
  if (j->it) {
    struct mp_pool_iter *it = j->it;
    j->done = 1;
    if (it->freed) {
      /* No one walks a freed iterator's lists again. */
      iter_release_job(it, j);
      if (it->inflight == 0) {
        iter_maybe_destroy(it);
        int gone;
        pool_unref_locked(p, &gone);
        *pool_gone |= gone;
      }
      return;
    }
    if (!it->ordered) {
      j->next_done = NULL;
      if (it->done_tail)
        it->done_tail->next_done = j;
      else
        it->done_head = j;
      it->done_tail = j;
    }
    atomic_fetch_add(&it->seq, 1);
    mp__futex_wake(&it->seq, INT_MAX);
    return;
  }
  struct mp_async_result *r = j->res; /* an apply's */
  r->status = j->status;
  mp_heap_free(j->in_tmp); /* j is r->job */
  result_finish(p, r);
}

/* A chunk of map r, starting at item `start`, has ended (mu held) with
 * `done` results written; when status < 0, `at` is the index of its first
 * item without a result. Results that went through the heap are copied out
 * now, chunk by chunk, while the workers run the other chunks. The last chunk
 * finishes r (which may free it: the caller does not touch r afterwards). */
static void map_chunk_done(struct mp_pool *p, struct mp_async_result *r, size_t start, size_t done,
                           int status, size_t at) {
  p->outstanding--;
  /* relaxed: a progress figure; the mutex orders its writers */
  atomic_fetch_add_explicit(&r->items_done, done, memory_order_relaxed);
  if (status < 0 && (r->fail_status == 0 || at < r->fail_index)) {
    r->fail_status = status;
    r->fail_index = at;
  }
  if (r->out_tmp && done)
    memcpy((char *)r->user_out + start * r->rsize, (char *)r->out_tmp + start * r->rsize,
           done * r->rsize);
  if (--r->remaining == 0) {
    r->status = r->fail_status;
    mp_heap_free(r->out_tmp);
    r->out_tmp = NULL;
    if (!r->copying_in) { /* else the submitter frees it when it has finished */
      mp_heap_free(r->in_tmp);
      r->in_tmp = NULL;
    }
    result_finish(p, r);
  }
}

/* Collect the entry at idx (mu held): fold its results into its job. */
static void collect_entry(struct mp_pool *p, uint32_t idx, int failed, int *pool_gone) {
  struct entry *e = &p->sh->ring[idx];
  struct job *j = e->cookie;
  if (failed == -ECONNABORTED && j->res)
    j->res->death = p->last_death;
  if (j->map) {
    size_t start = e->chunk * j->chunksize;
    int st = failed ? failed : e->status;
    size_t done = failed ? 0 : e->done_items;
    size_t at = start + done;
    mp_heap_free(failed && !e->res_inline ? e->res_ptr : NULL);
    e->res_ptr = NULL;
    e->res_inline = 1;
    atomic_store_explicit(&e->state, E_FREE, memory_order_relaxed); /* see below */
    map_chunk_done(p, j->res, start, done, st, at);
    return;
  }
  if (failed) {
    j->status = failed;
    j->lost = 1;
    j->done_items = 0;
    mp_heap_free(e->res_inline ? NULL : e->res_ptr);
  } else {
    j->status = e->status;
    j->done_items = e->done_items;
    if (j->res && j->res->kind == R_APPLY) {
      struct mp_async_result *r = j->res;
      r->len = e->res_len;
      if (e->res_inline) {
        memcpy(r->inline_data, e->res_buf, e->res_len);
        r->data = e->res_len ? r->inline_data : NULL;
      } else {
        r->data = r->heap_data = e->res_ptr;
      }
    }
  }
  e->res_ptr = NULL;
  e->res_inline = 1;
  /* relaxed: FREE is acted on only by publish_backlog() under mu, which
   * orders it after this store; workers only tell PENDING from the rest */
  atomic_store_explicit(&e->state, E_FREE, memory_order_relaxed);
  job_complete(p, j, pool_gone);
}

/* Fill the ring from the backlog (mu held). Returns how many were published. */
static unsigned publish_backlog(struct mp_pool *p) {
  struct shared *sh = p->sh;
  unsigned n = 0;
  while (p->backlog_head) {
    uint64_t t = atomic_load_explicit(&sh->tail, memory_order_relaxed); /* written under mu only */
    struct entry *e = &sh->ring[t % RING_CAP];
    /* relaxed: FREE is stored under mu (collect_entry), which orders it
     * before this load; the worker's results in the entry were read before
     * that store, after the acquire of its done_tail */
    if (atomic_load_explicit(&e->state, memory_order_relaxed) != E_FREE)
      break;
    struct job *j = p->backlog_head;
    if (j->map && j->next_chunk == j->ready)
      break; /* its items are still being copied in */
    e->cookie = j;
    e->d = j->d;
    if (j->map) {
      /* the map's next chunk; the job leaves the backlog with its last */
      size_t c = j->next_chunk++, start = c * j->chunksize;
      e->chunk = c;
      e->d.in = j->d.in ? (const char *)j->d.in + start * j->d.item_size : NULL;
      e->d.out = j->d.out ? (char *)j->d.out + start * j->d.result_size : NULL;
      e->d.count = j->n - start < j->chunksize ? j->n - start : j->chunksize;
    }
    if (!j->map || j->next_chunk == j->nchunks) {
      p->backlog_head = j->next;
      if (!p->backlog_head)
        p->backlog_tail = NULL;
      j->next = NULL;
    }
    /* release: pairs with the claim's acquire load and CAS in claim(),
     * which then read the fields written above */
    atomic_store_explicit(&e->state, E_PENDING, memory_order_release);
    /* seq_cst: the Dekker pair with claim()'s sleepers/tail (wake_workers) */
    atomic_store(&sh->tail, t + 1);
    n++;
  }
  return n;
}

/* After publishing: wake one sleeping worker; each worker that claims a task
 * with more left behind it wakes the next (see claim). Woken together,
 * sleepers tend to be queued on one CPU (the one each last ran on, idle at
 * that instant) and stay there behind the first for a time slice while
 * another CPU idles; woken one by one from a busy CPU, each lands on an idle
 * one. */
static void wake_workers(struct mp_pool *p) {
  struct shared *sh = p->sh;
  /* seq_cst: after the seq_cst store of `tail`, this load of `sleepers`
   * pairs with claim()'s increment of `sleepers` and its re-check of `tail`;
   * the bump of work_seq makes a futex wait that read the old value return */
  atomic_fetch_add(&sh->work_seq, 1);
  if (atomic_load(&sh->sleepers))
    mp__futex_wake(&sh->work_seq, 1);
}

/* Drain every done ring and serve fd requests (mu held). Returns the number
 * of completions. */
static unsigned collect(struct mp_pool *p, int *pool_gone) {
  unsigned n = 0;
  for (unsigned w = 0; w < p->nslots; w++) {
    if (!p->workers[w].alive)
      continue;
    struct slot *s = slot_at(p->sh, w);
    /* relaxed: done_head is written only under mu, which orders its writers */
    uint32_t h = atomic_load_explicit(&s->done_head, memory_order_relaxed);
    /* acquire: pairs with the worker's seq_cst store of done_tail in
     * worker_main(), made after the ring slot and the entry's results */
    uint32_t t = atomic_load_explicit(&s->done_tail, memory_order_acquire);
    for (; h != t; h++, n++) {
      collect_entry(p, s->ring[h % RING_CAP], 0, pool_gone);
    }
    /* relaxed: read by writers under mu, and without it only as a hint */
    atomic_store_explicit(&s->done_head, h, memory_order_relaxed);
    /* seq_cst: pairs with the worker's store in run_entry(), which precedes
     * its eventfd write (or its death, seen through the pidfd) */
    uint32_t want = atomic_load(&s->fd_want);
    if (want) {
      struct entry *e = &p->sh->ring[want - 1];
      atomic_store(&s->fd_want, 0);
      if (atomic_load(&e->state) == E_CLAIMED + w) {
        struct job *j = e->cookie;
        if (j->fd >= 0 && send_fd(p->workers[w].sock, j->fd) == 0) {
          close(j->fd);
          j->fd = -1;
        }
      }
    }
  }
  if (n && p->backlog_head) {
    unsigned k = publish_backlog(p);
    if (k)
      wake_workers(p);
  }
  return n;
}

/* seq_cst loads, made after a seq_cst store of parent_waiting = 1: they pair
 * with the worker's seq_cst store of done_tail (or fd_want) followed by its
 * seq_cst load of parent_waiting in notify_parent(). Under C11 only seq_cst on
 * both sides rules out that both read the old value (a relaxed or acquire load
 * here may be ordered before the store, as it is on ARM), which would leave a
 * completion unannounced and its waiter asleep. */
static int anything_to_collect(struct mp_pool *p) {
  for (unsigned w = 0; w < p->nslots; w++) {
    if (!p->workers[w].alive)
      continue;
    struct slot *s = slot_at(p->sh, w);
    if (atomic_load(&s->done_head) != atomic_load(&s->done_tail) || atomic_load(&s->fd_want))
      return 1;
  }
  return 0;
}

/* Whether a done ring or an fd request has something, read without mu (the
 * slots of dead workers have empty rings). For the handler's spin. */
static int completions_pending(struct mp_pool *p) {
  for (unsigned w = 0; w < p->nslots; w++) {
    struct slot *s = slot_at(p->sh, w);
    /* relaxed: a hint; the collection that follows reads under mu with acquire */
    if (atomic_load_explicit(&s->done_head, memory_order_relaxed) !=
            atomic_load_explicit(&s->done_tail, memory_order_relaxed) ||
        atomic_load_explicit(&s->fd_want, memory_order_relaxed))
      return 1;
  }
  return 0;
}

/* completions_pending() with seq_cst loads, for a thread that has just
 * stored parent_waiting = 1 without mu (pool_wait_own): the same pairing as
 * anything_to_collect(). */
static int completions_announced(struct mp_pool *p) {
  for (unsigned w = 0; w < p->nslots; w++) {
    struct slot *s = slot_at(p->sh, w);
    if (atomic_load(&s->done_head) != atomic_load(&s->done_tail) || atomic_load(&s->fd_want))
      return 1;
  }
  return 0;
}

/* The handler, with tasks outstanding, spins up to SPIN_NS for a completion
 * before it sleeps in poll(). Returns 1 when one came. */
static int handler_spin(struct mp_pool *p) {
  int64_t until = 0;
  for (unsigned i = 1;; i++) {
    if (completions_pending(p))
      return 1;
    if (atomic_load_explicit(&p->collectors, memory_order_relaxed))
      return 0; /* a caller collects: leave the CPU to it (relaxed: a hint) */
    spin_pause(i);
    if (!spin_budget(i, &until))
      return 0;
  }
}

static void reap(struct worker *wk) {
  siginfo_t si;
  while (waitid(P_PIDFD, (id_t)wk->pidfd, &si, WEXITED) < 0 && errno == EINTR) {
  }
  close(wk->pidfd);
  close(wk->sock);
  wk->alive = 0;
  wk->pid = 0;
}

/* Fail every entry worker w still holds (mu held, after its done ring was
 * drained). */
static void fail_claims(struct mp_pool *p, unsigned w, int code, int *pool_gone) {
  /* The worker is dead (its pidfd fired, or it was killed and reaped): the
   * kernel orders all it wrote, the claim CAS included, before these loads. */
  for (uint32_t i = 0; i < RING_CAP; i++)
    if (atomic_load(&p->sh->ring[i].state) == E_CLAIMED + w)
      collect_entry(p, i, code, pool_gone);
}

static int keep_workers(struct mp_pool *p) {
  return p->state == P_RUNNING || (p->state == P_CLOSED && (p->outstanding || p->iters_active));
}

/* Worker w has ended (mu held): collect what it finished, fail what it held,
 * reap it and start its successor if work remains. */
/* How worker wk ended, in Process's convention (the exit code, or minus the
 * signal), without reaping it; INT_MIN when the kernel cannot tell. */
static int death_of(struct worker *wk) {
  siginfo_t si;
  memset(&si, 0, sizeof si);
  while (waitid(P_PIDFD, (id_t)wk->pidfd, &si, WEXITED | WNOWAIT) < 0)
    if (errno != EINTR)
      return INT_MIN;
  return si.si_code == CLD_EXITED ? si.si_status : -si.si_status;
}

static void log_death(struct mp_pool *p, unsigned w, int death) {
  if (death == -SIGSEGV || death == -SIGBUS)
    MP__LOG(MP_LOG_WARNING,
            "pool: worker %u (pid %d) was killed by %s and is replaced; its task fails with "
            "-ECONNABORTED. A worker sees only the memory that existed when it was forked: "
            "data made after mp_pool_new() must be passed as arguments or live in the family "
            "heap",
            w, (int)p->workers[w].pid, strsignal(-death));
  else if (death < 0 && death != INT_MIN)
    MP__LOG(MP_LOG_INFO, "pool: worker %u (pid %d) was killed by %s and is replaced", w,
            (int)p->workers[w].pid, strsignal(-death));
  else
    MP__LOG(MP_LOG_INFO, "pool: worker %u (pid %d) exited with code %d and is replaced", w,
            (int)p->workers[w].pid, death);
}

static void worker_ended(struct mp_pool *p, unsigned w, int *pool_gone) {
  struct slot *s = slot_at(p->sh, w);
  p->last_death = death_of(&p->workers[w]);
  if (keep_workers(p))
    log_death(p, w, p->last_death);
  collect(p, pool_gone);
  fail_claims(p, w, -ECONNABORTED, pool_gone);
  /* The entries it held are FREE now, and one of them may be the entry at
   * which publishing stopped (the ring was full): publish the backlog into
   * them, or no completion may ever come to do it and a map waits forever. */
  if (p->backlog_head && publish_backlog(p))
    wake_workers(p);
  /* after the worker's death (see fail_claims): its own count, if it was
   * asleep or about to be */
  if (atomic_exchange(&s->asleep, 0))
    atomic_fetch_sub(&p->sh->sleepers, 1);
  reap(&p->workers[w]);
  if (keep_workers(p) && spawn(p, w) < 0) {
    /* No replacement now (the kernel refused): the next death or poll
     * retries; the surviving workers carry on. */
  }
}

static void deliver(struct mp_pool *p) {
  /* mu held on entry and exit; released around the callbacks */
  while (p->fin_head) {
    struct mp_async_result *list = p->fin_head;
    p->fin_head = p->fin_tail = NULL;
    pthread_mutex_unlock(&p->mu);
    while (list) {
      struct mp_async_result *r = list;
      list = r->next_fin;
      mp_pool_callback cb = r->status >= 0 ? r->cb.callback : r->cb.error_callback;
      if (cb)
        cb(r, r->status, r->cb.arg);
      result_mark_done(r);
    }
    pthread_mutex_lock(&p->mu);
  }
}

static void terminate_now(struct mp_pool *p, int *pool_gone) {
  struct shared *sh = p->sh;
  atomic_store(&sh->stopping, 1);
  for (unsigned w = 0; w < p->nslots; w++)
    if (p->workers[w].alive)
      syscall(SYS_pidfd_send_signal, p->workers[w].pidfd, SIGKILL, NULL, 0);
  collect(p, pool_gone);
  for (unsigned w = 0; w < p->nslots; w++) {
    if (!p->workers[w].alive)
      continue;
    reap(&p->workers[w]);
    struct slot *s = slot_at(sh, w);
    uint32_t h = atomic_load(&s->done_head), t = atomic_load(&s->done_tail);
    for (; h != t; h++) /* finished between the collect and the kill */
      collect_entry(p, s->ring[h % RING_CAP], 0, pool_gone);
    atomic_store(&s->done_head, h);
  }
  for (uint32_t i = 0; i < RING_CAP; i++)
    if (atomic_load(&sh->ring[i].state) != E_FREE)
      collect_entry(p, i, -ESHUTDOWN, pool_gone);
  while (p->backlog_head) {
    struct job *j = p->backlog_head;
    p->backlog_head = j->next;
    if (j->map) {
      /* every chunk not yet published; r may be freed by the last */
      size_t c = j->next_chunk, nc = j->nchunks, cs = j->chunksize;
      struct mp_async_result *r = j->res;
      j->next_chunk = nc;
      for (; c < nc; c++)
        map_chunk_done(p, r, c * cs, 0, -ESHUTDOWN, c * cs);
      continue;
    }
    j->status = -ESHUTDOWN;
    j->lost = 1;
    job_complete(p, j, pool_gone);
  }
  p->backlog_tail = NULL;
}

static int workers_alive(struct mp_pool *p) {
  for (unsigned w = 0; w < p->nslots; w++)
    if (p->workers[w].alive)
      return 1;
  return 0;
}

static void *handler_main(void *arg) {
  struct mp_pool *p = arg;
  struct shared *sh = p->sh;
  int pool_gone = 0;
  pthread_mutex_lock(&p->mu);
  int err = 0;
  for (unsigned w = 0; w < p->nslots && !err; w++)
    err = spawn(p, w);
  if (err) {
    atomic_store(&sh->stopping, 1);
    for (unsigned w = 0; w < p->nslots; w++)
      if (p->workers[w].alive) {
        syscall(SYS_pidfd_send_signal, p->workers[w].pidfd, SIGKILL, NULL, 0);
        reap(&p->workers[w]);
      }
    p->start_err = err;
    pthread_mutex_unlock(&p->mu);
    atomic_store(&p->started, 2);
    mp__futex_wake(&p->started, INT_MAX);
    return NULL;
  }
  pthread_mutex_unlock(&p->mu);
  /* seq_cst: pairs with mp_pool_new()'s loads of `started` */
  atomic_store(&p->started, 1);
  mp__futex_wake(&p->started, INT_MAX);

  struct pollfd *pfd = malloc((p->nslots + 1) * sizeof *pfd);
  unsigned *pw = malloc((p->nslots + 1) * sizeof *pw);
  pthread_mutex_lock(&p->mu);
  for (;;) {
    unsigned got = collect(p, &pool_gone);
    if (p->state == P_TERMINATING) {
      terminate_now(p, &pool_gone);
      deliver(p);
      break;
    }
    if (p->state == P_CLOSED && !p->outstanding && !p->iters_active &&
        !atomic_load(&sh->stopping)) {
      atomic_store(&sh->stopping, 1);
      atomic_fetch_add(&sh->work_seq, 1);
      mp__futex_wake(&sh->work_seq, INT_MAX);
    }
    deliver(p);
    if (atomic_load(&sh->stopping) && !workers_alive(p))
      break;
    /* Restart replacements the kernel refused earlier. */
    if (keep_workers(p))
      for (unsigned w = 0; w < p->nslots; w++)
        if (!p->workers[w].alive)
          spawn(p, w);
    unsigned n = 0;
    if (pfd) {
      pfd[n].fd = p->efd;
      pfd[n++].events = POLLIN;
      for (unsigned w = 0; w < p->nslots; w++) {
        if (!p->workers[w].alive)
          continue;
        pw[n] = w;
        pfd[n].fd = p->workers[w].pidfd;
        pfd[n++].events = POLLIN;
      }
    }
    int timeout = 0;
    if (!got && p->outstanding && p->state != P_TERMINATING && !atomic_load(&p->collectors)) {
      pthread_mutex_unlock(&p->mu);
      int came = handler_spin(p);
      pthread_mutex_lock(&p->mu);
      if (came)
        continue;
    }
    if (!got) {
      /* seq_cst store, then anything_to_collect()'s seq_cst loads: the
       * Dekker pair with a worker's done_tail store and notify_parent() */
      atomic_store(&sh->parent_waiting, 1);
      if (anything_to_collect(p) || p->state == P_TERMINATING)
        atomic_store(&sh->parent_waiting, 0);
      else
        timeout = pfd ? -1 : 10;
    }
    pthread_mutex_unlock(&p->mu);
    int r = pfd ? poll(pfd, n, timeout) : poll(NULL, 0, timeout);
    pthread_mutex_lock(&p->mu);
    atomic_store(&sh->parent_waiting, 0);
    if (r <= 0)
      continue;
    if (pfd[0].revents) {
      uint64_t v;
      ssize_t k = read(p->efd, &v, sizeof v);
      (void)k;
    }
    for (unsigned i = 1; i < n; i++)
      if (pfd[i].revents)
        worker_ended(p, pw[i], &pool_gone);
  }
  p->state = P_FINISHED;
  pthread_mutex_unlock(&p->mu);
  free(pfd);
  free(pw);
  /* seq_cst: pairs with wait_finished()'s loads (after it, the pool's state
   * is final and only mu's last holders touched it) */
  atomic_store(&p->finished, 1);
  mp__futex_wake(&p->finished, INT_MAX);
  (void)pool_gone; /* the user's reference keeps the pool until mp_pool_free */
  return NULL;
}

/* ------------------------------------------------------------ 5. submission */

/* Queue a job (mu held): into the ring when there is room, else the backlog.
 * Returns 1 when it went into the ring. */
static int enqueue(struct mp_pool *p, struct job *j) {
  p->outstanding++;
  j->next = NULL;
  if (p->backlog_tail)
    p->backlog_tail->next = j;
  else
    p->backlog_head = j;
  p->backlog_tail = j;
  return (int)publish_backlog(p);
}

static struct mp_async_result *result_new(struct mp_pool *p, int kind,
                                          const mp_pool_callbacks *cb) {
  struct mp_async_result *r = calloc(1, sizeof *r);
  if (!r)
    return NULL;
  r->magic = RESULT_MAGIC;
  atomic_init(&r->refs, 2);
  r->owner = p->owner;
  r->handler = p->thread;
  r->kind = kind;
  if (cb)
    r->cb = *cb;
  return r;
}

static int apply_submit(struct mp_pool *p, int kind, anyfn fn, int fd, const void *arg, size_t len,
                        void *ctx, const mp_pool_callbacks *cb, mp_async_result **ret) {
  int r = check_pool(p);
  if (r < 0)
    return r;
  if (!fn || !ret || (!arg && len))
    return -EINVAL;
  struct mp_async_result *res = result_new(p, R_APPLY, cb);
  if (!res)
    return -ENOMEM;
  struct job *j = &res->job;
  j->res = res;
  j->fd = -1;
  j->d.kind = (uint32_t)kind;
  j->d.fn = fn;
  j->d.ctx = ctx;
  j->d.count = len;
  /* Always a copy, also of an argument in the heap: the caller may reuse
   * its buffer as soon as this returns (as documented). */
  if (len <= INLINE_MAX) {
    if (len)
      memcpy(j->d.arg_buf, arg, len);
  } else {
    j->in_tmp = mp_heap_alloc(len);
    if (!j->in_tmp) {
      free(res);
      return -ENOMEM;
    }
    memcpy(j->in_tmp, arg, len);
    j->d.in = j->in_tmp;
  }
  if (kind == K_APPLY_FD) {
    j->fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    if (j->fd < 0) {
      r = errno == EBADF ? -EBADF : -errno;
      mp_heap_free(j->in_tmp);
      free(res);
      return r;
    }
  }
  pthread_mutex_lock(&p->mu);
  if (p->state != P_RUNNING) {
    pthread_mutex_unlock(&p->mu);
    if (j->fd >= 0)
      close(j->fd);
    mp_heap_free(j->in_tmp);
    free(res);
    return -EPIPE;
  }
  int in_ring = enqueue(p, j);
  pthread_mutex_unlock(&p->mu);
  if (in_ring)
    wake_workers(p);
  *ret = res;
  return 0;
}

static size_t auto_chunk(struct mp_pool *p, size_t n) {
  size_t div = 4 * (size_t)p->nslots;
  size_t c = n / div + (n % div != 0);
  return c ? c : 1;
}

static int in_heap(const void *ptr, size_t bytes) {
  return ptr && bytes && mp_heap_contains(ptr) && mp_heap_contains((const char *)ptr + bytes - 1);
}

/* Copy a map's items into its heap block (res->in_tmp) a few chunks at a
 * time, publishing each group as soon as it is in place, so that the workers
 * start on the first chunks while the rest is copied. The first group is one
 * chunk, the next ones at least COPY_IN_BYTES. terminate may fail the map
 * meanwhile (it fails every unpublished chunk): the copy stops, and this
 * thread frees the block, which the map's end left to it (copying_in). */
#define COPY_IN_BYTES (256u << 10)
static void copy_in(struct mp_pool *p, struct mp_async_result *res, const char *items,
                    size_t isize) {
  struct job *j = &res->job;
  size_t per = COPY_IN_BYTES / isize, done = 0, n = j->n, cs = j->chunksize;
  for (;;) {
    /* whole chunks: one first, then at least COPY_IN_BYTES (done is a
     * multiple of cs) */
    size_t step = done && per > cs ? (per + cs - 1) / cs * cs : cs;
    size_t upto = n - done < step ? n : done + step;
    memcpy((char *)res->in_tmp + done * isize, items + done * isize, (upto - done) * isize);
    done = upto;
    pthread_mutex_lock(&p->mu);
    int over = j->next_chunk == j->nchunks && j->ready < j->nchunks; /* terminated */
    unsigned k = 0;
    if (!over) {
      j->ready = done / cs + (done % cs != 0);
      k = publish_backlog(p);
    }
    if (over || done == n) {
      res->copying_in = 0;
      if (res->remaining == 0) {
        mp_heap_free(res->in_tmp);
        res->in_tmp = NULL;
      }
      pthread_mutex_unlock(&p->mu);
      if (k)
        wake_workers(p);
      return;
    }
    pthread_mutex_unlock(&p->mu);
    if (k)
      wake_workers(p);
  }
}

/* How a map's items and results that are not in the heap reach the workers.
 * Through the heap (staging blocks, copied in and out by this process) while
 * both fit below MP__HEAP_TRIM: blocks of that size keep their pages when
 * freed, so the next map of a similar size reuses them warm, and a memcpy in
 * this process is the fastest copy there is. Bigger maps, and maps the heap
 * has no room for, are copied by the workers straight from and to this
 * process's memory (see run_chunk_direct) when the workers may (the first
 * one's probe) and the chunks hold at least DIRECT_MIN bytes (below that a
 * system call per chunk costs more than the copies): no heap space, and no
 * fresh pages to fault in. The arrays stay valid until the map is done:
 * mp_pool_map() waits, and mp_pool_map_async() asks it of its caller. */
#define DIRECT_MIN 4096
#define STAGE_MAX MP__HEAP_TRIM

static int map_submit(struct mp_pool *p, mp_pool_map_fn fn, void *ctx, const void *items, size_t n,
                      size_t isize, void *results, size_t rsize, size_t chunksize,
                      const mp_pool_callbacks *cb, mp_async_result **ret) {
  int r = check_pool(p);
  if (r < 0)
    return r;
  if (!fn || !ret || (!items && isize && n) || (!results && rsize && n))
    return -EINVAL;
  if ((isize && n > SIZE_MAX / isize) || (rsize && n > SIZE_MAX / rsize) || isize > UINT32_MAX ||
      rsize > UINT32_MAX)
    return -EINVAL;
  struct mp_async_result *res = result_new(p, R_MAP, cb);
  if (!res)
    return -ENOMEM;
  if (!chunksize)
    chunksize = auto_chunk(p, n);
  size_t nchunks = n / chunksize + (n % chunksize != 0);
  size_t ibytes = n * isize, rbytes = n * rsize;
  size_t cbytes = (chunksize < n ? chunksize : n) * (isize + rsize);
  int can_direct = cbytes >= DIRECT_MIN && atomic_load(&p->sh->direct) == DIRECT_YES;
  size_t istage = ibytes && !in_heap(items, ibytes) ? ibytes : 0;
  size_t rstage = rbytes && !in_heap(results, rbytes) ? rbytes : 0;
  int direct = can_direct && istage + rstage > STAGE_MAX;
  if (!direct && istage)
    res->in_tmp = mp_heap_alloc(ibytes); /* filled below, a few chunks at a time */
  if (!direct && rstage)
    res->out_tmp = mp_heap_alloc(rbytes);
  if ((istage && !res->in_tmp) || (rstage && !res->out_tmp)) {
    if (!can_direct)
      goto nomem;
    mp_heap_free(res->in_tmp); /* no room in the heap: copy directly */
    mp_heap_free(res->out_tmp);
    res->in_tmp = res->out_tmp = NULL;
    direct = 1;
  }
  uint32_t flags = 0;
  const char *in = items;
  char *out = results;
  if (istage && direct)
    flags |= DIRECT_IN;
  else if (istage)
    in = res->in_tmp;
  if (rstage && direct) {
    flags |= DIRECT_OUT;
  } else if (rstage) {
    res->user_out = results;
    res->rsize = rsize;
    out = res->out_tmp;
  }
  struct job *j = &res->job;
  j->res = res;
  j->fd = -1;
  j->map = 1;
  j->n = n;
  j->chunksize = chunksize;
  j->nchunks = nchunks;
  j->d.kind = K_CHUNK;
  j->d.flags = flags;
  j->d.fn = (anyfn)fn;
  j->d.ctx = ctx;
  j->d.in = isize ? in : NULL;
  j->d.out = rsize ? out : NULL;
  j->d.count = n;
  j->d.item_size = (uint32_t)isize;
  j->d.result_size = (uint32_t)rsize;
  j->ready = res->in_tmp ? 0 : nchunks;
  res->copying_in = res->in_tmp != NULL;
  res->remaining = nchunks;
  res->items_total = n;
  pthread_mutex_lock(&p->mu);
  if (p->state != P_RUNNING) {
    pthread_mutex_unlock(&p->mu);
    mp_heap_free(res->in_tmp);
    mp_heap_free(res->out_tmp);
    free(res);
    return -EPIPE;
  }
  if (nchunks == 0) {
    result_finish(p, res);
    pthread_mutex_unlock(&p->mu);
    efd_signal(p->efd); /* the handler delivers it, callbacks included */
    *ret = res;
    return 0;
  }
  j->next = NULL;
  if (p->backlog_tail)
    p->backlog_tail->next = j;
  else
    p->backlog_head = j;
  p->backlog_tail = j;
  p->outstanding += nchunks;
  unsigned k = publish_backlog(p);
  pthread_mutex_unlock(&p->mu);
  if (k)
    wake_workers(p);
  if (res->copying_in)
    copy_in(p, res, items, isize);
  *ret = res;
  return 0;
nomem:
  mp_heap_free(res->in_tmp);
  mp_heap_free(res->out_tmp);
  free(res);
  return -ENOMEM;
}

/* ------------------------------------------------------------ 6. public */

MP_EXPORT int mp_pool_new(int processes, const mp_pool_options *opts, mp_pool **ret) {
  if (!ret || processes < 0 || processes > MAX_WORKERS)
    return -EINVAL;
  if (processes == 0)
    processes = mp_cpu_count();
  if (processes > MAX_WORKERS)
    processes = MAX_WORKERS;
  int r = mp__heap_ensure();
  if (r < 0)
    return r;
  struct mp_pool *p = calloc(1, sizeof *p);
  if (!p)
    return -ENOMEM;
  p->magic = POOL_MAGIC;
  p->owner = my_pid();
  p->nslots = (unsigned)processes;
  p->refs = 1;
  if (opts)
    p->opts = *opts;
  p->workers = calloc(p->nslots, sizeof *p->workers);
  size_t shsize = sizeof(struct shared) + p->nslots * sizeof(struct slot);
  p->sh = mp_heap_calloc(1, shsize);
  p->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (!p->workers || !p->sh || p->efd < 0) {
    r = p->efd < 0 && p->workers && p->sh ? -errno : -ENOMEM;
    goto fail;
  }
  /* Adaptive: the submitting thread and the handler (or a collecting caller)
   * each hold mu for a few hundred nanoseconds at a time; spinning a little
   * beats a futex sleep and a wake on every collision. */
  pthread_mutexattr_t ma;
  pthread_mutexattr_init(&ma);
  pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_ADAPTIVE_NP);
  pthread_mutex_init(&p->mu, &ma);
  pthread_mutexattr_destroy(&ma);
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &p->child_mask);
  /* The handler takes no signal: the program's handlers run on its threads. */
  r = -pthread_create(&p->thread, NULL, handler_main, p);
  pthread_sigmask(SIG_SETMASK, &p->child_mask, NULL);
  if (r < 0) {
    pthread_mutex_destroy(&p->mu);
    goto fail;
  }
  while (atomic_load(&p->started) == 0)
    mp__futex_wait(&p->started, 0, NULL);
  if (atomic_load(&p->started) == 2) {
    pthread_join(p->thread, NULL);
    r = p->start_err;
    pthread_mutex_destroy(&p->mu);
    goto fail;
  }
  pthread_setname_np(p->thread, "mp-pool");
  *ret = p;
  return 0;
fail:
  if (p->efd >= 0)
    close(p->efd);
  mp_heap_free(p->sh);
  free(p->workers);
  free(p);
  return r;
}

MP_EXPORT int mp_pool_apply_async(mp_pool *pool, mp_pool_apply_fn fn, const void *arg, size_t len,
                                  void *ctx, const mp_pool_callbacks *cb, mp_async_result **ret) {
  return apply_submit(pool, K_APPLY, (anyfn)fn, -1, arg, len, ctx, cb, ret);
}

MP_EXPORT int mp_pool_apply_async_fd(mp_pool *pool, mp_pool_fd_fn fn, int fd, const void *arg,
                                     size_t len, void *ctx, const mp_pool_callbacks *cb,
                                     mp_async_result **ret) {
  if (fd < 0)
    return check_pool(pool) < 0 ? check_pool(pool) : -EBADF;
  return apply_submit(pool, K_APPLY_FD, (anyfn)fn, fd, arg, len, ctx, cb, ret);
}

static int result_is_done(struct mp_async_result *r);
static int result_wait(struct mp_async_result *r, double timeout);

/* The caller of mp_pool_apply() or mp_pool_map() (so the pool is alive) waits
 * for its result r by collecting completions itself for up to SPIN_NS after the
 * last one it saw, instead of waiting for the handler to collect them and
 * wake it. It takes over the handler's wake-up (parent_waiting 1 -> 0, see the
 * protocol) while it does, and hands it back (store 1, then re-check) when it
 * leaves. It wakes the handler for what only the handler does: callbacks to
 * run, a closed pool to wind down. Then it waits as any other caller. */
static int pool_wait_own(struct mp_pool *p, struct mp_async_result *r) {
  struct shared *sh = p->sh;
  int took = 0;
  int64_t until = 0;
  if (pthread_equal(pthread_self(), p->thread))
    return mp_async_result_get(r, MP_FOREVER); /* from a callback: -EDEADLK as before */
  /* seq_cst: pairs with mp_pool_free()'s loads, which wait for this thread
   * to leave the pool's structures (the fetch_sub below) */
  atomic_fetch_add(&p->collectors, 1);
  for (unsigned i = 1; !result_is_done(r); i++) {
    /* relaxed load: only a filter for the seq_cst exchange, which is what
     * pairs with the workers' exchange in notify_parent() */
    if (atomic_load_explicit(&sh->parent_waiting, memory_order_relaxed) &&
        atomic_exchange(&sh->parent_waiting, 0))
      took = 1;
    if (completions_pending(p)) {
      int gone = 0;
      pthread_mutex_lock(&p->mu);
      collect(p, &gone);
      int tell = p->fin_head || p->state != P_RUNNING;
      pthread_mutex_unlock(&p->mu);
      if (tell)
        efd_signal(p->efd);
      until = 0;
      continue;
    }
    mp__cpu_relax();
    if (!spin_budget(i, &until))
      break;
  }
  if (took) {
    /* Hand the wake-up back: a seq_cst store, then seq_cst loads of the done
     * rings (the workers' side is notify_parent(): seq_cst store of
     * done_tail, then seq_cst load of parent_waiting). A completion either is
     * seen here or finds parent_waiting 1 and writes the eventfd itself. The
     * relaxed loads of completions_pending() would not do: they may be
     * performed before the store (ARM), the worker may still read 0, and the
     * handler would sleep on with a completion unannounced. */
    atomic_store(&sh->parent_waiting, 1);
    if (completions_announced(p) && atomic_exchange(&sh->parent_waiting, 0))
      efd_signal(p->efd);
  }
  atomic_fetch_sub(&p->collectors, 1);
  int w = result_wait(r, MP_FOREVER);
  return w < 0 ? w : r->status;
}

MP_EXPORT int mp_pool_apply(mp_pool *pool, mp_pool_apply_fn fn, const void *arg, size_t len,
                            void *ctx, void **result, size_t *result_len) {
  mp_async_result *res;
  int r = mp_pool_apply_async(pool, fn, arg, len, ctx, NULL, &res);
  if (r < 0)
    return r;
  int st = pool_wait_own(pool, res);
  if (result) {
    void *copy = NULL;
    if (res->len) {
      copy = malloc(res->len);
      if (!copy) {
        mp_async_result_free(res);
        return -ENOMEM;
      }
      memcpy(copy, res->data, res->len);
    }
    *result = copy;
  }
  if (result_len)
    *result_len = res->len;
  mp_async_result_free(res);
  return st;
}

MP_EXPORT int mp_pool_map_async(mp_pool *pool, mp_pool_map_fn fn, void *ctx, const void *items,
                                size_t n, size_t item_size, void *results, size_t result_size,
                                size_t chunksize, const mp_pool_callbacks *cb,
                                mp_async_result **ret) {
  return map_submit(pool, fn, ctx, items, n, item_size, results, result_size, chunksize, cb, ret);
}

MP_EXPORT int mp_pool_map(mp_pool *pool, mp_pool_map_fn fn, void *ctx, const void *items, size_t n,
                          size_t item_size, void *results, size_t result_size, size_t chunksize) {
  int r = check_pool(pool);
  if (r < 0)
    return r;
  if (n == 0)
    return fn ? 0 : -EINVAL;
  mp_async_result *res;
  r = map_submit(pool, fn, ctx, items, n, item_size, results, result_size, chunksize, NULL, &res);
  if (r < 0)
    return r;
  r = pool_wait_own(pool, res);
  mp_async_result_free(res);
  return r;
}

MP_EXPORT int mp_pool_starmap(mp_pool *pool, mp_pool_map_fn fn, void *ctx, const void *items,
                              size_t n, size_t item_size, void *results, size_t result_size,
                              size_t chunksize) {
  return mp_pool_map(pool, fn, ctx, items, n, item_size, results, result_size, chunksize);
}

MP_EXPORT int mp_pool_starmap_async(mp_pool *pool, mp_pool_map_fn fn, void *ctx, const void *items,
                                    size_t n, size_t item_size, void *results, size_t result_size,
                                    size_t chunksize, const mp_pool_callbacks *cb,
                                    mp_async_result **ret) {
  return map_submit(pool, fn, ctx, items, n, item_size, results, result_size, chunksize, cb, ret);
}

MP_EXPORT int mp_pool_close(mp_pool *pool) {
  int r = check_pool(pool);
  if (r < 0)
    return r;
  pthread_mutex_lock(&pool->mu);
  if (pool->state == P_RUNNING)
    pool->state = P_CLOSED;
  pthread_mutex_unlock(&pool->mu);
  efd_signal(pool->efd);
  return 0;
}

static int wait_finished(struct mp_pool *p, const mp__deadline *d) {
  while (!atomic_load(&p->finished)) {
    int r = mp__futex_wait(&p->finished, 0, d);
    if (r < 0 && !atomic_load(&p->finished))
      return r; /* -ETIMEDOUT, or -EFAULT/-EINVAL for a corrupt word */
  }
  return 0;
}

MP_EXPORT int mp_pool_terminate(mp_pool *pool) {
  int r = check_pool(pool);
  if (r < 0)
    return r;
  if (pthread_equal(pthread_self(), pool->thread))
    return -EDEADLK;
  pthread_mutex_lock(&pool->mu);
  if (pool->state == P_RUNNING || pool->state == P_CLOSED)
    pool->state = P_TERMINATING;
  pthread_mutex_unlock(&pool->mu);
  efd_signal(pool->efd);
  mp__deadline d;
  mp__deadline_init(&d, MP_FOREVER);
  return wait_finished(pool, &d);
}

MP_EXPORT int mp_pool_join(mp_pool *pool, double timeout) {
  int r = check_pool(pool);
  if (r < 0)
    return r;
  mp__deadline d;
  r = mp__deadline_init(&d, timeout);
  if (r < 0)
    return r;
  pthread_mutex_lock(&pool->mu);
  int st = pool->state;
  pthread_mutex_unlock(&pool->mu);
  if (st == P_RUNNING)
    return -EINVAL;
  if (pthread_equal(pthread_self(), pool->thread))
    return -EDEADLK;
  return wait_finished(pool, &d);
}

static void pool_destroy(struct mp_pool *p) {
  pthread_mutex_destroy(&p->mu);
  close(p->efd);
  mp_heap_free(p->sh);
  free(p->workers);
  p->magic = 0;
  free(p);
}

MP_EXPORT int mp_pool_free(mp_pool *pool) {
  if (!pool)
    return 0;
  int r = check_pool(pool);
  if (r < 0)
    return r;
  r = mp_pool_terminate(pool); /* no-op once finished */
  if (r < 0)
    return r;
  pthread_join(pool->thread, NULL);
  /* Every result is final now; a thread still inside pool_wait_own() sees
   * its own done at its next look and leaves. */
  while (atomic_load(&pool->collectors))
    sched_yield();
  pthread_mutex_lock(&pool->mu);
  pool->magic = 0; /* further calls with this handle: -EINVAL */
  int gone;
  pool_unref_locked(pool, &gone);
  pthread_mutex_unlock(&pool->mu);
  if (gone)
    pool_destroy(pool);
  return 0;
}

int mp__pool_direct(struct mp_pool *p, double timeout) {
  int64_t until = mp__now_ns() + (int64_t)(timeout * 1e9);
  uint32_t v;
  while ((v = atomic_load(&p->sh->direct)) == DIRECT_UNKNOWN) {
    if (mp__now_ns() >= until)
      return -ETIMEDOUT;
    usleep(1000);
  }
  return v == DIRECT_YES;
}

MP_EXPORT int mp_pool_worker_pids(mp_pool *pool, int *out, size_t cap) {
  int r = check_pool(pool);
  if (r < 0)
    return r;
  if (!out && cap)
    return -EINVAL;
  size_t n = 0;
  pthread_mutex_lock(&pool->mu);
  for (unsigned w = 0; w < pool->nslots; w++) {
    if (!pool->workers[w].alive)
      continue;
    if (n < cap)
      out[n] = pool->workers[w].pid;
    n++;
  }
  pthread_mutex_unlock(&pool->mu);
  return (int)n;
}

/* ------------------------------------------------------------ results */

static int check_result(struct mp_async_result *r) {
  if (!r || r->magic != RESULT_MAGIC)
    return -EINVAL;
  return r->owner == my_pid() ? 0 : -ECHILD;
}

static int result_is_done(struct mp_async_result *r) {
  /* acquire: pairs with result_mark_done()'s exchange */
  return atomic_load_explicit(&r->done, memory_order_acquire) == RES_DONE;
}

/* Spin up to SPIN_NS for r to be done. Returns 1 when it is. */
static int spin_until_done(struct mp_async_result *r) {
  int64_t until = 0;
  for (unsigned i = 1;; i++) {
    if (result_is_done(r))
      return 1;
    spin_pause(i);
    if (!spin_budget(i, &until))
      return 0;
  }
}

static int result_wait(struct mp_async_result *r, double timeout) {
  mp__deadline d;
  int e = mp__deadline_init(&d, timeout);
  if (e < 0)
    return e;
  if (result_is_done(r))
    return 0;
  if (d.nowait)
    return -ETIMEDOUT;
  if (pthread_equal(pthread_self(), r->handler))
    return -EDEADLK; /* from a callback: the handler would wait for itself */
  /* A result due within microseconds costs no sleep and no wake-up. */
  if (spin_until_done(r))
    return 0;
  for (;;) {
    uint32_t v = atomic_load(&r->done);
    if (v == RES_DONE)
      return 0;
    if (v == RES_PENDING && !atomic_compare_exchange_strong(&r->done, &v, RES_SLEEPER))
      continue; /* finished meanwhile (or another waiter announced itself) */
    int w = mp__futex_wait(&r->done, RES_SLEEPER, &d);
    if (w < 0 && !result_is_done(r))
      return w; /* -ETIMEDOUT, or -EFAULT/-EINVAL for a corrupt word */
  }
}

MP_EXPORT int mp_async_result_get(mp_async_result *res, double timeout) {
  int r = check_result(res);
  if (r < 0)
    return r;
  r = result_wait(res, timeout);
  return r < 0 ? r : res->status;
}

MP_EXPORT int mp_async_result_wait(mp_async_result *res, double timeout) {
  int r = check_result(res);
  return r < 0 ? r : result_wait(res, timeout);
}

MP_EXPORT int mp_async_result_ready(mp_async_result *res) {
  int r = check_result(res);
  return r < 0 ? r : result_is_done(res);
}

MP_EXPORT int mp_async_result_successful(mp_async_result *res) {
  int r = check_result(res);
  if (r < 0)
    return r;
  if (!result_is_done(res))
    return -EAGAIN;
  return res->status >= 0;
}

MP_EXPORT int mp_async_result_progress(mp_async_result *res, size_t *done, size_t *total) {
  int r = check_result(res);
  if (r < 0)
    return r;
  if (!done || !total)
    return -EINVAL;
  if (res->kind != R_MAP) { /* an apply: one item, done when ready */
    *total = 1;
    *done = (size_t)result_is_done(res);
    return 0;
  }
  *total = res->items_total;
  *done = atomic_load_explicit(&res->items_done, memory_order_relaxed); /* a snapshot */
  return 0;
}

MP_EXPORT int mp_async_result_death(mp_async_result *res, int *exitcode) {
  int r = check_result(res);
  if (r < 0)
    return r;
  if (!exitcode)
    return -EINVAL;
  if (!result_is_done(res))
    return -EAGAIN;
  if (!res->death)
    return 0;
  *exitcode = res->death;
  return 1;
}

MP_EXPORT int mp_async_result_data(mp_async_result *res, const void **data, size_t *len) {
  int r = check_result(res);
  if (r < 0)
    return r;
  if (!data)
    return -EINVAL;
  /* Inside its own callback the data is already final. */
  if (!result_is_done(res) && !pthread_equal(pthread_self(), res->handler))
    return -EAGAIN;
  *data = res->data;
  if (len)
    *len = res->len;
  return 0;
}

MP_EXPORT int mp_async_result_free(mp_async_result *res) {
  if (!res)
    return 0;
  int r = check_result(res);
  if (r < 0)
    return r;
  result_unref(res);
  return 0;
}

/* ------------------------------------------------------------ iterators */

static int check_iter(struct mp_pool_iter *it) {
  if (!it || it->magic != ITER_MAGIC)
    return -EINVAL;
  return it->owner == my_pid() ? 0 : -ECHILD;
}

/* Submit chunks while the window has room (mu held). Returns -EPIPE when the
 * pool no longer runs tasks. */
static int iter_topup(struct mp_pool_iter *it) {
  struct mp_pool *p = it->pool;
  size_t window = ITER_WINDOW_PER_WORKER * (size_t)p->nslots;
  unsigned published = 0;
  int r = 0;
  while (it->submitted < it->nchunks && it->inflight < window) {
    if (p->state != P_RUNNING && p->state != P_CLOSED) {
      r = -EPIPE;
      break;
    }
    struct job *j = calloc(1, sizeof *j);
    if (!j) {
      r = -ENOMEM;
      break;
    }
    j->it = it;
    j->fd = -1;
    j->start = it->submitted * it->chunksize;
    j->count = it->n - j->start < it->chunksize ? it->n - j->start : it->chunksize;
    if (it->isize) {
      if (it->in_heap) {
        j->d.in = it->items + j->start * it->isize;
      } else {
        j->in_tmp = mp_heap_alloc(j->count * it->isize);
        if (!j->in_tmp) {
          free(j);
          r = -ENOMEM;
          break;
        }
        memcpy(j->in_tmp, it->items + j->start * it->isize, j->count * it->isize);
        j->d.in = j->in_tmp;
      }
    }
    if (it->rsize) {
      j->out_tmp = mp_heap_alloc(j->count * it->rsize);
      if (!j->out_tmp) {
        mp_heap_free(j->in_tmp);
        free(j);
        r = -ENOMEM;
        break;
      }
      j->d.out = j->out_tmp;
    }
    j->d.kind = K_CHUNK;
    j->d.fn = (anyfn)it->fn;
    j->d.ctx = it->ctx;
    j->d.count = j->count;
    j->d.item_size = (uint32_t)it->isize;
    j->d.result_size = (uint32_t)it->rsize;
    it->submitted++;
    it->inflight++;
    published += (unsigned)enqueue(p, j); /* links the backlog through next */
    if (it->ordered) {                    /* the iterator's own lists link through next_done */
      if (it->sub_tail)
        it->sub_tail->next_done = j;
      else
        it->sub_head = j;
      it->sub_tail = j;
    }
  }
  if (it->submitted == it->nchunks && it->counted_active) {
    it->counted_active = 0;
    p->iters_active--;
  }
  if (published)
    wake_workers(p);
  return r;
}

static int imap_new(mp_pool *p, mp_pool_map_fn fn, void *ctx, const void *items, size_t n,
                    size_t isize, size_t rsize, size_t chunksize, int ordered, mp_pool_iter **ret) {
  int r = check_pool(p);
  if (r < 0)
    return r;
  if (!fn || !ret || (!items && isize && n))
    return -EINVAL;
  if ((isize && n > SIZE_MAX / isize) || (rsize && n > SIZE_MAX / rsize))
    return -EINVAL;
  struct mp_pool_iter *it = calloc(1, sizeof *it);
  if (!it)
    return -ENOMEM;
  it->magic = ITER_MAGIC;
  it->owner = p->owner;
  it->pool = p;
  it->fn = fn;
  it->ctx = ctx;
  it->items = items;
  it->n = n;
  it->isize = isize;
  it->rsize = rsize;
  it->chunksize = chunksize ? chunksize : 1;
  it->nchunks = n / it->chunksize + (n % it->chunksize != 0);
  it->ordered = ordered;
  it->in_heap = in_heap(items, n * isize);
  pthread_mutex_lock(&p->mu);
  if (p->state != P_RUNNING) {
    pthread_mutex_unlock(&p->mu);
    free(it);
    return -EPIPE;
  }
  p->refs++;
  if (it->nchunks) {
    it->counted_active = 1;
    p->iters_active++;
  }
  r = iter_topup(it);
  pthread_mutex_unlock(&p->mu);
  if (r == -ENOMEM && it->inflight == 0) {
    mp_pool_iter_free(it);
    return -ENOMEM;
  }
  *ret = it;
  return 0;
}

MP_EXPORT int mp_pool_imap(mp_pool *pool, mp_pool_map_fn fn, void *ctx, const void *items, size_t n,
                           size_t item_size, size_t result_size, size_t chunksize,
                           mp_pool_iter **ret) {
  return imap_new(pool, fn, ctx, items, n, item_size, result_size, chunksize, 1, ret);
}

MP_EXPORT int mp_pool_imap_unordered(mp_pool *pool, mp_pool_map_fn fn, void *ctx, const void *items,
                                     size_t n, size_t item_size, size_t result_size,
                                     size_t chunksize, mp_pool_iter **ret) {
  return imap_new(pool, fn, ctx, items, n, item_size, result_size, chunksize, 0, ret);
}

MP_EXPORT int mp_pool_iter_next(mp_pool_iter *it, void *result, size_t *index, double timeout) {
  int r = check_iter(it);
  if (r < 0)
    return r;
  if (!result && it->rsize)
    return -EINVAL;
  mp__deadline d;
  r = mp__deadline_init(&d, timeout);
  if (r < 0)
    return r;
  struct mp_pool *p = it->pool;
  pthread_mutex_lock(&p->mu);
  for (;;) {
    if (it->returned == it->n) {
      pthread_mutex_unlock(&p->mu);
      return -EPIPE;
    }
    int tr = iter_topup(it);
    struct job *j = it->ordered ? it->sub_head : it->done_head;
    if (j && j->done) {
      size_t k = it->cur_pos;
      int st;
      if (j->status >= 0 || (!j->lost && k < j->done_items))
        st = 0;
      else if (j->lost || k == j->done_items)
        st = j->status;
      else
        st = -ECANCELED;
      if (st >= 0 && it->rsize)
        memcpy(result, (char *)j->out_tmp + k * it->rsize, it->rsize);
      if (index)
        *index = j->start + k;
      it->returned++;
      if (++it->cur_pos == j->count) {
        it->cur_pos = 0;
        if (it->ordered) {
          it->sub_head = j->next_done;
          if (!it->sub_head)
            it->sub_tail = NULL;
        } else {
          it->done_head = j->next_done;
          if (!it->done_head)
            it->done_tail = NULL;
        }
        iter_release_job(it, j);
        iter_topup(it);
      }
      pthread_mutex_unlock(&p->mu);
      return st;
    }
    if (it->inflight == 0 && tr < 0) {
      /* Nothing in flight and nothing can be submitted: the pool stopped. */
      size_t idx = it->submitted * it->chunksize + it->cur_pos;
      it->returned++;
      if (++it->cur_pos == (it->n - it->submitted * it->chunksize < it->chunksize
                                ? it->n - it->submitted * it->chunksize
                                : it->chunksize)) {
        it->cur_pos = 0;
        it->submitted++;
      }
      if (index)
        *index = idx;
      pthread_mutex_unlock(&p->mu);
      return tr == -EPIPE ? -ESHUTDOWN : tr;
    }
    uint32_t seq = atomic_load(&it->seq);
    pthread_mutex_unlock(&p->mu);
    if (d.nowait)
      return -ETIMEDOUT;
    int w = mp__futex_wait(&it->seq, seq, &d);
    if (w < 0) { /* -ETIMEDOUT, or -EFAULT/-EINVAL for a corrupt word */
      pthread_mutex_lock(&p->mu);
      struct job *h = it->ordered ? it->sub_head : it->done_head;
      if (!(h && h->done)) {
        pthread_mutex_unlock(&p->mu);
        return w;
      }
      continue;
    }
    pthread_mutex_lock(&p->mu);
  }
}

MP_EXPORT int mp_pool_iter_free(mp_pool_iter *it) {
  if (!it)
    return 0;
  int r = check_iter(it);
  if (r < 0)
    return r;
  struct mp_pool *p = it->pool;
  pthread_mutex_lock(&p->mu);
  if (it->counted_active) {
    it->counted_active = 0;
    p->iters_active--;
  }
  /* Release the chunks that are done; the handler releases the others as
   * they complete, and the iterator with the last. */
  struct job **list = it->ordered ? &it->sub_head : &it->done_head;
  struct job **pp = list;
  while (*pp) {
    struct job *j = *pp;
    if (j->done) {
      *pp = j->next_done;
      iter_release_job(it, j);
    } else {
      pp = &j->next_done;
    }
  }
  it->sub_tail = it->done_tail = NULL;
  it->freed = 1;
  it->magic = 0;
  int gone = 0;
  if (it->inflight == 0) {
    free(it);
    pool_unref_locked(p, &gone);
  }
  pthread_mutex_unlock(&p->mu);
  efd_signal(p->efd);
  if (gone)
    pool_destroy(p);
  return 0;
}
