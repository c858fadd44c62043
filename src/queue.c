/* SPDX-License-Identifier: MIT */
/*
 * Queues: FIFO rings of bytes, LIFO and priority lists, all in the family heap.
 *
 * Map of this file:
 *   1. the FIFO protocol (read this first); 1b. zero-copy blocks
 *   2. the LIFO / priority protocol
 *   3. layout
 *   4. small tools: waits with one deadline, robust mutexes, sleeper registries
 *   5. FIFO producers
 *   6. FIFO consumers
 *   7. LIFO and priority lists
 *   8. JoinableQueue counters
 *   9. watching a queue from mp_connection_wait()
 *  10. public entry points
 *
 * ---------------------------------------------------------------------------
 * 1. FIFO. A ring of `cap` bytes (a power of two) and two 64-bit words:
 *
 *     tail  [ pos:32 | INSTREAM:1 | CLOSED:1 | msgs:30 ]   producers' side
 *     head  [ pos:32 |     0      |    0     | msgs:30 ]   consumers' side
 *
 * `pos` counts bytes modulo 2^32 (the ring offset is pos & (cap - 1)); `msgs`
 * counts whole messages modulo 2^30. Bytes [head.pos, tail.pos) hold committed
 * records; the rest of the ring is free. Message count:
 * qsize = tail.msgs + tail.INSTREAM - head.msgs (mod 2^30), derived from the two
 * words, never kept in a third one.
 *
 * Records are 8-aligned: an 8-byte header (payload length:32, kind:32) and the
 * payload, padded to 8; a payload may wrap around the ring's end, a header
 * never does. Kinds:
 *   MSG    a whole message.
 *   BEGIN  the first chunk of a streamed message: an 8-byte total length, then
 *          data. Never the last chunk (only messages above chunk_max stream).
 *   MORE   a middle chunk.          END    the last chunk.
 *   ABORT  (empty) the stream it ends is discarded.
 *
 * Who writes what:
 *   - tail and the free bytes: the holder of prod_mutex (a robust mutex), and
 *     CLOSED also mp_queue_close(), without the mutex; hence every tail update
 *     is a compare-and-swap, which fails only when CLOSED appeared.
 *   - head and the committed bytes' release: the holder of cons_mutex.
 *   - data_sleepers bit 0: the holder of cons_mutex, while it sleeps for data;
 *     bit 1 + i: the watcher (mp__queue_watch_begin) in slot i of data_reg,
 *     set and cleared by that watcher, or cleared by reg_scan() once it is
 *     dead; the bits above count watchers that found no free slot.
 *   - space_sleepers bit 0: the holder of prod_mutex, while it sleeps for room.
 *   - join_waiters: as data_sleepers' bits 1.. and count, for mp_queue_join()
 *     callers registered in join_reg (bit 0 unused).
 *   - data_word / space_word / join_word: futex words, bumped by whoever wakes.
 *   - done (JoinableQueue): mp_queue_task_done(), by compare-and-swap.
 *
 * A put (whole message): lock prod_mutex; wait for room (free bytes, and the
 * count below maxsize); write header and payload into the free bytes; commit
 * with ONE compare-and-swap of tail (pos += record, msgs += 1); if
 * data_sleepers is non-zero, bump data_word and wake; unlock. A get: lock
 * cons_mutex; wait until tail.pos != head.pos; copy the record out; commit with
 * ONE store of head (pos += record, msgs += 1); if space_sleepers is non-zero,
 * bump space_word and wake; unlock. The payload is copied before the commit on
 * both sides, so a record is in the queue exactly when the commit says so.
 *
 * Streaming (message longer than chunk_max = cap / 4, not fitting at once):
 * the producer keeps prod_mutex for the whole message and commits chunk after
 * chunk as room appears: BEGIN (sets INSTREAM), MORE..., END (clears INSTREAM,
 * msgs += 1). Every chunk but the last leaves 8 free bytes behind it, so an
 * ABORT always fits. On timeout or close mid-way it commits ABORT (clears
 * INSTREAM) and fails. The consumer that takes BEGIN keeps cons_mutex and
 * takes the chunks as they come, committing head after each (msgs += 1 at
 * END); at ABORT it throws the partial copy away. A consumer that finds a MORE,
 * END or ABORT at the head (the one that took BEGIN died) skips records up to
 * and including the END or ABORT.
 *
 * Waking without lost wake-ups: a sleeper sets its bit (seq_cst
 * read-modify-write), snapshots the futex word, re-checks the other side's word,
 * and sleeps only if nothing changed; the other side commits (seq_cst), then
 * reads the bit (seq_cst). In the single total order of seq_cst operations one
 * of the two sees the other. Before sleeping a waiter spins MP__SPIN_LIMIT
 * times; only the mutex holder sleeps on the word (the others sleep in the
 * mutex), so a blocked get or put costs no CPU. Sleeps last at most RECHECK_NS:
 * see the crash table.
 *
 * A SIGKILL at each step, the crash point that kills there in brackets, and
 * the repair. Whoever takes a mutex from a dead holder (EOWNERDEAD) repairs
 * first: prod_repair() clears space_sleepers bit 0, ends a stream left open
 * and wakes consumers; cons_repair() clears data_sleepers bit 0 and wakes
 * producers. A repairer killed in its turn, after its wake and before marking
 * the mutex consistent [queue.prod_repair.woken, queue.cons_repair.woken],
 * leaves the mutex owner-dead again; the next one repeats the repair, which
 * is idempotent.
 *   producer asleep for room, space_sleepers bit 0 set [queue.put.asleep]:
 *     consumers' wakes find nobody; every 64th tries prod_mutex and repairs,
 *     and so does the next producer.
 *   producer, record written, not committed [queue.put.written]: the free
 *     bytes hold garbage nobody reads; the message was not put.
 *   producer, committed, nobody woken [queue.put.committed]: the message is
 *     in the queue, whole, and counted. A consumer asleep may have missed its
 *     wake: prod_repair() wakes, and sleeps end within RECHECK_NS anyway.
 *   producer, put done, prod_mutex still held [queue.put.finished]: only the
 *     mutex needs its repair.
 *   streaming producer, each chunk in turn written [queue.stream.written] or
 *     committed and not announced [queue.stream.committed]: until END's
 *     commit the message was not put (tail.INSTREAM is set from BEGIN's);
 *     prod_repair() commits an ABORT at tail.pos (its 8 bytes are reserved)
 *     and consumers throw the partial message away there. Nobody may come to
 *     hold prod_mutex, so whoever finds tail.INSTREAM tries prod_mutex and
 *     repairs on EOWNERDEAD: a consumer inside the stream after each sleep
 *     (at most RECHECK_NS), a get that meets BEGIN with too small a buffer
 *     or a peek (skip_aborted()), qsize(), empty() and full() (settle()). A
 *     message never put is never counted, sized, or refused with -EMSGSIZE;
 *     an aborted stream is skipped whole. After END's commit the message is
 *     in, as a whole one.
 *   producer ending a stream with ABORT (after a timeout or close, or in a
 *     repair), ABORT written [queue.abort.written]: INSTREAM is still set and
 *     the next repair writes it again at the same place; committed, nobody
 *     woken [queue.abort.committed]: sleepers look again within RECHECK_NS.
 *   consumer asleep for data, data_sleepers bit 0 set [queue.get.asleep]: a
 *     producer whose wake finds no sleeper (every 64th time) tries cons_mutex
 *     and repairs, and so does the next consumer.
 *   consumer, record copied, not committed [queue.get.copied] (a whole
 *     message or a stream's BEGIN): the record stays at the head, whole, for
 *     the next holder of cons_mutex; the copy was in the dead process only.
 *   consumer, head committed, producers not woken [queue.get.committed]:
 *     past a whole message or an END it took the message with it ("a
 *     consumer died holding it"), never delivered twice. Past BEGIN or a
 *     MORE (each chunk in turn; or a MORE or END copied and not committed
 *     [queue.get.chunk_copied]) head points inside the message: the next
 *     consumer skips the rest up to and including its END (msgs += 1 there)
 *     or ABORT, and the message is lost with its taker. Either way a
 *     producer asleep for room may have missed its wake: cons_repair() wakes,
 *     sleeps end within RECHECK_NS. A message a dead consumer took stays an
 *     unfinished task for join(), as in Python.
 *   consumer, get done, cons_mutex still held [queue.get.finished]: only the
 *     mutex needs its repair.
 *   close, CLOSED set, nobody woken [queue.close.marked]: sleepers see it
 *     within RECHECK_NS. Concurrent commits either precede it (their message
 *     is delivered) or fail with -EPIPE.
 *   shutdown, `shut` set, CLOSED not yet [queue.shutdown.flagged]: the queue
 *     is still open (only a closed queue's code depends on `shut`); a second
 *     shutdown finishes it. An immediate shutdown killed while it drops the
 *     queued messages leaves the rest queued, for gets to drain; the one it
 *     had taken and not yet marked done stays an unfinished task for join(),
 *     as a message any dead consumer took.
 *   task_done(), counted, joiners not woken [queue.task_done.counted]:
 *     joiners look again within RECHECK_NS.
 *   registered sleeper (a watcher of mp_connection_wait(), a joiner, a list
 *     getter or putter): killed with its slot taken and its bit not yet set
 *     [queue.reg.slot_taken], registered [queue.reg.registered], or with its
 *     bit cleared and its slot not yet freed [queue.reg.bit_cleared]: the
 *     slot names a dead pid. Wakers that keep waking nobody scan the slots
 *     every 64th time and drop those of ended processes, zombies not yet
 *     reaped included (reg_scan(), pid_ended()), and so does
 *     mp_queue_free(); a dead joiner is dropped only there, and until then
 *     each task_done() that ends the work costs one futex wake. A cleaner
 *     killed after claiming a slot [queue.reg.claimed] leaves it marked with
 *     its own pid: the next scan claims it from the dead cleaner. A sleeper
 *     beyond the NSLOTS slots killed while registered costs one futex wake
 *     per put from then on, never correctness (mp_queue_free() answers
 *     -EBUSY from then on).
 *   mp_queue_free() (either kind of queue), the handle claimed (its tag
 *     marked freed, the mutexes held) [queue.free.claimed], or the ring or
 *     list state returned to the heap [queue.free.block_freed]: from the
 *     claim on the handle answers -EINVAL to everyone, so no retried free
 *     returns a block twice; what the dead freer had not returned yet stays
 *     allocated.
 *   anyone killed inside a robust mutex (holder or sleeper): besides the
 *     repairs above, its death may swallow the mutex's wake-up (lock.c), so
 *     nobody sleeps in one longer than 0.1 s at a time.
 *
 * ---------------------------------------------------------------------------
 * 1b. Blocks: zero-copy messages (FIFO queues only). mp_queue_put_block()
 * hands a family-heap block over by reference: its record (kind BLOCK) holds
 * only the block's address and length (16 bytes of payload), and
 * mp_queue_get_block() returns that same block, whatever its size. The other
 * gets copy a BLOCK record's bytes out and free the block; get_block of a
 * MSG or streamed message copies it into a fresh heap block.
 *
 * Ownership moves in three stages, and at every instant exactly one party
 * owns the block: the producer until its commit of tail, the queue (the
 * record) until a consumer's commit of head, then that consumer. The two
 * commits are the existing single atomic steps; what makes a kill around them
 * harmless is one hand-over record per side, written only by the holder of
 * that side's mutex and read by the next holder when it repairs (EOWNERDEAD):
 *   prod side: pblk (the block being put, NULL when none) and pblk_pos
 *     (tail.pos when it was recorded);
 *   cons side: cblk (a block being taken or a heap copy being filled),
 *     cblk_pos (head.pos of its record) and cblk_copy (1: cblk is a copy that
 *     nobody else knows, 0: it is the record's block).
 * pblk_pos and cblk_pos/cblk_copy are written before the address, so a
 * non-NULL address always comes with its own position.
 * Repairs (fifo_prod_repair, fifo_cons_repair; idempotent, like the rest)
 * first take the heap's mutex once (heap_settle()): a holder killed inside
 * the heap step that writes cblk (heap.alloc.*, heap.free.*) leaves the word
 * as the heap's journal will have it only after that journal is replayed.
 *   pblk set, tail.pos == pblk_pos: the put did not happen and its caller is
 *     dead: free the block (mp__heap_free_from: freed and pblk cleared in one
 *     journaled heap step). pblk set, tail moved: the record is committed,
 *     the queue owns the block: clear pblk.
 *   cblk set, cblk_copy: free the copy (the message, if head did not move,
 *     stays first in the queue). cblk set, not a copy, head.pos == cblk_pos:
 *     the record is still at the head: clear cblk, the next get takes it.
 *     Head moved: the dead consumer took the message ("a consumer died
 *     holding it", as for copied messages): free the block, never deliver it.
 *
 * A SIGKILL at each step [crash point]:
 *   put_block, pblk recorded [queue.block.put.recorded] or the record written
 *     [queue.block.put.written]: not put; the repair frees the block.
 *   put_block, committed [queue.block.put.committed]: put; the repair clears
 *     pblk; the message is delivered once.
 *   put_block, pblk cleared, prod_mutex held [queue.block.put.cleared]: put;
 *     only the mutex needs its repair.
 *   get of a BLOCK record, cblk recorded, head not moved
 *     [queue.block.get.recorded]: the message stays first, delivered to the
 *     next consumer, its block untouched.
 *   get of a BLOCK record, head committed [queue.get.committed]: the dead
 *     consumer took the message; the repair frees its block. A copying get
 *     that dies inside its own free of the block leaves the heap's journal to
 *     decide (heap.free.*): cblk still names the block, or it is freed and
 *     cblk cleared; the repair finishes either.
 *   get_block of a copied message, the heap copy allocated and recorded
 *     [queue.block.copy.allocated] (the heap records it in cblk in the
 *     allocation's own journaled step, heap.alloc.*), or filled
 *     [queue.get.copied]: the repair frees the copy; the message stays.
 *   get_block, cblk cleared [queue.block.get.handed]: the block is the
 *     caller's. From here on it is a heap block like any other: a process
 *     that dies holding heap blocks leaks them (heap.c), and so does a
 *     consumer killed after its get_block returned. That is the one place a
 *     block leaks; no block is ever delivered twice or freed twice.
 *   mp_queue_free() frees the blocks of the BLOCK records still queued.
 *
 * ---------------------------------------------------------------------------
 * 2. LIFO and priority queues: an array of records (priority, sequence, heap
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
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "crash.h"
#include "internal.h"

/* ------------------------------------------------------------ 3. layout */

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

