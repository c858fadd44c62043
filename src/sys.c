/* SPDX-License-Identifier: MIT */
/*
 * Time, deadlines and thread identity: the small system layer every area uses.
 */
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"

int64_t mp__now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int mp__deadline_init_slow(mp__deadline *d, double timeout) {
  if (isnan(timeout))
    return -EINVAL;
  d->nowait = false;
  d->forever = false;
  if (timeout < 0) /* Python's rule: a negative timeout tries once */
    timeout = 0;
  /* Beyond ~292 years the nanosecond arithmetic would overflow: that is
   * forever for every practical purpose. */
  if (timeout > 9.0e9) {
    d->forever = true;
    return 0;
  }
  d->nowait = timeout == 0;
  int64_t now = mp__now_ns();
  int64_t add = (int64_t)(timeout * 1e9);
  int64_t at = now + add;
  d->at.tv_sec = (time_t)(at / 1000000000);
  d->at.tv_nsec = (long)(at % 1000000000);
  return 0;
}

bool mp__deadline_passed(const mp__deadline *d) {
  if (d->forever)
    return false;
  int64_t at = (int64_t)d->at.tv_sec * 1000000000 + d->at.tv_nsec;
  return mp__now_ns() >= at;
}

int mp__deadline_poll_ms(const mp__deadline *d) {
  if (d->forever)
    return -1;
  int64_t left = (int64_t)d->at.tv_sec * 1000000000 + d->at.tv_nsec - mp__now_ns();
  if (left <= 0)
    return 0;
  int64_t ms = (left + 999999) / 1000000;
  return ms > 0x7fffffff ? 0x7fffffff : (int)ms;
}

/* The tid is cached per thread and the pid per process; the fork handler
 * clears both in the child, whose pid and only thread's tid are new. These
 * are libmp's only pid cache and only fork handler: other areas call mp__pid()
 * and hook into ids_after_fork(), so a child touches one page for them and no
 * area can see a stale pid of its own. The handler is registered by the first
 * mp__pid() or mp__tid() of a process, which every area's first use of
 * per-process state goes through. */
__thread pid_t mp__cached_tid __attribute__((tls_model("initial-exec")));
static _Atomic pid_t cached_pid;

static void ids_after_fork(void) {
  mp__cached_tid = 0;
  atomic_store_explicit(&cached_pid, 0, memory_order_relaxed);
  mp__process_atfork_child();
}

static pthread_once_t ids_once = PTHREAD_ONCE_INIT;
static void ids_register(void) { pthread_atfork(NULL, NULL, ids_after_fork); }

pid_t mp__tid_slow(void) {
  pthread_once(&ids_once, ids_register);
  mp__cached_tid = (pid_t)syscall(SYS_gettid);
  return mp__cached_tid;
}

pid_t mp__pid(void) {
  /* relaxed: the process's own constant; a stale 0 only costs a getpid() */
  pid_t p = atomic_load_explicit(&cached_pid, memory_order_relaxed);
  if (MP__LIKELY(p))
    return p;
  pthread_once(&ids_once, ids_register);
  p = getpid();
  atomic_store_explicit(&cached_pid, p, memory_order_relaxed);
  return p;
}

int mp__wait_fd(int fd, short events, const mp__deadline *d) {
  struct pollfd p = {.fd = fd, .events = events, .revents = 0};
  for (;;) {
    int r = poll(&p, 1, mp__deadline_poll_ms(d));
    if (r > 0)
      return 0;
    if (r == 0 || errno == EINTR) {
      /* poll rounds its timeout up, so a 0 means the deadline has passed;
       * a signal resumes against the same deadline */
      if (mp__deadline_passed(d))
        return -ETIMEDOUT;
      continue;
    }
    return -errno;
  }
}

/* The polling of mp__recv_wait(): true when fd became readable (or hung
 * up). */
static bool spin_readable(int fd, const mp__deadline *d) {
  if (d->nowait)
    return false;
  int64_t end = mp__now_ns() + MP__SPIN_NS;
  if (!d->forever) {
    int64_t at = (int64_t)d->at.tv_sec * 1000000000 + d->at.tv_nsec;
    end = at < end ? at : end;
  }
  struct pollfd pf = {.fd = fd, .events = POLLIN, .revents = 0};
  for (unsigned i = 1;; i++) {
    int r = poll(&pf, 1, 0);
    if (r != 0)
      return r > 0; /* readable, end of file or error: the caller's recv tells */
    if (i % MP__SPIN_POLL_YIELD == 0) {
      sched_yield();
      if (mp__now_ns() >= end)
        return false;
    }
  }
}

int mp__recv_wait(int fd, const mp__deadline *d, int *flags, bool *spun) {
  if (!*spun) {
    *spun = true;
    if (spin_readable(fd, d))
      return 0;
  }
  if (d->forever) {
    *flags &= ~MSG_DONTWAIT;
    return 0;
  }
  return mp__wait_fd(fd, POLLIN, d);
}
