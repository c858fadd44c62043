/* SPDX-License-Identifier: MIT */
/*
 * Queue(maxsize=5): a producer fills it, a consumer drains it, qsize() counts.
 *
 * The Python original makes qu = Queue(maxsize=5) and two processes, run one
 * after the other (each is joined before the next starts):
 *   - "producer-1" goes through a list of ten random numbers from 1 to 100;
 *     for each even one it stops with "queue is full" if q.full(), and
 *     otherwise puts it and prints that it did;
 *   - "consumer-1" gets and prints items while not q.empty().
 * At the end the parent prints qu.qsize(): 0.
 *
 * The C twin: mp_queue_new(5, ...) is Queue(maxsize=5); mp_queue_full(),
 * mp_queue_empty() and mp_queue_qsize() are full(), empty() and qsize(). The
 * process names come from the `name` option, and each process reads its own
 * with mp_process_current() and mp_process_name() (Python's
 * current_process().name). The ten numbers are fixed rather than random, so
 * the output is always the same; six of them are even, one more than fits.
 * The parent also prints qsize() between the two children: 5.
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

/* Python: [random.randint(1, 100) for i in range(0, 10)], fixed here. */
static const int numbers[10] = {12, 7, 40, 33, 58, 2, 91, 64, 18, 25};

/* This process's name (Python's current_process().name), or NULL. */
static const char *my_name(void) {
  mp_process *me;
  const char *name;
  if (mp_process_current(&me) < 0 || mp_process_name(me, &name) < 0)
    return NULL;
  return name;
}

/* Python: def producer(numbers, q) */
static int producer(void *arg) {
  mp_queue *q = arg;
  const char *name = my_name();
  if (!name)
    return 1;
  for (int i = 0; i < 10; i++) {
    int x = numbers[i];
    if (x % 2 != 0)
      continue;
    int full = mp_queue_full(q); /* if q.full(): */
    TRY(full);
    if (full) {
      printf("queue is full\n");
      break;
    }
    TRY(mp_queue_put(q, &x, sizeof x, MP_FOREVER)); /* q.put(x) */
    printf("put %d in queue by %s\n", x, name);
  }
  return 0;
}

/* Python: def consumer(q) */
static int consumer(void *arg) {
  mp_queue *q = arg;
  const char *name = my_name();
  if (!name)
    return 1;
  for (;;) {
    int empty = mp_queue_empty(q); /* while not q.empty(): */
    TRY(empty);
    if (empty)
      return 0;
    int x;
    int n = (int)mp_queue_get(q, &x, sizeof x, MP_FOREVER); /* q.get() */
    TRY(n);
    printf("take data %d from queue by %s\n", x, name);
  }
}

/* Start a named child, wait for it, free its handle; fail unless it exited
 * with 0. */
static int run(mp_process_target target, mp_queue *q, const char *name) {
  mp_process_options opts = {.name = name};
  mp_process *p;
  TRY(mp_process_new(target, q, &opts, &p)); /* Process(name=..., target=..., args=...) */
  TRY(mp_process_start(p));
  TRY(mp_process_join(p, MP_FOREVER));
  int code = -1;
  TRY(mp_process_exitcode(p, &code));
  TRY(mp_process_free(p));
  if (code != 0) {
    fprintf(stderr, "%s failed with exit code %d\n", name, code);
    return 1;
  }
  return 0;
}

int main(void) {
  mp_queue *qu;
  TRY(mp_queue_new(5, NULL, &qu)); /* qu = Queue(maxsize=5) */

  if (run(producer, qu, "producer-1"))
    return 1;
  ssize_t size = mp_queue_qsize(qu);
  TRY(size);
  printf("qsize() after the producer: %zd\n", size);
  if (size != 5)
    return 1;

  if (run(consumer, qu, "consumer-1"))
    return 1;
  size = mp_queue_qsize(qu);
  TRY(size);
  printf("qsize() after the consumer: %zd\n", size); /* print(qu.qsize()) */

  TRY(mp_queue_free(qu));
  return size != 0;
}
