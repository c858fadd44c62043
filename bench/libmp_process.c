/* SPDX-License-Identifier: MIT */
/*
 * libmp's Process for the process-start-join workload.
 *
 *   libmp-process N   microseconds per mp_process_new + start + join + free
 *                     of a process whose target returns at once
 */
#include <mp.h>

#include "bench.h"

static int target(void *arg) {
  (void)arg;
  return 0;
}

static void one(void) {
  mp_process *p;
  BENCH_CHECK_MP(mp_process_new(target, NULL, NULL, &p));
  BENCH_CHECK_MP(mp_process_start(p));
  BENCH_CHECK_MP(mp_process_join(p, MP_FOREVER));
  int code = -1;
  if (mp_process_exitcode(p, &code) != 1 || code != 0)
    bench_die("child did not end with exit code 0 (%d)", code);
  BENCH_CHECK_MP(mp_process_free(p));
}

int main(int argc, char **argv) {
  long n = bench_count(argc, argv, 1, 500);
  for (long i = 0; i < n / 10 + 1; i++) /* warm-up */
    one();
  int64_t t0 = bench_now_ns();
  for (long i = 0; i < n; i++)
    one();
  bench_result((double)(bench_now_ns() - t0) / 1e3 / (double)n);
  return 0;
}
