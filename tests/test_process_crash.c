/* SPDX-License-Identifier: MIT */
/*
 * Process crash points (white-box): a creator killed at each step of
 * mp_process_start(), its exit handler and mp_process_free(), and a child
 * killed or stopped at each of its first steps. What the survivors must see:
 * a daemon child ends with its creator (also when the creator died before
 * the child asked to be told), a non-daemon child finishes as an orphan, the
 * heap stays consistent, and a creator that lives reaps a killed child with
 * exit code -SIGKILL.
 */
#include "crashutil.h"

#include <errno.h>
#include <fcntl.h>
#include <mp.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

/* ------------------------------------------------------------ helpers */

struct pipes {
  int ptr_w;  /* the creator writes the handle's address here */
  int pid_w;  /* the child writes its pid here */
  int eof_w;  /* held by the child: EOF once it is gone (and the creator too) */
  int done_w; /* the child writes "n" when its target has finished */
};

struct fds {
  int ptr[2], pid[2], eof[2], done[2];
  struct pipes pp;
};

static void fds_open(struct fds *f) {
  assert_int_equal(pipe2(f->ptr, O_CLOEXEC), 0);
  assert_int_equal(pipe2(f->pid, O_CLOEXEC), 0);
  assert_int_equal(pipe2(f->eof, O_CLOEXEC), 0);
  assert_int_equal(pipe2(f->done, O_CLOEXEC), 0);
  f->pp = (struct pipes){f->ptr[1], f->pid[1], f->eof[1], f->done[1]};
}

/* After forking the creator: keep only the read ends. */
static void fds_parent(struct fds *f) {
  close(f->ptr[1]);
  close(f->pid[1]);
  close(f->eof[1]);
  close(f->done[1]);
}

static void fds_close(struct fds *f) {
  close(f->ptr[0]);
  close(f->pid[0]);
  close(f->eof[0]);
  close(f->done[0]);
}

static void put(int fd, const void *buf, size_t len) {
  while (len) {
    ssize_t k = write(fd, buf, len);
    if (k < 0 && errno == EINTR)
      continue;
    if (k <= 0)
      return;
    buf = (const char *)buf + k;
    len -= (size_t)k;
  }
}

/* Read exactly len bytes within timeout seconds: len, or the bytes read
 * before EOF or the timeout. */
static int get(int fd, void *buf, size_t len, double timeout) {
  size_t n = 0;
  double end = tu_now() + timeout;
  while (n < len) {
    double left = end - tu_now();
    if (left <= 0)
      break;
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    int r = poll(&pfd, 1, (int)(left * 1000) + 1);
    if (r <= 0)
      continue;
    ssize_t k = read(fd, (char *)buf + n, len - n);
    if (k < 0 && errno == EINTR)
      continue;
    if (k <= 0)
      break;
    n += (size_t)k;
  }
  return (int)n;
}

/* Whether the write ends of f's eof pipe all close within timeout seconds. */
static bool eof_within(struct fds *f, double timeout) {
  char c;
  double t0 = tu_now();
  return get(f->eof[0], &c, 1, timeout) == 0 && tu_now() - t0 < timeout;
}

/* The daemon's target: report the pid, then sleep until killed (the alarm
 * bounds a broken test). */
static int report_then_sleep(void *arg) {
  struct pipes *pp = arg;
  signal(SIGALRM, SIG_DFL);
  alarm(60);
  int me = (int)getpid();
  put(pp->pid_w, &me, sizeof me);
  for (;;)
    pause();
  return 0;
}

/* The non-daemon's target: finish some work after its creator is gone. */
static int finish_later(void *arg) {
  struct pipes *pp = arg;
  alarm(60);
  tu_sleep(0.3);
  put(pp->done_w, "n", 1);
  return 0;
}

/* The creator (run under an armed point): make a handle, tell its address,
 * start it. */
static int create_and_start(struct pipes *pp, mp_process_target target, int daemon) {
  mp_process_options o = {.daemon = daemon};
  mp_process *p = NULL;
  CHILD_CHECK(mp_process_new(target, pp, &o, &p) == 0);
  put(pp->ptr_w, &p, sizeof p);
  CHILD_CHECK(mp_process_start(p) == 0);
  for (;;)
    pause(); /* killed at the point, or by the test */
  return 0;
}

static int start_daemon(void *arg) { return create_and_start(arg, report_then_sleep, 1); }
static int start_nondaemon(void *arg) { return create_and_start(arg, finish_later, 0); }

static mp_process *read_handle(struct fds *f) {
  mp_process *p = NULL;
  assert_int_equal(get(f->ptr[0], &p, sizeof p, 10), (int)sizeof p);
  assert_non_null(p);
  return p;
}

static int setup(void **state) {
  (void)state;
  /* The handles live in the heap: map it before forking so that the test
   * reads the creators' handles. */
  assert_int_equal(mp__heap_ensure(), 0);
  return 0;
}

