/* SPDX-License-Identifier: MIT */
/*
 * Proxies (mp/manager.h): a process's handle on one object of a Manager's
 * server, and the typed calls of each built-in type (mp_dict_proxy_set,
 * mp_queue_proxy_get, ...), each one request through mp__manager_call()
 * (manager.c).
 *
 * Map of this file:
 *   creating proxies: mp_manager_create, by name (mp_manager_get), from a
 *     reference in a container; the typed constructors (mp_manager_dict...)
 *   the generic call, type and free
 *   typed calls: kind checks, argument lists; then the calls of dict, list,
 *     Namespace, Queue, the locks, Event, Condition, Value, Array, set,
 *     Pool and Barrier (the constructors of the later types, JoinableQueue,
 *     set, Barrier, Pool, sit beside their calls)
 * A proxy is this process's private memory; the server side of each
 * method is in manager_containers.c, manager_builtin.c or manager_pool.c.
 * No crash points.
 */
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "manager_internal.h"
#include "wire.h"

#define PROXY_MAGIC 0x6d705058u /* "mpPX" */

struct mp_proxy {
  uint32_t magic;
  mp_manager *m;
  int64_t id;
  pid_t creator;
  int kind;
  char type[64];
};

static bool proxy_ok(const mp_proxy *p) { return p && p->magic == PROXY_MAGIC; }

MP_EXPORT int mp_manager_create(mp_manager *m, const char *type, const mp_obj *args,
                                mp_proxy **ret) {
  if (!mp__manager_ok(m) || !type || !ret || strlen(type) >= sizeof((mp_proxy *)0)->type ||
      (args && mp_obj_type(args) != MP_OBJ_LIST))
    return -EINVAL;
  mp_proxy *p = calloc(1, sizeof *p);
  if (!p)
    return -ENOMEM;
  mp_obj *id = NULL;
  int r = mp__manager_call(m, MP__OP_CREATE, 0, type, args, MP_FOREVER, &id);
  int64_t v;
  if (r >= 0 && mp_obj_get_int(id, &v) < 0)
    r = -EBADMSG;
  mp_obj_free(id);
  if (r < 0) {
    free(p);
    return r;
  }
  p->magic = PROXY_MAGIC;
  p->m = m;
  p->id = v;
  p->creator = mp__pid();
  p->kind = mp__find_kind(type);
  if (p->kind < 0)
    p->kind = MP__K_CUSTOM;
  snprintf(p->type, sizeof p->type, "%s", type);
  *ret = p;
  return 0;
}

static int proxy_from_lookup(mp_manager *m, mp_obj *rep, mp_proxy **ret);

MP_EXPORT int mp_manager_get(mp_manager *m, const char *name, mp_proxy **ret) {
  if (!mp__manager_ok(m) || !name || !*name || strlen(name) >= MP__NAME_MAX_LEN || !ret)
    return -EINVAL;
  mp_obj *rep = NULL;
  int r = mp__manager_call(m, MP__OP_LOOKUP, 0, name, NULL, MP_FOREVER, &rep);
  if (r >= 0)
    r = proxy_from_lookup(m, rep, ret);
  mp_obj_free(rep);
  return r < 0 ? r : 0;
}

MP_EXPORT mp_obj *mp_obj_proxy(mp_proxy *p) {
  if (!proxy_ok(p))
    return NULL;
  return mp__obj_ref(p->id);
}

/* A proxy that does not own its object, from a LOOKUP reply [id, type]. */
static int proxy_from_lookup(mp_manager *m, mp_obj *rep, mp_proxy **ret) {
  int64_t v = 0;
  const char *type = NULL;
  if (mp_obj_type(rep) != MP_OBJ_LIST || !mp__nargs(rep, 2) || mp__arg_int(rep, 0, &v) < 0 ||
      mp_obj_get_str(mp__arg(rep, 1), &type, NULL) < 0 ||
      strlen(type) >= sizeof((mp_proxy *)0)->type)
    return -EBADMSG;
  mp_proxy *p = calloc(1, sizeof *p);
  if (!p)
    return -ENOMEM;
  p->magic = PROXY_MAGIC;
  p->m = m;
  p->id = v;
  p->creator = 0; /* a name or a container holds the object: no release */
  p->kind = mp__find_kind(type);
  if (p->kind < 0)
    p->kind = MP__K_CUSTOM;
  snprintf(p->type, sizeof p->type, "%s", type);
  *ret = p;
  return 0;
}

