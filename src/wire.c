/* SPDX-License-Identifier: MIT */
/*
 * Typed values (mp_obj) and their wire format, MessagePack through msgpack-c.
 *
 * Map of this file:
 *   1. the value tree: constructors, accessors, lists, dicts with a hash index
 *   2. repr (Python's spelling)
 *   3. encoding (msgpack_packer) with the limits checked
 *   4. decoding: a validator that bounds what msgpack-c may allocate, then
 *      msgpack_unpack_next and a conversion to mp_obj
 *   5. the pure parts of the handshake (HMAC-SHA256 from libsodium)
 *
 * Untrusted input: mp_obj_decode() first walks the bytes without allocating
 * (mp__wire_validate): every length must fit in what is left, containers
 * claim no more elements than bytes remain, nesting and the total count of
 * values are bounded, extension types are refused. Only then does msgpack-c
 * decode, so its allocations are bounded by a small multiple of the input.
 */
#include <errno.h>
#include <math.h>
#include <msgpack.h>
#include <pthread.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "internal.h"
#include "wire.h"

/* ------------------------------------------------------------ 1. the tree */

struct pair {
  mp_obj *key, *value;
};

/* A dict's hash index: linear probing over slots holding entry index + 1
 * (0: empty), hashed with SipHash (crypto_shorthash) under a key taken from
 * the process's secret when the index is built, so a peer that does not
 * know the secret cannot choose keys that collide (a manager server's dicts
 * hold its clients' keys). Each index keeps its own key: a new secret (see
 * mp__obj_hash_rekey) applies to indexes built afterwards. */
struct dindex {
  unsigned char key[crypto_shorthash_KEYBYTES];
  uint32_t slot[];
};

