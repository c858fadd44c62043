/* SPDX-License-Identifier: MIT */
/*
 * Queues under SIGKILL: in each round two producers and two consumers run on
 * one long-lived queue, putting and getting numbered, checksummed messages of
 * random sizes (some several times the ring); one of the four is killed at a
 * random moment; the survivors go on, then drain the queue, and then each live
 * consumer gets a stop message. 200 rounds on a FIFO queue, 50 on a priority
 * queue and 50 on a LIFO queue. After every round
 * the parent checks that:
 *   - no consumer ever got a torn, foreign or duplicated message, and each saw
 *     every producer's messages in order (FIFO queues);
 *   - every message whose put returned 0 was delivered exactly once, except
 *     the one a killed consumer may have taken with it;
 *   - nothing a producer never finished putting was delivered;
 *   - the queue is empty, and still works for the next round.
 *
 * Honest accounting of a killed consumer. A consumer gets into a buffer in the
 * shared heap and logs each message after its get returns. Killed between the
 * queue's commit and its log entry, it took a message nobody else will see.
 * libmp copies a message (for a streamed one, its first chunk, which holds the
 * header) into the caller's buffer before committing, so in that case the
 * dead consumer's buffer starts with the header of exactly that message. A
 * message missing from every log is excused only when it is the one named by
 * a killed consumer's buffer, and at most one per killed consumer. A killed
 * producer's last message (put in progress, or returned but not yet counted)
 * may or may not be delivered; nothing after it may.
 *
 * QUEUE_CRASH_SEED and QUEUE_CRASH_ROUNDS in the environment replay a run.
 */
#include "crashutil.h"
#include "internal.h"
#include "testutil.h"

#include <mp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

#define NPROD 2
#define NCONS 2
#define MAXSEQ 20000 /* messages one producer puts in one round, at most */
#define BIGMAX 20000
#define RING 4096
#define MSG_MIN 16

