/* SPDX-License-Identifier: MIT */
/*
 * Pool iterators (mp_pool_imap, mp_pool_imap_unordered): a window of chunks
 * submitted ahead of the reader, one heap-allocated job each, released as
 * the reader passes them (or, once the iterator is freed, by the handler as
 * they complete: job_complete() in pool_handler.c). The chunks travel the
 * task ring like any other (protocol in pool_internal.h). No crash points:
 * everything here is in the creating process.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "pool_internal.h"

/* How many chunks per worker an iterator keeps submitted and unread. */
#define ITER_WINDOW_PER_WORKER 4

static int check_iter(struct mp_pool_iter *it) {
  if (!it || it->magic != ITER_MAGIC)
    return -EINVAL;
  return it->owner == mp__pid() ? 0 : -ECHILD;
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
    published += (unsigned)mp__pool_enqueue(p, j); /* links the backlog through next */
    if (it->ordered) { /* the iterator's own lists link through next_done */
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
    mp__pool_wake_workers(p);
  return r;
}

static int imap_new(mp_pool *p, mp_pool_map_fn fn, void *ctx, const void *items, size_t n,
                    size_t isize, size_t rsize, size_t chunksize, int ordered, mp_pool_iter **ret) {
  int r = mp__pool_check(p);
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
  it->in_heap = mp__pool_in_heap(items, n * isize);
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
        mp__pool_iter_release_job(it, j);
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
      mp__pool_iter_release_job(it, j);
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
    mp__pool_unref_locked(p, &gone);
  }
  pthread_mutex_unlock(&p->mu);
  mp__pool_efd_signal(p->efd);
  if (gone)
    mp__pool_destroy(p);
  return 0;
}
