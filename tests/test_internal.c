/* SPDX-License-Identifier: MIT */
/* White-box: deadlines, the futex layer, thread ids, the heap's invariants,
 * robust mutex sleeps. */
#include "testutil.h"

#include <linux/futex.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "internal.h"
#include "wire.h"
#include <mp.h>

static void test_internal_deadline_kinds(void **state) {
  (void)state;
  mp__deadline d;
  assert_int_equal(mp__deadline_init(&d, NAN), -EINVAL);
  assert_int_equal(mp__deadline_init(&d, MP_FOREVER), 0);
  assert_true(d.forever);
  assert_false(mp__deadline_passed(&d));
  assert_int_equal(mp__deadline_poll_ms(&d), -1);
  /* Python's rule: a negative timeout tries once, however negative. */
  static const double negatives[] = {-123.0, -1e-12, -(double)INFINITY};
  for (size_t i = 0; i < 3; i++) {
    assert_int_equal(mp__deadline_init(&d, negatives[i]), 0);
    assert_false(d.forever);
    assert_true(d.nowait);
    assert_true(mp__deadline_passed(&d));
  }
  assert_int_equal(mp__deadline_init(&d, INFINITY), 0);
  assert_true(d.forever);
  assert_int_equal(mp__deadline_init(&d, 1e300), 0);
  assert_true(d.forever);
  assert_int_equal(mp__deadline_init(&d, MP_NOWAIT), 0);
  assert_true(d.nowait);
  assert_false(d.forever);
  assert_true(mp__deadline_passed(&d));
  assert_int_equal(mp__deadline_poll_ms(&d), 0);
  assert_int_equal(mp__deadline_init(&d, 0.0001), 0);
  assert_false(d.nowait);
  /* Rounded up: a poll never returns before the deadline. */
  int ms = mp__deadline_poll_ms(&d);
  assert_true(ms == 0 || ms == 1);
  assert_int_equal(mp__deadline_init(&d, 2.5), 0);
  ms = mp__deadline_poll_ms(&d);
  assert_true(ms > 2400 && ms <= 2500);
  assert_false(mp__deadline_passed(&d));
}

static void test_internal_futex_wait_and_wake(void **state) {
  (void)state;
  _Atomic uint32_t word = 5;
  mp__deadline d;
  mp__deadline_init(&d, 0.1);
  assert_int_equal(mp__futex_wait(&word, 4, &d), 0); /* differs: at once */
  double t0 = tu_now();
  assert_int_equal(mp__futex_wait(&word, 5, &d), -ETIMEDOUT);
  assert_true(tu_now() - t0 >= 0.09);
  mp__deadline_init(&d, 0);
  assert_int_equal(mp__futex_wait(&word, 5, &d), -ETIMEDOUT);
  assert_int_equal(mp__futex_wake(&word, 1), 0); /* nobody asleep */
}

static void *tid_thread(void *p) {
  *(pid_t *)p = mp__tid();
  return NULL;
}

static int tid_child(void *p) {
  pid_t parent_tid = *(pid_t *)p;
  CHILD_CHECK(mp__tid() != parent_tid);
  CHILD_CHECK(mp__tid() == getpid());
  return 0;
}

static void test_internal_tid_per_thread_and_after_fork(void **state) {
  (void)state;
  pid_t me = mp__tid(), other = 0;
  assert_int_equal(me, getpid());
  pthread_t t;
  pthread_create(&t, NULL, tid_thread, &other);
  pthread_join(t, NULL);
  assert_true(other > 0 && other != me);
  assert_child_ok(tu_fork(tid_child, &me, 10));
}

static void test_internal_heap_invariants_under_churn(void **state) {
  (void)state;
  void *p[500] = {0};
  unsigned seed = 9;
  for (int i = 0; i < 20000; i++) {
    int k = (int)(rand_r(&seed) % 500);
    if (p[k]) {
      assert_int_equal(mp_heap_free(p[k]), 0);
      p[k] = NULL;
    } else {
      p[k] = mp_heap_alloc(rand_r(&seed) % 3 ? rand_r(&seed) % 2000 : rand_r(&seed) % 300000);
      assert_non_null(p[k]);
    }
    if (i % 1000 == 0)
      assert_int_equal(mp__heap_check(), 0);
  }
  for (int k = 0; k < 500; k++)
    mp_heap_free(p[k]);
  assert_int_equal(mp__heap_check(), 0);
}

