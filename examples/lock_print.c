/* SPDX-License-Identifier: MIT */
/*
 * A Lock lets one process print at a time.
 *
 * The Python original makes one Lock and ten Process(target=f, args=(i,)).
 * Each f acquires the lock, sleeps 1 s, prints "hello--<i>" and a line with
 * its parent's pid and its own, then releases the lock. The ten children take
 * turns, so their lines never mix.
 *
 * The C twin: mp_lock_new() makes the lock in libmp's shared heap, so the
 * same pointer works in every child; mp_lock_acquire()/mp_lock_release() are
 * acquire()/release(). To show what the lock prevents, each child writes its
 * lines a few characters at a time, flushing and pausing between pieces:
 * without the lock, pieces from different children would interleave. The
 * sleep is shortened to 0.2 s so the ten turns take 2 s rather than 10.
 */
#include <mp.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

/* Stop with a message when a libmp call fails (they return a negative errno,
 * explained by mp_strerror()). Used in the parent and in children alike. */
#define TRY(call)                                                                                  \
  do {                                                                                             \
    int r_ = (call);                                                                               \
    if (r_ < 0) {                                                                                  \
      fprintf(stderr, "%s failed: %s\n", #call, mp_strerror(r_));                                  \
      return 1;                                                                                    \
    }                                                                                              \
  } while (0)

enum { N = 10 };

struct child {
  mp_lock *lock; /* the one lock every child shares */
  int name;
};

static void nap(double seconds) {
  struct timespec t = {(time_t)seconds, (long)((seconds - (double)(time_t)seconds) * 1e9)};
  while (nanosleep(&t, &t) != 0) {
  }
}

/* Write one piece of a line and push it out at once. */
static void piece(const char *text) {
  fputs(text, stdout);
  fflush(stdout);
  nap(0.01);
}

static int f(void *arg) {
  const struct child *c = arg;
  char buf[64];

  TRY(mp_lock_acquire(c->lock, MP_FOREVER)); /* lock.acquire() */
  nap(0.2);
  snprintf(buf, sizeof buf, "%d", c->name);
  piece("hello--");
  piece(buf);
  piece("\n");
  snprintf(buf, sizeof buf, "%d", (int)getppid());
  piece(buf);
  piece(" ----------- ");
  snprintf(buf, sizeof buf, "%d", (int)getpid());
  piece(buf);
  piece("\n");
  TRY(mp_lock_release(c->lock)); /* lock.release() */
  return 0;
}

int main(void) {
  mp_lock *lock;
  TRY(mp_lock_new(&lock)); /* lock = Lock() */

  struct child children[N];
  mp_process *process_list[N];
  for (int i = 0; i < N; i++) {
    children[i] = (struct child){.lock = lock, .name = i};
    TRY(mp_process_new(f, &children[i], NULL, &process_list[i]));
    TRY(mp_process_start(process_list[i]));
  }

  int failed = 0;
  for (int i = 0; i < N; i++) {
    int code = -1;
    TRY(mp_process_join(process_list[i], MP_FOREVER));
    TRY(mp_process_exitcode(process_list[i], &code));
    TRY(mp_process_free(process_list[i]));
    failed |= code != 0;
  }
  TRY(mp_lock_free(lock));
  return failed;
}
