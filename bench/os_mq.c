/* SPDX-License-Identifier: MIT */
/*
 * Raw OS baseline os:mq: POSIX message queues (mq_open, mq_send, mq_receive)
 * for the queue workloads. Each queue holds the system's default number of
 * messages (/proc/sys/fs/mqueue/msg_max, 10 here) of exactly LEN bytes; its
 * name is unlinked as soon as it is open, so nothing is left behind, even by
 * a crash. The descriptors are inherited across fork.
 *
 *   os-mq stream LEN N     one producer process to one consumer process,
 *                          messages per second
 *   os-mq mpmc LEN N       two producers, two consumers, messages per second
 *   os-mq pingpong LEN N   round trip through a pair of queues, us
 */
#include <fcntl.h>
#include <mqueue.h>

#include "bench.h"

static void put(void *q, const void *msg, size_t len) {
  mqd_t d = *(mqd_t *)q;
  while (mq_send(d, msg, len, 0) < 0)
    if (errno != EINTR)
      bench_die("mq_send: %s", strerror(errno));
}

static size_t get(void *q, void *buf, size_t cap) {
  mqd_t d = *(mqd_t *)q;
  for (;;) {
    ssize_t r = mq_receive(d, buf, cap, NULL);
    if (r >= 0)
      return (size_t)r;
    if (errno != EINTR)
      bench_die("mq_receive: %s", strerror(errno));
  }
}

static long system_msg_max(void) {
  long v = 10;
  FILE *f = fopen("/proc/sys/fs/mqueue/msg_max", "r");
  if (f) {
    if (fscanf(f, "%ld", &v) != 1)
      v = 10;
    fclose(f);
  }
  return v;
}

static mqd_t queue(size_t len, int k) {
  char name[64];
  snprintf(name, sizeof name, "/libmp-bench-mq-%d-%d", (int)getpid(), k);
  struct mq_attr attr = {.mq_maxmsg = system_msg_max(), .mq_msgsize = (long)len};
  mqd_t d = mq_open(name, O_RDWR | O_CREAT | O_EXCL, 0600, &attr);
  if (d == (mqd_t)-1)
    bench_die("mq_open %s (%ld messages of %zu bytes): %s", name, attr.mq_maxmsg, len,
              strerror(errno));
  mq_unlink(name);
  return d;
}

int main(int argc, char **argv) {
  if (argc < 4)
    bench_die("usage: os-mq stream|mpmc|pingpong LEN N");
  size_t len = (size_t)bench_count(argc, argv, 2, 64);
  long n = bench_count(argc, argv, 3, 100000);
  mqd_t a = queue(len, 0);
  bench_chan ca = {put, get, &a, &a};
  if (!strcmp(argv[1], "stream")) {
    bench_result(bench_stream_run(ca, len, n));
  } else if (!strcmp(argv[1], "mpmc")) {
    bench_result(bench_mpmc_run(ca, len, n));
  } else if (!strcmp(argv[1], "pingpong")) {
    mqd_t b = queue(len, 1);
    bench_result(bench_pingpong_run(ca, (bench_chan){put, get, &b, &b}, len, n));
    mq_close(b);
  } else {
    bench_die("unknown mode '%s'", argv[1]);
  }
  mq_close(a);
  return 0;
}
