/* SPDX-License-Identifier: MIT */
/*
 * The Manager's built-in types as the server carries them out: the
 * dispatch of a call to a built-in object, the creation of one, and the
 * methods of the waitable types (Queue, JoinableQueue, Lock, RLock,
 * Semaphore, BoundedSemaphore, Condition, Event, Barrier) and of Value and
 * Array. The containers' methods are in manager_containers.c, a Pool's in
 * manager_pool.c.
 *
 * Map of this file:
 *   Queue and JoinableQueue: put, get, task_done, join
 *   the locks and semaphores: acquire and release; Condition's wait/notify
 *   Barrier: cycles, trips, breaks
 *   mp__call_builtin: the dispatch, with Event, Value and Array inline
 *   mp__builtin_init: an object's state from its creation arguments
 * Every method runs under the server mutex; the blocking ones wait with
 * mp__srv_wait() and take nothing for a client that is gone (see "Server
 * state" in manager_internal.h). No crash points: the objects are the
 * server's private memory.
 */
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>

#include "internal.h"
#include "manager_internal.h"
#include "wire.h"

/* ------------------------------------------------ Queue, JoinableQueue */

static int call_queue(struct server *s, struct sobj *o, const char *m, const mp_obj *a,
                      const mp__deadline *d, mp_obj **res) {
  int r;
  if (MP__IS(m, "qsize"))
    return (int)mp_obj_len(o->val);
  if (MP__IS(m, "empty"))
    return mp_obj_len(o->val) == 0;
  if (MP__IS(m, "full"))
    return o->num > 0 && mp_obj_len(o->val) >= o->num;
  if (MP__IS(m, "put")) {
    if (!mp__nargs(a, 1))
      return -EINVAL;
    while (o->num > 0 && mp_obj_len(o->val) >= o->num)
      if ((r = mp__srv_wait(s, o, d)) < 0)
        return r;
    if ((r = mp_obj_list_append(o->val, mp_obj_copy(mp__arg(a, 0)))) < 0)
      return r;
    if (o->kind == MP__K_JQUEUE)
      o->count++; /* one more unfinished task, with the item: never apart */
    mp__srv_wake_all(s);
    return 0;
  }
  if (o->kind == MP__K_JQUEUE && MP__IS(m, "task_done")) {
    if (o->count == 0)
      return -EOVERFLOW; /* ValueError: task_done() called too many times */
    if (--o->count == 0)
      mp__srv_wake_all(s);
    return 0;
  }
  if (o->kind == MP__K_JQUEUE && MP__IS(m, "join")) {
    while (o->count > 0)
      if ((r = mp__srv_wait(s, o, d)) < 0)
        return r;
    return 0;
  }
  if (MP__IS(m, "get")) {
    while (mp_obj_len(o->val) == 0)
      if ((r = mp__srv_wait(s, o, d)) < 0)
        return r;
    if (mp__client_gone())
      return -EPIPE; /* the item stays first for the next getter */
    *res = mp__obj_list_take(o->val, 0);
    mp__srv_wake_all(s);
    return 0;
  }
  return -EOPNOTSUPP;
}

/* ----------------------------------- Lock, RLock, Semaphore, Condition */

/* Acquire for Lock, RLock, Condition (owned) and the semaphores. */
static int do_acquire(struct server *s, struct sobj *o, uint64_t me, const mp__deadline *d) {
  int r;
  if (o->kind == MP__K_SEMAPHORE || o->kind == MP__K_BSEMAPHORE) {
    while (o->num == 0)
      if ((r = mp__srv_wait(s, o, d)) < 0)
        return r;
    if (mp__client_gone())
      return -EPIPE; /* the unit stays for the next acquirer */
    o->num--;
    return 0;
  }
  if (o->kind != MP__K_LOCK && o->owner == me) {
    o->count++;
    return 0;
  }
  while (o->owner != 0)
    if ((r = mp__srv_wait(s, o, d)) < 0)
      return r;
  if (mp__client_gone())
    return -EPIPE;
  o->owner = me;
  o->count = 1;
  return 0;
}

static int do_release(struct server *s, struct sobj *o, uint64_t me) {
  if (o->kind == MP__K_SEMAPHORE || o->kind == MP__K_BSEMAPHORE) {
    if (o->kind == MP__K_BSEMAPHORE && o->num >= o->bound)
      return -EOVERFLOW;
    o->num++;
  } else if (o->kind == MP__K_LOCK) {
    if (!o->owner) /* any client may release a Lock, as in Python */
      return -EPERM;
    o->owner = 0;
  } else {
    if (o->owner != me)
      return -EPERM;
    if (--o->count > 0)
      return 0;
    o->owner = 0;
  }
  mp__srv_wake_all(s);
  return 0;
}

