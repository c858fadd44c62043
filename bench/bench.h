/* SPDX-License-Identifier: MIT */
/*
 * Helpers shared by the C benchmark programs, libmp's and the raw OS
 * baselines alike: the clock, shared memory for the harness's own
 * bookkeeping, a start gate, child handling, and the two multi-process
 * protocols (contended counting, set-to-wake latency) so that every
 * implementation of a workload runs exactly the same protocol.
 *
 * Only libc and the futex syscall are used here, so an OS baseline measures
 * the OS and nothing of libmp.
 *
 * Contract of every benchmark program (bench/run relies on it): print the
 * figure, one number in the workload's unit, as the last line of stdout and
 * exit 0; on any failure print a message to stderr and exit non-zero.
 */
#ifndef BENCH_H
#define BENCH_H

#include <errno.h>
#include <limits.h>
#include <sched.h>
#include <linux/futex.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------ basics */

static inline int64_t bench_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

__attribute__((noreturn, format(printf, 1, 2))) static inline void bench_die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "bench: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  exit(1);
}

/* Die with the libmp error text when r < 0 (r is a libmp return code). */
#define BENCH_CHECK_MP(call)                                                                       \
  do {                                                                                             \
    int bench_r_ = (call);                                                                         \
    if (bench_r_ < 0)                                                                              \
      bench_die("%s: %s", #call, mp_strerror(bench_r_));                                           \
  } while (0)

/* Die with strerror when a pthread-style call returns non-zero. */
#define BENCH_CHECK_ERRNO(call)                                                                    \
  do {                                                                                             \
    int bench_r_ = (call);                                                                         \
    if (bench_r_ != 0)                                                                             \
      bench_die("%s: %s", #call, strerror(bench_r_));                                              \
  } while (0)

/* A positive count from argv[i], or fallback when absent. */
static inline long bench_count(int argc, char **argv, int i, long fallback) {
  if (i >= argc)
    return fallback;
  char *end;
  errno = 0;
  long n = strtol(argv[i], &end, 10);
  if (errno || *end || n <= 0)
    bench_die("not a positive count: '%s'", argv[i]);
  return n;
}

/* Print the figure: the program's last line of stdout. */
static inline void bench_result(double figure) {
  printf("%.6g\n", figure);
  fflush(stdout);
}

static inline int bench_cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* The median of n values (sorts them). */
static inline double bench_median(double *v, size_t n) {
  qsort(v, n, sizeof *v, bench_cmp_double);
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* Zeroed memory shared with the children forked afterwards: the harness's own
 * bookkeeping, and the OS baselines' objects. */
static inline void *bench_shared(size_t size) {
  void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED)
    bench_die("mmap %zu bytes: %s", size, strerror(errno));
  return p;
}

/* Fork a child that runs fn(arg, index) and exits with its return value. */
static inline pid_t bench_fork(int (*fn)(void *arg, int index), void *arg, int index) {
  fflush(NULL);
  pid_t pid = fork();
  if (pid < 0)
    bench_die("fork: %s", strerror(errno));
  if (pid == 0)
    _exit(fn(arg, index));
  return pid;
}

/* Wait for a child and die unless it exited with status 0. */
static inline void bench_reap(pid_t pid) {
  int st;
  while (waitpid(pid, &st, 0) < 0)
    if (errno != EINTR)
      bench_die("waitpid: %s", strerror(errno));
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
    bench_die("child %d failed (status 0x%x)", (int)pid, st);
}

/* ------------------------------------------------------------ futex words */

static inline void bench_futex_wait(_Atomic uint32_t *word, uint32_t expected) {
  /* Any return (woken, EAGAIN, EINTR) sends the caller back to its check. */
  syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT, expected, NULL, NULL, 0);
}

static inline void bench_futex_wake(_Atomic uint32_t *word, int n) {
  syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE, n, NULL, NULL, 0);
}

/* ------------------------------------------------------------ start gate */

/* Children arrive and sleep; the parent opens the gate once all arrived, so
 * the measured interval starts with every child ready (not with fork). */
