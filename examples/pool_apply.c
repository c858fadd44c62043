/* SPDX-License-Identifier: MIT */
/*
 * Pool.apply: synchronous tasks, one after another.
 *
 * The Python original calls pool.apply(square, (i,)) in a loop and prints
 * each result: apply blocks until the worker has answered, so the results come
 * in order. The C twin: mp_pool_apply() with the number as the byte argument
 * and the square as the byte result, which the worker writes with
 * mp_pool_out_set().
 */
#include <mp.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define TRY(call)                                                                                  \
  do {                                                                                             \
    int r_ = (call);                                                                               \
    if (r_ < 0) {                                                                                  \
      fprintf(stderr, "%s failed: %s\n", #call, mp_strerror(r_));                                  \
      return 1;                                                                                    \
    }                                                                                              \
  } while (0)

/* Python: def square(x): return x * x */
static int square(const void *arg, size_t len, mp_pool_out *out, void *ctx) {
  (void)len;
  (void)ctx;
  int x = *(const int *)arg;
  int y = x * x;
  return mp_pool_out_set(out, &y, sizeof y);
}

int main(void) {
  mp_pool *p;
  TRY(mp_pool_new(4, NULL, &p));
  for (int i = 0; i < 10; i++) {
    void *res;
    size_t len;
    TRY(mp_pool_apply(p, square, &i, sizeof i, NULL, &res, &len));
    printf("square(%d) = %d\n", i, *(int *)res);
    free(res);
  }
  TRY(mp_pool_close(p));
  TRY(mp_pool_join(p, MP_FOREVER));
  TRY(mp_pool_free(p));
  return 0;
}
