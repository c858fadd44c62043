/* SPDX-License-Identifier: MIT */
/*
 * Typed values (mp_obj, declared in mp/manager.h): the value tree and its
 * repr. Their wire format, MessagePack, is in wire.c; the structure itself
 * and the helpers the manager's files use are in wire.h.
 *
 * Map of this file:
 *   1. the value tree: constructors, accessors, lists, dicts with a hash index
 *      (SipHash under a per-process secret; see struct mp__obj_index)
 *   2. repr (Python's spelling)
 * No crash points: a value lives in one process's private memory.
 * Tests: tests/test_manager.c (values, repr, the dict index).
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "wire.h"

/* ------------------------------------------------------------ 1. the tree */

/* A dict's hash index: linear probing over slots holding entry index + 1
 * (0: empty), hashed with SipHash (crypto_shorthash) under a key taken from
 * the process's secret when the index is built, so a peer that does not
 * know the secret cannot choose keys that collide (a manager server's dicts
 * hold its clients' keys). Each index keeps its own key: a new secret (see
 * mp__obj_hash_rekey) applies to indexes built afterwards. */
struct mp__obj_index {
  unsigned char key[crypto_shorthash_KEYBYTES];
  uint32_t slot[];
};

/* Dicts up to this size are searched linearly. */
#define DICT_LINEAR 8

static mp_obj *obj_new(int type) {
  mp_obj *o = calloc(1, sizeof *o);
  if (o)
    o->type = type;
  return o;
}

MP_EXPORT mp_obj *mp_obj_nil(void) { return obj_new(MP_OBJ_NIL); }

MP_EXPORT mp_obj *mp_obj_bool(int v) {
  mp_obj *o = obj_new(MP_OBJ_BOOL);
  if (o)
    o->u.b = v != 0;
  return o;
}

MP_EXPORT mp_obj *mp_obj_int(int64_t v) {
  mp_obj *o = obj_new(MP_OBJ_INT);
  if (o)
    o->u.i = v;
  return o;
}

mp_obj *mp__obj_ref(int64_t id) {
  mp_obj *o = obj_new(MP_OBJ_PROXY);
  if (o)
    o->u.i = id;
  return o;
}

int64_t mp__obj_ref_id(const mp_obj *o) { return o->u.i; }

/* Call fn(id, ctx) for every proxy reference in the tree o. */
void mp__obj_each_ref(const mp_obj *o, void (*fn)(int64_t id, void *ctx), void *ctx) {
  switch (o->type) {
  case MP_OBJ_PROXY: fn(o->u.i, ctx); break;
  case MP_OBJ_LIST:
    for (size_t i = 0; i < o->u.l.n; i++)
      mp__obj_each_ref(o->u.l.v[i], fn, ctx);
    break;
  case MP_OBJ_DICT:
    for (size_t i = 0; i < o->u.d.n; i++)
      if (o->u.d.v[i].key) { /* not a hole */
        mp__obj_each_ref(o->u.d.v[i].key, fn, ctx);
        mp__obj_each_ref(o->u.d.v[i].value, fn, ctx);
      }
    break;
  default: break;
  }
}

MP_EXPORT mp_obj *mp_obj_float(double v) {
  mp_obj *o = obj_new(MP_OBJ_FLOAT);
  if (o)
    o->u.f = v;
  return o;
}

static mp_obj *blob_new(int type, const void *p, size_t n) {
  if (!p && n)
    return NULL;
  mp_obj *o = obj_new(type);
  if (!o)
    return NULL;
  o->u.s.p = malloc(n + 1);
  if (!o->u.s.p) {
    free(o);
    return NULL;
  }
  if (n)
    memcpy(o->u.s.p, p, n);
  o->u.s.p[n] = 0;
  o->u.s.n = n;
  return o;
}

MP_EXPORT mp_obj *mp_obj_str(const char *s) {
  return s ? blob_new(MP_OBJ_STR, s, strlen(s)) : NULL;
}
MP_EXPORT mp_obj *mp_obj_strn(const char *s, size_t n) { return blob_new(MP_OBJ_STR, s, n); }
MP_EXPORT mp_obj *mp_obj_bytes(const void *p, size_t n) { return blob_new(MP_OBJ_BYTES, p, n); }
MP_EXPORT mp_obj *mp_obj_list(void) { return obj_new(MP_OBJ_LIST); }
MP_EXPORT mp_obj *mp_obj_dict(void) { return obj_new(MP_OBJ_DICT); }

