/* SPDX-License-Identifier: MIT */
/*
 * libmp-mpi's Pool, black-box, as a user runs it:
 *   mpiexec -n 3 test_mpi_pool      rank 0 runs the tests; ranks 1-2 serve
 *   test_mpi_pool spawn             alone: every pool spawns its 2 workers
 * (run_mpi.py starts both with the options this machine needs). cmocka runs
 * on rank 0 only: mp_mpi_pool_serve() keeps worker ranks out of main().
 */
#include <setjmp.h> /* cmocka needs these first */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
#include <mp-mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int spawn_model;

static mp_mpi_pool *pool_new(int n, const mp_mpi_pool_options *o) {
  mp_mpi_pool *p = NULL;
  assert_int_equal(mp_mpi_pool_new(n, o, &p), 0);
  assert_non_null(p);
  return p;
}

static int add_one(const void *item, void *result, void *ctx) {
  (void)ctx;
  *(int *)result = *(const int *)item + 1;
  return 0;
}

/* Fails on multiples of 7 with -(item) so the lowest failing item shows. */
static int fail_7(const void *item, void *result, void *ctx) {
  (void)ctx;
  int v = *(const int *)item;
  if (v > 0 && v % 7 == 0)
    return -1000 - v;
  *(int *)result = v * 2;
  return 0;
}

static int rank_pid(const void *item, void *result, void *ctx) {
  (void)item;
  (void)ctx;
  *(int *)result = (int)getpid();
  return 0;
}

/* ctx: a global; each worker reads its own copy (set by the initializer). */
static int scale = 1;
static void init_scale(void *arg) { scale = *(const int *)arg; }
static const int ten = 10;
static int times_scale(const void *item, void *result, void *ctx) {
  *(int *)result = *(const int *)item * *(const int *)ctx;
  return 0;
}

static int apply_sum(const void *arg, size_t len, mp_mpi_pool_out *out, void *ctx) {
  (void)ctx;
  long s = 0;
  for (size_t i = 0; i < len / sizeof(int); i++)
    s += ((const int *)arg)[i];
  return mp_mpi_pool_out_set(out, &s, sizeof s);
}

static int apply_big(const void *arg, size_t len, mp_mpi_pool_out *out, void *ctx) {
  (void)ctx;
  (void)len;
  size_t n = *(const size_t *)arg;
  unsigned char *b;
  int r = mp_mpi_pool_out_alloc(out, n, (void **)&b);
  if (r < 0)
    return r;
  for (size_t i = 0; i < n; i++)
    b[i] = (unsigned char)(i * 31);
  return 7;
}

static int apply_fail(const void *arg, size_t len, mp_mpi_pool_out *out, void *ctx) {
  (void)arg;
  (void)len;
  (void)out;
  (void)ctx;
  return -EDOM;
}

static int apply_sleep(const void *arg, size_t len, mp_mpi_pool_out *out, void *ctx) {
  (void)len;
  (void)out;
  (void)ctx;
  usleep((useconds_t) * (const int *)arg);
  return 0;
}

static void test_mpi_pool_map_in_order(void **state) {
  (void)state;
  mp_mpi_pool *p = pool_new(0, NULL);
  assert_int_equal(mp_mpi_pool_size(p), 2);
  for (size_t chunk = 0; chunk <= 3; chunk++) {
    int in[1000], out[1000];
    for (int i = 0; i < 1000; i++)
      in[i] = i, out[i] = -1;
    assert_int_equal(
        mp_mpi_pool_map(p, add_one, NULL, in, 1000, sizeof(int), out, sizeof(int), chunk), 0);
    for (int i = 0; i < 1000; i++)
      assert_int_equal(out[i], i + 1);
  }
  assert_int_equal(mp_mpi_pool_map(p, add_one, NULL, NULL, 0, sizeof(int), NULL, sizeof(int), 0),
                   0);
  assert_int_equal(mp_mpi_pool_free(p), 0);
}

/* Large chunks travel as messages of their own, into the results in place. */
static void test_mpi_pool_map_large(void **state) {
  (void)state;
  mp_mpi_pool *p = pool_new(0, NULL);
  size_t n = 1000000;
  int *in = malloc(n * sizeof *in), *out = malloc(n * sizeof *out);
  assert_non_null(in);
  assert_non_null(out);
  for (size_t i = 0; i < n; i++)
    in[i] = (int)i, out[i] = -1;
  assert_int_equal(mp_mpi_pool_map(p, add_one, NULL, in, n, sizeof(int), out, sizeof(int), 0), 0);
  for (size_t i = 0; i < n; i++)
    if (out[i] != (int)i + 1)
      fail_msg("item %zu: %d", i, out[i]);
  /* both workers took part: dynamic scheduling of 8 chunks of 2 workers */
  int pids[64];
  int one[64] = {0};
  assert_int_equal(mp_mpi_pool_map(p, rank_pid, NULL, one, 64, sizeof(int), pids, sizeof(int), 1),
                   0);
  assert_int_not_equal(pids[0], getpid());
  free(in);
  free(out);
  assert_int_equal(mp_mpi_pool_free(p), 0);
}

