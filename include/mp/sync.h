/* SPDX-License-Identifier: MIT */
/**
 * @file mp/sync.h
 * @brief Lock, RLock, Semaphore, BoundedSemaphore, Event, Condition, Barrier.
 *
 * Every object lives in the family heap (see mp/heap.h): its handle is a plain
 * pointer that works in every process of the family and in every thread of
 * each, also when created after a fork or received through a queue. Fast paths
 * are one atomic operation; waits sleep in the kernel (futexes) after at most a
 * short bounded spin, against one absolute `CLOCK_MONOTONIC` deadline, and
 * signals never end them early.
 *
 * Crash semantics: a Lock or RLock whose holder dies (any way, SIGKILL
 * included) passes to the next acquirer, who is told so with `-EOWNERDEAD`: the
 * lock is then held by the caller and fully usable; the data it protected may
 * be half-updated, which is for the caller to check. No waiter hangs because a
 * holder died. Semaphore units taken by a process that dies are not given back
 * (as in Python); use timeouts where that matters.
 *
 * A `*_free()` on an object another process or thread still uses is undefined,
 * as freeing memory in use always is.
 */
#ifndef MP_SYNC_H
#define MP_SYNC_H

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------ Lock */

/**
 * An owned lock. Python's `multiprocessing.Lock` may be released by anyone;
 * libmp's is owned by the acquiring thread, like `threading.Lock` used well:
 * only the owner may release it, and its owner's death is detected.
 */
typedef struct mp_lock mp_lock;

/**
 * A recursive owned lock (Python's `RLock`): its owner may acquire it again,
 * and must release it as often. An `mp_rlock` is an `mp_lock` that counts, so
 * it can be passed wherever an `mp_lock *` is taken (Condition, Value).
 */
typedef struct mp_lock mp_rlock;

/**
 * @brief Create an unlocked Lock in the family heap.
 * @param[out] ret the new lock, written only on success.
 * @return 0; `-EINVAL` for NULL @p ret; `-ENOMEM` when the heap is full.
 */
MP_EXPORT int mp_lock_new(mp_lock **ret);

/**
 * @brief Acquire the lock, waiting at most @p timeout seconds.
 *
 * Works on an RLock as mp_rlock_acquire().
 * @return 0 when acquired; `-EOWNERDEAD` when acquired from a holder that died
 *         (the caller holds the lock and may use it normally); `-ETIMEDOUT`
 *         when not acquired in time (at once with `MP_NOWAIT`); `-EDEADLK` when
 *         the calling thread already holds this (non-recursive) lock, instead of
 *         blocking forever; `-EINVAL` for NULL, a freed lock or a NaN timeout.
 * Thread and process safety: safe. Across fork: a lock held by the parent is
 * not held by the child's thread.
 */
MP_EXPORT int mp_lock_acquire(mp_lock *lock, double timeout);

/**
 * @brief Release the lock held by the calling thread.
 * @return 0; `-EPERM` when the calling thread does not hold it (not held, or
 *         held by another thread or process); `-EINVAL` for NULL.
 */
MP_EXPORT int mp_lock_release(mp_lock *lock);

/**
 * @brief Whether the lock is held by anyone right now (a snapshot), for a
 *        Lock or an RLock.
 * @return 1 when held, also by a holder that died (as Python, until another
 *         process takes it over and is told `-EOWNERDEAD`); 0 when free;
 *         `-EINVAL` for NULL.
 */
MP_EXPORT int mp_lock_locked(mp_lock *lock);

/**
 * @brief Which process holds the lock right now (a snapshot), for a Lock or
 *        an RLock: for debugging a family that seems stuck.
 * @param[out] ret the holder's pid, written only when 1 is returned.
 * @return 1 and the pid when held by a live process; 0 when free;
 *         `-EOWNERDEAD` when its holder died holding it (the next acquirer
 *         takes it over); `-EINVAL` for NULL.
 * Thread and process safety: safe; reads /proc when another process holds it.
 */
