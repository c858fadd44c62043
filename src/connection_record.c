/* SPDX-License-Identifier: MIT */
/*
 * Connections, the record path: messages over a Unix SOCK_SEQPACKET socket
 * (mp_pipe_new(), and a SOCK_SEQPACKET descriptor given to
 * mp_connection_from_fd()). The public send, receive, poll and peek calls of
 * every connection are here too, so that a pipe's message never calls into
 * another file; they hand a stream connection to connection_stream.c. The
 * handle and the record header are in connection_internal.h; the area's map
 * is at the top of connection.c.
 *
 * Map of this file:
 *   1. the wire format and why it is SOCK_SEQPACKET (this comment)
 *   2. socket primitives (every syscall turned into -errno, EINTR resumed)
 *   3. sending
 *   4. receiving, and the begun large message (its state: struct partial,
 *      connection_internal.h)
 *   5. file descriptors and connections in transit
 * Crash points: connection.send.record_sent, connection.recv.peeked,
 * connection.recv.record_read (the table at the end of this comment).
 *
 * 1. Wire format. Every record (one sendmsg, one SOCK_SEQPACKET packet) starts
 * with a 16-byte `struct rec_hdr`: a magic and kind word, the sending thread's
 * tid, and a value. Kinds:
 *   FIRST  the first record of a message; value = the message's length; the
 *          payload is its first bytes (all of them when they fit in a chunk).
 *   MORE   a later record of a message; value = the offset of its payload in
 *          the message; same sender tid as the FIRST.
 *   FD     one descriptor in SCM_RIGHTS and no payload; value = 0 for a plain
 *          descriptor, FD_CONNECTION | direction flags for a connection.
 * A chunk is at most MP_CONNECTION_ATOMIC_MAX bytes of payload, less when the
 * socket's send buffer is small.
 *
 * Why SOCK_SEQPACKET rather than a byte stream with a length prefix: the
 * kernel delivers each record whole or not at all, so
 *  - a message of one record is never torn, even with several processes
 *    sending through copies of one end, or one of them killed mid-send;
 *  - a large message's records carry their sender and offset, so the receiver
 *    can tell a continuation from the remains of a message whose sender died
 *    or timed out: it drops those and keeps reading, where a byte stream would
 *    stay out of step for good;
 *  - descriptors ride on their own record and can never be swallowed by a
 *    read that runs past a message boundary;
 *  - a peek at the next 16 bytes always sees a whole header.
 * A receive is a MSG_PEEK of the header (to check the caller's room and the
 * kind before anything is consumed) and one recvmsg of that record;
 * measured here this ping-pongs as fast as a bare stream socketpair. The
 * recvmsg always has room for a whole record of ours and its descriptor: when
 * another receiver took the peeked record in between, the one read instead is
 * kept in the handle (`struct taken`) and is this receiver's next record, so
 * a message of one record reaches exactly one receiver, never none.
 *
 * What a SIGKILL leaves (crash points in brackets). Nothing shared is in
 * memory: the kernel keeps the socket, and a process's handle dies with it.
 *   sender, between records of a message [connection.send.record_sent]:
 *     the records sent are in the socket; a receiver drops them when the
 *     next FIRST (another sender's) or end of file shows the message will
 *     not end. The messages before it are whole; none after it is lost.
 *   receiver, after the peek [connection.recv.peeked]: nothing consumed;
 *     another receiver of the end gets every message.
 *   receiver, after a record was read [connection.recv.record_read]: that
 *     record (a whole message, or a part of one held in the dead handle)
 *     died with the process it was delivered to; another receiver of the
 *     end discards the rest as MOREs that continue nothing, and gets the
 *     next message whole.
 */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "connection_internal.h"
#include "crash.h"
#include "internal.h"

/* ----------------------------------------------------- 2. socket primitives */

/* Send one record: header, payload, and a descriptor when fd >= 0. A
 * SOCK_SEQPACKET send is whole or nothing. */
