/* SPDX-License-Identifier: MIT */
/*
 * Connections over a byte stream, in libmp's framing or in Python's. The
 * public calls, and the SOCK_SEQPACKET record path that this framing mirrors,
 * are in connection_record.c; the handle's stream state (struct stream_rx,
 * struct stream_tx) is in connection_internal.h; the area's map is at the top
 * of connection.c.
 *
 * Map of this file:
 *   1. stream connections: libmp's framing (sending, paying what an abandoned
 *      record owes, receiving through the read-ahead buffer)
 *   2. Python's wire (MP_CONNECTION_PYTHON)
 * Crash points: connection.stream.send.wrote,
 * connection.stream.send.debt_paid_part, connection.stream.recv.read_ahead
 * (the table at the end of this comment).
 *
 * Stream mode. A connection over a byte stream (a TCP socket from Listener
 * and Client, or any connected SOCK_STREAM socket given to
 * mp_connection_from_fd()) cannot use records, so the same message is framed
 * in the stream as records of its own (section 1), all integers big-endian
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
 * Python's wire (section 2). A stream connection made with
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
#include <limits.h>
#include <poll.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "connection_internal.h"
#include "crash.h"
#include "internal.h"

/* ---------------------------------------------------- 1. stream connections */

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
  /* as send_record() (connection_record.c): forever blocks in the kernel, else poll() waits */
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
    int r = conn_send_failed(c, errno, d);
    if (r < 0)
      return r;
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

int mp__stream_send(mp_connection *c, const char *p, size_t len, const mp__deadline *d) {
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

ssize_t mp__stream_recv(mp_connection *c, char *buf, size_t cap, bool alloc, void **out,
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

int mp__stream_poll(mp_connection *c, const mp__deadline *d) {
  if (c->rx.len > 0)
    return 1;
  int r = mp__wait_fd(c->fd, POLLIN, d);
  if (r == 0)
    return 1;
  return r == -ETIMEDOUT ? 0 : r;
}

ssize_t mp__stream_peek_size(mp_connection *c, const mp__deadline *d) {
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

/* --------------------------------------------------------- 2. Python's wire */

/* Python's length word for "an 8-byte length follows" (3.8 and later). */
#define PY_LONG 0xffffffffu
#define PY_SHORT_MAX ((size_t)0x7fffffff)

int mp__pywire_send(mp_connection *c, const char *p, size_t len, const mp__deadline *d) {
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
ssize_t mp__pywire_recv(mp_connection *c, char *buf, size_t cap, bool alloc, void **out,
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

ssize_t mp__pywire_peek_size(mp_connection *c, const mp__deadline *d) {
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
