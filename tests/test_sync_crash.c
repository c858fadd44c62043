/* SPDX-License-Identifier: MIT */
/*
 * Semaphore, Event, Condition, Barrier, Lock and RLock under SIGKILL at each
 * named step of their protocols (src/sync.c, src/lock.c). In every case
 * several other processes wait with MP_FOREVER, asleep in the kernel, when
 * the kill lands; the test asserts that they go on within BOUND seconds of
 * the kill (the design bound is one 0.1 s slice), and that no unit, token or
 * turn is lost or counted twice: a Condition may wake a thread spuriously
 * after a kill, never lose a wake-up, and its counters never go negative.
 */
#include "crashutil.h"

#include <errno.h>
#include <mp.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>

#include "internal.h"

enum { NW = 3, MAXKIDS = 8, NONE = 1000 };

/* Survivors must be on their way within this many seconds of a kill. */
#define BOUND 2.0

/* Shared with the children, in the family heap. */
struct shared {
  mp_semaphore *sem;
  mp_event *ev;
  mp_lock *lock;
  mp_condition *cond;
  mp_barrier *bar;
  _Atomic int done;            /* waiters that returned */
  _Atomic int result[MAXKIDS]; /* each waiter's return value, NONE until then */
  _Atomic int inside;          /* lock holders now: never above 1 */
  long turns;                  /* incremented by lock holders, non-atomically */
  _Atomic int actions;
};

static struct shared *sh;
static pid_t kids[MAXKIDS];
static int nkids;

static int setup(void **state) {
  (void)state;
  sh = mp_heap_calloc(1, sizeof *sh);
  assert_non_null(sh);
  for (int i = 0; i < MAXKIDS; i++)
    atomic_init(&sh->result[i], NONE);
  nkids = 0;
  return 0;
}

static int teardown(void **state) {
  (void)state;
  for (int i = 0; i < nkids; i++)
    if (kids[i] > 0) {
      kill(kids[i], SIGKILL);
      tu_wait(kids[i]);
    }
  nkids = 0;
  mp_heap_free(sh);
  sh = NULL;
  return 0;
}

/* Whether pid is inside the futex system call now. */
static bool in_futex(pid_t pid) {
  char path[64], buf[64] = {0};
  snprintf(path, sizeof path, "/proc/%d/syscall", (int)pid);
  FILE *f = fopen(path, "r");
  if (!f)
    return false;
  bool r = fgets(buf, sizeof buf, f) && atol(buf) == SYS_futex;
  fclose(f);
  return r;
}

/* Fork waiter i running fn; it is reaped by reap_kids() or teardown. */
static void fork_kid(int (*fn)(void *), int i) {
  pid_t p = tu_fork(fn, (void *)(intptr_t)i, 30);
  assert_true(p > 0);
  kids[nkids++] = p;
}

/* Wait until every child is asleep in the kernel (a futex wait). */
static void assert_kids_asleep(void) {
  for (int i = 0; i < nkids; i++) {
    double end = tu_now() + 10;
    while (kids[i] > 0 && !in_futex(kids[i])) {
      assert_true(tu_now() < end);
      tu_sleep(0.002);
    }
  }
  tu_sleep(0.02); /* let the last one settle into its sleep */
}

/* Wait up to BOUND seconds from t0 for `want` waiters to have returned. */
static void assert_done_within(int want, double t0) {
  while (atomic_load(&sh->done) < want) {
    if (tu_now() - t0 > BOUND)
      fail_msg("%d of %d waiters went on within %.1f s", atomic_load(&sh->done), want, BOUND);
    tu_sleep(0.001);
  }
}

/* Forget child pid (it was reaped elsewhere). */
static void forget_kid(pid_t pid) {
  for (int i = 0; i < nkids; i++)
    if (kids[i] == pid)
      kids[i] = -1;
}

/* Reap every child still listed; each must exit 0. */
static void reap_kids(void) {
  for (int i = 0; i < nkids; i++)
    if (kids[i] > 0) {
      pid_t p = kids[i];
      kids[i] = -1;
      assert_int_equal(tu_wait(p), 0);
    }
  nkids = 0;
}

/* Arm `point` in every waiter forked from here until mute_armed(). */
static void arm_waiters(const char *point) {
  assert_int_equal(mp__crash_arm(point, 1, MP__CRASH_KILL), 0);
}

