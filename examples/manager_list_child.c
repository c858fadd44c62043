/* SPDX-License-Identifier: MIT */
/*
 * A Manager list handed to a child.
 *
 * The Python original: m = Manager(); l = m.list([1, 2, 3]); a Process whose
 * target prints each item minus 1.
 */
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

static int show(void *arg) {
  mp_proxy *l = arg;
  ssize_t n = mp_list_proxy_len(l);
  TRY(n);
  for (ssize_t i = 0; i < n; i++) { /* for x in l: print(x - 1) */
    mp_obj *x;
    TRY(mp_list_proxy_get(l, i, &x));
    int64_t v;
    TRY(mp_obj_get_int(x, &v));
    printf("%lld\n", (long long)(v - 1));
    mp_obj_free(x);
  }
  return 0;
}

int main(void) {
  mp_manager *m;
  TRY(mp_manager_new(NULL, &m));
  TRY(mp_manager_start(m));
  mp_obj *init = mp_obj_listv(3, mp_obj_int(1), mp_obj_int(2), mp_obj_int(3));
  TRY(init ? 0 : -ENOMEM);
  mp_proxy *l;
  TRY(mp_manager_list(m, init, &l)); /* l = m.list([1, 2, 3]) */
  mp_obj_free(init);
  mp_process *p;
  TRY(mp_process_new(show, l, NULL, &p));
  TRY(mp_process_start(p));
  TRY(mp_process_join(p, MP_FOREVER));
  int code = -1;
  TRY(mp_process_exitcode(p, &code));
  mp_process_free(p);
  mp_proxy_free(l);
  TRY(mp_manager_free(m));
  return code;
}
