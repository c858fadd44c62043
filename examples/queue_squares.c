/* SPDX-License-Identifier: MIT */
/*
 * A Queue carries results from a child back to its parent.
 *
 * The Python original creates q = Queue() and starts a child with
 * Process(target=square_list, args=(mylist, q)); the child puts the square of
 * each number of [1, 2, 3, 4] into the queue with q.put(num * num). The parent
 * joins the child, then prints q.get() while not q.empty(): 1, 4, 9, 16.
 *
 * The C twin: mp_queue_new() makes the queue in libmp's shared heap, so the
 * child can use the same handle. A queue carries bytes, so each int is put as
 * its sizeof(int) bytes and got back into an int. mp_queue_empty() is
 * Python's q.empty().
 *
 * Why join first: "get until empty" is only right once every put is done.
 * Without the join, the parent could find the queue empty before the child
 * had put anything, and stop too early. After the join every put has returned
 * (libmp's put copies the message into the queue before it returns), so the
 * parent gets exactly the four squares. A reader that cannot join first
 * should instead get a known number of items, or wait for an end marker (see
 * producer_consumer.c).
 */
#include <mp.h>
#include <stdio.h>

/* Stop with a message when a libmp call fails (they return a negative errno,
 * explained by mp_strerror()). Used in the parent and in the child alike: both
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

static const int mylist[4] = {1, 2, 3, 4};

/* The child (Python: def square_list(mylist, q)). */
static int square_list(void *arg) {
  mp_queue *q = arg;
  for (int i = 0; i < 4; i++) {
    int square = mylist[i] * mylist[i];
    TRY(mp_queue_put(q, &square, sizeof square, MP_FOREVER)); /* q.put(num * num) */
  }
  return 0;
}

int main(void) {
  mp_queue *q;
  TRY(mp_queue_new(0, NULL, &q)); /* q = Queue() */

  mp_process *p1;
  TRY(mp_process_new(square_list, q, NULL, &p1)); /* Process(target=..., args=(mylist, q)) */
  TRY(mp_process_start(p1));
  TRY(mp_process_join(p1, MP_FOREVER)); /* p1.join(): every put is done */
  int code = -1;
  TRY(mp_process_exitcode(p1, &code));
  TRY(mp_process_free(p1));
  if (code != 0) {
    fprintf(stderr, "the child failed with exit code %d\n", code);
    return 1;
  }

  /* while not q.empty(): print(q.get()) */
  int got = 0;
  for (;;) {
    int empty = mp_queue_empty(q);
    TRY(empty);
    if (empty)
      break;
    int square;
    /* MP_NOWAIT: the queue is not empty and nobody else gets from it, so a
     * message is there; an error here would be a bug, not a wait. */
    int n = (int)mp_queue_get(q, &square, sizeof square, MP_NOWAIT);
    TRY(n);
    if (n != (int)sizeof square || got >= 4 || square != mylist[got] * mylist[got]) {
      fprintf(stderr, "unexpected message\n");
      return 1;
    }
    printf("%d\n", square);
    got++;
  }
  printf("Queue is now empty! (got %d squares)\n", got);

  TRY(mp_queue_free(q));
  return got == 4 ? 0 : 1;
}
