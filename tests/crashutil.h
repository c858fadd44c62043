/* SPDX-License-Identifier: MIT */
/*
 * Helpers for crash-point tests (white-box suites; src/crash.h).
 *
 *   pid_t c = cu_fork_armed("heap.trim.released", 1, fn, arg, 30);
 *   cu_assert_killed_at(c);   // died by SIGKILL, and at that point
 *   ... check what the survivors see ...
 *
 * cu_fork_armed() arms the point family-wide, forks fn(arg) under alarm(),
 * then mutes the caller, so only the child (or what the child forks) fires.
 */
#ifndef MP_CRASHUTIL_H
#define MP_CRASHUTIL_H

#include "testutil.h"

#include <signal.h>
#include <sys/wait.h>

#include "crash.h"

static inline pid_t cu_fork_armed(const char *point, unsigned nth, int (*fn)(void *), void *arg,
                                  unsigned alarm_s) {
  assert_int_equal(mp__crash_arm(point, nth, MP__CRASH_KILL), 0);
  pid_t c = tu_fork(fn, arg, alarm_s);
  mp__crash_mute();
  assert_true(c > 0);
  return c;
}

/* Like cu_fork_armed(), but the child stops (SIGSTOP) at the point; returns
 * once it has stopped there. The caller looks around, then kills it
 * (kill(c, SIGKILL)) and reaps it with cu_assert_killed_at(). */
static inline pid_t cu_fork_stopped_at(const char *point, unsigned nth, int (*fn)(void *),
                                       void *arg, unsigned alarm_s) {
  assert_int_equal(mp__crash_arm(point, nth, MP__CRASH_STOP), 0);
  pid_t c = tu_fork(fn, arg, alarm_s);
  mp__crash_mute();
  assert_true(c > 0);
  int st = 0;
  assert_int_equal(waitpid(c, &st, WUNTRACED), c);
  assert_true(WIFSTOPPED(st));
  assert_int_equal(mp__crash_fired(), c);
  return c;
}

/* Reap c and assert that SIGKILL ended it after the armed point fired in it. */
#define cu_assert_killed_at(c)                                                                \
  do {                                                                                        \
    assert_int_equal(tu_wait(c), 1000 + SIGKILL);                                             \
    assert_int_equal(mp__crash_fired(), (c));                                                 \
  } while (0)

#endif
