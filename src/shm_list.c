/* SPDX-License-Identifier: MIT */
/*
 * ShareableList: a fixed list of typed values in one SharedMemory block,
 * readable by any process that attaches to it by name, each slot written
 * under a seqlock whose writer is known by pid and start time, so that a
 * writer killed in mid-write is detected and its slot repaired.
 *
 * Map of this file:
 *   1. the block's layout and the slot protocol (below), and its kill table;
 *      crash points shm.list.set.locked, shm.list.set.seq and
 *      shm.list.set.written
 *   2. a slot: waiting, locking, writing, a reader's repair
 *   3. set, get and the queries (len, capacity, count, index)
 *   4. lifetime: create, attach, close, unlink
 * The block itself is a SharedMemory (shm.c: its name, the registry that
 * unlinks it, the identity and liveness of processes; shm_internal.h).
 *
 * Block layout (all fields in the machine's byte order):
 *   struct sl_header                     32 bytes
 *   struct sl_slot [count]               40 bytes each
 *   data                                 each slot's `cap` bytes at `offset`
 *
 * struct sl_header: written once by the creator; `magic` last (release), so
 * an attacher that loads the magic (acquire) sees the rest. Magic 0: the
 * creator is not done yet.
 *
 * struct sl_slot, one per item:
 *   offset, cap  constant after creation. Attachers check them against the
 *                block once and keep private copies, never re-reading them.
 *   writer       the identity of the process writing the slot, 0 when
 *                none: its pid in the low 32 bits and the low 32 bits of its
 *                start time (clock ticks since boot, /proc) in the high
 *                ones, so that a process that got a dead writer's pid is not
 *                taken for it. A writer takes the slot by compare-exchange
 *                0 -> its identity and gives it back by storing 0 (release).
 *   seq          a seqlock: even while the slot is stable, odd while its
 *                writer changes `type`, `len` and the data. Readers read
 *                those between two loads of `seq` and retry unless both
 *                loads gave the same even value. (The data bytes are copied
 *                with memcpy while a writer may be storing them; the second
 *                load of `seq` discards any such copy.)
 *   type, len    the current value's type and length in bytes (len <= cap).
 * Waits: readers wait while `seq` is odd, writers while `writer` is taken;
 * both spin, then yield, checking the holder's liveness every MP__SPIN_CHECK
 * yields (spin.h's budgets), and give up with -ETIMEDOUT after mp__shm_list_wait_s seconds
 * (the public calls take no timeout; a live writer holds a slot only for
 * one copy, so this only ends waits on a stopped or starved writer).
 * What a SIGKILL of a writer leaves, and who repairs it:
 *   slot taken, seq still even (shm.list.set.locked): readers read the old
 *     value undisturbed; the next writer that finds the holder dead takes
 *     the slot over.
 *   seq odd, nothing written (shm.list.set.seq), or value written, seq still
 *     odd (shm.list.set.written): the next writer that finds the holder dead
 *     takes the slot over (its own write replaces type, length and data
 *     whole); the next reader that does makes it stable as it is (type and
 *     len made valid, the bytes as left) and reports -EOWNERDEAD once.
 */
#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include "crash.h"
#include "internal.h"
#include "shm_internal.h"
#include "spin.h"

/* ------------------------------------------------------------ 1. the block */

#define SL_MAGIC 0x315453494c53706dULL /* "mpSLIST1" in memory on little-endian */
#define SL_VERSION 2                   /* 2: 64-bit writer identities */
#define SL_MAX_CAP ((uint64_t)UINT32_MAX - 7)

/* How long a reader or writer waits for a slot's writer (internal.h). */
double mp__shm_list_wait_s = 10.0;

struct sl_header {
  _Atomic uint64_t magic;
  uint32_t version;
  uint32_t count;
  uint64_t size;
  uint64_t reserved;
};

struct sl_slot {
  _Atomic uint32_t seq;
  _Atomic uint32_t type;
  _Atomic uint64_t writer;
  _Atomic uint32_t len;
  uint32_t reserved;
  uint64_t offset;
  uint64_t cap;
};

_Static_assert(sizeof(struct sl_header) == 32, "ShareableList header layout");
_Static_assert(sizeof(struct sl_slot) == 40, "ShareableList slot layout");