static int send_record(mp_connection *c, const struct rec_hdr *h, const void *payload, size_t len,
                       int fd, const mp__deadline *d) {
  struct iovec iov[2] = {{(void *)h, sizeof *h}, {(void *)payload, len}};
  union {
    char buf[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
  } u;
  struct msghdr m;
  memset(&m, 0, sizeof m);
  m.msg_iov = iov;
  m.msg_iovlen = len ? 2 : 1;
  if (fd >= 0) {
    memset(&u, 0, sizeof u);
    m.msg_control = u.buf;
    m.msg_controllen = sizeof u.buf;
    struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &fd, sizeof fd);
  }
  /* Forever: let the kernel block (one syscall). Otherwise never block inside
   * the kernel, so that poll() carries the deadline. */
  int flags = MSG_NOSIGNAL | (d->forever ? 0 : MSG_DONTWAIT);
  for (;;) {
    if (sendmsg(c->fd, &m, flags) >= 0) {
      MP__CRASH(CONN_SEND_RECORD_SENT);
      return 0;
    }
    int r = conn_send_failed(c, errno, d);
    if (r < 0)
      return r;
  }
}

/* Whether the peer is gone for good (every copy closed). */
static bool at_eof(int fd) {
  struct pollfd p = {.fd = fd, .events = POLLIN | POLLRDHUP, .revents = 0};
  return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP));
}

/* Wait for a record and peek at its header. Returns the record's whole length
 * (possibly < HDR for a foreign record), or -EPIPE at end of file,
 * -ETIMEDOUT, or another negative errno. */
static ssize_t peek_record(mp_connection *c, struct rec_hdr *h, const mp__deadline *d) {
  if (c->taken.len > 0) {
    memcpy(h, c->taken.buf, sizeof *h);
    return c->taken.len;
  }
  /* Look without blocking, then poll a while, then sleep (mp__recv_wait). */
  int flags = MSG_PEEK | MSG_TRUNC | MSG_DONTWAIT;
  bool spun = false;
  for (;;) {
    ssize_t r = recv(c->fd, h, sizeof *h, flags);
    if (r > 0) {
      MP__CRASH(CONN_RECV_PEEKED);
      return r;
    }
    if (r == 0) {
      if (at_eof(c->fd))
        return -EPIPE;
      return 0; /* an empty record: foreign */
    }
    switch (errno) {
    case EINTR: continue;
    case ECONNRESET:
      /* The peer closed with data of ours unread. The error is reported once;
       * what was sent to us is still there, so look again. */
      continue;
    case EAGAIN: {
      int w = mp__recv_wait(c->fd, d, &flags, &spun);
      if (w < 0)
        return w;
      continue;
    }
    default: return -errno;
    }
  }
}

/* Consume the next record, whatever it is (its descriptors are closed). */
static void discard_record(mp_connection *c) {
  if (c->taken.len > 0) {
    if (c->taken.fd >= 0)
      close(c->taken.fd);
    c->taken.fd = -1;
    c->taken.len = 0;
    return;
  }
  ssize_t r;
  do
    r = recv(c->fd, NULL, 0, MSG_DONTWAIT | MSG_TRUNC);
  while (r < 0 && errno == EINTR);
}

/* Read the record just peeked as *h, with `len` bytes of payload, into dst.
 * With fds != NULL, also receive its descriptor (up to *nfds; any other is
 * closed) and store their count in *nfds. Returns 0; -EAGAIN when the record
 * read is not the one peeked; -ENOMEM; another negative errno when the socket
 * fails.
 *
 * The record read differs from the one peeked only when another receiver
 * (another thread, or a process holding a copy of this end) took the peeked
 * one in between; that is misuse for a message of several records (the file
 * comment of mp/connection.h: one receiver at a time), but each message of
 * one record must still reach exactly one receiver. So the read always has
 * room for a whole record of ours (the spare buffer after dst) and a
 * descriptor, and a record that is not the peeked one is kept in
 * `c->taken`, whole, as this handle's next record: -EAGAIN then means "look
 * again", and the next look finds it there. Only a record that cannot be
 * libmp's (too long, or shorter than a header) is dropped, as any foreign
 * record is. */
