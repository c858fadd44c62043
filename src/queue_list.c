/* SPDX-License-Identifier: MIT */
/*
 * Queues: LIFO and priority lists (queue_internal.h maps the area). Their
 * mp_queue_put() and gets enter through queue_ring.c's entry points, which
 * hand every list to this file (mp_queue_put_priority() is here); the
 * JoinableQueue counters, close and free of a list call in here too, so that
 * every word of a list is written in this one file, through its journal.
 *
 * Map: 1. the protocol and its kill table; 2. the journal (journal.h's) and
 * the mutex; 3. put and get, mp_queue_put_priority(); 4. task_done, join,
 * close, settle, free.
 * Crash points marked here: queue.list.*.
 *
 * ---------------------------------------------------------------------------
 * 1. LIFO and priority queues: an array of records (priority, sequence, heap
 * block of the payload, length) in a heap block, a stack (LIFO) or a binary
 * min-heap on (priority, sequence) (priority), under one robust mutex. Every
 * word is written through jset(), which journals its old value first, and an
 * operation ends by emptying the journal (its commit). The payload block is
 * allocated and filled before the lock, and freed after the commit. Getters
 * and putters sleep outside the mutex, registered in data_reg / space_reg
 * like watchers.
 *
 * A SIGKILL at each step [crash point], and the repair:
 *   put, payload block allocated and filled, before the lock
 *     [queue.list.put.copied]: the message was not put; that block stays
 *     allocated (the heap knows no owner to give it back to).
 *   put, a larger array allocated and filled, not yet linked
 *     [queue.list.put.grown]: the same for that array.
 *   any word journaled and not yet written [queue.list.journaled], or
 *     written [queue.list.written]: each word of a put, get, task_done() or
 *     close() in turn (a sift writes four per level). The next holder
 *     (EOWNERDEAD) replays the journal, newest first, and wakes everyone: the
 *     operation did not happen. The replay is idempotent: a replayer killed
 *     before marking the mutex consistent [queue.list.repair.replayed]
 *     leaves the next holder to replay again.
 *   committed, mutex still held [queue.list.committed]: done; the next holder
 *     finds an empty journal, and wakes everyone.
 *   put, unlocked, the old array not freed, getters not woken
 *     [queue.list.put.unlocked]: the message is in; the old array stays
 *     allocated; sleepers look again within RECHECK_NS.
 *   get, unlocked, the payload block not freed, putters not woken
 *     [queue.list.get.unlocked]: the dead one took the message; its block
 *     stays allocated; sleepers look again within RECHECK_NS.
 *   asleep, registered: as a FIFO watcher (queue.reg.*).
 * Readers without the mutex see words a holder wrote and has not committed,
 * which a replay may undo. Only hints read them so (a spinner's look,
 * mp_connection_wait()'s readiness, join()'s first look); qsize(), empty()
 * and full() take the mutex (settle()), and join() confirms a zero count
 * under it, so a count that a replay undoes is never reported.
 */
#include <stdlib.h>
#include <string.h>

#include "queue_internal.h"

/* ------------------------------------------------------------ 2. journal, mutex */

/* Journal the old value of *addr, then write val (see section 1; journal.h
 * gives the rule). The crash points around the store are this file's. */
static void jset(struct list *l, uint64_t *addr, uint64_t val) {
  mp__journal_log(&l->log_n, l->log, LOG_MAX, addr);
  MP__CRASH(QUEUE_LIST_JOURNALED);
  /* release: readers without the mutex (qsize, join) load these */
  __atomic_store_n(addr, val, __ATOMIC_RELEASE);
  MP__CRASH(QUEUE_LIST_WRITTEN);
}

static void jcommit(struct list *l) {
  mp__journal_commit(&l->log_n);
  MP__CRASH(QUEUE_LIST_COMMITTED);
}

/* With the mutex just taken from a holder that died (EOWNERDEAD): undo its
 * operation; the caller (mp__robust_mutex_take/try) then marks the mutex
 * consistent, and wakes everyone (the dead one may have committed without
 * waking anyone). */
void mp__queue_list_repair(void *arg) {
  mp_queue *q = arg;
  struct list *l = &q->s->u.l;
  MP__LOG(MP_LOG_INFO, "queue: a process died inside a LIFO or priority queue operation; "
                       "it was undone");
  mp__journal_replay(&l->log_n, l->log, LOG_MAX);
  MP__CRASH(QUEUE_LIST_REPAIR_REPLAYED);
}

static int list_lock(mp_queue *q, wctx *w, bool (*worth)(mp_queue *)) {
  int r = mutex_take(&q->s->u.l.mutex, w, worth, q, mp__queue_list_repair);
  if (MP__UNLIKELY(r == 1)) {
    mp__queue_wake_all(q);
    r = 0;
  }
  return r;
}

