/* SPDX-License-Identifier: MIT */
/*
 * libmp's SharedMemory for the shm-create-attach workload.
 *
 *   libmp-shm N   microseconds per create (generated name, 4096 bytes, tracked)
 *                 + write + attach by name + read + close the attached view +
 *                 unlink + close
 */
#include <mp.h>

#include "bench.h"

static void one(void) {
  mp_shared_memory *a, *b;
  BENCH_CHECK_MP(mp_shared_memory_new(NULL, 4096, NULL, &a));
  ((unsigned char *)mp_shared_memory_buf(a))[100] = 42;
  BENCH_CHECK_MP(mp_shared_memory_attach(mp_shared_memory_name(a), NULL, &b));
  if (mp_shared_memory_size(b) != 4096 || ((unsigned char *)mp_shared_memory_buf(b))[100] != 42)
    bench_die("the attached block does not hold what was written");
  BENCH_CHECK_MP(mp_shared_memory_close(b));
  BENCH_CHECK_MP(mp_shared_memory_unlink(a));
  BENCH_CHECK_MP(mp_shared_memory_close(a));
}

int main(int argc, char **argv) {
  long n = bench_count(argc, argv, 1, 20000);
  for (long i = 0; i < n / 10 + 1; i++) /* warm-up */
    one();
  int64_t t0 = bench_now_ns();
  for (long i = 0; i < n; i++)
    one();
  bench_result((double)(bench_now_ns() - t0) / 1e3 / (double)n);
  return 0;
}