/* After the armed point fired in one of the kids: wait for it (at most 10 s),
 * assert that SIGKILL ended it there, and return when. */
static double reap_fired_kid(void) {
  double end = tu_now() + 10;
  while (mp__crash_fired() == 0) {
    assert_true(tu_now() < end);
    tu_sleep(0.001);
  }
  pid_t c = mp__crash_fired();
  double t0 = tu_now();
  forget_kid(c);
  cu_assert_killed_at(c);
  return t0;
}

static void record(int i, int r) {
  atomic_store(&sh->result[i], r);
  atomic_fetch_add(&sh->done, 1);
}

static int count_results(int want) {
  int n = 0;
  for (int i = 0; i < MAXKIDS; i++)
    n += atomic_load(&sh->result[i]) == want;
  return n;
}

/* ------------------------------------------------------------ Semaphore */

static int sem_waiter(void *arg) {
  int r = mp_semaphore_acquire(sh->sem, MP_FOREVER);
  record((int)(intptr_t)arg, r);
  return r == 0 ? 0 : 1;
}

static int sem_releaser(void *arg) {
  (void)arg;
  return mp_semaphore_release(sh->sem) == 0 ? 0 : 1;
}

/* The releaser dies after the count went up, before its wake call. */
static void test_sync_crash_sem_release_counted(void **state) {
  (void)state;
  assert_int_equal(mp_semaphore_new(0, &sh->sem), 0);
  for (int i = 0; i < NW; i++)
    fork_kid(sem_waiter, i);
  assert_kids_asleep();
  pid_t c = cu_fork_armed("sem.release.counted", 1, sem_releaser, NULL, 30);
  cu_assert_killed_at(c);
  double t0 = tu_now();
  assert_done_within(1, t0);
  tu_sleep(0.3);
  assert_int_equal(atomic_load(&sh->done), 1); /* one unit, one waiter */
  assert_int_equal(mp_semaphore_get_value(sh->sem), 0);
  for (int i = 1; i < NW; i++)
    assert_int_equal(mp_semaphore_release(sh->sem), 0);
  assert_done_within(NW, tu_now());
  reap_kids();
  assert_int_equal(count_results(0), NW);
  assert_int_equal(mp_semaphore_get_value(sh->sem), 0);
  assert_int_equal(mp_semaphore_free(sh->sem), 0);
}

/* The waiter that got the release's only wake-up dies before taking the unit. */
static void test_sync_crash_sem_acquire_woken(void **state) {
  (void)state;
  assert_int_equal(mp_semaphore_new(0, &sh->sem), 0);
  arm_waiters("sem.acquire.woken");
  for (int i = 0; i < NW; i++)
    fork_kid(sem_waiter, i);
  mp__crash_mute();
  assert_kids_asleep();
  assert_int_equal(mp_semaphore_release(sh->sem), 0);
  double t0 = reap_fired_kid();
  assert_done_within(1, t0);
  tu_sleep(0.3);
  assert_int_equal(atomic_load(&sh->done), 1);
  assert_int_equal(mp_semaphore_get_value(sh->sem), 0);
  for (int i = 2; i < NW; i++)
    assert_int_equal(mp_semaphore_release(sh->sem), 0);
  assert_done_within(NW - 1, tu_now());
  reap_kids();
  assert_int_equal(count_results(0), NW - 1);
  assert_int_equal(mp_semaphore_get_value(sh->sem), 0);
  assert_int_equal(mp_semaphore_free(sh->sem), 0);
}

/* A waiter dies registered: releases still reach the others, counts exact. */
static void test_sync_crash_sem_acquire_registered(void **state) {
  (void)state;
  assert_int_equal(mp_semaphore_new(0, &sh->sem), 0);
  pid_t c = cu_fork_armed("sem.acquire.registered", 1, sem_waiter, (void *)(intptr_t)NW, 30);
  cu_assert_killed_at(c);
  for (int i = 0; i < NW; i++)
    fork_kid(sem_waiter, i);
  assert_kids_asleep();
  double t0 = tu_now();
  for (int i = 0; i < NW; i++)
    assert_int_equal(mp_semaphore_release(sh->sem), 0);
  assert_done_within(NW, t0);
  reap_kids();
  assert_int_equal(count_results(0), NW);
  assert_int_equal(mp_semaphore_get_value(sh->sem), 0);
  assert_int_equal(mp_semaphore_acquire(sh->sem, MP_NOWAIT), -ETIMEDOUT);
  assert_int_equal(mp_semaphore_free(sh->sem), 0);
}

