/* SPDX-License-Identifier: MIT */
/*
 * libmp's Pipe for the pipe-pingpong workload: a duplex mp_pipe_new(), one end
 * in each process, mp_connection_send and mp_connection_recv into the
 * caller's buffer, both MP_FOREVER.
 *
 *   libmp-pipe pingpong LEN N   round trip, us
 */
#include <mp.h>

#include "bench.h"

static void put(void *c, const void *msg, size_t len) {
  BENCH_CHECK_MP(mp_connection_send(c, msg, len, MP_FOREVER));
}

static size_t get(void *c, void *buf, size_t cap) {
  ssize_t r = mp_connection_recv(c, buf, cap, MP_FOREVER);
  if (r < 0)
    bench_die("mp_connection_recv: %s", mp_strerror((int)r));
  return (size_t)r;
}

int main(int argc, char **argv) {
  if (argc < 4 || strcmp(argv[1], "pingpong"))
    bench_die("usage: libmp-pipe pingpong LEN N");
  size_t len = (size_t)bench_count(argc, argv, 2, 64);
  long n = bench_count(argc, argv, 3, 10000);
  mp_connection *c1, *c2;
  BENCH_CHECK_MP(mp_pipe_new(1, &c1, &c2));
  /* c1 is the pinger's end, c2 the ponger's: "there" is sent on c1 and
   * received on c2, "back" the other way. */
  bench_chan there = {put, get, c1, c2}, back = {put, get, c2, c1};
  bench_result(bench_pingpong_run(there, back, len, n));
  mp_connection_close(c1);
  mp_connection_close(c2);
  return 0;
}