/* A BLOCK record's payload: the block's address and length (section 1b). */
#define BLOCK_PAYLOAD 16

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
  /* put_block's hand-over record (section 1b): prod_mutex holder only */
  void *pblk;
  uint64_t pblk_pos;
  _Alignas(64) _Atomic uint64_t tail;
  _Alignas(64) pthread_mutex_t cons_mutex;
  uint64_t tail_cache; /* a recent tail, never behind head: cons_mutex holder only */
  /* a get's hand-over record (section 1b): cons_mutex holder only */
  void *cblk;
  uint64_t cblk_pos;
  uint64_t cblk_copy;
  _Alignas(64) _Atomic uint64_t head;
  _Alignas(64) _Atomic uint32_t done; /* tasks done, mod 2^30 */
};

struct jentry {
  uint64_t *addr;
  uint64_t old;
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
  struct jentry log[LOG_MAX];
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

/* ------------------------------------------------------------ 4. tools */

/* A public call's timeout, turned into its deadline at the first wait, so the
 * fast paths read no clock. */
typedef struct wctx {
  double timeout;
  bool have;
  mp__deadline d;
} wctx;

static inline bool nowait(const wctx *w) { return w->timeout == 0; }

static const mp__deadline *deadline(wctx *w) {
  if (!w->have) {
    mp__deadline_init(&w->d, w->timeout); /* NaN was refused at entry */
    w->have = true;
  }
  return &w->d;
}

static int64_t ts_ns(const struct timespec *ts) {
  return (int64_t)ts->tv_sec * 1000000000 + ts->tv_nsec;
}

/* Sleep on word while it holds snap: until woken, the caller's deadline (unless
 * `endless`), or RECHECK_NS from now. Returns -ETIMEDOUT only when the caller's
 * deadline has passed; 0 otherwise (the caller looks again). */
static int nap(_Atomic uint32_t *word, uint32_t snap, wctx *w, bool endless) {
  int64_t at = mp__now_ns() + RECHECK_NS;
  bool capped = true;
  if (!endless) {
    const mp__deadline *d = deadline(w);
    if (!d->forever && ts_ns(&d->at) <= at) {
      at = ts_ns(&d->at);
      capped = false;
    }
  }
  mp__deadline sub = {.forever = false, .nowait = false};
  sub.at.tv_sec = (time_t)(at / 1000000000);
  sub.at.tv_nsec = (long)(at % 1000000000);
  int r = mp__futex_wait(word, snap, &sub);
  if (r == -ETIMEDOUT)
    return capped ? 0 : -ETIMEDOUT;
  return r; /* 0, or -EFAULT/-EINVAL for a word that is not a queue's: fail, never spin */
}

/* Lock a robust mutex within the caller's time: try, spin a little, then
 * block until the deadline, in slices of at most 0.1 s (a process killed
 * inside the mutex can leave its sleepers unwoken: see lock.c). With
 * MP_NOWAIT, spin only when worth(q) says what the caller wants is there (the
 * holder is then about to leave). Returns 0; 1 when the previous holder died
 * (the caller holds it, repairs, then marks it consistent); -ETIMEDOUT;
 * another negative errno. */
static int mutex_take(pthread_mutex_t *m, wctx *w, bool (*worth)(mp_queue *), mp_queue *q) {
  int r = pthread_mutex_trylock(m);
  if (MP__UNLIKELY(r == EBUSY) && (!nowait(w) || worth(q))) {
#ifdef __GLIBC__
    for (int i = 0; i < MP__SPIN_LIMIT && r == EBUSY; i++) {
      mp__cpu_relax();
      if (__atomic_load_n(&m->__data.__lock, __ATOMIC_RELAXED) == 0)
        r = pthread_mutex_trylock(m);
    }
#endif
    /* In slices: a kill inside the mutex may lose its wake-up (lock.c). */
    if (r == EBUSY && !nowait(w))
      r = -mp__robust_mutex_lock(m, deadline(w));
  }
  if (r == EBUSY)
    r = ETIMEDOUT;
  if (MP__UNLIKELY(r == EOWNERDEAD))
    return 1;
  return -r;
}

static bool always(mp_queue *q) {
  (void)q;
  return true;
}
/* Lockless looks, without repairs: hints for a spinner (section 10). */
static uint64_t count_now(mp_queue *q);
static bool full_now(mp_queue *q);
static bool not_empty(mp_queue *q) { return count_now(q) != 0; }
static bool not_full(mp_queue *q) { return !full_now(q); }

static uint64_t reg_me(void) { return (uint64_t)(uint32_t)mp__tid() << 32 | (uint32_t)mp__pid(); }

/* Register the calling thread as a sleeper in *word: its slot first, then the
 * slot's bit, which is what wakers read; unregister in the reverse order. A
 * bit belongs to its slot's occupant, and setting or clearing it is
 * idempotent, so a process killed between the two steps leaves a slot with its
 * pid that reg_scan() cleans whatever the bit says. */
static void reg_add(struct reg *r, _Atomic uint32_t *word) {
  uint64_t me = reg_me();
  int i = 0;
  for (; i < NSLOTS; i++) {
    uint64_t z = 0;
    if (atomic_compare_exchange_strong(&r->slot[i], &z, me))
      break;
  }
  if (i < NSLOTS) {
    MP__CRASH(QUEUE_REG_SLOT_TAKEN);
    atomic_fetch_or(word, SLOT_BIT(i));
  } else {
    atomic_fetch_add(word, EXTRA_ONE);
  }
  MP__CRASH(QUEUE_REG_REGISTERED);
}

static void reg_del(struct reg *r, _Atomic uint32_t *word) {
  uint64_t me = reg_me();
  for (int i = 0; i < NSLOTS; i++) {
    if (atomic_load_explicit(&r->slot[i], memory_order_relaxed) == me) {
      atomic_fetch_and(word, ~SLOT_BIT(i));
      MP__CRASH(QUEUE_REG_BIT_CLEARED);
      atomic_store(&r->slot[i], 0);
      return;
    }
  }
  uint32_t w = atomic_load(word);
  while (w >= EXTRA_ONE) {
    if (atomic_compare_exchange_weak(word, &w, w - EXTRA_ONE))
      return;
  }
  /* Not registered (an unmatched end): nothing to undo. */
}

/* Whether process pid has ended: gone, or a zombie that its parent has not
 * reaped yet (kill(pid, 0) still succeeds on one, and a killed sleeper can
 * stay one for as long as its parent does not wait). A pidfd is readable
 * once its process has ended. */
static bool pid_ended(pid_t pid) {
  int fd = (int)syscall(SYS_pidfd_open, pid, 0); /* close-on-exec by default */
  if (fd < 0)
    return errno == ESRCH || (errno == ENOSYS && kill(pid, 0) < 0 && errno == ESRCH);
  struct pollfd p = {.fd = fd, .events = POLLIN};
  int r = poll(&p, 1, 0);
  close(fd);
  return r == 1;
}

/* Drop the registrations of processes that have ended. A cleaner first
 * claims the slot (its own identity with CLEANING set, which no registrant
 * matches), then clears the bit, then frees the slot: no newcomer can take the
 * slot, and so own the bit, before the bit is cleared, and two cleaners never
 * work on one slot. A cleaner killed half-way is dead in its turn: the next
 * scan claims the slot from it. */
static void reg_scan(struct reg *r, _Atomic uint32_t *word) {
  uint64_t mark = CLEANING | reg_me();
  for (int i = 0; i < NSLOTS; i++) {
    uint64_t v = atomic_load(&r->slot[i]);
    if (!v)
      continue;
    pid_t pid = (pid_t)(uint32_t)v;
    if (pid_ended(pid) && atomic_compare_exchange_strong(&r->slot[i], &v, mark)) {
      MP__CRASH(QUEUE_REG_CLAIMED);
      atomic_fetch_and(word, ~SLOT_BIT(i));
      atomic_store(&r->slot[i], 0);
    }
  }
}

static void fifo_prod_repair(mp_queue *q);
static void fifo_cons_repair(mp_queue *q);
static void list_repair(mp_queue *q);

/* A wake found nobody asleep although a sleeper is recorded. Usually that
 * sleeper is between recording itself and sleeping, or just woke; but it may
 * be dead. Every 64th time, check the mutex holder (bit 0) and the registered
 * ones; a dead sleeper costs at most that many futex wakes. */
static void heal(mp_queue *q, uint32_t sl, bool data_side) {
  struct qstate *s = q->s;
  _Atomic uint32_t *word = data_side ? &s->data_sleepers : &s->space_sleepers;
  struct reg *rg = data_side ? &s->data_reg : &s->space_reg;
  /* relaxed: a pacing counter, no data hangs on it */
  if ((atomic_fetch_add_explicit(&rg->idle, 1, memory_order_relaxed) & 63) != 63)
    return;
  if ((sl & 1) && q->order == MP_QUEUE_FIFO) {
    pthread_mutex_t *m = data_side ? &s->u.f.cons_mutex : &s->u.f.prod_mutex;
    int r = pthread_mutex_trylock(m);
    if (r == EOWNERDEAD) {
      if (data_side)
        fifo_cons_repair(q);
      else
        fifo_prod_repair(q);
      pthread_mutex_unlock(m);
    } else if (r == 0) {
      atomic_fetch_and(word, ~1u); /* the holder always clears it before unlocking */
      pthread_mutex_unlock(m);
    }
  }
  if (sl >> 1)
    reg_scan(rg, word);
}

/* After a commit that gives consumers something (or a close): wake the sleeper
 * recorded, if any. seq_cst load: pairs with the sleeper's seq_cst bit set. */
static void wake_data(mp_queue *q) {
  struct qstate *s = q->s;
  uint32_t sl = atomic_load(&s->data_sleepers);
  if (MP__LIKELY(sl == 0))
    return;
  atomic_fetch_add(&s->data_word, 1);
  if (mp__futex_wake(&s->data_word, sl > 1 ? INT_MAX : 1) == 0)
    heal(q, sl, true);
}

static void wake_space(mp_queue *q) {
  struct qstate *s = q->s;
  uint32_t sl = atomic_load(&s->space_sleepers);
  if (MP__LIKELY(sl == 0))
    return;
  atomic_fetch_add(&s->space_word, 1);
  if (mp__futex_wake(&s->space_word, sl > 1 ? INT_MAX : 1) == 0)
    heal(q, sl, false);
}

static void wake_all(mp_queue *q) {
  struct qstate *s = q->s;
  atomic_fetch_add(&s->data_word, 1);
  atomic_fetch_add(&s->space_word, 1);
  mp__futex_wake(&s->data_word, INT_MAX);
  mp__futex_wake(&s->space_word, INT_MAX);
}

/* ------------------------------------------------------------ 5. FIFO producers */

static void ring_write(mp_queue *q, uint32_t pos, const void *src, size_t n) {
  if (!n)
    return;
  size_t off = pos & q->mask, first = q->cap - off;
  if (n <= first) {
    memcpy(q->ring + off, src, n);
  } else {
    memcpy(q->ring + off, src, first);
    memcpy(q->ring, (const char *)src + first, n - first);
  }
}

static void ring_read(mp_queue *q, uint32_t pos, void *dst, size_t n) {
  if (!n)
    return;
  size_t off = pos & q->mask, first = q->cap - off;
  if (n <= first) {
    memcpy(dst, q->ring + off, n);
  } else {
    memcpy(dst, q->ring + off, first);
    memcpy((char *)dst + first, q->ring, n - first);
  }
}

/* Headers are 8-aligned and the ring a multiple of 8: never split. */
static void hdr_write(mp_queue *q, uint32_t pos, uint32_t kind, uint32_t len) {
  uint64_t h = (uint64_t)kind << 32 | len;
  memcpy(q->ring + (pos & q->mask), &h, HDR);
}

static uint64_t hdr_read(mp_queue *q, uint32_t pos) {
  uint64_t h;
  memcpy(&h, q->ring + (pos & q->mask), HDR);
  return h;
}

/* The hand-over records of section 1b. Read only by a later holder of the
 * same mutex (ordered by the mutex, or by the kernel's EOWNERDEAD hand-over
 * of a dead holder's mutex), so release stores suffice; the signal fences
 * keep the compiler from reordering them with the steps they bracket, which
 * is what a kill can observe. */
static inline void hand_set(uint64_t *w, uint64_t v) {
  atomic_signal_fence(memory_order_seq_cst);
  __atomic_store_n(w, v, __ATOMIC_RELEASE);
  atomic_signal_fence(memory_order_seq_cst);
}
static inline void hand_set_ptr(void **w, void *v) {
  atomic_signal_fence(memory_order_seq_cst);
  __atomic_store_n(w, v, __ATOMIC_RELEASE);
  atomic_signal_fence(memory_order_seq_cst);
}
static inline void *hand_ptr(void **w) { return __atomic_load_n(w, __ATOMIC_ACQUIRE); }

/* Before a repair reads a hand-over word: the dead holder may have died inside
 * the heap's journaled step that writes it (mp__heap_alloc_into,
 * mp__heap_free_from). Taking the heap's mutex once replays or keeps that
 * step, so the word then says what the heap says. */
static void heap_settle(void) {
  mp_heap_stats st;
  (void)mp_heap_stats_get(&st);
}

/* Free the block *w names and clear *w in one journaled heap step; a word
 * that names no live block (only a stray write can make one) is cleared. */
static void hand_free(void **w) {
  if (mp__heap_free_from(w) < 0)
    hand_set_ptr(w, NULL);
}

/* Commit a new tail. Fails (false, *t updated) only when the queue was closed
 * meanwhile. */
static bool tail_commit(mp_queue *q, uint64_t *t, uint64_t nt) {
  return atomic_compare_exchange_strong(&q->s->u.f.tail, t, nt);
}

/* With prod_mutex held and tail.INSTREAM set: end the stream with ABORT. Its
 * 8 bytes are free: every non-final chunk left them. */
static void abort_stream(mp_queue *q) {
  struct fifo *f = &q->s->u.f;
  uint64_t t = atomic_load(&f->tail);
  if (!(t & INSTREAM))
    return;
  hdr_write(q, pos_of(t), K_ABORT, 0);
  MP__CRASH(QUEUE_ABORT_WRITTEN);
  while (!tail_commit(q, &t, advance(t, HDR) & ~INSTREAM)) {
  }
  MP__CRASH(QUEUE_ABORT_COMMITTED);
  wake_data(q);
}

/* With prod_mutex just taken from a holder that died (EOWNERDEAD): undo what
 * it left, then mark the mutex consistent. */
static void fifo_prod_repair(mp_queue *q) {
  struct qstate *s = q->s;
  MP__LOG(MP_LOG_INFO, "queue: a producer died inside a put; its half-put message (if any) "
                       "was dropped and the queue repaired");
  atomic_fetch_and(&s->space_sleepers, ~1u);
  /* A put_block under way (section 1b): not committed, its block dies with
   * its caller; committed, it is the queue's. */
  heap_settle();
  if (MP__UNLIKELY(hand_ptr(&s->u.f.pblk) != NULL)) {
    if (pos_of(atomic_load(&s->u.f.tail)) == (uint32_t)s->u.f.pblk_pos)
      hand_free(&s->u.f.pblk);
    else
      hand_set_ptr(&s->u.f.pblk, NULL);
  }
  abort_stream(q);
  /* The dead one may have committed without waking anyone. */
  atomic_fetch_add(&s->data_word, 1);
  mp__futex_wake(&s->data_word, INT_MAX);
  MP__CRASH(QUEUE_PROD_REPAIR_WOKEN);
  pthread_mutex_consistent(&s->u.f.prod_mutex);
}

/* Whether a record of `need` bytes fits now (and, with `slot`, the count is
 * below maxsize), judged against head h. */
static inline bool room(const mp_queue *q, uint64_t t, uint64_t h, uint64_t need, bool slot) {
  if (q->cap - fifo_used(t, h) < need)
    return false;
  return !slot || !q->maxsize || fifo_count(t, h) < q->maxsize;
}

/* With prod_mutex held: wait until a record of `need` bytes fits (and, with
 * `slot`, the count is below maxsize). *t is the current tail on return.
 * Returns 0, -ETIMEDOUT, -EPIPE (closed). */
static int prod_wait(mp_queue *q, uint64_t need, bool slot, wctx *w, uint64_t *t) {
  struct qstate *s = q->s;
  struct fifo *f = &s->u.f;
  /* The cached head is older, so it under-states room: a safe first look. */
  if (room(q, *t, f->head_cache, need, slot))
    return 0;
  /* acquire: consumers released those bytes after copying them out */
  uint64_t h = atomic_load_explicit(&f->head, memory_order_acquire);
  f->head_cache = h;
  if (room(q, *t, h, need, slot))
    return 0;
  if (nowait(w))
    return -ETIMEDOUT;
  for (int i = 0; i < MP__SPIN_LIMIT; i++) {
    mp__cpu_relax();
    h = atomic_load_explicit(&f->head, memory_order_acquire);
    if (room(q, *t, h, need, slot)) {
      f->head_cache = h;
      return 0;
    }
    /* relaxed: only the CLOSED bit can change under us; re-read seq_cst below */
    if (atomic_load_explicit(&f->tail, memory_order_relaxed) & CLOSED)
      break;
  }
  int r;
  atomic_fetch_or(&s->space_sleepers, 1u);
  MP__CRASH(QUEUE_PUT_ASLEEP);
  for (;;) {
    uint32_t snap = atomic_load(&s->space_word);
    *t = atomic_load(&f->tail);
    if (*t & CLOSED) {
      r = -EPIPE;
      break;
    }
    h = atomic_load(&f->head);
    if (room(q, *t, h, need, slot)) {
      f->head_cache = h;
      r = 0;
      break;
    }
    if ((r = nap(&s->space_word, snap, w, false)) < 0)
      break;
  }
  atomic_fetch_and(&s->space_sleepers, ~1u);
  return r;
}

/* With prod_mutex held: a whole message as one MSG record. */
static int put_whole(mp_queue *q, const void *msg, size_t len, wctx *w, uint64_t t) {
  uint64_t rec = rec_size(len);
  int r = prod_wait(q, rec, true, w, &t);
  if (r < 0)
    return r;
  if (t & CLOSED)
    return -EPIPE;
  hdr_write(q, pos_of(t), K_MSG, (uint32_t)len);
  ring_write(q, pos_of(t) + HDR, msg, len);
  MP__CRASH(QUEUE_PUT_WRITTEN);
  if (!tail_commit(q, &t, advance(t, rec) + MSG_ONE))
    return -EPIPE;
  MP__CRASH(QUEUE_PUT_COMMITTED);
  wake_data(q);
  return 0;
}

/* With prod_mutex held: stream a message longer than chunk_max. */
static int put_stream(mp_queue *q, const void *msg, size_t len, wctx *w, uint64_t t) {
  const char *p = msg;
  size_t off = 0;
  bool first = true;
  while (off < len) {
    size_t rem = len - off;
    size_t data = rem < q->chunk_max ? rem : q->chunk_max;
    bool last = !first && data == rem;
    size_t payload = data + (first ? 8 : 0);
    uint64_t rec = rec_size(payload);
    int r = prod_wait(q, rec + (last ? 0 : HDR), first, w, &t);
    if (r == 0 && (t & CLOSED))
      r = -EPIPE;
    if (r < 0) {
      if (!first)
        abort_stream(q);
      return r;
    }
    uint32_t pos = pos_of(t);
    uint64_t nt = advance(t, rec);
    if (first) {
      uint64_t total = len;
      hdr_write(q, pos, K_BEGIN, (uint32_t)payload);
      ring_write(q, pos + HDR, &total, 8);
      ring_write(q, pos + HDR + 8, p, data);
      nt |= INSTREAM;
    } else {
      hdr_write(q, pos, last ? K_END : K_MORE, (uint32_t)payload);
      ring_write(q, pos + HDR, p + off, data);
      if (last)
        nt = (nt & ~INSTREAM) + MSG_ONE;
    }
    MP__CRASH(QUEUE_STREAM_WRITTEN);
    if (!tail_commit(q, &t, nt)) {
      if (!first)
        abort_stream(q);
      return -EPIPE;
    }
    t = nt;
    MP__CRASH(QUEUE_STREAM_COMMITTED);
    wake_data(q);
    off += data;
    first = false;
  }
  return 0;
}

static int fifo_put(mp_queue *q, const void *msg, size_t len, wctx *w) {
  struct qstate *s = q->s;
  struct fifo *f = &s->u.f;
  int r = mutex_take(&f->prod_mutex, w, not_full, q);
  if (r < 0)
    return r;
  if (MP__UNLIKELY(r == 1))
    fifo_prod_repair(q);
  /* relaxed: only this holder moves tail; close's bit is re-checked by the
   * compare-and-swap that commits */
  uint64_t t = atomic_load_explicit(&f->tail, memory_order_relaxed);
  if (t & CLOSED) {
    r = -EPIPE;
  } else if (len <= q->chunk_max) {
    r = put_whole(q, msg, len, w, t);
  } else {
    uint64_t h = atomic_load_explicit(&f->head, memory_order_acquire);
    f->head_cache = h;
    if (rec_size(len) <= q->cap && room(q, t, h, rec_size(len), true))
      r = put_whole(q, msg, len, w, t);
    else if (nowait(w))
      r = -ETIMEDOUT;
    else
      r = put_stream(q, msg, len, w, t);
  }
  MP__CRASH(QUEUE_PUT_FINISHED);
  pthread_mutex_unlock(&f->prod_mutex);
  return r;
}

/* Hand a heap block over by reference (section 1b). On failure the block is
 * still the caller's. */
static int fifo_put_block(mp_queue *q, void *blk, size_t len, wctx *w) {
  struct fifo *f = &q->s->u.f;
  int r = mutex_take(&f->prod_mutex, w, not_full, q);
  if (r < 0)
    return r;
  if (MP__UNLIKELY(r == 1))
    fifo_prod_repair(q);
  const uint64_t rec = rec_size(BLOCK_PAYLOAD);
  /* relaxed: only this holder moves tail; close's bit is re-checked by the
   * compare-and-swap that commits */
  uint64_t t = atomic_load_explicit(&f->tail, memory_order_relaxed);
  r = (t & CLOSED) ? -EPIPE : prod_wait(q, rec, true, w, &t);
  if (r == 0 && (t & CLOSED))
    r = -EPIPE;
  if (r == 0) {
    hand_set(&f->pblk_pos, pos_of(t));
    hand_set_ptr(&f->pblk, blk);
    MP__CRASH(QUEUE_BLOCK_PUT_RECORDED);
    uint64_t pl[2] = {(uint64_t)(uintptr_t)blk, len};
    hdr_write(q, pos_of(t), K_BLOCK, BLOCK_PAYLOAD);
    ring_write(q, pos_of(t) + HDR, pl, sizeof pl);
    MP__CRASH(QUEUE_BLOCK_PUT_WRITTEN);
    bool ok = tail_commit(q, &t, advance(t, rec) + MSG_ONE);
    if (ok)
      MP__CRASH(QUEUE_BLOCK_PUT_COMMITTED);
    hand_set_ptr(&f->pblk, NULL);
    MP__CRASH(QUEUE_BLOCK_PUT_CLEARED);
    if (ok)
      wake_data(q);
    else
      r = -EPIPE;
  }
  pthread_mutex_unlock(&f->prod_mutex);
  return r;
}

/* ------------------------------------------------------------ 6. FIFO consumers */

/* With cons_mutex just taken from a holder that died (EOWNERDEAD). */
static void fifo_cons_repair(mp_queue *q) {
  struct qstate *s = q->s;
  MP__LOG(MP_LOG_INFO, "queue: a consumer died inside a get; the message it had not taken "
                       "stays first in the queue");
  atomic_fetch_and(&s->data_sleepers, ~1u);
  /* A get under way with a block in hand (section 1b). */
  struct fifo *f = &s->u.f;
  heap_settle();
  if (MP__UNLIKELY(hand_ptr(&f->cblk) != NULL)) {
    /* relaxed: the dead holder's words, ordered by the mutex hand-over */
    bool moved = pos_of(atomic_load_explicit(&f->head, memory_order_relaxed)) !=
                 (uint32_t)f->cblk_pos;
    if (f->cblk_copy || moved)
      hand_free(&f->cblk);
    else
      hand_set_ptr(&f->cblk, NULL);
  }
  s->u.f.tail_cache = atomic_load(&s->u.f.tail);
  /* The dead one may have committed without waking a producer. */
  atomic_fetch_add(&s->space_word, 1);
  mp__futex_wake(&s->space_word, INT_MAX);
  MP__CRASH(QUEUE_CONS_REPAIR_WOKEN);
  pthread_mutex_consistent(&s->u.f.cons_mutex);
}

/* A consumer waiting inside a stream, or behind one, with no data: if the
 * streaming producer died, end its stream. */
static void check_producer(mp_queue *q) {
  struct fifo *f = &q->s->u.f;
  int r = pthread_mutex_trylock(&f->prod_mutex);
  if (r == EOWNERDEAD) {
    fifo_prod_repair(q);
    pthread_mutex_unlock(&f->prod_mutex);
  } else if (r == 0) {
    abort_stream(q); /* INSTREAM with the mutex free: nobody will end it */
    pthread_mutex_unlock(&f->prod_mutex);
  }
}

static inline bool fifo_drained(uint64_t t, uint64_t h) {
  return pos_of(t) == pos_of(h) && (t & CLOSED) && !(t & INSTREAM);
}

/* With cons_mutex held: wait until a record is committed past head h; *t is
 * the tail then. `mid`: inside a stream, whose rest comes whatever our
 * deadline says. Returns 0, -ETIMEDOUT, -EPIPE (closed and drained). */
static int cons_wait(mp_queue *q, uint64_t h, bool mid, wctx *w, uint64_t *t) {
  struct qstate *s = q->s;
  struct fifo *f = &s->u.f;
  /* Records up to a tail seen before are still there: no need to read the
   * word the producers write. */
  uint64_t tt = f->tail_cache;
  if (MP__LIKELY(pos_of(tt) != pos_of(h))) {
    *t = tt;
    return 0;
  }
  /* acquire: the records up to tail were written before it was committed */
  tt = atomic_load_explicit(&f->tail, memory_order_acquire);
  if (MP__LIKELY(pos_of(tt) != pos_of(h))) {
    f->tail_cache = *t = tt;
    return 0;
  }
  if (!mid && fifo_drained(tt, h))
    return -EPIPE;
  if (!mid && nowait(w))
    return -ETIMEDOUT;
  for (int i = 0; i < MP__SPIN_LIMIT; i++) {
    mp__cpu_relax();
    tt = atomic_load_explicit(&f->tail, memory_order_acquire);
    if (pos_of(tt) != pos_of(h)) {
      f->tail_cache = *t = tt;
      return 0;
    }
    if (tt & CLOSED)
      break;
  }
  int r;
  atomic_fetch_or(&s->data_sleepers, 1u);
  MP__CRASH(QUEUE_GET_ASLEEP);
  for (;;) {
    uint32_t snap = atomic_load(&s->data_word);
    tt = atomic_load(&f->tail);
    if (pos_of(tt) != pos_of(h)) {
      f->tail_cache = *t = tt;
      r = 0;
      break;
    }
    if (!mid && fifo_drained(tt, h)) {
      r = -EPIPE;
      break;
    }
    if ((r = nap(&s->data_word, snap, w, mid)) < 0)
      break;
    if (atomic_load(&f->tail) & INSTREAM)
      check_producer(q);
  }
  atomic_fetch_and(&s->data_sleepers, ~1u);
  return r;
}

/* With cons_mutex held: commit a new head and wake a producer waiting for
 * room. seq_cst store: pairs with the producer's seq_cst bit set. */
static void head_commit(mp_queue *q, uint64_t nh) {
  atomic_store(&q->s->u.f.head, nh);
  MP__CRASH(QUEUE_GET_COMMITTED);
  wake_space(q);
}

/* With cons_mutex held: find the first record of a message at the head,
 * skipping what a dead consumer left of a stream. */
static int cons_front(mp_queue *q, wctx *w, uint64_t *hp, uint64_t *hdrp) {
  struct fifo *f = &q->s->u.f;
  for (;;) {
    /* relaxed: only the holder of cons_mutex writes head */
    uint64_t h = atomic_load_explicit(&f->head, memory_order_relaxed), t;
    int r = cons_wait(q, h, false, w, &t);
    if (r < 0)
      return r;
    uint64_t hdr = hdr_read(q, pos_of(h));
    uint32_t kind = (uint32_t)(hdr >> 32), len = (uint32_t)hdr;
    if (rec_size(len) > fifo_used(t, h))
      return -EIO; /* a record past the tail: the ring was overwritten */
    if (kind == K_BLOCK && len != BLOCK_PAYLOAD)
      return -EIO;
    if (kind == K_MSG || kind == K_BEGIN || kind == K_BLOCK) {
      *hp = h;
      *hdrp = hdr;
      return 0;
    }
    if (kind != K_MORE && kind != K_END && kind != K_ABORT)
      return -EIO;
    /* The rest of a stream whose first chunk a dead consumer took. */
    head_commit(q, advance(h, rec_size(len)) + (kind == K_END ? MSG_ONE : 0));
  }
}

/* With cons_mutex held and a BEGIN at head h: if its stream ends in ABORT
 * among the committed records (its producer timed out, or died: settled
 * first), skip the whole stream and return true. Such a message was never
 * put: its size must not be reported, nor -EMSGSIZE for it. A stream still
 * under way (no END or ABORT yet, its producer alive) is a message. */
static bool skip_aborted(mp_queue *q, uint64_t h) {
  struct fifo *f = &q->s->u.f;
  /* acquire: the records up to tail were written before it was committed */
  uint64_t t = atomic_load_explicit(&f->tail, memory_order_acquire);
  if (t & INSTREAM) {
    check_producer(q);
    t = atomic_load_explicit(&f->tail, memory_order_acquire);
  }
  f->tail_cache = t;
  /* Every record after BEGIN up to its END or ABORT is the same stream's:
   * its producer held prod_mutex throughout. */
  for (uint32_t p = pos_of(h); p != pos_of(t);) {
    uint64_t hdr = hdr_read(q, p);
    uint32_t kind = (uint32_t)(hdr >> 32), len = (uint32_t)hdr;
    if (rec_size(len) > pos_of(t) - p)
      return false; /* overwritten: the caller's checks report it */
    p += (uint32_t)rec_size(len);
    if (kind == K_END)
      return false;
    if (kind == K_ABORT) {
      head_commit(q, advance(h, p - pos_of(h))); /* msgs: an aborted stream never counted */
      return true;
    }
  }
  return false;
}

/* With cons_mutex held: the block taken by get_block is the caller's. */
static void hand_over(struct fifo *f) {
  hand_set_ptr(&f->cblk, NULL);
  MP__CRASH(QUEUE_BLOCK_GET_HANDED);
}

/* With cons_mutex held and a BLOCK record at head h (section 1b): hand its
 * block over (TAKE_BLOCK), or copy it out and free it. */
static ssize_t take_block_rec(mp_queue *q, uint64_t h, void *buf, size_t cap, void **out,
                              size_t *outlen, enum take_mode mode) {
  struct fifo *f = &q->s->u.f;
  uint64_t pl[2];
  ring_read(q, pos_of(h) + HDR, pl, sizeof pl);
  char *blk = (char *)(uintptr_t)pl[0];
  size_t len = (size_t)pl[1];
  if (!mp_heap_contains(blk) || (len && !mp_heap_contains(blk + len - 1)))
    return -EIO; /* the ring was overwritten: put_block checked both */
  if (mode == TAKE_PEEK) {
    *outlen = len;
    return 0;
  }
  char *dst = buf;
  if (mode == TAKE_ALLOC) {
    dst = malloc(len ? len : 1);
    if (!dst)
      return -ENOMEM;
  } else if (mode == TAKE_BUF && len > cap) {
    return -EMSGSIZE;
  }
  hand_set(&f->cblk_pos, pos_of(h));
  hand_set(&f->cblk_copy, 0);
  hand_set_ptr(&f->cblk, blk);
  MP__CRASH(QUEUE_BLOCK_GET_RECORDED);
  if (mode != TAKE_BLOCK && len)
    memcpy(dst, blk, len);
  head_commit(q, advance(h, rec_size(BLOCK_PAYLOAD)) + MSG_ONE);
  if (mode == TAKE_BLOCK) {
    hand_over(f);
    *out = blk;
    *outlen = len;
    return 0;
  }
  hand_free(&f->cblk);
  if (mode == TAKE_ALLOC) {
    *out = dst;
    *outlen = len;
    return 0;
  }
  return (ssize_t)len;
}

static ssize_t fifo_take(mp_queue *q, void *buf, size_t cap, void **out, size_t *outlen,
                         enum take_mode mode, wctx *w) {
  struct fifo *f = &q->s->u.f;
  int r = mutex_take(&f->cons_mutex, w, not_empty, q);
  if (r < 0)
    return r;
  if (MP__UNLIKELY(r == 1))
    fifo_cons_repair(q);
  ssize_t res;
  char *dst = NULL;
again:;
  uint64_t h, hdr;
  r = cons_front(q, w, &h, &hdr);
  if (r < 0) {
    res = r;
    goto out;
  }
  uint32_t kind = (uint32_t)(hdr >> 32), clen = (uint32_t)hdr;
  if (kind == K_BLOCK) {
    res = take_block_rec(q, h, buf, cap, out, outlen, mode);
    goto out;
  }
  uint32_t dpos = pos_of(h) + HDR;
  uint64_t total = clen;
  if (kind == K_BEGIN) {
    ring_read(q, dpos, &total, 8);
    if (clen < 8 || clen - 8 >= total) {
      res = -EIO; /* the ring was overwritten */
      goto out;
    }
    dpos += 8;
    clen -= 8;
    if ((mode == TAKE_PEEK || (mode == TAKE_BUF && total > cap)) && skip_aborted(q, h))
      goto again;
  }
  if (mode == TAKE_PEEK) {
    *outlen = total;
    res = 0;
    goto out;
  }
  if (mode == TAKE_ALLOC) {
    dst = malloc(total ? total : 1);
    if (!dst) {
      res = -ENOMEM;
      goto out;
    }
  } else if (mode == TAKE_BLOCK) {
    /* A copy in a heap block, recorded in cblk by the heap's own journaled
     * step: a kill from here on leaves the repair to free it (section 1b). */
    hand_set(&f->cblk_pos, pos_of(h));
    hand_set(&f->cblk_copy, 1);
    dst = mp__heap_alloc_into(total ? total : 1, &f->cblk);
    if (!dst) {
      res = -ENOMEM;
      goto out;
    }
    MP__CRASH(QUEUE_BLOCK_COPY_ALLOCATED);
  } else {
    if (total > cap) {
      res = -EMSGSIZE;
      goto out;
    }
    dst = buf;
  }
  ring_read(q, dpos, dst, clen);
  MP__CRASH(QUEUE_GET_COPIED);
  uint64_t nh = advance(h, rec_size((uint32_t)hdr));
  head_commit(q, kind == K_MSG ? nh + MSG_ONE : nh);
  if (kind == K_BEGIN) {
    uint64_t off = clen;
    for (;;) {
      uint64_t t;
      h = nh;
      cons_wait(q, h, true, w, &t); /* mid-stream: returns only with a record */
      hdr = hdr_read(q, pos_of(h));
      kind = (uint32_t)(hdr >> 32);
      clen = (uint32_t)hdr;
      if (kind == K_ABORT) {
        head_commit(q, advance(h, HDR));
        if (mode == TAKE_ALLOC)
          free(dst);
        else if (mode == TAKE_BLOCK)
          hand_free(&f->cblk);
        dst = NULL;
        goto again;
      }
      if ((kind != K_MORE && kind != K_END) || rec_size(clen) > fifo_used(t, h) ||
          off + clen > total || (kind == K_END && off + clen != total)) {
        res = -EIO; /* the ring was overwritten */
        goto out;
      }
      ring_read(q, pos_of(h) + HDR, dst + off, clen);
      MP__CRASH(QUEUE_GET_CHUNK_COPIED);
      off += clen;
      nh = advance(h, rec_size(clen));
      if (kind == K_END) {
        head_commit(q, nh + MSG_ONE);
        break;
      }
      head_commit(q, nh);
    }
  }
  if (mode == TAKE_ALLOC || mode == TAKE_BLOCK) {
    if (mode == TAKE_BLOCK)
      hand_over(f);
    *out = dst;
    *outlen = total;
    dst = NULL;
    res = 0;
  } else {
    res = (ssize_t)total;
    dst = NULL;
  }
out:
  if (mode == TAKE_ALLOC)
    free(dst);
  else if (mode == TAKE_BLOCK && dst)
    hand_free(&f->cblk);
  MP__CRASH(QUEUE_GET_FINISHED);
  pthread_mutex_unlock(&f->cons_mutex);
  return res;
}

/* ------------------------------------------------------------ 7. lists */

static inline uint64_t ld(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }

/* Journal the old value of *addr, then write val (see section 2). Stores are
 * ordered against a crash only by the compiler: a killed process's retired
 * stores stay visible to the others. */
static void jset(struct list *l, uint64_t *addr, uint64_t val) {
  uint64_t n = l->log_n;
  l->log[n].addr = addr;
  l->log[n].old = *addr;
  atomic_signal_fence(memory_order_seq_cst);
  l->log_n = n + 1;
  atomic_signal_fence(memory_order_seq_cst);
  MP__CRASH(QUEUE_LIST_JOURNALED);
  /* release: readers without the mutex (qsize, join) load these */
  __atomic_store_n(addr, val, __ATOMIC_RELEASE);
  MP__CRASH(QUEUE_LIST_WRITTEN);
}

static void jcommit(struct list *l) {
  atomic_signal_fence(memory_order_seq_cst);
  l->log_n = 0;
  atomic_signal_fence(memory_order_seq_cst);
  MP__CRASH(QUEUE_LIST_COMMITTED);
}

static void list_repair(mp_queue *q) {
  struct list *l = &q->s->u.l;
  MP__LOG(MP_LOG_INFO, "queue: a process died inside a LIFO or priority queue operation; "
                       "it was undone");
  uint64_t n = l->log_n;
  if (n > LOG_MAX)
    n = LOG_MAX;
  for (uint64_t i = n; i > 0; i--)
    __atomic_store_n(l->log[i - 1].addr, l->log[i - 1].old, __ATOMIC_RELEASE);
  jcommit(l);
  MP__CRASH(QUEUE_LIST_REPAIR_REPLAYED);
  pthread_mutex_consistent(&l->mutex);
  wake_all(q); /* the dead one may have committed without waking anyone */
}

static int list_lock(mp_queue *q, wctx *w, bool (*worth)(mp_queue *)) {
  int r = mutex_take(&q->s->u.l.mutex, w, worth, q);
  if (MP__UNLIKELY(r == 1)) {
    list_repair(q);
    r = 0;
  }
  return r;
}

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
  reg_add(rg, count);
  uint32_t snap = atomic_load(word);
  pthread_mutex_unlock(&s->u.l.mutex);
  int r = nap(word, snap, w, false);
  reg_del(rg, count);
  if (r < 0)
    return r;
  return list_lock(q, w, always);
}

