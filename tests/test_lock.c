/* SPDX-License-Identifier: MIT */
/* Lock and RLock: ownership, recursion, timeouts, processes and threads. */
#include "testutil.h"

#include <math.h>
#include <mp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

static void test_lock_acquire_release(void **state) {
  (void)state;
  mp_lock *l;
  assert_int_equal(mp_lock_new(&l), 0);
  assert_int_equal(mp_heap_contains(l), 1);
  assert_int_equal(mp_lock_locked(l), 0);
  assert_int_equal(mp_lock_acquire(l, MP_FOREVER), 0);
  assert_int_equal(mp_lock_locked(l), 1);
  assert_int_equal(mp_lock_release(l), 0);
  assert_int_equal(mp_lock_locked(l), 0);
  assert_int_equal(mp_lock_acquire(l, MP_NOWAIT), 0);
  assert_int_equal(mp_lock_release(l), 0);
  assert_int_equal(mp_lock_acquire(l, 1.5), 0);
  assert_int_equal(mp_lock_release(l), 0);
  assert_int_equal(mp_lock_acquire(l, 1e300), 0); /* huge means forever */
  assert_int_equal(mp_lock_release(l), 0);
  assert_int_equal(mp_lock_free(l), 0);
}

static void test_lock_errors(void **state) {
  (void)state;
  mp_lock *l;
  assert_int_equal(mp_lock_new(NULL), -EINVAL);
  assert_int_equal(mp_rlock_new(NULL), -EINVAL);
  assert_int_equal(mp_lock_acquire(NULL, 0), -EINVAL);
  assert_int_equal(mp_lock_release(NULL), -EINVAL);
  assert_int_equal(mp_lock_locked(NULL), -EINVAL);
  assert_int_equal(mp_rlock_acquire(NULL, 0), -EINVAL);
  assert_int_equal(mp_rlock_release(NULL), -EINVAL);
  assert_int_equal(mp_lock_free(NULL), 0);
  assert_int_equal(mp_rlock_free(NULL), 0);
  assert_int_equal(mp_lock_new(&l), 0);
  assert_int_equal(mp_lock_acquire(l, NAN), -EINVAL);
  assert_int_equal(mp_lock_locked(l), 0);
  assert_int_equal(mp_lock_release(l), -EPERM); /* not held */
  assert_int_equal(mp_lock_acquire(l, 0), 0);
  assert_int_equal(mp_lock_acquire(l, 0), -EDEADLK);          /* already mine */
  assert_int_equal(mp_lock_acquire(l, MP_FOREVER), -EDEADLK); /* never hangs */
  assert_int_equal(mp_lock_free(l), -EBUSY);
  assert_int_equal(mp_lock_release(l), 0);
  assert_int_equal(mp_lock_free(l), 0);
  /* A heap block that is not a lock. */
  void *junk = mp_heap_calloc(1, 128);
  assert_int_equal(mp_lock_acquire(junk, 0), -EINVAL);
  assert_int_equal(mp_lock_release(junk), -EINVAL);
  assert_int_equal(mp_lock_free(junk), -EINVAL);
  mp_heap_free(junk);
}

static void test_lock_freed_handle_is_rejected(void **state) {
  (void)state;
  mp_lock *l;
  assert_int_equal(mp_lock_new(&l), 0);
  assert_int_equal(mp_lock_free(l), 0);
  assert_int_equal(mp_lock_acquire(l, 0), -EINVAL);
  assert_int_equal(mp_lock_release(l), -EINVAL);
  assert_int_equal(mp_lock_free(l), -EINVAL);
}

static void test_rlock_recursion(void **state) {
  (void)state;
  mp_rlock *r;
  assert_int_equal(mp_rlock_new(&r), 0);
  assert_int_equal(mp_rlock_release(r), -EPERM);
  for (int i = 0; i < 5; i++)
    assert_int_equal(mp_rlock_acquire(r, 0), 0);
  for (int i = 0; i < 4; i++) {
    assert_int_equal(mp_rlock_release(r), 0);
    assert_int_equal(mp_lock_locked(r), 1); /* still held: levels remain */
  }
  assert_int_equal(mp_rlock_free(r), -EBUSY);
  assert_int_equal(mp_rlock_release(r), 0);
  assert_int_equal(mp_lock_locked(r), 0);
  assert_int_equal(mp_rlock_release(r), -EPERM); /* over-release */
  /* An RLock is a Lock that counts: the Lock calls count too. */
  assert_int_equal(mp_lock_acquire(r, 0), 0);
  assert_int_equal(mp_lock_acquire(r, 0), 0);
  assert_int_equal(mp_lock_release(r), 0);
  assert_int_equal(mp_lock_release(r), 0);
  assert_int_equal(mp_rlock_free(r), 0);
}

