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
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
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

/* Fork a child that runs fn(arg, index) and exits with its return value. The
 * child dies with the parent, so that a run the harness kills (timeout), or
 * whose parent dies on a failed check, leaves no child blocked forever. */
static inline pid_t bench_fork(int (*fn)(void *arg, int index), void *arg, int index) {
  fflush(NULL);
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0)
    bench_die("fork: %s", strerror(errno));
  if (pid == 0) {
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
      _exit(1);
    _exit(fn(arg, index));
  }
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

/* ------------------------------------------------------------ messages */

/*
 * The message workloads (queue-*, pipe-pingpong) move messages of one length
 * (at least 8 bytes) through a channel, and the receiver checks every one, so
 * that a broken channel fails instead of posting a figure:
 *
 *   bytes [0, 8)            the stamp: producer << 56 | sequence number
 *   bytes [8, len - 8)      a pseudo-random pattern, one of BENCH_VARIANTS
 *                           chosen by the sequence number's low bits
 *   bytes [len - 8, len)    ~stamp (messages of 16 bytes or more)
 *
 * The stamp gives the count and the order, the stamp at both ends catches a
 * torn message. The middle is compared whole for messages up to 64 bytes, and
 * for every BENCH_FULL_CHECK-th message above that, with the receive buffer
 * poisoned before that receive, so a channel that leaves out bytes fails; the
 * other messages of a large size are checked by their two stamps only, so
 * that the check does not cost as much as the copy measured.
 *
 * The sender stamps the pattern in place (its own copy, made before the fork),
 * so making a message costs two stores and no copy.
 */

#define BENCH_VARIANTS 4
#define BENCH_FULL_CHECK 32
#define BENCH_SEQ_MASK (((uint64_t)1 << 56) - 1)
/* The producer number of the end marker that stops an mpmc consumer or the
 * ponger. */
#define BENCH_END_MARK ((uint64_t)0xff)

static inline uint64_t bench_stamp(uint64_t producer, uint64_t seq) {
  return producer << 56 | (seq & BENCH_SEQ_MASK);
}

/* A channel, as the message protocols see it: put(tx, ...) sends one whole
 * message, get(rx, ...) receives one into buf (cap bytes) and returns its
 * length. Both block until done and die on any error. tx and rx are the
 * sending and the receiving end (the same object for a queue; the two ends of
 * a pipe). The functions are passed as constants, so the compiler can
 * specialise the loops for each channel. */
typedef struct bench_chan {
  void (*put)(void *tx, const void *msg, size_t len);
  size_t (*get)(void *rx, void *buf, size_t cap);
  void *tx, *rx;
} bench_chan;

typedef struct bench_msgs {
  size_t len;
  unsigned char *pat[BENCH_VARIANTS]; /* the patterns, stamped in place when sent */
  unsigned char *rx;                  /* the receive buffer */
  long received;
} bench_msgs;

static inline void *bench_alloc(size_t size) {
  void *p = aligned_alloc(64, (size + 63) & ~(size_t)63);
  if (!p)
    bench_die("out of memory (%zu bytes)", size);
  return p;
}

/* Make the patterns for messages of len bytes (before the fork: every process
 * of the workload gets the same ones). */
static inline void bench_msgs_init(bench_msgs *m, size_t len) {
  if (len < 8)
    bench_die("messages must have at least 8 bytes, not %zu", len);
  m->len = len;
  m->received = 0;
  for (int v = 0; v < BENCH_VARIANTS; v++) {
    m->pat[v] = bench_alloc(len);
    uint64_t x = 0x9e3779b97f4a7c15u * (uint64_t)(v + 1);
    for (size_t i = 0; i < len; i += 8) {
      x ^= x << 13; /* xorshift64 */
      x ^= x >> 7;
      x ^= x << 17;
      memcpy(m->pat[v] + i, &x, len - i < 8 ? len - i : 8);
    }
  }
  m->rx = bench_alloc(len);
  memset(m->rx, 0, len);
}