/* ---------------------------------------------------------------- Event */

static int event_waiter(void *arg) {
  int r = mp_event_wait(sh->ev, MP_FOREVER);
  record((int)(intptr_t)arg, r);
  return r == 0 ? 0 : 1;
}

static int event_setter(void *arg) {
  (void)arg;
  return mp_event_set(sh->ev) == 0 ? 0 : 1;
}

/* The setter dies after the flag, before its wake call. */
static void test_sync_crash_event_set_flagged(void **state) {
  (void)state;
  assert_int_equal(mp_event_new(&sh->ev), 0);
  for (int i = 0; i < NW; i++)
    fork_kid(event_waiter, i);
  assert_kids_asleep();
  pid_t c = cu_fork_armed("event.set.flagged", 1, event_setter, NULL, 30);
  cu_assert_killed_at(c);
  assert_done_within(NW, tu_now());
  reap_kids();
  assert_int_equal(count_results(0), NW);
  assert_int_equal(mp_event_is_set(sh->ev), 1);
  assert_int_equal(mp_event_free(sh->ev), 0);
}

/* A woken waiter dies before returning: the set reached every other one. */
static void test_sync_crash_event_wait_woken(void **state) {
  (void)state;
  assert_int_equal(mp_event_new(&sh->ev), 0);
  arm_waiters("event.wait.woken");
  for (int i = 0; i < NW; i++)
    fork_kid(event_waiter, i);
  mp__crash_mute();
  assert_kids_asleep();
  assert_int_equal(mp_event_set(sh->ev), 0);
  double t0 = reap_fired_kid();
  assert_done_within(NW - 1, t0);
  reap_kids();
  assert_int_equal(count_results(0), NW - 1);
  assert_int_equal(mp_event_clear(sh->ev), 0);
  assert_int_equal(mp_event_wait(sh->ev, 0.05), -ETIMEDOUT);
  assert_int_equal(mp_event_free(sh->ev), 0);
}

/* ------------------------------------------------------------ Condition */

/* Wait forever under the lock; record 0 or -EOWNERDEAD (both mean woken,
 * the second with the lock back from a dead holder). */
static int cond_waiter(void *arg) {
  int r = mp_condition_acquire(sh->cond, MP_FOREVER);
  CHILD_CHECK(r == 0 || r == -EOWNERDEAD);
  r = mp_condition_wait(sh->cond, MP_FOREVER);
  record((int)(intptr_t)arg, r);
  CHILD_CHECK(r == 0 || r == -EOWNERDEAD);
  CHILD_CHECK(mp_condition_release(sh->cond) == 0);
  return 0;
}

/* A waiter whose wait times out after 0.2 s. */
static int cond_short_waiter(void *arg) {
  (void)arg;
  CHILD_CHECK(mp_condition_acquire(sh->cond, MP_FOREVER) == 0);
  int r = mp_condition_wait(sh->cond, 0.2);
  CHILD_CHECK(mp_condition_release(sh->cond) == 0);
  return r == -ETIMEDOUT ? 0 : 1;
}

static int cond_notifier(void *arg) {
  int n = (int)(intptr_t)arg;
  int r = mp_condition_acquire(sh->cond, MP_FOREVER);
  CHILD_CHECK(r == 0 || r == -EOWNERDEAD);
  CHILD_CHECK(mp_condition_notify(sh->cond, n) == 0);
  CHILD_CHECK(mp_condition_release(sh->cond) == 0);
  return 0;
}

static void cond_counts(int *waiters, int *tokens) {
  assert_int_equal(mp__condition_counts(sh->cond, waiters, tokens), 0);
  assert_true(*waiters >= 0);
  assert_true(*tokens >= 0);
}

/* The lock, taken by the parent; -EOWNERDEAD is fine when a holder died. */
static void cond_lock(void) {
  int r = mp_condition_acquire(sh->cond, 10);
  assert_true(r == 0 || r == -EOWNERDEAD);
}

