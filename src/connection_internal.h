/* SPDX-License-Identifier: MIT */
/*
 * The connection area's internal header: the record header, the handle
 * (struct mp_connection) with its receiving and sending state, and the
 * helpers of a begun message that the record path and the stream framings
 * share. The area's map is at the top of connection.c; the protocols are in
 * connection_record.c (SOCK_SEQPACKET) and connection_stream.c (byte
 * streams, libmp's framing and Python's).
 */
#ifndef MP_CONNECTION_INTERNAL_H
#define MP_CONNECTION_INTERNAL_H

#include <errno.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include "internal.h"

/* ------------------------------------------ the record header (wire format) */

#define REC_MAGIC 0x6d7063u /* "mpc" */
#define REC_WORD(kind) ((REC_MAGIC << 8) | (uint32_t)(kind))
enum { K_FOREIGN = 0, K_FIRST = 1, K_MORE = 2, K_FD = 3 };
#define FD_CONNECTION 0x100u
#define FD_PYTHON 0x200u /* with FD_CONNECTION: it speaks Python's wire */

struct rec_hdr {
  uint32_t word;   /* REC_WORD(kind) */
  uint32_t sender; /* the sending thread's tid */
  uint64_t value;  /* see the kinds (connection_record.c) */
};
#define HDR ((ssize_t)sizeof(struct rec_hdr))
_Static_assert(sizeof(struct rec_hdr) == 16, "the header is 16 bytes on the wire");

#define MIN_CHUNK 256

/* --------------------------------------------------------------- the handle */

#define CONN_MAGIC 0x6d70434fu /* "mpCO" */
#define CONN_CLOSED 0x6d70dead

/* The receiving side's state: a large message that has begun (its FIRST read)
 * but not ended lives in `struct partial` of the handle, in the receiving
 * process's private memory. While a receive runs it may point into the
 * caller's buffer; a receive that ends early (a timeout) copies it into a
 * malloc'ed buffer the next receive continues from. A record that is not the
 * expected MORE (a FIRST, an FD) ends it: its sender overlapped or abandoned
 * it. MORE records that continue no begun message are discarded.
 *
 * A large message begun but not ended. buf == NULL: none. */
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
 * (see connection_stream.c). Paid before the next message. */
struct stream_tx {
  unsigned char hdr[16]; /* the record's header */
  size_t hdr_left;       /* its last hdr_left bytes are unsent */
  size_t zeros;          /* then this many payload bytes, sent as zeros */
  size_t trl_left;       /* then the last trl_left bytes of TRL_DROP */
};

/* SOCK_SEQPACKET, the receiving side: a record this handle took from the
 * socket although it had peeked at another one (another receiver took that
 * one in between). It is the next record for this handle, served before the
 * socket's, so that no message is lost to the race (connection_record.c). */
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
  bool stream;  /* a byte stream: connection_stream.c */
  bool py;      /* and Python's framing on it (connection_stream.c) */
  bool py_torn; /* a send timed out in the middle of a message */
  _Atomic size_t chunk;
  struct partial part;
  struct taken taken;
  struct stream_rx rx;
  struct stream_tx tx;
};

static inline bool conn_ok(const mp_connection *c) { return c && c->magic == CONN_MAGIC; }

/* Whether the handle holds received bytes that its descriptor does not show:
 * a stream's read-ahead, or a record taken in a race (struct taken). */
static inline bool conn_buffered(const mp_connection *c) {
  return c->rx.len > 0 || c->taken.len > 0;
}

/* -------------------------------------------------------- the begun message */

static inline void part_drop(mp_connection *c) {
  if (c->part.buf && c->part.owned)
    free(c->part.buf);
  c->part.buf = NULL;
}

/* Keep the begun message across the end of this receive: it may point into
 * the caller's buffer, which is not ours to keep. */
static inline void part_keep(mp_connection *c) {
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

/* A message begun by an earlier receive goes on in this receive's buffer:
 * what arrived so far is copied there and the handle's own copy freed.
 * -EMSGSIZE (nothing changed) when the buffer cannot hold the whole message. */
static inline int part_to_caller(struct partial *pt, char *buf, size_t cap) {
  if (pt->total > cap)
    return -EMSGSIZE;
  memcpy(buf, pt->buf, pt->got);
  free(pt->buf);
  pt->buf = buf;
  pt->owned = false;
  return 0;
}

/* ------------------------------------------------------------------ sending */

/* What a send does after sendmsg() failed with errno e, the same for records
 * and streams: 0 to send again (a signal, or room came within the deadline),
 * else the error, -EPIPE for a peer that is gone. Inline: the record path's
 * send calls it. */
static inline int conn_send_failed(const mp_connection *c, int e, const mp__deadline *d) {
  if (e == EINTR)
    return 0;
  if (e == EAGAIN)
    return mp__wait_fd(c->fd, POLLOUT, d);
  if (e == EPIPE || e == ECONNRESET || e == ENOTCONN)
    return -EPIPE;
  return -e;
}

/* -------------------------------------------------------- between the files */

/* Make a handle for a connected socket (connection.c). */
int mp__conn_make(int fd, bool readable, bool writable, bool stream, mp_connection **ret);

/* Stream mode, libmp's framing (connection_stream.c). */
int mp__stream_send(mp_connection *c, const char *p, size_t len, const mp__deadline *d);
ssize_t mp__stream_recv(mp_connection *c, char *buf, size_t cap, bool alloc, void **out,
                        const mp__deadline *d);
int mp__stream_poll(mp_connection *c, const mp__deadline *d);
ssize_t mp__stream_peek_size(mp_connection *c, const mp__deadline *d);
/* Python's wire (connection_stream.c). */
int mp__pywire_send(mp_connection *c, const char *p, size_t len, const mp__deadline *d);
ssize_t mp__pywire_recv(mp_connection *c, char *buf, size_t cap, bool alloc, void **out,
                        const mp__deadline *d);
ssize_t mp__pywire_peek_size(mp_connection *c, const mp__deadline *d);

#endif /* MP_CONNECTION_INTERNAL_H */
