/* SPDX-License-Identifier: MIT */
/*
 * The types a Manager's server can make: the built-in kinds by name, and
 * the types and Pool functions a program registers before it starts or
 * serves a manager (mp_manager_register, mp_manager_register_function).
 *
 * Map of this file:
 *   the built-in kinds' names; the tables of registered types and functions
 *   look-ups by name (server, handle and proxies use them)
 *   the two public registration calls
 * The tables are this process's memory, filled before a server forks from
 * it (see struct pool_func in manager_internal.h); no crash points.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"
#include "manager_internal.h"

static const char *const kind_names[] = {
    [MP__K_DICT] = "dict",
    [MP__K_LIST] = "list",
    [MP__K_NAMESPACE] = "Namespace",
    [MP__K_QUEUE] = "Queue",
    [MP__K_LOCK] = "Lock",
    [MP__K_RLOCK] = "RLock",
    [MP__K_EVENT] = "Event",
    [MP__K_SEMAPHORE] = "Semaphore",
    [MP__K_BSEMAPHORE] = "BoundedSemaphore",
    [MP__K_CONDITION] = "Condition",
    [MP__K_VALUE] = "Value",
    [MP__K_ARRAY] = "Array",
    [MP__K_JQUEUE] = "JoinableQueue",
    [MP__K_SET] = "set",
    [MP__K_BARRIER] = "Barrier",
    [MP__K_POOL] = "Pool",
};
#define N_KINDS ((int)(sizeof kind_names / sizeof kind_names[0]))

#define MAX_TYPES 64
static struct custom_type types[MAX_TYPES];
static size_t n_types;

#define MAX_FUNCS 64
static struct pool_func funcs[MAX_FUNCS];
static size_t n_funcs;

const struct pool_func *mp__find_func(const char *name) {
  for (size_t i = 0; i < n_funcs; i++)
    if (!strcmp(funcs[i].name, name))
      return &funcs[i];
  return NULL;
}

const struct custom_type *mp__find_type(const char *name) {
  for (size_t i = 0; i < n_types; i++)
    if (!strcmp(types[i].name, name))
      return &types[i];
  return NULL;
}

int mp__find_kind(const char *name) {
  for (int k = 1; k < N_KINDS; k++)
    if (!strcmp(kind_names[k], name))
      return k;
  return -1;
}

/* The type name an object was created with. */
const char *mp__obj_type_name(const struct sobj *o) {
  return o->kind == MP__K_CUSTOM ? o->ct->name : kind_names[o->kind];
}

/* ------------------------------------------------- registering types */

MP_EXPORT int mp_manager_register(const char *name, mp_manager_constructor ctor,
                                  mp_manager_destructor dtor, const mp_manager_method_def *methods,
                                  size_t n) {
  if (!name || !*name || strlen(name) >= sizeof types[0].name || !ctor || (!methods && n))
    return -EINVAL;
  for (size_t i = 0; i < n; i++)
    if (!methods[i].name || !methods[i].func)
      return -EINVAL;
  if (mp__find_kind(name) > 0 || mp__find_type(name))
    return -EEXIST;
  if (n_types == MAX_TYPES)
    return -ENOSPC;
  struct custom_type *t = &types[n_types++];
  snprintf(t->name, sizeof t->name, "%s", name);
  t->ctor = ctor;
  t->dtor = dtor;
  t->methods = methods;
  t->n = n;
  return 0;
}

MP_EXPORT int mp_manager_register_function(const char *name, mp_manager_function fn, void *ctx) {
  if (!name || !*name || strlen(name) >= sizeof funcs[0].name || !fn)
    return -EINVAL;
  if (mp__find_func(name))
    return -EEXIST;
  if (n_funcs == MAX_FUNCS)
    return -ENOSPC;
  struct pool_func *f = &funcs[n_funcs++];
  snprintf(f->name, sizeof f->name, "%s", name);
  f->fn = fn;
  f->ctx = ctx;
  return 0;
}