MP_EXPORT mp_obj *mp_obj_listv(size_t n, ...) {
  mp_obj *l = mp_obj_list();
  va_list ap;
  va_start(ap, n);
  for (size_t i = 0; i < n; i++) {
    mp_obj *item = va_arg(ap, mp_obj *);
    if (!l)
      mp_obj_free(item);
    else if (mp_obj_list_append(l, item) < 0) {
      mp_obj_free(l);
      l = NULL;
    }
  }
  va_end(ap);
  return l;
}

void mp__obj_clear(mp_obj *o) {
  if (o->type == MP_OBJ_LIST) {
    for (size_t i = 0; i < o->u.l.n; i++)
      mp_obj_free(o->u.l.v[i]);
    o->u.l.n = 0;
  } else if (o->type == MP_OBJ_DICT) {
    for (size_t i = 0; i < o->u.d.n; i++) {
      mp_obj_free(o->u.d.v[i].key);
      mp_obj_free(o->u.d.v[i].value);
    }
    o->u.d.n = 0;
    o->u.d.holes = 0;
    free(o->u.d.idx);
    o->u.d.idx = NULL;
    o->u.d.idx_cap = 0;
  }
}

MP_EXPORT int mp_obj_free(mp_obj *o) {
  if (!o)
    return 0;
  switch (o->type) {
  case MP_OBJ_STR:
  case MP_OBJ_BYTES: free(o->u.s.p); break;
  case MP_OBJ_LIST:
    mp__obj_clear(o);
    free(o->u.l.v);
    break;
  case MP_OBJ_DICT:
    mp__obj_clear(o);
    free(o->u.d.v);
    break;
  default: break;
  }
  free(o);
  return 0;
}

MP_EXPORT mp_obj *mp_obj_copy(const mp_obj *o) {
  if (!o)
    return NULL;
  switch (o->type) {
  case MP_OBJ_STR:
  case MP_OBJ_BYTES: return blob_new(o->type, o->u.s.p, o->u.s.n);
  case MP_OBJ_LIST: {
    mp_obj *l = mp_obj_list();
    for (size_t i = 0; l && i < o->u.l.n; i++)
      if (mp_obj_list_append(l, mp_obj_copy(o->u.l.v[i])) < 0) {
        mp_obj_free(l);
        l = NULL;
      }
    return l;
  }
  case MP_OBJ_DICT: {
    mp_obj *d = mp_obj_dict();
    for (size_t i = 0; d && i < o->u.d.n; i++)
      if (o->u.d.v[i].key && /* not a hole */
          mp_obj_dict_set(d, mp_obj_copy(o->u.d.v[i].key), mp_obj_copy(o->u.d.v[i].value)) < 0) {
        mp_obj_free(d);
        d = NULL;
      }
    return d;
  }
  default: {
    mp_obj *c = obj_new(o->type);
    if (c)
      c->u = o->u;
    return c;
  }
  }
}

MP_EXPORT int mp_obj_type(const mp_obj *o) { return o ? o->type : -EINVAL; }

static bool obj_equal(const mp_obj *a, const mp_obj *b) {
  if (a->type != b->type)
    return false;
  switch (a->type) {
  case MP_OBJ_NIL: return true;
  case MP_OBJ_BOOL: return a->u.b == b->u.b;
  case MP_OBJ_INT:
  case MP_OBJ_PROXY: return a->u.i == b->u.i;
  case MP_OBJ_FLOAT: return a->u.f == b->u.f;
  case MP_OBJ_STR:
  case MP_OBJ_BYTES: return a->u.s.n == b->u.s.n && !memcmp(a->u.s.p, b->u.s.p, a->u.s.n);
  case MP_OBJ_LIST:
    if (a->u.l.n != b->u.l.n)
      return false;
    for (size_t i = 0; i < a->u.l.n; i++)
      if (!obj_equal(a->u.l.v[i], b->u.l.v[i]))
        return false;
    return true;
  case MP_OBJ_DICT:
    if (a->u.d.n - a->u.d.holes != b->u.d.n - b->u.d.holes)
      return false;
    for (size_t i = 0, j = 0;; i++, j++) { /* in order, past the holes */
      while (i < a->u.d.n && !a->u.d.v[i].key)
        i++;
      while (j < b->u.d.n && !b->u.d.v[j].key)
        j++;
      if (i == a->u.d.n || j == b->u.d.n)
        return true; /* both at their ends: the live counts are equal */
      if (!obj_equal(a->u.d.v[i].key, b->u.d.v[j].key) ||
          !obj_equal(a->u.d.v[i].value, b->u.d.v[j].value))
        return false;
    }
  default: return false;
  }
}

