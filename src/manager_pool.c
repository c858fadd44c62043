/* SPDX-License-Identifier: MIT */
/*
 * A managed Pool (kind MP__K_POOL): a Pool the Manager's server owns, whose
 * tasks run a function registered by name (mp_manager_register_function,
 * manager_types.c), since a client cannot send code.
 *
 * Map of this file:
 *   in a worker: the apply task and the map chunk, results encoded
 *   in the server: waiting for results with the server mutex let go,
 *     apply, map (Python's chunk size), and the Pool's methods
 * The pool's own protocol (task entries, crash points) is pool_internal.h's; nothing
 * here is shared memory of its own, and no crash points are marked here.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "manager_internal.h"
#include "mp/pool.h"
#include "wire.h"

/* Put a task's result (nil for NULL) in its output, encoded. */
static int pool_put(mp_pool_out *out, const mp_obj *v) {
  mp_obj *nil = v ? NULL : mp_obj_nil();
  void *buf;
  size_t len;
  int r = (v || nil) ? mp_obj_encode(v ? v : nil, &buf, &len) : -ENOMEM;
  mp_obj_free(nil);
  if (r < 0)
    return r;
  r = mp_pool_out_set(out, buf, len);
  free(buf);
  return r;
}

/* In a worker: an apply task. arg is the encoded argument list; ctx the
 * struct pool_func (valid: the worker is a fork of the server). */
static int pool_task_apply(const void *arg, size_t len, mp_pool_out *out, void *ctx) {
  const struct pool_func *f = ctx;
  mp_obj *args, *res = NULL;
  int r = mp_obj_decode(arg, len, &args);
  if (r < 0)
    return r;
  r = f->fn(args, &res, f->ctx);
  mp_obj_free(args);
  if (r >= 0) {
    int w = pool_put(out, res);
    r = w < 0 ? w : r;
  }
  mp_obj_free(res);
  return r;
}

/* In a worker: a map chunk. arg is the encoded list of its items; each
 * item is called as fn([item]) (Python's map calls f(item)); the result is
 * the list of their results. The first failure fails the chunk. */
static int pool_task_chunk(const void *arg, size_t len, mp_pool_out *out, void *ctx) {
  const struct pool_func *f = ctx;
  mp_obj *items, *results = mp_obj_list();
  int r = results ? mp_obj_decode(arg, len, &items) : -ENOMEM;
  if (r < 0) {
    mp_obj_free(results);
    return r;
  }
  for (size_t i = 0; r >= 0 && i < (size_t)mp_obj_len(items); i++) {
    mp_obj *one = mp_obj_listv(1, mp_obj_copy(mp__obj_list_at(items, i))), *res = NULL;
    r = one ? f->fn(one, &res, f->ctx) : -ENOMEM;
    mp_obj_free(one);
    if (r >= 0)
      r = mp_obj_list_append(results, res ? res : mp_obj_nil());
    else
      mp_obj_free(res);
  }
  if (r >= 0)
    r = pool_put(out, results);
  mp_obj_free(items);
  mp_obj_free(results);
  return r < 0 ? r : 0;
}

/* How often a request waiting on its pool tasks looks at its client and at
 * a shutdown. */
#define POOL_WAIT_SLICE 0.2

/* Wait until the n results are ready, with s->mu let go (the tasks run in
 * other processes; other clients go on meanwhile; the caller's busy count
 * keeps the pool). 0; -ETIMEDOUT at the deadline; -EPIPE when the client
 * is gone or the server stops: the tasks still run, their results are
 * dropped by the caller's mp_async_result_free(). */
static int pool_wait(struct server *s, mp_async_result **ars, size_t n, const mp__deadline *d) {
  pthread_mutex_unlock(&s->mu);
  int r = 0;
  for (size_t i = 0; i < n && r == 0;) {
    double left = mp__deadline_left(d);
    (void)mp_async_result_wait(ars[i], left < POOL_WAIT_SLICE ? left : POOL_WAIT_SLICE);
    if (mp_async_result_ready(ars[i]) == 1) {
      i++;
      continue;
    }
    pthread_mutex_lock(&s->mu);
    bool stopping = s->stopping;
    pthread_mutex_unlock(&s->mu);
    if (stopping || mp__client_gone())
      r = -EPIPE;
    else if (d->nowait || mp__deadline_passed(d))
      r = -ETIMEDOUT;
  }
  pthread_mutex_lock(&s->mu);
  return r;
}

static void pool_free_results(mp_async_result **ars, size_t n) {
  for (size_t i = 0; i < n; i++)
    mp_async_result_free(ars[i]); /* allowed before ready: the pool drops it */
  free(ars);
}