static void test_mpi_pool_map_failure(void **state) {
  (void)state;
  mp_mpi_pool *p = pool_new(0, NULL);
  int in[100], out[100];
  for (int i = 0; i < 100; i++)
    in[i] = i;
  /* lowest failing item is 7, whatever the chunking */
  for (size_t chunk = 1; chunk <= 16; chunk *= 4)
    assert_int_equal(
        mp_mpi_pool_map(p, fail_7, NULL, in, 100, sizeof(int), out, sizeof(int), chunk), -1007);
  assert_int_equal(out[6], 12);
  assert_int_equal(out[99], 198);
  /* the pool stays usable */
  assert_int_equal(mp_mpi_pool_map(p, add_one, NULL, in, 100, sizeof(int), out, sizeof(int), 0), 0);
  assert_int_equal(out[99], 100);
  assert_int_equal(mp_mpi_pool_free(p), 0);
}

static void test_mpi_pool_ctx_and_initializer(void **state) {
  (void)state;
  static const int seven = 7;
  mp_mpi_pool_options o = {.initializer = init_scale, .initargs = (void *)&seven};
  mp_mpi_pool *p = pool_new(0, &o);
  int in[50], out[50];
  for (int i = 0; i < 50; i++)
    in[i] = i;
  /* a global of the executable: the worker's own copy, set by its initializer */
  assert_int_equal(
      mp_mpi_pool_map(p, times_scale, &scale, in, 50, sizeof(int), out, sizeof(int), 3), 0);
  for (int i = 0; i < 50; i++)
    assert_int_equal(out[i], 7 * i);
  /* a constant */
  assert_int_equal(
      mp_mpi_pool_map(p, times_scale, (void *)&ten, in, 50, sizeof(int), out, sizeof(int), 0), 0);
  assert_int_equal(out[49], 490);
  /* heap and stack pointers mean nothing on another rank: refused */
  int *heap = malloc(sizeof *heap);
  int local = 3;
  assert_int_equal(mp_mpi_pool_map(p, times_scale, heap, in, 50, sizeof(int), out, sizeof(int), 0),
                   -EINVAL);
  assert_int_equal(
      mp_mpi_pool_map(p, times_scale, &local, in, 50, sizeof(int), out, sizeof(int), 0), -EINVAL);
  /* a "function" that is data */
  mp_mpi_pool_map_fn bogus;
  void *data = (void *)&ten;
  memcpy(&bogus, &data, sizeof bogus);
  assert_int_equal(mp_mpi_pool_map(p, bogus, NULL, in, 50, sizeof(int), out, sizeof(int), 0),
                   -EINVAL);
  free(heap);
  assert_int_equal(mp_mpi_pool_free(p), 0);
}

static int cb_calls, ecb_calls, cb_status;
static int on_ok(mp_mpi_async_result *res, int status, void *arg) {
  (void)res;
  (void)arg;
  cb_calls++;
  cb_status = status;
  return 0;
}
static int on_err(mp_mpi_async_result *res, int status, void *arg) {
  (void)res;
  (void)arg;
  ecb_calls++;
  cb_status = status;
  return 0;
}

