/* SPDX-License-Identifier: MIT */
/*
 * Time, deadlines and thread identity: the small system layer every area uses.
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
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
  if (timeout < 0) {
    d->forever = true;
    return 0;
  }
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

/* The tid is cached per thread; the fork handler clears the forking thread's
 * cache in the child, whose only thread has a new tid. */
__thread pid_t mp__cached_tid __attribute__((tls_model("initial-exec")));

static void tid_after_fork(void) { mp__cached_tid = 0; }

static pthread_once_t tid_once = PTHREAD_ONCE_INIT;
static void tid_register(void) { pthread_atfork(NULL, NULL, tid_after_fork); }

pid_t mp__tid_slow(void) {
  pthread_once(&tid_once, tid_register);
  mp__cached_tid = (pid_t)syscall(SYS_gettid);
  return mp__cached_tid;
}
