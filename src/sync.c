/* SPDX-License-Identifier: MIT */
/*
 * Semaphore, BoundedSemaphore, Event, Condition and Barrier.
 *
 * Map of this file:
 *   1. Semaphore        a value word and a waiter count, both atomics.
 *   2. Event            a flag plus a set-generation in one futex word.
 *   3. Condition        tickets and tokens over an mp_lock (lock.c).
 *   4. Barrier          a robust mutex, a cycle counter and a futex word, and
 *                       a second robust mutex that shows whether the party
 *                       running the action is alive.
 *
 * Every object lives in the family heap and starts with its tag, checked at
 * every public entry. Every public call makes one deadline and passes it to
 * every wait inside it. Waits are futex waits in a loop over the real
 * condition: a wake-up proves nothing and is always re-checked, and signals
 * only make the loop go round once more against the same deadline. Wakers
 * enter the kernel only when a waiter count says someone may be asleep.
 *
 * Lost wake-ups, and the one bound on them. Every object here changes its
 * state first and wakes its sleepers second, and every sleeper is woken
 * first and acts second. A process killed between the two halves loses the
 * wake-up: a releaser, setter or notifier killed after its state change and
 * before its wake call leaves the sleepers asleep with their condition true,
 * and a waiter that received the only wake-up (a Semaphore's release wakes
 * one, a Condition's notify(k) wakes k) and is killed before acting on it
 * takes it to the grave. Sleepers here therefore never sleep longer than
 * SLICE_NS (sleep_slice()): each wakes at least that often, re-checks its
 * condition and sleeps again, so such a loss costs the survivors at most one
 * slice, with MP_FOREVER too. It is the same bound lock.c puts on the wake-up
 * a robust mutex can lose, so every wait of Lock, RLock, Semaphore, Event,
 * Condition and Barrier proceeds within 0.1 s of any such kill. An idle
 * sleeper costs ten short wake-ups a second; the fast paths (one atomic, no
 * system call while nobody sleeps) are unchanged.
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>

#include "crash.h"
#include "internal.h"

/* The longest one futex sleep of this file lasts (see the map above). */
#define SLICE_NS ((int64_t)100 * 1000 * 1000)

/* Sleep while *word == expected, for at most one slice and never past d.
 * Returns 0 (woken, a slice ended, a signal: the caller re-checks), -ETIMEDOUT
 * once d has passed, or -EFAULT/-EINVAL from the futex layer, which the
 * caller returns. */
static int sleep_slice(_Atomic uint32_t *word, uint32_t expected, const mp__deadline *d) {
  int64_t at = mp__now_ns() + SLICE_NS;
  if (!d->forever && (int64_t)d->at.tv_sec * 1000000000 + d->at.tv_nsec <= at)
    return mp__futex_wait(word, expected, d);
  mp__deadline slice = {
      .at = {.tv_sec = (time_t)(at / 1000000000), .tv_nsec = (long)(at % 1000000000)},
      .forever = false,
      .nowait = false};
  int r = mp__futex_wait(word, expected, &slice);
  return r == -ETIMEDOUT ? 0 : r;
}

/* ================================================================ Semaphore */

/*
 * struct mp_semaphore, shared by every process of the family:
 *   tag      written at creation and at free.
 *   bounded  constant: release above `max` fails.
 *   max      constant: the initial value.
 *   value    the units available, and the futex word waiters sleep on while it
 *            is 0. Changed only by compare-and-swap: acquirers take 1 when it
 *            is > 0, releasers add 1 below the limit.
 *   waiters  threads that registered to sleep; incremented before a waiter's
 *            last look at `value`, decremented when it leaves.
 * The value/waiters pair is a Dekker pair: a waiter stores `waiters` then loads
 * `value`; a releaser stores `value` then loads `waiters`, all seq_cst, so at
 * least one of them sees the other and no sleeper misses a unit.
 *
 * What a SIGKILL at each step leaves (units taken by a process that dies are
 * not given back, as in Python; `value` is changed only by single
 * compare-and-swaps, so it never tears, goes negative or counts twice):
 *   sem.acquire.registered  `waiters` one too high forever: every release
 *                           then makes a wake call that may find nobody; a
 *                           system call, never a different result.
 *   sem.acquire.woken       a waiter woke to a unit it has not taken: if a
 *                           release's wake-up (it wakes one) was that one, the
 *                           other sleepers sleep on with value > 0 until their
 *                           slice ends (sleep_slice): within 0.1 s one takes
 *                           it. `waiters` stays one too high, as above.
 *   sem.release.counted     the unit is in `value`, the wake never made: as
 *                           above, a sleeper takes it within one slice.
 */
struct mp_semaphore {
  mp__tag tag;
  uint32_t bounded;
  uint32_t max;
  _Atomic uint32_t value;
  _Atomic uint32_t waiters;
};