static void cond_notify_all(void) {
  cond_lock();
  assert_int_equal(mp_condition_notify_all(sh->cond), 0);
  assert_int_equal(mp_condition_release(sh->cond), 0);
}

/* NW waiters asleep in a wait with MP_FOREVER. */
static void cond_start(void) {
  assert_int_equal(mp_rlock_new(&sh->lock), 0);
  assert_int_equal(mp_condition_new(sh->lock, &sh->cond), 0);
  for (int i = 0; i < NW; i++)
    fork_kid(cond_waiter, i);
  assert_kids_asleep();
  int w, t;
  cond_counts(&w, &t);
  assert_int_equal(w, NW);
  assert_int_equal(t, 0);
}

static void cond_finish(void) {
  reap_kids();
  assert_int_equal(mp_lock_acquire(sh->lock, 10), 0); /* nobody holds it */
  assert_int_equal(mp_lock_release(sh->lock), 0);
  mp_condition_free(sh->cond); /* -EBUSY while a dead thread stays counted */
  assert_int_equal(mp_lock_free(sh->lock), 0);
}

/* A notifier dies after making its token and before taking its waiter out of
 * `waiters`: the sleeper it owed goes on (spurious wake-ups later are fine),
 * nothing goes negative. */
static void test_sync_crash_cond_notify_tokened(void **state) {
  (void)state;
  cond_start();
  pid_t c = cu_fork_armed("cond.notify.tokened", 1, cond_notifier, (void *)(intptr_t)1, 30);
  cu_assert_killed_at(c);
  assert_done_within(1, tu_now());
  int w, t;
  cond_counts(&w, &t);
  assert_true(w + t >= NW - 1); /* every live waiter still counted */
  cond_notify_all();
  assert_done_within(NW, tu_now());
  assert_int_equal(count_results(-EOWNERDEAD), 1);
  assert_int_equal(count_results(0), NW - 1);
  cond_counts(&w, &t);
  assert_int_equal(w, 0);
  cond_finish();
}

/* A notifier dies after its counters, before the wake call. */
static void test_sync_crash_cond_notify_counted(void **state) {
  (void)state;
  cond_start();
  pid_t c = cu_fork_armed("cond.notify.counted", 1, cond_notifier, (void *)(intptr_t)1, 30);
  cu_assert_killed_at(c);
  assert_done_within(1, tu_now());
  tu_sleep(0.3);
  assert_int_equal(atomic_load(&sh->done), 1); /* notify(1) woke one */
  int w, t;
  cond_counts(&w, &t);
  assert_int_equal(w, NW - 1);
  assert_int_equal(t, 0);
  cond_notify_all();
  assert_done_within(NW, tu_now());
  assert_int_equal(count_results(-EOWNERDEAD), 1);
  assert_int_equal(count_results(0), NW - 1);
  cond_counts(&w, &t);
  assert_int_equal(w, 0);
  assert_int_equal(t, 0);
  cond_finish();
}

/* The waiter that got notify(1)'s wake-up dies before taking the token: another
 * takes it. */
static void test_sync_crash_cond_wait_woken(void **state) {
  (void)state;
  assert_int_equal(mp_rlock_new(&sh->lock), 0);
  assert_int_equal(mp_condition_new(sh->lock, &sh->cond), 0);
  arm_waiters("cond.wait.woken");
  for (int i = 0; i < NW; i++)
    fork_kid(cond_waiter, i);
  mp__crash_mute();
  assert_kids_asleep();
  cond_lock();
  assert_int_equal(mp_condition_notify(sh->cond, 1), 0);
  assert_int_equal(mp_condition_release(sh->cond), 0);
  double t0 = reap_fired_kid();
  assert_done_within(1, t0);
  int w, t;
  cond_counts(&w, &t);
  assert_true(w + t >= NW - 2);
  cond_notify_all();
  assert_done_within(NW - 1, tu_now());
  assert_int_equal(count_results(0), NW - 1);
  cond_counts(&w, &t);
  assert_int_equal(w, 0);
  cond_finish();
}

