/* SPDX-License-Identifier: MIT */
/* Pool: map, apply, apply_async with callbacks, imap, close/join/terminate,
 * worker deaths, maxtasksperchild, fds, process rules, signals. */
#include "testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <mp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *self_exe;

/* ------------------------------------------------------------ tasks */

static int square(const void *item, void *result, void *ctx) {
  (void)ctx;
  int v = *(const int *)item;
  *(int *)result = v * v;
  return 0;
}

/* Fails with -(value) for items equal to or above ctx's threshold. */
static int fail_from(const void *item, void *result, void *ctx) {
  int v = *(const int *)item;
  if (v >= *(const int *)ctx)
    return -1000 - v;
  *(int *)result = v + 1;
  return 0;
}

/* Checks that it works in place: the item lies in the heap array given as ctx
 * and the result in the heap too. */
struct inplace {
  const int *items;
  size_t n;
};
static int in_place(const void *item, void *result, void *ctx) {
  const struct inplace *ip = ctx;
  const int *it = item;
  if (it < ip->items || it >= ip->items + ip->n || !mp_heap_contains(result))
    return -EFAULT;
  *(int *)result = *it * 3;
  return 0;
}

/* Apply: echoes the argument, reversed, as the result. */
static int reverse(const void *arg, size_t len, mp_pool_out *out, void *ctx) {
  (void)ctx;
  void *buf;
  int r = mp_pool_out_alloc(out, len, &buf);
  if (r < 0)
    return r;
  for (size_t i = 0; i < len; i++)
    ((char *)buf)[i] = ((const char *)arg)[len - 1 - i];
  return (int)(len % 1000);
}

/* Apply: returns the int argument as the status, and the pid as the result. */
static int status_of(const void *arg, size_t len, mp_pool_out *out, void *ctx) {
  (void)len;
  (void)ctx;
  int pid = (int)getpid();
  mp_pool_out_set(out, &pid, sizeof pid);
  return *(const int *)arg;
}

static int sleep_ms(const void *arg, size_t len, mp_pool_out *out, void *ctx) {
  (void)len;
  (void)out;
  (void)ctx;
  tu_sleep(*(const int *)arg / 1000.0);
  return 0;
}

static int do_exit(const void *arg, size_t len, mp_pool_out *out, void *ctx) {
  (void)arg;
  (void)len;
  (void)out;
  (void)ctx;
  exit(3);
}

static int do_segv(const void *arg, size_t len, mp_pool_out *out, void *ctx) {
  (void)arg;
  (void)len;
  (void)out;
  (void)ctx;
  raise(SIGSEGV);
  return 0;
}

static mp_pool *new_pool(int n, const mp_pool_options *o) {
  mp_pool *p = NULL;
  assert_int_equal(mp_pool_new(n, o, &p), 0);
  assert_non_null(p);
  return p;
}

/* ------------------------------------------------------------ new, free */

static void test_pool_new_and_bad_arguments(void **state) {
  (void)state;
  mp_pool *p = NULL;
  assert_int_equal(mp_pool_new(-1, NULL, &p), -EINVAL);
  assert_int_equal(mp_pool_new(100000, NULL, &p), -EINVAL);
  assert_int_equal(mp_pool_new(2, NULL, NULL), -EINVAL);
  assert_null(p);
  p = new_pool(0, NULL);
  assert_int_equal(mp_pool_worker_pids(p, NULL, 0), mp_cpu_count());
  assert_int_equal(mp_pool_worker_pids(p, NULL, 3), -EINVAL);
  int v = 3, res = 0;
  assert_int_equal(mp_pool_map(p, NULL, NULL, &v, 1, sizeof v, &res, sizeof res, 0), -EINVAL);
  assert_int_equal(mp_pool_map(p, square, NULL, NULL, 1, sizeof v, &res, sizeof res, 0), -EINVAL);
  assert_int_equal(mp_pool_map(p, square, NULL, &v, 1, sizeof v, NULL, sizeof res, 0), -EINVAL);
  assert_int_equal(mp_pool_apply(p, NULL, NULL, 0, NULL, NULL, NULL), -EINVAL);
  assert_int_equal(mp_pool_apply(p, reverse, NULL, 5, NULL, NULL, NULL), -EINVAL);
  mp_async_result *r;
  assert_int_equal(mp_pool_apply_async(p, reverse, "x", 1, NULL, NULL, NULL), -EINVAL);
  assert_int_equal(mp_pool_apply_async_fd(p, NULL, 1, NULL, 0, NULL, NULL, &r), -EINVAL);
  assert_int_equal(mp_pool_apply_async_fd(p, NULL, -1, NULL, 0, NULL, NULL, &r), -EBADF);
  assert_int_equal(mp_pool_join(p, 0), -EINVAL); /* still running */
  assert_int_equal(mp_pool_free(p), 0);
  assert_int_equal(mp_pool_free(NULL), 0);
  assert_int_equal(mp_async_result_free(NULL), 0);
  assert_int_equal(mp_pool_iter_free(NULL), 0);
  assert_int_equal(mp_async_result_get(NULL, 0), -EINVAL);
  assert_int_equal(mp_pool_close(NULL), -EINVAL);
}

/* ------------------------------------------------------------ map */

static void test_pool_map_results_in_order(void **state) {
  (void)state;
  mp_pool *p = new_pool(3, NULL);
  enum { N = 1000 };
  int *in = malloc(N * sizeof *in), *out = malloc(N * sizeof *out);
  for (int i = 0; i < N; i++)
    in[i] = i;
  size_t chunks[] = {0, 1, 7, 999, 1000, 5000};
  for (size_t c = 0; c < sizeof chunks / sizeof chunks[0]; c++) {
    memset(out, 0xff, N * sizeof *out);
    assert_int_equal(mp_pool_map(p, square, NULL, in, N, sizeof *in, out, sizeof *out, chunks[c]),
                     0);
    for (int i = 0; i < N; i++)
      assert_int_equal(out[i], i * i);
  }
  /* starmap: the same call, a struct per item */
  assert_int_equal(mp_pool_starmap(p, square, NULL, in, 10, sizeof *in, out, sizeof *out, 0), 0);
  assert_int_equal(out[9], 81);
  /* empty input: nothing to do, success at once */
  assert_int_equal(mp_pool_map(p, square, NULL, NULL, 0, sizeof *in, NULL, sizeof *out, 0), 0);
  mp_async_result *r;
  assert_int_equal(mp_pool_map_async(p, square, NULL, NULL, 0, 4, NULL, 4, 0, NULL, &r), 0);
  assert_int_equal(mp_async_result_get(r, 5), 0);
  assert_int_equal(mp_async_result_free(r), 0);
  free(in);
  free(out);
  assert_int_equal(mp_pool_free(p), 0);
}

/* starmap: an argument tuple is a struct; Python's starmap(mul, pairs). */
struct pair {
  int a, b;
};

static int mul_pair(const void *item, void *result, void *ctx) {
  (void)ctx;
  const struct pair *p = item;
  *(long *)result = (long)p->a * p->b;
  return 0;
}