MP_EXPORT int mp_obj_get_proxy(mp_manager *m, const mp_obj *o, mp_proxy **ret) {
  if (!mp__manager_ok(m) || !o || !ret)
    return -EINVAL;
  if (mp_obj_type(o) != MP_OBJ_PROXY)
    return -EDOM;
  mp_obj *rep = NULL;
  int r = mp__manager_call(m, MP__OP_LOOKUP, mp__obj_ref_id(o), "", NULL, MP_FOREVER, &rep);
  if (r >= 0)
    r = proxy_from_lookup(m, rep, ret);
  mp_obj_free(rep);
  return r < 0 ? r : 0;
}

MP_EXPORT int mp_proxy_publish(mp_proxy *p, const char *name) {
  if (!proxy_ok(p) || !name || !*name || strlen(name) >= MP__NAME_MAX_LEN)
    return -EINVAL;
  return mp__manager_call(p->m, MP__OP_PUBLISH, p->id, name, NULL, MP_FOREVER, NULL);
}

/* Create a built-in object with up to one argument (borrowed). */
static int create1(mp_manager *m, const char *type, const mp_obj *a0, mp_proxy **ret) {
  if (!a0)
    return mp_manager_create(m, type, NULL, ret);
  mp_obj *args = mp_obj_listv(1, mp_obj_copy(a0));
  if (!args)
    return -ENOMEM;
  int r = mp_manager_create(m, type, args, ret);
  mp_obj_free(args);
  return r;
}

static int create_int(mp_manager *m, const char *type, int64_t v, mp_proxy **ret) {
  mp_obj *a = mp_obj_int(v);
  if (!a)
    return -ENOMEM;
  int r = create1(m, type, a, ret);
  mp_obj_free(a);
  return r;
}

MP_EXPORT int mp_manager_dict(mp_manager *m, const mp_obj *init, mp_proxy **ret) {
  if (init && mp_obj_type(init) != MP_OBJ_DICT)
    return -EDOM;
  return create1(m, "dict", init, ret);
}

MP_EXPORT int mp_manager_list(mp_manager *m, const mp_obj *init, mp_proxy **ret) {
  if (init && mp_obj_type(init) != MP_OBJ_LIST)
    return -EDOM;
  return create1(m, "list", init, ret);
}

MP_EXPORT int mp_manager_namespace(mp_manager *m, mp_proxy **ret) {
  return create1(m, "Namespace", NULL, ret);
}

MP_EXPORT int mp_manager_queue(mp_manager *m, int64_t maxsize, mp_proxy **ret) {
  return create_int(m, "Queue", maxsize < 0 ? 0 : maxsize, ret);
}

MP_EXPORT int mp_manager_lock(mp_manager *m, mp_proxy **ret) {
  return create1(m, "Lock", NULL, ret);
}

MP_EXPORT int mp_manager_rlock(mp_manager *m, mp_proxy **ret) {
  return create1(m, "RLock", NULL, ret);
}

MP_EXPORT int mp_manager_event(mp_manager *m, mp_proxy **ret) {
  return create1(m, "Event", NULL, ret);
}

MP_EXPORT int mp_manager_semaphore(mp_manager *m, int64_t value, int bounded, mp_proxy **ret) {
  if (value < 0)
    return -EINVAL;
  return create_int(m, bounded ? "BoundedSemaphore" : "Semaphore", value, ret);
}

MP_EXPORT int mp_manager_condition(mp_manager *m, mp_proxy **ret) {
  return create1(m, "Condition", NULL, ret);
}

MP_EXPORT int mp_manager_value(mp_manager *m, const mp_obj *init, mp_proxy **ret) {
  return create1(m, "Value", init, ret);
}

MP_EXPORT int mp_manager_array(mp_manager *m, const mp_obj *init, mp_proxy **ret) {
  if (!init || mp_obj_type(init) != MP_OBJ_LIST)
    return init ? -EDOM : -EINVAL;
  return create1(m, "Array", init, ret);
}

MP_EXPORT int mp_proxy_call(mp_proxy *p, const char *method, const mp_obj *args, double timeout,
                            mp_obj **ret) {
  if (!proxy_ok(p) || !method || (args && mp_obj_type(args) != MP_OBJ_LIST))
    return -EINVAL;
  mp_obj *res = NULL;
  int r = mp__manager_call(p->m, MP__OP_CALL, p->id, method, args, timeout, ret ? &res : NULL);
  if (r >= 0 && ret)
    *ret = res;
  return r;
}

