/* SPDX-License-Identifier: MIT */
/*
 * A daemon process ends when its parent ends.
 *
 * The Python original starts a Process whose target sleeps 5 s and then
 * prints a line, sets p.daemon = True before start(), prints a line of its own
 * and ends at once. Without daemon = True, the program would wait the 5 s for
 * the child; with it, the program ends immediately and the child's line is
 * never printed: the daemon died with its parent.
 *
 * The C twin sets `.daemon = 1` in the options given to mp_process_new()
 * (like Python, before start). When main returns, libmp ends its daemon
 * children; a daemon also dies if its parent is killed. The example prints the
 * daemon's pid so that the test can check, after the program has exited, that
 * no such process is left.
 */
#include <mp.h>
#include <stdio.h>
#include <unistd.h>

/* Stop with a message when a libmp call fails (they return a negative errno,
 * explained by mp_strerror()). */
#define TRY(call)                                                                                  \
  do {                                                                                             \
    int r_ = (call);                                                                               \
    if (r_ < 0) {                                                                                  \
      fprintf(stderr, "%s failed: %s\n", #call, mp_strerror(r_));                                  \
      return 1;                                                                                    \
    }                                                                                              \
  } while (0)

/* Python: def fun(): time.sleep(5); print('I am the child process') */
static int fun(void *arg) {
  (void)arg;
  sleep(5);
  printf("daemon: I slept 5 s and am still alive\n"); /* never printed */
  return 0;
}

int main(void) {
  mp_process_options opts = {.daemon = 1}; /* p.daemon = True */
  mp_process *p;
  TRY(mp_process_new(fun, NULL, &opts, &p));
  TRY(mp_process_start(p));

  int pid = mp_process_pid(p);
  int daemon = mp_process_daemon(p);
  int alive = mp_process_is_alive(p);
  TRY(pid);
  TRY(daemon);
  TRY(alive);
  printf("daemon pid %d started (daemon: %s, alive: %s)\n", pid, daemon ? "yes" : "no",
         alive ? "yes" : "no");
  printf("main process: done, ending at once\n");

  /* The handle is not freed: the daemon still runs (mp_process_free() would
   * return -EBUSY). libmp ends the daemon when main returns. */
  return daemon == 1 && alive == 1 ? 0 : 1;
}
