/* SPDX-License-Identifier: MIT */
/* Process: start, join, exit codes, signals, names, exit behaviour, identity. */
#include "testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <mp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

/* ------------------------------------------------------------ helpers */

static int return_arg(void *arg) { return (int)(intptr_t)arg; }

/* Sleep arg milliseconds, then return 0; arg 0: sleep until killed. */
static int sleeper(void *arg) {
  signal(SIGALRM, SIG_DFL);
  alarm(60); /* never outlive a broken test for long */
  intptr_t ms = (intptr_t)arg;
  if (ms > 0) {
    tu_sleep((double)ms / 1000.0);
    return 0;
  }
  for (;;)
    pause();
}

static mp_process *start(mp_process_target target, void *arg, const mp_process_options *opts) {
  mp_process *p = NULL;
  assert_int_equal(mp_process_new(target, arg, opts, &p), 0);
  assert_non_null(p);
  assert_int_equal(mp_process_start(p), 0);
  return p;
}

/* Join, check the exit code, free. */
static void join_expect(mp_process *p, int expected) {
  int code = 12345;
  assert_int_equal(mp_process_join(p, MP_FOREVER), 0);
  assert_int_equal(mp_process_exitcode(p, &code), 1);
  assert_int_equal(code, expected);
  assert_int_equal(mp_process_is_alive(p), 0);
  assert_int_equal(mp_process_free(p), 0);
}

/* Read until EOF or `timeout` seconds. Returns the length, or -1 on timeout. */
static int read_all(int fd, char *buf, size_t cap, double timeout) {
  size_t n = 0;
  double end = tu_now() + timeout;
  for (;;) {
    double left = end - tu_now();
    if (left <= 0)
      return -1;
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    int r = poll(&pfd, 1, (int)(left * 1000) + 1);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      continue;
    ssize_t k = read(fd, buf + n, cap - n);
    if (k < 0 && errno == EINTR)
      continue;
    if (k <= 0)
      return (int)n;
    n += (size_t)k;
    if (n == cap)
      return (int)n;
  }
}

static void write_all(int fd, const void *buf, size_t len) {
  const char *p = buf;
  while (len) {
    ssize_t k = write(fd, p, len);
    if (k < 0 && errno == EINTR)
      continue;
    if (k <= 0)
      return;
    p += k;
    len -= (size_t)k;
  }
}

/* ------------------------------------------------------------ exit codes */

static void test_process_exit_codes(void **state) {
  (void)state;
  /* The kernel keeps the low 8 bits of the value given to _exit. */
  static const int given[] = {0, 1, 42, 255, 256, 300, -1};
  static const int expected[] = {0, 1, 42, 255, 0, 44, 255};
  for (size_t i = 0; i < sizeof given / sizeof given[0]; i++) {
    mp_process *p;
    int code = -7;
    assert_int_equal(mp_process_new(return_arg, (void *)(intptr_t)given[i], NULL, &p), 0);
    assert_int_equal(mp_process_pid(p), 0);
    assert_int_equal(mp_process_exitcode(p, &code), 0); /* not started: None */
    assert_int_equal(code, -7);
    assert_int_equal(mp_process_is_alive(p), 0);
    assert_int_equal(mp_process_start(p), 0);
    assert_true(mp_process_pid(p) > 0);
    join_expect(p, expected[i]);
  }
}

static int segv_target(void *arg) {
  (void)arg;
  struct rlimit rl = {0, 0};
  setrlimit(RLIMIT_CORE, &rl);
  signal(SIGSEGV, SIG_DFL); /* a sanitizer's handler would turn it into an exit */
  raise(SIGSEGV);
  return 0;
}

static void test_process_signal_exit_codes(void **state) {
  (void)state;
  mp_process *p = start(sleeper, NULL, NULL);
  int code = 0;
  assert_int_equal(mp_process_exitcode(p, &code), 0); /* running: None */
  assert_int_equal(mp_process_kill(p), 0);
  join_expect(p, -SIGKILL);

  p = start(sleeper, NULL, NULL);
  assert_int_equal(mp_process_terminate(p), 0);
  assert_int_equal(mp_process_join(p, MP_FOREVER), 0);
  /* Once reaped, signals are a no-op, not an error. */
  assert_int_equal(mp_process_terminate(p), 0);
  assert_int_equal(mp_process_kill(p), 0);
  join_expect(p, -SIGTERM);

  p = start(segv_target, NULL, NULL);
  join_expect(p, -SIGSEGV);
}

/* ------------------------------------------------------------ join */

static void test_process_join_timeouts(void **state) {
  (void)state;
  mp_process *p = start(sleeper, NULL, NULL);
  double t0 = tu_now();
  assert_int_equal(mp_process_join(p, MP_NOWAIT), -ETIMEDOUT);
  assert_true(tu_now() - t0 < 0.5);

  t0 = tu_now();
  assert_int_equal(mp_process_join(p, 0.2), -ETIMEDOUT);
  double el = tu_now() - t0;
  assert_true(el >= 0.2 - 0.01);
  assert_true(el < 2.0);
  assert_int_equal(mp_process_is_alive(p), 1);
  assert_int_equal(mp_process_join(p, NAN), -EINVAL);
  assert_int_equal(mp_process_kill(p), 0);
  join_expect(p, -SIGKILL);

  /* A join with a long timeout returns as soon as the child ends. */
  p = start(sleeper, (void *)(intptr_t)200, NULL);
  t0 = tu_now();
  assert_int_equal(mp_process_join(p, 30.0), 0);
  el = tu_now() - t0;
  assert_true(el < 5.0);
  join_expect(p, 0);
}

static int sleep_then_return(void *arg) {
  tu_sleep(0.4);
  return (int)(intptr_t)arg;
}

static void test_process_join_signals_neither_end_nor_stretch(void **state) {
  (void)state;
  mp_process *p = start(sleeper, NULL, NULL);
  tu_signals_start(0.05, 0.05);
  double t0 = tu_now();
  int r = mp_process_join(p, 0.5);
  double el = tu_now() - t0;
  int seen = tu_signals_stop();
  assert_int_equal(r, -ETIMEDOUT);
  assert_true(seen >= 2);
  assert_true(el >= 0.5 - 0.01);
  assert_true(el < 2.5);
  assert_int_equal(mp_process_kill(p), 0);
  join_expect(p, -SIGKILL);

  /* Forever and long timeouts: signals do not end them; the child's exit does. */
  double timeouts[] = {MP_FOREVER, 30.0};
  for (int i = 0; i < 2; i++) {
    t0 = tu_now();
    p = start(sleep_then_return, (void *)(intptr_t)(7 + i), NULL);
    tu_signals_start(0.05, 0.05);
    r = mp_process_join(p, timeouts[i]);
    el = tu_now() - t0;
    seen = tu_signals_stop();
    assert_int_equal(r, 0);
    assert_true(seen >= 2);
    assert_true(el >= 0.4 - 0.01);
    assert_true(el < 5.0);
    join_expect(p, 7 + i);
  }
}

/* ------------------------------------------------------------ state */

static void test_process_is_alive_transitions(void **state) {
  (void)state;
  mp_process *p;
  assert_int_equal(mp_process_new(sleep_then_return, (void *)(intptr_t)3, NULL, &p), 0);
  assert_int_equal(mp_process_is_alive(p), 0);
  assert_int_equal(mp_process_start(p), 0);
  assert_int_equal(mp_process_is_alive(p), 1);
  /* is_alive itself notices the end and reaps: the code is known, no join. */
  double end = tu_now() + 10;
  while (mp_process_is_alive(p) == 1 && tu_now() < end)
    tu_sleep(0.01);
  assert_int_equal(mp_process_is_alive(p), 0);
  int code = 0;
  assert_int_equal(mp_process_exitcode(p, &code), 1);
  assert_int_equal(code, 3);
  assert_int_equal(mp_process_join(p, MP_NOWAIT), 0); /* already ended */
  join_expect(p, 3);
}

static void test_process_sentinel_pollable(void **state) {
  (void)state;
  mp_process *p;
  assert_int_equal(mp_process_new(sleep_then_return, (void *)(intptr_t)5, NULL, &p), 0);
  assert_int_equal(mp_process_sentinel(p), -EINVAL); /* not started */
  assert_int_equal(mp_process_start(p), 0);
  int fd = mp_process_sentinel(p);
  assert_true(fd >= 0);
  assert_int_equal(mp_process_sentinel(p), fd);
  int fl = fcntl(fd, F_GETFD);
  assert_true(fl >= 0 && (fl & FD_CLOEXEC)); /* never inherited by exec'd programs */
  struct pollfd pfd = {.fd = fd, .events = POLLIN};
  assert_int_equal(poll(&pfd, 1, 0), 0); /* still running */
  double end = tu_now() + 10;
  int r = 0;
  while (r == 0 && tu_now() < end) {
    r = poll(&pfd, 1, 50);
    if (r < 0 && errno == EINTR)
      r = 0;
  }
  assert_int_equal(r, 1);
  assert_true(pfd.revents & POLLIN);
  assert_int_equal(mp_process_is_alive(p), 0);
  join_expect(p, 5);
}

