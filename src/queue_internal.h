/* SPDX-License-Identifier: MIT */
/*
 * Queues, inside: the layout every queue file shares and the small tools of
 * their hot paths (static inline here, because a put or a get must not turn
 * into calls across files).
 *
 * Where each part of a queue lives:
 *   queue.c           constructors, counts (qsize, empty, full), close,
 *                     shutdown, JoinableQueue counters, watching a queue from
 *                     mp_connection_wait(), mp_queue_free()
 *   queue_ring.c      the FIFO ring: its protocol and kill table (read this
 *                     first), zero-copy blocks, producers, consumers, and the
 *                     public put/get entry points of every kind of queue
 *   queue_list.c      LIFO and priority lists: their protocol, kill table and
 *                     journal (journal.h), mp_queue_put_priority()
 *   queue_sleepers.c  sleeping with one deadline, the sleeper registries, waking
 *                     and healing after a dead sleeper
 * The words of struct qstate are described, with who writes which, in the
 * FIFO protocol comment (queue_ring.c, section 1); its kill table also covers
 * the steps shared by both kinds (registered sleepers, close, shutdown,
 * task_done, free).
 *
 * Map of this header: 1. layout; 2. ring words; 3. waits with one deadline,
 * robust mutexes; 4. waking; 5. lockless looks; 6. entry points between files.
 */
#ifndef MP_QUEUE_INTERNAL_H
#define MP_QUEUE_INTERNAL_H

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "crash.h"
#include "internal.h"
#include "journal.h"

/* ------------------------------------------------------------ 1. layout */

#define RING_MIN ((size_t)1 << 10)
#define RING_MAX ((size_t)1 << 30)
#define HDR 8
/* The longest a sleeper sleeps before it looks again: it bounds how long a
 * peer killed between its commit and its wake can delay anyone. */
#define RECHECK_NS ((int64_t)100 * 1000 * 1000)
/* The sleeper words: bit 0, the FIFO mutex holder asleep; bits 1..NSLOTS,
 * registered sleepers, one per slot; above, sleepers that found no slot. */
#define NSLOTS 16
#define SLOT_BIT(i) ((uint32_t)2 << (i))
#define EXTRA_ONE ((uint32_t)1 << (NSLOTS + 1))
#define CLEANING ((uint64_t)1 << 63) /* a slot being cleaned (tids are below 2^31) */
#define LOG_MAX 288                  /* the most words one list operation writes: 65 records + 10 */

#define POS_MASK ((uint64_t)0xffffffff)
#define INSTREAM ((uint64_t)1 << 32)
#define CLOSED ((uint64_t)1 << 33)
#define MSG_SHIFT 34
#define MSG_ONE ((uint64_t)1 << MSG_SHIFT)
#define MSG_MASK ((uint32_t)0x3fffffff)

enum { K_MSG = 1, K_BEGIN, K_MORE, K_END, K_ABORT, K_BLOCK };

/* A BLOCK record's payload: the block's address and length (queue_ring.c,
 * section 1b), then, for a copied message, padding never written or read:
 * the header's length says how far the record reaches. */
#define BLOCK_PAYLOAD 16
/* A copied message's BLOCK record pads its payload to 1/2^HEAP_PAD_SHIFT of
 * the message (queue_ring.c, section 1b: why this ratio). */
#define HEAP_PAD_SHIFT 4

enum take_mode { TAKE_BUF, TAKE_ALLOC, TAKE_PEEK, TAKE_BLOCK };

/* Registered sleepers that may die asleep: (tid << 32 | pid) per slot. */
struct reg {
  _Atomic uint64_t slot[NSLOTS];
  _Atomic uint32_t idle; /* wakes that woke nobody, to pace scans */
};

/* Each side's mutex and private cache on a line of its own, away from the
 * word the other side reads. */