static void test_pool_starmap_and_starmap_async(void **state) {
  (void)state;
  mp_pool *p = new_pool(2, NULL);
  enum { N = 1000 };
  struct pair in[N];
  long out[N], out2[N];
  for (int i = 0; i < N; i++)
    in[i] = (struct pair){i, i + 3};
  assert_int_equal(mp_pool_starmap(p, mul_pair, NULL, in, N, sizeof *in, out, sizeof *out, 7), 0);
  mp_async_result *r;
  assert_int_equal(
      mp_pool_starmap_async(p, mul_pair, NULL, in, N, sizeof *in, out2, sizeof *out2, 0, NULL, &r),
      0);
  assert_int_equal(mp_async_result_get(r, 30), 0);
  assert_int_equal(mp_async_result_successful(r), 1);
  for (int i = 0; i < N; i++) {
    assert_int_equal(out[i], (long)i * (i + 3));
    assert_int_equal(out2[i], (long)i * (i + 3));
  }
  assert_int_equal(mp_async_result_free(r), 0);
  assert_int_equal(mp_pool_starmap_async(NULL, mul_pair, NULL, in, N, sizeof *in, out2,
                                         sizeof *out2, 0, NULL, &r),
                   -EINVAL);
  assert_int_equal(mp_pool_free(p), 0);
}

static void test_pool_map_in_heap_is_zero_copy(void **state) {
  (void)state;
  mp_pool *p = new_pool(2, NULL);
  enum { N = 10000 };
  struct inplace *ip = mp_heap_alloc(sizeof *ip);
  int *in = mp_heap_alloc(N * sizeof *in), *out = mp_heap_alloc(N * sizeof *out);
  ip->items = in;
  ip->n = N;
  for (int i = 0; i < N; i++)
    in[i] = i;
  assert_int_equal(mp_pool_map(p, in_place, ip, in, N, sizeof *in, out, sizeof *out, 0), 0);
  for (int i = 0; i < N; i++)
    assert_int_equal(out[i], 3 * i);
  /* A malloc()ed input is copied: in_place sees a foreign address and says so. */
  int *copy = malloc(N * sizeof *copy);
  memcpy(copy, in, N * sizeof *copy);
  assert_int_equal(mp_pool_map(p, in_place, ip, copy, N, sizeof *in, out, sizeof *out, 0), -EFAULT);
  free(copy);
  mp_heap_free(in);
  mp_heap_free(out);
  mp_heap_free(ip);
  assert_int_equal(mp_pool_free(p), 0);
}

static void test_pool_map_huge_input(void **state) {
  (void)state;
  mp_pool *p = new_pool(2, NULL);
  size_t n = 4u << 20; /* 16 MiB of ints each way */
  int *in = malloc(n * sizeof *in), *out = malloc(n * sizeof *out);
  for (size_t i = 0; i < n; i++)
    in[i] = (int)(i & 0x7fff);
  assert_int_equal(mp_pool_map(p, square, NULL, in, n, sizeof *in, out, sizeof *out, 0), 0);
  for (size_t i = 0; i < n; i += 4099)
    assert_int_equal(out[i], in[i] * in[i]);
  free(in);
  free(out);
  assert_int_equal(mp_pool_free(p), 0);
}

struct cbstate;
static int on_result(mp_async_result *r, int status, void *arg);
static int on_error(mp_async_result *r, int status, void *arg);
struct cbstate {
  atomic_int ok, err, last_status;
  atomic_int pid_ok;
  atomic_int not_main;
  pthread_t main_thread;
  int fail;
};

static void test_pool_map_failing_item(void **state) {
  (void)state;
  mp_pool *p = new_pool(2, NULL);
  int in[100], out[100];
  int *threshold = mp_heap_alloc(sizeof *threshold); /* ctx: read in the workers */
  *threshold = 37;
  for (int i = 0; i < 100; i++)
    in[i] = i < 50 ? i : 100 - i; /* 37 fails, so does 63 (value 37) later */
  for (size_t c = 1; c < 12; c += 5)
    assert_int_equal(mp_pool_map(p, fail_from, threshold, in, 100, sizeof *in, out, sizeof *out, c),
                     -1037);
  for (int i = 0; i < 37; i++)
    assert_int_equal(out[i], i + 1);
  /* map_async: the error callback gets the status too */
  struct cbstate s = {.main_thread = pthread_self()};
  mp_pool_callbacks cb = {on_result, on_error, &s};
  mp_async_result *r;
  assert_int_equal(
      mp_pool_map_async(p, fail_from, threshold, in, 100, sizeof *in, out, sizeof *out, 3, &cb, &r),
      0);
  assert_int_equal(mp_async_result_get(r, 10), -1037);
  assert_int_equal(mp_async_result_successful(r), 0);
  assert_int_equal(atomic_load(&s.err), 1);
  assert_int_equal(atomic_load(&s.last_status), -1037);
  assert_int_equal(mp_async_result_free(r), 0);
  mp_heap_free(threshold);
  assert_int_equal(mp_pool_free(p), 0);
}

/* ------------------------------------------------------------ apply */

static void test_pool_apply_results_of_any_size(void **state) {
  (void)state;
  mp_pool *p = new_pool(2, NULL);
  size_t sizes[] = {0, 1, 63, 64, 65, 4096, 3u << 20};
  for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
    size_t len = sizes[k];
    char *arg = malloc(len + 1);
    for (size_t i = 0; i < len; i++)
      arg[i] = (char)(i * 7 + 1);
    void *res = (void *)1;
    size_t rlen = 99;
    assert_int_equal(mp_pool_apply(p, reverse, len ? arg : NULL, len, NULL, &res, &rlen),
                     (int)(len % 1000));
    assert_int_equal(rlen, len);
    if (len == 0)
      assert_null(res);
    for (size_t i = 0; i < len; i++)
      assert_int_equal(((char *)res)[i], arg[len - 1 - i]);
    free(res);
    free(arg);
  }
  /* a failing status reaches the caller intact */
  int st = -4242;
  assert_int_equal(mp_pool_apply(p, status_of, &st, sizeof st, NULL, NULL, NULL), -4242);
  st = 17;
  assert_int_equal(mp_pool_apply(p, status_of, &st, sizeof st, NULL, NULL, NULL), 17);
  assert_int_equal(mp_pool_free(p), 0);
}

static int on_result(mp_async_result *r, int status, void *arg) {
  struct cbstate *s = arg;
  const void *data;
  size_t len;
  int dr = mp_async_result_data(r, &data, &len);
  if (dr == 0 && len == sizeof(int) && *(const int *)data != (int)getpid())
    atomic_fetch_add(&s->pid_ok, 1); /* the worker's pid, not ours */
  atomic_fetch_add(&s->ok, 1);
  atomic_store(&s->last_status, status);
  if (!pthread_equal(pthread_self(), s->main_thread))
    atomic_fetch_add(&s->not_main, 1);
  return s->fail ? -1 : 0;
}

static int on_error(mp_async_result *r, int status, void *arg) {
  (void)r;
  struct cbstate *s = arg;
  atomic_fetch_add(&s->err, 1);
  atomic_store(&s->last_status, status);
  return s->fail ? -1 : 0;
}

static pid_t cb_pid;
static int record_pid(mp_async_result *r, int status, void *arg) {
  (void)r;
  (void)status;
  (void)arg;
  cb_pid = getpid();
  return 0;
}

