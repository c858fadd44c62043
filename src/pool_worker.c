/* SPDX-License-Identifier: MIT */
/*
 * The pool's worker process: claim a task entry, run it, report it in its
 * slot's done ring, sleep when there is nothing to claim (protocol in
 * pool_internal.h: entry.state, the wake-ups, direct maps, file
 * descriptors). Also mp_pool_out_alloc/set, which a task calls in the worker.
 * Crash points, in protocol order (the kill table in pool_internal.h):
 * pool.claim.taken, pool.claim.advanced, pool.fd.wanted,
 * pool.result.stored, pool.task.ran, pool.done.appended,
 * pool.sleep.counted.
 */
#include <errno.h>
#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <stdio_ext.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include "crash.h"
#include "pool_internal.h"

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
 * done_tail (mp__pool_handler_main's anything_to_collect(), mp__pool_wait_own()'s
 * completions_announced()): either this load sees 1, or the waiter sees our
 * done_tail. */
static void notify_parent(struct shared *sh, int efd) {
  if (atomic_load(&sh->parent_waiting) && atomic_exchange(&sh->parent_waiting, 0))
    mp__pool_efd_signal(efd);
}

/* Claim the next task for worker w; its entry index in *idx. Returns 0, or -1
 * when the pool tells idle workers to stop. */
static int claim(struct shared *sh, unsigned w, uint32_t *idx) {
  struct slot *s = mp__pool_slot(sh, w);
  mp__spin spin = MP__SPIN_INIT;
  for (;;) {
    /* seq_cst: `tail` pairs with the parent's seq_cst store in
     * mp__pool_publish_backlog() and, with `sleepers` below, forms the Dekker pair
     * against mp__pool_wake_workers() (see the wake-up protocol). */
    uint64_t h = atomic_load(&sh->head);
    if (h < atomic_load(&sh->tail)) {
      struct entry *e = &sh->ring[h % RING_CAP];
      /* acquire: pairs with the release store of E_PENDING in
       * mp__pool_publish_backlog(), after which the entry's fields are the task's */
      uint32_t st = atomic_load_explicit(&e->state, memory_order_acquire);
      if (st == E_PENDING) {
        /* seq_cst (acquire included): the claim reads the PENDING written
         * by that same release store, so the task's fields are visible */
        if (atomic_compare_exchange_strong(&e->state, &st, E_CLAIMED + w)) {
          *idx = (uint32_t)(h % RING_CAP); /* before the CAS below rewrites h on failure */
          MP__CRASH(POOL_CLAIM_TAKEN);
          /* more work behind this task: pass the wake-up on (mp__pool_wake_workers) */
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
    /* Nothing published: look again for a while (spin.h, MP__SPIN_NS): the
     * parent publishes in batches, and a worker asleep costs it a futex
     * wake. */
    if (mp__spin_more(&spin))
      continue;
    /* All seq_cst: the increment of `sleepers` and the re-check of
     * head/tail pair with mp__pool_wake_workers()'s store of `tail` and load of
     * `sleepers`; one of the two sides sees the other. */
    uint32_t seq = atomic_load(&sh->work_seq);
    atomic_fetch_add(&sh->sleepers, 1);
    MP__CRASH(POOL_SLEEP_COUNTED);
    atomic_store(&s->asleep, 1);
    if (atomic_load(&sh->head) >= atomic_load(&sh->tail) && !atomic_load(&sh->stopping))
      mp__futex_wait(&sh->work_seq, seq, NULL);
    atomic_store(&s->asleep, 0);
    atomic_fetch_sub(&sh->sleepers, 1);
    /* Woken: what was published may be claimed by another worker first;
     * spin a new span before sleeping again. */
    mp__spin_restart(&spin);
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
  struct slot *s = mp__pool_slot(p->sh, w);
  /* seq_cst: read by collect() (the handler, or a collecting caller) after
   * the eventfd write below or, if we die first, after our pidfd fires */
  atomic_store(&s->fd_want, idx + 1);
  MP__CRASH(POOL_FD_WANTED);
  atomic_store(&p->sh->parent_waiting, 0);
  mp__pool_efd_signal(p->efd);
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

_Noreturn void mp__pool_worker_main(struct mp_pool *p, unsigned w, int sock) {
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
  struct slot *s = mp__pool_slot(sh, w);
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
