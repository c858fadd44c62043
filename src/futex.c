/* SPDX-License-Identifier: MIT */
/*
 * The one file that talks to the futex syscall.
 *
 * Waits use FUTEX_WAIT_BITSET, whose timeout is an absolute CLOCK_MONOTONIC
 * time: a wait interrupted by a signal resumes against the same deadline, so
 * signals neither end waits early nor stretch them. The words live in shared
 * memory used by several processes, so FUTEX_PRIVATE_FLAG is never used.
 */
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"

_Static_assert(sizeof(_Atomic uint32_t) == sizeof(uint32_t), "futex words are 32 bits");

int mp__futex_wait(_Atomic uint32_t *word, uint32_t expected, const mp__deadline *d) {
  if (d && !d->forever && mp__deadline_passed(d))
    return -ETIMEDOUT;
  const struct timespec *ts = (d && !d->forever) ? &d->at : NULL;
  long r = syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT_BITSET, expected, ts, NULL,
                   FUTEX_BITSET_MATCH_ANY);
  if (r == 0)
    return 0;
  /* EAGAIN: the word already differed; EINTR: a signal. The caller re-checks
   * and waits again. */
  if (errno == EAGAIN || errno == EINTR)
    return 0;
  /* ETIMEDOUT, or EFAULT (word not mapped) and EINVAL (misaligned word, bad
   * deadline), which are persistent: reported as a wake-up, they made the
   * caller's loop spin instead of fail. */
  return -errno;
}

int mp__futex_wake(_Atomic uint32_t *word, int n) {
  long r = syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE, n, NULL, NULL, 0);
  return r < 0 ? 0 : (int)r;
}

int mp__futex_waitv(_Atomic uint32_t *const *words, const uint32_t *expected, unsigned n,
                    const mp__deadline *d) {
#ifdef SYS_futex_waitv
  if (n == 0 || n > MP__FUTEX_WAITV_MAX)
    return -EINVAL;
  if (d && !d->forever && mp__deadline_passed(d))
    return -ETIMEDOUT;
  struct futex_waitv v[MP__FUTEX_WAITV_MAX];
  for (unsigned i = 0; i < n; i++)
    v[i] = (struct futex_waitv){
        .val = expected[i], .uaddr = (uintptr_t)words[i], .flags = FUTEX_32, .__reserved = 0};
  const struct timespec *ts = (d && !d->forever) ? &d->at : NULL;
  long r = syscall(SYS_futex_waitv, v, n, 0, ts, CLOCK_MONOTONIC);
  if (r >= 0)
    return 0;
  switch (errno) {
  case ETIMEDOUT: return -ETIMEDOUT;
  case ENOSYS: return -ENOSYS;
  case EINVAL: return -EINVAL;
  case EFAULT: return -EFAULT;
  case EAGAIN: /* a word already differed */
  case EINTR:  /* a signal: the caller re-checks and waits again */
  default: return 0;
  }
#else
  (void)words;
  (void)expected;
  (void)n;
  (void)d;
  return -ENOSYS;
#endif
}
