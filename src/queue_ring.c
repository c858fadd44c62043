/* SPDX-License-Identifier: MIT */
/*
 * Queues: the FIFO ring (queue_internal.h maps the area). Bytes in a ring in
 * the family heap, two words that commit, streamed messages and zero-copy
 * blocks; and the public put and get of every kind of queue, so that a FIFO
 * put or get runs in this one file.
 *
 * Map of this file:
 *   1. the FIFO protocol and its kill table (read this first); 1b. zero-copy
 *      blocks. The table also covers the steps both kinds share (registered
 *      sleepers: queue_sleepers.c; close, shutdown, task_done, free: queue.c).
 *   2. FIFO producers: ring access, hand-over records, repairs, puts
 *   3. FIFO consumers: repairs, waits, gets
 *   4. public put and get (LIFO and priority lists: queue_list.c)
 * Crash points marked here: queue.put.*, queue.stream.*, queue.abort.*,
 * queue.prod_repair.woken, queue.get.*, queue.cons_repair.woken,
 * queue.block.*.
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
 * A message longer than chunk_max = cap / 4 travels in a heap block instead,
 * as a padded BLOCK record (section 1b): one copy in, one out, whole
 * messages in flight whether a consumer is there or not.
 *
 * Streaming (message longer than chunk_max whose heap block the heap could
 * not give, and that does not fit the ring at once): the producer keeps
 * prod_mutex for the whole message and commits chunk after
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
 * of the two sees the other. Before sleeping a waiter spins for the other
 * side's work (spin.h, MP__SPIN_NS: a round trip through two queues took
 * 7.7 us with a 200-pause spin, which ran out before the peer's answer, and
 * 1.9 us with the timed one); only the mutex holder sleeps on the word (the
 * others sleep in the mutex), so a blocked get or put costs no CPU. Sleeps last at most RECHECK_NS:
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
 * 1b. Blocks: zero-copy messages, and large messages (FIFO queues only).
 * mp_queue_put_block() hands a family-heap block over by reference: its
 * record (kind BLOCK) holds only the block's address and length (16 bytes of
 * payload), and mp_queue_get_block() returns that same block, whatever its
 * size. The other gets copy a BLOCK record's bytes out and free the block;
 * get_block of a MSG or streamed message copies it into a fresh heap block.
 *
 * A copying put of a message longer than chunk_max (put_heap) is a put_block
 * of a block it fills itself: under prod_mutex it waits for ring room for
 * the record, allocates the block recorded in pblk by the heap's own
 * journaled step (mp__heap_alloc_into, pblk_pos written first), copies the
 * message in, then writes and commits the record as put_block does. So the
 * message is copied once in and once out (where streaming copied it through
 * the ring in lockstep with its consumer), and the ownership protocol below,
 * with its repairs, covers every step. When the heap cannot give the block,
 * the message streams (section 1), so nothing that fit before fails now.
 *
 * Bytes in flight are bounded without a counter (one written by both sides
 * would be a new thing to repair after a kill): such a record's payload is
 * padded to len >> HEAP_PAD_SHIFT bytes (at least 16, at most chunk_max, so
 * that it always fits), never written nor read; every reader of a BLOCK
 * record (get, get_block, peek, skip_aborted(), mp_queue_free()'s walk)
 * reads the address and length from the first 16 bytes and steps over the
 * record by its header's length, and qsize counts records, not bytes. A full
 * ring thus holds at most 2^HEAP_PAD_SHIFT times its size in large messages
 * and blocks producers as before. The ratio, 1/16: with 1 MiB messages and
 * the default 256 KiB ring a record takes the 64 KiB cap, three messages (3
 * MiB) in flight. Measured (bench queue-1MiB, release builds, 2 loaded
 * cores, two alternating rounds, msg/s): 1/16 8,676 and 5,958; 1/64 (15 in
 * flight) 7,710 and 6,399; 1/256 (63 in flight) 3,254 and 6,292. A deeper
 * queue is no faster (one copy per message on each side sets the pace, and
 * three in flight already let both run apart), and it cycles through more
 * cold heap and lets a stalled consumer pin more of it: the smallest depth
 * that keeps both sides busy is kept.
 * put_block's records stay unpadded: their blocks are the caller's memory
 * already.
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
 *   put_heap (a copying put of a large message), killed inside the heap's
 *     allocation (heap.alloc.*): the heap's journal leaves either no block
 *     and pblk NULL, or the block recorded in pblk; the block allocated and
 *     recorded [queue.block.put.allocated], or filled
 *     [queue.block.put.filled], or the record written
 *     [queue.block.put.written]: not put (tail unmoved); the repair frees
 *     the block. From the commit on, as put_block's rows below.
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
 */