static void test_internal_object_tags(void **state) {
  (void)state;
  void *o = mp__object_new(64, MP__TAG_EVENT);
  assert_non_null(o);
  assert_true(mp__tag_ok(o, MP__TAG_EVENT));
  assert_false(mp__tag_ok(o, MP__TAG_LOCK));
  assert_false(mp__tag_ok(NULL, MP__TAG_EVENT));
  mp__object_free(o);
  assert_false(mp__tag_ok(o, MP__TAG_EVENT));
}

/* A robust mutex in shared memory and the steps of the lost wake-up test. */
struct robust_sh {
  pthread_mutex_t m;
  _Atomic int stage; /* 1: holder holds it; 2: release it */
  _Atomic int64_t got_ns;
};

static int robust_holder(void *p) {
  struct robust_sh *sh = p;
  CHILD_CHECK(pthread_mutex_lock(&sh->m) == 0);
  atomic_store(&sh->stage, 1);
  while (atomic_load(&sh->stage) != 2)
    tu_sleep(0.001);
  CHILD_CHECK(pthread_mutex_unlock(&sh->m) == 0);
  return 0;
}

static int robust_sleeper(void *p) {
  struct robust_sh *sh = p;
  mp__deadline d;
  mp__deadline_init(&d, 10);
  CHILD_CHECK(mp__robust_mutex_lock(&sh->m, &d) == 0);
  atomic_store(&sh->got_ns, mp__now_ns());
  CHILD_CHECK(pthread_mutex_unlock(&sh->m) == 0);
  return 0;
}

static int robust_dier(void *p) {
  struct robust_sh *sh = p;
  CHILD_CHECK(pthread_mutex_lock(&sh->m) == 0);
  return 0; /* exits holding it */
}

/* The state a process killed inside a robust mutex can leave: a sleeper in the
 * futex, and the word without FUTEX_WAITERS (the unlocker swapped it to 0, or
 * the sleeper it woke died, and a third thread took the mutex before the
 * kernel could pass the wake on). The holder's unlock then wakes nobody; the
 * sleeper must still get the mutex within a slice, not at its deadline. */
static void test_internal_robust_mutex_lock_survives_lost_wake(void **state) {
  (void)state;
  struct robust_sh *sh =
      mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  assert_true(sh != MAP_FAILED);
  memset(sh, 0, sizeof *sh);
  assert_int_equal(mp__robust_mutex_init(&sh->m, false), 0);
  pid_t holder = tu_fork(robust_holder, sh, 30);
  while (atomic_load(&sh->stage) != 1)
    tu_sleep(0.001);
  pid_t sleeper = tu_fork(robust_sleeper, sh, 30);
  /* glibc's futex word; FUTEX_WAITERS appears once the sleeper is about to
   * sleep. Clear it and check it stays clear: the sleeper is then asleep in
   * the futex, and only a wake-up (or its own give-up) moves it. */
  int *word = &sh->m.__data.__lock;
  int quiet = 0;
  for (int i = 0; i < 2000 && quiet < 5; i++) {
    int v = __atomic_load_n(word, __ATOMIC_SEQ_CST);
    if (v & FUTEX_WAITERS) {
      __atomic_compare_exchange_n(word, &v, v & ~FUTEX_WAITERS, false, __ATOMIC_SEQ_CST,
                                  __ATOMIC_SEQ_CST);
      quiet = 0;
    } else if (v == holder) {
      quiet++;
    }
    tu_sleep(0.01);
  }
  assert_int_equal(__atomic_load_n(word, __ATOMIC_SEQ_CST) & ~FUTEX_WAITERS, holder);
  int64_t released = mp__now_ns();
  atomic_store(&sh->stage, 2); /* an unlock that finds no FUTEX_WAITERS: no wake */
  assert_child_ok(holder);
  assert_child_ok(sleeper);
  double waited = (double)(atomic_load(&sh->got_ns) - released) * 1e-9;
  assert_true(waited < 3.0); /* one slice (0.1 s) plus a loaded machine; 10 s before */

  /* The ordinary outcomes: a holder that died, a deadline, MP_NOWAIT, signals. */
  pid_t dier = tu_fork(robust_dier, sh, 30);
  assert_child_ok(dier);
  mp__deadline d;
  mp__deadline_init(&d, 5);
  assert_int_equal(mp__robust_mutex_lock(&sh->m, &d), -EOWNERDEAD);
  assert_int_equal(pthread_mutex_consistent(&sh->m), 0);
  assert_int_equal(pthread_mutex_unlock(&sh->m), 0);
  atomic_store(&sh->stage, 0);
  holder = tu_fork(robust_holder, sh, 30);
  while (atomic_load(&sh->stage) != 1)
    tu_sleep(0.001);
  mp__deadline_init(&d, MP_NOWAIT);
  double t0 = tu_now();
  assert_int_equal(mp__robust_mutex_lock(&sh->m, &d), -ETIMEDOUT);
  assert_true(tu_now() - t0 < 0.5);
  mp__deadline_init(&d, 0.35); /* spans several slices */
  t0 = tu_now();
  assert_int_equal(mp__robust_mutex_lock(&sh->m, &d), -ETIMEDOUT);
  double el = tu_now() - t0;
  assert_true(el >= 0.35 - 0.01 && el < 2.0);
  tu_signals_start(0.05, 0.05);
  mp__deadline_init(&d, 0.3);
  t0 = tu_now();
  assert_int_equal(mp__robust_mutex_lock(&sh->m, &d), -ETIMEDOUT);
  el = tu_now() - t0;
  assert_true(tu_signals_stop() > 0);
  assert_true(el >= 0.3 - 0.01 && el < 2.0);
  atomic_store(&sh->stage, 2);
  assert_child_ok(holder);
  pthread_mutex_destroy(&sh->m);
  munmap(sh, sizeof *sh);
}