static void test_mpi_pool_apply(void **state) {
  (void)state;
  mp_mpi_pool *p = pool_new(0, NULL);
  int v[4] = {1, 2, 3, 4};
  void *res;
  size_t len;
  assert_int_equal(mp_mpi_pool_apply(p, apply_sum, v, sizeof v, NULL, &res, &len), 0);
  assert_int_equal(len, sizeof(long));
  assert_int_equal(*(long *)res, 10);
  free(res);
  /* a large argument and a large result: messages of their own */
  size_t n = 300000;
  int *big = malloc(n * sizeof *big);
  long want = 0;
  for (size_t i = 0; i < n; i++)
    big[i] = (int)i, want += (long)i;
  assert_int_equal(mp_mpi_pool_apply(p, apply_sum, big, n * sizeof *big, NULL, &res, &len), 0);
  assert_int_equal(*(long *)res, want);
  free(res);
  free(big);
  size_t rn = 100000;
  assert_int_equal(mp_mpi_pool_apply(p, apply_big, &rn, sizeof rn, NULL, &res, &len), 7);
  assert_int_equal(len, rn);
  for (size_t i = 0; i < rn; i++)
    if (((unsigned char *)res)[i] != (unsigned char)(i * 31))
      fail_msg("byte %zu", i);
  free(res);
  assert_int_equal(mp_mpi_pool_apply(p, apply_fail, NULL, 0, NULL, NULL, NULL), -EDOM);

  /* apply_async: many at once, with callbacks */
  enum { N = 2000 };
  static mp_mpi_async_result *r[N];
  mp_mpi_pool_callbacks cb = {on_ok, on_err, NULL};
  cb_calls = ecb_calls = 0;
  for (int i = 0; i < N; i++) {
    int x = i;
    assert_int_equal(mp_mpi_pool_apply_async(p, apply_sum, &x, sizeof x, NULL, &cb, &r[i]), 0);
  }
  for (int i = 0; i < N; i++) {
    assert_int_equal(mp_mpi_async_result_get(r[i], MP_FOREVER), 0);
    assert_int_equal(mp_mpi_async_result_successful(r[i]), 1);
    const void *d;
    assert_int_equal(mp_mpi_async_result_data(r[i], &d, &len), 0);
    assert_int_equal(*(const long *)d, i);
    assert_int_equal(mp_mpi_async_result_free(r[i]), 0);
  }
  mp_mpi_async_result *e;
  assert_int_equal(mp_mpi_pool_apply_async(p, apply_fail, NULL, 0, NULL, &cb, &e), 0);
  assert_int_equal(mp_mpi_async_result_get(e, 30), -EDOM);
  assert_int_equal(mp_mpi_async_result_successful(e), 0);
  mp_mpi_async_result_free(e);
  assert_int_equal(mp_mpi_pool_close(p), 0);
  assert_int_equal(mp_mpi_pool_join(p, 30), 0);
  assert_int_equal(cb_calls, N);
  assert_int_equal(ecb_calls, 1);
  assert_int_equal(cb_status, -EDOM);
  assert_int_equal(mp_mpi_pool_free(p), 0);
}

static void test_mpi_pool_imap(void **state) {
  (void)state;
  mp_mpi_pool *p = pool_new(0, NULL);
  int in[200];
  for (int i = 0; i < 200; i++)
    in[i] = i;
  mp_mpi_pool_iter *it;
  assert_int_equal(mp_mpi_pool_imap(p, fail_7, NULL, in, 200, sizeof(int), sizeof(int), 5, &it), 0);
  for (int i = 0; i < 200; i++) {
    int v = -1;
    size_t idx;
    int s = mp_mpi_pool_iter_next(it, &v, &idx, 30);
    assert_int_equal(idx, i);
    /* the chunk's first failing item (a multiple of 7), if any */
    int lo = (i / 5) * 5, f = -1;
    for (int k = lo; k < lo + 5 && f < 0; k++)
      if (k > 0 && k % 7 == 0)
        f = k;
    if (f < 0 || i < f) {
      assert_int_equal(s, 0);
      assert_int_equal(v, 2 * i);
    } else if (i == f) {
      assert_int_equal(s, -1000 - i);
    } else {
      assert_int_equal(s, -ECANCELED);
    }
  }
  assert_int_equal(mp_mpi_pool_iter_next(it, NULL, NULL, 0), -EPIPE);
  assert_int_equal(mp_mpi_pool_iter_free(it), 0);

  assert_int_equal(
      mp_mpi_pool_imap_unordered(p, add_one, NULL, in, 200, sizeof(int), sizeof(int), 3, &it), 0);
  unsigned char seen[200] = {0};
  for (int i = 0; i < 200; i++) {
    int v;
    size_t idx;
    assert_int_equal(mp_mpi_pool_iter_next(it, &v, &idx, 30), 0);
    assert_true(idx < 200);
    assert_false(seen[idx]);
    seen[idx] = 1;
    assert_int_equal(v, (int)idx + 1);
  }
  assert_int_equal(mp_mpi_pool_iter_next(it, NULL, NULL, 0), -EPIPE);
  assert_int_equal(mp_mpi_pool_iter_free(it), 0);
  assert_int_equal(mp_mpi_pool_free(p), 0);
}

