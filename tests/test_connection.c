/* SPDX-License-Identifier: MIT */
/* Pipe and Connection: framing, directions, EOF, timeouts, descriptors in
 * transit, several senders, and mp_connection_wait() over every kind. */
#include "testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <mp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* Under AddressSanitizer, let an impossible malloc() return NULL as libc's
 * does (test_connection_absurd_length_is_skipped) rather than abort. */
const char *__asan_default_options(void);
const char *__asan_default_options(void) { return "allocator_may_return_null=1"; }

/* ------------------------------------------------------------ helpers */

static void new_pipe(int duplex, mp_connection **a, mp_connection **b) {
  *a = *b = NULL;
  assert_int_equal(mp_pipe_new(duplex, a, b), 0);
  assert_non_null(*a);
  assert_non_null(*b);
}

static unsigned char pattern(unsigned seed, size_t i) {
  return (unsigned char)(seed * 131u + i * 7u + (i >> 9) + (i >> 17));
}

static void fill(void *buf, size_t n, unsigned seed) {
  unsigned char *p = buf;
  for (size_t i = 0; i < n; i++)
    p[i] = pattern(seed, i);
}

static bool check(const void *buf, size_t n, unsigned seed) {
  const unsigned char *p = buf;
  for (size_t i = 0; i < n; i++)
    if (p[i] != pattern(seed, i))
      return false;
  return true;
}

/* A descriptor number that is not open. */
static int closed_fd(void) {
  int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  assert_true(fd >= 0);
  close(fd);
  return fd;
}

static void send_str(mp_connection *c, const char *s) {
  assert_int_equal(mp_connection_send(c, s, strlen(s), MP_FOREVER), 0);
}

static void recv_str(mp_connection *c, const char *want) {
  char buf[256];
  ssize_t n = mp_connection_recv(c, buf, sizeof buf, 5.0);
  assert_int_equal(n, (ssize_t)strlen(want));
  assert_memory_equal(buf, want, strlen(want));
}

/* A blocking call with a timeout, returning what it gives when unsatisfied. */
typedef long (*blocking_fn)(void *ctx, double timeout);

/* Timeout 0: the unsatisfied result at once. 0.2 s: after the timeout, not
 * before and not wildly after. Signals during a 0.3 s wait: neither end it
 * early nor stretch it. */
static void check_blocking(blocking_fn fn, void *ctx, long unsatisfied) {
  double t0 = tu_now();
  assert_int_equal(fn(ctx, MP_NOWAIT), unsatisfied);
  assert_true(tu_now() - t0 < 0.5);

  t0 = tu_now();
  assert_int_equal(fn(ctx, 0.2), unsatisfied);
  double e = tu_now() - t0;
  assert_true(e >= 0.2 - 0.01);
  assert_true(e < 2.0);

  tu_signals_start(0.05, 0.05);
  t0 = tu_now();
  assert_int_equal(fn(ctx, 0.3), unsatisfied);
  e = tu_now() - t0;
  int signals = tu_signals_stop();
  assert_true(e >= 0.3 - 0.01);
  assert_true(e < 2.0);
  assert_true(signals >= 2);
}

/* ------------------------------------------------------------ basics */

static void test_connection_pipe_new_and_accessors(void **state) {
  (void)state;
  mp_connection *a = NULL, *b = NULL;
  assert_int_equal(mp_pipe_new(1, NULL, &b), -EINVAL);
  assert_int_equal(mp_pipe_new(1, &a, NULL), -EINVAL);
  assert_null(a);
  assert_null(b);

  new_pipe(1, &a, &b);
  assert_int_equal(mp_connection_readable(a), 1);
  assert_int_equal(mp_connection_writable(a), 1);
  assert_int_equal(mp_connection_readable(b), 1);
  assert_int_equal(mp_connection_writable(b), 1);
  int fa = mp_connection_fileno(a), fb = mp_connection_fileno(b);
  assert_true(fa >= 0 && fb >= 0 && fa != fb);
  assert_true(fcntl(fa, F_GETFD) & FD_CLOEXEC);
  assert_true(fcntl(fb, F_GETFD) & FD_CLOEXEC);
  assert_int_equal(mp_connection_close(a), 0);
  assert_int_equal(mp_connection_close(b), 0);

  new_pipe(0, &a, &b);
  assert_int_equal(mp_connection_readable(a), 1);
  assert_int_equal(mp_connection_writable(a), 0);
  assert_int_equal(mp_connection_readable(b), 0);
  assert_int_equal(mp_connection_writable(b), 1);
  assert_int_equal(mp_connection_close(a), 0);
  assert_int_equal(mp_connection_close(b), 0);

  assert_int_equal(mp_connection_close(NULL), 0);
  assert_int_equal(mp_connection_fileno(NULL), -EINVAL);
  assert_int_equal(mp_connection_readable(NULL), -EINVAL);
  assert_int_equal(mp_connection_writable(NULL), -EINVAL);
}

static void test_connection_bad_arguments(void **state) {
  (void)state;
  mp_connection *a, *b;
  new_pipe(1, &a, &b);
  char buf[8];
  void *p = NULL;
  int fd = -1;
  mp_connection *got = NULL;
  assert_int_equal(mp_connection_send(NULL, "x", 1, 0), -EINVAL);
  assert_int_equal(mp_connection_send(a, NULL, 1, 0), -EINVAL);
  assert_int_equal(mp_connection_send(a, "x", 1, NAN), -EINVAL);
  assert_int_equal(mp_connection_send_bytes(NULL, "x", 1, 0, 1, 0), -EINVAL);
  assert_int_equal(mp_connection_recv(NULL, buf, sizeof buf, 0), -EINVAL);
  assert_int_equal(mp_connection_recv(a, NULL, 4, 0), -EINVAL);
  assert_int_equal(mp_connection_recv(a, buf, sizeof buf, NAN), -EINVAL);
  assert_int_equal(mp_connection_recv_alloc(NULL, &p, 0), -EINVAL);
  assert_int_equal(mp_connection_recv_alloc(a, NULL, 0), -EINVAL);
  assert_int_equal(mp_connection_poll(NULL, 0), -EINVAL);
  assert_int_equal(mp_connection_poll(a, NAN), -EINVAL);
  assert_int_equal(mp_connection_peek_size(NULL, 0), -EINVAL);
  assert_int_equal(mp_connection_send_fd(NULL, 0, 0), -EINVAL);
  assert_int_equal(mp_connection_send_fd(a, -1, 0), -EBADF);
  assert_int_equal(mp_connection_recv_fd(NULL, &fd, 0), -EINVAL);
  assert_int_equal(mp_connection_recv_fd(a, NULL, 0), -EINVAL);
  assert_int_equal(mp_connection_send_connection(NULL, b, 0), -EINVAL);
  assert_int_equal(mp_connection_send_connection(a, NULL, 0), -EINVAL);
  assert_int_equal(mp_connection_recv_connection(NULL, &got, 0), -EINVAL);
  assert_int_equal(mp_connection_recv_connection(a, NULL, 0), -EINVAL);
  assert_null(p);
  assert_int_equal(fd, -1);
  assert_null(got);
  /* nothing was sent by any of those */
  assert_int_equal(mp_connection_poll(b, 0), 0);
  mp_connection_close(a);
  mp_connection_close(b);
}

/* A second close, and any use after close, give -EINVAL without reading
 * freed memory (AddressSanitizer reported a use after free here), also after
 * many other handles came and went; the other end is untouched. */
static void test_connection_double_close(void **state) {
  (void)state;
  mp_connection *a, *b;
  new_pipe(1, &a, &b);
  assert_int_equal(mp_connection_close(a), 0);
  assert_int_equal(mp_connection_close(a), -EINVAL);
  assert_int_equal(mp_connection_send(a, "x", 1, 0), -EINVAL);
  assert_int_equal(mp_connection_recv(a, NULL, 0, 0), -EINVAL);
  assert_int_equal(mp_connection_poll(a, 0), -EINVAL);
  assert_int_equal(mp_connection_fileno(a), -EINVAL);
  for (int i = 0; i < 20; i++) {
    mp_connection *x, *y;
    new_pipe(1, &x, &y);
    assert_true(x != a && y != a); /* not reused at once */
    assert_int_equal(mp_connection_close(x), 0);
    assert_int_equal(mp_connection_close(y), 0);
    assert_int_equal(mp_connection_close(y), -EINVAL);
  }
  assert_int_equal(mp_connection_close(a), -EINVAL);
  assert_int_equal(mp_connection_recv(b, NULL, 0, 5), -EPIPE);
  assert_int_equal(mp_connection_close(b), 0);
  assert_int_equal(mp_connection_close(b), -EINVAL);
}

static void test_connection_duplex_both_ways(void **state) {
  (void)state;
  mp_connection *a, *b;
  new_pipe(1, &a, &b);
  send_str(a, "ping");
  recv_str(b, "ping");
  send_str(b, "pong");
  recv_str(a, "pong");
  mp_connection_close(a);
  mp_connection_close(b);
}

static void test_connection_simplex_wrong_direction(void **state) {
  (void)state;
  mp_connection *r, *w;
  new_pipe(0, &r, &w);
  char buf[8];
  void *p;
  int fd;
  mp_connection *got;
  assert_int_equal(mp_connection_send(r, "x", 1, 0), -EBADF);
  assert_int_equal(mp_connection_send_bytes(r, "x", 1, 0, 1, 0), -EBADF);
  assert_int_equal(mp_connection_send_fd(r, mp_connection_fileno(r), 0), -EBADF);
  assert_int_equal(mp_connection_send_connection(r, w, 0), -EBADF);
  assert_int_equal(mp_connection_recv(w, buf, sizeof buf, 0), -EBADF);
  assert_int_equal(mp_connection_recv_alloc(w, &p, 0), -EBADF);
  assert_int_equal(mp_connection_poll(w, 0), -EBADF);
  assert_int_equal(mp_connection_peek_size(w, 0), -EBADF);
  assert_int_equal(mp_connection_recv_fd(w, &fd, 0), -EBADF);
  assert_int_equal(mp_connection_recv_connection(w, &got, 0), -EBADF);
  mp_wait_item it = {.kind = MP_WAIT_CONNECTION, .obj = w};
  assert_int_equal(mp_connection_wait(&it, 1, 0), -EBADF);
  /* the right direction works */
  send_str(w, "one way");
  recv_str(r, "one way");
  mp_connection_close(r);
  mp_connection_close(w);
}

static void test_connection_emsgsize_keeps_message(void **state) {
  (void)state;
  mp_connection *a, *b;
  new_pipe(1, &a, &b);
  char msg[100], buf[100];
  fill(msg, sizeof msg, 1);
  assert_int_equal(mp_connection_send(a, msg, sizeof msg, 0), 0);
  assert_int_equal(mp_connection_recv(b, buf, 10, 0), -EMSGSIZE);
  assert_int_equal(mp_connection_recv(b, buf, 99, 0), -EMSGSIZE);
  assert_int_equal(mp_connection_recv(b, NULL, 0, 0), -EMSGSIZE);
  assert_int_equal(mp_connection_peek_size(b, 0), 100);
  assert_int_equal(mp_connection_recv(b, buf, sizeof buf, 0), 100);
  assert_memory_equal(buf, msg, sizeof msg);
  assert_int_equal(mp_connection_poll(b, 0), 0);

  /* the same for a message of several records */
  size_t big = 3 * MP_CONNECTION_ATOMIC_MAX + 5;
  char *m = malloc(big), *r = malloc(big);
  fill(m, big, 2);
  assert_int_equal(mp_connection_send(a, m, big, 5), 0);
  assert_int_equal(mp_connection_recv(b, r, big - 1, 0), -EMSGSIZE);
  assert_int_equal(mp_connection_peek_size(b, 0), (ssize_t)big);
  assert_int_equal(mp_connection_recv(b, r, big, 0), (ssize_t)big);
  assert_true(check(r, big, 2));
  free(m);
  free(r);
  mp_connection_close(a);
  mp_connection_close(b);
}

static void test_connection_poll_does_not_consume(void **state) {
  (void)state;
  mp_connection *a, *b;
  new_pipe(1, &a, &b);
  assert_int_equal(mp_connection_poll(b, 0), 0);
  send_str(a, "stay");
  assert_int_equal(mp_connection_poll(b, 0), 1);
  assert_int_equal(mp_connection_poll(b, 1.0), 1);
  assert_int_equal(mp_connection_peek_size(b, 0), 4);
  assert_int_equal(mp_connection_poll(b, MP_FOREVER), 1);
  recv_str(b, "stay");
  assert_int_equal(mp_connection_poll(b, 0), 0);
  mp_connection_close(a);
  mp_connection_close(b);
}

static void test_connection_empty_messages(void **state) {
  (void)state;
  mp_connection *a, *b;
  new_pipe(1, &a, &b);
  char buf[16];
  assert_int_equal(mp_connection_send(a, NULL, 0, 0), 0);
  assert_int_equal(mp_connection_send(a, "x", 0, 0), 0);
  send_str(a, "ab");
  assert_int_equal(mp_connection_send_bytes(a, "abc", 3, 3, MP_CONNECTION_TO_END, 0), 0);
  assert_int_equal(mp_connection_poll(b, 0), 1);
  assert_int_equal(mp_connection_peek_size(b, 0), 0);
  assert_int_equal(mp_connection_recv(b, NULL, 0, 0), 0);
  assert_int_equal(mp_connection_recv(b, buf, sizeof buf, 0), 0);
  assert_int_equal(mp_connection_recv(b, buf, sizeof buf, 0), 2);
  void *p = NULL;
  assert_int_equal(mp_connection_recv_alloc(b, &p, 0), 0);
  assert_non_null(p);
  free(p);
  assert_int_equal(mp_connection_poll(b, 0), 0);
  mp_connection_close(a);
  mp_connection_close(b);
}