/* ------------------------------------------------------------ 3. put and get */

static inline struct prec *recs(struct list *l) { return (struct prec *)(uintptr_t)l->arr; }

static void rec_set(struct list *l, uint64_t i, const struct prec *v) {
  struct prec *p = &recs(l)[i];
  jset(l, (uint64_t *)&p->prio, (uint64_t)v->prio);
  jset(l, &p->seq, v->seq);
  jset(l, &p->data, v->data);
  jset(l, &p->len, v->len);
}

static inline bool before(const struct prec *a, const struct prec *b) {
  return a->prio < b->prio || (a->prio == b->prio && a->seq < b->seq);
}

/* With the mutex held: sleep (outside it) on `word` until it changes, then
 * lock again. Registered first, and the caller's condition was checked under
 * the mutex, so a change after the unlock cannot be missed. */
static int list_sleep(mp_queue *q, bool data_side, wctx *w) {
  struct qstate *s = q->s;
  _Atomic uint32_t *word = data_side ? &s->data_word : &s->space_word;
  _Atomic uint32_t *count = data_side ? &s->data_sleepers : &s->space_sleepers;
  struct reg *rg = data_side ? &s->data_reg : &s->space_reg;
  mp__queue_reg_add(rg, count);
  uint32_t snap = atomic_load(word);
  pthread_mutex_unlock(&s->u.l.mutex);
  int r = mp__queue_nap(word, snap, w, false);
  mp__queue_reg_del(rg, count);
  if (r < 0)
    return r;
  return list_lock(q, w, always);
}

int mp__queue_list_put(mp_queue *q, int64_t prio, const void *msg, size_t len, wctx *w) {
  struct list *l = &q->s->u.l;
  void *blk = mp_heap_alloc(len ? len : 1);
  if (!blk)
    return -ENOMEM;
  if (len)
    memcpy(blk, msg, len);
  MP__CRASH(QUEUE_LIST_PUT_COPIED);
  int r = list_lock(q, w, always);
  if (r < 0) {
    mp_heap_free(blk);
    return r;
  }
  while (!l->closed && q->maxsize && l->n >= q->maxsize) {
    if (nowait(w)) {
      r = -ETIMEDOUT;
      break;
    }
    if ((r = list_sleep(q, false, w)) < 0) {
      mp_heap_free(blk);
      return r; /* not locked */
    }
  }
  void *old = NULL;
  if (r == 0 && l->closed)
    r = -EPIPE;
  if (r == 0 && l->n == l->cap) {
    uint64_t ncap = l->cap ? l->cap * 2 : 16;
    struct prec *na = mp_heap_alloc(ncap * sizeof *na);
    if (!na) {
      r = -ENOMEM;
    } else {
      if (l->n)
        memcpy(na, recs(l), l->n * sizeof *na);
      MP__CRASH(QUEUE_LIST_PUT_GROWN);
      old = recs(l);
      jset(l, &l->arr, (uint64_t)(uintptr_t)na);
      jset(l, &l->cap, ncap);
    }
  }
  if (r == 0) {
    struct prec x = {prio, l->seq, (uint64_t)(uintptr_t)blk, len};
    uint64_t i = l->n;
    if (q->order == MP_QUEUE_PRIORITY) {
      while (i > 0) {
        uint64_t parent = (i - 1) / 2;
        if (!before(&x, &recs(l)[parent]))
          break;
        rec_set(l, i, &recs(l)[parent]);
        i = parent;
      }
    }
    rec_set(l, i, &x);
    jset(l, &l->n, l->n + 1);
    jset(l, &l->seq, l->seq + 1);
    jset(l, &l->puts, l->puts + 1);
  }
  jcommit(l);
  pthread_mutex_unlock(&l->mutex);
  MP__CRASH(QUEUE_LIST_PUT_UNLOCKED);
  if (r == 0) {
    mp_heap_free(old);
    wake_data(q);
  } else {
    mp_heap_free(blk);
  }
  return r;
}

