/* SPDX-License-Identifier: MIT */
/*
 * Peer peer:boost: Boost.Interprocess message_queue (its C++ half in
 * peer_boost_mq.cpp) for the queue workloads. A message_queue is a ring of
 * fixed-size slots under a process-shared mutex and two condition variables;
 * send and receive copy each message in and out. It holds as many messages of
 * LEN bytes as fit in 256 KiB (libmp's default ring), at least 4.
 *
 *   peer-boost stream LEN N     one producer process to one consumer
 *                               process, messages per second
 */
#include "bench.h"

void *peer_boost_new(const char *name, size_t max_msg, size_t msg_size);
int peer_boost_send(void *q, const void *msg, size_t len);
long peer_boost_receive(void *q, void *buf, size_t cap);

static void put(void *q, const void *msg, size_t len) {
  if (peer_boost_send(q, msg, len) < 0)
    bench_die("boost send failed");
}

static size_t get(void *q, void *buf, size_t cap) {
  long r = peer_boost_receive(q, buf, cap);
  if (r < 0)
    bench_die("boost receive failed");
  return (size_t)r;
}

int main(int argc, char **argv) {
  if (argc < 4 || strcmp(argv[1], "stream"))
    bench_die("usage: peer-boost stream LEN N");
  size_t len = (size_t)bench_count(argc, argv, 2, 64);
  long n = bench_count(argc, argv, 3, 100000);
  char name[64];
  snprintf(name, sizeof name, "libmp-bench-boost-%d", (int)getpid());
  size_t max_msg = ((size_t)256 * 1024) / len;
  if (max_msg < 4)
    max_msg = 4;
  void *q = peer_boost_new(name, max_msg, len);
  if (!q)
    bench_die("no boost message_queue");
  bench_result(bench_stream_run((bench_chan){put, get, q, q}, len, n));
  return 0;
}