static void test_connection_recv_alloc(void **state) {
  (void)state;
  mp_connection *a, *b;
  new_pipe(1, &a, &b);
  char msg[5000];
  fill(msg, sizeof msg, 3);
  assert_int_equal(mp_connection_send(a, msg, sizeof msg, 0), 0);
  void *p = NULL;
  assert_int_equal(mp_connection_recv_alloc(b, &p, 0), (ssize_t)sizeof msg);
  assert_memory_equal(p, msg, sizeof msg);
  free(p);
  p = NULL;
  assert_int_equal(mp_connection_recv_alloc(b, &p, 0), -ETIMEDOUT);
  assert_null(p);
  mp_connection_close(a);
  mp_connection_close(b);
}

static void test_connection_send_bytes_bounds(void **state) {
  (void)state;
  mp_connection *a, *b;
  new_pipe(1, &a, &b);
  const char *s = "0123456789";
  assert_int_equal(mp_connection_send_bytes(a, s, 10, 11, 0, 0), -EINVAL);
  assert_int_equal(mp_connection_send_bytes(a, s, 10, 11, MP_CONNECTION_TO_END, 0), -EINVAL);
  assert_int_equal(mp_connection_send_bytes(a, s, 10, 5, 6, 0), -EINVAL);
  assert_int_equal(mp_connection_send_bytes(a, s, 10, 0, 11, 0), -EINVAL);
  assert_int_equal(mp_connection_send_bytes(a, s, 10, 1, SIZE_MAX - 1, 0), -EINVAL);
  assert_int_equal(mp_connection_send_bytes(a, NULL, 10, 0, 1, 0), -EINVAL);
  assert_int_equal(mp_connection_poll(b, 0), 0); /* nothing was sent */
  assert_int_equal(mp_connection_send_bytes(a, s, 10, 2, 3, 0), 0);
  assert_int_equal(mp_connection_send_bytes(a, s, 10, 7, MP_CONNECTION_TO_END, 0), 0);
  assert_int_equal(mp_connection_send_bytes(a, s, 10, 0, 10, 0), 0);
  assert_int_equal(mp_connection_send_bytes(a, s, 10, 10, 0, 0), 0);
  assert_int_equal(mp_connection_send_bytes(a, NULL, 0, 0, MP_CONNECTION_TO_END, 0), 0);
  recv_str(b, "234");
  recv_str(b, "789");
  recv_str(b, "0123456789");
  recv_str(b, "");
  recv_str(b, "");
  mp_connection_close(a);
  mp_connection_close(b);
}

/* ------------------------------------------------ ordering and large messages */

struct pair {
  mp_connection *a, *b;
};

static int send_thousand(void *arg) {
  struct pair *p = arg;
  mp_connection_close(p->b);
  char msg[64];
  for (unsigned i = 0; i < 1000; i++) {
    size_t n = i % 61;
    fill(msg, n, i);
    CHILD_CHECK(mp_connection_send(p->a, msg, n, 10) == 0);
  }
  return 0;
}

static void test_connection_many_small_in_order(void **state) {
  (void)state;
  struct pair p;
  new_pipe(1, &p.a, &p.b);
  pid_t pid = tu_fork(send_thousand, &p, 30);
  assert_true(pid > 0);
  mp_connection_close(p.a);
  char buf[4096];
  for (unsigned i = 0; i < 1000; i++) {
    ssize_t n = mp_connection_recv(p.b, buf, sizeof buf, 10);
    assert_int_equal(n, (ssize_t)(i % 61));
    assert_true(check(buf, (size_t)n, i));
  }
  assert_int_equal(mp_connection_recv(p.b, buf, sizeof buf, 10), -EPIPE);
  assert_child_ok(pid);
  mp_connection_close(p.b);
}

#define BIG ((size_t)16 << 20)

static int echo_big(void *arg) {
  struct pair *p = arg;
  mp_connection_close(p->a);
  void *m = NULL;
  ssize_t n = mp_connection_recv_alloc(p->b, &m, 30);
  CHILD_CHECK(n == (ssize_t)BIG);
  CHILD_CHECK(check(m, BIG, 9));
  CHILD_CHECK(mp_connection_send(p->b, m, (size_t)n, 30) == 0);
  free(m);
  return 0;
}

static void test_connection_16mib_round_trip(void **state) {
  (void)state;
  struct pair p;
  new_pipe(1, &p.a, &p.b);
  pid_t pid = tu_fork(echo_big, &p, 60);
  assert_true(pid > 0);
  mp_connection_close(p.b);
  char *m = malloc(BIG), *r = malloc(BIG);
  fill(m, BIG, 9);
  assert_int_equal(mp_connection_send(p.a, m, BIG, 30), 0);
  memset(r, 0, BIG);
  assert_int_equal(mp_connection_recv(p.a, r, BIG, 30), (ssize_t)BIG);
  assert_true(check(r, BIG, 9));
  assert_child_ok(pid);
  assert_int_equal(mp_connection_recv(p.a, r, BIG, 5), -EPIPE);
  free(m);
  free(r);
  mp_connection_close(p.a);
}

static int send_one_mib(void *arg) {
  struct pair *p = arg;
  mp_connection_close(p->b);
  size_t n = (size_t)1 << 20;
  char *m = malloc(n);
  fill(m, n, 4);
  CHILD_CHECK(mp_connection_send(p->a, m, n, 30) == 0);
  CHILD_CHECK(mp_connection_send(p->a, "end", 3, 30) == 0);
  free(m);
  return 0;
}

/* A receive that times out in the middle of a large message keeps what it has
 * read, and the next receive (into a buffer or allocated) continues it. */
static void test_connection_timeout_mid_message_loses_nothing(void **state) {
  (void)state;
  struct pair p;
  new_pipe(1, &p.a, &p.b);
  pid_t pid = tu_fork(send_one_mib, &p, 30);
  assert_true(pid > 0);
  mp_connection_close(p.a);
  size_t n = (size_t)1 << 20;
  char *buf = malloc(n);
  assert_int_equal(mp_connection_poll(p.b, 10), 1);
  ssize_t r;
  int timeouts = 0, rounds = 0;
  for (;;) {
    rounds++;
    /* With the sender stopped, a receive surely runs out of records in the
     * middle of the message (it is larger than the socket's buffer). */
    if (rounds == 1)
      kill(pid, SIGSTOP);
    if (rounds % 3 == 0) {
      /* too small: the begun message stays begun */
      assert_int_equal(mp_connection_recv(p.b, buf, n - 1, MP_NOWAIT), -EMSGSIZE);
      assert_int_equal(mp_connection_peek_size(p.b, 0), (ssize_t)n);
    }
    if (rounds % 2 == 0) {
      void *m = NULL;
      r = mp_connection_recv_alloc(p.b, &m, MP_NOWAIT);
      if (r >= 0) {
        assert_int_equal(r, (ssize_t)n);
        assert_true(check(m, n, 4));
        free(m);
        break;
      }
    } else {
      r = mp_connection_recv(p.b, buf, n, MP_NOWAIT);
      if (r >= 0) {
        assert_int_equal(r, (ssize_t)n);
        assert_true(check(buf, n, 4));
        break;
      }
    }
    assert_int_equal(r, -ETIMEDOUT);
    timeouts++;
    if (rounds == 1)
      kill(pid, SIGCONT);
    assert_int_equal(mp_connection_poll(p.b, 10), 1);
  }
  assert_true(timeouts > 0);
  recv_str(p.b, "end");
  assert_child_ok(pid);
  free(buf);
  mp_connection_close(p.b);
}

/* ------------------------------------------------------------ end of file */

static int hold_then_exit(void *arg) {
  struct pair *p = arg;
  mp_connection_close(p->b);
  CHILD_CHECK(mp_connection_send(p->a, "last words", 10, 5) == 0);
  char buf[8];
  CHILD_CHECK(mp_connection_recv(p->a, buf, sizeof buf, 10) == 3); /* "bye" */
  return 0;
}

static void test_connection_eof_when_every_copy_closed(void **state) {
  (void)state;
  struct pair p;
  new_pipe(1, &p.a, &p.b);
  pid_t pid = tu_fork(hold_then_exit, &p, 30);
  assert_true(pid > 0);
  mp_connection_close(p.a); /* the child still holds a copy */
  recv_str(p.b, "last words");
  char buf[16];
  /* no end of file while the child's copy is open */
  assert_int_equal(mp_connection_recv(p.b, buf, sizeof buf, 0.05), -ETIMEDOUT);
  send_str(p.b, "bye");
  assert_int_equal(mp_connection_recv(p.b, buf, sizeof buf, 10), -EPIPE);
  assert_int_equal(mp_connection_recv(p.b, buf, sizeof buf, 0), -EPIPE);
  void *m = NULL;
  assert_int_equal(mp_connection_recv_alloc(p.b, &m, 0), -EPIPE);
  assert_int_equal(mp_connection_peek_size(p.b, 0), -EPIPE);
  int fd;
  assert_int_equal(mp_connection_recv_fd(p.b, &fd, 0), -EPIPE);
  assert_int_equal(mp_connection_poll(p.b, 0), 1); /* as Python's: readable at EOF */
  assert_child_ok(pid);
  mp_connection_close(p.b);
}

static int pause_forever(void *arg) {
  struct pair *p = arg;
  mp_connection_close(p->b);
  for (;;)
    pause();
  return 0;
}

static void test_connection_eof_when_holder_killed(void **state) {
  (void)state;
  struct pair p;
  new_pipe(0, &p.b, &p.a); /* b reads, a writes; the child keeps a */
  pid_t pid = tu_fork(pause_forever, &p, 30);
  assert_true(pid > 0);
  mp_connection_close(p.a);
  mp_wait_item it = {.kind = MP_WAIT_CONNECTION, .obj = p.b};
  assert_int_equal(mp_connection_wait(&it, 1, 0.05), -ETIMEDOUT);
  kill(pid, SIGKILL);
  assert_int_equal(tu_wait(pid), 1000 + SIGKILL);
  char buf[16];
  assert_int_equal(mp_connection_recv(p.b, buf, sizeof buf, MP_FOREVER), -EPIPE);
  assert_int_equal(mp_connection_wait(&it, 1, MP_FOREVER), 1);
  assert_int_equal(it.ready, 1);
  mp_connection_close(p.b);
}

static int send_to_closed_peer(void *arg) {
  struct pair *p = arg;
  signal(SIGPIPE, SIG_DFL); /* SIGPIPE would kill this child */
  mp_connection_close(p->b);
  CHILD_CHECK(mp_connection_send(p->a, "x", 1, 0) == -EPIPE);
  CHILD_CHECK(mp_connection_send(p->a, "x", 1, MP_FOREVER) == -EPIPE);
  char big[100000];
  memset(big, 1, sizeof big);
  CHILD_CHECK(mp_connection_send(p->a, big, sizeof big, 1) == -EPIPE);
  CHILD_CHECK(mp_connection_send_fd(p->a, mp_connection_fileno(p->a), 1) == -EPIPE);
  return 0;
}

static void test_connection_send_to_closed_peer_no_sigpipe(void **state) {
  (void)state;
  struct pair p;
  new_pipe(1, &p.a, &p.b);
  mp_connection_close(p.b);
  p.b = NULL;
  pid_t pid = tu_fork(send_to_closed_peer, &p, 30);
  assert_true(pid > 0);
  assert_child_ok(pid);
  /* and in this process too */
  assert_int_equal(mp_connection_send(p.a, "x", 1, 0), -EPIPE);
  mp_connection_close(p.a);
}

/* A sender killed in the middle of a large message: its receiver never gets a
 * torn message, and sees EOF when the sender held the last copy. */
static int send_big_forever(void *arg) {
  struct pair *p = arg;
  if (p->b)
    mp_connection_close(p->b);
  char *m = malloc(BIG);
  fill(m, BIG, 5);
  mp_connection_send(p->a, m, BIG, MP_FOREVER); /* killed in here */
  return 99;
}

static void test_connection_sender_killed_mid_message(void **state) {
  (void)state;
  /* alone: EOF, never a partial message */
  struct pair p;
  new_pipe(1, &p.a, &p.b);
  pid_t pid = tu_fork(send_big_forever, &p, 30);
  assert_true(pid > 0);
  mp_connection_close(p.a);
  assert_int_equal(mp_connection_poll(p.b, 10), 1);
  tu_sleep(0.1);
  kill(pid, SIGKILL);
  assert_int_equal(tu_wait(pid), 1000 + SIGKILL);
  char *buf = malloc(BIG);
  assert_int_equal(mp_connection_recv(p.b, buf, BIG, 10), -EPIPE);
  mp_connection_close(p.b);

  /* with another sender: its later message comes through whole */
  new_pipe(1, &p.a, &p.b);
  mp_connection *keep_b = p.b;
  p.b = NULL; /* the child keeps everything */
  pid = tu_fork(send_big_forever, &p, 30);
  assert_true(pid > 0);
  assert_int_equal(mp_connection_poll(keep_b, 10), 1);
  tu_sleep(0.1);
  kill(pid, SIGKILL);
  assert_int_equal(tu_wait(pid), 1000 + SIGKILL);
  /* drain what the dead sender left (the buffer is full of it) */
  assert_int_equal(mp_connection_recv(keep_b, buf, BIG, 0.2), -ETIMEDOUT);
  send_str(p.a, "after");
  assert_int_equal(mp_connection_recv(keep_b, buf, BIG, 5), 5);
  assert_memory_equal(buf, "after", 5);
  assert_int_equal(mp_connection_poll(keep_b, 0), 0);
  void *m = NULL;
  send_str(p.a, "again");
  assert_int_equal(mp_connection_recv_alloc(keep_b, &m, 5), 5);
  assert_memory_equal(m, "again", 5);
  free(m);
  free(buf);
  mp_connection_close(p.a);
  mp_connection_close(keep_b);
}

/* A send that times out in the middle of a large message: the receiver drops
 * the part that went out and gets the next message whole. */