static int semaphore_new(unsigned value, bool bounded, mp_semaphore **ret) {
  if (!ret || value > INT_MAX)
    return -EINVAL;
  mp_semaphore *s = mp__object_new(sizeof *s, MP__TAG_SEMAPHORE);
  if (!s)
    return -ENOMEM;
  s->bounded = bounded;
  s->max = value;
  /* relaxed: the handle is published to other threads by the caller */
  atomic_store_explicit(&s->value, value, memory_order_relaxed);
  *ret = s;
  return 0;
}

MP_EXPORT int mp_semaphore_new(unsigned value, mp_semaphore **ret) {
  return semaphore_new(value, false, ret);
}

MP_EXPORT int mp_bounded_semaphore_new(unsigned value, mp_semaphore **ret) {
  return semaphore_new(value, true, ret);
}

/* Take one unit if there is one. The load is seq_cst because after a waiter
 * registered it is the waiter's half of the Dekker pair. */
static bool semaphore_try(mp_semaphore *s) {
  uint32_t v = atomic_load(&s->value);
  while (v > 0)
    if (atomic_compare_exchange_weak(&s->value, &v, v - 1))
      return true;
  return false;
}

MP_EXPORT int mp_semaphore_acquire(mp_semaphore *sem, double timeout) {
  if (!mp__tag_ok(sem, MP__TAG_SEMAPHORE))
    return -EINVAL;
  mp__deadline d;
  int r = mp__deadline_init(&d, timeout);
  if (r < 0)
    return r;
  if (MP__LIKELY(semaphore_try(sem)))
    return 0;
  if (d.nowait)
    return -ETIMEDOUT;
  for (int i = 0; i < MP__SPIN_LIMIT; i++) {
    mp__cpu_relax();
    /* relaxed: only a hint; semaphore_try decides */
    if (atomic_load_explicit(&sem->value, memory_order_relaxed) && semaphore_try(sem))
      return 0;
  }
  atomic_fetch_add(&sem->waiters, 1);
  MP__CRASH(SEM_ACQUIRE_REGISTERED);
  for (;;) {
    if (semaphore_try(sem)) {
      r = 0;
      break;
    }
    r = sleep_slice(&sem->value, 0, &d);
    if (r < 0) {
      if (r == -ETIMEDOUT && semaphore_try(sem))
        r = 0;
      break;
    }
    /* relaxed: only says whether there is a unit this waiter woke to */
    if (atomic_load_explicit(&sem->value, memory_order_relaxed) > 0)
      MP__CRASH(SEM_ACQUIRE_WOKEN);
  }
  /* relaxed: leaving only makes a later release's wake unnecessary */
  atomic_fetch_sub_explicit(&sem->waiters, 1, memory_order_relaxed);
  return r;
}

MP_EXPORT int mp_semaphore_release(mp_semaphore *sem) {
  if (!mp__tag_ok(sem, MP__TAG_SEMAPHORE))
    return -EINVAL;
  uint32_t limit = sem->bounded ? sem->max : (uint32_t)INT_MAX;
  /* relaxed: the compare-and-swap below validates the value */
  uint32_t v = atomic_load_explicit(&sem->value, memory_order_relaxed);
  do {
    if (v >= limit)
      return -EOVERFLOW;
  } while (!atomic_compare_exchange_weak(&sem->value, &v, v + 1));
  MP__CRASH(SEM_RELEASE_COUNTED);
  if (atomic_load(&sem->waiters) > 0)
    mp__futex_wake(&sem->value, 1);
  return 0;
}

MP_EXPORT int mp_semaphore_get_value(mp_semaphore *sem) {
  if (!mp__tag_ok(sem, MP__TAG_SEMAPHORE))
    return -EINVAL;
  /* relaxed: a snapshot */
  return (int)atomic_load_explicit(&sem->value, memory_order_relaxed);
}

MP_EXPORT int mp_semaphore_free(mp_semaphore *sem) {
  if (!sem)
    return 0;
  if (!mp__tag_ok(sem, MP__TAG_SEMAPHORE))
    return -EINVAL;
  mp__object_free(sem);
  return 0;
}

/* ==================================================================== Event */

/*
 * struct mp_event, shared by every process of the family:
 *   tag      written at creation and at free.
 *   word     bit 0: the flag; bits 1-31: the number of sets that found the flag
 *            clear (mod 2^31). The futex word. set() turns the flag on and
 *            bumps the generation in one compare-and-swap; clear() only turns
 *            the flag off. A waiter notes the word it saw with the flag clear
 *            and sleeps while the word still equals it: any change means a set
 *            happened since, so a set followed at once by a clear still
 *            releases everyone who was asleep at the set.
 *   waiters  threads registered to sleep. Dekker pair with `word` (seq_cst):
 *            a waiter stores `waiters` then loads `word`, a setter stores `word`
 *            then loads `waiters`; a setter that sees 0 makes no system call.
 * A waiter that misses exactly 2^31 sets between two of its looks would see
 * the same word again; nothing else can fool it.
 *
 * What a SIGKILL at each step leaves (`word` changes only by single atomic
 * instructions, so it never tears):
 *   event.wait.woken   a waiter woke to a changed word and has not returned:
 *                      `waiters` one too high forever (as for a waiter killed
 *                      asleep), so later sets make a wake call that may find
 *                      nobody; a set wakes every sleeper, so no other waiter
 *                      depended on this one.
 *   event.set.flagged  the flag is set and the generation bumped, the wake
 *                      never made: the sleepers see the changed word when
 *                      their slice ends (sleep_slice), within 0.1 s.
 */