MP_EXPORT int mp_obj_equal(const mp_obj *a, const mp_obj *b) {
  if (!a || !b)
    return -EINVAL;
  return obj_equal(a, b);
}

#define GETTER_CHECK(o, out, t)                                                                    \
  do {                                                                                             \
    if (!(o) || !(out))                                                                            \
      return -EINVAL;                                                                              \
    if ((o)->type != (t))                                                                          \
      return -EDOM;                                                                                \
  } while (0)

MP_EXPORT int mp_obj_get_bool(const mp_obj *o, int *ret) {
  GETTER_CHECK(o, ret, MP_OBJ_BOOL);
  *ret = o->u.b;
  return 0;
}

MP_EXPORT int mp_obj_get_int(const mp_obj *o, int64_t *ret) {
  GETTER_CHECK(o, ret, MP_OBJ_INT);
  *ret = o->u.i;
  return 0;
}

MP_EXPORT int mp_obj_get_float(const mp_obj *o, double *ret) {
  if (!o || !ret)
    return -EINVAL;
  if (o->type == MP_OBJ_INT)
    *ret = (double)o->u.i;
  else if (o->type == MP_OBJ_FLOAT)
    *ret = o->u.f;
  else
    return -EDOM;
  return 0;
}

MP_EXPORT int mp_obj_get_str(const mp_obj *o, const char **ret, size_t *len) {
  GETTER_CHECK(o, ret, MP_OBJ_STR);
  *ret = o->u.s.p;
  if (len)
    *len = o->u.s.n;
  return 0;
}

MP_EXPORT int mp_obj_get_bytes(const mp_obj *o, const void **ret, size_t *len) {
  GETTER_CHECK(o, ret, MP_OBJ_BYTES);
  *ret = o->u.s.p;
  if (len)
    *len = o->u.s.n;
  return 0;
}

MP_EXPORT ssize_t mp_obj_len(const mp_obj *o) {
  if (!o)
    return -EINVAL;
  switch (o->type) {
  case MP_OBJ_STR:
  case MP_OBJ_BYTES: return (ssize_t)o->u.s.n;
  case MP_OBJ_LIST: return (ssize_t)o->u.l.n;
  case MP_OBJ_DICT: return (ssize_t)(o->u.d.n - o->u.d.holes);
  default: return -EDOM;
  }
}

/* Make room for one more element of size `elem` in *v (n used, *cap). */
static int grow(void **v, size_t n, size_t *cap, size_t elem) {
  if (n < *cap)
    return 0;
  size_t nc = *cap ? *cap * 2 : 4;
  void *p = realloc(*v, nc * elem);
  if (!p)
    return -ENOMEM;
  *v = p;
  *cap = nc;
  return 0;
}

int mp__obj_list_insert(mp_obj *l, size_t i, mp_obj *item) {
  if (!item || grow((void **)&l->u.l.v, l->u.l.n, &l->u.l.cap, sizeof(mp_obj *)) < 0) {
    mp_obj_free(item);
    return -ENOMEM;
  }
  memmove(l->u.l.v + i + 1, l->u.l.v + i, (l->u.l.n - i) * sizeof(mp_obj *));
  l->u.l.v[i] = item;
  l->u.l.n++;
  return 0;
}

mp_obj *mp__obj_list_take(mp_obj *l, size_t i) {
  mp_obj *item = l->u.l.v[i];
  memmove(l->u.l.v + i, l->u.l.v + i + 1, (l->u.l.n - i - 1) * sizeof(mp_obj *));
  l->u.l.n--;
  return item;
}

void mp__obj_list_replace(mp_obj *l, size_t i, mp_obj *item) {
  mp_obj_free(l->u.l.v[i]);
  l->u.l.v[i] = item;
}

