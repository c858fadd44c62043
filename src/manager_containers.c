/* SPDX-License-Identifier: MIT */
/*
 * The methods of the Manager's built-in containers, as the server carries
 * them out (under the server mutex; none of them waits): dict, list (and
 * Array's get/set/len), Namespace and set. Each returns what the proxy
 * call returns (manager_proxy.c), *res being the reply's value.
 *
 * Map of this file:
 *   dict: Python's dict methods, views as lists, iteration by position
 *   list: indices, slices (Python's rules), in-place operations
 *   Namespace: attributes as a dict's keys
 *   set: a dict whose keys are the items
 * No shared memory and no crash points: the objects are the server's.
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "internal.h"
#include "manager_internal.h"
#include "wire.h"

static int norm_index(int64_t i, size_t n, size_t *out) {
  if (i < 0)
    i += (int64_t)n;
  if (i < 0 || (uint64_t)i >= n)
    return -ERANGE;
  *out = (size_t)i;
  return 0;
}

/* ------------------------------------------------------------------ dict */

int mp__call_dict(struct sobj *o, const char *m, const mp_obj *a, mp_obj **res) {
  mp_obj *d = o->val;
  const mp_obj *k = mp__arg(a, 0);
  if (MP__IS(m, "len"))
    return (int)mp_obj_len(d);
  if (MP__IS(m, "clear")) {
    mp__obj_clear(d);
    return 0;
  }
  if (MP__IS(m, "keys") || MP__IS(m, "items") || MP__IS(m, "values") || MP__IS(m, "copy")) {
    if (MP__IS(m, "copy"))
      return mp__give(d, res);
    mp__obj_dict_compact(d); /* positions, below, in constant time */
    mp_obj *l = mp_obj_list();
    for (size_t i = 0; l && i < (size_t)mp_obj_len(d); i++) {
      const mp_obj *key, *val;
      mp_obj_dict_item(d, i, &key, &val);
      mp_obj *item = MP__IS(m, "keys")     ? mp_obj_copy(key)
                     : MP__IS(m, "values") ? mp_obj_copy(val)
                                           : mp_obj_listv(2, mp_obj_copy(key), mp_obj_copy(val));
      if (mp_obj_list_append(l, item) < 0) {
        mp_obj_free(l);
        l = NULL;
      }
    }
    *res = l;
    return l ? 0 : -ENOMEM;
  }
  if (MP__IS(m, "update")) {
    if (!mp__nargs(a, 1) || mp_obj_type(k) != MP_OBJ_DICT)
      return -EDOM;
    for (size_t i = 0; i < (size_t)mp_obj_len(k); i++) {
      const mp_obj *key, *val;
      mp_obj_dict_item(k, i, &key, &val);
      int r = mp_obj_dict_set(d, mp_obj_copy(key), mp_obj_copy(val));
      if (r < 0)
        return r;
    }
    return 0;
  }
  if (MP__IS(m, "set")) {
    if (!mp__nargs(a, 2))
      return -EINVAL;
    return mp_obj_dict_set(d, mp_obj_copy(k), mp_obj_copy(mp__arg(a, 1)));
  }
  if (MP__IS(m, "popitem")) {
    ssize_t len = mp_obj_len(d);
    if (len == 0)
      return -ENOENT; /* KeyError: popitem(): dictionary is empty */
    mp__obj_dict_compact(d);
    mp_obj *key, *val;
    mp__obj_dict_remove(d, (size_t)len - 1, &key, &val); /* the last set: LIFO */
    *res = mp_obj_listv(2, key, val);
    return *res ? 0 : -ENOMEM;
  }
  if (MP__IS(m, "setdefault")) {
    if (!mp__nargs(a, 2))
      return -EINVAL;
    ssize_t at = mp__obj_dict_find(d, k);
    if (at < 0) {
      int r = mp_obj_dict_set(d, mp_obj_copy(k), mp_obj_copy(mp__arg(a, 1)));
      return r < 0 ? r : mp__give(mp__arg(a, 1), res);
    }
    const mp_obj *v;
    mp__obj_dict_entry(d, (size_t)at, NULL, &v);
    return mp__give(v, res);
  }
  if (MP__IS(m, "reversed")) {
    mp__obj_dict_compact(d);
    mp_obj *l = mp_obj_list();
    for (size_t i = (size_t)mp_obj_len(d); l && i-- > 0;) {
      const mp_obj *key;
      mp_obj_dict_item(d, i, &key, NULL);
      if (mp_obj_list_append(l, mp_obj_copy(key)) < 0) {
        mp_obj_free(l);
        l = NULL;
      }
    }
    *res = l;
    return l ? 0 : -ENOMEM;
  }
  if (MP__IS(m, "or")) {
    /* d | other: a new dict, d's entries updated by other's */
    if (!mp__nargs(a, 1) || mp_obj_type(k) != MP_OBJ_DICT)
      return -EDOM;
    mp_obj *out = mp_obj_copy(d);
    for (size_t i = 0; out && i < (size_t)mp_obj_len(k); i++) {
      const mp_obj *key, *val;
      mp_obj_dict_item(k, i, &key, &val);
      if (mp_obj_dict_set(out, mp_obj_copy(key), mp_obj_copy(val)) < 0) {
        mp_obj_free(out);
        out = NULL;
      }
    }
    *res = out;
    return out ? 0 : -ENOMEM;
  }
  if (MP__IS(m, "ior")) {
    /* d |= other: a dict, or a list of [key, value] pairs; all checked
     * before anything changes */
    if (!mp__nargs(a, 1))
      return -EDOM;
    if (mp_obj_type(k) == MP_OBJ_DICT)
      return mp__call_dict(o, "update", a, res);
    if (mp_obj_type(k) != MP_OBJ_LIST)
      return -EDOM;
    for (size_t i = 0; i < (size_t)mp_obj_len(k); i++) {
      const mp_obj *pair = mp__obj_list_at(k, i);
      if (mp_obj_type(pair) != MP_OBJ_LIST || mp_obj_len(pair) != 2)
        return -EDOM;
    }
    for (size_t i = 0; i < (size_t)mp_obj_len(k); i++) {
      const mp_obj *pair = mp__obj_list_at(k, i);
      int r = mp_obj_dict_set(d, mp_obj_copy(mp__obj_list_at(pair, 0)),
                              mp_obj_copy(mp__obj_list_at(pair, 1)));
      if (r < 0)
        return r;
    }
    return 0;
  }
  if (MP__IS(m, "next")) {
    /* iteration: [position, length when it began]; the key there, or 0 at
     * the end; a dict whose length changed is Python's RuntimeError */
    int64_t pos, len0;
    if (!mp__nargs(a, 2) || mp__arg_int(a, 0, &pos) < 0 || mp__arg_int(a, 1, &len0) < 0 || pos < 0)
      return -EINVAL;
    if (len0 != mp_obj_len(d))
      return -ESTALE;
    if (pos >= len0)
      return 0;
    mp__obj_dict_compact(d);
    const mp_obj *key;
    mp_obj_dict_item(d, (size_t)pos, &key, NULL);
    int r = mp__give(key, res);
    return r < 0 ? r : 1;
  }
  if (!mp__nargs(a, 1))
    return MP__IS(m, "get") || MP__IS(m, "del") || MP__IS(m, "pop") || MP__IS(m, "contains")
               ? -EINVAL
               : -EOPNOTSUPP;
  ssize_t at = mp__obj_dict_find(d, k);
  if (MP__IS(m, "contains"))
    return at >= 0;
  if (!MP__IS(m, "get") && !MP__IS(m, "del") && !MP__IS(m, "pop"))
    return -EOPNOTSUPP;
  if (at < 0)
    return -ENOENT;
  if (MP__IS(m, "get")) {
    const mp_obj *v;
    mp__obj_dict_entry(d, (size_t)at, NULL, &v);
    return mp__give(v, res);
  }
  mp__obj_dict_remove(d, (size_t)at, NULL, MP__IS(m, "pop") ? res : NULL);
  return 0;
}