MP_EXPORT int mp_proxy_type(mp_proxy *p, const char **ret) {
  if (!proxy_ok(p) || !ret)
    return -EINVAL;
  *ret = p->type;
  return 0;
}

MP_EXPORT int mp_proxy_free(mp_proxy *p) {
  if (!p)
    return 0;
  if (!proxy_ok(p))
    return -EINVAL;
  if (p->creator == mp__pid() && mp__manager_ok(p->m) && !p->m->stopped)
    mp__manager_call(p->m, MP__OP_RELEASE, p->id, "", NULL, MP_FOREVER, NULL);
  p->magic = 0;
  free(p);
  return 0;
}

/* ------------------------------------------------------------ typed calls */

/* Whether a proxy may make the typed calls of kind. */
static bool kind_fits(const mp_proxy *p, int kind) {
  return p->kind == kind ||
         (kind == MP__K_LOCK && (p->kind == MP__K_RLOCK || p->kind == MP__K_SEMAPHORE ||
                                 p->kind == MP__K_BSEMAPHORE || p->kind == MP__K_CONDITION)) ||
         (kind == MP__K_QUEUE && p->kind == MP__K_JQUEUE);
}

/* A typed call with an argument list (borrowed) of any length. */
static int tcall_list(mp_proxy *p, int kind, const char *method, const mp_obj *args, double timeout,
                      mp_obj **ret) {
  if (!proxy_ok(p) || !kind_fits(p, kind))
    return -EINVAL;
  mp_obj *res = NULL;
  int r = mp__manager_call(p->m, MP__OP_CALL, p->id, method, args, timeout, ret ? &res : NULL);
  if (r >= 0 && ret)
    *ret = res;
  return r;
}

/* A typed call: check the proxy's kind, pass up to two borrowed arguments. */
static int tcall(mp_proxy *p, int kind, const char *method, const mp_obj *a0, const mp_obj *a1,
                 double timeout, mp_obj **ret) {
  if (!proxy_ok(p) || !kind_fits(p, kind))
    return -EINVAL;
  if (!a0 && a1)
    return -EINVAL;
  /* a list that borrows the arguments would need the tree's layout: copy */
  mp_obj *args = NULL;
  if (a0) {
    args =
        a1 ? mp_obj_listv(2, mp_obj_copy(a0), mp_obj_copy(a1)) : mp_obj_listv(1, mp_obj_copy(a0));
    if (!args)
      return -ENOMEM;
  }
  mp_obj *res = NULL;
  int r = mp__manager_call(p->m, MP__OP_CALL, p->id, method, args, timeout, ret ? &res : NULL);
  mp_obj_free(args);
  if (r >= 0 && ret)
    *ret = res;
  return r;
}

static int tcall_i(mp_proxy *p, int kind, const char *method, int64_t i, const mp_obj *a1,
                   double timeout, mp_obj **ret) {
  mp_obj *io = mp_obj_int(i);
  if (!io)
    return -ENOMEM;
  int r = tcall(p, kind, method, io, a1, timeout, ret);
  mp_obj_free(io);
  return r;
}

static int tcall_s(mp_proxy *p, int kind, const char *method, const char *s, const mp_obj *a1,
                   mp_obj **ret) {
  if (!s)
    return -EINVAL;
  mp_obj *so = mp_obj_str(s);
  if (!so)
    return -ENOMEM;
  int r = tcall(p, kind, method, so, a1, MP_FOREVER, ret);
  mp_obj_free(so);
  return r;
}

#define NEED(x)                                                                                    \
  do {                                                                                             \
    if (!(x))                                                                                      \
      return -EINVAL;                                                                              \
  } while (0)