mp_obj *mp__obj_list_at(const mp_obj *l, size_t i) { return l->u.l.v[i]; }

/* Python's order of two values: numbers (bool, int, float) by value, str
 * with str and bytes with bytes bytewise, lists item by item. Others (nil,
 * dicts, mixed kinds) are unordered: -EDOM, Python's TypeError. */
int mp__obj_compare(const mp_obj *a, const mp_obj *b, int *cmp) {
  bool na = a->type == MP_OBJ_BOOL || a->type == MP_OBJ_INT || a->type == MP_OBJ_FLOAT;
  bool nb = b->type == MP_OBJ_BOOL || b->type == MP_OBJ_INT || b->type == MP_OBJ_FLOAT;
  if (na && nb) {
    if (a->type != MP_OBJ_FLOAT && b->type != MP_OBJ_FLOAT) {
      int64_t x = a->type == MP_OBJ_BOOL ? a->u.b : a->u.i;
      int64_t y = b->type == MP_OBJ_BOOL ? b->u.b : b->u.i;
      *cmp = (x > y) - (x < y);
      return 0;
    }
    /* mixed with a float: by value as long doubles (exact for int64) */
    long double x = a->type == MP_OBJ_FLOAT  ? a->u.f
                    : a->type == MP_OBJ_BOOL ? a->u.b
                                             : (long double)a->u.i;
    long double y = b->type == MP_OBJ_FLOAT  ? b->u.f
                    : b->type == MP_OBJ_BOOL ? b->u.b
                                             : (long double)b->u.i;
    if (x != x || y != y) { /* NaN: every comparison is false, as in Python */
      *cmp = 0;
      return 0;
    }
    *cmp = (x > y) - (x < y);
    return 0;
  }
  if (a->type != b->type)
    return -EDOM;
  if (a->type == MP_OBJ_STR || a->type == MP_OBJ_BYTES) {
    size_t n = a->u.s.n < b->u.s.n ? a->u.s.n : b->u.s.n;
    int c = n ? memcmp(a->u.s.p, b->u.s.p, n) : 0;
    *cmp = c ? (c > 0) - (c < 0) : (a->u.s.n > b->u.s.n) - (a->u.s.n < b->u.s.n);
    return 0;
  }
  if (a->type == MP_OBJ_LIST) {
    for (size_t i = 0; i < a->u.l.n && i < b->u.l.n; i++) {
      if (mp_obj_equal(a->u.l.v[i], b->u.l.v[i]) == 1)
        continue;
      return mp__obj_compare(a->u.l.v[i], b->u.l.v[i], cmp);
    }
    *cmp = (a->u.l.n > b->u.l.n) - (a->u.l.n < b->u.l.n);
    return 0;
  }
  return -EDOM;
}

/* Stable merge of v[lo..mid) and v[mid..hi) through tmp. */
static int sort_merge(mp_obj **v, mp_obj **tmp, size_t lo, size_t mid, size_t hi, bool rev) {
  size_t i = lo, j = mid, k = lo;
  while (i < mid && j < hi) {
    int c;
    int r = mp__obj_compare(v[j], v[i], &c);
    if (r < 0)
      return r;
    /* take the right one only when strictly before: equal items keep
     * their order, also when reversed (Python's reverse=True) */
    bool right_first = rev ? c > 0 : c < 0;
    tmp[k++] = right_first ? v[j++] : v[i++];
  }
  while (i < mid)
    tmp[k++] = v[i++];
  while (j < hi)
    tmp[k++] = v[j++];
  memcpy(v + lo, tmp + lo, (hi - lo) * sizeof *v);
  return 0;
}

int mp__obj_list_sort(mp_obj *l, bool reverse) {
  size_t n = l->u.l.n;
  if (n < 2)
    return 0;
  mp_obj **work = malloc(2 * n * sizeof *work);
  if (!work)
    return -ENOMEM;
  mp_obj **v = work, **tmp = work + n;
  memcpy(v, l->u.l.v, n * sizeof *v);
  for (size_t w = 1; w < n; w *= 2)
    for (size_t lo = 0; lo + w < n; lo += 2 * w) {
      size_t hi = lo + 2 * w < n ? lo + 2 * w : n;
      int r = sort_merge(v, tmp, lo, lo + w, hi, reverse);
      if (r < 0) {
        free(work); /* the list is left as it was */
        return r;
      }
    }
  memcpy(l->u.l.v, v, n * sizeof *v);
  free(work);
  return 0;
}