/* ------------------------------------------------------------ creator killed */

/* Killed right after claiming the handle: it stays STARTING, nothing runs. */
static void test_process_crash_creator_killed_after_claim(void **state) {
  (void)state;
  struct fds f;
  fds_open(&f);
  pid_t c = cu_fork_armed("process.start.claimed", 1, start_daemon, &f.pp, 30);
  fds_parent(&f);
  cu_assert_killed_at(c);
  mp_process *p = read_handle(&f);
  assert_true(eof_within(&f, 10)); /* no child holds the pipe */
  assert_int_equal(mp_process_pid(p), 0);
  int code = 0;
  assert_int_equal(mp_process_exitcode(p, &code), 0); /* unknown */
  assert_int_equal(mp_process_free(p), -ECHILD);
  assert_int_equal(mp__heap_check(), 0);
  fds_close(&f);
}

/* Killed at each step after the fork: the daemon child ends with it, and the
 * handle names the child. */
static void creator_killed_daemon_dies(const char *point) {
  struct fds f;
  fds_open(&f);
  pid_t c = cu_fork_armed(point, 1, start_daemon, &f.pp, 30);
  fds_parent(&f);
  cu_assert_killed_at(c);
  mp_process *p = read_handle(&f);
  int dpid = 0;
  /* The daemon may die before it reports: both are fine, a hang is not. */
  get(f.pid[0], &dpid, sizeof dpid, 10);
  assert_true(eof_within(&f, 10));
  int hp = mp_process_pid(p);
  if (strcmp(point, "process.start.forked") != 0)
    assert_true(hp > 0); /* the pid was stored before these points */
  if (dpid && hp)
    assert_int_equal(hp, dpid);
  assert_int_equal(mp__heap_check(), 0);
  fds_close(&f);
}

static void test_process_crash_creator_killed_after_fork(void **state) {
  (void)state;
  creator_killed_daemon_dies("process.start.forked");
}

static void test_process_crash_creator_killed_after_pidfd(void **state) {
  (void)state;
  creator_killed_daemon_dies("process.start.pidfd");
}

static void test_process_crash_creator_killed_after_register(void **state) {
  (void)state;
  creator_killed_daemon_dies("process.start.registered");
}

/* A non-daemon child of a creator killed right after the fork finishes its
 * target, as an orphan (as in Python). */
static void test_process_crash_creator_killed_nondaemon_finishes(void **state) {
  (void)state;
  struct fds f;
  fds_open(&f);
  pid_t c = cu_fork_armed("process.start.forked", 1, start_nondaemon, &f.pp, 30);
  fds_parent(&f);
  cu_assert_killed_at(c);
  read_handle(&f);
  char ch = 0;
  assert_int_equal(get(f.done[0], &ch, 1, 10), 1);
  assert_int_equal(ch, 'n');
  assert_int_equal(mp__heap_check(), 0);
  fds_close(&f);
}

/* ------------------------------------------------------------ child killed */

/* A child killed at its first steps is reaped by a living creator with exit
 * code -SIGKILL. */
static void child_killed_reaped(const char *point) {
  mp_process_options o = {.daemon = 1};
  mp_process *p = NULL;
  assert_int_equal(mp_process_new(report_then_sleep, NULL, &o, &p), 0);
  assert_int_equal(mp__crash_arm(point, 1, MP__CRASH_KILL), 0);
  assert_int_equal(mp_process_start(p), 0);
  mp__crash_mute();
  assert_int_equal(mp_process_join(p, 10), 0);
  int code = 0;
  assert_int_equal(mp_process_exitcode(p, &code), 1);
  assert_int_equal(code, -SIGKILL);
  assert_int_equal(mp__crash_fired(), mp_process_pid(p));
  assert_int_equal(mp_process_free(p), 0);
  mp__crash_disarm();
}

static void test_process_crash_child_killed_on_entry(void **state) {
  (void)state;
  child_killed_reaped("process.child.entered");
}

static void test_process_crash_child_killed_after_tie(void **state) {
  (void)state;
  child_killed_reaped("process.tie.requested");
}

/* The creator dies while its daemon child is stopped at `point` (before it
 * asked to be told of its parent's death, or between the request and the
 * check): when the child goes on, it must still end. */