static int list_put(mp_queue *q, int64_t prio, const void *msg, size_t len, wctx *w) {
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

/* ------------------------------------------------------------ 8. joinable */

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
  struct list *l = &q->s->u.l;
  int r = list_lock(q, w, always);
  if (r < 0)
    return r;
  r = l->done >= l->puts;
  pthread_mutex_unlock(&l->mutex);
  return r;
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
  reg_add(&s->join_reg, &s->join_waiters);
  for (;;) {
    uint32_t snap = atomic_load(&s->join_word);
    if ((r = all_done(q, w)) != 0) {
      r = r < 0 ? r : 0;
      break;
    }
    if ((r = nap(&s->join_word, snap, w, false)) < 0)
      break;
  }
  reg_del(&s->join_reg, &s->join_waiters);
  return r;
}

/* ------------------------------------------------------------ 9. watching */

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
  reg_add(&s->data_reg, &s->data_sleepers);
  uint32_t snap = atomic_load(&s->data_word);
  if (get_ready(q)) {
    reg_del(&s->data_reg, &s->data_sleepers);
    return 1;
  }
  *word = &s->data_word;
  *snapshot = snap;
  return 0;
}

void mp__queue_watch_end(struct mp_queue *q) {
  if (mp__tag_ok(q, MP__TAG_QUEUE))
    reg_del(&q->s->data_reg, &q->s->data_sleepers);
}

