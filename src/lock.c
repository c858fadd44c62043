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
 *   recursive  constant: 1 for an RLock.
 *   mutex      the robust mutex, error-checking for a Lock, recursive for an
 *              RLock. glibc keeps the whole state inside it: the futex word
 *              (holder's tid plus waiter / owner-died bits), the holder's tid in
 *              __owner and the recursion depth in __count (both written only by
 *              the holder). libmp reads __owner to learn whether the caller holds
 *              the lock, and a Condition saves and restores __count around a
 *              wait: those fields are part of glibc's public pthread_mutex_t
 *              layout, which its ABI freezes.
 * Keeping no state of its own beside the mutex makes a Lock cost one tag check
 * over glibc's robust mutex.
 *
 * What a SIGKILL at each step leaves. A holder killed at any step leaves the
 * mutex OWNER_DIED (the kernel, walking the dead thread's robust list, also
 * wakes one sleeper); the next acquirer gets EOWNERDEAD, and glibc resets
 * __owner and __count for it. A sleeper sleeps at most ROBUST_SLICE_NS at a
 * time, so a wake-up lost inside glibc (see there) costs at most one slice.
 * A thread killed while it sleeps in the mutex leaves at most a
 * FUTEX_WAITERS bit behind: one unneeded wake call at the next unlock.
 *   lock.robust.taken        a sleeper in mp__robust_mutex_lock took the
 *                            mutex, its caller does not know yet: as a
 *                            holder killed.
 *   lock.acquire.ownerdead   the new holder got EOWNERDEAD and has not yet
 *                            marked the mutex consistent: glibc cleared the
 *                            OWNER_DIED bit when it handed it over, the
 *                            kernel sets it again at this death, so the next
 *                            acquirer gets EOWNERDEAD in turn.
 *   lock.acquire.owned       a holder (of a Lock or an RLock, acquired at once
 *                            or after sleeping): as a holder killed.
 *   lock.release_all.counted a Condition waiter set an RLock's depth to 1 to
 *                            release it: as a holder killed.
 *   lock.restore.locked      a Condition waiter re-took the lock and has not
 *                            restored its depth: as a holder killed.
 */
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#endif
#include <pthread.h>
#include <stdio.h>

#include "crash.h"
#include "internal.h"

struct mp_lock {
  mp__tag tag;
  uint32_t recursive;
  pthread_mutex_t mutex;
};

#ifndef __GLIBC__
#error "libmp's locks read glibc's pthread_mutex_t fields"
#endif

static int mutex_init(pthread_mutex_t *mutex, int type) {
  pthread_mutexattr_t a;
  int r = pthread_mutexattr_init(&a);
  if (r)
    return -r;
  r = pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
  if (!r)
    r = pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
  if (!r)
    r = pthread_mutexattr_settype(&a, type);
  if (!r)
    r = pthread_mutex_init(mutex, &a);
  pthread_mutexattr_destroy(&a);
  return -r;
}

int mp__robust_mutex_init(void *mutex, bool recursive) {
  return mutex_init(mutex, recursive ? PTHREAD_MUTEX_RECURSIVE : PTHREAD_MUTEX_NORMAL);
}

/* pthread_mutex_clocklock(), told to ThreadSanitizer, which does not
 * intercept it (it does intercept the trylock and unlock around it). */
static int clocklock(pthread_mutex_t *m, const struct timespec *ts) {
#if defined(__SANITIZE_THREAD__)
  __tsan_mutex_pre_lock(m, __tsan_mutex_try_lock);
  int r = pthread_mutex_clocklock(m, CLOCK_MONOTONIC, ts);
  bool got = r == 0 || r == EOWNERDEAD;
  __tsan_mutex_post_lock(m, __tsan_mutex_try_lock | (got ? 0 : __tsan_mutex_try_lock_failed), 0);
  return r;
#else
  return pthread_mutex_clocklock(m, CLOCK_MONOTONIC, ts);
#endif
}

/* The longest one sleep inside a robust mutex lasts.
 *
 * Why sleeps are sliced: glibc's robust unlock swaps the futex word to 0 (its
 * FUTEX_WAITERS bit with it) and then wakes one sleeper. If the unlocker is
 * killed between the two steps, or the sleeper it woke is killed before it
 * takes the mutex, the kernel wakes the next sleeper on the dead thread's
 * behalf only while the word is still 0. A third thread that takes the free
 * mutex in that window (a spinner, or any new caller) owns it with no
 * FUTEX_WAITERS bit, so its unlock wakes nobody: the remaining sleepers stay
 * asleep until some later caller has to sleep too, forever if none does.
 * A sleeper that gives up after a slice and tries again (setting the bit
 * anew) bounds that loss to one slice. */
#define ROBUST_SLICE_NS ((int64_t)100 * 1000 * 1000)

int mp__robust_mutex_lock(void *mutex, const mp__deadline *d) {
  pthread_mutex_t *m = mutex;
  int r = pthread_mutex_trylock(m);
  if (r == EBUSY && d->nowait)
    return -ETIMEDOUT;
  while (r == EBUSY || r == ETIMEDOUT) {
    int64_t at = mp__now_ns() + ROBUST_SLICE_NS;
    bool last = false;
    if (!d->forever) {
      int64_t end = (int64_t)d->at.tv_sec * 1000000000 + d->at.tv_nsec;
      if (end <= at) {
        at = end;
        last = true;
      }
    }
    struct timespec ts = {.tv_sec = (time_t)(at / 1000000000), .tv_nsec = (long)(at % 1000000000)};
    r = clocklock(m, &ts);
    if (r == 0 || r == EOWNERDEAD)
      MP__CRASH(LOCK_ROBUST_TAKEN);
    if (r == ETIMEDOUT && last)
      return -ETIMEDOUT;
  }
  return -r;
}

int mp__robust_mutex_take(void *mutex, const mp__deadline *d, void (*repair)(void *), void *arg) {
  int r = mp__robust_mutex_lock(mutex, d);
  if (MP__UNLIKELY(r == -EOWNERDEAD)) {
    if (repair)
      repair(arg);
    pthread_mutex_consistent(mutex);
  }
  return r;
}

static int lock_new(bool recursive, mp_lock **ret) {
  if (!ret)
    return -EINVAL;
  mp_lock *l = mp__object_new(sizeof *l, MP__TAG_LOCK);
  if (!l)
    return -ENOMEM;
  l->recursive = recursive;
  int r = mutex_init(&l->mutex, recursive ? PTHREAD_MUTEX_RECURSIVE : PTHREAD_MUTEX_ERRORCHECK);
  if (r < 0) {
    mp__object_free(l);
    return r;
  }
  *ret = l;
  return 0;
}

static inline bool is_mine(mp_lock *l) {
  /* relaxed: only the holder writes __owner; a stale value is never our tid */
  return __atomic_load_n(&l->mutex.__data.__owner, __ATOMIC_RELAXED) == mp__tid();
}

/* Spin a little before sleeping, as glibc's adaptive mutex does (and glibc's
 * robust mutexes do not): a contended lock whose holder is about to release
 * it is then taken without the holder paying a FUTEX_WAKE and the waiter a
 * sleep and a wake-up on another CPU. The looks are spaced (spin.h,
 * MP__SPIN_BACKOFF): a look close behind the last one takes the cache line
 * from a holder that would otherwise release and re-take the lock locally.
 * Only reads of the futex word, and a trylock once it shows no holder: a free
 * word, or an OWNER_DIED one, which the trylock turns into EOWNERDEAD as
 * before, so owner-death recovery is untouched. Returns the last trylock's
 * result (EBUSY when it spun out). */
static int spin_then_try(pthread_mutex_t *m) {
  int r = EBUSY;
  mp__backoff b = {0, 0};
  while (r == EBUSY && mp__backoff_more(&b)) {
    /* relaxed: a hint; the trylock's own atomic operation decides */
    unsigned w = __atomic_load_n(&m->__data.__lock, __ATOMIC_RELAXED);
    if ((w & FUTEX_TID_MASK) == 0)
      r = pthread_mutex_trylock(m);
  }
  return r;
}

/* Lock the mutex within the deadline, after a failed first attempt that
 * returned r. Returns 0, -EOWNERDEAD (held, made consistent), -ETIMEDOUT,
 * -EDEADLK, -EOVERFLOW. The sleep goes through mp__robust_mutex_lock(), whose
 * slices bound the cost of a wake-up lost to a killed unlocker (see there). */
static int mutex_lock_slow(pthread_mutex_t *m, const mp__deadline *d, int r) {
  if (r == EBUSY && !d->nowait)
    r = spin_then_try(m);
  if (r == EBUSY)
    r = d->nowait ? ETIMEDOUT : -mp__robust_mutex_lock(m, d);
  switch (r) {
  case 0: return 0;
  case EBUSY:
  case ETIMEDOUT: return -ETIMEDOUT;
  case EAGAIN: return -EOVERFLOW; /* recursion count exhausted */
  case EOWNERDEAD:
    MP__CRASH(LOCK_ACQUIRE_OWNERDEAD);
    pthread_mutex_consistent(m);
    MP__LOG(MP_LOG_INFO, "lock: its holder died holding it; this process took it over "
                         "(-EOWNERDEAD: the data it guards may be half-updated)");
    return -EOWNERDEAD;
  default: return -r;
  }
}

static inline int mutex_lock(mp_lock *l, const mp__deadline *d) {
  int r = pthread_mutex_trylock(&l->mutex);
  if (MP__LIKELY(r == 0))
    return 0;
  if (r == EBUSY && !l->recursive && is_mine(l))
    return -EDEADLK; /* a Lock's holder asking again: say so, never block */
  return mutex_lock_slow(&l->mutex, d, r);
}

int mp__lock_acquire(mp_lock *l, const mp__deadline *d) { return mutex_lock(l, d); }

int mp__lock_release(mp_lock *l) { return -pthread_mutex_unlock(&l->mutex); }

bool mp__lock_is_mine(mp_lock *l) { return is_mine(l); }

int mp__lock_release_all(mp_lock *l) {
  if (!is_mine(l))
    return -EPERM;
  int count = l->recursive ? (int)l->mutex.__data.__count : 1;
  l->mutex.__data.__count = l->recursive ? 1 : l->mutex.__data.__count;
  MP__CRASH(LOCK_RELEASE_ALL_COUNTED);
  int r = pthread_mutex_unlock(&l->mutex);
  return r ? -r : count;
}

int mp__lock_restore(mp_lock *l, int count, const mp__deadline *d) {
  int r = mutex_lock(l, d);
  if (r < 0 && r != -EOWNERDEAD)
    return r;
  MP__CRASH(LOCK_RESTORE_LOCKED);
  if (l->recursive)
    l->mutex.__data.__count = (unsigned)count;
  return r;
}

MP_EXPORT int mp_lock_new(mp_lock **ret) { return lock_new(false, ret); }
MP_EXPORT int mp_rlock_new(mp_rlock **ret) { return lock_new(true, ret); }

MP_EXPORT int mp_lock_acquire(mp_lock *lock, double timeout) {
  if (!mp__tag_ok(lock, MP__TAG_LOCK))
    return -EINVAL;
  mp__deadline d;
  int r = mp__deadline_init(&d, timeout);
  if (r < 0)
    return r;
  r = mutex_lock(lock, &d);
  if (r == 0 || r == -EOWNERDEAD)
    MP__CRASH(LOCK_ACQUIRE_OWNED);
  return r;
}

MP_EXPORT int mp_rlock_acquire(mp_rlock *lock, double timeout) {
  return mp_lock_acquire(lock, timeout);
}

MP_EXPORT int mp_lock_release(mp_lock *lock) {
  if (!mp__tag_ok(lock, MP__TAG_LOCK))
    return -EINVAL;
  return -pthread_mutex_unlock(&lock->mutex); /* EPERM when not the holder */
}

MP_EXPORT int mp_rlock_release(mp_rlock *lock) { return mp_lock_release(lock); }

MP_EXPORT int mp_lock_locked(mp_lock *lock) {
  if (!mp__tag_ok(lock, MP__TAG_LOCK))
    return -EINVAL;
  /* A holder's tid in the futex word: held. A holder that died leaves the
   * word OWNER_DIED (the kernel clears its tid): still held, as Python says,
   * until the next acquirer takes it over with -EOWNERDEAD. */
  unsigned w = __atomic_load_n(&lock->mutex.__data.__lock, __ATOMIC_RELAXED);
  return (w & (FUTEX_TID_MASK | FUTEX_OWNER_DIED)) != 0;
}

/* The process (thread group) of thread `tid`, from /proc; 0 when it is gone. */
static pid_t tgid_of(pid_t tid) {
  char path[64], buf[512];
  snprintf(path, sizeof path, "/proc/%d/status", (int)tid);
  FILE *f = fopen(path, "re");
  if (!f)
    return 0;
  pid_t tgid = 0;
  while (fgets(buf, sizeof buf, f))
    if (sscanf(buf, "Tgid: %d", &tgid) == 1)
      break;
  fclose(f);
  return tgid;
}

MP_EXPORT int mp_lock_holder(mp_lock *lock, pid_t *ret) {
  if (!mp__tag_ok(lock, MP__TAG_LOCK) || !ret)
    return -EINVAL;
  unsigned w = __atomic_load_n(&lock->mutex.__data.__lock, __ATOMIC_RELAXED);
  pid_t tid = (pid_t)(w & FUTEX_TID_MASK);
  if (!tid)
    return (w & FUTEX_OWNER_DIED) ? -EOWNERDEAD : 0;
  pid_t pid = tid == mp__tid() ? mp__pid() : tgid_of(tid);
  if (!pid) /* the holder ended since the word was read: the kernel marks it */
    return -EOWNERDEAD;
  *ret = pid;
  return 1;
}

MP_EXPORT int mp_lock_free(mp_lock *lock) {
  if (!lock)
    return 0;
  if (!mp__tag_ok(lock, MP__TAG_LOCK))
    return -EINVAL;
  /* Held by the caller, or by a live holder: busy. Held by a holder that died:
   * recover it and free it. */
  if (is_mine(lock))
    return -EBUSY;
  int r = mp__robust_mutex_try(&lock->mutex, NULL, NULL);
  if (r && r != -EOWNERDEAD)
    return -EBUSY;
  pthread_mutex_unlock(&lock->mutex);
  pthread_mutex_destroy(&lock->mutex);
  mp__object_free(lock);
  return 0;
}

MP_EXPORT int mp_rlock_free(mp_rlock *lock) { return mp_lock_free(lock); }
