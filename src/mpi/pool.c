/* SPDX-License-Identifier: MIT */
/*
 * libmp-mpi: a pool's lifetime, from mp_mpi_pool_new (find or spawn the
 * workers, the START handshake, the progress thread) to mp_mpi_pool_free.
 * The roles and the shared structures are in pool_internal.h.
 *
 * Map of this file:
 *   teardown      pool_release, pool_end_workers
 *   new           the launch model, START and READY, watching the workers
 *                 on this host while they start
 *   size
 *   the end       close, join, terminate, free; the live pools freed at exit
 * No crash points.
 */
#include <errno.h>
#include <mpi.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "pool_internal.h"

/* Pools of this process, freed at exit before MPI_Finalize (mp__mpi_mu). */
static mp_mpi_pool *live_pools;

static void pool_release(mp_mpi_pool *p) {
  for (int i = 0; p->w && i < p->nworkers; i++) {
    if (p->w[i].pidfd >= 0)
      close(p->w[i].pidfd);
    free(p->w[i].q);
    free(p->w[i].rbuf);
    free(p->w[i].bbuf);
    free(p->w[i].ext.p);
    free(p->w[i].ext.len);
  }
  free(p->w);
  free(p->reqs);
  free(p->ops);
  free(p->idx);
  pthread_mutex_destroy(&p->mu);
  pthread_cond_destroy(&p->cv_work);
  pthread_cond_destroy(&p->cv_state);
  free(p);
}

/* Release the workers of a pool that never started its thread. */
static void pool_end_workers(mp_mpi_pool *p) {
  struct ctrl c = {.op = CTRL_END};
  for (int wi = 0; wi < p->nworkers; wi++)
    MPI_Send(&c, sizeof c, MPI_BYTE, p->w[wi].rank, TAG_CTRL, p->comm);
}