static int read_record(mp_connection *c, const struct rec_hdr *h, void *dst, size_t len, int *fds,
                       int *nfds) {
  struct taken *tk = &c->taken;
  int n = 0;
  if (tk->len > 0) {
    /* peek_record() showed this one: serve it */
    if (tk->len != HDR + (ssize_t)len || memcmp(tk->buf, h, sizeof *h))
      return -EAGAIN; /* (not reached: the header came from here) */
    if (len)
      memcpy(dst, tk->buf + HDR, len);
    if (tk->fd >= 0) {
      if (fds && *nfds > 0)
        fds[n++] = tk->fd;
      else
        close(tk->fd);
    }
    tk->fd = -1;
    tk->len = 0;
    if (fds)
      *nfds = n;
    return 0;
  }
  if (!tk->buf && !(tk->buf = malloc((size_t)HDR + MP_CONNECTION_ATOMIC_MAX)))
    return -ENOMEM;
  struct rec_hdr got;
  char *spare = tk->buf + HDR;
  struct iovec iov[3] = {{&got, sizeof got}, {dst, len}, {spare, MP_CONNECTION_ATOMIC_MAX}};
  union {
    char buf[CMSG_SPACE(sizeof(int) * 8)];
    struct cmsghdr align;
  } u;
  struct msghdr m;
  memset(&m, 0, sizeof m);
  m.msg_iov = iov;
  m.msg_iovlen = 3;
  /* always room for descriptors: a record taken by mistake keeps its own */
  m.msg_control = u.buf;
  m.msg_controllen = sizeof u.buf;
  ssize_t r;
  do
    r = recvmsg(c->fd, &m, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  while (r < 0 && errno == EINTR);
  if (r < 0)
    return errno == EAGAIN || errno == ECONNRESET ? -EAGAIN : -errno;
  int got_fds[8];
  for (struct cmsghdr *cm = CMSG_FIRSTHDR(&m); cm; cm = CMSG_NXTHDR(&m, cm)) {
    if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
      continue;
    size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < k; i++) {
      int fd;
      memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof fd);
      if (n < 8)
        got_fds[n++] = fd;
      else
        close(fd);
    }
  }
  MP__CRASH(CONN_RECV_RECORD_READ);
  bool same = r == HDR + (ssize_t)len && !(m.msg_flags & MSG_TRUNC) && !memcmp(&got, h, sizeof got);
  int keep = same && fds ? (n < *nfds ? n : *nfds) : 0;
  if (!same && r >= HDR && r - HDR <= MP_CONNECTION_ATOMIC_MAX && !(m.msg_flags & MSG_TRUNC)) {
    /* Another receiver took the peeked record: keep this one, whole. Its
     * payload is dst[0..k) then spare[0..pay-k): make it one piece. */
    size_t pay = (size_t)(r - HDR), k = pay < len ? pay : len;
    memmove(spare + k, spare, pay - k);
    if (k)
      memcpy(spare, dst, k);
    memcpy(tk->buf, &got, sizeof got);
    tk->len = r;
    tk->fd = n > 0 ? got_fds[0] : -1;
    keep = n > 0 ? 1 : 0; /* got_fds[0] is kept, the rest closed */
    for (int i = keep; i < n; i++)
      close(got_fds[i]);
    return -EAGAIN;
  }
  for (int i = 0; i < keep; i++)
    fds[i] = got_fds[i];
  for (int i = keep; i < n; i++)
    close(got_fds[i]);
  if (!same)
    return -EAGAIN; /* a foreign record: dropped, as next_record() would */
  if (fds)
    *nfds = keep;
  return 0;
}

/* --------------------------------------------------------------- 3. sending */

