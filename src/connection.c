/* SPDX-License-Identifier: MIT */
/*
 * Pipe and Connection: byte messages over a Unix SOCK_SEQPACKET socket pair
 * or a byte stream, and mp_connection_wait() over connections, processes,
 * descriptors and queues.
 *
 * Map of the connection area (mp/connection.h):
 *   connection.c           this file: the handles. The private-handle
 *                          allocator (internal.h; a listener's handles come
 *                          from it too), making a connection from a socket
 *                          pair or a descriptor, closing it, its accessors.
 *   connection_internal.h  the record header, struct mp_connection with its
 *                          receiving and sending state, the begun message.
 *   connection_record.c    the SOCK_SEQPACKET record path: why records, the
 *                          wire format, sending, receiving, descriptors and
 *                          connections in transit, and the public send,
 *                          receive, poll and peek calls of every connection.
 *   connection_stream.c    stream connections (TCP, Unix SOCK_STREAM): libmp's
 *                          framing with trailers, and Python's wire.
 *   connection_wait.c      mp_connection_wait().
 * Each protocol file carries its part of what a SIGKILL leaves. This file
 * marks no crash points.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "connection_internal.h"
#include "internal.h"

static size_t chunk_for(int fd) {
  size_t chunk = MP_CONNECTION_ATOMIC_MAX;
  int sb = 0;
  socklen_t l = sizeof sb;
  /* A record must fit the send buffer whole; keep two in flight. */
  if (getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sb, &l) == 0 && sb > 0) {
    size_t lim = (size_t)sb / 2;
    lim = lim > (size_t)HDR + 512 ? lim - (size_t)HDR - 512 : MIN_CHUNK;
    if (lim < chunk)
      chunk = lim;
  }
  return chunk < MIN_CHUNK ? MIN_CHUNK : chunk;
}

/* Private handles (internal.h): a header before each, and one FIFO of dead
 * ones, so that the handle a stale pointer names stays dead as long as
 * possible. A pthread mutex, released in the child of a fork (the forking
 * thread holds it across fork, so no other thread can). */
union handle_hdr {
  struct {
    union handle_hdr *next;
    size_t size;
  } h;
  max_align_t align;
};
#define HANDLES_KEEP 64 /* dead handles kept before any is reused */
static pthread_mutex_t handles_mu = PTHREAD_MUTEX_INITIALIZER;
static union handle_hdr *dead_head, *dead_tail;
static size_t n_dead;
static pthread_once_t handles_once = PTHREAD_ONCE_INIT;

static void handles_lock(void) { pthread_mutex_lock(&handles_mu); }
static void handles_unlock(void) { pthread_mutex_unlock(&handles_mu); }
static void handles_init(void) { pthread_atfork(handles_lock, handles_unlock, handles_unlock); }

void *mp__handle_new(size_t size) {
  pthread_once(&handles_once, handles_init);
  union handle_hdr *n = NULL;
  handles_lock();
  if (n_dead > HANDLES_KEEP) {
    for (union handle_hdr *x = dead_head, *prev = NULL; x; prev = x, x = x->h.next) {
      if (x->h.size != size)
        continue;
      if (prev)
        prev->h.next = x->h.next;
      else
        dead_head = x->h.next;
      if (dead_tail == x)
        dead_tail = prev;
      n_dead--;
      n = x;
      break;
    }
  }
  handles_unlock();
  if (!n && !(n = malloc(sizeof *n + size)))
    return NULL;
  n->h.size = size;
  n->h.next = NULL;
  memset(n + 1, 0, size);
  return n + 1;
}

void mp__handle_free(void *handle) {
  if (!handle)
    return;
  union handle_hdr *n = (union handle_hdr *)handle - 1;
  n->h.next = NULL;
  handles_lock();
  if (dead_tail)
    dead_tail->h.next = n;
  else
    dead_head = n;
  dead_tail = n;
  n_dead++;
  handles_unlock();
}

