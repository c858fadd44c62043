/* SPDX-License-Identifier: MIT */
/* Value and Array: typecodes, layout, locks, atomics, fork, bad input. */
#include "testutil.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <mp.h>

/* ------------------------------------------------------------ typecodes */

/* Every typecode with its C type's size and three sample values of that type
 * (stored as bytes): the type's minimum, maximum and one in between. */
struct sample {
  char code;
  size_t size;
  unsigned char v[3][8];
};

#define SAMPLE(code_, T, a, b, c)                                                                  \
  do {                                                                                             \
    T vals[3] = {a, b, c};                                                                         \
    s[n].code = code_;                                                                             \
    s[n].size = sizeof(T);                                                                         \
    for (int i_ = 0; i_ < 3; i_++)                                                                 \
      memcpy(s[n].v[i_], &vals[i_], sizeof(T));                                                    \
    n++;                                                                                           \
  } while (0)

static int samples(struct sample *s) {
  int n = 0;
  SAMPLE('c', char, CHAR_MIN, CHAR_MAX, 'x');
  SAMPLE('b', signed char, SCHAR_MIN, SCHAR_MAX, -5);
  SAMPLE('B', unsigned char, 0, UCHAR_MAX, 200);
  SAMPLE('h', short, SHRT_MIN, SHRT_MAX, -1234);
  SAMPLE('H', unsigned short, 0, USHRT_MAX, 54321);
  SAMPLE('i', int, INT_MIN, INT_MAX, -123456);
  SAMPLE('I', unsigned int, 0, UINT_MAX, 3000000000u);
  SAMPLE('l', long, LONG_MIN, LONG_MAX, -9876543210L);
  SAMPLE('L', unsigned long, 0, ULONG_MAX, 12345678901UL);
  SAMPLE('q', long long, LLONG_MIN, LLONG_MAX, -42LL);
  SAMPLE('Q', unsigned long long, 0, ULLONG_MAX, 1ULL << 63);
  SAMPLE('f', float, -1.5f, 3.25e38f, 0.1f);
  SAMPLE('d', double, -2.5, 1.7e308, 0.1);
  return n;
}

static const char ALL_CODES[] = "cbBhHiIlLqQfd";

static void test_value_typecodes_round_trip(void **state) {
  (void)state;
  struct sample s[16];
  int n = samples(s);
  assert_int_equal(n, (int)strlen(ALL_CODES));
  for (int t = 0; t < n; t++) {
    for (int j = 0; j < 3; j++) {
      void *v = NULL, *raw = NULL;
      assert_int_equal(mp_value_new(s[t].code, s[t].v[j], NULL, &v), 0);
      assert_int_equal(mp_raw_value_new(s[t].code, s[t].v[j], &raw), 0);
      assert_int_equal(mp_value_typecode(v), s[t].code);
      assert_int_equal(mp_value_typecode(raw), s[t].code);
      assert_int_equal(mp_array_len(v), 1);
      /* Through the typed pointer and through load. */
      assert_memory_equal(v, s[t].v[j], s[t].size);
      assert_memory_equal(raw, s[t].v[j], s[t].size);
      unsigned char out[8];
      assert_int_equal(mp_value_load(v, out), 0);
      assert_memory_equal(out, s[t].v[j], s[t].size);
      assert_int_equal(mp_value_load(raw, out), 0);
      assert_memory_equal(out, s[t].v[j], s[t].size);
      /* store then load the next sample. */
      const unsigned char *next = s[t].v[(j + 1) % 3];
      assert_int_equal(mp_value_store(v, next), 0);
      assert_int_equal(mp_value_store(raw, next), 0);
      assert_memory_equal(v, next, s[t].size);
      assert_int_equal(mp_value_load(raw, out), 0);
      assert_memory_equal(out, next, s[t].size);
      assert_int_equal(mp_value_free(v), 0);
      assert_int_equal(mp_value_free(raw), 0);
    }
    /* An Array initialised with the three samples. */
    unsigned char init[24];
    for (int j = 0; j < 3; j++)
      memcpy(init + (size_t)j * s[t].size, s[t].v[j], s[t].size);
    void *a = NULL;
    assert_int_equal(mp_array_new(s[t].code, 3, init, NULL, &a), 0);
    assert_int_equal(mp_value_typecode(a), s[t].code);
    assert_int_equal(mp_array_len(a), 3);
    assert_memory_equal(a, init, 3 * s[t].size);
    for (size_t j = 0; j < 3; j++) {
      unsigned char out[8];
      assert_int_equal(mp_array_get(a, j, out), 0);
      assert_memory_equal(out, s[t].v[j], s[t].size);
    }
    assert_int_equal(mp_array_free(a), 0);
  }
}

static void test_value_default_is_zero(void **state) {
  (void)state;
  struct sample s[16];
  int n = samples(s);
  unsigned char zero[800] = {0};
  for (int t = 0; t < n; t++) {
    unsigned char *a = NULL, *v = NULL;
    assert_int_equal(mp_array_new(s[t].code, 100, NULL, NULL, &a), 0);
    assert_int_equal(mp_value_new(s[t].code, NULL, NULL, &v), 0);
    assert_memory_equal(a, zero, 100 * s[t].size);
    assert_memory_equal(v, zero, s[t].size);
    assert_int_equal(mp_array_free(a), 0);
    assert_int_equal(mp_value_free(v), 0);
  }
}

/* Element sizes are the C types': get and set copy exactly that many bytes,
 * and elements sit that far apart. */
