/* SPDX-License-Identifier: MIT */
/*
 * Lock and RLock: owned locks on glibc's robust process-shared mutexes.
 *
 * glibc owns each thread's kernel robust list, so the robust pthread mutex is
 * the one safe way to learn that a holder died: the kernel marks the futex
 * word OWNER_DIED when it walks a dying thread's list, and the next locker gets
 * EOWNERDEAD. libmp then marks the mutex consistent at once, so the lock stays
 * usable, and reports -EOWNERDEAD to the caller who now holds it.
 *
 * struct mp_lock, shared by every process of the family:
 *   tag        written at creation and at free.
 *   mutex      the robust mutex; its futex word is the lock's state
 *              (0 free, holder's tid, plus waiter / owner-died bits).
 *   owner      tid of the holder, 0 when free. Written only by the holder
 *              (after locking, before unlocking); read by other threads only to
 *              compare with their own tid, which a stale value never equals.
 *   count      recursion depth, read and written only by the holder.
 *   recursive  constant.
 * Crash: a holder killed at any step leaves the mutex OWNER_DIED (kernel), and
 * `owner`/`count` stale; the next acquirer overwrites both. A thread killed
 * while waiting leaves nothing behind.
 */
#include <errno.h>
#include <limits.h>
#include <pthread.h>

#include "internal.h"

struct mp_lock {
  mp__tag tag;
  uint32_t recursive;
  _Atomic int32_t owner;
  int32_t count;
  pthread_mutex_t mutex;
};

int mp__robust_mutex_init(void *mutex, bool recursive) {
  pthread_mutexattr_t a;
  int r = pthread_mutexattr_init(&a);
  if (r)
    return -r;
  r = pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
  if (!r)
    r = pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
  if (!r)
    r = pthread_mutexattr_settype(&a, recursive ? PTHREAD_MUTEX_RECURSIVE : PTHREAD_MUTEX_NORMAL);
  if (!r)
    r = pthread_mutex_init(mutex, &a);
  pthread_mutexattr_destroy(&a);
  return -r;
}

static int lock_new(bool recursive, mp_lock **ret) {
  if (!ret)
    return -EINVAL;
  mp_lock *l = mp__object_new(sizeof *l, MP__TAG_LOCK);
  if (!l)
    return -ENOMEM;
  l->recursive = recursive;
  /* The mutex itself never recurses: recursion is counted in `count`. */
  int r = mp__robust_mutex_init(&l->mutex, false);
  if (r < 0) {
    mp__object_free(l);
    return r;
  }
  *ret = l;
  return 0;
}

/* Lock the mutex itself within the deadline. Returns 0, -EOWNERDEAD (held,
 * made consistent), -ETIMEDOUT or another negative errno. */
static int mutex_lock(pthread_mutex_t *m, const mp__deadline *d) {
  int r;
  if (d->forever) {
    r = pthread_mutex_lock(m);
  } else {
    r = pthread_mutex_trylock(m);
    if (r == EBUSY && !d->nowait) {
#ifdef __GLIBC__
      /* A short spin on the futex word first: the holder usually leaves soon,
       * and waking a sleeper on another CPU costs far more than the spin. */
      for (int i = 0; i < MP__SPIN_LIMIT && r == EBUSY; i++) {
        mp__cpu_relax();
        if (__atomic_load_n(&m->__data.__lock, __ATOMIC_RELAXED) == 0)
          r = pthread_mutex_trylock(m);
      }
#endif
      if (r == EBUSY)
        r = pthread_mutex_clocklock(m, CLOCK_MONOTONIC, &d->at);
    }
    if (r == EBUSY)
      r = ETIMEDOUT;
  }
  if (MP__UNLIKELY(r == EOWNERDEAD)) {
    pthread_mutex_consistent(m);
    return -EOWNERDEAD;
  }
  return -r;
}