/* The result of a ready task, decoded, in *res (a task without one: nil). */
static int pool_take(mp_async_result *ar, mp_obj **res) {
  const void *data;
  size_t len;
  int r = mp_async_result_data(ar, &data, &len);
  if (r < 0)
    return r;
  if (!data) {
    *res = mp_obj_nil();
    return *res ? 0 : -ENOMEM;
  }
  return mp_obj_decode(data, len, res);
}

static int pool_apply(struct server *s, mp_pool *pool, const struct pool_func *f,
                      const mp_obj *args, const mp__deadline *d, mp_obj **res) {
  void *buf;
  size_t len;
  int r = mp_obj_encode(args, &buf, &len);
  if (r < 0)
    return r;
  mp_async_result *ar;
  r = mp_pool_apply_async(pool, pool_task_apply, buf, len, (void *)f, NULL, &ar);
  free(buf);
  if (r < 0)
    return r;
  if ((r = pool_wait(s, &ar, 1, d)) == 0 && (r = mp_async_result_get(ar, 0)) >= 0) {
    mp_obj *v;
    int t = pool_take(ar, &v);
    if (t < 0)
      r = t;
    else
      *res = v;
  }
  mp_async_result_free(ar);
  return r;
}

static int pool_map(struct server *s, mp_pool *pool, const struct pool_func *f, const mp_obj *items,
                    int64_t chunksize, const mp__deadline *d, mp_obj **res) {
  size_t n = (size_t)mp_obj_len(items);
  if (chunksize == 0) { /* Python's default: about four chunks a worker */
    int w = mp_pool_worker_pids(pool, NULL, 0);
    size_t per = 4 * (size_t)(w > 0 ? w : 1);
    chunksize = (int64_t)((n + per - 1) / per);
    if (chunksize == 0)
      chunksize = 1;
  }
  size_t cs = (size_t)chunksize, nch = (n + cs - 1) / cs;
  mp_obj *out = mp_obj_list();
  mp_async_result **ars = calloc(nch ? nch : 1, sizeof *ars);
  int r = out && ars ? 0 : -ENOMEM;
  size_t sent = 0;
  for (; r == 0 && sent < nch; sent++) {
    mp_obj *chunk = mp_obj_list();
    r = chunk ? 0 : -ENOMEM;
    for (size_t i = sent * cs; r == 0 && i < n && i < (sent + 1) * cs; i++) {
      mp_obj *c = mp_obj_copy(mp__obj_list_at(items, i));
      r = c ? mp_obj_list_append(chunk, c) : -ENOMEM;
    }
    void *buf = NULL;
    size_t len;
    if (r == 0)
      r = mp_obj_encode(chunk, &buf, &len);
    mp_obj_free(chunk);
    if (r == 0)
      r = mp_pool_apply_async(pool, pool_task_chunk, buf, len, (void *)f, NULL, &ars[sent]);
    free(buf);
    if (r < 0)
      break;
  }
  if (r == 0)
    r = pool_wait(s, ars, nch, d);
  /* the first failing chunk in order is the map's failure (Python raises
   * the first error) */
  for (size_t i = 0; r == 0 && i < nch; i++) {
    mp_obj *part;
    if ((r = mp_async_result_get(ars[i], 0)) < 0 || (r = pool_take(ars[i], &part)) < 0)
      break;
    if (mp_obj_type(part) != MP_OBJ_LIST)
      r = -EBADMSG;
    while (r == 0 && mp_obj_len(part) > 0)
      r = mp_obj_list_append(out, mp__obj_list_take(part, 0));
    mp_obj_free(part);
  }
  if (ars)
    pool_free_results(ars, sent);
  if (r < 0) {
    mp_obj_free(out);
    return r;
  }
  *res = out;
  return 0;
}

/* The methods of a managed Pool. */
int mp__call_pool(struct server *s, struct sobj *o, const char *m, const mp_obj *a,
                  const mp__deadline *d, mp_obj **res) {
  mp_pool *pool = o->self;
  if (MP__IS(m, "close"))
    return mp_pool_close(pool);
  if (MP__IS(m, "terminate"))
    return mp_pool_terminate(pool);
  bool apply = MP__IS(m, "apply");
  if (!apply && !MP__IS(m, "map"))
    return -EOPNOTSUPP;
  const char *name;
  int64_t cs = 0;
  const mp_obj *list = mp__arg(a, 1);
  if (!mp__nargs(a, apply ? 2 : 3) || mp_obj_get_str(mp__arg(a, 0), &name, NULL) < 0 ||
      mp_obj_type(list) != MP_OBJ_LIST || (!apply && (mp__arg_int(a, 2, &cs) < 0 || cs < 0)))
    return -EINVAL;
  const struct pool_func *f = mp__find_func(name);
  if (!f)
    return -ENOENT;
  return apply ? pool_apply(s, pool, f, list, d, res) : pool_map(s, pool, f, list, cs, d, res);
}
