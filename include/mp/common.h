/* SPDX-License-Identifier: MIT */
/**
 * @file mp/common.h
 * @brief What every libmp area shares: export macro, error codes, timeouts.
 *
 * Every libmp function returns `int` (or `ssize_t` for lengths): a value
 * `>= 0` on success and a negative errno code on failure. `mp_strerror()`
 * explains any code. errno is never part of the API.
 *
 * Every blocking call takes a timeout in seconds as a `double`, like Python:
 * `MP_FOREVER` (infinity) blocks until the call can complete, `MP_NOWAIT`
 * (0) tries once, and, as in Python, so does any negative timeout: a
 * remaining time computed as `deadline - now` that went negative never
 * blocks. A NaN timeout is `-EINVAL`. A wait that ends unsatisfied returns
 * `-ETIMEDOUT`. Signals never end a wait early: an interrupted wait resumes
 * against the same absolute `CLOCK_MONOTONIC` deadline.
 */
#ifndef MP_COMMON_H
#define MP_COMMON_H

#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(MP_BUILDING_LIBMP) && defined(__GNUC__)
#define MP_EXPORT __attribute__((visibility("default")))
#else
#define MP_EXPORT
#endif

/** Block until the call can complete: infinity, a value no arithmetic on
 *  finite times reaches by accident (Python's `timeout=None`). */
#define MP_FOREVER ((double)INFINITY)
/** Try once and return `-ETIMEDOUT` at once if the call cannot complete. */
#define MP_NOWAIT (0.0)

/**
 * @brief Describe a libmp return code.
 *
 * @param code a value returned by a libmp function.
 * @return a static, never NULL, English string. Codes libmp gives a specific
 *         meaning (see docs/errors.md) are described in libmp's terms, for
 *         example `-EOWNERDEAD` as "previous lock holder died; the lock is held
 *         and usable". Non-negative success values give "success".
 *
 * Thread safety: safe from any thread and any process.
 */
MP_EXPORT const char *mp_strerror(int code);

#ifdef __cplusplus
}
#endif

#endif /* MP_COMMON_H */
