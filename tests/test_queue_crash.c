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

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_queue_crash_fifo_survives_random_kills),
      cmocka_unit_test(test_queue_crash_priority_survives_random_kills),
      cmocka_unit_test(test_queue_crash_lifo_survives_random_kills),
  };
  return TU_RUN("queue_crash", tests);
}