struct sl_geom {
  uint64_t offset, cap;
};

struct mp_shareable_list {
  mp_shared_memory *shm;
  uint32_t count;
  uint64_t max_cap;
  struct sl_geom *geom; /* private copies of each slot's offset and cap */
};

static bool type_ok(uint32_t t) { return t <= MP_ITEM_BYTES; }

static bool is_var(uint32_t t) { return t == MP_ITEM_STR || t == MP_ITEM_BYTES; }

static int item_check(const mp_item *it) {
  if (!it || !type_ok((uint32_t)it->type))
    return -EINVAL;
  if (is_var((uint32_t)it->type) && !it->data && it->len)
    return -EINVAL;
  return 0;
}

/* The bytes an item needs in a slot. */
static uint64_t item_size(const mp_item *it) {
  switch (it->type) {
  case MP_ITEM_NONE: return 0;
  case MP_ITEM_BOOL: return 1;
  case MP_ITEM_INT:
  case MP_ITEM_FLOAT: return 8;
  default: return it->len;
  }
}

static struct sl_slot *slot_at(const mp_shareable_list *l, size_t i) {
  return (struct sl_slot *)((char *)l->shm->buf + sizeof(struct sl_header)) + i;
}

static char *data_at(const mp_shareable_list *l, size_t i) {
  return (char *)l->shm->buf + l->geom[i].offset;
}

/* ------------------------------------------------------------ 2. a slot */

/* A wait for a slot's holder spins by spin.h's budgets: MP__SPIN_LIMIT pauses
 * (a live holder is copying one value), then yields, as a slot has no futex
 * word to sleep on; every MP__SPIN_CHECK yields it looks at the holder's
 * liveness and the deadline. */
static void pause_round(unsigned spins) {
  if (spins < MP__SPIN_LIMIT)
    mp__cpu_relax();
  else
    sched_yield();
}

/* Whether it is time to check the liveness of whoever holds the slot. */
static bool check_due(unsigned spins) {
  return spins >= MP__SPIN_LIMIT && (spins - MP__SPIN_LIMIT) % MP__SPIN_CHECK == MP__SPIN_CHECK - 1;
}

/* This process's writer identity (see struct sl_slot). */
static uint64_t writer_self(void) {
  uint64_t start;
  pid_t me = mp__shm_self_ident(&start);
  return (uint64_t)(uint32_t)me | (uint64_t)(uint32_t)start << 32;
}

/* Whether the writer w is still running: its pid is alive and, when its
 * start time is known on both sides, started when w says. */
static bool writer_alive(uint64_t w) {
  /* the word keeps the low 32 bits of the start time */
  return mp__shm_alive_since((pid_t)(uint32_t)w, (uint32_t)(w >> 32), 0xffffffffull);
}

/* Take the slot for writing by deadline d: 0 and the odd seq value to
 * publish with in *seq_out, or -ETIMEDOUT. */