static void test_value_sizes_are_c_types(void **state) {
  (void)state;
  struct sample s[16];
  int n = samples(s);
  for (int t = 0; t < n; t++) {
    size_t sz = s[t].size;
    unsigned char *a = NULL;
    assert_int_equal(mp_array_new(s[t].code, 4, NULL, NULL, &a), 0);
    /* set element 1 to the maximum: only bytes [sz, 2 sz) change. */
    assert_int_equal(mp_array_set(a, 1, s[t].v[1]), 0);
    unsigned char zero[8] = {0};
    assert_memory_equal(a, zero, sz);
    assert_memory_equal(a + sz, s[t].v[1], sz);
    assert_memory_equal(a + 2 * sz, zero, sz);
    /* get writes exactly sz bytes of the caller's buffer. */
    unsigned char out[16];
    memset(out, 0xAA, sizeof out);
    assert_int_equal(mp_array_get(a, 1, out), 0);
    assert_memory_equal(out, s[t].v[1], sz);
    for (size_t i = sz; i < sizeof out; i++)
      assert_int_equal(out[i], 0xAA);
    assert_int_equal(mp_array_free(a), 0);
  }
}

static void test_value_unknown_typecode(void **state) {
  (void)state;
  const char bad[] = {'x', 'u', 'z', 'D', 'F', 'P', 0, '\xff'};
  for (size_t i = 0; i < sizeof bad; i++) {
    int *v = (int *)(uintptr_t)1, *sentinel = v;
    assert_int_equal(mp_value_new(bad[i], NULL, NULL, &v), -EINVAL);
    assert_int_equal(mp_raw_value_new(bad[i], NULL, &v), -EINVAL);
    assert_int_equal(mp_array_new(bad[i], 4, NULL, NULL, &v), -EINVAL);
    assert_int_equal(mp_raw_array_new(bad[i], 4, NULL, &v), -EINVAL);
    assert_ptr_equal(v, sentinel); /* outputs only on success */
  }
}

static void test_value_alignment_16(void **state) {
  (void)state;
  void *keep[64];
  int k = 0;
  for (const char *c = ALL_CODES; *c; c++) {
    for (size_t len = 1; len <= 5; len += 2) {
      void *odd = mp_heap_alloc(len * 3); /* shift later blocks around */
      assert_non_null(odd);
      keep[k++] = odd;
      void *v = NULL, *a = NULL;
      assert_int_equal(mp_value_new(*c, NULL, NULL, &v), 0);
      assert_int_equal(mp_raw_array_new(*c, len, NULL, &a), 0);
      assert_int_equal((uintptr_t)v % 16, 0);
      assert_int_equal((uintptr_t)a % 16, 0);
      assert_true(mp_heap_contains(v));
      assert_int_equal(mp_value_free(v), 0);
      assert_int_equal(mp_array_free(a), 0);
    }
  }
  for (int i = 0; i < k; i++)
    assert_int_equal(mp_heap_free(keep[i]), 0);
}

static void test_value_initial_value(void **state) {
  (void)state;
  int *v = NULL, ten = 10;
  assert_int_equal(mp_value_new('i', &ten, NULL, &v), 0); /* Value('i', 10) */
  assert_int_equal(*v, 10);
  int out = 0;
  assert_int_equal(mp_value_load(v, &out), 0);
  assert_int_equal(out, 10);
  double *d = NULL, pi = 3.25;
  assert_int_equal(mp_value_new('d', &pi, NULL, &d), 0);
  assert_true(*d == 3.25);
  assert_int_equal(mp_value_free(v), 0);
  assert_int_equal(mp_value_free(d), 0);
}

/* Value functions take an Array (element 0) and Array functions a Value. */
static void test_value_and_array_interchange(void **state) {
  (void)state;
  int init[3] = {7, 8, 9};
  int *a = NULL, *v = NULL;
  assert_int_equal(mp_array_new('i', 3, init, NULL, &a), 0);
  assert_int_equal(mp_value_new('i', &init[2], NULL, &v), 0);
  int out = 0;
  assert_int_equal(mp_value_load(a, &out), 0);
  assert_int_equal(out, 7);
  long long old = 0;
  assert_int_equal(mp_value_add(a, 5, &old), 0);
  assert_int_equal(old, 7);
  assert_int_equal(a[0], 12);
  assert_int_equal(a[1], 8);
  assert_int_equal(mp_array_get(v, 0, &out), 0);
  assert_int_equal(out, 9);
  assert_int_equal(mp_array_add(v, 0, -10, &old), 0);
  assert_int_equal(old, 9);
  assert_int_equal(*v, -1);
  assert_int_equal(mp_array_free(v), 0);
  assert_int_equal(mp_value_free(a), 0);
}

/* ------------------------------------------------------------ fork */

struct ptrs {
  int *v;
  long *a;
  unsigned long long *slot; /* raw 'Q' holding a pointer a child made */
};

static int child_writes(void *arg) {
  struct ptrs *p = arg;
  *p->v = 4242;
  for (int i = 0; i < 8; i++)
    CHILD_CHECK(mp_array_set(p->a, (size_t)i, &(long){1000L * i}) == 0);
  /* A value made in the child, after the fork, handed back by pointer. */
  double *d = NULL;
  CHILD_CHECK(mp_value_new('d', &(double){2.5}, NULL, &d) == 0);
  CHILD_CHECK(mp_value_store(p->slot, &(unsigned long long){(uintptr_t)d}) == 0);
  return 0;
}

static void test_value_pointer_works_in_child(void **state) {
  (void)state;
  struct ptrs p;
  assert_int_equal(mp_value_new('i', NULL, NULL, &p.v), 0);
  assert_int_equal(mp_array_new('l', 8, NULL, NULL, &p.a), 0);
  assert_int_equal(mp_raw_value_new('Q', NULL, &p.slot), 0);
  pid_t pid = tu_fork(child_writes, &p, 20);
  assert_true(pid > 0);
  assert_child_ok(pid);
  assert_int_equal(*p.v, 4242);
  for (int i = 0; i < 8; i++)
    assert_int_equal(p.a[i], 1000L * i);
  unsigned long long slot = 0;
  assert_int_equal(mp_value_load(p.slot, &slot), 0);
  double *d = (double *)(uintptr_t)slot;
  assert_int_equal(mp_value_typecode(d), 'd');
  double out = 0;
  assert_int_equal(mp_value_load(d, &out), 0);
  assert_true(out == 2.5);
  assert_int_equal(mp_value_free(d), 0);
  assert_int_equal(mp_value_free(p.v), 0);
  assert_int_equal(mp_array_free(p.a), 0);
  assert_int_equal(mp_value_free(p.slot), 0);
}

