/* SPDX-License-Identifier: MIT */
/*
 * Internals shared by the SharedMemory files: the handle a ShareableList reads
 * through on every get and set, the identity a list's writers are known by,
 * and the one way to create a block.
 *
 * Where SharedMemory lives (public header mp/shm.h -> file):
 *   shm.c       names, process identity and liveness, the family registry of
 *               tracked blocks (its protocol and kill table), SharedMemory,
 *               SharedMemoryManager
 *   shm_list.c  ShareableList: the block layout and the slot protocol (its
 *               kill table)
 * Tests: tests/test_shm.c, tests/test_shm_crash.c.
 */
#ifndef MP_SHM_INTERNAL_H
#define MP_SHM_INTERNAL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "internal.h"
#include "mp/shm.h"

/* "/" + name + NUL: the path shm_open wants. */
#define MP__SHM_PATH_CAP (MP_SHARED_MEMORY_NAME_MAX + 2)

struct mp__shm_mgr_entry; /* a SharedMemoryManager's record (shm.c) */

struct mp_shared_memory {
  void *buf;
  size_t size;
  uint64_t dev, ino;
  struct mp__shm_mgr_entry *mgr; /* the manager record that owns this handle, or NULL */
  char path[MP__SHM_PATH_CAP];   /* "/name" */
};

/* Create a block (mp_shared_memory_new(); name NULL: a generated one). */
int mp__shm_create(const char *name, size_t size, const mp_shared_memory_options *opts,
                   mp_shared_memory **ret);

/* Create a ShareableList (mp_shareable_list_new(); name NULL: a generated
 * one), for the SharedMemoryManager too (shm_list.c). */
int mp__shm_list_create(const char *name, const mp_item *items, size_t n,
                        const mp_shared_memory_options *opts, mp_shareable_list **ret);

/* This process's start time, for the pid libmp's one pid cache gives
 * (mp__pid(), sys.c): recomputed when that pid changes, so no fork handler is
 * needed here. Start time 0 when /proc cannot tell. The fast path is inline
 * because a ShareableList write asks for it every time. */
extern _Atomic uint64_t mp__shm_ident_start;
extern _Atomic pid_t mp__shm_ident_pid; /* the pid mp__shm_ident_start belongs to */

/* Read this process's start time from /proc and publish it for pid me. */
uint64_t mp__shm_ident_load(pid_t me);

static inline pid_t mp__shm_self_ident(uint64_t *start) {
  pid_t me = mp__pid();
  if (start) {
    /* acquire: pairs with the release store in mp__shm_ident_load(), so the
     * start time read belongs to this pid */
    if (MP__UNLIKELY(atomic_load_explicit(&mp__shm_ident_pid, memory_order_acquire) != me)) {
      *start = mp__shm_ident_load(me);
      return me;
    }
    *start =
        atomic_load_explicit(&mp__shm_ident_start, memory_order_relaxed); /* ordered by the pid */
  }
  return me;
}

/* Whether the process that was `pid`, started at `start` (0: unknown; only
 * the bits of start_mask are compared), is still running. A zombie counts as
 * dead; when nothing can tell, alive (the safe answer: a live process's
 * blocks are never removed). */
bool mp__shm_alive_since(pid_t pid, uint64_t start, uint64_t start_mask);

#endif /* MP_SHM_INTERNAL_H */