static int slot_lock(struct sl_slot *s, uint64_t me, const mp__deadline *d, uint32_t *seq_out) {
  for (unsigned spins = 0;; spins++) {
    uint64_t w = 0;
    if (atomic_compare_exchange_strong(&s->writer, &w, me))
      break;
    if (check_due(spins)) {
      if (w != me && !writer_alive(w) && atomic_compare_exchange_strong(&s->writer, &w, me))
        break; /* its writer died: ours replaces whatever it left */
      if (mp__deadline_passed(d))
        return -ETIMEDOUT;
    }
    pause_round(spins);
  }
  MP__CRASH(SHM_LIST_SET_LOCKED);
  uint32_t seq = atomic_load(&s->seq);
  if (!(seq & 1)) {
    seq++;
    /* relaxed + release fence: the odd value is visible before any data
     * store below (the seqlock writer's side; pairs with the reader's
     * acquire fence before its second load of seq) */
    atomic_store_explicit(&s->seq, seq, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
  }
  MP__CRASH(SHM_LIST_SET_SEQ);
  *seq_out = seq;
  return 0;
}

static void slot_unlock(struct sl_slot *s, uint32_t seq) {
  atomic_store_explicit(&s->seq, seq + 1, memory_order_release);
  atomic_store_explicit(&s->writer, 0, memory_order_release);
}

/* Write an item's value into slot i; the slot must be locked. */
static void slot_write(mp_shareable_list *l, size_t i, const mp_item *it) {
  struct sl_slot *s = slot_at(l, i);
  char *d = data_at(l, i);
  uint64_t n = item_size(it);
  switch (it->type) {
  case MP_ITEM_INT: memcpy(d, &it->i, 8); break;
  case MP_ITEM_FLOAT: memcpy(d, &it->f, 8); break;
  case MP_ITEM_BOOL: d[0] = it->b ? 1 : 0; break;
  case MP_ITEM_STR:
  case MP_ITEM_BYTES:
    if (n)
      memcpy(d, it->data, n);
    break;
  default: break;
  }
  /* relaxed: published by the release store of seq in slot_unlock() */
  atomic_store_explicit(&s->type, (uint32_t)it->type, memory_order_relaxed);
  atomic_store_explicit(&s->len, (uint32_t)n, memory_order_relaxed);
}

/* A reader found slot i odd with a dead writer: make it stable as it is. */
static int slot_repair(mp_shareable_list *l, size_t i, uint64_t dead) {
  struct sl_slot *s = slot_at(l, i);
  if (!atomic_compare_exchange_strong(&s->writer, &dead, writer_self()))
    return 0; /* someone else got there first */
  uint32_t seq = atomic_load(&s->seq);
  if (!(seq & 1)) {
    atomic_store(&s->writer, 0);
    return 0;
  }
  uint32_t t = atomic_load(&s->type), n = atomic_load(&s->len);
  if (!type_ok(t))
    t = MP_ITEM_NONE;
  mp_item probe = {(mp_item_type)t, 0, 0.0, 0, NULL, n, 0};
  if (item_size(&probe) > l->geom[i].cap || (!is_var(t) && n != item_size(&probe))) {
    t = MP_ITEM_NONE;
    n = 0;
  }
  atomic_store(&s->type, t);
  atomic_store(&s->len, n);
  slot_unlock(s, seq);
  return -EOWNERDEAD;
}

/* ------------------------------------------------------------ 3. set, get, queries */

MP_EXPORT int mp_shareable_list_set(mp_shareable_list *l, size_t index, const mp_item *item) {
  if (!l)
    return -EINVAL;
  int err = item_check(item);
  if (err < 0)
    return err;
  if (index >= l->count)
    return -ERANGE;
  if (item_size(item) > l->geom[index].cap)
    return -EMSGSIZE;
  struct sl_slot *s = slot_at(l, index);
  mp__deadline d;
  mp__deadline_init(&d, mp__shm_list_wait_s);
  uint32_t seq;
  err = slot_lock(s, writer_self(), &d, &seq);
  if (err < 0)
    return err;
  slot_write(l, index, item);
  MP__CRASH(SHM_LIST_SET_WRITTEN);
  slot_unlock(s, seq);
  return 0;
}

MP_EXPORT int mp_shareable_list_get(mp_shareable_list *l, size_t index, mp_item *out, void *buf,
                                    size_t bufsize) {
  if (!l || !out)
    return -EINVAL;
  if (index >= l->count)
    return -ERANGE;
  struct sl_slot *s = slot_at(l, index);
  const char *d = data_at(l, index);
  uint64_t cap = l->geom[index].cap;
  mp__deadline dl;
  bool timed = false; /* the deadline is made at the first wait only */
  for (unsigned spins = 0;; spins++) {
    uint32_t s1 = atomic_load_explicit(&s->seq, memory_order_acquire);
    if (s1 & 1) {
      if (!timed) {
        mp__deadline_init(&dl, mp__shm_list_wait_s);
        timed = true;
      }
      if (check_due(spins)) {
        uint64_t w = atomic_load(&s->writer);
        if (w && w != writer_self() && !writer_alive(w)) {
          int r = slot_repair(l, index, w);
          if (r < 0)
            return r;
        }
        if (mp__deadline_passed(&dl))
          return -ETIMEDOUT;
      }
      pause_round(spins);
      continue;
    }
    /* relaxed: validated by the seq re-check below */
    uint32_t t = atomic_load_explicit(&s->type, memory_order_relaxed);
    uint32_t n = atomic_load_explicit(&s->len, memory_order_relaxed);
    mp_item it = {(mp_item_type)t, 0, 0.0, 0, NULL, n, 0};
    int err = 0;
    if (!type_ok(t) || n > cap)
      err = -EINVAL;
    else if (t == MP_ITEM_INT)
      memcpy(&it.i, d, 8);
    else if (t == MP_ITEM_FLOAT)
      memcpy(&it.f, d, 8);
    else if (t == MP_ITEM_BOOL)
      it.b = d[0] != 0;
    else if (is_var(t)) {
      size_t need = n + (t == MP_ITEM_STR);
      if (need > bufsize || (!buf && need))
        err = -EMSGSIZE;
      else if (n)
        memcpy(buf, d, n);
      it.data = buf;
    }
    atomic_thread_fence(memory_order_acquire);
    if (atomic_load_explicit(&s->seq, memory_order_relaxed) != s1)
      continue; /* a writer came by: what was read may be mixed */
    if (err < 0)
      return err;
    if (t == MP_ITEM_STR)
      ((char *)buf)[n] = 0;
    if (!is_var(t))
      it.len = 0;
    *out = it;
    return 0;
  }
}

MP_EXPORT ssize_t mp_shareable_list_len(const mp_shareable_list *l) {
  return l ? (ssize_t)l->count : -EINVAL;
}

MP_EXPORT ssize_t mp_shareable_list_capacity(const mp_shareable_list *l, size_t index) {
  if (!l)
    return -EINVAL;
  if (index >= l->count)
    return -ERANGE;
  return (ssize_t)l->geom[index].cap;
}

static bool item_equal(const mp_item *a, const mp_item *b) {
  if (a->type != b->type)
    return false;
  switch (a->type) {
  case MP_ITEM_NONE: return true;
  case MP_ITEM_INT: return a->i == b->i;
  case MP_ITEM_FLOAT: return a->f == b->f;
  case MP_ITEM_BOOL: return (a->b != 0) == (b->b != 0);
  default: return a->len == b->len && (a->len == 0 || !memcmp(a->data, b->data, a->len));
  }
}

/* Count the slots equal to v (stop at the first when first_only); returns the
 * count or first index, -ENOENT when first_only finds none. */
static ssize_t find(mp_shareable_list *l, const mp_item *v, bool first_only) {
  if (!l)
    return -EINVAL;
  int err = item_check(v);
  if (err < 0)
    return err;
  char *buf = malloc(l->max_cap + 1);
  if (!buf)
    return -ENOMEM;
  ssize_t n = 0;
  for (size_t i = 0; i < l->count; i++) {
    mp_item it;
    int r = mp_shareable_list_get(l, i, &it, buf, l->max_cap + 1);
    if (r == -EOWNERDEAD)
      r = mp_shareable_list_get(l, i, &it, buf, l->max_cap + 1);
    if (r == -ETIMEDOUT) {
      free(buf);
      return r;
    }
    if (r < 0)
      continue; /* a slot holding garbage equals nothing */
    if (item_equal(&it, v)) {
      if (first_only) {
        free(buf);
        return (ssize_t)i;
      }
      n++;
    }
  }
  free(buf);
  return first_only ? -ENOENT : n;
}

MP_EXPORT ssize_t mp_shareable_list_count(mp_shareable_list *l, const mp_item *value) {
  return find(l, value, false);
}

MP_EXPORT ssize_t mp_shareable_list_index(mp_shareable_list *l, const mp_item *value) {
  return find(l, value, true);
}

/* ------------------------------------------------------------ 4. lifetime */

MP_EXPORT mp_shared_memory *mp_shareable_list_shm(const mp_shareable_list *l) {
  return l ? l->shm : NULL;
}

MP_EXPORT int mp_shareable_list_close(mp_shareable_list *l) {
  if (!l)
    return 0;
  mp_shared_memory_close(l->shm);
  free(l->geom);
  free(l);
  return 0;
}

MP_EXPORT int mp_shareable_list_unlink(mp_shareable_list *l) {
  return l ? mp_shared_memory_unlink(l->shm) : -EINVAL;
}

int mp__shm_list_create(const char *name, const mp_item *items, size_t n,
                        const mp_shared_memory_options *opts, mp_shareable_list **ret) {
  if (!ret || (n && !items) || n > UINT32_MAX)
    return -EINVAL;
  uint64_t total = sizeof(struct sl_header) + (uint64_t)n * sizeof(struct sl_slot);
  uint64_t max_cap = 8;
  for (size_t i = 0; i < n; i++) {
    int err = item_check(&items[i]);
    if (err < 0)
      return err;
    uint64_t want = item_size(&items[i]);
    if (is_var((uint32_t)items[i].type) && items[i].cap > want)
      want = items[i].cap;
    if (want > SL_MAX_CAP)
      return -EINVAL;
    uint64_t cap = want < 8 ? 8 : (want + 7) & ~(uint64_t)7;
    if (cap > max_cap)
      max_cap = cap;
    total += cap;
    if (total > (uint64_t)INT64_MAX / 2)
      return -EINVAL;
  }
  mp_shareable_list *l = calloc(1, sizeof *l);
  if (!l)
    return -ENOMEM;
  if (n && !(l->geom = malloc(n * sizeof *l->geom))) {
    free(l);
    return -ENOMEM;
  }
  int err = mp__shm_create(name, (size_t)total, opts, &l->shm);
  if (err < 0) {
    free(l->geom);
    free(l);
    return err;
  }
  l->count = (uint32_t)n;
  l->max_cap = max_cap;
  struct sl_header *h = l->shm->buf;
  uint64_t off = sizeof(struct sl_header) + (uint64_t)n * sizeof(struct sl_slot);
  for (size_t i = 0; i < n; i++) {
    uint64_t want = item_size(&items[i]);
    if (is_var((uint32_t)items[i].type) && items[i].cap > want)
      want = items[i].cap;
    uint64_t cap = want < 8 ? 8 : (want + 7) & ~(uint64_t)7;
    l->geom[i] = (struct sl_geom){off, cap};
    struct sl_slot *s = slot_at(l, i);
    s->offset = off;
    s->cap = cap;
    slot_write(l, i, &items[i]); /* seq 0, writer 0: the block is fresh zeros */
    off += cap;
  }
  h->version = SL_VERSION;
  h->count = (uint32_t)n;
  h->size = total;
  atomic_store_explicit(&h->magic, SL_MAGIC, memory_order_release);
  *ret = l;
  return 0;
}

MP_EXPORT int mp_shareable_list_new(const char *name, const mp_item *items, size_t n,
                                    const mp_shared_memory_options *opts, mp_shareable_list **ret) {
  return mp__shm_list_create(name, items, n, opts, ret);
}

MP_EXPORT int mp_shareable_list_attach(const char *name, const mp_shared_memory_options *opts,
                                       mp_shareable_list **ret) {
  if (!ret)
    return -EINVAL;
  mp_shareable_list *l = calloc(1, sizeof *l);
  if (!l)
    return -ENOMEM;
  int err = mp_shared_memory_attach(name, opts, &l->shm);
  if (err < 0) {
    free(l);
    return err;
  }
  uint64_t size = l->shm->size;
  struct sl_header *h = l->shm->buf;
  err = -EINVAL;
  if (size < sizeof *h)
    goto fail;
  uint64_t magic = atomic_load_explicit(&h->magic, memory_order_acquire);
  if (magic != SL_MAGIC) {
    err = magic == 0 ? -EAGAIN : -EINVAL;
    goto fail;
  }
  uint64_t count = h->count;
  uint64_t data = sizeof *h + count * sizeof(struct sl_slot);
  if (h->version != SL_VERSION || data > size)
    goto fail;
  l->count = (uint32_t)count;
  l->max_cap = 8;
  if (count && !(l->geom = malloc(count * sizeof *l->geom))) {
    err = -ENOMEM;
    goto fail;
  }
  for (uint64_t i = 0; i < count; i++) {
    struct sl_slot *s = slot_at(l, i);
    uint64_t off = s->offset, cap = s->cap;
    if (off < data || off > size || off % 8 || cap < 8 || cap > SL_MAX_CAP || cap > size - off)
      goto fail;
    l->geom[i] = (struct sl_geom){off, cap};
    if (cap > l->max_cap)
      l->max_cap = cap;
  }
  *ret = l;
  return 0;

fail:
  mp_shared_memory_close(l->shm);
  free(l->geom);
  free(l);
  return err;
}