/* ------------------------------------------------------- other threads */

struct thread_arg {
  mp_lock *lock;
  double timeout;
  int result;
  double elapsed;
};

static void *try_acquire_thread(void *p) {
  struct thread_arg *a = p;
  double t0 = tu_now();
  a->result = mp_lock_acquire(a->lock, a->timeout);
  a->elapsed = tu_now() - t0;
  if (a->result == 0)
    mp_lock_release(a->lock);
  return NULL;
}

static void *release_thread(void *p) {
  struct thread_arg *a = p;
  a->result = mp_lock_release(a->lock);
  return NULL;
}

static void test_lock_owned_by_thread(void **state) {
  (void)state;
  mp_lock *kinds[2];
  assert_int_equal(mp_lock_new(&kinds[0]), 0);
  assert_int_equal(mp_rlock_new(&kinds[1]), 0);
  for (int k = 0; k < 2; k++) {
    mp_lock *l = kinds[k];
    assert_int_equal(mp_lock_acquire(l, 0), 0);
    struct thread_arg a = {.lock = l, .timeout = 0};
    pthread_t t;
    pthread_create(&t, NULL, release_thread, &a);
    pthread_join(t, NULL);
    assert_int_equal(a.result, -EPERM); /* another thread may not release */
    pthread_create(&t, NULL, try_acquire_thread, &a);
    pthread_join(t, NULL);
    assert_int_equal(a.result, -ETIMEDOUT); /* nor acquire it */
    assert_int_equal(mp_lock_release(l), 0);
    pthread_create(&t, NULL, try_acquire_thread, &a);
    pthread_join(t, NULL);
    assert_int_equal(a.result, 0);
    assert_int_equal(mp_lock_free(l), 0);
  }
}

static void test_lock_timeouts(void **state) {
  (void)state;
  mp_lock *l;
  assert_int_equal(mp_lock_new(&l), 0);
  assert_int_equal(mp_lock_acquire(l, 0), 0);
  struct thread_arg a = {.lock = l, .timeout = MP_NOWAIT};
  pthread_t t;
  pthread_create(&t, NULL, try_acquire_thread, &a);
  pthread_join(t, NULL);
  assert_int_equal(a.result, -ETIMEDOUT);
  assert_true(a.elapsed < 0.5);
  a.timeout = 0.2;
  pthread_create(&t, NULL, try_acquire_thread, &a);
  pthread_join(t, NULL);
  assert_int_equal(a.result, -ETIMEDOUT);
  assert_true(a.elapsed >= 0.19);
  assert_true(a.elapsed < 2.0);
  assert_int_equal(mp_lock_release(l), 0);
  assert_int_equal(mp_lock_free(l), 0);
}

/* The holder is another process; signals hit this one during the wait. */
struct held {
  mp_lock *lock;
  _Atomic int state; /* 1: the child holds the lock; 2: it may let go */
};

static int hold_child(void *p) {
  struct held *h = p;
  CHILD_CHECK(mp_lock_acquire(h->lock, MP_FOREVER) == 0);
  atomic_store(&h->state, 1);
  while (atomic_load(&h->state) != 2)
    tu_sleep(0.001);
  CHILD_CHECK(mp_lock_release(h->lock) == 0);
  return 0;
}

static void test_lock_signals_neither_end_nor_stretch_wait(void **state) {
  (void)state;
  struct held *h = mp_heap_calloc(1, sizeof *h);
  assert_int_equal(mp_lock_new(&h->lock), 0);
  pid_t pid = tu_fork(hold_child, h, 30);
  while (atomic_load(&h->state) != 1)
    tu_sleep(0.001);
  assert_int_equal(mp_lock_release(h->lock), -EPERM); /* another process holds it */
  tu_signals_start(0.05, 0.05);
  double t0 = tu_now();
  int r = mp_lock_acquire(h->lock, 0.5);
  double el = tu_now() - t0;
  int seen = tu_signals_stop();
  assert_int_equal(r, -ETIMEDOUT);
  assert_true(seen >= 2);
  assert_true(el >= 0.49);
  assert_true(el < 2.5);
  atomic_store(&h->state, 2);
  assert_int_equal(mp_lock_acquire(h->lock, 10), 0);
  assert_int_equal(mp_lock_release(h->lock), 0);
  assert_child_ok(pid);
  assert_int_equal(mp_lock_free(h->lock), 0);
  mp_heap_free(h);
}

/* Mutual exclusion: plain increments under the lock are never lost. */
struct counter {
  mp_lock *lock;
  long value;
  int iterations;
};

