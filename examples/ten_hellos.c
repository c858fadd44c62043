/* SPDX-License-Identifier: MIT */
/*
 * Ten processes run at the same time.
 *
 * The Python original starts ten Process(target=f, args=(i,)); each f sleeps
 * 1 s, then prints "hello" with its number, its parent's pid and its own pid.
 * The parent keeps the Process objects in a list and joins them all. Since the
 * ten sleeps overlap, the whole program takes about 1 s, not 10.
 *
 * The C twin: mp_process_new() + mp_process_start() for each child,
 * mp_process_join() for each, then mp_process_free() for the handles.
 * getppid() is Python's os.getppid(); mp_process_parent_pid() is libmp's
 * twin of parent_process().pid, and both must name the parent.
 */
#include <mp.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

/* Stop with a message when a libmp call fails (they return a negative errno,
 * explained by mp_strerror()). Used in the parent and in children alike. */
#define TRY(call)                                                                                  \
  do {                                                                                             \
    int r_ = (call);                                                                               \
    if (r_ < 0) {                                                                                  \
      fprintf(stderr, "%s failed: %s\n", #call, mp_strerror(r_));                                  \
      return 1;                                                                                    \
    }                                                                                              \
  } while (0)

enum { N = 10 };

static pid_t parent; /* set before the children start, so they see it too */

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* Python: def f(name): time.sleep(1); print('hello', name); print(getppid, getpid) */
static int f(void *arg) {
  int name = (int)(long)arg; /* the number travels in the pointer argument */
  sleep(1);
  printf("hello %d: pid %d, parent pid %d\n", name, (int)getpid(), (int)getppid());
  if (getppid() != parent || mp_process_parent_pid() != parent) {
    fprintf(stderr, "child %d: wrong parent pid\n", name);
    return 1;
  }
  return 0;
}

int main(void) {
  parent = getpid();
  printf("parent pid %d starts %d children\n", (int)parent, N);
  double start = now();

  mp_process *process_list[N];
  for (int i = 0; i < N; i++) {
    TRY(mp_process_new(f, (void *)(long)i, NULL, &process_list[i]));
    TRY(mp_process_start(process_list[i]));
  }

  int failed = 0;
  for (int i = 0; i < N; i++) {
    int code = -1;
    TRY(mp_process_join(process_list[i], MP_FOREVER));
    TRY(mp_process_exitcode(process_list[i], &code));
    TRY(mp_process_free(process_list[i]));
    failed |= code != 0;
  }

  /* Each child slept 1 s; together they took about 1 s, not 10. */
  printf("all %d done in %.1f s\n", N, now() - start);
  return failed;
}