static void test_process_double_start(void **state) {
  (void)state;
  mp_process *p = start(sleeper, (void *)(intptr_t)100, NULL);
  assert_int_equal(mp_process_start(p), -EALREADY);
  assert_int_equal(mp_process_join(p, MP_FOREVER), 0);
  assert_int_equal(mp_process_start(p), -EALREADY); /* a process runs once */
  join_expect(p, 0);
}

static void test_process_free(void **state) {
  (void)state;
  mp_process *p;
  assert_int_equal(mp_process_free(NULL), 0);
  assert_int_equal(mp_process_new(return_arg, NULL, NULL, &p), 0);
  assert_int_equal(mp_process_free(p), 0); /* never started */

  p = start(sleeper, NULL, NULL);
  assert_int_equal(mp_process_free(p), -EBUSY);
  assert_int_equal(mp_process_is_alive(p), 1); /* nothing was freed */
  assert_int_equal(mp_process_kill(p), 0);
  struct pollfd pfd = {.fd = mp_process_sentinel(p), .events = POLLIN};
  while (poll(&pfd, 1, 10000) < 0 && errno == EINTR) {
  }
  assert_true(pfd.revents & POLLIN);
  assert_int_equal(mp_process_free(p), 0); /* ended, never joined: reaped here */
  /* A freed handle is recognised in the common case. */
  assert_int_equal(mp_process_join(p, 0), -EINVAL);
  assert_int_equal(mp_process_free(p), -EINVAL);
}

static void test_process_errors(void **state) {
  (void)state;
  mp_process *p;
  int code;
  const char *s;
  assert_int_equal(mp_process_new(NULL, NULL, NULL, &p), -EINVAL);
  assert_int_equal(mp_process_new(return_arg, NULL, NULL, NULL), -EINVAL);
  assert_int_equal(mp_process_start(NULL), -EINVAL);
  assert_int_equal(mp_process_join(NULL, 0), -EINVAL);
  assert_int_equal(mp_process_is_alive(NULL), -EINVAL);
  assert_int_equal(mp_process_terminate(NULL), -EINVAL);
  assert_int_equal(mp_process_kill(NULL), -EINVAL);
  assert_int_equal(mp_process_exitcode(NULL, &code), -EINVAL);
  assert_int_equal(mp_process_pid(NULL), -EINVAL);
  assert_int_equal(mp_process_name(NULL, &s), -EINVAL);
  assert_int_equal(mp_process_daemon(NULL), -EINVAL);
  assert_int_equal(mp_process_sentinel(NULL), -EINVAL);
  assert_int_equal(mp_process_current(NULL), -EINVAL);
  assert_int_equal(mp_process_active_children(NULL, 1), -EINVAL);

  assert_int_equal(mp_process_new(return_arg, NULL, NULL, &p), 0);
  assert_int_equal(mp_process_exitcode(p, NULL), -EINVAL);
  assert_int_equal(mp_process_name(p, NULL), -EINVAL);
  assert_int_equal(mp_process_join(p, 0), -EINVAL); /* not started */
  assert_int_equal(mp_process_terminate(p), -EINVAL);
  assert_int_equal(mp_process_kill(p), -EINVAL);
  assert_int_equal(mp_process_free(p), 0);

  void *junk = mp_heap_calloc(1, 256); /* a heap block that is not a process */
  assert_non_null(junk);
  assert_int_equal(mp_process_start(junk), -EINVAL);
  assert_int_equal(mp_process_join(junk, 0), -EINVAL);
  assert_int_equal(mp_process_free(junk), -EINVAL);
  assert_int_equal(mp_heap_free(junk), 0);
}

/* ------------------------------------------------------------ names */

/* In a child named by default: its own children count on from its identity,
 * down `depth` more generations. */
static int names_target(void *arg) {
  intptr_t depth = (intptr_t)arg;
  mp_process *cur, *a, *b;
  const char *me, *na, *nb;
  char want[128];
  CHILD_CHECK(mp_process_current(&cur) == 0);
  CHILD_CHECK(mp_process_name(cur, &me) == 0);
  CHILD_CHECK(strncmp(me, "Process-", 8) == 0);
  CHILD_CHECK(mp_process_new(names_target, (void *)(depth - 1), NULL, &a) == 0);
  CHILD_CHECK(mp_process_new(return_arg, NULL, NULL, &b) == 0);
  CHILD_CHECK(mp_process_name(a, &na) == 0 && mp_process_name(b, &nb) == 0);
  snprintf(want, sizeof want, "%s:1", me);
  CHILD_CHECK(strcmp(na, want) == 0);
  snprintf(want, sizeof want, "%s:2", me);
  CHILD_CHECK(strcmp(nb, want) == 0);
  if (depth > 0) {
    int code = -1;
    CHILD_CHECK(mp_process_start(a) == 0);
    CHILD_CHECK(mp_process_join(a, MP_FOREVER) == 0);
    CHILD_CHECK(mp_process_exitcode(a, &code) == 1 && code == 0);
  }
  CHILD_CHECK(mp_process_free(a) == 0 && mp_process_free(b) == 0);
  return 0;
}

/* In a child with a given name: the identity, not the name, prefixes. */
static int named_child_target(void *arg) {
  (void)arg;
  mp_process *cur, *a;
  const char *me, *na;
  CHILD_CHECK(mp_process_current(&cur) == 0 && mp_process_name(cur, &me) == 0);
  CHILD_CHECK(strcmp(me, "worker") == 0);
  CHILD_CHECK(mp_process_new(return_arg, NULL, NULL, &a) == 0 && mp_process_name(a, &na) == 0);
  size_t len = strlen(na);
  CHILD_CHECK(strncmp(na, "Process-", 8) == 0 && len > 10 && strcmp(na + len - 2, ":1") == 0);
  CHILD_CHECK(mp_process_free(a) == 0);
  return 0;
}

static void test_process_names(void **state) {
  (void)state;
  mp_process *a, *b, *c;
  const char *na, *nb;
  assert_int_equal(mp_process_new(return_arg, NULL, NULL, &a), 0);
  assert_int_equal(mp_process_new(return_arg, NULL, NULL, &b), 0);
  assert_int_equal(mp_process_name(a, &na), 0);
  assert_int_equal(mp_process_name(b, &nb), 0);
  unsigned ia, ib;
  char tail;
  assert_int_equal(sscanf(na, "Process-%u%c", &ia, &tail), 1);
  assert_int_equal(sscanf(nb, "Process-%u%c", &ib, &tail), 1);
  assert_int_equal(ib, ia + 1);
  assert_int_equal(mp_process_free(a), 0);
  assert_int_equal(mp_process_free(b), 0);

  /* Given names, up to 63 bytes. */
  char name[80];
  memset(name, 'n', sizeof name);
  name[63] = 0;
  mp_process_options o = {.name = name};
  assert_int_equal(mp_process_new(return_arg, NULL, &o, &a), 0);
  assert_int_equal(mp_process_name(a, &na), 0);
  assert_string_equal(na, name);
  assert_int_equal(mp_process_free(a), 0);
  name[63] = 'n';
  name[64] = 0;
  c = NULL;
  assert_int_equal(mp_process_new(return_arg, NULL, &o, &c), -EINVAL);
  assert_null(c);

  /* Default names in children and grandchildren. */
  a = start(names_target, (void *)(intptr_t)2, NULL);
  join_expect(a, 0);
  o.name = "worker";
  a = start(named_child_target, NULL, &o);
  assert_int_equal(mp_process_name(a, &na), 0);
  assert_string_equal(na, "worker");
  join_expect(a, 0);
}

/* ------------------------------------------------------------ other processes */

struct foreign_arg {
  mp_process *sibling;   /* started by the test process */
  mp_process *unstarted; /* created by the test process */
  mp_process *parent;    /* the grandchild's parent's handle, or NULL */
  int sibling_pid;
  int depth;
};