int mp__conn_make(int fd, bool readable, bool writable, bool stream, mp_connection **ret) {
  mp_connection *c = mp__handle_new(sizeof *c);
  if (!c)
    return -ENOMEM;
  c->magic = CONN_MAGIC;
  c->fd = fd;
  c->readable = readable;
  c->writable = writable;
  c->stream = stream;
  c->taken.fd = -1;
  atomic_init(&c->chunk, stream ? 0 : chunk_for(fd));
  *ret = c;
  return 0;
}

MP_EXPORT int mp_pipe_new(int duplex, mp_connection **conn1, mp_connection **conn2) {
  if (!conn1 || !conn2)
    return -EINVAL;
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
    return -errno;
  if (!duplex) {
    /* conn1 only receives, conn2 only sends. Shutting the unused directions
     * makes a wrong-way send fail in the kernel too, while end of file and
     * poll still work on the used direction. */
    if (shutdown(sv[0], SHUT_WR) < 0 || shutdown(sv[1], SHUT_RD) < 0) {
      int e = errno;
      close(sv[0]);
      close(sv[1]);
      return -e;
    }
  }
  mp_connection *a, *b;
  int r = mp__conn_make(sv[0], true, duplex, false, &a);
  if (r < 0)
    goto fail;
  r = mp__conn_make(sv[1], duplex, true, false, &b);
  if (r < 0) {
    a->magic = CONN_CLOSED;
    mp__handle_free(a);
    goto fail;
  }
  *conn1 = a;
  *conn2 = b;
  return 0;
fail:
  close(sv[0]);
  close(sv[1]);
  return r;
}

MP_EXPORT int mp_connection_from_fd(int fd, int flags, mp_connection **ret) {
  if (!ret || (flags & ~(MP_CONNECTION_READABLE | MP_CONNECTION_WRITABLE | MP_CONNECTION_PYTHON)))
    return -EINVAL;
  bool py = flags & MP_CONNECTION_PYTHON;
  flags &= ~MP_CONNECTION_PYTHON;
  if (flags == 0)
    flags = MP_CONNECTION_READABLE | MP_CONNECTION_WRITABLE;
  if (fd < 0 || fcntl(fd, F_GETFD) < 0)
    return -EBADF;
  int type = 0, domain = 0;
  socklen_t l = sizeof type;
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &l) < 0)
    return -errno; /* ENOTSOCK for anything but a socket */
  l = sizeof domain;
  if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &l) < 0)
    return -errno;
  bool stream =
      type == SOCK_STREAM && (domain == AF_UNIX || domain == AF_INET || domain == AF_INET6);
  if (!stream && (type != SOCK_SEQPACKET || domain != AF_UNIX || py))
    return -EPROTOTYPE; /* Python's framing needs a byte stream */
  if (stream) {
    /* a listening or unconnected socket has no peer */
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (getpeername(fd, (struct sockaddr *)&ss, &sl) < 0)
      return -errno;
  }
  mp_connection *c;
  int r =
      mp__conn_make(fd, flags & MP_CONNECTION_READABLE, flags & MP_CONNECTION_WRITABLE, stream, &c);
  if (r < 0)
    return r;
  c->py = py;
  int fl = fcntl(fd, F_GETFD);
  if (fl >= 0 && !(fl & FD_CLOEXEC))
    fcntl(fd, F_SETFD, fl | FD_CLOEXEC);
  *ret = c;
  return 0;
}

MP_EXPORT int mp_connection_close(mp_connection *c) {
  if (!c)
    return 0;
  if (!conn_ok(c))
    return -EINVAL;
  part_drop(c);
  free(c->rx.buf);
  if (c->taken.fd >= 0)
    close(c->taken.fd);
  free(c->taken.buf);
  close(c->fd);
  c->magic = CONN_CLOSED;
  mp__handle_free(c); /* never free()d: a second close sees CONN_CLOSED */
  return 0;
}

MP_EXPORT int mp_connection_fileno(mp_connection *c) { return conn_ok(c) ? c->fd : -EINVAL; }

MP_EXPORT int mp_connection_readable(mp_connection *c) {
  return conn_ok(c) ? c->readable : -EINVAL;
}

MP_EXPORT int mp_connection_writable(mp_connection *c) {
  return conn_ok(c) ? c->writable : -EINVAL;
}
