/* SPDX-License-Identifier: MIT */
/* Semaphore, BoundedSemaphore, Event, Condition and Barrier: across threads and
 * across forked processes, timeouts and signals, and every documented error. */
#include "testutil.h"

#include <limits.h>
#include <math.h>
#include <mp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/wait.h>

/* ------------------------------------------------------------ helpers */

/* A blocking call that stays unsatisfied, for the timeout checks. */
typedef int (*timed_op)(void *ctx, double timeout);

/* Timeout 0 fails at once; 0.2 s fails after 0.2 s and not wildly later; a
 * stream of signals during a 0.5 s wait neither ends it early nor stretches it. */
static void check_timeouts(timed_op op, void *ctx, int expect) {
  double t0 = tu_now();
  assert_int_equal(op(ctx, MP_NOWAIT), expect);
  assert_true(tu_now() - t0 < 0.5);

  t0 = tu_now();
  assert_int_equal(op(ctx, 0.2), expect);
  double el = tu_now() - t0;
  assert_true(el >= 0.2 - 0.01);
  assert_true(el < 2.0);

  tu_signals_start(0.05, 0.05);
  t0 = tu_now();
  int r = op(ctx, 0.5);
  el = tu_now() - t0;
  int n = tu_signals_stop();
  assert_int_equal(r, expect);
  assert_true(n >= 3);
  assert_true(el >= 0.5 - 0.01);
  assert_true(el < 2.5);
}

/* Wait until *v reaches want (polling), at most 10 s. Returns whether it did. */
static int poll_until(_Atomic int *v, int want) {
  double end = tu_now() + 10;
  while (atomic_load(v) < want) {
    if (tu_now() > end)
      return 0;
    tu_sleep(0.002);
  }
  return 1;
}

static void raise_max(_Atomic int *max, int v) {
  int m = atomic_load(max);
  while (v > m && !atomic_compare_exchange_weak(max, &m, v)) {
  }
}

/* ------------------------------------------------------------ Semaphore */

static void test_sync_semaphore_basics(void **state) {
  (void)state;
  mp_semaphore *s = NULL;
  assert_int_equal(mp_semaphore_new(2, &s), 0);
  assert_int_equal(mp_semaphore_get_value(s), 2);
  assert_int_equal(mp_semaphore_acquire(s, MP_NOWAIT), 0);
  assert_int_equal(mp_semaphore_acquire(s, MP_FOREVER), 0);
  assert_int_equal(mp_semaphore_get_value(s), 0);
  assert_int_equal(mp_semaphore_acquire(s, MP_NOWAIT), -ETIMEDOUT);
  assert_int_equal(mp_semaphore_release(s), 0);
  assert_int_equal(mp_semaphore_release(s), 0);
  assert_int_equal(mp_semaphore_release(s), 0); /* unbounded: above the start */
  assert_int_equal(mp_semaphore_get_value(s), 3);
  assert_int_equal(mp_semaphore_acquire(s, NAN), -EINVAL);
  assert_int_equal(mp_semaphore_get_value(s), 3);
  assert_int_equal(mp_semaphore_free(s), 0);
  assert_int_equal(mp_semaphore_free(NULL), 0);

  mp_semaphore *keep = (mp_semaphore *)&s;
  assert_int_equal(mp_semaphore_new(0, NULL), -EINVAL);
  assert_int_equal(mp_bounded_semaphore_new(0, NULL), -EINVAL);
  assert_int_equal(mp_semaphore_new((unsigned)INT_MAX + 1u, &keep), -EINVAL);
  assert_int_equal(mp_bounded_semaphore_new(UINT_MAX, &keep), -EINVAL);
  assert_ptr_equal(keep, (mp_semaphore *)&s); /* untouched on failure */
  assert_int_equal(mp_semaphore_acquire(NULL, 0), -EINVAL);
  assert_int_equal(mp_semaphore_release(NULL), -EINVAL);
  assert_int_equal(mp_semaphore_get_value(NULL), -EINVAL);
}

static void test_sync_semaphore_overflow(void **state) {
  (void)state;
  mp_semaphore *b;
  assert_int_equal(mp_bounded_semaphore_new(2, &b), 0);
  assert_int_equal(mp_semaphore_release(b), -EOVERFLOW);
  assert_int_equal(mp_semaphore_get_value(b), 2);
  assert_int_equal(mp_semaphore_acquire(b, 0), 0);
  assert_int_equal(mp_semaphore_release(b), 0);
  assert_int_equal(mp_semaphore_release(b), -EOVERFLOW);
  assert_int_equal(mp_semaphore_get_value(b), 2);
  assert_int_equal(mp_semaphore_free(b), 0);

  assert_int_equal(mp_bounded_semaphore_new(0, &b), 0);
  assert_int_equal(mp_semaphore_release(b), -EOVERFLOW);
  assert_int_equal(mp_semaphore_acquire(b, 0), -ETIMEDOUT);
  assert_int_equal(mp_semaphore_free(b), 0);

  mp_semaphore *s;
  assert_int_equal(mp_semaphore_new(INT_MAX, &s), 0);
  assert_int_equal(mp_semaphore_get_value(s), INT_MAX);
  assert_int_equal(mp_semaphore_release(s), -EOVERFLOW);
  assert_int_equal(mp_semaphore_get_value(s), INT_MAX);
  assert_int_equal(mp_semaphore_acquire(s, 0), 0);
  assert_int_equal(mp_semaphore_release(s), 0);
  assert_int_equal(mp_semaphore_free(s), 0);

  assert_int_equal(mp_bounded_semaphore_new(INT_MAX, &s), 0);
  assert_int_equal(mp_semaphore_release(s), -EOVERFLOW);
  assert_int_equal(mp_semaphore_free(s), 0);
}

static int sem_acquire_op(void *ctx, double t) { return mp_semaphore_acquire(ctx, t); }

static void test_sync_semaphore_acquire_timeouts(void **state) {
  (void)state;
  mp_semaphore *s;
  assert_int_equal(mp_semaphore_new(0, &s), 0);
  check_timeouts(sem_acquire_op, s, -ETIMEDOUT);
  assert_int_equal(mp_semaphore_get_value(s), 0);
  assert_int_equal(mp_semaphore_free(s), 0);
}

struct sem_load {
  mp_semaphore *sem;
  _Atomic int cur, max, total, errors;
  int rounds;
};

static void sem_load_run(struct sem_load *x) {
  for (int i = 0; i < x->rounds; i++) {
    if (mp_semaphore_acquire(x->sem, 20) != 0) {
      atomic_fetch_add(&x->errors, 1);
      return;
    }
    raise_max(&x->max, atomic_fetch_add(&x->cur, 1) + 1);
    tu_sleep(0.001);
    atomic_fetch_sub(&x->cur, 1);
    atomic_fetch_add(&x->total, 1);
    if (mp_semaphore_release(x->sem) != 0)
      atomic_fetch_add(&x->errors, 1);
  }
}

static void *sem_load_thread(void *arg) {
  sem_load_run(arg);
  return NULL;
}

static int sem_load_child(void *arg) {
  struct sem_load *x = arg;
  sem_load_run(x);
  CHILD_CHECK(atomic_load(&x->errors) == 0);
  return 0;
}

static void test_sync_semaphore_threads_limit_concurrency(void **state) {
  (void)state;
  enum { N = 8, LIMIT = 3 };
  struct sem_load *x = mp_heap_calloc(1, sizeof *x);
  assert_non_null(x);
  x->rounds = 40;
  assert_int_equal(mp_bounded_semaphore_new(LIMIT, &x->sem), 0);
  pthread_t t[N];
  for (int i = 0; i < N; i++)
    assert_int_equal(pthread_create(&t[i], NULL, sem_load_thread, x), 0);
  for (int i = 0; i < N; i++)
    pthread_join(t[i], NULL);
  assert_int_equal(atomic_load(&x->errors), 0);
  assert_int_equal(atomic_load(&x->total), N * 40);
  assert_int_equal(atomic_load(&x->max), LIMIT);
  assert_int_equal(mp_semaphore_get_value(x->sem), LIMIT);
  assert_int_equal(mp_semaphore_free(x->sem), 0);
  mp_heap_free(x);
}