static void test_pool_apply_async_callbacks_in_parent(void **state) {
  (void)state;
  mp_pool *p = new_pool(2, NULL);
  struct cbstate s = {.main_thread = pthread_self()};
  mp_pool_callbacks cb = {on_result, on_error, &s};
  enum { N = 100 };
  mp_async_result *r[N];
  for (int i = 0; i < N; i++) {
    int st = i % 10 == 0 ? -(i + 1) : i;
    assert_int_equal(mp_pool_apply_async(p, status_of, &st, sizeof st, NULL, &cb, &r[i]), 0);
  }
  for (int i = 0; i < N; i++) {
    int want = i % 10 == 0 ? -(i + 1) : i;
    assert_int_equal(mp_async_result_get(r[i], 10), want);
    assert_int_equal(mp_async_result_ready(r[i]), 1);
    assert_int_equal(mp_async_result_successful(r[i]), want >= 0);
    assert_int_equal(mp_async_result_free(r[i]), 0);
  }
  /* get() returns after the callback ran: all 100 are counted */
  assert_int_equal(atomic_load(&s.ok), 90);
  assert_int_equal(atomic_load(&s.err), 10);
  assert_int_equal(atomic_load(&s.pid_ok), 90);
  assert_int_equal(atomic_load(&s.not_main), 90); /* the handler thread */
  /* the callback runs in the parent's pid */
  mp_pool_callbacks pc = {record_pid, NULL, NULL};
  int st = 0;
  mp_async_result *one;
  assert_int_equal(mp_pool_apply_async(p, status_of, &st, sizeof st, NULL, &pc, &one), 0);
  assert_int_equal(mp_async_result_get(one, 10), 0);
  assert_int_equal(cb_pid, getpid());
  assert_int_equal(mp_async_result_free(one), 0);
  /* failing callbacks do not hang the pool */
  s.fail = 1;
  for (int i = 0; i < 20; i++) {
    st = i % 2 ? -1 : 1;
    assert_int_equal(mp_pool_apply_async(p, status_of, &st, sizeof st, NULL, &cb, &one), 0);
    assert_int_equal(mp_async_result_get(one, 10), st);
    assert_int_equal(mp_async_result_free(one), 0);
  }
  /* a result freed before it is ready still gets its callback */
  s.fail = 0;
  int before = atomic_load(&s.ok);
  int ms = 100;
  assert_int_equal(mp_pool_apply_async(p, sleep_ms, &ms, sizeof ms, NULL, &cb, &one), 0);
  assert_int_equal(mp_async_result_free(one), 0);
  assert_int_equal(mp_pool_close(p), 0);
  assert_int_equal(mp_pool_join(p, 10), 0);
  assert_int_equal(atomic_load(&s.ok), before + 1);
  assert_int_equal(mp_pool_free(p), 0);
}

static void test_pool_get_timeouts_and_signals(void **state) {
  (void)state;
  mp_pool *p = new_pool(1, NULL);
  int ms = 3000;
  mp_async_result *r;
  assert_int_equal(mp_pool_apply_async(p, sleep_ms, &ms, sizeof ms, NULL, NULL, &r), 0);
  double t0 = tu_now();
  assert_int_equal(mp_async_result_get(r, MP_NOWAIT), -ETIMEDOUT);
  assert_int_equal(mp_async_result_wait(r, MP_NOWAIT), -ETIMEDOUT);
  assert_true(tu_now() - t0 < 0.1);
  assert_int_equal(mp_async_result_ready(r), 0);
  assert_int_equal(mp_async_result_successful(r), -EAGAIN);
  const void *d;
  assert_int_equal(mp_async_result_data(r, &d, NULL), -EAGAIN);
  t0 = tu_now();
  assert_int_equal(mp_async_result_get(r, 0.2), -ETIMEDOUT);
  double el = tu_now() - t0;
  assert_true(el >= 0.19);
  assert_true(el < 2.0);
  tu_signals_start(0.05, 0.05);
  t0 = tu_now();
  int g = mp_async_result_wait(r, 0.5);
  el = tu_now() - t0;
  int seen = tu_signals_stop();
  assert_int_equal(g, -ETIMEDOUT);
  assert_true(seen >= 2);
  assert_true(el >= 0.49);
  assert_true(el < 2.5);
  /* join with a timeout while the task runs */
  assert_int_equal(mp_pool_close(p), 0);
  t0 = tu_now();
  assert_int_equal(mp_pool_join(p, 0.2), -ETIMEDOUT);
  el = tu_now() - t0;
  assert_true(el >= 0.19 && el < 2.0);
  assert_int_equal(mp_async_result_get(r, 10), 0);
  assert_int_equal(mp_pool_join(p, 10), 0);
  assert_int_equal(mp_async_result_free(r), 0);
  assert_int_equal(mp_pool_free(p), 0);
}

/* ------------------------------------------------------------ deaths */

static void test_pool_task_exit_or_segfault_fails_only_it(void **state) {
  (void)state;
  mp_pool *p = new_pool(2, NULL);
  struct cbstate s = {.main_thread = pthread_self()};
  mp_pool_callbacks cb = {on_result, on_error, &s};
  mp_pool_apply_fn killers[] = {do_exit, do_segv};
  for (int k = 0; k < 2; k++) {
    int before[2], after[2];
    assert_int_equal(mp_pool_worker_pids(p, before, 2), 2);
    mp_async_result *bad, *good[10];
    int ms = 20;
    for (int i = 0; i < 5; i++)
      assert_int_equal(mp_pool_apply_async(p, sleep_ms, &ms, sizeof ms, NULL, NULL, &good[i]), 0);
    assert_int_equal(mp_pool_apply_async(p, killers[k], NULL, 0, NULL, &cb, &bad), 0);
    for (int i = 5; i < 10; i++)
      assert_int_equal(mp_pool_apply_async(p, sleep_ms, &ms, sizeof ms, NULL, NULL, &good[i]), 0);
    assert_int_equal(mp_async_result_get(bad, 5), -ECONNABORTED);
    assert_int_equal(atomic_load(&s.last_status), -ECONNABORTED);
    for (int i = 0; i < 10; i++) {
      assert_int_equal(mp_async_result_get(good[i], 10), 0);
      mp_async_result_free(good[i]);
    }
    mp_async_result_free(bad);
    /* a replacement took the dead worker's place */
    assert_int_equal(mp_pool_worker_pids(p, after, 2), 2);
    assert_true(after[0] != before[0] || after[1] != before[1]);
    int st = 5;
    assert_int_equal(mp_pool_apply(p, status_of, &st, sizeof st, NULL, NULL, NULL), 5);
  }
  assert_int_equal(atomic_load(&s.err), 2);
  assert_int_equal(mp_pool_free(p), 0);
}

static void test_pool_maxtasksperchild(void **state) {
  (void)state;
  mp_pool_options o = {.maxtasksperchild = 3};
  mp_pool *p = new_pool(2, &o);
  enum { N = 60 };
  mp_async_result *r[N];
  for (int i = 0; i < N; i++) {
    int st = i;
    assert_int_equal(mp_pool_apply_async(p, status_of, &st, sizeof st, NULL, NULL, &r[i]), 0);
  }
  int pids[N], distinct = 0;
  for (int i = 0; i < N; i++) {
    assert_int_equal(mp_async_result_get(r[i], 20), i);
    const void *d;
    size_t len;
    assert_int_equal(mp_async_result_data(r[i], &d, &len), 0);
    assert_int_equal(len, sizeof(int));
    int pid = *(const int *)d;
    int seen = 0;
    for (int k = 0; k < distinct; k++)
      seen |= pids[k] == pid;
    if (!seen)
      pids[distinct++] = pid;
    mp_async_result_free(r[i]);
  }
  assert_true(distinct >= N / 3);
  /* map chunks count as tasks too */
  int in[100], out[100];
  for (int i = 0; i < 100; i++)
    in[i] = i;
  assert_int_equal(mp_pool_map(p, square, NULL, in, 100, sizeof *in, out, sizeof *out, 1), 0);
  assert_int_equal(out[99], 99 * 99);
  assert_int_equal(mp_pool_free(p), 0);
}

