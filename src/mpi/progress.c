/* SPDX-License-Identifier: MIT */
/*
 * libmp-mpi: rank 0's progress thread, the one thread that talks MPI while a
 * pool runs (Roles and Scheduling in pool_internal.h). Everything here runs
 * on that thread, under the pool mutex unless said otherwise.
 *
 * Map of this file:
 *   requests     the MPI requests in flight and what each completion means
 *   receive      result batches: match to the per-worker FIFO, chunk_done()
 *   dispatch     deal chunks into batches, window per worker, send
 *   completion   deliver() finished jobs outside the mutex; terminate's drop
 *   polling      MPI_Testsome in posting order, the result-batch receives
 *   dead workers pidfds of the workers on this host
 *   the thread   mp__mpi_progress_main: the loop, then the pool's end
 * No crash points.
 */
#include <errno.h>
#include <mpi.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pool_internal.h"

static int add_req(mp_mpi_pool *p, MPI_Request r, struct op op) {
  if (p->nreq == p->reqcap) {
    int cap = p->reqcap ? 2 * p->reqcap : 64;
    MPI_Request *nr = realloc(p->reqs, (size_t)cap * sizeof *nr);
    if (!nr)
      return -ENOMEM;
    p->reqs = nr;
    struct op *no = realloc(p->ops, (size_t)cap * sizeof *no);
    if (!no)
      return -ENOMEM;
    p->ops = no;
    int *ni = realloc(p->idx, (size_t)cap * sizeof *ni);
    if (!ni)
      return -ENOMEM;
    p->idx = ni;
    p->reqcap = cap;
  }
  p->reqs[p->nreq] = r;
  p->ops[p->nreq++] = op;
  p->bulk += op.bulk;
  return 0;
}

static void fatal(const char *what) {
  fprintf(stderr, "libmp-mpi: rank 0: %s; ending the job\n", what);
  MPI_Abort(MPI_COMM_WORLD, 1);
  _exit(1);
}

/* A chunk's result is in (or a whole-chunk failure): account for it.
 * (pool) */
static void chunk_done(mp_mpi_pool *p, job *j, size_t chunk, const struct rrec *rr) {
  size_t first = chunk * j->chunk;
  if (j->kind == K_MAP && rr->status < 0) {
    size_t at = first + ((rr->flags & F_WHOLE) ? 0 : (size_t)rr->done);
    if (at < j->fail_index) {
      j->fail_index = at;
      j->fail_status = rr->status;
    }
  }
  if (j->kind == K_APPLY)
    j->fail_status = rr->status;
  if (j->iter) {
    struct mp_mpi_pool_iter *it = j->iter;
    pthread_mutex_lock(&it->mu);
    it->done[chunk] = 1;
    it->cstatus[chunk] = j->terminated ? -ESHUTDOWN : rr->status;
    it->cfail[chunk] = (size_t)rr->done;
    it->cwhole[chunk] = (rr->flags & F_WHOLE) || j->terminated;
    it->order[it->ndone++] = chunk;
    pthread_cond_broadcast(&it->cv);
    pthread_mutex_unlock(&it->mu);
  }
  if (--j->chunks_left == 0 && j->next_chunk == j->nchunks) {
    j->next = p->done;
    p->done = j;
  }
}

/* Handle one result batch of worker wi. (pool) */
static void on_rbatch(mp_mpi_pool *p, int wi, int cnt) {
  struct worker *w = &p->w[wi];
  for (size_t off = 0; off + sizeof(struct rrec) <= (size_t)cnt;) {
    struct rrec rr;
    memcpy(&rr, w->rbuf + off, sizeof rr);
    off += sizeof rr;
    const char *inl = w->rbuf + off;
    if (!(rr.flags & F_EXT))
      off += pad8(rr.len);
    if (!w->qn || w->q[w->qhead].seq != rr.seq)
      fatal("a worker's result does not match the chunk it was sent");
    struct inflight f = w->q[w->qhead];
    w->qhead = (w->qhead + 1) % w->qcap;
    w->qn--;
    p->inflight--;
    job *j = f.job;
    if (j->kind == K_MAP)
      w->bytes -= (f.chunk + 1 == j->nchunks ? j->n - f.chunk * j->chunk : j->chunk) * j->item_size;
    else
      w->bytes -= j->len;
    char *dest = NULL;
    if (j->kind == K_MAP)
      dest = j->results + f.chunk * j->chunk * j->result_size;
    if (rr.flags & F_EXT) {
      void *buf = NULL;
      if (j->kind == K_APPLY) {
        buf = malloc(rr.len ? rr.len : 1);
        if (!buf)
          fatal("out of memory");
        dest = buf;
      }
      MPI_Request r;
      if (MPI_Irecv(dest, (int)rr.len, MPI_BYTE, w->rank, TAG_RDATA, p->comm, &r) != MPI_SUCCESS)
        fatal("MPI_Irecv failed");
      if (add_req(
              p, r,
              (struct op){
                  .kind = OP_RDATA, .buf = buf, .job = j, .chunk = f.chunk, .rr = rr, .bulk = 1}) <
          0)
        fatal("out of memory");
      p->inflight++; /* until its data is in */
      continue;
    }
    if (j->kind == K_MAP) {
      size_t got = rr.status < 0 ? (size_t)rr.done * j->result_size : rr.len;
      if (got)
        memcpy(dest, inl, got);
    } else if (rr.len) {
      void *d = malloc(rr.len);
      if (!d)
        fatal("out of memory");
      memcpy(d, inl, rr.len);
      free(j->data);
      j->data = d;
      j->dlen = rr.len;
    }
    chunk_done(p, j, f.chunk, &rr);
  }
}

