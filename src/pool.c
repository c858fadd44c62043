/* SPDX-License-Identifier: MIT */
/*
 * Pool: worker processes fed through a task ring in the family heap, results
 * collected by a handler thread of the creating process. This file holds the
 * lifecycle (mp_pool_new, close, terminate, join, free) and the pool's
 * inspection; the protocol and the map of the other pool_*.c files are in
 * pool_internal.h. No crash points: everything here is in the creating
 * process.
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "pool_internal.h"

#define MAX_WORKERS 1024

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
  p->owner = mp__pid();
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
  r = -pthread_create(&p->thread, NULL, mp__pool_handler_main, p);
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

MP_EXPORT int mp_pool_close(mp_pool *pool) {
  int r = mp__pool_check(pool);
  if (r < 0)
    return r;
  pthread_mutex_lock(&pool->mu);
  if (pool->state == P_RUNNING)
    pool->state = P_CLOSED;
  pthread_mutex_unlock(&pool->mu);
  mp__pool_efd_signal(pool->efd);
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
  int r = mp__pool_check(pool);
  if (r < 0)
    return r;
  if (pthread_equal(pthread_self(), pool->thread))
    return -EDEADLK;
  pthread_mutex_lock(&pool->mu);
  if (pool->state == P_RUNNING || pool->state == P_CLOSED)
    pool->state = P_TERMINATING;
  pthread_mutex_unlock(&pool->mu);
  mp__pool_efd_signal(pool->efd);
  mp__deadline d;
  mp__deadline_init(&d, MP_FOREVER);
  return wait_finished(pool, &d);
}

MP_EXPORT int mp_pool_join(mp_pool *pool, double timeout) {
  int r = mp__pool_check(pool);
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

void mp__pool_destroy(struct mp_pool *p) {
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
  int r = mp__pool_check(pool);
  if (r < 0)
    return r;
  r = mp_pool_terminate(pool); /* no-op once finished */
  if (r < 0)
    return r;
  pthread_join(pool->thread, NULL);
  /* Every result is final now; a thread still inside mp__pool_wait_own() sees
   * its own done at its next look and leaves. */
  while (atomic_load(&pool->collectors))
    sched_yield();
  pthread_mutex_lock(&pool->mu);
  pool->magic = 0; /* further calls with this handle: -EINVAL */
  int gone;
  mp__pool_unref_locked(pool, &gone);
  pthread_mutex_unlock(&pool->mu);
  if (gone)
    mp__pool_destroy(pool);
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
  int r = mp__pool_check(pool);
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