void mp__obj_list_reverse(mp_obj *l) {
  for (size_t i = 0, j = l->u.l.n; i + 1 < j; i++, j--) {
    mp_obj *t = l->u.l.v[i];
    l->u.l.v[i] = l->u.l.v[j - 1];
    l->u.l.v[j - 1] = t;
  }
}

MP_EXPORT int mp_obj_list_append(mp_obj *list, mp_obj *item) {
  if (!list || list->type != MP_OBJ_LIST) {
    mp_obj_free(item);
    return !list ? -EINVAL : -EDOM;
  }
  return mp__obj_list_insert(list, list->u.l.n, item);
}

MP_EXPORT int mp_obj_list_get(const mp_obj *list, int64_t index, const mp_obj **ret) {
  GETTER_CHECK(list, ret, MP_OBJ_LIST);
  int64_t n = (int64_t)list->u.l.n;
  if (index < 0)
    index += n;
  if (index < 0 || index >= n)
    return -ERANGE;
  *ret = list->u.l.v[index];
  return 0;
}

/* The process's secret for new indexes; set once (randomly) on first use,
 * and anew by mp__obj_hash_rekey(). */
static unsigned char hash_secret[crypto_shorthash_KEYBYTES];
static pthread_once_t hash_once = PTHREAD_ONCE_INIT;

static void hash_secret_init(void) {
  if (sodium_init() < 0 || mp__random_bytes(hash_secret, sizeof hash_secret) < 0)
    randombytes_buf(hash_secret, sizeof hash_secret);
}

void mp__obj_hash_rekey(void) {
  pthread_once(&hash_once, hash_secret_init);
  if (mp__random_bytes(hash_secret, sizeof hash_secret) < 0)
    randombytes_buf(hash_secret, sizeof hash_secret);
}

/* SipHash-2-4 of one part of a value, keyed by key with the part's type
 * mixed into it (so an int and 8 bytes with its bits differ). */
static uint64_t sip(const unsigned char *key, int type, const void *p, size_t n) {
  unsigned char k[crypto_shorthash_KEYBYTES], out[crypto_shorthash_BYTES];
  memcpy(k, key, sizeof k);
  k[0] ^= (unsigned char)type;
  crypto_shorthash(out, p, n, k);
  uint64_t h;
  memcpy(&h, out, sizeof h);
  return h;
}

static uint64_t obj_hash(const mp_obj *o, const unsigned char *key) {
  switch (o->type) {
  case MP_OBJ_BOOL: return sip(key, o->type, &o->u.b, sizeof o->u.b);
  case MP_OBJ_INT:
  case MP_OBJ_PROXY: return sip(key, o->type, &o->u.i, sizeof o->u.i);
  case MP_OBJ_FLOAT: {
    double f = o->u.f == 0 ? 0 : o->u.f; /* -0.0 == 0.0 */
    return sip(key, o->type, &f, sizeof f);
  }
  case MP_OBJ_STR:
  case MP_OBJ_BYTES: return sip(key, o->type, o->u.s.p, o->u.s.n);
  case MP_OBJ_LIST:
  case MP_OBJ_DICT: {
    /* chained: each element's hash into the running one */
    uint64_t h[2] = {sip(key, o->type, NULL, 0), 0};
    size_t n = o->type == MP_OBJ_LIST ? o->u.l.n : o->u.d.n;
    for (size_t i = 0; i < n; i++) {
      if (o->type == MP_OBJ_LIST) {
        h[1] = obj_hash(o->u.l.v[i], key);
      } else if (!o->u.d.v[i].key) {
        continue; /* a hole */
      } else {
        h[1] = obj_hash(o->u.d.v[i].key, key);
        h[0] = sip(key, o->type, h, sizeof h);
        h[1] = obj_hash(o->u.d.v[i].value, key);
      }
      h[0] = sip(key, o->type, h, sizeof h);
    }
    return h[0];
  }
  default: return sip(key, o->type, NULL, 0);
  }
}

static void index_put(mp_obj *d, size_t entry) {
  size_t mask = d->u.d.idx_cap - 1;
  size_t s = obj_hash(d->u.d.v[entry].key, d->u.d.idx->key) & mask;
  while (d->u.d.idx->slot[s])
    s = (s + 1) & mask;
  d->u.d.idx->slot[s] = (uint32_t)entry + 1;
}

