/* SPDX-License-Identifier: MIT */
/*
 * libmp-mpi: rank 0's callers. Jobs (struct mp_mpi_async_result in
 * pool_internal.h) are made and queued here and completed by the progress
 * thread (progress.c).
 *
 * Map of this file:
 *   jobs           job_new, job_submit: queue under the pool mutex
 *   apply          mp_mpi_pool_apply(_async)
 *   async results  wait, get, ready, successful, data, free
 *   map            chunk sizing, mp_mpi_pool_(star)map(_async)
 *   iterators      mp_mpi_pool_imap(_unordered), iter_next, iter_free
 * No crash points.
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "pool_internal.h"

static int job_new(mp_mpi_pool *p, int kind, const void *fn, void *ctx,
                   const mp_mpi_pool_callbacks *cb, job **ret) {
  mpi__ref f, c;
  if (mpi__ref_of(fn, 1, &f) < 0 || mpi__ref_of(ctx, 0, &c) < 0)
    return -EINVAL;
  job *j = calloc(1, sizeof *j);
  if (!j)
    return -ENOMEM;
  pthread_mutex_init(&j->mu, NULL);
  mp__mpi_cond_init(&j->cv);
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
  mp__mpi_job_unref(j);
}

int mp_mpi_pool_apply_async(mp_mpi_pool *pool, mp_mpi_pool_apply_fn fn, const void *arg, size_t len,
                            void *ctx, const mp_mpi_pool_callbacks *cb, mp_mpi_async_result **ret) {
  int r = mp__mpi_check_pool(pool);
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

int mp__mpi_deadline_of(double timeout, struct timespec *ts) {
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
  int forever = mp__mpi_deadline_of(timeout, &ts);
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
  mp__mpi_job_unref(res);
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
  int r = mp__mpi_check_pool(pool);
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
  int r = mp__mpi_check_pool(pool);
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
  int r = mp__mpi_check_pool(pool);
  if (r < 0)
    return r;
  if (chunksize == 0)
    chunksize = 1;
  struct mp_mpi_pool_iter *it = calloc(1, sizeof *it);
  if (!it)
    return -ENOMEM;
  pthread_mutex_init(&it->mu, NULL);
  mp__mpi_cond_init(&it->cv);
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
  int forever = mp__mpi_deadline_of(timeout, &ts);
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
  mp__mpi_job_unref(it->job);
  iter_release(it);
  return 0;
}