static int count_child(void *p) {
  struct counter *c = p;
  for (int i = 0; i < c->iterations; i++) {
    CHILD_CHECK(mp_lock_acquire(c->lock, MP_FOREVER) == 0);
    long v = c->value;
    atomic_signal_fence(memory_order_seq_cst);
    c->value = v + 1;
    CHILD_CHECK(mp_lock_release(c->lock) == 0);
  }
  return 0;
}

static void *count_thread(void *p) {
  count_child(p);
  return NULL;
}

static void test_lock_mutual_exclusion_processes_and_threads(void **state) {
  (void)state;
  mp_lock *kinds[2];
  assert_int_equal(mp_lock_new(&kinds[0]), 0);
  assert_int_equal(mp_rlock_new(&kinds[1]), 0);
  for (int k = 0; k < 2; k++) {
    struct counter *c = mp_heap_calloc(1, sizeof *c);
    c->lock = kinds[k];
    c->iterations = 50000;
    pid_t a = tu_fork(count_child, c, 60), b = tu_fork(count_child, c, 60);
    pthread_t t;
    pthread_create(&t, NULL, count_thread, c);
    pthread_join(t, NULL);
    assert_child_ok(a);
    assert_child_ok(b);
    assert_int_equal(c->value, 3L * c->iterations);
    assert_int_equal(mp_lock_free(kinds[k]), 0);
    mp_heap_free(c);
  }
}

/* A lock held across fork is not held by the child. */
static int forked_while_held_child(void *p) {
  mp_lock *l = p;
  CHILD_CHECK(mp_lock_release(l) == -EPERM);
  CHILD_CHECK(mp_lock_acquire(l, 0) == -ETIMEDOUT);
  CHILD_CHECK(mp_lock_locked(l) == 1);
  return 0;
}

static void test_lock_not_held_by_child_after_fork(void **state) {
  (void)state;
  mp_lock *l;
  assert_int_equal(mp_lock_new(&l), 0);
  assert_int_equal(mp_lock_acquire(l, 0), 0);
  pid_t pid = tu_fork(forked_while_held_child, l, 30);
  assert_child_ok(pid);
  assert_int_equal(mp_lock_release(l), 0);
  assert_int_equal(mp_lock_free(l), 0);
}

/* The holder's pid, also when another thread of the process holds it. */
struct thread_holder {
  mp_lock *lock;
  _Atomic int state; /* 1: holding; 2: may release */
};

static void *hold_in_thread(void *p) {
  struct thread_holder *t = p;
  if (mp_lock_acquire(t->lock, MP_FOREVER) != 0)
    return NULL;
  atomic_store(&t->state, 1);
  while (atomic_load(&t->state) != 2)
    tu_sleep(0.001);
  mp_lock_release(t->lock);
  return NULL;
}

static void test_lock_holder_is_the_process_of_the_holding_thread(void **state) {
  (void)state;
  struct thread_holder t = {0};
  assert_int_equal(mp_lock_new(&t.lock), 0);
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, hold_in_thread, &t), 0);
  while (atomic_load(&t.state) != 1)
    tu_sleep(0.001);
  pid_t holder = 0;
  assert_int_equal(mp_lock_holder(t.lock, &holder), 1);
  assert_int_equal(holder, getpid()); /* the process, not the thread's id */
  atomic_store(&t.state, 2);
  pthread_join(th, NULL);
  assert_int_equal(mp_lock_holder(t.lock, &holder), 0);
  assert_int_equal(mp_lock_free(t.lock), 0);
}

/* A holder that dies: the next acquirer is told and holds a usable lock. */
static int die_holding(void *p) {
  struct held *h = p;
  CHILD_CHECK(mp_rlock_acquire(h->lock, MP_FOREVER) == 0);
  CHILD_CHECK(mp_rlock_acquire(h->lock, MP_FOREVER) == 0);
  atomic_store(&h->state, 1);
  pause();
  return 0;
}

static void test_lock_owner_death_reported_and_recovered(void **state) {
  (void)state;
  struct held *h = mp_heap_calloc(1, sizeof *h);
  assert_int_equal(mp_rlock_new(&h->lock), 0);
  pid_t pid = tu_fork(die_holding, h, 30);
  while (atomic_load(&h->state) != 1)
    tu_sleep(0.001);
  assert_int_equal(mp_rlock_acquire(h->lock, 0), -ETIMEDOUT);
  pid_t holder = 0;
  assert_int_equal(mp_lock_holder(h->lock, &holder), 1);
  assert_int_equal(holder, pid);
  kill(pid, SIGKILL);
  assert_int_equal(tu_wait(pid), 1000 + SIGKILL);
  /* Held by the dead until taken over, as Python's locked() says. */
  assert_int_equal(mp_lock_locked(h->lock), 1);
  holder = 0;
  assert_int_equal(mp_lock_holder(h->lock, &holder), -EOWNERDEAD);
  assert_int_equal(holder, 0);
  assert_int_equal(mp_rlock_acquire(h->lock, 5), -EOWNERDEAD);
  assert_int_equal(mp_lock_locked(h->lock), 1);
  assert_int_equal(mp_lock_holder(h->lock, &holder), 1);
  assert_int_equal(holder, getpid());
  assert_int_equal(mp_rlock_release(h->lock), 0); /* one level: the dead one's are gone */
  assert_int_equal(mp_lock_locked(h->lock), 0);
  assert_int_equal(mp_lock_holder(h->lock, &holder), 0);
  assert_int_equal(mp_lock_holder(NULL, &holder), -EINVAL);
  assert_int_equal(mp_lock_holder(h->lock, NULL), -EINVAL);
  assert_int_equal(mp_rlock_acquire(h->lock, 0), 0); /* told only once */
  assert_int_equal(mp_rlock_release(h->lock), 0);
  assert_int_equal(mp_rlock_free(h->lock), 0);
  mp_heap_free(h);
}

