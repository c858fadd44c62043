/* SPDX-License-Identifier: MIT */
/*
 * libmp-mpi: the worker, the loop every worker rank runs (mp__mpi_serve),
 * under the roles and wire format of pool_internal.h.
 *
 * Map of this file:
 *   mp_mpi_pool_out_*  an apply function's result buffer
 *   sends in flight    struct sendq: a worker's sends and their buffers
 *   result batches     struct outb: results gathered into one message
 *   running a chunk    run_rec(); start_pool(): a pool's START handshake
 *   mp__mpi_serve      the loop: START, batches, END, EXIT
 * No crash points.
 */
#include <errno.h>
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pool_internal.h"

struct mp_mpi_pool_out {
  void *buf;
  size_t len, cap;
};

int mp_mpi_pool_out_alloc(mp_mpi_pool_out *out, size_t size, void **buf) {
  if (!out || !buf || size > MSG_MAX)
    return -EINVAL;
  if (size > out->cap) {
    void *b = NULL;
    if (posix_memalign(&b, 16, size ? size : 1))
      return -ENOMEM;
    free(out->buf);
    out->buf = b;
    out->cap = size;
  }
  out->len = size;
  *buf = out->buf;
  return 0;
}

int mp_mpi_pool_out_set(mp_mpi_pool_out *out, const void *data, size_t len) {
  if (!out || (!data && len))
    return -EINVAL;
  void *b;
  int r = mp_mpi_pool_out_alloc(out, len, &b);
  if (r < 0)
    return r;
  if (len)
    memcpy(b, data, len);
  return 0;
}

/* Sends a worker has in flight, each with the buffer to free when done. */
struct sendq {
  MPI_Request *req;
  void **buf;
  int n, cap;
};

static int sendq_add(struct sendq *q, MPI_Request r, void *buf) {
  if (q->n == q->cap) {
    int cap = q->cap ? 2 * q->cap : 16;
    MPI_Request *nr = realloc(q->req, (size_t)cap * sizeof *nr);
    if (!nr)
      return -ENOMEM;
    q->req = nr;
    void **nb = realloc(q->buf, (size_t)cap * sizeof *nb);
    if (!nb)
      return -ENOMEM;
    q->buf = nb;
    q->cap = cap;
  }
  q->req[q->n] = r;
  q->buf[q->n++] = buf;
  return 0;
}

static void sendq_progress(struct sendq *q, int wait) {
  if (!q->n)
    return;
  if (wait)
    MPI_Waitall(q->n, q->req, MPI_STATUSES_IGNORE);
  else {
    int flag;
    MPI_Testall(q->n, q->req, &flag, MPI_STATUSES_IGNORE);
    if (!flag)
      return;
  }
  for (int i = 0; i < q->n; i++)
    free(q->buf[i]);
  q->n = 0;
}

/* A result batch being built by a worker. */
struct outb {
  char *buf;
  size_t used;
  struct payloads ext;
};

static int outb_flush(MPI_Comm comm, struct outb *o, struct sendq *q) {
  if (!o->used)
    return 0;
  MPI_Request r;
  if (MPI_Isend(o->buf, (int)o->used, MPI_BYTE, 0, TAG_RBATCH, comm, &r) != MPI_SUCCESS)
    return -EPROTO;
  if (sendq_add(q, r, o->buf) < 0)
    return -ENOMEM;
  for (int i = 0; i < o->ext.n; i++) {
    if (MPI_Isend(o->ext.p[i], (int)o->ext.len[i], MPI_BYTE, 0, TAG_RDATA, comm, &r) != MPI_SUCCESS)
      return -EPROTO;
    if (sendq_add(q, r, o->ext.p[i]) < 0)
      return -ENOMEM;
  }
  o->ext.n = 0;
  o->used = 0;
  o->buf = malloc(BATCH_MAX);
  return o->buf ? 0 : -ENOMEM;
}

/* Room for a result record with `inl` inline bytes; flushes first if the
 * batch is full. */