struct mp_obj {
  int type;
  union {
    int b;
    int64_t i;
    double f;
    struct {
      char *p;
      size_t n;
    } s; /* str and bytes; p is NUL-terminated */
    struct {
      mp_obj **v;
      size_t n, cap;
    } l;
    struct {
      struct pair *v;
      size_t n, cap;
      struct dindex *idx; /* NULL while small */
      size_t idx_cap;
      size_t holes; /* removed entries (key NULL) among v[0..n); only with idx */
    } d;
  } u;
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
  d->u.d.idx = calloc(1, sizeof(struct dindex) + cap * sizeof(uint32_t));
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
  struct pair p = d->u.d.v[i];
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
    d->u.d.v[i] = (struct pair){NULL, NULL};
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
    memmove(d->u.d.v + i, d->u.d.v + i + 1, (d->u.d.n - i - 1) * sizeof(struct pair));
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
  if (grow((void **)&dict->u.d.v, dict->u.d.n, &dict->u.d.cap, sizeof(struct pair)) < 0) {
    r = -ENOMEM;
    goto fail;
  }
  dict->u.d.v[dict->u.d.n++] = (struct pair){key, value};
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

/* -------------------------------------------------------------- 3. encoding */

static int pack(msgpack_packer *pk, const mp_obj *o, int depth, size_t *items) {
  if (++*items > MP_OBJ_MAX_ITEMS)
    return -EMSGSIZE;
  int r = 0;
  switch (o->type) {
  case MP_OBJ_NIL: r = msgpack_pack_nil(pk); break;
  case MP_OBJ_BOOL: r = o->u.b ? msgpack_pack_true(pk) : msgpack_pack_false(pk); break;
  case MP_OBJ_INT: r = msgpack_pack_int64(pk, o->u.i); break;
  case MP_OBJ_FLOAT: r = msgpack_pack_double(pk, o->u.f); break;
  case MP_OBJ_PROXY: {
    /* fixext 8 of type MP__EXT_PROXY: the object id, big-endian */
    unsigned char b[8];
    for (int k = 0; k < 8; k++)
      b[k] = (unsigned char)((uint64_t)o->u.i >> (56 - 8 * k));
    r = msgpack_pack_ext(pk, 8, MP__EXT_PROXY) || msgpack_pack_ext_body(pk, b, 8);
    break;
  }
  case MP_OBJ_STR:
  case MP_OBJ_BYTES:
    if (o->u.s.n > MP_OBJ_MAX_MESSAGE)
      return -EMSGSIZE;
    if (o->type == MP_OBJ_STR)
      r = msgpack_pack_str(pk, o->u.s.n) || msgpack_pack_str_body(pk, o->u.s.p, o->u.s.n);
    else
      r = msgpack_pack_bin(pk, o->u.s.n) || msgpack_pack_bin_body(pk, o->u.s.p, o->u.s.n);
    break;
  case MP_OBJ_LIST:
    if (depth >= MP_OBJ_MAX_DEPTH || o->u.l.n > MP_OBJ_MAX_ITEMS)
      return -EMSGSIZE;
    if (msgpack_pack_array(pk, o->u.l.n))
      return -ENOMEM;
    for (size_t i = 0; i < o->u.l.n; i++)
      if ((r = pack(pk, o->u.l.v[i], depth + 1, items)) < 0)
        return r;
    return 0;
  case MP_OBJ_DICT:
    if (depth >= MP_OBJ_MAX_DEPTH || o->u.d.n - o->u.d.holes > MP_OBJ_MAX_ITEMS)
      return -EMSGSIZE;
    if (msgpack_pack_map(pk, o->u.d.n - o->u.d.holes))
      return -ENOMEM;
    for (size_t i = 0; i < o->u.d.n; i++) {
      if (!o->u.d.v[i].key)
        continue; /* a hole */
      if ((r = pack(pk, o->u.d.v[i].key, depth + 1, items)) < 0 ||
          (r = pack(pk, o->u.d.v[i].value, depth + 1, items)) < 0)
        return r;
    }
    return 0;
  default: return -EINVAL;
  }
  return r ? -ENOMEM : 0;
}

/* Encode into a new buffer, after `prefix` reserved bytes. */
static int encode(const mp_obj *o, size_t prefix, char **buf, size_t *len) {
  msgpack_sbuffer sb;
  msgpack_sbuffer_init(&sb);
  msgpack_packer pk;
  msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
  static const char zero[8];
  size_t items = 0;
  int r = prefix ? (msgpack_sbuffer_write(&sb, zero, prefix) ? -ENOMEM : 0) : 0;
  if (r == 0)
    r = pack(&pk, o, 0, &items);
  if (r == 0 && sb.size - prefix > MP_OBJ_MAX_MESSAGE)
    r = -EMSGSIZE;
  if (r < 0) {
    msgpack_sbuffer_destroy(&sb);
    return r;
  }
  if (!sb.data) { /* cannot happen: something was written */
    msgpack_sbuffer_destroy(&sb);
    return -ENOMEM;
  }
  *len = sb.size;
  *buf = msgpack_sbuffer_release(&sb);
  return 0;
}

MP_EXPORT int mp_obj_encode(const mp_obj *o, void **ret, size_t *len) {
  if (!o || !ret || !len)
    return -EINVAL;
  char *b;
  size_t n;
  int r = encode(o, 0, &b, &n);
  if (r < 0)
    return r;
  *ret = b;
  *len = n;
  return 0;
}

/* -------------------------------------------------------------- 4. decoding */

static uint64_t be(const unsigned char *p, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; i++)
    v = v << 8 | p[i];
  return v;
}

