/* SPDX-License-Identifier: MIT */
/*
 * Pipe and Connection: byte messages over a Unix SOCK_SEQPACKET socket pair,
 * and mp_connection_wait() over connections, processes, descriptors and queues.
 *
 * Map of this file:
 *   1. the wire format and why it is SOCK_SEQPACKET
 *   2. handles
 *   3. socket primitives (every syscall turned into -errno, EINTR resumed)
 *   4. sending
 *   5. receiving, and the begun large message
 *   6. stream connections (TCP, Unix SOCK_STREAM)
 *   6b. Python's wire (MP_CONNECTION_PYTHON)
 *   7. file descriptors and connections in transit
 *   8. wait
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
 * The receiving side's state: a large message that has begun (its FIRST read)
 * but not ended lives in `struct partial` of the handle, in the receiving
 * process's private memory. While a receive runs it may point into the
 * caller's buffer; a receive that ends early (a timeout) copies it into a
 * malloc'ed buffer the next receive continues from. A record that is not the
 * expected MORE (a FIRST, an FD) ends it: its sender overlapped or abandoned
 * it. MORE records that continue no begun message are discarded.
 *
 * Stream mode. A connection over a byte stream (a TCP socket from Listener
 * and Client, or any connected SOCK_STREAM socket given to
 * mp_connection_from_fd()) cannot use records, so the same message is framed
 * in the stream as records of its own (section 6), all integers big-endian
 * since the peer may be another machine:
 *   header   16 bytes: REC_WORD(kind), the payload length, a value
 *            (FIRST: the message's length; MORE: 0)
 *   payload  at most STREAM_CHUNK bytes
 *   trailer  4 bytes: TRL_OK, or TRL_DROP for a record its sender abandoned
 * The trailer is what keeps a timed send all-or-nothing: a sender whose
 * deadline passes in the middle of a record cannot take back what the kernel
 * has, so it owes the rest of the record (remembered in the handle) and pays
 * it, with zeros for the payload and TRL_DROP, before its next message; a
 * send that times out between two records of a message owes a MORE of no
 * payload ending in TRL_DROP. A message counts only once its last record's
 * trailer is TRL_OK, and a TRL_DROP ends the begun message, so the receiver
 * drops every abandoned message, and the stream stays in step. The receiver
 * reads into a buffer in the handle (one recv for many small messages, none
 * lost to a timeout); the payload of a large record goes straight into the
 * message. Bytes that are not this framing (a bad word or length) leave the
 * connection unusable: -EPROTO, since a stream cannot find the next message.
 * Descriptors do not cross a stream: fd passing is -EOPNOTSUPP there.
 *
 * Python's wire (section 6b). A stream connection made with
 * MP_CONNECTION_PYTHON speaks multiprocessing.connection's framing instead,
 * so that a Python program is the peer: a message is a 4-byte big-endian
 * signed length and the bytes, or, above 0x7fffffff bytes, the length -1 and
 * then an 8-byte big-endian length (Python 3.8 and later; earlier ones had
 * only the 4-byte form, which is what we send for every message below 2 GiB).
 * There are no records and no trailers, so nothing marks a message its sender
 * abandoned: a send that times out after its first byte went out leaves the
 * connection unable to send (-EPROTO from then on; a Python sender cannot time
 * out, so Python has no better answer). Receiving keeps what arrived of a
 * message in the handle across a timeout, as in stream mode.
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
 *   stream sender, in the middle of a record [connection.stream.send.wrote]
 *     or of the filler that pays an abandoned one
 *     [connection.stream.send.debt_paid_part]: the receiver reads end of
 *     file before that record's trailer, drops the begun message, gets
 *     -EPIPE; the messages before it are whole.
 *   stream receiver, after reading ahead [connection.stream.recv.read_ahead]:
 *     the bytes read ahead died with it (one process receives on a stream);
 *     the sender gets -EPIPE, never SIGPIPE or a hang.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "crash.h"
#include "internal.h"

/* ------------------------------------------------------ 1. the wire format */

#define REC_MAGIC 0x6d7063u /* "mpc" */
#define REC_WORD(kind) ((REC_MAGIC << 8) | (uint32_t)(kind))
enum { K_FOREIGN = 0, K_FIRST = 1, K_MORE = 2, K_FD = 3 };
#define FD_CONNECTION 0x100u
#define FD_PYTHON 0x200u /* with FD_CONNECTION: it speaks Python's wire */

struct rec_hdr {
  uint32_t word;   /* REC_WORD(kind) */
  uint32_t sender; /* the sending thread's tid */
  uint64_t value;  /* see the kinds above */
};
#define HDR ((ssize_t)sizeof(struct rec_hdr))
_Static_assert(sizeof(struct rec_hdr) == 16, "the header is 16 bytes on the wire");

#define MIN_CHUNK 256

/* ---------------------------------------------------------------- 2. handles */

#define CONN_MAGIC 0x6d70434fu /* "mpCO" */
#define CONN_CLOSED 0x6d70dead

/* A large message begun but not ended. buf == NULL: none. */
struct partial {
  char *buf;    /* the message so far; malloc'ed when owned */
  size_t total; /* its length */
  size_t got;   /* bytes received */
  uint32_t sender;
  bool owned; /* buf is ours (else it is the running receive's caller buffer) */
};

/* Stream mode, the receiving side: the bytes read but not yet used, and the
 * record being read. */
struct stream_rx {
  char *buf;       /* STREAM_BUF bytes, allocated by the first receive */
  size_t off, len; /* the unused bytes are buf[off .. off + len) */
  size_t rec_left; /* payload bytes of the current record still to come */
  bool in_rec;     /* a record's header is read and its trailer is not */
};