/* A notified waiter dies with its token: nobody else was owed it. */
static void test_sync_crash_cond_wait_taken(void **state) {
  (void)state;
  assert_int_equal(mp_rlock_new(&sh->lock), 0);
  assert_int_equal(mp_condition_new(sh->lock, &sh->cond), 0);
  arm_waiters("cond.wait.taken");
  for (int i = 0; i < NW; i++)
    fork_kid(cond_waiter, i);
  mp__crash_mute();
  assert_kids_asleep();
  cond_lock();
  assert_int_equal(mp_condition_notify(sh->cond, 1), 0);
  assert_int_equal(mp_condition_release(sh->cond), 0);
  reap_fired_kid();
  cond_notify_all();
  assert_done_within(NW - 1, tu_now());
  assert_int_equal(count_results(0), NW - 1);
  int w, t;
  cond_counts(&w, &t);
  assert_int_equal(w, 0); /* exact: the dead waiter took its own token */
  assert_int_equal(t, 0);
  cond_finish();
}

/* A waiter dies after releasing the lock, before sleeping: one count too high. */
static void test_sync_crash_cond_wait_released(void **state) {
  (void)state;
  assert_int_equal(mp_rlock_new(&sh->lock), 0);
  assert_int_equal(mp_condition_new(sh->lock, &sh->cond), 0);
  pid_t c = cu_fork_armed("cond.wait.released", 1, cond_waiter, (void *)(intptr_t)NW, 30);
  cu_assert_killed_at(c);
  for (int i = 0; i < NW; i++)
    fork_kid(cond_waiter, i);
  assert_kids_asleep();
  double t0 = tu_now();
  cond_notify_all();
  assert_done_within(NW, t0);
  assert_int_equal(count_results(0), NW);
  int w, t;
  cond_counts(&w, &t);
  assert_int_equal(w, 0);
  assert_int_equal(t, 1); /* the dead waiter's: one spurious wake-up later */
  cond_finish();
}

/* A timed-out waiter dies holding the lock again, before leaving `waiters`. */
static void test_sync_crash_cond_wait_relocked(void **state) {
  (void)state;
  assert_int_equal(mp_rlock_new(&sh->lock), 0);
  assert_int_equal(mp_condition_new(sh->lock, &sh->cond), 0);
  for (int i = 0; i < NW; i++)
    fork_kid(cond_waiter, i);
  pid_t c = cu_fork_armed("cond.wait.relocked", 1, cond_short_waiter, NULL, 30);
  cu_assert_killed_at(c);
  assert_kids_asleep();
  double t0 = tu_now();
  assert_int_equal(mp_condition_acquire(sh->cond, 10), -EOWNERDEAD);
  assert_int_equal(mp_condition_notify_all(sh->cond), 0);
  assert_int_equal(mp_condition_release(sh->cond), 0);
  assert_done_within(NW, t0);
  assert_int_equal(count_results(0), NW);
  int w, t;
  cond_counts(&w, &t);
  assert_int_equal(w, 0);
  assert_int_equal(t, 1);
  cond_finish();
}

/* ---------------------------------------------------------------- Barrier */

static int barrier_party(void *arg) {
  int r = mp_barrier_wait(sh->bar, MP_FOREVER);
  record((int)(intptr_t)arg, r);
  return 0;
}

static int note_action(void *arg) {
  (void)arg;
  atomic_fetch_add(&sh->actions, 1);
  return 0;
}

/* NW parties asleep in a barrier of NW + 1. */
static void barrier_start(mp_barrier_action action) {
  assert_int_equal(mp_barrier_new(NW + 1, action, NULL, MP_FOREVER, &sh->bar), 0);
  for (int i = 0; i < NW; i++)
    fork_kid(barrier_party, i);
  assert_kids_asleep();
  assert_int_equal(mp_barrier_n_waiting(sh->bar), NW);
}

/* Every survivor got a distinct index below NW + 1. */
static void assert_indices(int n) {
  bool seen[NW + 1] = {false};
  int got = 0;
  for (int i = 0; i < MAXKIDS; i++) {
    int r = atomic_load(&sh->result[i]);
    if (r == NONE)
      continue;
    assert_true(r >= 0 && r <= NW);
    assert_false(seen[r]);
    seen[r] = true;
    got++;
  }
  assert_int_equal(got, n);
}

/* The last party dies after the cycle ended and the mutex was released,
 * before the wake call: the cycle was released, the parties go on. */