int mp_mpi_pool_new(int processes, const mp_mpi_pool_options *opts, mp_mpi_pool **ret) {
  if (processes < 0 || !ret)
    return -EINVAL;
  mp_mpi_pool_options o = {0};
  if (opts)
    o = *opts;
  if (o.maxtasksperchild)
    return -ENOTSUP;
  mpi__ref init, initargs;
  void *initp;
  memcpy(&initp, &o.initializer, sizeof initp);
  if (mpi__ref_of(initp, 1, &init) < 0 || mpi__ref_of(o.initargs, 0, &initargs) < 0)
    return -EINVAL;
  pthread_mutex_lock(&mp__mpi_mu);
  int r = mp__mpi_lib_init();
  if (r < 0) {
    pthread_mutex_unlock(&mp__mpi_mu);
    return r;
  }
  int spawn = mp__mpi_g.size == 1;
  /* Each pool's progress thread calls MPI: two pools at once need
   * MPI_THREAD_MULTIPLE (Open MPI and MPICH give it). */
  if (mp__mpi_g.prov < MPI_THREAD_MULTIPLE && live_pools) {
    pthread_mutex_unlock(&mp__mpi_mu);
    return -EBUSY;
  }
  if (!spawn) {
    if (processes > mp__mpi_g.size - 1) {
      pthread_mutex_unlock(&mp__mpi_mu);
      return -EINVAL;
    }
    if (mp__mpi_g.world_busy) {
      pthread_mutex_unlock(&mp__mpi_mu);
      return -EBUSY;
    }
    mp__mpi_g.world_busy = 1;
  }
  pthread_mutex_unlock(&mp__mpi_mu);
  if (processes == 0)
    processes = spawn ? (int)sysconf(_SC_NPROCESSORS_ONLN) : mp__mpi_g.size - 1;
  if (processes < 1)
    processes = 1;

  mp_mpi_pool *p = calloc(1, sizeof *p);
  if (!p) {
    r = -ENOMEM;
    goto fail_busy;
  }
  p->pid = getpid();
  p->inter = MPI_COMM_NULL;
  p->nworkers = processes;
  p->prefetch = o.prefetch ? o.prefetch : PREFETCH_DEFAULT;
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->cv_work, NULL);
  mp__mpi_cond_init(&p->cv_state);
  p->w = calloc((size_t)processes, sizeof *p->w);
  if (!p->w) {
    r = -ENOMEM;
    goto fail_free;
  }
  for (int i = 0; i < processes; i++) {
    p->w[i].rank = i + 1;
    p->w[i].pidfd = -1;
    p->w[i].qcap = 64;
    p->w[i].q = malloc(p->w[i].qcap * sizeof *p->w[i].q);
    p->w[i].rbuf = malloc(BATCH_MAX);
    if (!p->w[i].q || !p->w[i].rbuf) {
      r = -ENOMEM;
      goto fail_free;
    }
  }
  if (spawn) {
    pthread_mutex_lock(&mp__mpi_mu);
    if (mp__mpi_spawned.n >= processes && !mp__mpi_spawned.busy) {
      mp__mpi_spawned.busy = 1;
      p->comm = mp__mpi_spawned.comm;
      p->inter = mp__mpi_spawned.inter;
      p->cached = 1;
      /* watched from now on: one may have died since the last pool */
      for (int i = 0; i < processes; i++)
        if (mp__mpi_spawned.pids[i]) {
          p->w[i].pid = mp__mpi_spawned.pids[i];
          p->w[i].pidfd = (int)syscall(SYS_pidfd_open, (pid_t)mp__mpi_spawned.pids[i], 0);
          if (p->w[i].pidfd < 0)
            mp__mpi_check_dead(p, i);
        }
    } else {
      mp__mpi_spawned_release_cache(); /* too few: spawn a set of the right size */
    }
    pthread_mutex_unlock(&mp__mpi_mu);
  }
  if (spawn && !p->cached) {
    char exe[4096];
    ssize_t k = readlink("/proc/self/exe", exe, sizeof exe - 1);
    char *argbuf = NULL;
    char **args = mp__mpi_own_args(&argbuf);
    if (k <= 0 || !args) {
      free(args);
      free(argbuf);
      r = -ENOMEM;
      goto fail_free;
    }
    exe[k] = 0;
    int *errs = calloc((size_t)processes, sizeof *errs);
    MPI_Comm_set_errhandler(MPI_COMM_SELF, MPI_ERRORS_RETURN);
    int s = errs ? MPI_Comm_spawn(exe, args[0] ? args : MPI_ARGV_NULL, processes, MPI_INFO_NULL, 0,
                                  MPI_COMM_SELF, &p->inter, errs)
                 : MPI_ERR_NO_MEM;
    MPI_Comm_set_errhandler(MPI_COMM_SELF, MPI_ERRORS_ARE_FATAL);
    free(errs);
    free(argbuf);
    free(args);
    if (s != MPI_SUCCESS) {
      p->inter = MPI_COMM_NULL;
      r = -EAGAIN;
      goto fail_free;
    }
    if (MPI_Intercomm_merge(p->inter, 0, &p->comm) != MPI_SUCCESS) {
      MPI_Comm_disconnect(&p->inter);
      r = -EPROTO;
      goto fail_free;
    }
  } else if (!spawn) {
    p->comm = mp__mpi_g.world;
  }

  /* Start: every worker checks the executable and runs the initializer. */
  void *tab;
  size_t tablen;
  r = mpi__modtab_pack(&tab, &tablen);
  if (r < 0)
    goto fail_workers;
  struct ctrl c = {.op = CTRL_START, .init = init, .initargs = initargs, .len = tablen};
  char *msg = malloc(sizeof c + tablen);
  if (!msg) {
    free(tab);
    r = -ENOMEM;
    goto fail_workers;
  }
  memcpy(msg, &c, sizeof c);
  memcpy(msg + sizeof c, tab, tablen);
  free(tab);
  for (int i = 0; i < processes; i++)
    MPI_Send(msg, (int)(sizeof c + tablen), MPI_BYTE, i + 1, TAG_CTRL, p->comm);
  free(msg);
  r = 0;
  char host[sizeof c.host] = {0};
  gethostname(host, sizeof host - 1);
  /* The replies, watching the workers known to be on this host: a dead one
   * would never answer. */
  struct ctrl *replies = calloc((size_t)processes, sizeof *replies);
  MPI_Request *rq = calloc((size_t)processes, sizeof *rq);
  if (!replies || !rq) {
    free(replies);
    free(rq);
    r = -ENOMEM;
    goto fail_workers;
  }
  for (int i = 0; i < processes; i++)
    MPI_Irecv(&replies[i], sizeof *replies, MPI_BYTE, i + 1, TAG_CTRL, p->comm, &rq[i]);
  struct backoff bo = {0};
  double checked = mp__mpi_now_s();
  for (int done = 0; !done;) {
    MPI_Testall(processes, rq, &done, MPI_STATUSES_IGNORE);
    if (done)
      break;
    if (mp__mpi_now_s() - checked > 0.05) {
      checked = mp__mpi_now_s();
      mp__mpi_check_workers(p);
    }
    mp__mpi_backoff_wait(&bo);
  }
  free(rq);
  for (int i = 0; i < processes; i++) {
    struct ctrl reply = replies[i];
    if (reply.status < 0 && r == 0)
      r = reply.status;
    reply.host[sizeof reply.host - 1] = 0;
    if (!strcmp(reply.host, host) && p->w[i].pid != reply.pid) {
      if (p->w[i].pidfd >= 0)
        close(p->w[i].pidfd);
      p->w[i].pid = reply.pid;
      p->w[i].pidfd = (int)syscall(SYS_pidfd_open, (pid_t)reply.pid, 0);
    }
  }
  free(replies);
  if (r < 0)
    goto fail_workers;
  r = pthread_create(&p->thread, NULL, mp__mpi_progress_main, p);
  if (r) {
    r = -r;
    goto fail_workers;
  }
  pthread_mutex_lock(&mp__mpi_mu);
  p->live_next = live_pools;
  live_pools = p;
  pthread_mutex_unlock(&mp__mpi_mu);
  *ret = p;
  return 0;

