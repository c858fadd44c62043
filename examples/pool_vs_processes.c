/* SPDX-License-Identifier: MIT */
/*
 * The same 500 small tasks, one process each versus Pool(4).map.
 *
 * The Python original first makes p = Pool(4). It then times the tasks
 * without the pool: 500 Process(target=fun, args=(i,)) all started, then all
 * joined. Then it times p.map(fun, range(500)) alone, the pool already made.
 * It prints both times: the pool is far faster, because its 4 processes exist
 * already and take task after task, while the first way forks and reaps 500
 * processes.
 *
 * The C twin does the same with mp_process and mp_pool_map(). Each process
 * also writes fun(i) into an array in libmp's shared heap, so that the parent
 * can check that both ways computed the same results.
 */
#include <mp.h>
#include <stdio.h>
#include <time.h>

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

enum { N = 500 };

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* Python: def fun(i): sum = 0; for j in range(5): sum += i */
static long fun(int i) {
  long sum = 0;
  for (int j = 0; j < 5; j++)
    sum += i;
  return sum;
}

/* Without the pool: process i writes its result here (shared memory). */
static long *by_processes;
static int process_task(void *arg) {
  int i = (int)(long)arg;
  by_processes[i] = fun(i);
  return 0;
}

/* With the pool: map gives each item and collects each result. */
static int pool_task(const void *item, void *result, void *ctx) {
  (void)ctx;
  *(long *)result = fun(*(const int *)item);
  return 0;
}

int main(void) {
  by_processes = mp_heap_calloc(N, sizeof(long));
  if (!by_processes)
    return 1;
  mp_pool *p;
  TRY(mp_pool_new(4, NULL, &p)); /* p = Pool(4) */

  mp_process *l1[N];
  double start = now();
  for (int i = 0; i < N; i++) { /* 500 processes, all started... */
    TRY(mp_process_new(process_task, (void *)(long)i, NULL, &l1[i]));
    TRY(mp_process_start(l1[i]));
  }
  for (int i = 0; i < N; i++) { /* ...then all joined */
    TRY(mp_process_join(l1[i], MP_FOREVER));
    TRY(mp_process_free(l1[i]));
  }
  printf("without a pool, 500 processes: %.4f s\n", now() - start);

  int items[N]; /* range(500) */
  long by_pool[N];
  for (int i = 0; i < N; i++)
    items[i] = i;
  start = now();
  TRY(mp_pool_map(p, pool_task, NULL, items, N, sizeof(int), by_pool, sizeof(long), 0));
  printf("with Pool(4).map:              %.4f s\n", now() - start);

  int same = 1;
  for (int i = 0; i < N; i++)
    same &= by_pool[i] == by_processes[i] && by_pool[i] == 5L * i;
  printf("same results: %s\n", same ? "yes" : "no");
  TRY(mp_pool_free(p));
  mp_heap_free(by_processes);
  return same ? 0 : 1;
}
