/* SPDX-License-Identifier: MIT */
/*
 * libmp's Queue for the queue workloads: a FIFO queue with the default options
 * (mp_queue_new(0, NULL, ...), which is also what mp_simple_queue_new()
 * makes), mp_queue_put and mp_queue_get into the caller's buffer, both
 * MP_FOREVER.
 *
 *   libmp-queue stream LEN N     one producer process to one consumer
 *                                process, messages per second
 *   libmp-queue mpmc LEN N       two producers, two consumers, N messages in
 *                                all, messages per second
 *   libmp-queue pingpong LEN N   round trip through a pair of queues, us
 */
#include <mp.h>

#include "bench.h"

static void put(void *q, const void *msg, size_t len) {
  BENCH_CHECK_MP(mp_queue_put(q, msg, len, MP_FOREVER));
}

static size_t get(void *q, void *buf, size_t cap) {
  ssize_t r = mp_queue_get(q, buf, cap, MP_FOREVER);
  if (r < 0)
    bench_die("mp_queue_get: %s", mp_strerror((int)r));
  return (size_t)r;
}

static mp_queue *queue(void) {
  mp_queue *q;
  BENCH_CHECK_MP(mp_queue_new(0, NULL, &q));
  return q;
}

int main(int argc, char **argv) {
  if (argc < 4)
    bench_die("usage: libmp-queue stream|mpmc|pingpong LEN N");
  size_t len = (size_t)bench_count(argc, argv, 2, 64);
  long n = bench_count(argc, argv, 3, 1000000);
  mp_queue *a = queue();
  bench_chan ca = {put, get, a, a};
  if (!strcmp(argv[1], "stream")) {
    bench_result(bench_stream_run(ca, len, n));
  } else if (!strcmp(argv[1], "mpmc")) {
    bench_result(bench_mpmc_run(ca, len, n));
  } else if (!strcmp(argv[1], "pingpong")) {
    mp_queue *b = queue();
    bench_result(bench_pingpong_run(ca, (bench_chan){put, get, b, b}, len, n));
    BENCH_CHECK_MP(mp_queue_free(b));
  } else {
    bench_die("unknown mode '%s'", argv[1]);
  }
  BENCH_CHECK_MP(mp_queue_free(a));
  return 0;
}