/* Every pidfd call on a handle another process started gives -ECHILD. */
static int foreign_target(void *arg) {
  struct foreign_arg *fa = arg;
  mp_process *s = fa->sibling;
  CHILD_CHECK(mp_process_join(s, 0) == -ECHILD);
  CHILD_CHECK(mp_process_join(s, MP_FOREVER) == -ECHILD);
  CHILD_CHECK(mp_process_is_alive(s) == -ECHILD);
  CHILD_CHECK(mp_process_terminate(s) == -ECHILD);
  CHILD_CHECK(mp_process_kill(s) == -ECHILD);
  CHILD_CHECK(mp_process_sentinel(s) == -ECHILD);
  CHILD_CHECK(mp_process_free(s) == -ECHILD);
  CHILD_CHECK(mp_process_start(fa->unstarted) == -ECHILD);
  CHILD_CHECK(mp_process_free(fa->unstarted) == -ECHILD);
  /* Shared fields stay readable. */
  CHILD_CHECK(mp_process_pid(s) == fa->sibling_pid);
  const char *n;
  CHILD_CHECK(mp_process_name(s, &n) == 0 && strncmp(n, "Process-", 8) == 0);
  int code = 99;
  CHILD_CHECK(mp_process_exitcode(s, &code) == 0 && code == 99);
  if (fa->parent) {
    CHILD_CHECK(mp_process_join(fa->parent, 0) == -ECHILD);
    CHILD_CHECK(mp_process_is_alive(fa->parent) == -ECHILD);
  }
  mp_process *cur;
  CHILD_CHECK(mp_process_current(&cur) == 0);
  CHILD_CHECK(mp_process_join(cur, 0) == -EDEADLK);
  CHILD_CHECK(mp_process_is_alive(cur) == 1);
  if (fa->depth > 0) {
    struct foreign_arg g = *fa;
    g.parent = cur;
    g.depth = fa->depth - 1;
    mp_process *gc;
    CHILD_CHECK(mp_process_new(foreign_target, &g, NULL, &gc) == 0);
    CHILD_CHECK(mp_process_start(gc) == 0);
    CHILD_CHECK(mp_process_join(gc, MP_FOREVER) == 0);
    CHILD_CHECK(mp_process_exitcode(gc, &code) == 1);
    CHILD_CHECK(code == 0);
    CHILD_CHECK(mp_process_free(gc) == 0);
  }
  return 0;
}

static int read_exitcode_target(void *arg) {
  int code = 0;
  CHILD_CHECK(mp_process_exitcode(arg, &code) == 1);
  CHILD_CHECK(code == -SIGKILL);
  CHILD_CHECK(mp_process_join(arg, 0) == -ECHILD);
  return 0;
}

static void test_process_echild_from_other_processes(void **state) {
  (void)state;
  struct foreign_arg fa = {0};
  fa.sibling = start(sleeper, NULL, NULL);
  fa.sibling_pid = mp_process_pid(fa.sibling);
  assert_int_equal(mp_process_new(return_arg, NULL, NULL, &fa.unstarted), 0);
  fa.depth = 1; /* the child checks, then its child (the grandchild) too */
  mp_process *c = start(foreign_target, &fa, NULL);
  join_expect(c, 0);
  assert_int_equal(mp_process_is_alive(fa.sibling), 1); /* untouched by them */
  assert_int_equal(mp_process_kill(fa.sibling), 0);
  assert_int_equal(mp_process_join(fa.sibling, MP_FOREVER), 0);
  /* Once reaped, the exit code is readable by any process of the family. */
  c = start(read_exitcode_target, fa.sibling, NULL);
  join_expect(c, 0);
  assert_int_equal(mp_process_free(fa.sibling), 0);
  assert_int_equal(mp_process_free(fa.unstarted), 0);
}

/* ------------------------------------------------------------ daemons */

static int daemon_child_target(void *arg) {
  (void)arg;
  mp_process *cur, *h;
  CHILD_CHECK(mp_process_current(&cur) == 0 && mp_process_daemon(cur) == 1);
  CHILD_CHECK(mp_process_new(return_arg, NULL, NULL, &h) == 0);
  CHILD_CHECK(mp_process_daemon(h) == 1); /* inherited */
  CHILD_CHECK(mp_process_start(h) == -EPERM);
  CHILD_CHECK(mp_process_pid(h) == 0);
  CHILD_CHECK(mp_process_free(h) == 0);
  mp_process_options o = {.daemon = 0};
  CHILD_CHECK(mp_process_new(return_arg, NULL, &o, &h) == 0);
  CHILD_CHECK(mp_process_start(h) == -EPERM);
  CHILD_CHECK(mp_process_free(h) == 0);
  return 0;
}

static void test_process_daemon_cannot_start_children(void **state) {
  (void)state;
  mp_process *p;
  assert_int_equal(mp_process_new(return_arg, NULL, NULL, &p), 0);
  assert_int_equal(mp_process_daemon(p), 0);
  assert_int_equal(mp_process_free(p), 0);
  mp_process_options o = {.daemon = 1};
  p = start(daemon_child_target, NULL, &o);
  assert_int_equal(mp_process_daemon(p), 1);
  join_expect(p, 0);
}

struct pipes {
  int pid_w; /* the daemon writes its pid here */
  int eof_w; /* held open by the daemon only: EOF when it is gone */
  int out_w; /* event log */
  int ready_w;
};

static int report_pid_then_sleep(void *arg) {
  struct pipes *pp = arg;
  int me = (int)getpid();
  write_all(pp->pid_w, &me, sizeof me);
  return sleeper(NULL);
}

/* The intermediate parent: start a daemon, then wait to be killed. */
static int start_daemon_then_wait(void *arg) {
  mp_process_options o = {.daemon = 1};
  mp_process *d;
  CHILD_CHECK(mp_process_new(report_pid_then_sleep, arg, &o, &d) == 0);
  CHILD_CHECK(mp_process_start(d) == 0);
  for (;;)
    pause();
}

static void test_process_daemon_killed_with_parent(void **state) {
  (void)state;
  int pidp[2], eofp[2];
  assert_int_equal(pipe2(pidp, O_CLOEXEC), 0);
  assert_int_equal(pipe2(eofp, O_CLOEXEC), 0);
  struct pipes pp = {.pid_w = pidp[1], .eof_w = eofp[1]};
  pid_t mid = tu_fork(start_daemon_then_wait, &pp, 30);
  assert_true(mid > 0);
  close(pidp[1]);
  close(eofp[1]);
  int dpid = 0;
  assert_int_equal(read_all(pidp[0], (char *)&dpid, sizeof dpid, 10), (int)sizeof dpid);
  assert_true(dpid > 0);
  assert_int_equal(kill(mid, SIGKILL), 0);
  assert_int_equal(tu_wait(mid), 1000 + SIGKILL);
  /* The daemon held the only write end left: EOF means it has died. */
  char c;
  double t0 = tu_now();
  assert_int_equal(read_all(eofp[0], &c, 1, 10), 0);
  assert_true(tu_now() - t0 < 10);
  /* Its files close a moment before it becomes a zombie (until its new parent
   * reaps it) or vanishes: it must get there within seconds. */
  double end = tu_now() + 10;
  bool dead = false;
  while (!dead && tu_now() < end) {
    char path[64], st[256];
    snprintf(path, sizeof path, "/proc/%d/stat", dpid);
    FILE *f = fopen(path, "re");
    if (!f) {
      dead = true;
      break;
    }
    size_t n = fread(st, 1, sizeof st - 1, f);
    fclose(f);
    st[n] = 0;
    char *rp = strrchr(st, ')');
    dead = !rp || rp[1] == 0 || rp[2] == 'Z' || rp[2] == 'X';
    if (!dead)
      tu_sleep(0.01);
  }
  assert_true(dead);
  close(pidp[0]);
  close(eofp[0]);
}

/* ------------------------------------------------------------ parent death from threads */

/* Whether process pid is running (not gone, not a zombie). */
static bool running(int pid) {
  char path[64], st[256];
  snprintf(path, sizeof path, "/proc/%d/stat", pid);
  FILE *f = fopen(path, "re");
  if (!f)
    return false;
  size_t n = fread(st, 1, sizeof st - 1, f);
  fclose(f);
  st[n] = 0;
  char *rp = strrchr(st, ')');
  return rp && rp[1] && rp[2] != 'Z' && rp[2] != 'X';
}

/* Wait up to `timeout` seconds for pid to stop running. */
static bool ends_within(int pid, double timeout) {
  double end = tu_now() + timeout;
  while (running(pid)) {
    if (tu_now() > end)
      return false;
    tu_sleep(0.01);
  }
  return true;
}

static void *start_daemon_in_thread(void *arg) {
  mp_process_options o = {.daemon = 1};
  mp_process *d = NULL;
  if (mp_process_new(report_pid_then_sleep, arg, &o, &d) != 0 || mp_process_start(d) != 0)
    return NULL;
  /* Let the daemon tie itself to this thread before it ends (else it would
   * be tied to the thread that reaps it, which lives on). */
  tu_sleep(0.3);
  return d;
}

/* The intermediate parent: start a daemon from a thread that then ends, tell
 * the test, and live on until killed. */
static int daemon_from_thread_then_wait(void *arg) {
  struct pipes *pp = arg;
  pthread_t th;
  CHILD_CHECK(pthread_create(&th, NULL, start_daemon_in_thread, pp) == 0);
  void *d = NULL;
  CHILD_CHECK(pthread_join(th, &d) == 0);
  CHILD_CHECK(d != NULL);
  close(pp->eof_w); /* the daemon's copy is now the only one */
  write_all(pp->out_w, "j", 1);
  for (;;)
    pause();
}

/* PR_SET_PDEATHSIG alone fires when the forking *thread* ends: the daemon
 * must outlive that thread, and still die with its parent process. */