static atomic_int cancelled;
static int count_err(mp_async_result *r, int status, void *arg) {
  (void)arg;
  if (status == -ESHUTDOWN)
    atomic_fetch_add(&cancelled, 1);
  mp_async_result_free(r);
  return 0;
}

static void test_pool_terminate_with_10000_queued(void **state) {
  (void)state;
  mp_pool *p = new_pool(2, NULL);
  enum { N = 10000 };
  mp_async_result **r = malloc(N * sizeof *r);
  mp_pool_callbacks cb = {NULL, count_err, NULL};
  int ms = 50;
  atomic_store(&cancelled, 0);
  for (int i = 0; i < N; i++)
    assert_int_equal(
        mp_pool_apply_async(p, sleep_ms, &ms, sizeof ms, NULL, i < 10 ? NULL : &cb, &r[i]), 0);
  tu_sleep(0.1);
  double t0 = tu_now();
  assert_int_equal(mp_pool_terminate(p), 0);
  assert_true(tu_now() - t0 < 2.0);
  /* the first ones may have completed; every other reports -ESHUTDOWN */
  for (int i = 0; i < 10; i++) {
    int st = mp_async_result_get(r[i], 0);
    assert_true(st == 0 || st == -ESHUTDOWN);
    mp_async_result_free(r[i]);
  }
  assert_int_equal(atomic_load(&cancelled), N - 10);
  assert_int_equal(mp_pool_terminate(p), 0);
  assert_int_equal(mp_pool_join(p, 0), 0);
  assert_int_equal(mp_pool_apply_async(p, sleep_ms, &ms, sizeof ms, NULL, NULL, &r[0]), -EPIPE);
  assert_int_equal(mp_pool_worker_pids(p, NULL, 0), 0);
  assert_int_equal(mp_pool_free(p), 0);
  free(r);
}

static atomic_int shut_down;
static int count_shutdown(mp_async_result *r, int status, void *arg) {
  (void)r;
  (void)arg;
  if (status == -ESHUTDOWN)
    atomic_fetch_add(&shut_down, 1);
  return 0;
}

/* Sleeps 2 ms per item. */
static int slow_item(const void *item, void *result, void *ctx) {
  (void)ctx;
  tu_sleep(0.002);
  *(int *)result = *(const int *)item;
  return 0;
}

/* terminate while a map of 100,000 one-item chunks is mostly unpublished:
 * prompt, the map reports -ESHUTDOWN once (its error callback once), and a
 * second map waiting behind it too. */
static void test_pool_terminate_during_map(void **state) {
  (void)state;
  mp_pool *p = new_pool(2, NULL);
  enum { N = 100000 };
  int *in = malloc(N * sizeof *in), *out = malloc(N * sizeof *out);
  for (int i = 0; i < N; i++)
    in[i] = i;
  mp_pool_callbacks cb = {NULL, count_shutdown, NULL};
  atomic_store(&shut_down, 0);
  mp_async_result *r[2];
  for (int k = 0; k < 2; k++)
    assert_int_equal(
        mp_pool_map_async(p, slow_item, NULL, in, N, sizeof *in, out, sizeof *out, 1, &cb, &r[k]),
        0);
  tu_sleep(0.05);
  double t0 = tu_now();
  assert_int_equal(mp_pool_terminate(p), 0);
  assert_true(tu_now() - t0 < 2.0);
  for (int k = 0; k < 2; k++) {
    assert_int_equal(mp_async_result_get(r[k], 0), -ESHUTDOWN);
    assert_int_equal(mp_async_result_free(r[k]), 0);
  }
  assert_int_equal(atomic_load(&shut_down), 2);
  assert_int_equal(mp_pool_free(p), 0);
  free(in);
  free(out);
}

/* Workers start on CPUs of their own but stay free to run on every CPU the
 * parent may use: their affinity ends equal to the parent's. */
static void test_pool_workers_keep_parent_affinity(void **state) {
  (void)state;
  cpu_set_t mine;
  assert_int_equal(sched_getaffinity(0, sizeof mine, &mine), 0);
  mp_pool *p = new_pool(CPU_COUNT(&mine) > 1 ? CPU_COUNT(&mine) : 2, NULL);
  int pids[64];
  int n = mp_pool_worker_pids(p, pids, 64);
  assert_true(n >= 2 && n <= 64);
  for (int i = 0; i < n; i++) {
    cpu_set_t theirs;
    double t0 = tu_now();
    for (;;) {
      assert_int_equal(sched_getaffinity(pids[i], sizeof theirs, &theirs), 0);
      if (CPU_EQUAL(&theirs, &mine) || tu_now() - t0 > 5)
        break;
      tu_sleep(0.01); /* a worker moves to its CPU, then lets go */
    }
    assert_true(CPU_EQUAL(&theirs, &mine));
  }
  assert_int_equal(mp_pool_free(p), 0);
}

static void test_pool_close_join(void **state) {
  (void)state;
  mp_pool *p = new_pool(2, NULL);
  int pids[2];
  assert_int_equal(mp_pool_worker_pids(p, pids, 2), 2);
  int ms = 100;
  mp_async_result *r;
  assert_int_equal(mp_pool_apply_async(p, sleep_ms, &ms, sizeof ms, NULL, NULL, &r), 0);
  assert_int_equal(mp_pool_close(p), 0);
  assert_int_equal(mp_pool_close(p), 0);
  int v = 1, out;
  assert_int_equal(mp_pool_map(p, square, NULL, &v, 1, sizeof v, &out, sizeof out, 0), -EPIPE);
  assert_int_equal(mp_pool_apply(p, sleep_ms, &ms, sizeof ms, NULL, NULL, NULL), -EPIPE);
  assert_int_equal(mp_pool_join(p, 10), 0);
  assert_int_equal(mp_async_result_get(r, 0), 0); /* the task queued before close ran */
  for (int i = 0; i < 2; i++)
    assert_true(kill(pids[i], 0) < 0); /* reaped: gone */
  mp_async_result_free(r);
  assert_int_equal(mp_pool_free(p), 0);
}

/* ------------------------------------------------------------ process rules */

static mp_pool *shared_pool;

static int use_pool_from_worker(const void *arg, size_t len, mp_pool_out *out, void *ctx) {
  (void)arg;
  (void)len;
  (void)out;
  (void)ctx;
  int v = 2, res;
  return mp_pool_map(shared_pool, square, NULL, &v, 1, sizeof v, &res, sizeof res, 0);
}

static int use_pool_from_child(void *arg) {
  (void)arg;
  CHILD_CHECK(mp_pool_apply(shared_pool, sleep_ms, "", 0, NULL, NULL, NULL) == -ECHILD);
  CHILD_CHECK(mp_pool_close(shared_pool) == -ECHILD);
  CHILD_CHECK(mp_pool_free(shared_pool) == -ECHILD);
  return 0;
}

