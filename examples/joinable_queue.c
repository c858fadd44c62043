/* SPDX-License-Identifier: MIT */
/*
 * A JoinableQueue: the producer waits until every item has been handled, and
 * the daemon consumers die when the main program ends.
 *
 * With a plain Queue and an end marker (producer_consumer.c) the producer must
 * put one marker per consumer, so it must know how many there are. The Python
 * original solves this with q = JoinableQueue(): a producer process makes ten
 * buns, one a second, putting each into q, then calls q.join(), which waits
 * until every item put has been marked done; three consumer processes, made
 * daemons (p1.daemon = True), loop forever: every 1.5 s they take a bun with
 * q.get(), print which customer ate it and call q.task_done(). The main
 * program joins the producer only. When the tenth task_done() comes, the
 * producer's join returns, the producer ends, the main program ends, and the
 * daemon consumers, still looping, die with it.
 *
 * The C twin: mp_joinable_queue_new(), mp_queue_task_done() and
 * mp_queue_join(); `.daemon = 1` in the process options is p1.daemon = True.
 * When main returns, libmp terminates its daemon children, as Python does.
 * The queue is not freed: the daemons still wait in it when main returns, and
 * the system reclaims it with the program. The sleeps are a tenth of the
 * original's. The parent prints each consumer's pid so that the test can
 * check, after the program has exited, that no consumer is left.
 */
#include <mp.h>
#include <stdio.h>
#include <time.h>

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

static void sleep_ms(long ms) {
  struct timespec t = {ms / 1000, ms % 1000 * 1000000};
  nanosleep(&t, NULL);
}

/* Python: def sheng(q) -- the producer */
static int producer(void *arg) {
  (void)arg;
  for (int i = 0; i < BUNS; i++) {
    sleep_ms(100);                                  /* time.sleep(1) */
    TRY(mp_queue_put(q, &i, sizeof i, MP_FOREVER)); /* q.put(i) */
    printf("bun %d made\n", i);
  }
  TRY(mp_queue_join(q, MP_FOREVER)); /* q.join(): until ten task_done() */
  printf("producer: every bun is eaten\n");
  return 0;
}

/* Python: def xiao(q, i) -- a consumer; it never returns */
static int consumer(void *arg) {
  int customer = (int)(long)arg; /* the number travels in the pointer argument */
  for (;;) {
    sleep_ms(150); /* time.sleep(1.5) */
    int bun;
    TRY(mp_queue_get(q, &bun, sizeof bun, MP_FOREVER)); /* q.get() */
    printf("customer %d ate bun %d\n", customer, bun);
    TRY(mp_queue_task_done(q)); /* q.task_done() */
  }
}

int main(void) {
  /* Each line goes out as soon as it is printed, so the processes' lines
   * show the order in which things happened. Children inherit the setting. */
  setvbuf(stdout, NULL, _IOLBF, 0);

  TRY(mp_joinable_queue_new(0, &q)); /* q = JoinableQueue() */

  mp_process *p;
  TRY(mp_process_new(producer, NULL, NULL, &p)); /* p = Process(target=sheng, args=(q,)) */
  TRY(mp_process_start(p));

  mp_process_options daemon = {.daemon = 1}; /* p1.daemon = True */
  for (int i = 0; i < CUSTOMERS; i++) {
    mp_process *p1;
    TRY(mp_process_new(consumer, (void *)(long)i, &daemon, &p1)); /* Process(target=xiao, ...) */
    TRY(mp_process_start(p1));
    printf("customer %d is a daemon, pid %d\n", i, mp_process_pid(p1));
  }

  TRY(mp_process_join(p, MP_FOREVER)); /* p.join(): returns once every bun is eaten */
  int code = -1;
  TRY(mp_process_exitcode(p, &code));
  TRY(mp_process_free(p));
  printf("main: the producer has ended; main ends, and the daemon customers with it\n");
  return code;
}