MP_EXPORT int mp_dict_proxy_set(mp_proxy *d, const mp_obj *key, const mp_obj *value) {
  NEED(key && value);
  return tcall(d, MP__K_DICT, "set", key, value, MP_FOREVER, NULL);
}
MP_EXPORT int mp_dict_proxy_get(mp_proxy *d, const mp_obj *key, mp_obj **ret) {
  NEED(key && ret);
  return tcall(d, MP__K_DICT, "get", key, NULL, MP_FOREVER, ret);
}
MP_EXPORT int mp_dict_proxy_del(mp_proxy *d, const mp_obj *key) {
  NEED(key);
  return tcall(d, MP__K_DICT, "del", key, NULL, MP_FOREVER, NULL);
}
MP_EXPORT int mp_dict_proxy_pop(mp_proxy *d, const mp_obj *key, mp_obj **ret) {
  NEED(key && ret);
  return tcall(d, MP__K_DICT, "pop", key, NULL, MP_FOREVER, ret);
}
MP_EXPORT int mp_dict_proxy_contains(mp_proxy *d, const mp_obj *key) {
  NEED(key);
  return tcall(d, MP__K_DICT, "contains", key, NULL, MP_FOREVER, NULL);
}
MP_EXPORT ssize_t mp_dict_proxy_len(mp_proxy *d) {
  return tcall(d, MP__K_DICT, "len", NULL, NULL, MP_FOREVER, NULL);
}
MP_EXPORT int mp_dict_proxy_keys(mp_proxy *d, mp_obj **ret) {
  NEED(ret);
  return tcall(d, MP__K_DICT, "keys", NULL, NULL, MP_FOREVER, ret);
}
MP_EXPORT int mp_dict_proxy_items(mp_proxy *d, mp_obj **ret) {
  NEED(ret);
  return tcall(d, MP__K_DICT, "items", NULL, NULL, MP_FOREVER, ret);
}
MP_EXPORT int mp_dict_proxy_copy(mp_proxy *d, mp_obj **ret) {
  NEED(ret);
  return tcall(d, MP__K_DICT, "copy", NULL, NULL, MP_FOREVER, ret);
}
MP_EXPORT int mp_dict_proxy_update(mp_proxy *d, const mp_obj *other) {
  NEED(other);
  if (mp_obj_type(other) != MP_OBJ_DICT)
    return -EDOM;
  return tcall(d, MP__K_DICT, "update", other, NULL, MP_FOREVER, NULL);
}
MP_EXPORT int mp_dict_proxy_clear(mp_proxy *d) {
  return tcall(d, MP__K_DICT, "clear", NULL, NULL, MP_FOREVER, NULL);
}

MP_EXPORT int mp_list_proxy_append(mp_proxy *l, const mp_obj *v) {
  NEED(v);
  return tcall(l, MP__K_LIST, "append", v, NULL, MP_FOREVER, NULL);
}
MP_EXPORT int mp_list_proxy_extend(mp_proxy *l, const mp_obj *items) {
  NEED(items);
  if (mp_obj_type(items) != MP_OBJ_LIST)
    return -EDOM;
  return tcall(l, MP__K_LIST, "extend", items, NULL, MP_FOREVER, NULL);
}
MP_EXPORT int mp_list_proxy_get(mp_proxy *l, int64_t i, mp_obj **ret) {
  NEED(ret);
  return tcall_i(l, MP__K_LIST, "get", i, NULL, MP_FOREVER, ret);
}
MP_EXPORT int mp_list_proxy_set(mp_proxy *l, int64_t i, const mp_obj *v) {
  NEED(v);
  return tcall_i(l, MP__K_LIST, "set", i, v, MP_FOREVER, NULL);
}
MP_EXPORT ssize_t mp_list_proxy_len(mp_proxy *l) {
  return tcall(l, MP__K_LIST, "len", NULL, NULL, MP_FOREVER, NULL);
}
MP_EXPORT int mp_list_proxy_pop(mp_proxy *l, int64_t i, mp_obj **ret) {
  NEED(ret);
  return tcall_i(l, MP__K_LIST, "pop", i, NULL, MP_FOREVER, ret);
}
MP_EXPORT int mp_list_proxy_insert(mp_proxy *l, int64_t i, const mp_obj *v) {
  NEED(v);
  return tcall_i(l, MP__K_LIST, "insert", i, v, MP_FOREVER, NULL);
}
MP_EXPORT int mp_list_proxy_remove(mp_proxy *l, const mp_obj *v) {
  NEED(v);
  return tcall(l, MP__K_LIST, "remove", v, NULL, MP_FOREVER, NULL);
}
MP_EXPORT ssize_t mp_list_proxy_index(mp_proxy *l, const mp_obj *v) {
  NEED(v);
  return tcall(l, MP__K_LIST, "index", v, NULL, MP_FOREVER, NULL);
}
MP_EXPORT ssize_t mp_list_proxy_count(mp_proxy *l, const mp_obj *v) {
  NEED(v);
  return tcall(l, MP__K_LIST, "count", v, NULL, MP_FOREVER, NULL);
}
MP_EXPORT int mp_list_proxy_copy(mp_proxy *l, mp_obj **ret) {
  NEED(ret);
  return tcall(l, MP__K_LIST, "copy", NULL, NULL, MP_FOREVER, ret);
}