struct mp_event {
  mp__tag tag;
  _Atomic uint32_t word;
  _Atomic uint32_t waiters;
};

MP_EXPORT int mp_event_new(mp_event **ret) {
  if (!ret)
    return -EINVAL;
  mp_event *ev = mp__object_new(sizeof *ev, MP__TAG_EVENT);
  if (!ev)
    return -ENOMEM;
  *ret = ev;
  return 0;
}

MP_EXPORT int mp_event_set(mp_event *ev) {
  if (!mp__tag_ok(ev, MP__TAG_EVENT))
    return -EINVAL;
  /* relaxed: the compare-and-swap below validates the value */
  uint32_t w = atomic_load_explicit(&ev->word, memory_order_relaxed);
  do {
    if (w & 1)
      return 0; /* already set: whoever set it woke the sleepers */
  } while (!atomic_compare_exchange_weak(&ev->word, &w, (w + 2) | 1));
  MP__CRASH(EVENT_SET_FLAGGED);
  if (atomic_load(&ev->waiters) > 0)
    mp__futex_wake(&ev->word, INT_MAX);
  return 0;
}

MP_EXPORT int mp_event_clear(mp_event *ev) {
  if (!mp__tag_ok(ev, MP__TAG_EVENT))
    return -EINVAL;
  atomic_fetch_and(&ev->word, ~(uint32_t)1);
  return 0;
}

MP_EXPORT int mp_event_is_set(mp_event *ev) {
  if (!mp__tag_ok(ev, MP__TAG_EVENT))
    return -EINVAL;
  return (int)(atomic_load(&ev->word) & 1);
}

MP_EXPORT int mp_event_wait(mp_event *ev, double timeout) {
  if (!mp__tag_ok(ev, MP__TAG_EVENT))
    return -EINVAL;
  mp__deadline d;
  int r = mp__deadline_init(&d, timeout);
  if (r < 0)
    return r;
  uint32_t seen = atomic_load(&ev->word);
  if (MP__LIKELY(seen & 1))
    return 0;
  if (d.nowait)
    return -ETIMEDOUT;
  /* No spin here, unlike the other waits: an Event is for long waits, and a
   * spin before sleeping made the later wake-up measurably slower in
   * bench/run event-wake (9.7 us against 4-5 us without it). */
  atomic_fetch_add(&ev->waiters, 1);
  for (;;) {
    if (atomic_load(&ev->word) != seen) {
      r = 0;
      break;
    }
    r = sleep_slice(&ev->word, seen, &d);
    if (r < 0) {
      if (r == -ETIMEDOUT && atomic_load(&ev->word) != seen)
        r = 0;
      break;
    }
    /* relaxed: only says whether this waiter woke to a set */
    if (atomic_load_explicit(&ev->word, memory_order_relaxed) != seen)
      MP__CRASH(EVENT_WAIT_WOKEN);
  }
  /* relaxed: leaving only makes a later set's wake unnecessary */
  atomic_fetch_sub_explicit(&ev->waiters, 1, memory_order_relaxed);
  return r;
}

MP_EXPORT int mp_event_free(mp_event *ev) {
  if (!ev)
    return 0;
  if (!mp__tag_ok(ev, MP__TAG_EVENT))
    return -EINVAL;
  mp__object_free(ev);
  return 0;
}

/* ================================================================ Condition */