static void test_connection_send_timeout_mid_message(void **state) {
  (void)state;
  mp_connection *a, *b;
  new_pipe(1, &a, &b);
  char *m = malloc(BIG);
  fill(m, BIG, 6);
  double t0 = tu_now();
  assert_int_equal(mp_connection_send(a, m, BIG, 0.2), -ETIMEDOUT);
  double e = tu_now() - t0;
  assert_true(e >= 0.19 && e < 2.0);
  assert_int_equal(mp_connection_poll(b, 0), 1); /* its first records are there */
  char *buf = malloc(BIG);
  assert_int_equal(mp_connection_recv(b, buf, BIG, 0.1), -ETIMEDOUT);
  assert_int_equal(mp_connection_peek_size(b, 0), (ssize_t)BIG); /* begun, kept */
  assert_int_equal(mp_connection_send(a, m, 1000, 1), 0);
  /* the next message shows the begun one was given up: a buffer for the new
   * one is enough */
  assert_int_equal(mp_connection_peek_size(b, 0), 1000);
  assert_int_equal(mp_connection_recv(b, buf, 1000, 1), 1000);
  assert_true(check(buf, 1000, 6));
  assert_int_equal(mp_connection_poll(b, 0), 0);
  free(m);
  free(buf);
  mp_connection_close(a);
  mp_connection_close(b);
}

/* ------------------------------------------------------------ timeouts */

static long do_recv(void *ctx, double t) {
  char buf[64];
  return (long)mp_connection_recv(ctx, buf, sizeof buf, t);
}
static long do_recv_alloc(void *ctx, double t) {
  void *m = NULL;
  long r = (long)mp_connection_recv_alloc(ctx, &m, t);
  free(m);
  return r;
}
static long do_poll(void *ctx, double t) { return mp_connection_poll(ctx, t); }
static long do_peek_size(void *ctx, double t) { return (long)mp_connection_peek_size(ctx, t); }
static long do_recv_fd(void *ctx, double t) {
  int fd;
  return mp_connection_recv_fd(ctx, &fd, t);
}
static long do_recv_connection(void *ctx, double t) {
  mp_connection *c;
  return mp_connection_recv_connection(ctx, &c, t);
}
static long do_send(void *ctx, double t) { return mp_connection_send(ctx, "z", 1, t); }
static long do_send_fd(void *ctx, double t) {
  return mp_connection_send_fd(ctx, mp_connection_fileno(ctx), t);
}
static long do_send_connection(void *ctx, double t) {
  return mp_connection_send_connection(ctx, ctx, t);
}

static void test_connection_receive_timeouts(void **state) {
  (void)state;
  mp_connection *a, *b;
  new_pipe(1, &a, &b);
  check_blocking(do_recv, b, -ETIMEDOUT);
  check_blocking(do_recv_alloc, b, -ETIMEDOUT);
  check_blocking(do_poll, b, 0);
  check_blocking(do_peek_size, b, -ETIMEDOUT);
  check_blocking(do_recv_fd, b, -ETIMEDOUT);
  check_blocking(do_recv_connection, b, -ETIMEDOUT);
  mp_connection_close(a);
  mp_connection_close(b);
}

static void test_connection_send_timeouts(void **state) {
  (void)state;
  mp_connection *a, *b;
  new_pipe(1, &a, &b);
  char msg[1000];
  memset(msg, 7, sizeof msg);
  int sent = 0;
  while (mp_connection_send(a, msg, sizeof msg, MP_NOWAIT) == 0)
    sent++;
  assert_true(sent > 10);
  check_blocking(do_send, a, -ETIMEDOUT);
  check_blocking(do_send_fd, a, -ETIMEDOUT);
  check_blocking(do_send_connection, a, -ETIMEDOUT);
  /* nothing of the failed sends arrived: exactly the messages sent */
  char buf[2000];
  for (int i = 0; i < sent; i++)
    assert_int_equal(mp_connection_recv(b, buf, sizeof buf, 0), (ssize_t)sizeof msg);
  assert_int_equal(mp_connection_poll(b, 0), 0);
  mp_connection_close(a);
  mp_connection_close(b);
}

static int send_later(void *arg) {
  struct pair *p = arg;
  tu_sleep(0.3);
  CHILD_CHECK(mp_connection_send(p->a, "late", 4, 5) == 0);
  return 0;
}

static int drain_later(void *arg) {
  struct pair *p = arg;
  tu_sleep(0.3);
  char buf[2000];
  while (mp_connection_recv(p->b, buf, sizeof buf, 0.5) >= 0) {
  }
  return 0;
}

/* Forever waits resume across signals until satisfied. */
static void test_connection_forever_waits_survive_signals(void **state) {
  (void)state;
  struct pair p;
  new_pipe(1, &p.a, &p.b);
  pid_t pid = tu_fork(send_later, &p, 30);
  assert_true(pid > 0);
  tu_signals_start(0.05, 0.05);
  char buf[16];
  assert_int_equal(mp_connection_recv(p.b, buf, sizeof buf, MP_FOREVER), 4);
  assert_true(tu_signals_stop() >= 2);
  assert_child_ok(pid);

  char msg[1000];
  memset(msg, 1, sizeof msg);
  while (mp_connection_send(p.a, msg, sizeof msg, MP_NOWAIT) == 0) {
  }
  pid = tu_fork(drain_later, &p, 30);
  assert_true(pid > 0);
  tu_signals_start(0.05, 0.05);
  assert_int_equal(mp_connection_send(p.a, msg, sizeof msg, MP_FOREVER), 0);
  assert_true(tu_signals_stop() >= 2);
  assert_child_ok(pid);
  mp_connection_close(p.a);
  mp_connection_close(p.b);
}

/* ------------------------------------------- descriptors and connections */

struct fdpass {
  mp_connection *a, *b;
};

static int write_through_received_fd(void *arg) {
  struct fdpass *f = arg;
  mp_connection_close(f->a);
  int fd = -1;
  CHILD_CHECK(mp_connection_recv_fd(f->b, &fd, 10) == 0);
  CHILD_CHECK(fd >= 0);
  CHILD_CHECK(fcntl(fd, F_GETFD) & FD_CLOEXEC);
  CHILD_CHECK(write(fd, "hello", 5) == 5);
  close(fd);
  return 0;
}

static void test_connection_fd_passing(void **state) {
  (void)state;
  struct fdpass f;
  new_pipe(1, &f.a, &f.b);
  int pfd[2];
  assert_int_equal(pipe2(pfd, O_CLOEXEC), 0);
  pid_t pid = tu_fork(write_through_received_fd, &f, 30);
  assert_true(pid > 0);
  mp_connection_close(f.b);
  assert_int_equal(mp_connection_send_fd(f.a, pfd[1], 5), 0);
  close(pfd[1]); /* the child's received copy is the only writer now */
  char buf[16];
  ssize_t n = 0, r;
  while ((r = read(pfd[0], buf + n, sizeof buf - (size_t)n)) > 0)
    n += r;
  assert_int_equal(n, 5);
  assert_memory_equal(buf, "hello", 5);
  close(pfd[0]);
  assert_child_ok(pid);
  mp_connection_close(f.a);

  /* bad descriptors */
  new_pipe(1, &f.a, &f.b);
  assert_int_equal(mp_connection_send_fd(f.a, -1, 0), -EBADF);
  int closed = closed_fd();
  assert_int_equal(mp_connection_send_fd(f.a, closed, 0), -EBADF);
  assert_int_equal(mp_connection_poll(f.b, 0), 0);
  mp_connection_close(f.a);
  mp_connection_close(f.b);
}

static void test_connection_fds_and_messages_interleave(void **state) {
  (void)state;
  mp_connection *a, *b;
  new_pipe(1, &a, &b);
  int pfd[2];
  assert_int_equal(pipe2(pfd, O_CLOEXEC), 0);
  size_t big = 2 * MP_CONNECTION_ATOMIC_MAX + 1;
  char *m = malloc(big), *buf = malloc(big);
  fill(m, big, 8);
  send_str(a, "one");
  assert_int_equal(mp_connection_send_fd(a, pfd[1], 0), 0);
  assert_int_equal(mp_connection_send(a, m, big, 1), 0);
  assert_int_equal(mp_connection_send_fd(a, pfd[0], 0), 0);
  assert_int_equal(mp_connection_send_connection(a, a, 0), 0);
  send_str(a, "two");
  close(pfd[0]);
  close(pfd[1]);

  int fd = -1;
  mp_connection *c = NULL;
  assert_int_equal(mp_connection_recv_fd(b, &fd, 0), -EBADMSG); /* a message first */
  recv_str(b, "one");
  assert_int_equal(mp_connection_recv(b, buf, big, 0), -EBADMSG); /* a descriptor next */
  assert_int_equal(mp_connection_peek_size(b, 0), -EBADMSG);
  assert_int_equal(mp_connection_recv_connection(b, &c, 0), -EBADMSG); /* not a connection */
  assert_int_equal(mp_connection_poll(b, 0), 1);
  int wfd = -1, rfd = -1;
  assert_int_equal(mp_connection_recv_fd(b, &wfd, 0), 0);
  assert_int_equal(mp_connection_recv(b, buf, big, 0), (ssize_t)big);
  assert_true(check(buf, big, 8));
  assert_int_equal(mp_connection_recv_fd(b, &rfd, 0), 0);
  assert_true(fcntl(wfd, F_GETFD) & FD_CLOEXEC);
  assert_int_equal(write(wfd, "q", 1), 1);
  char ch = 0;
  assert_int_equal(read(rfd, &ch, 1), 1);
  assert_int_equal(ch, 'q');
  close(wfd);
  close(rfd);
  /* a connection can be received as a plain descriptor too, or as itself */
  assert_int_equal(mp_connection_recv_connection(b, &c, 0), 0);
  assert_int_equal(mp_connection_readable(c), 1);
  assert_int_equal(mp_connection_writable(c), 1);
  send_str(c, "from the copy");
  recv_str(b, "two");
  recv_str(b, "from the copy");
  mp_connection_close(c);
  free(m);
  free(buf);
  mp_connection_close(a);
  mp_connection_close(b);
}

static int recv_fd_without_room(void *arg) {
  struct fdpass *f = arg;
  struct rlimit rl = {64, 64};
  CHILD_CHECK(setrlimit(RLIMIT_NOFILE, &rl) == 0);
  int last = -1;
  for (;;) {
    int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
      break;
    last = fd;
  }
  CHILD_CHECK(last >= 0);
  int fd = -1;
  CHILD_CHECK(mp_connection_recv_fd(f->b, &fd, 5) == -EMFILE);
  close(last);
  char buf[8];
  CHILD_CHECK(mp_connection_recv(f->b, buf, sizeof buf, 5) == 2); /* the stream goes on */
  return 0;
}

static void test_connection_recv_fd_emfile(void **state) {
  (void)state;
  struct fdpass f;
  new_pipe(1, &f.a, &f.b);
  assert_int_equal(mp_connection_send_fd(f.a, mp_connection_fileno(f.a), 0), 0);
  send_str(f.a, "ok");
  pid_t pid = tu_fork(recv_fd_without_room, &f, 30);
  assert_true(pid > 0);
  assert_child_ok(pid);
  mp_connection_close(f.a);
  mp_connection_close(f.b);
}

struct handoff {
  mp_connection *ctl_parent, *ctl_child; /* made before the fork */
};

static int use_received_connection(void *arg) {
  struct handoff *h = arg;
  mp_connection_close(h->ctl_parent);
  /* a duplex end made after the fork */
  mp_connection *c = NULL;
  CHILD_CHECK(mp_connection_recv_connection(h->ctl_child, &c, 10) == 0);
  CHILD_CHECK(mp_connection_readable(c) == 1 && mp_connection_writable(c) == 1);
  CHILD_CHECK(mp_connection_send(c, "via", 3, 5) == 0);
  char buf[16];
  CHILD_CHECK(mp_connection_recv(c, buf, sizeof buf, 10) == 5 && !memcmp(buf, "reply", 5));
  mp_connection_close(c);
  /* a send-only end keeps its direction */
  CHILD_CHECK(mp_connection_recv_connection(h->ctl_child, &c, 10) == 0);
  CHILD_CHECK(mp_connection_readable(c) == 0 && mp_connection_writable(c) == 1);
  CHILD_CHECK(mp_connection_recv(c, buf, sizeof buf, 0) == -EBADF);
  CHILD_CHECK(mp_connection_send(c, "simplex", 7, 5) == 0);
  mp_connection_close(c);
  /* rebuilt by hand from a plain descriptor */
  int fd = -1;
  CHILD_CHECK(mp_connection_recv_fd(h->ctl_child, &fd, 10) == 0);
  CHILD_CHECK(mp_connection_from_fd(fd, MP_CONNECTION_WRITABLE, &c) == 0);
  CHILD_CHECK(mp_connection_send(c, "by hand", 7, 5) == 0);
  mp_connection_close(c);
  /* the one made before the fork works as inherited */
  CHILD_CHECK(mp_connection_send(h->ctl_child, "inherited", 9, 5) == 0);
  mp_connection_close(h->ctl_child);
  return 0;
}

static void test_connection_send_connection_to_child(void **state) {
  (void)state;
  struct handoff h;
  new_pipe(1, &h.ctl_parent, &h.ctl_child);
  pid_t pid = tu_fork(use_received_connection, &h, 30);
  assert_true(pid > 0);
  mp_connection_close(h.ctl_child);

  mp_connection *p1, *p2, *r, *w, *r2, *w2;
  new_pipe(1, &p1, &p2);
  new_pipe(0, &r, &w);
  new_pipe(0, &r2, &w2);
  assert_int_equal(mp_connection_send_connection(h.ctl_parent, p2, 5), 0);
  assert_int_equal(mp_connection_send_connection(h.ctl_parent, w, 5), 0);
  assert_int_equal(mp_connection_send_fd(h.ctl_parent, mp_connection_fileno(w2), 5), 0);
  mp_connection_close(p2); /* the child's received copies are the only ones now */
  mp_connection_close(w);
  mp_connection_close(w2);
  recv_str(p1, "via");
  send_str(p1, "reply");
  recv_str(r, "simplex");
  recv_str(r2, "by hand");
  recv_str(h.ctl_parent, "inherited");
  assert_child_ok(pid);
  char buf[16];
  assert_int_equal(mp_connection_recv(p1, buf, sizeof buf, 5), -EPIPE);
  assert_int_equal(mp_connection_recv(r, buf, sizeof buf, 5), -EPIPE);
  assert_int_equal(mp_connection_recv(r2, buf, sizeof buf, 5), -EPIPE);
  mp_connection_close(p1);
  mp_connection_close(r);
  mp_connection_close(r2);
  mp_connection_close(h.ctl_parent);
}

