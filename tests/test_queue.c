/* SPDX-License-Identifier: MIT */
/* Queue, SimpleQueue, JoinableQueue, LIFO and priority queues: messages,
 * errors, timeouts, close, many producers and consumers (processes and
 * threads), streaming, handles sent through queues. */
#include "testutil.h"

#include <limits.h>
#include <math.h>
#include <mp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/wait.h>

/* ------------------------------------------------------------ messages */

/* A numbered, checksummed message: 16 header bytes (producer, sequence,
 * length, header check) and a payload every byte of which depends on all
 * three, so a torn, mixed or shifted message never passes. */
#define MSG_MIN 16

static uint32_t mix(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

static void msg_fill(void *buf, uint32_t prod, uint32_t seq, size_t len) {
  uint32_t h[4] = {prod, seq, (uint32_t)len, mix(prod * 0x9e3779b9U ^ seq ^ (uint32_t)len)};
  unsigned char *b = buf;
  memcpy(b, h, sizeof h);
  uint32_t k = mix(h[3]);
  for (size_t i = MSG_MIN; i < len; i++)
    b[i] = (unsigned char)(k + i * 131 + (i >> 8));
}

/* Whether buf holds a whole message; stores its producer and sequence. */
static int msg_check(const void *buf, size_t len, uint32_t *prod, uint32_t *seq) {
  uint32_t h[4];
  if (len < MSG_MIN)
    return 0;
  memcpy(h, buf, sizeof h);
  if (h[2] != len || h[3] != mix(h[0] * 0x9e3779b9U ^ h[1] ^ h[2]))
    return 0;
  const unsigned char *b = buf;
  uint32_t k = mix(h[3]);
  for (size_t i = MSG_MIN; i < len; i++)
    if (b[i] != (unsigned char)(k + i * 131 + (i >> 8)))
      return 0;
  *prod = h[0];
  *seq = h[1];
  return 1;
}

static mp_queue *fifo(size_t maxsize, size_t ring) {
  mp_queue_options o = {.ring_size = ring};
  mp_queue *q = NULL;
  assert_int_equal(mp_queue_new(maxsize, &o, &q), 0);
  assert_non_null(q);
  return q;
}

/* ------------------------------------------------------------ basics */

static void test_queue_put_get_in_order(void **state) {
  (void)state;
  mp_queue *q;
  assert_int_equal(mp_simple_queue_new(&q), 0);
  assert_int_equal(mp_heap_contains(q), 1);
  assert_int_equal(mp_queue_empty(q), 1);
  assert_int_equal(mp_queue_full(q), 0);
  assert_int_equal(mp_queue_qsize(q), 0);
  char buf[64];
  for (int i = 0; i < 10; i++) {
    snprintf(buf, sizeof buf, "message %d", i);
    assert_int_equal(mp_queue_put(q, buf, strlen(buf) + 1, i % 2 ? MP_NOWAIT : MP_FOREVER), 0);
    assert_int_equal(mp_queue_qsize(q), i + 1);
  }
  assert_int_equal(mp_queue_empty(q), 0);
  size_t len = 0;
  assert_int_equal(mp_queue_peek_size(q, &len, MP_NOWAIT), 0);
  assert_int_equal(len, strlen("message 0") + 1);
  for (int i = 0; i < 10; i++) {
    char want[64];
    snprintf(want, sizeof want, "message %d", i);
    memset(buf, 0, sizeof buf);
    if (i % 3 == 2) {
      void *m = NULL;
      size_t n = 0;
      assert_int_equal(mp_queue_get_alloc(q, &m, &n, 1.0), 0);
      assert_int_equal(n, strlen(want) + 1);
      assert_string_equal(m, want);
      free(m);
    } else {
      assert_int_equal(mp_queue_get(q, buf, sizeof buf, i % 2 ? 5.0 : MP_NOWAIT),
                       (ssize_t)strlen(want) + 1);
      assert_string_equal(buf, want);
    }
    assert_int_equal(mp_queue_qsize(q), 9 - i);
  }
  assert_int_equal(mp_queue_empty(q), 1);
  assert_int_equal(mp_queue_get(q, buf, sizeof buf, MP_NOWAIT), -ETIMEDOUT);
  assert_int_equal(mp_queue_peek_size(q, &len, MP_NOWAIT), -ETIMEDOUT);
  assert_int_equal(mp_queue_free(q), 0);
}

static void test_queue_errors(void **state) {
  (void)state;
  char buf[8] = {0};
  void *m;
  size_t n;
  mp_queue *q;
  mp_queue_options bad_order = {.order = 3}, neg_order = {.order = -1};
  mp_queue_options huge_ring = {.ring_size = ((size_t)1 << 30) + 1};
  assert_int_equal(mp_queue_new(0, NULL, NULL), -EINVAL);
  assert_int_equal(mp_queue_new(0, &bad_order, &q), -EINVAL);
  assert_int_equal(mp_queue_new(0, &neg_order, &q), -EINVAL);
  assert_int_equal(mp_queue_new(0, &huge_ring, &q), -EINVAL);
  assert_int_equal(mp_simple_queue_new(NULL), -EINVAL);
  assert_int_equal(mp_joinable_queue_new(0, NULL), -EINVAL);
  assert_int_equal(mp_lifo_queue_new(0, NULL), -EINVAL);
  assert_int_equal(mp_priority_queue_new(0, NULL), -EINVAL);
  assert_int_equal(mp_queue_put(NULL, buf, 1, 0), -EINVAL);
  assert_int_equal(mp_queue_put_priority(NULL, 1, buf, 1, 0), -EINVAL);
  assert_int_equal(mp_queue_get(NULL, buf, sizeof buf, 0), -EINVAL);
  assert_int_equal(mp_queue_get_alloc(NULL, &m, &n, 0), -EINVAL);
  assert_int_equal(mp_queue_peek_size(NULL, &n, 0), -EINVAL);
  assert_int_equal(mp_queue_qsize(NULL), -EINVAL);
  assert_int_equal(mp_queue_empty(NULL), -EINVAL);
  assert_int_equal(mp_queue_full(NULL), -EINVAL);
  assert_int_equal(mp_queue_close(NULL), -EINVAL);
  assert_int_equal(mp_queue_task_done(NULL), -EINVAL);
  assert_int_equal(mp_queue_join(NULL, 0), -EINVAL);
  assert_int_equal(mp_queue_free(NULL), 0);

  mp_queue *kinds[3];
  assert_int_equal(mp_simple_queue_new(&kinds[0]), 0);
  assert_int_equal(mp_lifo_queue_new(0, &kinds[1]), 0);
  assert_int_equal(mp_priority_queue_new(0, &kinds[2]), 0);
  for (int k = 0; k < 3; k++) {
    q = kinds[k];
    assert_int_equal(mp_queue_put(q, NULL, 1, 0), -EINVAL);
    assert_int_equal(mp_queue_put(q, buf, 1, NAN), -EINVAL);
    assert_int_equal(mp_queue_put(q, buf, (size_t)SSIZE_MAX + 1, 0), -EMSGSIZE);
    assert_int_equal(mp_queue_get(q, NULL, 1, 0), -EINVAL);
    assert_int_equal(mp_queue_get(q, buf, sizeof buf, NAN), -EINVAL);
    assert_int_equal(mp_queue_get_alloc(q, NULL, &n, 0), -EINVAL);
    assert_int_equal(mp_queue_get_alloc(q, &m, NULL, 0), -EINVAL);
    assert_int_equal(mp_queue_peek_size(q, NULL, 0), -EINVAL);
    /* Not joinable. */
    assert_int_equal(mp_queue_task_done(q), -EINVAL);
    assert_int_equal(mp_queue_join(q, 0), -EINVAL);
    /* Priorities belong to priority queues. */
    assert_int_equal(mp_queue_put_priority(q, 1, buf, 1, 0), k == 2 ? 0 : -EINVAL);
    assert_int_equal(mp_queue_qsize(q), k == 2 ? 1 : 0);
    assert_int_equal(mp_queue_free(q), 0);
    /* A freed handle is refused. */
    assert_int_equal(mp_queue_put(q, buf, 1, 0), -EINVAL);
    assert_int_equal(mp_queue_get(q, buf, sizeof buf, 0), -EINVAL);
    assert_int_equal(mp_queue_qsize(q), -EINVAL);
    assert_int_equal(mp_queue_free(q), -EINVAL);
  }
  /* A heap block that is not a queue. */
  void *junk = mp_heap_calloc(1, 256);
  assert_int_equal(mp_queue_put(junk, buf, 1, 0), -EINVAL);
  assert_int_equal(mp_queue_get(junk, buf, sizeof buf, 0), -EINVAL);
  assert_int_equal(mp_queue_close(junk), -EINVAL);
  assert_int_equal(mp_queue_free(junk), -EINVAL);
  mp_heap_free(junk);
  /* A LIFO or priority message the family heap cannot hold (2 GiB, from a
   * reserved mapping that is never touched): -ENOMEM, and nothing changes. */
  size_t huge = (size_t)2 << 30;
  void *big = mmap(NULL, huge, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  assert_true(big != MAP_FAILED);
  assert_int_equal(mp_lifo_queue_new(0, &q), 0);
  assert_int_equal(mp_queue_put(q, big, huge, MP_FOREVER), -ENOMEM);
  assert_int_equal(mp_queue_qsize(q), 0);
  assert_int_equal(mp_queue_put(q, "ok", 2, 0), 0);
  assert_int_equal(mp_queue_free(q), 0);
  munmap(big, huge);
  /* NaN for join on a joinable queue. */
  assert_int_equal(mp_joinable_queue_new(0, &q), 0);
  assert_int_equal(mp_queue_join(q, NAN), -EINVAL);
  assert_int_equal(mp_queue_free(q), 0);
}

static void test_queue_empty_messages(void **state) {
  (void)state;
  mp_queue *kinds[3];
  assert_int_equal(mp_simple_queue_new(&kinds[0]), 0);
  assert_int_equal(mp_lifo_queue_new(0, &kinds[1]), 0);
  assert_int_equal(mp_priority_queue_new(0, &kinds[2]), 0);
  for (int k = 0; k < 3; k++) {
    mp_queue *q = kinds[k];
    assert_int_equal(mp_queue_put(q, NULL, 0, 0), 0);
    assert_int_equal(mp_queue_put(q, "x", 0, 0), 0);
    assert_int_equal(mp_queue_qsize(q), 2);
    assert_int_equal(mp_queue_empty(q), 0);
    size_t n = 99;
    assert_int_equal(mp_queue_peek_size(q, &n, 0), 0);
    assert_int_equal(n, 0);
    assert_int_equal(mp_queue_get(q, NULL, 0, 0), 0);
    void *m = NULL;
    n = 99;
    assert_int_equal(mp_queue_get_alloc(q, &m, &n, 0), 0);
    assert_non_null(m); /* never NULL, even for an empty message */
    assert_int_equal(n, 0);
    free(m);
    assert_int_equal(mp_queue_empty(q), 1);
    assert_int_equal(mp_queue_get(q, NULL, 0, 0), -ETIMEDOUT);
    assert_int_equal(mp_queue_free(q), 0);
  }
}

static void test_queue_emsgsize_keeps_message(void **state) {
  (void)state;
  mp_queue *kinds[4];
  assert_int_equal(mp_simple_queue_new(&kinds[0]), 0);
  assert_int_equal(mp_lifo_queue_new(0, &kinds[1]), 0);
  assert_int_equal(mp_priority_queue_new(0, &kinds[2]), 0);
  kinds[3] = fifo(0, 4096); /* 20000 bytes: streamed */
  for (int k = 0; k < 4; k++) {
    mp_queue *q = kinds[k];
    size_t len = k == 3 ? 20000 : 100;
    char *msg = malloc(len), *buf = malloc(len);
    msg_fill(msg, 7, (uint32_t)k, len);
    if (k == 3) {
      /* The producer must stream: a child puts while the parent gets. */
      pid_t pid = fork();
      if (pid == 0) {
        alarm(20);
        _exit(mp_queue_put(q, msg, len, 10) == 0 ? 0 : 1);
      }
      assert_true(pid > 0);
      size_t n = 0;
      assert_int_equal(mp_queue_peek_size(q, &n, 10), 0);
      assert_int_equal(n, len);
      assert_int_equal(mp_queue_get(q, buf, len - 1, 10), -EMSGSIZE);
      assert_int_equal(mp_queue_get(q, buf, 16, 10), -EMSGSIZE);
      assert_int_equal(mp_queue_qsize(q), 1);
      assert_int_equal(mp_queue_get(q, buf, len, 10), (ssize_t)len);
      assert_child_ok(pid);
    } else {
      assert_int_equal(mp_queue_put(q, msg, len, 0), 0);
      assert_int_equal(mp_queue_get(q, buf, len - 1, 0), -EMSGSIZE);
      assert_int_equal(mp_queue_get(q, NULL, 0, 0), -EMSGSIZE);
      assert_int_equal(mp_queue_qsize(q), 1);
      size_t n = 0;
      assert_int_equal(mp_queue_peek_size(q, &n, 0), 0);
      assert_int_equal(n, len);
      assert_int_equal(mp_queue_get(q, buf, len, 0), (ssize_t)len);
    }
    uint32_t p, s;
    assert_true(msg_check(buf, len, &p, &s));
    assert_int_equal(p, 7);
    assert_int_equal(s, (uint32_t)k);
    assert_int_equal(mp_queue_empty(q), 1);
    free(msg);
    free(buf);
    assert_int_equal(mp_queue_free(q), 0);
  }
}

/* Many odd sizes through a small ring: records wrap around its end. */
static void test_queue_messages_wrap_around_the_ring(void **state) {
  (void)state;
  mp_queue *q = fifo(0, 1024);
  char buf[300];
  uint32_t p, s;
  for (uint32_t i = 0; i < 2000; i++) {
    size_t len = MSG_MIN + (i * 37) % 200;
    msg_fill(buf, 1, i, len);
    assert_int_equal(mp_queue_put(q, buf, len, 0), 0);
    if (mp_queue_qsize(q) < 3)
      continue; /* keep two or three in the ring */
    ssize_t r = mp_queue_get(q, buf, sizeof buf, 0);
    assert_true(r >= MSG_MIN);
    assert_true(msg_check(buf, (size_t)r, &p, &s));
  }
  while (mp_queue_get(q, buf, sizeof buf, 0) > 0) {
  }
  assert_int_equal(mp_queue_qsize(q), 0);
  assert_int_equal(mp_queue_free(q), 0);
}

/* ring_size 1000 is rounded to 1024: 128 empty messages (8 bytes each). */
static void test_queue_ring_bounds_and_maxsize(void **state) {
  (void)state;
  mp_queue *q = fifo(0, 1000);
  int n = 0;
  while (mp_queue_put(q, NULL, 0, 0) == 0)
    n++;
  assert_int_equal(n, 128);
  assert_int_equal(mp_queue_full(q), 1);
  assert_int_equal(mp_queue_qsize(q), 128);
  assert_int_equal(mp_queue_put(q, NULL, 0, MP_NOWAIT), -ETIMEDOUT);
  assert_int_equal(mp_queue_get(q, NULL, 0, 0), 0);
  assert_int_equal(mp_queue_full(q), 0);
  assert_int_equal(mp_queue_free(q), 0);

  mp_queue *kinds[3];
  kinds[0] = fifo(3, 0);
  assert_int_equal(mp_lifo_queue_new(3, &kinds[1]), 0);
  assert_int_equal(mp_priority_queue_new(3, &kinds[2]), 0);
  for (int k = 0; k < 3; k++) {
    q = kinds[k];
    for (int i = 0; i < 3; i++) {
      assert_int_equal(mp_queue_full(q), 0);
      assert_int_equal(mp_queue_put(q, "abc", 3, 0), 0);
    }
    assert_int_equal(mp_queue_full(q), 1);
    assert_int_equal(mp_queue_put(q, "abc", 3, 0), -ETIMEDOUT);
    assert_int_equal(mp_queue_qsize(q), 3);
    char b[3];
    assert_int_equal(mp_queue_get(q, b, 3, 0), 3);
    assert_int_equal(mp_queue_full(q), 0);
    assert_int_equal(mp_queue_put(q, "abc", 3, 0), 0);
    assert_int_equal(mp_queue_free(q), 0);
  }
}

/* ------------------------------------------------------------ large messages
 *
 * A copying put of a message longer than a quarter of the ring copies it
 * into a family-heap block and queues a BLOCK record padded in proportion to
 * the message (src/queue_ring.c, section 1b): whole messages in flight,
 * bounded by the ring. When the heap has no room for the copy, it streams
 * through the ring as before. */

static size_t heap_count(void) {
  mp_heap_stats st;
  assert_int_equal(mp_heap_stats_get(&st), 0);
  return st.blocks;
}

/* Blocks taken from the family heap so that no block of `len` bytes is left
 * (every free piece is below len / 4): a put of a message of len bytes then
 * finds no room for its copy and streams. */
struct hog {
  size_t n;
  void *b[1024];
};

static struct hog *heap_hog(size_t len) {
  struct hog *h = calloc(1, sizeof *h);
  assert_non_null(h);
  for (size_t sz = (size_t)64 << 20;; sz /= 2) {
    void *b;
    while (h->n < sizeof h->b / sizeof h->b[0] && (b = mp_heap_alloc(sz)))
      h->b[h->n++] = b;
    if (sz < len / 4)
      break;
  }
  void *probe = mp_heap_alloc(len);
  assert_null(probe);
  return h;
}

static void heap_unhog(struct hog *h) {
  for (size_t i = 0; i < h->n; i++)
    assert_int_equal(mp_heap_free(h->b[i]), 0);
  free(h);
}

/* Large messages go whole into the queue without waiting for a consumer,
 * several at once, bounded by the ring: a queue of ring `ring` holds at
 * most 16 times its ring in such messages. A get into too small a buffer
 * leaves the message first; get_block hands the heap copy itself over; a
 * put that finds the ring full times out without a trace; mp_queue_free()
 * frees the copies still queued. */
static void test_queue_large_messages_through_the_heap(void **state) {
  (void)state;
  size_t ring = 4096, len = 3 * 4096;
  size_t base = heap_count();
  mp_queue *q = fifo(0, ring);
  size_t with_queue = heap_count();
  char *m = malloc(len), *b = malloc(len);
  assert_non_null(m);
  assert_non_null(b);
  int n = 0, r;
  for (;;) {
    msg_fill(m, 5, (uint32_t)n, len);
    if ((r = mp_queue_put(q, m, len, MP_NOWAIT)) != 0)
      break;
    n++;
  }
  assert_int_equal(r, -ETIMEDOUT);
  assert_true(n >= 2);
  assert_true((size_t)n * len <= 16 * ring + len);
  assert_int_equal(mp_queue_qsize(q), n);
  assert_int_equal(heap_count(), with_queue + (size_t)n);
  /* full for such messages: a timed put times out and leaves nothing behind */
  assert_int_equal(mp_queue_put(q, m, len, 0.1), -ETIMEDOUT);
  assert_int_equal(mp_queue_qsize(q), n);
  assert_int_equal(heap_count(), with_queue + (size_t)n);
  /* too small a buffer: -EMSGSIZE, and the message stays first */
  size_t sz = 0;
  assert_int_equal(mp_queue_peek_size(q, &sz, 0), 0);
  assert_int_equal(sz, len);
  assert_int_equal(mp_queue_get(q, b, len - 1, 0), -EMSGSIZE);
  assert_int_equal(mp_queue_qsize(q), n);
  uint32_t p, sq;
  for (int i = 0; i < n - 2; i++) {
    if (i == 1) {
      void *blk = NULL;
      size_t bl = 0;
      assert_int_equal(mp_queue_get_block(q, &blk, &bl, 0), 0);
      assert_int_equal(bl, len);
      assert_true(msg_check(blk, bl, &p, &sq));
      assert_int_equal(mp_heap_free(blk), 0);
    } else {
      assert_int_equal(mp_queue_get(q, b, len, 0), (ssize_t)len);
      assert_true(msg_check(b, len, &p, &sq));
    }
    assert_int_equal(p, 5);
    assert_int_equal(sq, (uint32_t)i);
  }
  assert_int_equal(mp_queue_qsize(q), 2);
  assert_int_equal(heap_count(), with_queue + 2);
  /* two left in the queue: freed with it */
  assert_int_equal(mp_queue_free(q), 0);
  assert_int_equal(heap_count(), base);
  free(m);
  free(b);
}

/* ------------------------------------------------------------ streaming
 *
 * The path of a large message when the heap has no room for its copy. */

struct stream_arg {
  mp_queue *q;
  size_t len;
  int count;
};

static int stream_producer(void *p) {
  struct stream_arg *a = p;
  char *m = malloc(a->len);
  CHILD_CHECK(m != NULL);
  for (int i = 0; i < a->count; i++) {
    msg_fill(m, 3, (uint32_t)i, a->len);
    CHILD_CHECK(mp_queue_put(a->q, m, a->len, 30) == 0);
  }
  free(m);
  return 0;
}

/* Large messages arrive whole and in order, through the heap and, with the
 * heap full, streamed through the ring. */
static void test_queue_large_messages_pass_whole(void **state) {
  (void)state;
  for (int streamed = 0; streamed < 2; streamed++) {
    struct {
      size_t ring, len;
      int count;
    } cases[] = {
        {4096, 4 * 4096, 20},     /* four times the ring */
        {4096, 4 * 4096 + 3, 5},  /* not a multiple of anything */
        {1024, 1025, 50},         /* just above the ring */
        {0, (size_t)16 << 20, 2}, /* 16 MiB through the default ring */
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
      mp_queue *q = fifo(0, cases[c].ring);
      struct hog *hog = streamed ? heap_hog(cases[c].len) : NULL;
      struct stream_arg a = {q, cases[c].len, cases[c].count};
      pid_t pid = tu_fork(stream_producer, &a, 60);
      assert_true(pid > 0);
      char *buf = malloc(a.len);
      for (int i = 0; i < a.count; i++) {
        uint32_t p, s;
        if (i % 2) {
          void *m = NULL;
          size_t n = 0;
          assert_int_equal(mp_queue_get_alloc(q, &m, &n, 30), 0);
          assert_int_equal(n, a.len);
          assert_true(msg_check(m, n, &p, &s));
          free(m);
        } else {
          assert_int_equal(mp_queue_get(q, buf, a.len, 30), (ssize_t)a.len);
          assert_true(msg_check(buf, a.len, &p, &s));
        }
        assert_int_equal(p, 3);
        assert_int_equal(s, (uint32_t)i);
      }
      assert_child_ok(pid);
      assert_int_equal(mp_queue_qsize(q), 0);
      free(buf);
      if (hog)
        heap_unhog(hog);
      assert_int_equal(mp_queue_free(q), 0);
    }
  }
}

/* A streamed put that times out leaves no trace: the part sent is dropped and
 * the queue goes on. With MP_NOWAIT it does not start at all. */
static void test_queue_stream_timeout_discards_the_partial_message(void **state) {
  (void)state;
  mp_queue *q = fifo(0, 4096);
  size_t len = 3 * 4096;
  char *m = malloc(len), *b = malloc(len);
  struct hog *hog = heap_hog(len);
  msg_fill(m, 1, 1, len);
  assert_int_equal(mp_queue_put(q, m, len, MP_NOWAIT), -ETIMEDOUT);
  assert_int_equal(mp_queue_qsize(q), 0);
  double t0 = tu_now();
  assert_int_equal(mp_queue_put(q, m, len, 0.2), -ETIMEDOUT);
  double el = tu_now() - t0;
  assert_true(el >= 0.19);
  assert_true(el < 2.0);
  assert_int_equal(mp_queue_qsize(q), 0);
  assert_int_equal(mp_queue_empty(q), 1);
  assert_int_equal(mp_queue_get(q, b, len, MP_NOWAIT), -ETIMEDOUT);
  /* Still usable: a small message and then a streamed one. */
  msg_fill(m, 1, 2, 100);
  assert_int_equal(mp_queue_put(q, m, 100, 0), 0);
  assert_int_equal(mp_queue_get(q, b, len, 1), 100);
  uint32_t p, s;
  assert_true(msg_check(b, 100, &p, &s));
  assert_int_equal(s, 2);
  struct stream_arg a = {q, len, 3};
  pid_t pid = tu_fork(stream_producer, &a, 30);
  for (int i = 0; i < 3; i++) {
    assert_int_equal(mp_queue_get(q, b, len, 10), (ssize_t)len);
    assert_true(msg_check(b, len, &p, &s));
    assert_int_equal(s, (uint32_t)i);
  }
  assert_child_ok(pid);
  free(m);
  free(b);
  heap_unhog(hog);
  assert_int_equal(mp_queue_free(q), 0);
}

/* ------------------------------------------------------------ timeouts */

struct holder {
  mp_queue *q;
  _Atomic int state;
};

static void check_get_times_out(mp_queue *q) {
  char b[8];
  double t0 = tu_now();
  assert_int_equal(mp_queue_get(q, b, sizeof b, MP_NOWAIT), -ETIMEDOUT);
  assert_true(tu_now() - t0 < 0.5);
  t0 = tu_now();
  assert_int_equal(mp_queue_get(q, b, sizeof b, 0.2), -ETIMEDOUT);
  double el = tu_now() - t0;
  assert_true(el >= 0.19);
  assert_true(el < 2.0);
  /* Signals arrive during the wait: it neither ends early nor stretches. */
  tu_signals_start(0.05, 0.05);
  t0 = tu_now();
  int r = (int)mp_queue_get(q, b, sizeof b, 0.5);
  el = tu_now() - t0;
  int seen = tu_signals_stop();
  assert_int_equal(r, -ETIMEDOUT);
  assert_true(seen >= 2);
  assert_true(el >= 0.49);
  assert_true(el < 2.5);
}

static void check_put_times_out(mp_queue *q, size_t len) {
  char b[64] = {0};
  double t0 = tu_now();
  assert_int_equal(mp_queue_put(q, b, len, MP_NOWAIT), -ETIMEDOUT);
  assert_true(tu_now() - t0 < 0.5);
  t0 = tu_now();
  assert_int_equal(mp_queue_put(q, b, len, 0.2), -ETIMEDOUT);
  double el = tu_now() - t0;
  assert_true(el >= 0.19);
  assert_true(el < 2.0);
  tu_signals_start(0.05, 0.05);
  t0 = tu_now();
  int r = mp_queue_put(q, b, len, 0.5);
  el = tu_now() - t0;
  int seen = tu_signals_stop();
  assert_int_equal(r, -ETIMEDOUT);
  assert_true(seen >= 2);
  assert_true(el >= 0.49);
  assert_true(el < 2.5);
}

static void test_queue_get_timeouts_and_signals(void **state) {
  (void)state;
  mp_queue *kinds[3];
  assert_int_equal(mp_simple_queue_new(&kinds[0]), 0);
  assert_int_equal(mp_lifo_queue_new(0, &kinds[1]), 0);
  assert_int_equal(mp_priority_queue_new(0, &kinds[2]), 0);
  for (int k = 0; k < 3; k++) {
    check_get_times_out(kinds[k]);
    size_t n;
    assert_int_equal(mp_queue_peek_size(kinds[k], &n, 0.05), -ETIMEDOUT);
    assert_int_equal(mp_queue_free(kinds[k]), 0);
  }
}

static void test_queue_put_timeouts_and_signals(void **state) {
  (void)state;
  mp_queue *kinds[4];
  kinds[0] = fifo(1, 0);    /* full by count */
  kinds[1] = fifo(0, 1024); /* full by bytes */
  assert_int_equal(mp_lifo_queue_new(1, &kinds[2]), 0);
  assert_int_equal(mp_priority_queue_new(1, &kinds[3]), 0);
  for (int k = 0; k < 4; k++) {
    mp_queue *q = kinds[k];
    size_t len = k == 1 ? 40 : 1;
    while (mp_queue_put(q, "0123456789012345678901234567890123456789", len, 0) == 0) {
    }
    if (k == 1) {
      /* No room for 40 bytes: not yet full, as room for an empty message is
       * left; fill that too. */
      assert_int_equal(mp_queue_full(q), 0);
      while (mp_queue_put(q, NULL, 0, 0) == 0) {
      }
    }
    assert_int_equal(mp_queue_full(q), 1);
    check_put_times_out(q, len);
    assert_int_equal(mp_queue_free(q), 0);
  }
}

/* A getter another thread or process keeps waiting holds no lock that makes
 * a timed get overrun, and a get on a queue with a message never waits. */
static int blocked_getter(void *p) {
  struct holder *h = p;
  char b[16];
  atomic_store(&h->state, 1);
  ssize_t r = mp_queue_get(h->q, b, sizeof b, 30);
  CHILD_CHECK(r == 5);
  CHILD_CHECK(memcmp(b, "hello", 5) == 0);
  return 0;
}

static void test_queue_timed_get_beside_a_blocked_getter(void **state) {
  (void)state;
  struct holder *h = mp_heap_calloc(1, sizeof *h);
  assert_int_equal(mp_simple_queue_new(&h->q), 0);
  pid_t pid = tu_fork(blocked_getter, h, 40);
  while (atomic_load(&h->state) != 1)
    tu_sleep(0.001);
  tu_sleep(0.05);
  check_get_times_out(h->q);
  assert_int_equal(mp_queue_put(h->q, "hello", 5, 0), 0);
  assert_child_ok(pid);
  assert_int_equal(mp_queue_free(h->q), 0);
  mp_heap_free(h);
}

/* A sleeping consumer is woken by a put, soon, and uses no CPU meanwhile. */
static int sleeping_getter(void *p) {
  struct holder *h = p;
  char b[16];
  atomic_store(&h->state, 1);
  CHILD_CHECK(mp_queue_get(h->q, b, sizeof b, MP_FOREVER) == 2);
  atomic_store(&h->state, 2);
  return 0;
}

static void test_queue_blocked_get_uses_no_cpu_and_wakes(void **state) {
  (void)state;
  mp_queue *kinds[2];
  assert_int_equal(mp_simple_queue_new(&kinds[0]), 0);
  assert_int_equal(mp_priority_queue_new(0, &kinds[1]), 0);
  for (int k = 0; k < 2; k++) {
    struct holder *h = mp_heap_calloc(1, sizeof *h);
    h->q = kinds[k];
    pid_t pid = tu_fork(sleeping_getter, h, 30);
    while (atomic_load(&h->state) != 1)
      tu_sleep(0.001);
    tu_sleep(1.0);
    double t0 = tu_now();
    assert_int_equal(mp_queue_put(h->q, "hi", 2, 0), 0);
    while (atomic_load(&h->state) != 2 && tu_now() - t0 < 5)
      tu_sleep(0.0005);
    assert_int_equal(atomic_load(&h->state), 2);
    assert_true(tu_now() - t0 < 0.5);
    int st;
    struct rusage ru;
    assert_int_equal(wait4(pid, &st, 0, &ru), pid);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    double cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6 +
                 (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec * 1e-6;
    assert_true(cpu < 0.1); /* a second asleep: a few wake-ups at most */
    assert_int_equal(mp_queue_free(h->q), 0);
    mp_heap_free(h);
  }
}

/* ------------------------------------------------------------ close */

static int close_waiter(void *p) {
  struct holder *h = p;
  atomic_store(&h->state, 1);
  char b[8];
  CHILD_CHECK(mp_queue_get(h->q, b, sizeof b, 20) == -EPIPE);
  return 0;
}

static int close_putter(void *p) {
  struct holder *h = p;
  atomic_store(&h->state, 1);
  CHILD_CHECK(mp_queue_put(h->q, "x", 1, 20) == -EPIPE);
  return 0;
}

static int close_streamer(void *p) {
  struct holder *h = p;
  size_t len = 64 * 1024;
  char *m = calloc(1, len);
  CHILD_CHECK(m != NULL);
  atomic_store(&h->state, 1);
  CHILD_CHECK(mp_queue_put(h->q, m, len, 20) == -EPIPE);
  free(m);
  return 0;
}

static void test_queue_close(void **state) {
  (void)state;
  for (int k = 0; k < 3; k++) {
    mp_queue *q;
    mp_queue_options o = {.order = k};
    assert_int_equal(mp_queue_new(0, &o, &q), 0);
    assert_int_equal(mp_queue_put(q, "a", 1, 0), 0);
    assert_int_equal(mp_queue_put(q, "b", 1, 0), 0);
    assert_int_equal(mp_queue_close(q), 0);
    assert_int_equal(mp_queue_close(q), 0); /* twice is harmless */
    assert_int_equal(mp_queue_put(q, "c", 1, 0), -EPIPE);
    assert_int_equal(mp_queue_put(q, "c", 1, MP_FOREVER), -EPIPE);
    assert_int_equal(mp_queue_qsize(q), 2);
    char b[4];
    void *m;
    size_t n;
    assert_int_equal(mp_queue_get(q, b, sizeof b, 0), 1);
    assert_int_equal(b[0], k == 1 ? 'b' : 'a');
    assert_int_equal(mp_queue_get_alloc(q, &m, &n, 0), 0);
    assert_int_equal(((char *)m)[0], k == 1 ? 'a' : 'b');
    free(m);
    assert_int_equal(mp_queue_get(q, b, sizeof b, 0), -EPIPE);
    assert_int_equal(mp_queue_get(q, b, sizeof b, MP_FOREVER), -EPIPE);
    assert_int_equal(mp_queue_get_alloc(q, &m, &n, 1), -EPIPE);
    assert_int_equal(mp_queue_peek_size(q, &n, 1), -EPIPE);
    assert_int_equal(mp_queue_empty(q), 1);
    assert_int_equal(mp_queue_free(q), 0);

    /* Blocked getters and putters wake with -EPIPE. */
    struct holder *h = mp_heap_calloc(1, sizeof *h);
    assert_int_equal(mp_queue_new(1, &o, &h->q), 0);
    pid_t g = tu_fork(close_waiter, h, 30);
    while (atomic_load(&h->state) != 1)
      tu_sleep(0.001);
    tu_sleep(0.1);
    double t0 = tu_now();
    assert_int_equal(mp_queue_close(h->q), 0);
    assert_child_ok(g);
    assert_true(tu_now() - t0 < 1.0);
    assert_int_equal(mp_queue_free(h->q), 0);

    assert_int_equal(mp_queue_new(1, &o, &h->q), 0);
    assert_int_equal(mp_queue_put(h->q, "z", 1, 0), 0);
    atomic_store(&h->state, 0);
    pid_t p = tu_fork(close_putter, h, 30);
    while (atomic_load(&h->state) != 1)
      tu_sleep(0.001);
    tu_sleep(0.1);
    t0 = tu_now();
    assert_int_equal(mp_queue_close(h->q), 0);
    assert_child_ok(p);
    assert_true(tu_now() - t0 < 1.0);
    assert_int_equal(mp_queue_get(h->q, b, sizeof b, 0), 1); /* the one put before */
    assert_int_equal(mp_queue_get(h->q, b, sizeof b, 0), -EPIPE);
    assert_int_equal(mp_queue_free(h->q), 0);
    mp_heap_free(h);
  }
  /* A message being streamed (the heap full) when the queue closes is
   * dropped whole. */
  struct holder *h = mp_heap_calloc(1, sizeof *h);
  h->q = fifo(0, 4096);
  struct hog *hog = heap_hog(64 * 1024);
  pid_t p = tu_fork(close_streamer, h, 30);
  while (atomic_load(&h->state) != 1)
    tu_sleep(0.001);
  tu_sleep(0.1);
  assert_int_equal(mp_queue_qsize(h->q), 1); /* counted from its first chunk */
  assert_int_equal(mp_queue_close(h->q), 0);
  assert_child_ok(p);
  char *b = malloc(64 * 1024);
  assert_int_equal(mp_queue_get(h->q, b, 64 * 1024, 5), -EPIPE);
  assert_int_equal(mp_queue_qsize(h->q), 0);
  free(b);
  heap_unhog(hog);
  assert_int_equal(mp_queue_free(h->q), 0);
  mp_heap_free(h);
}

/* ------------------------------------------------------------ many to many */

#define MPMC_PRODUCERS 3
#define MPMC_CONSUMERS 3
#define MPMC_EACH 3000

/* Shared by the parent and the children: what each consumer received, in
 * order. */
struct mpmc {
  mp_queue *q;
  size_t big; /* every 97th message has this size (streamed) */
  _Atomic uint32_t got_n[MPMC_CONSUMERS];
  uint64_t got[MPMC_CONSUMERS][MPMC_PRODUCERS * MPMC_EACH];
  _Atomic int failed;
};

static size_t mpmc_size(const struct mpmc *s, uint32_t seq) {
  if (seq % 97 == 13)
    return s->big;
  return MSG_MIN + (seq * 7919) % 300;
}

static int mpmc_produce(struct mpmc *s, uint32_t id) {
  char *m = malloc(s->big);
  if (!m)
    return 1;
  for (uint32_t i = 0; i < MPMC_EACH; i++) {
    size_t len = mpmc_size(s, i);
    msg_fill(m, id, i, len);
    if (mp_queue_put(s->q, m, len, 30) != 0) {
      free(m);
      return 2;
    }
  }
  free(m);
  return 0;
}

/* Gets until the queue is closed and drained. */
static int mpmc_consume(struct mpmc *s, uint32_t id) {
  char *b = malloc(s->big);
  if (!b)
    return 1;
  for (;;) {
    ssize_t r = mp_queue_get(s->q, b, s->big, 30);
    if (r == -EPIPE)
      break;
    uint32_t p, q;
    if (r < 0 || !msg_check(b, (size_t)r, &p, &q) || p >= MPMC_PRODUCERS || q >= MPMC_EACH ||
        mpmc_size(s, q) != (size_t)r) {
      atomic_store(&s->failed, 1);
      free(b);
      return 2;
    }
    uint32_t n = atomic_load(&s->got_n[id]);
    s->got[id][n] = (uint64_t)p << 32 | q;
    atomic_store(&s->got_n[id], n + 1);
  }
  free(b);
  return 0;
}

/* Every message exactly once, each producer's in order for every consumer. */
static void mpmc_verify(struct mpmc *s) {
  assert_int_equal(atomic_load(&s->failed), 0);
  static uint8_t seen[MPMC_PRODUCERS][MPMC_EACH];
  memset(seen, 0, sizeof seen);
  uint32_t total = 0;
  for (int c = 0; c < MPMC_CONSUMERS; c++) {
    int64_t last[MPMC_PRODUCERS];
    for (int p = 0; p < MPMC_PRODUCERS; p++)
      last[p] = -1;
    uint32_t n = atomic_load(&s->got_n[c]);
    total += n;
    for (uint32_t i = 0; i < n; i++) {
      uint32_t p = (uint32_t)(s->got[c][i] >> 32), q = (uint32_t)s->got[c][i];
      assert_true((int64_t)q > last[p]);
      last[p] = q;
      assert_int_equal(seen[p][q], 0);
      seen[p][q] = 1;
    }
  }
  assert_int_equal(total, MPMC_PRODUCERS * MPMC_EACH);
}

struct mpmc_child {
  struct mpmc *s;
  uint32_t id;
};

static int mpmc_producer_child(void *p) {
  struct mpmc_child *c = p;
  return mpmc_produce(c->s, c->id);
}

static int mpmc_consumer_child(void *p) {
  struct mpmc_child *c = p;
  return mpmc_consume(c->s, c->id);
}

static void test_queue_many_producers_and_consumers_processes(void **state) {
  (void)state;
  size_t rings[2] = {4096, 0};
  for (int r = 0; r < 2; r++) {
    struct mpmc *s = mp_heap_calloc(1, sizeof *s);
    assert_non_null(s);
    s->q = fifo(r ? 50 : 0, rings[r]);
    s->big = r ? 300000 : 5000;
    pid_t pids[MPMC_PRODUCERS + MPMC_CONSUMERS];
    struct mpmc_child args[MPMC_PRODUCERS + MPMC_CONSUMERS];
    for (uint32_t i = 0; i < MPMC_CONSUMERS; i++) {
      args[i] = (struct mpmc_child){s, i};
      pids[i] = tu_fork(mpmc_consumer_child, &args[i], 120);
    }
    for (uint32_t i = 0; i < MPMC_PRODUCERS; i++) {
      args[MPMC_CONSUMERS + i] = (struct mpmc_child){s, i};
      pids[MPMC_CONSUMERS + i] = tu_fork(mpmc_producer_child, &args[MPMC_CONSUMERS + i], 120);
    }
    for (int i = 0; i < MPMC_PRODUCERS; i++)
      assert_child_ok(pids[MPMC_CONSUMERS + i]);
    assert_int_equal(mp_queue_close(s->q), 0);
    for (int i = 0; i < MPMC_CONSUMERS; i++)
      assert_child_ok(pids[i]);
    mpmc_verify(s);
    assert_int_equal(mp_queue_free(s->q), 0);
    mp_heap_free(s);
  }
}

static void *mpmc_producer_thread(void *p) {
  struct mpmc_child *c = p;
  if (mpmc_produce(c->s, c->id))
    atomic_store(&c->s->failed, 1);
  return NULL;
}

static void *mpmc_consumer_thread(void *p) {
  struct mpmc_child *c = p;
  if (mpmc_consume(c->s, c->id))
    atomic_store(&c->s->failed, 1);
  return NULL;
}

static void test_queue_many_producers_and_consumers_threads(void **state) {
  (void)state;
  struct mpmc *s = mp_heap_calloc(1, sizeof *s);
  assert_non_null(s);
  s->q = fifo(0, 8192);
  s->big = 20000;
  pthread_t t[MPMC_PRODUCERS + MPMC_CONSUMERS];
  struct mpmc_child args[MPMC_PRODUCERS + MPMC_CONSUMERS];
  for (uint32_t i = 0; i < MPMC_CONSUMERS; i++) {
    args[i] = (struct mpmc_child){s, i};
    assert_int_equal(pthread_create(&t[i], NULL, mpmc_consumer_thread, &args[i]), 0);
  }
  for (uint32_t i = 0; i < MPMC_PRODUCERS; i++) {
    args[MPMC_CONSUMERS + i] = (struct mpmc_child){s, i};
    assert_int_equal(pthread_create(&t[MPMC_CONSUMERS + i], NULL, mpmc_producer_thread,
                                    &args[MPMC_CONSUMERS + i]),
                     0);
  }
  for (int i = 0; i < MPMC_PRODUCERS; i++)
    pthread_join(t[MPMC_CONSUMERS + i], NULL);
  assert_int_equal(mp_queue_close(s->q), 0);
  for (int i = 0; i < MPMC_CONSUMERS; i++)
    pthread_join(t[i], NULL);
  mpmc_verify(s);
  assert_int_equal(mp_queue_free(s->q), 0);
  mp_heap_free(s);
}

/* ------------------------------------------------------------ joinable */

struct joinable {
  mp_queue *q;
  _Atomic int done_count;
};

static int task_worker(void *p) {
  struct joinable *j = p;
  char b[16];
  for (;;) {
    ssize_t r = mp_queue_get(j->q, b, sizeof b, 20);
    if (r == -EPIPE)
      return 0;
    CHILD_CHECK(r == 4);
    tu_sleep(0.002);
    atomic_fetch_add(&j->done_count, 1);
    CHILD_CHECK(mp_queue_task_done(j->q) == 0);
  }
}

static void test_queue_joinable_across_processes(void **state) {
  (void)state;
  for (int k = 0; k < 2; k++) {
    struct joinable *j = mp_heap_calloc(1, sizeof *j);
    if (k == 0) {
      assert_int_equal(mp_joinable_queue_new(0, &j->q), 0);
    } else {
      mp_queue_options o = {.order = MP_QUEUE_PRIORITY, .joinable = 1};
      assert_int_equal(mp_queue_new(0, &o, &j->q), 0);
    }
    assert_int_equal(mp_queue_join(j->q, MP_NOWAIT), 0); /* nothing put yet */
    assert_int_equal(mp_queue_task_done(j->q), -EOVERFLOW);
    for (int i = 0; i < 100; i++)
      assert_int_equal(mp_queue_put(j->q, "task", 4, 0), 0);
    assert_int_equal(mp_queue_join(j->q, MP_NOWAIT), -ETIMEDOUT);
    double t0 = tu_now();
    assert_int_equal(mp_queue_join(j->q, 0.2), -ETIMEDOUT);
    double el = tu_now() - t0;
    assert_true(el >= 0.19);
    assert_true(el < 2.0);
    tu_signals_start(0.05, 0.05);
    t0 = tu_now();
    int r = mp_queue_join(j->q, 0.4);
    el = tu_now() - t0;
    int seen = tu_signals_stop();
    assert_int_equal(r, -ETIMEDOUT);
    assert_true(seen >= 2);
    assert_true(el >= 0.39);
    assert_true(el < 2.5);
    pid_t w[2];
    for (int i = 0; i < 2; i++)
      w[i] = tu_fork(task_worker, j, 60);
    assert_int_equal(mp_queue_join(j->q, 30), 0);
    assert_int_equal(atomic_load(&j->done_count), 100);
    assert_int_equal(mp_queue_task_done(j->q), -EOVERFLOW); /* one too many */
    assert_int_equal(mp_queue_join(j->q, 0), 0);
    /* The same queue goes on: join waits for the new tasks too. */
    for (int i = 0; i < 10; i++)
      assert_int_equal(mp_queue_put(j->q, "more", 4, 0), 0);
    assert_int_equal(mp_queue_join(j->q, 30), 0);
    assert_int_equal(atomic_load(&j->done_count), 110);
    assert_int_equal(mp_queue_close(j->q), 0);
    for (int i = 0; i < 2; i++)
      assert_child_ok(w[i]);
    assert_int_equal(mp_queue_free(j->q), 0);
    mp_heap_free(j);
  }
}

/* ------------------------------------------------------------ orders */

static void test_queue_lifo_order(void **state) {
  (void)state;
  mp_queue *q;
  assert_int_equal(mp_lifo_queue_new(0, &q), 0);
  for (int i = 0; i < 1000; i++)
    assert_int_equal(mp_queue_put(q, &i, sizeof i, 0), 0);
  assert_int_equal(mp_queue_qsize(q), 1000);
  for (int i = 999; i >= 500; i--) {
    int v;
    assert_int_equal(mp_queue_get(q, &v, sizeof v, 0), sizeof v);
    assert_int_equal(v, i);
  }
  int x = -1;
  assert_int_equal(mp_queue_put(q, &x, sizeof x, 0), 0);
  int v;
  assert_int_equal(mp_queue_get(q, &v, sizeof v, 0), sizeof v);
  assert_int_equal(v, -1);
  assert_int_equal(mp_queue_qsize(q), 500);
  /* Freeing a queue with messages in it gives their blocks back. */
  assert_int_equal(mp_queue_free(q), 0);
}

struct prio_msg {
  int64_t prio;
  uint32_t seq; /* the order of the put */
};

static int prio_cmp(const void *a, const void *b) {
  const struct prio_msg *x = a, *y = b;
  if (x->prio != y->prio)
    return x->prio < y->prio ? -1 : 1;
  return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static void test_queue_priority_order(void **state) {
  (void)state;
  mp_queue *q;
  assert_int_equal(mp_priority_queue_new(0, &q), 0);
  enum { N = 3001 };
  static struct prio_msg want[N];
  /* Few distinct priorities, so ties are many: FIFO among equals. */
  srand(12345);
  for (uint32_t i = 0; i < N; i++) {
    struct prio_msg m = {(int64_t)(rand() % 17) - 8, i};
    if (i == 100)
      m.prio = INT64_MIN;
    if (i == 200)
      m.prio = INT64_MAX;
    if (i == N - 1) {
      m.prio = 0; /* mp_queue_put means priority 0 */
      assert_int_equal(mp_queue_put(q, &m, sizeof m, 0), 0);
    } else {
      assert_int_equal(mp_queue_put_priority(q, m.prio, &m, sizeof m, 0), 0);
    }
    want[i] = m;
    /* Interleave some gets with the puts. */
    if (i % 10 == 9) {
      struct prio_msg g;
      assert_int_equal(mp_queue_peek_size(q, &(size_t){0}, 0), 0);
      assert_int_equal(mp_queue_get(q, &g, sizeof g, 0), sizeof g);
      /* g must be the least of what was in the queue: remove it from want. */
      uint32_t best = UINT32_MAX;
      for (uint32_t j = 0; j <= i; j++)
        if (want[j].seq != UINT32_MAX &&
            (best == UINT32_MAX || prio_cmp(&want[j], &want[best]) < 0))
          best = j;
      assert_int_equal(g.seq, want[best].seq);
      assert_true(g.prio == want[best].prio);
      want[best].seq = UINT32_MAX;
      want[best].prio = INT64_MAX;
    }
  }
  qsort(want, N, sizeof want[0], prio_cmp);
  ssize_t left = mp_queue_qsize(q);
  assert_int_equal(left, N - N / 10);
  for (ssize_t i = 0; i < left; i++) {
    struct prio_msg g;
    assert_int_equal(mp_queue_get(q, &g, sizeof g, 0), sizeof g);
    assert_int_equal(g.seq, want[i].seq);
    assert_true(g.prio == want[i].prio);
  }
  assert_int_equal(mp_queue_empty(q), 1);
  assert_int_equal(mp_queue_free(q), 0);
}

/* Priorities and LIFO across processes: a child puts, the parent gets. */
static int prio_child(void *p) {
  mp_queue *q = p;
  for (int i = 0; i < 200; i++)
    CHILD_CHECK(mp_queue_put_priority(q, 200 - i, &i, sizeof i, 5) == 0);
  return 0;
}

static void test_queue_priority_across_processes(void **state) {
  (void)state;
  mp_queue *q;
  assert_int_equal(mp_priority_queue_new(0, &q), 0);
  pid_t pid = tu_fork(prio_child, q, 30);
  assert_child_ok(pid);
  for (int i = 199; i >= 0; i--) {
    int v;
    assert_int_equal(mp_queue_get(q, &v, sizeof v, 5), sizeof v);
    assert_int_equal(v, i);
  }
  assert_int_equal(mp_queue_free(q), 0);
}

/* ------------------------------------------------------------ handles */

/* A child creates a queue after the fork, sends its handle through the first
 * queue; the parent uses it, and the child answers on it. */
static int handle_child(void *p) {
  mp_queue *q1 = p, *q2;
  CHILD_CHECK(mp_simple_queue_new(&q2) == 0);
  CHILD_CHECK(mp_queue_put(q1, &q2, sizeof q2, 5) == 0);
  char b[16];
  CHILD_CHECK(mp_queue_get(q2, b, sizeof b, 10) == 4);
  CHILD_CHECK(memcmp(b, "ping", 4) == 0);
  /* Reply on the first queue, then wait for the parent's ack on q2. */
  CHILD_CHECK(mp_queue_put(q1, "pong", 4, 5) == 0);
  CHILD_CHECK(mp_queue_get(q2, b, sizeof b, 10) == 3);
  return 0;
}

static void test_queue_handle_sent_through_a_queue(void **state) {
  (void)state;
  mp_queue *q1, *q2 = NULL;
  assert_int_equal(mp_simple_queue_new(&q1), 0);
  pid_t pid = tu_fork(handle_child, q1, 30);
  assert_int_equal(mp_queue_get(q1, &q2, sizeof q2, 10), sizeof q2);
  assert_int_equal(mp_heap_contains(q2), 1);
  assert_int_equal(mp_queue_put(q2, "ping", 4, 0), 0);
  char b[16];
  assert_int_equal(mp_queue_get(q1, b, sizeof b, 10), 4);
  assert_memory_equal(b, "pong", 4);
  assert_int_equal(mp_queue_put(q2, "ack", 3, 0), 0);
  assert_child_ok(pid);
  assert_int_equal(mp_queue_qsize(q2), 0);
  assert_int_equal(mp_queue_free(q2), 0);
  assert_int_equal(mp_queue_free(q1), 0);
}

/* ------------------------------------------------------------ free */

struct free_arg {
  mp_queue *q;
  _Atomic int state;
  ssize_t r;
};

static void *free_getter(void *p) {
  struct free_arg *a = p;
  char b[8];
  atomic_store(&a->state, 1);
  a->r = mp_queue_get(a->q, b, sizeof b, 10);
  return NULL;
}

static void test_queue_free_busy_and_memory(void **state) {
  (void)state;
  mp_heap_stats before, after;
  assert_int_equal(mp_heap_stats_get(&before), 0);
  for (int k = 0; k < 3; k++) {
    mp_queue *q;
    mp_queue_options o = {.order = k};
    assert_int_equal(mp_queue_new(0, &o, &q), 0);
    struct free_arg a = {.q = q};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, free_getter, &a), 0);
    while (atomic_load(&a.state) != 1)
      tu_sleep(0.001);
    tu_sleep(0.1);
    assert_int_equal(mp_queue_free(q), -EBUSY); /* a getter waits in it */
    assert_int_equal(mp_queue_put(q, "abc", 3, 0), 0);
    pthread_join(t, NULL);
    assert_int_equal(a.r, 3);
    for (int i = 0; i < 50; i++)
      assert_int_equal(mp_queue_put(q, "left over", 9, 0), 0);
    assert_int_equal(mp_queue_free(q), 0);
  }
  assert_int_equal(mp_heap_stats_get(&after), 0);
  assert_int_equal(after.blocks, before.blocks);
  assert_int_equal(after.used, before.used);
}

struct joiner_arg {
  mp_queue *q;
  double timeout;
  _Atomic int state;
  int r;
};

static void *free_joiner(void *p) {
  struct joiner_arg *a = p;
  atomic_store(&a->state, 1);
  a->r = mp_queue_join(a->q, a->timeout);
  return NULL;
}

/* Threads in mp_queue_join() keep a joinable queue from being freed, also the
 * ones beyond the 16 slots of the sleeper registry: here 16 joiners take the
 * slots, a 17th is only counted, then the 16 time out and leave. */
static void test_queue_free_busy_while_joining(void **state) {
  (void)state;
  enum { NJ = 17 };
  for (int k = 0; k < 3; k++) {
    mp_queue *q;
    mp_queue_options o = {.order = k, .joinable = 1};
    assert_int_equal(mp_queue_new(0, &o, &q), 0);
    assert_int_equal(mp_queue_put(q, "task", 4, 0), 0);
    struct joiner_arg a[NJ];
    pthread_t t[NJ];
    for (int i = 0; i < NJ; i++) {
      a[i] = (struct joiner_arg){.q = q, .timeout = i < NJ - 1 ? 0.6 : 20};
      if (i == NJ - 1)
        tu_sleep(0.2); /* the first 16 have registered */
      assert_int_equal(pthread_create(&t[i], NULL, free_joiner, &a[i]), 0);
      while (atomic_load(&a[i].state) != 1)
        tu_sleep(0.001);
    }
    tu_sleep(0.1);
    assert_int_equal(mp_queue_free(q), -EBUSY); /* 17 joiners */
    for (int i = 0; i < NJ - 1; i++) {
      pthread_join(t[i], NULL);
      assert_int_equal(a[i].r, -ETIMEDOUT);
    }
    assert_int_equal(mp_queue_free(q), -EBUSY); /* the one without a slot */
    char b[8];
    assert_int_equal(mp_queue_get(q, b, sizeof b, 1), 4);
    assert_int_equal(mp_queue_task_done(q), 0);
    pthread_join(t[NJ - 1], NULL);
    assert_int_equal(a[NJ - 1].r, 0);
    assert_int_equal(mp_queue_free(q), 0);
  }
}

/* ------------------------------------------------------------ shutdown */

static int make_kind(int kind, size_t maxsize, mp_queue **q) {
  switch (kind) {
  case 0: return mp_queue_new(maxsize, NULL, q);
  case 1: return mp_simple_queue_new(q);
  case 2: return mp_joinable_queue_new(maxsize, q);
  case 3: return mp_lifo_queue_new(maxsize, q);
  default: return mp_priority_queue_new(maxsize, q);
  }
}

static int put_one(mp_queue *q, int kind, int v, double timeout) {
  if (kind == 4)
    return mp_queue_put_priority(q, v, &v, sizeof v, timeout);
  return mp_queue_put(q, &v, sizeof v, timeout);
}

/* shutdown(): puts fail at once with -ESHUTDOWN, gets drain what is there,
 * then fail with -ESHUTDOWN; shutdown(immediate) drops what is there. For
 * every kind of queue. */
static void test_queue_shutdown_every_kind(void **state) {
  (void)state;
  for (int kind = 0; kind < 5; kind++) {
    for (int immediate = 0; immediate < 2; immediate++) {
      mp_queue *q;
      assert_int_equal(make_kind(kind, 0, &q), 0);
      for (int v = 1; v <= 3; v++)
        assert_int_equal(put_one(q, kind, v, MP_NOWAIT), 0);
      assert_int_equal(mp_queue_shutdown(q, immediate), 0);
      assert_int_equal(put_one(q, kind, 9, MP_NOWAIT), -ESHUTDOWN);
      assert_int_equal(put_one(q, kind, 9, 1.0), -ESHUTDOWN);
      int got = 0, v;
      while (mp_queue_get(q, &v, sizeof v, MP_NOWAIT) == (ssize_t)sizeof v)
        got++;
      assert_int_equal(got, immediate ? 0 : 3);
      assert_int_equal(mp_queue_get(q, &v, sizeof v, MP_NOWAIT), -ESHUTDOWN);
      assert_int_equal(mp_queue_get(q, &v, sizeof v, 0.5), -ESHUTDOWN);
      size_t len;
      assert_int_equal(mp_queue_peek_size(q, &len, MP_NOWAIT), -ESHUTDOWN);
      void *m;
      assert_int_equal(mp_queue_get_alloc(q, &m, &len, MP_NOWAIT), -ESHUTDOWN);
      assert_int_equal(mp_queue_qsize(q), 0);
      assert_int_equal(mp_queue_shutdown(q, 1), 0); /* twice: harmless */
      if (kind == 2) /* each message was taken or dropped: nothing unfinished */
        assert_int_equal(mp_queue_unfinished(q), immediate ? 0 : 3);
      assert_int_equal(mp_queue_free(q), 0);
    }
  }
  assert_int_equal(mp_queue_shutdown(NULL, 0), -EINVAL);
}

/* A get waiting on an empty queue and a put waiting on a full one, in other
 * processes, wake and fail with -ESHUTDOWN. */
static int get_waits(void *arg) {
  int v;
  ssize_t r = mp_queue_get((mp_queue *)arg, &v, sizeof v, MP_FOREVER);
  return r == -ESHUTDOWN ? 0 : 1;
}

static int put_waits(void *arg) {
  int v = 7;
  int r = mp_queue_put((mp_queue *)arg, &v, sizeof v, MP_FOREVER);
  return r == -ESHUTDOWN ? 0 : 1;
}

static void test_queue_shutdown_wakes_waiters_in_other_processes(void **state) {
  (void)state;
  for (int kind = 0; kind < 5; kind++) {
    mp_queue *empty, *full;
    assert_int_equal(make_kind(kind == 1 ? 0 : kind, 1, &empty), 0);
    assert_int_equal(make_kind(kind == 1 ? 0 : kind, 1, &full), 0);
    assert_int_equal(put_one(full, kind, 1, MP_NOWAIT), 0);
    pid_t g = tu_fork(get_waits, empty, 30), p = tu_fork(put_waits, full, 30);
    tu_sleep(0.2); /* both asleep */
    double t0 = tu_now();
    assert_int_equal(mp_queue_shutdown(empty, 0), 0);
    assert_int_equal(mp_queue_shutdown(full, 0), 0);
    assert_child_ok(g);
    assert_child_ok(p);
    assert_true(tu_now() - t0 < 5);
    int v;
    assert_int_equal(mp_queue_get(full, &v, sizeof v, MP_NOWAIT), (ssize_t)sizeof v); /* kept */
    assert_int_equal(mp_queue_free(empty), 0);
    assert_int_equal(mp_queue_free(full), 0);
  }
}

/* JoinableQueue: unfinished counts puts not yet done; an immediate shutdown
 * marks each dropped message done, so join() waits only for what consumers
 * still hold. */
static void test_queue_shutdown_immediate_and_join(void **state) {
  (void)state;
  mp_queue *q;
  assert_int_equal(mp_joinable_queue_new(0, &q), 0);
  assert_int_equal(mp_queue_unfinished(q), 0);
  for (int v = 1; v <= 3; v++)
    assert_int_equal(mp_queue_put(q, &v, sizeof v, MP_NOWAIT), 0);
  assert_int_equal(mp_queue_unfinished(q), 3);
  int v;
  assert_int_equal(mp_queue_get(q, &v, sizeof v, MP_NOWAIT), (ssize_t)sizeof v); /* held */
  assert_int_equal(mp_queue_unfinished(q), 3);
  assert_int_equal(mp_queue_shutdown(q, 1), 0);
  assert_int_equal(mp_queue_unfinished(q), 1); /* the two dropped are done */
  assert_int_equal(mp_queue_join(q, 0.1), -ETIMEDOUT);
  assert_int_equal(mp_queue_task_done(q), 0);
  assert_int_equal(mp_queue_unfinished(q), 0);
  assert_int_equal(mp_queue_join(q, 5), 0);
  assert_int_equal(mp_queue_free(q), 0);
  mp_queue *plain;
  assert_int_equal(mp_queue_new(0, NULL, &plain), 0);
  assert_int_equal(mp_queue_unfinished(plain), -EINVAL); /* not joinable */
  assert_int_equal(mp_queue_free(plain), 0);
}

/* ------------------------------------------------------------ zero-copy blocks */

static size_t heap_blocks(void) {
  mp_heap_stats st;
  assert_int_equal(mp_heap_stats_get(&st), 0);
  return st.blocks;
}

/* A block put by reference comes back as the same block, with its bytes,
 * whatever its size, and the queue keeps no block of its own for it. */
static void test_queue_block_roundtrip_same_block(void **state) {
  (void)state;
  mp_queue *q;
  assert_int_equal(mp_simple_queue_new(&q), 0);
  size_t base = heap_blocks();
  size_t sizes[] = {0, 8, 4096, (size_t)1 << 20};
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    char *b = mp_heap_alloc(sizes[i] ? sizes[i] : 1);
    assert_non_null(b);
    if (sizes[i] >= MSG_MIN)
      msg_fill(b, 7, (uint32_t)i, sizes[i]);
    assert_int_equal(mp_queue_put_block(q, b, sizes[i], MP_FOREVER), 0);
    assert_int_equal(mp_queue_qsize(q), 1);
    size_t pl = 0;
    assert_int_equal(mp_queue_peek_size(q, &pl, 0), 0);
    assert_int_equal(pl, sizes[i]);
    void *got = NULL;
    size_t len = 1;
    assert_int_equal(mp_queue_get_block(q, &got, &len, MP_FOREVER), 0);
    assert_ptr_equal(got, b);
    assert_int_equal(len, sizes[i]);
    uint32_t pr, sq;
    if (sizes[i] >= MSG_MIN)
      assert_true(msg_check(got, len, &pr, &sq) && sq == i);
    assert_int_equal(mp_heap_free(got), 0);
  }
  assert_int_equal(heap_blocks(), base);
  assert_int_equal(mp_queue_free(q), 0);
}

/* The other gets copy a block's message out and free the block; get_block
 * copies a plain or streamed message into a new heap block. Blocks and
 * copies interleave in one FIFO order. */
static void test_queue_block_mixes_with_copies(void **state) {
  (void)state;
  mp_queue_options o = {.ring_size = 4096};
  mp_queue *q;
  assert_int_equal(mp_queue_new(0, &o, &q), 0);
  size_t base = heap_blocks();
  char *b1 = mp_heap_alloc(300), *b2 = mp_heap_alloc(300), *b3 = mp_heap_alloc(300);
  assert_true(b1 && b2 && b3);
  msg_fill(b1, 1, 1, 300);
  msg_fill(b2, 1, 2, 300);
  msg_fill(b3, 1, 3, 300);
  static char big[20000], small[100];
  msg_fill(small, 1, 4, sizeof small);
  assert_int_equal(mp_queue_put_block(q, b1, 300, 0), 0);
  assert_int_equal(mp_queue_put_block(q, b2, 300, 0), 0);
  assert_int_equal(mp_queue_put_block(q, b3, 300, 0), 0);
  assert_int_equal(mp_queue_put(q, small, sizeof small, 0), 0);
  char buf[400];
  uint32_t pr, sq;
  /* too small a buffer: -EMSGSIZE, the block stays first */
  assert_int_equal(mp_queue_get(q, buf, 100, 0), -EMSGSIZE);
  assert_int_equal(mp_queue_get(q, buf, sizeof buf, 0), 300);
  assert_true(msg_check(buf, 300, &pr, &sq) && sq == 1);
  void *m = NULL;
  size_t len = 0;
  assert_int_equal(mp_queue_get_alloc(q, &m, &len, 0), 0);
  assert_true(len == 300 && msg_check(m, len, &pr, &sq) && sq == 2);
  assert_int_equal(mp_heap_contains(m), 0); /* a malloc'd copy */
  free(m);
  assert_int_equal(mp_queue_get_block(q, &m, &len, 0), 0);
  assert_ptr_equal(m, b3);
  assert_int_equal(mp_heap_free(m), 0);
  assert_int_equal(mp_queue_get_block(q, &m, &len, 0), 0);
  assert_true(mp_heap_contains(m) && len == sizeof small);
  assert_true(msg_check(m, len, &pr, &sq) && sq == 4);
  assert_int_equal(mp_heap_free(m), 0);
  assert_int_equal(heap_blocks(), base);
  /* a streamed message (5x the ring) into a heap block, read by a child's put */
  msg_fill(big, 2, 9, sizeof big);
  pid_t c = fork();
  assert_true(c >= 0);
  if (c == 0) {
    alarm(30);
    _exit(mp_queue_put(q, big, sizeof big, MP_FOREVER) == 0 ? 0 : 1);
  }
  assert_int_equal(mp_queue_get_block(q, &m, &len, 30), 0);
  assert_true(len == sizeof big && msg_check(m, len, &pr, &sq) && sq == 9);
  assert_int_equal(mp_heap_free(m), 0);
  assert_child_ok(c);
  assert_int_equal(heap_blocks(), base);
  assert_int_equal(mp_queue_free(q), 0);
}

/* Blocks allocated in one process are taken in another by pointer: a child
 * allocates and puts, the parent gets the very addresses. */
static void test_queue_block_across_processes(void **state) {
  (void)state;
  mp_queue *q, *addrs;
  assert_int_equal(mp_joinable_queue_new(4, &q), 0);
  assert_int_equal(mp_simple_queue_new(&addrs), 0);
  size_t base = heap_blocks();
  pid_t c = fork();
  assert_true(c >= 0);
  if (c == 0) {
    alarm(30);
    for (uint32_t i = 0; i < 100; i++) {
      size_t n = 64 + i * 1000;
      char *b = mp_heap_alloc(n);
      CHILD_CHECK(b != NULL);
      msg_fill(b, 3, i, n);
      CHILD_CHECK(mp_queue_put(addrs, &b, sizeof b, MP_FOREVER) == 0);
      CHILD_CHECK(mp_queue_put_block(q, b, n, MP_FOREVER) == 0);
    }
    _exit(0);
  }
  for (uint32_t i = 0; i < 100; i++) {
    void *m = NULL, *sent = NULL;
    size_t len = 0;
    assert_int_equal(mp_queue_get_block(q, &m, &len, 30), 0);
    assert_int_equal(mp_queue_get(addrs, &sent, sizeof sent, 30), sizeof sent);
    assert_ptr_equal(m, sent);
    uint32_t pr, sq;
    assert_true(msg_check(m, len, &pr, &sq) && pr == 3 && sq == i);
    assert_int_equal(mp_heap_free(m), 0);
    assert_int_equal(mp_queue_task_done(q), 0);
  }
  assert_child_ok(c);
  assert_int_equal(mp_queue_join(q, 0), 0);
  assert_int_equal(heap_blocks(), base);
  assert_int_equal(mp_queue_free(q), 0);
  assert_int_equal(mp_queue_free(addrs), 0);
}

/* Bad input, full, closed and the list kinds: -EINVAL/-ETIMEDOUT/-EPIPE, and
 * the block stays the caller's (freeing it succeeds exactly once). A queue
 * freed with blocks in it frees them. */
static void test_queue_block_errors_and_free(void **state) {
  (void)state;
  mp_queue *q, *lifo, *prio;
  assert_int_equal(mp_lifo_queue_new(0, &lifo), 0);
  assert_int_equal(mp_priority_queue_new(0, &prio), 0);
  size_t base = heap_blocks();
  assert_int_equal(mp_queue_new(1, NULL, &q), 0);
  char *b = mp_heap_alloc(64), *b2 = mp_heap_alloc(64);
  char stack[64];
  void *m = NULL;
  size_t len = 0;
  assert_int_equal(mp_queue_put_block(NULL, b, 64, 0), -EINVAL);
  assert_int_equal(mp_queue_put_block(q, NULL, 0, 0), -EINVAL);
  assert_int_equal(mp_queue_put_block(q, stack, sizeof stack, 0), -EINVAL);
  assert_int_equal(mp_queue_put_block(q, b, (size_t)1 << 62, 0), -EINVAL);
  assert_int_equal(mp_queue_put_block(q, b, 64, NAN), -EINVAL);
  assert_int_equal(mp_queue_put_block(lifo, b, 64, 0), -EINVAL);
  assert_int_equal(mp_queue_put_block(prio, b, 64, 0), -EINVAL);
  assert_int_equal(mp_queue_get_block(lifo, &m, &len, 0), -EINVAL);
  assert_int_equal(mp_queue_get_block(q, NULL, &len, 0), -EINVAL);
  assert_int_equal(mp_queue_get_block(q, &m, NULL, 0), -EINVAL);
  assert_int_equal(mp_queue_get_block(q, &m, &len, NAN), -EINVAL);
  assert_int_equal(mp_queue_get_block(q, &m, &len, 0), -ETIMEDOUT);
  assert_int_equal(mp_queue_get_block(q, &m, &len, 0.05), -ETIMEDOUT);
  assert_int_equal(mp_queue_put_block(q, b, 64, 0), 0);
  /* maxsize 1: full */
  assert_int_equal(mp_queue_put_block(q, b2, 64, 0), -ETIMEDOUT);
  assert_int_equal(mp_queue_put_block(q, b2, 64, 0.05), -ETIMEDOUT);
  assert_int_equal(mp_queue_close(q), 0);
  assert_int_equal(mp_queue_put_block(q, b2, 64, 0), -EPIPE);
  assert_int_equal(mp_heap_free(b2), 0); /* still ours */
  assert_int_equal(mp_heap_free(b2), -EINVAL);
  /* freeing the queue frees b, which it owns */
  assert_int_equal(mp_queue_free(q), 0);
  assert_int_equal(mp_heap_free(b), -EINVAL);
  assert_int_equal(heap_blocks(), base);
  /* shutdown(immediate) drops queued blocks too */
  assert_int_equal(mp_queue_new(0, NULL, &q), 0);
  base = heap_blocks();
  b = mp_heap_alloc(1000);
  assert_int_equal(mp_queue_put_block(q, b, 1000, 0), 0);
  assert_int_equal(mp_queue_shutdown(q, 1), 0);
  assert_int_equal(mp_queue_get_block(q, &m, &len, 0), -ESHUTDOWN);
  b2 = mp_heap_alloc(8);
  assert_int_equal(mp_queue_put_block(q, b2, 8, 0), -ESHUTDOWN);
  assert_int_equal(heap_blocks(), base + 1); /* the refused block, ours */
  assert_int_equal(mp_heap_free(b2), 0);
  assert_int_equal(mp_queue_free(q), 0);
  assert_int_equal(mp_queue_free(lifo), 0);
  assert_int_equal(mp_queue_free(prio), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_queue_shutdown_every_kind),
      cmocka_unit_test(test_queue_shutdown_wakes_waiters_in_other_processes),
      cmocka_unit_test(test_queue_shutdown_immediate_and_join),
      cmocka_unit_test(test_queue_put_get_in_order),
      cmocka_unit_test(test_queue_errors),
      cmocka_unit_test(test_queue_empty_messages),
      cmocka_unit_test(test_queue_emsgsize_keeps_message),
      cmocka_unit_test(test_queue_messages_wrap_around_the_ring),
      cmocka_unit_test(test_queue_ring_bounds_and_maxsize),
      cmocka_unit_test(test_queue_large_messages_through_the_heap),
      cmocka_unit_test(test_queue_large_messages_pass_whole),
      cmocka_unit_test(test_queue_stream_timeout_discards_the_partial_message),
      cmocka_unit_test(test_queue_get_timeouts_and_signals),
      cmocka_unit_test(test_queue_put_timeouts_and_signals),
      cmocka_unit_test(test_queue_timed_get_beside_a_blocked_getter),
      cmocka_unit_test(test_queue_blocked_get_uses_no_cpu_and_wakes),
      cmocka_unit_test(test_queue_close),
      cmocka_unit_test(test_queue_many_producers_and_consumers_processes),
      cmocka_unit_test(test_queue_many_producers_and_consumers_threads),
      cmocka_unit_test(test_queue_joinable_across_processes),
      cmocka_unit_test(test_queue_lifo_order),
      cmocka_unit_test(test_queue_priority_order),
      cmocka_unit_test(test_queue_priority_across_processes),
      cmocka_unit_test(test_queue_handle_sent_through_a_queue),
      cmocka_unit_test(test_queue_free_busy_and_memory),
      cmocka_unit_test(test_queue_free_busy_while_joining),
      cmocka_unit_test(test_queue_block_roundtrip_same_block),
      cmocka_unit_test(test_queue_block_mixes_with_copies),
      cmocka_unit_test(test_queue_block_across_processes),
      cmocka_unit_test(test_queue_block_errors_and_free),
  };
  return TU_RUN("queue", tests);
}
