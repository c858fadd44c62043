/* SPDX-License-Identifier: MIT */
/*
 * libmp-mpi: the Pool on MPI. What the files of src/mpi/ share, and the one
 * comment on how the pool works (roles, scheduling, data, a worker's death).
 *
 * Map of src/mpi/ (public header include/mp-mpi.h; tests in tests/mpi/):
 *   pool_internal.h  this comment; the wire format between rank 0 and a
 *                    worker; the idle backoff; rank 0's structures (job,
 *                    iterator, worker, pool) and which lock guards each field
 *   setup.c          MPI setup: init, the finalize hook, the launch models
 *                    (mpiexec ranks; spawned workers and their cache)
 *   worker.c         a worker rank: mp__mpi_serve, running chunks, result
 *                    batches, mp_mpi_pool_out_*
 *   progress.c       rank 0's progress thread, the one thread that talks MPI
 *                    while a pool runs: dispatch, receive, completion,
 *                    watching the workers on this host
 *   jobs.c           rank 0's callers: apply, map, imap; async results and
 *                    iterators
 *   pool.c           a pool's lifetime: new (spawn, start handshake), size,
 *                    close, join, terminate, free
 *   internal.h,      function and ctx identity across address spaces
 *   code.c
 * libmp-mpi marks no crash points: a rank's death ends the whole MPI job
 * (below).
 *
 * Roles. Rank 0 of the pool's communicator is the caller; ranks 1..n are
 * workers. In rank 0 only the pool's progress thread calls MPI while the
 * pool runs (so MPI_THREAD_SERIALIZED suffices); callers enqueue work under
 * the pool mutex and wait on their result's condition variable.
 *
 * Scheduling. A map is cut into chunks; apply is one chunk. Each worker has
 * a window of at most `prefetch` chunks (and about 4 MiB of items) in
 * flight; whenever results come back, the window is refilled from the head
 * of the queue, so a faster worker gets more chunks (dynamic scheduling) and
 * a worker never waits a network round trip for its next chunk. Several
 * chunks sent at once travel in one batch message; results of one batch
 * come back in one message. A worker runs its chunks in the order received
 * and MPI keeps messages between two ranks with one tag in order, so rank 0
 * matches results to chunks by a per-worker FIFO (the sequence number in
 * each result is checked against it).
 *
 * No extra copies of large data. Chunk data above INLINE_MAX does not travel
 * inside the batch: it follows as a message of its own, sent straight from
 * the caller's items array, and the results of a large chunk are received
 * straight into the caller's results array (the receive is posted when the
 * result record announcing them arrives; MPI's rendezvous protocol then
 * moves the bytes once).
 *
 * A worker's death. Open MPI 4 and MPICH 4 end the whole job when a rank
 * dies (mpiexec reports it and exits non-zero), so rank 0 never waits for
 * a dead rank's results.
 */
#ifndef MP_MPI_POOL_INTERNAL_H
#define MP_MPI_POOL_INTERNAL_H

#include <errno.h>
#include <mpi.h>
#include <pthread.h>
#include <sched.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "mp-mpi.h"
#include "internal.h"

/* MPICH's MPI_STATUS(ES)_IGNORE is (MPI_Status *)1, which GCC 12 takes for
 * a buffer of size 0 passed where MPI_Status[] is declared. */
#if defined(MPICH_VERSION) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wstringop-overflow"
#endif

/* ------------------------------------------------------------ 1. wire format */

enum { TAG_CTRL = 11, TAG_BATCH, TAG_DATA, TAG_RBATCH, TAG_RDATA };
enum { CTRL_START = 1, CTRL_READY, CTRL_END, CTRL_EXIT };
enum { K_MAP = 1, K_APPLY = 2 };
enum { F_EXT = 1, F_WHOLE = 2 };

#define BATCH_MAX (64 * 1024)
#define INLINE_MAX (8 * 1024)
#define MSG_MAX ((size_t)1 << 30)        /* one message, one chunk: at most 1 GiB */
#define CHUNK_BYTES_DEFAULT (256u << 10) /* default chunks: at most 256 KiB in + out */
#define WINDOW_BYTES (2u << 20)          /* items in flight per worker */
#define PREFETCH_DEFAULT 64

/* A chunk to run, in a batch (rank 0 to worker). Followed by its data
 * (len bytes, padded to 8) unless F_EXT: then the data is the next TAG_DATA
 * message. */
struct rec {
  uint32_t kind, flags;
  uint64_t seq;
  mpi__ref fn, ctx;
  uint64_t count; /* items (map) */
  uint32_t item_size, result_size;
  uint64_t len;
};

/* A chunk's result, in a result batch (worker to rank 0). Followed by len
 * bytes padded to 8 unless F_EXT (then the next TAG_RDATA message). A map
 * chunk that failed at item `done` carries the results before it; F_WHOLE:
 * the status applies to every item (the chunk did not run). */
struct rrec {
  uint64_t seq;
  int32_t status;
  uint32_t flags;
  uint64_t done;
  uint64_t len;
};