static void test_sync_semaphore_processes_limit_concurrency(void **state) {
  (void)state;
  enum { N = 6, LIMIT = 2 };
  struct sem_load *x = mp_heap_calloc(1, sizeof *x);
  assert_non_null(x);
  x->rounds = 30;
  assert_int_equal(mp_semaphore_new(LIMIT, &x->sem), 0);
  pid_t pid[N];
  for (int i = 0; i < N; i++) {
    pid[i] = tu_fork(sem_load_child, x, 60);
    assert_true(pid[i] > 0);
  }
  for (int i = 0; i < N; i++)
    assert_child_ok(pid[i]);
  assert_int_equal(atomic_load(&x->total), N * 30);
  assert_int_equal(atomic_load(&x->max), LIMIT);
  assert_int_equal(mp_semaphore_get_value(x->sem), LIMIT);
  assert_int_equal(mp_semaphore_free(x->sem), 0);
  mp_heap_free(x);
}

static int sem_release_later_child(void *arg) {
  tu_sleep(0.2);
  CHILD_CHECK(mp_semaphore_release(arg) == 0);
  return 0;
}

/* A parent asleep in acquire is woken by a release in a child. */
static void test_sync_semaphore_release_in_child_wakes_parent(void **state) {
  (void)state;
  mp_semaphore *s;
  assert_int_equal(mp_semaphore_new(0, &s), 0);
  double t0 = tu_now();
  pid_t pid = tu_fork(sem_release_later_child, s, 30);
  assert_true(pid > 0);
  assert_int_equal(mp_semaphore_acquire(s, 10), 0);
  double el = tu_now() - t0;
  assert_true(el >= 0.15);
  assert_true(el < 5);
  assert_child_ok(pid);
  assert_int_equal(mp_semaphore_get_value(s), 0);
  assert_int_equal(mp_semaphore_free(s), 0);
}

/* ---------------------------------------------------------------- Event */

static void test_sync_event_basics(void **state) {
  (void)state;
  mp_event *ev;
  assert_int_equal(mp_event_new(&ev), 0);
  assert_int_equal(mp_event_is_set(ev), 0);
  assert_int_equal(mp_event_wait(ev, MP_NOWAIT), -ETIMEDOUT);
  assert_int_equal(mp_event_clear(ev), 0); /* clearing a clear event */
  assert_int_equal(mp_event_set(ev), 0);
  assert_int_equal(mp_event_is_set(ev), 1);
  assert_int_equal(mp_event_set(ev), 0); /* setting a set event */
  assert_int_equal(mp_event_is_set(ev), 1);
  assert_int_equal(mp_event_wait(ev, MP_NOWAIT), 0);
  assert_int_equal(mp_event_wait(ev, MP_FOREVER), 0);
  assert_int_equal(mp_event_wait(ev, NAN), -EINVAL);
  assert_int_equal(mp_event_clear(ev), 0);
  assert_int_equal(mp_event_is_set(ev), 0);
  assert_int_equal(mp_event_wait(ev, MP_NOWAIT), -ETIMEDOUT);
  assert_int_equal(mp_event_free(ev), 0);
  assert_int_equal(mp_event_free(NULL), 0);

  assert_int_equal(mp_event_new(NULL), -EINVAL);
  assert_int_equal(mp_event_set(NULL), -EINVAL);
  assert_int_equal(mp_event_clear(NULL), -EINVAL);
  assert_int_equal(mp_event_is_set(NULL), -EINVAL);
  assert_int_equal(mp_event_wait(NULL, 0), -EINVAL);
}

static int event_wait_op(void *ctx, double t) { return mp_event_wait(ctx, t); }

static void test_sync_event_wait_timeouts(void **state) {
  (void)state;
  mp_event *ev;
  assert_int_equal(mp_event_new(&ev), 0);
  check_timeouts(event_wait_op, ev, -ETIMEDOUT);
  assert_int_equal(mp_event_free(ev), 0);
}

static int event_set_later_child(void *arg) {
  tu_sleep(0.2);
  CHILD_CHECK(mp_event_set(arg) == 0);
  return 0;
}

static void test_sync_event_set_in_child_wakes_parent(void **state) {
  (void)state;
  mp_event *ev;
  assert_int_equal(mp_event_new(&ev), 0);
  double t0 = tu_now();
  pid_t pid = tu_fork(event_set_later_child, ev, 30);
  assert_true(pid > 0);
  assert_int_equal(mp_event_wait(ev, 10), 0);
  double el = tu_now() - t0;
  assert_true(el >= 0.15);
  assert_true(el < 5);
  assert_int_equal(mp_event_is_set(ev), 1);
  assert_child_ok(pid);
  assert_int_equal(mp_event_free(ev), 0);
}

struct event_ctx {
  mp_event *ev;
  _Atomic int ready, woken, errors;
};

static void *event_waiter_thread(void *arg) {
  struct event_ctx *x = arg;
  atomic_fetch_add(&x->ready, 1);
  if (mp_event_wait(x->ev, 10) == 0)
    atomic_fetch_add(&x->woken, 1);
  else
    atomic_fetch_add(&x->errors, 1);
  return NULL;
}

static int event_waiter_child(void *arg) {
  struct event_ctx *x = arg;
  atomic_fetch_add(&x->ready, 1);
  CHILD_CHECK(mp_event_wait(x->ev, 10) == 0);
  atomic_fetch_add(&x->woken, 1);
  return 0;
}

/* A set followed at once by a clear releases every thread asleep at the set. */
static void test_sync_event_set_then_clear_wakes_sleeping_threads(void **state) {
  (void)state;
  enum { N = 4 };
  struct event_ctx *x = mp_heap_calloc(1, sizeof *x);
  assert_non_null(x);
  assert_int_equal(mp_event_new(&x->ev), 0);
  pthread_t t[N];
  for (int i = 0; i < N; i++)
    assert_int_equal(pthread_create(&t[i], NULL, event_waiter_thread, x), 0);
  assert_true(poll_until(&x->ready, N));
  tu_sleep(0.2); /* let them fall asleep */
  assert_int_equal(atomic_load(&x->woken), 0);
  double t0 = tu_now();
  assert_int_equal(mp_event_set(x->ev), 0);
  assert_int_equal(mp_event_clear(x->ev), 0);
  for (int i = 0; i < N; i++)
    pthread_join(t[i], NULL);
  assert_true(tu_now() - t0 < 5);
  assert_int_equal(atomic_load(&x->woken), N);
  assert_int_equal(atomic_load(&x->errors), 0);
  assert_int_equal(mp_event_is_set(x->ev), 0);
  /* a later waiter sees the cleared flag */
  assert_int_equal(mp_event_wait(x->ev, 0), -ETIMEDOUT);
  assert_int_equal(mp_event_free(x->ev), 0);
  mp_heap_free(x);
}

/* Stop a child and wait until it is stopped. */
static int stop_child(pid_t pid) {
  int st;
  if (kill(pid, SIGSTOP) != 0)
    return 0;
  while (waitpid(pid, &st, WUNTRACED) < 0)
    if (errno != EINTR)
      return 0;
  return WIFSTOPPED(st);
}

/* The sleepers are stopped across the set and the clear, so they cannot look
 * at the flag before it is cleared: they must still be released. */
static void test_sync_event_set_then_clear_wakes_sleeping_processes(void **state) {
  (void)state;
  enum { N = 3 };
  struct event_ctx *x = mp_heap_calloc(1, sizeof *x);
  assert_non_null(x);
  assert_int_equal(mp_event_new(&x->ev), 0);
  pid_t pid[N];
  for (int i = 0; i < N; i++) {
    pid[i] = tu_fork(event_waiter_child, x, 30);
    assert_true(pid[i] > 0);
  }
  assert_true(poll_until(&x->ready, N));
  tu_sleep(0.2);
  assert_int_equal(atomic_load(&x->woken), 0);
  for (int i = 0; i < N; i++)
    assert_true(stop_child(pid[i]));
  double t0 = tu_now();
  assert_int_equal(mp_event_set(x->ev), 0);
  assert_int_equal(mp_event_clear(x->ev), 0);
  for (int i = 0; i < N; i++)
    assert_int_equal(kill(pid[i], SIGCONT), 0);
  for (int i = 0; i < N; i++)
    assert_child_ok(pid[i]);
  assert_true(tu_now() - t0 < 5);
  assert_int_equal(atomic_load(&x->woken), N);
  assert_int_equal(mp_event_is_set(x->ev), 0);
  assert_int_equal(mp_event_free(x->ev), 0);
  mp_heap_free(x);
}

/* ------------------------------------------------------------ Condition */

static int always_false(void *arg) {
  if (arg)
    atomic_fetch_add((_Atomic int *)arg, 1);
  return 0;
}

static int always_true(void *arg) {
  (void)arg;
  return 1;
}