/* Move the live entries down over the holes, in order. With map (n
 * entries), map[old] = new position for each live entry. */
static void squeeze(mp_obj *d, uint32_t *map) {
  size_t j = 0;
  for (size_t i = 0; i < d->u.d.n; i++) {
    if (!d->u.d.v[i].key)
      continue;
    if (map)
      map[i] = (uint32_t)j;
    d->u.d.v[j++] = d->u.d.v[i];
  }
  d->u.d.n = j;
  d->u.d.holes = 0;
}

/* Build the index for the current entries (none while small), at twice
 * their count at least. Done when the dict grows past its index, never on a
 * removal. */
static int index_rebuild(mp_obj *d) {
  free(d->u.d.idx);
  d->u.d.idx = NULL;
  d->u.d.idx_cap = 0;
  squeeze(d, NULL);
  if (d->u.d.n <= DICT_LINEAR)
    return 0;
  size_t cap = 16;
  while (cap < d->u.d.n * 2)
    cap *= 2;
  d->u.d.idx = calloc(1, sizeof(struct mp__obj_index) + cap * sizeof(uint32_t));
  if (!d->u.d.idx)
    return -ENOMEM;
  pthread_once(&hash_once, hash_secret_init);
  memcpy(d->u.d.idx->key, hash_secret, sizeof hash_secret);
  d->u.d.idx_cap = cap;
  for (size_t i = 0; i < d->u.d.n; i++)
    index_put(d, i);
  return 0;
}

/* The slot of entry i in d's index. */
static size_t index_slot_of(const mp_obj *d, size_t i) {
  size_t mask = d->u.d.idx_cap - 1;
  size_t s = obj_hash(d->u.d.v[i].key, d->u.d.idx->key) & mask;
  while (d->u.d.idx->slot[s] != i + 1)
    s = (s + 1) & mask;
  return s;
}

ssize_t mp__obj_dict_find(const mp_obj *d, const mp_obj *key) {
  if (!d->u.d.idx) {
    for (size_t i = 0; i < d->u.d.n; i++)
      if (d->u.d.v[i].key && obj_equal(d->u.d.v[i].key, key))
        return (ssize_t)i;
    return -1;
  }
  size_t mask = d->u.d.idx_cap - 1;
  for (size_t s = obj_hash(key, d->u.d.idx->key) & mask;; s = (s + 1) & mask) {
    uint32_t e = d->u.d.idx->slot[s];
    if (!e)
      return -1;
    if (obj_equal(d->u.d.v[e - 1].key, key))
      return (ssize_t)(e - 1);
  }
}

/* Squeeze the holes out of an indexed dict and renumber its index's slots
 * to match, without hashing a key again (or, with no memory for the map,
 * rebuild the index). */
static void compact(mp_obj *d) {
  if (!d->u.d.holes)
    return;
  uint32_t *map = d->u.d.idx ? malloc(d->u.d.n * sizeof *map) : NULL;
  if (d->u.d.idx && !map) {
    index_rebuild(d); /* squeezes; on failure the linear search works */
    return;
  }
  squeeze(d, map);
  for (size_t s = 0; map && s < d->u.d.idx_cap; s++)
    if (d->u.d.idx->slot[s])
      d->u.d.idx->slot[s] = map[d->u.d.idx->slot[s] - 1] + 1;
  free(map);
}

void mp__obj_dict_compact(mp_obj *d) { compact(d); }

void mp__obj_dict_entry(const mp_obj *d, size_t i, const mp_obj **key, const mp_obj **value) {
  if (key)
    *key = d->u.d.v[i].key;
  if (value)
    *value = d->u.d.v[i].value;
}

/* Removal keeps the entries in insertion order without moving them: in a
 * small dict (no index) the later entries move down; in an indexed one the
 * entry becomes a hole, and its index slot is emptied by backward-shift
 * deletion (later slots of its probe run move back: no tombstone, no other
 * key hashed but those of that run). When holes outnumber live entries,
 * compact() squeezes them out (amortised: at least as many removals as it
 * moves entries). */