/* ------------------------------------------------------------ 10. public */

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

static int put_checks(mp_queue *q, const void *msg, size_t len, double timeout) {
  if (!mp__tag_ok(q, MP__TAG_QUEUE) || (!msg && len) || isnan(timeout))
    return -EINVAL;
  if (len > (size_t)SSIZE_MAX)
    return -EMSGSIZE;
  return 0;
}

/* A closed queue's -EPIPE is -ESHUTDOWN once mp_queue_shutdown() began. */
static inline ssize_t closed_code(mp_queue *q, ssize_t r) {
  return MP__UNLIKELY(r == -EPIPE) && atomic_load(&q->s->shut) ? -ESHUTDOWN : r;
}

MP_EXPORT int mp_queue_put(mp_queue *q, const void *msg, size_t len, double timeout) {
  int r = put_checks(q, msg, len, timeout);
  if (MP__UNLIKELY(r < 0))
    return r;
  wctx w = {.timeout = timeout};
  if (q->order == MP_QUEUE_FIFO)
    r = fifo_put(q, msg, len, &w);
  else
    r = list_put(q, 0, msg, len, &w);
  return (int)closed_code(q, r);
}

MP_EXPORT int mp_queue_put_priority(mp_queue *q, int64_t priority, const void *msg, size_t len,
                                    double timeout) {
  int r = put_checks(q, msg, len, timeout);
  if (r < 0)
    return r;
  if (q->order != MP_QUEUE_PRIORITY)
    return -EINVAL;
  wctx w = {.timeout = timeout};
  return (int)closed_code(q, list_put(q, priority, msg, len, &w));
}