int mp__wire_validate(const void *buf, size_t len, int max_depth) {
  const unsigned char *p = buf, *end = p + len;
  /* pending[d]: values still to read at depth d; the top level wants one */
  uint64_t pending[MP__MSG_DEPTH + 2];
  if (max_depth > MP__MSG_DEPTH)
    max_depth = MP__MSG_DEPTH;
  int depth = 0;
  pending[0] = 1;
  uint64_t items = 0;
  if (len > MP_OBJ_MAX_MESSAGE)
    return -EMSGSIZE;
  while (depth >= 0) {
    if (pending[depth] == 0) {
      depth--;
      continue;
    }
    pending[depth]--;
    if (p == end)
      return -EBADMSG;
    if (++items > MP_OBJ_MAX_ITEMS)
      return -EMSGSIZE;
    unsigned c = *p++;
    size_t left = (size_t)(end - p);
    uint64_t skip = 0, count = 0;
    bool container = false, map = false;
    if (c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3) {
      /* fixint, nil, bool */
    } else if (c >= 0x80 && c <= 0x9f) {
      container = true;
      map = c <= 0x8f;
      count = c & 0x0f;
    } else if (c >= 0xa0 && c <= 0xbf) {
      skip = c & 0x1f;
    } else {
      int w;
      switch (c) {
      case 0xc4:                   /* bin 8/16/32 */
      case 0xd9: w = 1; goto blob; /* str 8/16/32 */
      case 0xc5:
      case 0xda: w = 2; goto blob;
      case 0xc6:
      case 0xdb:
        w = 4;
      blob:
        if (left < (size_t)w)
          return -EBADMSG;
        skip = be(p, w);
        p += w;
        left -= (size_t)w;
        break;
      case 0xca: skip = 4; break;
      case 0xcb: skip = 8; break;
      case 0xcc:
      case 0xd0: skip = 1; break;
      case 0xcd:
      case 0xd1: skip = 2; break;
      case 0xce:
      case 0xd2: skip = 4; break;
      case 0xd3: skip = 8; break;
      case 0xcf: /* uint64: only within int64 */
        if (left < 8 || (p[0] & 0x80))
          return -EBADMSG;
        skip = 8;
        break;
      case 0xdc:
      case 0xdd:
      case 0xde:
      case 0xdf:
        w = (c == 0xdc || c == 0xde) ? 2 : 4;
        if (left < (size_t)w)
          return -EBADMSG;
        count = be(p, w);
        p += w;
        left -= (size_t)w;
        container = true;
        map = c >= 0xde;
        break;
      case 0xd7: /* fixext 8: only a proxy reference, to an id > 0 */
        if (left < 9 || p[0] != MP__EXT_PROXY || (p[1] & 0x80) || be(p + 1, 8) == 0)
          return -EBADMSG;
        skip = 9;
        break;
      default: return -EBADMSG; /* 0xc1 (never used) and other extension types */
      }
    }
    if (container) {
      if (map)
        count *= 2;
      /* each value takes at least one byte */
      if (count > left)
        return -EBADMSG;
      /* an empty container counts as a level too, as the encoder counts it */
      if (count > MP_OBJ_MAX_ITEMS || depth + 1 > max_depth)
        return -EMSGSIZE;
      if (count)
        pending[++depth] = count;
    } else {
      if (skip > left)
        return -EBADMSG;
      p += skip;
    }
  }
  return p == end ? 0 : -EBADMSG;
}

static mp_obj *convert(const msgpack_object *m) {
  switch (m->type) {
  case MSGPACK_OBJECT_NIL: return mp_obj_nil();
  case MSGPACK_OBJECT_BOOLEAN: return mp_obj_bool(m->via.boolean);
  case MSGPACK_OBJECT_POSITIVE_INTEGER: return mp_obj_int((int64_t)m->via.u64);
  case MSGPACK_OBJECT_NEGATIVE_INTEGER: return mp_obj_int(m->via.i64);
  case MSGPACK_OBJECT_FLOAT32:
  case MSGPACK_OBJECT_FLOAT64: return mp_obj_float(m->via.f64);
  case MSGPACK_OBJECT_STR: return mp_obj_strn(m->via.str.ptr, m->via.str.size);
  case MSGPACK_OBJECT_BIN: return mp_obj_bytes(m->via.bin.ptr, m->via.bin.size);
  case MSGPACK_OBJECT_EXT:
    /* the validator let through only proxy references */
    if (m->via.ext.type != MP__EXT_PROXY || m->via.ext.size != 8)
      return NULL;
    return mp__obj_ref((int64_t)be((const unsigned char *)m->via.ext.ptr, 8));
  case MSGPACK_OBJECT_ARRAY: {
    mp_obj *l = mp_obj_list();
    for (uint32_t i = 0; l && i < m->via.array.size; i++)
      if (mp_obj_list_append(l, convert(&m->via.array.ptr[i])) < 0) {
        mp_obj_free(l);
        l = NULL;
      }
    return l;
  }
  case MSGPACK_OBJECT_MAP: {
    mp_obj *d = mp_obj_dict();
    for (uint32_t i = 0; d && i < m->via.map.size; i++)
      if (mp_obj_dict_set(d, convert(&m->via.map.ptr[i].key), convert(&m->via.map.ptr[i].val)) <
          0) {
        mp_obj_free(d);
        d = NULL;
      }
    return d;
  }
  default: return NULL;
  }
}

