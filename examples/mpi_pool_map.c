/* SPDX-License-Identifier: MIT */
/*
 * Pool.map on MPI: each number plus one, in order, computed on other ranks.
 *
 * The twin of pool_map.c with one change: the pool is an MPI pool (its type
 * and the call that creates it; with MP_MPI_SAME_CALLS the other calls keep
 * their mp_pool_* names). Run it with
 *     mpiexec -n 3 ./mpi_pool_map
 * (rank 0 runs main(); ranks 1 and 2 become the pool's workers inside
 * mp_mpi_pool_new() and never return from it), or alone, ./mpi_pool_map,
 * and the pool spawns its workers. The Python original, with mpi4py:
 * with mpi4py.util.pool.Pool() as p: print(p.map(func, range(10))).
 */
#define MP_MPI_SAME_CALLS
#include <mp-mpi.h>
#include <mp.h>
#include <stdio.h>

#define TRY(call)                                                                                  \
  do {                                                                                             \
    int r_ = (call);                                                                               \
    if (r_ < 0) {                                                                                  \
      fprintf(stderr, "%s failed: %s\n", #call, mp_strerror(r_));                                  \
      return 1;                                                                                    \
    }                                                                                              \
  } while (0)

/* Python: def func(x): return x + 1. Every rank runs this executable, so the
 * pool can name the function on the workers. */
static int func(const void *item, void *result, void *ctx) {
  (void)ctx;
  *(int *)result = *(const int *)item + 1;
  return 0;
}

int main(void) {
  int numbers[10], results[10];
  for (int i = 0; i < 10; i++)
    numbers[i] = i;
  mp_mpi_pool *p;
  TRY(mp_mpi_pool_new(0, NULL, &p)); /* 0: every other rank is a worker */
  TRY(mp_pool_map(p, func, NULL, numbers, 10, sizeof(int), results, sizeof(int), 0));
  TRY(mp_pool_free(p));
  printf("[");
  for (int i = 0; i < 10; i++)
    printf(i ? ", %d" : "%d", results[i]);
  printf("]\n");
  return 0;
}
