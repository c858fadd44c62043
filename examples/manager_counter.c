/* SPDX-License-Identifier: MIT */
/*
 * A shared counter: Manager().list([100]) and a Lock; 100 processes each
 * subtract 1 under the lock, and the result is 0.
 *
 * The C twin uses the manager's own Lock (Manager().Lock()), so the whole
 * read-modify-write runs under it, as in the Python original.
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

struct shared {
  mp_proxy *counter, *lock;
};

/* Python: with lock: counter[0] -= 1 */
static int decrement(void *arg) {
  struct shared *s = arg;
  TRY(mp_lock_proxy_acquire(s->lock, MP_FOREVER));
  mp_obj *v;
  TRY(mp_list_proxy_get(s->counter, 0, &v));
  int64_t n;
  TRY(mp_obj_get_int(v, &n));
  mp_obj_free(v);
  v = mp_obj_int(n - 1);
  TRY(v ? 0 : -ENOMEM);
  TRY(mp_list_proxy_set(s->counter, 0, v));
  mp_obj_free(v);
  TRY(mp_lock_proxy_release(s->lock));
  return 0;
}

int main(void) {
  mp_manager *m;
  TRY(mp_manager_new(NULL, &m));
  TRY(mp_manager_start(m));
  struct shared s;
  mp_obj *init = mp_obj_listv(1, mp_obj_int(100));
  TRY(init ? 0 : -ENOMEM);
  TRY(mp_manager_list(m, init, &s.counter));
  mp_obj_free(init);
  TRY(mp_manager_lock(m, &s.lock));
  mp_process *ps[100];
  for (int i = 0; i < 100; i++) {
    TRY(mp_process_new(decrement, &s, NULL, &ps[i]));
    TRY(mp_process_start(ps[i]));
  }
  int bad = 0;
  for (int i = 0; i < 100; i++) {
    int code = -1;
    TRY(mp_process_join(ps[i], MP_FOREVER));
    TRY(mp_process_exitcode(ps[i], &code));
    bad |= code != 0;
    mp_process_free(ps[i]);
  }
  mp_obj *v;
  TRY(mp_list_proxy_get(s.counter, 0, &v));
  int64_t n;
  TRY(mp_obj_get_int(v, &n));
  mp_obj_free(v);
  printf("counter after 100 decrements: %lld\n", (long long)n);
  mp_proxy_free(s.counter);
  mp_proxy_free(s.lock);
  TRY(mp_manager_free(m));
  return bad || n != 0;
}
