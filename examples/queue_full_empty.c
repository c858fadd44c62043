/* SPDX-License-Identifier: MIT */
/*
 * A bounded Queue: what happens when it is full, and when it is empty.
 *
 * The Python original makes q = Queue(2), a queue that holds two items, and
 * walks through its methods:
 *   q.put(1); q.put(2)    fill it
 *   q.put(3)              would block forever: the queue is full
 *   q.put_nowait(4)       does not block: raises queue.Full at once
 *   q.get(); q.get()      1, then 2: first in, first out
 *   q.get()               would block forever: the queue is empty
 *   q.get(False), q.get_nowait()   do not block: raise queue.Empty at once
 *   q.full(), q.empty()   True or False
 *
 * The C twin: mp_queue_new(2, ...) is Queue(2). Every put and get takes a
 * timeout in seconds: MP_FOREVER blocks like put()/get(), MP_NOWAIT (0) is
 * put_nowait()/get_nowait(), and a wait that ends unsatisfied returns
 * -ETIMEDOUT: Python's Full for a put, Empty for a get. So the calls that
 * would block forever are shown here with a 0.1 s timeout instead. An item is
 * bytes: each int is put as its sizeof(int) bytes.
 */
#include <mp.h>
#include <stdio.h>

/* Stop with a message when a libmp call fails (they return a negative errno,
 * explained by mp_strerror()). On such an error the program ends and the
 * system reclaims what was left. */
#define TRY(call)                                                                                  \
  do {                                                                                             \
    int r_ = (int)(call);                                                                          \
    if (r_ < 0) {                                                                                  \
      fprintf(stderr, "%s failed: %s\n", #call, mp_strerror(r_));                                  \
      return 1;                                                                                    \
    }                                                                                              \
  } while (0)

/* Stop unless a call gave exactly -ETIMEDOUT (Python's Full or Empty, named
 * in `what`); print what happened under the Python name `label`. */
#define EXPECT_TIMEDOUT(call, label, what)                                                         \
  do {                                                                                             \
    int r_ = (int)(call);                                                                          \
    if (r_ != -ETIMEDOUT) {                                                                        \
      fprintf(stderr, "%s gave %d (%s), not -ETIMEDOUT\n", #call, r_, mp_strerror(r_));            \
      return 1;                                                                                    \
    }                                                                                              \
    printf("%s -> -ETIMEDOUT: %s (%s)\n", label, what, mp_strerror(r_));                           \
  } while (0)

/* Print q.full() and q.empty(), and stop unless they are as expected. */
static int show(mp_queue *q, int want_full, int want_empty) {
  int full = mp_queue_full(q), empty = mp_queue_empty(q);
  TRY(full);
  TRY(empty);
  printf("full() = %s, empty() = %s\n", full ? "True" : "False", empty ? "True" : "False");
  if (full != want_full || empty != want_empty) {
    fprintf(stderr, "expected full() = %d, empty() = %d\n", want_full, want_empty);
    return 1;
  }
  return 0;
}

/* get one int; stop unless it is `want` */
static int get_int(mp_queue *q, int want) {
  int item;
  int n = (int)mp_queue_get(q, &item, sizeof item, MP_FOREVER); /* q.get() */
  TRY(n);
  printf("get() -> %d\n", item);
  if (n != (int)sizeof item || item != want) {
    fprintf(stderr, "expected %d\n", want);
    return 1;
  }
  return 0;
}

int main(void) {
  mp_queue *q;
  TRY(mp_queue_new(2, NULL, &q)); /* q = Queue(2) */
  if (show(q, 0, 1))
    return 1;

  int one = 1, two = 2, three = 3, four = 4;
  TRY(mp_queue_put(q, &one, sizeof one, MP_FOREVER)); /* q.put(1) */
  printf("put(1)\n");
  TRY(mp_queue_put(q, &two, sizeof two, MP_FOREVER)); /* q.put(2) */
  printf("put(2)\n");
  if (show(q, 1, 0))
    return 1;

  /* q.put(3) with MP_FOREVER would wait until someone gets an item: with only
   * this process, forever. With a timeout it gives up. */
  EXPECT_TIMEDOUT(mp_queue_put(q, &three, sizeof three, 0.1), "put(3, timeout=0.1)", "Full");
  /* q.put_nowait(4): no wait at all. */
  EXPECT_TIMEDOUT(mp_queue_put(q, &four, sizeof four, MP_NOWAIT), "put_nowait(4)", "Full");

  if (get_int(q, 1) || get_int(q, 2)) /* q.get(), q.get(): first in, first out */
    return 1;
  if (show(q, 0, 1))
    return 1;

  int item;
  /* q.get() would now wait forever; with a timeout it gives up. */
  EXPECT_TIMEDOUT(mp_queue_get(q, &item, sizeof item, 0.1), "get(timeout=0.1)", "Empty");
  /* q.get(False) and q.get_nowait(): no wait at all. */
  EXPECT_TIMEDOUT(mp_queue_get(q, &item, sizeof item, MP_NOWAIT), "get_nowait()", "Empty");

  TRY(mp_queue_free(q));
  return 0;
}