static int send_message(mp_connection *c, const char *p, size_t len, const mp__deadline *d) {
  struct rec_hdr h = {REC_WORD(K_FIRST), (uint32_t)mp__tid(), len};
  size_t off = 0;
  for (;;) {
    /* relaxed: a hint; any chunk size makes a valid message */
    size_t chunk = atomic_load_explicit(&c->chunk, memory_order_relaxed);
    size_t n = len - off < chunk ? len - off : chunk;
    int r = send_record(c, &h, p + off, n, -1, d);
    if (r == -EMSGSIZE && chunk > MIN_CHUNK) {
      /* the send buffer was made smaller than a record: use smaller ones */
      atomic_store_explicit(&c->chunk, chunk / 2, memory_order_relaxed);
      continue;
    }
    if (r < 0)
      return r;
    off += n;
    if (off == len)
      return 0;
    h.word = REC_WORD(K_MORE);
    h.value = off;
  }
}

MP_EXPORT int mp_connection_send(mp_connection *c, const void *buf, size_t len, double timeout) {
  if (!conn_ok(c) || (!buf && len) || len > SSIZE_MAX)
    return -EINVAL;
  if (!c->writable)
    return -EBADF;
  mp__deadline d;
  if (mp__deadline_init(&d, timeout) < 0)
    return -EINVAL;
  if (c->py)
    return mp__pywire_send(c, buf, len, &d);
  if (c->stream)
    return mp__stream_send(c, buf, len, &d);
  return send_message(c, buf, len, &d);
}

MP_EXPORT int mp_connection_send_bytes(mp_connection *c, const void *buf, size_t buflen,
                                       size_t offset, size_t size, double timeout) {
  if (!conn_ok(c) || (!buf && buflen))
    return -EINVAL;
  if (offset > buflen)
    return -EINVAL;
  if (size == MP_CONNECTION_TO_END)
    size = buflen - offset;
  else if (size > buflen - offset)
    return -EINVAL;
  return mp_connection_send(c, (const char *)buf + offset, size, timeout);
}

/* ------------------------------------------------------------- 4. receiving */

static int classify(const struct rec_hdr *h, ssize_t len) {
  if (len < HDR || (h->word >> 8) != REC_MAGIC)
    return K_FOREIGN;
  size_t pay = (size_t)(len - HDR);
  switch (h->word & 0xff) {
  case K_FIRST:
    /* a message of several records starts with a non-empty one */
    if (h->value > SSIZE_MAX || pay > h->value || (pay == 0 && h->value > 0))
      return K_FOREIGN;
    return K_FIRST;
  case K_MORE: return pay > 0 ? K_MORE : K_FOREIGN;
  case K_FD: return pay == 0 ? K_FD : K_FOREIGN;
  default: return K_FOREIGN;
  }
}

/* Wait for the next record that counts: a FIRST, an FD, or the MORE that
 * continues the begun message. Foreign records and stray MOREs are discarded;
 * a FIRST or FD ends the begun message. Returns the kind, with the header in
 * *h and the payload length in *pay, or a negative errno. */
static int next_record(mp_connection *c, struct rec_hdr *h, size_t *pay, const mp__deadline *d) {
  for (;;) {
    ssize_t r = peek_record(c, h, d);
    if (r < 0)
      return (int)r;
    int kind = classify(h, r);
    struct partial *pt = &c->part;
    if (kind == K_MORE) {
      if (!pt->buf || h->sender != pt->sender || h->value != pt->got ||
          (size_t)(r - HDR) > pt->total - pt->got)
        kind = K_FOREIGN; /* the remains of an abandoned or overlapped message */
    } else if (kind != K_FOREIGN && pt->buf) {
      part_drop(c); /* its sender died, timed out or overlapped another send */
    }
    if (kind == K_FOREIGN) {
      discard_record(c);
      continue;
    }
    *pay = (size_t)(r - HDR);
    return kind;
  }
}

/* Whether a begun message kept from an earlier receive is still going. A
 * new message or descriptor next (or end of file) shows that its sender gave
 * it up, and it is dropped. Never waits. */
static bool part_alive(mp_connection *c) {
  if (!c->part.buf)
    return false;
  mp__deadline now;
  mp__deadline_init(&now, MP_NOWAIT);
  struct rec_hdr h;
  size_t pay;
  if (next_record(c, &h, &pay, &now) == -EPIPE)
    part_drop(c);
  return c->part.buf != NULL;
}