static void test_connection_from_fd(void **state) {
  (void)state;
  mp_connection *c = NULL;
  assert_int_equal(mp_connection_from_fd(-1, 0, &c), -EBADF);
  int closed = closed_fd();
  assert_int_equal(mp_connection_from_fd(closed, 0, &c), -EBADF);
  int pfd[2];
  assert_int_equal(pipe2(pfd, O_CLOEXEC), 0);
  assert_int_equal(mp_connection_from_fd(pfd[0], 0, &c), -ENOTSOCK);
  close(pfd[0]);
  close(pfd[1]);
  int sv[2];
  assert_int_equal(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv), 0);
  assert_int_equal(mp_connection_from_fd(sv[0], 0, &c), -EPROTOTYPE);
  close(sv[0]);
  close(sv[1]);
  assert_null(c);

  assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv), 0); /* no CLOEXEC */
  assert_int_equal(mp_connection_from_fd(sv[0], 8, &c), -EINVAL);
  /* Python's framing needs a byte stream */
  assert_int_equal(mp_connection_from_fd(sv[0], MP_CONNECTION_PYTHON, &c), -EPROTOTYPE);
  assert_int_equal(mp_connection_from_fd(sv[0], 0, NULL), -EINVAL);
  mp_connection *a = NULL, *b = NULL;
  assert_int_equal(mp_connection_from_fd(sv[0], 0, &a), 0);
  assert_int_equal(mp_connection_from_fd(sv[1], MP_CONNECTION_READABLE, &b), 0);
  assert_true(fcntl(sv[0], F_GETFD) & FD_CLOEXEC);
  assert_true(fcntl(sv[1], F_GETFD) & FD_CLOEXEC);
  assert_int_equal(mp_connection_fileno(a), sv[0]);
  assert_int_equal(mp_connection_readable(a), 1);
  assert_int_equal(mp_connection_writable(a), 1);
  assert_int_equal(mp_connection_readable(b), 1);
  assert_int_equal(mp_connection_writable(b), 0);
  assert_int_equal(mp_connection_send(b, "x", 1, 0), -EBADF);
  send_str(a, "adopted");
  recv_str(b, "adopted");
  mp_connection_close(a); /* closes sv[0] */
  mp_connection_close(b);
  assert_true(fcntl(sv[0], F_GETFD) < 0);
}

/* ------------------------------------------------------- several senders */

static int send_tagged(void *arg) {
  intptr_t id = (intptr_t)((void **)arg)[1];
  mp_connection *w = ((void **)arg)[0];
  char msg[1000];
  for (int i = 0; i < 100; i++) {
    memset(msg, (int)id, sizeof msg);
    memcpy(msg, &i, sizeof i);
    CHILD_CHECK(mp_connection_send(w, msg, (size_t)(100 + i * 9), 10) == 0);
  }
  return 0;
}

/* Ten children send through copies of one end at once: every message arrives
 * whole, each child's in order. */
static void test_connection_ten_senders_one_end(void **state) {
  (void)state;
  mp_connection *r, *w;
  new_pipe(0, &r, &w);
  void *args[10][2];
  pid_t pids[10];
  for (intptr_t k = 0; k < 10; k++) {
    args[k][0] = w;
    args[k][1] = (void *)(k + 1);
    pids[k] = tu_fork(send_tagged, args[k], 30);
    assert_true(pids[k] > 0);
  }
  mp_connection_close(w);
  int next[11] = {0};
  char buf[2000];
  for (int n = 0; n < 1000; n++) {
    ssize_t len = mp_connection_recv(r, buf, sizeof buf, 10);
    assert_true(len >= 100);
    int id = (unsigned char)buf[len - 1], i;
    memcpy(&i, buf, sizeof i);
    assert_true(id >= 1 && id <= 10);
    assert_int_equal(i, next[id]);
    assert_int_equal(len, 100 + i * 9);
    for (ssize_t j = (ssize_t)sizeof i; j < len; j++)
      assert_int_equal((unsigned char)buf[j], id);
    next[id]++;
  }
  for (int k = 0; k < 10; k++)
    assert_child_ok(pids[k]);
  assert_int_equal(mp_connection_recv(r, buf, sizeof buf, 5), -EPIPE);
  mp_connection_close(r);
}

struct thr {
  mp_connection *c;
  int id;
};

static void *thread_send(void *arg) {
  struct thr *t = arg;
  for (int i = 0; i < 500; i++) {
    int msg[2] = {t->id, i};
    if (mp_connection_send(t->c, msg, sizeof msg, 10) != 0)
      return (void *)1;
  }
  return NULL;
}

/* Two threads send through one handle while a third thread receives on the
 * other end and this one receives replies. */
static void *thread_echo(void *arg) {
  mp_connection *c = arg;
  for (int n = 0; n < 1000; n++) {
    int msg[2];
    if (mp_connection_recv(c, msg, sizeof msg, 10) != sizeof msg)
      return (void *)1;
    if (mp_connection_send(c, msg, sizeof msg, 10) != 0)
      return (void *)2;
  }
  return NULL;
}

static void test_connection_threads(void **state) {
  (void)state;
  mp_connection *a, *b;
  new_pipe(1, &a, &b);
  pthread_t s1, s2, e;
  struct thr t1 = {a, 1}, t2 = {a, 2};
  assert_int_equal(pthread_create(&e, NULL, thread_echo, b), 0);
  assert_int_equal(pthread_create(&s1, NULL, thread_send, &t1), 0);
  assert_int_equal(pthread_create(&s2, NULL, thread_send, &t2), 0);
  int next[3] = {0};
  for (int n = 0; n < 1000; n++) {
    int msg[2];
    assert_int_equal(mp_connection_recv(a, msg, sizeof msg, 10), (ssize_t)sizeof msg);
    assert_true(msg[0] == 1 || msg[0] == 2);
    assert_int_equal(msg[1], next[msg[0]]);
    next[msg[0]]++;
  }
  void *rv;
  pthread_join(s1, &rv);
  assert_null(rv);
  pthread_join(s2, &rv);
  assert_null(rv);
  pthread_join(e, &rv);
  assert_null(rv);
  mp_connection_close(a);
  mp_connection_close(b);
}

/* ------------------------------------------------------------------ wait */

static int exit_after_eof(void *arg) {
  struct pair *p = arg; /* a reads, b writes: the child closes its copy of b */
  mp_connection_close(p->b);
  char buf[8];
  while (mp_connection_recv(p->a, buf, sizeof buf, MP_FOREVER) != -EPIPE) {
  }
  return 7;
}

static long do_wait(void *ctx, double t) {
  struct {
    mp_wait_item *items;
    size_t n;
  } *w = ctx;
  for (size_t i = 0; i < w->n; i++)
    w->items[i].ready = 42;
  long r = mp_connection_wait(w->items, w->n, t);
  if (r < 0)
    for (size_t i = 0; i < w->n; i++)
      if (w->items[i].ready != 42)
        return -1000; /* written on failure */
  return r;
}

static void test_connection_wait_connections_processes_fds(void **state) {
  (void)state;
  mp_connection *a1, *b1, *a2, *b2;
  struct pair pp;
  new_pipe(1, &a1, &b1);
  new_pipe(0, &a2, &b2);
  new_pipe(0, &pp.a, &pp.b);
  mp_process *proc = NULL;
  assert_int_equal(mp_process_new(exit_after_eof, &pp, NULL, &proc), 0);
  assert_int_equal(mp_process_start(proc), 0);
  mp_connection_close(pp.a);
  int pfd[2];
  assert_int_equal(pipe2(pfd, O_CLOEXEC), 0);

  mp_wait_item items[4] = {
      {.kind = MP_WAIT_CONNECTION, .obj = b1},
      {.kind = MP_WAIT_CONNECTION, .obj = a2},
      {.kind = MP_WAIT_PROCESS, .obj = proc},
      {.kind = MP_WAIT_FD, .fd = pfd[0]},
  };
  struct {
    mp_wait_item *items;
    size_t n;
  } ctx = {items, 4};
  check_blocking(do_wait, &ctx, -ETIMEDOUT);

  send_str(a1, "x");
  assert_int_equal(mp_connection_wait(items, 4, 5), 1);
  assert_int_equal(items[0].ready, 1);
  assert_int_equal(items[1].ready, 0);
  assert_int_equal(items[2].ready, 0);
  assert_int_equal(items[3].ready, 0);
  assert_int_equal(mp_connection_wait(items, 4, 0), 1); /* wait consumes nothing */
  recv_str(b1, "x");

  send_str(b2, "y");
  assert_int_equal(write(pfd[1], "z", 1), 1);
  assert_int_equal(mp_connection_wait(items, 4, MP_FOREVER), 2);
  assert_int_equal(items[0].ready, 0);
  assert_int_equal(items[1].ready, 1);
  assert_int_equal(items[3].ready, 1);
  recv_str(a2, "y");
  char ch;
  assert_int_equal(read(pfd[0], &ch, 1), 1);

  /* the process ends when its pipe's last writer closes */
  mp_connection_close(pp.b);
  double t0 = tu_now();
  assert_int_equal(mp_connection_wait(items, 4, 10), 1);
  assert_true(tu_now() - t0 < 5);
  assert_int_equal(items[2].ready, 1);
  assert_int_equal(mp_process_join(proc, 5), 0);
  int code = 0;
  assert_int_equal(mp_process_exitcode(proc, &code), 1);
  assert_int_equal(code, 7);
  assert_int_equal(mp_process_free(proc), 0);

  /* a hung-up descriptor counts as ready */
  close(pfd[1]);
  mp_wait_item fdit = {.kind = MP_WAIT_FD, .fd = pfd[0]};
  assert_int_equal(mp_connection_wait(&fdit, 1, 0), 1);
  assert_int_equal(fdit.ready, 1);
  close(pfd[0]);
  mp_connection_close(a1);
  mp_connection_close(b1);
  mp_connection_close(a2);
  mp_connection_close(b2);
}

static void test_connection_wait_bad_arguments(void **state) {
  (void)state;
  mp_connection *a, *b;
  new_pipe(1, &a, &b);
  mp_wait_item it = {.kind = MP_WAIT_CONNECTION, .obj = a};
  assert_int_equal(mp_connection_wait(NULL, 1, 0), -EINVAL);
  assert_int_equal(mp_connection_wait(&it, 1, NAN), -EINVAL);
  assert_int_equal(mp_connection_wait(NULL, 0, MP_FOREVER), -EINVAL);
  it.kind = 99;
  assert_int_equal(mp_connection_wait(&it, 1, 0), -EINVAL);
  it = (mp_wait_item){.kind = MP_WAIT_CONNECTION, .obj = NULL};
  assert_int_equal(mp_connection_wait(&it, 1, 0), -EINVAL);
  it = (mp_wait_item){.kind = MP_WAIT_QUEUE, .obj = NULL};
  assert_int_equal(mp_connection_wait(&it, 1, 0), -EINVAL);
  it = (mp_wait_item){.kind = MP_WAIT_PROCESS, .obj = NULL};
  assert_int_equal(mp_connection_wait(&it, 1, 0), -EINVAL);
  it = (mp_wait_item){.kind = MP_WAIT_FD, .fd = -1};
  assert_int_equal(mp_connection_wait(&it, 1, 0), -EBADF);
  int closed = closed_fd();
  it = (mp_wait_item){.kind = MP_WAIT_FD, .fd = closed};
  assert_int_equal(mp_connection_wait(&it, 1, 0), -EBADF);
  mp_process *proc = NULL;
  struct pair pp = {a, b};
  assert_int_equal(mp_process_new(exit_after_eof, &pp, NULL, &proc), 0);
  it = (mp_wait_item){.kind = MP_WAIT_PROCESS, .obj = proc};
  assert_int_equal(mp_connection_wait(&it, 1, 0), -EINVAL); /* not started */
  assert_int_equal(mp_process_free(proc), 0);

  /* no items: sleeps out the timeout */
  double t0 = tu_now();
  assert_int_equal(mp_connection_wait(NULL, 0, 0.2), -ETIMEDOUT);
  assert_true(tu_now() - t0 >= 0.19);
  assert_int_equal(mp_connection_wait(NULL, 0, 0), -ETIMEDOUT);
  mp_connection_close(a);
  mp_connection_close(b);
}

struct putter {
  mp_queue *q;
  mp_connection *c;
  double delay;
};

static int put_later(void *arg) {
  struct putter *p = arg;
  tu_sleep(p->delay);
  if (p->q)
    CHILD_CHECK(mp_queue_put(p->q, "item", 4, 5) == 0);
  if (p->c)
    CHILD_CHECK(mp_connection_send(p->c, "msg", 3, 5) == 0);
  return 0;
}

static mp_queue *new_queue(size_t ring) {
  mp_queue *q = NULL;
  mp_queue_options o = {.ring_size = ring};
  assert_int_equal(mp_queue_new(0, &o, &q), 0);
  return q;
}

static void take(mp_queue *q) {
  char buf[16];
  assert_int_equal(mp_queue_get(q, buf, sizeof buf, 5), 4);
  assert_memory_equal(buf, "item", 4);
}

static void test_connection_wait_one_queue(void **state) {
  (void)state;
  mp_queue *q = new_queue(0);
  mp_wait_item it = {.kind = MP_WAIT_QUEUE, .obj = q};
  struct {
    mp_wait_item *items;
    size_t n;
  } ctx = {&it, 1};
  check_blocking(do_wait, &ctx, -ETIMEDOUT);

  assert_int_equal(mp_queue_put(q, "item", 4, 0), 0);
  assert_int_equal(mp_connection_wait(&it, 1, 0), 1);
  assert_int_equal(it.ready, 1);
  assert_int_equal(mp_connection_wait(&it, 1, 0), 1); /* nothing consumed */
  take(q);

  struct putter p = {q, NULL, 0.3};
  pid_t pid = tu_fork(put_later, &p, 30);
  assert_true(pid > 0);
  tu_signals_start(0.05, 0.05);
  double t0 = tu_now();
  assert_int_equal(mp_connection_wait(&it, 1, MP_FOREVER), 1);
  double e = tu_now() - t0;
  assert_true(tu_signals_stop() >= 2);
  assert_true(e >= 0.2 && e < 5);
  assert_int_equal(it.ready, 1);
  take(q);
  assert_child_ok(pid);

  /* closed and drained: a get would not block */
  assert_int_equal(mp_queue_close(q), 0);
  assert_int_equal(mp_connection_wait(&it, 1, 5), 1);
  assert_int_equal(mp_queue_free(q), 0);
}

