/* SPDX-License-Identifier: MIT */
/*
 * libmp-mpi: the Pool on MPI.
 *
 * Map of this file:
 *   1. wire format        messages between rank 0 and a worker
 *   2. MPI setup          init, finalize hook, launch models
 *   3. the worker         serve(): the loop every worker rank runs
 *   4. rank 0: jobs       async results, iterators, completion
 *   5. rank 0: progress   the one thread that talks MPI: dispatch, receive
 *   6. the public calls
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
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <mpi.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <poll.h>
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

static size_t pad8(size_t n) { return (n + 7) & ~(size_t)7; }

/* ------------------------------------------------------------ 2. MPI setup */

static struct {
  int inited;
  int we_init;    /* libmp-mpi called MPI_Init_thread */
  int prov;       /* the thread level MPI gives */
  int rank, size; /* in MPI_COMM_WORLD */
  MPI_Comm world; /* a duplicate of MPI_COMM_WORLD for mpiexec pools */
  int world_busy; /* a pool runs on `world` */
  int exit_sent;
} g;

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
/* Spawned workers between pools (g_mu); see spawned_release_cache(). */
static struct {
  MPI_Comm comm, inter;
  int n, busy;
  int *pids; /* per worker rank - 1: its pid when on this host, else 0 */
} spawned;
static mp_mpi_pool *live_pools; /* freed at exit, before MPI_Finalize */

static int serve(MPI_Comm comm);
static void free_live_pools(void);
static void spawned_release_cache(void);

static void send_exit_to_world(void) {
  if (g.exit_sent || g.size <= 1 || g.rank != 0)
    return;
  g.exit_sent = 1;
  struct ctrl c = {.op = CTRL_EXIT};
  for (int r = 1; r < g.size; r++)
    MPI_Send(&c, sizeof c, MPI_BYTE, r, TAG_CTRL, g.world);
}

/* Attributes of MPI_COMM_SELF are deleted first thing in MPI_Finalize, while
 * communication still works: the standard hook to release the workers. */
static int on_finalize(MPI_Comm comm, int key, void *val, void *extra) {
  (void)comm;
  (void)key;
  (void)val;
  (void)extra;
  send_exit_to_world();
  pthread_mutex_lock(&g_mu);
  spawned_release_cache();
  pthread_mutex_unlock(&g_mu);
  return MPI_SUCCESS;
}

static void at_exit(void) {
  int fin = 0;
  MPI_Finalized(&fin);
  if (fin)
    return;
  free_live_pools();
  pthread_mutex_lock(&g_mu);
  spawned_release_cache();
  pthread_mutex_unlock(&g_mu);
  if (g.we_init)
    MPI_Finalize();
}

static void worker_exit(int code) {
  int fin = 0;
  MPI_Finalized(&fin);
  if (!fin)
    MPI_Finalize();
  fflush(NULL);
  _exit(code);
}

/* Initialize MPI and libmp-mpi once. A worker rank never returns from here:
 * it serves, finalizes and exits. */
static int lib_init(void) {
  if (g.inited)
    return 0;
  int init = 0, prov = 0;
  MPI_Initialized(&init);
  if (!init) {
    if (MPI_Init_thread(NULL, NULL, MPI_THREAD_MULTIPLE, &prov) != MPI_SUCCESS)
      return -EPROTO;
    g.we_init = 1;
    atexit(at_exit);
  } else {
    MPI_Query_thread(&prov);
  }
  if (prov < MPI_THREAD_SERIALIZED)
    return -ENOTSUP;
  g.prov = prov;
  MPI_Comm parent;
  MPI_Comm_get_parent(&parent);
  if (parent != MPI_COMM_NULL) { /* a spawned worker */
    MPI_Comm comm;
    if (MPI_Intercomm_merge(parent, 1, &comm) != MPI_SUCCESS) {
      fprintf(stderr, "libmp-mpi: a spawned worker could not join its pool\n");
      worker_exit(1);
    }
    int r = serve(comm);
    MPI_Comm_free(&comm);
    MPI_Comm_disconnect(&parent);
    worker_exit(r < 0 ? 1 : 0);
  }
  MPI_Comm_rank(MPI_COMM_WORLD, &g.rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g.size);
  if (MPI_Comm_dup(MPI_COMM_WORLD, &g.world) != MPI_SUCCESS)
    return -EPROTO;
  g.inited = 1;
  if (g.rank != 0) {
    int r = serve(g.world);
    worker_exit(r < 0 ? 1 : 0);
  }
  int key;
  MPI_Comm_create_keyval(MPI_COMM_NULL_COPY_FN, on_finalize, &key, NULL);
  MPI_Comm_set_attr(MPI_COMM_SELF, key, NULL);
  return 0;
}

int mp_mpi_pool_serve(void) {
  pthread_mutex_lock(&g_mu);
  int r = lib_init();
  pthread_mutex_unlock(&g_mu);
  return r;
}

/* The command line of this process, for spawned workers: argv[1..]. */
static char **own_args(char **storage) {
  FILE *f = fopen("/proc/self/cmdline", "re");
  if (!f)
    return NULL;
  size_t cap = 4096, n = 0;
  char *buf = malloc(cap);
  size_t k;
  while (buf && (k = fread(buf + n, 1, cap - n, f)) > 0) {
    n += k;
    if (n == cap) {
      char *nb = realloc(buf, cap *= 2);
      if (!nb) {
        free(buf);
        buf = NULL;
      }
      buf = nb;
    }
  }
  fclose(f);
  if (!buf)
    return NULL;
  size_t cnt = 0;
  for (size_t i = 0; i < n; i++)
    cnt += !buf[i];
  char **argv = calloc(cnt + 1, sizeof *argv);
  if (!argv) {
    free(buf);
    return NULL;
  }
  size_t a = 0;
  int first = 1;
  for (size_t i = 0; i < n; i += strlen(buf + i) + 1) {
    if (first) { /* skip argv[0] */
      first = 0;
      continue;
    }
    argv[a++] = buf + i;
  }
  argv[a] = NULL;
  *storage = buf;
  return argv;
}

/* ------------------------------------------------------------ 3. the worker */

struct mp_mpi_pool_out {
  void *buf;
  size_t len, cap;
};

int mp_mpi_pool_out_alloc(mp_mpi_pool_out *out, size_t size, void **buf) {
  if (!out || !buf || size > MSG_MAX)
    return -EINVAL;
  if (size > out->cap) {
    void *b = NULL;
    if (posix_memalign(&b, 16, size ? size : 1))
      return -ENOMEM;
    free(out->buf);
    out->buf = b;
    out->cap = size;
  }
  out->len = size;
  *buf = out->buf;
  return 0;
}

int mp_mpi_pool_out_set(mp_mpi_pool_out *out, const void *data, size_t len) {
  if (!out || (!data && len))
    return -EINVAL;
  void *b;
  int r = mp_mpi_pool_out_alloc(out, len, &b);
  if (r < 0)
    return r;
  if (len)
    memcpy(b, data, len);
  return 0;
}

