/* SPDX-License-Identifier: MIT */
/*
 * Value and Array: typed elements in the family heap, behind a hidden header.
 *
 * One heap block holds a 32-byte header followed by the elements:
 *
 *   block payload (16-aligned)                  user pointer = payload + 32
 *   | tag | kind size typecode owns | len | lock | pad | elem 0 | elem 1 | ...
 *
 * so the handle is a plain typed pointer to the elements and the header sits
 * at a fixed negative offset from it. Every entry point checks the pointer
 * before reading the header: 16-aligned, header and first element inside the
 * family heap (so a foreign pointer is never dereferenced), and the header's
 * tag. An ordinary heap block, a pointer into the middle of an array, a stack
 * or malloc pointer and a freed value all fail one of these and get -EINVAL.
 *
 * struct value_hdr, shared by every process of the family:
 *   tag, kind, typecode, owns_lock, len, lock
 *              written once by the creator before the handle is returned and
 *              never again until free, which sets the tag to MP__TAG_FREED.
 *              Readers take no lock: the handle reached them through fork, the
 *              heap or a queue, each of which orders the creator's writes first.
 * The elements are written by anyone. libmp itself reads and writes one
 * element at a time with single atomic loads and stores of the element's
 * size, so that mp_value_load()/store() never tear against the lock-free
 * mp_value_add()/compare_exchange(); plain accesses through the user's
 * pointer are the user's to order, with the lock or the atomic calls.
 * Crash: the header is immutable, so a process killed anywhere leaves it
 * intact. A holder of the value's lock killed inside load/store leaves the
 * lock OWNER_DIED; the next caller gets it with -EOWNERDEAD (lock.c) and every
 * element whole, since each element is written by one atomic store. A process
 * killed inside mp_array_new() leaks its block (the heap keeps blocks a dead
 * process held); one killed inside mp_value_free(), between freeing the lock
 * and the block, leaves the block allocated around a freed lock: the value was
 * being freed, so no one may use it any more either way.
 */
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>

#include "internal.h"

/* The element's size and arithmetic, one per typecode's C type. */
enum kind {
  K_I8,
  K_U8,
  K_I16,
  K_U16,
  K_I32,
  K_U32,
  K_I64,
  K_U64,
  K_F32, /* floats: load/store only */
  K_F64,
};

struct value_hdr {
  mp__tag tag;
  uint8_t kind;      /* enum kind */
  uint8_t size;      /* bytes per element */
  char typecode;     /* Python's typecode */
  uint8_t owns_lock; /* the lock was made by mp_array_new() and dies with it */
  size_t len;        /* elements, >= 1 */
  mp_lock *lock;     /* NULL for a raw value */
  uint64_t reserved; /* keeps the elements 16-aligned */
};

#define HDR_SIZE sizeof(struct value_hdr)
_Static_assert(sizeof(struct value_hdr) == 32, "the header is 32 bytes");
_Static_assert(sizeof(struct value_hdr) % 16 == 0, "elements stay 16-aligned");

/* The kind of a signed or unsigned integer C type, from its size. */
#define SKIND(ctype)                                                                               \
  (sizeof(ctype) == 1 ? K_I8 : sizeof(ctype) == 2 ? K_I16 : sizeof(ctype) == 4 ? K_I32 : K_I64)
#define UKIND(ctype)                                                                               \
  (sizeof(ctype) == 1 ? K_U8 : sizeof(ctype) == 2 ? K_U16 : sizeof(ctype) == 4 ? K_U32 : K_U64)

#define TYPECODE(code, ctype, kind_)                                                               \
  case code:                                                                                       \
    *k = (kind_);                                                                                  \
    *size = (uint8_t)sizeof(ctype);                                                                \
    return 0;

/* Python's typecodes and the element kind each one maps to ('c' is char,
 * signed or not as the platform's char is). */