/* Stream mode, the sending side: what is still owed of an abandoned record
 * (see the file comment). Paid before the next message. */
struct stream_tx {
  unsigned char hdr[16]; /* the record's header */
  size_t hdr_left;       /* its last hdr_left bytes are unsent */
  size_t zeros;          /* then this many payload bytes, sent as zeros */
  size_t trl_left;       /* then the last trl_left bytes of TRL_DROP */
};

/* SOCK_SEQPACKET, the receiving side: a record this handle took from the
 * socket although it had peeked at another one (another receiver took that
 * one in between). It is the next record for this handle, served before the
 * socket's, so that no message is lost to the race (section 5). */
struct taken {
  char *buf;   /* HDR + MP_CONNECTION_ATOMIC_MAX bytes, allocated by the first
                  receive: every read's spare room, then the record kept */
  ssize_t len; /* the record's length (header included); 0: none kept */
  int fd;      /* the descriptor it carried, or -1 */
};

/* Private to one process (copied, with the descriptor, by fork). Fields are
 * constant after creation but `chunk` (shrunk on EMSGSIZE, relaxed: any value
 * is valid), `part`, `taken` and `rx` (used by the one receiving thread) and
 * `tx` (by the one sending thread). */
struct mp_connection {
  uint32_t magic;
  int fd;
  bool readable, writable;
  bool stream; /* a byte stream: section 6 */
  bool py;     /* and Python's framing on it: section 6b */
  bool py_torn; /* a send timed out in the middle of a message (6b) */
  _Atomic size_t chunk;
  struct partial part;
  struct taken taken;
  struct stream_rx rx;
  struct stream_tx tx;
};

static bool conn_ok(const mp_connection *c) { return c && c->magic == CONN_MAGIC; }

/* Whether the handle holds received bytes that its descriptor does not show:
 * a stream's read-ahead, or a record taken in a race (struct taken). */
static bool conn_buffered(const mp_connection *c) { return c->rx.len > 0 || c->taken.len > 0; }

/* Stream mode (section 6). */
static int stream_send(mp_connection *c, const char *p, size_t len, const mp__deadline *d);
static ssize_t stream_recv(mp_connection *c, char *buf, size_t cap, bool alloc, void **out,
                           const mp__deadline *d);
static int stream_poll(mp_connection *c, const mp__deadline *d);
static ssize_t stream_peek_size(mp_connection *c, const mp__deadline *d);
/* Python's wire (section 6b). */
static int py_send(mp_connection *c, const char *p, size_t len, const mp__deadline *d);
static ssize_t py_recv(mp_connection *c, char *buf, size_t cap, bool alloc, void **out,
                       const mp__deadline *d);
static ssize_t py_peek_size(mp_connection *c, const mp__deadline *d);

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