static void test_process_daemon_outlives_its_starting_thread(void **state) {
  (void)state;
  int pidp[2], eofp[2], outp[2];
  assert_int_equal(pipe2(pidp, O_CLOEXEC), 0);
  assert_int_equal(pipe2(eofp, O_CLOEXEC), 0);
  assert_int_equal(pipe2(outp, O_CLOEXEC), 0);
  struct pipes pp = {.pid_w = pidp[1], .eof_w = eofp[1], .out_w = outp[1]};
  pid_t mid = tu_fork(daemon_from_thread_then_wait, &pp, 30);
  assert_true(mid > 0);
  close(pidp[1]);
  close(eofp[1]);
  close(outp[1]);
  int dpid = 0;
  assert_int_equal(read_all(pidp[0], (char *)&dpid, sizeof dpid, 10), (int)sizeof dpid);
  assert_true(dpid > 0);
  char c;
  assert_int_equal(read_all(outp[0], &c, 1, 10), 1); /* the thread has ended */
  /* The daemon must not end now: no EOF within a second. */
  struct pollfd pfd = {.fd = eofp[0], .events = POLLIN};
  int r;
  do
    r = poll(&pfd, 1, 1000);
  while (r < 0 && errno == EINTR);
  assert_int_equal(r, 0);
  assert_true(running(dpid));
  /* The parent process dies: the daemon follows. */
  assert_int_equal(kill(mid, SIGKILL), 0);
  assert_int_equal(tu_wait(mid), 1000 + SIGKILL);
  assert_int_equal(read_all(eofp[0], &c, 1, 10), 0);
  assert_true(ends_within(dpid, 10));
  close(pidp[0]);
  close(eofp[0]);
  close(outp[0]);
}

/* A daemon started from a thread that ended, in a parent that exits normally:
 * terminated at the exit like any daemon (SIGTERM). */
static int daemon_from_thread_then_exit(void *arg) {
  struct pipes *pp = arg;
  pthread_t th;
  CHILD_CHECK(pthread_create(&th, NULL, start_daemon_in_thread, pp) == 0);
  void *d = NULL;
  CHILD_CHECK(pthread_join(th, &d) == 0);
  CHILD_CHECK(d != NULL);
  close(pp->eof_w);
  tu_sleep(0.3);
  CHILD_CHECK(mp_process_is_alive(d) == 1);
  exit(7);
}

static void test_process_daemon_from_ended_thread_ends_at_parent_exit(void **state) {
  (void)state;
  int pidp[2], eofp[2];
  assert_int_equal(pipe2(pidp, O_CLOEXEC), 0);
  assert_int_equal(pipe2(eofp, O_CLOEXEC), 0);
  struct pipes pp = {.pid_w = pidp[1], .eof_w = eofp[1]};
  pid_t mid = tu_fork(daemon_from_thread_then_exit, &pp, 30);
  assert_true(mid > 0);
  close(pidp[1]);
  close(eofp[1]);
  int dpid = 0;
  assert_int_equal(read_all(pidp[0], (char *)&dpid, sizeof dpid, 10), (int)sizeof dpid);
  assert_int_equal(tu_wait(mid), 7);
  char c;
  assert_int_equal(read_all(eofp[0], &c, 1, 10), 0);
  assert_true(ends_within(dpid, 10));
  close(pidp[0]);
  close(eofp[0]);
}

static int task_pid(const void *arg, size_t len, mp_pool_out *out, void *ctx) {
  (void)arg;
  (void)len;
  (void)ctx;
  int me = (int)getpid();
  return mp_pool_out_set(out, &me, sizeof me) < 0 ? -1 : 0;
}

/* arg non-NULL: the thread blocks every signal it can first, libmp's
 * parent-death signal included, and its workers must still be tied. */
static void *pool_in_thread(void *arg) {
  if (arg) {
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
  }
  mp_pool *p = NULL;
  if (mp_pool_new(2, NULL, &p) != 0)
    return NULL;
  return p;
}

/* Pool workers are tied to the pool's owner process: a pool made by a thread
 * that ends keeps its workers, which keep serving. */
static void test_process_pool_outlives_its_starting_thread(void **state) {
  (void)state;
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, pool_in_thread, NULL), 0);
  void *v = NULL;
  assert_int_equal(pthread_join(th, &v), 0);
  mp_pool *p = v;
  assert_non_null(p);
  int before[2] = {0, 0}, after[2] = {0, 0};
  assert_int_equal(mp_pool_worker_pids(p, before, 2), 2);
  tu_sleep(0.5);
  assert_int_equal(mp_pool_worker_pids(p, after, 2), 2);
  for (int i = 0; i < 2; i++) {
    assert_true(running(before[i]));
    assert_true(before[i] == after[0] || before[i] == after[1]);
  }
  for (int i = 0; i < 4; i++) {
    void *res = NULL;
    size_t len = 0;
    assert_int_equal(mp_pool_apply(p, task_pid, NULL, 0, NULL, &res, &len), 0);
    assert_int_equal(len, sizeof(int));
    int w;
    memcpy(&w, res, sizeof w);
    free(res);
    assert_true(w == before[0] || w == before[1]);
  }
  assert_int_equal(mp_pool_close(p), 0);
  assert_int_equal(mp_pool_join(p, 30), 0);
  assert_int_equal(mp_pool_free(p), 0);
}

/* The intermediate parent: a pool from a thread that ends; report the
 * workers' pids and wait to be killed. */
static int pool_from_thread_then_wait(void *arg) {
  struct pipes *pp = arg;
  pthread_t th;
  CHILD_CHECK(pthread_create(&th, NULL, pool_in_thread, pp) == 0);
  void *p = NULL;
  CHILD_CHECK(pthread_join(th, &p) == 0);
  CHILD_CHECK(p != NULL);
  int pids[2] = {0, 0};
  CHILD_CHECK(mp_pool_worker_pids(p, pids, 2) == 2);
  write_all(pp->pid_w, pids, sizeof pids);
  for (;;)
    pause();
}

/* ... and its workers still end when the pool's process is killed, also when
 * the thread that made the pool blocked every signal. */
static void test_process_pool_from_ended_thread_dies_with_parent(void **state) {
  (void)state;
  int pidp[2];
  assert_int_equal(pipe2(pidp, O_CLOEXEC), 0);
  struct pipes pp = {.pid_w = pidp[1]};
  pid_t mid = tu_fork(pool_from_thread_then_wait, &pp, 30);
  assert_true(mid > 0);
  close(pidp[1]);
  int pids[2] = {0, 0};
  assert_int_equal(read_all(pidp[0], (char *)pids, sizeof pids, 20), (int)sizeof pids);
  tu_sleep(0.3);
  assert_true(running(pids[0]) && running(pids[1]));
  assert_int_equal(kill(mid, SIGKILL), 0);
  assert_int_equal(tu_wait(mid), 1000 + SIGKILL);
  assert_true(ends_within(pids[0], 10));
  assert_true(ends_within(pids[1], 10));
  close(pidp[0]);
}

static void *manager_in_thread(void *arg) {
  (void)arg;
  mp_manager *m = NULL;
  if (mp_manager_new(NULL, &m) != 0)
    return NULL;
  if (mp_manager_start(m) != 0) {
    mp_manager_free(m);
    return NULL;
  }
  return m;
}

/* A manager server started from a thread that ends keeps answering. */
static void test_process_manager_outlives_its_starting_thread(void **state) {
  (void)state;
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, manager_in_thread, NULL), 0);
  void *v = NULL;
  assert_int_equal(pthread_join(th, &v), 0);
  mp_manager *m = v;
  assert_non_null(m);
  int spid = mp_manager_pid(m);
  assert_true(spid > 0);
  tu_sleep(0.5);
  assert_true(running(spid));
  mp_proxy *d = NULL;
  assert_int_equal(mp_manager_dict(m, NULL, &d), 0);
  mp_obj *k = mp_obj_str("k"), *val = mp_obj_int(42), *got = NULL;
  assert_int_equal(mp_dict_proxy_set(d, k, val), 0);
  assert_int_equal(mp_dict_proxy_get(d, k, &got), 0);
  int64_t x = 0;
  assert_int_equal(mp_obj_get_int(got, &x), 0);
  assert_int_equal(x, 42);
  mp_obj_free(k);
  mp_obj_free(val);
  mp_obj_free(got);
  assert_int_equal(mp_proxy_free(d), 0);
  assert_int_equal(mp_manager_shutdown(m), 0);
  assert_int_equal(mp_manager_free(m), 0);
}

/* The intermediate parent: a manager from a thread that ends; report the
 * server's pid and wait to be killed. */
static int manager_from_thread_then_wait(void *arg) {
  struct pipes *pp = arg;
  pthread_t th;
  CHILD_CHECK(pthread_create(&th, NULL, manager_in_thread, NULL) == 0);
  void *m = NULL;
  CHILD_CHECK(pthread_join(th, &m) == 0);
  CHILD_CHECK(m != NULL);
  int spid = mp_manager_pid(m);
  write_all(pp->pid_w, &spid, sizeof spid);
  for (;;)
    pause();
}