static int flush_batch(mp_mpi_pool *p, struct worker *w) {
  MPI_Request r;
  if (!w->used)
    return 0;
  if (MPI_Isend(w->bbuf, (int)w->used, MPI_BYTE, w->rank, TAG_BATCH, p->comm, &r) != MPI_SUCCESS)
    return -EPROTO;
  if (add_req(p, r, (struct op){.kind = OP_SEND, .buf = w->bbuf}) < 0)
    return -ENOMEM;
  w->bbuf = NULL;
  w->used = 0;
  for (int i = 0; i < w->ext.n; i++) {
    if (MPI_Isend(w->ext.p[i], (int)w->ext.len[i], MPI_BYTE, w->rank, TAG_DATA, p->comm, &r) !=
        MPI_SUCCESS)
      return -EPROTO;
    /* The bytes belong to the caller (map items) or to the job (an apply's
     * copy), which lives until the chunk's result is in, so after the worker
     * has received them. */
    if (add_req(p, r, (struct op){.kind = OP_SEND, .bulk = 1}) < 0)
      return -ENOMEM;
  }
  w->ext.n = 0;
  return 0;
}

static int has_room(const mp_mpi_pool *p, const struct worker *w) {
  return w->qn < p->prefetch && (w->qn == 0 || w->bytes < WINDOW_BYTES);
}

/* Add the next chunk of the queue's head to worker w's batch. (pool) */
static void deal_one(mp_mpi_pool *p, struct worker *w) {
  job *j = p->head;
  size_t c = j->next_chunk, cnt = 0, len;
  const char *data;
  if (j->kind == K_MAP) {
    cnt = c + 1 == j->nchunks ? j->n - c * j->chunk : j->chunk;
    len = cnt * j->item_size;
    data = j->items + c * j->chunk * j->item_size;
  } else {
    len = j->len;
    data = j->arg;
  }
  int ext = len > INLINE_MAX;
  size_t need = sizeof(struct rec) + (ext ? 0 : pad8(len));
  if (w->used + need > BATCH_MAX && flush_batch(p, w) < 0)
    fatal("MPI_Isend failed");
  if (!w->bbuf && !(w->bbuf = malloc(BATCH_MAX)))
    fatal("out of memory");
  struct rec rc = {.kind = (uint32_t)j->kind,
                   .flags = ext ? F_EXT : 0,
                   .seq = ++w->seq,
                   .fn = j->fn,
                   .ctx = j->ctx,
                   .count = cnt,
                   .item_size = (uint32_t)j->item_size,
                   .result_size = (uint32_t)j->result_size,
                   .len = len};
  memcpy(w->bbuf + w->used, &rc, sizeof rc);
  if (!ext && len)
    memcpy(w->bbuf + w->used + sizeof rc, data, len);
  w->used += need;
  if (ext && mp__mpi_payloads_add(&w->ext, (void *)data, len) < 0)
    fatal("out of memory");
  if (w->qn == w->qcap) {
    size_t cap = w->qcap * 2;
    struct inflight *nq = malloc(cap * sizeof *nq);
    if (!nq)
      fatal("out of memory");
    for (size_t i = 0; i < w->qn; i++)
      nq[i] = w->q[(w->qhead + i) % w->qcap];
    free(w->q);
    w->q = nq;
    w->qhead = 0;
    w->qcap = cap;
  }
  w->q[(w->qhead + w->qn++) % w->qcap] = (struct inflight){j, c, rc.seq};
  w->bytes += len;
  p->inflight++;
  if (++j->next_chunk == j->nchunks) {
    p->head = j->next;
    if (!p->head)
      p->tail = NULL;
    j->next = NULL;
  }
}

