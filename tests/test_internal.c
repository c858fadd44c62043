/* SPDX-License-Identifier: MIT */
/* White-box: deadlines, the futex layer, thread ids, the heap's invariants. */
#include "testutil.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>

#include "internal.h"

static void test_internal_deadline_kinds(void **state) {
  (void)state;
  mp__deadline d;
  assert_int_equal(mp__deadline_init(&d, NAN), -EINVAL);
  assert_int_equal(mp__deadline_init(&d, MP_FOREVER), 0);
  assert_true(d.forever);
  assert_false(mp__deadline_passed(&d));
  assert_int_equal(mp__deadline_poll_ms(&d), -1);
  assert_int_equal(mp__deadline_init(&d, -123.0), 0);
  assert_true(d.forever);
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

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_internal_deadline_kinds),
      cmocka_unit_test(test_internal_futex_wait_and_wake),
      cmocka_unit_test(test_internal_tid_per_thread_and_after_fork),
      cmocka_unit_test(test_internal_heap_invariants_under_churn),
      cmocka_unit_test(test_internal_object_tags),
  };
  return TU_RUN("internal", tests);
}