typedef struct bench_gate {
  _Atomic uint32_t ready;
  _Atomic uint32_t go;
} bench_gate;

static inline void bench_gate_arrive(bench_gate *g) {
  atomic_fetch_add(&g->ready, 1);
  while (atomic_load(&g->go) == 0)
    bench_futex_wait(&g->go, 0);
}

/* Wait until n children arrived, open the gate, return the opening time. */
static inline int64_t bench_gate_open(bench_gate *g, uint32_t n) {
  const struct timespec nap = {0, 100000};
  while (atomic_load(&g->ready) < n)
    nanosleep(&nap, NULL);
  int64_t t0 = bench_now_ns();
  atomic_store(&g->go, 1);
  bench_futex_wake(&g->go, INT_MAX);
  return t0;
}

/* ------------------------------------------------------------ lock-contended */

/* A lock, as the contended protocol sees it. The functions are passed as
 * constants, so the compiler can specialise the loop for each lock. */
typedef struct bench_lock_ops {
  void (*lock)(void *ctx);
  void (*unlock)(void *ctx);
  void *ctx;
} bench_lock_ops;

#define BENCH_CONTENDERS 2

typedef struct bench_contended {
  bench_gate gate;
  long iterations;
  bench_lock_ops ops;
  _Alignas(64) long counter; /* protected by the lock under test */
  _Alignas(64) int64_t end_ns[BENCH_CONTENDERS];
} bench_contended;

/* Pin the calling process to the index-th CPU it may run on (modulo their
 * number), so that the contenders run on different CPUs at once. Unpinned, a
 * busy machine lets the scheduler put both on one CPU, where they take the
 * lock in long turns without contention and the throughput jumps two- to
 * three-fold from run to run. */
static inline void bench_pin_nth_cpu(int index) {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) < 0)
    bench_die("sched_getaffinity: %s", strerror(errno));
  int n = CPU_COUNT(&set);
  if (n < 2)
    return;
  for (int c = 0, seen = 0; c < CPU_SETSIZE; c++) {
    if (CPU_ISSET(c, &set) && seen++ == index % n) {
      CPU_ZERO(&set);
      CPU_SET(c, &set);
      if (sched_setaffinity(0, sizeof set, &set) < 0)
        bench_die("sched_setaffinity to CPU %d: %s", c, strerror(errno));
      return;
    }
  }
}

static inline int bench_contender(void *arg, int index) {
  bench_contended *c = arg;
  bench_pin_nth_cpu(index);
  bench_gate_arrive(&c->gate);
  for (long i = 0; i < c->iterations; i++) {
    c->ops.lock(c->ops.ctx);
    c->counter++;
    c->ops.unlock(c->ops.ctx);
  }
  c->end_ns[index] = bench_now_ns();
  return 0;
}

/* BENCH_CONTENDERS processes, each on its own CPU, each make n lock-protected
 * increments of one shared counter; returns the total increments per second, from the opening
 * of the gate to the last contender's end. Checks that no increment was lost. */
static inline double bench_contended_run(bench_lock_ops ops, long n) {
  bench_contended *c = bench_shared(sizeof *c);
  c->iterations = n;
  c->ops = ops;
  pid_t pids[BENCH_CONTENDERS];
  for (int k = 0; k < BENCH_CONTENDERS; k++)
    pids[k] = bench_fork(bench_contender, c, k);
  int64_t t0 = bench_gate_open(&c->gate, BENCH_CONTENDERS);
  for (int k = 0; k < BENCH_CONTENDERS; k++)
    bench_reap(pids[k]);
  int64_t end = 0;
  for (int k = 0; k < BENCH_CONTENDERS; k++)
    end = c->end_ns[k] > end ? c->end_ns[k] : end;
  if (c->counter != BENCH_CONTENDERS * n)
    bench_die("lost increments: counter %ld, expected %ld", c->counter, BENCH_CONTENDERS * n);
  double rate = (double)(BENCH_CONTENDERS * n) / ((double)(end - t0) / 1e9);
  munmap(c, sizeof *c);
  return rate;
}

/* ------------------------------------------------------------ event-wake */

