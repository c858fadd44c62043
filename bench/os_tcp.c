/* SPDX-License-Identifier: MIT */
/*
 * Raw OS baseline os:tcp for manager-dict-tcp: request/response round trips
 * over one loopback TCP connection (TCP_NODELAY), a client process sending a
 * 40-byte request and a server process answering 16 bytes, the size of a
 * manager's d[k] = v frames. Each receiver polls the socket, yielding its CPU
 * every 8 looks, before it reads, as libmp's receivers do: the fastest round
 * trip the kernel's loopback TCP gives two processes.
 *
 *   os-tcp roundtrip N   round trips/s
 */
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <sys/socket.h>

#include "bench.h"

enum { REQ = 40, RESP = 16 };

static void put(int fd, const char *b, size_t len) {
  while (len) {
    ssize_t r = send(fd, b, len, MSG_NOSIGNAL);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      bench_die("send: %s", strerror(errno));
    b += r;
    len -= (size_t)r;
  }
}

/* Read exactly len bytes; 0 at end of file before any. */
static int take(int fd, char *b, size_t len) {
  size_t got = 0;
  while (got < len) {
    struct pollfd p = {.fd = fd, .events = POLLIN, .revents = 0};
    for (unsigned i = 1; poll(&p, 1, 0) == 0; i++)
      if (i % 8 == 0)
        sched_yield();
    ssize_t r = recv(fd, b + got, len - got, MSG_DONTWAIT);
    if (r == 0 && got == 0)
      return 0;
    if (r == 0)
      bench_die("short read");
    if (r < 0 && errno != EAGAIN && errno != EINTR)
      bench_die("recv: %s", strerror(errno));
    if (r > 0)
      got += (size_t)r;
  }
  return 1;
}

static void nodelay(int fd) {
  int one = 1;
  if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0)
    bench_die("TCP_NODELAY: %s", strerror(errno));
}

static int serve(void *arg, int index) {
  (void)index;
  int *fds = arg, fd = fds[0];
  close(fds[1]); /* the client's end and the listener: its end of file must come */
  close(fds[2]);
  char b[REQ] = {0};
  while (take(fd, b, REQ))
    put(fd, b, RESP);
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 2 || strcmp(argv[1], "roundtrip"))
    bench_die("usage: os-tcp roundtrip N");
  long n = bench_count(argc, argv, 2, 20000);
  int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t al = sizeof a;
  if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) < 0 || listen(l, 1) < 0 ||
      getsockname(l, (struct sockaddr *)&a, &al) < 0)
    bench_die("listen: %s", strerror(errno));
  int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (c < 0 || connect(c, (struct sockaddr *)&a, sizeof a) < 0)
    bench_die("connect: %s", strerror(errno));
  int s = accept(l, NULL, NULL);
  if (s < 0)
    bench_die("accept: %s", strerror(errno));
  nodelay(c);
  nodelay(s);
  int fds[3] = {s, c, l};
  pid_t pid = bench_fork(serve, fds, 0);
  close(s);
  char b[REQ] = {0};
  long warm = bench_warmup(n);
  int64_t t0 = 0;
  for (long i = 0; i < warm + n; i++) {
    if (i == warm)
      t0 = bench_now_ns();
    put(c, b, REQ);
    if (!take(c, b, RESP))
      bench_die("the server ended");
  }
  double s_el = (double)(bench_now_ns() - t0) / 1e9;
  close(c);
  bench_reap(pid);
  bench_result((double)n / s_el);
  return 0;
}