/* ... and still ends when its parent process is killed. */
static void test_process_manager_from_ended_thread_dies_with_parent(void **state) {
  (void)state;
  int pidp[2];
  assert_int_equal(pipe2(pidp, O_CLOEXEC), 0);
  struct pipes pp = {.pid_w = pidp[1]};
  pid_t mid = tu_fork(manager_from_thread_then_wait, &pp, 30);
  assert_true(mid > 0);
  close(pidp[1]);
  int spid = 0;
  assert_int_equal(read_all(pidp[0], (char *)&spid, sizeof spid, 20), (int)sizeof spid);
  assert_true(spid > 0);
  tu_sleep(0.5);
  assert_true(running(spid));
  assert_int_equal(kill(mid, SIGKILL), 0);
  assert_int_equal(tu_wait(mid), 1000 + SIGKILL);
  assert_true(ends_within(spid, 10));
  close(pidp[0]);
}

static int log_fd = -1;
static void log_at_exit(void) { write_all(log_fd, "X", 1); }

static void on_term(int sig) {
  (void)sig;
  write_all(log_fd, "T", 1);
  _exit(0);
}

static int daemon_logs_term(void *arg) {
  struct pipes *pp = arg;
  signal(SIGALRM, SIG_DFL);
  alarm(60);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_term;
  sigaction(SIGTERM, &sa, NULL);
  write_all(pp->ready_w, "r", 1);
  for (;;)
    pause();
  return 0;
}

static int slow_logs_done(void *arg) {
  (void)arg;
  tu_sleep(0.5);
  write_all(log_fd, "N", 1);
  return 0;
}

/* The intermediate parent: start a daemon and a slow non-daemon, then exit(). */
static int start_both_then_exit(void *arg) {
  struct pipes *pp = arg;
  log_fd = pp->out_w;
  CHILD_CHECK(atexit(log_at_exit) == 0); /* registered first: runs after libmp's */
  int ready[2];
  CHILD_CHECK(pipe2(ready, O_CLOEXEC) == 0);
  pp->ready_w = ready[1];
  mp_process_options o = {.daemon = 1};
  mp_process *d, *n;
  CHILD_CHECK(mp_process_new(daemon_logs_term, pp, &o, &d) == 0);
  CHILD_CHECK(mp_process_start(d) == 0);
  CHILD_CHECK(mp_process_new(slow_logs_done, pp, NULL, &n) == 0);
  CHILD_CHECK(mp_process_start(n) == 0);
  char c;
  CHILD_CHECK(read(ready[0], &c, 1) == 1); /* the daemon's handler is in place */
  exit(0);
}

static void test_process_children_handled_at_normal_exit(void **state) {
  (void)state;
  int out[2];
  assert_int_equal(pipe2(out, O_CLOEXEC), 0);
  struct pipes pp = {.out_w = out[1]};
  double t0 = tu_now();
  pid_t mid = tu_fork(start_both_then_exit, &pp, 30);
  assert_true(mid > 0);
  close(out[1]);
  assert_int_equal(tu_wait(mid), 0);
  double el = tu_now() - t0;
  /* When the intermediate has exited, its children have too (it joined
   * them): the log is complete and its write ends are all closed. */
  char buf[16];
  int n = read_all(out[0], buf, sizeof buf, 5);
  close(out[0]);
  assert_int_equal(n, 3);
  buf[n] = 0;
  assert_true(strcmp(buf, "TNX") == 0 || strcmp(buf, "NTX") == 0);
  assert_true(el >= 0.5 - 0.01); /* it waited for the non-daemon */
  assert_true(el < 10);
}

static int sleep_then_log(void *arg) {
  tu_sleep(0.4);
  write_all(*(int *)arg, "N", 1);
  return 0;
}

/* A libmp child whose target returns: its children are handled as at a
 * normal exit before it ends. */
static int start_two_then_return(void *arg) {
  mp_process_options o = {.daemon = 1};
  mp_process *d, *n;
  CHILD_CHECK(mp_process_new(sleeper, NULL, &o, &d) == 0);
  CHILD_CHECK(mp_process_start(d) == 0);
  CHILD_CHECK(mp_process_new(sleep_then_log, arg, NULL, &n) == 0);
  CHILD_CHECK(mp_process_start(n) == 0);
  return 0;
}

static void test_process_child_handles_its_children_at_return(void **state) {
  (void)state;
  int out[2];
  assert_int_equal(pipe2(out, O_CLOEXEC), 0);
  double t0 = tu_now();
  mp_process *c = start(start_two_then_return, &out[1], NULL);
  close(out[1]);
  join_expect(c, 0);
  assert_true(tu_now() - t0 >= 0.4 - 0.01); /* it waited for the non-daemon */
  /* Both grandchildren held the write end: EOF at once means both are gone. */
  char buf[8];
  t0 = tu_now();
  assert_int_equal(read_all(out[0], buf, sizeof buf, 10), 1);
  assert_true(tu_now() - t0 < 1.5); /* the daemon was not left to its alarm */
  assert_int_equal(buf[0], 'N');
  close(out[0]);
}

static int daemon_ignores_term(void *arg) {
  struct pipes *pp = arg;
  signal(SIGTERM, SIG_IGN);
  write_all(pp->ready_w, "r", 1);
  return sleeper(NULL);
}

/* The intermediate parent: a daemon that ignores SIGTERM, then exit(). */
static int start_stubborn_then_exit(void *arg) {
  struct pipes *pp = arg;
  int ready[2];
  CHILD_CHECK(pipe2(ready, O_CLOEXEC) == 0);
  pp->ready_w = ready[1];
  mp_process_options o = {.daemon = 1};
  mp_process *d;
  CHILD_CHECK(mp_process_new(daemon_ignores_term, pp, &o, &d) == 0);
  CHILD_CHECK(mp_process_start(d) == 0);
  char c;
  CHILD_CHECK(read(ready[0], &c, 1) == 1);
  exit(0);
}

static void test_process_stubborn_daemon_killed_at_exit(void **state) {
  (void)state;
  int eofp[2];
  assert_int_equal(pipe2(eofp, O_CLOEXEC), 0);
  struct pipes pp = {.eof_w = eofp[1]};
  double t0 = tu_now();
  pid_t mid = tu_fork(start_stubborn_then_exit, &pp, 30);
  assert_true(mid > 0);
  close(eofp[1]);
  assert_int_equal(tu_wait(mid), 0);
  double el = tu_now() - t0;
  assert_true(el >= 2.0 - 0.01); /* SIGTERM's grace, then SIGKILL */
  assert_true(el < 10);
  char c;
  t0 = tu_now();
  assert_int_equal(read_all(eofp[0], &c, 1, 10), 0); /* the daemon is gone */
  assert_true(tu_now() - t0 < 1.5);
  close(eofp[0]);
}

/* With SIGCHLD ignored the kernel reaps children itself: joins still end,
 * and the exit code is 0, as documented. */
static int join_with_sigchld_ignored(void *arg) {
  (void)arg;
  signal(SIGCHLD, SIG_IGN);
  double timeouts[] = {MP_FOREVER, 10.0};
  for (int i = 0; i < 2; i++) {
    mp_process *p;
    int code = -1;
    CHILD_CHECK(mp_process_new(sleep_then_return, (void *)(intptr_t)5, NULL, &p) == 0);
    CHILD_CHECK(mp_process_start(p) == 0);
    CHILD_CHECK(mp_process_join(p, timeouts[i]) == 0);
    CHILD_CHECK(mp_process_exitcode(p, &code) == 1 && code == 0);
    CHILD_CHECK(mp_process_is_alive(p) == 0);
    CHILD_CHECK(mp_process_free(p) == 0);
  }
  return 0;
}

static void test_process_status_taken_elsewhere(void **state) {
  (void)state;
  pid_t mid = tu_fork(join_with_sigchld_ignored, NULL, 30);
  assert_true(mid > 0);
  assert_child_ok(mid);
}

/* ------------------------------------------------------------ exit, stdio */

static int atexit_fd = -1;
static void report_pid_at_exit(void) {
  int me = (int)getpid();
  write_all(atexit_fd, &me, sizeof me);
}

static int register_then_start(void *arg) {
  atexit_fd = *(int *)arg;
  CHILD_CHECK(atexit(report_pid_at_exit) == 0);
  mp_process *p;
  CHILD_CHECK(mp_process_new(return_arg, (void *)(intptr_t)4, NULL, &p) == 0);
  CHILD_CHECK(mp_process_start(p) == 0);
  int code = 0;
  CHILD_CHECK(mp_process_join(p, MP_FOREVER) == 0);
  CHILD_CHECK(mp_process_exitcode(p, &code) == 1 && code == 4);
  CHILD_CHECK(mp_process_free(p) == 0);
  fflush(NULL);
  exit(0);
}

static int exit_at_once(void *arg) {
  (void)arg;
  exit(3);
}

