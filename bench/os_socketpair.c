/* SPDX-License-Identifier: MIT */
/*
 * Raw OS baseline os:socketpair: a Unix SOCK_SEQPACKET socket pair (the
 * kernel keeps each message whole), one send and one recv per message, for the
 * ping-pong workloads.
 *
 *   os-socketpair pingpong LEN N   round trip, us
 */
#include <sys/socket.h>

#include "bench.h"

static void put(void *tx, const void *msg, size_t len) {
  while (send(*(int *)tx, msg, len, MSG_NOSIGNAL) < 0)
    if (errno != EINTR)
      bench_die("send: %s", strerror(errno));
}

static size_t get(void *rx, void *buf, size_t cap) {
  for (;;) {
    ssize_t r = recv(*(int *)rx, buf, cap, 0);
    if (r >= 0)
      return (size_t)r;
    if (errno != EINTR)
      bench_die("recv: %s", strerror(errno));
  }
}

int main(int argc, char **argv) {
  if (argc < 4 || strcmp(argv[1], "pingpong"))
    bench_die("usage: os-socketpair pingpong LEN N");
  size_t len = (size_t)bench_count(argc, argv, 2, 64);
  long n = bench_count(argc, argv, 3, 10000);
  if (len > 65536) /* a record must fit in the socket's buffer */
    bench_die("os-socketpair: messages of at most 64 KiB, not %zu bytes", len);
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
    bench_die("socketpair: %s", strerror(errno));
  /* sv[0] is the pinger's end, sv[1] the ponger's */
  bench_result(bench_pingpong_run((bench_chan){put, get, &sv[0], &sv[1]},
                                  (bench_chan){put, get, &sv[1], &sv[0]}, len, n));
  return 0;
}