MP_EXPORT int mp_queue_put_block(mp_queue *q, void *block, size_t len, double timeout) {
  if (!mp__tag_ok(q, MP__TAG_QUEUE) || isnan(timeout) || !block || !mp_heap_contains(block) ||
      (len && !mp_heap_contains((char *)block + len - 1)))
    return -EINVAL;
  if (len > (size_t)SSIZE_MAX)
    return -EMSGSIZE;
  if (q->order != MP_QUEUE_FIFO)
    return -EINVAL;
  wctx w = {.timeout = timeout};
  return (int)closed_code(q, fifo_put_block(q, block, len, &w));
}

static ssize_t take(mp_queue *q, void *buf, size_t cap, void **out, size_t *outlen,
                    enum take_mode mode, double timeout) {
  if (!mp__tag_ok(q, MP__TAG_QUEUE) || isnan(timeout))
    return -EINVAL;
  wctx w = {.timeout = timeout};
  if (q->order == MP_QUEUE_FIFO)
    return closed_code(q, fifo_take(q, buf, cap, out, outlen, mode, &w));
  return closed_code(q, list_take(q, buf, cap, out, outlen, mode, &w));
}

MP_EXPORT ssize_t mp_queue_get(mp_queue *q, void *buf, size_t cap, double timeout) {
  if (!buf && cap)
    return -EINVAL;
  return take(q, buf, cap, NULL, NULL, TAKE_BUF, timeout);
}

