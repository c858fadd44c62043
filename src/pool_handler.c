/* SPDX-License-Identifier: MIT */
/*
 * The pool's handler thread, in the creating process: it forks the workers
 * (spawn), collects completions from their done rings and folds them into
 * jobs and results (collect, collect_entry, job_complete, map_chunk_done),
 * serves fd requests, sees a worker's death through its pidfd and repairs
 * what the dead worker left (worker_ended: the kill table of
 * pool_internal.h), runs callbacks (deliver) and carries out terminate.
 * mp__pool_wait_own() is the same collection done by a caller of
 * mp_pool_apply() or mp_pool_map() for itself. Protocol: pool_internal.h;
 * crash points: none here (the worker's are in pool_worker.c).
 */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "pool_internal.h"

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

/* Fork a worker into slot w (handler thread, mu held). */
static int spawn(struct mp_pool *p, unsigned w) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
    return -errno;
  struct slot *s = mp__pool_slot(p->sh, w);
  atomic_store(&s->done_head, 0);
  atomic_store(&s->done_tail, 0);
  atomic_store(&s->fd_want, 0);
  atomic_store(&s->asleep, 0);
  fflush(NULL); /* else buffered output would be written twice */
  pid_t pid = fork();
  if (pid == 0) {
    close(sv[0]);
    mp__pool_worker_main(p, w, sv[1]);
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
      mp__pool_iter_release_job(it, j);
      if (it->inflight == 0) {
        iter_maybe_destroy(it);
        int gone;
        mp__pool_unref_locked(p, &gone);
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
  mp__pool_result_finish(p, r);
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
    mp__pool_result_finish(p, r);
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
  /* relaxed: FREE is acted on only by mp__pool_publish_backlog() under mu, which
   * orders it after this store; workers only tell PENDING from the rest */
  atomic_store_explicit(&e->state, E_FREE, memory_order_relaxed);
  job_complete(p, j, pool_gone);
}

/* Drain every done ring and serve fd requests (mu held). Returns the number
 * of completions. */
static unsigned collect(struct mp_pool *p, int *pool_gone) {
  unsigned n = 0;
  for (unsigned w = 0; w < p->nslots; w++) {
    if (!p->workers[w].alive)
      continue;
    struct slot *s = mp__pool_slot(p->sh, w);
    /* relaxed: done_head is written only under mu, which orders its writers */
    uint32_t h = atomic_load_explicit(&s->done_head, memory_order_relaxed);
    /* acquire: pairs with the worker's seq_cst store of done_tail in
     * mp__pool_worker_main(), made after the ring slot and the entry's results */
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
    unsigned k = mp__pool_publish_backlog(p);
    if (k)
      mp__pool_wake_workers(p);
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
    struct slot *s = mp__pool_slot(p->sh, w);
    if (atomic_load(&s->done_head) != atomic_load(&s->done_tail) || atomic_load(&s->fd_want))
      return 1;
  }
  return 0;
}

/* Whether a done ring or an fd request has something, read without mu (the
 * slots of dead workers have empty rings). For the handler's spin. */
static int completions_pending(struct mp_pool *p) {
  for (unsigned w = 0; w < p->nslots; w++) {
    struct slot *s = mp__pool_slot(p->sh, w);
    /* relaxed: a hint; the collection that follows reads under mu with acquire */
    if (atomic_load_explicit(&s->done_head, memory_order_relaxed) !=
            atomic_load_explicit(&s->done_tail, memory_order_relaxed) ||
        atomic_load_explicit(&s->fd_want, memory_order_relaxed))
      return 1;
  }
  return 0;
}

/* completions_pending() with seq_cst loads, for a thread that has just
 * stored parent_waiting = 1 without mu (mp__pool_wait_own): the same pairing as
 * anything_to_collect(). */
static int completions_announced(struct mp_pool *p) {
  for (unsigned w = 0; w < p->nslots; w++) {
    struct slot *s = mp__pool_slot(p->sh, w);
    if (atomic_load(&s->done_head) != atomic_load(&s->done_tail) || atomic_load(&s->fd_want))
      return 1;
  }
  return 0;
}

/* The handler, with tasks outstanding, spins up to MP__SPIN_NS for a
 * completion before it sleeps in poll(). Returns 1 when one came. */
static int handler_spin(struct mp_pool *p) {
  mp__spin spin = MP__SPIN_INIT;
  for (;;) {
    if (completions_pending(p))
      return 1;
    if (atomic_load_explicit(&p->collectors, memory_order_relaxed))
      return 0; /* a caller collects: leave the CPU to it (relaxed: a hint) */
    if (!mp__spin_more(&spin))
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
  struct slot *s = mp__pool_slot(p->sh, w);
  p->last_death = death_of(&p->workers[w]);
  if (keep_workers(p))
    log_death(p, w, p->last_death);
  collect(p, pool_gone);
  fail_claims(p, w, -ECONNABORTED, pool_gone);
  /* The entries it held are FREE now, and one of them may be the entry at
   * which publishing stopped (the ring was full): publish the backlog into
   * them, or no completion may ever come to do it and a map waits forever. */
  if (p->backlog_head && mp__pool_publish_backlog(p))
    mp__pool_wake_workers(p);
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
      mp__pool_result_mark_done(r);
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
    struct slot *s = mp__pool_slot(sh, w);
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

void *mp__pool_handler_main(void *arg) {
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

/* The caller of mp_pool_apply() or mp_pool_map() (so the pool is alive) waits
 * for its result r by collecting completions itself for up to MP__SPIN_NS after
 * the last one it saw, instead of waiting for the handler to collect them and
 * wake it. It takes over the handler's wake-up (parent_waiting 1 -> 0, see the
 * protocol) while it does, and hands it back (store 1, then re-check) when it
 * leaves. It wakes the handler for what only the handler does: callbacks to
 * run, a closed pool to wind down. Then it waits as any other caller. */
int mp__pool_wait_own(struct mp_pool *p, struct mp_async_result *r) {
  struct shared *sh = p->sh;
  int took = 0;
  mp__spin spin = MP__SPIN_INIT;
  if (pthread_equal(pthread_self(), p->thread))
    return mp_async_result_get(r, MP_FOREVER); /* from a callback: -EDEADLK as before */
  /* seq_cst: pairs with mp_pool_free()'s loads, which wait for this thread
   * to leave the pool's structures (the fetch_sub below) */
  atomic_fetch_add(&p->collectors, 1);
  while (!mp__pool_result_is_done(r)) {
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
        mp__pool_efd_signal(p->efd);
      mp__spin_restart(&spin);
      continue;
    }
    /* no yields (spin.h): the CPU would go to an idle worker's spin */
    if (!mp__spin_more_unyielding(&spin))
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
      mp__pool_efd_signal(p->efd);
  }
  atomic_fetch_sub(&p->collectors, 1);
  int w = mp__pool_result_wait(r, MP_FOREVER);
  return w < 0 ? w : r->status;
}