/* Receive one message into buf (cap bytes), or, when alloc, into a new buffer
 * stored in *out. */
static ssize_t recv_message(mp_connection *c, char *buf, size_t cap, bool alloc, void **out,
                            const mp__deadline *d) {
  if (c->py)
    return mp__pywire_recv(c, buf, cap, alloc, out, d);
  if (c->stream)
    return mp__stream_recv(c, buf, cap, alloc, out, d);
  struct partial *pt = &c->part;
  if (!alloc && part_alive(c)) {
    int r = part_to_caller(pt, buf, cap);
    if (r < 0)
      return r;
  }
  ssize_t ret;
  for (;;) {
    struct rec_hdr h;
    size_t pay;
    int kind = next_record(c, &h, &pay, d);
    if (kind < 0) {
      ret = kind;
      break;
    }
    if (kind == K_FD) {
      ret = -EBADMSG;
      break;
    }
    if (kind == K_FIRST) {
      size_t total = (size_t)h.value;
      if (!alloc && total > cap) {
        ret = -EMSGSIZE;
        break;
      }
      char *dst = alloc ? malloc(total ? total : 1) : buf;
      if (alloc && !dst) {
        /* Skip it: kept, it would fail every later receive the same way
         * (a peer may declare any length). Its MOREs are then strays. */
        discard_record(c);
        ret = -ENOMEM;
        break;
      }
      int r = read_record(c, &h, dst, pay, NULL, NULL);
      if (r < 0) {
        if (alloc)
          free(dst);
        if (r == -EAGAIN)
          continue;
        ret = r;
        break;
      }
      *pt = (struct partial){dst, total, pay, h.sender, alloc};
    } else {
      int r = read_record(c, &h, pt->buf + pt->got, pay, NULL, NULL);
      if (r == -EAGAIN)
        continue;
      if (r < 0) {
        ret = r;
        break;
      }
      pt->got += pay;
    }
    if (pt->got == pt->total) {
      ret = (ssize_t)pt->total;
      if (alloc)
        *out = pt->buf;
      pt->buf = NULL;
      return ret;
    }
  }
  if (ret == -EPIPE)
    part_drop(c); /* its sender is gone: it will never end */
  else
    part_keep(c);
  return ret;
}

static int recv_begin(mp_connection *c, mp__deadline *d, double timeout) {
  if (!conn_ok(c))
    return -EINVAL;
  if (!c->readable)
    return -EBADF;
  if (mp__deadline_init(d, timeout) < 0)
    return -EINVAL;
  return 0;
}

MP_EXPORT ssize_t mp_connection_recv(mp_connection *c, void *buf, size_t cap, double timeout) {
  mp__deadline d;
  if (!buf && cap)
    return -EINVAL;
  int r = recv_begin(c, &d, timeout);
  if (r < 0)
    return r;
  return recv_message(c, buf, cap, false, NULL, &d);
}

MP_EXPORT ssize_t mp_connection_recv_alloc(mp_connection *c, void **ret, double timeout) {
  mp__deadline d;
  if (!ret)
    return -EINVAL;
  int r = recv_begin(c, &d, timeout);
  if (r < 0)
    return r;
  return recv_message(c, NULL, 0, true, ret, &d);
}

MP_EXPORT int mp_connection_poll(mp_connection *c, double timeout) {
  mp__deadline d;
  int r = recv_begin(c, &d, timeout);
  if (r < 0)
    return r;
  if (c->stream)
    return mp__stream_poll(c, &d);
  struct rec_hdr h;
  size_t pay;
  r = next_record(c, &h, &pay, &d);
  if (r >= 0 || r == -EPIPE)
    return 1;
  return r == -ETIMEDOUT ? 0 : r;
}