MP_EXPORT int mp_queue_get_alloc(mp_queue *q, void **msg, size_t *len, double timeout) {
  if (!msg || !len)
    return -EINVAL;
  return (int)take(q, NULL, 0, msg, len, TAKE_ALLOC, timeout);
}

MP_EXPORT int mp_queue_get_block(mp_queue *q, void **block, size_t *len, double timeout) {
  if (!block || !len || !mp__tag_ok(q, MP__TAG_QUEUE) || q->order != MP_QUEUE_FIFO)
    return -EINVAL;
  return (int)take(q, NULL, 0, block, len, TAKE_BLOCK, timeout);
}

MP_EXPORT int mp_queue_peek_size(mp_queue *q, size_t *len, double timeout) {
  if (!len)
    return -EINVAL;
  return (int)take(q, NULL, 0, NULL, len, TAKE_PEEK, timeout);
}

/* The words as they are: a message counted while its producer streams it,
 * and a list's words while their writer holds the mutex (section 2). */
static uint64_t count_now(mp_queue *q) {
  if (q->order == MP_QUEUE_FIFO) {
    /* head first: tail only grows, so the difference is never negative */
    uint64_t h = atomic_load(&q->s->u.f.head);
    return fifo_count(atomic_load(&q->s->u.f.tail), h);
  }
  return ld(&q->s->u.l.n);
}