int mp__lock_acquire(mp_lock *l, const mp__deadline *d) {
  pid_t me = mp__tid();
  if (atomic_load_explicit(&l->owner, memory_order_relaxed) == me) {
    if (!l->recursive)
      return -EDEADLK;
    if (l->count == INT_MAX)
      return -EOVERFLOW;
    l->count++;
    return 0;
  }
  int r = mutex_lock(&l->mutex, d);
  if (r < 0 && r != -EOWNERDEAD)
    return r;
  /* relaxed: only the holder writes owner; the mutex orders the rest */
  atomic_store_explicit(&l->owner, me, memory_order_relaxed);
  l->count = 1;
  return r;
}

int mp__lock_release(mp_lock *l) {
  if (atomic_load_explicit(&l->owner, memory_order_relaxed) != mp__tid())
    return -EPERM;
  if (--l->count > 0)
    return 0;
  atomic_store_explicit(&l->owner, 0, memory_order_relaxed);
  int r = pthread_mutex_unlock(&l->mutex);
  return -r;
}

bool mp__lock_is_mine(mp_lock *l) {
  return atomic_load_explicit(&l->owner, memory_order_relaxed) == mp__tid();
}

int mp__lock_release_all(mp_lock *l) {
  if (!mp__lock_is_mine(l))
    return -EPERM;
  int count = l->count;
  l->count = 0;
  atomic_store_explicit(&l->owner, 0, memory_order_relaxed);
  int r = pthread_mutex_unlock(&l->mutex);
  return r ? -r : count;
}

int mp__lock_restore(mp_lock *l, int count, const mp__deadline *d) {
  int r = mutex_lock(&l->mutex, d);
  if (r < 0 && r != -EOWNERDEAD)
    return r;
  atomic_store_explicit(&l->owner, mp__tid(), memory_order_relaxed);
  l->count = count;
  return r;
}

static int acquire(mp_lock *l, double timeout) {
  if (!mp__tag_ok(l, MP__TAG_LOCK))
    return -EINVAL;
  mp__deadline d;
  int r = mp__deadline_init(&d, timeout);
  return r < 0 ? r : mp__lock_acquire(l, &d);
}

static int release(mp_lock *l) {
  return mp__tag_ok(l, MP__TAG_LOCK) ? mp__lock_release(l) : -EINVAL;
}

MP_EXPORT int mp_lock_new(mp_lock **ret) { return lock_new(false, ret); }
MP_EXPORT int mp_rlock_new(mp_rlock **ret) { return lock_new(true, ret); }
MP_EXPORT int mp_lock_acquire(mp_lock *lock, double timeout) { return acquire(lock, timeout); }
MP_EXPORT int mp_rlock_acquire(mp_rlock *lock, double timeout) { return acquire(lock, timeout); }
MP_EXPORT int mp_lock_release(mp_lock *lock) { return release(lock); }
MP_EXPORT int mp_rlock_release(mp_rlock *lock) { return release(lock); }

MP_EXPORT int mp_lock_locked(mp_lock *lock) {
  if (!mp__tag_ok(lock, MP__TAG_LOCK))
    return -EINVAL;
  return atomic_load_explicit(&lock->owner, memory_order_relaxed) != 0;
}

MP_EXPORT int mp_lock_free(mp_lock *lock) {
  if (!lock)
    return 0;
  if (!mp__tag_ok(lock, MP__TAG_LOCK))
    return -EINVAL;
  /* Held by the caller, or by a live holder: busy. Held by a holder that died:
   * recover it and free it. */
  if (mp__lock_is_mine(lock))
    return -EBUSY;
  int r = pthread_mutex_trylock(&lock->mutex);
  if (r == EOWNERDEAD)
    pthread_mutex_consistent(&lock->mutex);
  else if (r)
    return -EBUSY;
  pthread_mutex_unlock(&lock->mutex);
  pthread_mutex_destroy(&lock->mutex);
  mp__object_free(lock);
  return 0;
}

MP_EXPORT int mp_rlock_free(mp_rlock *lock) { return mp_lock_free(lock); }