static void test_sync_crash_barrier_wake_unlocked(void **state) {
  (void)state;
  barrier_start(NULL);
  pid_t c = cu_fork_armed("barrier.wake.unlocked", 1, barrier_party, (void *)(intptr_t)NW, 30);
  cu_assert_killed_at(c);
  assert_done_within(NW, tu_now());
  reap_kids();
  assert_indices(NW);
  assert_int_equal(mp_barrier_broken(sh->bar), 0);
  assert_int_equal(mp_barrier_n_waiting(sh->bar), 0);
  assert_int_equal(mp_barrier_free(sh->bar), 0);
}

/* The last party dies holding the mutex, just counted: the barrier breaks and
 * everyone asleep learns it. */
static void test_sync_crash_barrier_wait_arrived(void **state) {
  (void)state;
  barrier_start(NULL);
  pid_t c = cu_fork_armed("barrier.wait.arrived", 1, barrier_party, (void *)(intptr_t)NW, 30);
  cu_assert_killed_at(c);
  assert_done_within(NW, tu_now());
  reap_kids();
  assert_int_equal(count_results(-ECANCELED), NW);
  assert_int_equal(mp_barrier_broken(sh->bar), 1);
  assert_int_equal(mp_barrier_reset(sh->bar), 0);
  assert_int_equal(mp_barrier_broken(sh->bar), 0);
  assert_int_equal(mp_barrier_n_waiting(sh->bar), 0);
  assert_int_equal(mp_barrier_free(sh->bar), 0);
}

/* A released party dies before re-taking the mutex: the others go on. */
static void test_sync_crash_barrier_sleep_woken(void **state) {
  (void)state;
  assert_int_equal(mp_barrier_new(NW + 1, NULL, NULL, MP_FOREVER, &sh->bar), 0);
  arm_waiters("barrier.sleep.woken");
  for (int i = 0; i < NW; i++)
    fork_kid(barrier_party, i);
  mp__crash_mute();
  assert_kids_asleep();
  int r = mp_barrier_wait(sh->bar, 10);
  assert_int_equal(r, NW);
  record(NW, r);
  double t0 = reap_fired_kid();
  assert_done_within(NW, t0);
  reap_kids();
  assert_indices(NW);
  assert_int_equal(mp_barrier_broken(sh->bar), 0);
  assert_int_equal(mp_barrier_free(sh->bar), -EBUSY); /* a dead sleeper stays counted */
}

/* The last party dies inside the action: the parties of its cycle and an
 * arrival of the next one go on (cancelled), and reset repairs everything. */
static void test_sync_crash_barrier_action_running(void **state) {
  (void)state;
  barrier_start(note_action);
  pid_t c =
      cu_fork_stopped_at("barrier.action.running", 1, barrier_party, (void *)(intptr_t)NW, 30);
  fork_kid(barrier_party, NW + 1); /* waits for the action to end */
  assert_kids_asleep();
  assert_int_equal(kill(c, SIGKILL), 0);
  cu_assert_killed_at(c);
  assert_done_within(NW + 1, tu_now());
  reap_kids();
  assert_int_equal(count_results(-ECANCELED), NW + 1);
  assert_int_equal(atomic_load(&sh->actions), 0);
  assert_int_equal(mp_barrier_broken(sh->bar), 1);
  assert_int_equal(mp_barrier_reset(sh->bar), 0);
  assert_int_equal(mp_barrier_free(sh->bar), 0); /* the dead runner is not counted */
}

/* ------------------------------------------------------------ Lock, RLock */

/* Take the lock once (forever), check exclusion, count a turn, release. */
static int lock_waiter(void *arg) {
  int r = mp_lock_acquire(sh->lock, MP_FOREVER);
  CHILD_CHECK(r == 0 || r == -EOWNERDEAD);
  CHILD_CHECK(atomic_fetch_add(&sh->inside, 1) == 0);
  long t = sh->turns;
  tu_sleep(0.001);
  sh->turns = t + 1;
  atomic_fetch_sub(&sh->inside, 1);
  CHILD_CHECK(mp_lock_release(sh->lock) == 0);
  record((int)(intptr_t)arg, r);
  return 0;
}

static int lock_holder(void *arg) {
  (void)arg;
  int r = mp_lock_acquire(sh->lock, MP_FOREVER);
  CHILD_CHECK(r == 0 || r == -EOWNERDEAD);
  return 0;
}