/* ---------------------------------------------------------------- pool maps */

static int add_seven(const void *item, void *result, void *ctx) {
  int v = *(const int *)item;
  if (ctx && v == *(const int *)ctx)
    return -1234;
  *(int *)result = v + 7;
  return 0;
}

/* What the kernel lets a child do to its parent's memory: Yama's scope 0 (or
 * no Yama) allows it, any other scope refuses it. */
static int direct_allowed(void) {
  FILE *f = fopen("/proc/sys/kernel/yama/ptrace_scope", "r");
  if (!f)
    return 1;
  int scope = 1;
  if (fscanf(f, "%d", &scope) != 1)
    scope = 1;
  fclose(f);
  return scope == 0;
}

/* Maps over ordinary memory too big to stage through the heap (items and
 * results above MP__HEAP_TRIM together), with chunks of at least a page, are
 * read and written by the workers straight in the caller's memory: results,
 * a failing item (the results of its chunk before it are written, none
 * after), a map_async, and memory the caller cannot read or write (-EFAULT,
 * the pool goes on). */
static void test_internal_pool_direct_maps(void **state) {
  (void)state;
  mp_pool *p;
  assert_int_equal(mp_pool_new(2, NULL, &p), 0);
  int d = mp__pool_direct(p, 10);
  assert_int_equal(d, direct_allowed());
  if (d != 1) {
    /* this system refuses: every map goes through the heap (test_pool) */
    assert_int_equal(mp_pool_free(p), 0);
    return;
  }
  size_t n = 3u << 20; /* 12 MiB each way */
  assert_true(2 * n * sizeof(int) > MP__HEAP_TRIM);
  int *in = malloc(n * sizeof *in), *out = malloc(n * sizeof *out);
  assert_non_null(in);
  assert_non_null(out);
  for (size_t i = 0; i < n; i++) {
    in[i] = (int)i;
    out[i] = -1;
  }
  assert_int_equal(mp_pool_map(p, add_seven, NULL, in, n, sizeof *in, out, sizeof *out, 0), 0);
  for (size_t i = 0; i < n; i++)
    if (out[i] != (int)i + 7)
      fail_msg("out[%zu] = %d", i, out[i]);

  /* item 300000 fails: chunks of 100000, so 300000..399999 stay untouched */
  int *bad = mp_heap_alloc(sizeof *bad);
  *bad = 300000;
  for (size_t i = 0; i < n; i++)
    out[i] = -1;
  assert_int_equal(mp_pool_map(p, add_seven, bad, in, n, sizeof *in, out, sizeof *out, 100000),
                   -1234);
  for (size_t i = 0; i < n; i++) {
    int want = i >= 300000 && i < 400000 ? -1 : (int)i + 7;
    if (out[i] != want)
      fail_msg("out[%zu] = %d, want %d", i, out[i], want);
  }
  mp_heap_free(bad);

  mp_async_result *r;
  for (size_t i = 0; i < n; i++)
    out[i] = -1;
  assert_int_equal(
      mp_pool_map_async(p, add_seven, NULL, in, n, sizeof *in, out, sizeof *out, 0, NULL, &r), 0);
  assert_int_equal(mp_async_result_get(r, 30), 0);
  assert_int_equal(mp_async_result_free(r), 0);
  assert_int_equal(out[n - 1], (int)(n - 1) + 7);

  /* memory the caller cannot read, then cannot write */
  size_t bytes = n * sizeof(int);
  char *gone = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  assert_true(gone != MAP_FAILED);
  assert_int_equal(munmap(gone, bytes), 0);
  assert_int_equal(
      mp_pool_map(p, add_seven, NULL, gone, bytes / sizeof(int), sizeof(int), out, sizeof *out, 0),
      -EFAULT);
  char *ro = mmap(NULL, bytes, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  assert_true(ro != MAP_FAILED);
  assert_int_equal(
      mp_pool_map(p, add_seven, NULL, in, bytes / sizeof(int), sizeof(int), ro, sizeof(int), 0),
      -EFAULT);
  for (size_t i = 0; i < bytes; i++)
    assert_int_equal(ro[i], 0);
  assert_int_equal(munmap(ro, bytes), 0);
  assert_int_equal(mp_pool_map(p, add_seven, NULL, in, 5000, sizeof *in, out, sizeof *out, 0), 0);
  assert_int_equal(out[4999], 4999 + 7);
  free(in);
  free(out);
  assert_int_equal(mp_pool_free(p), 0);
}

/* The handshake's MAC is HMAC-SHA256 of the label byte and the nonce: known
 * answers computed independently (Python's hmac module), one with a key
 * longer than SHA-256's block (hashed first, as RFC 2104 says). */
static void hex32(const char *hex, uint8_t out[32]) {
  for (int i = 0; i < 32; i++) {
    unsigned v;
    assert_int_equal(sscanf(hex + 2 * i, "%2x", &v), 1);
    out[i] = (uint8_t)v;
  }
}

static void test_internal_handshake_mac_known_answers(void **state) {
  (void)state;
  uint8_t nonce[MP__NONCE_LEN], mac[MP__MAC_LEN], want[MP__MAC_LEN];
  assert_int_equal(MP__NONCE_LEN, 32);
  for (int i = 0; i < MP__NONCE_LEN; i++)
    nonce[i] = (uint8_t)i;
  assert_int_equal(mp__hs_answer("Jefe", 4, 'C', nonce, mac), 0);
  hex32("ac211873311961811b275ec98d851f284e8030e183d425b08f2e1b6e6abb206e", want);
  assert_memory_equal(mac, want, MP__MAC_LEN);
  assert_int_equal(mp__hs_check("Jefe", 4, 'C', nonce, want, MP__MAC_LEN), 0);
  want[31] ^= 1;
  assert_int_equal(mp__hs_check("Jefe", 4, 'C', nonce, want, MP__MAC_LEN), -EACCES);
  assert_int_equal(mp__hs_check("Jefe", 4, 'C', nonce, want, MP__MAC_LEN - 1), -EACCES);

  uint8_t key[131];
  memset(key, 0xaa, sizeof key);
  memset(nonce, 0xdd, sizeof nonce);
  assert_int_equal(mp__hs_answer(key, sizeof key, 'S', nonce, mac), 0);
  hex32("811d0b2efa637efb73367d83f85d9cce4b4b6e86c59693855aa19e8bb8260d60", want);
  assert_memory_equal(mac, want, MP__MAC_LEN);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_internal_deadline_kinds),
      cmocka_unit_test(test_internal_futex_wait_and_wake),
      cmocka_unit_test(test_internal_tid_per_thread_and_after_fork),
      cmocka_unit_test(test_internal_heap_invariants_under_churn),
      cmocka_unit_test(test_internal_object_tags),
      cmocka_unit_test(test_internal_robust_mutex_lock_survives_lost_wake),
      cmocka_unit_test(test_internal_pool_direct_maps),
      cmocka_unit_test(test_internal_handshake_mac_known_answers),
  };
  return TU_RUN("internal", tests);
}
