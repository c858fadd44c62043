/* SPDX-License-Identifier: MIT */
/*
 * Raw OS baseline os:fork-split for pool-heap-map: N doubles in an anonymous
 * shared mapping, the work split by hand into one contiguous part per CPU,
 * each done by a forked child in place; the parent waits for them all.
 *
 *   os-forksplit N     items/s (the forks are inside the timed part)
 */
#include <sched.h>

#include "bench.h"
#include "pool_work.h"

int main(int argc, char **argv) {
  long n = bench_count(argc, argv, 1, 10000000);
  cpu_set_t set;
  int cpus = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 1;
  double *v = bench_shared((size_t)n * sizeof *v);
  for (long i = 0; i < n; i++)
    v[i] = (double)i;
  int64_t t0 = bench_now_ns();
  pid_t pids[1024];
  for (int c = 0; c < cpus && c < 1024; c++) {
    pids[c] = fork();
    if (pids[c] < 0)
      bench_die("fork: %s", strerror(errno));
    if (pids[c] == 0) {
      long lo = n * c / cpus, hi = n * (c + 1) / cpus;
      for (long i = lo; i < hi; i++)
        v[i] = pool_work_item(v[i]);
      _exit(0);
    }
  }
  for (int c = 0; c < cpus && c < 1024; c++)
    bench_reap(pids[c]);
  double s = (double)(bench_now_ns() - t0) / 1e9;
  for (long i = 0; i < n; i += 9973)
    if (v[i] != pool_work_item((double)i))
      bench_die("wrong result at %ld", i);
  bench_result((double)n / s);
  return 0;
}