static void test_sync_condition_basics(void **state) {
  (void)state;
  mp_condition *c;
  mp_lock *l = NULL;
  assert_int_equal(mp_condition_new(NULL, &c), 0);
  assert_int_equal(mp_condition_get_lock(c, &l), 0);
  assert_non_null(l);
  assert_int_equal(mp_lock_locked(l), 0);
  assert_int_equal(mp_condition_acquire(c, MP_NOWAIT), 0);
  assert_int_equal(mp_condition_acquire(c, MP_NOWAIT), 0); /* its own lock is an RLock */
  assert_int_equal(mp_lock_locked(l), 1);
  assert_int_equal(mp_condition_notify(c, 1), 0);
  assert_int_equal(mp_condition_notify_all(c), 0);
  assert_int_equal(mp_condition_notify(c, -1), -EINVAL);
  assert_int_equal(mp_condition_wait_for(c, always_true, NULL, MP_NOWAIT), 0);
  assert_int_equal(mp_condition_wait_for(c, NULL, NULL, 0), -EINVAL);
  assert_int_equal(mp_condition_wait(c, NAN), -EINVAL);
  assert_int_equal(mp_condition_wait_for(c, always_true, NULL, NAN), -EINVAL);
  assert_int_equal(mp_condition_acquire(c, NAN), -EINVAL);
  assert_int_equal(mp_condition_free(c), -EBUSY); /* its own lock is held */
  assert_int_equal(mp_condition_release(c), 0);
  assert_int_equal(mp_condition_release(c), 0);
  assert_int_equal(mp_condition_release(c), -EPERM);
  assert_int_equal(mp_condition_free(c), 0); /* frees its own RLock too */
  assert_int_equal(mp_lock_locked(l), -EINVAL);

  /* over a caller's Lock */
  mp_lock *mine;
  assert_int_equal(mp_lock_new(&mine), 0);
  assert_int_equal(mp_condition_new(mine, &c), 0);
  assert_int_equal(mp_condition_get_lock(c, &l), 0);
  assert_ptr_equal(l, mine);
  assert_int_equal(mp_lock_acquire(mine, 0), 0);
  assert_int_equal(mp_condition_acquire(c, 0), -EDEADLK);
  assert_int_equal(mp_condition_wait(c, MP_NOWAIT), -ETIMEDOUT);
  assert_int_equal(mp_lock_locked(mine), 1);
  assert_int_equal(mp_condition_release(c), 0);
  assert_int_equal(mp_lock_locked(mine), 0);
  assert_int_equal(mp_condition_free(c), 0);
  assert_int_equal(mp_lock_locked(mine), 0); /* the caller's lock is not freed */
  assert_int_equal(mp_lock_free(mine), 0);

  mp_condition *keep = (mp_condition *)&c;
  assert_int_equal(mp_condition_new(NULL, NULL), -EINVAL);
  assert_int_equal(mp_condition_new(mine, &keep), -EINVAL); /* freed lock */
  assert_ptr_equal(keep, (mp_condition *)&c);
  assert_int_equal(mp_condition_free(NULL), 0);
}

static void test_sync_condition_without_lock_is_eperm(void **state) {
  (void)state;
  mp_condition *c;
  assert_int_equal(mp_condition_new(NULL, &c), 0);
  assert_int_equal(mp_condition_wait(c, 0), -EPERM);
  assert_int_equal(mp_condition_wait(c, 0.1), -EPERM);
  assert_int_equal(mp_condition_wait_for(c, always_false, NULL, 0.1), -EPERM);
  assert_int_equal(mp_condition_notify(c, 1), -EPERM);
  assert_int_equal(mp_condition_notify_all(c), -EPERM);
  assert_int_equal(mp_condition_release(c), -EPERM);
  assert_int_equal(mp_condition_free(c), 0);
}

static int cond_hold_lock_child(void *arg) {
  mp_condition *c = arg;
  CHILD_CHECK(mp_condition_acquire(c, 10) == 0);
  tu_sleep(1.0);
  CHILD_CHECK(mp_condition_release(c) == 0);
  return 0;
}

/* Held by another process: still not the caller's. */
static void test_sync_condition_lock_held_elsewhere_is_eperm(void **state) {
  (void)state;
  mp_condition *c;
  mp_lock *l;
  assert_int_equal(mp_condition_new(NULL, &c), 0);
  assert_int_equal(mp_condition_get_lock(c, &l), 0);
  pid_t pid = tu_fork(cond_hold_lock_child, c, 30);
  assert_true(pid > 0);
  double end = tu_now() + 10;
  while (mp_lock_locked(l) != 1 && tu_now() < end)
    tu_sleep(0.005);
  assert_int_equal(mp_lock_locked(l), 1);
  assert_int_equal(mp_condition_wait(c, 0), -EPERM);
  assert_int_equal(mp_condition_notify(c, 1), -EPERM);
  assert_int_equal(mp_condition_wait_for(c, always_true, NULL, 0), -EPERM);
  assert_int_equal(mp_condition_release(c), -EPERM);
  assert_child_ok(pid);
  assert_int_equal(mp_condition_free(c), 0);
}

struct cond_ctx {
  mp_condition *cond;
  int (*pred)(void *);
  void *arg;
};

static int cond_wait_op(void *ctx, double t) {
  struct cond_ctx *x = ctx;
  return mp_condition_wait(x->cond, t);
}

static int cond_wait_for_op(void *ctx, double t) {
  struct cond_ctx *x = ctx;
  return mp_condition_wait_for(x->cond, x->pred, x->arg, t);
}

static void test_sync_condition_wait_timeouts(void **state) {
  (void)state;
  struct cond_ctx x = {0};
  mp_lock *l;
  assert_int_equal(mp_condition_new(NULL, &x.cond), 0);
  assert_int_equal(mp_condition_get_lock(x.cond, &l), 0);
  assert_int_equal(mp_condition_acquire(x.cond, 0), 0);
  check_timeouts(cond_wait_op, &x, -ETIMEDOUT);
  assert_int_equal(mp_lock_locked(l), 1); /* held again after every timeout */
  assert_int_equal(mp_condition_release(x.cond), 0);
  assert_int_equal(mp_condition_release(x.cond), -EPERM);
  assert_int_equal(mp_condition_free(x.cond), 0);
}

static void test_sync_condition_wait_for_timeouts(void **state) {
  (void)state;
  _Atomic int calls = 0;
  struct cond_ctx x = {.pred = always_false, .arg = &calls};
  mp_lock *l;
  assert_int_equal(mp_lock_new(&l), 0);
  assert_int_equal(mp_condition_new(l, &x.cond), 0);
  assert_int_equal(mp_lock_acquire(l, 0), 0);
  check_timeouts(cond_wait_for_op, &x, -ETIMEDOUT);
  assert_true(atomic_load(&calls) >= 6); /* before and after each wait */
  assert_int_equal(mp_lock_locked(l), 1);
  /* a true predicate returns at once, without waiting */
  double t0 = tu_now();
  assert_int_equal(mp_condition_wait_for(x.cond, always_true, NULL, 5), 0);
  assert_true(tu_now() - t0 < 1);
  assert_int_equal(mp_lock_release(l), 0);
  assert_int_equal(mp_condition_free(x.cond), 0);
  assert_int_equal(mp_lock_free(l), 0);
}

struct rlock_probe {
  mp_lock *lock;
  mp_condition *cond;
  int got, notify_r;
  bool notify;
};

/* Take the lock while the main thread waits (proof it was released), and
 * notify when asked. */
static void *rlock_probe_thread(void *arg) {
  struct rlock_probe *p = arg;
  tu_sleep(0.1);
  p->got = mp_rlock_acquire(p->lock, 5);
  if (p->got == 0) {
    if (p->notify)
      p->notify_r = mp_condition_notify(p->cond, 1);
    mp_rlock_release(p->lock);
  }
  return NULL;
}

/* All RLock levels are released during the wait and restored after it, both
 * when notified and when timed out. */
