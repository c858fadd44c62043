/* SPDX-License-Identifier: MIT */
/*
 * Pool.apply_async: 100 tasks submitted at once, then close, join, get.
 *
 * The Python original submits apply_async(square, (i,)) for i in range(100),
 * keeps the AsyncResult objects, closes and joins the pool, then prints every
 * r.get(). The C twin keeps the mp_async_result handles; after the join every
 * result is ready, so mp_async_result_get() returns at once.
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

enum { N = 100 };

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
  mp_async_result *results[N];
  for (int i = 0; i < N; i++)
    TRY(mp_pool_apply_async(p, square, &i, sizeof i, NULL, NULL, &results[i]));
  TRY(mp_pool_close(p));
  TRY(mp_pool_join(p, MP_FOREVER));
  long sum = 0;
  for (int i = 0; i < N; i++) {
    TRY(mp_async_result_get(results[i], MP_NOWAIT)); /* ready after the join */
    const void *data;
    TRY(mp_async_result_data(results[i], &data, NULL));
    printf("%d%s", *(const int *)data, i + 1 < N ? " " : "\n");
    sum += *(const int *)data;
    TRY(mp_async_result_free(results[i]));
  }
  printf("sum %ld\n", sum);
  TRY(mp_pool_free(p));
  return 0;
}
