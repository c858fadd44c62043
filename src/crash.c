/* SPDX-License-Identifier: MIT */
/*
 * Crash points (crash.h): arming, counting and firing.
 *
 * An arming is one shared anonymous page holding the countdown, inherited by
 * every process forked after mp__crash_arm(); the id to watch is copied into
 * each process's memory at fork as any global is. Firing is a SIGKILL (or
 * SIGSTOP) the process sends itself: no atexit handler, no stdio flush, no
 * unlock, exactly what an outside kill at that instruction leaves.
 */
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "crash.h"
#include "internal.h"

static const char *const names[MP__CRASH_COUNT] = {
    [MP__CRASH_NONE] = NULL,
#define MP__CRASH_POINT(id, name) [MP__CRASH_##id] = name,
#include "crashpoints.def"
#undef MP__CRASH_POINT
};

const char *mp__crash_name(int id) {
  return id > MP__CRASH_NONE && id < MP__CRASH_COUNT ? names[id] : NULL;
}

#ifdef MP_CRASH_POINTS

struct arming {
  _Atomic unsigned long left;   /* passes until the point fires */
  _Atomic unsigned long passes; /* passes so far, family-wide */
  _Atomic pid_t fired;          /* who fired, 0 until then */
  int action;
};

_Atomic int mp__crash_armed_id;
static struct arming *arming; /* this process's, inherited across fork */

void mp__crash_hit(int id) {
  struct arming *a = arming;
  if (!a || id != atomic_load_explicit(&mp__crash_armed_id, memory_order_relaxed))
    return;
  atomic_fetch_add(&a->passes, 1);
  unsigned long left = atomic_load(&a->left);
  do {
    if (left == 0)
      return; /* fired already, in this or another process */
  } while (!atomic_compare_exchange_weak(&a->left, &left, left - 1));
  if (left != 1)
    return;
  /* the system call, not mp__pid()'s cache: a point may fire in a child
   * before the cache's fork handler has run */
  pid_t me = getpid();
  atomic_store(&a->fired, me);
  if (a->action == MP__CRASH_STOP) {
    kill(me, SIGSTOP);
    return; /* resumed with SIGCONT: go on as if nothing happened */
  }
  for (;;) {
    kill(me, SIGKILL);
    pause();
  }
}

int mp__crash_arm(const char *name, unsigned nth, enum mp__crash_action action) {
  if (!name || nth == 0 || (action != MP__CRASH_KILL && action != MP__CRASH_STOP))
    return name ? -EINVAL : -ENOENT;
  int id = MP__CRASH_NONE;
  for (int i = MP__CRASH_NONE + 1; i < MP__CRASH_COUNT; i++)
    if (strcmp(names[i], name) == 0)
      id = i;
  if (id == MP__CRASH_NONE)
    return -ENOENT;
  mp__crash_disarm();
  struct arming *a =
      mmap(NULL, sizeof *a, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (a == MAP_FAILED)
    return -ENOMEM;
  atomic_init(&a->left, nth);
  atomic_init(&a->passes, 0);
  atomic_init(&a->fired, 0);
  a->action = action;
  arming = a;
  atomic_store(&mp__crash_armed_id, id);
  return 0;
}

void mp__crash_disarm(void) {
  atomic_store(&mp__crash_armed_id, MP__CRASH_NONE);
  if (arming) {
    munmap(arming, sizeof *arming);
    arming = NULL;
  }
}

void mp__crash_mute(void) { atomic_store(&mp__crash_armed_id, MP__CRASH_NONE); }

pid_t mp__crash_fired(void) { return arming ? atomic_load(&arming->fired) : 0; }

unsigned long mp__crash_passes(void) { return arming ? atomic_load(&arming->passes) : 0; }

int mp__crash_enabled(void) { return 1; }

#else

int mp__crash_arm(const char *name, unsigned nth, enum mp__crash_action action) {
  (void)name;
  (void)nth;
  (void)action;
  return -ENOSYS;
}
void mp__crash_disarm(void) {}
void mp__crash_mute(void) {}
pid_t mp__crash_fired(void) { return 0; }
unsigned long mp__crash_passes(void) { return 0; }
int mp__crash_enabled(void) { return 0; }

#endif
