/* SPDX-License-Identifier: MIT */
/*
 * Raw OS baseline os:futex: an event on a bare futex word (0 clear, 1 set),
 * for the event-wake workload.
 *
 *   os-futex ROUNDS     median set-to-wake latency between two processes, us
 */
#include "bench.h"

static void wait_set(void *ctx) {
  _Atomic uint32_t *word = ctx;
  while (atomic_load(word) == 0)
    bench_futex_wait(word, 0);
}

static void set(void *ctx) {
  _Atomic uint32_t *word = ctx;
  atomic_store(word, 1);
  bench_futex_wake(word, INT_MAX);
}

static void clear(void *ctx) { atomic_store((_Atomic uint32_t *)ctx, 0); }

int main(int argc, char **argv) {
  _Atomic uint32_t *word = bench_shared(sizeof *word);
  bench_result(bench_wake_run((bench_event_ops){wait_set, set, clear, word},
                              bench_count(argc, argv, 1, 200)));
  return 0;
}