struct fifo {
  _Alignas(64) pthread_mutex_t prod_mutex;
  uint64_t head_cache; /* a recent head: prod_mutex holder only */
  /* put_block's hand-over record (queue_ring.c, section 1b): prod_mutex
   * holder only */
  void *pblk;
  uint64_t pblk_pos;
  _Alignas(64) _Atomic uint64_t tail;
  _Alignas(64) pthread_mutex_t cons_mutex;
  uint64_t tail_cache; /* a recent tail, never behind head: cons_mutex holder only */
  /* a get's hand-over record (queue_ring.c, section 1b): cons_mutex holder
   * only */
  void *cblk;
  uint64_t cblk_pos;
  uint64_t cblk_copy;
  _Alignas(64) _Atomic uint64_t head;
  _Alignas(64) _Atomic uint32_t done; /* tasks done, mod 2^30 */
};

struct prec {
  int64_t prio;
  uint64_t seq;
  uint64_t data; /* heap block of the payload */
  uint64_t len;
};

struct list {
  pthread_mutex_t mutex;
  /* Written through jset() by the holder; read without it via atomics. */
  uint64_t n, cap, arr, seq, puts, done, closed;
  uint64_t log_n;
  mp__journal_entry log[LOG_MAX];
};

/* The mutable shared state, 64-aligned inside its heap block; a FIFO ring
 * follows it. */
struct qstate {
  /* Read by every operation, written only by sleepers. */
  _Alignas(64) _Atomic uint32_t data_sleepers;
  _Atomic uint32_t space_sleepers;
  /* Written when someone wakes someone. */
  _Alignas(64) _Atomic uint32_t data_word;
  _Atomic uint32_t space_word;
  _Atomic uint32_t join_word;
  _Atomic uint32_t join_waiters; /* like data_sleepers: mp_queue_join() callers */
  /* 1 once mp_queue_shutdown() began: a closed queue then answers
   * -ESHUTDOWN instead of -EPIPE. Set before CLOSED, so a shutdown killed in
   * between leaves an open queue that a second shutdown closes. */
  _Atomic uint32_t shut;
  _Alignas(64) struct reg data_reg;
  struct reg space_reg;
  struct reg join_reg;
  union {
    struct fifo f;
    struct list l;
  } u;
};

/* The handle: constants only, written before the handle is published. */
struct mp_queue {
  mp__tag tag;
  uint32_t order;
  uint32_t joinable;
  uint32_t mask; /* cap - 1 (FIFO) */
  uint64_t cap;
  uint64_t chunk_max;
  uint64_t maxsize;
  struct qstate *s;
  char *ring;
  void *block; /* the heap block holding s and ring */
};

_Static_assert(sizeof(_Atomic uint64_t) == 8, "64-bit atomics");

/* ------------------------------------------------------------ 2. ring words */

static inline uint32_t pos_of(uint64_t w) { return (uint32_t)w; }
static inline uint32_t msgs_of(uint64_t w) { return (uint32_t)(w >> MSG_SHIFT); }
static inline uint64_t rec_size(uint64_t payload) { return HDR + ((payload + 7) & ~(uint64_t)7); }
static inline uint64_t advance(uint64_t w, uint64_t bytes) {
  return (w & ~POS_MASK) | (uint32_t)(pos_of(w) + (uint32_t)bytes);
}
static inline uint32_t fifo_count(uint64_t t, uint64_t h) {
  return (msgs_of(t) + (uint32_t)((t & INSTREAM) != 0) - msgs_of(h)) & MSG_MASK;
}
static inline uint32_t fifo_used(uint64_t t, uint64_t h) { return pos_of(t) - pos_of(h); }

/* Whether a record of `need` bytes fits now (and, with `slot`, the count is
 * below maxsize), judged against head h. */
static inline bool room(const mp_queue *q, uint64_t t, uint64_t h, uint64_t need, bool slot) {
  if (q->cap - fifo_used(t, h) < need)
    return false;
  return !slot || !q->maxsize || fifo_count(t, h) < q->maxsize;
}

static inline bool fifo_drained(uint64_t t, uint64_t h) {
  return pos_of(t) == pos_of(h) && (t & CLOSED) && !(t & INSTREAM);
}