/* ------------------------------------------------------------------ list */

/* Python's slice indices (PySlice_AdjustIndices): arguments 0..2 of a are
 * start, stop, step, each an int or nil (omitted). The slice's length. */
static int slice_indices(const mp_obj *a, size_t n, int64_t *start, int64_t *step, int64_t *len) {
  int64_t v[3], len_ = (int64_t)n;
  bool given[3];
  for (size_t j = 0; j < 3; j++) {
    const mp_obj *x = mp__arg(a, j);
    given[j] = x && mp_obj_type(x) != MP_OBJ_NIL;
    if (!x || (given[j] && mp_obj_get_int(x, &v[j]) < 0))
      return -EINVAL;
  }
  int64_t st = given[2] ? v[2] : 1;
  if (st == 0 || st == INT64_MIN)
    return -EINVAL; /* ValueError: slice step cannot be zero */
  int64_t lo = given[0] ? v[0] : (st < 0 ? len_ - 1 : 0);
  int64_t hi = given[1] ? v[1] : (st < 0 ? -1 : len_);
  if (given[0]) {
    if (lo < 0 && (lo += len_) < 0)
      lo = st < 0 ? -1 : 0;
    else if (lo >= len_)
      lo = st < 0 ? len_ - 1 : len_;
  }
  if (given[1]) {
    if (hi < 0 && (hi += len_) < 0)
      hi = st < 0 ? -1 : 0;
    else if (hi >= len_)
      hi = st < 0 ? len_ - 1 : len_;
  }
  if (st < 0)
    *len = hi < lo ? (lo - hi - 1) / -st + 1 : 0;
  else
    *len = lo < hi ? (hi - lo - 1) / st + 1 : 0;
  *start = lo;
  *step = st;
  return 0;
}

