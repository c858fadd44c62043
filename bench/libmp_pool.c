/* SPDX-License-Identifier: MIT */
/*
 * libmp's Pool rows (a pool of one worker per CPU, made before the clock
 * starts, as Python's rows make theirs):
 *
 *   libmp-pool map N          items/s: mp_pool_map of a trivial function over N
 *                             ints (malloc()ed arrays), default chunk size; the
 *                             second of two maps of the same size is timed
 *   libmp-pool chunk1 N       items/s: the same with chunk size 1
 *   libmp-pool async N        tasks/s: N apply_async submitted together, then
 *                             every result collected
 *   libmp-pool roundtrip N    round trips/s: N mp_pool_apply one after another
 *   libmp-pool cpu N ITERS    speed-up (x): N CPU-bound tasks of ITERS steps,
 *                             serial time in this process / time on the pool
 *   libmp-pool heapmap N      items/s: a map over N doubles that live in the
 *                             family heap (read and written in place)
 */
#include <mp.h>
#include <stdlib.h>

#include "bench.h"
#include "pool_work.h"

static int add_one(const void *item, void *result, void *ctx) {
  (void)ctx;
  *(int *)result = *(const int *)item + 1;
  return 0;
}

static int apply_add(const void *arg, size_t len, mp_pool_out *out, void *ctx) {
  (void)len;
  (void)ctx;
  int v = *(const int *)arg + 1;
  return mp_pool_out_set(out, &v, sizeof v);
}

static long cpu_iters;
static int cpu_task(const void *item, void *result, void *ctx) {
  (void)ctx;
  *(double *)result = pool_work_cpu(cpu_iters, *(const long *)item);
  return 0;
}

static int heap_item(const void *item, void *result, void *ctx) {
  (void)ctx;
  *(double *)result = pool_work_item(*(const double *)item);
  return 0;
}

static double run_map(mp_pool *p, long n, size_t chunk) {
  int *in = malloc((size_t)n * sizeof *in), *out = malloc((size_t)n * sizeof *out);
  if (!in || !out)
    bench_die("out of memory");
  for (long i = 0; i < n; i++)
    in[i] = (int)i;
  /* warm-up: the same map once, so that the timed one finds the arrays' pages
   * present, as every map after a program's first does (py_pool.py does the
   * same) */
  BENCH_CHECK_MP(mp_pool_map(p, add_one, NULL, in, (size_t)n, sizeof *in, out, sizeof *out, chunk));
  int64_t t0 = bench_now_ns();
  BENCH_CHECK_MP(mp_pool_map(p, add_one, NULL, in, (size_t)n, sizeof *in, out, sizeof *out, chunk));
  double s = (double)(bench_now_ns() - t0) / 1e9;
  for (long i = 0; i < n; i++)
    if (out[i] != (int)i + 1)
      bench_die("wrong result at %ld", i);
  free(in);
  free(out);
  return (double)n / s;
}

static double run_async(mp_pool *p, long n) {
  mp_async_result **r = malloc((size_t)n * sizeof *r);
  if (!r)
    bench_die("out of memory");
  int64_t t0 = 0;
  for (int round = 0; round < 2; round++) { /* round 0 warms up */
    if (round == 1)
      t0 = bench_now_ns();
    for (long i = 0; i < n; i++) {
      int v = (int)i;
      BENCH_CHECK_MP(mp_pool_apply_async(p, apply_add, &v, sizeof v, NULL, NULL, &r[i]));
    }
    for (long i = 0; i < n; i++) {
      BENCH_CHECK_MP(mp_async_result_get(r[i], MP_FOREVER));
      const void *d;
      BENCH_CHECK_MP(mp_async_result_data(r[i], &d, NULL));
      if (*(const int *)d != (int)i + 1)
        bench_die("wrong result");
      mp_async_result_free(r[i]);
    }
  }
  double s = (double)(bench_now_ns() - t0) / 1e9;
  free(r);
  return (double)n / s;
}