/* NW lock waiters asleep, then holder c killed: one recovers, all go on. */
static void lock_survivors(pid_t c) {
  for (int i = 0; i < NW; i++)
    fork_kid(lock_waiter, i);
  assert_kids_asleep();
  assert_int_equal(kill(c, SIGKILL), 0);
  cu_assert_killed_at(c);
  assert_done_within(NW, tu_now());
  reap_kids();
  assert_int_equal(count_results(-EOWNERDEAD), 1);
  assert_int_equal(count_results(0), NW - 1);
  assert_int_equal(sh->turns, NW);
  assert_int_equal(mp_lock_locked(sh->lock), 0);
  assert_int_equal(mp_lock_acquire(sh->lock, 0), 0);
  assert_int_equal(mp_lock_release(sh->lock), 0);
  assert_int_equal(mp_lock_free(sh->lock), 0);
}

static void test_sync_crash_lock_acquire_owned(void **state) {
  (void)state;
  assert_int_equal(mp_lock_new(&sh->lock), 0);
  lock_survivors(cu_fork_stopped_at("lock.acquire.owned", 1, lock_holder, NULL, 30));
}

/* The next holder dies before marking the mutex consistent: the one after it
 * gets -EOWNERDEAD in turn. */
static void test_sync_crash_lock_acquire_ownerdead(void **state) {
  (void)state;
  assert_int_equal(mp_lock_new(&sh->lock), 0);
  pid_t c = cu_fork_armed("lock.acquire.owned", 1, lock_holder, NULL, 30);
  cu_assert_killed_at(c);
  lock_survivors(cu_fork_stopped_at("lock.acquire.ownerdead", 1, lock_holder, NULL, 30));
}

/* A sleeper that got the lock dies before its caller knew: the others go on. */
static void test_sync_crash_lock_robust_taken(void **state) {
  (void)state;
  assert_int_equal(mp_lock_new(&sh->lock), 0);
  assert_int_equal(mp_lock_acquire(sh->lock, 0), 0);
  arm_waiters("lock.robust.taken");
  for (int i = 0; i < NW; i++)
    fork_kid(lock_waiter, i);
  mp__crash_mute();
  assert_kids_asleep();
  assert_int_equal(mp_lock_release(sh->lock), 0);
  double t0 = reap_fired_kid();
  assert_done_within(NW - 1, t0);
  reap_kids();
  assert_int_equal(count_results(-EOWNERDEAD), 1);
  assert_int_equal(count_results(0), NW - 2);
  assert_int_equal(sh->turns, NW - 1);
  assert_int_equal(mp_lock_acquire(sh->lock, 0), 0);
  assert_int_equal(mp_lock_release(sh->lock), 0);
  assert_int_equal(mp_lock_free(sh->lock), 0);
}

/* A Condition waiter holding an RLock twice: stopped inside its wait. */
static int rlock_cond_waiter(void *arg) {
  double timeout = (double)(intptr_t)arg / 10;
  CHILD_CHECK(mp_lock_acquire(sh->lock, MP_FOREVER) == 0);
  CHILD_CHECK(mp_lock_acquire(sh->lock, MP_FOREVER) == 0);
  mp_condition_wait(sh->cond, timeout);
  return 0;
}

static void rlock_cond_case(const char *point, double timeout) {
  assert_int_equal(mp_rlock_new(&sh->lock), 0);
  assert_int_equal(mp_condition_new(sh->lock, &sh->cond), 0);
  pid_t c = cu_fork_stopped_at(point, 1, rlock_cond_waiter, (void *)(intptr_t)(timeout * 10), 30);
  assert_int_equal(mp_lock_locked(sh->lock), 1);
  mp_condition *cond = sh->cond;
  /* lock_survivors frees the lock; check that one release frees it first */
  for (int i = 0; i < NW; i++)
    fork_kid(lock_waiter, i);
  assert_kids_asleep();
  assert_int_equal(kill(c, SIGKILL), 0);
  cu_assert_killed_at(c);
  assert_done_within(NW, tu_now());
  reap_kids();
  assert_int_equal(count_results(-EOWNERDEAD), 1);
  assert_int_equal(sh->turns, NW);
  /* glibc gave the recovered RLock a depth of 1: one release frees it */
  assert_int_equal(mp_lock_locked(sh->lock), 0);
  assert_int_equal(mp_lock_acquire(sh->lock, 0), 0);
  assert_int_equal(mp_lock_release(sh->lock), 0);
  assert_int_equal(mp_lock_locked(sh->lock), 0);
  mp_condition_free(cond); /* -EBUSY: the dead waiter stays counted */
  assert_int_equal(mp_lock_free(sh->lock), 0);
}

