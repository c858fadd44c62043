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
    return "shut down: the pool was terminated (the task dropped or stopped), or the queue was "
           "shut down";
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
  case EAGAIN:
    return "not now: the kernel refused a process or thread for now, or a shared memory block is "
           "still being made";
  case EMFILE:
    return "this process has no file descriptor left";
  case ENFILE:
    return "the system has no file descriptor left";
  case EBADF:
    return "wrong direction or bad descriptor: a one-way pipe end used the way it cannot go, or a "
           "descriptor that is not open";
  case EBADMSG:
    return "the next item is of the other kind (a descriptor where a message is expected, or the "
           "reverse), or a malformed message";
  case ENOTSOCK:
    return "the descriptor is not a socket";
  case EPROTOTYPE:
    return "the socket cannot be a libmp connection (neither SOCK_SEQPACKET nor a stream)";
  case ENOTCONN:
    return "not connected: a stream socket not connected, or a handle not started or connected";
  case EOPNOTSUPP: /* also ENOTSUP, the same number on Linux */
    return "not supported: descriptors cannot travel over a stream connection, the object has no "
           "such method, or the MPI pool cannot do this (maxtasksperchild, thread support)";
  case EUSERS:
    return "the manager's server is full: it serves as many clients as its max_clients allows";
  case ENOEXEC:
    return "a worker runs another executable, or a task's function is not the same there";
  case EPROTO:
    return "the stream does not carry libmp's framing: the connection is unusable";
  case ENOBUFS:
    return "the kernel has no memory for the socket's buffers right now";
  case ENOSYS:
    return "the kernel lacks a system call this needs (futex_waitv: Linux 5.16)";
  case EEXIST:
    return "the name is taken: a shared memory block or a registered type of that name exists";
  case ENOENT:
    return "not found: no such shared memory name, dict key, attribute, item or type";
  case EACCES:
    return "access refused: a wrong or missing authentication key, or a block of another user";
  case ESRCH:
    return "the object no longer exists in the manager's server";
  case EDOM:
    return "wrong value type (for example reading an int from a string)";
  case EFAULT:
    return "a map's items are unreadable or its results unwritable in the caller's memory";
  case EIO:
    return "a queue's shared memory was found overwritten; nothing was delivered";
  case EADDRINUSE:
    return "the address is in use by another listener";
  case EADDRNOTAVAIL:
    return "the address is not one of this machine's";
  case ECONNREFUSED:
    return "nobody listens at that address";
  case ESTALE:
    return "stale: the shared dict changed size during the iteration";
  case ENOSPC:
    return "no room: the manager's registered types are full, or /dev/shm is";
  default:
    {
      const char *d = strerrordesc_np(e); /* thread-safe, unlike strerror */
      return d ? d : "unknown error";
    }
  }
}
