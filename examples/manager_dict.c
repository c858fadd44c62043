/* SPDX-License-Identifier: MIT */
/*
 * A Manager dict filled by ten processes, each printing it as it grows.
 *
 * The Python original: d = Manager().dict(); ten processes f(d, i) each sleep
 * 1 s, set d[i] = i * i and print d; the parent joins them all and prints d.
 * Every child sees the entries the others have set so far, so the printed
 * dicts grow, one entry at a time, up to all ten; the parent's print shows
 * them all.
 *
 * The C twin: the dict lives in the manager's server; each child sets its
 * entry through the proxy, then takes a copy (mp_dict_proxy_copy()) and
 * prints it as Python would (mp_obj_repr()). The entries come in the order
 * the children set them, as in Python, and since the children run at the
 * same time, the printed dicts grow in roughly, not exactly, that order.
 */
#include <mp.h>
#include <stdio.h>
#include <unistd.h>

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

static mp_proxy *d; /* made before the children start, so they all see it */

/* print(d): copy the dict out of the server and print its repr. */
static int print_dict(void) {
  mp_obj *copy;
  TRY(mp_dict_proxy_copy(d, &copy));
  char buf[256];
  TRY(mp_obj_repr(copy, buf, sizeof buf));
  printf("%s\n", buf);
  mp_obj_free(copy);
  return 0;
}

/* Python: def f(d, name): time.sleep(1); d[name] = name * name; print(d) */
static int f(void *arg) {
  int name = (int)(long)arg; /* the number travels in the pointer argument */
  sleep(1);
  mp_obj *k = mp_obj_int(name), *v = mp_obj_int((int64_t)name * name);
  TRY(k && v ? 0 : -ENOMEM);
  TRY(mp_dict_proxy_set(d, k, v));
  mp_obj_free(k);
  mp_obj_free(v);
  return print_dict();
}

int main(void) {
  /* Each line goes out as soon as it is printed. Children inherit this. */
  setvbuf(stdout, NULL, _IOLBF, 0);

  mp_manager *manager;
  TRY(mp_manager_new(NULL, &manager)); /* manager = Manager() */
  TRY(mp_manager_start(manager));
  TRY(mp_manager_dict(manager, NULL, &d)); /* d = manager.dict() */

  mp_process *process_list[10];
  for (int i = 0; i < 10; i++) {
    /* p = Process(target=f, args=(d, i)); p.start() */
    TRY(mp_process_new(f, (void *)(long)i, NULL, &process_list[i]));
    TRY(mp_process_start(process_list[i]));
  }
  int bad = 0;
  for (int i = 0; i < 10; i++) { /* for j in process_list: j.join() */
    int code = -1;
    TRY(mp_process_join(process_list[i], MP_FOREVER));
    TRY(mp_process_exitcode(process_list[i], &code));
    bad |= code != 0;
    TRY(mp_process_free(process_list[i]));
  }
  TRY(print_dict()); /* print(d) */

  TRY(mp_proxy_free(d));
  TRY(mp_manager_free(manager));
  return bad;
}