struct setter {
  int *arr;
  int index;
};

static int child_set(void *arg) {
  struct setter *s = arg;
  CHILD_CHECK(mp_array_set(s->arr, (size_t)s->index, &(int){-s->index}) == 0);
  return 0;
}

static void test_array_set_by_ten_children(void **state) {
  (void)state;
  int *arr = NULL;
  int init[10];
  for (int i = 0; i < 10; i++)
    init[i] = 100 + i;
  assert_int_equal(mp_array_new('i', 10, init, NULL, &arr), 0);
  pid_t pids[10];
  struct setter s[10];
  for (int i = 0; i < 10; i++) {
    s[i] = (struct setter){arr, i};
    pids[i] = tu_fork(child_set, &s[i], 20);
    assert_true(pids[i] > 0);
  }
  for (int i = 0; i < 10; i++)
    assert_child_ok(pids[i]);
  for (int i = 0; i < 10; i++) {
    int out = 1;
    assert_int_equal(mp_array_get(arr, (size_t)i, &out), 0);
    assert_int_equal(out, -i);
  }
  assert_int_equal(mp_array_free(arr), 0);
}

/* ------------------------------------------------------------ concurrency */

#define N_INC 100000

/* Two workers that start together, so that their loops really overlap: each
 * checks in on a shared counter and spins until both have. */
struct race {
  void *v;
  int *ready; /* raw 'i' */
};

static void race_start(struct race *r) {
  __atomic_add_fetch(r->ready, 1, __ATOMIC_SEQ_CST); /* not the code under test */
  while (__atomic_load_n(r->ready, __ATOMIC_SEQ_CST) < 2)
    ;
}

static int child_add(void *arg) {
  struct race *r = arg;
  race_start(r);
  for (int i = 0; i < N_INC; i++)
    CHILD_CHECK(mp_value_add(r->v, 1, NULL) == 0);
  return 0;
}

static int child_locked_inc(void *arg) {
  struct race *r = arg;
  int *v = r->v;
  mp_lock *lock = NULL;
  CHILD_CHECK(mp_value_get_lock(v, &lock) == 0);
  race_start(r);
  for (int i = 0; i < N_INC; i++) {
    CHILD_CHECK(mp_lock_acquire(lock, MP_FOREVER) == 0);
    *v += 1;
    CHILD_CHECK(mp_lock_release(lock) == 0);
  }
  return 0;
}

/* compare_exchange as a retry loop: an increment that must never be lost. */
static int child_cas_inc(void *arg) {
  struct race *r = arg;
  unsigned short *v = r->v;
  race_start(r);
  for (int i = 0; i < N_INC / 5; i++) {
    long long seen = *(volatile unsigned short *)v;
    int rc;
    while ((rc = mp_value_compare_exchange(v, &seen, seen + 1)) == 0)
      ;
    CHILD_CHECK(rc == 1);
  }
  return 0;
}

/* Run fn in two racing children over v. */
static void race_two(int (*fn)(void *), void *v) {
  struct race r = {v, NULL};
  assert_int_equal(mp_raw_value_new('i', NULL, &r.ready), 0);
  pid_t a = tu_fork(fn, &r, 60), b = tu_fork(fn, &r, 60);
  assert_true(a > 0 && b > 0);
  assert_child_ok(a);
  assert_child_ok(b);
  assert_int_equal(*r.ready, 2);
  assert_int_equal(mp_value_free(r.ready), 0);
}

static void test_value_add_two_processes(void **state) {
  (void)state;
  long long *v = NULL;
  assert_int_equal(mp_value_new('q', NULL, NULL, &v), 0);
  race_two(child_add, v);
  assert_int_equal(*v, 2LL * N_INC);
  assert_int_equal(mp_value_free(v), 0);
}

static void test_value_locked_increment_two_processes(void **state) {
  (void)state;
  int *v = NULL;
  assert_int_equal(mp_value_new('i', NULL, NULL, &v), 0);
  race_two(child_locked_inc, v);
  assert_int_equal(*v, 2 * N_INC);
  assert_int_equal(mp_value_free(v), 0);
}

static void test_value_compare_exchange_two_processes(void **state) {
  (void)state;
  unsigned short *v = NULL;
  assert_int_equal(mp_raw_value_new('H', NULL, &v), 0);
  race_two(child_cas_inc, v);
  assert_int_equal(*v, 2 * (N_INC / 5));
  assert_int_equal(mp_value_free(v), 0);
}

static void *thread_add(void *arg) {
  for (int i = 0; i < N_INC; i++)
    if (mp_value_add(arg, 1, NULL) != 0)
      return (void *)1;
  return NULL;
}

static void *thread_locked_inc(void *arg) {
  int *v = arg;
  mp_lock *lock = NULL;
  if (mp_value_get_lock(v, &lock) != 0)
    return (void *)1;
  for (int i = 0; i < N_INC; i++) {
    if (mp_lock_acquire(lock, MP_FOREVER) != 0)
      return (void *)1;
    *v += 1;
    if (mp_lock_release(lock) != 0)
      return (void *)1;
  }
  return NULL;
}

static void test_value_add_and_locked_increment_two_threads(void **state) {
  (void)state;
  unsigned *u = NULL;
  int *v = NULL;
  assert_int_equal(mp_value_new('I', NULL, NULL, &u), 0);
  assert_int_equal(mp_value_new('i', NULL, NULL, &v), 0);
  pthread_t t[4];
  assert_int_equal(pthread_create(&t[0], NULL, thread_add, u), 0);
  assert_int_equal(pthread_create(&t[1], NULL, thread_add, u), 0);
  assert_int_equal(pthread_create(&t[2], NULL, thread_locked_inc, v), 0);
  assert_int_equal(pthread_create(&t[3], NULL, thread_locked_inc, v), 0);
  for (int i = 0; i < 4; i++) {
    void *res = (void *)2;
    assert_int_equal(pthread_join(t[i], &res), 0);
    assert_null(res);
  }
  assert_int_equal(*u, 2u * N_INC);
  assert_int_equal(*v, 2 * N_INC);
  assert_int_equal(mp_value_free(u), 0);
  assert_int_equal(mp_value_free(v), 0);
}

