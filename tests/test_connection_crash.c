/* SPDX-License-Identifier: MIT */
/* Connection protocols under SIGKILL at their crash points (src/crash.h):
 * senders killed between the records of a message or in the middle of a
 * stream record, receivers killed after a peek or with part of a message,
 * and clients killed in the middle of a handshake. What the survivors must
 * see: never a torn message, every message the protocol accepted (those the
 * dead process had not taken), end of file rather than a hang. */
#include "crashutil.h"

#include <errno.h>
#include <fcntl.h>
#include <mp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

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

struct pair {
  mp_connection *a, *b;
};

static void recv_str(mp_connection *c, const char *want) {
  char buf[256];
  ssize_t n = mp_connection_recv(c, buf, sizeof buf, 10);
  assert_int_equal(n, (ssize_t)strlen(want));
  assert_memory_equal(buf, want, strlen(want));
}

/* Three records on a pipe: more than two chunks of MP_CONNECTION_ATOMIC_MAX. */
#define MULTI ((size_t)MP_CONNECTION_ATOMIC_MAX * 2 + 1000)

/* ------------------------------------------------ SOCK_SEQPACKET: sending */

static int send_before_and_multi(void *arg) {
  struct pair *p = arg;
  char *m = malloc(MULTI);
  fill(m, MULTI, 3);
  CHILD_CHECK(mp_connection_send(p->a, "before", 6, 10) == 0);
  CHILD_CHECK(mp_connection_send(p->a, m, MULTI, 10) == 0);
  free(m);
  return 0;
}

/* A sender killed between the records of a message (after its FIRST, after
 * its first MORE): the receiver never gets the torn message; the message
 * before it and one another sender sends after it arrive whole. */
static void test_connection_crash_sender_between_records(void **state) {
  (void)state;
  for (unsigned nth = 2; nth <= 3; nth++) {
    struct pair p;
    assert_int_equal(mp_pipe_new(1, &p.a, &p.b), 0);
    pid_t c = cu_fork_armed("connection.send.record_sent", nth, send_before_and_multi, &p, 30);
    cu_assert_killed_at(c);
    assert_int_equal(mp_connection_send(p.a, "after", 5, 10), 0);
    char *buf = malloc(MULTI);
    assert_int_equal(mp_connection_recv(p.b, buf, MULTI, 10), 6);
    assert_memory_equal(buf, "before", 6);
    /* (room for the torn one: its FIRST alone cannot tell it is torn) */
    assert_int_equal(mp_connection_recv(p.b, buf, MULTI, 10), 5);
    assert_memory_equal(buf, "after", 5);
    free(buf);
    assert_int_equal(mp_connection_poll(p.b, 0), 0);
    assert_int_equal(mp_connection_close(p.a), 0);
    assert_int_equal(mp_connection_recv(p.b, NULL, 0, 10), -EPIPE);
    assert_int_equal(mp_connection_close(p.b), 0);
  }
}

/* ---------------------------------------------- SOCK_SEQPACKET: receiving */

static int recv_one(void *arg) {
  struct pair *p = arg;
  char buf[64];
  ssize_t n = mp_connection_recv(p->b, buf, sizeof buf, 10);
  return n >= 0 ? 0 : 1;
}

/* A receiver killed after peeking at a record has consumed nothing: another
 * receiver of the same end gets every message, in order. */
static void test_connection_crash_receiver_after_peek(void **state) {
  (void)state;
  struct pair p;
  assert_int_equal(mp_pipe_new(1, &p.a, &p.b), 0);
  assert_int_equal(mp_connection_send(p.a, "one", 3, 10), 0);
  assert_int_equal(mp_connection_send(p.a, "two", 3, 10), 0);
  pid_t c = cu_fork_armed("connection.recv.peeked", 1, recv_one, &p, 30);
  cu_assert_killed_at(c);
  recv_str(p.b, "one");
  recv_str(p.b, "two");
  assert_int_equal(mp_connection_poll(p.b, 0), 0);
  mp_connection_close(p.a);
  mp_connection_close(p.b);
}

static int recv_second(void *arg) {
  struct pair *p = arg;
  char buf[64];
  /* stops after peeking at "one"; meanwhile the parent takes "one" */
  ssize_t n = mp_connection_recv(p->b, buf, sizeof buf, 5);
  CHILD_CHECK(n == 6 && memcmp(buf, "second", 6) == 0);
  CHILD_CHECK(mp_connection_poll(p->b, 0) == 0);
  return 0;
}

static int recv_expect_fd(void *arg) {
  struct pair *p = arg;
  char buf[64];
  /* stops after peeking at "one"; the parent takes it; the descriptor is
   * then this receiver's next item, kept whole with its descriptor */
  CHILD_CHECK(mp_connection_recv(p->b, buf, sizeof buf, 5) == -EBADMSG);
  int fd = -1;
  CHILD_CHECK(mp_connection_recv_fd(p->b, &fd, 0) == 0);
  CHILD_CHECK(fcntl(fd, F_GETFD) >= 0);
  close(fd);
  return 0;
}