#include <stdlib.h>
#include <string.h>

#include "queue_internal.h"

/* ------------------------------------------------------------ 2. FIFO producers */

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
 * it left; the caller (mp__robust_mutex_take/try) then marks the mutex
 * consistent. */
void mp__queue_fifo_prod_repair(void *arg) {
  mp_queue *q = arg;
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
  for (mp__spin sp = MP__SPIN_INIT; mp__spin_more(&sp);) {
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
    if ((r = mp__queue_nap(&s->space_word, snap, w, false)) < 0)
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

/* With prod_mutex held, room for a BLOCK record of `pl` payload bytes at tail
 * t, and the block recorded in pblk (section 1b): write the record and commit
 * it. Returns false when the queue was closed meanwhile: pblk still names the
 * block, for the caller to clear (put_block) or free (put_heap). */
static bool block_commit(mp_queue *q, uint64_t t, void *blk, size_t len, uint32_t pl) {
  struct fifo *f = &q->s->u.f;
  uint64_t w[2] = {(uint64_t)(uintptr_t)blk, len};
  hdr_write(q, pos_of(t), K_BLOCK, pl);
  ring_write(q, pos_of(t) + HDR, w, sizeof w); /* the padding is never written */
  MP__CRASH(QUEUE_BLOCK_PUT_WRITTEN);
  if (!tail_commit(q, &t, advance(t, rec_size(pl)) + MSG_ONE))
    return false;
  MP__CRASH(QUEUE_BLOCK_PUT_COMMITTED);
  hand_set_ptr(&f->pblk, NULL);
  MP__CRASH(QUEUE_BLOCK_PUT_CLEARED);
  wake_data(q);
  return true;
}

#ifdef MP_CRASH_POINTS
_Atomic int mp__queue_heap_refused;
#endif

/* The payload of the BLOCK record of a copied message of len bytes: the
 * block's address and length, padded in proportion to the message so that
 * the ring bounds the bytes in flight (section 1b), and never more than a
 * chunk, so that a record always fits. */
static uint32_t heap_rec_payload(const mp_queue *q, size_t len) {
  uint64_t pl = len >> HEAP_PAD_SHIFT;
  if (pl > q->chunk_max)
    pl = q->chunk_max;
  if (pl < BLOCK_PAYLOAD)
    pl = BLOCK_PAYLOAD;
  return (uint32_t)((pl + 7) & ~(uint64_t)7);
}

/* With prod_mutex held: a message longer than chunk_max, copied into a heap
 * block that a padded BLOCK record hands over (section 1b). Returns 1 when
 * the heap has no room for it (the caller then streams it), else as a put.
 * Out of line: the call costs nothing beside its copy, and the small puts'
 * path stays as compact as it was. */
__attribute__((noinline)) static int put_heap(mp_queue *q, const void *msg, size_t len, wctx *w,
                                              uint64_t *t) {
  struct fifo *f = &q->s->u.f;
  uint32_t pl = heap_rec_payload(q, len);
#ifdef MP_CRASH_POINTS
  /* relaxed: a test sets it before it forks the processes that put */
  if (atomic_load_explicit(&mp__queue_heap_refused, memory_order_relaxed))
    return 1;
#endif
  int r = prod_wait(q, rec_size(pl), true, w, t);
  if (r == 0 && (*t & CLOSED))
    r = -EPIPE;
  if (r < 0)
    return r;
  hand_set(&f->pblk_pos, pos_of(*t));
  /* recorded in pblk by the heap's own journaled step (heap.alloc.*) */
  void *blk = mp__heap_alloc_into(len, &f->pblk);
  if (!blk)
    return 1;
  MP__CRASH(QUEUE_BLOCK_PUT_ALLOCATED);
  memcpy(blk, msg, len);
  MP__CRASH(QUEUE_BLOCK_PUT_FILLED);
  if (block_commit(q, *t, blk, len, pl))
    return 0;
  hand_free(&f->pblk);
  return -EPIPE;
}

static int fifo_put(mp_queue *q, const void *msg, size_t len, wctx *w) {
  struct qstate *s = q->s;
  struct fifo *f = &s->u.f;
  int r = mutex_take(&f->prod_mutex, w, not_full, q, mp__queue_fifo_prod_repair);
  if (r < 0)
    return r;
  /* relaxed: only this holder moves tail; close's bit is re-checked by the
   * compare-and-swap that commits */
  uint64_t t = atomic_load_explicit(&f->tail, memory_order_relaxed);
  if (t & CLOSED) {
    r = -EPIPE;
  } else if (len <= q->chunk_max) {
    r = put_whole(q, msg, len, w, t);
  } else if ((r = put_heap(q, msg, len, w, &t)) == 1) {
    /* The heap is full: what fits the ring goes whole, the rest streams. */
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
  int r = mutex_take(&f->prod_mutex, w, not_full, q, mp__queue_fifo_prod_repair);
  if (r < 0)
    return r;
  /* relaxed: only this holder moves tail; close's bit is re-checked by the
   * compare-and-swap that commits */
  uint64_t t = atomic_load_explicit(&f->tail, memory_order_relaxed);
  r = (t & CLOSED) ? -EPIPE : prod_wait(q, rec_size(BLOCK_PAYLOAD), true, w, &t);
  if (r == 0 && (t & CLOSED))
    r = -EPIPE;
  if (r == 0) {
    hand_set(&f->pblk_pos, pos_of(t));
    hand_set_ptr(&f->pblk, blk);
    MP__CRASH(QUEUE_BLOCK_PUT_RECORDED);
    if (!block_commit(q, t, blk, len, BLOCK_PAYLOAD)) {
      hand_set_ptr(&f->pblk, NULL);
      r = -EPIPE;
    }
  }
  pthread_mutex_unlock(&f->prod_mutex);
  return r;
}

/* ------------------------------------------------------------ 3. FIFO consumers */

/* With cons_mutex just taken from a holder that died (EOWNERDEAD); the
 * caller then marks the mutex consistent. */
void mp__queue_fifo_cons_repair(void *arg) {
  mp_queue *q = arg;
  struct qstate *s = q->s;
  MP__LOG(MP_LOG_INFO, "queue: a consumer died inside a get; the message it had not taken "
                       "stays first in the queue");
  atomic_fetch_and(&s->data_sleepers, ~1u);
  /* A get under way with a block in hand (section 1b). */
  struct fifo *f = &s->u.f;
  heap_settle();
  if (MP__UNLIKELY(hand_ptr(&f->cblk) != NULL)) {
    /* relaxed: the dead holder's words, ordered by the mutex hand-over */
    bool moved =
        pos_of(atomic_load_explicit(&f->head, memory_order_relaxed)) != (uint32_t)f->cblk_pos;
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
}

/* A consumer waiting inside a stream, or behind one, with no data: if the
 * streaming producer died, end its stream. */
void mp__queue_fifo_check_producer(mp_queue *q) {
  struct fifo *f = &q->s->u.f;
  int r = mp__robust_mutex_try(&f->prod_mutex, mp__queue_fifo_prod_repair, q);
  if (r == -EOWNERDEAD) {
    pthread_mutex_unlock(&f->prod_mutex);
  } else if (r == 0) {
    abort_stream(q); /* INSTREAM with the mutex free: nobody will end it */
    pthread_mutex_unlock(&f->prod_mutex);
  }
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
  for (mp__spin sp = MP__SPIN_INIT; mp__spin_more(&sp);) {
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
    if ((r = mp__queue_nap(&s->data_word, snap, w, mid)) < 0)
      break;
    if (atomic_load(&f->tail) & INSTREAM)
      mp__queue_fifo_check_producer(q);
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
    if (kind == K_BLOCK && len < BLOCK_PAYLOAD)
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
    mp__queue_fifo_check_producer(q);
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
static ssize_t take_block_rec(mp_queue *q, uint64_t h, uint32_t pl, void *buf, size_t cap,
                              void **out, size_t *outlen, enum take_mode mode) {
  struct fifo *f = &q->s->u.f;
  uint64_t w[2];
  ring_read(q, pos_of(h) + HDR, w, sizeof w);
  char *blk = (char *)(uintptr_t)w[0];
  size_t len = (size_t)w[1];
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
  head_commit(q, advance(h, rec_size(pl)) + MSG_ONE);
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
  int r = mutex_take(&f->cons_mutex, w, not_empty, q, mp__queue_fifo_cons_repair);
  if (r < 0)
    return r;
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
    res = take_block_rec(q, h, clen, buf, cap, out, outlen, mode);
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

/* mp_queue_free() of a FIFO queue, past its claim: the blocks of the BLOCK
 * records still queued belong to the queue (section 1b). */
void mp__queue_fifo_free_blocks(mp_queue *q) {
  struct fifo *f = &q->s->u.f;
  uint64_t h = atomic_load(&f->head), t = atomic_load(&f->tail);
  for (uint32_t p = pos_of(h); p != pos_of(t);) {
    uint64_t hdr = hdr_read(q, p);
    uint32_t kind = (uint32_t)(hdr >> 32), len = (uint32_t)hdr;
    if (rec_size(len) > pos_of(t) - p)
      break; /* overwritten: leave the rest */
    if (kind == K_BLOCK && len >= BLOCK_PAYLOAD) {
      uint64_t pl[2];
      ring_read(q, p + HDR, pl, sizeof pl);
      mp_heap_free((void *)(uintptr_t)pl[0]); /* -EINVAL for a stray word: ignored */
    }
    p += (uint32_t)rec_size(len);
  }
}

/* ------------------------------------------------------------ 4. public put and get */

MP_EXPORT int mp_queue_put(mp_queue *q, const void *msg, size_t len, double timeout) {
  int r = put_checks(q, msg, len, timeout);
  if (MP__UNLIKELY(r < 0))
    return r;
  wctx w = {.timeout = timeout};
  if (q->order == MP_QUEUE_FIFO)
    r = fifo_put(q, msg, len, &w);
  else
    r = mp__queue_list_put(q, 0, msg, len, &w);
  return (int)closed_code(q, r);
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

/* Every FIFO get's one body: kept out of line so that fifo_take(), called
 * only here, is folded into it, and the public gets stay small calls of it. */
__attribute__((noinline)) static ssize_t fifo_get(mp_queue *q, void *buf, size_t cap, void **out,
                                                  size_t *outlen, enum take_mode mode,
                                                  double timeout) {
  wctx w = {.timeout = timeout};
  return closed_code(q, fifo_take(q, buf, cap, out, outlen, mode, &w));
}

/* Every get: a list's goes straight to queue_list.c, without the FIFO's
 * frame. */
static inline ssize_t take(mp_queue *q, void *buf, size_t cap, void **out, size_t *outlen,
                           enum take_mode mode, double timeout) {
  if (!mp__tag_ok(q, MP__TAG_QUEUE) || isnan(timeout))
    return -EINVAL;
  if (q->order != MP_QUEUE_FIFO)
    return mp__queue_list_get(q, buf, cap, out, outlen, mode, timeout);
  return fifo_get(q, buf, cap, out, outlen, mode, timeout);
}

/* For mp_queue_shutdown(). */
ssize_t mp__queue_take(mp_queue *q, void *buf, size_t cap, void **out, size_t *outlen,
                       enum take_mode mode, double timeout) {
  return take(q, buf, cap, out, outlen, mode, timeout);
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
