/* SPDX-License-Identifier: MIT */
/*
 * An Event: one process waits until another says "go".
 *
 * The Python original creates e = Event() (initially not set) and a child
 * process that prints that it starts, sleeps 3 s, prints that it is done and
 * calls e.set(). The parent prints that it waits, blocks in e.wait() until
 * the child has set the event, then goes on: prints that it got it, sleeps
 * 1 s and prints that it has finished.
 *
 * The C twin: mp_event_new(), mp_event_set() in the child and
 * mp_event_wait(ev, MP_FOREVER) in the parent (Python's wait() with no
 * timeout). The parent measures how long it waited: about 3 s.
 */
#include <mp.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

/* Stop with a message when a libmp call fails (they return a negative errno,
 * explained by mp_strerror()). Used in the parent and in the child alike. */
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

/* Python: def func(e), run in the child. */
static int func(void *arg) {
  mp_event *e = arg;
  printf("child: started\n");
  sleep(3);
  printf("child: done, setting the event\n");
  TRY(mp_event_set(e)); /* e.set() */
  return 0;
}

int main(void) {
  /* Print each line as soon as it is written, also into a pipe, so the order
   * of the output shows the order of events. The child inherits the setting. */
  setvbuf(stdout, NULL, _IOLBF, 0);

  mp_event *e;
  TRY(mp_event_new(&e)); /* e = Event(): not set */
  int set = mp_event_is_set(e);
  TRY(set);
  printf("parent: event set? %s\n", set ? "yes" : "no");

  mp_process *p;
  TRY(mp_process_new(func, e, NULL, &p)); /* Process(target=func, args=(e,)) */
  TRY(mp_process_start(p));

  printf("parent: waiting for the child's event\n");
  double start = now();
  TRY(mp_event_wait(e, MP_FOREVER)); /* e.wait() */
  printf("parent: got the event after %.1f s\n", now() - start);
  set = mp_event_is_set(e);
  TRY(set);
  printf("parent: event set? %s\n", set ? "yes" : "no");
  sleep(1);
  printf("parent: finished\n");

  int code = -1;
  TRY(mp_process_join(p, MP_FOREVER));
  TRY(mp_process_exitcode(p, &code));
  TRY(mp_process_free(p));
  TRY(mp_event_free(e));
  return code != 0 || set != 1;
}