void mp__obj_dict_remove(mp_obj *d, size_t i, mp_obj **key, mp_obj **value) {
  struct mp__obj_pair p = d->u.d.v[i];
  if (d->u.d.idx) {
    size_t mask = d->u.d.idx_cap - 1, hole = index_slot_of(d, i);
    for (size_t s = (hole + 1) & mask; d->u.d.idx->slot[s]; s = (s + 1) & mask) {
      size_t home = obj_hash(d->u.d.v[d->u.d.idx->slot[s] - 1].key, d->u.d.idx->key) & mask;
      /* the slot may fill the hole when its home is not in (hole, s] */
      if (((s - home) & mask) >= ((s - hole) & mask)) {
        d->u.d.idx->slot[hole] = d->u.d.idx->slot[s];
        hole = s;
      }
    }
    d->u.d.idx->slot[hole] = 0;
    d->u.d.v[i] = (struct mp__obj_pair){NULL, NULL};
    d->u.d.holes++;
    while (d->u.d.n && !d->u.d.v[d->u.d.n - 1].key) { /* holes at the end just go */
      d->u.d.n--;
      d->u.d.holes--;
    }
    if (d->u.d.holes * 2 > d->u.d.n)
      compact(d);
    if (d->u.d.n - d->u.d.holes <= DICT_LINEAR) {
      squeeze(d, NULL); /* small again: the linear search */
      free(d->u.d.idx);
      d->u.d.idx = NULL;
      d->u.d.idx_cap = 0;
    }
  } else {
    memmove(d->u.d.v + i, d->u.d.v + i + 1, (d->u.d.n - i - 1) * sizeof(struct mp__obj_pair));
    d->u.d.n--;
  }
  if (key)
    *key = p.key;
  else
    mp_obj_free(p.key);
  if (value)
    *value = p.value;
  else
    mp_obj_free(p.value);
}

MP_EXPORT int mp_obj_dict_set(mp_obj *dict, mp_obj *key, mp_obj *value) {
  int r = 0;
  if (!dict)
    r = -EINVAL;
  else if (dict->type != MP_OBJ_DICT)
    r = -EDOM;
  else if (!key || !value)
    r = -ENOMEM;
  if (r < 0)
    goto fail;
  ssize_t at = mp__obj_dict_find(dict, key);
  if (at >= 0) {
    mp_obj_free(key);
    mp_obj_free(dict->u.d.v[at].value);
    dict->u.d.v[at].value = value;
    return 0;
  }
  if (grow((void **)&dict->u.d.v, dict->u.d.n, &dict->u.d.cap, sizeof(struct mp__obj_pair)) < 0) {
    r = -ENOMEM;
    goto fail;
  }
  dict->u.d.v[dict->u.d.n++] = (struct mp__obj_pair){key, value};
  if (dict->u.d.n > DICT_LINEAR) {
    if (dict->u.d.n * 2 > dict->u.d.idx_cap)
      index_rebuild(dict); /* on failure the linear search still works */
    else
      index_put(dict, dict->u.d.n - 1);
  }
  return 0;
fail:
  mp_obj_free(key);
  mp_obj_free(value);
  return r;
}

MP_EXPORT int mp_obj_dict_get(const mp_obj *dict, const mp_obj *key, const mp_obj **ret) {
  GETTER_CHECK(dict, ret, MP_OBJ_DICT);
  if (!key)
    return -EINVAL;
  ssize_t at = mp__obj_dict_find(dict, key);
  if (at < 0)
    return -ENOENT;
  *ret = dict->u.d.v[at].value;
  return 0;
}

MP_EXPORT int mp_obj_dict_get_str(const mp_obj *dict, const char *key, const mp_obj **ret) {
  if (!key)
    return -EINVAL;
  mp_obj k = {.type = MP_OBJ_STR, .u.s = {(char *)key, strlen(key)}};
  return mp_obj_dict_get(dict, &k, ret);
}

MP_EXPORT int mp_obj_dict_item(const mp_obj *dict, size_t index, const mp_obj **key,
                               const mp_obj **value) {
  if (!dict)
    return -EINVAL;
  if (dict->type != MP_OBJ_DICT)
    return -EDOM;
  if (index >= dict->u.d.n - dict->u.d.holes)
    return -ERANGE;
  if (dict->u.d.holes) /* only a manager server's dicts have holes; it compacts before walking */
    for (size_t i = 0;; i++)
      if (dict->u.d.v[i].key && index-- == 0) {
        index = i;
        break;
      }
  if (key)
    *key = dict->u.d.v[index].key;
  if (value)
    *value = dict->u.d.v[index].value;
  return 0;
}