static void test_sync_condition_wait_restores_rlock_levels(void **state) {
  (void)state;
  for (int notify = 0; notify < 2; notify++) {
    struct rlock_probe p = {.notify = notify, .notify_r = -1};
    assert_int_equal(mp_rlock_new(&p.lock), 0);
    assert_int_equal(mp_condition_new(p.lock, &p.cond), 0);
    for (int i = 0; i < 3; i++)
      assert_int_equal(mp_rlock_acquire(p.lock, 0), 0);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, rlock_probe_thread, &p), 0);
    int r = mp_condition_wait(p.cond, notify ? 10 : 0.5);
    pthread_join(t, NULL);
    assert_int_equal(r, notify ? 0 : -ETIMEDOUT);
    assert_int_equal(p.got, 0);
    if (notify)
      assert_int_equal(p.notify_r, 0);
    for (int i = 0; i < 3; i++)
      assert_int_equal(mp_rlock_release(p.lock), 0);
    assert_int_equal(mp_rlock_release(p.lock), -EPERM);
    assert_int_equal(mp_condition_free(p.cond), 0);
    assert_int_equal(mp_rlock_free(p.lock), 0);
  }
}

struct cond_waiters {
  mp_condition *cond;
  _Atomic int entered, woken, timedout, errors;
  double timeout;
};

static void cond_waiter_run(struct cond_waiters *x) {
  if (mp_condition_acquire(x->cond, 10) != 0) {
    atomic_fetch_add(&x->errors, 1);
    return;
  }
  atomic_fetch_add(&x->entered, 1);
  int r = mp_condition_wait(x->cond, x->timeout);
  if (r == 0)
    atomic_fetch_add(&x->woken, 1);
  else if (r == -ETIMEDOUT)
    atomic_fetch_add(&x->timedout, 1);
  else
    atomic_fetch_add(&x->errors, 1);
  if (mp_condition_release(x->cond) != 0)
    atomic_fetch_add(&x->errors, 1);
}

static void *cond_waiter_thread(void *arg) {
  cond_waiter_run(arg);
  return NULL;
}

static int cond_waiter_child(void *arg) {
  struct cond_waiters *x = arg;
  cond_waiter_run(x);
  CHILD_CHECK(atomic_load(&x->errors) == 0);
  return 0;
}

/* Wait until n waiters are inside the wait: they count themselves under the
 * lock, and holding it proves they released it to wait. Returns with the lock
 * held. */
static int await_waiters(struct cond_waiters *x, int n) {
  double end = tu_now() + 10;
  for (;;) {
    if (mp_condition_acquire(x->cond, 10) != 0)
      return 0;
    if (atomic_load(&x->entered) >= n)
      return 1;
    mp_condition_release(x->cond);
    if (tu_now() > end)
      return 0;
    tu_sleep(0.005);
  }
}

static void notify_one_of_three(bool processes) {
  enum { N = 3 };
  struct cond_waiters *x = mp_heap_calloc(1, sizeof *x);
  assert_non_null(x);
  x->timeout = 20;
  assert_int_equal(mp_condition_new(NULL, &x->cond), 0);
  pthread_t t[N];
  pid_t pid[N];
  for (int i = 0; i < N; i++) {
    if (processes) {
      pid[i] = tu_fork(cond_waiter_child, x, 40);
      assert_true(pid[i] > 0);
    } else {
      assert_int_equal(pthread_create(&t[i], NULL, cond_waiter_thread, x), 0);
    }
  }
  assert_true(await_waiters(x, N));
  assert_int_equal(mp_condition_free(x->cond), -EBUSY); /* waiters inside */
  assert_int_equal(mp_condition_notify(x->cond, 1), 0);
  assert_int_equal(mp_condition_release(x->cond), 0);
  tu_sleep(0.3);
  assert_int_equal(atomic_load(&x->woken), 1);
  assert_int_equal(mp_condition_acquire(x->cond, 10), 0);
  assert_int_equal(mp_condition_notify(x->cond, 0), 0); /* wakes no one */
  assert_int_equal(mp_condition_release(x->cond), 0);
  tu_sleep(0.2);
  assert_int_equal(atomic_load(&x->woken), 1);
  assert_int_equal(mp_condition_acquire(x->cond, 10), 0);
  assert_int_equal(mp_condition_notify_all(x->cond), 0);
  assert_int_equal(mp_condition_release(x->cond), 0);
  for (int i = 0; i < N; i++) {
    if (processes)
      assert_child_ok(pid[i]);
    else
      pthread_join(t[i], NULL);
  }
  assert_int_equal(atomic_load(&x->woken), N);
  assert_int_equal(atomic_load(&x->timedout), 0);
  assert_int_equal(atomic_load(&x->errors), 0);
  assert_int_equal(mp_condition_free(x->cond), 0);
  mp_heap_free(x);
}

static void test_sync_condition_notify_one_of_three_threads(void **state) {
  (void)state;
  notify_one_of_three(false);
}

static void test_sync_condition_notify_one_of_three_processes(void **state) {
  (void)state;
  notify_one_of_three(true);
}

/* A notify with no waiter leaves nothing behind for a later waiter. */
static void test_sync_condition_notify_not_remembered(void **state) {
  (void)state;
  mp_condition *c;
  assert_int_equal(mp_condition_new(NULL, &c), 0);
  assert_int_equal(mp_condition_acquire(c, 0), 0);
  assert_int_equal(mp_condition_notify(c, 1), 0);
  assert_int_equal(mp_condition_notify_all(c), 0);
  assert_int_equal(mp_condition_wait(c, 0.2), -ETIMEDOUT);
  assert_int_equal(mp_condition_release(c), 0);

  /* and in another process */
  struct cond_waiters *x = mp_heap_calloc(1, sizeof *x);
  assert_non_null(x);
  x->cond = c;
  x->timeout = 0.3;
  assert_int_equal(mp_condition_acquire(c, 0), 0);
  assert_int_equal(mp_condition_notify_all(c), 0);
  assert_int_equal(mp_condition_release(c), 0);
  pid_t pid = tu_fork(cond_waiter_child, x, 30);
  assert_true(pid > 0);
  assert_child_ok(pid);
  assert_int_equal(atomic_load(&x->timedout), 1);
  assert_int_equal(atomic_load(&x->woken), 0);
  assert_int_equal(mp_condition_free(c), 0);
  mp_heap_free(x);
}

/* A thread that starts waiting after a notify cannot take that notify from a
 * process that was waiting at the time, even when that process cannot run
 * until long after (it is stopped across the notify). */
static void test_sync_condition_newcomer_does_not_steal_notify(void **state) {
  (void)state;
  enum { ROUNDS = 3 };
  struct cond_waiters *old = mp_heap_calloc(1, sizeof *old);
  struct cond_waiters *late = mp_heap_calloc(1, sizeof *late);
  assert_non_null(old);
  assert_non_null(late);
  assert_int_equal(mp_condition_new(NULL, &old->cond), 0);
  late->cond = old->cond;
  old->timeout = 10;
  late->timeout = 0.3;
  for (int round = 0; round < ROUNDS; round++) {
    atomic_store(&old->entered, 0);
    pid_t a = tu_fork(cond_waiter_child, old, 30);
    assert_true(a > 0);
    assert_true(await_waiters(old, 1)); /* the lock is ours now */
    assert_true(stop_child(a));
    /* The newcomer queues on the lock we hold and waits right after. */
    pthread_t b;
    assert_int_equal(pthread_create(&b, NULL, cond_waiter_thread, late), 0);
    tu_sleep(0.05);
    assert_int_equal(mp_condition_notify(old->cond, 1), 0);
    assert_int_equal(mp_condition_release(old->cond), 0);
    pthread_join(b, NULL);
    assert_int_equal(kill(a, SIGCONT), 0);
    assert_child_ok(a);
  }
  assert_int_equal(atomic_load(&old->woken), ROUNDS);
  assert_int_equal(atomic_load(&old->timedout), 0);
  assert_int_equal(atomic_load(&late->timedout), ROUNDS);
  assert_int_equal(atomic_load(&late->woken), 0);
  assert_int_equal(atomic_load(&old->errors) + atomic_load(&late->errors), 0);
  assert_int_equal(mp_condition_free(old->cond), 0);
  mp_heap_free(old);
  mp_heap_free(late);
}

/* Producers and consumers in separate processes over a bounded buffer, with
 * two Conditions sharing one Lock. */
enum { PC_CAP = 4, PC_ITEMS = 400, PC_PRODUCERS = 2, PC_CONSUMERS = 2 };

struct pc {
  mp_lock *lock;
  mp_condition *not_empty, *not_full;
  int buf[PC_CAP];
  int head, n;
  _Atomic long sum;
  _Atomic int consumed;
};

static int pc_not_full(void *arg) { return ((struct pc *)arg)->n < PC_CAP; }
static int pc_not_empty_or_done(void *arg) {
  struct pc *q = arg;
  return q->n > 0 || atomic_load(&q->consumed) >= PC_ITEMS * PC_PRODUCERS;
}

