/* SPDX-License-Identifier: MIT */
/*
 * Queues: FIFO rings of bytes, LIFO and priority lists, all in the family
 * heap. This file holds what is neither a put nor a get; queue_internal.h
 * says where the rest lives:
 *   queue_ring.c      the FIFO protocol and kill table (read it first), zero-copy
 *                     blocks, and the public put and get of every kind
 *   queue_list.c      LIFO and priority lists: protocol, kill table, journal,
 *                     mp_queue_put_priority()
 *   queue_sleepers.c  sleeping, sleeper registries, waking
 *
 * Map of this file:
 *   1. JoinableQueue counters
 *   2. watching a queue from mp_connection_wait()
 *   3. public entry points: constructors, counts, close, shutdown, join, free
 * Their steps are in the FIFO kill table (queue_ring.c, section 1): close,
 * shutdown, task_done, free. Crash points marked here:
 * queue.close.marked, queue.shutdown.flagged, queue.task_done.counted,
 * queue.free.claimed, queue.free.block_freed.
 */
#include <stdlib.h>
#include <string.h>

#include "queue_internal.h"

/* ------------------------------------------------------------ 1. joinable */

/* Unfinished tasks. `done` is read first: it never runs ahead of the puts
 * read after it. */
static uint64_t unfinished(mp_queue *q) {
  if (q->order == MP_QUEUE_FIFO) {
    uint32_t d = atomic_load(&q->s->u.f.done);
    return (msgs_of(atomic_load(&q->s->u.f.tail)) - d) & MSG_MASK;
  }
  uint64_t d = ld(&q->s->u.l.done);
  uint64_t p = ld(&q->s->u.l.puts);
  return p > d ? p - d : 0;
}

static int task_done(mp_queue *q) {
  if (q->order == MP_QUEUE_FIFO) {
    struct fifo *f = &q->s->u.f;
    uint32_t d = atomic_load(&f->done);
    for (;;) {
      if (((msgs_of(atomic_load(&f->tail)) - d) & MSG_MASK) == 0)
        return -EOVERFLOW;
      if (atomic_compare_exchange_weak(&f->done, &d, (d + 1) & MSG_MASK))
        break;
    }
  } else {
    int r = mp__queue_list_task_done(q);
    if (r < 0)
      return r;
  }
  MP__CRASH(QUEUE_TASK_DONE_COUNTED);
  /* seq_cst loads after the seq_cst update: pairs with join's registration */
  if (unfinished(q) == 0 && atomic_load(&q->s->join_waiters)) {
    atomic_fetch_add(&q->s->join_word, 1);
    mp__futex_wake(&q->s->join_word, INT_MAX);
  }
  return 0;
}

/* Whether every task is done: 1, 0, or a negative errno. A list's lockless
 * counts may hold a task_done() or put whose holder has not committed (and
 * whose death the replay undoes), so a zero is confirmed under the mutex. */
static int all_done(mp_queue *q, wctx *w) {
  if (unfinished(q) != 0)
    return 0;
  if (q->order == MP_QUEUE_FIFO)
    return 1;
  return mp__queue_list_all_done(q, w);
}

static int join(mp_queue *q, wctx *w) {
  struct qstate *s = q->s;
  int r = all_done(q, w);
  if (r != 0)
    return r < 0 ? r : 0;
  if (nowait(w))
    return -ETIMEDOUT;
  for (int i = 0; i < MP__SPIN_LIMIT; i++) {
    mp__cpu_relax();
    if (unfinished(q) == 0 && (r = all_done(q, w)) != 0)
      return r < 0 ? r : 0;
  }
  /* Registered (a slot when one is free), so that mp_queue_free() sees us
   * and a joiner killed here is cleaned by its scan. */
  mp__queue_reg_add(&s->join_reg, &s->join_waiters);
  for (;;) {
    uint32_t snap = atomic_load(&s->join_word);
    if ((r = all_done(q, w)) != 0) {
      r = r < 0 ? r : 0;
      break;
    }
    if ((r = mp__queue_nap(&s->join_word, snap, w, false)) < 0)
      break;
  }
  mp__queue_reg_del(&s->join_reg, &s->join_waiters);
  return r;
}

