/* SPDX-License-Identifier: MIT */
/*
 * libmp's undo journal: how a structure guarded by a robust mutex survives a
 * holder killed half-way through changing it. The heap's allocator (heap.c)
 * and the LIFO/priority queue lists (queue_list.c) use it; each keeps its own
 * journal next to the words it guards, in the family heap.
 *
 * The rule. Under the mutex, a word of the structure changes only through
 * the owner's jset(): mp__journal_log() appends (address, old value) and
 * publishes the new count, and only then does the caller store the new
 * value. An operation ends with mp__journal_commit() (the count back to 0).
 * Nothing outside the journal may change before the commit (a page release,
 * a wake-up that lets someone act on the new state): a replay could not undo
 * it.
 *
 * A kill at any instruction leaves one of:
 *   - count n, entry n not yet written: the entry is ignored, its word is
 *     unchanged (the count is published after the entry);
 *   - count n+1, word not yet stored: the replay stores the old value back,
 *     which it still is;
 *   - count n+1, word stored: the replay restores it;
 *   - count 0 after the commit: the operation is whole; nothing to undo.
 * The next holder (told EOWNERDEAD by the kernel's robust-futex list) calls
 * mp__journal_replay(), newest entry first, before it marks the mutex
 * consistent; a holder killed inside the replay leaves the journal as it was
 * (each restore is idempotent) for the one after.
 *
 * Ordering against a crash is the compiler's only (signal fences): a killed
 * process's retired stores stay visible to the others. Restores are release
 * stores because some areas let readers without the mutex load journaled
 * words (a queue's size); such readers only ever take them as hints.
 */
#ifndef MP_JOURNAL_H
#define MP_JOURNAL_H

#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>

typedef struct mp__journal_entry {
  uint64_t *addr;
  uint64_t old;
} mp__journal_entry;

/* Record *addr's old value as entry *n of log (cap entries); the caller then
 * stores the new value. A full journal is a bug in libmp (each operation's
 * number of writes is bounded by its code), never a caller's misuse. */
static inline void mp__journal_log(uint64_t *n, mp__journal_entry *log, uint64_t cap,
                                   uint64_t *addr) {
  uint64_t i = *n;
  if (__builtin_expect(i >= cap, 0))
    abort();
  log[i].addr = addr;
  log[i].old = __atomic_load_n(addr, __ATOMIC_RELAXED);
  atomic_signal_fence(memory_order_seq_cst);
  *n = i + 1;
  atomic_signal_fence(memory_order_seq_cst);
}

/* End the operation: what it wrote stays. */
static inline void mp__journal_commit(uint64_t *n) {
  atomic_signal_fence(memory_order_seq_cst);
  *n = 0;
  atomic_signal_fence(memory_order_seq_cst);
}

/* Undo an operation a dead holder left open: restore every logged word,
 * newest first, then commit. Returns how many entries it restored. */
static inline uint64_t mp__journal_replay(uint64_t *n, mp__journal_entry *log, uint64_t cap) {
  uint64_t k = *n;
  if (k > cap)
    k = cap; /* never written so; a torn count must not run past the log */
  for (uint64_t i = k; i > 0; i--)
    __atomic_store_n(log[i - 1].addr, log[i - 1].old, __ATOMIC_RELEASE);
  mp__journal_commit(n);
  return k;
}

#endif /* MP_JOURNAL_H */