static void test_pool_used_from_other_process_is_echild(void **state) {
  (void)state;
  shared_pool = new_pool(1, NULL);
  /* workers forked after shared_pool was set see it; they may not use it */
  mp_pool *p2 = new_pool(1, NULL);
  assert_int_equal(mp_pool_apply(p2, use_pool_from_worker, NULL, 0, NULL, NULL, NULL), -ECHILD);
  assert_int_equal(mp_pool_free(p2), 0);
  pid_t pid = tu_fork(use_pool_from_child, NULL, 20);
  assert_true(pid > 0);
  assert_child_ok(pid);
  assert_int_equal(mp_pool_free(shared_pool), 0);
}

/* ------------------------------------------------------------ initializer, fds */

static int init_value;
static void initializer(void *arg) { init_value = *(int *)arg; }
static int read_init(const void *arg, size_t len, mp_pool_out *out, void *ctx) {
  (void)arg;
  (void)len;
  (void)out;
  (void)ctx;
  return init_value;
}

static void test_pool_initializer_runs_in_each_worker(void **state) {
  (void)state;
  static int v = 77;
  mp_pool_options o = {.initializer = initializer, .initargs = &v, .maxtasksperchild = 1};
  mp_pool *p = new_pool(2, &o);
  for (int i = 0; i < 5; i++)
    assert_int_equal(mp_pool_apply(p, read_init, NULL, 0, NULL, NULL, NULL), 77);
  assert_int_equal(init_value, 0); /* not in the parent */
  assert_int_equal(mp_pool_free(p), 0);
}

static int write_to_fd(int fd, const void *arg, size_t len, mp_pool_out *out, void *ctx) {
  (void)out;
  (void)ctx;
  return write(fd, arg, len) == (ssize_t)len ? 0 : -errno;
}

static void test_pool_task_carries_fd(void **state) {
  (void)state;
  mp_pool *p = new_pool(2, NULL);
  for (int round = 0; round < 5; round++) {
    int fds[2];
    assert_int_equal(pipe2(fds, O_CLOEXEC), 0);
    mp_async_result *r;
    assert_int_equal(mp_pool_apply_async_fd(p, write_to_fd, fds[1], "hello", 5, NULL, NULL, &r), 0);
    close(fds[1]); /* the pool keeps its own copy until the worker has it */
    assert_int_equal(mp_async_result_get(r, 10), 0);
    char buf[16] = {0};
    assert_int_equal(read(fds[0], buf, sizeof buf), 5); /* then EOF: all copies closed */
    assert_string_equal(buf, "hello");
    assert_int_equal(read(fds[0], buf, sizeof buf), 0);
    close(fds[0]);
    mp_async_result_free(r);
  }
  assert_int_equal(
      mp_pool_apply_async_fd(p, write_to_fd, 999, "x", 1, NULL, NULL, &(mp_async_result *){0}),
      -EBADF);
  assert_int_equal(mp_pool_free(p), 0);
}

/* ------------------------------------------------------------ copies, descriptors */

/* Apply: waits (up to 10 s) until the heap flag ctx is set, then counts the
 * argument's bytes that are 'a'. */
static int count_a_after_go(const void *arg, size_t len, mp_pool_out *out, void *ctx) {
  (void)out;
  double until = tu_now() + 10;
  while (!atomic_load((atomic_int *)ctx) && tu_now() < until)
    tu_sleep(0.001);
  int n = 0;
  for (size_t i = 0; i < len; i++)
    n += ((const char *)arg)[i] == 'a';
  return n;
}

/* The header promises a copy of the argument: a buffer in the family heap,
 * overwritten right after submitting, must not change what the task reads. */
static void test_pool_apply_async_copies_heap_argument(void **state) {
  (void)state;
  enum { LEN = 4096 };
  atomic_int *go = mp_heap_calloc(1, sizeof *go);
  char *buf = mp_heap_alloc(LEN);
  assert_non_null(go);
  assert_non_null(buf);
  mp_pool *p = new_pool(2, NULL);
  memset(buf, 'a', LEN);
  mp_async_result *r;
  assert_int_equal(mp_pool_apply_async(p, count_a_after_go, buf, LEN, go, NULL, &r), 0);
  memset(buf, 'b', LEN); /* the caller reuses its buffer at once */
  atomic_store(go, 1);
  assert_int_equal(mp_async_result_get(r, 20), LEN);
  mp_async_result_free(r);
  /* the same through mp_pool_apply() (the task never waits here) */
  memset(buf, 'a', LEN);
  assert_int_equal(mp_pool_apply(p, count_a_after_go, buf, LEN, go, NULL, NULL), LEN);
  assert_int_equal(mp_pool_free(p), 0);
  mp_heap_free(buf);
  mp_heap_free(go);
}

/* A Pipe created before the pool: once the parent closes its write end, the
 * reader sees end of file although the workers were forked while it was
 * open. */
static void test_pool_pipe_eof_while_pool_lives(void **state) {
  (void)state;
  mp_connection *rd, *wr;
  assert_int_equal(mp_pipe_new(0, &rd, &wr), 0);
  mp_pool *p = new_pool(2, NULL);
  assert_int_equal(mp_pool_apply(p, status_of, (int[]){0}, sizeof(int), NULL, NULL, NULL), 0);
  assert_int_equal(mp_connection_close(wr), 0);
  char buf[8];
  double t0 = tu_now();
  assert_int_equal(mp_connection_recv(rd, buf, sizeof buf, 5), -EPIPE);
  assert_true(tu_now() - t0 < 2.5);
  /* replacement workers too: kill one, then another pipe */
  int pids[2];
  assert_int_equal(mp_pool_worker_pids(p, pids, 2), 2);
  assert_int_equal(mp_connection_close(rd), 0);
  assert_int_equal(mp_pipe_new(0, &rd, &wr), 0);
  assert_int_equal(kill(pids[0], SIGKILL), 0);
  double until = tu_now() + 10;
  int now[2] = {0, 0};
  while (tu_now() < until &&
         (mp_pool_worker_pids(p, now, 2) != 2 || now[0] == pids[0] || now[1] == pids[0]))
    tu_sleep(0.01);
  assert_true(now[0] != pids[0] && now[1] != pids[0]);
  assert_int_equal(mp_connection_close(wr), 0);
  assert_int_equal(mp_connection_recv(rd, buf, sizeof buf, 5), -EPIPE);
  assert_int_equal(mp_connection_close(rd), 0);
  assert_int_equal(mp_pool_free(p), 0);
}

/* Apply: reports whether descriptor *arg is open in the worker, and the
 * worker's count of open descriptors as the result. */
static int fd_is_open(const void *arg, size_t len, mp_pool_out *out, void *ctx) {
  (void)len;
  (void)ctx;
  int n = tu_fd_count();
  mp_pool_out_set(out, &n, sizeof n);
  return fcntl(*(const int *)arg, F_GETFD) >= 0 ? 1 : 0;
}

/* Apply: counts itself in at the heap counter ctx, waits (up to 10 s) for
 * a second task to do the same, then reports as fd_is_open() (2: no partner
 * came). */