/* ------------------------------------------------------------ 2. watching */

/* Whether a get would not block now: a record (or message) is there, or the
 * queue is closed and drained. */
static bool get_ready(mp_queue *q) {
  if (q->order == MP_QUEUE_FIFO) {
    struct fifo *f = &q->s->u.f;
    uint64_t h = atomic_load(&f->head), t = atomic_load(&f->tail);
    return pos_of(t) != pos_of(h) || fifo_drained(t, h);
  }
  struct list *l = &q->s->u.l;
  return ld(&l->n) > 0 || ld(&l->closed);
}

int mp__queue_watch_begin(struct mp_queue *q, _Atomic uint32_t **word, uint32_t *snapshot) {
  if (!mp__tag_ok(q, MP__TAG_QUEUE) || !word || !snapshot)
    return -EINVAL;
  if (get_ready(q))
    return 1;
  struct qstate *s = q->s;
  mp__queue_reg_add(&s->data_reg, &s->data_sleepers);
  uint32_t snap = atomic_load(&s->data_word);
  if (get_ready(q)) {
    mp__queue_reg_del(&s->data_reg, &s->data_sleepers);
    return 1;
  }
  *word = &s->data_word;
  *snapshot = snap;
  return 0;
}

void mp__queue_watch_end(struct mp_queue *q) {
  if (mp__tag_ok(q, MP__TAG_QUEUE))
    mp__queue_reg_del(&q->s->data_reg, &q->s->data_sleepers);
}

/* ------------------------------------------------------------ 3. public */

MP_EXPORT int mp_queue_new(size_t maxsize, const mp_queue_options *opts, mp_queue **ret) {
  mp_queue_options o = {0};
  if (opts)
    o = *opts;
  if (!ret || o.order < MP_QUEUE_FIFO || o.order > MP_QUEUE_PRIORITY || o.ring_size > RING_MAX)
    return -EINVAL;
  size_t cap = 0;
  if (o.order == MP_QUEUE_FIFO) {
    cap = o.ring_size ? o.ring_size : MP_QUEUE_DEFAULT_RING_SIZE;
    if (cap < RING_MIN)
      cap = RING_MIN;
    cap = (size_t)1 << (64 - __builtin_clzll((unsigned long long)cap - 1));
  }
  int r = mp__heap_ensure();
  if (r < 0)
    return r;
  mp_queue *q = mp__object_new(sizeof *q, MP__TAG_QUEUE);
  if (!q)
    return -ENOMEM;
  void *block = mp_heap_alloc(sizeof(struct qstate) + 63 + cap);
  if (!block) {
    mp__object_free(q);
    return -ENOMEM;
  }
  struct qstate *s = (struct qstate *)(((uintptr_t)block + 63) & ~(uintptr_t)63);
  memset(s, 0, sizeof *s);
  if (o.order == MP_QUEUE_FIFO) {
    r = mp__robust_mutex_init(&s->u.f.prod_mutex, false);
    if (r == 0)
      r = mp__robust_mutex_init(&s->u.f.cons_mutex, false);
  } else {
    r = mp__robust_mutex_init(&s->u.l.mutex, false);
  }
  if (r < 0) {
    mp_heap_free(block);
    mp__object_free(q);
    return r;
  }
  q->order = (uint32_t)o.order;
  q->joinable = o.joinable != 0;
  q->cap = cap;
  q->mask = cap ? (uint32_t)(cap - 1) : 0;
  q->chunk_max = cap / 4;
  q->maxsize = maxsize;
  q->s = s;
  q->ring = (char *)(s + 1);
  q->block = block;
  /* release: the handle may be published to other threads without a lock */
  atomic_thread_fence(memory_order_release);
  *ret = q;
  return 0;
}

MP_EXPORT int mp_simple_queue_new(mp_queue **ret) { return mp_queue_new(0, NULL, ret); }

MP_EXPORT int mp_joinable_queue_new(size_t maxsize, mp_queue **ret) {
  mp_queue_options o = {.joinable = 1};
  return mp_queue_new(maxsize, &o, ret);
}