MP_EXPORT int mp_obj_decode(const void *buf, size_t len, mp_obj **ret) {
  return mp__obj_decode(buf, len, MP_OBJ_MAX_DEPTH, ret);
}

int mp__obj_decode(const void *buf, size_t len, int max_depth, mp_obj **ret) {
  if ((!buf && len) || !ret)
    return -EINVAL;
  int r = mp__wire_validate(buf, len, max_depth);
  if (r < 0)
    return r;
  msgpack_unpacked u;
  msgpack_unpacked_init(&u);
  size_t off = 0;
  msgpack_unpack_return ur = msgpack_unpack_next(&u, buf, len, &off);
  mp_obj *o = NULL;
  if (ur == MSGPACK_UNPACK_SUCCESS && off == len) {
    o = convert(&u.data);
    r = o ? 0 : -ENOMEM;
  } else {
    r = ur == MSGPACK_UNPACK_NOMEM_ERROR ? -ENOMEM : -EBADMSG;
  }
  msgpack_unpacked_destroy(&u);
  if (r == 0)
    *ret = o;
  return r;
}

/* ------------------------------------------------------------- 5. handshake */

int mp__hs_parse_challenge(const void *buf, size_t len, uint8_t nonce[MP__NONCE_LEN]) {
  if (len == MP__HS_MAGIC_LEN && !memcmp(buf, MP__HS_OPEN, MP__HS_MAGIC_LEN))
    return 0;
  if (len == MP__HS_MAGIC_LEN + MP__NONCE_LEN && !memcmp(buf, MP__HS_AUTH, MP__HS_MAGIC_LEN)) {
    memcpy(nonce, (const char *)buf + MP__HS_MAGIC_LEN, MP__NONCE_LEN);
    return 1;
  }
  if (len == MP__HS_MAGIC_LEN && !memcmp(buf, MP__HS_FULL, MP__HS_MAGIC_LEN))
    return -EUSERS;
  return -EBADMSG;
}

int mp__hs_answer(const void *key, size_t keylen, char label, const uint8_t *nonce,
                  uint8_t mac[MP__MAC_LEN]) {
  uint8_t msg[1 + MP__NONCE_LEN];
  msg[0] = (uint8_t)label;
  memcpy(msg + 1, nonce, MP__NONCE_LEN);
  _Static_assert(MP__MAC_LEN == crypto_auth_hmacsha256_BYTES, "the MAC is an HMAC-SHA256");
  /* sodium_init() is idempotent and thread-safe; -1 only when no entropy
   * source can be opened, which HMAC itself does not need. */
  if (sodium_init() < 0)
    return -ENOMEM;
  crypto_auth_hmacsha256_state st;
  crypto_auth_hmacsha256_init(&st, key, keylen);
  crypto_auth_hmacsha256_update(&st, msg, sizeof msg);
  crypto_auth_hmacsha256_final(&st, mac);
  sodium_memzero(&st, sizeof st);
  return 0;
}