static bool full_now(mp_queue *q) {
  if (q->order == MP_QUEUE_FIFO) {
    uint64_t h = atomic_load(&q->s->u.f.head), t = atomic_load(&q->s->u.f.tail);
    return !room(q, t, h, HDR, true);
  }
  return q->maxsize && ld(&q->s->u.l.n) >= q->maxsize;
}

/* Before a public look at the counts: settle what a dead process left half
 * done, so that a message it never put is never counted (nor one it never
 * took missed). FIFO: a stream whose producer died (check_producer(); a
 * producer alive keeps its stream counted, as its put is under way). Lists:
 * take the mutex, which replays a dead holder's journal and waits out a live
 * one's operation, as Python's qsize() takes its queue's mutex. */
static int settle(mp_queue *q) {
  if (q->order == MP_QUEUE_FIFO) {
    if (MP__UNLIKELY(atomic_load(&q->s->u.f.tail) & INSTREAM))
      check_producer(q);
    return 0;
  }
  wctx w = {.timeout = MP_FOREVER};
  int r = list_lock(q, &w, always);
  if (r < 0)
    return r;
  pthread_mutex_unlock(&q->s->u.l.mutex);
  return 0;
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
    struct list *l = &q->s->u.l;
    wctx w = {.timeout = MP_FOREVER};
    int r = list_lock(q, &w, always);
    if (r < 0)
      return r;
    jset(l, &l->closed, 1);
    jcommit(l);
    pthread_mutex_unlock(&l->mutex);
  }
  MP__CRASH(QUEUE_CLOSE_MARKED);
  wake_all(q);
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
    r = (int)take(q, NULL, 0, &msg, &len, TAKE_ALLOC, MP_NOWAIT);
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