/* The message with this stamp, ready to send (valid until the next call with
 * the same variant). */
static inline const void *bench_msg_make(bench_msgs *m, uint64_t stamp) {
  unsigned char *p = m->pat[stamp % BENCH_VARIANTS];
  memcpy(p, &stamp, 8);
  if (m->len >= 16) {
    uint64_t tail = ~stamp;
    memcpy(p + m->len - 8, &tail, 8);
  }
  return p;
}

/* Receive one message from ch into m->rx, check it, return its stamp. */
static inline uint64_t bench_msg_take(bench_msgs *m, bench_chan ch) {
  size_t len = m->len;
  int full = len <= 64 || m->received % BENCH_FULL_CHECK == 0;
  if (full && len > 64)
    memset(m->rx, 0xa5, len);
  size_t got = ch.get(ch.rx, m->rx, len);
  m->received++;
  if (got != len)
    bench_die("message %ld: %zu bytes, expected %zu", m->received, got, len);
  uint64_t stamp;
  memcpy(&stamp, m->rx, 8);
  if (len >= 16) {
    uint64_t tail;
    memcpy(&tail, m->rx + len - 8, 8);
    if (tail != ~stamp)
      bench_die("message %ld: torn (head stamp %#llx, tail stamp %#llx)", m->received,
                (unsigned long long)stamp, (unsigned long long)~tail);
  }
  if (full && len > 16 && memcmp(m->rx + 8, m->pat[stamp % BENCH_VARIANTS] + 8, len - 16))
    bench_die("message %ld (stamp %#llx): corrupt contents", m->received,
              (unsigned long long)stamp);
  return stamp;
}

static inline void bench_expect(uint64_t got, uint64_t want, const char *what) {
  if (got != want)
    bench_die("%s: got stamp %#llx (producer %llu, seq %llu), expected %#llx", what,
              (unsigned long long)got, (unsigned long long)(got >> 56),
              (unsigned long long)(got & BENCH_SEQ_MASK), (unsigned long long)want);
}

/* Warm-up messages or round trips: a tenth of the measured ones, at least 10. */
static inline long bench_warmup(long n) { return n / 10 > 10 ? n / 10 : 10; }

/* ------------------------------------------------------------ one to one */

typedef struct bench_stream_arg {
  bench_chan ch;
  bench_msgs *m;
  long total;
} bench_stream_arg;

static inline int bench_stream_producer(void *arg, int index) {
  bench_stream_arg *a = arg;
  bench_pin_nth_cpu(index);
  for (long i = 0; i < a->total; i++)
    a->ch.put(a->ch.tx, bench_msg_make(a->m, bench_stamp(0, (uint64_t)i)), a->m->len);
  return 0;
}

/* One producer process sends warm-up + n messages of len bytes through ch;
 * the consumer (this process) checks each and times the last n, from the
 * receipt of the last warm-up message to the receipt of the last one.
 * Returns messages per second. The two run on different CPUs (pinned, as
 * bench_pin_nth_cpu tells why; the channels that spin before they sleep are
 * meant for that). */
static inline double bench_stream_run(bench_chan ch, size_t len, long n) {
  bench_msgs m;
  bench_msgs_init(&m, len);
  long warm = bench_warmup(n);
  bench_stream_arg a = {ch, &m, warm + n};
  pid_t pid = bench_fork(bench_stream_producer, &a, 0);
  bench_pin_nth_cpu(1);
  int64_t t0 = 0;
  for (long i = 0; i < warm + n; i++) {
    if (i == warm)
      t0 = bench_now_ns();
    bench_expect(bench_msg_take(&m, ch), bench_stamp(0, (uint64_t)i), "out of order");
  }
  int64_t t1 = bench_now_ns();
  bench_reap(pid);
  return (double)n / ((double)(t1 - t0) / 1e9);
}

/* ------------------------------------------------------------ many to many */

#define BENCH_MPMC_SIDES 2 /* producers, and consumers, of the queue-mpmc rows */
#define BENCH_MPMC_MAX 8   /* the most of each that bench_mpmc_run_k() takes */