MP_EXPORT int mp_namespace_proxy_set(mp_proxy *ns, const char *name, const mp_obj *v) {
  NEED(v);
  return tcall_s(ns, MP__K_NAMESPACE, "setattr", name, v, NULL);
}
MP_EXPORT int mp_namespace_proxy_get(mp_proxy *ns, const char *name, mp_obj **ret) {
  NEED(ret);
  return tcall_s(ns, MP__K_NAMESPACE, "getattr", name, NULL, ret);
}
MP_EXPORT int mp_namespace_proxy_del(mp_proxy *ns, const char *name) {
  return tcall_s(ns, MP__K_NAMESPACE, "delattr", name, NULL, NULL);
}

MP_EXPORT int mp_queue_proxy_put(mp_proxy *q, const mp_obj *v, double timeout) {
  NEED(v);
  return tcall(q, MP__K_QUEUE, "put", v, NULL, timeout, NULL);
}
MP_EXPORT int mp_queue_proxy_get(mp_proxy *q, double timeout, mp_obj **ret) {
  NEED(ret);
  return tcall(q, MP__K_QUEUE, "get", NULL, NULL, timeout, ret);
}
MP_EXPORT ssize_t mp_queue_proxy_qsize(mp_proxy *q) {
  return tcall(q, MP__K_QUEUE, "qsize", NULL, NULL, MP_FOREVER, NULL);
}

MP_EXPORT int mp_lock_proxy_acquire(mp_proxy *l, double timeout) {
  return tcall(l, MP__K_LOCK, "acquire", NULL, NULL, timeout, NULL);
}
MP_EXPORT int mp_lock_proxy_release(mp_proxy *l) {
  return tcall(l, MP__K_LOCK, "release", NULL, NULL, MP_FOREVER, NULL);
}

MP_EXPORT int mp_event_proxy_set(mp_proxy *e) {
  return tcall(e, MP__K_EVENT, "set", NULL, NULL, MP_FOREVER, NULL);
}
MP_EXPORT int mp_event_proxy_clear(mp_proxy *e) {
  return tcall(e, MP__K_EVENT, "clear", NULL, NULL, MP_FOREVER, NULL);
}
MP_EXPORT int mp_event_proxy_is_set(mp_proxy *e) {
  return tcall(e, MP__K_EVENT, "is_set", NULL, NULL, MP_FOREVER, NULL);
}
MP_EXPORT int mp_event_proxy_wait(mp_proxy *e, double timeout) {
  return tcall(e, MP__K_EVENT, "wait", NULL, NULL, timeout, NULL);
}

MP_EXPORT int mp_condition_proxy_wait(mp_proxy *c, double timeout) {
  return tcall(c, MP__K_CONDITION, "wait", NULL, NULL, timeout, NULL);
}
MP_EXPORT int mp_condition_proxy_notify(mp_proxy *c, int n) {
  return tcall_i(c, MP__K_CONDITION, "notify", n, NULL, MP_FOREVER, NULL);
}
MP_EXPORT int mp_condition_proxy_notify_all(mp_proxy *c) {
  return tcall(c, MP__K_CONDITION, "notify_all", NULL, NULL, MP_FOREVER, NULL);
}

MP_EXPORT int mp_value_proxy_get(mp_proxy *v, mp_obj **ret) {
  NEED(ret);
  return tcall(v, MP__K_VALUE, "get", NULL, NULL, MP_FOREVER, ret);
}
MP_EXPORT int mp_value_proxy_set(mp_proxy *v, const mp_obj *x) {
  NEED(x);
  return tcall(v, MP__K_VALUE, "set", x, NULL, MP_FOREVER, NULL);
}
MP_EXPORT int mp_array_proxy_get(mp_proxy *a, int64_t i, mp_obj **ret) {
  NEED(ret);
  return tcall_i(a, MP__K_ARRAY, "get", i, NULL, MP_FOREVER, ret);
}
MP_EXPORT int mp_array_proxy_set(mp_proxy *a, int64_t i, const mp_obj *x) {
  NEED(x);
  return tcall_i(a, MP__K_ARRAY, "set", i, x, MP_FOREVER, NULL);
}
MP_EXPORT ssize_t mp_array_proxy_len(mp_proxy *a) {
  return tcall(a, MP__K_ARRAY, "len", NULL, NULL, MP_FOREVER, NULL);
}