/* mp_queue_free() of a FIFO queue, past its claim: the blocks of the BLOCK
 * records still queued belong to the queue (section 1b). */
static void free_queued_blocks(mp_queue *q) {
  struct fifo *f = &q->s->u.f;
  uint64_t h = atomic_load(&f->head), t = atomic_load(&f->tail);
  for (uint32_t p = pos_of(h); p != pos_of(t);) {
    uint64_t hdr = hdr_read(q, p);
    uint32_t kind = (uint32_t)(hdr >> 32), len = (uint32_t)hdr;
    if (rec_size(len) > pos_of(t) - p)
      break; /* overwritten: leave the rest */
    if (kind == K_BLOCK && len == BLOCK_PAYLOAD) {
      uint64_t pl[2];
      ring_read(q, p + HDR, pl, sizeof pl);
      mp_heap_free((void *)(uintptr_t)pl[0]); /* -EINVAL for a stray word: ignored */
    }
    p += (uint32_t)rec_size(len);
  }
}

/* Take a mutex for free(): 0 when taken (repaired if its holder died), -EBUSY
 * when someone alive holds it. */
static int free_lock(mp_queue *q, pthread_mutex_t *m) {
  int r = pthread_mutex_trylock(m);
  if (r == EOWNERDEAD) {
    /* Repaired in full (each repair marks it consistent): free may still
     * answer -EBUSY and leave the queue in use. */
    if (q->order != MP_QUEUE_FIFO)
      list_repair(q);
    else if (m == &q->s->u.f.prod_mutex)
      fifo_prod_repair(q);
    else
      fifo_cons_repair(q);
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
  reg_scan(&s->data_reg, &s->data_sleepers);
  reg_scan(&s->space_reg, &s->space_sleepers);
  reg_scan(&s->join_reg, &s->join_waiters);
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
    free_queued_blocks(q);
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
    for (uint64_t i = 0; i < l->n; i++)
      mp_heap_free((void *)(uintptr_t)recs(l)[i].data);
    mp_heap_free(recs(l));
    pthread_mutex_unlock(&l->mutex);
    pthread_mutex_destroy(&l->mutex);
  }
  mp_heap_free(q->block);
  MP__CRASH(QUEUE_FREE_BLOCK_FREED);
  mp_heap_free(q); /* its tag says freed since the claim */
  return 0;
}
