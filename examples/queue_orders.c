/* SPDX-License-Identifier: MIT */
/*
 * Three queue orders side by side: FIFO, LIFO and priority.
 *
 * Python's queue module offers three orders: queue.Queue (first in, first
 * out), queue.LifoQueue (last in, first out: a stack) and queue.PriorityQueue
 * (the lowest priority first; items are usually (priority, data) tuples).
 * Those three serve threads of one process; multiprocessing.Queue is FIFO
 * only.
 *
 * libmp has all three for processes: mp_queue_new() (FIFO),
 * mp_lifo_queue_new() and mp_priority_queue_new(), with
 * mp_queue_put_priority() to give each item its priority (equal priorities
 * come out first in, first out). Here a child puts the same five tasks into
 * each of the three queues; the parent joins it and empties each queue,
 * printing the order the tasks come out in.
 */
#include <mp.h>
#include <stdio.h>
#include <string.h>

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

/* The tasks, in the order they are put, with their priorities. */
static const struct {
  const char *name;
  int priority;
} tasks[] = {{"eat", 3}, {"code", 1}, {"sleep", 5}, {"test", 1}, {"ship", 2}};
enum { NTASKS = sizeof tasks / sizeof tasks[0] };

/* The three queues, made before the child starts so that it sees them. */
static mp_queue *fifo, *lifo, *prio;

static int put_tasks(void *arg) {
  (void)arg;
  for (int i = 0; i < NTASKS; i++) {
    const char *name = tasks[i].name;
    TRY(mp_queue_put(fifo, name, strlen(name), MP_FOREVER)); /* Queue().put(name) */
    TRY(mp_queue_put(lifo, name, strlen(name), MP_FOREVER)); /* LifoQueue().put(name) */
    /* PriorityQueue().put((priority, name)) */
    TRY(mp_queue_put_priority(prio, tasks[i].priority, name, strlen(name), MP_FOREVER));
  }
  return 0;
}

/* Get every task from q and print them on one line after `label`; stop unless
 * they come in the order `want` (space-separated). */
static int drain(const char *label, mp_queue *q, const char *want) {
  char line[128] = "";
  for (int i = 0; i < NTASKS; i++) {
    char name[16];
    int n = (int)mp_queue_get(q, name, sizeof name - 1, MP_NOWAIT); /* get_nowait() */
    TRY(n);
    name[n] = '\0';
    if (i)
      strcat(line, " ");
    strcat(line, name);
  }
  int empty = mp_queue_empty(q);
  TRY(empty);
  printf("%-9s %s\n", label, line);
  if (strcmp(line, want) != 0 || !empty) {
    fprintf(stderr, "%s: expected \"%s\" and then nothing\n", label, want);
    return 1;
  }
  return 0;
}

int main(void) {
  TRY(mp_queue_new(0, NULL, &fifo));    /* Queue() */
  TRY(mp_lifo_queue_new(0, &lifo));     /* LifoQueue() */
  TRY(mp_priority_queue_new(0, &prio)); /* PriorityQueue() */

  printf("put in this order:");
  for (int i = 0; i < NTASKS; i++)
    printf(" %s(%d)", tasks[i].name, tasks[i].priority);
  printf("\n");

  mp_process *p;
  TRY(mp_process_new(put_tasks, NULL, NULL, &p));
  TRY(mp_process_start(p));
  TRY(mp_process_join(p, MP_FOREVER)); /* after this, every task is in */
  int code = -1;
  TRY(mp_process_exitcode(p, &code));
  TRY(mp_process_free(p));
  if (code != 0) {
    fprintf(stderr, "the child failed with exit code %d\n", code);
    return 1;
  }

  if (drain("FIFO:", fifo, "eat code sleep test ship") ||
      drain("LIFO:", lifo, "ship test sleep code eat") ||
      drain("priority:", prio, "code test ship eat sleep"))
    return 1;

  TRY(mp_queue_free(fifo));
  TRY(mp_queue_free(lifo));
  TRY(mp_queue_free(prio));
  return 0;
}