MP_EXPORT int mp_lock_holder(mp_lock *lock, pid_t *ret);

/**
 * @brief Free a Lock or RLock.
 * @return 0; 0 for NULL; `-EBUSY` when it is held (it is then not freed).
 */
MP_EXPORT int mp_lock_free(mp_lock *lock);

/**
 * @brief Create an unlocked recursive lock (Python's `RLock`).
 * @return 0; `-EINVAL` for NULL @p ret; `-ENOMEM`.
 */
MP_EXPORT int mp_rlock_new(mp_rlock **ret);

/**
 * @brief Acquire the RLock; the owner acquiring again only counts.
 * @return as mp_lock_acquire(), without `-EDEADLK`; `-EOVERFLOW` when the
 *         owner's recursion count would pass `INT_MAX`.
 */
MP_EXPORT int mp_rlock_acquire(mp_rlock *lock, double timeout);

/**
 * @brief Release one level of the RLock; the last level unlocks it.
 * @return 0; `-EPERM` when the calling thread does not hold it; `-EINVAL`.
 */
MP_EXPORT int mp_rlock_release(mp_rlock *lock);

/** @brief Free an RLock; as mp_lock_free(). */
MP_EXPORT int mp_rlock_free(mp_rlock *lock);

/* ------------------------------------------------------------- Semaphore */

/** A counting semaphore (Python's `Semaphore` and `BoundedSemaphore`). */
typedef struct mp_semaphore mp_semaphore;

/**
 * @brief Create a semaphore with @p value units.
 * @return 0; `-EINVAL` for NULL @p ret or @p value > `INT_MAX`; `-ENOMEM`.
 */
MP_EXPORT int mp_semaphore_new(unsigned value, mp_semaphore **ret);

/**
 * @brief Create a bounded semaphore: releasing beyond @p value is an error.
 * @return as mp_semaphore_new().
 */
MP_EXPORT int mp_bounded_semaphore_new(unsigned value, mp_semaphore **ret);

/**
 * @brief Take one unit, waiting at most @p timeout seconds for one.
 * @return 0; `-ETIMEDOUT`; `-EINVAL` for NULL or a NaN timeout.
 * Waiters are woken one per released unit; no order among them is promised.
 */
MP_EXPORT int mp_semaphore_acquire(mp_semaphore *sem, double timeout);

/**
 * @brief Give one unit back (anyone may release, as in Python).
 * @return 0; `-EOVERFLOW` for a bounded semaphore already at its initial
 *         value, or any semaphore at `INT_MAX` (nothing changes); `-EINVAL`.
 */
MP_EXPORT int mp_semaphore_release(mp_semaphore *sem);

/**
 * @brief The number of units available now (a snapshot).
 * @return the value (>= 0) or `-EINVAL`.
 */
MP_EXPORT int mp_semaphore_get_value(mp_semaphore *sem);

/** @brief Free a semaphore. @return 0; 0 for NULL; `-EINVAL` for a freed handle. */
MP_EXPORT int mp_semaphore_free(mp_semaphore *sem);

/* ----------------------------------------------------------------- Event */

/** A flag processes can wait on (Python's `Event`). */
typedef struct mp_event mp_event;

/** @brief Create a cleared Event. @return 0; `-EINVAL`; `-ENOMEM`. */
MP_EXPORT int mp_event_new(mp_event **ret);

/**
 * @brief Set the flag and wake every waiter.
 * @return 0; `-EINVAL` for NULL. Never blocks.
 */
MP_EXPORT int mp_event_set(mp_event *ev);

/** @brief Clear the flag. @return 0; `-EINVAL`. */
MP_EXPORT int mp_event_clear(mp_event *ev);

/** @brief Whether the flag is set. @return 1, 0, or `-EINVAL`. */
MP_EXPORT int mp_event_is_set(mp_event *ev);

