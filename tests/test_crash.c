/* SPDX-License-Identifier: MIT */
/*
 * Crash suite: processes killed with SIGKILL at the worst moments, 100 rounds
 * each. The survivors must go on: the heap stays consistent (its invariants are
 * checked block by block) and a lock whose holder died passes to the next
 * acquirer with -EOWNERDEAD, without any waiter hanging.
 */
#include "testutil.h"

#include <mp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

enum { ROUNDS = 100 };

struct shared {
  _Atomic long progress; /* operations a child completed */
  mp_lock *lock;
  _Atomic int holding;
  long counter;
};

/* Allocate and free random sizes forever; killed from outside. */
static int allocator_loop(void *p) {
  struct shared *s = p;
  unsigned seed = (unsigned)getpid();
  void *keep[64] = {0};
  for (;;) {
    int k = (int)(rand_r(&seed) % 64);
    if (keep[k]) {
      mp_heap_free(keep[k]);
      keep[k] = NULL;
    } else {
      size_t n = rand_r(&seed) % 5 == 0 ? rand_r(&seed) % 100000 : rand_r(&seed) % 300;
      keep[k] = mp_heap_alloc(n);
      if (keep[k])
        memset(keep[k], 0x5a, n < 64 ? n : 64);
    }
    atomic_fetch_add_explicit(&s->progress, 1, memory_order_relaxed);
  }
  return 0;
}

static void test_crash_allocator_killed_mid_operation(void **state) {
  (void)state;
  struct shared *s = mp_heap_calloc(1, sizeof *s);
  assert_non_null(s);
  unsigned seed = 12345;
  long recoveries = mp__heap_recoveries();
  for (int round = 0; round < ROUNDS; round++) {
    atomic_store(&s->progress, 0);
    pid_t a = tu_fork(allocator_loop, s, 30);
    pid_t b = tu_fork(allocator_loop, s, 30);
    assert_true(a > 0 && b > 0);
    /* Let them run into the allocator, then kill both at a random moment. */
    while (atomic_load(&s->progress) < 100)
      tu_sleep(0.0002);
    tu_sleep((rand_r(&seed) % 3000) * 1e-6);
    kill(a, SIGKILL);
    tu_sleep((rand_r(&seed) % 500) * 1e-6);
    kill(b, SIGKILL);
    assert_int_equal(tu_wait(a), 1000 + SIGKILL);
    assert_int_equal(tu_wait(b), 1000 + SIGKILL);
    /* The survivor uses the heap: it is consistent and not wedged. */
    alarm(20);
    assert_int_equal(mp__heap_check(), 0);
    void *p[32];
    for (int i = 0; i < 32; i++) {
      p[i] = mp_heap_alloc((size_t)(i * 97));
      assert_non_null(p[i]);
    }
    for (int i = 0; i < 32; i++)
      assert_int_equal(mp_heap_free(p[i]), 0);
    assert_int_equal(mp__heap_check(), 0);
    alarm(0);
  }
  /* Some kills must have landed inside the allocator, or this proved nothing. */
  assert_true(mp__heap_recoveries() > recoveries);
  mp_heap_free(s);
}

/* Hold the lock, increment, and die at a random point inside. */
static int lock_loop(void *p) {
  struct shared *s = p;
  for (;;) {
    int r = mp_lock_acquire(s->lock, MP_FOREVER);
    CHILD_CHECK(r == 0 || r == -EOWNERDEAD);
    s->counter++;
    atomic_fetch_add_explicit(&s->progress, 1, memory_order_relaxed);
    CHILD_CHECK(mp_lock_release(s->lock) == 0);
  }
  return 0;
}

static void test_crash_lock_holder_killed_at_random(void **state) {
  (void)state;
  struct shared *s = mp_heap_calloc(1, sizeof *s);
  assert_int_equal(mp_lock_new(&s->lock), 0);
  unsigned seed = 777;
  int owner_dead_seen = 0;
  for (int round = 0; round < ROUNDS; round++) {
    atomic_store(&s->progress, 0);
    pid_t a = tu_fork(lock_loop, s, 30);
    pid_t b = tu_fork(lock_loop, s, 30); /* a waiter that must not hang */
    while (atomic_load(&s->progress) < 50)
      tu_sleep(0.0002);
    tu_sleep((rand_r(&seed) % 2000) * 1e-6);
    kill(a, SIGKILL);
    assert_int_equal(tu_wait(a), 1000 + SIGKILL);
    /* b goes on: its progress keeps growing whether or not a died holding. */
    long seen = atomic_load(&s->progress);
    double t0 = tu_now();
    while (atomic_load(&s->progress) < seen + 50 && tu_now() - t0 < 10)
      tu_sleep(0.0005);
    assert_true(atomic_load(&s->progress) >= seen + 50);
    kill(b, SIGKILL);
    assert_int_equal(tu_wait(b), 1000 + SIGKILL);
    int r = mp_lock_acquire(s->lock, 5);
    assert_true(r == 0 || r == -EOWNERDEAD);
    owner_dead_seen += r == -EOWNERDEAD;
    assert_int_equal(mp_lock_release(s->lock), 0);
  }
  /* Killing a busy holder 100 times must have hit it holding sometimes. */
  assert_true(owner_dead_seen > 0);
  assert_int_equal(mp_lock_free(s->lock), 0);
  mp_heap_free(s);
}

/* The holder dies for sure while others are asleep waiting. */
static int hold_then_wait(void *p) {
  struct shared *s = p;
  CHILD_CHECK(mp_lock_acquire(s->lock, MP_FOREVER) == 0);
  atomic_store(&s->holding, 1);
  pause();
  return 0;
}

static int blocked_waiter(void *p) {
  struct shared *s = p;
  int r = mp_lock_acquire(s->lock, 20);
  CHILD_CHECK(r == 0 || r == -EOWNERDEAD);
  CHILD_CHECK(mp_lock_release(s->lock) == 0);
  return r == -EOWNERDEAD ? 3 : 0;
}

static void test_crash_lock_holder_killed_with_sleeping_waiters(void **state) {
  (void)state;
  struct shared *s = mp_heap_calloc(1, sizeof *s);
  assert_int_equal(mp_rlock_new(&s->lock), 0);
  for (int round = 0; round < ROUNDS; round++) {
    atomic_store(&s->holding, 0);
    pid_t h = tu_fork(hold_then_wait, s, 30);
    while (!atomic_load(&s->holding))
      tu_sleep(0.0002);
    pid_t w1 = tu_fork(blocked_waiter, s, 30), w2 = tu_fork(blocked_waiter, s, 30);
    tu_sleep(0.002); /* let them fall asleep in the kernel */
    kill(h, SIGKILL);
    assert_int_equal(tu_wait(h), 1000 + SIGKILL);
    int r1 = tu_wait(w1), r2 = tu_wait(w2);
    /* Both got the lock; exactly one of them was told its holder died. */
    assert_true((r1 == 3 && r2 == 0) || (r1 == 0 && r2 == 3));
  }
  assert_int_equal(mp_rlock_free(s->lock), 0);
  mp_heap_free(s);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_crash_allocator_killed_mid_operation),
      cmocka_unit_test(test_crash_lock_holder_killed_at_random),
      cmocka_unit_test(test_crash_lock_holder_killed_with_sleeping_waiters),
  };
  return TU_RUN("crash", tests);
}