typedef struct bench_mpmc_tally {
  _Alignas(64) long count[BENCH_MPMC_MAX]; /* messages of each producer */
  uint64_t sum[BENCH_MPMC_MAX];            /* and the sums of their seq and seq^2 */
  uint64_t sumsq[BENCH_MPMC_MAX];
  int64_t end_ns; /* the receipt of this consumer's last message */
} bench_mpmc_tally;

typedef struct bench_mpmc {
  bench_gate gate;
  bench_chan ch;
  bench_msgs *m;
  long per_producer;
  int sides;
  _Atomic uint32_t producers_done;
  bench_mpmc_tally tally[BENCH_MPMC_MAX];
} bench_mpmc;

static inline int bench_mpmc_producer(void *arg, int index) {
  bench_mpmc *s = arg;
  bench_pin_nth_cpu(index);
  bench_gate_arrive(&s->gate);
  for (long i = 0; i < s->per_producer; i++)
    s->ch.put(s->ch.tx, bench_msg_make(s->m, bench_stamp((uint64_t)index, (uint64_t)i)), s->m->len);
  return 0;
}

static inline int bench_mpmc_consumer(void *arg, int index) {
  bench_mpmc *s = arg;
  bench_mpmc_tally *t = &s->tally[index];
  long next[BENCH_MPMC_MAX] = {0}; /* the lowest seq still possible from each producer */
  bench_pin_nth_cpu(index + (s->sides == 1)); /* one pair: on two CPUs, as one-to-one */
  bench_gate_arrive(&s->gate);
  for (;;) {
    uint64_t stamp = bench_msg_take(s->m, s->ch);
    uint64_t p = stamp >> 56, seq = stamp & BENCH_SEQ_MASK;
    if (p == BENCH_END_MARK)
      break;
    if (p >= (uint64_t)s->sides || seq < (uint64_t)next[p] || seq >= (uint64_t)s->per_producer)
      bench_die("consumer %d: stamp %#llx out of order or unknown", index,
                (unsigned long long)stamp);
    next[p] = (long)seq + 1;
    t->count[p]++;
    t->sum[p] += seq;
    t->sumsq[p] += seq * seq;
    t->end_ns = bench_now_ns();
  }
  return 0;
}

/* `sides` producers and as many consumers share ch (bench_mpmc_run: two of
 * each); each producer sends n / sides messages; after the producers end, one end marker
 * per consumer stops them. Producer k and consumer k run on the k-th CPU (modulo the CPUs), but a single
 * consumer runs on the second CPU, so that one pair does not share one.
 * Returns messages per second from the opening of the start gate to the last
 * message received. Checks that each consumer saw each producer's messages in
 * order and that every message arrived exactly once (count, sum, sum of
 * squares of the sequence numbers). */
