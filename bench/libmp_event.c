/* SPDX-License-Identifier: MIT */
/*
 * libmp's Event for the event-wake workload.
 *
 *   libmp-event ROUNDS   median set-to-wake latency between two processes, us
 */
#include <mp.h>

#include "bench.h"

static void wait_set(void *ev) { BENCH_CHECK_MP(mp_event_wait(ev, MP_FOREVER)); }

static void set(void *ev) { BENCH_CHECK_MP(mp_event_set(ev)); }

static void clear(void *ev) { BENCH_CHECK_MP(mp_event_clear(ev)); }

int main(int argc, char **argv) {
  mp_event *ev;
  BENCH_CHECK_MP(mp_event_new(&ev));
  bench_result(
      bench_wake_run((bench_event_ops){wait_set, set, clear, ev}, bench_count(argc, argv, 1, 200)));
  BENCH_CHECK_MP(mp_event_free(ev));
  return 0;
}