struct pair {
  int a, b;
};
static int mul(const void *item, void *result, void *ctx) {
  (void)ctx;
  const struct pair *q = item;
  *(int *)result = q->a * q->b;
  return 0;
}

static void test_mpi_pool_starmap_and_async(void **state) {
  (void)state;
  mp_mpi_pool *p = pool_new(0, NULL);
  struct pair in[30];
  int out[30];
  for (int i = 0; i < 30; i++)
    in[i] = (struct pair){i, i + 1};
  assert_int_equal(mp_mpi_pool_starmap(p, mul, NULL, in, 30, sizeof *in, out, sizeof *out, 0), 0);
  assert_int_equal(out[29], 29 * 30);
  mp_mpi_async_result *r;
  memset(out, 0, sizeof out);
  mp_mpi_pool_callbacks cb = {on_ok, on_err, NULL};
  cb_calls = 0;
  assert_int_equal(
      mp_mpi_pool_starmap_async(p, mul, NULL, in, 30, sizeof *in, out, sizeof *out, 4, &cb, &r), 0);
  assert_int_equal(mp_mpi_async_result_get(r, 30), 0);
  assert_int_equal(out[10], 110);
  mp_mpi_async_result_free(r);
  /* map_async: ready and wait before and after the work is done */
  int items[200], plus[200];
  for (int i = 0; i < 200; i++)
    items[i] = i;
  memset(plus, 0, sizeof plus);
  assert_int_equal(mp_mpi_pool_map_async(p, add_one, NULL, items, 200, sizeof *items, plus,
                                         sizeof *plus, 7, NULL, &r),
                   0);
  int ready = mp_mpi_async_result_ready(r);
  assert_true(ready == 0 || ready == 1);
  assert_int_equal(mp_mpi_async_result_wait(r, 30), 0);
  assert_int_equal(mp_mpi_async_result_ready(r), 1);
  assert_int_equal(mp_mpi_async_result_wait(r, 0), 0); /* ready: returns at once */
  assert_int_equal(mp_mpi_async_result_get(r, 0), 0);
  for (int i = 0; i < 200; i++)
    assert_int_equal(plus[i], i + 1);
  assert_int_equal(mp_mpi_async_result_ready(NULL), -EINVAL);
  assert_int_equal(mp_mpi_async_result_wait(NULL, 0), -EINVAL);
  mp_mpi_async_result_free(r);
  assert_int_equal(mp_mpi_pool_close(p), 0);
  assert_int_equal(mp_mpi_pool_join(p, 30), 0);
  assert_int_equal(cb_calls, 1);
  assert_int_equal(mp_mpi_pool_free(p), 0);
}

static void test_mpi_pool_close_terminate(void **state) {
  (void)state;
  mp_mpi_pool *p = pool_new(0, NULL);
  assert_int_equal(mp_mpi_pool_join(p, 1), -EINVAL); /* still running */
  mp_mpi_async_result *r[200];
  for (int i = 0; i < 200; i++) {
    int us = 20000;
    assert_int_equal(mp_mpi_pool_apply_async(p, apply_sleep, &us, sizeof us, NULL, NULL, &r[i]), 0);
  }
  assert_int_equal(mp_mpi_pool_terminate(p), 0); /* not 200 x 20 ms / 2 */
  int shut = 0;
  for (int i = 0; i < 200; i++) {
    int s = mp_mpi_async_result_get(r[i], 0);
    assert_true(s == 0 || s == -ESHUTDOWN);
    shut += s == -ESHUTDOWN;
    mp_mpi_async_result_free(r[i]);
  }
  assert_true(shut >= 100);
  int x = 1;
  assert_int_equal(mp_mpi_pool_apply_async(p, apply_sleep, &x, sizeof x, NULL, NULL, &r[0]),
                   -EPIPE);
  assert_int_equal(mp_mpi_pool_join(p, 5), 0);
  assert_int_equal(mp_mpi_pool_free(p), 0);

  p = pool_new(1, NULL);
  assert_int_equal(mp_mpi_pool_size(p), 1);
  assert_int_equal(mp_mpi_pool_close(p), 0);
  assert_int_equal(mp_mpi_pool_map(p, add_one, NULL, &x, 1, sizeof x, &x, sizeof x, 0), -EPIPE);
  assert_int_equal(mp_mpi_pool_join(p, 30), 0);
  assert_int_equal(mp_mpi_pool_free(p), 0);
}

