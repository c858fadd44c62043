/* SPDX-License-Identifier: MIT */
/* mp_strerror: libmp's meaning of each code; docs/errors.md is the same table. */
#include <limits.h>
#include <string.h>

#include "internal.h"

MP_EXPORT const char *mp_strerror(int code) {
  if (code >= 0)
    return "success";
  /* -INT_MIN does not fit in an int: no errno is that large anyway. */
  if (code < -INT_MAX)
    return "unknown error";
  int e = -code;
  switch (e) {
  case ETIMEDOUT:
    return "timed out: the wait ended unsatisfied (Python: Empty, Full, acquire() == False)";
  case EPIPE:
    return "end of file: closed queue or connection, or the peer is gone";
  case EMSGSIZE:
    return "buffer too small for the message; the message was kept";
  case EPERM:
    return "not permitted: the caller does not own this (for example releasing a lock it does "
           "not hold)";
  case EOVERFLOW:
    return "over-release: released or marked done more often than acquired or put";
  case EOWNERDEAD:
    return "previous holder died; the lock is now held by the caller and usable";
  case ECHILD:
    return "handle used in a process that may not use it (for example joining a process "
           "another process started)";
  case EINVAL:
    return "invalid argument: NULL, freed or foreign handle, or an impossible value";
  case ECANCELED:
    return "broken barrier: aborted, reset, timed out or its action failed";
  case ECONNABORTED:
    return "pool worker died while running the task (the task failed; a new worker replaced it)";
  case ESHUTDOWN:
    return "pool terminated: the task was dropped or stopped by terminate";
  case EDEADLK:
    return "the calling thread already holds this lock";
  case ENOLCK:
    return "this shared value has no lock (raw)";
  case ERANGE:
    return "index out of range";
  case EALREADY:
    return "already done (started, or initialised)";
  case EBUSY:
    return "busy: still held, waited on or running";
  case ENOMEM:
    return "out of memory: the family heap (or the system) is exhausted";
  default:
    {
      const char *d = strerrordesc_np(e); /* thread-safe, unlike strerror */
      return d ? d : "unknown error";
    }
  }
}
