/* SPDX-License-Identifier: MIT */
/*
 * libmp's Process for the process-start-join workload.
 *
 *   libmp-process N   microseconds per mp_process_new + start + join + free
 *                     of a process whose target returns at once
 *   libmp-process alive M N   the same while M other libmp processes are
 *                     alive (asleep on an Event), for bench/scaling
 */
#include <mp.h>
#include <stdlib.h>

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

static int sleeper(void *arg) {
  return mp_event_wait(arg, MP_FOREVER) == 0 ? 0 : 1;
}

int main(int argc, char **argv) {
  long alive = 0;
  mp_event *ev = NULL;
  mp_process **others = NULL;
  if (argc > 1 && !strcmp(argv[1], "alive")) {
    alive = bench_count(argc, argv, 2, 10);
    argv += 2;
    argc -= 2;
    BENCH_CHECK_MP(mp_event_new(&ev));
    others = calloc((size_t)alive, sizeof *others);
    if (!others)
      bench_die("out of memory");
    for (long i = 0; i < alive; i++) {
      BENCH_CHECK_MP(mp_process_new(sleeper, ev, NULL, &others[i]));
      BENCH_CHECK_MP(mp_process_start(others[i]));
    }
  }
  long n = bench_count(argc, argv, 1, 500);
  for (long i = 0; i < n / 10 + 1; i++) /* warm-up */
    one();
  int64_t t0 = bench_now_ns();
  for (long i = 0; i < n; i++)
    one();
  double us = (double)(bench_now_ns() - t0) / 1e3 / (double)n;
  if (ev) {
    BENCH_CHECK_MP(mp_event_set(ev));
    for (long i = 0; i < alive; i++) {
      BENCH_CHECK_MP(mp_process_join(others[i], MP_FOREVER));
      BENCH_CHECK_MP(mp_process_free(others[i]));
    }
    free(others);
    BENCH_CHECK_MP(mp_event_free(ev));
  }
  bench_result(us);
  return 0;
}
