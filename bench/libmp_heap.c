/* SPDX-License-Identifier: MIT */
/*
 * The family heap under load, for bench/scaling.
 *
 *   libmp-heap churn LIVE N   nanoseconds per mp_heap_free + mp_heap_alloc
 *                             pair while LIVE blocks are allocated: LIVE
 *                             blocks of 16 to 512 bytes (pseudo-random) are
 *                             made first, then N times a random one is freed
 *                             and a new one of a random size takes its place
 */
#include <mp.h>
#include <stdlib.h>

#include "bench.h"

static uint64_t rng = 0x9e3779b97f4a7c15u;

static uint64_t next(void) {
  rng ^= rng << 13; /* xorshift64 */
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return rng;
}

static void *one(void) {
  size_t size = 16 + (size_t)(next() % 497);
  void *p = mp_heap_alloc(size);
  if (!p)
    bench_die("mp_heap_alloc(%zu) failed", size);
  memset(p, 1, 8);
  return p;
}

int main(int argc, char **argv) {
  if (argc < 4 || strcmp(argv[1], "churn"))
    bench_die("usage: libmp-heap churn LIVE N");
  long live = bench_count(argc, argv, 2, 1000);
  long n = bench_count(argc, argv, 3, 1000000);
  void **b = malloc((size_t)live * sizeof *b);
  if (!b)
    bench_die("out of memory");
  for (long i = 0; i < live; i++)
    b[i] = one();
  for (long i = 0; i < n / 10; i++) { /* warm-up: the same churn */
    size_t k = (size_t)(next() % (uint64_t)live);
    BENCH_CHECK_MP(mp_heap_free(b[k]));
    b[k] = one();
  }
  int64_t t0 = bench_now_ns();
  for (long i = 0; i < n; i++) {
    size_t k = (size_t)(next() % (uint64_t)live);
    BENCH_CHECK_MP(mp_heap_free(b[k]));
    b[k] = one();
  }
  double ns = (double)(bench_now_ns() - t0) / (double)n;
  for (long i = 0; i < live; i++)
    BENCH_CHECK_MP(mp_heap_free(b[i]));
  free(b);
  bench_result(ns);
  return 0;
}
