/* SPDX-License-Identifier: MIT */
/*
 * Crash points: named steps of libmp's shared protocols at which a test can
 * make a process die (SIGKILL, no clean-up) or stop (SIGSTOP) on its N-th
 * pass. The names are listed once in crashpoints.def; MP__CRASH(ID) marks
 * the step in the code.
 *
 * Built only when meson's `crash_points` option is on (the default for every
 * build type but release); otherwise MP__CRASH() is nothing and
 * mp__crash_arm() returns -ENOSYS, so release builds carry no trace of it.
 *
 * Arming is family-wide: mp__crash_arm() maps a shared countdown that every
 * process forked afterwards shares, so exactly one process of the family —
 * the one whose pass brings the count to zero — dies, whichever it is (a pool
 * worker, a child that inherited the arming, the caller itself). A test that
 * wants one particular process to die arms in that process after forking it.
 */
#ifndef MP_CRASH_H
#define MP_CRASH_H

#include <stdatomic.h>
#include <sys/types.h>

enum mp__crash_id {
  MP__CRASH_NONE = 0,
#define MP__CRASH_POINT(id, name) MP__CRASH_##id,
#include "crashpoints.def"
#undef MP__CRASH_POINT
  MP__CRASH_COUNT
};

/* What an armed point does when its count runs out. */
enum mp__crash_action {
  MP__CRASH_KILL = 0, /* SIGKILL the process at once */
  MP__CRASH_STOP = 1, /* SIGSTOP it: the test looks around, then kills it */
};

#ifdef MP_CRASH_POINTS
/* The id armed in this process, MP__CRASH_NONE when none: one relaxed load
 * and a compare on every pass. */
extern _Atomic int mp__crash_armed_id;
void mp__crash_hit(int id);
#define MP__CRASH(id)                                                                          \
  do {                                                                                         \
    if (__builtin_expect(atomic_load_explicit(&mp__crash_armed_id, memory_order_relaxed) ==    \
                             MP__CRASH_##id,                                                   \
                         0))                                                                   \
      mp__crash_hit(MP__CRASH_##id);                                                           \
  } while (0)
#else
#define MP__CRASH(id) ((void)0)
#endif

/* Arm point `name` (as in crashpoints.def): the family's `nth` pass there
 * (1 = the first) makes the passing process do `action`. Replaces any earlier
 * arming of this process. Returns 0, -ENOENT for an unknown name, -EINVAL for
 * nth 0, -ENOMEM, or -ENOSYS when built without crash points. */
int mp__crash_arm(const char *name, unsigned nth, enum mp__crash_action action);

/* Disarm in this process (others keep their arming). */
void mp__crash_disarm(void);

/* Stop watching in this process but keep the arming's record readable: a
 * test arms, forks the processes that may fire, mutes itself, then reads
 * mp__crash_fired(). */
void mp__crash_mute(void);

/* The pid of the process that fired the last arming of this process (0 if
 * none did yet), and how many passes the family made there so far. */
pid_t mp__crash_fired(void);
unsigned long mp__crash_passes(void);

/* Whether crash points are compiled in (1) or not (0). */
int mp__crash_enabled(void);

/* The name of point id, or NULL. */
const char *mp__crash_name(int id);

#endif /* MP_CRASH_H */
