/* SPDX-License-Identifier: MIT */
/*
 * Pool submission: the parent's side of the task ring (publishing the
 * backlog into FREE entries, protocol in pool_internal.h), and apply, map and
 * starmap, blocking and not. A map is one job published one chunk per entry
 * from a cursor; its items reach the workers through a staging block in the
 * heap (copy_in) or, for big maps, straight from this process's memory
 * (DIRECT_IN/DIRECT_OUT, run_chunk_direct in pool_worker.c). No crash
 * points: everything here is in the creating process.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pool_internal.h"

/* Fill the ring from the backlog (mu held). Returns how many were published. */
unsigned mp__pool_publish_backlog(struct mp_pool *p) {
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
    /* seq_cst: the Dekker pair with claim()'s sleepers/tail (mp__pool_wake_workers) */
    atomic_store(&sh->tail, t + 1);
    n++;
  }
  return n;
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
  int r = mp__pool_check(p);
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
  int in_ring = mp__pool_enqueue(p, j);
  pthread_mutex_unlock(&p->mu);
  if (in_ring)
    mp__pool_wake_workers(p);
  *ret = res;
  return 0;
}

static size_t auto_chunk(struct mp_pool *p, size_t n) {
  size_t div = 4 * (size_t)p->nslots;
  size_t c = n / div + (n % div != 0);
  return c ? c : 1;
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
      k = mp__pool_publish_backlog(p);
    }
    if (over || done == n) {
      res->copying_in = 0;
      if (res->remaining == 0) {
        mp_heap_free(res->in_tmp);
        res->in_tmp = NULL;
      }
      pthread_mutex_unlock(&p->mu);
      if (k)
        mp__pool_wake_workers(p);
      return;
    }
    pthread_mutex_unlock(&p->mu);
    if (k)
      mp__pool_wake_workers(p);
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
  int r = mp__pool_check(p);
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
  size_t istage = ibytes && !mp__pool_in_heap(items, ibytes) ? ibytes : 0;
  size_t rstage = rbytes && !mp__pool_in_heap(results, rbytes) ? rbytes : 0;
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
    mp__pool_result_finish(p, res);
    pthread_mutex_unlock(&p->mu);
    mp__pool_efd_signal(p->efd); /* the handler delivers it, callbacks included */
    *ret = res;
    return 0;
  }
  mp__pool_backlog_append(p, j);
  p->outstanding += nchunks;
  unsigned k = mp__pool_publish_backlog(p);
  pthread_mutex_unlock(&p->mu);
  if (k)
    mp__pool_wake_workers(p);
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

MP_EXPORT int mp_pool_apply_async(mp_pool *pool, mp_pool_apply_fn fn, const void *arg, size_t len,
                                  void *ctx, const mp_pool_callbacks *cb, mp_async_result **ret) {
  return apply_submit(pool, K_APPLY, (anyfn)fn, -1, arg, len, ctx, cb, ret);
}

MP_EXPORT int mp_pool_apply_async_fd(mp_pool *pool, mp_pool_fd_fn fn, int fd, const void *arg,
                                     size_t len, void *ctx, const mp_pool_callbacks *cb,
                                     mp_async_result **ret) {
  if (fd < 0)
    return mp__pool_check(pool) < 0 ? mp__pool_check(pool) : -EBADF;
  return apply_submit(pool, K_APPLY_FD, (anyfn)fn, fd, arg, len, ctx, cb, ret);
}

MP_EXPORT int mp_pool_apply(mp_pool *pool, mp_pool_apply_fn fn, const void *arg, size_t len,
                            void *ctx, void **result, size_t *result_len) {
  mp_async_result *res;
  int r = mp_pool_apply_async(pool, fn, arg, len, ctx, NULL, &res);
  if (r < 0)
    return r;
  int st = mp__pool_wait_own(pool, res);
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
  int r = mp__pool_check(pool);
  if (r < 0)
    return r;
  if (n == 0)
    return fn ? 0 : -EINVAL;
  mp_async_result *res;
  r = map_submit(pool, fn, ctx, items, n, item_size, results, result_size, chunksize, NULL, &res);
  if (r < 0)
    return r;
  r = mp__pool_wait_own(pool, res);
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
