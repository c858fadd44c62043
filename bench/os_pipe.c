/* SPDX-License-Identifier: MIT */
/*
 * Raw OS baseline os:pipe: a plain pipe(2) carrying each message as a 4-byte
 * length and the bytes, for the queue and pipe workloads. The sender writes
 * both with one writev (looping over partial writes of large messages); the
 * receiver reads the length, then the message, each with read until complete.
 * One producer and one consumer (a pipe keeps no boundaries between readers).
 *
 *   os-pipe stream LEN N     one producer process to one consumer process,
 *                            messages per second
 *   os-pipe pingpong LEN N   round trip through a pair of pipes, us
 */
#include <sys/uio.h>

#include "bench.h"

typedef struct end {
  int fd;
} end;

static void put(void *tx, const void *msg, size_t len) {
  int fd = ((end *)tx)->fd;
  uint32_t n32 = (uint32_t)len;
  struct iovec iov[2] = {{&n32, 4}, {(void *)msg, len}};
  struct iovec *v = iov;
  int cnt = 2;
  while (cnt > 0) {
    ssize_t r = writev(fd, v, cnt);
    if (r < 0) {
      if (errno == EINTR)
        continue;
      bench_die("writev: %s", strerror(errno));
    }
    while (cnt > 0 && (size_t)r >= v->iov_len) {
      r -= (ssize_t)v->iov_len;
      v++;
      cnt--;
    }
    if (cnt > 0) {
      v->iov_base = (char *)v->iov_base + r;
      v->iov_len -= (size_t)r;
    }
  }
}

static void read_all(int fd, void *buf, size_t n) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = read(fd, (char *)buf + got, n - got);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      bench_die("read: %s", r ? strerror(errno) : "end of file");
    got += (size_t)r;
  }
}

static size_t get(void *rx, void *buf, size_t cap) {
  int fd = ((end *)rx)->fd;
  uint32_t n32;
  read_all(fd, &n32, 4);
  if (n32 > cap)
    bench_die("os-pipe: a message of %u bytes, room for %zu", n32, cap);
  read_all(fd, buf, n32);
  return n32;
}

static bench_chan pipe_chan(end e[2]) {
  int fds[2];
  if (pipe(fds) < 0)
    bench_die("pipe: %s", strerror(errno));
  e[0].fd = fds[1];
  e[1].fd = fds[0];
  return (bench_chan){put, get, &e[0], &e[1]};
}

int main(int argc, char **argv) {
  if (argc < 4)
    bench_die("usage: os-pipe stream|pingpong LEN N");
  size_t len = (size_t)bench_count(argc, argv, 2, 64);
  long n = bench_count(argc, argv, 3, 100000);
  end a[2], b[2];
  if (!strcmp(argv[1], "stream"))
    bench_result(bench_stream_run(pipe_chan(a), len, n));
  else if (!strcmp(argv[1], "pingpong"))
    bench_result(bench_pingpong_run(pipe_chan(a), pipe_chan(b), len, n));
  else
    bench_die("unknown mode '%s'", argv[1]);
  return 0;
}
