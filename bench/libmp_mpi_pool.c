/* SPDX-License-Identifier: MIT */
/*
 * libmp-mpi's Pool rows, run under mpiexec -n 3 (rank 0 measures, ranks 1-2
 * are the workers; py_mpi_pool.py `run` starts it with this machine's MPI
 * options). The pool is made before the clock starts, as mpi4py's rows make
 * their executor.
 *
 *   libmp-mpi-pool map N [CHUNK]  items/s: mp_mpi_pool_map of x + 1 over N
 *                                 ints (malloc()ed arrays), default chunk
 *                                 size unless CHUNK; the second of two maps
 *   libmp-mpi-pool chunk1 N       items/s: the same with chunk size 1
 *   libmp-mpi-pool async N        tasks/s: N apply_async submitted together,
 *                                 then every result collected (after a
 *                                 warm-up round)
 * For docs/cluster.md's cost model (not rows of bench/run):
 *   libmp-mpi-pool roundtrip N    us: mean of N mp_mpi_pool_apply one after
 *                                 another (the latency of one task)
 *   libmp-mpi-pool bandwidth MB   MB/s: a map of identity over MB MiB of
 *                                 1 KiB items, in and out (bytes moved: 2 MB)
 */
#include <mp-mpi.h>
#include <mp.h>
#include <stdlib.h>

#include "bench.h"

static int add_one(const void *item, void *result, void *ctx) {
  (void)ctx;
  *(int *)result = *(const int *)item + 1;
  return 0;
}

static int apply_add(const void *arg, size_t len, mp_mpi_pool_out *out, void *ctx) {
  (void)len;
  (void)ctx;
  int v = *(const int *)arg + 1;
  return mp_mpi_pool_out_set(out, &v, sizeof v);
}

static double run_map(mp_mpi_pool *p, long n, size_t chunk) {
  int *in = malloc((size_t)n * sizeof *in), *out = malloc((size_t)n * sizeof *out);
  if (!in || !out)
    bench_die("out of memory");
  for (long i = 0; i < n; i++)
    in[i] = (int)i;
  BENCH_CHECK_MP(
      mp_mpi_pool_map(p, add_one, NULL, in, (size_t)n, sizeof *in, out, sizeof *out, chunk));
  memset(out, 0, (size_t)n * sizeof *out);
  int64_t t0 = bench_now_ns();
  BENCH_CHECK_MP(
      mp_mpi_pool_map(p, add_one, NULL, in, (size_t)n, sizeof *in, out, sizeof *out, chunk));
  double s = (double)(bench_now_ns() - t0) / 1e9;
  for (long i = 0; i < n; i++)
    if (out[i] != (int)i + 1)
      bench_die("wrong result at %ld", i);
  free(in);
  free(out);
  return (double)n / s;
}

static double run_async(mp_mpi_pool *p, long n) {
  mp_mpi_async_result **r = malloc((size_t)n * sizeof *r);
  if (!r)
    bench_die("out of memory");
  int64_t t0 = 0;
  for (int round = 0; round < 2; round++) { /* round 0 warms up */
    if (round == 1)
      t0 = bench_now_ns();
    for (long i = 0; i < n; i++) {
      int v = (int)i;
      BENCH_CHECK_MP(mp_mpi_pool_apply_async(p, apply_add, &v, sizeof v, NULL, NULL, &r[i]));
    }
    for (long i = 0; i < n; i++) {
      BENCH_CHECK_MP(mp_mpi_async_result_get(r[i], MP_FOREVER));
      const void *d;
      BENCH_CHECK_MP(mp_mpi_async_result_data(r[i], &d, NULL));
      if (*(const int *)d != (int)i + 1)
        bench_die("wrong result");
      mp_mpi_async_result_free(r[i]);
    }
  }
  double s = (double)(bench_now_ns() - t0) / 1e9;
  free(r);
  return (double)n / s;
}

static double run_roundtrip(mp_mpi_pool *p, long n) {
  int64_t t0 = 0;
  for (long i = -n / 10 - 1; i < n; i++) {
    if (i == 0)
      t0 = bench_now_ns();
    int v = (int)i, *res;
    size_t len;
    BENCH_CHECK_MP(mp_mpi_pool_apply(p, apply_add, &v, sizeof v, NULL, (void **)&res, &len));
    if (len != sizeof v || *res != v + 1)
      bench_die("wrong result");
    free(res);
  }
  return (double)(bench_now_ns() - t0) / 1e3 / (double)n;
}

static int copy_kib(const void *item, void *result, void *ctx) {
  (void)ctx;
  memcpy(result, item, 1024);
  return 0;
}

static double run_bandwidth(mp_mpi_pool *p, long mib) {
  size_t n = (size_t)mib * 1024;
  char *in = malloc(n * 1024), *out = malloc(n * 1024);
  if (!in || !out)
    bench_die("out of memory");
  for (size_t i = 0; i < n * 1024; i++)
    in[i] = (char)(i * 7);
  BENCH_CHECK_MP(mp_mpi_pool_map(p, copy_kib, NULL, in, n, 1024, out, 1024, 0));
  int64_t t0 = bench_now_ns();
  BENCH_CHECK_MP(mp_mpi_pool_map(p, copy_kib, NULL, in, n, 1024, out, 1024, 0));
  double s = (double)(bench_now_ns() - t0) / 1e9;
  if (memcmp(in, out, n * 1024))
    bench_die("wrong result");
  free(in);
  free(out);
  return 2.0 * (double)n * 1024 / 1e6 / s;
}

int main(int argc, char **argv) {
  BENCH_CHECK_MP(mp_mpi_pool_serve()); /* ranks 1.. serve here */
  if (argc < 2)
    bench_die("usage: libmp-mpi-pool map|chunk1|async|roundtrip|bandwidth N [CHUNK]");
  const char *mode = argv[1];
  long n = bench_count(argc, argv, 2, 100000);
  mp_mpi_pool *p;
  BENCH_CHECK_MP(mp_mpi_pool_new(0, NULL, &p));
  double fig;
  if (!strcmp(mode, "map"))
    fig = run_map(p, n, (size_t)bench_count(argc, argv, 3, 0));
  else if (!strcmp(mode, "chunk1"))
    fig = run_map(p, n, 1);
  else if (!strcmp(mode, "async"))
    fig = run_async(p, n);
  else if (!strcmp(mode, "roundtrip"))
    fig = run_roundtrip(p, n);
  else if (!strcmp(mode, "bandwidth"))
    fig = run_bandwidth(p, n);
  else
    bench_die("unknown mode %s", mode);
  BENCH_CHECK_MP(mp_mpi_pool_free(p));
  bench_result(fig);
  return 0;
}
