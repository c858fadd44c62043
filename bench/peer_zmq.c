/* SPDX-License-Identifier: MIT */
/*
 * Peer peer:zmq: ZeroMQ PUSH/PULL over ipc:// (a Unix socket; libzmq's I/O
 * thread in each process) for the queue workloads, with libzmq's default
 * high-water marks (1,000 messages each side). A ZeroMQ context must not
 * cross a fork, so each process makes its own on its first put or get: the
 * consumer binds PULL, the producer connects PUSH (ZeroMQ retries until the
 * bind is there). The producer child ends with _exit(), which would drop what
 * libzmq's I/O thread has not sent yet, so after its last put it waits until
 * the consumer has received every message (a byte on a pipe), then closes.
 * The socket file is removed at the end.
 *
 *   peer-zmq stream LEN N     one producer process to one consumer process,
 *                             messages per second
 */
#include <zmq.h>

#include "bench.h"

typedef struct zchan {
  char endpoint[128];
  void *ctx, *sock; /* per process: NULL until its first use */
  long to_send;     /* the producer's puts, and the consumer's gets, to go */
  int done[2];      /* a pipe: the consumer tells the producer it has them all */
} zchan;

static void *open_sock(zchan *z, int type) {
  if (!z->sock) {
    z->ctx = zmq_ctx_new();
    if (!z->ctx)
      bench_die("zmq_ctx_new: %s", zmq_strerror(zmq_errno()));
    z->sock = zmq_socket(z->ctx, type);
    if (!z->sock)
      bench_die("zmq_socket: %s", zmq_strerror(zmq_errno()));
    int linger = -1; /* the producer's last messages go out before it exits */
    zmq_setsockopt(z->sock, ZMQ_LINGER, &linger, sizeof linger);
    int r = type == ZMQ_PULL ? zmq_bind(z->sock, z->endpoint) : zmq_connect(z->sock, z->endpoint);
    if (r < 0)
      bench_die("zmq %s %s: %s", type == ZMQ_PULL ? "bind" : "connect", z->endpoint,
                zmq_strerror(zmq_errno()));
  }
  return z->sock;
}

static void zchan_close(zchan *z);

static void put(void *q, const void *msg, size_t len) {
  zchan *z = q;
  void *s = open_sock(z, ZMQ_PUSH);
  while (zmq_send(s, msg, len, 0) < 0)
    if (zmq_errno() != EINTR)
      bench_die("zmq_send: %s", zmq_strerror(zmq_errno()));
  if (--z->to_send == 0) {
    char b;
    if (read(z->done[0], &b, 1) != 1)
      bench_die("peer-zmq: the consumer did not confirm");
    zchan_close(z);
  }
}

static size_t get(void *q, void *buf, size_t cap) {
  void *s = open_sock(q, ZMQ_PULL);
  for (;;) {
    int r = zmq_recv(s, buf, cap, 0);
    if (r >= 0) {
      zchan *z = q;
      if (--z->to_send == 0 && write(z->done[1], "", 1) != 1)
        bench_die("peer-zmq: write: %s", strerror(errno));
      return (size_t)r > cap ? cap + 1 : (size_t)r; /* truncated: the length check fails */
    }
    if (zmq_errno() != EINTR)
      bench_die("zmq_recv: %s", zmq_strerror(zmq_errno()));
  }
}

/* The producer child's end: close its socket so that its messages are
 * flushed (within the linger) before it exits. */
static void zchan_close(zchan *z) {
  if (z->sock) {
    zmq_close(z->sock);
    zmq_ctx_term(z->ctx);
    z->sock = z->ctx = NULL;
  }
}

static zchan chan;

int main(int argc, char **argv) {
  if (argc < 4 || strcmp(argv[1], "stream"))
    bench_die("usage: peer-zmq stream LEN N");
  size_t len = (size_t)bench_count(argc, argv, 2, 64);
  long n = bench_count(argc, argv, 3, 100000);
  snprintf(chan.endpoint, sizeof chan.endpoint, "ipc:///tmp/libmp-bench-zmq-%d", (int)getpid());
  if (pipe(chan.done) < 0)
    bench_die("pipe: %s", strerror(errno));
  chan.to_send = bench_warmup(n) + n; /* what bench_stream_run's producer sends */
  /* bind before the producer exists, so no message waits on a retry */
  open_sock(&chan, ZMQ_PULL);
  zchan rx = chan; /* the parent's PULL */
  chan.sock = chan.ctx = NULL; /* the child makes its own PUSH */
  double r = bench_stream_run((bench_chan){put, get, &chan, &rx}, len, n);
  zchan_close(&rx);
  unlink(chan.endpoint + strlen("ipc://"));
  bench_result(r);
  return 0;
}