static void test_connection_wait_several_queues(void **state) {
  (void)state;
  mp_queue *q1 = new_queue(0), *q2 = new_queue(0);
  mp_wait_item items[2] = {{.kind = MP_WAIT_QUEUE, .obj = q1}, {.kind = MP_WAIT_QUEUE, .obj = q2}};
  struct {
    mp_wait_item *items;
    size_t n;
  } ctx = {items, 2};
  check_blocking(do_wait, &ctx, -ETIMEDOUT);

  struct putter p = {q2, NULL, 0.3};
  pid_t pid = tu_fork(put_later, &p, 30);
  assert_true(pid > 0);
  assert_int_equal(mp_connection_wait(items, 2, 10), 1);
  assert_int_equal(items[0].ready, 0);
  assert_int_equal(items[1].ready, 1);
  take(q2);
  assert_child_ok(pid);
  assert_int_equal(mp_queue_put(q1, "item", 4, 0), 0);
  assert_int_equal(mp_queue_put(q2, "item", 4, 0), 0);
  assert_int_equal(mp_connection_wait(items, 2, 0), 2);
  take(q1);
  take(q2);
  assert_int_equal(mp_queue_free(q1), 0);
  assert_int_equal(mp_queue_free(q2), 0);
}

/* More queues than one futex_waitv call takes: the helpers share them. */
static void test_connection_wait_many_queues(void **state) {
  (void)state;
  enum { N = 130 };
  mp_queue *qs[N];
  mp_wait_item items[N];
  for (int i = 0; i < N; i++) {
    qs[i] = new_queue(1024);
    items[i] = (mp_wait_item){.kind = MP_WAIT_QUEUE, .obj = qs[i]};
  }
  struct {
    mp_wait_item *items;
    size_t n;
  } ctx = {items, N};
  check_blocking(do_wait, &ctx, -ETIMEDOUT);
  struct putter p = {qs[N - 1], NULL, 0.3};
  pid_t pid = tu_fork(put_later, &p, 30);
  assert_true(pid > 0);
  assert_int_equal(mp_connection_wait(items, N, 10), 1);
  assert_int_equal(items[N - 1].ready, 1);
  assert_int_equal(items[0].ready, 0);
  take(qs[N - 1]);
  assert_child_ok(pid);
  for (int i = 0; i < N; i++)
    assert_int_equal(mp_queue_free(qs[i]), 0);
}

static void test_connection_wait_queues_and_connections(void **state) {
  (void)state;
  mp_queue *q = new_queue(0);
  mp_connection *a, *b;
  new_pipe(1, &a, &b);
  mp_wait_item items[2] = {{.kind = MP_WAIT_QUEUE, .obj = q},
                           {.kind = MP_WAIT_CONNECTION, .obj = b}};
  struct {
    mp_wait_item *items;
    size_t n;
  } ctx = {items, 2};
  check_blocking(do_wait, &ctx, -ETIMEDOUT);

  /* a message on the connection wakes it */
  struct putter p = {NULL, a, 0.3};
  pid_t pid = tu_fork(put_later, &p, 30);
  assert_true(pid > 0);
  assert_int_equal(mp_connection_wait(items, 2, 10), 1);
  assert_int_equal(items[0].ready, 0);
  assert_int_equal(items[1].ready, 1);
  recv_str(b, "msg");
  assert_child_ok(pid);

  /* a put on the queue wakes it, across signals */
  p = (struct putter){q, NULL, 0.3};
  pid = tu_fork(put_later, &p, 30);
  assert_true(pid > 0);
  tu_signals_start(0.05, 0.05);
  assert_int_equal(mp_connection_wait(items, 2, MP_FOREVER), 1);
  assert_true(tu_signals_stop() >= 2);
  assert_int_equal(items[0].ready, 1);
  assert_int_equal(items[1].ready, 0);
  take(q);
  assert_child_ok(pid);

  /* both */
  send_str(a, "now");
  assert_int_equal(mp_queue_put(q, "item", 4, 0), 0);
  assert_int_equal(mp_connection_wait(items, 2, 0), 2);
  recv_str(b, "now");
  take(q);
  assert_int_equal(mp_queue_free(q), 0);
  mp_connection_close(a);
  mp_connection_close(b);
}

/* ------------------------------------------------------- stream connections */

/* Make two connected stream-mode connections. */
typedef void (*stream_maker)(mp_connection **a, mp_connection **b);

static void unix_stream_pair(mp_connection **a, mp_connection **b) {
  int sv[2];
  assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  assert_int_equal(mp_connection_from_fd(sv[0], 0, a), 0);
  assert_int_equal(mp_connection_from_fd(sv[1], 0, b), 0);
}

static void tcp_pair(mp_connection **a, mp_connection **b) {
  int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  assert_true(l >= 0);
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  assert_int_equal(bind(l, (struct sockaddr *)&sa, sizeof sa), 0);
  assert_int_equal(listen(l, 1), 0);
  socklen_t sl = sizeof sa;
  assert_int_equal(getsockname(l, (struct sockaddr *)&sa, &sl), 0);
  int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  assert_true(c >= 0);
  assert_int_equal(connect(c, (struct sockaddr *)&sa, sizeof sa), 0);
  int s = accept4(l, NULL, NULL, SOCK_CLOEXEC);
  assert_true(s >= 0);
  close(l);
  assert_int_equal(mp_connection_from_fd(c, 0, a), 0);
  assert_int_equal(mp_connection_from_fd(s, 0, b), 0);
}