static int call_condition(struct server *s, struct sobj *o, const char *m, const mp_obj *a,
                          uint64_t me, const mp__deadline *d) {
  if (MP__IS(m, "notify") || MP__IS(m, "notify_all")) {
    int64_t n = INT64_MAX;
    if (MP__IS(m, "notify") && (!mp__nargs(a, 1) || mp__arg_int(a, 0, &n) < 0))
      return -EINVAL;
    if (o->owner != me)
      return -EPERM;
    for (struct waiter *w = o->waiters; w && n > 0; w = o->waiters, n--) {
      w->notified = true;
      o->waiters = w->next;
    }
    mp__srv_wake_all(s);
    return 0;
  }
  if (!MP__IS(m, "wait"))
    return -EOPNOTSUPP;
  if (o->owner != me)
    return -EPERM;
  struct waiter w = {NULL, false}, **pp = &o->waiters;
  while (*pp)
    pp = &(*pp)->next;
  *pp = &w;
  int64_t saved = o->count;
  o->owner = 0;
  o->count = 0;
  mp__srv_wake_all(s);
  int r = 0;
  while (!w.notified && (r = mp__srv_wait(s, o, d)) == 0) {
  }
  if (!w.notified) {
    for (pp = &o->waiters; *pp; pp = &(*pp)->next)
      if (*pp == &w) {
        *pp = w.next;
        break;
      }
  } else if (mp__client_gone()) {
    /* a notification must not go to the dead: pass it to the next waiter */
    struct waiter *next = o->waiters;
    if (next) {
      next->notified = true;
      o->waiters = next->next;
      mp__srv_wake_all(s);
    }
    return -EPIPE;
  } else {
    r = 0;
  }
  if (r == -EPIPE || r == -ESRCH)
    return r;
  /* take the lock back whatever happened, as Python does */
  mp__deadline forever = {.forever = true};
  while (o->owner != 0) {
    int e = mp__srv_wait(s, o, &forever);
    if (e < 0)
      return e;
  }
  o->owner = me;
  o->count = saved;
  return r;
}

/* --------------------------------------------------------------- Barrier */

/* A Barrier: num parties arrived in the current cycle (generation owner),
 * bound parties in all, count the last generation that tripped. A cycle
 * ends by tripping (its parties get their arrival index) or by a reset
 * (they get -ECANCELED). A party whose wait times out, or whose client dies
 * while it waits, breaks the barrier, as Python's timeout does: the others
 * get -ECANCELED (BrokenBarrierError) rather than wait for a party that
 * will never come; reset() repairs it. */
static int call_barrier(struct server *s, struct sobj *o, const char *m, const mp__deadline *d) {
  if (MP__IS(m, "parties"))
    return (int)o->bound;
  if (MP__IS(m, "n_waiting"))
    return (int)o->num;
  if (MP__IS(m, "broken"))
    return o->broken;
  if (MP__IS(m, "abort") || MP__IS(m, "reset")) {
    if (MP__IS(m, "reset")) {
      if (o->num > 0)
        o->owner++; /* the waiting cycle ends, not tripped */
      o->broken = false;
    } else {
      o->broken = true;
    }
    o->num = 0;
    mp__srv_wake_all(s);
    return 0;
  }
  if (!MP__IS(m, "wait"))
    return -EOPNOTSUPP;
  if (o->broken)
    return -ECANCELED;
  if (mp__client_gone())
    return -EPIPE; /* no arrival for a client that cannot learn of it */
  uint64_t gen = o->owner;
  int64_t idx = o->num++;
  if (o->num == o->bound) {
    o->count = (int64_t)gen;
    o->owner++;
    o->num = 0;
    mp__srv_wake_all(s);
    return (int)idx;
  }
  while (o->owner == gen && !o->broken) {
    int r = mp__srv_wait(s, o, d);
    if (r < 0 && o->owner == gen && !o->broken) {
      if (r == -ESRCH)
        return r;
      o->broken = true; /* timed out, or the client or server is going */
      o->num = 0;
      mp__srv_wake_all(s);
      return r == -ETIMEDOUT ? -ECANCELED : r;
    }
  }
  if (o->owner != gen && o->count == (int64_t)gen)
    return (int)idx;
  return -ECANCELED;
}

/* ---------------------------------------------- dispatch and creation */

/* Carry out method m of a built-in object. Event, Value and Array are
 * short enough to stay here. */
