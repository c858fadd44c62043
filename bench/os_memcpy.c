/* SPDX-License-Identifier: MIT */
/*
 * Raw OS baseline os:memcpy: the speed of copying a message in one process,
 * for the queue-1MiB workload. Each "message" is stamped, copied with memcpy
 * from one LEN-byte buffer into another and checked exactly as the receivers
 * of the queue workloads check theirs (bench_msg_make, bench_msg_take, with
 * the poisoning and the sampled full comparison), so the rows differ only by
 * what moves the bytes.
 *
 *   os-memcpy LEN N   messages copied per second
 */
#include "bench.h"

typedef struct slot {
  const void *msg;
  size_t len;
} slot;

static void put(void *tx, const void *msg, size_t len) { *(slot *)tx = (slot){msg, len}; }

static size_t get(void *rx, void *buf, size_t cap) {
  slot *s = rx;
  if (s->len > cap)
    bench_die("os-memcpy: %zu bytes, room for %zu", s->len, cap);
  memcpy(buf, s->msg, s->len);
  return s->len;
}

int main(int argc, char **argv) {
  size_t len = (size_t)bench_count(argc, argv, 1, 1 << 20);
  long n = bench_count(argc, argv, 2, 2000);
  bench_msgs m;
  bench_msgs_init(&m, len);
  slot s;
  bench_chan ch = {put, get, &s, &s};
  long warm = bench_warmup(n);
  int64_t t0 = 0;
  for (long i = 0; i < warm + n; i++) {
    if (i == warm)
      t0 = bench_now_ns();
    uint64_t stamp = bench_stamp(0, (uint64_t)i);
    ch.put(ch.tx, bench_msg_make(&m, stamp), len);
    bench_expect(bench_msg_take(&m, ch), stamp, "copy");
  }
  bench_result((double)n / ((double)(bench_now_ns() - t0) / 1e9));
  return 0;
}