static const stream_maker stream_makers[] = {unix_stream_pair, tcp_pair};
#define FOR_EACH_STREAM(mk)                                                                        \
  for (size_t mk##_i = 0; mk##_i < 2; mk##_i++)                                                    \
    for (stream_maker mk = stream_makers[mk##_i]; mk; mk = NULL)

static const size_t stream_sizes[] = {0,     1,     15,    16,     100,    0,      65515,  65516,
                                      65517, 65536, 65537, 262144, 262145, 300000, 1 << 20};
#define N_SIZES (sizeof stream_sizes / sizeof stream_sizes[0])

static int send_sizes_then_small(void *arg) {
  struct pair *p = arg;
  mp_connection_close(p->b);
  char *m = malloc((size_t)1 << 20);
  for (unsigned i = 0; i < N_SIZES; i++) {
    fill(m, stream_sizes[i], i);
    CHILD_CHECK(mp_connection_send(p->a, m, stream_sizes[i], 20) == 0);
  }
  for (unsigned i = 0; i < 1000; i++) {
    fill(m, i % 61, i);
    CHILD_CHECK(mp_connection_send(p->a, m, i % 61, 20) == 0);
  }
  free(m);
  return 0;
}

/* Boundaries kept for every size around the buffer and record limits, the
 * empty message included, then end of file. */
static void test_connection_stream_boundaries(void **state) {
  (void)state;
  FOR_EACH_STREAM(mk) {
    struct pair p;
    mk(&p.a, &p.b);
    assert_int_equal(mp_connection_readable(p.a), 1);
    assert_int_equal(mp_connection_writable(p.a), 1);
    pid_t pid = tu_fork(send_sizes_then_small, &p, 60);
    assert_true(pid > 0);
    mp_connection_close(p.a);
    char *buf = malloc((size_t)1 << 20);
    for (unsigned i = 0; i < N_SIZES; i++) {
      ssize_t n;
      assert_int_equal(mp_connection_peek_size(p.b, 10), (ssize_t)stream_sizes[i]);
      if (i % 2) {
        void *m = NULL;
        n = mp_connection_recv_alloc(p.b, &m, 10);
        assert_non_null(m);
        assert_int_equal(n, (ssize_t)stream_sizes[i]);
        assert_true(check(m, (size_t)n, i));
        free(m);
      } else {
        n = mp_connection_recv(p.b, buf, (size_t)1 << 20, 10);
        assert_int_equal(n, (ssize_t)stream_sizes[i]);
        assert_true(check(buf, (size_t)n, i));
      }
    }
    for (unsigned i = 0; i < 1000; i++) {
      ssize_t n = mp_connection_recv(p.b, buf, 4096, 10);
      assert_int_equal(n, (ssize_t)(i % 61));
      assert_true(check(buf, (size_t)n, i));
    }
    assert_int_equal(mp_connection_recv(p.b, buf, 4096, 10), -EPIPE);
    assert_child_ok(pid);
    free(buf);
    mp_connection_close(p.b);
  }
}

static int send_one_mib_slowly(void *arg) {
  struct pair *p = arg;
  mp_connection_close(p->b);
  size_t n = BIG; /* more than TCP's buffers hold */
  char *m = malloc(n);
  fill(m, n, 4);
  CHILD_CHECK(mp_connection_send(p->a, m, n, 30) == 0);
  CHILD_CHECK(mp_connection_send(p->a, "end", 3, 30) == 0);
  free(m);
  return 0;
}

/* -EMSGSIZE consumes nothing, also for a message begun by a receive that
 * timed out; receives that time out mid-message lose nothing. */
static void test_connection_stream_emsgsize_and_partial(void **state) {
  (void)state;
  FOR_EACH_STREAM(mk) {
    struct pair p;
    mk(&p.a, &p.b);
    char msg[100], buf[100];
    fill(msg, sizeof msg, 1);
    assert_int_equal(mp_connection_send(p.a, msg, sizeof msg, 1), 0);
    assert_int_equal(mp_connection_recv(p.b, buf, 10, 1), -EMSGSIZE);
    assert_int_equal(mp_connection_recv(p.b, NULL, 0, 0), -EMSGSIZE);
    assert_int_equal(mp_connection_peek_size(p.b, 0), 100);
    assert_int_equal(mp_connection_recv(p.b, buf, sizeof buf, 0), 100);
    assert_memory_equal(buf, msg, sizeof msg);
    assert_int_equal(mp_connection_poll(p.b, 0), 0);

    pid_t pid = tu_fork(send_one_mib_slowly, &p, 30);
    assert_true(pid > 0);
    mp_connection_close(p.a);
    size_t n = BIG;
    char *big = malloc(n);
    assert_int_equal(mp_connection_poll(p.b, 10), 1);
    assert_int_equal(mp_connection_peek_size(p.b, 10), (ssize_t)n);
    assert_int_equal(mp_connection_recv(p.b, big, n - 1, 10), -EMSGSIZE);
    ssize_t r;
    int timeouts = 0, rounds = 0;
    for (;;) {
      rounds++;
      if (rounds == 1)
        kill(pid, SIGSTOP); /* the receive surely runs dry mid-message */
      if (rounds % 3 == 0) {
        assert_int_equal(mp_connection_recv(p.b, big, n - 1, MP_NOWAIT), -EMSGSIZE);
        assert_int_equal(mp_connection_peek_size(p.b, 0), (ssize_t)n);
      }
      if (rounds % 2 == 0) {
        void *m = NULL;
        r = mp_connection_recv_alloc(p.b, &m, MP_NOWAIT);
        if (r >= 0) {
          assert_int_equal(r, (ssize_t)n);
          assert_true(check(m, n, 4));
          free(m);
          break;
        }
      } else {
        r = mp_connection_recv(p.b, big, n, MP_NOWAIT);
        if (r >= 0) {
          assert_int_equal(r, (ssize_t)n);
          assert_true(check(big, n, 4));
          break;
        }
      }
      assert_int_equal(r, -ETIMEDOUT);
      timeouts++;
      if (rounds == 1)
        kill(pid, SIGCONT);
      assert_int_equal(mp_connection_poll(p.b, 10), 1);
    }
    assert_true(timeouts > 0);
    recv_str(p.b, "end");
    assert_int_equal(mp_connection_recv(p.b, big, n, 10), -EPIPE);
    assert_child_ok(pid);
    free(big);
    mp_connection_close(p.b);
  }
}

/* Write stream framing by hand: one record (header, payload, trailer). */
static void raw_record(int fd, int kind, const void *pay, size_t n, uint64_t value, bool trailer,
                       bool ok) {
  unsigned char h[16];
  uint32_t w = (0x6d7063u << 8) | (uint32_t)kind;
  for (int i = 0; i < 4; i++)
    h[i] = (unsigned char)(w >> (24 - 8 * i));
  for (int i = 0; i < 4; i++)
    h[4 + i] = (unsigned char)((uint32_t)n >> (24 - 8 * i));
  for (int i = 0; i < 8; i++)
    h[8 + i] = (unsigned char)(value >> (56 - 8 * i));
  assert_int_equal(write(fd, h, sizeof h), (ssize_t)sizeof h);
  size_t done = 0;
  while (done < n) {
    ssize_t w2 = write(fd, (const char *)pay + done, n - done);
    assert_true(w2 > 0);
    done += (size_t)w2;
  }
  if (trailer) {
    unsigned char t[4] = {0x6d, 0x70, 0x74, ok ? 1 : 0};
    assert_int_equal(write(fd, t, sizeof t), (ssize_t)sizeof t);
  }
}

/* A large message whose every byte arrived but which waits for a larger
 * buffer (-EMSGSIZE) stays the next message when the one after it has
 * arrived too: peek_size tells its length, not the next one's, and the next
 * receive with room gets it. (The old stream_part_alive() took the next
 * header for a new message and dropped the whole one.) */
static void test_connection_stream_whole_message_waits_for_room(void **state) {
  (void)state;
  int sv[2];
  assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  mp_connection *b;
  assert_int_equal(mp_connection_from_fd(sv[1], 0, &b), 0);
  size_t n = 100000; /* more than the receive buffer: read into the message */
  char *m = malloc(n), *buf = malloc(n);
  fill(m, n, 7);
  /* the whole payload, but not yet the trailer: the receive runs dry */
  raw_record(sv[0], 1, m, n, n, false, false);
  assert_int_equal(mp_connection_recv(b, buf, n, 0.2), -ETIMEDOUT);
  /* now the trailer and a whole next message */
  unsigned char t[4] = {0x6d, 0x70, 0x74, 1};
  assert_int_equal(write(sv[0], t, sizeof t), 4);
  raw_record(sv[0], 1, "end", 3, 3, true, true);
  assert_int_equal(mp_connection_recv(b, buf, 10, 0), -EMSGSIZE);
  assert_int_equal(mp_connection_peek_size(b, 0), (ssize_t)n);
  assert_int_equal(mp_connection_recv(b, buf, 10, 0), -EMSGSIZE);
  assert_int_equal(mp_connection_peek_size(b, 0), (ssize_t)n);
  assert_int_equal(mp_connection_recv(b, buf, n, 0), (ssize_t)n);
  assert_true(check(buf, n, 7));
  recv_str(b, "end");
  close(sv[0]);
  assert_int_equal(mp_connection_recv(b, buf, n, 5), -EPIPE);
  free(m);
  free(buf);
  mp_connection_close(b);
}

/* A record as the SOCK_SEQPACKET framing has it (connection_record.c). */
static void raw_packet(int fd, int kind, const void *pay, size_t n, uint64_t value) {
  struct {
    uint32_t word, sender;
    uint64_t value;
  } h = {(0x6d7063u << 8) | (uint32_t)kind, (uint32_t)getpid(), value};
  char rec[256];
  assert_true(n <= sizeof rec - sizeof h);
  memcpy(rec, &h, sizeof h);
  memcpy(rec + sizeof h, pay, n);
  assert_int_equal(send(fd, rec, sizeof h + n, 0), (ssize_t)(sizeof h + n));
}

/* A message that declares a length no buffer can hold: mp_connection_recv()
 * keeps it (-EMSGSIZE, as documented), mp_connection_recv_alloc() skips it
 * with -ENOMEM, and the next message comes through. (Before, every later
 * receive failed with -ENOMEM, with no way past it.) */
static void test_connection_absurd_length_is_skipped(void **state) {
  (void)state;
  const uint64_t huge = (uint64_t)1 << 62;
  char buf[64];
  void *m = NULL;
  for (int stream = 0; stream < 2; stream++) {
    int sv[2];
    assert_int_equal(
        socketpair(AF_UNIX, (stream ? SOCK_STREAM : SOCK_SEQPACKET) | SOCK_CLOEXEC, 0, sv), 0);
    mp_connection *b;
    assert_int_equal(mp_connection_from_fd(sv[1], 0, &b), 0);
    if (stream) {
      raw_record(sv[0], 1, "abc", 3, huge, true, true);
      raw_record(sv[0], 2, "def", 3, 0, true, true); /* a MORE of it */
      raw_record(sv[0], 1, "end", 3, 3, true, true);
    } else {
      raw_packet(sv[0], 1, "abc", 3, huge);
      raw_packet(sv[0], 2, "def", 3, 3); /* a MORE of it */
      raw_packet(sv[0], 1, "end", 3, 3);
    }
    assert_int_equal(mp_connection_peek_size(b, 5), (ssize_t)huge);
    assert_int_equal(mp_connection_recv(b, buf, sizeof buf, 5), -EMSGSIZE);
    assert_int_equal(mp_connection_recv(b, buf, sizeof buf, 5), -EMSGSIZE);
    assert_int_equal(mp_connection_recv_alloc(b, &m, 5), -ENOMEM);
    assert_null(m);
    assert_int_equal(mp_connection_peek_size(b, 5), 3);
    assert_int_equal(mp_connection_recv_alloc(b, &m, 5), 3);
    assert_memory_equal(m, "end", 3);
    free(m);
    m = NULL;
    close(sv[0]);
    assert_int_equal(mp_connection_recv(b, buf, sizeof buf, 5), -EPIPE);
    mp_connection_close(b);
  }
}

static void test_connection_stream_16mib_round_trip(void **state) {
  (void)state;
  FOR_EACH_STREAM(mk) {
    struct pair p;
    mk(&p.a, &p.b);
    pid_t pid = tu_fork(echo_big, &p, 60);
    assert_true(pid > 0);
    mp_connection_close(p.b);
    char *m = malloc(BIG), *r = malloc(BIG);
    fill(m, BIG, 9);
    assert_int_equal(mp_connection_send(p.a, m, BIG, 30), 0);
    memset(r, 0, BIG);
    assert_int_equal(mp_connection_recv(p.a, r, BIG, 30), (ssize_t)BIG);
    assert_true(check(r, BIG, 9));
    assert_child_ok(pid);
    assert_int_equal(mp_connection_recv(p.a, r, BIG, 5), -EPIPE);
    free(m);
    free(r);
    mp_connection_close(p.a);
  }
}

static int stream_send_to_closed_peer(void *arg) {
  struct pair *p = arg;
  signal(SIGPIPE, SIG_DFL); /* SIGPIPE would kill this child */
  /* TCP may take one send before it learns of the close; then -EPIPE */
  int r = 0;
  for (int i = 0; i < 200 && r == 0; i++) {
    r = mp_connection_send(p->a, "x", 1, 1);
    if (r == 0)
      tu_sleep(0.01);
  }
  CHILD_CHECK(r == -EPIPE);
  CHILD_CHECK(mp_connection_send(p->a, "x", 1, 0) == -EPIPE);
  CHILD_CHECK(mp_connection_send(p->a, "x", 1, MP_FOREVER) == -EPIPE);
  char big[100000];
  memset(big, 1, sizeof big);
  CHILD_CHECK(mp_connection_send(p->a, big, sizeof big, 1) == -EPIPE);
  return 0;
}

/* End of file after the last message, on every receiving call; sends to a
 * closed peer give -EPIPE and no SIGPIPE; a sender killed mid-message leaves
 * end of file, never a torn message. */
static void test_connection_stream_eof(void **state) {
  (void)state;
  FOR_EACH_STREAM(mk) {
    struct pair p;
    mk(&p.a, &p.b);
    send_str(p.a, "last words");
    mp_connection_close(p.a);
    recv_str(p.b, "last words");
    char buf[16];
    assert_int_equal(mp_connection_recv(p.b, buf, sizeof buf, 10), -EPIPE);
    assert_int_equal(mp_connection_recv(p.b, buf, sizeof buf, 0), -EPIPE);
    void *m = NULL;
    assert_int_equal(mp_connection_recv_alloc(p.b, &m, 0), -EPIPE);
    assert_null(m);
    assert_int_equal(mp_connection_peek_size(p.b, 0), -EPIPE);
    assert_int_equal(mp_connection_poll(p.b, 0), 1);
    mp_connection_close(p.b);

    mk(&p.a, &p.b);
    mp_connection_close(p.b);
    p.b = NULL;
    pid_t pid = tu_fork(stream_send_to_closed_peer, &p, 30);
    assert_true(pid > 0);
    assert_child_ok(pid);
    mp_connection_close(p.a);

    mk(&p.a, &p.b);
    pid = tu_fork(send_big_forever, &p, 30);
    assert_true(pid > 0);
    mp_connection_close(p.a);
    assert_int_equal(mp_connection_poll(p.b, 10), 1);
    tu_sleep(0.1);
    kill(pid, SIGKILL);
    assert_int_equal(tu_wait(pid), 1000 + SIGKILL);
    char *big = malloc(BIG);
    assert_int_equal(mp_connection_recv(p.b, big, BIG, 10), -EPIPE);
    free(big);
    mp_connection_close(p.b);
  }
}

static void test_connection_stream_receive_timeouts(void **state) {
  (void)state;
  FOR_EACH_STREAM(mk) {
    mp_connection *a, *b;
    mk(&a, &b);
    check_blocking(do_recv, b, -ETIMEDOUT);
    check_blocking(do_recv_alloc, b, -ETIMEDOUT);
    check_blocking(do_poll, b, 0);
    check_blocking(do_peek_size, b, -ETIMEDOUT);
    mp_connection_close(a);
    mp_connection_close(b);
  }
  /* part of a message satisfies none of them: replay a message's bytes
   * (header 16, payload 10, trailer 4) in three steps */
  mp_connection *a, *b, *c;
  unix_stream_pair(&a, &b);
  int sv[2];
  assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  assert_int_equal(mp_connection_from_fd(sv[1], 0, &c), 0);
  send_str(a, "0123456789");
  unsigned char raw[64];
  assert_int_equal(recv(mp_connection_fileno(b), raw, sizeof raw, 0), 30);
  assert_int_equal(write(sv[0], raw, 12), 12);
  assert_int_equal(mp_connection_poll(c, 1), 1);
  check_blocking(do_peek_size, c, -ETIMEDOUT);
  check_blocking(do_recv, c, -ETIMEDOUT);
  assert_int_equal(write(sv[0], raw + 12, 16), 16);
  assert_int_equal(mp_connection_peek_size(c, 1), 10);
  check_blocking(do_recv_alloc, c, -ETIMEDOUT);
  assert_int_equal(write(sv[0], raw + 28, 2), 2);
  recv_str(c, "0123456789");
  /* bytes that are not libmp's framing */
  assert_int_equal(write(sv[0], "GET / HTTP/1.0\r\n\r\n", 18), 18);
  char buf[64];
  assert_int_equal(mp_connection_recv(c, buf, sizeof buf, 1), -EPROTO);
  assert_int_equal(mp_connection_peek_size(c, 1), -EPROTO);
  close(sv[0]);
  mp_connection_close(c);
  mp_connection_close(a);
  mp_connection_close(b);
}

/* Send NOWAIT until the connection stays full: TCP still moves bytes from
 * the sender's buffer to the receiver's for a while. Returns how many. */
static int fill_until_full(mp_connection *a, const void *msg, size_t len) {
  int sent = 0, round;
  do {
    round = 0;
    while (mp_connection_send(a, msg, len, MP_NOWAIT) == 0)
      round++;
    sent += round;
    tu_sleep(0.2);
  } while (round > 0);
  return sent;
}

/* Large enough that the little room TCP may still free on a full connection
 * does not take a whole one. */
#define FULL_MSG ((size_t)64 * 1024)
static char full_msg[FULL_MSG];

static int drain_later_alloc(void *arg) {
  struct pair *p = arg;
  tu_sleep(0.3);
  void *m = NULL;
  while (mp_connection_recv_alloc(p->b, &m, 0.5) >= 0)
    free(m);
  return 0;
}

static long do_send_full_msg(void *ctx, double t) {
  return mp_connection_send(ctx, full_msg, FULL_MSG, t);
}

/* Sends that time out deliver nothing, not even when part of the message
 * went out; the connection stays in step and the next message comes whole. */
static void test_connection_stream_send_timeouts(void **state) {
  (void)state;
  FOR_EACH_STREAM(mk) {
    mp_connection *a, *b;
    mk(&a, &b);
    int sent = fill_until_full(a, full_msg, FULL_MSG);
    assert_true(sent >= 2);
    check_blocking(do_send_full_msg, a, -ETIMEDOUT);
    char *buf = malloc(FULL_MSG);
    for (int i = 0; i < sent; i++)
      assert_int_equal(mp_connection_recv(b, buf, FULL_MSG, 5), (ssize_t)FULL_MSG);
    assert_int_equal(mp_connection_recv(b, buf, FULL_MSG, 0.05), -ETIMEDOUT);
    free(buf);
    send_str(a, "after");
    recv_str(b, "after");
    assert_int_equal(mp_connection_poll(b, 0), 0);
    mp_connection_close(a);
    mp_connection_close(b);
  }
}

static void *send_after_abandoned(void *arg) {
  struct pair *p = arg;
  char msg[1000];
  fill(msg, sizeof msg, 6);
  return (void *)(intptr_t)mp_connection_send(p->a, msg, sizeof msg, 20);
}

/* A large send that times out mid-message: the receiver drops the part that
 * went out and gets the next message whole. */
static void test_connection_stream_send_timeout_mid_message(void **state) {
  (void)state;
  FOR_EACH_STREAM(mk) {
    struct pair p;
    mk(&p.a, &p.b);
    char *m = malloc(BIG);
    fill(m, BIG, 6);
    double t0 = tu_now();
    assert_int_equal(mp_connection_send(p.a, m, BIG, 0.2), -ETIMEDOUT);
    double e = tu_now() - t0;
    assert_true(e >= 0.19 && e < 2.0);
    assert_int_equal(mp_connection_poll(p.b, 0), 1);
    char *buf = malloc(BIG);
    assert_int_equal(mp_connection_recv(p.b, buf, BIG, 0.1), -ETIMEDOUT);
    assert_int_equal(mp_connection_peek_size(p.b, 0), (ssize_t)BIG); /* begun, kept */
    /* the next send pays what the abandoned one owes, so someone must read:
     * a thread of this process sends (a forked child would pay with its own
     * copy of the handle) */
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, send_after_abandoned, &p), 0);
    assert_int_equal(mp_connection_recv(p.b, buf, BIG, 20), 1000);
    assert_true(check(buf, 1000, 6));
    void *res;
    assert_int_equal(pthread_join(th, &res), 0);
    assert_int_equal((intptr_t)res, 0);
    assert_int_equal(mp_connection_poll(p.b, 0), 0);
    send_str(p.a, "and on");
    recv_str(p.b, "and on");
    free(m);
    free(buf);
    mp_connection_close(p.a);
    mp_connection_close(p.b);
  }
}

/* Forever waits resume across signals until satisfied. */
static void test_connection_stream_forever_waits_survive_signals(void **state) {
  (void)state;
  FOR_EACH_STREAM(mk) {
    struct pair p;
    mk(&p.a, &p.b);
    pid_t pid = tu_fork(send_later, &p, 30);
    assert_true(pid > 0);
    tu_signals_start(0.05, 0.05);
    char buf[16];
    assert_int_equal(mp_connection_recv(p.b, buf, sizeof buf, MP_FOREVER), 4);
    assert_true(tu_signals_stop() >= 2);
    assert_child_ok(pid);

    fill_until_full(p.a, full_msg, FULL_MSG);
    pid = tu_fork(drain_later_alloc, &p, 30);
    assert_true(pid > 0);
    tu_signals_start(0.05, 0.05);
    assert_int_equal(mp_connection_send(p.a, full_msg, FULL_MSG, MP_FOREVER), 0);
    assert_true(tu_signals_stop() >= 2);
    assert_child_ok(pid);
    mp_connection_close(p.a);
    mp_connection_close(p.b);
  }
}

/* Descriptors do not cross a stream; a stream connection itself can be sent
 * over a pipe and works at the other end. */
static void test_connection_stream_fd_passing(void **state) {
  (void)state;
  mp_connection *a, *b;
  tcp_pair(&a, &b);
  int fd;
  mp_connection *c = NULL;
  assert_int_equal(mp_connection_send_fd(a, 0, 1), -EOPNOTSUPP);
  assert_int_equal(mp_connection_send_connection(a, b, 1), -EOPNOTSUPP);
  assert_int_equal(mp_connection_recv_fd(b, &fd, 0), -EOPNOTSUPP);
  assert_int_equal(mp_connection_recv_connection(b, &c, 0), -EOPNOTSUPP);
  assert_null(c);
  mp_connection *x, *y;
  new_pipe(1, &x, &y);
  assert_int_equal(mp_connection_send_connection(x, b, 1), 0);
  assert_int_equal(mp_connection_recv_connection(y, &c, 1), 0);
  mp_connection_close(b);
  send_str(a, "via the copy");
  recv_str(c, "via the copy");
  assert_int_equal(mp_connection_recv_fd(c, &fd, 0), -EOPNOTSUPP);
  mp_connection_close(c);
  mp_connection_close(x);
  mp_connection_close(y);
  mp_connection_close(a);
}

static void test_connection_stream_from_fd(void **state) {
  (void)state;
  mp_connection *c = NULL;
  int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  assert_true(l >= 0);
  assert_int_equal(mp_connection_from_fd(l, 0, &c), -ENOTCONN); /* unconnected */
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  assert_int_equal(bind(l, (struct sockaddr *)&sa, sizeof sa), 0);
  assert_int_equal(listen(l, 1), 0);
  assert_int_equal(mp_connection_from_fd(l, 0, &c), -ENOTCONN); /* listening */
  close(l);
  assert_null(c);
  int sv[2];
  assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0); /* no CLOEXEC */
  mp_connection *a = NULL, *b = NULL;
  assert_int_equal(mp_connection_from_fd(sv[0], MP_CONNECTION_WRITABLE, &a), 0);
  assert_int_equal(mp_connection_from_fd(sv[1], MP_CONNECTION_READABLE, &b), 0);
  assert_true(fcntl(sv[0], F_GETFD) & FD_CLOEXEC);
  assert_int_equal(mp_connection_fileno(a), sv[0]);
  assert_int_equal(mp_connection_readable(a), 0);
  assert_int_equal(mp_connection_writable(b), 0);
  char buf[8];
  assert_int_equal(mp_connection_recv(a, buf, sizeof buf, 0), -EBADF);
  assert_int_equal(mp_connection_send(b, "x", 1, 0), -EBADF);
  send_str(a, "adopted");
  recv_str(b, "adopted");
  mp_connection_close(a);
  mp_connection_close(b);
}

