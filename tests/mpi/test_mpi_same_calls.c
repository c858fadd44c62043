/* SPDX-License-Identifier: MIT */
/*
 * MP_MPI_SAME_CALLS: fork-Pool code with mp_pool_* names runs on an MPI pool
 * and, in the same program, on a fork Pool. Run under mpiexec -n 3; prints
 * "same calls: ok" (checked by run_mpi.py) or what failed.
 */
#define MP_MPI_SAME_CALLS
#include <errno.h>
#include <mp-mpi.h>
#include <mp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(c)                                                                                   \
  do {                                                                                             \
    if (!(c)) {                                                                                    \
      printf("failed at line %d: %s\n", __LINE__, #c);                                             \
      return 1;                                                                                    \
    }                                                                                              \
  } while (0)

static int add_one(const void *item, void *result, void *ctx) {
  (void)ctx;
  *(int *)result = *(const int *)item + 1;
  return 0;
}

static int echo_mpi(const void *arg, size_t len, mp_mpi_pool_out *out, void *ctx) {
  (void)ctx;
  return mp_pool_out_set(out, arg, len);
}

static int echo_fork(const void *arg, size_t len, mp_pool_out *out, void *ctx) {
  (void)ctx;
  return mp_pool_out_set(out, arg, len);
}

static int callbacks;
static int on_done(mp_mpi_async_result *res, int status, void *arg) {
  (void)res;
  (void)arg;
  callbacks += status == 0;
  return 0;
}

int main(void) {
  CHECK(mp_mpi_pool_serve() == 0);
  mp_mpi_pool *p;
  CHECK(mp_mpi_pool_new(0, NULL, &p) == 0);
  int in[100], out[100];
  for (int i = 0; i < 100; i++)
    in[i] = i;
  CHECK(mp_pool_map(p, add_one, NULL, in, 100, sizeof(int), out, sizeof(int), 0) == 0);
  CHECK(out[99] == 100);
  mp_mpi_pool_callbacks cb = {on_done, NULL, NULL};
  mp_mpi_async_result *r;
  CHECK(mp_pool_apply_async(p, echo_mpi, "hello", 6, NULL, &cb, &r) == 0);
  CHECK(mp_async_result_get(r, 30) == 0);
  CHECK(mp_async_result_successful(r) == 1);
  const void *d;
  size_t len;
  CHECK(mp_async_result_data(r, &d, &len) == 0 && len == 6 && !strcmp(d, "hello"));
  CHECK(mp_async_result_free(r) == 0);
  mp_mpi_pool_iter *it;
  CHECK(mp_pool_imap(p, add_one, NULL, in, 100, sizeof(int), sizeof(int), 7, &it) == 0);
  for (int i = 0; i < 100; i++) {
    int v;
    size_t idx;
    CHECK(mp_pool_iter_next(it, &v, &idx, 30) == 0 && idx == (size_t)i && v == i + 1);
  }
  CHECK(mp_pool_iter_next(it, NULL, NULL, 0) == -EPIPE);
  CHECK(mp_pool_iter_free(it) == 0);
  CHECK(mp_pool_close(p) == 0);
  CHECK(mp_pool_join(p, 30) == 0);
  CHECK(callbacks == 1);
  CHECK(mp_pool_free(p) == 0);

  /* the fork Pool, same names, same program */
  mp_pool *q;
  CHECK(mp_pool_new(2, NULL, &q) == 0);
  CHECK(mp_pool_map(q, add_one, NULL, in, 100, sizeof(int), out, sizeof(int), 0) == 0);
  CHECK(out[0] == 1);
  void *res;
  CHECK(mp_pool_apply(q, echo_fork, "fork", 5, NULL, &res, &len) == 0 && len == 5);
  CHECK(!strcmp(res, "fork"));
  free(res);
  CHECK(mp_pool_free(q) == 0);
  printf("same calls: ok\n");
  return 0;
}