/* l[start:stop:step], its assignment and its deletion. */
static int list_slice(mp_obj *l, const char *m, const mp_obj *a, mp_obj **res) {
  size_t n = (size_t)mp_obj_len(l);
  int64_t start, step, len;
  size_t want = MP__IS(m, "set_slice") ? 4 : 3;
  if (!mp__nargs(a, want))
    return -EINVAL;
  int r = slice_indices(a, n, &start, &step, &len);
  if (r < 0)
    return r;
  if (MP__IS(m, "slice")) {
    mp_obj *out = mp_obj_list();
    for (int64_t j = 0; out && j < len; j++)
      if (mp_obj_list_append(out, mp_obj_copy(mp__obj_list_at(l, (size_t)(start + j * step)))) <
          0) {
        mp_obj_free(out);
        out = NULL;
      }
    *res = out;
    return out ? 0 : -ENOMEM;
  }
  if (MP__IS(m, "del_slice")) {
    /* from the highest index down, so the others do not move */
    for (int64_t j = 0; j < len; j++) {
      int64_t at = step > 0 ? start + (len - 1 - j) * step : start + j * step;
      mp_obj_free(mp__obj_list_take(l, (size_t)at));
    }
    return 0;
  }
  const mp_obj *items = mp__arg(a, 3);
  if (mp_obj_type(items) != MP_OBJ_LIST)
    return -EDOM;
  size_t ni = (size_t)mp_obj_len(items);
  if (step != 1 && (int64_t)ni != len)
    return -EINVAL; /* ValueError: an extended slice takes as many items */
  /* copy first: a failure must leave the list as it was */
  mp_obj *copy = mp_obj_copy(items);
  if (!copy)
    return -ENOMEM;
  if (step == 1) {
    for (int64_t j = 0; j < len; j++)
      mp_obj_free(mp__obj_list_take(l, (size_t)start));
    for (size_t j = 0; j < ni; j++)
      if ((r = mp__obj_list_insert(l, (size_t)start + j, mp__obj_list_take(copy, 0))) < 0)
        break;
  } else {
    for (int64_t j = 0; j < len; j++)
      mp__obj_list_replace(l, (size_t)(start + j * step), mp__obj_list_take(copy, 0));
  }
  mp_obj_free(copy);
  return r;
}