static void creator_dies_while_child_stopped(const char *point) {
  struct fds f;
  fds_open(&f);
  assert_int_equal(mp__crash_arm(point, 1, MP__CRASH_STOP), 0);
  pid_t c = tu_fork(start_daemon, &f.pp, 30);
  mp__crash_mute();
  assert_true(c > 0);
  fds_parent(&f);
  double end = tu_now() + 10;
  while (mp__crash_fired() == 0 && tu_now() < end)
    tu_sleep(0.01);
  pid_t d = mp__crash_fired();
  assert_true(d > 0 && d != c);
  assert_int_equal(kill(c, SIGKILL), 0);
  assert_int_equal(tu_wait(c), 1000 + SIGKILL);
  /* The daemon, stopped, has not reported yet; resume it. */
  assert_int_equal(kill(d, SIGCONT), 0);
  assert_true(eof_within(&f, 10));
  int dpid = 0;
  assert_true(get(f.pid[0], &dpid, sizeof dpid, 1) == 0); /* it never ran its target */
  mp__crash_disarm();
  fds_close(&f);
}

static void test_process_crash_creator_dies_before_child_tie(void **state) {
  (void)state;
  creator_dies_while_child_stopped("process.child.entered");
}

static void test_process_crash_creator_dies_after_child_tie_request(void **state) {
  (void)state;
  creator_dies_while_child_stopped("process.tie.requested");
}

/* ------------------------------------------------------------ exit and free */

/* A daemon that ignores SIGTERM, and a slow non-daemon: the creator exits and
 * is killed in its exit handler right after the SIGTERMs. The daemon still
 * ends (the parent-death tie), the non-daemon finishes. */
static int ignore_term_then_sleep(void *arg) {
  signal(SIGTERM, SIG_IGN);
  return report_then_sleep(arg);
}

static int start_both_then_exit(void *arg) {
  struct pipes *pp = arg;
  mp_process_options o = {.daemon = 1};
  mp_process *d, *n;
  CHILD_CHECK(mp_process_new(ignore_term_then_sleep, pp, &o, &d) == 0);
  CHILD_CHECK(mp_process_start(d) == 0);
  CHILD_CHECK(mp_process_new(finish_later, pp, NULL, &n) == 0);
  CHILD_CHECK(mp_process_start(n) == 0);
  tu_sleep(0.1); /* let the daemon ignore SIGTERM first */
  exit(0);
}

static void test_process_crash_creator_killed_in_exit_handler(void **state) {
  (void)state;
  struct fds f;
  fds_open(&f);
  pid_t c = cu_fork_armed("process.exit.signalled", 1, start_both_then_exit, &f.pp, 30);
  fds_parent(&f);
  cu_assert_killed_at(c);
  int dpid = 0;
  assert_int_equal(get(f.pid[0], &dpid, sizeof dpid, 10), (int)sizeof dpid);
  char ch = 0;
  assert_int_equal(get(f.done[0], &ch, 1, 10), 1);
  assert_int_equal(ch, 'n');
  assert_true(eof_within(&f, 10)); /* the daemon is gone too */
  fds_close(&f);
}

/* Killed in mp_process_free() after unlinking the handle from its registry:
 * the handle stays allocated and readable, the heap consistent. */
static int run_then_free(void *arg) {
  struct pipes *pp = arg;
  mp_process *p = NULL;
  CHILD_CHECK(mp_process_new(finish_later, pp, NULL, &p) == 0);
  put(pp->ptr_w, &p, sizeof p);
  CHILD_CHECK(mp_process_start(p) == 0);
  CHILD_CHECK(mp_process_join(p, 20) == 0);
  mp_process_free(p);
  return 99; /* not reached */
}

static void test_process_crash_killed_in_free(void **state) {
  (void)state;
  struct fds f;
  fds_open(&f);
  pid_t c = cu_fork_armed("process.free.unlinked", 1, run_then_free, &f.pp, 30);
  fds_parent(&f);
  cu_assert_killed_at(c);
  mp_process *p = read_handle(&f);
  assert_true(mp_process_pid(p) > 0);
  int code = -1;
  assert_int_equal(mp_process_exitcode(p, &code), 1);
  assert_int_equal(code, 0);
  assert_int_equal(mp__heap_check(), 0);
  fds_close(&f);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup(test_process_crash_creator_killed_after_claim, setup),
      cmocka_unit_test_setup(test_process_crash_creator_killed_after_fork, setup),
      cmocka_unit_test_setup(test_process_crash_creator_killed_after_pidfd, setup),
      cmocka_unit_test_setup(test_process_crash_creator_killed_after_register, setup),
      cmocka_unit_test_setup(test_process_crash_creator_killed_nondaemon_finishes, setup),
      cmocka_unit_test_setup(test_process_crash_child_killed_on_entry, setup),
      cmocka_unit_test_setup(test_process_crash_child_killed_after_tie, setup),
      cmocka_unit_test_setup(test_process_crash_creator_dies_before_child_tie, setup),
      cmocka_unit_test_setup(test_process_crash_creator_dies_after_child_tie_request, setup),
      cmocka_unit_test_setup(test_process_crash_creator_killed_in_exit_handler, setup),
      cmocka_unit_test_setup(test_process_crash_killed_in_free, setup),
  };
  return TU_RUN("process_crash", tests);
}
