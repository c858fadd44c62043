/* SPDX-License-Identifier: MIT */
/*
 * Helpers for libmp's cmocka suites.
 *
 * Never call a cmocka assertion in a forked child: a failed assertion there
 * would run the rest of the suite inside the child while the parent reports
 * success. Children check with CHILD_CHECK(), which _exits with the failing
 * line as status, and arm alarm() against hangs; the parent asserts on the
 * status with tu_child_wait()/assert_child_ok().
 */
#ifndef MP_TESTUTIL_H
#define MP_TESTUTIL_H

#include <setjmp.h> /* cmocka needs these first */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <stdio.h>
#include <sys/types.h>
#include <unistd.h>

/* In a child: exit with status (line % 200) + 50 and a message when false. */
#define CHILD_CHECK(cond)                                                                 \
  do {                                                                                    \
    if (!(cond)) {                                                                        \
      fprintf(stderr, "child %d: check failed at %s:%d: %s\n", (int)getpid(), __FILE__,   \
              __LINE__, #cond);                                                           \
      fflush(stderr);                                                                     \
      _exit(50 + (__LINE__ % 200));                                                       \
    }                                                                                     \
  } while (0)

/* Fork a child that runs fn(arg) under alarm(alarm_s) and _exits with its
 * return value. Returns the pid (the parent asserts pid > 0). */
pid_t tu_fork(int (*fn)(void *arg), void *arg, unsigned alarm_s);

/* Wait for pid; returns its exit code, or 1000 + signal number if a signal
 * killed it. */
int tu_wait(pid_t pid);

/* Assert (in the parent) that the child exited with 0. */
#define assert_child_ok(pid) assert_int_equal(tu_wait(pid), 0)

/* Monotonic seconds. */
double tu_now(void);

/* Number of open file descriptors of this process. */
int tu_fd_count(void);

/* Number of entries in /dev/shm. */
int tu_shm_count(void);

/* Arrange for SIGALRM (a no-op handler installed without SA_RESTART) to hit
 * this process `after` seconds from now, repeating every `every` seconds (0:
 * once). tu_signals_stop() disarms it. Returns how many have arrived so far. */
void tu_signals_start(double after, double every);
int tu_signals_stop(void);

/* Sleep for s seconds, resuming across signals. */
void tu_sleep(double s);

/* Run the group with the suite's fd and /dev/shm leak checks around it. */
int tu_run_group(const char *name, const struct CMUnitTest *tests, size_t n);
#define TU_RUN(name, tests) tu_run_group(name, tests, sizeof(tests) / sizeof((tests)[0]))

#endif
