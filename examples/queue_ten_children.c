/* SPDX-License-Identifier: MIT */
/*
 * Ten children put into one Queue; the parent gets all ten messages.
 *
 * The Python original makes one q = Queue() and starts ten processes; each
 * sleeps 1 s and puts a greeting with its number, q.put(['hello' + str(name)]).
 * The parent joins the ten, then prints q.get() ten times. The greetings come
 * in whatever order the children happened to put them.
 *
 * The C twin: one mp_queue shared by the parent and the ten children (a queue
 * takes any number of producers at once). Each child puts "hello<n>" as bytes;
 * the parent gets ten messages into a buffer and adds the terminating '\0'.
 * The 1 s sleep is left out: it only makes the program slower. The parent
 * checks that each greeting came exactly once and that nothing else is left.
 */
#include <mp.h>
#include <stdio.h>
#include <string.h>

/* Stop with a message when a libmp call fails (they return a negative errno,
 * explained by mp_strerror()). Used in the parent and in children alike: both
 * return an exit status. On such an error the program ends and the system
 * reclaims what was left. */
#define TRY(call)                                                                                  \
  do {                                                                                             \
    int r_ = (int)(call);                                                                          \
    if (r_ < 0) {                                                                                  \
      fprintf(stderr, "%s failed: %s\n", #call, mp_strerror(r_));                                  \
      return 1;                                                                                    \
    }                                                                                              \
  } while (0)

enum { N = 10 };

static mp_queue *q; /* made before the children start, so they all see it */

/* Python: def f(name): q.put(['hello' + str(name)]) */
static int f(void *arg) {
  int name = (int)(long)arg; /* the number travels in the pointer argument */
  char greeting[16];
  int len = snprintf(greeting, sizeof greeting, "hello%d", name);
  TRY(mp_queue_put(q, greeting, (size_t)len, MP_FOREVER));
  return 0;
}

int main(void) {
  TRY(mp_queue_new(0, NULL, &q)); /* q = Queue() */

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

  /* for i in range(10): print(q.get()) */
  int seen[N] = {0};
  for (int i = 0; i < N; i++) {
    char msg[32];
    int n = (int)mp_queue_get(q, msg, sizeof msg - 1, MP_FOREVER);
    TRY(n);
    msg[n] = '\0';
    printf("%s\n", msg);
    int name = -1;
    if (sscanf(msg, "hello%d", &name) != 1 || name < 0 || name >= N || seen[name]++) {
      fprintf(stderr, "unexpected message \"%s\"\n", msg);
      failed = 1;
    }
  }
  int empty = mp_queue_empty(q); /* the ten messages were all there was */
  TRY(empty);
  TRY(mp_queue_free(q));
  return failed || !empty;
}