/* A list's word, read without its mutex (a hint: see queue_list.c). */
static inline uint64_t ld(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }

/* ------------------------------------------------------------ 3. waits, mutexes */

/* A public call's timeout, turned into its deadline at the first wait, so the
 * fast paths read no clock. */
typedef struct wctx {
  double timeout;
  bool have;
  mp__deadline d;
} wctx;

static inline bool nowait(const wctx *w) { return w->timeout == 0; }

static inline const mp__deadline *deadline(wctx *w) {
  if (!w->have) {
    mp__deadline_init(&w->d, w->timeout); /* NaN was refused at entry */
    w->have = true;
  }
  return &w->d;
}

/* Lock a robust mutex within the caller's time: try, spin a little, then
 * block until the deadline, in slices of at most 0.1 s (a process killed
 * inside the mutex can leave its sleepers unwoken: see lock.c). With
 * MP_NOWAIT, spin only when worth(q) says what the caller wants is there (the
 * holder is then about to leave). A dead previous holder's leftovers are
 * repaired by repair(q) before the mutex is marked consistent, on every path
 * (mp__robust_mutex_try/take). Returns 0; 1 when the previous holder died
 * (held, repaired, consistent: the caller may have more to do, such as waking
 * everyone); -ETIMEDOUT; another negative errno. */
static inline int mutex_take(pthread_mutex_t *m, wctx *w, bool (*worth)(mp_queue *), mp_queue *q,
                             void (*repair)(void *)) {
  int r = mp__robust_mutex_try(m, repair, q);
  if (MP__UNLIKELY(r == -EBUSY) && (!nowait(w) || worth(q))) {
#ifdef __GLIBC__
    for (int i = 0; i < MP__SPIN_LIMIT && r == -EBUSY; i++) {
      mp__cpu_relax();
      if (__atomic_load_n(&m->__data.__lock, __ATOMIC_RELAXED) == 0)
        r = mp__robust_mutex_try(m, repair, q);
    }
#endif
    /* In slices: a kill inside the mutex may lose its wake-up (lock.c). */
    if (r == -EBUSY && !nowait(w))
      r = mp__robust_mutex_take(m, deadline(w), repair, q);
  }
  if (r == -EBUSY)
    r = -ETIMEDOUT;
  return MP__UNLIKELY(r == -EOWNERDEAD) ? 1 : r;
}

/* ------------------------------------------------------------ 4. waking */

/* A wake found nobody asleep although a sleeper is recorded (queue_sleepers.c). */
void mp__queue_heal(mp_queue *q, uint32_t sl, bool data_side);

/* After a commit that gives consumers something (or a close): wake the sleeper
 * recorded, if any. seq_cst load: pairs with the sleeper's seq_cst bit set. */
static inline void wake_data(mp_queue *q) {
  struct qstate *s = q->s;
  uint32_t sl = atomic_load(&s->data_sleepers);
  if (MP__LIKELY(sl == 0))
    return;
  atomic_fetch_add(&s->data_word, 1);
  if (mp__futex_wake(&s->data_word, sl > 1 ? INT_MAX : 1) == 0)
    mp__queue_heal(q, sl, true);
}

static inline void wake_space(mp_queue *q) {
  struct qstate *s = q->s;
  uint32_t sl = atomic_load(&s->space_sleepers);
  if (MP__LIKELY(sl == 0))
    return;
  atomic_fetch_add(&s->space_word, 1);
  if (mp__futex_wake(&s->space_word, sl > 1 ? INT_MAX : 1) == 0)
    mp__queue_heal(q, sl, false);
}

/* ------------------------------------------------------------ 5. lockless looks */

/* The words as they are, without repairs: hints for a spinner, and the
 * public counts once settled (queue.c). A message counted while its producer
 * streams it, and a list's words while their writer holds the mutex
 * (queue_list.c, section 1). */