/* Send work to every worker with room in its window, one chunk to each in
 * turn so that no worker takes more than its share while others have room;
 * a batch holds at most half a window, so the second half is on its way
 * while the worker runs the first. (pool) Returns 1 when something was
 * sent. */
static int dispatch(mp_mpi_pool *p) {
  if (!p->head)
    return 0;
  unsigned per_batch = p->prefetch / 2 ? p->prefetch / 2 : 1;
  int sent = 0;
  for (unsigned round = 0; round < per_batch && p->head; round++) {
    int any = 0;
    for (int k = 0; k < p->nworkers && p->head; k++) {
      struct worker *w = &p->w[(p->rr + k) % p->nworkers];
      if (!has_room(p, w))
        continue;
      deal_one(p, w);
      any = 1;
    }
    if (!any)
      break;
    p->rr = (p->rr + 1) % p->nworkers;
    sent = 1;
  }
  for (int wi = 0; wi < p->nworkers; wi++)
    if (flush_batch(p, &p->w[wi]) < 0)
      fatal("MPI_Isend failed");
  return sent;
}

/* Deliver the completed jobs: wake waiters, run callbacks, drop the pool's
 * reference. Called without the pool mutex. */
static void deliver(job *list) {
  while (list) {
    job *j = list;
    list = j->next;
    int st;
    if (j->terminated)
      st = -ESHUTDOWN;
    else if (j->kind == K_MAP)
      st = j->fail_index < j->n ? j->fail_status : 0;
    else
      st = j->fail_status;
    pthread_mutex_lock(&j->mu);
    j->status = st;
    j->ready = 1;
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
    if (j->has_cb) {
      mp_mpi_pool_callback cb = st >= 0 ? j->cb.callback : j->cb.error_callback;
      if (cb)
        cb(j, st, j->cb.arg);
    }
    mp__mpi_job_unref(j);
  }
}

/* Fail every chunk not yet dispatched. (pool) */
static void drop_queued(mp_mpi_pool *p) {
  struct rrec rr = {.status = -ESHUTDOWN, .flags = F_WHOLE};
  while (p->head) {
    job *j = p->head;
    p->head = j->next;
    j->terminated = 1;
    while (j->next_chunk < j->nchunks) {
      size_t c = j->next_chunk++;
      chunk_done(p, j, c, &rr);
    }
  }
  p->tail = NULL;
}

static int poll_requests(mp_mpi_pool *p) {
  if (!p->nreq)
    return 0;
  int outcount = 0;
  if (MPI_Testsome(p->nreq, p->reqs, &outcount, p->idx, MPI_STATUSES_IGNORE) != MPI_SUCCESS)
    fatal("MPI_Testsome failed");
  if (outcount <= 0 || outcount == MPI_UNDEFINED)
    return 0;
  /* Handle in posting order so that a worker's result batches stay ordered. */
  for (int a = 1; a < outcount; a++)
    for (int b = a; b > 0 && p->idx[b - 1] > p->idx[b]; b--) {
      int t = p->idx[b];
      p->idx[b] = p->idx[b - 1];
      p->idx[b - 1] = t;
    }
  for (int k = 0; k < outcount; k++) {
    int i = p->idx[k];
    struct op *op = &p->ops[i];
    p->bulk -= op->bulk;
    if (op->kind == OP_SEND) {
      free(op->buf);
    } else if (op->kind == OP_RDATA) {
      job *j = op->job;
      p->inflight--;
      if (j->kind == K_APPLY) {
        free(j->data);
        j->data = op->buf;
        j->dlen = op->rr.len;
      }
      chunk_done(p, j, op->chunk, &op->rr);
    }
    op->kind = 0;
  }
  int n = 0;
  for (int i = 0; i < p->nreq; i++)
    if (p->ops[i].kind) {
      p->reqs[n] = p->reqs[i];
      p->ops[n++] = p->ops[i];
    }
  p->nreq = n;
  return 1;
}

/* The result-batch receive of each worker is kept out of the request array
 * and tested after it, so a result batch is parsed only after the payloads
 * announced by earlier batches have been received. */
static int poll_batches(mp_mpi_pool *p, MPI_Request *rq) {
  int progressed = 0;
  for (int wi = 0; wi < p->nworkers; wi++) {
    int flag = 0;
    MPI_Status st;
    if (rq[wi] == MPI_REQUEST_NULL)
      continue;
    if (MPI_Test(&rq[wi], &flag, &st) != MPI_SUCCESS)
      fatal("MPI_Test failed");
    if (!flag)
      continue;
    int cnt;
    MPI_Get_count(&st, MPI_BYTE, &cnt);
    on_rbatch(p, wi, cnt);
    if (MPI_Irecv(p->w[wi].rbuf, BATCH_MAX, MPI_BYTE, p->w[wi].rank, TAG_RBATCH, p->comm,
                  &rq[wi]) != MPI_SUCCESS)
      fatal("MPI_Irecv failed");
    progressed = 1;
  }
  return progressed;
}