/* ------------------------------------------------------------ atomics */

static void test_value_compare_exchange_semantics(void **state) {
  (void)state;
  int *v = NULL;
  assert_int_equal(mp_value_new('i', &(int){5}, NULL, &v), 0);
  /* Success: exchanged, expected left alone. */
  long long expected = 5;
  assert_int_equal(mp_value_compare_exchange(v, &expected, -7), 1);
  assert_int_equal(*v, -7);
  assert_int_equal(expected, 5);
  /* Failure: value left alone, expected updated (sign-extended). */
  expected = 5;
  assert_int_equal(mp_value_compare_exchange(v, &expected, 100), 0);
  assert_int_equal(*v, -7);
  assert_int_equal(expected, -7);
  /* The updated expected now succeeds. */
  assert_int_equal(mp_value_compare_exchange(v, &expected, 100), 1);
  assert_int_equal(*v, 100);
  assert_int_equal(mp_value_free(v), 0);

  /* Unsigned byte: expected is truncated to the element type, the value
   * found is zero-extended. */
  unsigned char *b = NULL;
  assert_int_equal(mp_value_new('B', &(unsigned char){0xff}, NULL, &b), 0);
  expected = 0x1ff;
  assert_int_equal(mp_value_compare_exchange(b, &expected, 0x101), 1);
  assert_int_equal(*b, 1);
  expected = 7;
  assert_int_equal(mp_value_compare_exchange(b, &expected, 9), 0);
  assert_int_equal(expected, 1);
  *b = 0xf0;
  expected = 0;
  assert_int_equal(mp_value_compare_exchange(b, &expected, 9), 0);
  assert_int_equal(expected, 0xf0);
  assert_int_equal(mp_value_free(b), 0);

  /* Signed byte: found value is sign-extended; 64-bit types use all bits. */
  signed char *sb = NULL;
  assert_int_equal(mp_raw_value_new('b', &(signed char){-100}, &sb), 0);
  expected = 0;
  assert_int_equal(mp_value_compare_exchange(sb, &expected, 1), 0);
  assert_int_equal(expected, -100);
  assert_int_equal(mp_value_free(sb), 0);
  unsigned long long *q = NULL;
  assert_int_equal(mp_value_new('Q', &(unsigned long long){1ULL << 40}, NULL, &q), 0);
  expected = 0;
  assert_int_equal(mp_value_compare_exchange(q, &expected, 1), 0);
  assert_int_equal(expected, 1LL << 40);
  assert_int_equal(mp_value_compare_exchange(q, &expected, -1), 1);
  assert_true(*q == ULLONG_MAX);
  assert_int_equal(mp_value_free(q), 0);

  /* Array elements. */
  long *a = NULL;
  assert_int_equal(mp_array_new('l', 3, (long[]){1, 2, 3}, NULL, &a), 0);
  expected = 2;
  assert_int_equal(mp_array_compare_exchange(a, 1, &expected, 20), 1);
  expected = 2;
  assert_int_equal(mp_array_compare_exchange(a, 2, &expected, 30), 0);
  assert_int_equal(expected, 3);
  assert_int_equal(a[0], 1);
  assert_int_equal(a[1], 20);
  assert_int_equal(a[2], 3);
  assert_int_equal(mp_array_free(a), 0);
}

static void test_value_add_wraps(void **state) {
  (void)state;
  long long old = 0;
  unsigned char *b = NULL;
  assert_int_equal(mp_value_new('B', &(unsigned char){255}, NULL, &b), 0);
  assert_int_equal(mp_value_add(b, 1, &old), 0);
  assert_int_equal(old, 255);
  assert_int_equal(*b, 0);
  assert_int_equal(mp_value_add(b, -1, &old), 0);
  assert_int_equal(old, 0);
  assert_int_equal(*b, 255);
  assert_int_equal(mp_value_add(b, 256, &old), 0); /* a full turn */
  assert_int_equal(*b, 255);
  assert_int_equal(mp_value_free(b), 0);

  int *i = NULL;
  assert_int_equal(mp_value_new('i', &(int){INT_MAX}, NULL, &i), 0);
  assert_int_equal(mp_value_add(i, 1, &old), 0);
  assert_int_equal(old, INT_MAX);
  assert_int_equal(*i, INT_MIN);
  assert_int_equal(mp_value_add(i, -1, &old), 0);
  assert_int_equal(old, INT_MIN); /* sign-extended */
  assert_int_equal(*i, INT_MAX);
  assert_int_equal(mp_value_free(i), 0);

  signed char *sb = NULL;
  assert_int_equal(mp_value_new('b', &(signed char){127}, NULL, &sb), 0);
  assert_int_equal(mp_value_add(sb, 1, &old), 0);
  assert_int_equal(*sb, -128);
  assert_int_equal(mp_value_add(sb, 0, &old), 0);
  assert_int_equal(old, -128);
  assert_int_equal(mp_value_free(sb), 0);

  unsigned short *h = NULL;
  assert_int_equal(mp_value_new('H', NULL, NULL, &h), 0);
  assert_int_equal(mp_value_add(h, -1, &old), 0);
  assert_int_equal(*h, USHRT_MAX);
  assert_int_equal(mp_value_add(h, 0, &old), 0);
  assert_int_equal(old, USHRT_MAX); /* zero-extended */
  assert_int_equal(mp_value_free(h), 0);

  long long *q = NULL;
  assert_int_equal(mp_value_new('q', &(long long){LLONG_MAX}, NULL, &q), 0);
  assert_int_equal(mp_value_add(q, 1, NULL), 0);
  assert_true(*q == LLONG_MIN);
  assert_int_equal(mp_value_free(q), 0);

  unsigned long long *uq = NULL;
  assert_int_equal(mp_value_new('Q', &(unsigned long long){ULLONG_MAX}, NULL, &uq), 0);
  assert_int_equal(mp_value_add(uq, 1, NULL), 0);
  assert_true(*uq == 0);
  assert_int_equal(mp_value_free(uq), 0);

  /* Every integer typecode adds (char included). */
  for (const char *c = "cbBhHiIlLqQ"; *c; c++) {
    void *v = NULL;
    assert_int_equal(mp_raw_array_new(*c, 2, NULL, &v), 0);
    assert_int_equal(mp_array_add(v, 1, 3, NULL), 0);
    assert_int_equal(mp_array_add(v, 1, 4, &old), 0);
    assert_int_equal(old, 3);
    assert_int_equal(mp_array_add(v, 0, 0, &old), 0);
    assert_int_equal(old, 0);
    assert_int_equal(mp_array_free(v), 0);
  }
}