struct ctrl {
  uint32_t op;
  int32_t status;
  mpi__ref init, initargs;
  uint64_t len; /* START: the object table follows */
  int32_t pid;  /* READY: the worker's pid and host */
  char host[68];
};

static inline size_t pad8(size_t n) { return (n + 7) & ~(size_t)7; }

/* The F_EXT payloads of a batch being built, sent after it as messages of
 * their own (TAG_DATA by rank 0, TAG_RDATA by a worker). */
struct payloads {
  void **p;
  size_t *len;
  int n, cap;
};

/* Returns 0, or -ENOMEM (the batch keeps its payloads so far). */
static inline int mp__mpi_payloads_add(struct payloads *e, void *p, size_t len) {
  if (e->n == e->cap) {
    int cap = e->cap ? 2 * e->cap : 8;
    void **np = realloc(e->p, (size_t)cap * sizeof *np);
    if (!np)
      return -ENOMEM;
    e->p = np;
    size_t *nl = realloc(e->len, (size_t)cap * sizeof *nl);
    if (!nl)
      return -ENOMEM;
    e->len = nl;
    e->cap = cap;
  }
  e->p[e->n] = p;
  e->len[e->n++] = len;
  return 0;
}

/* ------------------------------------------------------------ setup.c */

/* MPI as libmp-mpi found or made it: set once by mp__mpi_lib_init() (under
 * mp__mpi_mu); world_busy changes under mp__mpi_mu, exit_sent in the
 * finalize hook. */
struct mp__mpi_global {
  int inited;
  int we_init;    /* libmp-mpi called MPI_Init_thread */
  int prov;       /* the thread level MPI gives */
  int rank, size; /* in MPI_COMM_WORLD */
  MPI_Comm world; /* a duplicate of MPI_COMM_WORLD for mpiexec pools */
  int world_busy; /* a pool runs on `world` */
  int exit_sent;
};
extern struct mp__mpi_global mp__mpi_g;
extern pthread_mutex_t mp__mpi_mu;

/* Spawned workers between pools (mp__mpi_mu); see
 * mp__mpi_spawned_release_cache(). */
struct mp__mpi_spawned {
  MPI_Comm comm, inter;
  int n, busy;
  int *pids; /* per worker rank - 1: its pid when on this host, else 0 */
};
extern struct mp__mpi_spawned mp__mpi_spawned;

/* Initialize MPI and libmp-mpi once (mp__mpi_mu held). A worker rank never
 * returns from here: it serves, finalizes and exits. */
int mp__mpi_lib_init(void);
/* The command line of this process, for spawned workers: argv[1..]. */
char **mp__mpi_own_args(char **storage);
/* (mp__mpi_mu) */
void mp__mpi_spawned_release_cache(void);
/* Give a freed pool's communicator back: the world, or the spawned workers
 * to the cache (or let them go). */
void mp__mpi_pool_comm_free(mp_mpi_pool *p);

/* ------------------------------------------------------------ worker.c */

/* The loop of a worker: pools start (CTRL_START) and end (CTRL_END) until
 * CTRL_EXIT. Returns 0 at EXIT, negative when the worker cannot go on. */
int mp__mpi_serve(MPI_Comm comm);

/* ------------------------------------------------------------ idle waiting */

/* Inline: the worker loop, the progress thread and a pool's start wait
 * with it between polls of MPI. */
