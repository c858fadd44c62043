/* SPDX-License-Identifier: MIT */
/*
 * libmp's one spin-then-sleep policy: how long a waiter looks before it
 * sleeps, and why. Every waiter in libmp spins by these budgets and through
 * these steps; no file defines a budget of its own.
 *
 * Why spin at all: a hand-off between two CPUs that both stay awake takes well
 * under a microsecond, while waking a sleeper costs 10-50 us on a VM (a futex
 * wake, an IPI, a schedule). A waiter whose peer answers within that time
 * loses less by looking than by sleeping.
 *
 * Why bounded: an idle waiter must stop using the CPU soon, and libmp's
 * processes usually outnumber the CPUs (a pool's workers plus the parent's
 * threads; two clients and two server threads of a Manager), so a spinner may
 * be keeping the very process it waits for off the CPU. Every spin therefore
 * ends by a budget, and every long spin offers its CPU (sched_yield) at
 * regular steps, so a peer waiting for that CPU runs at once.
 *
 * The budgets, the only ones in libmp:
 *
 *   MP__SPIN_LIMIT  200 pauses (a few microseconds). A hand-off in shared
 *       memory whose other side is already running and about to publish: a
 *       mutex being released, a ring slot being filled, a futex word about to
 *       change. Counted in pauses, never yields: the holder is on a CPU.
 *       (bench/run lock-contended and queue rows: 20 and 2,000 pauses were
 *       both slower; see lock.c for the lock's own measurements.)
 *
 *   MP__SPIN_NS  30 us of the clock. A wait for another process's work: a
 *       reply on a socket or a Manager channel, a pool task or its result,
 *       a FIFO queue's next message or its free room.
 *       Round trips measured alike with spins of 15 to 100 us when the peer
 *       answers at once; 30 us caps what an idle peer costs (one spin after
 *       each message). Read on the clock every MP__SPIN_CHECK pauses, with a
 *       yield at each such step (none in mp__spin_more_unyielding(), for a
 *       waiter that collects what it waits for itself).
 *
 *   MP__SPIN_BACKOFF  1,024 pauses, in looks spaced 1, 2, 4 ... 64 pauses
 *       apart (mp__backoff). A waiter for a lock that its holder releases and
 *       takes again at once (lock.c): each look at the lock's word pulls its
 *       cache line away from the holder, so looks close together slow the
 *       holder more than they gain. bench/run lock-contended (two processes
 *       on two CPUs, 1,000,000 increments each; 5 alternating rounds on a
 *       loaded 2-CPU machine): a look after every pause 3.1-4.6 M ops/s, no
 *       spin 8-9 M, spaced looks 25-27 M (1,024 or 4,096 pauses in all
 *       alike), against 11-18 M for glibc's plain process-shared mutex and
 *       12.5 M for its robust one.
 *
 *   MP__SPIN_POLL_YIELD  8. A spin whose step is itself a system call (a
 *       poll(2) of a socket, sys.c) yields and reads the clock every 8 steps
 *       instead of every MP__SPIN_CHECK: a pause loop was a few percent faster on two
 *       idle CPUs and several times slower when both peers shared one.
 *
 * A spinner that made progress (took one item and expects more) starts a new
 * span with mp__spin_restart().
 */
#ifndef MP_SPIN_H
#define MP_SPIN_H

#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#define MP__SPIN_LIMIT 200
#define MP__SPIN_NS 30000
#define MP__SPIN_CHECK 64
#define MP__SPIN_POLL_YIELD 8
#define MP__SPIN_BACKOFF 1024
#define MP__SPIN_BACKOFF_GAP 64

/* CLOCK_MONOTONIC in nanoseconds (sys.c). */
int64_t mp__now_ns(void);

/* One pause of a busy-wait loop. */
static inline void mp__cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield" ::: "memory");
#else
  atomic_signal_fence(memory_order_seq_cst);
#endif
}

/* A timed spin (MP__SPIN_NS): zero-initialise, then loop while
 * mp__spin_more() says so. */
typedef struct mp__spin {
  unsigned step;
  int64_t until; /* 0 until the first clock reading */
} mp__spin;

#define MP__SPIN_INIT                                                                              \
  { 0, 0 }

/* One step of a timed spin: a pause, or every MP__SPIN_CHECK steps a yield and
 * a look at the clock (no yield when !yield). Returns false once the budget is spent (the caller
 * sleeps), true to look again. */
static inline bool mp__spin_step(mp__spin *s, bool yield) {
  unsigned i = s->step++;
  if (i % MP__SPIN_CHECK) {
    mp__cpu_relax();
    return true;
  }
  int64_t now = mp__now_ns();
  if (!s->until)
    s->until = now + MP__SPIN_NS;
  if (now >= s->until)
    return false;
  if (yield && i)
    sched_yield();
  return true;
}

static inline bool mp__spin_more(mp__spin *s) { return mp__spin_step(s, true); }

/* mp__spin_more() without the yields: the same budget, the same clock
 * readings, only pauses. For a waiter that collects what it waits for itself
 * (a caller of mp_pool_apply() or mp_pool_map(), pool_handler.c's
 * mp__pool_wait_own): the threads a yield would let run are the pool's idle
 * workers, spinning for a task, and the waiter then loses its CPU to one of
 * them for a step of their spin while its own result arrives. (bench/run
 * pool-apply-roundtrip on two CPUs, 60 alternating rounds: yielding every
 * MP__SPIN_CHECK steps cost 20% of the median, 0.67 against 0.85 million
 * round trips/s; without the yields 0.81.) */
static inline bool mp__spin_more_unyielding(mp__spin *s) { return mp__spin_step(s, false); }

/* A spin with spaced looks (MP__SPIN_BACKOFF): zero-initialise, then call
 * mp__backoff_more() before each look; false once the budget is spent. */
typedef struct mp__backoff {
  unsigned gap;   /* pauses before the next look */
  unsigned spent; /* pauses so far */
} mp__backoff;

static inline bool mp__backoff_more(mp__backoff *b) {
  if (b->spent >= MP__SPIN_BACKOFF)
    return false;
  unsigned n = b->gap ? b->gap : 1;
  b->gap = n < MP__SPIN_BACKOFF_GAP ? 2 * n : n;
  b->spent += n;
  while (n--)
    mp__cpu_relax();
  return true;
}

/* Start a new span: the spinner made progress. */
static inline void mp__spin_restart(mp__spin *s) {
  s->step = 0;
  s->until = 0;
}

#endif /* MP_SPIN_H */