static void test_value_float_atomics_einval(void **state) {
  (void)state;
  float *f = NULL;
  double *d = NULL;
  assert_int_equal(mp_value_new('f', &(float){1.5f}, NULL, &f), 0);
  assert_int_equal(mp_raw_array_new('d', 2, (double[]){2.5, 3.5}, &d), 0);
  long long old = 77, expected = 1;
  assert_int_equal(mp_value_add(f, 1, &old), -EINVAL);
  assert_int_equal(mp_value_add(d, 1, &old), -EINVAL);
  assert_int_equal(mp_array_add(d, 1, 1, &old), -EINVAL);
  assert_int_equal(old, 77);
  assert_int_equal(mp_value_compare_exchange(f, &expected, 2), -EINVAL);
  assert_int_equal(mp_array_compare_exchange(d, 1, &expected, 2), -EINVAL);
  assert_int_equal(expected, 1);
  assert_true(*f == 1.5f);
  assert_true(d[0] == 2.5 && d[1] == 3.5);
  assert_int_equal(mp_value_free(f), 0);
  assert_int_equal(mp_array_free(d), 0);
}

static void test_array_index_out_of_range(void **state) {
  (void)state;
  int *a = NULL, *v = NULL;
  assert_int_equal(mp_array_new('i', 4, (int[]){1, 2, 3, 4}, NULL, &a), 0);
  assert_int_equal(mp_value_new('i', &(int){9}, NULL, &v), 0);
  int out = 55;
  long long old = 66, expected = 1;
  size_t bad[] = {4, 5, SIZE_MAX, SIZE_MAX / 4 + 1};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    assert_int_equal(mp_array_get(a, bad[i], &out), -ERANGE);
    assert_int_equal(mp_array_set(a, bad[i], &out), -ERANGE);
    assert_int_equal(mp_array_add(a, bad[i], 1, &old), -ERANGE);
    assert_int_equal(mp_array_compare_exchange(a, bad[i], &expected, 2), -ERANGE);
  }
  assert_int_equal(mp_array_get(v, 1, &out), -ERANGE);
  assert_int_equal(mp_array_add(v, 1, 1, &old), -ERANGE);
  assert_int_equal(out, 55);
  assert_int_equal(old, 66);
  assert_int_equal(expected, 1);
  assert_int_equal(mp_array_get(a, 3, &out), 0); /* the last one is in range */
  assert_int_equal(out, 4);
  assert_int_equal(mp_array_len(a), 4);
  assert_int_equal(mp_array_free(a), 0);
  assert_int_equal(mp_value_free(v), 0);
}

/* ------------------------------------------------------------ locks */

static void test_value_get_lock_raw_enolck(void **state) {
  (void)state;
  int *v = NULL, *a = NULL, *o = NULL;
  assert_int_equal(mp_raw_value_new('i', NULL, &v), 0);
  assert_int_equal(mp_raw_array_new('i', 3, NULL, &a), 0);
  mp_value_options opts = {.raw = 1};
  assert_int_equal(mp_value_new('i', NULL, &opts, &o), 0);
  mp_lock *sentinel = (mp_lock *)(uintptr_t)8, *lock = sentinel;
  assert_int_equal(mp_value_get_lock(v, &lock), -ENOLCK);
  assert_int_equal(mp_value_get_lock(a, &lock), -ENOLCK);
  assert_int_equal(mp_value_get_lock(o, &lock), -ENOLCK);
  assert_ptr_equal(lock, sentinel);
  /* A raw value still loads, stores and adds. */
  assert_int_equal(mp_value_store(o, &(int){3}), 0);
  assert_int_equal(mp_value_add(o, 2, NULL), 0);
  int out = 0;
  assert_int_equal(mp_value_load(o, &out), 0);
  assert_int_equal(out, 5);
  assert_int_equal(mp_value_free(v), 0);
  assert_int_equal(mp_array_free(a), 0);
  assert_int_equal(mp_value_free(o), 0);
}

static void test_value_default_lock_is_rlock(void **state) {
  (void)state;
  int *v = NULL;
  assert_int_equal(mp_value_new('i', NULL, NULL, &v), 0);
  mp_lock *lock = NULL, *again = NULL;
  assert_int_equal(mp_value_get_lock(v, &lock), 0);
  assert_non_null(lock);
  assert_int_equal(mp_value_get_lock(v, &again), 0);
  assert_ptr_equal(lock, again);
  /* Held by the caller: load and store recurse into it, as Python's
   * `with v.get_lock(): v.value += 1` does. */
  assert_int_equal(mp_rlock_acquire(lock, MP_FOREVER), 0);
  int x = 0;
  assert_int_equal(mp_value_load(v, &x), 0);
  assert_int_equal(mp_value_store(v, &(int){x + 1}), 0);
  assert_int_equal(mp_lock_locked(lock), 1);
  assert_int_equal(mp_rlock_release(lock), 0);
  assert_int_equal(mp_lock_locked(lock), 0); /* load/store released their level */
  assert_int_equal(*v, 1);
  assert_int_equal(mp_value_free(v), 0);
}

