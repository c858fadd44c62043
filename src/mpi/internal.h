/* SPDX-License-Identifier: MIT */
/* libmp-mpi: function and ctx identity across address spaces (code.c), used
 * by rank 0 (jobs.c, pool.c) and the workers (worker.c). The pool's own
 * shared structures are in pool_internal.h. */
#ifndef MP_MPI_INTERNAL_H
#define MP_MPI_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

/* A pointer into a loaded object, as it crosses to another rank: the index
 * of the object in rank 0's table and the offset from its load address.
 * MPI__REF_NULL stands for NULL. */
#define MPI__REF_NULL UINT32_MAX
typedef struct mpi__ref {
  uint32_t mod;
  uint32_t exec; /* 1: the offset lies in an executable segment */
  uint64_t off;
} mpi__ref;

/* Rank 0: the ref of p. need_exec: p must lie in an executable segment (a
 * function). Returns 0, or -EINVAL when p lies in no loaded object (or, for
 * a function, in no executable segment). Thread safe. */
int mpi__ref_of(const void *p, int need_exec, mpi__ref *out);

/* Rank 0: rank 0's table of loaded objects, serialized (malloc()ed). */
int mpi__modtab_pack(void **buf, size_t *len);

/* A worker: match rank 0's table against its own. Returns 0, or -ENOEXEC
 * when the executable itself differs, -EPROTO for a malformed table. */
int mpi__modtab_match(const void *buf, size_t len);

/* A worker: the local address of ref r. Returns 0, -ENOEXEC when r's object
 * is missing or differs here, -EINVAL for a malformed ref. */
int mpi__ref_resolve(const mpi__ref *r, int need_exec, void **out);

#endif