static inline double bench_mpmc_run_k(bench_chan ch, size_t len, long n, int sides) {
  if (sides < 1 || sides > BENCH_MPMC_MAX)
    bench_die("1 to %d producers and consumers, not %d", BENCH_MPMC_MAX, sides);
  bench_msgs m;
  bench_msgs_init(&m, len);
  bench_mpmc *s = bench_shared(sizeof *s);
  s->ch = ch;
  s->m = &m;
  s->per_producer = n / sides;
  s->sides = sides;
  pid_t prod[BENCH_MPMC_MAX], cons[BENCH_MPMC_MAX];
  for (int k = 0; k < sides; k++) {
    cons[k] = bench_fork(bench_mpmc_consumer, s, k);
    prod[k] = bench_fork(bench_mpmc_producer, s, k);
  }
  int64_t t0 = bench_gate_open(&s->gate, 2 * sides);
  for (int k = 0; k < sides; k++)
    bench_reap(prod[k]);
  for (int k = 0; k < sides; k++)
    ch.put(ch.tx, bench_msg_make(&m, bench_stamp(BENCH_END_MARK, 0)), len);
  for (int k = 0; k < sides; k++)
    bench_reap(cons[k]);
  int64_t end = 0;
  uint64_t pn = (uint64_t)s->per_producer;
  for (int p = 0; p < sides; p++) {
    long count = 0;
    uint64_t sum = 0, sumsq = 0;
    for (int k = 0; k < sides; k++) {
      count += s->tally[k].count[p];
      sum += s->tally[k].sum[p];
      sumsq += s->tally[k].sumsq[p];
    }
    /* 0 + 1 + ... + (pn - 1), and the same of the squares, modulo 2^64 */
    uint64_t want_sum = pn * (pn - 1) / 2;
    uint64_t want_sumsq = 0;
    for (uint64_t i = 0; i < pn; i++)
      want_sumsq += i * i;
    if (count != s->per_producer || sum != want_sum || sumsq != want_sumsq)
      bench_die("producer %d: %ld messages arrived (expected %ld) or some twice", p, count,
                s->per_producer);
  }
  for (int k = 0; k < sides; k++)
    end = s->tally[k].end_ns > end ? s->tally[k].end_ns : end;
  munmap(s, sizeof *s);
  return (double)(pn * sides) / ((double)(end - t0) / 1e9);
}

static inline double bench_mpmc_run(bench_chan ch, size_t len, long n) {
  return bench_mpmc_run_k(ch, len, n, BENCH_MPMC_SIDES);
}

/* ------------------------------------------------------------ ping-pong */

/* A ping-pong run stops measuring after this long even if the round trips
 * asked for are not done (the figure is the mean of those done): a channel
 * that falls back to sleeping on every message must not hold up the whole
 * bench. */
#define BENCH_PINGPONG_CAP_NS ((int64_t)2000000000)

typedef struct bench_pingpong_arg {
  bench_chan there, back;
  bench_msgs *m;
} bench_pingpong_arg;

/* Answer each ping i with pong i, until the end marker. */
static inline int bench_ponger(void *arg, int index) {
  bench_pingpong_arg *a = arg;
  bench_pin_nth_cpu(index);
  for (long i = 0;; i++) {
    uint64_t stamp = bench_msg_take(a->m, a->there);
    if (stamp >> 56 == BENCH_END_MARK)
      return 0;
    bench_expect(stamp, bench_stamp(0, (uint64_t)i), "ping");
    a->back.put(a->back.tx, bench_msg_make(a->m, bench_stamp(1, (uint64_t)i)), a->m->len);
  }
}

/* Round trips of a len-byte message: this process sends ping i through
 * `there`, a child on the other CPU checks it and answers pong i through
 * `back`, which this process checks. Returns the mean round trip of the n
 * after the warm-up (or of those done within BENCH_PINGPONG_CAP_NS), in
 * microseconds. */
static inline double bench_pingpong_run(bench_chan there, bench_chan back, size_t len, long n) {
  bench_msgs m;
  bench_msgs_init(&m, len);
  long warm = bench_warmup(n), i;
  bench_pingpong_arg a = {there, back, &m};
  pid_t pid = bench_fork(bench_ponger, &a, 1);
  bench_pin_nth_cpu(0);
  int64_t t0 = 0, t1 = 0;
  for (i = 0; i < warm + n; i++) {
    if (i == warm) {
      t0 = bench_now_ns();
    } else if (i > warm && i % 64 == 0) {
      t1 = bench_now_ns();
      if (t1 - t0 > BENCH_PINGPONG_CAP_NS)
        break;
    }
    there.put(there.tx, bench_msg_make(&m, bench_stamp(0, (uint64_t)i)), len);
    bench_expect(bench_msg_take(&m, back), bench_stamp(1, (uint64_t)i), "pong");
  }
  if (i == warm + n)
    t1 = bench_now_ns();
  there.put(there.tx, bench_msg_make(&m, bench_stamp(BENCH_END_MARK, 0)), len);
  bench_reap(pid);
  return (double)(t1 - t0) / 1e3 / (double)(i - warm);
}

#endif /* BENCH_H */