/* An event, as the wake protocol sees it. wait blocks until set. */
typedef struct bench_event_ops {
  void (*wait)(void *ctx);
  void (*set)(void *ctx);
  void (*clear)(void *ctx);
  void *ctx;
} bench_event_ops;

#define BENCH_WAKE_WARMUP 5

/* Pin the calling process (and the children it forks later) to one CPU:
 * $BENCH_WAKE_CPU, or by default the lowest CPU it may run on; "none" leaves
 * the placement to the scheduler. Returns the CPU, or -1 when not pinned.
 *
 * Why: on a VM, waking a process whose CPU went idle costs the hypervisor
 * 10-30 us, and whether the scheduler puts the waiter there or beside the
 * setter changes from run to run, so unpinned figures jump between two modes.
 * On one CPU the figure is the cost of the event itself: the set, the wake
 * system call and the switch to the waiter. */
static inline int bench_pin_wake_cpu(void) {
  const char *env = getenv("BENCH_WAKE_CPU");
  if (env && !strcmp(env, "none"))
    return -1;
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) < 0)
    bench_die("sched_getaffinity: %s", strerror(errno));
  int cpu = -1;
  if (env && *env) {
    char *end;
    long c = strtol(env, &end, 10);
    cpu = *end || c < 0 || c >= CPU_SETSIZE ? -1 : (int)c;
  } else {
    for (int c = 0; c < CPU_SETSIZE && cpu < 0; c++)
      if (CPU_ISSET(c, &set))
        cpu = c;
  }
  if (cpu < 0)
    bench_die("BENCH_WAKE_CPU: bad CPU '%s'", env ? env : "");
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  if (sched_setaffinity(0, sizeof set, &set) < 0)
    bench_die("sched_setaffinity to CPU %d: %s", cpu, strerror(errno));
  return cpu;
}

typedef struct bench_wake {
  bench_event_ops ops;
  long rounds;
  _Alignas(64) _Atomic uint32_t ready; /* rounds the waiter is ready for */
  _Alignas(64) _Atomic int64_t set_ns; /* the setter's timestamp of this round */
  double latency_us[];                 /* one per round, written by the waiter */
} bench_wake;

static inline int bench_waiter(void *arg, int index) {
  (void)index;
  bench_wake *w = arg;
  for (long i = 0; i < w->rounds; i++) {
    w->ops.clear(w->ops.ctx);
    atomic_store(&w->ready, (uint32_t)(i + 1));
    w->ops.wait(w->ops.ctx);
    int64_t now = bench_now_ns();
    w->latency_us[i] = (double)(now - atomic_load(&w->set_ns)) / 1e3;
  }
  return 0;
}

/* Set-to-wake latency between two processes, in microseconds, the median of
 * the rounds after a short warm-up. Each round the waiter clears the event,
 * says it is ready and blocks; the setter waits ~1 ms so that the waiter has
 * settled asleep in the kernel, takes a CLOCK_MONOTONIC timestamp and sets
 * the event; the waiter takes its timestamp when it wakes. Both processes
 * share one CPU (see bench_pin_wake_cpu). */
static inline double bench_wake_run(bench_event_ops ops, long rounds) {
  rounds += BENCH_WAKE_WARMUP;
  size_t size = sizeof(bench_wake) + (size_t)rounds * sizeof(double);
  bench_wake *w = bench_shared(size);
  w->ops = ops;
  w->rounds = rounds;
  bench_pin_wake_cpu();
  pid_t pid = bench_fork(bench_waiter, w, 0);
  const struct timespec poll_nap = {0, 20000}, settle = {0, 1000000};
  for (long i = 0; i < rounds; i++) {
    while (atomic_load(&w->ready) != (uint32_t)(i + 1))
      nanosleep(&poll_nap, NULL);
    nanosleep(&settle, NULL);
    atomic_store(&w->set_ns, bench_now_ns());
    ops.set(ops.ctx);
  }
  bench_reap(pid);
  double median =
      bench_median(w->latency_us + BENCH_WAKE_WARMUP, (size_t)(rounds - BENCH_WAKE_WARMUP));
  munmap(w, size);
  return median;
}

#endif /* BENCH_H */