/**
 * @brief Wait until the flag is set, at most @p timeout seconds.
 * @return 0 when the flag is set (at once if already set); `-ETIMEDOUT`
 *         (Python's `wait()` returning False); `-EINVAL`.
 * A set followed at once by a clear still wakes the waiters asleep at the set.
 */
MP_EXPORT int mp_event_wait(mp_event *ev, double timeout);

/** @brief Free an Event. @return 0; 0 for NULL; `-EINVAL` for a freed handle. */
MP_EXPORT int mp_event_free(mp_event *ev);

/* ------------------------------------------------------------- Condition */

/** A condition variable over a Lock or RLock (Python's `Condition`). */
typedef struct mp_condition mp_condition;

/**
 * @brief Create a Condition over @p lock, or over an RLock of its own.
 * @param lock a Lock or RLock the caller keeps alive longer than the
 *             Condition, or NULL for a new RLock owned by the Condition.
 * @return 0; `-EINVAL` for NULL @p ret or a freed @p lock; `-ENOMEM`.
 */
MP_EXPORT int mp_condition_new(mp_lock *lock, mp_condition **ret);

/** @brief Acquire the Condition's lock; as mp_lock_acquire() on it. */
MP_EXPORT int mp_condition_acquire(mp_condition *cond, double timeout);

/** @brief Release the Condition's lock; as mp_lock_release() on it. */
MP_EXPORT int mp_condition_release(mp_condition *cond);

/**
 * @brief The Condition's lock.
 * @return 0 and the lock in @p ret; `-EINVAL` for NULL.
 */
MP_EXPORT int mp_condition_get_lock(mp_condition *cond, mp_lock **ret);

/**
 * @brief Release the lock, wait for a notify, re-acquire the lock.
 *
 * The lock is released completely (all RLock levels) and restored as it was,
 * whether the wait ends by notify or by timeout, as in Python.
 * @return 0 when notified; `-ETIMEDOUT` when @p timeout passed first (the lock
 *         is held again either way); `-EOWNERDEAD` when notified or timed out
 *         and the lock was re-acquired from a holder that died; `-EPERM` when
 *         the calling thread does not hold the lock (nothing waits);
 *         `-EINVAL`.
 */
MP_EXPORT int mp_condition_wait(mp_condition *cond, double timeout);

/**
 * @brief Wait until @p predicate(@p arg) returns non-zero.
 *
 * Checks the predicate first, then waits for notifies, checking after each,
 * all within one deadline; the lock must be held and is held on return.
 * @return 0 when the predicate became true; `-ETIMEDOUT` when it is still
 *         false at the deadline; `-EOWNERDEAD` when the lock was re-acquired
 *         from a holder that died (held; the predicate is not checked again);
 *         `-EPERM`; `-EINVAL` for NULL arguments.
 */
MP_EXPORT int mp_condition_wait_for(mp_condition *cond, int (*predicate)(void *arg), void *arg,
                                    double timeout);

/**
 * @brief Wake up to @p n threads waiting on the Condition.
 *
 * Only waiters already waiting are woken: a notify with no waiter is not
 * remembered. The caller must hold the lock.
 * @return 0; `-EPERM` when the calling thread does not hold the lock;
 *         `-EINVAL` for NULL or @p n < 0.
 */
MP_EXPORT int mp_condition_notify(mp_condition *cond, int n);

/** @brief Wake every waiter; as mp_condition_notify() with all of them. */
MP_EXPORT int mp_condition_notify_all(mp_condition *cond);

/**
 * @brief Free a Condition (and its own RLock, if it made one).
 * @return 0; 0 for NULL; `-EBUSY` when threads are waiting on it, or when its
 *         own RLock is held (nothing is freed then); `-EINVAL` for a freed
 *         handle.
 * A waiter killed while waiting stays counted: it may cause one spurious
 * wake-up in a later waiter, and this call reports `-EBUSY` from then on.
 */
MP_EXPORT int mp_condition_free(mp_condition *cond);

/* --------------------------------------------------------------- Barrier */

