/* SPDX-License-Identifier: MIT */
/*
 * Raw OS baseline os:ring: a bare single-producer single-consumer ring of
 * bytes in MAP_SHARED memory, written for the bench as the reference of what
 * shared memory can do, for the one-to-one queue workloads.
 *
 *   os-ring stream LEN N     one producer process to one consumer process,
 *                            messages per second
 *   os-ring pingpong LEN N   round trip through a pair of rings, us
 *
 * Protocol. A ring of RING_SIZE bytes and two 32-bit counters of bytes, mod
 * 2^32: tail (written by the producer only) and head (by the consumer only);
 * [head, tail) holds records, the rest is free. A record is an 8-byte length
 * and the message, padded to 8 bytes. A record of at most CHUNK bytes is
 * written whole and published with one store of tail; a longer one streams
 * through the ring: the producer writes and publishes as room appears (at
 * least CHUNK bytes at a time, or the rest), the consumer copies out and
 * publishes head as data appears. Each side keeps a private copy of its own
 * counter and of the last value of the other's it read, and reads the shared
 * one only when that copy is not enough.
 *
 * Waiting: a side that lacks data or room spins, reading the other's counter
 * between pause instructions, for about SPIN_NS (the number of pauses is
 * measured at start), then sets its asleep flag, reads the counter again and
 * sleeps on it with FUTEX_WAIT while it holds the value read. A side that
 * publishes a counter (seq_cst store) then reads the other's asleep flag
 * (seq_cst load) and calls FUTEX_WAKE only when it is set: in the single total
 * order of seq_cst operations either the sleeper sees the new counter or the
 * publisher sees the flag, and FUTEX_WAIT refuses to sleep once the counter
 * differs from the value read, so no wake-up is lost. While nobody sleeps, a
 * message costs no system call.
 *
 * Nothing here survives a crash of either side, and there is one producer and
 * one consumer: that is the bare minimum a queue must add to.
 */
#include "bench.h"

#define RING_SIZE ((uint32_t)256 * 1024)
#define CHUNK (RING_SIZE / 4)
#define SPIN_NS 10000

typedef struct ring {
  /* The producer's line: tail, and the flag of a consumer asleep on tail,
   * which the producer reads after every publish. */
  _Alignas(64) _Atomic uint32_t tail;
  _Atomic uint32_t cons_asleep;
  /* The consumer's line, likewise. */
  _Alignas(64) _Atomic uint32_t head;
  _Atomic uint32_t prod_asleep;
  _Alignas(64) unsigned char data[RING_SIZE];
} ring;

/* One side's private view of a ring. */
typedef struct side {
  ring *r;
  uint32_t pos;   /* its own counter */
  uint32_t other; /* the other's counter, as last read */
} side;

static long spins; /* pause iterations in about SPIN_NS */