int mp__hs_check(const void *key, size_t keylen, char label, const uint8_t *nonce,
                 const void *answer, size_t len) {
  uint8_t want[MP__MAC_LEN];
  if (mp__hs_answer(key, keylen, label, nonce, want) < 0)
    return -EACCES;
  if (len != MP__MAC_LEN || sodium_memcmp(want, answer, MP__MAC_LEN) != 0)
    return -EACCES;
  return 0;
}

int mp__hs_parse_verdict(const void *buf, size_t len) {
  return len == MP__HS_MAGIC_LEN && !memcmp(buf, MP__HS_WELCOME, MP__HS_MAGIC_LEN) ? 0 : -EACCES;
}

int mp__random_bytes(void *buf, size_t n) {
  char *p = buf;
  while (n) {
    ssize_t r = getrandom(p, n, 0);
    if (r < 0) {
      if (errno == EINTR)
        continue;
      return -errno;
    }
    p += r;
    n -= (size_t)r;
  }
  return 0;
}

/* ------------------------------------------------- 6. requests and replies */

static int frame_start(msgpack_sbuffer *sb, msgpack_packer *pk) {
  static const char zero[MP__FRAME_HDR];
  msgpack_sbuffer_init(sb);
  msgpack_packer_init(pk, sb, msgpack_sbuffer_write);
  return msgpack_sbuffer_write(sb, zero, sizeof zero) ? -ENOMEM : 0;
}

static int frame_end(msgpack_sbuffer *sb, int r, char **buf, size_t *len) {
  if (r == 0 && sb->size - MP__FRAME_HDR > MP_OBJ_MAX_MESSAGE)
    r = -EMSGSIZE;
  if (r < 0) {
    msgpack_sbuffer_destroy(sb);
    return r;
  }
  uint32_t pay = (uint32_t)(sb->size - MP__FRAME_HDR);
  sb->data[0] = (char)(pay >> 24);
  sb->data[1] = (char)(pay >> 16);
  sb->data[2] = (char)(pay >> 8);
  sb->data[3] = (char)pay;
  *len = sb->size;
  *buf = msgpack_sbuffer_release(sb);
  return 0;
}

int mp__encode_request(int op, int64_t id, const char *name, const mp_obj *args, double timeout,
                       char **buf, size_t *len) {
  msgpack_sbuffer sb;
  msgpack_packer pk;
  int r = frame_start(&sb, &pk);
  size_t items = 0;
  size_t nl = name ? strlen(name) : 0;
  if (r == 0 &&
      (msgpack_pack_array(&pk, 5) || msgpack_pack_int(&pk, op) || msgpack_pack_int64(&pk, id) ||
       msgpack_pack_str(&pk, nl) || msgpack_pack_str_body(&pk, name ? name : "", nl)))
    r = -ENOMEM;
  if (r == 0) {
    size_t n = args ? args->u.l.n : 0;
    if (args && args->type != MP_OBJ_LIST)
      r = -EINVAL;
    else if (msgpack_pack_array(&pk, n))
      r = -ENOMEM;
    /* each argument may nest MP_OBJ_MAX_DEPTH deep on its own */
    for (size_t i = 0; r == 0 && i < n; i++)
      r = pack(&pk, args->u.l.v[i], 0, &items);
  }
  if (r == 0 && msgpack_pack_double(&pk, timeout))
    r = -ENOMEM;
  return frame_end(&sb, r, buf, len);
}

int mp__encode_reply(int status, const mp_obj *value, char **buf, size_t *len) {
  msgpack_sbuffer sb;
  msgpack_packer pk;
  int r = frame_start(&sb, &pk);
  size_t items = 0;
  if (r == 0 && (msgpack_pack_array(&pk, 2) || msgpack_pack_int(&pk, status)))
    r = -ENOMEM;
  if (r == 0) {
    if (value)
      r = pack(&pk, value, 0, &items);
    else if (msgpack_pack_nil(&pk))
      r = -ENOMEM;
  }
  return frame_end(&sb, r, buf, len);
}
