/* SPDX-License-Identifier: MIT */
/*
 * libmp's Queue for the queue workloads: a FIFO queue with the default options
 * (mp_queue_new(0, NULL, ...), which is also what mp_simple_queue_new()
 * makes), mp_queue_put and mp_queue_get into the caller's buffer, both
 * MP_FOREVER.
 *
 *   libmp-queue stream LEN N     one producer process to one consumer
 *                                process, messages per second
 *   libmp-queue mpmc LEN N       two producers, two consumers, N messages in
 *                                all, messages per second
 *   libmp-queue pingpong LEN N   round trip through a pair of queues, us
 *   libmp-queue mpmc-k LEN N K   K producers, K consumers (1 to 8), N
 *                                messages in all, messages per second
 *                                (bench/scaling)
 *   libmp-queue zerocopy LEN N   one producer process to one consumer
 *                                process by mp_queue_put_block and
 *                                mp_queue_get_block, messages per second
 *
 * zerocopy: how a program uses zero-copy messages, a pool of buffers in the
 * family heap. The producer fills ZC_BLOCKS blocks once, then for each message
 * stamps a block (head and tail, as bench_msg_make() stamps a pattern) and puts
 * it by reference; the consumer gets it, checks it as bench_msg_take() checks
 * a message (stamps every time, every byte of every 32nd), and puts it back on
 * a return queue, from which the producer takes it for a later message. Each
 * message thus costs two block puts and two block gets, and no copy.
 */
#include <mp.h>

#include "bench.h"

static void put(void *q, const void *msg, size_t len) {
  BENCH_CHECK_MP(mp_queue_put(q, msg, len, MP_FOREVER));
}

static size_t get(void *q, void *buf, size_t cap) {
  ssize_t r = mp_queue_get(q, buf, cap, MP_FOREVER);
  if (r < 0)
    bench_die("mp_queue_get: %s", mp_strerror((int)r));
  return (size_t)r;
}

#define ZC_BLOCKS 8 /* a multiple of BENCH_VARIANTS: block k always holds variant k % 4 */

typedef struct zc_arg {
  mp_queue *data, *back;
  bench_msgs *m;
  unsigned char *blk[ZC_BLOCKS];
  long total;
} zc_arg;

static int zc_producer(void *arg, int index) {
  zc_arg *a = arg;
  bench_pin_nth_cpu(index);
  size_t len = a->m->len;
  for (long i = 0; i < a->total; i++) {
    unsigned char *b = a->blk[i % ZC_BLOCKS];
    if (i >= ZC_BLOCKS) {
      void *got;
      size_t glen;
      BENCH_CHECK_MP(mp_queue_get_block(a->back, &got, &glen, MP_FOREVER));
      if (got != b)
        bench_die("zerocopy: block %p back, expected %p", got, (void *)b);
    }
    uint64_t stamp = bench_stamp(0, (uint64_t)i), tail = ~stamp;
    memcpy(b, &stamp, 8);
    memcpy(b + len - 8, &tail, 8);
    BENCH_CHECK_MP(mp_queue_put_block(a->data, b, len, MP_FOREVER));
  }
  return 0;
}

static double zc_run(size_t len, long n) {
  if (len < 16)
    bench_die("zerocopy messages need at least 16 bytes");
  bench_msgs m;
  bench_msgs_init(&m, len);
  zc_arg a = {.m = &m, .total = bench_warmup(n) + n};
  BENCH_CHECK_MP(mp_queue_new(0, NULL, &a.data));
  BENCH_CHECK_MP(mp_queue_new(0, NULL, &a.back));
  for (int k = 0; k < ZC_BLOCKS; k++) {
    a.blk[k] = mp_heap_alloc(len);
    if (!a.blk[k])
      bench_die("zerocopy: the family heap has no room for %d blocks of %zu bytes", ZC_BLOCKS,
                len);
    memcpy(a.blk[k], m.pat[k % BENCH_VARIANTS], len);
  }
  long warm = bench_warmup(n);
  pid_t pid = bench_fork(zc_producer, &a, 0);
  bench_pin_nth_cpu(1);
  int64_t t0 = 0;
  for (long i = 0; i < warm + n; i++) {
    if (i == warm)
      t0 = bench_now_ns();
    void *got;
    size_t glen;
    BENCH_CHECK_MP(mp_queue_get_block(a.data, &got, &glen, MP_FOREVER));
    if (glen != len)
      bench_die("message %ld: %zu bytes, expected %zu", i, glen, len);
    unsigned char *b = got;
    uint64_t stamp, tail;
    memcpy(&stamp, b, 8);
    memcpy(&tail, b + len - 8, 8);
    bench_expect(stamp, bench_stamp(0, (uint64_t)i), "out of order");
    if (tail != ~stamp)
      bench_die("message %ld: torn", i);
    if (i % BENCH_FULL_CHECK == 0 && len > 16 &&
        memcmp(b + 8, m.pat[stamp % BENCH_VARIANTS] + 8, len - 16))
      bench_die("message %ld: corrupt contents", i);
    BENCH_CHECK_MP(mp_queue_put_block(a.back, got, glen, MP_FOREVER));
  }
  int64_t t1 = bench_now_ns();
  bench_reap(pid);
  BENCH_CHECK_MP(mp_queue_free(a.data)); /* frees the blocks still queued */
  BENCH_CHECK_MP(mp_queue_free(a.back));
  return (double)n / ((double)(t1 - t0) / 1e9);
}

static mp_queue *queue(void) {
  mp_queue *q;
  BENCH_CHECK_MP(mp_queue_new(0, NULL, &q));
  return q;
}

int main(int argc, char **argv) {
  if (argc < 4)
    bench_die("usage: libmp-queue stream|mpmc|pingpong|zerocopy LEN N");
  size_t len = (size_t)bench_count(argc, argv, 2, 64);
  long n = bench_count(argc, argv, 3, 1000000);
  if (!strcmp(argv[1], "zerocopy")) {
    bench_result(zc_run(len, n));
    return 0;
  }
  mp_queue *a = queue();
  bench_chan ca = {put, get, a, a};
  if (!strcmp(argv[1], "stream")) {
    bench_result(bench_stream_run(ca, len, n));
  } else if (!strcmp(argv[1], "mpmc")) {
    bench_result(bench_mpmc_run(ca, len, n));
  } else if (!strcmp(argv[1], "mpmc-k")) {
    bench_result(bench_mpmc_run_k(ca, len, n, (int)bench_count(argc, argv, 4, 2)));
  } else if (!strcmp(argv[1], "pingpong")) {
    mp_queue *b = queue();
    bench_result(bench_pingpong_run(ca, (bench_chan){put, get, b, b}, len, n));
    BENCH_CHECK_MP(mp_queue_free(b));
  } else {
    bench_die("unknown mode '%s'", argv[1]);
  }
  BENCH_CHECK_MP(mp_queue_free(a));
  return 0;
}
