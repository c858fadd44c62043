/* SPDX-License-Identifier: MIT */
/*
 * ShareableList: a list of numbers in shared memory, worked on by two
 * processes, with a SharedMemoryManager that frees it at the end.
 *
 * The Python original:
 *   with SharedMemoryManager() as smm:
 *       sl = smm.ShareableList(range(2000))
 *       # Divide the work among two processes, storing partial results in sl
 *       p1 = Process(target=do_work, args=(sl, 0, 1000))
 *       p2 = Process(target=do_work, args=(sl, 1000, 2000))
 *       p1.start(); p2.start()
 *       p1.join(); p2.join()     # wait for all work to complete
 *       total_result = sum(sl)   # consolidate the partial results now in sl
 *
 * The tutorial leaves do_work out; here it squares each item of its half.
 * Python sends `sl` to each child by name, and the child attaches to the
 * block; the children here do the same with mp_shareable_list_attach(). A
 * ShareableList slot holds an integer, float, bool, None, string or bytes,
 * read and written whole with mp_shareable_list_get() and _set().
 */
#include <mp.h>
#include <stdio.h>
#include <string.h>

#define TRY(call)                                                                                  \
  do {                                                                                             \
    int r_ = (int)(call);                                                                          \
    if (r_ < 0) {                                                                                  \
      fprintf(stderr, "%s failed: %s\n", #call, mp_strerror(r_));                                  \
      return 1;                                                                                    \
    }                                                                                              \
  } while (0)

#define N 2000

struct work {
  const char *name; /* the list's block, attached to by name */
  int start, stop;
};

static int do_work(void *arg) {
  const struct work *w = arg;
  mp_shareable_list *sl;
  TRY(mp_shareable_list_attach(w->name, NULL, &sl));
  for (int i = w->start; i < w->stop; i++) {
    mp_item it;
    TRY(mp_shareable_list_get(sl, (size_t)i, &it, NULL, 0));
    mp_item squared = mp_item_int(it.i * it.i);
    TRY(mp_shareable_list_set(sl, (size_t)i, &squared)); /* sl[i] = sl[i] ** 2 */
  }
  printf("worker %d..%d done\n", w->start, w->stop - 1);
  TRY(mp_shareable_list_close(sl));
  return 0;
}

/* sum(sl) */
static int sum(mp_shareable_list *sl, long long *total) {
  long long s = 0;
  ssize_t len = mp_shareable_list_len(sl);
  TRY(len);
  for (ssize_t i = 0; i < len; i++) {
    mp_item it;
    TRY(mp_shareable_list_get(sl, (size_t)i, &it, NULL, 0));
    s += it.i;
  }
  *total = s;
  return 0;
}

static int join_ok(mp_process *p) {
  int code = -1;
  TRY(mp_process_join(p, MP_FOREVER));
  TRY(mp_process_exitcode(p, &code));
  TRY(mp_process_free(p));
  return code == 0 ? 0 : 1;
}

int main(void) {
  mp_shm_manager *smm;
  TRY(mp_shm_manager_new(&smm)); /* with SharedMemoryManager() as smm: */

  static mp_item range[N]; /* range(2000) */
  for (int i = 0; i < N; i++)
    range[i] = mp_item_int(i);
  mp_shareable_list *sl;
  TRY(mp_shm_manager_shareable_list(smm, range, N, &sl));
  char name[MP_SHARED_MEMORY_NAME_MAX + 1];
  snprintf(name, sizeof name, "%s", mp_shared_memory_name(mp_shareable_list_shm(sl)));
  long long before;
  if (sum(sl, &before))
    return 1;
  printf("sl = ShareableList(range(%zd)) in %s, sum %lld\n", mp_shareable_list_len(sl), name,
         before);

  struct work w1 = {name, 0, 1000}, w2 = {name, 1000, 2000};
  mp_process *p1, *p2;
  TRY(mp_process_new(do_work, &w1, NULL, &p1));
  TRY(mp_process_new(do_work, &w2, NULL, &p2));
  TRY(mp_process_start(p1));
  TRY(mp_process_start(p2));
  if (join_ok(p1) || join_ok(p2)) /* wait for all work to complete */
    return 1;

  long long total_result;
  if (sum(sl, &total_result)) /* consolidate the partial results */
    return 1;
  printf("total_result = %lld\n", total_result);

  TRY(mp_shm_manager_shutdown(smm)); /* leaving the with block: frees sl */
  mp_shared_memory *gone;
  int r = mp_shared_memory_attach(name, NULL, &gone);
  printf("after shutdown, %s is %s\n", name, r == -ENOENT ? "gone" : "still there?!");
  if (r == 0)
    mp_shared_memory_close(gone);
  /* 0^2 + 1^2 + ... + 1999^2 */
  return total_result == 1999LL * 2000 * 3999 / 6 && r == -ENOENT ? 0 : 1;
}