static int conn_make(int fd, bool readable, bool writable, bool stream, mp_connection **ret) {
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

static void part_drop(mp_connection *c) {
  if (c->part.buf && c->part.owned)
    free(c->part.buf);
  c->part.buf = NULL;
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
  int r = conn_make(sv[0], true, duplex, false, &a);
  if (r < 0)
    goto fail;
  r = conn_make(sv[1], duplex, true, false, &b);
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
  int r = conn_make(fd, flags & MP_CONNECTION_READABLE, flags & MP_CONNECTION_WRITABLE, stream, &c);
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

/* ------------------------------------------------------ 3. socket primitives */

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
    int e = errno;
    if (e == EINTR)
      continue;
    if (e == EAGAIN) {
      int r = mp__wait_fd(c->fd, POLLOUT, d);
      if (r < 0)
        return r;
      continue;
    }
    if (e == ECONNRESET || e == ENOTCONN)
      return -EPIPE;
    return -e;
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

/* ---------------------------------------------------------------- 4. sending */

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
    return py_send(c, buf, len, &d);
  if (c->stream)
    return stream_send(c, buf, len, &d);
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

/* -------------------------------------------------------------- 5. receiving */

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

/* Keep the begun message across the end of this receive: it may point into
 * the caller's buffer, which is not ours to keep. */
static void part_keep(mp_connection *c) {
  struct partial *pt = &c->part;
  if (!pt->buf || pt->owned)
    return;
  char *b = malloc(pt->total);
  if (!b) {
    pt->buf = NULL; /* cannot keep it: the message is lost to this receiver */
    return;
  }
  memcpy(b, pt->buf, pt->got);
  pt->buf = b;
  pt->owned = true;
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

/* A message begun by an earlier receive goes on in this receive's buffer:
 * what arrived so far is copied there and the handle's own copy freed.
 * -EMSGSIZE (nothing changed) when the buffer cannot hold the whole message. */
static int part_to_caller(struct partial *pt, char *buf, size_t cap) {
  if (pt->total > cap)
    return -EMSGSIZE;
  memcpy(buf, pt->buf, pt->got);
  free(pt->buf);
  pt->buf = buf;
  pt->owned = false;
  return 0;
}

/* Receive one message into buf (cap bytes), or, when alloc, into a new buffer
 * stored in *out. */
static ssize_t recv_message(mp_connection *c, char *buf, size_t cap, bool alloc, void **out,
                            const mp__deadline *d) {
  if (c->py)
    return py_recv(c, buf, cap, alloc, out, d);
  if (c->stream)
    return stream_recv(c, buf, cap, alloc, out, d);
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
    return stream_poll(c, &d);
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
    return py_peek_size(c, &d);
  if (c->stream)
    return stream_peek_size(c, &d);
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

/* --------------------------------------------------- 6. stream connections */

#define STREAM_CHUNK ((size_t)256 * 1024) /* payload per record we send */
#define STREAM_PAY_MAX ((size_t)1 << 30)  /* payload per record we accept */
#define STREAM_BUF ((size_t)64 * 1024)    /* the receive buffer */
#define SHDR ((size_t)16)
#define STRL ((size_t)4)
/* The trailers differ in their last byte only, so a sender that tore a
 * TRL_OK can always finish it as a TRL_DROP. */
#define TRL_OK 0x6d707401u   /* "mpt" 1 */
#define TRL_DROP 0x6d707400u /* "mpt" 0 */

static void put32(unsigned char *p, uint32_t v) {
  for (int i = 3; i >= 0; i--, v >>= 8)
    p[i] = (unsigned char)v;
}
static void put64(unsigned char *p, uint64_t v) {
  for (int i = 7; i >= 0; i--, v >>= 8)
    p[i] = (unsigned char)v;
}
static uint32_t get32(const unsigned char *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static uint64_t get64(const unsigned char *p) { return (uint64_t)get32(p) << 32 | get32(p + 4); }

static void stream_hdr(unsigned char *h, int kind, size_t pay, uint64_t value) {
  put32(h, REC_WORD(kind));
  put32(h + 4, (uint32_t)pay);
  put64(h + 8, value);
}

/* Write the iovecs whole, within the deadline. *done counts the bytes
 * written, also on failure. 0, -ETIMEDOUT, -EPIPE or another negative errno. */
static int stream_write(mp_connection *c, struct iovec *iov, int n, size_t *done,
                        const mp__deadline *d) {
  struct msghdr m;
  memset(&m, 0, sizeof m);
  m.msg_iov = iov;
  m.msg_iovlen = (size_t)n;
  /* as send_record(): forever blocks in the kernel, else poll() waits */
  int flags = MSG_NOSIGNAL | (d->forever ? 0 : MSG_DONTWAIT);
  *done = 0;
  for (;;) {
    while (m.msg_iovlen > 0 && m.msg_iov->iov_len == 0) {
      m.msg_iov++;
      m.msg_iovlen--;
    }
    if (m.msg_iovlen == 0)
      return 0;
    ssize_t w = sendmsg(c->fd, &m, flags);
    if (w >= 0) {
      MP__CRASH(CONN_STREAM_SEND_WROTE);
      size_t k = (size_t)w;
      *done += k;
      while (k > 0) {
        size_t t = k < m.msg_iov->iov_len ? k : m.msg_iov->iov_len;
        m.msg_iov->iov_base = (char *)m.msg_iov->iov_base + t;
        m.msg_iov->iov_len -= t;
        k -= t;
        if (m.msg_iov->iov_len == 0) {
          m.msg_iov++;
          m.msg_iovlen--;
        }
      }
      continue;
    }
    int e = errno;
    if (e == EINTR)
      continue;
    if (e == EAGAIN) {
      int r = mp__wait_fd(c->fd, POLLOUT, d);
      if (r < 0)
        return r;
      continue;
    }
    if (e == EPIPE || e == ECONNRESET || e == ENOTCONN)
      return -EPIPE;
    return -e;
  }
}

/* Pay what an abandoned record still owes: the rest of its header, zeros for
 * its payload, and TRL_DROP. 0 when nothing is owed any more. */
static int stream_pay_debt(mp_connection *c, const mp__deadline *d) {
  static const unsigned char zeros[4096];
  struct stream_tx *tx = &c->tx;
  for (;;) {
    size_t done = 0;
    int r = 0;
    if (tx->hdr_left) {
      struct iovec iov = {tx->hdr + SHDR - tx->hdr_left, tx->hdr_left};
      r = stream_write(c, &iov, 1, &done, d);
      tx->hdr_left -= done;
    } else if (tx->zeros) {
      struct iovec iov[16];
      size_t left = tx->zeros;
      int n = 0;
      for (; n < 16 && left > 0; n++) {
        size_t t = left < sizeof zeros ? left : sizeof zeros;
        iov[n] = (struct iovec){(void *)zeros, t};
        left -= t;
      }
      r = stream_write(c, iov, n, &done, d);
      tx->zeros -= done;
    } else if (tx->trl_left) {
      unsigned char t[STRL];
      put32(t, TRL_DROP);
      struct iovec iov = {t + STRL - tx->trl_left, tx->trl_left};
      r = stream_write(c, &iov, 1, &done, d);
      tx->trl_left -= done;
    } else {
      return 0;
    }
    if (done > 0)
      MP__CRASH(CONN_STREAM_DEBT_PAID_PART);
    if (r < 0)
      return r;
  }
}

static int stream_send(mp_connection *c, const char *p, size_t len, const mp__deadline *d) {
  int r = stream_pay_debt(c, d);
  if (r < 0)
    return r; /* nothing of this message went out */
  unsigned char h[SHDR], t[STRL];
  put32(t, TRL_OK);
  size_t off = 0;
  int kind = K_FIRST;
  for (;;) {
    size_t n = len - off < STREAM_CHUNK ? len - off : STREAM_CHUNK;
    stream_hdr(h, kind, n, kind == K_FIRST ? len : 0);
    struct iovec iov[3] = {{h, SHDR}, {(void *)(p + off), n}, {t, STRL}};
    size_t done;
    r = stream_write(c, iov, 3, &done, d);
    if (r < 0) {
      if (done > 0 || off > 0) {
        /* The message has begun: owe the rest of this record, or a MORE of
         * no payload, each ending in TRL_DROP (file comment). */
        struct stream_tx *tx = &c->tx;
        if (done == 0) {
          n = 0;
          stream_hdr(h, K_MORE, 0, 0);
        }
        memcpy(tx->hdr, h, SHDR);
        tx->hdr_left = done < SHDR ? SHDR - done : 0;
        tx->zeros = done <= SHDR ? n : done < SHDR + n ? SHDR + n - done : 0;
        tx->trl_left = done <= SHDR + n ? STRL : SHDR + n + STRL - done;
      }
      return r;
    }
    off += n;
    if (off == len)
      return 0;
    kind = K_MORE;
  }
}

static void rx_consume(struct stream_rx *rx, size_t n) {
  rx->off += n;
  rx->len -= n;
  if (rx->len == 0)
    rx->off = 0;
}

/* Read until at least `want` (<= STREAM_BUF) bytes are buffered. 0, -EPIPE at
 * end of file, -ETIMEDOUT, or another negative errno. */
static int rx_fill(mp_connection *c, size_t want, const mp__deadline *d) {
  struct stream_rx *rx = &c->rx;
  if (!rx->buf && !(rx->buf = malloc(STREAM_BUF)))
    return -ENOMEM;
  int flags = MSG_DONTWAIT; /* then poll a while, then sleep (mp__recv_wait) */
  bool spun = false;
  int resets = 0;
  while (rx->len < want) {
    if (rx->off + want > STREAM_BUF) {
      memmove(rx->buf, rx->buf + rx->off, rx->len);
      rx->off = 0;
    }
    ssize_t r = recv(c->fd, rx->buf + rx->off + rx->len, STREAM_BUF - rx->off - rx->len, flags);
    if (r > 0) {
      MP__CRASH(CONN_STREAM_RECV_READ_AHEAD);
      rx->len += (size_t)r;
      continue;
    }
    if (r == 0)
      return -EPIPE;
    switch (errno) {
    case EINTR: continue;
    case ECONNRESET:
      /* reported once, after the data sent to us; then end of file */
      if (++resets > 1)
        return -EPIPE;
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
  return 0;
}

/* Read the next `n` payload bytes into dst (NULL: drop them), from the
 * buffer first. Returns how many (> 0) or a negative errno. */
static ssize_t rx_payload(mp_connection *c, char *dst, size_t n, const mp__deadline *d) {
  struct stream_rx *rx = &c->rx;
  if (rx->len == 0 && dst) {
    /* straight into the message */
    int flags = d->forever ? 0 : MSG_DONTWAIT;
    for (;;) {
      ssize_t r = recv(c->fd, dst, n, flags);
      if (r > 0)
        return r;
      if (r == 0)
        return -EPIPE;
      if (errno == EINTR || errno == ECONNRESET)
        break; /* rx_fill() knows how to take these */
      if (errno != EAGAIN)
        return -errno;
      int w = mp__wait_fd(c->fd, POLLIN, d);
      if (w < 0)
        return w;
    }
  }
  if (rx->len == 0) {
    int r = rx_fill(c, 1, d);
    if (r < 0)
      return r;
  }
  size_t t = n < rx->len ? n : rx->len;
  if (dst)
    memcpy(dst, rx->buf + rx->off, t);
  rx_consume(rx, t);
  return (ssize_t)t;
}

struct shdr {
  int kind; /* K_FIRST or K_MORE */
  size_t pay;
  uint64_t value;
};

/* Check the buffered header (SHDR bytes at least). 0 or -EPROTO. */
static int rx_header(const struct stream_rx *rx, struct shdr *h) {
  const unsigned char *p = (const unsigned char *)rx->buf + rx->off;
  uint32_t word = get32(p);
  h->kind = (int)(word & 0xff);
  h->pay = get32(p + 4);
  h->value = get64(p + 8);
  if ((word >> 8) != REC_MAGIC || h->pay > STREAM_PAY_MAX)
    return -EPROTO;
  if (h->kind == K_FIRST) {
    /* a message of several records starts with a non-empty one */
    if (h->value > SSIZE_MAX || h->pay > h->value || (h->pay == 0 && h->value > 0))
      return -EPROTO;
    return 0;
  }
  return h->kind == K_MORE && h->value == 0 ? 0 : -EPROTO;
}

/* Read the trailer of the current record. 1 for TRL_OK, 0 for TRL_DROP. */
static int rx_trailer(mp_connection *c, const mp__deadline *d) {
  int r = rx_fill(c, STRL, d);
  if (r < 0)
    return r;
  uint32_t t = get32((const unsigned char *)c->rx.buf + c->rx.off);
  if (t != TRL_OK && t != TRL_DROP)
    return -EPROTO;
  rx_consume(&c->rx, STRL);
  c->rx.in_rec = false;
  return t == TRL_OK;
}

/* End of file: what is begun will never end. */
static void rx_eof(mp_connection *c) {
  part_drop(c);
  c->rx.len = c->rx.off = c->rx.rec_left = 0;
  c->rx.in_rec = false;
}

/* Whether a begun message kept from an earlier receive is still going (or
 * has ended and waits for a buffer large enough). Reads, without waiting, what
 * has arrived of it into its own buffer: its current record may be one its
 * sender abandoned (TRL_DROP), and a header that is not its MORE, or end of
 * file, shows it will never end; then it is dropped. A message whose last
 * trailer was TRL_OK is whole: what follows it is the next message, never a
 * sign that this one was given up. */
static bool stream_part_alive(mp_connection *c) {
  struct stream_rx *rx = &c->rx;
  struct partial *pt = &c->part;
  mp__deadline now;
  mp__deadline_init(&now, MP_NOWAIT);
  while (pt->buf) {
    int r;
    if (pt->got == pt->total && !rx->in_rec)
      break; /* whole, waiting for room (-EMSGSIZE) */
    if (rx->rec_left > 0) {
      ssize_t n = rx_payload(c, pt->buf + pt->got, rx->rec_left, &now);
      if (n > 0) {
        rx->rec_left -= (size_t)n;
        pt->got += (size_t)n;
      }
      r = n < 0 ? (int)n : 0;
    } else if (rx->in_rec) {
      r = rx_trailer(c, &now);
      if (r == 0)
        part_drop(c); /* its sender gave it up */
    } else {
      struct shdr h;
      r = rx_fill(c, SHDR, &now);
      if (r == 0 && (rx_header(rx, &h) < 0 || h.kind != K_MORE))
        part_drop(c); /* a new message: this one was given up */
      if (r == 0)
        break;
    }
    if (r == -EPIPE)
      rx_eof(c);
    if (r < 0)
      break;
  }
  return pt->buf != NULL;
}

static ssize_t stream_recv(mp_connection *c, char *buf, size_t cap, bool alloc, void **out,
                           const mp__deadline *d) {
  struct partial *pt = &c->part;
  struct stream_rx *rx = &c->rx;
  if (!alloc && stream_part_alive(c)) {
    int r = part_to_caller(pt, buf, cap);
    if (r < 0)
      return r;
  }
  ssize_t ret;
  for (;;) {
    if (pt->buf && pt->got == pt->total && !rx->in_rec) {
      ret = (ssize_t)pt->total;
      if (alloc)
        *out = pt->buf;
      pt->buf = NULL;
      return ret;
    }
    if (rx->rec_left > 0) {
      /* payload of the begun message, or of a record that continues none */
      ssize_t n = rx_payload(c, pt->buf ? pt->buf + pt->got : NULL, rx->rec_left, d);
      if (n < 0) {
        ret = n;
        break;
      }
      rx->rec_left -= (size_t)n;
      if (pt->buf)
        pt->got += (size_t)n;
      continue;
    }
    if (rx->in_rec) {
      int t = rx_trailer(c, d);
      if (t < 0) {
        ret = t;
        break;
      }
      if (t == 0)
        part_drop(c); /* its sender gave it up */
      continue;
    }
    int r = rx_fill(c, SHDR, d);
    struct shdr h;
    if (r == 0)
      r = rx_header(rx, &h);
    if (r < 0) {
      ret = r;
      break;
    }
    if (h.kind == K_MORE) {
      rx_consume(rx, SHDR);
      if (pt->buf && h.pay > pt->total - pt->got)
        part_drop(c); /* cannot be its continuation */
      rx->rec_left = h.pay;
      rx->in_rec = true;
      continue;
    }
    part_drop(c); /* a new message: a begun one was given up */
    size_t total = (size_t)h.value;
    if (!alloc && total > cap) {
      ret = -EMSGSIZE;
      break;
    }
    if (h.pay == total && SHDR + total + STRL <= STREAM_BUF) {
      /* the whole message in one record: take it from the buffer */
      r = rx_fill(c, SHDR + total + STRL, d);
      if (r < 0) {
        ret = r;
        break;
      }
      const char *p = rx->buf + rx->off;
      uint32_t t = get32((const unsigned char *)p + SHDR + total);
      if (t != TRL_OK && t != TRL_DROP) {
        ret = -EPROTO;
        break;
      }
      if (t == TRL_DROP) {
        rx_consume(rx, SHDR + total + STRL);
        continue;
      }
      char *dst = alloc ? malloc(total ? total : 1) : buf;
      if (!dst) {
        rx_consume(rx, SHDR + total + STRL); /* skipped, as below */
        ret = -ENOMEM;
        break;
      }
      memcpy(dst, p + SHDR, total);
      rx_consume(rx, SHDR + total + STRL);
      if (alloc)
        *out = dst;
      return (ssize_t)total;
    }
    char *dst = alloc ? malloc(total) : buf;
    rx_consume(rx, SHDR);
    rx->rec_left = h.pay;
    rx->in_rec = true;
    if (!dst) {
      /* Skip it: kept, it would fail every later receive the same way (a
       * peer may declare any length). Its payload and MOREs continue no
       * message and are dropped as they come. */
      ret = -ENOMEM;
      break;
    }
    *pt = (struct partial){dst, total, 0, 0, alloc};
  }
  if (ret == -EPIPE)
    rx_eof(c);
  else
    part_keep(c);
  return ret;
}

static int stream_poll(mp_connection *c, const mp__deadline *d) {
  if (c->rx.len > 0)
    return 1;
  int r = mp__wait_fd(c->fd, POLLIN, d);
  if (r == 0)
    return 1;
  return r == -ETIMEDOUT ? 0 : r;
}

static ssize_t stream_peek_size(mp_connection *c, const mp__deadline *d) {
  struct stream_rx *rx = &c->rx;
  for (;;) {
    if (stream_part_alive(c))
      return (ssize_t)c->part.total;
    /* drop the records that continue no message until a FIRST */
    int r = 0;
    if (rx->rec_left > 0) {
      ssize_t n = rx_payload(c, NULL, rx->rec_left, d);
      if (n > 0)
        rx->rec_left -= (size_t)n;
      r = n < 0 ? (int)n : 0;
    } else if (rx->in_rec) {
      r = rx_trailer(c, d);
      r = r < 0 ? r : 0;
    } else {
      struct shdr h;
      r = rx_fill(c, SHDR, d);
      if (r == 0)
        r = rx_header(rx, &h);
      if (r == 0 && h.kind == K_FIRST)
        return (ssize_t)h.value;
      if (r == 0) {
        rx_consume(rx, SHDR);
        rx->rec_left = h.pay;
        rx->in_rec = true;
      }
    }
    if (r < 0) {
      if (r == -EPIPE)
        rx_eof(c);
      return r;
    }
  }
}

/* ----------------------------------------------------- 6b. Python's wire */

/* Python's length word for "an 8-byte length follows" (3.8 and later). */
#define PY_LONG 0xffffffffu
#define PY_SHORT_MAX ((size_t)0x7fffffff)

static int py_send(mp_connection *c, const char *p, size_t len, const mp__deadline *d) {
  if (c->py_torn)
    return -EPROTO;
  unsigned char h[12];
  size_t hl = 4;
  if (len > PY_SHORT_MAX) {
    put32(h, PY_LONG);
    put64(h + 4, len);
    hl = 12;
  } else {
    put32(h, (uint32_t)len);
  }
  /* one sendmsg for header and bytes: no Nagle delay between them on TCP */
  struct iovec iov[2] = {{h, hl}, {(void *)p, len}};
  size_t done;
  int r = stream_write(c, iov, 2, &done, d);
  if (r < 0 && done > 0)
    c->py_torn = true; /* the peer would read our next bytes as this message's */
  return r;
}

/* Parse the header at the front of the read-ahead, reading until it is
 * whole. *hl is its length (4 or 12), *total the message's. */
static int py_header(mp_connection *c, size_t *hl, size_t *total, const mp__deadline *d) {
  int r = rx_fill(c, 4, d);
  if (r < 0)
    return r;
  const unsigned char *p = (const unsigned char *)c->rx.buf + c->rx.off;
  uint32_t w = get32(p);
  if (w != PY_LONG) {
    if (w > PY_SHORT_MAX)
      return -EPROTO; /* a negative length */
    *hl = 4;
    *total = w;
    return 0;
  }
  if ((r = rx_fill(c, 12, d)) < 0)
    return r;
  p = (const unsigned char *)c->rx.buf + c->rx.off;
  uint64_t v = get64(p + 4);
  if (v > SSIZE_MAX)
    return -EPROTO;
  *hl = 12;
  *total = (size_t)v;
  return 0;
}

/* A message being skipped (-ENOMEM) is c->rx.rec_left bytes still to drop;
 * a message being received is c->part. */
static ssize_t py_recv(mp_connection *c, char *buf, size_t cap, bool alloc, void **out,
                       const mp__deadline *d) {
  struct partial *pt = &c->part;
  struct stream_rx *rx = &c->rx;
  if (!alloc && pt->buf) {
    int r = part_to_caller(pt, buf, cap);
    if (r < 0)
      return r;
  }
  ssize_t ret;
  for (;;) {
    if (pt->buf) {
      if (pt->got == pt->total) {
        ret = (ssize_t)pt->total;
        if (alloc)
          *out = pt->buf;
        pt->buf = NULL;
        return ret;
      }
      ssize_t n = rx_payload(c, pt->buf + pt->got, pt->total - pt->got, d);
      if (n < 0) {
        ret = n;
        break;
      }
      pt->got += (size_t)n;
      continue;
    }
    if (rx->rec_left > 0) {
      ssize_t n = rx_payload(c, NULL, rx->rec_left, d);
      if (n < 0) {
        ret = n;
        break;
      }
      rx->rec_left -= (size_t)n;
      continue;
    }
    size_t hl, total;
    int r = py_header(c, &hl, &total, d);
    if (r < 0) {
      ret = r;
      break;
    }
    if (!alloc && total > cap) {
      ret = -EMSGSIZE; /* nothing consumed */
      break;
    }
    rx_consume(rx, hl);
    char *dst = alloc ? malloc(total ? total : 1) : buf;
    if (!dst) {
      rx->rec_left = total; /* skipped: see mp_connection_recv_alloc() */
      ret = -ENOMEM;
      break;
    }
    *pt = (struct partial){dst, total, 0, 0, alloc};
  }
  if (ret == -EPIPE) {
    rx_eof(c);
  } else if (pt->buf) {
    size_t left = pt->total - pt->got;
    part_keep(c);
    if (!pt->buf)
      rx->rec_left = left; /* could not keep it: skip its rest, stay in step */
  }
  return ret;
}

static ssize_t py_peek_size(mp_connection *c, const mp__deadline *d) {
  if (c->part.buf)
    return (ssize_t)c->part.total;
  struct stream_rx *rx = &c->rx;
  while (rx->rec_left > 0) {
    ssize_t n = rx_payload(c, NULL, rx->rec_left, d);
    if (n < 0) {
      if (n == -EPIPE)
        rx_eof(c);
      return n;
    }
    rx->rec_left -= (size_t)n;
  }
  size_t hl, total;
  int r = py_header(c, &hl, &total, d);
  if (r == -EPIPE)
    rx_eof(c);
  return r < 0 ? r : (ssize_t)total;
}

/* ------------------------------------------ 7. descriptors and connections */

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
  r = conn_make(fd, what & MP_CONNECTION_READABLE, what & MP_CONNECTION_WRITABLE,
                type == SOCK_STREAM, ret);
  if (r < 0)
    close(fd);
  else
    (*ret)->py = type == SOCK_STREAM && (what & FD_PYTHON);
  return r;
}

/* ------------------------------------------------------------------- 8. wait */

/*
 * mp_connection_wait(): descriptors (connections, process sentinels, raw fds)
 * go to poll(); queues have none, so the caller registers with each queue
 * (mp__queue_watch_begin(), which hands out a futex word that every put and
 * close changes) and sleeps on the words:
 *  - queues only (up to 128): the calling thread sleeps in futex_waitv;
 *  - queues and descriptors: helper threads sleep in futex_waitv on up to 127
 *    queue words each plus a private `stop` word, and write an eventfd that the
 *    caller's poll() includes; the caller then sets `stop`, wakes and joins
 *    them. futex_waitv checks every word atomically against its snapshot, so
 *    neither a put nor the stop can slip in between a check and the sleep.
 * After any wake-up everything is checked again from scratch (a wake-up proves
 * nothing); the deadline is the caller's throughout.
 */

#define GROUP_MAX (MP__FUTEX_WAITV_MAX - 1) /* queue words per helper, + stop */

struct helper {
  _Atomic uint32_t stop; /* 0 until the caller is done; a futex word */
  int efd;
  int err; /* written by the helper before it writes efd */
  unsigned n;
  _Atomic uint32_t **words; /* its n queue words */
  uint32_t *snaps;          /* and their snapshots */
  pthread_t thread;
  bool started;
};

static void *helper_main(void *arg) {
  struct helper *hp = arg;
  _Atomic uint32_t *words[MP__FUTEX_WAITV_MAX];
  uint32_t snaps[MP__FUTEX_WAITV_MAX];
  words[0] = &hp->stop;
  snaps[0] = 0;
  for (unsigned i = 0; i < hp->n; i++) {
    words[i + 1] = hp->words[i];
    snaps[i + 1] = hp->snaps[i];
  }
  for (;;) {
    if (atomic_load(&hp->stop))
      return NULL;
    bool changed = false;
    for (unsigned i = 1; i <= hp->n; i++)
      changed |= atomic_load(words[i]) != snaps[i];
    if (changed)
      break;
    int r = mp__futex_waitv(words, snaps, hp->n + 1, NULL);
    if (r < 0) {
      hp->err = r; /* no futex_waitv, or a fault: report it to the caller */
      break;
    }
  }
  uint64_t one = 1;
  ssize_t w = write(hp->efd, &one, sizeof one);
  (void)w; /* adding 1 to an eventfd fails only on overflow */
  return NULL;
}

static void helpers_stop(struct helper *hp, size_t nh) {
  for (size_t i = 0; i < nh; i++) {
    if (!hp[i].started)
      continue;
    atomic_store(&hp[i].stop, 1);
    mp__futex_wake(&hp[i].stop, 1);
  }
  for (size_t i = 0; i < nh; i++)
    if (hp[i].started)
      pthread_join(hp[i].thread, NULL);
}

/* Whether a polled entry counts as ready. */
static bool revents_ready(short revents) { return revents & (POLLIN | POLLHUP | POLLERR); }

/* poll() the entries until one is ready or the deadline passes (a timeout of
 * 0 polls once). Returns how many are ready, -ETIMEDOUT, -EBADF for a closed
 * descriptor, or another negative errno. */
static int poll_until(struct pollfd *pfds, size_t n, const mp__deadline *d) {
  for (;;) {
    int r = poll(pfds, (nfds_t)n, mp__deadline_poll_ms(d));
    if (r < 0 && errno != EINTR)
      return -errno;
    if (r > 0) {
      int ready = 0;
      for (size_t i = 0; i < n; i++) {
        if (pfds[i].revents & POLLNVAL)
          return -EBADF;
        ready += revents_ready(pfds[i].revents);
      }
      if (ready)
        return ready;
    }
    if (mp__deadline_passed(d))
      return -ETIMEDOUT;
  }
}

/* Sleep until a descriptor in pfds[0..nfd) is ready, a queue word changes, or
 * the deadline. pfds has room for one more entry (the eventfd). Returns 0 or a
 * negative errno (-ETIMEDOUT included). */
static int sleep_mixed(struct pollfd *pfds, size_t nfd, _Atomic uint32_t **words, uint32_t *snaps,
                       size_t nq, const mp__deadline *d) {
  size_t nh = (nq + GROUP_MAX - 1) / GROUP_MAX;
  struct helper *hp = calloc(nh, sizeof *hp);
  if (!hp)
    return -ENOMEM;
  int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (efd < 0) {
    int e = errno;
    free(hp);
    return -e;
  }
  int r = 0;
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, 64 * 1024);
  /* Signals are for the caller's thread: the helpers start with all blocked. */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  for (size_t i = 0; i < nh && r == 0; i++) {
    size_t left = nq - i * GROUP_MAX;
    hp[i].efd = efd;
    hp[i].words = words + i * GROUP_MAX;
    hp[i].snaps = snaps + i * GROUP_MAX;
    hp[i].n = (unsigned)(left < GROUP_MAX ? left : GROUP_MAX);
    r = -pthread_create(&hp[i].thread, &attr, helper_main, &hp[i]);
    hp[i].started = r == 0;
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  pthread_attr_destroy(&attr);
  if (r == 0) {
    pfds[nfd] = (struct pollfd){.fd = efd, .events = POLLIN, .revents = 0};
    r = poll_until(pfds, nfd + 1, d);
    if (r > 0)
      r = 0;
  }
  helpers_stop(hp, nh);
  for (size_t i = 0; i < nh; i++)
    if (hp[i].err < 0 && r == 0)
      r = hp[i].err;
  close(efd);
  free(hp);
  return r;
}

MP_EXPORT int mp_connection_wait(mp_wait_item *items, size_t n, double timeout) {
  if (!items && n)
    return -EINVAL;
  mp__deadline d;
  if (mp__deadline_init(&d, timeout) < 0)
    return -EINVAL;
  if (n == 0 && d.forever)
    return -EINVAL;

  size_t nfd = 0, nq = 0;
  for (size_t i = 0; i < n; i++) {
    mp_wait_item *it = &items[i];
    switch (it->kind) {
    case MP_WAIT_CONNECTION:
      if (!conn_ok(it->obj))
        return -EINVAL;
      if (!((mp_connection *)it->obj)->readable)
        return -EBADF;
      nfd++;
      break;
    case MP_WAIT_PROCESS: {
      if (!it->obj)
        return -EINVAL;
      int s = mp_process_sentinel(it->obj);
      if (s < 0)
        return s;
      nfd++;
      break;
    }
    case MP_WAIT_FD:
      if (it->fd < 0)
        return -EBADF;
      nfd++;
      break;
    case MP_WAIT_QUEUE:
      if (!it->obj)
        return -EINVAL;
      nq++;
      break;
    default: return -EINVAL;
    }
  }
  /* A connection may hold received bytes in its handle (conn_buffered()),
   * where poll() cannot see them: such a connection is ready now, so only
   * look at the rest without waiting. */
  size_t nbuf = 0;
  for (size_t i = 0; i < n; i++)
    if (items[i].kind == MP_WAIT_CONNECTION && conn_buffered(items[i].obj))
      nbuf++;
  if (nbuf > 0)
    mp__deadline_init(&d, MP_NOWAIT);

  /* One allocation: pollfds (+1 for the helpers' eventfd), queue words, the
   * item index of each pollfd and queue, snapshots and per-queue flags. */
  size_t sz = (nfd + 1) * sizeof(struct pollfd) + nq * sizeof(_Atomic uint32_t *) +
              (nfd + nq) * sizeof(size_t) + nq * (sizeof(uint32_t) + 2);
  char *mem = malloc(sz);
  if (!mem)
    return -ENOMEM;
  struct pollfd *pfds = (struct pollfd *)mem;
  _Atomic uint32_t **words = (_Atomic uint32_t **)(pfds + nfd + 1);
  size_t *fdidx = (size_t *)(words + nq);
  size_t *qidx = fdidx + nfd;
  uint32_t *snaps = (uint32_t *)(qidx + nq);
  unsigned char *qready = (unsigned char *)(snaps + nq);
  unsigned char *watching = qready + nq;

  size_t f = 0, q = 0;
  for (size_t i = 0; i < n; i++) {
    mp_wait_item *it = &items[i];
    int fd;
    switch (it->kind) {
    case MP_WAIT_CONNECTION: fd = ((mp_connection *)it->obj)->fd; break;
    case MP_WAIT_PROCESS: fd = mp_process_sentinel(it->obj); break;
    case MP_WAIT_FD: fd = it->fd; break;
    default:
      qidx[q] = i;
      qready[q] = watching[q] = 0;
      q++;
      continue;
    }
    pfds[f] = (struct pollfd){.fd = fd, .events = POLLIN, .revents = 0};
    fdidx[f++] = i;
  }

  int ret;
  if (nq == 0) {
    /* Descriptors only: one poll() with the deadline is the whole wait. */
    ret = poll_until(pfds, nfd, &d);
    goto out;
  }
  for (;;) {
    /* Check everything without sleeping... */
    int nready = 0;
    ret = 0;
    for (size_t j = 0; j < nq && ret == 0; j++) {
      int r = mp__queue_watch_begin(items[qidx[j]].obj, &words[j], &snaps[j]);
      if (r < 0)
        ret = r;
      qready[j] = r == 1;
      watching[j] = r == 0;
      nready += r == 1;
    }
    if (ret < 0)
      break;
    if (nfd > 0) {
      mp__deadline now;
      mp__deadline_init(&now, MP_NOWAIT);
      int r = poll_until(pfds, nfd, &now);
      if (r < 0 && r != -ETIMEDOUT) {
        ret = r;
        break;
      }
      nready += r > 0 ? r : 0;
    }
    if (nready > 0) {
      ret = nready;
      break;
    }
    if (d.nowait || mp__deadline_passed(&d)) {
      ret = -ETIMEDOUT;
      break;
    }
    /* ...then sleep until something may have changed, and look again. With
     * queues in the set, never longer than a queue consumer would (100 ms): a
     * producer killed between its commit and its wake-up leaves a message
     * that only a fresh look finds, as in mp_queue_get(). */
    mp__deadline nap = d;
    if (nq > 0) {
      int64_t cap = mp__now_ns() + 100000000;
      if (d.forever || (int64_t)d.at.tv_sec * 1000000000 + d.at.tv_nsec > cap) {
        nap.forever = false;
        nap.at.tv_sec = (time_t)(cap / 1000000000);
        nap.at.tv_nsec = (long)(cap % 1000000000);
      }
    }
    int r;
    if (nfd == 0 && nq == 1)
      r = mp__futex_wait(words[0], snaps[0], &nap);
    else if (nfd == 0 && nq <= MP__FUTEX_WAITV_MAX)
      r = mp__futex_waitv(words, snaps, (unsigned)nq, &nap);
    else
      r = sleep_mixed(pfds, nfd, words, snaps, nq, &nap);
    for (size_t j = 0; j < nq; j++) {
      if (watching[j])
        mp__queue_watch_end(items[qidx[j]].obj);
      watching[j] = 0;
    }
    if (r < 0 && r != -ETIMEDOUT) {
      ret = r;
      break;
    }
  }
  for (size_t j = 0; j < nq; j++)
    if (watching[j])
      mp__queue_watch_end(items[qidx[j]].obj);
out:
  if (ret > 0 || (nbuf > 0 && ret == -ETIMEDOUT)) {
    /* (a look that found nothing left every revents and qready clear) */
    for (size_t i = 0; i < n; i++)
      items[i].ready = 0;
    for (size_t i = 0; i < nfd; i++)
      if (revents_ready(pfds[i].revents))
        items[fdidx[i]].ready = 1;
    for (size_t j = 0; j < nq; j++)
      if (qready[j])
        items[qidx[j]].ready = 1;
    if (nbuf > 0) {
      ret = 0;
      for (size_t i = 0; i < n; i++) {
        if (items[i].kind == MP_WAIT_CONNECTION && conn_buffered(items[i].obj))
          items[i].ready = 1;
        ret += items[i].ready;
      }
    }
  }
  free(mem);
  return ret;
}
