/* SPDX-License-Identifier: MIT */
/*
 * Producer and consumer joined by a Queue, with an end marker.
 *
 * The Python original makes q = Queue(10) and two processes: a producer that
 * makes ten buns, putting each into the queue (q.put(i)) and printing that it
 * is made, then puts the string 'over'; and a consumer that loops on q.get(),
 * stops when it gets 'over' and otherwise prints that the bun was eaten. The
 * two never talk to each other directly: the queue decouples them. The
 * marker ("sentinel") is how the consumer learns that nothing more will come.
 * (The original also sleeps 1 s per bun and 1.5 s per meal; left out here.)
 *
 * The C twin: mp_queue_new(10, ...) is Queue(10). A message is bytes, so the
 * producer puts each bun number as text, "0" to "9", and then "over"; the
 * consumer compares what it gets with "over". The two processes' lines may
 * interleave in any way; the consumer checks that the buns come in the order
 * they were made.
 */
#include <mp.h>
#include <stdio.h>
#include <stdlib.h>
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

enum { BUNS = 10 };

/* Python: def producer(q) */
static int producer(void *arg) {
  mp_queue *q = arg;
  for (int i = 0; i < BUNS; i++) {
    char bun[8];
    int len = snprintf(bun, sizeof bun, "%d", i);
    TRY(mp_queue_put(q, bun, (size_t)len, MP_FOREVER)); /* q.put(i) */
    printf("bun %d made\n", i);
  }
  TRY(mp_queue_put(q, "over", 4, MP_FOREVER)); /* q.put('over') */
  return 0;
}

/* Python: def consumer(q) */
static int consumer(void *arg) {
  mp_queue *q = arg;
  for (int want = 0;; want++) {
    char msg[8];
    int n = (int)mp_queue_get(q, msg, sizeof msg - 1, MP_FOREVER); /* ss = q.get() */
    TRY(n);
    msg[n] = '\0';
    if (strcmp(msg, "over") == 0) { /* if ss == 'over': break */
      if (want != BUNS) {
        fprintf(stderr, "consumer: 'over' after %d buns\n", want);
        return 1;
      }
      printf("consumer: got 'over', stopping\n");
      return 0;
    }
    if (atoi(msg) != want) {
      fprintf(stderr, "consumer: bun \"%s\" out of order\n", msg);
      return 1;
    }
    printf("bun %s eaten\n", msg);
  }
}

/* Wait for a child, free its handle, and fail unless it exited with 0. */
static int join_ok(mp_process *p) {
  int code = -1;
  TRY(mp_process_join(p, MP_FOREVER));
  TRY(mp_process_exitcode(p, &code));
  TRY(mp_process_free(p));
  if (code != 0) {
    fprintf(stderr, "a child failed with exit code %d\n", code);
    return 1;
  }
  return 0;
}

int main(void) {
  /* Each line goes out as soon as it is printed, so the two processes' lines
   * show the order in which things happened. Children inherit the setting. */
  setvbuf(stdout, NULL, _IOLBF, 0);

  mp_queue *q;
  TRY(mp_queue_new(10, NULL, &q)); /* q = Queue(10) */

  mp_process *p, *p1;
  TRY(mp_process_new(producer, q, NULL, &p));  /* Process(target=producer, args=(q,)) */
  TRY(mp_process_new(consumer, q, NULL, &p1)); /* Process(target=consumer, args=(q,)) */
  TRY(mp_process_start(p));
  TRY(mp_process_start(p1));

  /* Python's main ends here and its children are joined at exit; in C the
   * parent joins them itself, then frees the queue nobody uses any more. */
  int failed = join_ok(p);
  failed |= join_ok(p1);
  TRY(mp_queue_free(q));
  return failed;
}