/* Two receivers race for one end: one peeks at "one", the other takes it,
 * and the first then reads "second". It must deliver it, not drop it as the
 * old read_record() did ("another reader took it: look again"). */
static void test_connection_crash_receivers_race_loses_nothing(void **state) {
  (void)state;
  struct pair p;
  assert_int_equal(mp_pipe_new(1, &p.a, &p.b), 0);
  assert_int_equal(mp_connection_send(p.a, "one", 3, 10), 0);
  /* (a header unlike the first's: equal ones the old code read as the same) */
  assert_int_equal(mp_connection_send(p.a, "second", 6, 10), 0);
  pid_t c = cu_fork_stopped_at("connection.recv.peeked", 1, recv_second, &p, 30);
  recv_str(p.b, "one");
  assert_int_equal(kill(c, SIGCONT), 0);
  assert_child_ok(c);
  assert_int_equal(mp_connection_poll(p.b, 0), 0); /* "second" went to one receiver */
  /* the same with a descriptor next: it stays a descriptor, open */
  assert_int_equal(mp_connection_send(p.a, "one", 3, 10), 0);
  assert_int_equal(mp_connection_send_fd(p.a, 1, 10), 0);
  assert_int_equal(mp_connection_send(p.a, "two", 3, 10), 0);
  c = cu_fork_stopped_at("connection.recv.peeked", 1, recv_expect_fd, &p, 30);
  recv_str(p.b, "one");
  assert_int_equal(kill(c, SIGCONT), 0);
  assert_child_ok(c); /* it got the descriptor, open, as a descriptor */
  recv_str(p.b, "two");
  assert_int_equal(mp_connection_poll(p.b, 0), 0);
  mp_connection_close(p.a);
  mp_connection_close(p.b);
}

static int recv_multi(void *arg) {
  struct pair *p = arg;
  char *m = malloc(MULTI);
  ssize_t n = mp_connection_recv(p->b, m, MULTI, 10);
  free(m);
  return n == (ssize_t)MULTI ? 0 : 1;
}

/* A receiver killed with part of a message (after reading its FIRST, after
 * its first MORE): that message dies with it, but another receiver of the
 * same end never gets its remains as a message, and gets the next one
 * whole. */
static void test_connection_crash_receiver_mid_message(void **state) {
  (void)state;
  char *m = malloc(MULTI), *buf = malloc(MULTI);
  fill(m, MULTI, 5);
  for (unsigned nth = 1; nth <= 2; nth++) {
    struct pair p;
    assert_int_equal(mp_pipe_new(1, &p.a, &p.b), 0);
    assert_int_equal(mp_connection_send(p.a, m, MULTI, 10), 0);
    assert_int_equal(mp_connection_send(p.a, "next", 4, 10), 0);
    pid_t c = cu_fork_armed("connection.recv.record_read", nth, recv_multi, &p, 30);
    cu_assert_killed_at(c);
    ssize_t n = mp_connection_recv(p.b, buf, MULTI, 10);
    assert_int_equal(n, 4);
    assert_memory_equal(buf, "next", 4);
    /* and the end works on: a whole large message after the remains */
    assert_int_equal(mp_connection_send(p.a, m, MULTI, 10), 0);
    assert_int_equal(mp_connection_recv(p.b, buf, MULTI, 10), (ssize_t)MULTI);
    assert_true(check(buf, MULTI, 5));
    mp_connection_close(p.a);
    mp_connection_close(p.b);
  }
  free(m);
  free(buf);
}

/* ------------------------------------------------------ stream framing */

#define BIG ((size_t)1 << 20) /* more than a stream socket's buffers hold */

static void stream_pair(struct pair *p) {
  int sv[2];
  assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  assert_int_equal(mp_connection_from_fd(sv[0], 0, &p->a), 0);
  assert_int_equal(mp_connection_from_fd(sv[1], 0, &p->b), 0);
}

static int stream_send_first_and_big(void *arg) {
  struct pair *p = arg;
  mp_connection_close(p->b);
  char *m = malloc(BIG);
  fill(m, BIG, 6);
  /* a finite timeout: the writes are non-blocking pieces (a forever send
   * is one blocking write) */
  CHILD_CHECK(mp_connection_send(p->a, "first", 5, 20) == 0);
  CHILD_CHECK(mp_connection_send(p->a, m, BIG, 20) == 0);
  free(m);
  return 0;
}

/* A stream sender killed in the middle of a record (after the first and
 * the second piece of a large message went out): the receiver gets the
 * message before it whole, then end of file, never the torn one. */
static void test_connection_crash_stream_sender_mid_record(void **state) {
  (void)state;
  char *buf = malloc(BIG);
  for (unsigned nth = 2; nth <= 3; nth++) {
    struct pair p;
    stream_pair(&p);
    pid_t c = cu_fork_armed("connection.stream.send.wrote", nth, stream_send_first_and_big, &p, 30);
    mp_connection_close(p.a);
    recv_str(p.b, "first");
    assert_int_equal(mp_connection_recv(p.b, buf, BIG, 20), -EPIPE);
    cu_assert_killed_at(c);
    mp_connection_close(p.b);
  }
  free(buf);
}