static void test_value_given_lock_shared(void **state) {
  (void)state;
  mp_heap_stats before, after;
  mp_lock *lock = NULL;
  assert_int_equal(mp_lock_new(&lock), 0);
  assert_int_equal(mp_heap_stats_get(&before), 0);
  mp_value_options opts = {.lock = lock};
  int *v = NULL;
  double *a = NULL;
  assert_int_equal(mp_value_new('i', NULL, &opts, &v), 0);
  assert_int_equal(mp_array_new('d', 5, NULL, &opts, &a), 0);
  mp_lock *l1 = NULL, *l2 = NULL;
  assert_int_equal(mp_value_get_lock(v, &l1), 0);
  assert_int_equal(mp_value_get_lock(a, &l2), 0);
  assert_ptr_equal(l1, lock);
  assert_ptr_equal(l2, lock);
  /* A plain Lock held by the caller: load/store refuse instead of hanging. */
  assert_int_equal(mp_lock_acquire(lock, MP_FOREVER), 0);
  int out = 0;
  assert_int_equal(mp_value_load(v, &out), -EDEADLK);
  assert_int_equal(mp_array_set(a, 1, &(double){1.0}), -EDEADLK);
  assert_int_equal(mp_lock_release(lock), 0);
  assert_int_equal(mp_array_set(a, 1, &(double){1.0}), 0);
  assert_int_equal(mp_lock_locked(lock), 0);
  /* Freeing the values leaves the caller's lock alive. */
  assert_int_equal(mp_value_free(v), 0);
  assert_int_equal(mp_array_free(a), 0);
  assert_int_equal(mp_heap_stats_get(&after), 0);
  assert_int_equal(after.blocks, before.blocks);
  assert_int_equal(mp_lock_acquire(lock, MP_NOWAIT), 0);
  assert_int_equal(mp_lock_release(lock), 0);
  assert_int_equal(mp_lock_free(lock), 0);
}

static void test_value_free_frees_own_lock(void **state) {
  (void)state;
  mp_heap_stats before, mid, after;
  assert_int_equal(mp_heap_stats_get(&before), 0);
  int *v = NULL;
  assert_int_equal(mp_value_new('i', NULL, NULL, &v), 0);
  assert_int_equal(mp_heap_stats_get(&mid), 0);
  assert_int_equal(mid.blocks, before.blocks + 2); /* the value and its lock */
  /* Held: not freed, still whole. */
  mp_lock *lock = NULL;
  assert_int_equal(mp_value_get_lock(v, &lock), 0);
  assert_int_equal(mp_rlock_acquire(lock, MP_FOREVER), 0);
  assert_int_equal(mp_value_free(v), -EBUSY);
  assert_int_equal(mp_value_typecode(v), 'i');
  assert_int_equal(mp_rlock_release(lock), 0);
  assert_int_equal(mp_value_free(v), 0);
  assert_int_equal(mp_heap_stats_get(&after), 0);
  assert_int_equal(after.blocks, before.blocks);
  /* A raw value is one block. */
  assert_int_equal(mp_raw_value_new('i', NULL, &v), 0);
  assert_int_equal(mp_heap_stats_get(&mid), 0);
  assert_int_equal(mid.blocks, before.blocks + 1);
  assert_int_equal(mp_value_free(v), 0);
}

static void test_value_options_lock_and_raw_einval(void **state) {
  (void)state;
  mp_lock *lock = NULL;
  assert_int_equal(mp_lock_new(&lock), 0);
  mp_value_options both = {.lock = lock, .raw = 1};
  int *v = (int *)(uintptr_t)4, *sentinel = v;
  assert_int_equal(mp_value_new('i', NULL, &both, &v), -EINVAL);
  assert_int_equal(mp_array_new('i', 3, NULL, &both, &v), -EINVAL);
  /* Something that is not a lock. */
  void *block = mp_heap_alloc(64);
  assert_non_null(block);
  memset(block, 0, 64);
  int stack_word = 0;
  mp_value_options not_lock = {.lock = block};
  assert_int_equal(mp_value_new('i', NULL, &not_lock, &v), -EINVAL);
  not_lock.lock = (mp_lock *)(void *)&stack_word;
  assert_int_equal(mp_value_new('i', NULL, &not_lock, &v), -EINVAL);
  assert_ptr_equal(v, sentinel);
  /* Zeroed options: the default (a new RLock). */
  mp_value_options zero = {0};
  assert_int_equal(mp_value_new('i', NULL, &zero, &v), 0);
  mp_lock *own = NULL;
  assert_int_equal(mp_value_get_lock(v, &own), 0);
  assert_ptr_not_equal(own, lock);
  assert_int_equal(mp_value_free(v), 0);
  assert_int_equal(mp_heap_free(block), 0);
  assert_int_equal(mp_lock_free(lock), 0);
}

/* The copy waits for the lock and is made even when its holder died. */
struct held {
  int *v;
  double hold_s;
};

static int child_hold_lock(void *arg) {
  struct held *h = arg;
  mp_lock *lock = NULL;
  CHILD_CHECK(mp_value_get_lock(h->v, &lock) == 0);
  CHILD_CHECK(mp_lock_acquire(lock, MP_FOREVER) == 0);
  *h->v = 31;
  if (h->hold_s > 0) {
    tu_sleep(h->hold_s);
    *h->v = 32;
    CHILD_CHECK(mp_lock_release(lock) == 0);
  }
  return 0; /* hold_s 0: exit holding the lock */
}

static void test_value_load_waits_for_lock(void **state) {
  (void)state;
  int *v = NULL;
  assert_int_equal(mp_value_new('i', NULL, NULL, &v), 0);
  mp_lock *lock = NULL;
  assert_int_equal(mp_value_get_lock(v, &lock), 0);
  struct held h = {v, 0.3};
  pid_t pid = tu_fork(child_hold_lock, &h, 20);
  assert_true(pid > 0);
  while (mp_lock_locked(lock) != 1 || *(volatile int *)v != 31)
    tu_sleep(0.001);
  double t0 = tu_now();
  int out = 0;
  assert_int_equal(mp_value_load(v, &out), 0);
  double dt = tu_now() - t0;
  assert_int_equal(out, 32); /* waited for the holder's release: 31 was never seen */
  assert_true(dt < 10);
  assert_child_ok(pid);
  assert_int_equal(mp_value_free(v), 0);
}