MP_EXPORT int mp_lifo_queue_new(size_t maxsize, mp_queue **ret) {
  mp_queue_options o = {.order = MP_QUEUE_LIFO};
  return mp_queue_new(maxsize, &o, ret);
}

MP_EXPORT int mp_priority_queue_new(size_t maxsize, mp_queue **ret) {
  mp_queue_options o = {.order = MP_QUEUE_PRIORITY};
  return mp_queue_new(maxsize, &o, ret);
}

/* Before a public look at the counts: settle what a dead process left half
 * done, so that a message it never put is never counted (nor one it never
 * took missed). FIFO: a stream whose producer died (mp__queue_fifo_check_producer(); a
 * producer alive keeps its stream counted, as its put is under way). Lists:
 * take the mutex, which replays a dead holder's journal and waits out a live
 * one's operation, as Python's qsize() takes its queue's mutex. */
static int settle(mp_queue *q) {
  if (q->order == MP_QUEUE_FIFO) {
    if (MP__UNLIKELY(atomic_load(&q->s->u.f.tail) & INSTREAM))
      mp__queue_fifo_check_producer(q);
    return 0;
  }
  return mp__queue_list_settle(q);
}

MP_EXPORT ssize_t mp_queue_qsize(mp_queue *q) {
  if (!mp__tag_ok(q, MP__TAG_QUEUE))
    return -EINVAL;
  int r = settle(q);
  if (r < 0)
    return r;
  return (ssize_t)count_now(q);
}

MP_EXPORT int mp_queue_empty(mp_queue *q) {
  ssize_t n = mp_queue_qsize(q);
  return n < 0 ? (int)n : n == 0;
}

MP_EXPORT int mp_queue_full(mp_queue *q) {
  if (!mp__tag_ok(q, MP__TAG_QUEUE))
    return -EINVAL;
  int r = settle(q);
  if (r < 0)
    return r;
  return full_now(q);
}

MP_EXPORT int mp_queue_close(mp_queue *q) {
  if (!mp__tag_ok(q, MP__TAG_QUEUE))
    return -EINVAL;
  if (q->order == MP_QUEUE_FIFO) {
    atomic_fetch_or(&q->s->u.f.tail, CLOSED);
  } else {
    int r = mp__queue_list_close(q);
    if (r < 0)
      return r;
  }
  MP__CRASH(QUEUE_CLOSE_MARKED);
  mp__queue_wake_all(q);
  return 0;
}

MP_EXPORT int mp_queue_shutdown(mp_queue *q, int immediate) {
  if (!mp__tag_ok(q, MP__TAG_QUEUE))
    return -EINVAL;
  atomic_store(&q->s->shut, 1);
  MP__CRASH(QUEUE_SHUTDOWN_FLAGGED);
  int r = mp_queue_close(q);
  if (r < 0 || !immediate)
    return r;
  /* Drop what is queued, each dropped message marked done (as Python), so
   * that join() returns once nothing else is unfinished. */
  for (;;) {
    void *msg = NULL;
    size_t len = 0;
    r = (int)mp__queue_take(q, NULL, 0, &msg, &len, TAKE_ALLOC, MP_NOWAIT);
    if (r < 0)
      break;
    free(msg);
    if (q->joinable)
      task_done(q);
  }
  return r == -ESHUTDOWN || r == -ETIMEDOUT ? 0 : r;
}

MP_EXPORT ssize_t mp_queue_unfinished(mp_queue *q) {
  if (!mp__tag_ok(q, MP__TAG_QUEUE) || !q->joinable)
    return -EINVAL;
  int r = settle(q);
  if (r < 0)
    return r;
  return (ssize_t)unfinished(q);
}

MP_EXPORT int mp_queue_task_done(mp_queue *q) {
  if (!mp__tag_ok(q, MP__TAG_QUEUE) || !q->joinable)
    return -EINVAL;
  return task_done(q);
}

MP_EXPORT int mp_queue_join(mp_queue *q, double timeout) {
  if (!mp__tag_ok(q, MP__TAG_QUEUE) || !q->joinable || isnan(timeout))
    return -EINVAL;
  wctx w = {.timeout = timeout};
  return join(q, &w);
}

