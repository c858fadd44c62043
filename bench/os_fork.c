/* SPDX-License-Identifier: MIT */
/*
 * Raw OS baseline os:fork-waitpid: fork a child that exits at once, wait for
 * it.
 *
 *   os-fork N     microseconds per fork + waitpid
 */
#include "bench.h"

static void one(void) {
  pid_t pid = fork();
  if (pid < 0)
    bench_die("fork: %s", strerror(errno));
  if (pid == 0)
    _exit(0);
  bench_reap(pid);
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
