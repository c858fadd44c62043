/* SPDX-License-Identifier: MIT */
/*
 * apply_async with a callback: the callback runs in the parent.
 *
 * The Python original: pool.apply_async(add, (2, 3), callback=show), where
 * show prints the result and os.getpid(); the pid is the parent's, since
 * Python runs callbacks in the parent's result-handler thread. libmp does the
 * same: the callback runs in the creating process, on the pool's handler
 * thread.
 */
#include <mp.h>
#include <stdio.h>
#include <unistd.h>

#define TRY(call)                                                                                  \
  do {                                                                                             \
    int r_ = (call);                                                                               \
    if (r_ < 0) {                                                                                  \
      fprintf(stderr, "%s failed: %s\n", #call, mp_strerror(r_));                                  \
      return 1;                                                                                    \
    }                                                                                              \
  } while (0)

/* Python: def add(a, b): return a + b; the tuple (2, 3) is a struct in C. */
struct args {
  int a, b;
};
static int add(const void *arg, size_t len, mp_pool_out *out, void *ctx) {
  (void)len;
  (void)ctx;
  const struct args *x = arg;
  int sum = x->a + x->b;
  printf("add runs in worker %d\n", (int)getpid());
  return mp_pool_out_set(out, &sum, sizeof sum);
}

/* Python: def show(result): print(result, os.getpid()) */
static int show(mp_async_result *res, int status, void *arg) {
  (void)status;
  (void)arg;
  const void *data;
  if (mp_async_result_data(res, &data, NULL) == 0)
    printf("callback got %d in pid %d\n", *(const int *)data, (int)getpid());
  return 0;
}

int main(void) {
  printf("parent pid %d\n", (int)getpid());
  mp_pool *p;
  TRY(mp_pool_new(2, NULL, &p));
  struct args a = {2, 3};
  mp_pool_callbacks cb = {.callback = show};
  mp_async_result *r;
  TRY(mp_pool_apply_async(p, add, &a, sizeof a, NULL, &cb, &r));
  TRY(mp_pool_close(p));
  TRY(mp_pool_join(p, MP_FOREVER));
  printf("get() = %d\n", mp_async_result_get(r, MP_FOREVER) >= 0);
  TRY(mp_async_result_free(r));
  TRY(mp_pool_free(p));
  return 0;
}
