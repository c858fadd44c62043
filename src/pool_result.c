/* SPDX-License-Identifier: MIT */
/*
 * Pool results (mp_async_result): waiting for one, and reading its status,
 * data, progress and the death that failed it. A result's `done` word and
 * who finishes it are in the protocol (pool_internal.h, "a result's `done`
 * word"); the finishing side is mp__pool_result_mark_done() there. No crash
 * points: everything here is in the creating process.
 */
#include <errno.h>
#include <pthread.h>

#include "pool_internal.h"

static int check_result(struct mp_async_result *r) {
  if (!r || r->magic != RESULT_MAGIC)
    return -EINVAL;
  return r->owner == mp__pid() ? 0 : -ECHILD;
}

/* Spin up to MP__SPIN_NS for r to be done. Returns 1 when it is. */
static int spin_until_done(struct mp_async_result *r) {
  mp__spin spin = MP__SPIN_INIT;
  for (;;) {
    if (mp__pool_result_is_done(r))
      return 1;
    if (!mp__spin_more(&spin))
      return 0;
  }
}

int mp__pool_result_wait(struct mp_async_result *r, double timeout) {
  mp__deadline d;
  int e = mp__deadline_init(&d, timeout);
  if (e < 0)
    return e;
  if (mp__pool_result_is_done(r))
    return 0;
  if (d.nowait)
    return -ETIMEDOUT;
  if (pthread_equal(pthread_self(), r->handler))
    return -EDEADLK; /* from a callback: the handler would wait for itself */
  /* A result due within microseconds costs no sleep and no wake-up. */
  if (spin_until_done(r))
    return 0;
  for (;;) {
    uint32_t v = atomic_load(&r->done);
    if (v == RES_DONE)
      return 0;
    if (v == RES_PENDING && !atomic_compare_exchange_strong(&r->done, &v, RES_SLEEPER))
      continue; /* finished meanwhile (or another waiter announced itself) */
    int w = mp__futex_wait(&r->done, RES_SLEEPER, &d);
    if (w < 0 && !mp__pool_result_is_done(r))
      return w; /* -ETIMEDOUT, or -EFAULT/-EINVAL for a corrupt word */
  }
}

MP_EXPORT int mp_async_result_get(mp_async_result *res, double timeout) {
  int r = check_result(res);
  if (r < 0)
    return r;
  r = mp__pool_result_wait(res, timeout);
  return r < 0 ? r : res->status;
}

MP_EXPORT int mp_async_result_wait(mp_async_result *res, double timeout) {
  int r = check_result(res);
  return r < 0 ? r : mp__pool_result_wait(res, timeout);
}

MP_EXPORT int mp_async_result_ready(mp_async_result *res) {
  int r = check_result(res);
  return r < 0 ? r : mp__pool_result_is_done(res);
}

MP_EXPORT int mp_async_result_successful(mp_async_result *res) {
  int r = check_result(res);
  if (r < 0)
    return r;
  if (!mp__pool_result_is_done(res))
    return -EAGAIN;
  return res->status >= 0;
}

MP_EXPORT int mp_async_result_progress(mp_async_result *res, size_t *done, size_t *total) {
  int r = check_result(res);
  if (r < 0)
    return r;
  if (!done || !total)
    return -EINVAL;
  if (res->kind != R_MAP) { /* an apply: one item, done when ready */
    *total = 1;
    *done = (size_t)mp__pool_result_is_done(res);
    return 0;
  }
  *total = res->items_total;
  *done = atomic_load_explicit(&res->items_done, memory_order_relaxed); /* a snapshot */
  return 0;
}

MP_EXPORT int mp_async_result_death(mp_async_result *res, int *exitcode) {
  int r = check_result(res);
  if (r < 0)
    return r;
  if (!exitcode)
    return -EINVAL;
  if (!mp__pool_result_is_done(res))
    return -EAGAIN;
  if (!res->death)
    return 0;
  *exitcode = res->death;
  return 1;
}

MP_EXPORT int mp_async_result_data(mp_async_result *res, const void **data, size_t *len) {
  int r = check_result(res);
  if (r < 0)
    return r;
  if (!data)
    return -EINVAL;
  /* Inside its own callback the data is already final. */
  if (!mp__pool_result_is_done(res) && !pthread_equal(pthread_self(), res->handler))
    return -EAGAIN;
  *data = res->data;
  if (len)
    *len = res->len;
  return 0;
}

MP_EXPORT int mp_async_result_free(mp_async_result *res) {
  if (!res)
    return 0;
  int r = check_result(res);
  if (r < 0)
    return r;
  mp__pool_result_unref(res);
  return 0;
}