static void test_mpi_pool_bad_input(void **state) {
  (void)state;
  mp_mpi_pool *p;
  mp_mpi_pool_options o = {.maxtasksperchild = 1};
  assert_int_equal(mp_mpi_pool_new(-1, NULL, &p), -EINVAL);
  assert_int_equal(mp_mpi_pool_new(0, NULL, NULL), -EINVAL);
  assert_int_equal(mp_mpi_pool_new(0, &o, &p), -ENOTSUP);
  if (!spawn_model) {
    assert_int_equal(mp_mpi_pool_new(3, NULL, &p), -EINVAL); /* only 2 other ranks */
    p = pool_new(0, NULL);
    mp_mpi_pool *q;
    assert_int_equal(mp_mpi_pool_new(0, NULL, &q), -EBUSY);
    assert_int_equal(mp_mpi_pool_free(p), 0);
  }
  p = pool_new(0, NULL);
  int x = 0;
  assert_int_equal(mp_mpi_pool_map(NULL, add_one, NULL, &x, 1, 4, &x, 4, 0), -EINVAL);
  assert_int_equal(mp_mpi_pool_map(p, NULL, NULL, &x, 1, 4, &x, 4, 0), -EINVAL);
  assert_int_equal(mp_mpi_pool_map(p, add_one, NULL, NULL, 1, 4, &x, 4, 0), -EINVAL);
  assert_int_equal(mp_mpi_pool_apply(p, apply_sum, NULL, 4, NULL, NULL, NULL), -EINVAL);
  assert_int_equal(mp_mpi_async_result_get(NULL, 0), -EINVAL);
  assert_int_equal(mp_mpi_async_result_free(NULL), 0);
  assert_int_equal(mp_mpi_pool_free(NULL), 0);
  mp_mpi_async_result *r;
  int us = 200000;
  assert_int_equal(mp_mpi_pool_apply_async(p, apply_sleep, &us, sizeof us, NULL, NULL, &r), 0);
  assert_int_equal(mp_mpi_async_result_successful(r), -EAGAIN);
  assert_int_equal(mp_mpi_async_result_get(r, 0.01), -ETIMEDOUT);
  assert_int_equal(mp_mpi_async_result_get(r, 30), 0);
  mp_mpi_async_result_free(r);
  assert_int_equal(mp_mpi_pool_free(p), 0);
}

/* The pids of the workers of a new pool, sorted; returns how many. */
static int worker_pids(int out[2]) {
  mp_mpi_pool *p = pool_new(0, NULL);
  int one[64] = {0}, pids[64], n = 0;
  assert_int_equal(mp_mpi_pool_map(p, rank_pid, NULL, one, 64, sizeof(int), pids, sizeof(int), 1),
                   0);
  for (int i = 0; i < 64; i++)
    if (n == 0 || (pids[i] != out[0] && (n < 2 || pids[i] != out[1])))
      if (n < 2)
        out[n++] = pids[i];
  if (n == 2 && out[0] > out[1]) {
    int t = out[0];
    out[0] = out[1];
    out[1] = t;
  }
  assert_int_equal(mp_mpi_pool_free(p), 0);
  return n;
}

/* A freed pool's workers serve the next pool: spawned ones too. */
static void test_mpi_pool_workers_reused(void **state) {
  (void)state;
  int a[2] = {0, 0}, b[2] = {0, 0};
  int na = worker_pids(a), nb = worker_pids(b);
  assert_int_equal(na, 2);
  assert_int_equal(nb, 2);
  assert_int_equal(a[0], b[0]);
  assert_int_equal(a[1], b[1]);
}

int main(int argc, char **argv) {
  spawn_model = argc > 1 && !strcmp(argv[1], "spawn");
  int r = mp_mpi_pool_serve(); /* worker ranks serve here and never return */
  if (r < 0) {
    fprintf(stderr, "mp_mpi_pool_serve: %s\n", strerror(-r));
    return 1;
  }
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_mpi_pool_map_in_order),
      cmocka_unit_test(test_mpi_pool_map_large),
      cmocka_unit_test(test_mpi_pool_map_failure),
      cmocka_unit_test(test_mpi_pool_ctx_and_initializer),
      cmocka_unit_test(test_mpi_pool_apply),
      cmocka_unit_test(test_mpi_pool_imap),
      cmocka_unit_test(test_mpi_pool_starmap_and_async),
      cmocka_unit_test(test_mpi_pool_close_terminate),
      cmocka_unit_test(test_mpi_pool_bad_input),
      cmocka_unit_test(test_mpi_pool_workers_reused),
  };
  return cmocka_run_group_tests_name(spawn_model ? "mpi_pool_spawn" : "mpi_pool", tests, NULL,
                                     NULL);
}
