/* SPDX-License-Identifier: MIT */
/*
 * mp_connection_wait() (mp/connection.h): wait until one of a set of
 * connections, processes, descriptors and queues is ready. The area's map is
 * at the top of connection.c. This file marks no crash points.
 *
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
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "connection_internal.h"
#include "internal.h"

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