static inline double mp__mpi_now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Waiting without a message: spin (MPI's own polling) for a moment, then
 * yield, then sleep in growing steps up to 1 ms, so an idle rank gives its
 * CPU back; on an oversubscribed node the ranks share CPUs. */
struct backoff {
  double since;
  int active;
};

static inline void mp__mpi_backoff_reset(struct backoff *b) { b->active = 0; }

static inline void mp__mpi_backoff_wait(struct backoff *b) {
  double t = mp__mpi_now_s();
  if (!b->active) {
    b->active = 1;
    b->since = t;
    return;
  }
  double idle = t - b->since;
  if (idle < 20e-6)
    return;
  if (idle < 2e-3) {
    sched_yield();
    return;
  }
  double s = idle / 20;
  if (s > 1e-3)
    s = 1e-3;
  struct timespec ts = {0, (long)(s * 1e9)};
  nanosleep(&ts, NULL);
}

/* ---------------------------------------------- rank 0: jobs and iterators */

struct mp_mpi_pool_iter;

/* An async result: an apply (one chunk) or a map (nchunks chunks).
 * Fields marked (pool) belong to the pool mutex, (res) to the result's own
 * mutex; the rest are set before the job is queued and never change. */
struct mp_mpi_async_result {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  pid_t pid;
  int kind;
  int refs;   /* (res) the caller's and the pool's */
  int ready;  /* (res) */
  int status; /* (res) */
  int has_cb;
  mp_mpi_pool_callbacks cb;
  mpi__ref fn, ctx;
  /* apply */
  void *arg; /* owned copy; handed to the send once dispatched (pool) */
  size_t len;
  void *data; /* (res) the result bytes */
  size_t dlen;
  /* map */
  const char *items;
  char *results;
  size_t n, item_size, result_size, chunk, nchunks;
  size_t next_chunk;  /* (pool) the next chunk to dispatch */
  size_t chunks_left; /* (pool) chunks without a result */
  size_t fail_index;  /* (pool) the lowest failing item */
  int fail_status;    /* (pool) its status */
  int terminated;     /* (pool) */
  struct mp_mpi_pool_iter *iter;
  struct mp_mpi_async_result *next; /* (pool) queue or done-list link */
};
typedef struct mp_mpi_async_result job;

struct mp_mpi_pool_iter {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  pid_t pid;
  int ordered;
  job *job;
  char *results;
  size_t n, chunk, nchunks, result_size;
  /* (iter) per chunk: done, status, failing item within the chunk, whole */
  unsigned char *done;
  int *cstatus;
  size_t *cfail;
  unsigned char *cwhole;
  size_t *order; /* (iter) chunks in completion order (unordered) */
  size_t ndone;
  size_t next;   /* ordered: the next item; unordered: position in `order` */
  size_t within; /* unordered: the next item within order[next] */
  size_t returned;
};

/* Inline: the progress thread drops the pool's reference of every job it
 * delivers, and callers drop theirs in jobs.c. */
static inline void mp__mpi_job_unref(job *j) {
  pthread_mutex_lock(&j->mu);
  int last = --j->refs == 0;
  pthread_mutex_unlock(&j->mu);
  if (!last)
    return;
  pthread_mutex_destroy(&j->mu);
  pthread_cond_destroy(&j->cv);
  free(j->arg);
  free(j->data);
  free(j);
}

/* ------------------------------------------------- rank 0: the pool */

enum { S_RUNNING, S_CLOSED, S_TERMINATING, S_ENDED };

struct inflight {
  job *job;
  size_t chunk;
  uint64_t seq;
};

struct worker {
  int rank;
  struct inflight *q; /* FIFO ring of chunks sent, in order */
  size_t qcap, qhead, qn;
  size_t bytes; /* item bytes in flight */
  uint64_t seq;
  char *rbuf; /* the posted result-batch receive */
  int pidfd;  /* a worker on this host: its pidfd; else -1 */
  int pid;
  char *bbuf; /* the batch being built, used bytes, payloads after it */
  size_t used;
  struct payloads ext;
};

/* An MPI request of the progress thread and what its completion means. */
enum { OP_RBATCH = 1, OP_SEND, OP_RDATA };
struct op {
  int kind;
  int bulk;   /* a large payload: it moves only while rank 0 polls */
  int worker; /* OP_RBATCH */
  void *buf;  /* OP_SEND: freed at completion; OP_RDATA: apply result */
  job *job;   /* OP_RDATA */
  size_t chunk;
  struct rrec rr;
};

struct mp_mpi_pool {
  pid_t pid;
  MPI_Comm comm;
  MPI_Comm inter; /* spawned workers: the intercommunicator; else MPI_COMM_NULL */
  int cached;     /* the spawned workers come from the cache */
  int nworkers;
  struct worker *w;
  unsigned prefetch;
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t cv_work;  /* the progress thread sleeps here when idle */
  pthread_cond_t cv_state; /* join waits here for S_ENDED */
  int sleeping;
  int state;
  int thread_done;
  job *head, *tail; /* chunks to dispatch */
  size_t inflight;
  /* requests */
  MPI_Request *reqs;
  struct op *ops;
  int *idx;
  int nreq, reqcap;
  int bulk;  /* requests moving large payloads */
  int rr;    /* the worker dealt to first next time */
  job *done; /* completed jobs, delivered outside the mutex */
  mp_mpi_pool *live_next;
};

/* Condition variables whose timed waits count on CLOCK_MONOTONIC, the clock
 * of every deadline in libmp-mpi. */
static inline void mp__mpi_cond_init(pthread_cond_t *cv) {
  pthread_condattr_t a;
  pthread_condattr_init(&a);
  pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
  pthread_cond_init(cv, &a);
  pthread_condattr_destroy(&a);
}

static inline int mp__mpi_check_pool(mp_mpi_pool *p) {
  if (!p)
    return -EINVAL;
  if (p->pid != getpid())
    return -ECHILD;
  return 0;
}

/* ------------------------------------------------------------ progress.c */

/* The progress thread of pool p (pthread_create's start routine). */
void *mp__mpi_progress_main(void *arg);
/* End the job if a worker on this host has died (checked every 50 ms while
 * work is in flight, and while a pool starts). */
void mp__mpi_check_workers(mp_mpi_pool *p);
/* Worker wi has died: end the job with a message naming it. */
void mp__mpi_check_dead(mp_mpi_pool *p, int wi);

/* ------------------------------------------------------------ jobs.c */

/* 1: no deadline (MP_FOREVER); 0: *ts is the CLOCK_MONOTONIC deadline;
 * -EINVAL for a NaN timeout. */
int mp__mpi_deadline_of(double timeout, struct timespec *ts);

/* ------------------------------------------------------------ pool.c */

/* Free the pools this process still holds, at exit before MPI_Finalize. */
void mp__mpi_free_live_pools(void);

#endif