/* Bytes already read into the handle count as readable for wait and poll,
 * though the descriptor shows nothing. */
static void test_connection_stream_wait(void **state) {
  (void)state;
  FOR_EACH_STREAM(mk) {
    mp_connection *a, *b, *x, *y;
    mk(&a, &b);
    new_pipe(1, &x, &y);
    mp_wait_item items[2] = {{.kind = MP_WAIT_CONNECTION, .obj = y},
                             {.kind = MP_WAIT_CONNECTION, .obj = b}};
    struct {
      mp_wait_item *items;
      size_t n;
    } ctx = {items, 2};
    check_blocking(do_wait, &ctx, -ETIMEDOUT);
    send_str(a, "one");
    send_str(a, "two");
    assert_int_equal(mp_connection_wait(items, 2, 5), 1);
    assert_int_equal(items[0].ready, 0);
    assert_int_equal(items[1].ready, 1);
    tu_sleep(0.05); /* both messages are in, and one recv takes both */
    recv_str(b, "one");
    struct pollfd pf = {.fd = mp_connection_fileno(b), .events = POLLIN, .revents = 0};
    assert_int_equal(poll(&pf, 1, 0), 0);
    double t0 = tu_now();
    assert_int_equal(mp_connection_wait(items, 2, MP_FOREVER), 1);
    assert_true(tu_now() - t0 < 1.0);
    assert_int_equal(items[1].ready, 1);
    assert_int_equal(mp_connection_poll(b, 0), 1);
    send_str(x, "pipe");
    assert_int_equal(mp_connection_wait(items, 2, 5), 2);
    assert_int_equal(items[0].ready, 1);
    recv_str(b, "two");
    recv_str(y, "pipe");
    assert_int_equal(mp_connection_wait(items, 2, 0), -ETIMEDOUT);
    /* with a queue in the set too */
    mp_queue *q = NULL;
    assert_int_equal(mp_queue_new(0, NULL, &q), 0);
    mp_wait_item mixed[2] = {{.kind = MP_WAIT_QUEUE, .obj = q},
                             {.kind = MP_WAIT_CONNECTION, .obj = b}};
    send_str(a, "three");
    send_str(a, "four");
    tu_sleep(0.05);
    recv_str(b, "three");
    t0 = tu_now();
    assert_int_equal(mp_connection_wait(mixed, 2, 10), 1);
    assert_true(tu_now() - t0 < 1.0);
    assert_int_equal(mixed[0].ready, 0);
    assert_int_equal(mixed[1].ready, 1);
    recv_str(b, "four");
    assert_int_equal(mp_connection_wait(mixed, 2, 0), -ETIMEDOUT);
    mp_queue_free(q);
    mp_connection_close(x);
    mp_connection_close(y);
    mp_connection_close(a);
    mp_connection_close(b);
  }
}

/* ------------------------------------------------- Listener and Client */

struct client_arg {
  char addr[300];
  const char *key;
  double delay; /* seconds to wait before connecting */
};

static int good_client(void *arg) {
  struct client_arg *x = arg;
  tu_sleep(x->delay);
  mp_connection *c;
  CHILD_CHECK(mp_client_connect(x->addr, x->key, x->key ? strlen(x->key) : 0, 10, &c) == 0);
  CHILD_CHECK(mp_connection_send(c, "hi", 2, 10) == 0);
  char buf[8];
  CHILD_CHECK(mp_connection_recv(c, buf, sizeof buf, 10) == -EPIPE); /* waits for close */
  mp_connection_close(c);
  return 0;
}

/* A connected socket that never says a word. */
static int silent_connect(const char *addr) {
  int fd;
  if (!strncmp(addr, "unix:", 5)) {
    struct sockaddr_un un;
    memset(&un, 0, sizeof un);
    un.sun_family = AF_UNIX;
    strcpy(un.sun_path, addr + 5);
    fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    assert_int_equal(connect(fd, (struct sockaddr *)&un, sizeof un), 0);
  } else {
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = htons((uint16_t)atoi(strrchr(addr, ':') + 1));
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
  }
  return fd;
}

static void expect_hi(mp_connection *c) {
  char buf[8];
  assert_int_equal(mp_connection_recv(c, buf, sizeof buf, 10), 2);
  assert_memory_equal(buf, "hi", 2);
}

/* A client that connects and stays silent neither delays a good client that
 * connects after it nor holds accept(): handshakes run side by side. The
 * silent one is refused after its own handshake deadline (5 s). (Before,
 * accept waited on the silent client and the good one timed out.) */
static void test_connection_listener_silent_client_does_not_block(void **state) {
  (void)state;
  for (int tcp = 0; tcp < 2; tcp++) {
    /* (a key: without one, the handshake asks nothing of the client, and a
     * silent client is accepted as soon as it connects) */
    struct client_arg x = {.key = tcp ? "k2" : "secret", .delay = 0};
    char path[128];
    snprintf(path, sizeof path, "unix:/tmp/mp-test-lsilent-%d", (int)getpid());
    mp_listener *l;
    assert_int_equal(
        mp_listener_new(tcp ? "127.0.0.1:0" : path, x.key, x.key ? strlen(x.key) : 0, &l), 0);
    assert_true(mp_listener_address(l, x.addr, sizeof x.addr) > 0);
    int silent = silent_connect(x.addr);
    double t0 = tu_now();
    pid_t pid = tu_fork(good_client, &x, 30);
    assert_true(pid > 0);
    mp_connection *c;
    assert_int_equal(mp_listener_accept(l, 10, &c), 0);
    assert_true(tu_now() - t0 < 3.0);
    expect_hi(c);
    mp_connection_close(c);
    assert_child_ok(pid);
    /* the silent one: refused once its handshake deadline passed */
    assert_int_equal(mp_listener_accept(l, 20, &c), -EACCES);
    double e = tu_now() - t0;
    assert_true(e > 4.0 && e < 10.0);
    char b;
    assert_int_equal(read(silent, &b, 1) >= 0, 1); /* closed (or a challenge) */
    close(silent);
    assert_int_equal(mp_listener_close(l), 0);
  }
}

/* accept(MP_NOWAIT) never waits: not with nobody there, not with a silent
 * client pending, and a good client's handshake goes on across such calls
 * until one returns it. (Before, it gave a silent client 30 s.) */
static void test_connection_listener_accept_nowait(void **state) {
  (void)state;
  struct client_arg x = {.key = "k", .delay = 0.2};
  char path[128];
  snprintf(path, sizeof path, "unix:/tmp/mp-test-lnowait-%d", (int)getpid());
  mp_listener *l;
  assert_int_equal(mp_listener_new(path, "k", 1, &l), 0);
  assert_true(mp_listener_address(l, x.addr, sizeof x.addr) > 0);
  mp_connection *c = NULL;
  double t0 = tu_now();
  assert_int_equal(mp_listener_accept(l, MP_NOWAIT, &c), -ETIMEDOUT);
  assert_true(tu_now() - t0 < 1.0);
  int silent = silent_connect(x.addr);
  t0 = tu_now();
  assert_int_equal(mp_listener_accept(l, MP_NOWAIT, &c), -ETIMEDOUT);
  assert_true(tu_now() - t0 < 1.0);
  t0 = tu_now();
  assert_int_equal(mp_listener_accept(l, 0.3, &c), -ETIMEDOUT);
  assert_true(tu_now() - t0 < 1.5);
  pid_t pid = tu_fork(good_client, &x, 30);
  assert_true(pid > 0);
  int r;
  t0 = tu_now();
  do {
    double t1 = tu_now();
    r = mp_listener_accept(l, MP_NOWAIT, &c);
    assert_true(tu_now() - t1 < 1.0);
    if (r == -ETIMEDOUT)
      tu_sleep(0.01);
  } while (r == -ETIMEDOUT && tu_now() - t0 < 10);
  assert_int_equal(r, 0);
  expect_hi(c);
  mp_connection_close(c);
  assert_child_ok(pid);
  close(silent);
  assert_int_equal(mp_listener_close(l), 0);
}

/* A second close gives -EINVAL (before: a double free, and abort). */
static void test_connection_listener_double_close(void **state) {
  (void)state;
  char path[128];
  snprintf(path, sizeof path, "unix:/tmp/mp-test-lclose-%d", (int)getpid());
  mp_listener *l;
  assert_int_equal(mp_listener_new(path, NULL, 0, &l), 0);
  assert_int_equal(mp_listener_close(l), 0);
  assert_int_equal(mp_listener_close(l), -EINVAL);
  mp_connection *c;
  assert_int_equal(mp_listener_accept(l, 0, &c), -EINVAL);
  char buf[64];
  assert_int_equal(mp_listener_address(l, buf, sizeof buf), -EINVAL);
  assert_int_equal(mp_listener_close(l), -EINVAL);
}

/* "*:0" listens on every address, IPv4 and IPv6 alike (before: [::1] only,
 * as getaddrinfo resolves "*"). */
static void test_connection_listener_every_address(void **state) {
  (void)state;
  mp_listener *l;
  assert_int_equal(mp_listener_new("*:0", NULL, 0, &l), 0);
  char addr[128];
  assert_true(mp_listener_address(l, addr, sizeof addr) > 0);
  const char *port = strrchr(addr, ':') + 1;
  assert_true(atoi(port) > 0);
  const char *hosts[] = {"127.0.0.1", "[::1]"};
  for (int i = 0; i < 2; i++) {
    struct client_arg x = {.key = NULL, .delay = 0};
    snprintf(x.addr, sizeof x.addr, "%s:%s", hosts[i], port);
    pid_t pid = tu_fork(good_client, &x, 30);
    assert_true(pid > 0);
    mp_connection *c;
    assert_int_equal(mp_listener_accept(l, 10, &c), 0);
    expect_hi(c);
    mp_connection_close(c);
    assert_child_ok(pid);
  }
  assert_int_equal(mp_listener_close(l), 0);
  assert_int_equal(mp_listener_new("*:x", NULL, 0, &l), -EINVAL);
}

/* ------------------------------------------------------ Python's wire */

static void raw_read(int fd, void *buf, size_t n) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = read(fd, (char *)buf + got, n - got);
    assert_true(r > 0);
    got += (size_t)r;
  }
}