int mp__call_list(struct sobj *o, const char *m, const mp_obj *a, mp_obj **res) {
  mp_obj *l = o->val;
  size_t n = (size_t)mp_obj_len(l), at;
  int64_t i;
  int r;
  if (MP__IS(m, "len"))
    return (int)n;
  if (o->kind == MP__K_LIST) {
    if (MP__IS(m, "slice") || MP__IS(m, "set_slice") || MP__IS(m, "del_slice"))
      return list_slice(l, m, a, res);
    if (MP__IS(m, "clear")) {
      mp__obj_clear(l);
      return 0;
    }
    if (MP__IS(m, "reverse")) {
      mp__obj_list_reverse(l);
      return 0;
    }
    if (MP__IS(m, "sort")) {
      int rev = 0;
      if (!mp__nargs(a, 1) || mp_obj_get_bool(mp__arg(a, 0), &rev) < 0)
        return -EINVAL;
      return mp__obj_list_sort(l, rev);
    }
    if (MP__IS(m, "imul")) {
      if (!mp__nargs(a, 1) || mp__arg_int(a, 0, &i) < 0)
        return -EINVAL;
      if (i <= 0 || n == 0) {
        mp__obj_clear(l);
        return 0;
      }
      if ((uint64_t)i > MP_OBJ_MAX_ITEMS / n)
        return -EMSGSIZE; /* it could never be sent again */
      mp_obj *orig = mp_obj_copy(l);
      if (!orig)
        return -ENOMEM;
      size_t grown = n;
      for (int64_t k = 1; k < i; k++)
        for (size_t j = 0; j < n; j++, grown++)
          if ((r = mp_obj_list_append(l, mp_obj_copy(mp__obj_list_at(orig, j)))) < 0) {
            while ((size_t)mp_obj_len(l) > n) /* back to how it was */
              mp_obj_free(mp__obj_list_take(l, n));
            mp_obj_free(orig);
            return r;
          }
      mp_obj_free(orig);
      return 0;
    }
  }
  if (MP__IS(m, "copy"))
    return mp__give(l, res);
  if (MP__IS(m, "append"))
    return mp__nargs(a, 1) ? mp_obj_list_append(l, mp_obj_copy(mp__arg(a, 0))) : -EINVAL;
  if (MP__IS(m, "extend")) {
    const mp_obj *items = mp__arg(a, 0);
    if (!mp__nargs(a, 1) || mp_obj_type(items) != MP_OBJ_LIST)
      return -EDOM;
    for (size_t j = 0; j < (size_t)mp_obj_len(items); j++)
      if ((r = mp_obj_list_append(l, mp_obj_copy(mp__obj_list_at(items, j)))) < 0)
        return r;
    return 0;
  }
  if (MP__IS(m, "get") || MP__IS(m, "pop")) {
    if (a && mp_obj_len(a) > 1)
      return -EINVAL;
    i = -1;
    if (mp_obj_len(a) == 1 && mp__arg_int(a, 0, &i) < 0)
      return -EINVAL;
    if (MP__IS(m, "get") && mp_obj_len(a) != 1)
      return -EINVAL;
    if ((r = norm_index(i, n, &at)) < 0)
      return r;
    if (MP__IS(m, "get"))
      return mp__give(mp__obj_list_at(l, at), res);
    *res = mp__obj_list_take(l, at);
    return 0;
  }
  if (MP__IS(m, "set") || MP__IS(m, "insert")) {
    if (!mp__nargs(a, 2) || mp__arg_int(a, 0, &i) < 0)
      return -EINVAL;
    mp_obj *v = mp_obj_copy(mp__arg(a, 1));
    if (!v)
      return -ENOMEM;
    if (MP__IS(m, "set")) {
      if ((r = norm_index(i, n, &at)) < 0) {
        mp_obj_free(v);
        return r;
      }
      mp__obj_list_replace(l, at, v);
      return 0;
    }
    if (i < 0)
      i = i + (int64_t)n < 0 ? 0 : i + (int64_t)n;
    return mp__obj_list_insert(l, (size_t)i > n ? n : (size_t)i, v);
  }
  if (MP__IS(m, "remove") || MP__IS(m, "index") || MP__IS(m, "count")) {
    if (!mp__nargs(a, 1))
      return -EINVAL;
    int count = 0;
    for (size_t j = 0; j < n; j++) {
      if (!mp_obj_equal(mp__obj_list_at(l, j), mp__arg(a, 0)))
        continue;
      if (MP__IS(m, "index"))
        return (int)j;
      if (MP__IS(m, "remove")) {
        mp_obj_free(mp__obj_list_take(l, j));
        return 0;
      }
      count++;
    }
    return MP__IS(m, "count") ? count : -ENOENT;
  }
  return -EOPNOTSUPP;
}