static struct rrec *outb_reserve(MPI_Comm comm, struct outb *o, struct sendq *q, size_t inl) {
  size_t need = sizeof(struct rrec) + pad8(inl);
  if (o->used + need > BATCH_MAX && outb_flush(comm, o, q) < 0)
    return NULL;
  struct rrec *rr = (struct rrec *)(o->buf + o->used);
  o->used += need;
  return rr;
}

/* Run one chunk. Returns 0, or a negative code when the worker itself cannot
 * go on (out of memory, MPI failure). */
static int run_rec(MPI_Comm comm, const struct rec *rc, const char *inl, struct outb *o,
                   struct sendq *q, char **ibuf, size_t *icap) {
  const char *data = inl;
  if (rc->flags & F_EXT) {
    if (rc->len > *icap) {
      free(*ibuf);
      *ibuf = malloc(rc->len);
      *icap = *ibuf ? rc->len : 0;
      if (!*ibuf)
        return -ENOMEM;
    }
    if (MPI_Recv(*ibuf, (int)rc->len, MPI_BYTE, 0, TAG_DATA, comm, MPI_STATUS_IGNORE) !=
        MPI_SUCCESS)
      return -EPROTO;
    data = *ibuf;
  }
  void *fn, *ctx;
  int st = mpi__ref_resolve(&rc->fn, 1, &fn);
  if (st == 0)
    st = mpi__ref_resolve(&rc->ctx, 0, &ctx);
  if (st < 0) {
    struct rrec *rr = outb_reserve(comm, o, q, 0);
    if (!rr)
      return -ENOMEM;
    *rr = (struct rrec){.seq = rc->seq, .status = st, .flags = F_WHOLE};
    return 0;
  }
  if (rc->kind == K_MAP) {
    size_t rlen = (size_t)rc->count * rc->result_size;
    int ext = rlen > INLINE_MAX;
    struct rrec *rr = outb_reserve(comm, o, q, ext ? 0 : rlen);
    if (!rr)
      return -ENOMEM;
    char *res = ext ? malloc(rlen ? rlen : 1) : (char *)(rr + 1);
    if (!res)
      return -ENOMEM;
    mp_mpi_pool_map_fn f;
    memcpy(&f, &fn, sizeof f);
    uint64_t i;
    int s = 0;
    for (i = 0; i < rc->count; i++) {
      s = f(data + i * rc->item_size, res + i * rc->result_size, ctx);
      if (s < 0)
        break;
    }
    /* Inline, the record keeps the room it reserved (rank 0 reads only the
     * `done` results of a failed chunk); a message of its own is cut short. */
    *rr = (struct rrec){.seq = rc->seq,
                        .status = s < 0 ? s : 0,
                        .done = i,
                        .len = s < 0 && ext ? i * rc->result_size : rlen,
                        .flags = ext ? F_EXT : 0};
    /* A large result goes at once: rank 0 posts its receive (into the
     * caller's array) when the record arrives, and the transfer overlaps
     * with this worker's next chunk. */
    if (ext)
      return mp__mpi_payloads_add(&o->ext, res, rr->len) < 0 ? -ENOMEM : outb_flush(comm, o, q);
    return 0;
  }
  mp_mpi_pool_out out = {0};
  mp_mpi_pool_apply_fn f;
  memcpy(&f, &fn, sizeof f);
  int s = f(data, rc->len, &out, ctx);
  size_t len = out.len;
  int ext = len > INLINE_MAX;
  struct rrec *rr = outb_reserve(comm, o, q, ext ? 0 : len);
  if (!rr) {
    free(out.buf);
    return -ENOMEM;
  }
  *rr = (struct rrec){.seq = rc->seq, .status = s, .len = len, .flags = ext ? F_EXT : 0};
  if (ext)
    return mp__mpi_payloads_add(&o->ext, out.buf, len) < 0 ? -ENOMEM : outb_flush(comm, o, q);
  if (len)
    memcpy(rr + 1, out.buf, len);
  free(out.buf);
  return 0;
}