static inline uint64_t count_now(mp_queue *q) {
  if (q->order == MP_QUEUE_FIFO) {
    /* head first: tail only grows, so the difference is never negative */
    uint64_t h = atomic_load(&q->s->u.f.head);
    return fifo_count(atomic_load(&q->s->u.f.tail), h);
  }
  return ld(&q->s->u.l.n);
}

static inline bool full_now(mp_queue *q) {
  if (q->order == MP_QUEUE_FIFO) {
    uint64_t h = atomic_load(&q->s->u.f.head), t = atomic_load(&q->s->u.f.tail);
    return !room(q, t, h, HDR, true);
  }
  return q->maxsize && ld(&q->s->u.l.n) >= q->maxsize;
}

static inline bool always(mp_queue *q) {
  (void)q;
  return true;
}
static inline bool not_empty(mp_queue *q) { return count_now(q) != 0; }
static inline bool not_full(mp_queue *q) { return !full_now(q); }

/* A closed queue's -EPIPE is -ESHUTDOWN once mp_queue_shutdown() began. */
static inline ssize_t closed_code(mp_queue *q, ssize_t r) {
  return MP__UNLIKELY(r == -EPIPE) && atomic_load(&q->s->shut) ? -ESHUTDOWN : r;
}

static inline int put_checks(mp_queue *q, const void *msg, size_t len, double timeout) {
  if (!mp__tag_ok(q, MP__TAG_QUEUE) || (!msg && len) || isnan(timeout))
    return -EINVAL;
  if (len > (size_t)SSIZE_MAX)
    return -EMSGSIZE;
  return 0;
}

/* ------------------------------------------------------------ 6. between files */

/* queue_sleepers.c */
/* Sleep on word while it holds snap: until woken, the caller's deadline
 * (unless `endless`), or RECHECK_NS from now. Returns -ETIMEDOUT only when
 * the caller's deadline has passed; 0 otherwise (the caller looks again). */
int mp__queue_nap(_Atomic uint32_t *word, uint32_t snap, wctx *w, bool endless);
void mp__queue_reg_add(struct reg *r, _Atomic uint32_t *word);
void mp__queue_reg_del(struct reg *r, _Atomic uint32_t *word);
void mp__queue_reg_scan(struct reg *r, _Atomic uint32_t *word);
void mp__queue_wake_all(mp_queue *q);

/* queue_ring.c */
#ifdef MP_CRASH_POINTS
/* Non-zero: a FIFO put of a message longer than chunk_max acts as if the
 * heap had no room for its copy, and streams it through the ring (the crash
 * suite's way to reach the streaming path and its crash points). */
extern _Atomic int mp__queue_heap_refused;
#endif
/* Repairs of a dead holder's leftovers, for mp__robust_mutex_take/try (their
 * argument is the mp_queue). */
void mp__queue_fifo_prod_repair(void *q);
void mp__queue_fifo_cons_repair(void *q);
/* A consumer, or a look at the counts, behind a stream: end it if its
 * producer died. */
void mp__queue_fifo_check_producer(mp_queue *q);
/* mp_queue_free(), past its claim: free the blocks of queued BLOCK records. */
void mp__queue_fifo_free_blocks(mp_queue *q);
/* Every kind's get (mp_queue_shutdown() drains with it). */
ssize_t mp__queue_take(mp_queue *q, void *buf, size_t cap, void **out, size_t *outlen,
                       enum take_mode mode, double timeout);

/* queue_list.c */
void mp__queue_list_repair(void *q);
int mp__queue_list_put(mp_queue *q, int64_t prio, const void *msg, size_t len, wctx *w);
ssize_t mp__queue_list_get(mp_queue *q, void *buf, size_t cap, void **out, size_t *outlen,
                           enum take_mode mode, double timeout);
int mp__queue_list_task_done(mp_queue *q);
int mp__queue_list_all_done(mp_queue *q, wctx *w);
int mp__queue_list_close(mp_queue *q);
int mp__queue_list_settle(mp_queue *q);
void mp__queue_list_free_contents(mp_queue *q);

#endif /* MP_QUEUE_INTERNAL_H */
