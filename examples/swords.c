/* SPDX-License-Identifier: MIT */
/*
 * A JoinableQueue with a daemon consumer: eight swords for five heroes.
 *
 * The Python original makes q = JoinableQueue() and two processes:
 *   - a producer puts eight swords, "Yue sword No. 1" to "No. 8", then calls
 *     q.join(), which waits until every sword put has been marked done;
 *   - a consumer, made a daemon (p.daemon = True), loops forever over a list
 *     of five heroes, handing each the next sword from q.get(), printing who
 *     took which, and calling q.task_done() once per sword.
 * The parent joins the producer only. The producer ends once the eighth
 * task_done() has come, the parent ends after it, and the daemon consumer,
 * still waiting in q.get() for a ninth sword, dies with the parent.
 *
 * The C twin: mp_joinable_queue_new(), mp_queue_task_done() and
 * mp_queue_join(); `.daemon = 1` in the process options is p.daemon = True.
 * libmp would end the daemon at the parent's exit just as Python does; here
 * the parent does it itself with mp_process_terminate() (SIGTERM, the signal
 * libmp would send) and joins it, so that it can then free the queue. A queue
 * stays consistent when a process dies while waiting in it. With one
 * consumer, the swords go out in order: the output is always the same.
 */
#include <mp.h>
#include <signal.h>
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

enum { SWORDS = 8, HEROES = 5 };

static const char *const heroes[HEROES] = {"Gai Nie", "Wei Zhuang", "Gao Jianli", "Sheng Qi",
                                           "Yan Ri"};

static mp_queue *q; /* made before the children start, so they both see it */

/* Python: def consumer(q, lis) */
static int consumer(void *arg) {
  (void)arg;
  for (;;) {
    for (int i = 0; i < HEROES; i++) {
      char sword[32];
      int n = (int)mp_queue_get(q, sword, sizeof sword - 1, MP_FOREVER); /* q.get() */
      TRY(n);
      sword[n] = '\0';
      printf("%s took %s\n", heroes[i], sword);
      TRY(mp_queue_task_done(q)); /* q.task_done() */
    }
  }
}

/* Python: def producer(q, name1) */
static int producer(void *arg) {
  (void)arg;
  for (int i = 1; i <= SWORDS; i++) {
    char sword[32];
    int len = snprintf(sword, sizeof sword, "Yue sword No. %d", i);
    TRY(mp_queue_put(q, sword, (size_t)len, MP_FOREVER)); /* q.put(...) */
  }
  TRY(mp_queue_join(q, MP_FOREVER)); /* q.join(): until eight task_done() */
  printf("producer: all %d swords handed out\n", SWORDS);
  return 0;
}

int main(void) {
  /* Each line goes out as soon as it is printed, so the processes' lines
   * show the order in which things happened. Children inherit the setting. */
  setvbuf(stdout, NULL, _IOLBF, 0);

  TRY(mp_joinable_queue_new(0, &q)); /* q = JoinableQueue() */

  mp_process_options daemon = {.daemon = 1}; /* p.daemon = True */
  mp_process *p, *p1;
  TRY(mp_process_new(consumer, NULL, &daemon, &p)); /* Process(target=consumer, ...) */
  TRY(mp_process_new(producer, NULL, NULL, &p1));   /* Process(target=producer, ...) */
  TRY(mp_process_start(p));
  TRY(mp_process_start(p1));

  TRY(mp_process_join(p1, MP_FOREVER)); /* p1.join() */
  int code = -1;
  TRY(mp_process_exitcode(p1, &code));
  TRY(mp_process_free(p1));
  if (code != 0) {
    fprintf(stderr, "the producer failed with exit code %d\n", code);
    return 1;
  }

  /* Here Python's main ends and the daemon is terminated with it. */
  printf("main: the producer has ended; ending the daemon consumer\n");
  TRY(mp_process_terminate(p));
  TRY(mp_process_join(p, MP_FOREVER));
  TRY(mp_process_exitcode(p, &code));
  TRY(mp_process_free(p));
  if (code != -SIGTERM) {
    fprintf(stderr, "the consumer ended with exit code %d, not -SIGTERM\n", code);
    return 1;
  }
  TRY(mp_queue_free(q));
  return 0;
}