static void test_process_atexit_not_run_in_child(void **state) {
  (void)state;
  int pp[2];
  assert_int_equal(pipe2(pp, O_CLOEXEC), 0);
  pid_t mid = tu_fork(register_then_start, &pp[1], 30);
  assert_true(mid > 0);
  close(pp[1]);
  assert_int_equal(tu_wait(mid), 0);
  int pids[4];
  int n = read_all(pp[0], (char *)pids, sizeof pids, 5);
  close(pp[0]);
  assert_int_equal(n, (int)sizeof(int)); /* exactly once, in the parent */
  assert_int_equal(pids[0], mid);

  /* libmp's exit handler, inherited by children, does nothing in them: a
   * child calling exit() neither waits for nor signals its parent's children. */
  mp_process_options o = {.daemon = 1};
  mp_process *s = start(sleeper, NULL, &o);
  mp_process *c = start(exit_at_once, NULL, NULL);
  double t0 = tu_now();
  join_expect(c, 3);
  pid_t plain = tu_fork(exit_at_once, NULL, 30);
  assert_true(plain > 0);
  assert_int_equal(tu_wait(plain), 3);
  assert_true(tu_now() - t0 < 5);
  assert_int_equal(mp_process_is_alive(s), 1);
  assert_int_equal(mp_process_terminate(s), 0);
  join_expect(s, -SIGTERM);
}

static int print_child(void *arg) {
  (void)arg;
  printf("child"); /* no newline: flushed at the child's end */
  return 0;
}

static int print_then_start(void *arg) {
  int w = *(int *)arg;
  CHILD_CHECK(fflush(stdout) == 0);
  CHILD_CHECK(dup2(w, STDOUT_FILENO) == STDOUT_FILENO);
  CHILD_CHECK(setvbuf(stdout, NULL, _IOFBF, 4096) == 0);
  printf("hello"); /* buffered when the child forks */
  mp_process *p;
  CHILD_CHECK(mp_process_new(print_child, NULL, NULL, &p) == 0);
  CHILD_CHECK(mp_process_start(p) == 0);
  CHILD_CHECK(mp_process_join(p, MP_FOREVER) == 0);
  CHILD_CHECK(mp_process_free(p) == 0);
  printf("|end");
  return 0; /* tu_fork flushes, then _exits */
}

static void test_process_stdio_not_duplicated(void **state) {
  (void)state;
  int pp[2];
  assert_int_equal(pipe2(pp, O_CLOEXEC), 0);
  pid_t mid = tu_fork(print_then_start, &pp[1], 30);
  assert_true(mid > 0);
  close(pp[1]);
  assert_int_equal(tu_wait(mid), 0);
  char buf[64];
  int n = read_all(pp[0], buf, sizeof buf - 1, 5);
  close(pp[0]);
  assert_true(n >= 0);
  buf[n] = 0;
  assert_string_equal(buf, "hellochild|end");
}

/* ------------------------------------------------------------ identity */

struct ident_arg {
  mp_process *self;
  int parent;
};

static int ident_target(void *arg) {
  struct ident_arg *ia = arg;
  mp_process *cur;
  const char *n, *m;
  CHILD_CHECK(mp_process_current(&cur) == 0);
  CHILD_CHECK(cur == ia->self);
  CHILD_CHECK(mp_process_pid(cur) == (int)getpid());
  CHILD_CHECK(mp_process_parent_pid() == ia->parent);
  CHILD_CHECK(mp_process_name(cur, &n) == 0 && mp_process_name(ia->self, &m) == 0 && n == m);
  CHILD_CHECK(strcmp(n, "ident") == 0);
  CHILD_CHECK(mp_process_daemon(cur) == 0);
  CHILD_CHECK(mp_process_join(cur, 1.0) == -EDEADLK);
  CHILD_CHECK(mp_process_free(cur) == -ECHILD);
  int code;
  CHILD_CHECK(mp_process_exitcode(cur, &code) == 0);
  return 0;
}

static int plain_fork_ident(void *arg) {
  (void)arg;
  mp_process *cur;
  const char *n;
  CHILD_CHECK(mp_process_current(&cur) == 0 && mp_process_name(cur, &n) == 0);
  CHILD_CHECK(strcmp(n, "MainProcess") == 0);
  CHILD_CHECK(mp_process_pid(cur) == (int)getpid());
  CHILD_CHECK(mp_process_parent_pid() == 0);
  CHILD_CHECK(mp_process_active_children(NULL, 0) == 0); /* the parent's are not ours */
  return 0;
}

static void test_process_current_and_parent_pid(void **state) {
  (void)state;
  mp_process *cur;
  const char *n;
  int code = 5;
  assert_int_equal(mp_process_current(&cur), 0);
  assert_int_equal(mp_process_name(cur, &n), 0);
  assert_string_equal(n, "MainProcess");
  assert_int_equal(mp_process_pid(cur), (int)getpid());
  assert_int_equal(mp_process_parent_pid(), 0);
  assert_int_equal(mp_process_daemon(cur), 0);
  assert_int_equal(mp_process_is_alive(cur), 1);
  assert_int_equal(mp_process_join(cur, 0), -EDEADLK);
  assert_int_equal(mp_process_exitcode(cur, &code), 0);
  assert_int_equal(mp_process_free(cur), -ECHILD); /* not to be freed */

  struct ident_arg ia = {.parent = (int)getpid()};
  mp_process_options o = {.name = "ident"};
  assert_int_equal(mp_process_new(ident_target, &ia, &o, &ia.self), 0);
  assert_int_equal(mp_process_start(ia.self), 0);
  join_expect(ia.self, 0);

  /* A plain fork of the main process is a main process too. */
  mp_process *s = start(sleeper, NULL, NULL);
  pid_t pid = tu_fork(plain_fork_ident, NULL, 30);
  assert_true(pid > 0);
  assert_child_ok(pid);
  assert_int_equal(mp_process_kill(s), 0);
  join_expect(s, -SIGKILL);
}

static void test_process_active_children(void **state) {
  (void)state;
  assert_int_equal(mp_process_active_children(NULL, 0), 0);
  mp_process *s[3];
  for (int i = 0; i < 3; i++)
    s[i] = start(sleeper, NULL, NULL);
  mp_process *quick = start(sleep_then_return, (void *)(intptr_t)9, NULL);
  mp_process *unstarted;
  assert_int_equal(mp_process_new(return_arg, NULL, NULL, &unstarted), 0);
  /* The quick one ends by itself; active_children notices and reaps it. */
  double end = tu_now() + 10;
  int n;
  while ((n = mp_process_active_children(NULL, 0)) == 4 && tu_now() < end)
    tu_sleep(0.02);
  assert_int_equal(n, 3);
  int code = 0;
  assert_int_equal(mp_process_exitcode(quick, &code), 1);
  assert_int_equal(code, 9);

  mp_process *out[2] = {NULL, NULL};
  assert_int_equal(mp_process_active_children(out, 2), 3); /* the count, beyond cap */
  for (int j = 0; j < 2; j++)
    assert_true(out[j] == s[0] || out[j] == s[1] || out[j] == s[2]);
  assert_true(out[0] != out[1]);

  assert_int_equal(mp_process_kill(s[1]), 0);
  assert_int_equal(mp_process_join(s[1], MP_FOREVER), 0);
  mp_process *all[4] = {NULL, NULL, NULL, NULL};
  assert_int_equal(mp_process_active_children(all, 4), 2);
  assert_true((all[0] == s[0] && all[1] == s[2]) || (all[0] == s[2] && all[1] == s[0]));
  assert_null(all[2]);
  for (int i = 0; i < 3; i++) {
    assert_int_equal(mp_process_kill(s[i]), 0);
    join_expect(s[i], -SIGKILL);
  }
  assert_int_equal(mp_process_active_children(NULL, 0), 0);
  join_expect(quick, 9);
  assert_int_equal(mp_process_free(unstarted), 0);
}

/* ------------------------------------------------------------ cpus, heap */

static int count_affinity(void) {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) != 0)
    return -1;
  return CPU_COUNT(&set);
}

static int one_cpu_target(void *arg) {
  (void)arg;
  cpu_set_t set;
  CHILD_CHECK(sched_getaffinity(0, sizeof set, &set) == 0);
  int first = -1;
  for (int i = 0; i < CPU_SETSIZE && first < 0; i++)
    if (CPU_ISSET(i, &set))
      first = i;
  CHILD_CHECK(first >= 0);
  CPU_ZERO(&set);
  CPU_SET(first, &set);
  CHILD_CHECK(sched_setaffinity(0, sizeof set, &set) == 0);
  CHILD_CHECK(mp_cpu_count() == 1);
  return 0;
}

static void test_process_cpu_count(void **state) {
  (void)state;
  int n = count_affinity();
  assert_true(n >= 1);
  assert_int_equal(mp_cpu_count(), n);
  mp_process *p = start(one_cpu_target, NULL, NULL);
  join_expect(p, 0);
}

#define BLOCK_WORDS 16384