static void test_value_load_owner_dead(void **state) {
  (void)state;
  int *v = NULL;
  assert_int_equal(mp_value_new('i', NULL, NULL, &v), 0);
  struct held h = {v, 0};
  pid_t pid = tu_fork(child_hold_lock, &h, 20);
  assert_true(pid > 0);
  assert_child_ok(pid); /* exited holding the lock */
  int out = 0;
  assert_int_equal(mp_value_load(v, &out), -EOWNERDEAD);
  assert_int_equal(out, 31); /* the copy is made */
  mp_lock *lock = NULL;
  assert_int_equal(mp_value_get_lock(v, &lock), 0);
  assert_int_equal(mp_lock_locked(lock), 0); /* and released again */
  assert_int_equal(mp_value_store(v, &(int){5}), 0);
  assert_int_equal(mp_value_load(v, &out), 0);
  assert_int_equal(out, 5);
  assert_int_equal(mp_value_free(v), 0);
}

/* ------------------------------------------------------------ bad input */

static void test_value_free_non_value_einval(void **state) {
  (void)state;
  int stack_word[8] __attribute__((aligned(16))) = {0};
  void *m = malloc(64);
  assert_non_null(m);
  assert_int_equal(mp_value_free(stack_word), -EINVAL);
  assert_int_equal(mp_value_free(m), -EINVAL);
  free(m);
  /* Ordinary heap blocks, of several sizes, also the first of a fresh run. */
  void *blocks[4];
  for (int i = 0; i < 4; i++) {
    blocks[i] = mp_heap_alloc((size_t)16 << i);
    assert_non_null(blocks[i]);
    memset(blocks[i], 0, (size_t)16 << i);
    assert_int_equal(mp_value_free(blocks[i]), -EINVAL);
    assert_int_equal(mp_value_typecode(blocks[i]), -EINVAL);
  }
  /* Pointers into an array (misaligned, and 16-aligned inside). */
  int *a = NULL;
  assert_int_equal(mp_array_new('i', 16, NULL, NULL, &a), 0);
  assert_int_equal(mp_value_free(a + 1), -EINVAL);
  assert_int_equal(mp_value_free(a + 4), -EINVAL);
  assert_int_equal(mp_array_len(a + 8), -EINVAL);
  /* Another libmp object. */
  mp_lock *lock = NULL;
  assert_int_equal(mp_lock_new(&lock), 0);
  assert_int_equal(mp_value_free(lock), -EINVAL);
  assert_int_equal(mp_lock_free(lock), 0);
  /* Odd addresses, never dereferenced. */
  assert_int_equal(mp_value_free((void *)(uintptr_t)16), -EINVAL);
  assert_int_equal(mp_value_free((void *)(uintptr_t)32), -EINVAL);
  assert_int_equal(mp_value_free((void *)UINTPTR_MAX), -EINVAL);
  /* Double free. */
  assert_int_equal(mp_array_free(a), 0);
  assert_int_equal(mp_array_free(a), -EINVAL);
  assert_int_equal(mp_value_typecode(a), -EINVAL);
  for (int i = 0; i < 4; i++)
    assert_int_equal(mp_heap_free(blocks[i]), 0);
}

static void test_value_null_args(void **state) {
  (void)state;
  int *v = NULL;
  assert_int_equal(mp_value_new('i', NULL, NULL, NULL), -EINVAL);
  assert_int_equal(mp_raw_value_new('i', NULL, NULL), -EINVAL);
  assert_int_equal(mp_array_new('i', 3, NULL, NULL, NULL), -EINVAL);
  assert_int_equal(mp_raw_array_new('i', 3, NULL, NULL), -EINVAL);
  assert_int_equal(mp_array_new('i', 0, NULL, NULL, &v), -EINVAL);
  assert_int_equal(mp_raw_array_new('i', 0, NULL, &v), -EINVAL);
  assert_null(v);
  assert_int_equal(mp_value_new('i', NULL, NULL, &v), 0);

  mp_lock *lock = NULL;
  long long ll = 0;
  int x = 0;
  assert_int_equal(mp_value_get_lock(NULL, &lock), -EINVAL);
  assert_int_equal(mp_value_get_lock(v, NULL), -EINVAL);
  assert_int_equal(mp_value_typecode(NULL), -EINVAL);
  assert_int_equal(mp_array_len(NULL), -EINVAL);
  assert_int_equal(mp_value_load(NULL, &x), -EINVAL);
  assert_int_equal(mp_value_load(v, NULL), -EINVAL);
  assert_int_equal(mp_value_store(NULL, &x), -EINVAL);
  assert_int_equal(mp_value_store(v, NULL), -EINVAL);
  assert_int_equal(mp_array_get(NULL, 0, &x), -EINVAL);
  assert_int_equal(mp_array_get(v, 0, NULL), -EINVAL);
  assert_int_equal(mp_array_set(NULL, 0, &x), -EINVAL);
  assert_int_equal(mp_array_set(v, 0, NULL), -EINVAL);
  assert_int_equal(mp_value_add(NULL, 1, &ll), -EINVAL);
  assert_int_equal(mp_array_add(NULL, 0, 1, &ll), -EINVAL);
  assert_int_equal(mp_value_add(v, 1, NULL), 0); /* old may be NULL */
  assert_int_equal(mp_value_compare_exchange(NULL, &ll, 1), -EINVAL);
  assert_int_equal(mp_value_compare_exchange(v, NULL, 1), -EINVAL);
  assert_int_equal(mp_array_compare_exchange(NULL, 0, &ll, 1), -EINVAL);
  assert_int_equal(mp_array_compare_exchange(v, 0, NULL, 1), -EINVAL);
  assert_int_equal(mp_value_free(NULL), 0);
  assert_int_equal(mp_array_free(NULL), 0);
  assert_int_equal(*v, 1);
  assert_int_equal(mp_value_free(v), 0);
}