static int die_holding_plain(void *p) {
  struct held *h = p;
  CHILD_CHECK(mp_lock_acquire(h->lock, MP_FOREVER) == 0);
  atomic_store(&h->state, 1);
  pause();
  return 0;
}

/* Waits on a Lock another process holds; the holder is killed meanwhile. */
static int wait_for_dead_holder(void *p) {
  struct held *h = p;
  atomic_store(&h->state, 2);
  int r = mp_lock_acquire(h->lock, 10);
  CHILD_CHECK(r == -EOWNERDEAD);
  CHILD_CHECK(mp_lock_release(h->lock) == 0);
  return 0;
}

/* A waiter already inside acquire (spinning, then asleep) when the holder
 * dies takes the lock over with -EOWNERDEAD, many times over: the spin before
 * sleeping reads the futex word and must treat OWNER_DIED as a way in. */
static void test_lock_waiting_acquirer_takes_over_from_dead_holder(void **state) {
  (void)state;
  for (int round = 0; round < 20; round++) {
    struct held *h = mp_heap_calloc(1, sizeof *h);
    assert_int_equal(mp_lock_new(&h->lock), 0);
    pid_t holder = tu_fork(die_holding_plain, h, 30);
    while (atomic_load(&h->state) != 1)
      tu_sleep(0.0005);
    pid_t waiter = tu_fork(wait_for_dead_holder, h, 30);
    while (atomic_load(&h->state) != 2)
      tu_sleep(0.0005);
    if (round % 2)
      tu_sleep(0.05); /* odd rounds: the waiter has gone to sleep */
    kill(holder, SIGKILL);
    assert_int_equal(tu_wait(holder), 1000 + SIGKILL);
    assert_child_ok(waiter);
    assert_int_equal(mp_lock_acquire(h->lock, 0), 0);
    assert_int_equal(mp_lock_release(h->lock), 0);
    assert_int_equal(mp_lock_free(h->lock), 0);
    mp_heap_free(h);
  }
}

static void test_lock_free_after_holder_died(void **state) {
  (void)state;
  struct held *h = mp_heap_calloc(1, sizeof *h);
  assert_int_equal(mp_lock_new(&h->lock), 0);
  pid_t pid = tu_fork(die_holding_plain, h, 30);
  while (atomic_load(&h->state) != 1)
    tu_sleep(0.001);
  assert_int_equal(mp_lock_free(h->lock), -EBUSY); /* a live holder */
  kill(pid, SIGKILL);
  tu_wait(pid);
  assert_int_equal(mp_lock_free(h->lock), 0); /* a dead one's lock can go */
  mp_heap_free(h);
}

static void test_lock_strerror_owner_dead(void **state) {
  (void)state;
  assert_non_null(strstr(mp_strerror(-EOWNERDEAD), "usable"));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_lock_acquire_release),
      cmocka_unit_test(test_lock_errors),
      cmocka_unit_test(test_lock_freed_handle_is_rejected),
      cmocka_unit_test(test_rlock_recursion),
      cmocka_unit_test(test_lock_owned_by_thread),
      cmocka_unit_test(test_lock_timeouts),
      cmocka_unit_test(test_lock_signals_neither_end_nor_stretch_wait),
      cmocka_unit_test(test_lock_mutual_exclusion_processes_and_threads),
      cmocka_unit_test(test_lock_not_held_by_child_after_fork),
      cmocka_unit_test(test_lock_holder_is_the_process_of_the_holding_thread),
      cmocka_unit_test(test_lock_owner_death_reported_and_recovered),
      cmocka_unit_test(test_lock_free_after_holder_died),
      cmocka_unit_test(test_lock_waiting_acquirer_takes_over_from_dead_holder),
      cmocka_unit_test(test_lock_strerror_owner_dead),
  };
  return TU_RUN("lock", tests);
}