struct pc_role {
  struct pc *q;
  int id;
};

static int pc_producer(void *arg) {
  struct pc_role *r = arg;
  struct pc *q = r->q;
  for (int i = 1; i <= PC_ITEMS; i++) {
    CHILD_CHECK(mp_lock_acquire(q->lock, 20) == 0);
    CHILD_CHECK(mp_condition_wait_for(q->not_full, pc_not_full, q, 20) == 0);
    q->buf[(q->head + q->n) % PC_CAP] = r->id * 100000 + i;
    q->n++;
    CHILD_CHECK(mp_condition_notify(q->not_empty, 1) == 0);
    CHILD_CHECK(mp_lock_release(q->lock) == 0);
  }
  return 0;
}

static int pc_consumer(void *arg) {
  struct pc_role *r = arg;
  struct pc *q = r->q;
  int last[PC_PRODUCERS] = {0};
  for (;;) {
    CHILD_CHECK(mp_lock_acquire(q->lock, 20) == 0);
    CHILD_CHECK(mp_condition_wait_for(q->not_empty, pc_not_empty_or_done, q, 20) == 0);
    if (q->n == 0) { /* everything consumed */
      CHILD_CHECK(mp_condition_notify_all(q->not_empty) == 0);
      CHILD_CHECK(mp_lock_release(q->lock) == 0);
      return 0;
    }
    int v = q->buf[q->head];
    q->head = (q->head + 1) % PC_CAP;
    q->n--;
    atomic_fetch_add(&q->consumed, 1);
    atomic_fetch_add(&q->sum, v);
    if (atomic_load(&q->consumed) == PC_ITEMS * PC_PRODUCERS)
      CHILD_CHECK(mp_condition_notify_all(q->not_empty) == 0);
    CHILD_CHECK(mp_condition_notify(q->not_full, 1) == 0);
    CHILD_CHECK(mp_lock_release(q->lock) == 0);
    int p = v / 100000, i = v % 100000;
    CHILD_CHECK(p >= 0 && p < PC_PRODUCERS);
    CHILD_CHECK(i > last[p]); /* each producer's items in order */
    last[p] = i;
  }
}

static void test_sync_condition_producer_consumer_processes(void **state) {
  (void)state;
  struct pc *q = mp_heap_calloc(1, sizeof *q);
  struct pc_role *roles = mp_heap_calloc(PC_PRODUCERS + PC_CONSUMERS, sizeof *roles);
  assert_non_null(q);
  assert_non_null(roles);
  assert_int_equal(mp_lock_new(&q->lock), 0);
  assert_int_equal(mp_condition_new(q->lock, &q->not_empty), 0);
  assert_int_equal(mp_condition_new(q->lock, &q->not_full), 0);
  pid_t pid[PC_PRODUCERS + PC_CONSUMERS];
  for (int i = 0; i < PC_PRODUCERS + PC_CONSUMERS; i++) {
    roles[i].q = q;
    roles[i].id = i;
    pid[i] = tu_fork(i < PC_PRODUCERS ? pc_producer : pc_consumer, &roles[i], 60);
    assert_true(pid[i] > 0);
  }
  for (int i = 0; i < PC_PRODUCERS + PC_CONSUMERS; i++)
    assert_child_ok(pid[i]);
  long want = 0;
  for (int p = 0; p < PC_PRODUCERS; p++)
    for (int i = 1; i <= PC_ITEMS; i++)
      want += p * 100000 + i;
  assert_int_equal(atomic_load(&q->consumed), PC_ITEMS * PC_PRODUCERS);
  assert_int_equal(atomic_load(&q->sum), want);
  assert_int_equal(q->n, 0);
  assert_int_equal(mp_condition_free(q->not_empty), 0);
  assert_int_equal(mp_condition_free(q->not_full), 0);
  assert_int_equal(mp_lock_free(q->lock), 0);
  mp_heap_free(roles);
  mp_heap_free(q);
}

struct dying_notifier {
  mp_condition *cond;
  mp_lock *lock;
};

/* Take the lock (free while the parent waits), notify, and die holding it. */
static int notify_and_die_child(void *arg) {
  struct dying_notifier *d = arg;
  CHILD_CHECK(mp_lock_acquire(d->lock, 10) == 0);
  CHILD_CHECK(mp_condition_notify(d->cond, 1) == 0);
  _exit(0);
}

/* Take the lock and die holding it, without notifying. */
static int hold_and_die_child(void *arg) {
  struct dying_notifier *d = arg;
  CHILD_CHECK(mp_lock_acquire(d->lock, 10) == 0);
  _exit(0);
}

static int never(void *arg) {
  (void)arg;
  return 0;
}

static void test_sync_condition_wait_reports_dead_lock_holder(void **state) {
  (void)state;
  struct dying_notifier *d = mp_heap_calloc(1, sizeof *d);
  assert_non_null(d);
  assert_int_equal(mp_lock_new(&d->lock), 0);
  assert_int_equal(mp_condition_new(d->lock, &d->cond), 0);

  /* notified, and the lock comes back from a dead holder */
  assert_int_equal(mp_lock_acquire(d->lock, 0), 0);
  pid_t pid = tu_fork(notify_and_die_child, d, 30);
  assert_true(pid > 0);
  assert_int_equal(mp_condition_wait(d->cond, 10), -EOWNERDEAD);
  assert_int_equal(mp_lock_locked(d->lock), 1);
  assert_child_ok(pid);
  assert_int_equal(mp_lock_release(d->lock), 0);

  /* timed out, and the lock comes back from a dead holder */
  assert_int_equal(mp_lock_acquire(d->lock, 0), 0);
  pid = tu_fork(hold_and_die_child, d, 30);
  assert_true(pid > 0);
  assert_int_equal(mp_condition_wait(d->cond, 0.3), -EOWNERDEAD);
  assert_child_ok(pid);
  assert_int_equal(mp_lock_release(d->lock), 0);

  /* wait_for stops there too, the lock held */
  assert_int_equal(mp_lock_acquire(d->lock, 0), 0);
  pid = tu_fork(notify_and_die_child, d, 30);
  assert_true(pid > 0);
  assert_int_equal(mp_condition_wait_for(d->cond, never, NULL, 10), -EOWNERDEAD);
  assert_child_ok(pid);
  assert_int_equal(mp_lock_release(d->lock), 0);

  assert_int_equal(mp_condition_free(d->cond), 0);
  assert_int_equal(mp_lock_free(d->lock), 0);
  mp_heap_free(d);
}

/* ---------------------------------------------------------------- Barrier */

struct action_count {
  _Atomic int runs;
  int fail_on; /* run number (1-based) that returns -EIO, 0 never */
};

static int count_action(void *arg) {
  struct action_count *a = arg;
  int n = atomic_fetch_add(&a->runs, 1) + 1;
  return n == a->fail_on ? -EIO : 0;
}

static void test_sync_barrier_basics(void **state) {
  (void)state;
  struct action_count *a = mp_heap_calloc(1, sizeof *a);
  assert_non_null(a);
  mp_barrier *b;
  assert_int_equal(mp_barrier_new(1, count_action, a, MP_FOREVER, &b), 0);
  assert_int_equal(mp_barrier_parties(b), 1);
  assert_int_equal(mp_barrier_n_waiting(b), 0);
  assert_int_equal(mp_barrier_broken(b), 0);
  for (int i = 0; i < 3; i++)
    assert_int_equal(mp_barrier_wait(b, MP_NOWAIT), 0);
  assert_int_equal(atomic_load(&a->runs), 3);
  assert_int_equal(mp_barrier_wait(b, NAN), -EINVAL);
  assert_int_equal(atomic_load(&a->runs), 3);
  assert_int_equal(mp_barrier_free(b), 0);
  assert_int_equal(mp_barrier_free(NULL), 0);

  mp_barrier *keep = (mp_barrier *)&b;
  assert_int_equal(mp_barrier_new(0, NULL, NULL, MP_FOREVER, &keep), -EINVAL);
  assert_int_equal(mp_barrier_new((unsigned)INT_MAX + 1u, NULL, NULL, MP_FOREVER, &keep), -EINVAL);
  assert_int_equal(mp_barrier_new(2, NULL, NULL, NAN, &keep), -EINVAL);
  assert_int_equal(mp_barrier_new(2, NULL, NULL, MP_FOREVER, NULL), -EINVAL);
  assert_ptr_equal(keep, (mp_barrier *)&b);
  assert_int_equal(mp_barrier_wait(NULL, 0), -EINVAL);
  assert_int_equal(mp_barrier_abort(NULL), -EINVAL);
  assert_int_equal(mp_barrier_reset(NULL), -EINVAL);
  assert_int_equal(mp_barrier_broken(NULL), -EINVAL);
  assert_int_equal(mp_barrier_n_waiting(NULL), -EINVAL);
  assert_int_equal(mp_barrier_parties(NULL), -EINVAL);
  mp_heap_free(a);
}