static inline void pause_once(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

static void calibrate(void) {
  const long probe = 20000;
  int64_t t0 = bench_now_ns();
  for (long i = 0; i < probe; i++)
    pause_once();
  double per = (double)(bench_now_ns() - t0) / (double)probe;
  spins = per > 0 ? (long)(SPIN_NS / per) : SPIN_NS;
  if (spins < 1)
    spins = 1;
}

/* Wait until (*word - base) mod 2^32 >= need; returns the value that showed
 * it. asleep is the flag the other side reads after it publishes *word. */
static uint32_t wait_for(_Atomic uint32_t *word, _Atomic uint32_t *asleep, uint32_t base,
                         uint32_t need) {
  uint32_t v;
  for (long i = 0; i < spins; i++) {
    /* acquire: the bytes behind the counter were written before it */
    v = atomic_load_explicit(word, memory_order_acquire);
    if ((uint32_t)(v - base) >= need)
      return v;
    pause_once();
  }
  for (;;) {
    atomic_store(asleep, 1);
    v = atomic_load(word);
    if ((uint32_t)(v - base) >= need)
      break;
    bench_futex_wait(word, v);
  }
  /* relaxed: a stale 1 only costs the other side a needless wake */
  atomic_store_explicit(asleep, 0, memory_order_relaxed);
  return v;
}

static inline void publish(_Atomic uint32_t *word, _Atomic uint32_t *asleep, uint32_t v) {
  atomic_store(word, v);
  if (atomic_load(asleep))
    bench_futex_wake(word, 1);
}

static void copy_in(ring *r, uint32_t pos, const void *src, size_t n) {
  size_t off = pos & (RING_SIZE - 1), first = RING_SIZE - off;
  if (n <= first) {
    memcpy(r->data + off, src, n);
  } else {
    memcpy(r->data + off, src, first);
    memcpy(r->data, (const unsigned char *)src + first, n - first);
  }
}

static void copy_out(ring *r, uint32_t pos, void *dst, size_t n) {
  size_t off = pos & (RING_SIZE - 1), first = RING_SIZE - off;
  if (n <= first) {
    memcpy(dst, r->data + off, n);
  } else {
    memcpy(dst, r->data + off, first);
    memcpy((unsigned char *)dst + first, r->data, n - first);
  }
}

static inline uint64_t rec_size(size_t len) { return 8 + (((uint64_t)len + 7) & ~(uint64_t)7); }

static void ring_put(void *tx, const void *msg, size_t len) {
  side *s = tx;
  ring *r = s->r;
  uint64_t hdr = len, rec = rec_size(len), done = 0;
  while (done < rec) {
    uint64_t rem = rec - done;
    uint32_t need = (uint32_t)(rem < CHUNK ? rem : CHUNK);
    if (RING_SIZE - (uint32_t)(s->pos - s->other) < need) {
      s->other = atomic_load_explicit(&r->head, memory_order_acquire);
      if (RING_SIZE - (uint32_t)(s->pos - s->other) < need)
        s->other = wait_for(&r->head, &r->prod_asleep, s->pos - RING_SIZE, need);
    }
    uint32_t room = RING_SIZE - (uint32_t)(s->pos - s->other);
    uint64_t n = rem < room ? rem : room; /* a multiple of 8, as every counter */
    /* bytes [done, done + n) of the record: length, message, padding */
    uint64_t a = done < 8 ? 8 : done, b = done + n < 8 + len ? done + n : 8 + len;
    if (done == 0)
      copy_in(r, s->pos, &hdr, 8);
    if (a < b)
      copy_in(r, s->pos + (uint32_t)(a - done), (const unsigned char *)msg + (a - 8), b - a);
    s->pos += (uint32_t)n;
    done += n;
    publish(&r->tail, &r->cons_asleep, s->pos);
  }
}

static size_t ring_get(void *rx, void *buf, size_t cap) {
  side *s = rx;
  ring *r = s->r;
  if (s->other == s->pos) {
    s->other = atomic_load_explicit(&r->tail, memory_order_acquire);
    if (s->other == s->pos)
      s->other = wait_for(&r->tail, &r->cons_asleep, s->pos, 8);
  }
  uint64_t len;
  copy_out(r, s->pos, &len, 8);
  if (len > cap)
    bench_die("os-ring: a message of %llu bytes, room for %zu", (unsigned long long)len, cap);
  uint64_t rec = rec_size(len), done = 0;
  for (;;) {
    uint32_t avail = s->other - s->pos;
    uint64_t rem = rec - done, n = rem < avail ? rem : avail;
    uint64_t a = done < 8 ? 8 : done, b = done + n < 8 + len ? done + n : 8 + len;
    if (a < b)
      copy_out(r, s->pos + (uint32_t)(a - done), (unsigned char *)buf + (a - 8), b - a);
    s->pos += (uint32_t)n;
    done += n;
    publish(&r->head, &r->prod_asleep, s->pos);
    if (done == rec)
      return (size_t)len;
    s->other = atomic_load_explicit(&r->tail, memory_order_acquire);
    if (s->other == s->pos)
      s->other = wait_for(&r->tail, &r->cons_asleep, s->pos, 8);
  }
}

/* A channel over a new ring: the producer's and the consumer's views (each
 * process uses only its own copy of one of them). */
static bench_chan ring_chan(side views[2]) {
  ring *r = bench_shared(sizeof *r);
  views[0] = (side){r, 0, 0};
  views[1] = (side){r, 0, 0};
  return (bench_chan){ring_put, ring_get, &views[0], &views[1]};
}

int main(int argc, char **argv) {
  if (argc < 4)
    bench_die("usage: os-ring stream|pingpong LEN N");
  size_t len = (size_t)bench_count(argc, argv, 2, 64);
  long n = bench_count(argc, argv, 3, 1000000);
  calibrate();
  side a[2], b[2];
  if (!strcmp(argv[1], "stream"))
    bench_result(bench_stream_run(ring_chan(a), len, n));
  else if (!strcmp(argv[1], "pingpong"))
    bench_result(bench_pingpong_run(ring_chan(a), ring_chan(b), len, n));
  else
    bench_die("unknown mode '%s'", argv[1]);
  return 0;
}