/*
 * struct mp_condition, shared by every process of the family.
 *
 * A waiter takes a ticket and counts itself in `waiters` under the lock, then
 * releases the lock and waits for a token. notify(n), under the lock, turns
 * k = min(n, waiters) waiters into k tokens, makes every ticket issued so far
 * eligible for tokens (`limit`), bumps `seq` and wakes k sleepers. A waiter
 * leaves when it takes a token (notified) or when its deadline passes; a
 * timed-out waiter re-acquires the lock first and then either takes a token
 * that arrived meanwhile (notified after all) or removes itself from
 * `waiters` (timed out). Tickets stop a thread that starts waiting after a
 * notify from taking that notify's token: only threads waiting at the time of
 * a notify can be woken by it, and a notify with no waiter leaves nothing.
 *
 * Fields:
 *   tag          written at creation and at free.
 *   lock, owns   constant; `owns` when the Condition made the lock itself.
 *   next_ticket  read and written under the lock only.
 *   waiters      written under the lock only (atomic so that free may read
 *                it without the lock): threads waiting that no notify counted.
 *   limit        written under the lock only, read by waiters without it:
 *                tickets below it may take tokens. Only grows.
 *   tokens       incremented by notify under the lock; decremented by a
 *                waiter's compare-and-swap, with or without the lock.
 *   seq          the futex word: bumped by each notify that made tokens.
 * Invariants (under the lock): the number of live threads inside a wait is
 * at most waiters + tokens (equal until a process dies inside a wait or a
 * notify), and tokens never exceed the eligible threads inside a wait (a
 * notify makes every waiting thread eligible, newcomers are not), so a
 * token always has a thread that may take it. notify wakes while it holds the
 * lock, when every thread asleep on `seq` is eligible: each of the k wake-ups
 * reaches a thread that may take a token. A woken thread that finds the tokens
 * already taken by a thread that had not yet slept waits again; the count of
 * notified threads is k either way.
 *
 * notify adds the tokens before it takes the waiters out of `waiters`, so at
 * every instant between its steps waiters + tokens counts each waiting thread
 * at least once: a kill can leave a thread counted twice (a token no live
 * thread is owed: a later eligible waiter takes it and returns without a
 * notify of its own, one spurious wake-up, as condition variables allow —
 * wait in a loop, or use wait_for), never zero times (a lost wake-up) and
 * never below zero. While the counts stay too high, mp_condition_free()
 * reports -EBUSY.
 *
 * What a SIGKILL at each step leaves (each counter changes by single atomic
 * instructions; a process killed holding the lock leaves it to lock.c's
 * robust-mutex recovery, and the next holder gets -EOWNERDEAD):
 *   cond.wait.released   a waiter counted in `waiters`, the lock released,
 *                        not asleep yet (as one killed asleep): `waiters` one
 *                        too high, a spurious wake-up later.
 *   cond.wait.woken      a woken waiter, a token there it has not taken: if
 *                        the wake-up was meant for another thread, that
 *                        thread sleeps on until its slice ends (sleep_slice)
 *                        and takes the token within 0.1 s.
 *   cond.wait.taken      the dead waiter took its token: it was notified;
 *                        nobody else is owed anything.
 *   cond.wait.relocked   a timed-out waiter holds the lock again, still in
 *                        `waiters`: the lock is recovered, `waiters` one too
 *                        high (a spurious wake-up later).
 *   cond.notify.tokened  k tokens made, `waiters` not yet lowered: k threads
 *                        counted twice (spurious wake-ups later); the k
 *                        sleepers owed a token take one within a slice.
 *   cond.notify.counted  the counters done, `seq` and the wake-up not: the
 *                        sleepers take their tokens within a slice.
 */
struct mp_condition {
  mp__tag tag;
  uint32_t owns;
  mp_lock *lock;
  uint64_t next_ticket;
  _Atomic uint64_t limit;
  _Atomic int32_t waiters;
  _Atomic int32_t tokens;
  _Atomic uint32_t seq;
};

static bool condition_ok(const mp_condition *c) {
  return mp__tag_ok(c, MP__TAG_CONDITION) && mp__tag_ok(c->lock, MP__TAG_LOCK);
}

MP_EXPORT int mp_condition_new(mp_lock *lock, mp_condition **ret) {
  if (!ret || (lock && !mp__tag_ok(lock, MP__TAG_LOCK)))
    return -EINVAL;
  bool owns = !lock;
  if (owns) {
    int r = mp_rlock_new(&lock);
    if (r < 0)
      return r;
  }
  mp_condition *c = mp__object_new(sizeof *c, MP__TAG_CONDITION);
  if (!c) {
    if (owns)
      mp_rlock_free(lock);
    return -ENOMEM;
  }
  c->lock = lock;
  c->owns = owns;
  *ret = c;
  return 0;
}

MP_EXPORT int mp_condition_acquire(mp_condition *cond, double timeout) {
  if (!condition_ok(cond))
    return -EINVAL;
  mp__deadline d;
  int r = mp__deadline_init(&d, timeout);
  return r < 0 ? r : mp__lock_acquire(cond->lock, &d);
}

MP_EXPORT int mp_condition_release(mp_condition *cond) {
  return condition_ok(cond) ? mp__lock_release(cond->lock) : -EINVAL;
}

MP_EXPORT int mp_condition_get_lock(mp_condition *cond, mp_lock **ret) {
  if (!condition_ok(cond) || !ret)
    return -EINVAL;
  *ret = cond->lock;
  return 0;
}

/* Take a token if the ticket may and one is there. seq_cst loads: they follow
 * the waiter's load of `seq`, which must not pass them. */
static bool condition_take(mp_condition *c, uint64_t ticket) {
  if (ticket >= atomic_load(&c->limit))
    return false;
  int32_t t = atomic_load(&c->tokens);
  while (t > 0)
    if (atomic_compare_exchange_weak(&c->tokens, &t, t - 1))
      return true;
  return false;
}

