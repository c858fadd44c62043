/* SPDX-License-Identifier: MIT */
/*
 * A child process runs alongside its parent.
 *
 * The Python original starts a Process(target=fun2): fun2 sleeps 3 s and
 * prints its pid and its parent's pid. Meanwhile the parent itself runs fun1,
 * which sleeps 2 s, then prints its own pid and the time it took: a little
 * over 2 s. Python joins the child when the parent's code ends, so the whole
 * program takes about 3 s; run one after the other, the two would take 5 s.
 *
 * The C twin: mp_process_start() returns at once and the parent goes on with
 * its own work while the child sleeps. Here the parent joins the child
 * explicitly (libmp would also join it at exit, as Python does) and prints the
 * total time: about 3 s, not 5.
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

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* The parent's own work (Python: fun1). */
static void fun1(void) {
  sleep(2);
  printf("parent: slept 2 s\n");
}

/* The child's work (Python: fun2). */
static int fun2(void *arg) {
  (void)arg;
  sleep(3);
  printf("child: slept 3 s; pid %d, parent pid %d\n", (int)getpid(), (int)getppid());
  return 0;
}

int main(void) {
  /* Print each line as soon as it is written, also into a pipe, so the order
   * of the output shows the order of events. Children inherit the setting. */
  setvbuf(stdout, NULL, _IOLBF, 0);

  double start_time = now();
  mp_process *p;
  TRY(mp_process_new(fun2, NULL, NULL, &p)); /* p = Process(target=fun2) */
  TRY(mp_process_start(p));                  /* p.start(): returns at once */
  fun1();                                    /* the parent works meanwhile */
  printf("parent: pid %d, my own work took %.1f s\n", (int)getpid(), now() - start_time);

  int code = -1;
  TRY(mp_process_join(p, MP_FOREVER));
  TRY(mp_process_exitcode(p, &code));
  TRY(mp_process_free(p));
  printf("total: %.1f s for 2 s and 3 s of sleep side by side (5 s one after the other)\n",
         now() - start_time);
  return code != 0;
}