fail_workers:
  pool_end_workers(p);
  mp__mpi_pool_comm_free(p);
  pool_release(p);
  return r;
fail_free:
  pool_release(p);
fail_busy:
  if (!spawn) {
    pthread_mutex_lock(&mp__mpi_mu);
    mp__mpi_g.world_busy = 0;
    pthread_mutex_unlock(&mp__mpi_mu);
  }
  return r;
}

int mp_mpi_pool_size(mp_mpi_pool *pool) {
  int r = mp__mpi_check_pool(pool);
  return r < 0 ? r : pool->nworkers;
}

int mp_mpi_pool_close(mp_mpi_pool *pool) {
  int r = mp__mpi_check_pool(pool);
  if (r < 0)
    return r;
  pthread_mutex_lock(&pool->mu);
  if (pool->state == S_RUNNING)
    pool->state = S_CLOSED;
  if (pool->sleeping)
    pthread_cond_signal(&pool->cv_work);
  pthread_mutex_unlock(&pool->mu);
  return 0;
}

int mp_mpi_pool_join(mp_mpi_pool *pool, double timeout) {
  int r = mp__mpi_check_pool(pool);
  if (r < 0)
    return r;
  if (pthread_equal(pthread_self(), pool->thread))
    return -EDEADLK;
  pthread_mutex_lock(&pool->mu);
  if (pool->state == S_RUNNING) {
    pthread_mutex_unlock(&pool->mu);
    return -EINVAL;
  }
  int ended = pool->state == S_ENDED;
  struct timespec ts;
  int forever = mp__mpi_deadline_of(timeout, &ts);
  if (forever < 0) {
    pthread_mutex_unlock(&pool->mu);
    return forever;
  }
  while (!ended) {
    if (forever)
      pthread_cond_wait(&pool->cv_state, &pool->mu);
    else if (pthread_cond_timedwait(&pool->cv_state, &pool->mu, &ts) == ETIMEDOUT &&
             pool->state != S_ENDED) {
      pthread_mutex_unlock(&pool->mu);
      return -ETIMEDOUT;
    }
    ended = pool->state == S_ENDED;
  }
  int joined = pool->thread_done;
  pool->thread_done = 1;
  pthread_mutex_unlock(&pool->mu);
  if (!joined)
    pthread_join(pool->thread, NULL);
  return 0;
}

int mp_mpi_pool_terminate(mp_mpi_pool *pool) {
  int r = mp__mpi_check_pool(pool);
  if (r < 0)
    return r;
  if (pthread_equal(pthread_self(), pool->thread))
    return -EDEADLK;
  pthread_mutex_lock(&pool->mu);
  if (pool->state == S_RUNNING || pool->state == S_CLOSED)
    pool->state = S_TERMINATING;
  for (job *j = pool->head; j; j = j->next)
    j->terminated = 1;
  if (pool->sleeping)
    pthread_cond_signal(&pool->cv_work);
  pthread_mutex_unlock(&pool->mu);
  /* In-flight chunks: their results will be dropped. Mark their jobs. */
  pthread_mutex_lock(&pool->mu);
  for (int wi = 0; wi < pool->nworkers; wi++) {
    struct worker *w = &pool->w[wi];
    for (size_t i = 0; i < w->qn; i++)
      w->q[(w->qhead + i) % w->qcap].job->terminated = 1;
  }
  for (int i = 0; i < pool->nreq; i++)
    if (pool->ops[i].kind == OP_RDATA)
      pool->ops[i].job->terminated = 1;
  pthread_mutex_unlock(&pool->mu);
  return mp_mpi_pool_join(pool, MP_FOREVER);
}

int mp_mpi_pool_free(mp_mpi_pool *pool) {
  if (!pool)
    return 0;
  int r = mp__mpi_check_pool(pool);
  if (r < 0)
    return r;
  if (pthread_equal(pthread_self(), pool->thread))
    return -EDEADLK;
  pthread_mutex_lock(&pool->mu);
  int running = pool->state == S_RUNNING;
  pthread_mutex_unlock(&pool->mu);
  r = running ? mp_mpi_pool_terminate(pool) : mp_mpi_pool_join(pool, MP_FOREVER);
  if (r < 0)
    return r;
  pthread_mutex_lock(&mp__mpi_mu);
  for (mp_mpi_pool **pp = &live_pools; *pp; pp = &(*pp)->live_next)
    if (*pp == pool) {
      *pp = pool->live_next;
      break;
    }
  pthread_mutex_unlock(&mp__mpi_mu);
  mp__mpi_pool_comm_free(pool);
  pool_release(pool);
  return 0;
}

void mp__mpi_free_live_pools(void) {
  for (;;) {
    pthread_mutex_lock(&mp__mpi_mu);
    mp_mpi_pool *p = live_pools;
    while (p && p->pid != getpid())
      p = p->live_next;
    pthread_mutex_unlock(&mp__mpi_mu);
    if (!p)
      return;
    mp_mpi_pool_free(p);
  }
}