MP_EXPORT int mp_dict_proxy_values(mp_proxy *d, mp_obj **ret) {
  NEED(ret);
  return tcall(d, MP__K_DICT, "values", NULL, NULL, MP_FOREVER, ret);
}
MP_EXPORT int mp_dict_proxy_popitem(mp_proxy *d, mp_obj **ret) {
  NEED(ret);
  return tcall(d, MP__K_DICT, "popitem", NULL, NULL, MP_FOREVER, ret);
}
MP_EXPORT int mp_dict_proxy_setdefault(mp_proxy *d, const mp_obj *key, const mp_obj *dflt,
                                       mp_obj **ret) {
  NEED(key && dflt && ret);
  return tcall(d, MP__K_DICT, "setdefault", key, dflt, MP_FOREVER, ret);
}
MP_EXPORT int mp_dict_proxy_reversed(mp_proxy *d, mp_obj **ret) {
  NEED(ret);
  return tcall(d, MP__K_DICT, "reversed", NULL, NULL, MP_FOREVER, ret);
}
MP_EXPORT int mp_dict_proxy_or(mp_proxy *d, const mp_obj *other, mp_obj **ret) {
  NEED(other && ret);
  if (mp_obj_type(other) != MP_OBJ_DICT)
    return -EDOM;
  return tcall(d, MP__K_DICT, "or", other, NULL, MP_FOREVER, ret);
}
MP_EXPORT int mp_dict_proxy_ior(mp_proxy *d, const mp_obj *other) {
  NEED(other);
  if (mp_obj_type(other) != MP_OBJ_DICT && mp_obj_type(other) != MP_OBJ_LIST)
    return -EDOM;
  return tcall(d, MP__K_DICT, "ior", other, NULL, MP_FOREVER, NULL);
}
MP_EXPORT int mp_dict_proxy_next(mp_proxy *d, mp_dict_iter *it, mp_obj **key) {
  NEED(it && key && it->pos >= 0);
  if (it->len < 0) { /* the first step: the length iteration starts from */
    ssize_t n = mp_dict_proxy_len(d);
    if (n < 0)
      return (int)n;
    it->len = n;
  }
  mp_obj *args = mp_obj_listv(2, mp_obj_int(it->pos), mp_obj_int(it->len));
  if (!args)
    return -ENOMEM;
  mp_obj *res = NULL;
  int r = tcall_list(d, MP__K_DICT, "next", args, MP_FOREVER, &res);
  mp_obj_free(args);
  if (r == 1) {
    it->pos++;
    *key = res;
    return 1;
  }
  mp_obj_free(res);
  return r;
}
MP_EXPORT int mp_manager_dict_fromkeys(mp_manager *m, const mp_obj *keys, const mp_obj *value,
                                       mp_proxy **ret) {
  if (!keys || !ret)
    return -EINVAL;
  if (mp_obj_type(keys) != MP_OBJ_LIST)
    return -EDOM;
  mp_obj *d = mp_obj_dict();
  for (size_t i = 0; d && i < (size_t)mp_obj_len(keys); i++)
    if (mp_obj_dict_set(d, mp_obj_copy(mp__obj_list_at(keys, i)),
                        value ? mp_obj_copy(value) : mp_obj_nil()) < 0) {
      mp_obj_free(d);
      d = NULL;
    }
  if (!d)
    return -ENOMEM;
  int r = mp_manager_dict(m, d, ret);
  mp_obj_free(d);
  return r;
}