/* One wait, the lock held by the caller. Returns 0 (notified), -ETIMEDOUT,
 * -EOWNERDEAD (either, and the lock came back from a dead holder), -EPERM. */
static int condition_wait(mp_condition *c, const mp__deadline *d) {
  if (!mp__lock_is_mine(c->lock))
    return -EPERM;
  uint64_t ticket = c->next_ticket++;
  /* relaxed: written under the lock, which orders it for notify */
  atomic_fetch_add_explicit(&c->waiters, 1, memory_order_relaxed);
  int count = mp__lock_release_all(c->lock);
  if (count < 0) {
    atomic_fetch_sub_explicit(&c->waiters, 1, memory_order_relaxed);
    return count;
  }
  MP__CRASH(COND_WAIT_RELEASED);
  bool notified = false;
  int err = 0;
  int spins = d->nowait ? MP__SPIN_LIMIT : 0;
  for (;;) {
    uint32_t s = atomic_load(&c->seq);
    if (condition_take(c, ticket)) {
      notified = true;
      MP__CRASH(COND_WAIT_TAKEN);
      break;
    }
    if (spins < MP__SPIN_LIMIT) {
      spins++;
      mp__cpu_relax();
      continue;
    }
    err = sleep_slice(&c->seq, s, d);
    if (err < 0)
      break;
    /* relaxed: only say whether there is a token this waiter woke to */
    if (ticket < atomic_load_explicit(&c->limit, memory_order_relaxed) &&
        atomic_load_explicit(&c->tokens, memory_order_relaxed) > 0)
      MP__CRASH(COND_WAIT_WOKEN);
  }
  /* Re-acquire without a deadline, as Python does: the caller expects to hold
   * the lock on return, whatever the outcome. */
  const mp__deadline forever = {.forever = true};
  int r = mp__lock_restore(c->lock, count, &forever);
  if (r < 0 && r != -EOWNERDEAD)
    return r;
  if (!notified) {
    MP__CRASH(COND_WAIT_RELOCKED);
    if (condition_take(c, ticket))
      notified = true;
    else
      atomic_fetch_sub_explicit(&c->waiters, 1, memory_order_relaxed); /* under the lock */
  }
  if (r == -EOWNERDEAD)
    return r;
  if (!notified && err != -ETIMEDOUT)
    return err; /* -EFAULT or -EINVAL from the futex: the lock is held again */
  return notified ? 0 : -ETIMEDOUT;
}

MP_EXPORT int mp_condition_wait(mp_condition *cond, double timeout) {
  if (!condition_ok(cond))
    return -EINVAL;
  mp__deadline d;
  int r = mp__deadline_init(&d, timeout);
  return r < 0 ? r : condition_wait(cond, &d);
}

MP_EXPORT int mp_condition_wait_for(mp_condition *cond, int (*predicate)(void *arg), void *arg,
                                    double timeout) {
  if (!condition_ok(cond) || !predicate)
    return -EINVAL;
  mp__deadline d;
  int r = mp__deadline_init(&d, timeout);
  if (r < 0)
    return r;
  if (!mp__lock_is_mine(cond->lock))
    return -EPERM;
  for (;;) {
    if (predicate(arg))
      return 0;
    r = condition_wait(cond, &d);
    if (r == -ETIMEDOUT)
      return predicate(arg) ? 0 : -ETIMEDOUT;
    if (r < 0)
      return r;
  }
}

MP_EXPORT int mp_condition_notify(mp_condition *cond, int n) {
  if (!condition_ok(cond) || n < 0)
    return -EINVAL;
  if (!mp__lock_is_mine(cond->lock))
    return -EPERM;
  /* relaxed: written only under the lock, which we hold */
  int32_t w = atomic_load_explicit(&cond->waiters, memory_order_relaxed);
  int32_t k = n < w ? n : w;
  if (k == 0)
    return 0;
  /* Tokens first, `waiters` second: a kill between them counts k threads
   * twice (spurious wake-ups), never zero times (see the table above). */
  atomic_store(&cond->limit, cond->next_ticket);
  atomic_fetch_add(&cond->tokens, k);
  MP__CRASH(COND_NOTIFY_TOKENED);
  /* relaxed: written only under the lock, which we hold */
  atomic_fetch_sub_explicit(&cond->waiters, k, memory_order_relaxed);
  MP__CRASH(COND_NOTIFY_COUNTED);
  atomic_fetch_add(&cond->seq, 1);
  /* Under the lock: no thread can start waiting before the wake, so every
   * sleeper it may reach is eligible for the new tokens. */
  mp__futex_wake(&cond->seq, k);
  return 0;
}

MP_EXPORT int mp_condition_notify_all(mp_condition *cond) {
  return mp_condition_notify(cond, INT_MAX);
}