static double now_s(void) {
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

static void backoff_reset(struct backoff *b) { b->active = 0; }

static void backoff_wait(struct backoff *b) {
  double t = now_s();
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

/* Sends a worker has in flight, each with the buffer to free when done. */
struct sendq {
  MPI_Request *req;
  void **buf;
  int n, cap;
};

static int sendq_add(struct sendq *q, MPI_Request r, void *buf) {
  if (q->n == q->cap) {
    int cap = q->cap ? 2 * q->cap : 16;
    MPI_Request *nr = realloc(q->req, (size_t)cap * sizeof *nr);
    if (!nr)
      return -ENOMEM;
    q->req = nr;
    void **nb = realloc(q->buf, (size_t)cap * sizeof *nb);
    if (!nb)
      return -ENOMEM;
    q->buf = nb;
    q->cap = cap;
  }
  q->req[q->n] = r;
  q->buf[q->n++] = buf;
  return 0;
}

static void sendq_progress(struct sendq *q, int wait) {
  if (!q->n)
    return;
  if (wait)
    MPI_Waitall(q->n, q->req, MPI_STATUSES_IGNORE);
  else {
    int flag;
    MPI_Testall(q->n, q->req, &flag, MPI_STATUSES_IGNORE);
    if (!flag)
      return;
  }
  for (int i = 0; i < q->n; i++)
    free(q->buf[i]);
  q->n = 0;
}

/* A result batch being built by a worker. */
struct outb {
  char *buf;
  size_t used;
  void **ext; /* payloads that follow the batch */
  size_t *extlen;
  int next, extcap;
};

static int outb_flush(MPI_Comm comm, struct outb *o, struct sendq *q) {
  if (!o->used)
    return 0;
  MPI_Request r;
  if (MPI_Isend(o->buf, (int)o->used, MPI_BYTE, 0, TAG_RBATCH, comm, &r) != MPI_SUCCESS)
    return -EPROTO;
  if (sendq_add(q, r, o->buf) < 0)
    return -ENOMEM;
  for (int i = 0; i < o->next; i++) {
    if (MPI_Isend(o->ext[i], (int)o->extlen[i], MPI_BYTE, 0, TAG_RDATA, comm, &r) != MPI_SUCCESS)
      return -EPROTO;
    if (sendq_add(q, r, o->ext[i]) < 0)
      return -ENOMEM;
  }
  o->next = 0;
  o->used = 0;
  o->buf = malloc(BATCH_MAX);
  return o->buf ? 0 : -ENOMEM;
}

/* Room for a result record with `inl` inline bytes; flushes first if the
 * batch is full. */
static struct rrec *outb_reserve(MPI_Comm comm, struct outb *o, struct sendq *q, size_t inl) {
  size_t need = sizeof(struct rrec) + pad8(inl);
  if (o->used + need > BATCH_MAX && outb_flush(comm, o, q) < 0)
    return NULL;
  struct rrec *rr = (struct rrec *)(o->buf + o->used);
  o->used += need;
  return rr;
}

static int outb_add_ext(struct outb *o, void *p, size_t len) {
  if (o->next == o->extcap) {
    int cap = o->extcap ? 2 * o->extcap : 8;
    void **ne = realloc(o->ext, (size_t)cap * sizeof *ne);
    if (!ne)
      return -ENOMEM;
    o->ext = ne;
    size_t *nl = realloc(o->extlen, (size_t)cap * sizeof *nl);
    if (!nl)
      return -ENOMEM;
    o->extlen = nl;
    o->extcap = cap;
  }
  o->ext[o->next] = p;
  o->extlen[o->next++] = len;
  return 0;
}

/* Run one chunk. Returns 0, or a negative code when the worker itself cannot
 * go on (out of memory, MPI failure). */
static int run_rec(MPI_Comm comm, const struct rec *rc, const char *inl, struct outb *o,
                   struct sendq *q, char **ibuf, size_t *icap) {
  const char *data = inl;
  if (rc->flags & F_EXT) {
    if (rc->len > *icap) {
      free(*ibuf);
      *ibuf = malloc(rc->len);
      *icap = *ibuf ? rc->len : 0;
      if (!*ibuf)
        return -ENOMEM;
    }
    if (MPI_Recv(*ibuf, (int)rc->len, MPI_BYTE, 0, TAG_DATA, comm, MPI_STATUS_IGNORE) !=
        MPI_SUCCESS)
      return -EPROTO;
    data = *ibuf;
  }
  void *fn, *ctx;
  int st = mpi__ref_resolve(&rc->fn, 1, &fn);
  if (st == 0)
    st = mpi__ref_resolve(&rc->ctx, 0, &ctx);
  if (st < 0) {
    struct rrec *rr = outb_reserve(comm, o, q, 0);
    if (!rr)
      return -ENOMEM;
    *rr = (struct rrec){.seq = rc->seq, .status = st, .flags = F_WHOLE};
    return 0;
  }
  if (rc->kind == K_MAP) {
    size_t rlen = (size_t)rc->count * rc->result_size;
    int ext = rlen > INLINE_MAX;
    struct rrec *rr = outb_reserve(comm, o, q, ext ? 0 : rlen);
    if (!rr)
      return -ENOMEM;
    char *res = ext ? malloc(rlen ? rlen : 1) : (char *)(rr + 1);
    if (!res)
      return -ENOMEM;
    mp_mpi_pool_map_fn f;
    memcpy(&f, &fn, sizeof f);
    uint64_t i;
    int s = 0;
    for (i = 0; i < rc->count; i++) {
      s = f(data + i * rc->item_size, res + i * rc->result_size, ctx);
      if (s < 0)
        break;
    }
    /* Inline, the record keeps the room it reserved (rank 0 reads only the
     * `done` results of a failed chunk); a message of its own is cut short. */
    *rr = (struct rrec){.seq = rc->seq,
                        .status = s < 0 ? s : 0,
                        .done = i,
                        .len = s < 0 && ext ? i * rc->result_size : rlen,
                        .flags = ext ? F_EXT : 0};
    /* A large result goes at once: rank 0 posts its receive (into the
     * caller's array) when the record arrives, and the transfer overlaps
     * with this worker's next chunk. */
    if (ext)
      return outb_add_ext(o, res, rr->len) < 0 ? -ENOMEM : outb_flush(comm, o, q);
    return 0;
  }
  mp_mpi_pool_out out = {0};
  mp_mpi_pool_apply_fn f;
  memcpy(&f, &fn, sizeof f);
  int s = f(data, rc->len, &out, ctx);
  size_t len = out.len;
  int ext = len > INLINE_MAX;
  struct rrec *rr = outb_reserve(comm, o, q, ext ? 0 : len);
  if (!rr) {
    free(out.buf);
    return -ENOMEM;
  }
  *rr = (struct rrec){.seq = rc->seq, .status = s, .len = len, .flags = ext ? F_EXT : 0};
  if (ext)
    return outb_add_ext(o, out.buf, len) < 0 ? -ENOMEM : outb_flush(comm, o, q);
  if (len)
    memcpy(rr + 1, out.buf, len);
  free(out.buf);
  return 0;
}

static int start_pool(MPI_Comm comm, const char *msg, size_t len) {
  struct ctrl c;
  memcpy(&c, msg, sizeof c);
  int st = len >= sizeof c + c.len ? mpi__modtab_match(msg + sizeof c, (size_t)c.len) : -EPROTO;
  if (st == 0 && c.init.mod != MPI__REF_NULL) {
    void *fn, *arg;
    st = mpi__ref_resolve(&c.init, 1, &fn);
    if (st == 0)
      st = mpi__ref_resolve(&c.initargs, 0, &arg);
    if (st == 0) {
      void (*f)(void *);
      memcpy(&f, &fn, sizeof f);
      f(arg);
    }
  }
  struct ctrl reply = {.op = CTRL_READY, .status = st, .pid = (int32_t)getpid()};
  gethostname(reply.host, sizeof reply.host - 1);
  return MPI_Send(&reply, sizeof reply, MPI_BYTE, 0, TAG_CTRL, comm) == MPI_SUCCESS ? 0 : -EPROTO;
}

/* The loop of a worker: pools start (CTRL_START) and end (CTRL_END) until
 * CTRL_EXIT. Returns 0 at EXIT, negative when the worker cannot go on. */
static int serve(MPI_Comm comm) {
  struct sendq q = {0};
  struct outb o = {.buf = malloc(BATCH_MAX)};
  char *in = malloc(BATCH_MAX), *ibuf = NULL;
  size_t icap = 0;
  int r = 0;
  if (!o.buf || !in) {
    r = -ENOMEM;
    goto out;
  }
  struct backoff bo = {0};
  for (;;) {
    int flag = 0;
    MPI_Message m;
    MPI_Status st;
    if (MPI_Improbe(0, MPI_ANY_TAG, comm, &flag, &m, &st) != MPI_SUCCESS) {
      r = -EPROTO;
      break;
    }
    if (!flag) {
      sendq_progress(&q, 0);
      backoff_wait(&bo);
      continue;
    }
    backoff_reset(&bo);
    int cnt;
    MPI_Get_count(&st, MPI_BYTE, &cnt);
    if (st.MPI_TAG == TAG_CTRL) {
      char *msg = malloc(cnt > 0 ? (size_t)cnt : 1);
      if (!msg) {
        r = -ENOMEM;
        break;
      }
      MPI_Mrecv(msg, cnt, MPI_BYTE, &m, MPI_STATUS_IGNORE);
      struct ctrl c;
      memcpy(&c, msg, sizeof c);
      if (c.op == CTRL_START)
        r = start_pool(comm, msg, (size_t)cnt);
      free(msg);
      if (r < 0 || c.op == CTRL_EXIT)
        break;
      continue; /* CTRL_END: wait for the next pool */
    }
    if (st.MPI_TAG != TAG_BATCH || cnt > BATCH_MAX) {
      fprintf(stderr, "libmp-mpi: worker: unexpected message (tag %d, %d bytes)\n", st.MPI_TAG,
              cnt);
      r = -EPROTO;
      break;
    }
    MPI_Mrecv(in, cnt, MPI_BYTE, &m, MPI_STATUS_IGNORE);
    for (size_t off = 0; off + sizeof(struct rec) <= (size_t)cnt;) {
      struct rec rc;
      memcpy(&rc, in + off, sizeof rc);
      off += sizeof rc;
      const char *inl = in + off;
      if (!(rc.flags & F_EXT))
        off += pad8(rc.len);
      r = run_rec(comm, &rc, inl, &o, &q, &ibuf, &icap);
      if (r < 0)
        goto out;
    }
    r = outb_flush(comm, &o, &q);
    if (r < 0)
      break;
  }
out:
  sendq_progress(&q, 1);
  free(q.req);
  free(q.buf);
  free(o.buf);
  free(o.ext);
  free(o.extlen);
  free(in);
  free(ibuf);
  if (r < 0)
    fprintf(stderr, "libmp-mpi: worker stops: %s\n", strerror(-r));
  return r;
}

/* ------------------------------------------------------------ 4. rank 0: jobs */

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

static void job_unref(job *j) {
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

/* ------------------------------------------------------------ 5. rank 0: progress */

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
  void **ext;
  size_t *extlen;
  int next, extcap;
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
 * of every deadline here. */
static void cond_init(pthread_cond_t *cv) {
  pthread_condattr_t a;
  pthread_condattr_init(&a);
  pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
  pthread_cond_init(cv, &a);
  pthread_condattr_destroy(&a);
}

static int add_req(mp_mpi_pool *p, MPI_Request r, struct op op) {
  if (p->nreq == p->reqcap) {
    int cap = p->reqcap ? 2 * p->reqcap : 64;
    MPI_Request *nr = realloc(p->reqs, (size_t)cap * sizeof *nr);
    if (!nr)
      return -ENOMEM;
    p->reqs = nr;
    struct op *no = realloc(p->ops, (size_t)cap * sizeof *no);
    if (!no)
      return -ENOMEM;
    p->ops = no;
    int *ni = realloc(p->idx, (size_t)cap * sizeof *ni);
    if (!ni)
      return -ENOMEM;
    p->idx = ni;
    p->reqcap = cap;
  }
  p->reqs[p->nreq] = r;
  p->ops[p->nreq++] = op;
  p->bulk += op.bulk;
  return 0;
}

static void fatal(const char *what) {
  fprintf(stderr, "libmp-mpi: rank 0: %s; ending the job\n", what);
  MPI_Abort(MPI_COMM_WORLD, 1);
  _exit(1);
}

/* A chunk's result is in (or a whole-chunk failure): account for it.
 * (pool) */
static void chunk_done(mp_mpi_pool *p, job *j, size_t chunk, const struct rrec *rr) {
  size_t first = chunk * j->chunk;
  if (j->kind == K_MAP && rr->status < 0) {
    size_t at = first + ((rr->flags & F_WHOLE) ? 0 : (size_t)rr->done);
    if (at < j->fail_index) {
      j->fail_index = at;
      j->fail_status = rr->status;
    }
  }
  if (j->kind == K_APPLY)
    j->fail_status = rr->status;
  if (j->iter) {
    struct mp_mpi_pool_iter *it = j->iter;
    pthread_mutex_lock(&it->mu);
    it->done[chunk] = 1;
    it->cstatus[chunk] = j->terminated ? -ESHUTDOWN : rr->status;
    it->cfail[chunk] = (size_t)rr->done;
    it->cwhole[chunk] = (rr->flags & F_WHOLE) || j->terminated;
    it->order[it->ndone++] = chunk;
    pthread_cond_broadcast(&it->cv);
    pthread_mutex_unlock(&it->mu);
  }
  if (--j->chunks_left == 0 && j->next_chunk == j->nchunks) {
    j->next = p->done;
    p->done = j;
  }
}

/* Handle one result batch of worker wi. (pool) */
static void on_rbatch(mp_mpi_pool *p, int wi, int cnt) {
  struct worker *w = &p->w[wi];
  for (size_t off = 0; off + sizeof(struct rrec) <= (size_t)cnt;) {
    struct rrec rr;
    memcpy(&rr, w->rbuf + off, sizeof rr);
    off += sizeof rr;
    const char *inl = w->rbuf + off;
    if (!(rr.flags & F_EXT))
      off += pad8(rr.len);
    if (!w->qn || w->q[w->qhead].seq != rr.seq)
      fatal("a worker's result does not match the chunk it was sent");
    struct inflight f = w->q[w->qhead];
    w->qhead = (w->qhead + 1) % w->qcap;
    w->qn--;
    p->inflight--;
    job *j = f.job;
    if (j->kind == K_MAP)
      w->bytes -= (f.chunk + 1 == j->nchunks ? j->n - f.chunk * j->chunk : j->chunk) * j->item_size;
    else
      w->bytes -= j->len;
    char *dest = NULL;
    if (j->kind == K_MAP)
      dest = j->results + f.chunk * j->chunk * j->result_size;
    if (rr.flags & F_EXT) {
      void *buf = NULL;
      if (j->kind == K_APPLY) {
        buf = malloc(rr.len ? rr.len : 1);
        if (!buf)
          fatal("out of memory");
        dest = buf;
      }
      MPI_Request r;
      if (MPI_Irecv(dest, (int)rr.len, MPI_BYTE, w->rank, TAG_RDATA, p->comm, &r) != MPI_SUCCESS)
        fatal("MPI_Irecv failed");
      if (add_req(
              p, r,
              (struct op){
                  .kind = OP_RDATA, .buf = buf, .job = j, .chunk = f.chunk, .rr = rr, .bulk = 1}) <
          0)
        fatal("out of memory");
      p->inflight++; /* until its data is in */
      continue;
    }
    if (j->kind == K_MAP) {
      size_t got = rr.status < 0 ? (size_t)rr.done * j->result_size : rr.len;
      if (got)
        memcpy(dest, inl, got);
    } else if (rr.len) {
      void *d = malloc(rr.len);
      if (!d)
        fatal("out of memory");
      memcpy(d, inl, rr.len);
      free(j->data);
      j->data = d;
      j->dlen = rr.len;
    }
    chunk_done(p, j, f.chunk, &rr);
  }
}

static int flush_batch(mp_mpi_pool *p, struct worker *w) {
  MPI_Request r;
  if (!w->used)
    return 0;
  if (MPI_Isend(w->bbuf, (int)w->used, MPI_BYTE, w->rank, TAG_BATCH, p->comm, &r) != MPI_SUCCESS)
    return -EPROTO;
  if (add_req(p, r, (struct op){.kind = OP_SEND, .buf = w->bbuf}) < 0)
    return -ENOMEM;
  w->bbuf = NULL;
  w->used = 0;
  for (int i = 0; i < w->next; i++) {
    if (MPI_Isend(w->ext[i], (int)w->extlen[i], MPI_BYTE, w->rank, TAG_DATA, p->comm, &r) !=
        MPI_SUCCESS)
      return -EPROTO;
    /* The bytes belong to the caller (map items) or to the job (an apply's
     * copy), which lives until the chunk's result is in, so after the worker
     * has received them. */
    if (add_req(p, r, (struct op){.kind = OP_SEND, .bulk = 1}) < 0)
      return -ENOMEM;
  }
  w->next = 0;
  return 0;
}

static int has_room(const mp_mpi_pool *p, const struct worker *w) {
  return w->qn < p->prefetch && (w->qn == 0 || w->bytes < WINDOW_BYTES);
}

/* Add the next chunk of the queue's head to worker w's batch. (pool) */
static void deal_one(mp_mpi_pool *p, struct worker *w) {
  job *j = p->head;
  size_t c = j->next_chunk, cnt = 0, len;
  const char *data;
  if (j->kind == K_MAP) {
    cnt = c + 1 == j->nchunks ? j->n - c * j->chunk : j->chunk;
    len = cnt * j->item_size;
    data = j->items + c * j->chunk * j->item_size;
  } else {
    len = j->len;
    data = j->arg;
  }
  int ext = len > INLINE_MAX;
  size_t need = sizeof(struct rec) + (ext ? 0 : pad8(len));
  if (w->used + need > BATCH_MAX && flush_batch(p, w) < 0)
    fatal("MPI_Isend failed");
  if (!w->bbuf && !(w->bbuf = malloc(BATCH_MAX)))
    fatal("out of memory");
  struct rec rc = {.kind = (uint32_t)j->kind,
                   .flags = ext ? F_EXT : 0,
                   .seq = ++w->seq,
                   .fn = j->fn,
                   .ctx = j->ctx,
                   .count = cnt,
                   .item_size = (uint32_t)j->item_size,
                   .result_size = (uint32_t)j->result_size,
                   .len = len};
  memcpy(w->bbuf + w->used, &rc, sizeof rc);
  if (!ext && len)
    memcpy(w->bbuf + w->used + sizeof rc, data, len);
  w->used += need;
  if (ext) {
    if (w->next == w->extcap) {
      int cap = w->extcap ? 2 * w->extcap : 8;
      void **ne = realloc(w->ext, (size_t)cap * sizeof *ne);
      if (!ne)
        fatal("out of memory");
      w->ext = ne;
      size_t *nl = realloc(w->extlen, (size_t)cap * sizeof *nl);
      if (!nl)
        fatal("out of memory");
      w->extlen = nl;
      w->extcap = cap;
    }
    w->ext[w->next] = (void *)data;
    w->extlen[w->next++] = len;
  }
  if (w->qn == w->qcap) {
    size_t cap = w->qcap * 2;
    struct inflight *nq = malloc(cap * sizeof *nq);
    if (!nq)
      fatal("out of memory");
    for (size_t i = 0; i < w->qn; i++)
      nq[i] = w->q[(w->qhead + i) % w->qcap];
    free(w->q);
    w->q = nq;
    w->qhead = 0;
    w->qcap = cap;
  }
  w->q[(w->qhead + w->qn++) % w->qcap] = (struct inflight){j, c, rc.seq};
  w->bytes += len;
  p->inflight++;
  if (++j->next_chunk == j->nchunks) {
    p->head = j->next;
    if (!p->head)
      p->tail = NULL;
    j->next = NULL;
  }
}

/* Send work to every worker with room in its window, one chunk to each in
 * turn so that no worker takes more than its share while others have room;
 * a batch holds at most half a window, so the second half is on its way
 * while the worker runs the first. (pool) Returns 1 when something was
 * sent. */
static int dispatch(mp_mpi_pool *p) {
  if (!p->head)
    return 0;
  unsigned per_batch = p->prefetch / 2 ? p->prefetch / 2 : 1;
  int sent = 0;
  for (unsigned round = 0; round < per_batch && p->head; round++) {
    int any = 0;
    for (int k = 0; k < p->nworkers && p->head; k++) {
      struct worker *w = &p->w[(p->rr + k) % p->nworkers];
      if (!has_room(p, w))
        continue;
      deal_one(p, w);
      any = 1;
    }
    if (!any)
      break;
    p->rr = (p->rr + 1) % p->nworkers;
    sent = 1;
  }
  for (int wi = 0; wi < p->nworkers; wi++)
    if (flush_batch(p, &p->w[wi]) < 0)
      fatal("MPI_Isend failed");
  return sent;
}

/* Deliver the completed jobs: wake waiters, run callbacks, drop the pool's
 * reference. Called without the pool mutex. */
static void deliver(job *list) {
  while (list) {
    job *j = list;
    list = j->next;
    int st;
    if (j->terminated)
      st = -ESHUTDOWN;
    else if (j->kind == K_MAP)
      st = j->fail_index < j->n ? j->fail_status : 0;
    else
      st = j->fail_status;
    pthread_mutex_lock(&j->mu);
    j->status = st;
    j->ready = 1;
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
    if (j->has_cb) {
      mp_mpi_pool_callback cb = st >= 0 ? j->cb.callback : j->cb.error_callback;
      if (cb)
        cb(j, st, j->cb.arg);
    }
    job_unref(j);
  }
}

/* Fail every chunk not yet dispatched. (pool) */
static void drop_queued(mp_mpi_pool *p) {
  struct rrec rr = {.status = -ESHUTDOWN, .flags = F_WHOLE};
  while (p->head) {
    job *j = p->head;
    p->head = j->next;
    j->terminated = 1;
    while (j->next_chunk < j->nchunks) {
      size_t c = j->next_chunk++;
      chunk_done(p, j, c, &rr);
    }
  }
  p->tail = NULL;
}

static int poll_requests(mp_mpi_pool *p) {
  if (!p->nreq)
    return 0;
  int outcount = 0;
  if (MPI_Testsome(p->nreq, p->reqs, &outcount, p->idx, MPI_STATUSES_IGNORE) != MPI_SUCCESS)
    fatal("MPI_Testsome failed");
  if (outcount <= 0 || outcount == MPI_UNDEFINED)
    return 0;
  /* Handle in posting order so that a worker's result batches stay ordered. */
  for (int a = 1; a < outcount; a++)
    for (int b = a; b > 0 && p->idx[b - 1] > p->idx[b]; b--) {
      int t = p->idx[b];
      p->idx[b] = p->idx[b - 1];
      p->idx[b - 1] = t;
    }
  for (int k = 0; k < outcount; k++) {
    int i = p->idx[k];
    struct op *op = &p->ops[i];
    p->bulk -= op->bulk;
    if (op->kind == OP_SEND) {
      free(op->buf);
    } else if (op->kind == OP_RDATA) {
      job *j = op->job;
      p->inflight--;
      if (j->kind == K_APPLY) {
        free(j->data);
        j->data = op->buf;
        j->dlen = op->rr.len;
      }
      chunk_done(p, j, op->chunk, &op->rr);
    }
    op->kind = 0;
  }
  int n = 0;
  for (int i = 0; i < p->nreq; i++)
    if (p->ops[i].kind) {
      p->reqs[n] = p->reqs[i];
      p->ops[n++] = p->ops[i];
    }
  p->nreq = n;
  return 1;
}

/* The result-batch receive of each worker is kept out of the request array
 * and tested after it, so a result batch is parsed only after the payloads
 * announced by earlier batches have been received. */
static int poll_batches(mp_mpi_pool *p, MPI_Request *rq) {
  int progressed = 0;
  for (int wi = 0; wi < p->nworkers; wi++) {
    int flag = 0;
    MPI_Status st;
    if (rq[wi] == MPI_REQUEST_NULL)
      continue;
    if (MPI_Test(&rq[wi], &flag, &st) != MPI_SUCCESS)
      fatal("MPI_Test failed");
    if (!flag)
      continue;
    int cnt;
    MPI_Get_count(&st, MPI_BYTE, &cnt);
    on_rbatch(p, wi, cnt);
    if (MPI_Irecv(p->w[wi].rbuf, BATCH_MAX, MPI_BYTE, p->w[wi].rank, TAG_RBATCH, p->comm,
                  &rq[wi]) != MPI_SUCCESS)
      fatal("MPI_Irecv failed");
    progressed = 1;
  }
  return progressed;
}

/* A worker on this host that died. Open MPI ends an mpiexec job by itself
 * when a rank dies, but leaves the parent of spawned workers waiting on a
 * peer that is gone ("may hang"): the pool ends the job itself, with a
 * message naming the rank, rather than wait forever. Checked every 50 ms
 * while work is in flight. */
static void check_dead(mp_mpi_pool *p, int wi) {
  struct worker *w = &p->w[wi];
  fprintf(stderr,
          "libmp-mpi: worker rank %d (pid %d) died with %zu chunks in flight; ending the job\n",
          w->rank, w->pid, w->qn);
  alarm(5); /* should MPI_Abort wait on the dead peer */
  MPI_Abort(MPI_COMM_WORLD, 1);
  _exit(1);
}

static void check_workers(mp_mpi_pool *p) {
  struct pollfd fds[64];
  for (int base = 0; base < p->nworkers; base += 64) {
    int n = 0, map[64];
    for (int wi = base; wi < p->nworkers && wi < base + 64; wi++)
      if (p->w[wi].pidfd >= 0) {
        fds[n] = (struct pollfd){.fd = p->w[wi].pidfd, .events = POLLIN};
        map[n++] = wi;
      }
    if (n == 0 || poll(fds, (nfds_t)n, 0) <= 0)
      continue;
    for (int k = 0; k < n; k++)
      if (fds[k].revents)
        check_dead(p, map[k]);
  }
}

static void *progress_main(void *arg) {
  mp_mpi_pool *p = arg;
  MPI_Request *rq = malloc((size_t)p->nworkers * sizeof *rq);
  if (!rq)
    fatal("out of memory");
  for (int wi = 0; wi < p->nworkers; wi++)
    if (MPI_Irecv(p->w[wi].rbuf, BATCH_MAX, MPI_BYTE, p->w[wi].rank, TAG_RBATCH, p->comm,
                  &rq[wi]) != MPI_SUCCESS)
      fatal("MPI_Irecv failed");
  struct backoff bo = {0};
  double checked = now_s();
  pthread_mutex_lock(&p->mu);
  for (;;) {
    if (p->inflight) {
      double t = now_s();
      if (t - checked > 0.05) {
        checked = t;
        check_workers(p);
      }
    }
    if (p->state == S_TERMINATING)
      drop_queued(p);
    int progressed = dispatch(p);
    progressed |= poll_requests(p);
    progressed |= poll_batches(p, rq);
    if (p->done) {
      job *list = p->done;
      p->done = NULL;
      pthread_mutex_unlock(&p->mu);
      deliver(list);
      pthread_mutex_lock(&p->mu);
      progressed = 1;
    }
    int idle = !p->head && !p->inflight;
    if (idle && p->state != S_RUNNING)
      break;
    if (progressed) {
      backoff_reset(&bo);
      continue;
    }
    if (idle && !p->nreq) {
      p->sleeping = 1;
      pthread_cond_wait(&p->cv_work, &p->mu);
      p->sleeping = 0;
      backoff_reset(&bo);
      continue;
    }
    pthread_mutex_unlock(&p->mu);
    /* A large payload in transit moves only while MPI is polled here (its
     * fragments are copied by the polling side): no sleeping then. */
    if (p->bulk)
      sched_yield();
    else
      backoff_wait(&bo);
    pthread_mutex_lock(&p->mu);
  }
  pthread_mutex_unlock(&p->mu);
  /* Every chunk is accounted for; finish the last sends, release the
   * workers and cancel the batch receives. */
  MPI_Waitall(p->nreq, p->reqs, MPI_STATUSES_IGNORE);
  for (int i = 0; i < p->nreq; i++)
    if (p->ops[i].kind == OP_SEND)
      free(p->ops[i].buf);
  p->nreq = 0;
  struct ctrl c = {.op = CTRL_END};
  for (int wi = 0; wi < p->nworkers; wi++) {
    MPI_Cancel(&rq[wi]);
    MPI_Wait(&rq[wi], MPI_STATUS_IGNORE);
    MPI_Send(&c, sizeof c, MPI_BYTE, p->w[wi].rank, TAG_CTRL, p->comm);
  }
  free(rq);
  pthread_mutex_lock(&p->mu);
  p->state = S_ENDED;
  pthread_cond_broadcast(&p->cv_state);
  pthread_mutex_unlock(&p->mu);
  return NULL;
}

/* ------------------------------------------------------------ 6. the public calls */

static int check_pool(mp_mpi_pool *p) {
  if (!p)
    return -EINVAL;
  if (p->pid != getpid())
    return -ECHILD;
  return 0;
}

static void pool_release(mp_mpi_pool *p) {
  for (int i = 0; p->w && i < p->nworkers; i++) {
    if (p->w[i].pidfd >= 0)
      close(p->w[i].pidfd);
    free(p->w[i].q);
    free(p->w[i].rbuf);
    free(p->w[i].bbuf);
    free(p->w[i].ext);
    free(p->w[i].extlen);
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

/* Let spawned workers go: they exit, and the communicators with them. */
static void spawned_release(MPI_Comm *comm, MPI_Comm *inter, int n) {
  struct ctrl c = {.op = CTRL_EXIT};
  for (int r = 1; r <= n; r++)
    MPI_Send(&c, sizeof c, MPI_BYTE, r, TAG_CTRL, *comm);
  MPI_Comm_free(comm);
  MPI_Comm_disconnect(inter);
}

/* A freed pool's spawned workers wait in the cache for the next pool (they
 * are idle between pools, like mpiexec workers): a program that makes pool
 * after pool spawns once, and spawning, the slow and fragile part, happens
 * once per program. (g_mu) */
static void spawned_release_cache(void) {
  if (spawned.n && !spawned.busy) {
    spawned_release(&spawned.comm, &spawned.inter, spawned.n);
    spawned.n = 0;
    free(spawned.pids);
    spawned.pids = NULL;
  }
}

static void pool_comm_free(mp_mpi_pool *p) {
  pthread_mutex_lock(&g_mu);
  if (p->inter == MPI_COMM_NULL) {
    g.world_busy = 0;
  } else if (p->cached) {
    for (int i = 0; i < p->nworkers; i++)
      spawned.pids[i] = p->w[i].pid;
    spawned.busy = 0;
  } else if (!spawned.n && (spawned.pids = calloc((size_t)p->nworkers, sizeof(int)))) {
    spawned.comm = p->comm;
    spawned.inter = p->inter;
    spawned.n = p->nworkers;
    spawned.busy = 0;
    for (int i = 0; i < p->nworkers; i++)
      spawned.pids[i] = p->w[i].pid;
  } else {
    spawned_release(&p->comm, &p->inter, p->nworkers);
  }
  pthread_mutex_unlock(&g_mu);
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
  pthread_mutex_lock(&g_mu);
  int r = lib_init();
  if (r < 0) {
    pthread_mutex_unlock(&g_mu);
    return r;
  }
  int spawn = g.size == 1;
  /* Each pool's progress thread calls MPI: two pools at once need
   * MPI_THREAD_MULTIPLE (Open MPI and MPICH give it). */
  if (g.prov < MPI_THREAD_MULTIPLE && live_pools) {
    pthread_mutex_unlock(&g_mu);
    return -EBUSY;
  }
  if (!spawn) {
    if (processes > g.size - 1) {
      pthread_mutex_unlock(&g_mu);
      return -EINVAL;
    }
    if (g.world_busy) {
      pthread_mutex_unlock(&g_mu);
      return -EBUSY;
    }
    g.world_busy = 1;
  }
  pthread_mutex_unlock(&g_mu);
  if (processes == 0)
    processes = spawn ? (int)sysconf(_SC_NPROCESSORS_ONLN) : g.size - 1;
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
  cond_init(&p->cv_state);
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
    pthread_mutex_lock(&g_mu);
    if (spawned.n >= processes && !spawned.busy) {
      spawned.busy = 1;
      p->comm = spawned.comm;
      p->inter = spawned.inter;
      p->cached = 1;
      /* watched from now on: one may have died since the last pool */
      for (int i = 0; i < processes; i++)
        if (spawned.pids[i]) {
          p->w[i].pid = spawned.pids[i];
          p->w[i].pidfd = (int)syscall(SYS_pidfd_open, (pid_t)spawned.pids[i], 0);
          if (p->w[i].pidfd < 0)
            check_dead(p, i);
        }
    } else {
      spawned_release_cache(); /* too few: spawn a set of the right size */
    }
    pthread_mutex_unlock(&g_mu);
  }
  if (spawn && !p->cached) {
    char exe[4096];
    ssize_t k = readlink("/proc/self/exe", exe, sizeof exe - 1);
    char *argbuf = NULL;
    char **args = own_args(&argbuf);
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
    p->comm = g.world;
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
  double checked = now_s();
  for (int done = 0; !done;) {
    MPI_Testall(processes, rq, &done, MPI_STATUSES_IGNORE);
    if (done)
      break;
    if (now_s() - checked > 0.05) {
      checked = now_s();
      check_workers(p);
    }
    backoff_wait(&bo);
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
  r = pthread_create(&p->thread, NULL, progress_main, p);
  if (r) {
    r = -r;
    goto fail_workers;
  }
  pthread_mutex_lock(&g_mu);
  p->live_next = live_pools;
  live_pools = p;
  pthread_mutex_unlock(&g_mu);
  *ret = p;
  return 0;

fail_workers:
  pool_end_workers(p);
  pool_comm_free(p);
  pool_release(p);
  return r;
fail_free:
  pool_release(p);
fail_busy:
  if (!spawn) {
    pthread_mutex_lock(&g_mu);
    g.world_busy = 0;
    pthread_mutex_unlock(&g_mu);
  }
  return r;
}

int mp_mpi_pool_size(mp_mpi_pool *pool) {
  int r = check_pool(pool);
  return r < 0 ? r : pool->nworkers;
}

static int job_new(mp_mpi_pool *p, int kind, const void *fn, void *ctx,
                   const mp_mpi_pool_callbacks *cb, job **ret) {
  mpi__ref f, c;
  if (mpi__ref_of(fn, 1, &f) < 0 || mpi__ref_of(ctx, 0, &c) < 0)
    return -EINVAL;
  job *j = calloc(1, sizeof *j);
  if (!j)
    return -ENOMEM;
  pthread_mutex_init(&j->mu, NULL);
  cond_init(&j->cv);
  j->pid = p->pid;
  j->kind = kind;
  j->refs = 2;
  j->fn = f;
  j->ctx = c;
  if (cb) {
    j->has_cb = 1;
    j->cb = *cb;
  }
  j->fail_index = SIZE_MAX;
  *ret = j;
  return 0;
}

/* Queue a job, or fail it at once with -EPIPE when the pool is not running. */
static int job_submit(mp_mpi_pool *p, job *j) {
  pthread_mutex_lock(&p->mu);
  if (p->state != S_RUNNING) {
    pthread_mutex_unlock(&p->mu);
    return -EPIPE;
  }
  j->chunks_left = j->nchunks;
  if (j->nchunks == 0) {
    /* nothing to run: ready at once, through the progress thread so that
     * callbacks run where they always do */
    j->next = p->done;
    p->done = j;
  } else if (p->tail) {
    p->tail->next = j;
    p->tail = j;
  } else {
    p->head = p->tail = j;
  }
  if (p->sleeping)
    pthread_cond_signal(&p->cv_work);
  pthread_mutex_unlock(&p->mu);
  return 0;
}

static void job_discard(job *j) {
  j->refs = 1;
  job_unref(j);
}

int mp_mpi_pool_apply_async(mp_mpi_pool *pool, mp_mpi_pool_apply_fn fn, const void *arg, size_t len,
                            void *ctx, const mp_mpi_pool_callbacks *cb, mp_mpi_async_result **ret) {
  int r = check_pool(pool);
  if (r < 0)
    return r;
  if (!fn || !ret || (!arg && len) || len > MSG_MAX)
    return -EINVAL;
  job *j;
  void *fp;
  memcpy(&fp, &fn, sizeof fp);
  r = job_new(pool, K_APPLY, fp, ctx, cb, &j);
  if (r < 0)
    return r;
  j->len = len;
  j->nchunks = 1;
  j->chunk = 1;
  j->n = 1;
  if (len) {
    j->arg = malloc(len);
    if (!j->arg) {
      job_discard(j);
      return -ENOMEM;
    }
    memcpy(j->arg, arg, len);
  }
  r = job_submit(pool, j);
  if (r < 0) {
    job_discard(j);
    return r;
  }
  *ret = j;
  return 0;
}

static int res_check(mp_mpi_async_result *res) {
  if (!res)
    return -EINVAL;
  if (res->pid != getpid())
    return -ECHILD;
  return 0;
}

static int deadline_of(double timeout, struct timespec *ts) {
  if (isnan(timeout))
    return -EINVAL;
  if (timeout < 0 && timeout != MP_FOREVER)
    timeout = 0;
  if (timeout == MP_FOREVER)
    return 1;
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  double s = (double)now.tv_sec + (double)now.tv_nsec * 1e-9 + timeout;
  if (s > 1e15)
    return 1;
  ts->tv_sec = (time_t)s;
  ts->tv_nsec = (long)((s - (double)ts->tv_sec) * 1e9);
  return 0;
}

/* Wait on cv until *flag; 0 or -ETIMEDOUT. mu held. */
static int cond_wait_until(pthread_cond_t *cv, pthread_mutex_t *mu, const int *flag,
                           double timeout) {
  struct timespec ts;
  int forever = deadline_of(timeout, &ts);
  if (forever < 0)
    return forever;
  while (!*flag) {
    if (forever) {
      pthread_cond_wait(cv, mu);
    } else if (pthread_cond_timedwait(cv, mu, &ts) == ETIMEDOUT) {
      return *flag ? 0 : -ETIMEDOUT;
    }
  }
  return 0;
}

int mp_mpi_async_result_wait(mp_mpi_async_result *res, double timeout) {
  int r = res_check(res);
  if (r < 0)
    return r;
  pthread_mutex_lock(&res->mu);
  r = cond_wait_until(&res->cv, &res->mu, &res->ready, timeout);
  pthread_mutex_unlock(&res->mu);
  return r;
}

int mp_mpi_async_result_get(mp_mpi_async_result *res, double timeout) {
  int r = mp_mpi_async_result_wait(res, timeout);
  if (r < 0)
    return r;
  return res->status;
}

int mp_mpi_async_result_ready(mp_mpi_async_result *res) {
  int r = res_check(res);
  if (r < 0)
    return r;
  pthread_mutex_lock(&res->mu);
  r = res->ready;
  pthread_mutex_unlock(&res->mu);
  return r;
}

int mp_mpi_async_result_successful(mp_mpi_async_result *res) {
  int r = mp_mpi_async_result_ready(res);
  if (r <= 0)
    return r < 0 ? r : -EAGAIN;
  return res->status >= 0;
}

int mp_mpi_async_result_data(mp_mpi_async_result *res, const void **data, size_t *len) {
  if (!data)
    return -EINVAL;
  int r = mp_mpi_async_result_ready(res);
  if (r <= 0)
    return r < 0 ? r : -EAGAIN;
  *data = res->dlen ? res->data : NULL;
  if (len)
    *len = res->dlen;
  return 0;
}

int mp_mpi_async_result_free(mp_mpi_async_result *res) {
  if (!res)
    return 0;
  int r = res_check(res);
  if (r < 0)
    return r;
  job_unref(res);
  return 0;
}

int mp_mpi_pool_apply(mp_mpi_pool *pool, mp_mpi_pool_apply_fn fn, const void *arg, size_t len,
                      void *ctx, void **result, size_t *result_len) {
  mp_mpi_async_result *res;
  int r = mp_mpi_pool_apply_async(pool, fn, arg, len, ctx, NULL, &res);
  if (r < 0)
    return r;
  r = mp_mpi_async_result_get(res, MP_FOREVER);
  if (result) {
    *result = res->dlen ? res->data : NULL;
    if (res->dlen)
      res->data = NULL;
  }
  if (result_len)
    *result_len = res->dlen;
  mp_mpi_async_result_free(res);
  return r;
}

static int map_prepare(mp_mpi_pool *pool, mp_mpi_pool_map_fn fn, void *ctx, const void *items,
                       size_t n, size_t item_size, void *results, size_t result_size,
                       size_t chunksize, const mp_mpi_pool_callbacks *cb, job **ret) {
  int r = check_pool(pool);
  if (r < 0)
    return r;
  if (!fn || (!items && item_size && n) || (!results && result_size && n) || item_size > MSG_MAX ||
      result_size > MSG_MAX || item_size > UINT32_MAX)
    return -EINVAL;
  size_t per = item_size + result_size;
  size_t big = item_size > result_size ? item_size : result_size;
  size_t maxc = big ? MSG_MAX / big : SIZE_MAX;
  if (chunksize == 0) {
    size_t w4 = 4 * (size_t)pool->nworkers;
    chunksize = n ? (n + w4 - 1) / w4 : 1;
    if (per && chunksize > CHUNK_BYTES_DEFAULT / per)
      chunksize = CHUNK_BYTES_DEFAULT / per ? CHUNK_BYTES_DEFAULT / per : 1;
  }
  if (chunksize > maxc)
    chunksize = maxc ? maxc : 1;
  job *j;
  void *fp;
  memcpy(&fp, &fn, sizeof fp);
  r = job_new(pool, K_MAP, fp, ctx, cb, &j);
  if (r < 0)
    return r;
  j->items = items;
  j->results = results;
  j->n = n;
  j->item_size = item_size;
  j->result_size = result_size;
  j->chunk = chunksize;
  j->nchunks = n ? (n + chunksize - 1) / chunksize : 0;
  *ret = j;
  return 0;
}

int mp_mpi_pool_map_async(mp_mpi_pool *pool, mp_mpi_pool_map_fn fn, void *ctx, const void *items,
                          size_t n, size_t item_size, void *results, size_t result_size,
                          size_t chunksize, const mp_mpi_pool_callbacks *cb,
                          mp_mpi_async_result **ret) {
  if (!ret)
    return -EINVAL;
  job *j;
  int r = map_prepare(pool, fn, ctx, items, n, item_size, results, result_size, chunksize, cb, &j);
  if (r < 0)
    return r;
  r = job_submit(pool, j);
  if (r < 0) {
    job_discard(j);
    return r;
  }
  *ret = j;
  return 0;
}

int mp_mpi_pool_map(mp_mpi_pool *pool, mp_mpi_pool_map_fn fn, void *ctx, const void *items,
                    size_t n, size_t item_size, void *results, size_t result_size,
                    size_t chunksize) {
  int r = check_pool(pool);
  if (r < 0)
    return r;
  if (n == 0)
    return fn ? 0 : -EINVAL;
  mp_mpi_async_result *res;
  r = mp_mpi_pool_map_async(pool, fn, ctx, items, n, item_size, results, result_size, chunksize,
                            NULL, &res);
  if (r < 0)
    return r;
  r = mp_mpi_async_result_get(res, MP_FOREVER);
  mp_mpi_async_result_free(res);
  return r;
}

int mp_mpi_pool_starmap(mp_mpi_pool *pool, mp_mpi_pool_map_fn fn, void *ctx, const void *items,
                        size_t n, size_t item_size, void *results, size_t result_size,
                        size_t chunksize) {
  return mp_mpi_pool_map(pool, fn, ctx, items, n, item_size, results, result_size, chunksize);
}

int mp_mpi_pool_starmap_async(mp_mpi_pool *pool, mp_mpi_pool_map_fn fn, void *ctx,
                              const void *items, size_t n, size_t item_size, void *results,
                              size_t result_size, size_t chunksize, const mp_mpi_pool_callbacks *cb,
                              mp_mpi_async_result **ret) {
  return mp_mpi_pool_map_async(pool, fn, ctx, items, n, item_size, results, result_size, chunksize,
                               cb, ret);
}

static void iter_release(struct mp_mpi_pool_iter *it) {
  free(it->results);
  free(it->done);
  free(it->cstatus);
  free(it->cfail);
  free(it->cwhole);
  free(it->order);
  pthread_mutex_destroy(&it->mu);
  pthread_cond_destroy(&it->cv);
  free(it);
}

static int imap_common(mp_mpi_pool *pool, mp_mpi_pool_map_fn fn, void *ctx, const void *items,
                       size_t n, size_t item_size, size_t result_size, size_t chunksize,
                       int ordered, mp_mpi_pool_iter **ret) {
  if (!ret)
    return -EINVAL;
  int r = check_pool(pool);
  if (r < 0)
    return r;
  if (chunksize == 0)
    chunksize = 1;
  struct mp_mpi_pool_iter *it = calloc(1, sizeof *it);
  if (!it)
    return -ENOMEM;
  pthread_mutex_init(&it->mu, NULL);
  cond_init(&it->cv);
  it->pid = pool->pid;
  it->ordered = ordered;
  it->n = n;
  it->result_size = result_size;
  it->results = malloc(n && result_size ? n * result_size : 1);
  if (!it->results) {
    iter_release(it);
    return -ENOMEM;
  }
  job *j;
  r = map_prepare(pool, fn, ctx, items, n, item_size, it->results, result_size, chunksize, NULL,
                  &j);
  if (r < 0) {
    iter_release(it);
    return r;
  }
  size_t nc = j->nchunks ? j->nchunks : 1;
  it->chunk = j->chunk;
  it->nchunks = j->nchunks;
  it->done = calloc(nc, 1);
  it->cstatus = calloc(nc, sizeof *it->cstatus);
  it->cfail = calloc(nc, sizeof *it->cfail);
  it->cwhole = calloc(nc, 1);
  it->order = calloc(nc, sizeof *it->order);
  if (!it->done || !it->cstatus || !it->cfail || !it->cwhole || !it->order) {
    job_discard(j);
    iter_release(it);
    return -ENOMEM;
  }
  j->iter = it;
  it->job = j;
  r = job_submit(pool, j);
  if (r < 0) {
    job_discard(j);
    iter_release(it);
    return r;
  }
  *ret = it;
  return 0;
}

int mp_mpi_pool_imap(mp_mpi_pool *pool, mp_mpi_pool_map_fn fn, void *ctx, const void *items,
                     size_t n, size_t item_size, size_t result_size, size_t chunksize,
                     mp_mpi_pool_iter **ret) {
  return imap_common(pool, fn, ctx, items, n, item_size, result_size, chunksize, 1, ret);
}

int mp_mpi_pool_imap_unordered(mp_mpi_pool *pool, mp_mpi_pool_map_fn fn, void *ctx,
                               const void *items, size_t n, size_t item_size, size_t result_size,
                               size_t chunksize, mp_mpi_pool_iter **ret) {
  return imap_common(pool, fn, ctx, items, n, item_size, result_size, chunksize, 0, ret);
}

/* The status of item i of a finished chunk. (iter) */
static int item_status(const struct mp_mpi_pool_iter *it, size_t i) {
  size_t c = i / it->chunk, k = i - c * it->chunk;
  int s = it->cstatus[c];
  if (s >= 0)
    return 0;
  if (it->cwhole[c])
    return s;
  return k < it->cfail[c] ? 0 : k == it->cfail[c] ? s : -ECANCELED;
}

int mp_mpi_pool_iter_next(mp_mpi_pool_iter *it, void *result, size_t *index, double timeout) {
  if (!it)
    return -EINVAL;
  if (it->pid != getpid())
    return -ECHILD;
  struct timespec ts;
  int forever = deadline_of(timeout, &ts);
  if (forever < 0)
    return forever;
  pthread_mutex_lock(&it->mu);
  if (it->returned == it->n) {
    pthread_mutex_unlock(&it->mu);
    return -EPIPE;
  }
  size_t i;
  for (;;) {
    int have;
    if (it->ordered) {
      i = it->next;
      have = it->done[i / it->chunk];
    } else {
      have = it->next < it->ndone;
      if (have)
        i = it->order[it->next] * it->chunk + it->within;
    }
    if (have)
      break;
    if (forever)
      pthread_cond_wait(&it->cv, &it->mu);
    else if (pthread_cond_timedwait(&it->cv, &it->mu, &ts) == ETIMEDOUT) {
      pthread_mutex_unlock(&it->mu);
      return -ETIMEDOUT;
    }
  }
  int s = item_status(it, i);
  if (s >= 0 && result && it->result_size)
    memcpy(result, it->results + i * it->result_size, it->result_size);
  if (index)
    *index = i;
  if (it->ordered) {
    it->next++;
  } else {
    size_t c = it->order[it->next];
    size_t cn = c + 1 == it->nchunks ? it->n - c * it->chunk : it->chunk;
    if (++it->within == cn) {
      it->within = 0;
      it->next++;
    }
  }
  it->returned++;
  pthread_mutex_unlock(&it->mu);
  return s;
}

int mp_mpi_pool_iter_free(mp_mpi_pool_iter *it) {
  if (!it)
    return 0;
  if (it->pid != getpid())
    return -ECHILD;
  /* The job writes into the iterator until it is done. */
  mp_mpi_async_result_wait(it->job, MP_FOREVER);
  job_unref(it->job);
  iter_release(it);
  return 0;
}

int mp_mpi_pool_close(mp_mpi_pool *pool) {
  int r = check_pool(pool);
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
  int r = check_pool(pool);
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
  int forever = deadline_of(timeout, &ts);
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
  int r = check_pool(pool);
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
  int r = check_pool(pool);
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
  pthread_mutex_lock(&g_mu);
  for (mp_mpi_pool **pp = &live_pools; *pp; pp = &(*pp)->live_next)
    if (*pp == pool) {
      *pp = pool->live_next;
      break;
    }
  pthread_mutex_unlock(&g_mu);
  pool_comm_free(pool);
  pool_release(pool);
  return 0;
}

static void free_live_pools(void) {
  for (;;) {
    pthread_mutex_lock(&g_mu);
    mp_mpi_pool *p = live_pools;
    while (p && p->pid != getpid())
      p = p->live_next;
    pthread_mutex_unlock(&g_mu);
    if (!p)
      return;
    mp_mpi_pool_free(p);
  }
}