/* Take a mutex for free(): 0 when taken (repaired if its holder died), -EBUSY
 * when someone alive holds it. */
static int free_lock(mp_queue *q, pthread_mutex_t *m) {
  void (*repair)(void *) = q->order != MP_QUEUE_FIFO    ? mp__queue_list_repair
                           : m == &q->s->u.f.prod_mutex ? mp__queue_fifo_prod_repair
                                                        : mp__queue_fifo_cons_repair;
  int r = mp__robust_mutex_try(m, repair, q);
  if (r == -EOWNERDEAD) {
    /* Repaired in full and marked consistent: free may still answer -EBUSY
     * and leave the queue in use. A list's repair wakes everyone, as
     * mp__queue_list_repair() asks of its callers. */
    if (q->order != MP_QUEUE_FIFO)
      mp__queue_wake_all(q);
    return 0;
  }
  return r ? -EBUSY : 0;
}

/* The point of no return of mp_queue_free(), with its mutexes held and no
 * sleeper left: mark the handle freed before returning any block, so that
 * a freer killed half-way leaves blocks leaked and a handle that answers
 * -EINVAL, never blocks that a retried free would return twice. 0, or
 * -EINVAL when another freer claimed it first. */
static int claim(mp_queue *q) {
  uint32_t tag = MP__TAG_QUEUE;
  if (!atomic_compare_exchange_strong(&q->tag, &tag, MP__TAG_FREED))
    return -EINVAL;
  MP__CRASH(QUEUE_FREE_CLAIMED);
  return 0;
}

MP_EXPORT int mp_queue_free(mp_queue *q) {
  if (!q)
    return 0;
  if (!mp__tag_ok(q, MP__TAG_QUEUE))
    return -EINVAL;
  struct qstate *s = q->s;
  mp__queue_reg_scan(&s->data_reg, &s->data_sleepers);
  mp__queue_reg_scan(&s->space_reg, &s->space_sleepers);
  mp__queue_reg_scan(&s->join_reg, &s->join_waiters);
  /* Every sleeper counts: the registered ones (bits 1..NSLOTS) and those that
   * found no slot (the count above them). Bit 0, the FIFO mutex holder's, is
   * ours or stale once we hold the mutexes. A sleeper killed while registered
   * without a slot stays counted: that queue answers -EBUSY from then on. */
  const uint32_t others = ~1u;
  if (atomic_load(&s->join_waiters))
    return -EBUSY;
  if (q->order == MP_QUEUE_FIFO) {
    struct fifo *f = &s->u.f;
    if (free_lock(q, &f->prod_mutex) < 0)
      return -EBUSY;
    if (free_lock(q, &f->cons_mutex) < 0) {
      pthread_mutex_unlock(&f->prod_mutex);
      return -EBUSY;
    }
    int r = (atomic_load(&s->data_sleepers) & others) ? -EBUSY : claim(q);
    if (r < 0) {
      pthread_mutex_unlock(&f->cons_mutex);
      pthread_mutex_unlock(&f->prod_mutex);
      return r;
    }
    pthread_mutex_unlock(&f->cons_mutex);
    pthread_mutex_unlock(&f->prod_mutex);
    mp__queue_fifo_free_blocks(q);
    pthread_mutex_destroy(&f->cons_mutex);
    pthread_mutex_destroy(&f->prod_mutex);
  } else {
    struct list *l = &s->u.l;
    if (free_lock(q, &l->mutex) < 0)
      return -EBUSY;
    int r = ((atomic_load(&s->data_sleepers) | atomic_load(&s->space_sleepers)) & others)
                ? -EBUSY
                : claim(q);
    if (r < 0) {
      pthread_mutex_unlock(&l->mutex);
      return r;
    }
    mp__queue_list_free_contents(q);
    pthread_mutex_unlock(&l->mutex);
    pthread_mutex_destroy(&l->mutex);
  }
  mp_heap_free(q->block);
  MP__CRASH(QUEUE_FREE_BLOCK_FREED);
  mp_heap_free(q); /* its tag says freed since the claim */
  return 0;
}