/* ------------------------------------------------------------------ 2. repr */

struct out {
  char *buf;
  size_t cap, len;
};

static void put(struct out *w, const char *s, size_t n) {
  if (w->len < w->cap) {
    size_t room = w->cap - w->len;
    memcpy(w->buf + w->len, s, n < room ? n : room);
  }
  w->len += n;
}

static void putf(struct out *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void putf(struct out *w, const char *fmt, ...) {
  char tmp[64];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (n > 0)
    put(w, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

static void repr_blob(struct out *w, const mp_obj *o) {
  const unsigned char *p = (const unsigned char *)o->u.s.p;
  bool bytes = o->type == MP_OBJ_BYTES;
  /* Python's choice of quotes: single, unless the text has ' and no " */
  char q = memchr(p, '\'', o->u.s.n) && !memchr(p, '"', o->u.s.n) ? '"' : '\'';
  if (bytes)
    put(w, "b", 1);
  put(w, &q, 1);
  for (size_t i = 0; i < o->u.s.n; i++) {
    unsigned char c = p[i];
    if (c == '\\' || c == q)
      putf(w, "\\%c", c);
    else if (c == '\n')
      put(w, "\\n", 2);
    else if (c == '\r')
      put(w, "\\r", 2);
    else if (c == '\t')
      put(w, "\\t", 2);
    else if (c < 0x20 || c == 0x7f || (bytes && c >= 0x80))
      putf(w, "\\x%02x", c);
    else
      put(w, (const char *)&c, 1);
  }
  put(w, &q, 1);
}

static void repr_float(struct out *w, double f) {
  if (isnan(f)) {
    put(w, "nan", 3);
    return;
  }
  if (isinf(f)) {
    put(w, f < 0 ? "-inf" : "inf", f < 0 ? 4 : 3);
    return;
  }
  char tmp[40];
  /* the shortest spelling that reads back as the same double */
  for (int prec = 1; prec <= 17; prec++) {
    snprintf(tmp, sizeof tmp, "%.*g", prec, f);
    if (strtod(tmp, NULL) == f)
      break;
  }
  put(w, tmp, strlen(tmp));
  if (!strpbrk(tmp, ".e"))
    put(w, ".0", 2);
}

static void repr(struct out *w, const mp_obj *o) {
  switch (o->type) {
  case MP_OBJ_NIL: put(w, "None", 4); break;
  case MP_OBJ_BOOL: put(w, o->u.b ? "True" : "False", o->u.b ? 4 : 5); break;
  case MP_OBJ_INT: putf(w, "%lld", (long long)o->u.i); break;
  case MP_OBJ_FLOAT: repr_float(w, o->u.f); break;
  case MP_OBJ_PROXY: putf(w, "<proxy %lld>", (long long)o->u.i); break;
  case MP_OBJ_STR:
  case MP_OBJ_BYTES: repr_blob(w, o); break;
  case MP_OBJ_LIST:
    put(w, "[", 1);
    for (size_t i = 0; i < o->u.l.n; i++) {
      if (i)
        put(w, ", ", 2);
      repr(w, o->u.l.v[i]);
    }
    put(w, "]", 1);
    break;
  case MP_OBJ_DICT:
    put(w, "{", 1);
    for (size_t i = 0, first = 1; i < o->u.d.n; i++) {
      if (!o->u.d.v[i].key)
        continue; /* a hole */
      if (!first)
        put(w, ", ", 2);
      first = 0;
      repr(w, o->u.d.v[i].key);
      put(w, ": ", 2);
      repr(w, o->u.d.v[i].value);
    }
    put(w, "}", 1);
    break;
  default: break;
  }
}

MP_EXPORT ssize_t mp_obj_repr(const mp_obj *o, char *buf, size_t cap) {
  if (!o || (!buf && cap))
    return -EINVAL;
  struct out w = {buf, cap ? cap - 1 : 0, 0};
  repr(&w, o);
  if (cap)
    buf[w.len < w.cap ? w.len : w.cap] = 0;
  return (ssize_t)w.len;
}