static int barrier_wait_op(void *ctx, double t) {
  mp_barrier_reset(ctx); /* each try starts unbroken */
  return mp_barrier_wait(ctx, t);
}

static void test_sync_barrier_wait_timeouts(void **state) {
  (void)state;
  mp_barrier *b;
  assert_int_equal(mp_barrier_new(2, NULL, NULL, MP_FOREVER, &b), 0);
  check_timeouts(barrier_wait_op, b, -ECANCELED);
  /* the timeout broke it: later waits fail at once, until reset */
  assert_int_equal(mp_barrier_broken(b), 1);
  assert_int_equal(mp_barrier_n_waiting(b), 0);
  double t0 = tu_now();
  assert_int_equal(mp_barrier_wait(b, 5), -ECANCELED);
  assert_true(tu_now() - t0 < 1);
  assert_int_equal(mp_barrier_reset(b), 0);
  assert_int_equal(mp_barrier_broken(b), 0);
  assert_int_equal(mp_barrier_free(b), 0);

  /* MP_BARRIER_DEFAULT means the barrier's own default (Python's wait(None)) */
  assert_int_equal(mp_barrier_new(2, NULL, NULL, 0.2, &b), 0);
  t0 = tu_now();
  assert_int_equal(mp_barrier_wait(b, MP_BARRIER_DEFAULT), -ECANCELED);
  double el = tu_now() - t0;
  assert_true(el >= 0.2 - 0.01);
  assert_true(el < 2);
  assert_int_equal(mp_barrier_free(b), 0);
}

struct barrier_party {
  mp_barrier *b;
  double timeout;
  int r;
  double took;
};

static void *barrier_party_thread(void *arg) {
  struct barrier_party *p = arg;
  double t0 = tu_now();
  p->r = mp_barrier_wait(p->b, p->timeout);
  p->took = tu_now() - t0;
  return NULL;
}

/* Wait until n parties wait on b. */
static int await_parties(mp_barrier *b, int n) {
  double end = tu_now() + 10;
  while (mp_barrier_n_waiting(b) < n) {
    if (tu_now() > end)
      return 0;
    tu_sleep(0.005);
  }
  return 1;
}

/* One party's timeout breaks the barrier for all waiting parties. */
static void test_sync_barrier_timeout_breaks_for_all(void **state) {
  (void)state;
  mp_barrier *b;
  assert_int_equal(mp_barrier_new(3, NULL, NULL, MP_FOREVER, &b), 0);
  struct barrier_party p = {.b = b, .timeout = 20};
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, barrier_party_thread, &p), 0);
  assert_true(await_parties(b, 1));
  double t0 = tu_now();
  assert_int_equal(mp_barrier_wait(b, 0.2), -ECANCELED);
  assert_true(tu_now() - t0 >= 0.2 - 0.01);
  pthread_join(t, NULL);
  assert_int_equal(p.r, -ECANCELED);
  assert_true(p.took < 10);
  assert_int_equal(mp_barrier_broken(b), 1);
  assert_int_equal(mp_barrier_free(b), 0);
}

static void test_sync_barrier_abort_and_reset(void **state) {
  (void)state;
  mp_barrier *b;
  assert_int_equal(mp_barrier_new(2, NULL, NULL, MP_FOREVER, &b), 0);

  /* abort: the waiting party and every later one get -ECANCELED */
  struct barrier_party p = {.b = b, .timeout = 20};
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, barrier_party_thread, &p), 0);
  assert_true(await_parties(b, 1));
  assert_int_equal(mp_barrier_free(b), -EBUSY); /* a party waits */
  assert_int_equal(mp_barrier_abort(b), 0);
  pthread_join(t, NULL);
  assert_int_equal(p.r, -ECANCELED);
  assert_int_equal(mp_barrier_broken(b), 1);
  assert_int_equal(mp_barrier_wait(b, 0), -ECANCELED);
  assert_int_equal(mp_barrier_wait(b, 5), -ECANCELED);
  assert_int_equal(mp_barrier_abort(b), 0); /* again: no change */
  assert_int_equal(mp_barrier_broken(b), 1);

  /* reset: usable again */
  assert_int_equal(mp_barrier_reset(b), 0);
  assert_int_equal(mp_barrier_broken(b), 0);
  assert_int_equal(mp_barrier_n_waiting(b), 0);
  p.r = 99;
  assert_int_equal(pthread_create(&t, NULL, barrier_party_thread, &p), 0);
  int r = mp_barrier_wait(b, 10);
  pthread_join(t, NULL);
  assert_true((r == 0 && p.r == 1) || (r == 1 && p.r == 0));

  /* reset while a party waits: it gets -ECANCELED, the barrier is not broken */
  p.r = 99;
  assert_int_equal(pthread_create(&t, NULL, barrier_party_thread, &p), 0);
  assert_true(await_parties(b, 1));
  assert_int_equal(mp_barrier_reset(b), 0);
  pthread_join(t, NULL);
  assert_int_equal(p.r, -ECANCELED);
  assert_int_equal(mp_barrier_broken(b), 0);
  assert_int_equal(mp_barrier_n_waiting(b), 0);
  p.r = 99;
  assert_int_equal(pthread_create(&t, NULL, barrier_party_thread, &p), 0);
  r = mp_barrier_wait(b, 10);
  pthread_join(t, NULL);
  assert_true((r == 0 && p.r == 1) || (r == 1 && p.r == 0));
  assert_int_equal(mp_barrier_free(b), 0);
}

/* A failing action breaks the barrier: its party gets the action's code, the
 * others -ECANCELED. */