static int meet_then_check(const void *arg, size_t len, mp_pool_out *out, void *ctx) {
  atomic_fetch_add((atomic_int *)ctx, 1);
  double until = tu_now() + 10;
  while (atomic_load((atomic_int *)ctx) < 2) {
    if (tu_now() > until)
      return 2;
    tu_sleep(0.0005);
  }
  return fd_is_open(arg, len, out, ctx);
}

/* An unrelated descriptor opened before mp_pool_new() is not open in the
 * workers, neither in /proc/<worker>/fd nor to a task. */
static void test_pool_workers_close_inherited_fds(void **state) {
  (void)state;
  int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  assert_true(fd >= 0);
  int sv[2];
  assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  mp_pool *p = new_pool(2, NULL);
  for (int i = 0; i < 4; i++) {
    assert_int_equal(mp_pool_apply(p, fd_is_open, &fd, sizeof fd, NULL, NULL, NULL), 0);
    assert_int_equal(mp_pool_apply(p, fd_is_open, &sv[0], sizeof(int), NULL, NULL, NULL), 0);
    void *res = NULL;
    size_t rlen = 0;
    assert_int_equal(mp_pool_apply(p, fd_is_open, &sv[1], sizeof(int), NULL, &res, &rlen), 0);
    assert_int_equal(rlen, sizeof(int));
    /* 0-2, its channel to the pool and the eventfd */
    assert_true(*(int *)res <= 5);
    free(res);
  }
  /* Both workers inside a task at once (so both are past their start-up,
   * which a worker that ran no task yet may not be): neither has fd. */
  atomic_int *met = mp_heap_calloc(1, sizeof *met);
  assert_non_null(met);
  mp_async_result *r[2];
  for (int w = 0; w < 2; w++)
    assert_int_equal(mp_pool_apply_async(p, meet_then_check, &fd, sizeof fd, met, NULL, &r[w]), 0);
  for (int w = 0; w < 2; w++) {
    assert_int_equal(mp_async_result_get(r[w], 20), 0);
    mp_async_result_free(r[w]);
  }
  mp_heap_free(met);
  int pids[2];
  assert_int_equal(mp_pool_worker_pids(p, pids, 2), 2);
  for (int w = 0; w < 2; w++) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd/%d", pids[w], fd);
    assert_int_equal(access(path, F_OK), -1);
    snprintf(path, sizeof path, "/proc/%d/fd/%d", pids[w], sv[1]);
    assert_int_equal(access(path, F_OK), -1);
  }
  assert_int_equal(mp_pool_free(p), 0);
  close(fd);
  close(sv[0]);
  close(sv[1]);
}

/* ------------------------------------------------------------ imap */

static atomic_int *started_count;
static int counting_square(const void *item, void *result, void *ctx) {
  (void)ctx;
  atomic_fetch_add(started_count, 1);
  int v = *(const int *)item;
  *(int *)result = v * v;
  return 0;
}

static void test_pool_imap_ordered_and_unordered(void **state) {
  (void)state;
  mp_pool *p = new_pool(2, NULL);
  enum { N = 500 };
  int in[N];
  for (int i = 0; i < N; i++)
    in[i] = i;
  for (int ordered = 0; ordered < 2; ordered++) {
    mp_pool_iter *it;
    assert_int_equal(
        ordered ? mp_pool_imap(p, square, NULL, in, N, sizeof *in, sizeof(int), 3, &it)
                : mp_pool_imap_unordered(p, square, NULL, in, N, sizeof *in, sizeof(int), 3, &it),
        0);
    char seen[N] = {0};
    for (int k = 0; k < N; k++) {
      int v = -1;
      size_t idx = 9999;
      assert_int_equal(mp_pool_iter_next(it, &v, &idx, 10), 0);
      assert_true(idx < N);
      if (ordered)
        assert_int_equal(idx, (size_t)k);
      assert_int_equal(v, (int)(idx * idx));
      assert_int_equal(seen[idx], 0);
      seen[idx] = 1;
    }
    int v;
    assert_int_equal(mp_pool_iter_next(it, &v, NULL, 0), -EPIPE);
    assert_int_equal(mp_pool_iter_free(it), 0);
  }
  /* a failing item: its status, then -ECANCELED for the rest of its chunk */
  int *threshold = mp_heap_alloc(sizeof *threshold);
  *threshold = 10;
  mp_pool_iter *it;
  assert_int_equal(mp_pool_imap(p, fail_from, threshold, in, 20, sizeof *in, sizeof(int), 4, &it),
                   0);
  for (int k = 0; k < 20; k++) {
    int v;
    int st = mp_pool_iter_next(it, &v, NULL, 10);
    if (k < 10)
      assert_int_equal(st, 0);
    else if (k == 10 || k == 12 || k == 16)
      assert_int_equal(st, -1000 - k); /* first of its chunk (8-11, 12-15, 16-19) to fail */
    else if (k == 11 || (k > 12 && k < 16) || k > 16)
      assert_int_equal(st, -ECANCELED);
  }
  assert_int_equal(mp_pool_iter_free(it), 0);
  mp_heap_free(threshold);
  /* empty */
  assert_int_equal(mp_pool_imap(p, square, NULL, NULL, 0, 4, 4, 0, &it), 0);
  int v;
  assert_int_equal(mp_pool_iter_next(it, &v, NULL, 0), -EPIPE);
  assert_int_equal(mp_pool_iter_free(it), 0);
  assert_int_equal(mp_pool_free(p), 0);
}

static void test_pool_imap_bounded_and_timeouts(void **state) {
  (void)state;
  started_count = mp_heap_calloc(1, sizeof *started_count); /* before the fork */
  mp_pool *p = new_pool(2, NULL);
  enum { N = 2000 };
  int *in = malloc(N * sizeof *in);
  for (int i = 0; i < N; i++)
    in[i] = i;
  mp_pool_iter *it;
  assert_int_equal(mp_pool_imap(p, counting_square, NULL, in, N, sizeof *in, sizeof(int), 1, &it),
                   0);
  tu_sleep(0.3);
  /* nothing read yet: only the window (4 chunks per worker) went out */
  int started = atomic_load(started_count);
  assert_true(started > 0);
  assert_true(started <= 8);
  for (int k = 0; k < N; k++) {
    int v;
    assert_int_equal(mp_pool_iter_next(it, &v, NULL, 10), 0);
    assert_int_equal(v, k * k);
  }
  assert_int_equal(atomic_load(started_count), N);
  assert_int_equal(mp_pool_iter_free(it), 0);
  /* timeouts: a slow item */
  mp_async_result *blocker;
  int ms = 1500;
  for (int k = 0; k < 2; k++) { /* both workers busy */
    assert_int_equal(mp_pool_apply_async(p, sleep_ms, &ms, sizeof ms, NULL, NULL, &blocker), 0);
    assert_int_equal(mp_async_result_free(blocker), 0);
  }
  assert_int_equal(mp_pool_imap(p, square, NULL, in, 4, sizeof *in, sizeof(int), 1, &it), 0);
  int v;
  double t0 = tu_now();
  assert_int_equal(mp_pool_iter_next(it, &v, NULL, 0), -ETIMEDOUT);
  assert_int_equal(mp_pool_iter_next(it, &v, NULL, 0.2), -ETIMEDOUT);
  double el = tu_now() - t0;
  assert_true(el >= 0.19 && el < 2.0);
  assert_int_equal(mp_pool_iter_next(it, &v, NULL, 10), 0);
  /* a freed iterator with chunks in flight is cleaned up by the pool */
  assert_int_equal(mp_pool_iter_free(it), 0);
  free(in);
  mp_heap_free(started_count);
  assert_int_equal(mp_pool_free(p), 0);
}