struct debt {
  struct pair p;
  int note[2]; /* the child writes a byte once its send has timed out */
};

static int stream_abandon_then_send(void *arg) {
  struct debt *x = arg;
  mp_connection_close(x->p.b);
  close(x->note[0]);
  char *m = malloc(BIG);
  fill(m, BIG, 8);
  CHILD_CHECK(mp_connection_send(x->p.a, "first", 5, 20) == 0);
  CHILD_CHECK(mp_connection_send(x->p.a, m, BIG, 0.2) == -ETIMEDOUT);
  CHILD_CHECK(write(x->note[1], "t", 1) == 1);
  /* pays the abandoned record's rest (zeros, TRL_DROP) first: killed there */
  CHILD_CHECK(mp_connection_send(x->p.a, "x", 1, 20) == 0);
  free(m);
  return 0;
}

/* A stream sender killed while it pays what an abandoned record owes: the
 * receiver never gets the abandoned message (nor zeros as one), and sees end
 * of file. */
static void test_connection_crash_stream_sender_paying_debt(void **state) {
  (void)state;
  struct debt x;
  stream_pair(&x.p);
  assert_int_equal(pipe2(x.note, O_CLOEXEC), 0);
  pid_t c =
      cu_fork_armed("connection.stream.send.debt_paid_part", 1, stream_abandon_then_send, &x, 30);
  mp_connection_close(x.p.a);
  close(x.note[1]);
  char t;
  assert_int_equal(read(x.note[0], &t, 1), 1);
  close(x.note[0]);
  recv_str(x.p.b, "first");
  char *buf = malloc(BIG);
  assert_int_equal(mp_connection_recv(x.p.b, buf, BIG, 20), -EPIPE);
  cu_assert_killed_at(c);
  free(buf);
  mp_connection_close(x.p.b);
}

static int stream_recv_one(void *arg) {
  struct pair *p = arg;
  mp_connection_close(p->a);
  char buf[64];
  return mp_connection_recv(p->b, buf, sizeof buf, 10) >= 0 ? 0 : 1;
}

/* A stream receiver killed with bytes read ahead into its handle: those die
 * with it (they were delivered to that process), and the sender is told
 * -EPIPE at once rather than left waiting or killed by SIGPIPE. */
static void test_connection_crash_stream_receiver_read_ahead(void **state) {
  (void)state;
  struct pair p;
  stream_pair(&p);
  assert_int_equal(mp_connection_send(p.a, "m1", 2, 10), 0);
  assert_int_equal(mp_connection_send(p.a, "m2", 2, 10), 0);
  pid_t c = cu_fork_armed("connection.stream.recv.read_ahead", 1, stream_recv_one, &p, 30);
  mp_connection_close(p.b);
  cu_assert_killed_at(c);
  double t0 = tu_now();
  assert_int_equal(mp_connection_send(p.a, "m3", 2, 10), -EPIPE);
  assert_true(tu_now() - t0 < 2.0);
  mp_connection_close(p.a);
}

/* ------------------------------------------------------------- Listener */

static int accept_one(void *arg) {
  mp_listener *l = arg;
  mp_connection *c;
  return mp_listener_accept(l, 20, &c) == 0 ? 0 : 1;
}

/* The listening process killed right after it accepted a client, and after
 * it sent its challenge: the client is refused (-EACCES) at once, rather
 * than waiting out its timeout. */
static void test_connection_crash_listener_mid_handshake(void **state) {
  (void)state;
  const char *points[] = {"connection.listener.accepted", "connection.listener.challenged"};
  for (int i = 0; i < 2; i++) {
    mp_listener *l;
    assert_int_equal(mp_listener_new("127.0.0.1:0", "key", 3, &l), 0);
    char addr[128];
    assert_true(mp_listener_address(l, addr, sizeof addr) > 0);
    pid_t c = cu_fork_armed(points[i], 1, accept_one, l, 30);
    assert_int_equal(mp_listener_close(l), 0); /* this process's copy */
    mp_connection *conn = NULL;
    double t0 = tu_now();
    assert_int_equal(mp_client_connect(addr, "key", 3, 20, &conn), -EACCES);
    assert_true(tu_now() - t0 < 5.0);
    assert_null(conn);
    cu_assert_killed_at(c);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_connection_crash_sender_between_records),
      cmocka_unit_test(test_connection_crash_receiver_after_peek),
      cmocka_unit_test(test_connection_crash_receivers_race_loses_nothing),
      cmocka_unit_test(test_connection_crash_receiver_mid_message),
      cmocka_unit_test(test_connection_crash_stream_sender_mid_record),
      cmocka_unit_test(test_connection_crash_stream_sender_paying_debt),
      cmocka_unit_test(test_connection_crash_stream_receiver_read_ahead),
      cmocka_unit_test(test_connection_crash_listener_mid_handshake),
  };
  if (!mp__crash_enabled())
    return 77; /* built without crash points: meson counts it as skipped */
  return TU_RUN("connection_crash", tests);
}