static double run_roundtrip(mp_pool *p, long n) {
  int64_t t0 = 0;
  for (long i = -n / 10 - 1; i < n; i++) {
    if (i == 0)
      t0 = bench_now_ns();
    int v = (int)i, *res;
    size_t len;
    BENCH_CHECK_MP(mp_pool_apply(p, apply_add, &v, sizeof v, NULL, (void **)&res, &len));
    if (len != sizeof v || *res != v + 1)
      bench_die("wrong result");
    free(res);
  }
  return (double)n / ((double)(bench_now_ns() - t0) / 1e9);
}

static double run_cpu(mp_pool *p, long n) {
  long *seeds = malloc((size_t)n * sizeof *seeds);
  double *a = malloc((size_t)n * sizeof *a), *b = malloc((size_t)n * sizeof *b);
  for (long i = 0; i < n; i++)
    seeds[i] = i;
  int64_t t0 = bench_now_ns();
  for (long i = 0; i < n; i++)
    a[i] = pool_work_cpu(cpu_iters, seeds[i]);
  double serial = (double)(bench_now_ns() - t0);
  t0 = bench_now_ns();
  BENCH_CHECK_MP(mp_pool_map(p, cpu_task, NULL, seeds, (size_t)n, sizeof *seeds, b, sizeof *b, 1));
  double pooled = (double)(bench_now_ns() - t0);
  for (long i = 0; i < n; i++)
    if (a[i] != b[i])
      bench_die("wrong result");
  free(seeds);
  free(a);
  free(b);
  return serial / pooled;
}

static double run_heapmap(mp_pool *p, long n) {
  double *v = mp_heap_alloc((size_t)n * sizeof *v);
  if (!v)
    bench_die("heap exhausted");
  for (long i = 0; i < n; i++)
    v[i] = (double)i;
  BENCH_CHECK_MP(mp_pool_map(p, heap_item, NULL, v, (size_t)n / 10, sizeof *v, v, sizeof *v, 0));
  for (long i = 0; i < n; i++)
    v[i] = (double)i;
  int64_t t0 = bench_now_ns();
  BENCH_CHECK_MP(mp_pool_map(p, heap_item, NULL, v, (size_t)n, sizeof *v, v, sizeof *v, 0));
  double s = (double)(bench_now_ns() - t0) / 1e9;
  for (long i = 0; i < n; i += 9973)
    if (v[i] != pool_work_item((double)i))
      bench_die("wrong result at %ld", i);
  mp_heap_free(v);
  return (double)n / s;
}

int main(int argc, char **argv) {
  if (argc < 2)
    bench_die("usage: libmp-pool map|chunk1|async|roundtrip|cpu|heapmap N [ITERS]");
  const char *mode = argv[1];
  long n = bench_count(argc, argv, 2, 100000);
  cpu_iters = bench_count(argc, argv, 3, 3000000);
  if (!strcmp(mode, "heapmap")) {
    mp_heap_options o = {.size = (size_t)n * sizeof(double) + (256u << 20)};
    mp_heap_init(&o);
  }
  mp_pool *p;
  BENCH_CHECK_MP(mp_pool_new(0, NULL, &p));
  double fig;
  if (!strcmp(mode, "map"))
    fig = run_map(p, n, 0);
  else if (!strcmp(mode, "chunk1"))
    fig = run_map(p, n, 1);
  else if (!strcmp(mode, "async"))
    fig = run_async(p, n);
  else if (!strcmp(mode, "roundtrip"))
    fig = run_roundtrip(p, n);
  else if (!strcmp(mode, "cpu"))
    fig = run_cpu(p, n);
  else if (!strcmp(mode, "heapmap"))
    fig = run_heapmap(p, n);
  else
    bench_die("unknown mode %s", mode);
  BENCH_CHECK_MP(mp_pool_free(p));
  bench_result(fig);
  return 0;
}