int mp__condition_counts(mp_condition *cond, int *waiters, int *tokens) {
  if (!mp__tag_ok(cond, MP__TAG_CONDITION))
    return -EINVAL;
  *waiters = atomic_load(&cond->waiters);
  *tokens = atomic_load(&cond->tokens);
  return 0;
}

MP_EXPORT int mp_condition_free(mp_condition *cond) {
  if (!cond)
    return 0;
  /* Only the Condition's own tag: a caller may have freed its lock already. */
  if (!mp__tag_ok(cond, MP__TAG_CONDITION))
    return -EINVAL;
  if (atomic_load(&cond->waiters) > 0 || atomic_load(&cond->tokens) > 0)
    return -EBUSY;
  if (cond->owns) {
    int r = mp_rlock_free(cond->lock);
    if (r < 0)
      return r;
  }
  mp__object_free(cond);
  return 0;
}

/* ================================================================== Barrier */

/*
 * struct mp_barrier, shared by every process of the family.
 *
 * Parties arrive in cycles numbered from 0. Every cycle ends exactly once,
 * either released (its last party arrived and the action, if any, succeeded)
 * or cancelled (a timeout, abort, reset or failed action). A party remembers
 * the number of its cycle and its index, sleeps until the cycle number moves
 * on, and then reads its cycle's outcome from `cancelled`, a bit per cycle for
 * the last 64 cycles. So released parties need not report back before the
 * next cycle starts, and a party that dies does not hold up later cycles.
 *
 * Fields (all but the constants, `word` and `runner` under `mutex`):
 *   tag                  written at creation and at free.
 *   parties, timeout,
 *   action, arg          constant.
 *   mutex                robust, process-shared; held only for a few stores,
 *                        never across a sleep or the action.
 *   word                 the futex word, bumped under the mutex at every end
 *                        of a cycle and every change of `broken`; read
 *                        without it only by sleepers comparing.
 *   cycle                the number of the current cycle.
 *   cancelled            bit (c % 64): whether cycle c was cancelled, valid
 *                        while cycle - c <= 64.
 *   count                parties arrived in the current cycle.
 *   closing              the current cycle is full and its last party runs
 *                        the action outside the mutex; arrivals wait.
 *   in_action            parties running the action now (free is then busy).
 *   runner               robust, process-shared; held by the last party from
 *                        before it sets `closing` until it has the mutex back
 *                        and has left `in_action` after the action, so that
 *                        a sleeper can tell whether
 *                        it died: trylock gives EOWNERDEAD then. Only ever
 *                        try-locked, with or without `mutex`, so it adds no
 *                        lock order.
 *   guarded              the current `closing` runner holds `runner` (0 when
 *                        a runner of a cycle that reset cancelled still held
 *                        it: that rare runner's death goes unnoticed).
 *   sleepers             parties that released the mutex to sleep on `word`;
 *                        a waker makes a wake call only when it is > 0.
 *   broken               every wait fails at once until reset.
 * A party that wakes more than 64 cycles after its own cycle ended cannot
 * know the outcome and reports -ECANCELED, the safe answer.
 *
 * What a SIGKILL at each step leaves. A process killed while holding the
 * mutex leaves its stores half done; the next locker gets EOWNERDEAD, makes
 * the mutex consistent and breaks the barrier, since its state cannot be
 * trusted: waiters get -ECANCELED and mp_barrier_reset() repairs it. Sleepers
 * sleep at most one slice at a time (sleep_slice) and then take the mutex, so
 * they are the next lockers within 0.1 s even when nobody else comes.
 *   barrier.wait.arrived   a party counted in `count`, the mutex held: the
 *                          barrier breaks as above, the sleepers return
 *                          -ECANCELED within a slice.
 *   barrier.wake.unlocked  a cycle ended (or the barrier broke, or was reset)
 *                          and the mutex released, the wake never made: the
 *                          sleepers see the new `word` within a slice and
 *                          return their cycle's outcome.
 *   barrier.sleep.woken    a party woke and has not re-taken the mutex: its
 *                          cycle goes on without it (a wake-up reaches every
 *                          sleeper), `sleepers` stays one too high and free
 *                          reports -EBUSY from then on.
 *   barrier.action.running a last party killed inside the action, `closing`
 *                          set, `runner` held: the first sleeper whose slice
 *                          ends finds `runner` owner-dead (barrier_sleep),
 *                          takes the dead runner out of `in_action` and
 *                          breaks the barrier: everyone gets -ECANCELED
 *                          within a slice, and reset repairs it.
 * A party killed while asleep stays counted in its cycle (so the cycle is
 * released one arrival early) or, if the cycle never fills, the others wait
 * for their timeout, as they would for a party that never arrives.
 */
struct mp_barrier {
  mp__tag tag;
  uint32_t parties;
  double timeout;
  mp_barrier_action action;
  void *arg;
  _Atomic uint32_t word;
  uint32_t count;
  uint32_t closing;
  uint32_t in_action;
  uint32_t guarded;
  uint32_t sleepers;
  uint32_t broken;
  uint64_t cycle;
  uint64_t cancelled;
  pthread_mutex_t mutex;
  pthread_mutex_t runner;
};