static uint32_t mix(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

static uint32_t hdr_check(uint32_t prod, uint32_t seq, uint32_t len) {
  return mix(prod * 0x9e3779b9U ^ seq ^ len);
}

static void msg_fill(unsigned char *b, uint32_t prod, uint32_t seq, size_t len) {
  uint32_t h[4] = {prod, seq, (uint32_t)len, hdr_check(prod, seq, (uint32_t)len)};
  memcpy(b, h, sizeof h);
  uint32_t k = mix(h[3]);
  for (size_t i = MSG_MIN; i < len; i++)
    b[i] = (unsigned char)(k + i * 131 + (i >> 8));
}

/* A message's header alone is intact: its producer and sequence. */
static int hdr_ok(const unsigned char *b, uint32_t *prod, uint32_t *seq) {
  uint32_t h[4];
  memcpy(h, b, sizeof h);
  if (h[2] < MSG_MIN || h[2] > BIGMAX || h[3] != hdr_check(h[0], h[1], h[2]))
    return 0;
  *prod = h[0];
  *seq = h[1];
  return 1;
}

static int msg_ok(const unsigned char *b, size_t len, uint32_t *prod, uint32_t *seq) {
  if (len < MSG_MIN || !hdr_ok(b, prod, seq))
    return 0;
  uint32_t h[4];
  memcpy(h, b, sizeof h);
  if (h[2] != len)
    return 0;
  uint32_t k = mix(h[3]);
  for (size_t i = MSG_MIN; i < len; i++)
    if (b[i] != (unsigned char)(k + i * 131 + (i >> 8)))
      return 0;
  return 1;
}

static size_t msg_size(uint32_t *rs) {
  uint32_t r = (uint32_t)rand_r(rs) % 100;
  if (r < 65)
    return MSG_MIN + (size_t)rand_r(rs) % 200;
  if (r < 88)
    return 200 + (size_t)rand_r(rs) % 2800;
  return RING + (size_t)rand_r(rs) % (BIGMAX - RING); /* streamed through the ring */
}

/* Everything the children share with the parent, in the family heap. */
struct round {
  mp_queue *q;
  int order;
  uint32_t round_id;
  uint32_t seed;
  _Atomic int stop;               /* producers: stop putting */
  _Atomic int failed;             /* a child saw something wrong (line number) */
  _Atomic uint32_t put_ok[NPROD]; /* puts that returned 0 */
  _Atomic uint32_t got_n[NCONS];
  uint64_t got[NCONS][NPROD * MAXSEQ + 16];
  unsigned char *buf[NCONS]; /* each consumer's receive buffer, in the heap */
  _Atomic int running;
};

#define FAIL(r) atomic_compare_exchange_strong(&(r)->failed, &(int){0}, __LINE__)

static int producer(struct round *r, int idx) {
  uint32_t rs = r->seed ^ mix(r->round_id * 8 + (uint32_t)idx + 1);
  unsigned char *m = malloc(BIGMAX);
  if (!m)
    return 1;
  uint32_t id = r->round_id * NPROD + (uint32_t)idx;
  atomic_fetch_add(&r->running, 1);
  for (uint32_t seq = 0; seq < MAXSEQ && !atomic_load(&r->stop); seq++) {
    size_t len = msg_size(&rs);
    msg_fill(m, id, seq, len);
    int e = r->order == MP_QUEUE_PRIORITY
                ? mp_queue_put_priority(r->q, (int64_t)(rand_r(&rs) % 5), m, len, 10)
                : mp_queue_put(r->q, m, len, 10);
    if (e != 0) {
      fprintf(stderr, "producer %d: put gave %d (%s)\n", idx, e, mp_strerror(e));
      FAIL(r);
      return 2;
    }
    atomic_store(&r->put_ok[idx], seq + 1);
  }
  free(m);
  return 0;
}

static int consumer(struct round *r, int idx) {
  unsigned char *b = r->buf[idx];
  atomic_fetch_add(&r->running, 1);
  for (;;) {
    ssize_t n = mp_queue_get(r->q, b, BIGMAX, 10);
    if (n == 4 && memcmp(b, "STOP", 4) == 0)
      return 0;
    uint32_t p, s;
    if (n < 0 || !msg_ok(b, (size_t)n, &p, &s)) {
      fprintf(stderr, "consumer %d: get gave %zd (%s)%s\n", idx, n, mp_strerror((int)n),
              n >= 0 ? ", a torn message" : "");
      FAIL(r);
      return 3;
    }
    uint32_t k = atomic_load(&r->got_n[idx]);
    r->got[idx][k] = (uint64_t)p << 32 | s;
    atomic_store(&r->got_n[idx], k + 1);
  }
}

struct child {
  struct round *r;
  int idx;
};

static int producer_main(void *p) {
  struct child *c = p;
  return producer(c->r, c->idx);
}

static int consumer_main(void *p) {
  struct child *c = p;
  return consumer(c->r, c->idx);
}

static uint32_t env_u32(const char *name, uint32_t dflt) {
  const char *v = getenv(name);
  return v && *v ? (uint32_t)strtoul(v, NULL, 0) : dflt;
}

/* What the rounds did, for the summary line. */
static struct {
  uint32_t killed_producers, killed_consumers, finished_first, excused;
  uint64_t delivered;
} stats;

/* Run one round on queue q; returns after all checks. */
static void run_round(mp_queue *q, int order, uint32_t round_id, uint32_t seed) {
  struct round *r = mp_heap_calloc(1, sizeof *r);
  assert_non_null(r);
  r->q = q;
  r->order = order;
  r->round_id = round_id;
  r->seed = seed;
  for (int i = 0; i < NCONS; i++) {
    r->buf[i] = mp_heap_alloc(BIGMAX);
    assert_non_null(r->buf[i]);
    memset(r->buf[i], 0, BIGMAX);
  }
  uint32_t rs = seed ^ mix(round_id);
  struct child args[NPROD + NCONS];
  pid_t pids[NPROD + NCONS];
  for (int i = 0; i < NCONS; i++) {
    args[i] = (struct child){r, i};
    pids[i] = tu_fork(consumer_main, &args[i], 60);
    assert_true(pids[i] > 0);
  }
  for (int i = 0; i < NPROD; i++) {
    args[NCONS + i] = (struct child){r, i};
    pids[NCONS + i] = tu_fork(producer_main, &args[NCONS + i], 60);
    assert_true(pids[NCONS + i] > 0);
  }
  while (atomic_load(&r->running) < NPROD + NCONS)
    tu_sleep(0.0002);
  /* Kill one of them at a random moment. */
  int victim = (int)(rand_r(&rs) % (NPROD + NCONS));
  tu_sleep((double)(rand_r(&rs) % 40000) * 1e-6);
  kill(pids[victim], SIGKILL);
  int victim_status = tu_wait(pids[victim]);
  /* The survivors go on for a while, then the producers stop. */
  tu_sleep(0.005 + (double)(rand_r(&rs) % 15000) * 1e-6);
  atomic_store(&r->stop, 1);
  for (int i = NCONS; i < NPROD + NCONS; i++)
    if (i != victim)
      assert_child_ok(pids[i]);
  /* The survivors drain the queue; then one stop message per live consumer. */
  double t0 = tu_now();
  while (mp_queue_qsize(q) > 0 && tu_now() - t0 < 20)
    tu_sleep(0.0005);
  if (mp_queue_qsize(q) != 0)
    fail_msg("round %u (seed %u): the consumers left %zd messages (failed at line %d)", round_id,
             seed, mp_queue_qsize(q), atomic_load(&r->failed));
  for (int i = 0; i < NCONS; i++)
    if (i != victim)
      assert_int_equal(mp_queue_put(q, "STOP", 4, 10), 0);
  for (int i = 0; i < NCONS; i++)
    if (i != victim)
      assert_child_ok(pids[i]);
  if (atomic_load(&r->failed))
    fail_msg("round %u (seed %u): a child failed at line %d", round_id, seed,
             atomic_load(&r->failed));
  /* The victim may have finished before the signal came. */
  assert_true(victim_status == 1000 + SIGKILL || victim_status == 0);

  /* What the consumers got: no duplicate, nothing foreign, nothing after a
   * producer's last put, each producer in order per consumer (FIFO). */
  static uint8_t seen[NPROD][MAXSEQ];
  memset(seen, 0, sizeof seen);
  for (int c = 0; c < NCONS; c++) {
    int64_t last[NPROD] = {-1, -1};
    uint32_t n = atomic_load(&r->got_n[c]);
    for (uint32_t i = 0; i < n; i++) {
      uint32_t p = (uint32_t)(r->got[c][i] >> 32), s = (uint32_t)r->got[c][i];
      if (p / NPROD != round_id || s >= MAXSEQ)
        fail_msg("round %u (seed %u): consumer %d got a foreign message %u/%u", round_id, seed, c,
                 p, s);
      p %= NPROD;
      if (seen[p][s])
        fail_msg("round %u (seed %u): message %u/%u delivered twice", round_id, seed, p, s);
      seen[p][s] = 1;
      if (order == MP_QUEUE_FIFO && (int64_t)s <= last[p])
        fail_msg("round %u (seed %u): consumer %d got %u/%u after %u/%lld", round_id, seed, c, p, s,
                 p, (long long)last[p]);
      last[p] = s;
      /* A producer that was not killed counted every put it finished; a
       * killed one may have finished one more. */
      uint32_t ok = atomic_load(&r->put_ok[p]);
      if (s > ok || (s == ok && victim != NCONS + (int)p))
        fail_msg("round %u (seed %u): message %u/%u delivered but never put (%u put)", round_id,
                 seed, p, s, ok);
    }
  }
  /* Every finished put delivered, but what a killed consumer took with it. */
  int excused = 0;
  uint32_t ep = UINT32_MAX, es = UINT32_MAX;
  if (victim < NCONS && victim_status != 0 && hdr_ok(r->buf[victim], &ep, &es) &&
      ep / NPROD == round_id)
    ep %= NPROD;
  else
    ep = UINT32_MAX;
  for (uint32_t p = 0; p < NPROD; p++) {
    uint32_t ok = atomic_load(&r->put_ok[p]);
    for (uint32_t s = 0; s < ok; s++) {
      if (seen[p][s])
        continue;
      if (p == ep && s == es && !excused) {
        excused = 1;
        continue;
      }
      fail_msg("round %u (seed %u): message %u/%u was put but never delivered (victim %d)",
               round_id, seed, p, s, victim);
    }
  }
  if (victim_status == 0)
    stats.finished_first++;
  else if (victim < NCONS)
    stats.killed_consumers++;
  else
    stats.killed_producers++;
  stats.excused += (uint32_t)excused;
  for (int c = 0; c < NCONS; c++)
    stats.delivered += atomic_load(&r->got_n[c]);
  /* The queue is empty and works. */
  assert_int_equal(mp_queue_qsize(q), 0);
  char b[8];
  assert_int_equal(mp_queue_get(q, b, sizeof b, 0), -ETIMEDOUT);
  assert_int_equal(mp_queue_put(q, "probe", 5, 1), 0);
  assert_int_equal(mp_queue_get(q, b, sizeof b, 1), 5);
  assert_memory_equal(b, "probe", 5);
  for (int i = 0; i < NCONS; i++)
    mp_heap_free(r->buf[i]);
  mp_heap_free(r);
}

static void crash_rounds(int order, uint32_t rounds, uint32_t salt) {
  uint32_t seed = env_u32("QUEUE_CRASH_SEED", (uint32_t)time(NULL)) ^ salt;
  print_message("queue crash (order %d): %u rounds, seed %u\n", order, rounds, seed);
  mp_queue_options o = {.ring_size = RING, .order = order};
  mp_queue *q;
  assert_int_equal(mp_queue_new(0, &o, &q), 0);
  memset(&stats, 0, sizeof stats);
  for (uint32_t i = 0; i < rounds; i++)
    run_round(q, order, i, seed);
  print_message("killed %u producers and %u consumers (%u victims had finished first); "
                "%llu messages delivered, %u taken by killed consumers\n",
                stats.killed_producers, stats.killed_consumers, stats.finished_first,
                (unsigned long long)stats.delivered, stats.excused);
  assert_int_equal(mp_queue_free(q), 0);
}

static void test_queue_crash_fifo_survives_random_kills(void **state) {
  (void)state;
  crash_rounds(MP_QUEUE_FIFO, env_u32("QUEUE_CRASH_ROUNDS", 200), 0);
}

static void test_queue_crash_priority_survives_random_kills(void **state) {
  (void)state;
  crash_rounds(MP_QUEUE_PRIORITY, env_u32("QUEUE_CRASH_ROUNDS", 200) / 4, 0x5a5a5a5a);
}

static void test_queue_crash_lifo_survives_random_kills(void **state) {
  (void)state;
  crash_rounds(MP_QUEUE_LIFO, env_u32("QUEUE_CRASH_ROUNDS", 200) / 4, 0xa5a5a5a5);
}

/* ------------------------------------------------------------------------
 * Kills at named steps (src/crashpoints.def, the kill tables in
 * src/queue_ring.c and src/queue_list.c). Each test makes one process die
 * (SIGKILL) or stop at one step, often while others sleep in the queue with
 * MP_FOREVER, and checks what the survivors see: the messages a consumer
 * gets are whole, in order and each once; the killed process's own message
 * has the outcome the table gives; qsize and the unfinished-task count are
 * exact; and every sleeper goes on within WITHIN seconds.
 */

#define WITHIN 2.0
#define CRING 4096 /* chunk_max 1024: a BIG message streams in 5 chunks */
#define BIG 5000
#define NLOG 256

enum op {
  OP_PUT,       /* put message `id` of `len` bytes (priority `prio`) */
  OP_GET_TO,    /* get and log messages until message `until` */
  OP_GET_ONE,   /* get one message and log it */
  OP_GET_EPIPE, /* get and log messages until -EPIPE */
  OP_PUT_EPIPE, /* put message `id`; expect -EPIPE */
  OP_TASK_DONE,
  OP_JOIN,
  OP_CLOSE,
  OP_WATCH,     /* register as a watcher, then stay registered */
  OP_WATCH_END, /* register as a watcher, then end the watch */
  OP_FREE,      /* mp_queue_free() */
};

/* In the family heap: what a child did. */
struct clog {
  _Atomic uint32_t n;
  uint32_t id[NLOG];
};

struct job {
  mp_queue *q;
  enum op op;
  uint32_t id, until;
  size_t len;
  int64_t prio;
  double timeout; /* for OP_PUT; MP_FOREVER when 0 */
  int expect;     /* what OP_PUT returns */
  struct clog *log;
};

static int job_main(void *p) {
  struct job *j = p;
  unsigned char *b = malloc(BIGMAX);
  CHILD_CHECK(b != NULL);
  switch (j->op) {
  case OP_PUT:
  case OP_PUT_EPIPE: {
    msg_fill(b, j->id, 0, j->len);
    double to = j->timeout != 0 ? j->timeout : MP_FOREVER;
    int r = j->prio ? mp_queue_put_priority(j->q, j->prio, b, j->len, to)
                    : mp_queue_put(j->q, b, j->len, to);
    CHILD_CHECK(r == (j->op == OP_PUT ? j->expect : -EPIPE));
    break;
  }
  case OP_GET_TO:
  case OP_GET_ONE:
  case OP_GET_EPIPE:
    for (;;) {
      ssize_t n = mp_queue_get(j->q, b, BIGMAX, MP_FOREVER);
      if (n == -EPIPE && j->op == OP_GET_EPIPE)
        break;
      uint32_t id, seq;
      CHILD_CHECK(n >= 0 && msg_ok(b, (size_t)n, &id, &seq));
      uint32_t k = atomic_load(&j->log->n);
      CHILD_CHECK(k < NLOG);
      j->log->id[k] = id;
      atomic_store(&j->log->n, k + 1);
      if (j->op == OP_GET_ONE || (j->op == OP_GET_TO && id == j->until))
        break;
    }
    break;
  case OP_TASK_DONE: CHILD_CHECK(mp_queue_task_done(j->q) == 0); break;
  case OP_JOIN: CHILD_CHECK(mp_queue_join(j->q, MP_FOREVER) == 0); break;
  case OP_CLOSE: CHILD_CHECK(mp_queue_close(j->q) == 0); break;
  case OP_WATCH:
  case OP_WATCH_END: {
    _Atomic uint32_t *word;
    uint32_t snap;
    CHILD_CHECK(mp__queue_watch_begin(j->q, &word, &snap) == 0);
    if (j->op == OP_WATCH_END)
      mp__queue_watch_end(j->q);
    else
      pause();
    break;
  }
  case OP_FREE: mp_queue_free(j->q); break;
  }
  free(b);
  return 0;
}

/* A job in the heap, so that the parent reads its log after the child ran. */
static struct job *job(mp_queue *q, enum op op, uint32_t id, size_t len) {
  struct job *j = mp_heap_calloc(1, sizeof *j);
  assert_non_null(j);
  j->log = mp_heap_calloc(1, sizeof *j->log);
  assert_non_null(j->log);
  j->q = q;
  j->op = op;
  j->id = j->until = id;
  j->len = len;
  return j;
}

static void job_free(struct job *j) {
  mp_heap_free(j->log);
  mp_heap_free(j);
}

static pid_t spawn(struct job *j) {
  pid_t c = tu_fork(job_main, j, 30);
  assert_true(c > 0);
  return c;
}

/* Child c ends with status 0 within `s` seconds. */
static void assert_done_within(pid_t c, double s) {
  double t0 = tu_now();
  int st = 0;
  for (;;) {
    pid_t r = waitpid(c, &st, WNOHANG);
    if (r == c)
      break;
    if (tu_now() - t0 > s) {
      kill(c, SIGKILL);
      waitpid(c, &st, 0);
      fail_msg("child %d still waits after %.1f s", (int)c, s);
    }
    tu_sleep(0.002);
  }
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
    fail_msg("child %d ended with status %#x", (int)c, st);
}

/* The log holds exactly ids[0..n). */
static void assert_log(const struct clog *l, const uint32_t *ids, uint32_t n) {
  uint32_t got = atomic_load(&l->n);
  for (uint32_t i = 0; i < got || i < n; i++)
    if (i >= got || i >= n || l->id[i] != ids[i])
      fail_msg("message %u: got %d, expected %d (%u got, %u expected)", i,
               i < got ? (int)l->id[i] : -1, i < n ? (int)ids[i] : -1, got, n);
}

static void put_msg(mp_queue *q, uint32_t id, size_t len, int64_t prio) {
  unsigned char *b = malloc(BIGMAX);
  assert_non_null(b);
  msg_fill(b, id, 0, len);
  if (prio)
    assert_int_equal(mp_queue_put_priority(q, prio, b, len, WITHIN), 0);
  else
    assert_int_equal(mp_queue_put(q, b, len, WITHIN), 0);
  free(b);
}

/* Get one message within WITHIN seconds; it is whole; returns its id. */
static uint32_t get_msg(mp_queue *q) {
  unsigned char *b = malloc(BIGMAX);
  assert_non_null(b);
  double t0 = tu_now();
  ssize_t n = mp_queue_get(q, b, BIGMAX, WITHIN);
  assert_true(tu_now() - t0 < WITHIN + 0.5);
  uint32_t id = 0, seq;
  if (n < 0 || !msg_ok(b, (size_t)n, &id, &seq))
    fail_msg("get gave %zd (%s)%s", n, mp_strerror((int)n), n >= 0 ? ", a torn message" : "");
  free(b);
  return id;
}

/* The unfinished-task count of a JoinableQueue, read by calling task_done()
 * until it overflows (which leaves the count at zero). */
static uint32_t unfinished_count(mp_queue *q) {
  uint32_t n = 0;
  int r;
  while ((r = mp_queue_task_done(q)) == 0)
    n++;
  assert_int_equal(r, -EOVERFLOW);
  assert_int_equal(mp_queue_join(q, 0), 0);
  return n;
}

/* The queue is empty, works, and can be freed (no registration is left). */
static void assert_settled_and_free(mp_queue *q) {
  assert_int_equal(mp_queue_qsize(q), 0);
  assert_int_equal(mp_queue_empty(q), 1);
  char b[8];
  assert_int_equal(mp_queue_get(q, b, sizeof b, 0), -ETIMEDOUT);
  assert_int_equal(mp_queue_put(q, "probe", 5, WITHIN), 0);
  assert_int_equal(mp_queue_get(q, b, sizeof b, WITHIN), 5);
  assert_memory_equal(b, "probe", 5);
  assert_int_equal(mp_queue_free(q), 0);
}

static mp_queue *fifo_new(size_t maxsize) {
  mp_queue_options o = {.ring_size = CRING, .joinable = 1};
  mp_queue *q;
  assert_int_equal(mp_queue_new(maxsize, &o, &q), 0);
  return q;
}

/* What the killed process's own message becomes. */
enum fate { GONE, KEPT };

/* A FIFO producer putting message 2 (vlen bytes) stops at `point` (nth
 * pass) while consumer C sleeps in get (MP_FOREVER) or drains the stream;
 * producer P2 then blocks in put of message 3 behind it; the producer is
 * killed. C gets 1, 2 (if KEPT), 3, whole and in order, P2 and C finish in
 * time, and the counts are exact. */
static void fifo_kill_producer(const char *point, unsigned nth, size_t vlen, enum fate fate) {
  mp_queue *q = fifo_new(0);
  struct job *c = job(q, OP_GET_TO, 3, 0);
  pid_t cp = spawn(c);
  put_msg(q, 1, 100, 0);
  tu_sleep(0.1); /* C takes message 1 and falls asleep */
  struct job *v = job(q, OP_PUT, 2, vlen);
  pid_t vp = cu_fork_stopped_at(point, nth, job_main, v, 30);
  struct job *p2 = job(q, OP_PUT, 3, 200);
  pid_t p2p = spawn(p2);
  tu_sleep(0.2); /* P2 falls asleep in prod_mutex */
  kill(vp, SIGKILL);
  cu_assert_killed_at(vp);
  assert_done_within(p2p, WITHIN);
  assert_done_within(cp, WITHIN);
  uint32_t kept[] = {1, 2, 3}, gone[] = {1, 3};
  if (fate == KEPT)
    assert_log(c->log, kept, 3);
  else
    assert_log(c->log, gone, 2);
  assert_int_equal(mp_queue_qsize(q), 0);
  assert_int_equal(unfinished_count(q), fate == KEPT ? 3 : 2);
  assert_settled_and_free(q);
  job_free(c);
  job_free(v);
  job_free(p2);
}

static void test_queue_crash_put_written(void **state) {
  (void)state;
  fifo_kill_producer("queue.put.written", 1, 300, GONE);
}

static void test_queue_crash_put_committed(void **state) {
  (void)state;
  fifo_kill_producer("queue.put.committed", 1, 300, KEPT);
}

static void test_queue_crash_put_finished(void **state) {
  (void)state;
  fifo_kill_producer("queue.put.finished", 1, 300, KEPT);
  fifo_kill_producer("queue.put.finished", 1, BIG, KEPT);
}

/* Each of the 5 chunks of a streamed message: killed with it written, or
 * committed; only the last commit puts the message. */
static void test_queue_crash_stream_each_chunk(void **state) {
  (void)state;
  for (unsigned nth = 1; nth <= 5; nth++) {
    fifo_kill_producer("queue.stream.written", nth, BIG, GONE);
    fifo_kill_producer("queue.stream.committed", nth, BIG, nth == 5 ? KEPT : GONE);
  }
}

/* A producer asleep for room (the queue at maxsize) is killed; the producer
 * behind it, and a consumer that comes later, go on. */
static void test_queue_crash_put_asleep(void **state) {
  (void)state;
  mp_queue *q = fifo_new(2);
  put_msg(q, 1, 100, 0);
  put_msg(q, 2, 100, 0);
  struct job *v = job(q, OP_PUT, 3, 100);
  pid_t vp = cu_fork_stopped_at("queue.put.asleep", 1, job_main, v, 30);
  struct job *p2 = job(q, OP_PUT, 4, 100);
  pid_t p2p = spawn(p2);
  tu_sleep(0.2);
  kill(vp, SIGKILL);
  cu_assert_killed_at(vp);
  assert_int_equal(mp_queue_qsize(q), 2);
  struct job *c = job(q, OP_GET_TO, 4, 0);
  pid_t cp = spawn(c);
  assert_done_within(p2p, WITHIN);
  assert_done_within(cp, WITHIN);
  uint32_t ids[] = {1, 2, 4};
  assert_log(c->log, ids, 3);
  assert_int_equal(unfinished_count(q), 3);
  assert_settled_and_free(q);
  job_free(c);
  job_free(v);
  job_free(p2);
}

/* A producer whose stream times out (no consumer, the ring full) is killed
 * while ending it with ABORT: written, or committed but nobody woken. */
static void fifo_kill_aborting(const char *point) {
  mp_queue *q = fifo_new(0);
  put_msg(q, 1, 100, 0);
  struct job *v = job(q, OP_PUT, 2, BIG);
  v->timeout = 0.2;
  pid_t vp = cu_fork_armed(point, 1, job_main, v, 30);
  cu_assert_killed_at(vp);
  struct job *c = job(q, OP_GET_TO, 3, 0);
  pid_t cp = spawn(c);
  put_msg(q, 3, 200, 0);
  assert_done_within(cp, WITHIN);
  uint32_t ids[] = {1, 3};
  assert_log(c->log, ids, 2);
  assert_int_equal(unfinished_count(q), 2);
  assert_settled_and_free(q);
  job_free(c);
  job_free(v);
}

static void test_queue_crash_abort_written(void **state) {
  (void)state;
  fifo_kill_aborting("queue.abort.written");
}

static void test_queue_crash_abort_committed(void **state) {
  (void)state;
  fifo_kill_aborting("queue.abort.committed");
}

/* A producer killed mid-stream, then the producer that repairs after it is
 * killed too, after waking and before marking the mutex consistent. */
static void test_queue_crash_prod_repair_woken(void **state) {
  (void)state;
  mp_queue *q = fifo_new(0);
  put_msg(q, 1, 100, 0);
  struct job *v = job(q, OP_PUT, 2, BIG);
  pid_t vp = cu_fork_stopped_at("queue.stream.committed", 2, job_main, v, 30);
  kill(vp, SIGKILL);
  cu_assert_killed_at(vp);
  struct job *r = job(q, OP_PUT, 3, 100);
  pid_t rp = cu_fork_armed("queue.prod_repair.woken", 1, job_main, r, 30);
  cu_assert_killed_at(rp);
  struct job *c = job(q, OP_GET_TO, 4, 0);
  pid_t cp = spawn(c);
  put_msg(q, 4, 100, 0);
  assert_done_within(cp, WITHIN);
  uint32_t ids[] = {1, 4};
  assert_log(c->log, ids, 2);
  assert_int_equal(unfinished_count(q), 2);
  assert_settled_and_free(q);
  job_free(c);
  job_free(v);
  job_free(r);
}

/* A streaming producer killed with no consumer about: its message was never
 * put, and qsize() says so at once, without waiting for a get to clean up. */
static void test_queue_crash_stream_dead_not_counted(void **state) {
  (void)state;
  mp_queue *q = fifo_new(0);
  put_msg(q, 1, 100, 0);
  struct job *v = job(q, OP_PUT, 2, BIG);
  pid_t vp = cu_fork_armed("queue.stream.committed", 1, job_main, v, 30);
  cu_assert_killed_at(vp);
  assert_int_equal(mp_queue_qsize(q), 1);
  assert_int_equal(mp_queue_full(q), 0);
  assert_int_equal(get_msg(q), 1);
  assert_int_equal(mp_queue_qsize(q), 0);
  assert_int_equal(mp_queue_empty(q), 1);
  assert_int_equal(unfinished_count(q), 1);
  assert_settled_and_free(q);
  job_free(v);
}

/* A stream that ends in ABORT was never put: a get into a buffer too small
 * for it must not answer -EMSGSIZE, nor peek_size() report its size; whether
 * its producer timed out (ABORT committed) or was killed mid-stream (nobody
 * has ended it yet). */
static void assert_nothing_to_get(mp_queue *q) {
  char b[200];
  size_t len = 0;
  assert_int_equal(mp_queue_get(q, b, sizeof b, 0), -ETIMEDOUT);
  assert_int_equal(mp_queue_peek_size(q, &len, 0), -ETIMEDOUT);
}

static void test_queue_crash_stream_dead_not_reported(void **state) {
  (void)state;
  for (int killed = 0; killed < 2; killed++) {
    mp_queue *q = fifo_new(0);
    put_msg(q, 1, 100, 0);
    struct job *v = job(q, OP_PUT, 2, BIG);
    pid_t vp;
    if (killed) {
      vp = cu_fork_armed("queue.stream.committed", 2, job_main, v, 30);
      cu_assert_killed_at(vp);
    } else {
      v->timeout = 0.1; /* no consumer: the stream times out */
      v->expect = -ETIMEDOUT;
      vp = spawn(v);
      assert_child_ok(vp);
    }
    char b[200];
    assert_int_equal(mp_queue_get(q, b, sizeof b, WITHIN), 100);
    assert_nothing_to_get(q);
    put_msg(q, 3, 100, 0);
    assert_int_equal(get_msg(q), 3);
    assert_nothing_to_get(q);
    assert_int_equal(unfinished_count(q), 2);
    assert_settled_and_free(q);
    job_free(v);
  }
}

/* A FIFO consumer getting message 1 (vlen bytes, streamed by producer P when
 * big) stops at `point` (nth pass); consumer C2 blocks in get behind it; the
 * consumer is killed. C2 gets 1 (if KEPT: the dead one had not taken it) and
 * 2, P finishes in time (a producer asleep for room is woken), and the counts
 * are exact: the message a dead consumer took stays unfinished, as in
 * Python. `empty`: the consumer stops asleep on an empty queue. */
static void fifo_kill_consumer(const char *point, unsigned nth, size_t vlen, enum fate fate,
                               bool empty) {
  mp_queue *q = fifo_new(0);
  struct job *p = job(q, OP_PUT, 1, vlen);
  pid_t pp = -1;
  if (!empty)
    pp = spawn(p);
  struct job *v = job(q, OP_GET_ONE, 0, 0);
  pid_t vp = cu_fork_stopped_at(point, nth, job_main, v, 30);
  struct job *c2 = job(q, OP_GET_TO, 2, 0);
  pid_t c2p = spawn(c2);
  tu_sleep(0.2); /* C2 falls asleep in cons_mutex */
  kill(vp, SIGKILL);
  cu_assert_killed_at(vp);
  if (empty)
    pp = spawn(p);
  assert_done_within(pp, WITHIN);
  put_msg(q, 2, 100, 0);
  assert_done_within(c2p, WITHIN);
  uint32_t kept[] = {1, 2}, gone[] = {2};
  if (fate == KEPT)
    assert_log(c2->log, kept, 2);
  else
    assert_log(c2->log, gone, 1);
  assert_int_equal(mp_queue_qsize(q), 0);
  assert_int_equal(unfinished_count(q), 2);
  assert_settled_and_free(q);
  job_free(p);
  job_free(v);
  job_free(c2);
}

static void test_queue_crash_get_asleep(void **state) {
  (void)state;
  fifo_kill_consumer("queue.get.asleep", 1, 100, KEPT, true);
}

static void test_queue_crash_get_copied(void **state) {
  (void)state;
  fifo_kill_consumer("queue.get.copied", 1, 100, KEPT, false);
  fifo_kill_consumer("queue.get.copied", 1, BIG, KEPT, false);
}

/* Every head commit of a get: a whole message, and each chunk of a stream;
 * and each chunk copied before its commit. */
static void test_queue_crash_get_committed_each_chunk(void **state) {
  (void)state;
  fifo_kill_consumer("queue.get.committed", 1, 100, GONE, false);
  for (unsigned nth = 1; nth <= 5; nth++)
    fifo_kill_consumer("queue.get.committed", nth, BIG, GONE, false);
  for (unsigned nth = 1; nth <= 4; nth++)
    fifo_kill_consumer("queue.get.chunk_copied", nth, BIG, GONE, false);
}

/* A consumer killed inside a stream (BEGIN taken), then the consumer that
 * skips the rest killed after each skip's commit in turn: the next one
 * skips what is left, the producer finishes, and the next message comes. */
static void test_queue_crash_get_skip_each_chunk(void **state) {
  (void)state;
  for (unsigned nth = 1; nth <= 4; nth++) {
    mp_queue *q = fifo_new(0);
    struct job *p = job(q, OP_PUT, 1, BIG);
    pid_t pp = spawn(p);
    struct job *v = job(q, OP_GET_ONE, 0, 0);
    pid_t vp = cu_fork_stopped_at("queue.get.committed", 1, job_main, v, 30);
    kill(vp, SIGKILL);
    cu_assert_killed_at(vp);
    struct job *s2 = job(q, OP_GET_ONE, 0, 0);
    pid_t sp = cu_fork_armed("queue.get.committed", nth, job_main, s2, 30);
    cu_assert_killed_at(sp);
    assert_int_equal(atomic_load(&s2->log->n), 0);
    assert_done_within(pp, WITHIN);
    put_msg(q, 2, 100, 0);
    assert_int_equal(get_msg(q), 2);
    assert_int_equal(mp_queue_qsize(q), 0);
    assert_int_equal(unfinished_count(q), 2);
    assert_settled_and_free(q);
    job_free(p);
    job_free(v);
    job_free(s2);
  }
}

static void test_queue_crash_get_finished(void **state) {
  (void)state;
  fifo_kill_consumer("queue.get.finished", 1, 100, GONE, false);
  fifo_kill_consumer("queue.get.finished", 1, BIG, GONE, false);
}

/* A consumer killed before its commit, then the consumer that repairs after
 * it is killed after waking producers, before marking the mutex consistent:
 * the message is still there for the third. */
static void test_queue_crash_cons_repair_woken(void **state) {
  (void)state;
  mp_queue *q = fifo_new(0);
  put_msg(q, 1, 100, 0);
  struct job *v = job(q, OP_GET_ONE, 0, 0);
  pid_t vp = cu_fork_stopped_at("queue.get.copied", 1, job_main, v, 30);
  kill(vp, SIGKILL);
  cu_assert_killed_at(vp);
  struct job *r = job(q, OP_GET_ONE, 0, 0);
  pid_t rp = cu_fork_armed("queue.cons_repair.woken", 1, job_main, r, 30);
  cu_assert_killed_at(rp);
  assert_int_equal(mp_queue_qsize(q), 1);
  assert_int_equal(get_msg(q), 1);
  assert_int_equal(unfinished_count(q), 1);
  assert_settled_and_free(q);
  job_free(v);
  job_free(r);
}

/* close() killed after marking the queue closed, before waking anyone: a
 * consumer asleep in get on an empty queue, or a producer asleep for room in
 * a full one (maxsize 2), still ends with -EPIPE in time; what was in the
 * queue is still delivered, then -EPIPE. */
static void kill_closer(mp_queue *q, bool full) {
  struct job *w;
  if (full) {
    put_msg(q, 1, 100, 0);
    put_msg(q, 2, 100, 0);
    w = job(q, OP_PUT_EPIPE, 3, 100);
  } else {
    w = job(q, OP_GET_EPIPE, 0, 0);
  }
  pid_t wp = spawn(w);
  tu_sleep(0.2); /* W falls asleep */
  struct job *v = job(q, OP_CLOSE, 0, 0);
  pid_t vp = cu_fork_armed("queue.close.marked", 1, job_main, v, 30);
  cu_assert_killed_at(vp);
  assert_done_within(wp, WITHIN);
  assert_int_equal(atomic_load(&w->log->n), 0);
  if (full) {
    assert_int_equal(mp_queue_qsize(q), 2);
    uint32_t a = get_msg(q), b = get_msg(q);
    assert_true((a == 1 && b == 2) || (a == 2 && b == 1 && mp_queue_qsize(q) == 0));
  }
  char buf[8];
  assert_int_equal(mp_queue_get(q, buf, sizeof buf, WITHIN), -EPIPE);
  assert_int_equal(mp_queue_put(q, "x", 1, WITHIN), -EPIPE);
  job_free(w);
  job_free(v);
  assert_int_equal(mp_queue_free(q), 0);
}

static void test_queue_crash_close_marked(void **state) {
  (void)state;
  for (int full = 0; full < 2; full++) {
    mp_queue *q;
    assert_int_equal(mp_queue_new(2, NULL, &q), 0);
    kill_closer(q, full);
    assert_int_equal(mp_lifo_queue_new(2, &q), 0);
    kill_closer(q, full);
  }
}

/* The last task_done() killed after counting, before waking the joiners: a
 * joiner asleep with MP_FOREVER returns in time. */
static void kill_task_done(mp_queue *q) {
  put_msg(q, 1, 100, 0);
  assert_int_equal(get_msg(q), 1);
  struct job *j = job(q, OP_JOIN, 0, 0);
  pid_t jp = spawn(j);
  tu_sleep(0.2); /* J falls asleep */
  struct job *v = job(q, OP_TASK_DONE, 0, 0);
  pid_t vp = cu_fork_armed("queue.task_done.counted", 1, job_main, v, 30);
  cu_assert_killed_at(vp);
  assert_done_within(jp, WITHIN);
  assert_int_equal(unfinished_count(q), 0);
  assert_int_equal(mp_queue_task_done(q), -EOVERFLOW);
  job_free(j);
  job_free(v);
  assert_settled_and_free(q);
}

static void test_queue_crash_task_done_counted(void **state) {
  (void)state;
  kill_task_done(fifo_new(0));
  mp_queue_options o = {.order = MP_QUEUE_LIFO, .joinable = 1};
  mp_queue *q;
  assert_int_equal(mp_queue_new(0, &o, &q), 0);
  kill_task_done(q);
}

/* Sleepers killed while registered, at each step of registering and
 * unregistering: a joiner, a watcher (mp_connection_wait), a LIFO getter.
 * The others go on, and mp_queue_free() finds no live sleeper left. */
static void test_queue_crash_reg_joiner(void **state) {
  (void)state;
  mp_queue *q = fifo_new(0);
  put_msg(q, 1, 100, 0);
  const char *points[] = {"queue.reg.slot_taken", "queue.reg.registered"};
  for (int i = 0; i < 2; i++) {
    struct job *v = job(q, OP_JOIN, 0, 0);
    pid_t vp = cu_fork_armed(points[i], 1, job_main, v, 30);
    cu_assert_killed_at(vp);
    job_free(v);
  }
  struct job *j = job(q, OP_JOIN, 0, 0);
  pid_t jp = spawn(j);
  tu_sleep(0.1);
  assert_int_equal(get_msg(q), 1);
  assert_int_equal(mp_queue_task_done(q), 0);
  assert_done_within(jp, WITHIN);
  job_free(j);
  assert_settled_and_free(q);
}

static void test_queue_crash_reg_watcher(void **state) {
  (void)state;
  mp_queue *q = fifo_new(0);
  struct job *v = job(q, OP_WATCH, 0, 0);
  pid_t vp = cu_fork_armed("queue.reg.registered", 1, job_main, v, 30);
  cu_assert_killed_at(vp);
  struct job *e = job(q, OP_WATCH_END, 0, 0);
  pid_t ep = cu_fork_armed("queue.reg.bit_cleared", 1, job_main, e, 30);
  cu_assert_killed_at(ep);
  /* Puts keep waking a dead watcher until one of them scans: many puts. */
  struct job *c = job(q, OP_GET_TO, 200, 0);
  pid_t cp = spawn(c);
  for (uint32_t i = 1; i <= 200; i++)
    put_msg(q, i, 16, 0);
  assert_done_within(cp, WITHIN);
  uint32_t ids[200];
  for (uint32_t i = 0; i < 200; i++)
    ids[i] = i + 1;
  assert_log(c->log, ids, 200);
  job_free(v);
  job_free(e);
  job_free(c);
  assert_int_equal(unfinished_count(q), 200);
  assert_settled_and_free(q);
}

/* A cleaner killed after claiming a dead sleeper's slot: the next scan
 * claims it from the dead cleaner. */
static void test_queue_crash_reg_claimed(void **state) {
  (void)state;
  mp_queue *q = fifo_new(0);
  put_msg(q, 1, 100, 0);
  struct job *v = job(q, OP_JOIN, 0, 0);
  pid_t vp = cu_fork_armed("queue.reg.registered", 1, job_main, v, 30);
  cu_assert_killed_at(vp);
  struct job *f = job(q, OP_FREE, 0, 0);
  pid_t fp = cu_fork_armed("queue.reg.claimed", 1, job_main, f, 30);
  cu_assert_killed_at(fp);
  assert_int_equal(get_msg(q), 1);
  assert_int_equal(unfinished_count(q), 1);
  job_free(v);
  job_free(f);
  assert_settled_and_free(q);
}

/* A joiner killed while registered and not yet reaped (a zombie: its parent
 * has not waited for it) has ended all the same: mp_queue_free() drops its
 * registration instead of answering -EBUSY. */
static void test_queue_crash_reg_zombie(void **state) {
  (void)state;
  mp_queue *q = fifo_new(0);
  put_msg(q, 1, 100, 0);
  struct job *v = job(q, OP_JOIN, 0, 0);
  pid_t vp = cu_fork_armed("queue.reg.registered", 1, job_main, v, 30);
  siginfo_t si;
  assert_int_equal(waitid(P_PID, (id_t)vp, &si, WEXITED | WNOWAIT), 0);
  assert_int_equal(si.si_code, CLD_KILLED);
  assert_int_equal(get_msg(q), 1);
  assert_int_equal(unfinished_count(q), 1);
  assert_int_equal(mp_queue_free(q), 0);
  cu_assert_killed_at(vp);
  job_free(v);
}

/* ---- LIFO and priority lists */

static mp_queue *list_new(int order, size_t maxsize) {
  mp_queue_options o = {.order = order, .joinable = 1};
  mp_queue *q;
  assert_int_equal(mp_queue_new(maxsize, &o, &q), 0);
  return q;
}

/* Drain a list queue: exactly the messages ids[0..n), in that order. */
static void drain_expect(mp_queue *q, const uint32_t *ids, uint32_t n) {
  assert_int_equal(mp_queue_qsize(q), (ssize_t)n);
  for (uint32_t i = 0; i < n; i++) {
    uint32_t id = get_msg(q);
    if (id != ids[i])
      fail_msg("message %u: got %u, expected %u", i, id, ids[i]);
  }
  assert_int_equal(mp_queue_qsize(q), 0);
}

/* A priority queue holding `pre` messages (ids 1..pre, priorities 10+id); a
 * put of message 100 at priority 1 (it sifts to the top; with pre == 16 the
 * array grows first) or a get is killed at the nth pass of `point`. The
 * queue then holds exactly what it held (put killed: its message was never
 * put; get killed: it took nothing), in priority order. */
static void list_walk(const char *point, unsigned nth, uint32_t pre, bool put, bool *fired) {
  mp_queue *q = list_new(MP_QUEUE_PRIORITY, 0);
  for (uint32_t i = 1; i <= pre; i++)
    put_msg(q, i, 16 + i, 10 + i);
  struct job *v = job(q, put ? OP_PUT : OP_GET_ONE, 100, 40);
  v->prio = 1;
  assert_int_equal(mp__crash_arm(point, nth, MP__CRASH_KILL), 0);
  pid_t vp = tu_fork(job_main, v, 30);
  assert_true(vp > 0);
  mp__crash_mute();
  int st = tu_wait(vp);
  *fired = mp__crash_fired() == vp;
  if (*fired) {
    assert_int_equal(st, 1000 + SIGKILL);
    uint32_t ids[17];
    for (uint32_t i = 0; i < pre; i++)
      ids[i] = i + 1;
    drain_expect(q, ids, pre);
    assert_int_equal(unfinished_count(q), pre);
  } else {
    assert_int_equal(st, 0); /* fewer passes than nth: the operation completed */
  }
  job_free(v);
  mp_queue_close(q);
  assert_int_equal(mp_queue_free(q), 0);
}

/* Every word a list put or get writes, killed after journaling it and after
 * writing it: the journal's replay undoes the operation. */
static void test_queue_crash_list_each_word(void **state) {
  (void)state;
  const char *points[] = {"queue.list.journaled", "queue.list.written"};
  for (int p = 0; p < 2; p++) {
    for (int kind = 0; kind < 3; kind++) {
      unsigned nth = 1;
      for (bool fired = true; fired; nth++)
        list_walk(points[p], nth, kind == 1 ? 16 : 15, kind < 2, &fired);
      assert_true(nth > 15); /* a sift through 3 or 4 levels writes that many words */
    }
  }
}

/* A list operation killed at one step, while a getter (or putter, at
 * maxsize) sleeps: the survivors go on, and the queue holds what the table
 * says. */
static void list_kill(int order, const char *point, bool put, enum fate fate) {
  mp_queue *q = list_new(order, 2);
  put_msg(q, 1, 100, 0);
  struct job *other;
  pid_t op;
  if (put) {
    assert_int_equal(get_msg(q), 1);
    other = job(q, OP_GET_ONE, 0, 0); /* asleep: the queue is empty */
  } else {
    put_msg(q, 2, 100, 0);
    other = job(q, OP_PUT, 3, 100); /* asleep: the queue is full */
  }
  op = spawn(other);
  tu_sleep(0.2);
  struct job *v = job(q, put ? OP_PUT : OP_GET_ONE, 2, 100);
  pid_t vp = cu_fork_armed(point, 1, job_main, v, 30);
  cu_assert_killed_at(vp);
  if (put) {
    if (fate == GONE)
      put_msg(q, 3, 100, 0);
    assert_done_within(op, WITHIN);
    assert_int_equal(atomic_load(&other->log->n), 1);
    assert_int_equal(other->log->id[0], fate == KEPT ? 2 : 3);
    assert_int_equal(mp_queue_qsize(q), 0);
    assert_int_equal(unfinished_count(q), 2);
  } else {
    assert_done_within(op, WITHIN);
    /* LIFO: the killed get took message 2 (GONE) or left it (KEPT) */
    uint32_t kept[] = {3, 2, 1}, gone[] = {3, 1};
    if (fate == KEPT)
      drain_expect(q, kept, 3);
    else
      drain_expect(q, gone, 2);
    assert_int_equal(unfinished_count(q), 3);
  }
  job_free(other);
  job_free(v);
  assert_settled_and_free(q);
}

static void test_queue_crash_list_put_copied(void **state) {
  (void)state;
  list_kill(MP_QUEUE_LIFO, "queue.list.put.copied", true, GONE);
}

/* A put killed at its first journaled word while a getter sleeps: the
 * getter goes on, and the message was not put. */
static void test_queue_crash_list_journaled(void **state) {
  (void)state;
  list_kill(MP_QUEUE_LIFO, "queue.list.journaled", true, GONE);
}

static void test_queue_crash_list_committed(void **state) {
  (void)state;
  list_kill(MP_QUEUE_LIFO, "queue.list.committed", true, KEPT);
  list_kill(MP_QUEUE_LIFO, "queue.list.committed", false, GONE);
}

static void test_queue_crash_list_put_unlocked(void **state) {
  (void)state;
  list_kill(MP_QUEUE_LIFO, "queue.list.put.unlocked", true, KEPT);
}

static void test_queue_crash_list_get_unlocked(void **state) {
  (void)state;
  list_kill(MP_QUEUE_LIFO, "queue.list.get.unlocked", false, GONE);
}

/* A put killed with its array grown (allocated, not yet linked). */
static void test_queue_crash_list_put_grown(void **state) {
  (void)state;
  bool fired;
  list_walk("queue.list.put.grown", 1, 16, true, &fired);
  assert_true(fired);
}

/* A getter killed asleep in a LIFO queue (registered); the getter behind it
 * and puts go on, and the queue can be freed. */
static void test_queue_crash_list_asleep(void **state) {
  (void)state;
  mp_queue *q = list_new(MP_QUEUE_LIFO, 0);
  struct job *v = job(q, OP_GET_ONE, 0, 0);
  pid_t vp = cu_fork_armed("queue.reg.registered", 1, job_main, v, 30);
  cu_assert_killed_at(vp);
  struct job *c = job(q, OP_GET_TO, 100, 0);
  pid_t cp = spawn(c);
  tu_sleep(0.1);
  for (uint32_t i = 1; i <= 100; i++) {
    put_msg(q, i, 16, 0);
    tu_sleep(0.0005);
  }
  assert_done_within(cp, WITHIN);
  /* LIFO: C stopped at 100, the parent gets the rest; each exactly once */
  uint8_t seen[101] = {0};
  for (uint32_t i = 0; i < atomic_load(&c->log->n); i++)
    seen[c->log->id[i]]++;
  while (mp_queue_qsize(q) > 0) {
    uint32_t id = get_msg(q);
    assert_true(id >= 1 && id <= 100);
    seen[id]++;
  }
  for (uint32_t i = 1; i <= 100; i++)
    assert_int_equal(seen[i], 1);
  assert_int_equal(unfinished_count(q), 100);
  job_free(v);
  job_free(c);
  assert_settled_and_free(q);
}

/* A put killed mid-way, then the process that replays its journal is killed
 * after replaying, before marking the mutex consistent: the next one
 * replays again (nothing left), and nothing was put. */
static void test_queue_crash_list_repair_replayed(void **state) {
  (void)state;
  mp_queue *q = list_new(MP_QUEUE_PRIORITY, 0);
  for (uint32_t i = 1; i <= 7; i++)
    put_msg(q, i, 16 + i, 10 + i);
  struct job *v = job(q, OP_PUT, 100, 40);
  v->prio = 1;
  pid_t vp = cu_fork_stopped_at("queue.list.written", 6, job_main, v, 30);
  kill(vp, SIGKILL);
  cu_assert_killed_at(vp);
  struct job *r = job(q, OP_PUT, 101, 40);
  r->prio = 2;
  pid_t rp = cu_fork_armed("queue.list.repair.replayed", 1, job_main, r, 30);
  cu_assert_killed_at(rp);
  uint32_t ids[] = {1, 2, 3, 4, 5, 6, 7};
  drain_expect(q, ids, 7);
  assert_int_equal(unfinished_count(q), 7);
  job_free(v);
  job_free(r);
  assert_settled_and_free(q);
}

/* A list task_done() stopped after writing its count, before its commit:
 * join() must not return yet, for a kill now undoes the count, which stays
 * exact (one task unfinished). */
static void test_queue_crash_list_join_sees_committed_count(void **state) {
  (void)state;
  mp_queue *q = list_new(MP_QUEUE_LIFO, 0);
  put_msg(q, 1, 100, 0);
  assert_int_equal(get_msg(q), 1);
  struct job *v = job(q, OP_TASK_DONE, 0, 0);
  pid_t vp = cu_fork_stopped_at("queue.list.written", 1, job_main, v, 30);
  assert_int_equal(mp_queue_join(q, 0.3), -ETIMEDOUT);
  kill(vp, SIGKILL);
  cu_assert_killed_at(vp);
  assert_int_equal(mp_queue_join(q, 0.3), -ETIMEDOUT);
  assert_int_equal(unfinished_count(q), 1);
  job_free(v);
  assert_settled_and_free(q);
}

/* mp_queue_free() killed half-way: after claiming the handle, or after
 * returning the ring or list state to the heap. A second free answers
 * -EINVAL instead of returning anything twice, and the heap stays whole. */
static void test_queue_crash_free_half_done(void **state) {
  (void)state;
  const char *points[] = {"queue.free.block_freed", "queue.free.claimed"};
  for (int p = 0; p < 2; p++) {
    for (int order = MP_QUEUE_FIFO; order <= MP_QUEUE_LIFO; order++) {
      mp_queue_options o = {.order = order};
      mp_queue *q;
      assert_int_equal(mp_queue_new(0, &o, &q), 0);
      put_msg(q, 1, 100, 0);
      struct job *v = job(q, OP_FREE, 0, 0);
      pid_t vp = cu_fork_armed(points[p], 1, job_main, v, 30);
      cu_assert_killed_at(vp);
      assert_int_equal(mp_queue_free(q), -EINVAL);
      assert_int_equal(mp_queue_qsize(q), -EINVAL);
      assert_int_equal(mp__heap_check(), 0);
      job_free(v);
    }
  }
}

/* A shutdown killed after its flag and before closing leaves an open queue:
 * puts and gets go on; a second shutdown finishes the job. */
static int shut_down(void *arg) { return mp_queue_shutdown((mp_queue *)arg, 1) == 0 ? 0 : 1; }

static void test_queue_crash_shutdown_flagged(void **state) {
  (void)state;
  mp_queue *q;
  assert_int_equal(mp_queue_new(0, NULL, &q), 0);
  int v = 5;
  assert_int_equal(mp_queue_put(q, &v, sizeof v, MP_NOWAIT), 0);
  pid_t c = cu_fork_armed("queue.shutdown.flagged", 1, shut_down, q, 30);
  cu_assert_killed_at(c);
  assert_int_equal(mp_queue_put(q, &v, sizeof v, MP_NOWAIT), 0); /* still open */
  assert_int_equal(mp_queue_qsize(q), 2);
  assert_int_equal(mp_queue_shutdown(q, 1), 0);
  assert_int_equal(mp_queue_get(q, &v, sizeof v, MP_NOWAIT), -ESHUTDOWN);
  assert_int_equal(mp_queue_put(q, &v, sizeof v, MP_NOWAIT), -ESHUTDOWN);
  assert_int_equal(mp_queue_free(q), 0);
}

/* ------------------------------------------------------------ zero-copy blocks
 *
 * Section 1b of src/queue_ring.c: at each step of put_block and of every get of a
 * block, a kill leaves the message delivered exactly once or not at all, and
 * the block freed by the repair or still queued, never leaked (the heap's
 * block count comes back to where it was) nor freed twice; the one documented
 * exception is a consumer killed after get_block handed the block over. */

static size_t heap_blocks(void) {
  mp_heap_stats st;
  assert_int_equal(mp_heap_stats_get(&st), 0);
  return st.blocks;
}

enum bop { B_PUT, B_GET_BLOCK, B_GET_COPY };

struct bjob {
  mp_queue *q;
  enum bop op;
  uint32_t id;
  size_t len;
};

static int bjob_main(void *p) {
  struct bjob *j = p;
  switch (j->op) {
  case B_PUT: {
    unsigned char *b = mp_heap_alloc(j->len);
    CHILD_CHECK(b != NULL);
    msg_fill(b, j->id, 0, j->len);
    CHILD_CHECK(mp_queue_put_block(j->q, b, j->len, MP_FOREVER) == 0);
    break;
  }
  case B_GET_BLOCK: {
    void *m = NULL;
    size_t len = 0;
    uint32_t id, seq;
    CHILD_CHECK(mp_queue_get_block(j->q, &m, &len, MP_FOREVER) == 0);
    CHILD_CHECK(msg_ok(m, len, &id, &seq) && id == j->id);
    CHILD_CHECK(mp_heap_free(m) == 0);
    break;
  }
  case B_GET_COPY: {
    unsigned char *b = malloc(BIGMAX);
    CHILD_CHECK(b != NULL);
    ssize_t n = mp_queue_get(j->q, b, BIGMAX, MP_FOREVER);
    uint32_t id, seq;
    CHILD_CHECK(n >= 0 && msg_ok(b, (size_t)n, &id, &seq) && id == j->id);
    free(b);
    break;
  }
  }
  return 0;
}

/* Put message id (len bytes) as a heap block; returns the block. */
static void *put_block_msg(mp_queue *q, uint32_t id, size_t len) {
  unsigned char *b = mp_heap_alloc(len);
  assert_non_null(b);
  msg_fill(b, id, 0, len);
  assert_int_equal(mp_queue_put_block(q, b, len, WITHIN), 0);
  return b;
}

/* Get the next message as a block within WITHIN; it is whole; returns its
 * id and frees it. *blk gets its address. */
static uint32_t get_block_msg(mp_queue *q, void **blk) {
  void *m = NULL;
  size_t len = 0;
  int r = mp_queue_get_block(q, &m, &len, WITHIN);
  uint32_t id = 0, seq;
  if (r < 0 || !msg_ok(m, len, &id, &seq))
    fail_msg("get_block gave %d (%s)%s", r, mp_strerror(r), r == 0 ? ", a torn message" : "");
  if (blk)
    *blk = m;
  assert_int_equal(mp_heap_free(m), 0);
  return id;
}

/* A producer killed at `point` inside put_block of message 2; the next put
 * (message 3) repairs. The consumer sees 2 (KEPT) and 3, each once, and no
 * block is left behind. */
static void block_kill_producer(const char *point, enum fate fate) {
  mp_queue *q = fifo_new(0);
  struct bjob *v = mp_heap_calloc(1, sizeof *v);
  assert_non_null(v);
  *v = (struct bjob){q, B_PUT, 2, 300};
  size_t base = heap_blocks();
  pid_t vp = cu_fork_armed(point, 1, bjob_main, v, 30);
  cu_assert_killed_at(vp);
  put_msg(q, 3, 200, 0); /* takes prod_mutex from the dead producer: repairs */
  if (fate == KEPT)
    assert_int_equal(get_block_msg(q, NULL), 2);
  assert_int_equal(get_msg(q), 3);
  assert_int_equal(mp_queue_qsize(q), 0);
  assert_int_equal(unfinished_count(q), fate == KEPT ? 2 : 1);
  assert_int_equal(heap_blocks(), base);
  assert_int_equal(mp__heap_check(), 0);
  assert_settled_and_free(q);
  mp_heap_free(v);
}

static void test_queue_crash_block_put_each_step(void **state) {
  (void)state;
  block_kill_producer("queue.block.put.recorded", GONE);
  block_kill_producer("queue.block.put.written", GONE);
  block_kill_producer("queue.block.put.committed", KEPT);
  block_kill_producer("queue.block.put.cleared", KEPT);
}

/* A consumer killed at `point` (nth pass) while it takes message 1 (put as a
 * block when `as_block`, else copied) with get_block or a copying get; the
 * parent's next get repairs. KEPT: message 1 comes next, whole (as the same
 * block when it was put as one); GONE: the dead consumer took it. The heap
 * has `extra` more blocks than before (0 but for a handed-over block). */
static void block_kill_consumer(const char *point, unsigned nth, bool as_block, enum bop op,
                                enum fate fate, size_t extra) {
  mp_queue *q = fifo_new(0);
  struct bjob *v = mp_heap_calloc(1, sizeof *v);
  assert_non_null(v);
  *v = (struct bjob){q, op, 1, 0};
  size_t base = heap_blocks();
  void *b = as_block ? put_block_msg(q, 1, 300) : NULL;
  if (!as_block)
    put_msg(q, 1, 300, 0);
  print_message("consumer killed at %s (%u)\n", point, nth);
  pid_t vp = cu_fork_armed(point, nth, bjob_main, v, 30);
  cu_assert_killed_at(vp);
  if (fate == KEPT) {
    void *got = NULL;
    assert_int_equal(get_block_msg(q, &got), 1);
    if (as_block)
      assert_ptr_equal(got, b);
  } else {
    unsigned char buf[8];
    assert_int_equal(mp_queue_get(q, buf, sizeof buf, 0.05), -ETIMEDOUT); /* repairs */
  }
  assert_int_equal(mp_queue_qsize(q), 0);
  assert_int_equal(heap_blocks(), base + extra);
  if (extra)
    assert_int_equal(mp_heap_free(b), 0); /* the dead consumer's, not the queue's */
  assert_int_equal(mp__heap_check(), 0);
  assert_settled_and_free(q);
  mp_heap_free(v);
}

static void test_queue_crash_block_get_recorded(void **state) {
  (void)state;
  block_kill_consumer("queue.block.get.recorded", 1, true, B_GET_BLOCK, KEPT, 0);
  block_kill_consumer("queue.block.get.recorded", 1, true, B_GET_COPY, KEPT, 0);
}

/* Head committed past the block's record: the message went with the dead
 * consumer, and the repair frees its block; also when the consumer died
 * inside its own free of the block (the heap's journal decides). */
static void test_queue_crash_block_get_committed(void **state) {
  (void)state;
  block_kill_consumer("queue.get.committed", 1, true, B_GET_BLOCK, GONE, 0);
  block_kill_consumer("queue.get.committed", 1, true, B_GET_COPY, GONE, 0);
  block_kill_consumer("heap.free.locked", 1, true, B_GET_COPY, GONE, 0);
  block_kill_consumer("heap.free.journaled", 1, true, B_GET_COPY, GONE, 0);
  block_kill_consumer("heap.free.committed", 1, true, B_GET_COPY, GONE, 0);
}

/* get_block of a copied message: the heap copy is recorded by the heap's own
 * allocation step; a kill while it is allocated or filled frees it, and the
 * message stays. */
static void test_queue_crash_block_copy_allocated(void **state) {
  (void)state;
  block_kill_consumer("heap.alloc.journaled", 1, false, B_GET_BLOCK, KEPT, 0);
  block_kill_consumer("heap.alloc.committed", 1, false, B_GET_BLOCK, KEPT, 0);
  block_kill_consumer("queue.block.copy.allocated", 1, false, B_GET_BLOCK, KEPT, 0);
  block_kill_consumer("queue.get.copied", 1, false, B_GET_BLOCK, KEPT, 0);
  block_kill_consumer("queue.get.committed", 1, false, B_GET_BLOCK, GONE, 0);
}

/* Once handed over, the block is the dead consumer's: the queue is empty
 * and the block stays allocated (the documented leak of a dead holder) until
 * someone who knows it frees it. */
static void test_queue_crash_block_get_handed(void **state) {
  (void)state;
  block_kill_consumer("queue.block.get.handed", 1, true, B_GET_BLOCK, GONE, 1);
}

/* get_block of a streamed message, killed after each chunk's commit: the
 * rest is skipped, the partial heap copy freed, the producer finishes. */
static void test_queue_crash_block_stream_copy(void **state) {
  (void)state;
  for (unsigned nth = 1; nth <= 4; nth++) {
    mp_queue *q = fifo_new(0);
    struct bjob *v = mp_heap_calloc(1, sizeof *v);
    assert_non_null(v);
    *v = (struct bjob){q, B_GET_BLOCK, 2, 0};
    struct job *p = job(q, OP_PUT, 2, BIG);
    size_t base = heap_blocks();
    pid_t vp = cu_fork_armed("queue.get.committed", nth, bjob_main, v, 30);
    pid_t pp = spawn(p);
    cu_assert_killed_at(vp);
    unsigned char buf[8];
    ssize_t r;
    /* skips the rest of the stream as it comes, then finds nothing */
    while ((r = mp_queue_get(q, buf, sizeof buf, 0.3)) != -ETIMEDOUT)
      assert_int_not_equal(r, -EMSGSIZE); /* the message never surfaces */
    assert_done_within(pp, WITHIN);
    assert_int_equal(mp_queue_qsize(q), 0);
    assert_int_equal(heap_blocks(), base);
    assert_settled_and_free(q);
    job_free(p);
    mp_heap_free(v);
  }
}

/* ------------------------------------------------------------ large messages through the heap
 *
 * Section 1b of src/queue_ring.c: a copying put of a message longer than
 * chunk_max copies it into a heap block recorded in pblk, then hands the
 * block over with a BLOCK record, as put_block does. A kill at each step
 * leaves the message put whole or not at all, and the block either queued or
 * freed by the next producer's repair: the heap's block count comes back. */

/* The other tests of this suite reach the streaming path, and its crash
 * points, with the heap path refused (main()); these let it. A weak
 * reference: the switch exists only in builds with crash points. */
extern _Atomic int mp__queue_heap_refused __attribute__((weak));

static void heap_path(bool on) {
  if (&mp__queue_heap_refused)
    atomic_store(&mp__queue_heap_refused, on ? 0 : 1);
}

/* After a kill on the heap path: the queue is empty and usable, the heap
 * holds the `base` blocks it held before the message was put, and is sound. */
static void assert_heap_path_settled(mp_queue *q, size_t base, struct job *j) {
  assert_int_equal(mp_queue_qsize(q), 0);
  assert_int_equal(heap_blocks(), base);
  assert_int_equal(mp__heap_check(), 0);
  assert_settled_and_free(q);
  job_free(j);
  heap_path(false);
}

/* A producer killed at `point` inside a copying put of message 2 (BIG
 * bytes, through the heap); the next put (message 3) repairs. The consumer
 * sees 2 (KEPT) and 3, each once and whole, and no block is left behind. */
static void heap_kill_producer(const char *point, enum fate fate) {
  heap_path(true);
  mp_queue *q = fifo_new(0);
  struct job *v = job(q, OP_PUT, 2, BIG);
  size_t base = heap_blocks();
  print_message("producer killed at %s\n", point);
  pid_t vp = cu_fork_armed(point, 1, job_main, v, 30);
  cu_assert_killed_at(vp);
  put_msg(q, 3, 200, 0); /* takes prod_mutex from the dead producer: repairs */
  if (fate == KEPT)
    assert_int_equal(get_msg(q), 2);
  assert_int_equal(get_msg(q), 3);
  assert_int_equal(unfinished_count(q), fate == KEPT ? 2 : 1);
  assert_heap_path_settled(q, base, v);
}

static void test_queue_crash_heap_put_each_step(void **state) {
  (void)state;
  heap_kill_producer("heap.alloc.journaled", GONE);
  heap_kill_producer("heap.alloc.committed", GONE);
  heap_kill_producer("queue.block.put.allocated", GONE);
  heap_kill_producer("queue.block.put.filled", GONE);
  heap_kill_producer("queue.block.put.written", GONE);
  heap_kill_producer("queue.block.put.committed", KEPT);
  heap_kill_producer("queue.block.put.cleared", KEPT);
  heap_kill_producer("queue.put.finished", KEPT);
}

/* A consumer killed while it copies out a message put through the heap: as
 * for a put_block's block (section 1b), before head's commit the message
 * stays first, after it the message went with the dead consumer; either way
 * its block is freed once. */
static void heap_kill_consumer(const char *point, enum fate fate) {
  heap_path(true);
  mp_queue *q = fifo_new(0);
  struct job *c = job(q, OP_GET_ONE, 1, 0);
  size_t base = heap_blocks();
  put_msg(q, 1, BIG, 0);
  print_message("consumer killed at %s\n", point);
  pid_t cp = cu_fork_armed(point, 1, job_main, c, 30);
  cu_assert_killed_at(cp);
  if (fate == KEPT) {
    assert_int_equal(get_msg(q), 1);
  } else {
    unsigned char buf[8];
    assert_int_equal(mp_queue_get(q, buf, sizeof buf, 0.05), -ETIMEDOUT); /* repairs */
  }
  assert_heap_path_settled(q, base, c);
}

static void test_queue_crash_heap_get_each_step(void **state) {
  (void)state;
  heap_kill_consumer("queue.block.get.recorded", KEPT);
  heap_kill_consumer("queue.get.committed", GONE);
  heap_kill_consumer("heap.free.journaled", GONE);
  heap_kill_consumer("queue.get.finished", GONE);
}

/* The same random kills as the FIFO round above, with large messages going
 * through the heap instead of streaming. */
static void test_queue_crash_fifo_heap_survives_random_kills(void **state) {
  (void)state;
  heap_path(true);
  crash_rounds(MP_QUEUE_FIFO, env_u32("QUEUE_CRASH_ROUNDS", 200) / 2, 0x3c3c3c3c);
  heap_path(false);
}

int main(void) {
  heap_path(false); /* every test but the heap path's below: stream */
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_queue_crash_shutdown_flagged),
      cmocka_unit_test(test_queue_crash_put_written),
      cmocka_unit_test(test_queue_crash_put_committed),
      cmocka_unit_test(test_queue_crash_put_finished),
      cmocka_unit_test(test_queue_crash_stream_each_chunk),
      cmocka_unit_test(test_queue_crash_put_asleep),
      cmocka_unit_test(test_queue_crash_abort_written),
      cmocka_unit_test(test_queue_crash_abort_committed),
      cmocka_unit_test(test_queue_crash_prod_repair_woken),
      cmocka_unit_test(test_queue_crash_stream_dead_not_counted),
      cmocka_unit_test(test_queue_crash_stream_dead_not_reported),
      cmocka_unit_test(test_queue_crash_get_asleep),
      cmocka_unit_test(test_queue_crash_get_copied),
      cmocka_unit_test(test_queue_crash_get_committed_each_chunk),
      cmocka_unit_test(test_queue_crash_get_skip_each_chunk),
      cmocka_unit_test(test_queue_crash_get_finished),
      cmocka_unit_test(test_queue_crash_cons_repair_woken),
      cmocka_unit_test(test_queue_crash_close_marked),
      cmocka_unit_test(test_queue_crash_task_done_counted),
      cmocka_unit_test(test_queue_crash_reg_joiner),
      cmocka_unit_test(test_queue_crash_reg_watcher),
      cmocka_unit_test(test_queue_crash_reg_claimed),
      cmocka_unit_test(test_queue_crash_reg_zombie),
      cmocka_unit_test(test_queue_crash_list_each_word),
      cmocka_unit_test(test_queue_crash_list_put_copied),
      cmocka_unit_test(test_queue_crash_list_journaled),
      cmocka_unit_test(test_queue_crash_list_committed),
      cmocka_unit_test(test_queue_crash_list_put_unlocked),
      cmocka_unit_test(test_queue_crash_list_get_unlocked),
      cmocka_unit_test(test_queue_crash_list_put_grown),
      cmocka_unit_test(test_queue_crash_list_asleep),
      cmocka_unit_test(test_queue_crash_list_repair_replayed),
      cmocka_unit_test(test_queue_crash_list_join_sees_committed_count),
      cmocka_unit_test(test_queue_crash_free_half_done),
      cmocka_unit_test(test_queue_crash_block_put_each_step),
      cmocka_unit_test(test_queue_crash_block_get_recorded),
      cmocka_unit_test(test_queue_crash_block_get_committed),
      cmocka_unit_test(test_queue_crash_block_copy_allocated),
      cmocka_unit_test(test_queue_crash_block_get_handed),
      cmocka_unit_test(test_queue_crash_block_stream_copy),
      cmocka_unit_test(test_queue_crash_heap_put_each_step),
      cmocka_unit_test(test_queue_crash_heap_get_each_step),
      cmocka_unit_test(test_queue_crash_fifo_heap_survives_random_kills),
      cmocka_unit_test(test_queue_crash_fifo_survives_random_kills),
      cmocka_unit_test(test_queue_crash_priority_survives_random_kills),
      cmocka_unit_test(test_queue_crash_lifo_survives_random_kills),
  };
  return TU_RUN("queue_crash", tests);
}