MP_EXPORT ssize_t mp_connection_peek_size(mp_connection *c, double timeout) {
  mp__deadline d;
  int r = recv_begin(c, &d, timeout);
  if (r < 0)
    return r;
  if (c->py)
    return mp__pywire_peek_size(c, &d);
  if (c->stream)
    return mp__stream_peek_size(c, &d);
  if (part_alive(c))
    return (ssize_t)c->part.total;
  struct rec_hdr h;
  size_t pay;
  r = next_record(c, &h, &pay, &d);
  if (r < 0)
    return r;
  if (r == K_FD)
    return -EBADMSG;
  /* next_record() gives a MORE only for a begun message, and there is none */
  return (ssize_t)h.value;
}

/* ------------------------------------------- 5. descriptors and connections */

static int send_fd(mp_connection *c, int fd, uint64_t what, double timeout) {
  if (c->stream)
    return -EOPNOTSUPP; /* SCM_RIGHTS needs a Unix socket and its records */
  if (!c->writable)
    return -EBADF;
  if (fd < 0)
    return -EBADF;
  mp__deadline d;
  if (mp__deadline_init(&d, timeout) < 0)
    return -EINVAL;
  struct rec_hdr h = {REC_WORD(K_FD), (uint32_t)mp__tid(), what};
  return send_record(c, &h, NULL, 0, fd, &d);
}

MP_EXPORT int mp_connection_send_fd(mp_connection *c, int fd, double timeout) {
  if (!conn_ok(c))
    return -EINVAL;
  return send_fd(c, fd, 0, timeout);
}

MP_EXPORT int mp_connection_send_connection(mp_connection *c, mp_connection *what, double timeout) {
  if (!conn_ok(c) || !conn_ok(what))
    return -EINVAL;
  uint64_t v = FD_CONNECTION | (what->readable ? MP_CONNECTION_READABLE : 0) |
               (what->writable ? MP_CONNECTION_WRITABLE : 0) | (what->py ? FD_PYTHON : 0);
  return send_fd(c, what->fd, v, timeout);
}

/* Receive an FD record; with want_conn, only one that carries a connection. */
static int recv_fd(mp_connection *c, bool want_conn, int *fd, uint64_t *what, double timeout) {
  mp__deadline d;
  int r = recv_begin(c, &d, timeout);
  if (r < 0)
    return r;
  if (c->stream)
    return -EOPNOTSUPP;
  for (;;) {
    struct rec_hdr h;
    size_t pay;
    int kind = next_record(c, &h, &pay, &d);
    if (kind < 0) {
      if (kind == -EPIPE)
        part_drop(c);
      return kind;
    }
    if (kind != K_FD || (want_conn && !(h.value & FD_CONNECTION)))
      return -EBADMSG;
    int fds[1], n = 1;
    r = read_record(c, &h, NULL, 0, fds, &n);
    if (r == -EAGAIN)
      continue;
    if (r < 0)
      return r;
    if (n == 0)
      return -EMFILE; /* the kernel could not install it (MSG_CTRUNC) */
    *fd = fds[0];
    *what = h.value;
    return 0;
  }
}

MP_EXPORT int mp_connection_recv_fd(mp_connection *c, int *ret, double timeout) {
  if (!ret)
    return -EINVAL;
  int fd;
  uint64_t what;
  int r = recv_fd(c, false, &fd, &what, timeout);
  if (r < 0)
    return r;
  *ret = fd;
  return 0;
}

MP_EXPORT int mp_connection_recv_connection(mp_connection *c, mp_connection **ret, double timeout) {
  if (!ret)
    return -EINVAL;
  int fd;
  uint64_t what;
  int r = recv_fd(c, true, &fd, &what, timeout);
  if (r < 0)
    return r;
  int type = 0;
  socklen_t l = sizeof type;
  getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &l);
  r = mp__conn_make(fd, what & MP_CONNECTION_READABLE, what & MP_CONNECTION_WRITABLE,
                    type == SOCK_STREAM, ret);
  if (r < 0)
    close(fd);
  else
    (*ret)->py = type == SOCK_STREAM && (what & FD_PYTHON);
  return r;
}
