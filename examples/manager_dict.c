/* SPDX-License-Identifier: MIT */
/*
 * A Manager dict filled by ten processes.
 *
 * The Python original: d = Manager().dict(); ten processes each set
 * d[i] = i * i; the parent joins them and prints d.
 *
 * The C twin: the dict lives in the manager's server; each child sets its
 * entry through the proxy. The order of the entries is the order the children
 * ran in, as in Python, so the parent also prints them by key.
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

struct job {
  mp_proxy *d;
  int i;
};

/* Python: def f(d, i): d[i] = i * i */
static int f(void *arg) {
  struct job *j = arg;
  mp_obj *k = mp_obj_int(j->i), *v = mp_obj_int((int64_t)j->i * j->i);
  TRY(k && v ? 0 : -ENOMEM);
  TRY(mp_dict_proxy_set(j->d, k, v));
  mp_obj_free(k);
  mp_obj_free(v);
  return 0;
}

int main(void) {
  mp_manager *m;
  TRY(mp_manager_new(NULL, &m));
  TRY(mp_manager_start(m));
  mp_proxy *d;
  TRY(mp_manager_dict(m, NULL, &d)); /* d = manager.dict() */
  struct job jobs[10];
  mp_process *ps[10];
  for (int i = 0; i < 10; i++) {
    jobs[i] = (struct job){d, i};
    TRY(mp_process_new(f, &jobs[i], NULL, &ps[i]));
    TRY(mp_process_start(ps[i]));
  }
  int bad = 0;
  for (int i = 0; i < 10; i++) {
    int code = -1;
    TRY(mp_process_join(ps[i], MP_FOREVER));
    TRY(mp_process_exitcode(ps[i], &code));
    bad |= code != 0;
    mp_process_free(ps[i]);
  }
  mp_obj *copy;
  TRY(mp_dict_proxy_copy(d, &copy)); /* print(d) */
  char buf[512];
  TRY(mp_obj_repr(copy, buf, sizeof buf));
  printf("%s\n", buf);
  mp_obj_free(copy);
  printf("by key:");
  for (int i = 0; i < 10; i++) {
    mp_obj *k = mp_obj_int(i), *v;
    TRY(mp_dict_proxy_get(d, k, &v));
    int64_t n;
    TRY(mp_obj_get_int(v, &n));
    printf(" %d: %lld", i, (long long)n);
    mp_obj_free(k);
    mp_obj_free(v);
  }
  printf("\n");
  mp_proxy_free(d);
  TRY(mp_manager_free(m));
  return bad;
}