/* [start, stop, step(, items)]: MP_SLICE_NONE travels as nil (omitted). */
static mp_obj *slice_args(int64_t start, int64_t stop, int64_t step, const mp_obj *items) {
  int64_t v[3] = {start, stop, step};
  mp_obj *a = mp_obj_list();
  if (!a)
    return NULL;
  for (int j = 0; j < 3; j++)
    if (mp_obj_list_append(a, v[j] == MP_SLICE_NONE ? mp_obj_nil() : mp_obj_int(v[j])) < 0) {
      mp_obj_free(a);
      return NULL;
    }
  if (items && mp_obj_list_append(a, mp_obj_copy(items)) < 0) {
    mp_obj_free(a);
    return NULL;
  }
  return a;
}
MP_EXPORT int mp_list_proxy_slice(mp_proxy *l, int64_t start, int64_t stop, int64_t step,
                                  mp_obj **ret) {
  NEED(ret);
  mp_obj *a = slice_args(start, stop, step, NULL);
  if (!a)
    return -ENOMEM;
  int r = tcall_list(l, MP__K_LIST, "slice", a, MP_FOREVER, ret);
  mp_obj_free(a);
  return r;
}
MP_EXPORT int mp_list_proxy_set_slice(mp_proxy *l, int64_t start, int64_t stop, int64_t step,
                                      const mp_obj *items) {
  NEED(items);
  if (mp_obj_type(items) != MP_OBJ_LIST)
    return -EDOM;
  mp_obj *a = slice_args(start, stop, step, items);
  if (!a)
    return -ENOMEM;
  int r = tcall_list(l, MP__K_LIST, "set_slice", a, MP_FOREVER, NULL);
  mp_obj_free(a);
  return r;
}
MP_EXPORT int mp_list_proxy_del_slice(mp_proxy *l, int64_t start, int64_t stop, int64_t step) {
  mp_obj *a = slice_args(start, stop, step, NULL);
  if (!a)
    return -ENOMEM;
  int r = tcall_list(l, MP__K_LIST, "del_slice", a, MP_FOREVER, NULL);
  mp_obj_free(a);
  return r;
}
MP_EXPORT int mp_list_proxy_imul(mp_proxy *l, int64_t n) {
  return tcall_i(l, MP__K_LIST, "imul", n, NULL, MP_FOREVER, NULL);
}
MP_EXPORT int mp_list_proxy_sort(mp_proxy *l, int reverse) {
  mp_obj *rev = mp_obj_bool(reverse);
  if (!rev)
    return -ENOMEM;
  int r = tcall(l, MP__K_LIST, "sort", rev, NULL, MP_FOREVER, NULL);
  mp_obj_free(rev);
  return r;
}
MP_EXPORT int mp_list_proxy_reverse(mp_proxy *l) {
  return tcall(l, MP__K_LIST, "reverse", NULL, NULL, MP_FOREVER, NULL);
}
MP_EXPORT int mp_list_proxy_clear(mp_proxy *l) {
  return tcall(l, MP__K_LIST, "clear", NULL, NULL, MP_FOREVER, NULL);
}

MP_EXPORT int mp_queue_proxy_empty(mp_proxy *q) {
  return tcall(q, MP__K_QUEUE, "empty", NULL, NULL, MP_FOREVER, NULL);
}
MP_EXPORT int mp_queue_proxy_full(mp_proxy *q) {
  return tcall(q, MP__K_QUEUE, "full", NULL, NULL, MP_FOREVER, NULL);
}
MP_EXPORT int mp_manager_joinable_queue(mp_manager *m, int64_t maxsize, mp_proxy **ret) {
  return create_int(m, "JoinableQueue", maxsize < 0 ? 0 : maxsize, ret);
}
MP_EXPORT int mp_queue_proxy_task_done(mp_proxy *q) {
  return tcall(q, MP__K_JQUEUE, "task_done", NULL, NULL, MP_FOREVER, NULL);
}
MP_EXPORT int mp_queue_proxy_join(mp_proxy *q, double timeout) {
  return tcall(q, MP__K_JQUEUE, "join", NULL, NULL, timeout, NULL);
}

MP_EXPORT int mp_manager_set(mp_manager *m, const mp_obj *init, mp_proxy **ret) {
  if (init && mp_obj_type(init) != MP_OBJ_LIST)
    return -EDOM;
  return create1(m, "set", init, ret);
}
MP_EXPORT int mp_set_proxy_add(mp_proxy *st, const mp_obj *v) {
  NEED(v);
  return tcall(st, MP__K_SET, "add", v, NULL, MP_FOREVER, NULL);
}
MP_EXPORT int mp_set_proxy_discard(mp_proxy *st, const mp_obj *v) {
  NEED(v);
  return tcall(st, MP__K_SET, "discard", v, NULL, MP_FOREVER, NULL);
}
MP_EXPORT int mp_set_proxy_remove(mp_proxy *st, const mp_obj *v) {
  NEED(v);
  return tcall(st, MP__K_SET, "remove", v, NULL, MP_FOREVER, NULL);
}
MP_EXPORT int mp_set_proxy_contains(mp_proxy *st, const mp_obj *v) {
  NEED(v);
  return tcall(st, MP__K_SET, "contains", v, NULL, MP_FOREVER, NULL);
}
MP_EXPORT ssize_t mp_set_proxy_len(mp_proxy *st) {
  return tcall(st, MP__K_SET, "len", NULL, NULL, MP_FOREVER, NULL);
}
MP_EXPORT int mp_set_proxy_pop(mp_proxy *st, mp_obj **ret) {
  NEED(ret);
  return tcall(st, MP__K_SET, "pop", NULL, NULL, MP_FOREVER, ret);
}
MP_EXPORT int mp_set_proxy_clear(mp_proxy *st) {
  return tcall(st, MP__K_SET, "clear", NULL, NULL, MP_FOREVER, NULL);
}
MP_EXPORT int mp_set_proxy_items(mp_proxy *st, mp_obj **ret) {
  NEED(ret);
  return tcall(st, MP__K_SET, "items", NULL, NULL, MP_FOREVER, ret);
}
MP_EXPORT int mp_set_proxy_update(mp_proxy *st, const mp_obj *items) {
  NEED(items);
  if (mp_obj_type(items) != MP_OBJ_LIST)
    return -EDOM;
  return tcall(st, MP__K_SET, "update", items, NULL, MP_FOREVER, NULL);
}

