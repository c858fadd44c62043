/* SPDX-License-Identifier: MIT */
/*
 * A custom manager: a Maths type registered with the manager, whose methods
 * run in the server process.
 *
 * The Python original: class MathsClass with add(x, y) and mul(x, y);
 * MyManager.register('Maths', MathsClass); with MyManager() as manager:
 * maths = manager.Maths(); print(maths.add(4, 3)); print(maths.mul(7, 8)).
 *
 * The C twin: mp_manager_register() names a constructor and a table of
 * methods before the server starts (the server is forked and inherits the
 * table). Clients call methods by name: the name is looked up in that table,
 * so received bytes never choose code outside it.
 */
#include <errno.h>
#include <mp.h>
#include <stdio.h>

/* Stop with a message when a libmp call fails (they return a negative errno,
 * explained by mp_strerror()). Used in the parent and in the children alike. */
#define TRY(call)                                                                                  \
  do {                                                                                             \
    int r_ = (int)(call);                                                                          \
    if (r_ < 0) {                                                                                  \
      fprintf(stderr, "%s failed: %s\n", #call, mp_strerror(r_));                                  \
      return 1;                                                                                    \
    }                                                                                              \
  } while (0)

/* The class has no state; self stays NULL. */
static int maths_new(const mp_obj *args, void **self) {
  (void)args;
  *self = NULL;
  return 0;
}

static int two_ints(const mp_obj *args, int64_t *x, int64_t *y) {
  const mp_obj *a, *b;
  if (mp_obj_len(args) != 2 || mp_obj_list_get(args, 0, &a) < 0 ||
      mp_obj_list_get(args, 1, &b) < 0 || mp_obj_get_int(a, x) < 0 || mp_obj_get_int(b, y) < 0)
    return -EINVAL; /* Python's TypeError */
  return 0;
}

static int maths_add(void *self, const mp_obj *args, mp_obj **result) {
  (void)self;
  int64_t x, y;
  int r = two_ints(args, &x, &y);
  if (r < 0)
    return r;
  *result = mp_obj_int(x + y);
  return *result ? 0 : -ENOMEM;
}

static int maths_mul(void *self, const mp_obj *args, mp_obj **result) {
  (void)self;
  int64_t x, y;
  int r = two_ints(args, &x, &y);
  if (r < 0)
    return r;
  *result = mp_obj_int(x * y);
  return *result ? 0 : -ENOMEM;
}

static const mp_manager_method_def maths_methods[] = {{"add", maths_add}, {"mul", maths_mul}};

static int call(mp_proxy *maths, const char *method, int64_t x, int64_t y) {
  mp_obj *args = mp_obj_listv(2, mp_obj_int(x), mp_obj_int(y)), *res;
  TRY(args ? 0 : -ENOMEM);
  TRY(mp_proxy_call(maths, method, args, MP_FOREVER, &res));
  char buf[64];
  TRY(mp_obj_repr(res, buf, sizeof buf));
  printf("%s\n", buf);
  mp_obj_free(res);
  mp_obj_free(args);
  return 0;
}

int main(void) {
  /* MyManager.register('Maths', MathsClass) */
  TRY(mp_manager_register("Maths", maths_new, NULL, maths_methods, 2));
  mp_manager *manager;
  TRY(mp_manager_new(NULL, &manager));
  TRY(mp_manager_start(manager));
  mp_proxy *maths;
  TRY(mp_manager_create(manager, "Maths", NULL, &maths)); /* maths = manager.Maths() */
  if (call(maths, "add", 4, 3) || call(maths, "mul", 7, 8))
    return 1;
  mp_proxy_free(maths);
  TRY(mp_manager_free(manager));
  return 0;
}