static ssize_t list_take(mp_queue *q, void *buf, size_t cap, void **out, size_t *outlen,
                         enum take_mode mode, wctx *w) {
  struct list *l = &q->s->u.l;
  int r = list_lock(q, w, not_empty);
  if (r < 0)
    return r;
  while (l->n == 0) {
    if (l->closed) {
      r = -EPIPE;
      goto out;
    }
    if (nowait(w)) {
      r = -ETIMEDOUT;
      goto out;
    }
    if ((r = list_sleep(q, true, w)) < 0)
      return r; /* not locked */
  }
  struct prec top = q->order == MP_QUEUE_LIFO ? recs(l)[l->n - 1] : recs(l)[0];
  if (mode == TAKE_PEEK) {
    *outlen = top.len;
    goto out;
  }
  char *dst;
  if (mode == TAKE_ALLOC) {
    dst = malloc(top.len ? top.len : 1);
    if (!dst) {
      r = -ENOMEM;
      goto out;
    }
  } else {
    if (top.len > cap) {
      r = -EMSGSIZE;
      goto out;
    }
    dst = buf;
  }
  if (top.len)
    memcpy(dst, (void *)(uintptr_t)top.data, top.len);
  uint64_t m = l->n - 1;
  if (q->order == MP_QUEUE_PRIORITY && m > 0) {
    struct prec x = recs(l)[m];
    uint64_t i = 0;
    for (;;) {
      uint64_t c = 2 * i + 1;
      if (c >= m)
        break;
      if (c + 1 < m && before(&recs(l)[c + 1], &recs(l)[c]))
        c++;
      if (!before(&recs(l)[c], &x))
        break;
      rec_set(l, i, &recs(l)[c]);
      i = c;
    }
    rec_set(l, i, &x);
  }
  jset(l, &l->n, m);
  jcommit(l);
  pthread_mutex_unlock(&l->mutex);
  MP__CRASH(QUEUE_LIST_GET_UNLOCKED);
  mp_heap_free((void *)(uintptr_t)top.data);
  wake_space(q);
  if (mode == TAKE_ALLOC) {
    *out = dst;
    *outlen = top.len;
    return 0;
  }
  return (ssize_t)top.len;
out:
  pthread_mutex_unlock(&l->mutex);
  return r;
}

/* A list's get, from queue_ring.c's take(), its arguments checked. */
ssize_t mp__queue_list_get(mp_queue *q, void *buf, size_t cap, void **out, size_t *outlen,
                           enum take_mode mode, double timeout) {
  wctx w = {.timeout = timeout};
  return closed_code(q, list_take(q, buf, cap, out, outlen, mode, &w));
}

MP_EXPORT int mp_queue_put_priority(mp_queue *q, int64_t priority, const void *msg, size_t len,
                                    double timeout) {
  int r = put_checks(q, msg, len, timeout);
  if (r < 0)
    return r;
  if (q->order != MP_QUEUE_PRIORITY)
    return -EINVAL;
  wctx w = {.timeout = timeout};
  return (int)closed_code(q, mp__queue_list_put(q, priority, msg, len, &w));
}

/* ------------------------------------------------------------ 4. counters, close, free */

/* mp_queue_task_done() of a list (queue.c): counted under the mutex. */
int mp__queue_list_task_done(mp_queue *q) {
  struct list *l = &q->s->u.l;
  wctx w = {.timeout = MP_FOREVER};
  int r = list_lock(q, &w, always);
  if (r < 0)
    return r;
  r = 0;
  if (l->done >= l->puts)
    r = -EOVERFLOW;
  else
    jset(l, &l->done, l->done + 1);
  jcommit(l);
  pthread_mutex_unlock(&l->mutex);
  return r;
}

/* A zero count of unfinished tasks seen without the mutex, confirmed under
 * it (queue.c, all_done()): 1, 0, or a negative errno. */
int mp__queue_list_all_done(mp_queue *q, wctx *w) {
  struct list *l = &q->s->u.l;
  int r = list_lock(q, w, always);
  if (r < 0)
    return r;
  r = l->done >= l->puts;
  pthread_mutex_unlock(&l->mutex);
  return r;
}

int mp__queue_list_close(mp_queue *q) {
  struct list *l = &q->s->u.l;
  wctx w = {.timeout = MP_FOREVER};
  int r = list_lock(q, &w, always);
  if (r < 0)
    return r;
  jset(l, &l->closed, 1);
  jcommit(l);
  pthread_mutex_unlock(&l->mutex);
  return 0;
}

/* Take the mutex once, which replays a dead holder's journal and waits out a
 * live one's operation (queue.c, settle()). */
int mp__queue_list_settle(mp_queue *q) {
  wctx w = {.timeout = MP_FOREVER};
  int r = list_lock(q, &w, always);
  if (r < 0)
    return r;
  pthread_mutex_unlock(&q->s->u.l.mutex);
  return 0;
}

/* mp_queue_free() of a list, past its claim, with the mutex held: return the
 * queued payloads and the array to the heap. */
void mp__queue_list_free_contents(mp_queue *q) {
  struct list *l = &q->s->u.l;
  for (uint64_t i = 0; i < l->n; i++)
    mp_heap_free((void *)(uintptr_t)recs(l)[i].data);
  mp_heap_free(recs(l));
}
