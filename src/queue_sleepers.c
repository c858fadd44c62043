/* SPDX-License-Identifier: MIT */
/*
 * Queues: sleeping and waking, shared by both kinds (queue_internal.h maps
 * the area). A sleeper sleeps with one deadline for the whole call and never
 * longer than RECHECK_NS at a time; sleepers outside a mutex (list getters and
 * putters, joiners, watchers of mp_connection_wait()) register in a slot that
 * names them, so that a waker that keeps waking nobody can find the dead ones
 * and drop them (heal, reg_scan).
 *
 * Protocol: the sleeper words and the registries (data_sleepers,
 * space_sleepers, join_waiters, *_reg) in the FIFO protocol comment
 * (queue_ring.c, section 1, "Who writes what" and "Waking without lost
 * wake-ups"). Crash points marked here: queue.reg.slot_taken,
 * queue.reg.registered, queue.reg.bit_cleared, queue.reg.claimed (that
 * comment's kill table, "registered sleeper").
 *
 * Map: nap(); registries (add, del, pid_ended, scan); heal; wake_all.
 */
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "queue_internal.h"

static int64_t ts_ns(const struct timespec *ts) {
  return (int64_t)ts->tv_sec * 1000000000 + ts->tv_nsec;
}

int mp__queue_nap(_Atomic uint32_t *word, uint32_t snap, wctx *w, bool endless) {
  int64_t at = mp__now_ns() + RECHECK_NS;
  bool capped = true;
  if (!endless) {
    const mp__deadline *d = deadline(w);
    if (!d->forever && ts_ns(&d->at) <= at) {
      at = ts_ns(&d->at);
      capped = false;
    }
  }
  mp__deadline sub = {.forever = false, .nowait = false};
  sub.at.tv_sec = (time_t)(at / 1000000000);
  sub.at.tv_nsec = (long)(at % 1000000000);
  int r = mp__futex_wait(word, snap, &sub);
  if (r == -ETIMEDOUT)
    return capped ? 0 : -ETIMEDOUT;
  return r; /* 0, or -EFAULT/-EINVAL for a word that is not a queue's: fail, never spin */
}

static uint64_t reg_me(void) { return (uint64_t)(uint32_t)mp__tid() << 32 | (uint32_t)mp__pid(); }

/* Register the calling thread as a sleeper in *word: its slot first, then the
 * slot's bit, which is what wakers read; unregister in the reverse order. A
 * bit belongs to its slot's occupant, and setting or clearing it is
 * idempotent, so a process killed between the two steps leaves a slot with its
 * pid that mp__queue_reg_scan() cleans whatever the bit says. */
void mp__queue_reg_add(struct reg *r, _Atomic uint32_t *word) {
  uint64_t me = reg_me();
  int i = 0;
  for (; i < NSLOTS; i++) {
    uint64_t z = 0;
    if (atomic_compare_exchange_strong(&r->slot[i], &z, me))
      break;
  }
  if (i < NSLOTS) {
    MP__CRASH(QUEUE_REG_SLOT_TAKEN);
    atomic_fetch_or(word, SLOT_BIT(i));
  } else {
    atomic_fetch_add(word, EXTRA_ONE);
  }
  MP__CRASH(QUEUE_REG_REGISTERED);
}

void mp__queue_reg_del(struct reg *r, _Atomic uint32_t *word) {
  uint64_t me = reg_me();
  for (int i = 0; i < NSLOTS; i++) {
    if (atomic_load_explicit(&r->slot[i], memory_order_relaxed) == me) {
      atomic_fetch_and(word, ~SLOT_BIT(i));
      MP__CRASH(QUEUE_REG_BIT_CLEARED);
      atomic_store(&r->slot[i], 0);
      return;
    }
  }
  uint32_t w = atomic_load(word);
  while (w >= EXTRA_ONE) {
    if (atomic_compare_exchange_weak(word, &w, w - EXTRA_ONE))
      return;
  }
  /* Not registered (an unmatched end): nothing to undo. */
}

/* Whether process pid has ended: gone, or a zombie that its parent has not
 * reaped yet (kill(pid, 0) still succeeds on one, and a killed sleeper can
 * stay one for as long as its parent does not wait). A pidfd is readable
 * once its process has ended. */
static bool pid_ended(pid_t pid) {
  int fd = (int)syscall(SYS_pidfd_open, pid, 0); /* close-on-exec by default */
  if (fd < 0)
    return errno == ESRCH || (errno == ENOSYS && kill(pid, 0) < 0 && errno == ESRCH);
  struct pollfd p = {.fd = fd, .events = POLLIN};
  int r = poll(&p, 1, 0);
  close(fd);
  return r == 1;
}

/* Drop the registrations of processes that have ended. A cleaner first
 * claims the slot (its own identity with CLEANING set, which no registrant
 * matches), then clears the bit, then frees the slot: no newcomer can take the
 * slot, and so own the bit, before the bit is cleared, and two cleaners never
 * work on one slot. A cleaner killed half-way is dead in its turn: the next
 * scan claims the slot from it. */
void mp__queue_reg_scan(struct reg *r, _Atomic uint32_t *word) {
  uint64_t mark = CLEANING | reg_me();
  for (int i = 0; i < NSLOTS; i++) {
    uint64_t v = atomic_load(&r->slot[i]);
    if (!v)
      continue;
    pid_t pid = (pid_t)(uint32_t)v;
    if (pid_ended(pid) && atomic_compare_exchange_strong(&r->slot[i], &v, mark)) {
      MP__CRASH(QUEUE_REG_CLAIMED);
      atomic_fetch_and(word, ~SLOT_BIT(i));
      atomic_store(&r->slot[i], 0);
    }
  }
}

/* A wake found nobody asleep although a sleeper is recorded. Usually that
 * sleeper is between recording itself and sleeping, or just woke; but it may
 * be dead. Every 64th time, check the mutex holder (bit 0) and the registered
 * ones; a dead sleeper costs at most that many futex wakes. */
void mp__queue_heal(mp_queue *q, uint32_t sl, bool data_side) {
  struct qstate *s = q->s;
  _Atomic uint32_t *word = data_side ? &s->data_sleepers : &s->space_sleepers;
  struct reg *rg = data_side ? &s->data_reg : &s->space_reg;
  /* relaxed: a pacing counter, no data hangs on it */
  if ((atomic_fetch_add_explicit(&rg->idle, 1, memory_order_relaxed) & 63) != 63)
    return;
  if ((sl & 1) && q->order == MP_QUEUE_FIFO) {
    pthread_mutex_t *m = data_side ? &s->u.f.cons_mutex : &s->u.f.prod_mutex;
    int r = mp__robust_mutex_try(
        m, data_side ? mp__queue_fifo_cons_repair : mp__queue_fifo_prod_repair, q);
    if (r == -EOWNERDEAD) {
      pthread_mutex_unlock(m);
    } else if (r == 0) {
      atomic_fetch_and(word, ~1u); /* the holder always clears it before unlocking */
      pthread_mutex_unlock(m);
    }
  }
  if (sl >> 1)
    mp__queue_reg_scan(rg, word);
}

void mp__queue_wake_all(mp_queue *q) {
  struct qstate *s = q->s;
  atomic_fetch_add(&s->data_word, 1);
  atomic_fetch_add(&s->space_word, 1);
  mp__futex_wake(&s->data_word, INT_MAX);
  mp__futex_wake(&s->space_word, INT_MAX);
}