/* ------------------------------------------------------------ threads */

static void *submitter(void *arg) {
  mp_pool *p = arg;
  for (int i = 0; i < 200; i++) {
    int st = i;
    mp_async_result *r;
    if (mp_pool_apply_async(p, status_of, &st, sizeof st, NULL, NULL, &r) < 0)
      return (void *)1;
    if (mp_async_result_get(r, 20) != i)
      return (void *)2;
    mp_async_result_free(r);
    int in[5] = {1, 2, 3, 4, i}, out[5];
    if (mp_pool_map(p, square, NULL, in, 5, sizeof *in, out, sizeof *out, 2) != 0 ||
        out[4] != i * i)
      return (void *)3;
  }
  return NULL;
}

static void test_pool_threads_submit_together(void **state) {
  (void)state;
  mp_pool *p = new_pool(2, NULL);
  pthread_t t[4];
  for (int i = 0; i < 4; i++)
    assert_int_equal(pthread_create(&t[i], NULL, submitter, p), 0);
  for (int i = 0; i < 4; i++) {
    void *r;
    pthread_join(t[i], &r);
    assert_null(r);
  }
  assert_int_equal(mp_pool_free(p), 0);
}

/* ------------------------------------------------------------ parent death */

/* Mode: start a pool, print the worker pids, then keep the workers busy. */
static int mode_busy_pool(void) {
  mp_pool *p;
  if (mp_pool_new(3, NULL, &p) < 0)
    return 2;
  int pids[3];
  if (mp_pool_worker_pids(p, pids, 3) != 3)
    return 3;
  printf("%d %d %d\n", pids[0], pids[1], pids[2]);
  fflush(stdout);
  int ms = 200;
  for (;;) {
    mp_async_result *r[6];
    for (int i = 0; i < 6; i++)
      mp_pool_apply_async(p, sleep_ms, &ms, sizeof ms, NULL, NULL, &r[i]);
    for (int i = 0; i < 6; i++) {
      mp_async_result_get(r[i], MP_FOREVER);
      mp_async_result_free(r[i]);
    }
  }
}

static int proc_alive(int pid) {
  char path[64], buf[512];
  snprintf(path, sizeof path, "/proc/%d/stat", pid);
  FILE *f = fopen(path, "r");
  if (!f)
    return 0;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  char *c = strrchr(buf, ')');
  return c && c[2] != 'Z' && c[2] != 'X';
}

static void parent_dies_leaves_no_worker(int sig) {
  int fds[2];
  assert_int_equal(pipe(fds), 0);
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) {
    dup2(fds[1], 1);
    close(fds[0]);
    close(fds[1]);
    execl(self_exe, self_exe, "--busy-pool", (char *)NULL);
    _exit(127);
  }
  close(fds[1]);
  char buf[128] = {0};
  size_t n = 0;
  double end = tu_now() + 20;
  while (!memchr(buf, '\n', n) && tu_now() < end) {
    ssize_t k = read(fds[0], buf + n, sizeof buf - 1 - n);
    if (k <= 0)
      break;
    n += (size_t)k;
  }
  close(fds[0]);
  int w[3];
  assert_int_equal(sscanf(buf, "%d %d %d", &w[0], &w[1], &w[2]), 3);
  tu_sleep(0.3); /* the pool is at work */
  double t0 = tu_now();
  assert_int_equal(kill(pid, sig), 0);
  int st = tu_wait(pid);
  assert_int_equal(st, 1000 + sig);
  assert_true(tu_now() - t0 < 3.0);
  for (int i = 0; i < 3; i++) {
    end = tu_now() + 3;
    while (proc_alive(w[i]) && tu_now() < end)
      tu_sleep(0.02);
    assert_false(proc_alive(w[i]));
  }
}

static void test_pool_sigint_in_parent_leaves_no_worker(void **state) {
  (void)state;
  parent_dies_leaves_no_worker(SIGINT);
}

static void test_pool_sigkill_of_parent_leaves_no_worker(void **state) {
  (void)state;
  parent_dies_leaves_no_worker(SIGKILL);
}

static int die_how_ok(const void *arg, size_t len, mp_pool_out *out, void *ctx) {
  (void)arg;
  (void)len;
  (void)out;
  (void)ctx;
  return 0;
}

/* A slow item: int in, long out (its square), after 1 ms. */
static int slow_square(const void *item, void *result, void *ctx) {
  (void)ctx;
  tu_sleep(0.001);
  long v = *(const int *)item;
  *(long *)result = v * v;
  return 0;
}

/* map_async reports its progress while it runs; MP_POOL_MAP takes both
 * element sizes from the arrays' types. */
static void test_pool_map_progress_and_typed_map(void **state) {
  (void)state;
  enum { N = 400 };
  mp_pool *p;
  assert_int_equal(mp_pool_new(2, NULL, &p), 0);
  int in[N];
  long out[N];
  for (int i = 0; i < N; i++)
    in[i] = i;
  mp_async_result *r;
  assert_int_equal(mp_pool_map_async(p, slow_square, NULL, in, N, sizeof in[0], out, sizeof out[0],
                                     10, NULL, &r),
                   0);
  size_t done = 0, total = 0, last = 0;
  int samples = 0;
  while (mp_async_result_ready(r) == 0) {
    assert_int_equal(mp_async_result_progress(r, &done, &total), 0);
    assert_int_equal(total, N);
    assert_true(done >= last && done <= N); /* never backwards */
    assert_int_equal(done % 10, 0);          /* whole chunks */
    last = done;
    samples++;
    tu_sleep(0.005);
  }
  assert_int_equal(mp_async_result_get(r, 30), 0);
  assert_int_equal(mp_async_result_progress(r, &done, &total), 0);
  assert_int_equal(done, N);
  assert_int_equal(mp_async_result_progress(r, NULL, &total), -EINVAL);
  assert_int_equal(mp_async_result_free(r), 0);
  assert_true(samples > 0);

  long typed[N];
  memset(typed, 0, sizeof typed);
  assert_int_equal(MP_POOL_MAP(p, slow_square, NULL, in, N, typed, 0), 0);
  for (int i = 0; i < N; i++)
    assert_int_equal(typed[i], (long)i * i);

  int one = 1;
  mp_async_result *a;
  assert_int_equal(mp_pool_apply_async(p, die_how_ok, &one, sizeof one, NULL, NULL, &a), 0);
  assert_int_equal(mp_async_result_get(a, 30), 0);
  assert_int_equal(mp_async_result_progress(a, &done, &total), 0);
  assert_int_equal(done, 1);
  assert_int_equal(total, 1);
  assert_int_equal(mp_async_result_free(a), 0);
  assert_int_equal(mp_pool_free(p), 0);
}

/* A failed task says how its worker died, and the logger names the cause. */
static int die_how(const void *arg, size_t len, mp_pool_out *out, void *ctx) {
  (void)len;
  (void)out;
  (void)ctx;
  int how = *(const int *)arg;
  if (how > 0)
    _exit(how); /* a task ending its worker with a code (_exit: no leak check under ASan) */
  if (how < 0) {
    signal(-how, SIG_DFL); /* the test runner's crash handler is inherited */
    raise(-how);
  }
  return 0;
}