static int kind_of(char typecode, enum kind *k, uint8_t *size) {
  switch (typecode) {
    TYPECODE('c', char, CHAR_MIN < 0 ? SKIND(char) : UKIND(char))
    TYPECODE('b', signed char, SKIND(signed char))
    TYPECODE('B', unsigned char, UKIND(unsigned char))
    TYPECODE('h', short, SKIND(short))
    TYPECODE('H', unsigned short, UKIND(unsigned short))
    TYPECODE('i', int, SKIND(int))
    TYPECODE('I', unsigned int, UKIND(unsigned int))
    TYPECODE('l', long, SKIND(long))
    TYPECODE('L', unsigned long, UKIND(unsigned long))
    TYPECODE('q', long long, SKIND(long long))
    TYPECODE('Q', unsigned long long, UKIND(unsigned long long))
    TYPECODE('f', float, K_F32)
    TYPECODE('d', double, K_F64)
  default: return -EINVAL;
  }
}

#undef TYPECODE
#undef SKIND
#undef UKIND

_Static_assert(sizeof(float) == 4 && sizeof(double) == 8, "IEEE float and double");
_Static_assert(sizeof(long long) == 8, "64-bit long long");

/* The header of a Value or Array, or NULL when p is not one. Reads nothing
 * outside the family heap. */
static inline struct value_hdr *hdr_of(const void *p) {
  uintptr_t u = (uintptr_t)p;
  if (MP__UNLIKELY((u & 15) != 0 || !mp_heap_contains((const void *)(u - HDR_SIZE)) ||
                   !mp_heap_contains(p)))
    return NULL;
  struct value_hdr *h = (struct value_hdr *)(u - HDR_SIZE);
  return MP__LIKELY(mp__tag_ok(h, MP__TAG_VALUE)) ? h : NULL;
}

static inline unsigned char *elem(const struct value_hdr *h, size_t index) {
  return (unsigned char *)(uintptr_t)h + HDR_SIZE + index * h->size;
}

/* ------------------------------------------------------------ copies */

/* One element out of / into the array, as one atomic access. Acquire and
 * release (not seq_cst): a raw value then still publishes what its writer
 * wrote before it, and neither costs a fence on x86; the lock, when there is
 * one, gives the rest of the ordering. */
static void elem_load(const struct value_hdr *h, const unsigned char *e, void *out) {
  switch (h->size) {
  case 1: {
    uint8_t v = __atomic_load_n(e, __ATOMIC_ACQUIRE);
    memcpy(out, &v, 1);
    break;
  }
  case 2: {
    uint16_t v = __atomic_load_n((const uint16_t *)(const void *)e, __ATOMIC_ACQUIRE);
    memcpy(out, &v, 2);
    break;
  }
  case 4: {
    uint32_t v = __atomic_load_n((const uint32_t *)(const void *)e, __ATOMIC_ACQUIRE);
    memcpy(out, &v, 4);
    break;
  }
  default: {
    uint64_t v = __atomic_load_n((const uint64_t *)(const void *)e, __ATOMIC_ACQUIRE);
    memcpy(out, &v, 8);
    break;
  }
  }
}

static void elem_store(const struct value_hdr *h, unsigned char *e, const void *in) {
  switch (h->size) {
  case 1: {
    uint8_t v;
    memcpy(&v, in, 1);
    __atomic_store_n(e, v, __ATOMIC_RELEASE);
    break;
  }
  case 2: {
    uint16_t v;
    memcpy(&v, in, 2);
    __atomic_store_n((uint16_t *)(void *)e, v, __ATOMIC_RELEASE);
    break;
  }
  case 4: {
    uint32_t v;
    memcpy(&v, in, 4);
    __atomic_store_n((uint32_t *)(void *)e, v, __ATOMIC_RELEASE);
    break;
  }
  default: {
    uint64_t v;
    memcpy(&v, in, 8);
    __atomic_store_n((uint64_t *)(void *)e, v, __ATOMIC_RELEASE);
    break;
  }
  }
}