/* ------------------------------------------------------------- Namespace */

int mp__call_namespace(struct sobj *o, const char *m, const mp_obj *a, mp_obj **res) {
  const mp_obj *name = mp__arg(a, 0);
  if (mp_obj_type(name) != MP_OBJ_STR)
    return MP__IS(m, "getattr") || MP__IS(m, "setattr") || MP__IS(m, "delattr") ? -EINVAL
                                                                                : -EOPNOTSUPP;
  if (MP__IS(m, "setattr"))
    return mp__nargs(a, 2) ? mp_obj_dict_set(o->val, mp_obj_copy(name), mp_obj_copy(mp__arg(a, 1)))
                           : -EINVAL;
  if (!MP__IS(m, "getattr") && !MP__IS(m, "delattr"))
    return -EOPNOTSUPP;
  ssize_t at = mp__obj_dict_find(o->val, name);
  if (at < 0)
    return -ENOENT;
  if (MP__IS(m, "delattr")) {
    mp__obj_dict_remove(o->val, (size_t)at, NULL, NULL);
    return 0;
  }
  const mp_obj *v;
  mp__obj_dict_entry(o->val, (size_t)at, NULL, &v);
  return mp__give(v, res);
}

/* ------------------------------------------------------------------- set */

int mp__call_set(struct sobj *o, const char *m, const mp_obj *a, mp_obj **res) {
  mp_obj *d = o->val;
  const mp_obj *x = mp__arg(a, 0);
  if (MP__IS(m, "len"))
    return (int)mp_obj_len(d);
  if (MP__IS(m, "clear")) {
    mp__obj_clear(d);
    return 0;
  }
  if (MP__IS(m, "items"))
    return mp__call_dict(o, "keys", a, res);
  if (MP__IS(m, "pop")) {
    ssize_t len = mp_obj_len(d);
    if (len == 0)
      return -ENOENT; /* KeyError: pop from an empty set */
    mp__obj_dict_compact(d);
    mp__obj_dict_remove(d, (size_t)len - 1, res, NULL);
    return 0;
  }
  if (MP__IS(m, "update")) {
    if (!mp__nargs(a, 1) || mp_obj_type(x) != MP_OBJ_LIST)
      return -EDOM;
    for (size_t i = 0; i < (size_t)mp_obj_len(x); i++) {
      int r = mp_obj_dict_set(d, mp_obj_copy(mp__obj_list_at(x, i)), mp_obj_nil());
      if (r < 0)
        return r;
    }
    return 0;
  }
  if (!MP__IS(m, "add") && !MP__IS(m, "discard") && !MP__IS(m, "remove") && !MP__IS(m, "contains"))
    return -EOPNOTSUPP;
  if (!mp__nargs(a, 1))
    return -EINVAL;
  if (MP__IS(m, "add"))
    return mp__obj_dict_find(d, x) >= 0 ? 0 : mp_obj_dict_set(d, mp_obj_copy(x), mp_obj_nil());
  ssize_t at = mp__obj_dict_find(d, x);
  if (MP__IS(m, "contains"))
    return at >= 0;
  if (at < 0)
    return MP__IS(m, "remove") ? -ENOENT : 0; /* remove: KeyError; discard: nothing */
  mp__obj_dict_remove(d, (size_t)at, NULL, NULL);
  return 0;
}