struct log_seen {
  int warnings, infos;
  char last[600];
};

static void log_catch(int level, const char *message, void *arg) {
  struct log_seen *s = arg;
  if (level == MP_LOG_WARNING)
    s->warnings++;
  if (level == MP_LOG_INFO)
    s->infos++;
  snprintf(s->last, sizeof s->last, "%s", message);
}

static void test_pool_failed_task_reports_worker_death(void **state) {
  (void)state;
  struct log_seen seen = {0};
  assert_int_equal(mp_log_set_handler(MP_LOG_INFO, log_catch, &seen), 0);
  mp_pool *p;
  assert_int_equal(mp_pool_new(2, NULL, &p), 0);
  static const int hows[] = {-SIGSEGV, 3, -SIGKILL, 0};
  for (size_t k = 0; k < 4; k++) {
    mp_async_result *r;
    assert_int_equal(mp_pool_apply_async(p, die_how, &hows[k], sizeof hows[k], NULL, NULL, &r), 0);
    int st = mp_async_result_get(r, 20);
    int code = 12345;
    if (hows[k] == 0) {
      assert_int_equal(st, 0);
      assert_int_equal(mp_async_result_death(r, &code), 0);
      assert_int_equal(code, 12345); /* not written */
    } else {
      assert_int_equal(st, -ECONNABORTED);
      assert_int_equal(mp_async_result_death(r, &code), 1);
      assert_int_equal(code, hows[k]);
    }
    assert_int_equal(mp_async_result_death(r, NULL), -EINVAL);
    assert_int_equal(mp_async_result_free(r), 0);
    if (hows[k] == -SIGSEGV) { /* the newcomer's mistake, named */
      assert_int_equal(seen.warnings, 1);
      assert_non_null(strstr(seen.last, "only the memory that existed when it was forked"));
    }
  }
  assert_int_equal(seen.warnings, 1);
  assert_int_equal(seen.infos, 2); /* exit(3) and SIGKILL: replaced, said at info */
  assert_int_equal(mp_pool_free(p), 0);
  assert_int_equal(mp_log_to_stderr(MP_LOG_OFF), 0);
}

/* A task in a worker logs (here: a lock taken over from a dead holder) to the
 * worker's standard error: the handler set in the parent wrote to
 * descriptors the worker closed. */
static void log_to_closed(int level, const char *message, void *arg) {
  (void)level;
  char line[400];
  int n = snprintf(line, sizeof line, "handler: %s\n", message);
  if (n > 0 && write(*(int *)arg, line, (size_t)n) < 0) {
    /* a closed descriptor in the worker: nothing arrives, as it should */
  }
}

static int take_lock(const void *arg, size_t len, mp_pool_out *out, void *ctx) {
  (void)len;
  (void)out;
  (void)ctx;
  mp_lock *l = *(mp_lock *const *)arg;
  int r = mp_lock_acquire(l, 10);
  if (r == 0 || r == -EOWNERDEAD)
    mp_lock_release(l);
  return r == -EOWNERDEAD ? 0 : 1;
}

static int hold_and_die(void *arg) {
  if (mp_lock_acquire((mp_lock *)arg, MP_FOREVER) != 0)
    return 1;
  raise(SIGKILL);
  return 2;
}

static void test_pool_worker_logs_to_stderr(void **state) {
  (void)state;
  int errp[2], hp[2];
  assert_int_equal(pipe2(errp, O_CLOEXEC | O_NONBLOCK), 0);
  assert_int_equal(pipe2(hp, O_CLOEXEC | O_NONBLOCK), 0);
  assert_int_equal(mp_log_set_handler(MP_LOG_INFO, log_to_closed, &hp[1]), 0);
  fflush(stderr);
  int saved = dup(2);
  dup2(errp[1], 2); /* the workers' standard error */
  mp_pool *p = NULL;
  int made = mp_pool_new(1, NULL, &p);
  dup2(saved, 2);
  close(saved);
  assert_int_equal(made, 0);
  mp_lock *l;
  assert_int_equal(mp_lock_new(&l), 0);
  pid_t c = tu_fork(hold_and_die, l, 30);
  assert_int_equal(tu_wait(c), 1000 + SIGKILL);
  void *res = NULL;
  size_t len = 0;
  assert_int_equal(mp_pool_apply(p, take_lock, &l, sizeof l, NULL, &res, &len), 0);
  free(res);
  assert_int_equal(mp_pool_free(p), 0);
  assert_int_equal(mp_log_to_stderr(MP_LOG_OFF), 0);
  char buf[2048] = {0};
  ssize_t n = read(errp[0], buf, sizeof buf - 1);
  assert_true(n > 0);
  assert_non_null(strstr(buf, "] lock: its holder died holding it"));
  assert_true(read(hp[0], buf, sizeof buf) < 0); /* nothing through the parent's handler */
  assert_int_equal(mp_lock_free(l), 0);
  close(errp[0]);
  close(errp[1]);
  close(hp[0]);
  close(hp[1]);
}

int main(int argc, char **argv) {
  self_exe = argv[0];
  if (argc > 1 && !strcmp(argv[1], "--busy-pool"))
    return mode_busy_pool();
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_pool_new_and_bad_arguments),
      cmocka_unit_test(test_pool_failed_task_reports_worker_death),
      cmocka_unit_test(test_pool_map_progress_and_typed_map),
      cmocka_unit_test(test_pool_worker_logs_to_stderr),
      cmocka_unit_test(test_pool_map_results_in_order),
      cmocka_unit_test(test_pool_starmap_and_starmap_async),
      cmocka_unit_test(test_pool_map_in_heap_is_zero_copy),
      cmocka_unit_test(test_pool_map_huge_input),
      cmocka_unit_test(test_pool_map_failing_item),
      cmocka_unit_test(test_pool_apply_results_of_any_size),
      cmocka_unit_test(test_pool_apply_async_callbacks_in_parent),
      cmocka_unit_test(test_pool_get_timeouts_and_signals),
      cmocka_unit_test(test_pool_task_exit_or_segfault_fails_only_it),
      cmocka_unit_test(test_pool_maxtasksperchild),
      cmocka_unit_test(test_pool_terminate_with_10000_queued),
      cmocka_unit_test(test_pool_terminate_during_map),
      cmocka_unit_test(test_pool_workers_keep_parent_affinity),
      cmocka_unit_test(test_pool_close_join),
      cmocka_unit_test(test_pool_used_from_other_process_is_echild),
      cmocka_unit_test(test_pool_initializer_runs_in_each_worker),
      cmocka_unit_test(test_pool_task_carries_fd),
      cmocka_unit_test(test_pool_apply_async_copies_heap_argument),
      cmocka_unit_test(test_pool_pipe_eof_while_pool_lives),
      cmocka_unit_test(test_pool_workers_close_inherited_fds),
      cmocka_unit_test(test_pool_imap_ordered_and_unordered),
      cmocka_unit_test(test_pool_imap_bounded_and_timeouts),
      cmocka_unit_test(test_pool_threads_submit_together),
      cmocka_unit_test(test_pool_sigint_in_parent_leaves_no_worker),
      cmocka_unit_test(test_pool_sigkill_of_parent_leaves_no_worker),
  };
  return TU_RUN("pool", tests);
}