int mp__call_builtin(struct server *s, struct sobj *o, const char *m, const mp_obj *a, uint64_t me,
                     const mp__deadline *d, mp_obj **res) {
  int r;
  switch (o->kind) {
  case MP__K_DICT: return mp__call_dict(o, m, a, res);
  case MP__K_LIST: return mp__call_list(o, m, a, res);
  case MP__K_NAMESPACE: return mp__call_namespace(o, m, a, res);
  case MP__K_SET: return mp__call_set(o, m, a, res);
  case MP__K_BARRIER: return call_barrier(s, o, m, d);
  case MP__K_POOL: return mp__call_pool(s, o, m, a, d, res);
  case MP__K_QUEUE:
  case MP__K_JQUEUE: return call_queue(s, o, m, a, d, res);
  case MP__K_VALUE:
    if (MP__IS(m, "get"))
      return mp__give(o->val, res);
    if (MP__IS(m, "set")) {
      mp_obj *v = mp__nargs(a, 1) ? mp_obj_copy(mp__arg(a, 0)) : NULL;
      if (!v)
        return mp__nargs(a, 1) ? -ENOMEM : -EINVAL;
      mp_obj_free(o->val);
      o->val = v;
      return 0;
    }
    return -EOPNOTSUPP;
  case MP__K_ARRAY:
    if (MP__IS(m, "get") || MP__IS(m, "set") || MP__IS(m, "len"))
      return mp__call_list(o, m, a, res);
    return -EOPNOTSUPP;
  case MP__K_EVENT:
    if (MP__IS(m, "set")) {
      o->num = 1;
      mp__srv_wake_all(s);
      return 0;
    }
    if (MP__IS(m, "clear")) {
      o->num = 0;
      return 0;
    }
    if (MP__IS(m, "is_set"))
      return (int)o->num;
    if (MP__IS(m, "wait")) {
      while (!o->num)
        if ((r = mp__srv_wait(s, o, d)) < 0)
          return r;
      return 0;
    }
    return -EOPNOTSUPP;
  default:
    if (MP__IS(m, "acquire"))
      return do_acquire(s, o, me, d);
    if (MP__IS(m, "release"))
      return do_release(s, o, me);
    if (o->kind == MP__K_CONDITION)
      return call_condition(s, o, m, a, me, d);
    return -EOPNOTSUPP;
  }
}

/* Make a built-in object's state from its creation arguments. */
int mp__builtin_init(struct sobj *o, const mp_obj *a) {
  const mp_obj *a0 = mp__arg(a, 0);
  size_t na = (size_t)mp_obj_len(a);
  switch (o->kind) {
  case MP__K_DICT:
  case MP__K_LIST: {
    int t = o->kind == MP__K_DICT ? MP_OBJ_DICT : MP_OBJ_LIST;
    if (na > 1 || (a0 && mp_obj_type(a0) != t))
      return -EINVAL;
    o->val = a0 ? mp_obj_copy(a0) : (t == MP_OBJ_DICT ? mp_obj_dict() : mp_obj_list());
    return o->val ? 0 : -ENOMEM;
  }
  case MP__K_ARRAY:
    if (na != 1 || mp_obj_type(a0) != MP_OBJ_LIST)
      return -EINVAL;
    o->val = mp_obj_copy(a0);
    return o->val ? 0 : -ENOMEM;
  case MP__K_NAMESPACE: o->val = mp_obj_dict(); return o->val ? 0 : -ENOMEM;
  case MP__K_SET:
    /* a dict whose keys are the items (values nil): hashing and order come
     * with it */
    if (na > 1 || (a0 && mp_obj_type(a0) != MP_OBJ_LIST))
      return -EINVAL;
    if (!(o->val = mp_obj_dict()))
      return -ENOMEM;
    for (size_t i = 0; a0 && i < (size_t)mp_obj_len(a0); i++)
      if (mp_obj_dict_set(o->val, mp_obj_copy(mp__obj_list_at(a0, i)), mp_obj_nil()) < 0)
        return -ENOMEM; /* srv_create frees val */
    return 0;
  case MP__K_BARRIER:
    if (na != 1 || mp__arg_int(a, 0, &o->bound) < 0 || o->bound < 1 || o->bound > INT_MAX)
      return -EINVAL;
    o->count = -1; /* no cycle has tripped yet */
    return 0;
  case MP__K_QUEUE:
  case MP__K_JQUEUE:
    if (na > 1 || (na == 1 && mp__arg_int(a, 0, &o->num) < 0))
      return -EINVAL;
    o->val = mp_obj_list();
    return o->val ? 0 : -ENOMEM;
  case MP__K_VALUE:
    if (na > 1)
      return -EINVAL;
    o->val = a0 ? mp_obj_copy(a0) : mp_obj_nil();
    return o->val ? 0 : -ENOMEM;
  case MP__K_SEMAPHORE:
  case MP__K_BSEMAPHORE:
    o->num = 1;
    if (na > 1 || (na == 1 && mp__arg_int(a, 0, &o->num) < 0) || o->num < 0)
      return -EINVAL;
    o->bound = o->num;
    return 0;
  case MP__K_POOL: {
    int64_t n = 0;
    if (na > 1 || (na == 1 && mp__arg_int(a, 0, &n) < 0) || n < 0 || n > INT_MAX)
      return -EINVAL;
    mp_pool *pool;
    int r = mp_pool_new((int)n, NULL, &pool);
    if (r == 0)
      o->self = pool;
    return r;
  }
  default: return na == 0 ? 0 : -EINVAL;
  }
}