/** A barrier for a fixed number of parties (Python's `Barrier`). */
typedef struct mp_barrier mp_barrier;

/**
 * The action a Barrier runs once per cycle, in the last party to arrive,
 * before any party is released. A negative return breaks the barrier: the
 * party that ran it gets that code, the others `-ECANCELED`.
 */
typedef int (*mp_barrier_action)(void *arg);

/** For mp_barrier_wait(): use the barrier's default timeout (Python's
 *  `wait(None)`, the one exception to the rule that a negative timeout is 0:
 *  minus infinity, which no arithmetic on finite times reaches). */
#define MP_BARRIER_DEFAULT (-(double)INFINITY)

/**
 * @brief Create a Barrier for @p parties parties.
 * @param action NULL or run once per cycle (see mp_barrier_action); @p arg must
 *               be valid in whichever process arrives last (for instance in
 *               the family heap).
 * @param timeout the default timeout of mp_barrier_wait(), used when a wait is
 *               given `MP_BARRIER_DEFAULT`; `MP_FOREVER` for none (Python's
 *               `timeout=None`); a negative one is 0.
 * @return 0; `-EINVAL` for @p parties of 0 or above `INT_MAX`, a NaN timeout,
 *         NULL @p ret; `-ENOMEM`.
 */
MP_EXPORT int mp_barrier_new(unsigned parties, mp_barrier_action action, void *arg, double timeout,
                             mp_barrier **ret);

/**
 * @brief Wait until all parties have called wait.
 * @param timeout seconds (`MP_FOREVER` for none, a negative value is 0), or
 *               `MP_BARRIER_DEFAULT` for the barrier's default given to
 *               mp_barrier_new(), as Python's `wait(None)`.
 * @return the party's index in arrival order, 0 for the first to arrive up to
 *         parties-1 for the last, distinct within a cycle; `-ECANCELED` when
 *         the barrier is or becomes broken: aborted, reset while waiting, a
 *         party's timeout expired, or the action failed. Every party of a broken
 *         cycle gets `-ECANCELED`, the timed-out one included (Python's
 *         `BrokenBarrierError`), except the one whose action failed, which gets
 *         the action's code. `-EINVAL` for NULL or a NaN timeout.
 * A party that dies while waiting is not detected: the others wait until their
 * timeout breaks the barrier. A process killed inside a barrier call's short
 * critical section breaks the barrier (mp_barrier_reset() repairs it). A party
 * kept from running (stopped) while its cycle and 64 more cycles end gets
 * `-ECANCELED`, as its cycle's outcome is no longer known.
 */
MP_EXPORT int mp_barrier_wait(mp_barrier *barrier, double timeout);

/**
 * @brief Break the barrier: current and future waiters get `-ECANCELED`
 *        until mp_barrier_reset(). @return 0; `-EINVAL`.
 */
MP_EXPORT int mp_barrier_abort(mp_barrier *barrier);

/**
 * @brief Return the barrier to its empty, unbroken state; parties waiting now
 *        get `-ECANCELED`. @return 0; `-EINVAL`.
 */
MP_EXPORT int mp_barrier_reset(mp_barrier *barrier);

/** @brief Whether the barrier is broken. @return 1, 0 or `-EINVAL`. */
MP_EXPORT int mp_barrier_broken(mp_barrier *barrier);

/** @brief How many parties are waiting now. @return the count or `-EINVAL`. */
MP_EXPORT int mp_barrier_n_waiting(mp_barrier *barrier);

/** @brief The number of parties. @return it, or `-EINVAL`. */
MP_EXPORT int mp_barrier_parties(mp_barrier *barrier);

/**
 * @brief Free a Barrier.
 * @return 0; 0 for NULL; `-EBUSY` while parties wait or the action runs;
 *         `-EINVAL` for a freed handle.
 */
MP_EXPORT int mp_barrier_free(mp_barrier *barrier);

#ifdef __cplusplus
}
#endif

#endif /* MP_SYNC_H */