/* End the current cycle, released or cancelled. Under the mutex. */
static void barrier_end_cycle(mp_barrier *b, bool cancelled) {
  uint64_t bit = (uint64_t)1 << (b->cycle % 64);
  b->cancelled = cancelled ? (b->cancelled | bit) : (b->cancelled & ~bit);
  b->cycle++;
  b->count = 0;
  b->closing = 0;
  /* relaxed: sleepers re-read the state under the mutex, which orders it */
  atomic_fetch_add_explicit(&b->word, 1, memory_order_relaxed);
}

/* Break the barrier: cancel the current cycle. Under the mutex. */
static void barrier_break(mp_barrier *b) {
  if (b->broken)
    return;
  b->broken = 1;
  barrier_end_cycle(b, true);
}

static void barrier_lock(mp_barrier *b) {
  mp__deadline forever = {.forever = true, .nowait = false};
  if (MP__UNLIKELY(mp__robust_mutex_take(&b->mutex, &forever, NULL, NULL) == -EOWNERDEAD))
    barrier_break(b);
}

/* Unlock, then wake every sleeper if anyone may sleep. Waking after the
 * unlock spares the woken a collision with the mutex. */
static void barrier_unlock_wake(mp_barrier *b) {
  bool wake = b->sleepers > 0;
  pthread_mutex_unlock(&b->mutex);
  MP__CRASH(BARRIER_WAKE_UNLOCKED);
  if (wake)
    mp__futex_wake(&b->word, INT_MAX);
}

/* Release the mutex, sleep until `word` changes, one slice ends or the
 * deadline passes, re-lock. Returns 0, -ETIMEDOUT, or -EFAULT/-EINVAL from
 * the futex; the caller re-checks the state. */
static int barrier_sleep(mp_barrier *b, const mp__deadline *d) {
  /* relaxed: `word` changes only under the mutex, which we hold */
  uint32_t w = atomic_load_explicit(&b->word, memory_order_relaxed);
  b->sleepers++;
  pthread_mutex_unlock(&b->mutex);
  int r = 0;
  bool changed = false;
  if (!d->nowait)
    for (int i = 0; i < MP__SPIN_LIMIT && !changed; i++) {
      mp__cpu_relax();
      /* relaxed: a hint; the state is re-read under the mutex */
      changed = atomic_load_explicit(&b->word, memory_order_relaxed) != w;
    }
  if (!changed)
    r = sleep_slice(&b->word, w, d);
  /* relaxed: only says whether this party woke to a change */
  if (atomic_load_explicit(&b->word, memory_order_relaxed) != w)
    MP__CRASH(BARRIER_SLEEP_WOKEN);
  barrier_lock(b);
  b->sleepers--;
  if (b->closing && b->guarded) {
    int t = mp__robust_mutex_try(&b->runner, NULL, NULL);
    if (t == -EOWNERDEAD) { /* the last party died in the action */
      pthread_mutex_unlock(&b->runner);
      b->in_action--;
      b->guarded = 0;
      barrier_break(b);
    } else if (t == 0) { /* cannot happen while `guarded`; leave it free */
      pthread_mutex_unlock(&b->runner);
    }
  }
  return r;
}

MP_EXPORT int mp_barrier_new(unsigned parties, mp_barrier_action action, void *arg, double timeout,
                             mp_barrier **ret) {
  if (!ret || parties == 0 || parties > INT_MAX || isnan(timeout))
    return -EINVAL;
  mp_barrier *b = mp__object_new(sizeof *b, MP__TAG_BARRIER);
  if (!b)
    return -ENOMEM;
  b->parties = parties;
  b->action = action;
  b->arg = arg;
  b->timeout = timeout;
  int r = mp__robust_mutex_init(&b->mutex, false);
  if (r == 0) {
    r = mp__robust_mutex_init(&b->runner, false);
    if (r < 0)
      pthread_mutex_destroy(&b->mutex);
  }
  if (r < 0) {
    mp__object_free(b);
    return r;
  }
  *ret = b;
  return 0;
}

/* The last party of cycle c: run the action, then release or cancel the
 * cycle. Called and returns with the mutex held. */
static int barrier_finish(mp_barrier *b, uint64_t c, int index) {
  if (!b->action) {
    barrier_end_cycle(b, false);
    return index;
  }
  /* EOWNERDEAD: a runner died after it got the mutex back; ours now. EBUSY:
   * the runner of a cycle that a reset cancelled is still in the action. */
  int t = mp__robust_mutex_try(&b->runner, NULL, NULL);
  bool guarded = t == 0 || t == -EOWNERDEAD;
  b->guarded = guarded;
  b->closing = 1;
  b->in_action++;
  pthread_mutex_unlock(&b->mutex);
  MP__CRASH(BARRIER_ACTION_RUNNING);
  int ar = b->action(b->arg);
  barrier_lock(b);
  b->in_action--;
  if (guarded)
    pthread_mutex_unlock(&b->runner);
  if (b->cycle == c)
    b->guarded = 0;
  if (b->cycle != c) /* reset or aborted meanwhile: already cancelled */
    return ar < 0 ? ar : -ECANCELED;
  if (ar < 0) {
    barrier_break(b);
    return ar;
  }
  barrier_end_cycle(b, false);
  return index;
}