static const mp__deadline forever = {.forever = true};

/* Copy element `index` out (store false) or in (store true) under the lock. */
static int copy(const void *value, size_t index, void *buf, bool store) {
  struct value_hdr *h = hdr_of(value);
  if (!h || !buf)
    return -EINVAL;
  if (MP__UNLIKELY(index >= h->len))
    return -ERANGE;
  unsigned char *e = elem(h, index);
  if (!h->lock) {
    if (store)
      elem_store(h, e, buf);
    else
      elem_load(h, e, buf);
    return 0;
  }
  int r = mp__lock_acquire(h->lock, &forever);
  if (MP__UNLIKELY(r < 0 && r != -EOWNERDEAD))
    return r; /* -EDEADLK: a plain Lock the caller already holds */
  if (store)
    elem_store(h, e, buf);
  else
    elem_load(h, e, buf);
  int u = mp__lock_release(h->lock);
  return r < 0 ? r : u;
}

/* ------------------------------------------------------------ atomics */

/* Integer arithmetic is done on the unsigned type of the element's size, where
 * it wraps by definition; the result is read back through the element's own
 * signedness, so `old` is sign- or zero-extended as the C type would be. */
#define INT_KINDS(X)                                                                               \
  X(K_I8, int8_t, uint8_t)                                                                         \
  X(K_U8, uint8_t, uint8_t)                                                                        \
  X(K_I16, int16_t, uint16_t)                                                                      \
  X(K_U16, uint16_t, uint16_t)                                                                     \
  X(K_I32, int32_t, uint32_t)                                                                      \
  X(K_U32, uint32_t, uint32_t)                                                                     \
  X(K_I64, int64_t, uint64_t)                                                                      \
  X(K_U64, uint64_t, uint64_t)

static int add(void *value, size_t index, long long delta, long long *old) {
  struct value_hdr *h = hdr_of(value);
  if (!h)
    return -EINVAL;
  if (MP__UNLIKELY(index >= h->len))
    return -ERANGE;
  void *e = elem(h, index);
  long long prev;
  switch (h->kind) {
#define ADD(k, S, U)                                                                               \
  case k: prev = (long long)(S)__atomic_fetch_add((U *)e, (U)delta, __ATOMIC_SEQ_CST); break;
    INT_KINDS(ADD)
#undef ADD
  default: return -EINVAL; /* float or double */
  }
  if (old)
    *old = prev;
  return 0;
}

static int cmpxchg(void *value, size_t index, long long *expected, long long desired) {
  struct value_hdr *h = hdr_of(value);
  if (!h || !expected)
    return -EINVAL;
  if (MP__UNLIKELY(index >= h->len))
    return -ERANGE;
  void *e = elem(h, index);
  switch (h->kind) {
#define CAS(k, S, U)                                                                               \
  case k: {                                                                                        \
    U exp = (U)*expected;                                                                          \
    if (__atomic_compare_exchange_n((U *)e, &exp, (U)desired, false, __ATOMIC_SEQ_CST,             \
                                    __ATOMIC_SEQ_CST))                                             \
      return 1;                                                                                    \
    *expected = (long long)(S)exp;                                                                 \
    return 0;                                                                                      \
  }
    INT_KINDS(CAS)
#undef CAS
  default: return -EINVAL; /* float or double */
  }
}

/* ------------------------------------------------------------ public */