static void test_sync_crash_lock_release_all_counted(void **state) {
  (void)state;
  rlock_cond_case("lock.release_all.counted", 10);
}

static void test_sync_crash_lock_restore_locked(void **state) {
  (void)state;
  rlock_cond_case("lock.restore.locked", 0.1);
}

/* -------------------------------------------------------------- futexes */

/* A word that cannot be read or is misaligned is an error, not a wake-up. */
static void test_sync_crash_futex_reports_bad_words(void **state) {
  (void)state;
  mp__deadline forever = {.forever = true};
  void *page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  assert_true(page != MAP_FAILED);
  assert_int_equal(munmap(page, 4096), 0);
  assert_int_equal(mp__futex_wait(page, 0, &forever), -EFAULT);
  _Alignas(4) unsigned char buf[8] = {0};
  assert_int_equal(mp__futex_wait((_Atomic uint32_t *)(void *)(buf + 1), 0, &forever), -EINVAL);
  _Atomic uint32_t w = 1;
  assert_int_equal(mp__futex_wait(&w, 0, &forever), 0); /* EAGAIN: differed */
  mp__deadline soon;
  assert_int_equal(mp__deadline_init(&soon, 0.01), 0);
  assert_int_equal(mp__futex_wait(&w, 1, &soon), -ETIMEDOUT);
}

int main(void) {
  if (!mp__crash_enabled()) {
    fprintf(stderr, "built without crash points\n");
    return 1;
  }
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_sync_crash_sem_release_counted, setup, teardown),
      cmocka_unit_test_setup_teardown(test_sync_crash_sem_acquire_woken, setup, teardown),
      cmocka_unit_test_setup_teardown(test_sync_crash_sem_acquire_registered, setup, teardown),
      cmocka_unit_test_setup_teardown(test_sync_crash_event_set_flagged, setup, teardown),
      cmocka_unit_test_setup_teardown(test_sync_crash_event_wait_woken, setup, teardown),
      cmocka_unit_test_setup_teardown(test_sync_crash_cond_notify_tokened, setup, teardown),
      cmocka_unit_test_setup_teardown(test_sync_crash_cond_notify_counted, setup, teardown),
      cmocka_unit_test_setup_teardown(test_sync_crash_cond_wait_woken, setup, teardown),
      cmocka_unit_test_setup_teardown(test_sync_crash_cond_wait_taken, setup, teardown),
      cmocka_unit_test_setup_teardown(test_sync_crash_cond_wait_released, setup, teardown),
      cmocka_unit_test_setup_teardown(test_sync_crash_cond_wait_relocked, setup, teardown),
      cmocka_unit_test_setup_teardown(test_sync_crash_barrier_wake_unlocked, setup, teardown),
      cmocka_unit_test_setup_teardown(test_sync_crash_barrier_wait_arrived, setup, teardown),
      cmocka_unit_test_setup_teardown(test_sync_crash_barrier_sleep_woken, setup, teardown),
      cmocka_unit_test_setup_teardown(test_sync_crash_barrier_action_running, setup, teardown),
      cmocka_unit_test_setup_teardown(test_sync_crash_lock_acquire_owned, setup, teardown),
      cmocka_unit_test_setup_teardown(test_sync_crash_lock_acquire_ownerdead, setup, teardown),
      cmocka_unit_test_setup_teardown(test_sync_crash_lock_robust_taken, setup, teardown),
      cmocka_unit_test_setup_teardown(test_sync_crash_lock_release_all_counted, setup, teardown),
      cmocka_unit_test_setup_teardown(test_sync_crash_lock_restore_locked, setup, teardown),
      cmocka_unit_test_setup_teardown(test_sync_crash_futex_reports_bad_words, setup, teardown),
  };
  return TU_RUN("sync_crash", tests);
}
