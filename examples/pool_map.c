/* SPDX-License-Identifier: MIT */
/*
 * Pool.map: each number plus one, in order.
 *
 * The Python original: with Pool() as p: print(p.map(func, range(10))) where
 * func(x) returns x + 1. The C twin: mp_pool_map() over an int array into an
 * int array; the results come back in the order of the inputs.
 */
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

/* Python: def func(x): return x + 1 */
static int func(const void *item, void *result, void *ctx) {
  (void)ctx;
  *(int *)result = *(const int *)item + 1;
  return 0;
}

int main(void) {
  int numbers[10], results[10];
  for (int i = 0; i < 10; i++)
    numbers[i] = i;
  mp_pool *p;
  TRY(mp_pool_new(0, NULL, &p)); /* 0: one worker per CPU, as Pool() */
  TRY(mp_pool_map(p, func, NULL, numbers, 10, sizeof(int), results, sizeof(int), 0));
  TRY(mp_pool_free(p));
  printf("[");
  for (int i = 0; i < 10; i++)
    printf(i ? ", %d" : "%d", results[i]);
  printf("]\n");
  return 0;
}