MP_EXPORT int mp_array_new(char typecode, size_t len, const void *init,
                           const mp_value_options *opts, void *ret) {
  enum kind k;
  uint8_t size;
  if (kind_of(typecode, &k, &size) < 0 || !ret || len == 0)
    return -EINVAL;
  mp_lock *given = opts ? opts->lock : NULL;
  bool raw = opts && opts->raw;
  if (given && (raw || !mp_heap_contains(given) || !mp__tag_ok(given, MP__TAG_LOCK)))
    return -EINVAL;
  size_t bytes, total;
  if (__builtin_mul_overflow(len, (size_t)size, &bytes) ||
      __builtin_add_overflow(bytes, HDR_SIZE, &total))
    return -ENOMEM;
  struct value_hdr *h = mp__object_new(total, MP__TAG_VALUE);
  if (!h)
    return -ENOMEM;
  mp_lock *lock = given;
  if (!given && !raw) {
    int r = mp_rlock_new(&lock);
    if (r < 0) {
      mp__object_free(h);
      return r;
    }
  }
  h->kind = (uint8_t)k;
  h->size = size;
  h->typecode = typecode;
  h->owns_lock = lock && !given;
  h->len = len;
  h->lock = lock;
  void *elems = elem(h, 0);
  if (init)
    memcpy(elems, init, bytes);
  memcpy(ret, &elems, sizeof elems); /* ret is a T ** of the caller's type */
  return 0;
}

MP_EXPORT int mp_raw_array_new(char typecode, size_t len, const void *init, void *ret) {
  mp_value_options o = {.raw = 1};
  return mp_array_new(typecode, len, init, &o, ret);
}

MP_EXPORT int mp_value_new(char typecode, const void *init, const mp_value_options *opts,
                           void *ret) {
  return mp_array_new(typecode, 1, init, opts, ret);
}

MP_EXPORT int mp_raw_value_new(char typecode, const void *init, void *ret) {
  return mp_raw_array_new(typecode, 1, init, ret);
}

MP_EXPORT int mp_value_get_lock(const void *value, mp_lock **ret) {
  struct value_hdr *h = hdr_of(value);
  if (!h || !ret)
    return -EINVAL;
  if (!h->lock)
    return -ENOLCK;
  *ret = h->lock;
  return 0;
}

MP_EXPORT int mp_value_typecode(const void *value) {
  struct value_hdr *h = hdr_of(value);
  return h ? (int)(unsigned char)h->typecode : -EINVAL;
}

MP_EXPORT ssize_t mp_array_len(const void *array) {
  struct value_hdr *h = hdr_of(array);
  if (!h)
    return -EINVAL;
  return (ssize_t)h->len; /* bounded by the heap's size */
}

MP_EXPORT int mp_value_load(const void *value, void *out) { return copy(value, 0, out, false); }

MP_EXPORT int mp_value_store(void *value, const void *in) {
  return copy(value, 0, (void *)(uintptr_t)in, true);
}

MP_EXPORT int mp_array_get(const void *array, size_t index, void *out) {
  return copy(array, index, out, false);
}

MP_EXPORT int mp_array_set(void *array, size_t index, const void *in) {
  return copy(array, index, (void *)(uintptr_t)in, true);
}

MP_EXPORT int mp_value_add(void *value, long long delta, long long *old) {
  return add(value, 0, delta, old);
}

MP_EXPORT int mp_array_add(void *array, size_t index, long long delta, long long *old) {
  return add(array, index, delta, old);
}

MP_EXPORT int mp_value_compare_exchange(void *value, long long *expected, long long desired) {
  return cmpxchg(value, 0, expected, desired);
}

MP_EXPORT int mp_array_compare_exchange(void *array, size_t index, long long *expected,
                                        long long desired) {
  return cmpxchg(array, index, expected, desired);
}

MP_EXPORT int mp_value_free(void *value) {
  if (!value)
    return 0;
  struct value_hdr *h = hdr_of(value);
  enum kind k;
  uint8_t size;
  if (!h || kind_of(h->typecode, &k, &size) < 0 || size != h->size || h->len == 0)
    return -EINVAL;
  if (h->owns_lock) {
    /* First, so that a held lock leaves the value whole and usable. */
    int r = mp_lock_free(h->lock);
    if (r < 0)
      return r;
  }
  mp__object_free(h);
  return 0;
}

MP_EXPORT int mp_array_free(void *array) { return mp_value_free(array); }
