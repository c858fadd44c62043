/* SPDX-License-Identifier: MIT */
/*
 * A process type of your own, with its own fields and its own run function.
 *
 * The Python original subclasses Process:
 *
 *     class Mypro(Process):
 *         def __init__(self, name):
 *             super().__init__()
 *             self.name = name
 *         def run(self):
 *             time.sleep(3)
 *             print(self.name)
 *
 * then creates Mypro('...'), starts it, joins it, and the main process prints
 * a line of its own after the join.
 *
 * C has no classes, so the twin is a struct that holds its libmp process
 * handle (mp_process is opaque: libmp allocates it, we keep a pointer) next to
 * the fields of our own, plus functions that play the methods: greeter_new()
 * is __init__, greeter_run() is run(), and greeter_start/join/free wrap
 * the process calls. The process's target is a small function that turns the
 * void * argument back into the struct and calls greeter_run(), the way
 * Python's start() ends up calling self.run() in the child.
 *
 * The struct lives in the parent's ordinary memory; the child gets a copy of
 * it at start, so run() can read every field. Changes run() makes stay in the
 * child, as changes to self do in Python (share data with value_array.c's
 * Value and Array). The sleep is 1 s here rather than 3.
 */
#include <mp.h>
#include <stdio.h>
#include <stdlib.h>
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

/* Our process type (Python: class Mypro(Process)). */
typedef struct greeter {
  mp_process *proc;     /* the Process part: the handle libmp gives us */
  unsigned nap_seconds; /* fields of our own */
  const char *greeting;
} greeter;

/* Python: def run(self). Runs in the child; returns its exit code. */
static int greeter_run(greeter *self) {
  sleep(self->nap_seconds);

  /* Python's self.name is the process's name: ask libmp for the current
   * process and its name, which greeter_new() set. */
  mp_process *me;
  const char *name;
  TRY(mp_process_current(&me));
  TRY(mp_process_name(me, &name));
  printf("%s: %s (after %u s asleep, pid %d)\n", name, self->greeting, self->nap_seconds,
         (int)getpid());
  return 0;
}

/* The target libmp calls in the child: back from void * to our struct. */
static int greeter_main(void *arg) { return greeter_run(arg); }

/* Python: Mypro('...') with super().__init__() and self.name = name. */
static int greeter_new(const char *name, const char *greeting, greeter **ret) {
  greeter *g = malloc(sizeof *g);
  if (!g)
    return -ENOMEM;
  g->nap_seconds = 1;
  g->greeting = greeting;
  mp_process_options opts = {.name = name};
  int r = mp_process_new(greeter_main, g, &opts, &g->proc);
  if (r < 0) {
    free(g);
    return r;
  }
  *ret = g;
  return 0;
}

static int greeter_start(greeter *g) { return mp_process_start(g->proc); }
static int greeter_join(greeter *g) { return mp_process_join(g->proc, MP_FOREVER); }

static int greeter_free(greeter *g) {
  int r = mp_process_free(g->proc);
  if (r < 0)
    return r; /* still running: keep both */
  free(g);
  return 0;
}

int main(void) {
  greeter *p1;
  TRY(greeter_new("Ann", "hello from my own run()", &p1)); /* p1 = Mypro('Ann') */
  TRY(greeter_start(p1));                                  /* p1.start() */
  TRY(greeter_join(p1));                                   /* p1.join() */

  int code = -1;
  TRY(mp_process_exitcode(p1->proc, &code));
  const char *name;
  TRY(mp_process_name(p1->proc, &name));
  printf("main process: %s has finished with exit code %d\n", name, code);
  TRY(greeter_free(p1));
  return code != 0;
}