MP_EXPORT int mp_barrier_wait(mp_barrier *barrier, double timeout) {
  mp_barrier *b = barrier;
  if (!mp__tag_ok(b, MP__TAG_BARRIER) || isnan(timeout))
    return -EINVAL;
  mp__deadline d;
  /* Python's one exception to its rule: wait(None) takes the barrier's own
   * default, spelled MP_BARRIER_DEFAULT (-infinity); other negatives are 0 */
  int r = mp__deadline_init(&d, timeout == MP_BARRIER_DEFAULT ? b->timeout : timeout);
  if (r < 0)
    return r;
  barrier_lock(b);
  /* The previous cycle is running its action: wait for it to end. */
  while (b->closing && !b->broken) {
    r = barrier_sleep(b, &d);
    if (r < 0 && b->closing && !b->broken) {
      barrier_break(b);
      barrier_unlock_wake(b);
      return r == -ETIMEDOUT ? -ECANCELED : r;
    }
  }
  if (b->broken) {
    pthread_mutex_unlock(&b->mutex);
    return -ECANCELED;
  }
  uint64_t c = b->cycle;
  int index = (int)b->count++;
  MP__CRASH(BARRIER_WAIT_ARRIVED);
  if (b->count == b->parties) {
    r = barrier_finish(b, c, index);
    barrier_unlock_wake(b);
    return r;
  }
  for (;;) {
    r = barrier_sleep(b, &d);
    if (b->cycle != c) {
      bool cancelled = b->cycle - c > 64 || ((b->cancelled >> (c % 64)) & 1);
      pthread_mutex_unlock(&b->mutex);
      return cancelled ? -ECANCELED : index;
    }
    if (r < 0) { /* timed out, or the futex failed: the cycle cannot fill */
      barrier_break(b);
      barrier_unlock_wake(b);
      return r == -ETIMEDOUT ? -ECANCELED : r;
    }
  }
}

MP_EXPORT int mp_barrier_abort(mp_barrier *barrier) {
  if (!mp__tag_ok(barrier, MP__TAG_BARRIER))
    return -EINVAL;
  barrier_lock(barrier);
  barrier_break(barrier);
  barrier_unlock_wake(barrier);
  return 0;
}

MP_EXPORT int mp_barrier_reset(mp_barrier *barrier) {
  mp_barrier *b = barrier;
  if (!mp__tag_ok(b, MP__TAG_BARRIER))
    return -EINVAL;
  barrier_lock(b);
  if (b->broken) {
    /* The broken cycle already ended; a fresh one is current. */
    b->broken = 0;
    /* relaxed: sleepers re-read the state under the mutex */
    atomic_fetch_add_explicit(&b->word, 1, memory_order_relaxed);
  } else if (b->count > 0 || b->closing) {
    barrier_end_cycle(b, true);
  }
  barrier_unlock_wake(b);
  return 0;
}

MP_EXPORT int mp_barrier_broken(mp_barrier *barrier) {
  if (!mp__tag_ok(barrier, MP__TAG_BARRIER))
    return -EINVAL;
  barrier_lock(barrier);
  int r = (int)barrier->broken;
  pthread_mutex_unlock(&barrier->mutex);
  return r;
}

MP_EXPORT int mp_barrier_n_waiting(mp_barrier *barrier) {
  if (!mp__tag_ok(barrier, MP__TAG_BARRIER))
    return -EINVAL;
  barrier_lock(barrier);
  int r = (int)barrier->count;
  pthread_mutex_unlock(&barrier->mutex);
  return r;
}

MP_EXPORT int mp_barrier_parties(mp_barrier *barrier) {
  if (!mp__tag_ok(barrier, MP__TAG_BARRIER))
    return -EINVAL;
  return (int)barrier->parties;
}

MP_EXPORT int mp_barrier_free(mp_barrier *barrier) {
  mp_barrier *b = barrier;
  if (!b)
    return 0;
  if (!mp__tag_ok(b, MP__TAG_BARRIER))
    return -EINVAL;
  barrier_lock(b);
  bool busy = b->count > 0 || b->sleepers > 0 || b->closing || b->in_action > 0;
  pthread_mutex_unlock(&b->mutex);
  if (busy)
    return -EBUSY;
  pthread_mutex_destroy(&b->mutex);
  pthread_mutex_destroy(&b->runner);
  mp__object_free(b);
  return 0;
}