static void test_sync_barrier_action_failure_breaks(void **state) {
  (void)state;
  struct action_count *a = mp_heap_calloc(1, sizeof *a);
  assert_non_null(a);
  a->fail_on = 2;
  mp_barrier *b;
  assert_int_equal(mp_barrier_new(3, count_action, a, MP_FOREVER, &b), 0);
  for (int cycle = 0; cycle < 2; cycle++) {
    struct barrier_party p[2] = {{.b = b, .timeout = 20}, {.b = b, .timeout = 20}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
      assert_int_equal(pthread_create(&t[i], NULL, barrier_party_thread, &p[i]), 0);
    assert_true(await_parties(b, 2));
    int r = mp_barrier_wait(b, 10); /* the last: runs the action */
    for (int i = 0; i < 2; i++)
      pthread_join(t[i], NULL);
    if (cycle == 0) {
      assert_int_equal(r, 2);
      assert_true((p[0].r == 0 && p[1].r == 1) || (p[0].r == 1 && p[1].r == 0));
      assert_int_equal(mp_barrier_broken(b), 0);
    } else {
      assert_int_equal(r, -EIO);
      assert_int_equal(p[0].r, -ECANCELED);
      assert_int_equal(p[1].r, -ECANCELED);
      assert_int_equal(mp_barrier_broken(b), 1);
    }
  }
  assert_int_equal(atomic_load(&a->runs), 2);
  assert_int_equal(mp_barrier_free(b), 0);
  mp_heap_free(a);
}

enum { BAR_PARTIES = 4, BAR_CYCLES = 6 };

struct barrier_run {
  mp_barrier *b;
  struct action_count act;
  _Atomic int seen[BAR_CYCLES][BAR_PARTIES];
  _Atomic int early; /* a party released before its cycle's action ran */
  _Atomic int errors;
};

static void barrier_run_party(struct barrier_run *x) {
  for (int c = 0; c < BAR_CYCLES; c++) {
    int r = mp_barrier_wait(x->b, 20);
    if (r < 0 || r >= BAR_PARTIES) {
      atomic_fetch_add(&x->errors, 1);
      return;
    }
    atomic_fetch_add(&x->seen[c][r], 1);
    if (atomic_load(&x->act.runs) < c + 1)
      atomic_fetch_add(&x->early, 1);
  }
}

static void *barrier_run_thread(void *arg) {
  barrier_run_party(arg);
  return NULL;
}

static int barrier_run_child(void *arg) {
  struct barrier_run *x = arg;
  barrier_run_party(x);
  CHILD_CHECK(atomic_load(&x->errors) == 0);
  return 0;
}

static void check_barrier_run(struct barrier_run *x) {
  assert_int_equal(atomic_load(&x->errors), 0);
  assert_int_equal(atomic_load(&x->early), 0);
  assert_int_equal(atomic_load(&x->act.runs), BAR_CYCLES);
  for (int c = 0; c < BAR_CYCLES; c++)
    for (int i = 0; i < BAR_PARTIES; i++)
      assert_int_equal(atomic_load(&x->seen[c][i]), 1); /* distinct indices */
  assert_int_equal(mp_barrier_broken(x->b), 0);
  assert_int_equal(mp_barrier_n_waiting(x->b), 0);
}

static void test_sync_barrier_threads_cycles(void **state) {
  (void)state;
  struct barrier_run *x = mp_heap_calloc(1, sizeof *x);
  assert_non_null(x);
  assert_int_equal(mp_barrier_new(BAR_PARTIES, count_action, &x->act, MP_FOREVER, &x->b), 0);
  pthread_t t[BAR_PARTIES];
  for (int i = 0; i < BAR_PARTIES; i++)
    assert_int_equal(pthread_create(&t[i], NULL, barrier_run_thread, x), 0);
  for (int i = 0; i < BAR_PARTIES; i++)
    pthread_join(t[i], NULL);
  check_barrier_run(x);
  assert_int_equal(mp_barrier_free(x->b), 0);
  mp_heap_free(x);
}

static void test_sync_barrier_processes_cycles(void **state) {
  (void)state;
  struct barrier_run *x = mp_heap_calloc(1, sizeof *x);
  assert_non_null(x);
  assert_int_equal(mp_barrier_new(BAR_PARTIES, count_action, &x->act, MP_FOREVER, &x->b), 0);
  pid_t pid[BAR_PARTIES];
  for (int i = 0; i < BAR_PARTIES; i++) {
    pid[i] = tu_fork(barrier_run_child, x, 60);
    assert_true(pid[i] > 0);
  }
  for (int i = 0; i < BAR_PARTIES; i++)
    assert_child_ok(pid[i]);
  check_barrier_run(x);
  assert_int_equal(mp_barrier_free(x->b), 0);
  mp_heap_free(x);
}

static int barrier_timeout_child(void *arg) {
  mp_barrier *b = arg;
  CHILD_CHECK(mp_barrier_wait(b, 20) == -ECANCELED);
  return 0;
}

/* Across processes: a timeout in the parent breaks the children's waits. */
static void test_sync_barrier_timeout_breaks_other_processes(void **state) {
  (void)state;
  mp_barrier *b;
  assert_int_equal(mp_barrier_new(4, NULL, NULL, MP_FOREVER, &b), 0);
  pid_t pid[2];
  for (int i = 0; i < 2; i++) {
    pid[i] = tu_fork(barrier_timeout_child, b, 30);
    assert_true(pid[i] > 0);
  }
  assert_true(await_parties(b, 2));
  assert_int_equal(mp_barrier_wait(b, 0.2), -ECANCELED);
  for (int i = 0; i < 2; i++)
    assert_child_ok(pid[i]);
  assert_int_equal(mp_barrier_broken(b), 1);
  assert_int_equal(mp_barrier_free(b), 0);
}

struct late_party {
  mp_barrier *b;
  int expect;
};

static int late_party_child(void *arg) {
  struct late_party *l = arg;
  CHILD_CHECK(mp_barrier_wait(l->b, 20) == l->expect);
  return 0;
}

/* A party that cannot run while its cycle ends and later cycles come and go
 * still gets its own cycle's outcome: its index when released, -ECANCELED when
 * its cycle was cancelled. */
static void test_sync_barrier_late_party_gets_its_cycle_outcome(void **state) {
  (void)state;
  struct late_party *l = mp_heap_calloc(1, sizeof *l);
  assert_non_null(l);
  assert_int_equal(mp_barrier_new(2, NULL, NULL, MP_FOREVER, &l->b), 0);

  /* released, then the barrier is aborted and reset before the party looks */
  l->expect = 0;
  pid_t a = tu_fork(late_party_child, l, 30);
  assert_true(a > 0);
  assert_true(await_parties(l->b, 1));
  assert_true(stop_child(a));
  assert_int_equal(mp_barrier_wait(l->b, 10), 1);
  assert_int_equal(mp_barrier_abort(l->b), 0);
  assert_int_equal(mp_barrier_reset(l->b), 0);
  assert_int_equal(mp_barrier_wait(l->b, 0), -ECANCELED); /* a cycle of its own, broken */
  assert_int_equal(mp_barrier_reset(l->b), 0);
  assert_int_equal(kill(a, SIGCONT), 0);
  assert_child_ok(a);

  /* cancelled by a reset, then a later cycle is released before it looks */
  l->expect = -ECANCELED;
  a = tu_fork(late_party_child, l, 30);
  assert_true(a > 0);
  assert_true(await_parties(l->b, 1));
  assert_true(stop_child(a));
  assert_int_equal(mp_barrier_reset(l->b), 0);
  assert_int_equal(mp_barrier_n_waiting(l->b), 0);
  struct barrier_party p = {.b = l->b, .timeout = 10};
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, barrier_party_thread, &p), 0);
  int r = mp_barrier_wait(l->b, 10);
  pthread_join(t, NULL);
  assert_true((r == 0 && p.r == 1) || (r == 1 && p.r == 0));
  assert_int_equal(kill(a, SIGCONT), 0);
  assert_child_ok(a);

  assert_int_equal(mp_barrier_broken(l->b), 0);
  assert_int_equal(mp_barrier_free(l->b), 0);
  mp_heap_free(l);
}

/* ------------------------------------------------------------ bad handles */

static void test_sync_freed_and_foreign_handles(void **state) {
  (void)state;
  mp_semaphore *s;
  mp_event *e;
  mp_condition *c;
  mp_barrier *b;
  mp_lock *l;
  assert_int_equal(mp_semaphore_new(1, &s), 0);
  assert_int_equal(mp_event_new(&e), 0);
  assert_int_equal(mp_condition_new(NULL, &c), 0);
  assert_int_equal(mp_barrier_new(2, NULL, NULL, MP_FOREVER, &b), 0);
  assert_int_equal(mp_lock_new(&l), 0);

  /* one type's handle passed as another's */
  assert_int_equal(mp_semaphore_acquire((mp_semaphore *)e, 0), -EINVAL);
  assert_int_equal(mp_semaphore_release((mp_semaphore *)b), -EINVAL);
  assert_int_equal(mp_event_set((mp_event *)s), -EINVAL);
  assert_int_equal(mp_event_wait((mp_event *)c, 0), -EINVAL);
  assert_int_equal(mp_condition_notify((mp_condition *)l, 1), -EINVAL);
  assert_int_equal(mp_condition_new((mp_lock *)s, &c), -EINVAL);
  assert_int_equal(mp_barrier_wait((mp_barrier *)e, 0), -EINVAL);
  assert_int_equal(mp_barrier_free((mp_barrier *)s), -EINVAL);
  int local[64] = {0};
  assert_int_equal(mp_event_is_set((mp_event *)local), -EINVAL);

  /* freed handles */
  assert_int_equal(mp_semaphore_free(s), 0);
  assert_int_equal(mp_semaphore_acquire(s, 0), -EINVAL);
  assert_int_equal(mp_semaphore_release(s), -EINVAL);
  assert_int_equal(mp_semaphore_get_value(s), -EINVAL);
  assert_int_equal(mp_semaphore_free(s), -EINVAL);

  assert_int_equal(mp_event_free(e), 0);
  assert_int_equal(mp_event_set(e), -EINVAL);
  assert_int_equal(mp_event_clear(e), -EINVAL);
  assert_int_equal(mp_event_is_set(e), -EINVAL);
  assert_int_equal(mp_event_wait(e, 0), -EINVAL);
  assert_int_equal(mp_event_free(e), -EINVAL);

  assert_int_equal(mp_condition_free(c), 0);
  mp_lock *got;
  assert_int_equal(mp_condition_acquire(c, 0), -EINVAL);
  assert_int_equal(mp_condition_release(c), -EINVAL);
  assert_int_equal(mp_condition_get_lock(c, &got), -EINVAL);
  assert_int_equal(mp_condition_wait(c, 0), -EINVAL);
  assert_int_equal(mp_condition_wait_for(c, always_true, NULL, 0), -EINVAL);
  assert_int_equal(mp_condition_notify(c, 1), -EINVAL);
  assert_int_equal(mp_condition_notify_all(c), -EINVAL);
  assert_int_equal(mp_condition_free(c), -EINVAL);

  assert_int_equal(mp_barrier_free(b), 0);
  assert_int_equal(mp_barrier_wait(b, 0), -EINVAL);
  assert_int_equal(mp_barrier_abort(b), -EINVAL);
  assert_int_equal(mp_barrier_reset(b), -EINVAL);
  assert_int_equal(mp_barrier_broken(b), -EINVAL);
  assert_int_equal(mp_barrier_n_waiting(b), -EINVAL);
  assert_int_equal(mp_barrier_parties(b), -EINVAL);
  assert_int_equal(mp_barrier_free(b), -EINVAL);

  /* a Condition whose caller's lock was freed refuses to be used */
  assert_int_equal(mp_condition_new(l, &c), 0);
  assert_int_equal(mp_lock_free(l), 0);
  assert_int_equal(mp_condition_acquire(c, 0), -EINVAL);
  assert_int_equal(mp_condition_get_lock(c, &got), -EINVAL);
  assert_int_equal(mp_condition_free(c), 0);

  /* NULL arguments not covered elsewhere */
  assert_int_equal(mp_condition_acquire(NULL, 0), -EINVAL);
  assert_int_equal(mp_condition_release(NULL), -EINVAL);
  assert_int_equal(mp_condition_get_lock(NULL, &got), -EINVAL);
  assert_int_equal(mp_condition_wait(NULL, 0), -EINVAL);
  assert_int_equal(mp_condition_wait_for(NULL, always_true, NULL, 0), -EINVAL);
  assert_int_equal(mp_condition_notify(NULL, 1), -EINVAL);
  assert_int_equal(mp_condition_notify_all(NULL), -EINVAL);
  assert_int_equal(mp_condition_new(NULL, &c), 0);
  assert_int_equal(mp_condition_get_lock(c, NULL), -EINVAL);
  assert_int_equal(mp_condition_free(c), 0);
}