/* A worker on this host that died. Open MPI ends an mpiexec job by itself
 * when a rank dies, but leaves the parent of spawned workers waiting on a
 * peer that is gone ("may hang"): the pool ends the job itself, with a
 * message naming the rank, rather than wait forever. Checked every 50 ms
 * while work is in flight. */
void mp__mpi_check_dead(mp_mpi_pool *p, int wi) {
  struct worker *w = &p->w[wi];
  fprintf(stderr,
          "libmp-mpi: worker rank %d (pid %d) died with %zu chunks in flight; ending the job\n",
          w->rank, w->pid, w->qn);
  alarm(5); /* should MPI_Abort wait on the dead peer */
  MPI_Abort(MPI_COMM_WORLD, 1);
  _exit(1);
}

void mp__mpi_check_workers(mp_mpi_pool *p) {
  struct pollfd fds[64];
  for (int base = 0; base < p->nworkers; base += 64) {
    int n = 0, map[64];
    for (int wi = base; wi < p->nworkers && wi < base + 64; wi++)
      if (p->w[wi].pidfd >= 0) {
        fds[n] = (struct pollfd){.fd = p->w[wi].pidfd, .events = POLLIN};
        map[n++] = wi;
      }
    if (n == 0 || poll(fds, (nfds_t)n, 0) <= 0)
      continue;
    for (int k = 0; k < n; k++)
      if (fds[k].revents)
        mp__mpi_check_dead(p, map[k]);
  }
}

void *mp__mpi_progress_main(void *arg) {
  mp_mpi_pool *p = arg;
  MPI_Request *rq = malloc((size_t)p->nworkers * sizeof *rq);
  if (!rq)
    fatal("out of memory");
  for (int wi = 0; wi < p->nworkers; wi++)
    if (MPI_Irecv(p->w[wi].rbuf, BATCH_MAX, MPI_BYTE, p->w[wi].rank, TAG_RBATCH, p->comm,
                  &rq[wi]) != MPI_SUCCESS)
      fatal("MPI_Irecv failed");
  struct backoff bo = {0};
  double checked = mp__mpi_now_s();
  pthread_mutex_lock(&p->mu);
  for (;;) {
    if (p->inflight) {
      double t = mp__mpi_now_s();
      if (t - checked > 0.05) {
        checked = t;
        mp__mpi_check_workers(p);
      }
    }
    if (p->state == S_TERMINATING)
      drop_queued(p);
    int progressed = dispatch(p);
    progressed |= poll_requests(p);
    progressed |= poll_batches(p, rq);
    if (p->done) {
      job *list = p->done;
      p->done = NULL;
      pthread_mutex_unlock(&p->mu);
      deliver(list);
      pthread_mutex_lock(&p->mu);
      progressed = 1;
    }
    int idle = !p->head && !p->inflight;
    if (idle && p->state != S_RUNNING)
      break;
    if (progressed) {
      mp__mpi_backoff_reset(&bo);
      continue;
    }
    if (idle && !p->nreq) {
      p->sleeping = 1;
      pthread_cond_wait(&p->cv_work, &p->mu);
      p->sleeping = 0;
      mp__mpi_backoff_reset(&bo);
      continue;
    }
    pthread_mutex_unlock(&p->mu);
    /* A large payload in transit moves only while MPI is polled here (its
     * fragments are copied by the polling side): no sleeping then. */
    if (p->bulk)
      sched_yield();
    else
      mp__mpi_backoff_wait(&bo);
    pthread_mutex_lock(&p->mu);
  }
  pthread_mutex_unlock(&p->mu);
  /* Every chunk is accounted for; finish the last sends, release the
   * workers and cancel the batch receives. */
  MPI_Waitall(p->nreq, p->reqs, MPI_STATUSES_IGNORE);
  for (int i = 0; i < p->nreq; i++)
    if (p->ops[i].kind == OP_SEND)
      free(p->ops[i].buf);
  p->nreq = 0;
  struct ctrl c = {.op = CTRL_END};
  for (int wi = 0; wi < p->nworkers; wi++) {
    MPI_Cancel(&rq[wi]);
    MPI_Wait(&rq[wi], MPI_STATUS_IGNORE);
    MPI_Send(&c, sizeof c, MPI_BYTE, p->w[wi].rank, TAG_CTRL, p->comm);
  }
  free(rq);
  pthread_mutex_lock(&p->mu);
  p->state = S_ENDED;
  pthread_cond_broadcast(&p->cv_state);
  pthread_mutex_unlock(&p->mu);
  return NULL;
}
