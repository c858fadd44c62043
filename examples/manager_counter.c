/* SPDX-License-Identifier: MIT */
/*
 * A shared counter: a Manager list for the data, a plain Lock around it.
 *
 * The Python original makes m = Manager(), l2 = m.list([100]) and
 * lo = Lock() (multiprocessing.Lock, not a manager's lock), starts 100
 * processes that each run `with lo: l2[0] -= 1`, joins them all and prints
 * l2[0], which is 0. Without the lock two processes could read the same value
 * and both write it back less one, and some subtractions would be lost.
 *
 * The C twin: mp_manager_list() is m.list([100]); mp_lock_new() is Lock(),
 * made in libmp's shared heap before the children start, so every child uses
 * the same lock; the read, the subtraction and the write all happen under it.
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

enum { N = 100 };

/* Made before the children start, so they all see them. */
static mp_proxy *l2;
static mp_lock *lo;

/* Python: def fen(l2, lo): with lo: l2[0] -= 1 */
static int fen(void *arg) {
  (void)arg;
  TRY(mp_lock_acquire(lo, MP_FOREVER)); /* with lo: */
  mp_obj *v;
  TRY(mp_list_proxy_get(l2, 0, &v)); /* l2[0] */
  int64_t n;
  TRY(mp_obj_get_int(v, &n));
  mp_obj_free(v);
  v = mp_obj_int(n - 1);
  TRY(v ? 0 : -ENOMEM);
  TRY(mp_list_proxy_set(l2, 0, v)); /* l2[0] = ... - 1 */
  mp_obj_free(v);
  TRY(mp_lock_release(lo));
  return 0;
}

int main(void) {
  mp_manager *m;
  TRY(mp_manager_new(NULL, &m)); /* m = Manager() */
  TRY(mp_manager_start(m));
  mp_obj *init = mp_obj_listv(1, mp_obj_int(N));
  TRY(init ? 0 : -ENOMEM);
  TRY(mp_manager_list(m, init, &l2)); /* l2 = m.list([100]) */
  mp_obj_free(init);
  TRY(mp_lock_new(&lo)); /* lo = Lock() */

  mp_process *l1[N];
  for (int i = 0; i < N; i++) { /* 100 processes, all started... */
    TRY(mp_process_new(fen, NULL, NULL, &l1[i]));
    TRY(mp_process_start(l1[i]));
  }
  int bad = 0;
  for (int i = 0; i < N; i++) { /* ...then all joined */
    int code = -1;
    TRY(mp_process_join(l1[i], MP_FOREVER));
    TRY(mp_process_exitcode(l1[i], &code));
    bad |= code != 0;
    TRY(mp_process_free(l1[i]));
  }

  mp_obj *v;
  TRY(mp_list_proxy_get(l2, 0, &v)); /* print(l2[0]) */
  int64_t n;
  TRY(mp_obj_get_int(v, &n));
  mp_obj_free(v);
  printf("l2[0] after %d processes each subtracted 1: %lld\n", N, (long long)n);

  TRY(mp_lock_free(lo));
  TRY(mp_proxy_free(l2));
  TRY(mp_manager_free(m));
  return bad || n != 0;
}