static void test_value_too_large_enomem(void **state) {
  (void)state;
  double *d = (double *)(uintptr_t)8, *sentinel = d;
  assert_int_equal(mp_array_new('d', SIZE_MAX / 4, NULL, NULL, &d), -ENOMEM);
  assert_int_equal(mp_raw_array_new('q', SIZE_MAX / 8, NULL, &d), -ENOMEM);
  assert_int_equal(mp_raw_array_new('b', SIZE_MAX - 8, NULL, &d), -ENOMEM);
  mp_heap_stats st;
  assert_int_equal(mp_heap_stats_get(&st), 0);
  assert_int_equal(mp_raw_array_new('b', st.size + 1, NULL, &d), -ENOMEM);
  assert_int_equal(mp_array_new('i', st.size / 2, NULL, NULL, &d), -ENOMEM);
  assert_ptr_equal(d, sentinel);
  /* Nothing leaked. */
  mp_heap_stats after;
  assert_int_equal(mp_heap_stats_get(&after), 0);
  assert_int_equal(after.blocks, st.blocks);
}

/* The typed constructors: MP_VALUE_NEW/MP_ARRAY_NEW pick the typecode from the
 * result pointer's type, and the per-type forms give the same objects. */
#define CHECK_TYPED(T, code, suffix)                                                           \
  do {                                                                                         \
    T *v = NULL, *a = NULL, *rv = NULL, *ra = NULL;                                            \
    T init = (T)3, inits[3] = {(T)1, (T)2, (T)3};                                              \
    assert_int_equal(MP_VALUE_NEW(&init, NULL, &v), 0);                                        \
    assert_int_equal(mp_value_typecode(v), code);                                              \
    assert_true(*v == (T)3);                                                                   \
    mp_lock *l = NULL;                                                                         \
    assert_int_equal(mp_value_get_lock(v, &l), 0); /* a lock by default */                     \
    assert_int_equal(MP_ARRAY_NEW(3, inits, NULL, &a), 0);                                     \
    assert_int_equal(mp_value_typecode(a), code);                                              \
    assert_int_equal(mp_array_len(a), 3);                                                      \
    assert_true(a[2] == (T)3);                                                                 \
    assert_int_equal(mp_raw_value_new_##suffix(NULL, &rv), 0);                                 \
    assert_int_equal(mp_value_typecode(rv), code);                                             \
    assert_int_equal(mp_value_get_lock(rv, &l), -ENOLCK);                                      \
    assert_int_equal(mp_raw_array_new_##suffix(2, NULL, &ra), 0);                              \
    assert_int_equal(mp_array_len(ra), 2);                                                     \
    assert_int_equal(mp_value_typecode(ra), code);                                             \
    T *pv = NULL, *pa = NULL;                                                                  \
    assert_int_equal(mp_value_new_##suffix(NULL, NULL, &pv), 0);                               \
    assert_int_equal(mp_array_new_##suffix(0, NULL, NULL, &pa), -EINVAL);                      \
    assert_null(pa);                                                                           \
    assert_int_equal(mp_value_typecode(pv), code);                                             \
    assert_int_equal(mp_value_free(v), 0);                                                     \
    assert_int_equal(mp_array_free(a), 0);                                                     \
    assert_int_equal(mp_value_free(rv), 0);                                                    \
    assert_int_equal(mp_array_free(ra), 0);                                                    \
    assert_int_equal(mp_value_free(pv), 0);                                                    \
  } while (0)

static void test_value_typed_constructors(void **state) {
  (void)state;
  CHECK_TYPED(char, 'c', char);
  CHECK_TYPED(signed char, 'b', schar);
  CHECK_TYPED(unsigned char, 'B', uchar);
  CHECK_TYPED(short, 'h', short);
  CHECK_TYPED(unsigned short, 'H', ushort);
  CHECK_TYPED(int, 'i', int);
  CHECK_TYPED(unsigned int, 'I', uint);
  CHECK_TYPED(long, 'l', long);
  CHECK_TYPED(unsigned long, 'L', ulong);
  CHECK_TYPED(long long, 'q', llong);
  CHECK_TYPED(unsigned long long, 'Q', ullong);
  CHECK_TYPED(float, 'f', float);
  CHECK_TYPED(double, 'd', double);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_value_typecodes_round_trip),
      cmocka_unit_test(test_value_typed_constructors),
      cmocka_unit_test(test_value_default_is_zero),
      cmocka_unit_test(test_value_sizes_are_c_types),
      cmocka_unit_test(test_value_unknown_typecode),
      cmocka_unit_test(test_value_alignment_16),
      cmocka_unit_test(test_value_initial_value),
      cmocka_unit_test(test_value_and_array_interchange),
      cmocka_unit_test(test_value_pointer_works_in_child),
      cmocka_unit_test(test_array_set_by_ten_children),
      cmocka_unit_test(test_value_add_two_processes),
      cmocka_unit_test(test_value_locked_increment_two_processes),
      cmocka_unit_test(test_value_compare_exchange_two_processes),
      cmocka_unit_test(test_value_add_and_locked_increment_two_threads),
      cmocka_unit_test(test_value_compare_exchange_semantics),
      cmocka_unit_test(test_value_add_wraps),
      cmocka_unit_test(test_value_float_atomics_einval),
      cmocka_unit_test(test_array_index_out_of_range),
      cmocka_unit_test(test_value_get_lock_raw_enolck),
      cmocka_unit_test(test_value_default_lock_is_rlock),
      cmocka_unit_test(test_value_given_lock_shared),
      cmocka_unit_test(test_value_free_frees_own_lock),
      cmocka_unit_test(test_value_options_lock_and_raw_einval),
      cmocka_unit_test(test_value_load_waits_for_lock),
      cmocka_unit_test(test_value_load_owner_dead),
      cmocka_unit_test(test_value_free_non_value_einval),
      cmocka_unit_test(test_value_null_args),
      cmocka_unit_test(test_value_too_large_enomem),
  };
  return TU_RUN("value", tests);
}