static int alloc_and_fill(void *arg) {
  uint32_t **slot = arg;
  uint32_t *b = mp_heap_alloc(BLOCK_WORDS * sizeof *b);
  CHILD_CHECK(b != NULL);
  for (uint32_t i = 0; i < BLOCK_WORDS; i++)
    b[i] = i * 2654435761u;
  *slot = b;
  return 0;
}

static int read_and_free(void *arg) {
  uint32_t **slot = arg;
  uint32_t *b = *slot;
  CHILD_CHECK(b != NULL && mp_heap_contains(b));
  for (uint32_t i = 0; i < BLOCK_WORDS; i++)
    CHILD_CHECK(b[i] == i * 2654435761u);
  CHILD_CHECK(mp_heap_free(b) == 0);
  return 0;
}

static void test_process_heap_block_from_child_read_by_sibling(void **state) {
  (void)state;
  uint32_t **slot = mp_heap_calloc(1, sizeof *slot);
  assert_non_null(slot);
  mp_process *a = start(alloc_and_fill, slot, NULL);
  join_expect(a, 0);
  assert_non_null(*slot); /* allocated after the fork, by the child */
  mp_process *b = start(read_and_free, slot, NULL);
  join_expect(b, 0);
  assert_int_equal(mp_heap_free(slot), 0);
}

/* ------------------------------------------------------------ threads */

#define THREADS 4
#define PER_THREAD 10

static void *start_many(void *arg) {
  intptr_t t = (intptr_t)arg;
  for (int i = 0; i < PER_THREAD; i++) {
    int want = (int)(t * PER_THREAD + i);
    mp_process *p;
    if (mp_process_new(return_arg, (void *)(intptr_t)want, NULL, &p) != 0 ||
        mp_process_start(p) != 0)
      return (void *)1;
    int code = -1;
    if (mp_process_join(p, MP_FOREVER) != 0 || mp_process_exitcode(p, &code) != 1 || code != want ||
        mp_process_free(p) != 0)
      return (void *)2;
  }
  return NULL;
}

static void test_process_threads_start_concurrently(void **state) {
  (void)state;
  pthread_t th[THREADS];
  for (intptr_t t = 0; t < THREADS; t++)
    assert_int_equal(pthread_create(&th[t], NULL, start_many, (void *)t), 0);
  for (int t = 0; t < THREADS; t++) {
    void *r;
    assert_int_equal(pthread_join(th[t], &r), 0);
    assert_null(r);
  }
  assert_int_equal(mp_process_active_children(NULL, 0), 0);
}

/* ------------------------------------------------------------ Python 3.9+ twins */

static int sleep_until_signal(void *arg) {
  (void)arg;
  sleep(30);
  return 0;
}

/* interrupt() is SIGINT: the default action ends the child with -SIGINT. */
static void test_process_interrupt_sends_sigint(void **state) {
  (void)state;
  mp_process *p;
  assert_int_equal(mp_process_new(sleep_until_signal, NULL, NULL, &p), 0);
  assert_int_equal(mp_process_interrupt(p), -EINVAL); /* not started */
  assert_int_equal(mp_process_start(p), 0);
  assert_int_equal(mp_process_interrupt(p), 0);
  assert_int_equal(mp_process_join(p, 20), 0);
  int code = 0;
  assert_int_equal(mp_process_exitcode(p, &code), 1);
  assert_int_equal(code, -SIGINT);
  assert_int_equal(mp_process_interrupt(p), 0); /* ended: nothing */
  assert_int_equal(mp_process_free(p), 0);
  assert_int_equal(mp_process_interrupt(NULL), -EINVAL);
}

/* The parent as a child sees it: name, is_alive, join; and a join that
 * returns once the parent has ended (orphan detection). */
struct orphan {
  int pid_w;   /* the grandchild reports: 1 parent seen alive, then the verdict */
};

static int grandchild_watch(void *arg) {
  struct orphan *o = arg;
  const char *name = NULL;
  int ok = mp_process_parent_name(&name) == 0 && strcmp(name, "middle") == 0;
  ok = ok && mp_process_parent_is_alive() == 1;
  ok = ok && mp_process_parent_join(0.05) == -ETIMEDOUT;
  int fd = mp_process_parent_sentinel();
  ok = ok && fd >= 0;
  char c = ok ? 'A' : 'x';
  write_all(o->pid_w, &c, 1);
  /* Now wait for the parent's end (it is killed by the test). */
  int r = mp_process_parent_join(20);
  c = (r == 0 && mp_process_parent_is_alive() == 0) ? 'E' : 'y';
  write_all(o->pid_w, &c, 1);
  return 0;
}

static int middle_starts_grandchild(void *arg) {
  mp_process *g;
  if (mp_process_new(grandchild_watch, arg, NULL, &g) != 0 || mp_process_start(g) != 0)
    return 1;
  for (;;)
    pause(); /* killed by the test */
  return 0;
}

static void test_process_parent_handle_and_orphan_join(void **state) {
  (void)state;
  /* In a process libmp did not start there is no parent handle. */
  const char *name;
  assert_int_equal(mp_process_parent_name(&name), -EINVAL);
  assert_int_equal(mp_process_parent_join(0), -EINVAL);
  assert_int_equal(mp_process_parent_is_alive(), -EINVAL);
  assert_int_equal(mp_process_parent_sentinel(), -EINVAL);
  int fds[2];
  assert_int_equal(pipe2(fds, O_CLOEXEC), 0);
  struct orphan o = {.pid_w = fds[1]};
  mp_process *m;
  assert_int_equal(mp_process_new(middle_starts_grandchild, &o,
                                  &(mp_process_options){.name = "middle"}, &m),
                   0);
  assert_int_equal(mp_process_start(m), 0);
  close(fds[1]);
  char c = 0;
  assert_int_equal(read_all(fds[0], &c, 1, 20), 1);
  assert_int_equal(c, 'A');
  assert_int_equal(mp_process_kill(m), 0);
  assert_int_equal(mp_process_join(m, 20), 0);
  assert_int_equal(read_all(fds[0], &c, 1, 20), 1);
  assert_int_equal(c, 'E'); /* the orphan learned of its parent's end */
  close(fds[0]);
  assert_int_equal(mp_process_free(m), 0);
}

/* Exit handlers a child registers run when its target returns, last first;
 * the parent's never run in the child; a killed child runs none. */
static int out_fd;

static void note(void *arg) {
  write_all(out_fd, (const char *)arg, 1);
}

static int registers_two(void *arg) {
  (void)arg;
  if (mp_process_atexit(note, "1") || mp_process_atexit(note, "2"))
    return 9;
  if (mp_process_atexit(NULL, NULL) != -EINVAL)
    return 8;
  return 0;
}

static int registers_then_killed(void *arg) {
  (void)arg;
  mp_process_atexit(note, "k");
  raise(SIGKILL);
  return 0;
}

static void test_process_child_exit_handlers(void **state) {
  (void)state;
  int fds[2];
  assert_int_equal(pipe2(fds, O_CLOEXEC), 0);
  out_fd = fds[1];
  mp_process *a, *b;
  assert_int_equal(mp_process_new(registers_two, NULL, NULL, &a), 0);
  assert_int_equal(mp_process_start(a), 0);
  assert_int_equal(mp_process_join(a, 20), 0);
  int code = -1;
  assert_int_equal(mp_process_exitcode(a, &code), 1);
  assert_int_equal(code, 0);
  assert_int_equal(mp_process_new(registers_then_killed, NULL, NULL, &b), 0);
  assert_int_equal(mp_process_start(b), 0);
  assert_int_equal(mp_process_join(b, 20), 0);
  close(fds[1]);
  char buf[8] = {0};
  assert_int_equal(read_all(fds[0], buf, sizeof buf - 1, 5), 2);
  assert_string_equal(buf, "21"); /* reverse order; nothing from the killed one */
  close(fds[0]);
  assert_int_equal(mp_process_free(a), 0);
  assert_int_equal(mp_process_free(b), 0);
}

/* In a process libmp did not start, the handlers run at its normal exit();
 * a child it starts afterwards does not inherit them. */
static char *self_path;

static void test_process_main_exit_handlers(void **state) {
  (void)state;
  int fds[2];
  assert_int_equal(pipe(fds), 0);
  pid_t c = fork();
  assert_true(c >= 0);
  if (c == 0) {
    dup2(fds[1], 1);
    execl("/proc/self/exe", self_path, "--atexit-main", (char *)NULL);
    _exit(127);
  }
  close(fds[1]);
  char buf[16] = {0};
  int n = read_all(fds[0], buf, sizeof buf - 1, 20);
  close(fds[0]);
  assert_int_equal(tu_wait(c), 0);
  assert_int_equal(n, 3);
  assert_string_equal(buf, "cBA"); /* the child: none of the parent's; then B, A */
}

static int child_says_c(void *arg) {
  (void)arg;
  write_all(1, "c", 1);
  return 0;
}