MP_EXPORT int mp_manager_barrier(mp_manager *m, int parties, mp_proxy **ret) {
  if (parties < 1)
    return -EINVAL;
  return create_int(m, "Barrier", parties, ret);
}
MP_EXPORT int mp_manager_pool(mp_manager *m, int processes, mp_proxy **ret) {
  if (processes < 0)
    return -EINVAL;
  return create_int(m, "Pool", processes, ret);
}

/* apply and map: [name, list] (+ chunksize), the list copied */
static int pool_call(mp_proxy *p, const char *method, const char *name, const mp_obj *list,
                     const mp_obj *extra, double timeout, mp_obj **ret) {
  if (!name || (list && mp_obj_type(list) != MP_OBJ_LIST))
    return -EINVAL;
  mp_obj *a = mp_obj_listv(2, mp_obj_str(name), list ? mp_obj_copy(list) : mp_obj_list());
  if (!a || (extra && mp_obj_list_append(a, mp_obj_copy(extra)) < 0)) {
    mp_obj_free(a);
    return -ENOMEM;
  }
  int r = tcall_list(p, MP__K_POOL, method, a, timeout, ret);
  mp_obj_free(a);
  return r;
}
MP_EXPORT int mp_pool_proxy_apply(mp_proxy *p, const char *name, const mp_obj *args, double timeout,
                                  mp_obj **ret) {
  return pool_call(p, "apply", name, args, NULL, timeout, ret);
}
MP_EXPORT int mp_pool_proxy_map(mp_proxy *p, const char *name, const mp_obj *items,
                                size_t chunksize, double timeout, mp_obj **ret) {
  if (!items || chunksize > INT64_MAX)
    return -EINVAL;
  mp_obj *cs = mp_obj_int((int64_t)chunksize);
  if (!cs)
    return -ENOMEM;
  int r = pool_call(p, "map", name, items, cs, timeout, ret);
  mp_obj_free(cs);
  return r;
}
MP_EXPORT int mp_pool_proxy_close(mp_proxy *p) {
  return tcall(p, MP__K_POOL, "close", NULL, NULL, MP_FOREVER, NULL);
}
MP_EXPORT int mp_pool_proxy_terminate(mp_proxy *p) {
  return tcall(p, MP__K_POOL, "terminate", NULL, NULL, MP_FOREVER, NULL);
}

MP_EXPORT int mp_barrier_proxy_wait(mp_proxy *b, double timeout) {
  return tcall(b, MP__K_BARRIER, "wait", NULL, NULL, timeout, NULL);
}
MP_EXPORT int mp_barrier_proxy_abort(mp_proxy *b) {
  return tcall(b, MP__K_BARRIER, "abort", NULL, NULL, MP_FOREVER, NULL);
}
MP_EXPORT int mp_barrier_proxy_reset(mp_proxy *b) {
  return tcall(b, MP__K_BARRIER, "reset", NULL, NULL, MP_FOREVER, NULL);
}
MP_EXPORT int mp_barrier_proxy_broken(mp_proxy *b) {
  return tcall(b, MP__K_BARRIER, "broken", NULL, NULL, MP_FOREVER, NULL);
}
MP_EXPORT int mp_barrier_proxy_n_waiting(mp_proxy *b) {
  return tcall(b, MP__K_BARRIER, "n_waiting", NULL, NULL, MP_FOREVER, NULL);
}
MP_EXPORT int mp_barrier_proxy_parties(mp_proxy *b) {
  return tcall(b, MP__K_BARRIER, "parties", NULL, NULL, MP_FOREVER, NULL);
}
