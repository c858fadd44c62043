/* SPDX-License-Identifier: MIT */
/*
 * libmp's Value for the value-increment workload: one process incrementing a
 * shared int the safe way, ns per increment.
 *
 *   libmp-value locked N   the locked idiom (Python's
 *                          `with v.get_lock(): v.value += 1`):
 *                          mp_value_get_lock once, then per increment
 *                          mp_lock_acquire, `*v += 1`, mp_lock_release
 *   libmp-value atomic N   mp_value_add(v, 1, NULL), no lock
 */
#include <mp.h>

#include "bench.h"

static void locked(int *v, long n) {
  mp_lock *l;
  BENCH_CHECK_MP(mp_value_get_lock(v, &l));
  for (long i = 0; i < n; i++) {
    mp_lock_acquire(l, MP_FOREVER);
    *v += 1;
    mp_lock_release(l);
  }
}

static void atomic(int *v, long n) {
  for (long i = 0; i < n; i++)
    mp_value_add(v, 1, NULL);
}

int main(int argc, char **argv) {
  if (argc < 2 || (strcmp(argv[1], "locked") && strcmp(argv[1], "atomic")))
    bench_die("usage: libmp-value locked|atomic [N]");
  void (*run)(int *, long) = !strcmp(argv[1], "locked") ? locked : atomic;
  long n = bench_count(argc, argv, 2, 5000000);
  int *v;
  BENCH_CHECK_MP(mp_value_new('i', NULL, NULL, &v));
  run(v, n / 10); /* warm-up */
  int64_t t0 = bench_now_ns();
  run(v, n);
  double ns = (double)(bench_now_ns() - t0) / (double)n;
  int got;
  BENCH_CHECK_MP(mp_value_load(v, &got));
  if ((long)got != n + n / 10)
    bench_die("value is %d, expected %ld", got, n + n / 10);
  bench_result(ns);
  BENCH_CHECK_MP(mp_value_free(v));
  return 0;
}
