/* SPDX-License-Identifier: MIT */
/*
 * libmp's Lock for the lock workloads.
 *
 *   libmp-lock uncontended N   mp_lock_acquire + mp_lock_release, ns per pair
 *   libmp-lock contended N     two processes, N lock-protected increments
 *                              each, total increments per second
 */
#include <mp.h>

#include "bench.h"

static void lock(void *l) { BENCH_CHECK_MP(mp_lock_acquire(l, MP_FOREVER)); }

static void unlock(void *l) { BENCH_CHECK_MP(mp_lock_release(l)); }

static double uncontended(mp_lock *l, long n) {
  for (long i = 0; i < n / 10; i++) { /* warm-up */
    mp_lock_acquire(l, MP_FOREVER);
    mp_lock_release(l);
  }
  int64_t t0 = bench_now_ns();
  for (long i = 0; i < n; i++) {
    mp_lock_acquire(l, MP_FOREVER);
    mp_lock_release(l);
  }
  return (double)(bench_now_ns() - t0) / (double)n;
}

int main(int argc, char **argv) {
  if (argc < 2)
    bench_die("usage: libmp-lock uncontended|contended [N]");
  mp_lock *l;
  BENCH_CHECK_MP(mp_lock_new(&l));
  if (!strcmp(argv[1], "uncontended"))
    bench_result(uncontended(l, bench_count(argc, argv, 2, 5000000)));
  else if (!strcmp(argv[1], "contended"))
    bench_result(bench_contended_run((bench_lock_ops){lock, unlock, l},
                                     bench_count(argc, argv, 2, 1000000)));
  else
    bench_die("unknown mode '%s'", argv[1]);
  BENCH_CHECK_MP(mp_lock_free(l));
  return 0;
}