/* The framing is Python's Connection's, byte for byte, both ways. */
static void test_connection_python_framing(void **state) {
  (void)state;
  int sv[2];
  assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  mp_connection *a;
  assert_int_equal(mp_connection_from_fd(sv[0], MP_CONNECTION_PYTHON, &a), 0);
  unsigned char raw[32];
  /* ours: a 4-byte big-endian length, then the bytes */
  assert_int_equal(mp_connection_send(a, "abc", 3, 5), 0);
  raw_read(sv[1], raw, 7);
  assert_memory_equal(raw, "\0\0\0\3abc", 7);
  assert_int_equal(mp_connection_send(a, NULL, 0, 5), 0);
  raw_read(sv[1], raw, 4);
  assert_memory_equal(raw, "\0\0\0\0", 4);
  /* theirs: both forms of the length, the long one being -1 and 8 bytes */
  char buf[16];
  assert_int_equal(write(sv[1], "\0\0\0\2hi", 6), 6);
  assert_int_equal(mp_connection_recv(a, buf, sizeof buf, 5), 2);
  assert_memory_equal(buf, "hi", 2);
  assert_int_equal(write(sv[1], "\377\377\377\377\0\0\0\0\0\0\0\5hello", 17), 17);
  assert_int_equal(mp_connection_peek_size(a, 5), 5);
  assert_int_equal(mp_connection_recv(a, buf, 4, 5), -EMSGSIZE); /* it stays */
  assert_int_equal(mp_connection_recv(a, buf, sizeof buf, 5), 5);
  assert_memory_equal(buf, "hello", 5);
  /* a message cut by a timeout goes on in the next receive */
  assert_int_equal(write(sv[1], "\0\0\0\01212345", 9), 9);
  assert_int_equal(mp_connection_poll(a, 0), 1);
  assert_int_equal(mp_connection_recv(a, buf, sizeof buf, 0.05), -ETIMEDOUT);
  assert_int_equal(write(sv[1], "67890", 5), 5);
  assert_int_equal(mp_connection_recv(a, buf, sizeof buf, 5), 10);
  assert_memory_equal(buf, "1234567890", 10);
  void *m = NULL;
  assert_int_equal(write(sv[1], "\0\0\0\1z", 5), 5);
  assert_int_equal(mp_connection_recv_alloc(a, &m, 5), 1);
  assert_memory_equal(m, "z", 1);
  free(m);
  /* no descriptors on Python's wire */
  assert_int_equal(mp_connection_send_fd(a, 0, 1), -EOPNOTSUPP);
  /* a connection sent keeps speaking Python's wire */
  mp_connection *p1, *p2, *b;
  assert_int_equal(mp_pipe_new(1, &p1, &p2), 0);
  assert_int_equal(mp_connection_send_connection(p1, a, 5), 0);
  assert_int_equal(mp_connection_recv_connection(p2, &b, 5), 0);
  assert_int_equal(mp_connection_send(b, "xy", 2, 5), 0);
  raw_read(sv[1], raw, 6);
  assert_memory_equal(raw, "\0\0\0\2xy", 6);
  assert_int_equal(mp_connection_close(b), 0);
  assert_int_equal(mp_connection_close(p1), 0);
  assert_int_equal(mp_connection_close(p2), 0);
  /* a negative length is not Python's framing */
  assert_int_equal(write(sv[1], "\200\0\0\0", 4), 4);
  assert_int_equal(mp_connection_recv(a, buf, sizeof buf, 5), -EPROTO);
  assert_int_equal(mp_connection_close(a), 0);
  close(sv[1]);

  /* end of file */
  assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  assert_int_equal(mp_connection_from_fd(sv[0], MP_CONNECTION_PYTHON, &a), 0);
  assert_int_equal(write(sv[1], "\0\0\0\3ab", 6), 6);
  close(sv[1]);
  assert_int_equal(mp_connection_recv(a, buf, sizeof buf, 5), -EPIPE);
  assert_int_equal(mp_connection_close(a), 0);
}

/* A send that times out in the middle of its message cannot be marked
 * abandoned on Python's wire: later sends say so rather than desynchronise
 * the peer. */
static void test_connection_python_torn_send(void **state) {
  (void)state;
  int sv[2];
  assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  mp_connection *a;
  assert_int_equal(mp_connection_from_fd(sv[0], MP_CONNECTION_PYTHON, &a), 0);
  size_t n = 8u << 20; /* far more than the socket buffers hold */
  char *big = calloc(1, n);
  assert_non_null(big);
  assert_int_equal(mp_connection_send(a, big, n, 0.1), -ETIMEDOUT);
  assert_int_equal(mp_connection_send(a, "x", 1, 1), -EPROTO);
  /* receiving still works */
  char buf[4];
  assert_int_equal(write(sv[1], "\0\0\0\1q", 5), 5);
  assert_int_equal(mp_connection_recv(a, buf, sizeof buf, 5), 1);
  free(big);
  assert_int_equal(mp_connection_close(a), 0);
  close(sv[1]);
}

struct py_cli {
  char addr[128];
  const char *key;
  size_t keylen;
  int want;
};

static int py_client_child(void *arg) {
  struct py_cli *x = arg;
  mp_connection *c;
  int r = mp_client_connect_python(x->addr, x->key, x->keylen, 20, &c);
  CHILD_CHECK(r == x->want);
  if (r < 0)
    return 0;
  char buf[8];
  CHILD_CHECK(mp_connection_recv(c, buf, sizeof buf, 20) == 4);
  CHILD_CHECK(memcmp(buf, "ping", 4) == 0);
  CHILD_CHECK(mp_connection_send(c, "pong", 4, 20) == 0);
  mp_connection_close(c);
  return 0;
}

static void py_round(const char *address, const char *lkey, size_t llen, const char *ckey,
                     size_t clen, int want) {
  mp_listener *l;
  assert_int_equal(mp_listener_new_python(address, lkey, llen, &l), 0);
  struct py_cli x = {.key = ckey, .keylen = clen, .want = want};
  assert_true(mp_listener_address(l, x.addr, sizeof x.addr) > 0);
  pid_t pid = tu_fork(py_client_child, &x, 30);
  mp_connection *c = NULL;
  assert_int_equal(mp_listener_accept(l, 20, &c), want);
  if (want == 0) {
    char buf[8];
    assert_int_equal(mp_connection_send(c, "ping", 4, 20), 0);
    assert_int_equal(mp_connection_recv(c, buf, sizeof buf, 20), 4);
    assert_memory_equal(buf, "pong", 4);
    assert_int_equal(mp_connection_close(c), 0);
  }
  assert_child_ok(pid);
  assert_int_equal(mp_listener_close(l), 0);
}

/* libmp to libmp in Python mode: our challenges are Python 3.12's
 * ("{sha256}"), and so are the answers to them. */
static void test_connection_python_listener_client(void **state) {
  (void)state;
  char path[64];
  snprintf(path, sizeof path, "unix:/tmp/mp-pyl-%d", (int)getpid());
  py_round("127.0.0.1:0", "key", 3, "key", 3, 0);
  py_round(path, "key", 3, "key", 3, 0);
  py_round(path, NULL, 0, NULL, 0, 0);
  py_round(path, "", 0, "", 0, 0);
  py_round("127.0.0.1:0", "key", 3, "kez", 3, -EACCES);
  py_round(path, "", 0, "k", 1, -EACCES);
}

/* An empty key is a key: a client must prove it, and one without a key is
 * refused (Python's authkey=b'' against None). */
static int empty_key_child(void *arg) {
  struct py_cli *x = arg;
  mp_connection *c;
  int r = mp_client_connect(x->addr, x->key, x->keylen, 20, &c);
  CHILD_CHECK(r == x->want);
  if (r == 0)
    mp_connection_close(c);
  return 0;
}

static void test_connection_listener_empty_key(void **state) {
  (void)state;
  mp_listener *l;
  assert_int_equal(mp_listener_new("127.0.0.1:0", "", 0, &l), 0);
  struct py_cli x = {.key = "", .keylen = 0, .want = 0};
  assert_true(mp_listener_address(l, x.addr, sizeof x.addr) > 0);
  mp_connection *c;
  pid_t pid = tu_fork(empty_key_child, &x, 30);
  assert_int_equal(mp_listener_accept(l, 20, &c), 0);
  assert_int_equal(mp_connection_close(c), 0);
  assert_child_ok(pid);
  /* no key: the client refuses a listener that wants one, and leaves */
  x.key = NULL;
  x.want = -EACCES;
  pid = tu_fork(empty_key_child, &x, 30);
  assert_int_equal(mp_listener_accept(l, 20, &c), -EPIPE);
  assert_child_ok(pid);
  /* another key */
  x.key = "k";
  x.keylen = 1;
  pid = tu_fork(empty_key_child, &x, 30);
  assert_int_equal(mp_listener_accept(l, 20, &c), -EACCES);
  assert_child_ok(pid);
  assert_int_equal(mp_listener_close(l), 0);
  /* and a listener with no key refuses a client with the empty key */
  assert_int_equal(mp_listener_new("127.0.0.1:0", NULL, 0, &l), 0);
  assert_true(mp_listener_address(l, x.addr, sizeof x.addr) > 0);
  x.key = "";
  x.keylen = 0;
  pid = tu_fork(empty_key_child, &x, 30); /* the child checks its -EACCES */
  int r = mp_listener_accept(l, 20, &c);
  if (r == 0)
    mp_connection_close(c); /* it was open; the client left after */
  assert_child_ok(pid);
  assert_int_equal(mp_listener_close(l), 0);
}

/* Linux's abstract namespace: "unix:@name" or "@name", no file. */
static void test_connection_listener_abstract_address(void **state) {
  (void)state;
  char name[64], addr[128], got[128];
  snprintf(name, sizeof name, "mp-abstract-%d", (int)getpid());
  snprintf(addr, sizeof addr, "unix:@%s", name);
  mp_listener *l, *l2;
  assert_int_equal(mp_listener_new(addr, "k", 1, &l), 0);
  assert_int_equal(mp_listener_address(l, got, sizeof got), (ssize_t)strlen(addr));
  assert_string_equal(got, addr);
  struct stat st;
  assert_int_equal(stat(name, &st), -1); /* no file, here or anywhere */
  assert_int_equal(stat(addr + 5, &st), -1);
  char at[80];
  snprintf(at, sizeof at, "@%s", name);
  assert_int_equal(mp_listener_new(at, NULL, 0, &l2), -EADDRINUSE);
  struct py_cli x = {.key = "k", .keylen = 1, .want = 0};
  snprintf(x.addr, sizeof x.addr, "%s", at);
  pid_t pid = tu_fork(empty_key_child, &x, 30);
  mp_connection *c;
  assert_int_equal(mp_listener_accept(l, 20, &c), 0);
  assert_int_equal(mp_connection_close(c), 0);
  assert_child_ok(pid);
  assert_int_equal(mp_listener_close(l), 0);
  /* the name is free again once closed */
  assert_int_equal(mp_listener_new(at, NULL, 0, &l2), 0);
  assert_int_equal(mp_listener_close(l2), 0);
  assert_int_equal(mp_listener_new("unix:@", NULL, 0, &l), -EINVAL);
  assert_int_equal(mp_listener_new("@", NULL, 0, &l), -EINVAL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_connection_pipe_new_and_accessors),
      cmocka_unit_test(test_connection_bad_arguments),
      cmocka_unit_test(test_connection_double_close),
      cmocka_unit_test(test_connection_duplex_both_ways),
      cmocka_unit_test(test_connection_simplex_wrong_direction),
      cmocka_unit_test(test_connection_emsgsize_keeps_message),
      cmocka_unit_test(test_connection_poll_does_not_consume),
      cmocka_unit_test(test_connection_empty_messages),
      cmocka_unit_test(test_connection_recv_alloc),
      cmocka_unit_test(test_connection_send_bytes_bounds),
      cmocka_unit_test(test_connection_many_small_in_order),
      cmocka_unit_test(test_connection_16mib_round_trip),
      cmocka_unit_test(test_connection_timeout_mid_message_loses_nothing),
      cmocka_unit_test(test_connection_eof_when_every_copy_closed),
      cmocka_unit_test(test_connection_eof_when_holder_killed),
      cmocka_unit_test(test_connection_send_to_closed_peer_no_sigpipe),
      cmocka_unit_test(test_connection_sender_killed_mid_message),
      cmocka_unit_test(test_connection_send_timeout_mid_message),
      cmocka_unit_test(test_connection_receive_timeouts),
      cmocka_unit_test(test_connection_send_timeouts),
      cmocka_unit_test(test_connection_forever_waits_survive_signals),
      cmocka_unit_test(test_connection_fd_passing),
      cmocka_unit_test(test_connection_fds_and_messages_interleave),
      cmocka_unit_test(test_connection_recv_fd_emfile),
      cmocka_unit_test(test_connection_send_connection_to_child),
      cmocka_unit_test(test_connection_from_fd),
      cmocka_unit_test(test_connection_ten_senders_one_end),
      cmocka_unit_test(test_connection_threads),
      cmocka_unit_test(test_connection_wait_connections_processes_fds),
      cmocka_unit_test(test_connection_wait_bad_arguments),
      cmocka_unit_test(test_connection_wait_one_queue),
      cmocka_unit_test(test_connection_wait_several_queues),
      cmocka_unit_test(test_connection_wait_many_queues),
      cmocka_unit_test(test_connection_wait_queues_and_connections),
      cmocka_unit_test(test_connection_stream_boundaries),
      cmocka_unit_test(test_connection_stream_emsgsize_and_partial),
      cmocka_unit_test(test_connection_stream_whole_message_waits_for_room),
      cmocka_unit_test(test_connection_absurd_length_is_skipped),
      cmocka_unit_test(test_connection_stream_16mib_round_trip),
      cmocka_unit_test(test_connection_stream_eof),
      cmocka_unit_test(test_connection_stream_receive_timeouts),
      cmocka_unit_test(test_connection_stream_send_timeouts),
      cmocka_unit_test(test_connection_stream_send_timeout_mid_message),
      cmocka_unit_test(test_connection_stream_forever_waits_survive_signals),
      cmocka_unit_test(test_connection_stream_fd_passing),
      cmocka_unit_test(test_connection_stream_from_fd),
      cmocka_unit_test(test_connection_stream_wait),
      cmocka_unit_test(test_connection_listener_silent_client_does_not_block),
      cmocka_unit_test(test_connection_listener_accept_nowait),
      cmocka_unit_test(test_connection_listener_double_close),
      cmocka_unit_test(test_connection_listener_every_address),
      cmocka_unit_test(test_connection_python_framing),
      cmocka_unit_test(test_connection_python_torn_send),
      cmocka_unit_test(test_connection_python_listener_client),
      cmocka_unit_test(test_connection_listener_empty_key),
      cmocka_unit_test(test_connection_listener_abstract_address),
  };
  /* MP_TEST_FILTER=pattern runs only the matching tests (to repeat one) */
  if (getenv("MP_TEST_FILTER"))
    cmocka_set_test_filter(getenv("MP_TEST_FILTER"));
  return TU_RUN("connection", tests);
}