/* Python's timeout rule: a negative timeout tries once (as 0), whatever its
 * size; MP_FOREVER is infinity and blocks; NaN is -EINVAL. For every kind of
 * blocking call. */
static void test_sync_negative_timeout_is_zero(void **state) {
  (void)state;
  static const double negatives[] = {-1e-9, -0.5, -1.0, -1e300, -(double)INFINITY};
  assert_true(isinf(MP_FOREVER) && MP_FOREVER > 0);
  mp_lock *l;
  mp_semaphore *sem;
  mp_event *e;
  mp_condition *c;
  mp_queue *q;
  assert_int_equal(mp_lock_new(&l), 0);
  assert_int_equal(mp_semaphore_new(0, &sem), 0);
  assert_int_equal(mp_event_new(&e), 0);
  assert_int_equal(mp_condition_new(NULL, &c), 0);
  assert_int_equal(mp_queue_new(1, NULL, &q), 0);
  assert_int_equal(mp_lock_acquire(l, MP_NOWAIT), 0); /* held: a second try must fail */
  int one = 1;
  assert_int_equal(mp_queue_put(q, &one, sizeof one, MP_NOWAIT), 0); /* full */
  for (size_t k = 0; k < sizeof negatives / sizeof negatives[0]; k++) {
    double t = negatives[k], t0 = tu_now();
    assert_int_equal(mp_lock_acquire(l, t), -EDEADLK); /* the caller holds it: at once */
    assert_int_equal(mp_semaphore_acquire(sem, t), -ETIMEDOUT);
    assert_int_equal(mp_event_wait(e, t), -ETIMEDOUT);
    assert_int_equal(mp_condition_acquire(c, MP_NOWAIT), 0);
    assert_int_equal(mp_condition_wait(c, t), -ETIMEDOUT);
    assert_int_equal(mp_condition_release(c), 0);
    assert_int_equal(mp_queue_put(q, &one, sizeof one, t), -ETIMEDOUT);
    int v;
    assert_int_equal(mp_queue_get(q, &v, sizeof v, t), (ssize_t)sizeof v);
    assert_int_equal(mp_queue_get(q, &v, sizeof v, t), -ETIMEDOUT);
    assert_int_equal(mp_queue_put(q, &one, sizeof one, t), 0); /* tries once, succeeds */
    assert_true(tu_now() - t0 < 1.0); /* none of them slept */
  }
  /* A set event, a free semaphore: a negative timeout still takes them. */
  assert_int_equal(mp_event_set(e), 0);
  assert_int_equal(mp_event_wait(e, -3), 0);
  assert_int_equal(mp_semaphore_release(sem), 0);
  assert_int_equal(mp_semaphore_acquire(sem, -3), 0);
  /* NaN is an error, not a wait. */
  assert_int_equal(mp_event_wait(e, NAN), -EINVAL);
  assert_int_equal(mp_semaphore_acquire(sem, NAN), -EINVAL);
  assert_int_equal(mp_lock_release(l), 0);
  assert_int_equal(mp_lock_free(l), 0);
  assert_int_equal(mp_semaphore_free(sem), 0);
  assert_int_equal(mp_event_free(e), 0);
  assert_int_equal(mp_condition_free(c), 0);
  assert_int_equal(mp_queue_free(q), 0);
}

/* A Barrier's negative timeout is 0 too: the wait breaks the barrier at
 * once, where MP_BARRIER_DEFAULT would have waited the default. */
static void test_sync_barrier_negative_timeout_is_zero(void **state) {
  (void)state;
  mp_barrier *b;
  assert_int_equal(mp_barrier_new(2, NULL, NULL, 30, &b), 0);
  double t0 = tu_now();
  assert_int_equal(mp_barrier_wait(b, -1.0), -ECANCELED);
  assert_true(tu_now() - t0 < 1.0);
  assert_int_equal(mp_barrier_free(b), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_sync_negative_timeout_is_zero),
      cmocka_unit_test(test_sync_barrier_negative_timeout_is_zero),
      cmocka_unit_test(test_sync_semaphore_basics),
      cmocka_unit_test(test_sync_semaphore_overflow),
      cmocka_unit_test(test_sync_semaphore_acquire_timeouts),
      cmocka_unit_test(test_sync_semaphore_threads_limit_concurrency),
      cmocka_unit_test(test_sync_semaphore_processes_limit_concurrency),
      cmocka_unit_test(test_sync_semaphore_release_in_child_wakes_parent),
      cmocka_unit_test(test_sync_event_basics),
      cmocka_unit_test(test_sync_event_wait_timeouts),
      cmocka_unit_test(test_sync_event_set_in_child_wakes_parent),
      cmocka_unit_test(test_sync_event_set_then_clear_wakes_sleeping_threads),
      cmocka_unit_test(test_sync_event_set_then_clear_wakes_sleeping_processes),
      cmocka_unit_test(test_sync_condition_basics),
      cmocka_unit_test(test_sync_condition_without_lock_is_eperm),
      cmocka_unit_test(test_sync_condition_lock_held_elsewhere_is_eperm),
      cmocka_unit_test(test_sync_condition_wait_timeouts),
      cmocka_unit_test(test_sync_condition_wait_for_timeouts),
      cmocka_unit_test(test_sync_condition_wait_restores_rlock_levels),
      cmocka_unit_test(test_sync_condition_notify_one_of_three_threads),
      cmocka_unit_test(test_sync_condition_notify_one_of_three_processes),
      cmocka_unit_test(test_sync_condition_notify_not_remembered),
      cmocka_unit_test(test_sync_condition_newcomer_does_not_steal_notify),
      cmocka_unit_test(test_sync_condition_producer_consumer_processes),
      cmocka_unit_test(test_sync_condition_wait_reports_dead_lock_holder),
      cmocka_unit_test(test_sync_barrier_basics),
      cmocka_unit_test(test_sync_barrier_wait_timeouts),
      cmocka_unit_test(test_sync_barrier_timeout_breaks_for_all),
      cmocka_unit_test(test_sync_barrier_abort_and_reset),
      cmocka_unit_test(test_sync_barrier_action_failure_breaks),
      cmocka_unit_test(test_sync_barrier_threads_cycles),
      cmocka_unit_test(test_sync_barrier_processes_cycles),
      cmocka_unit_test(test_sync_barrier_timeout_breaks_other_processes),
      cmocka_unit_test(test_sync_barrier_late_party_gets_its_cycle_outcome),
      cmocka_unit_test(test_sync_freed_and_foreign_handles),
  };
  return TU_RUN("sync", tests);
}