static int mode_atexit_main(void) {
  out_fd = 1;
  if (mp_process_atexit(note, "A") || mp_process_atexit(note, "B"))
    return 3;
  mp_process *p;
  if (mp_process_new(child_says_c, NULL, NULL, &p) || mp_process_start(p) ||
      mp_process_join(p, 20) || mp_process_free(p))
    return 4;
  return 0; /* exit(): B, then A */
}

/* ------------------------------------------------ the authentication key */

/* A fresh program (exec'd, so no key is made yet) forks with plain fork()
 * before asking for its key: the child must still have the parent's. */
static int mode_authkey_fork(void) {
  int fds[2];
  if (pipe(fds) < 0)
    return 2;
  pid_t c = fork();
  if (c == 0) {
    const void *k;
    size_t n;
    if (mp_process_authkey(&k, &n) < 0 || n != 32)
      _exit(3);
    _exit(write(fds[1], k, n) == 32 ? 0 : 4);
  }
  const void *k;
  size_t n;
  if (mp_process_authkey(&k, &n) < 0 || n != 32)
    return 5;
  char theirs[32];
  if (read(fds[0], theirs, sizeof theirs) != 32)
    return 6;
  if (tu_wait(c) != 0)
    return 7;
  return memcmp(k, theirs, 32) == 0 ? 0 : 8;
}

static void test_process_authkey_inherited_by_plain_fork(void **state) {
  (void)state;
  pid_t c = fork();
  if (c == 0) {
    execl("/proc/self/exe", self_path, "--authkey-fork", (char *)NULL);
    _exit(127);
  }
  assert_int_equal(tu_wait(c), 0);
}

/* A child reports whether its key is the bytes in arg ("len:bytes"). */
static int key_is(void *arg) {
  const char *want = arg;
  size_t wl = strlen(want);
  const void *k;
  size_t n;
  CHILD_CHECK(mp_process_authkey(&k, &n) == 0);
  CHILD_CHECK(n == wl && (n == 0 || memcmp(k, want, n) == 0));
  return 0;
}

static int key_is_parents(void *arg) {
  const unsigned char *want = arg;
  const void *k;
  size_t n;
  CHILD_CHECK(mp_process_authkey(&k, &n) == 0);
  CHILD_CHECK(n == 32 && memcmp(k, want, 32) == 0);
  return 0;
}

static void test_process_authkey(void **state) {
  (void)state;
  const void *k, *k2;
  size_t n = 0, n2 = 0;
  assert_int_equal(mp_process_authkey(NULL, &n), -EINVAL);
  assert_int_equal(mp_process_authkey(&k, NULL), -EINVAL);
  assert_int_equal(mp_process_authkey(&k, &n), 0);
  assert_int_equal(n, 32); /* Python's os.urandom(32) */
  assert_int_equal(mp_process_authkey(&k2, &n2), 0);
  assert_int_equal(n2, 32);
  unsigned char mine[32], zero[32] = {0};
  memcpy(mine, k, 32);
  assert_memory_equal(k2, mine, 32); /* made once */
  assert_memory_not_equal(mine, zero, 32);
  /* a child started now has it */
  join_expect(start(key_is_parents, mine, NULL), 0);

  /* set: children started afterwards inherit the new key */
  assert_int_equal(mp_process_set_authkey(NULL, 3), -EINVAL);
  static const char big[MP_PROCESS_AUTHKEY_MAX + 1];
  assert_int_equal(mp_process_set_authkey(big, sizeof big), -EINVAL);
  assert_int_equal(mp_process_authkey(&k, &n), 0);
  assert_int_equal(n, 32);
  assert_memory_equal(k, mine, 32); /* refused sets change nothing */
  assert_int_equal(mp_process_set_authkey("abc", 3), 0);
  assert_int_equal(mp_process_authkey(&k, &n), 0);
  assert_int_equal(n, 3);
  assert_memory_equal(k, "abc", 3);
  join_expect(start(key_is, "abc", NULL), 0);
  /* an empty key is a key */
  assert_int_equal(mp_process_set_authkey(NULL, 0), 0);
  assert_int_equal(mp_process_authkey(&k, &n), 0);
  assert_int_equal(n, 0);
  join_expect(start(key_is, "", NULL), 0);
  assert_int_equal(mp_process_set_authkey(mine, 32), 0);
}

/* Python's BaseManager(authkey=None) uses current_process().authkey: a
 * manager made with no key proves this process's key, and a client made
 * with no key in a child (which inherited it) gets in, one with another key
 * does not. */
static int connect_default_key(void *arg) {
  mp_manager_options o = {.address = arg};
  mp_manager *c;
  CHILD_CHECK(mp_manager_new(&o, &c) == 0);
  CHILD_CHECK(mp_manager_connect(c) == 0);
  mp_manager_free(c);
  return 0;
}

static void test_process_authkey_is_the_managers_default(void **state) {
  (void)state;
  assert_int_equal(mp_process_set_authkey("family key", 10), 0);
  mp_manager *m;
  assert_int_equal(mp_manager_new(NULL, &m), 0);
  /* a later change does not reach a manager already made (Python copies) */
  assert_int_equal(mp_process_set_authkey("changed", 7), 0);
  assert_int_equal(mp_manager_start(m), 0);
  char addr[256];
  assert_true(mp_manager_address(m, addr, sizeof addr) > 0);
  mp_manager *c;
  mp_manager_options right = {.address = addr, .authkey = "family key", .authkey_len = 10};
  assert_int_equal(mp_manager_new(&right, &c), 0);
  assert_int_equal(mp_manager_connect(c), 0);
  mp_manager_free(c);
  /* the process's key now is "changed": refused */
  mp_manager_options dflt = {.address = addr};
  assert_int_equal(mp_manager_new(&dflt, &c), 0);
  assert_int_equal(mp_manager_connect(c), -EACCES);
  mp_manager_free(c);
  /* a child started with "family key" connects with no key given */
  assert_int_equal(mp_process_set_authkey("family key", 10), 0);
  join_expect(start(connect_default_key, addr, NULL), 0);
  mp_manager_options none = {.address = addr, .no_auth = 1};
  assert_int_equal(mp_manager_new(&none, &c), 0);
  assert_int_equal(mp_manager_connect(c), -EACCES);
  mp_manager_free(c);
  mp_manager_free(m);
}

int main(int argc, char **argv) {
  self_path = argv[0];
  if (argc > 1 && strcmp(argv[1], "--atexit-main") == 0)
    return mode_atexit_main();
  if (argc > 1 && strcmp(argv[1], "--authkey-fork") == 0)
    return mode_authkey_fork();
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_process_interrupt_sends_sigint),
      cmocka_unit_test(test_process_parent_handle_and_orphan_join),
      cmocka_unit_test(test_process_child_exit_handlers),
      cmocka_unit_test(test_process_main_exit_handlers),
      cmocka_unit_test(test_process_exit_codes),
      cmocka_unit_test(test_process_authkey_inherited_by_plain_fork),
      cmocka_unit_test(test_process_authkey),
      cmocka_unit_test(test_process_authkey_is_the_managers_default),
      cmocka_unit_test(test_process_signal_exit_codes),
      cmocka_unit_test(test_process_join_timeouts),
      cmocka_unit_test(test_process_join_signals_neither_end_nor_stretch),
      cmocka_unit_test(test_process_is_alive_transitions),
      cmocka_unit_test(test_process_sentinel_pollable),
      cmocka_unit_test(test_process_double_start),
      cmocka_unit_test(test_process_free),
      cmocka_unit_test(test_process_errors),
      cmocka_unit_test(test_process_names),
      cmocka_unit_test(test_process_echild_from_other_processes),
      cmocka_unit_test(test_process_daemon_cannot_start_children),
      cmocka_unit_test(test_process_daemon_killed_with_parent),
      cmocka_unit_test(test_process_daemon_outlives_its_starting_thread),
      cmocka_unit_test(test_process_daemon_from_ended_thread_ends_at_parent_exit),
      cmocka_unit_test(test_process_pool_outlives_its_starting_thread),
      cmocka_unit_test(test_process_pool_from_ended_thread_dies_with_parent),
      cmocka_unit_test(test_process_manager_outlives_its_starting_thread),
      cmocka_unit_test(test_process_manager_from_ended_thread_dies_with_parent),
      cmocka_unit_test(test_process_children_handled_at_normal_exit),
      cmocka_unit_test(test_process_child_handles_its_children_at_return),
      cmocka_unit_test(test_process_stubborn_daemon_killed_at_exit),
      cmocka_unit_test(test_process_status_taken_elsewhere),
      cmocka_unit_test(test_process_atexit_not_run_in_child),
      cmocka_unit_test(test_process_stdio_not_duplicated),
      cmocka_unit_test(test_process_current_and_parent_pid),
      cmocka_unit_test(test_process_active_children),
      cmocka_unit_test(test_process_cpu_count),
      cmocka_unit_test(test_process_heap_block_from_child_read_by_sibling),
      cmocka_unit_test(test_process_threads_start_concurrently),
  };
  return TU_RUN("process", tests);
}