static int start_pool(MPI_Comm comm, const char *msg, size_t len) {
  struct ctrl c;
  memcpy(&c, msg, sizeof c);
  int st = len >= sizeof c + c.len ? mpi__modtab_match(msg + sizeof c, (size_t)c.len) : -EPROTO;
  if (st == 0 && c.init.mod != MPI__REF_NULL) {
    void *fn, *arg;
    st = mpi__ref_resolve(&c.init, 1, &fn);
    if (st == 0)
      st = mpi__ref_resolve(&c.initargs, 0, &arg);
    if (st == 0) {
      void (*f)(void *);
      memcpy(&f, &fn, sizeof f);
      f(arg);
    }
  }
  struct ctrl reply = {.op = CTRL_READY, .status = st, .pid = (int32_t)getpid()};
  gethostname(reply.host, sizeof reply.host - 1);
  return MPI_Send(&reply, sizeof reply, MPI_BYTE, 0, TAG_CTRL, comm) == MPI_SUCCESS ? 0 : -EPROTO;
}

/* The loop of a worker: pools start (CTRL_START) and end (CTRL_END) until
 * CTRL_EXIT. Returns 0 at EXIT, negative when the worker cannot go on. */
int mp__mpi_serve(MPI_Comm comm) {
  struct sendq q = {0};
  struct outb o = {.buf = malloc(BATCH_MAX)};
  char *in = malloc(BATCH_MAX), *ibuf = NULL;
  size_t icap = 0;
  int r = 0;
  if (!o.buf || !in) {
    r = -ENOMEM;
    goto out;
  }
  struct backoff bo = {0};
  for (;;) {
    int flag = 0;
    MPI_Message m;
    MPI_Status st;
    if (MPI_Improbe(0, MPI_ANY_TAG, comm, &flag, &m, &st) != MPI_SUCCESS) {
      r = -EPROTO;
      break;
    }
    if (!flag) {
      sendq_progress(&q, 0);
      mp__mpi_backoff_wait(&bo);
      continue;
    }
    mp__mpi_backoff_reset(&bo);
    int cnt;
    MPI_Get_count(&st, MPI_BYTE, &cnt);
    if (st.MPI_TAG == TAG_CTRL) {
      char *msg = malloc(cnt > 0 ? (size_t)cnt : 1);
      if (!msg) {
        r = -ENOMEM;
        break;
      }
      MPI_Mrecv(msg, cnt, MPI_BYTE, &m, MPI_STATUS_IGNORE);
      struct ctrl c;
      memcpy(&c, msg, sizeof c);
      if (c.op == CTRL_START)
        r = start_pool(comm, msg, (size_t)cnt);
      free(msg);
      if (r < 0 || c.op == CTRL_EXIT)
        break;
      continue; /* CTRL_END: wait for the next pool */
    }
    if (st.MPI_TAG != TAG_BATCH || cnt > BATCH_MAX) {
      fprintf(stderr, "libmp-mpi: worker: unexpected message (tag %d, %d bytes)\n", st.MPI_TAG,
              cnt);
      r = -EPROTO;
      break;
    }
    MPI_Mrecv(in, cnt, MPI_BYTE, &m, MPI_STATUS_IGNORE);
    for (size_t off = 0; off + sizeof(struct rec) <= (size_t)cnt;) {
      struct rec rc;
      memcpy(&rc, in + off, sizeof rc);
      off += sizeof rc;
      const char *inl = in + off;
      if (!(rc.flags & F_EXT))
        off += pad8(rc.len);
      r = run_rec(comm, &rc, inl, &o, &q, &ibuf, &icap);
      if (r < 0)
        goto out;
    }
    r = outb_flush(comm, &o, &q);
    if (r < 0)
      break;
  }
out:
  sendq_progress(&q, 1);
  free(q.req);
  free(q.buf);
  free(o.buf);
  free(o.ext.p);
  free(o.ext.len);
  free(in);
  free(ibuf);
  if (r < 0)
    fprintf(stderr, "libmp-mpi: worker stops: %s\n", strerror(-r));
  return r;
}
