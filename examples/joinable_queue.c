/* SPDX-License-Identifier: MIT */
/*
 * A JoinableQueue: the producer waits until every item has been handled.
 *
 * With a plain Queue and an end marker (producer_consumer.c) the producer must
 * put one marker per consumer, so it must know how many there are. The Python
 * original solves this with q = JoinableQueue(): a producer process puts ten
 * buns and then calls q.join(), which waits until every item put has been
 * marked done; three consumer processes, made daemons (p1.daemon = True),
 * loop forever on q.get(), print which customer ate which bun and call
 * q.task_done(). The parent joins the producer only. When the tenth
 * task_done() comes, the producer's join returns, the producer ends, the
 * parent ends, and the daemon consumers die with it.
 *
 * The C twin: mp_joinable_queue_new(), mp_queue_task_done() and
 * mp_queue_join(); `.daemon = 1` in the process options is p.daemon = True.
 * Once the producer has ended, the parent closes the queue with
 * mp_queue_close(): each consumer's waiting get then returns -EPIPE (end of
 * file) and the consumer returns, so the parent can join them and free the
 * queue. (Without that, libmp would end the daemons at the parent's exit, as
 * Python does; see swords.c.)
 */
#include <mp.h>
#include <stdio.h>

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

enum { BUNS = 10, CUSTOMERS = 3 };

static mp_queue *q; /* made before the children start, so they all see it */

/* Python: def producer(q) */
static int producer(void *arg) {
  (void)arg;
  for (int i = 0; i < BUNS; i++) {
    TRY(mp_queue_put(q, &i, sizeof i, MP_FOREVER)); /* q.put(i) */
    printf("bun %d made\n", i);
  }
  TRY(mp_queue_join(q, MP_FOREVER)); /* q.join(): until ten task_done() */
  printf("producer: every bun is eaten\n");
  return 0;
}

/* Python: def consumer(q, i) */
static int consumer(void *arg) {
  int customer = (int)(long)arg; /* the number travels in the pointer argument */
  for (;;) {
    int bun;
    int n = (int)mp_queue_get(q, &bun, sizeof bun, MP_FOREVER); /* q.get() */
    if (n == -EPIPE) { /* the queue is closed and empty: go home */
      printf("customer %d goes home\n", customer);
      return 0;
    }
    TRY(n);
    printf("customer %d ate bun %d\n", customer, bun);
    TRY(mp_queue_task_done(q)); /* q.task_done() */
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
  /* Each line goes out as soon as it is printed, so the processes' lines
   * show the order in which things happened. Children inherit the setting. */
  setvbuf(stdout, NULL, _IOLBF, 0);

  TRY(mp_joinable_queue_new(0, &q)); /* q = JoinableQueue() */

  mp_process *p;
  TRY(mp_process_new(producer, NULL, NULL, &p)); /* Process(target=producer, args=(q,)) */
  TRY(mp_process_start(p));

  mp_process *consumers[CUSTOMERS];
  mp_process_options daemon = {.daemon = 1}; /* p1.daemon = True */
  for (int i = 0; i < CUSTOMERS; i++) {
    TRY(mp_process_new(consumer, (void *)(long)i, &daemon, &consumers[i]));
    TRY(mp_process_start(consumers[i]));
  }

  int failed = join_ok(p); /* p.join(): returns once every bun is eaten */
  printf("main: the producer has ended; closing the queue\n");
  TRY(mp_queue_close(q));
  for (int i = 0; i < CUSTOMERS; i++)
    failed |= join_ok(consumers[i]);
  TRY(mp_queue_free(q));
  return failed;
}
