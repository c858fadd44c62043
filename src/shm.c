/* SPDX-License-Identifier: MIT */
/*
 * SharedMemory, ShareableList and SharedMemoryManager: named POSIX shared
 * memory blocks, and the family-wide registry that unlinks the ones nobody
 * meant to keep.
 *
 * Map of this file:
 *   1. names
 *   2. process identity and liveness
 *   3. the registry of tracked blocks (family heap)
 *   4. SharedMemory
 *   5. ShareableList
 *   6. SharedMemoryManager
 *
 * 3. The registry. One `struct registry` per family, published in the heap's
 * MP__ROOT_SHM slot by whoever needs it first. It holds a singly linked list
 * of entries, one per tracked block: its name, the owner's pid and start time
 * (clock ticks since boot, from /proc, so that a recycled pid is not taken for
 * the owner), and the block's device and inode numbers (so that a block
 * unlinked behind libmp's back and created again under the same name is never
 * removed by mistake).
 *   An entry always knows its block's inode: a block is created without a
 *   name (O_TMPFILE), recorded, and only then named (linkat). An entry whose
 *   name was never linked, or is now another inode, is dropped without
 *   unlinking anything (the EEXIST case: the name is someone else's).
 *   Who writes: every field of the registry and its entries is written under
 *   `mutex` (robust, process-shared). An entry is filled before it is linked;
 *   linking and unlinking are one release store each (link_store, paired
 *   with link_load's acquire in every traversal), so a holder killed at any
 *   step leaves a well-formed list. EOWNERDEAD therefore needs no repair.
 *   A sweep (under the mutex) drops the entries of dead owners, and at a
 *   process's normal end also its own, unlinking the name when the block
 *   under it is still the recorded one. Sweeps run at every creation, attach
 *   and unlink_name, and at the normal end of every process that tracks a
 *   block or started libmp children.
 * What a SIGKILL at each step leaves, and who repairs it:
 *   creator, entry linked, block not named (shm.create.recorded): an entry
 *     of a dead owner whose name does not exist; the next sweep drops it.
 *   creator, block named (shm.create.named): an entry of a dead owner naming
 *     its block; the next sweep unlinks the name and drops the entry.
 *   adopter, its entry linked before the old owner's are dropped
 *     (shm.adopt.linked): two entries; the adopter's, dead, makes the next
 *     sweep unlink the block, as its adoption asked.
 *   unlinker, name removed, entry kept (shm.unlink.unlinked): the next sweep
 *     finds the name gone and drops the entry.
 *   sweeper, dead owner's name removed, entry kept (shm.sweep.unlinked): the
 *     same.
 *   anyone, entry unlinked from the list, not yet freed (shm.reg.unlinked):
 *     the entry's memory is leaked in the heap; the list is well-formed.
 * So the only names a kill can leave in /dev/shm are those of a family that
 * is killed whole (no process is left to sweep; see mp/shm.h).
 * Lock order: registry mutex, then the heap's (mp_heap_free inside).
 *
 * 5. A ShareableList block: header, slot descriptors, data (see below). Each
 * slot is a seqlock with an owner word for writers; the protocol is given at
 * struct sl_slot.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "crash.h"
#include "internal.h"

/* ------------------------------------------------------------ 1. names */

#define PATH_CAP (MP_SHARED_MEMORY_NAME_MAX + 2) /* "/" + name + NUL */

/* Check a user's name and make the "/name" path shm_open wants. */
static int make_path(const char *name, char path[PATH_CAP]) {
  if (!name)
    return -EINVAL;
  if (name[0] == '/')
    name++;
  size_t len = strnlen(name, MP_SHARED_MEMORY_NAME_MAX + 1);
  if (len == 0 || len > MP_SHARED_MEMORY_NAME_MAX || memchr(name, '/', len) || !strcmp(name, ".") ||
      !strcmp(name, ".."))
    return -EINVAL;
  path[0] = '/';
  memcpy(path + 1, name, len + 1);
  return 0;
}

/* A fresh "/psm_xxxxxxxx" (8 random hex digits, as Python's names). */
static void make_generated_path(char path[PATH_CAP]) {
  uint32_t v;
  if (getrandom(&v, sizeof v, GRND_NONBLOCK) != (ssize_t)sizeof v)
    v = (uint32_t)mp__now_ns() ^ ((uint32_t)mp__pid() << 16);
  snprintf(path, PATH_CAP, "/psm_%08x", (unsigned)v);
}

/* The directory glibc's shm_open() uses for "/name". */
#define SHM_DIR "/dev/shm"

/* Give the unnamed block open as fd the name `path` ("/name"): 0, -EEXIST
 * when the name is taken, or another negative errno. */
static int link_name(int fd, const char *path) {
  char dst[sizeof SHM_DIR + PATH_CAP];
  snprintf(dst, sizeof dst, "%s%s", SHM_DIR, path);
  if (linkat(fd, "", AT_FDCWD, dst, AT_EMPTY_PATH) == 0)
    return 0;
  if (errno != ENOENT && errno != EPERM)
    return -errno;
  /* AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH on older kernels; the fd's
   * /proc link does the same for anyone. */
  char src[48];
  snprintf(src, sizeof src, "/proc/self/fd/%d", fd);
  if (linkat(AT_FDCWD, src, AT_FDCWD, dst, AT_SYMLINK_FOLLOW) == 0)
    return 0;
  return -errno;
}

/* ------------------------------------------------------------ 2. identity */

/* Read the state letter and the start time (field 22) of /proc/<pid>/stat.
 * Returns 0, -ENOENT/-ESRCH when there is no such process, or another
 * negative errno when /proc cannot tell. */
static int read_stat(pid_t pid, char *state, uint64_t *start) {
  char path[32], buf[1024];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return -errno;
  ssize_t n;
  do
    n = read(fd, buf, sizeof buf - 1);
  while (n < 0 && errno == EINTR);
  int err = n < 0 ? -errno : 0;
  close(fd);
  if (err)
    return err;
  buf[n] = 0;
  /* The command name is in parentheses and may hold anything, ')' too. */
  char *p = strrchr(buf, ')');
  if (!p || p[1] != ' ' || !p[2])
    return -EIO;
  *state = p[2];
  p += 2;
  for (int field = 3; field < 22; field++) {
    p = strchr(p, ' ');
    if (!p)
      return -EIO;
    p++;
  }
  *start = strtoull(p, NULL, 10);
  return 0;
}

/* This process's start time, for the pid libmp's one pid cache gives
 * (mp__pid(), sys.c): recomputed when that pid changes, so no fork handler is
 * needed here. Start time 0 when /proc cannot tell. */
static _Atomic uint64_t ident_start;
static _Atomic pid_t ident_start_pid; /* the pid ident_start belongs to */

static pid_t self_ident(uint64_t *start) {
  pid_t me = mp__pid();
  if (start) {
    /* acquire: pairs with the release store below, so the start time read
     * belongs to this pid */
    if (MP__UNLIKELY(atomic_load_explicit(&ident_start_pid, memory_order_acquire) != me)) {
      char st;
      uint64_t t = 0;
      if (read_stat(me, &st, &t) < 0)
        t = 0;
      atomic_store_explicit(&ident_start, t, memory_order_relaxed); /* published below */
      atomic_store_explicit(&ident_start_pid, me, memory_order_release);
      *start = t;
      return me;
    }
    *start = atomic_load_explicit(&ident_start, memory_order_relaxed); /* ordered by the pid */
  }
  return me;
}

/* Whether the process that was `pid`, started at `start` (0: unknown; only
 * the bits of start_mask are compared), is still running. A zombie counts as dead; when nothing can tell, alive (the
 * safe answer: a live process's blocks are never removed). */
static bool alive_since(pid_t pid, uint64_t start, uint64_t start_mask) {
  if (pid <= 0)
    return false;
  if (kill(pid, 0) < 0 && errno == ESRCH)
    return false;
  char st;
  uint64_t t;
  int r = read_stat(pid, &st, &t);
  if (r == -ENOENT || r == -ESRCH)
    return false;
  if (r < 0)
    return true;
  if (st == 'Z' || st == 'X' || st == 'x')
    return false;
  return !(start && (t & start_mask) != start);
}

static bool owner_alive(pid_t pid, uint64_t start) { return alive_since(pid, start, ~0ull); }

/* ------------------------------------------------------------ 3. registry */

#define REGISTRY_MAGIC 0x6d7073686d726567ULL /* "mpshmreg" */

/* The list's links and each entry's fields. Every change is made under
 * `mutex`; the atomics are there for a holder killed in the middle of one:
 * the next holder (EOWNERDEAD) then reads what the dead one stored, in the
 * order it stored it, so each link is stored with release after everything
 * it publishes, and every traversal loads links with acquire (pairing with
 * those release stores, in whichever process made them). */
struct reg_entry {
  _Atomic(struct reg_entry *) next;
  int32_t pid;
  uint64_t start;
  uint64_t dev, ino;
  char path[]; /* "/name" */
};

struct registry {
  uint64_t magic;
  pthread_mutex_t mutex;
  _Atomic(struct reg_entry *) head;
};

/* The family's registry; NULL when it does not exist and `create` is false,
 * or when the heap cannot be mapped. */
static struct registry *registry_get(bool create) {
  _Atomic(void *) *root = mp__heap_root(MP__ROOT_SHM, create);
  if (!root)
    return NULL;
  struct registry *r = atomic_load_explicit(root, memory_order_acquire);
  if (r || !create)
    return r;
  struct registry *n = mp_heap_calloc(1, sizeof *n);
  if (!n)
    return NULL;
  if (mp__robust_mutex_init(&n->mutex, false) < 0) {
    mp_heap_free(n);
    return NULL;
  }
  n->magic = REGISTRY_MAGIC;
  void *expected = NULL;
  /* release: the registry is initialised before others can load it */
  if (atomic_compare_exchange_strong_explicit(root, &expected, n, memory_order_acq_rel,
                                              memory_order_acquire))
    return n;
  pthread_mutex_destroy(&n->mutex);
  mp_heap_free(n);
  return expected;
}

static void reg_lock(struct registry *r) {
  /* A dead holder left the list well-formed (one release store per change,
   * see struct reg_entry): nothing to repair. */
  mp__deadline forever = {.forever = true, .nowait = false};
  (void)mp__robust_mutex_take(&r->mutex, &forever, NULL, NULL);
}

static void reg_unlock(struct registry *r) { pthread_mutex_unlock(&r->mutex); }

static struct reg_entry *entry_new(const char *path, pid_t pid, uint64_t start, uint64_t dev,
                                   uint64_t ino) {
  size_t len = strlen(path);
  struct reg_entry *e = mp_heap_alloc(sizeof *e + len + 1);
  if (!e)
    return NULL;
  atomic_init(&e->next, NULL);
  e->pid = pid;
  e->start = start;
  e->dev = dev;
  e->ino = ino;
  memcpy(e->path, path, len + 1);
  return e;
}

static struct reg_entry *link_load(_Atomic(struct reg_entry *) *link) {
  /* acquire: pairs with the release store that set this link (link_store),
   * so the entry it names is seen whole, also after its writer died */
  return atomic_load_explicit(link, memory_order_acquire);
}

static void link_store(_Atomic(struct reg_entry *) *link, struct reg_entry *e) {
  /* release: the entry's fields (when linking) or the unlink (before the
   * entry's memory goes back to the heap) come first, also for a reader
   * that takes over after this process is killed right after this store */
  atomic_store_explicit(link, e, memory_order_release);
}

/* Link e at the head, with the mutex held. */
static void reg_push_locked(struct registry *r, struct reg_entry *e) {
  /* relaxed: e is not reachable yet; the release store of the head below
   * publishes this link with it */
  atomic_store_explicit(&e->next, link_load(&r->head), memory_order_relaxed);
  link_store(&r->head, e);
}

/* Unlink the entry *link names and free it, with the mutex held. */
static void reg_remove_at_locked(_Atomic(struct reg_entry *) *link, struct reg_entry *e) {
  link_store(link, link_load(&e->next));
  MP__CRASH(SHM_REG_UNLINKED);
  mp_heap_free(e);
}

static void reg_link(struct registry *r, struct reg_entry *e) {
  reg_lock(r);
  reg_push_locked(r, e);
  reg_unlock(r);
}

/* Remove entry e (and free it) with the mutex held. */
static void reg_remove_locked(struct registry *r, struct reg_entry *e) {
  struct reg_entry *x;
  for (_Atomic(struct reg_entry *) *pp = &r->head; (x = link_load(pp)); pp = &x->next) {
    if (x == e) {
      reg_remove_at_locked(pp, e);
      return;
    }
  }
}

static void reg_drop(struct registry *r, struct reg_entry *e) {
  reg_lock(r);
  reg_remove_locked(r, e);
  reg_unlock(r);
}

/* Forget every entry for this block (it was unlinked) but `keep`, with the
 * mutex held. */
static void reg_forget_locked(struct registry *r, const char *path, uint64_t dev, uint64_t ino,
                              const struct reg_entry *keep) {
  _Atomic(struct reg_entry *) *pp = &r->head;
  struct reg_entry *e;
  while ((e = link_load(pp))) {
    if (e != keep && e->dev == dev && e->ino == ino && !strcmp(e->path, path))
      reg_remove_at_locked(pp, e);
    else
      pp = &e->next;
  }
}

static void reg_forget(const char *path, uint64_t dev, uint64_t ino) {
  struct registry *r = registry_get(false);
  if (!r)
    return;
  reg_lock(r);
  reg_forget_locked(r, path, dev, ino, NULL);
  reg_unlock(r);
}

/* Unlink `path` if the block under it is still the one with dev/ino. */
static void unlink_if_same(const char *path, uint64_t dev, uint64_t ino) {
  int fd = shm_open(path, O_RDONLY | O_CLOEXEC, 0);
  if (fd < 0)
    return;
  struct stat st;
  if (fstat(fd, &st) == 0 && (uint64_t)st.st_dev == dev && (uint64_t)st.st_ino == ino)
    shm_unlink(path);
  close(fd);
}

/* Drop the entries of dead owners, and when `exiting` those of the calling
 * process, unlinking their blocks. */
static void sweep(struct registry *r, bool exiting) {
  pid_t me = self_ident(NULL);
  struct verdict {
    pid_t pid;
    uint64_t start;
    bool alive;
  } seen[16];
  unsigned nseen = 0;
  reg_lock(r);
  _Atomic(struct reg_entry *) *pp = &r->head;
  struct reg_entry *e;
  while ((e = link_load(pp))) {
    bool drop;
    if (e->pid == me) {
      drop = exiting;
    } else {
      unsigned i = 0;
      while (i < nseen && !(seen[i].pid == e->pid && seen[i].start == e->start))
        i++;
      if (i < nseen) {
        drop = !seen[i].alive;
      } else {
        bool alive = owner_alive(e->pid, e->start);
        if (nseen < sizeof seen / sizeof seen[0])
          seen[nseen++] = (struct verdict){e->pid, e->start, alive};
        drop = !alive;
      }
    }
    if (!drop) {
      pp = &e->next;
      continue;
    }
    unlink_if_same(e->path, e->dev, e->ino);
    MP__CRASH(SHM_SWEEP_UNLINKED);
    if (e->pid != me)
      MP__LOG(MP_LOG_INFO, "shared memory: %s, left behind by process %d which died, unlinked",
              e->path, (int)e->pid);
    reg_remove_at_locked(pp, e);
  }
  reg_unlock(r);
}

/* Sweep when the registry exists (never maps the heap just for this). */
static void sweep_if_any(void) {
  struct registry *r = registry_get(false);
  if (r)
    sweep(r, false);
}

void mp__shm_at_exit(void) {
  struct registry *r = registry_get(false);
  if (r)
    sweep(r, true);
}

long mp__shm_registry_entries(pid_t pid) {
  struct registry *r = registry_get(false);
  if (!r)
    return 0;
  long n = 0;
  reg_lock(r);
  for (struct reg_entry *e = link_load(&r->head); e; e = link_load(&e->next)) {
    if (!pid || e->pid == pid)
      n++;
    if (n > 1000000) {
      n = -ELOOP;
      break;
    }
  }
  reg_unlock(r);
  return n;
}

static void at_exit_handler(void) { mp__shm_at_exit(); }

/* The process whose atexit handler is registered. A child inherits the
 * registration (a plain fork child that calls exit() runs it, for its own
 * blocks) and registers again at its first tracked block: sweeping twice is
 * harmless. */
static _Atomic pid_t atexit_pid;

static int ensure_atexit(pid_t me) {
  pid_t seen = atomic_load(&atexit_pid);
  if (seen == me || !atomic_compare_exchange_strong(&atexit_pid, &seen, me))
    return 0;
  if (atexit(at_exit_handler) != 0) {
    atomic_store(&atexit_pid, 0);
    return -ENOMEM;
  }
  return 0;
}

/* Make the calling process the owner of a block (adopt), replacing any
 * other owner's entry. The new entry is linked before the others are
 * dropped, so that a kill in between (shm.adopt.linked) leaves the block
 * owned: by the adopter, whose death unlinks it, as adopting asked. */
static int reg_adopt(const char *path, uint64_t dev, uint64_t ino) {
  struct registry *r = registry_get(true);
  if (!r)
    return -ENOMEM;
  uint64_t start;
  pid_t me = self_ident(&start);
  int err = ensure_atexit(me);
  if (err < 0)
    return err;
  struct reg_entry *e = entry_new(path, me, start, dev, ino);
  if (!e)
    return -ENOMEM;
  reg_lock(r);
  reg_push_locked(r, e);
  MP__CRASH(SHM_ADOPT_LINKED);
  reg_forget_locked(r, path, dev, ino, e);
  reg_unlock(r);
  return 0;
}

/* ------------------------------------------------------------ 4. SharedMemory */

struct mgr_entry;

struct mp_shared_memory {
  void *buf;
  size_t size;
  uint64_t dev, ino;
  struct mgr_entry *mgr; /* the manager record that owns this handle, or NULL */
  char path[PATH_CAP];   /* "/name" */
};

static int shm_create(const char *name, size_t size, const mp_shared_memory_options *opts,
                      mp_shared_memory **ret) {
  char path[PATH_CAP];
  bool generated = !name;
  if (!ret || size == 0 || size > (size_t)INT64_MAX)
    return -EINVAL;
  if (name) {
    int r = make_path(name, path);
    if (r < 0)
      return r;
  }
  bool tracked = !(opts && opts->keep);
  struct registry *reg = registry_get(tracked);
  if (tracked && !reg)
    return -ENOMEM;
  if (reg)
    sweep(reg, false);
  uint64_t start;
  pid_t me = self_ident(&start);
  if (tracked) {
    int r = ensure_atexit(me);
    if (r < 0)
      return r;
  }
  mp_shared_memory *h = malloc(sizeof *h);
  if (!h)
    return -ENOMEM;

  /* The block is made without a name (O_TMPFILE in the directory shm_open
   * uses), sized, recorded in the registry with its inode, and only then
   * given its name (linkat fails with EEXIST as O_EXCL would). So no name
   * ever exists that the registry cannot clean up after a kill (see the
   * table at the top). */
  int err = 0;
  void *m = MAP_FAILED;
  int fd = open(SHM_DIR, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  if (fd < 0) {
    err = -errno;
    free(h);
    return err;
  }
  struct stat st;
  if (fstat(fd, &st) < 0) {
    err = -errno;
    goto fail;
  }
  /* The umask may have taken bits off 0600. */
  if ((st.st_mode & 07777) != 0600 && fchmod(fd, 0600) < 0) {
    err = -errno;
    goto fail;
  }
  if (ftruncate(fd, (off_t)size) < 0) {
    err = errno == EFBIG ? -EINVAL : -errno;
    goto fail;
  }
  m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (m == MAP_FAILED) {
    err = -errno;
    goto fail;
  }
  for (int tries = 0;; tries++) {
    if (generated)
      make_generated_path(path);
    struct reg_entry *e = NULL;
    if (tracked) {
      e = entry_new(path, me, start, (uint64_t)st.st_dev, (uint64_t)st.st_ino);
      if (!e) {
        err = -ENOMEM;
        goto fail;
      }
      reg_link(reg, e);
      MP__CRASH(SHM_CREATE_RECORDED);
    }
    err = link_name(fd, path);
    if (err == 0)
      break;
    if (e)
      reg_drop(reg, e);
    if (err == -EEXIST && generated && tries < 100)
      continue;
    goto fail;
  }
  MP__CRASH(SHM_CREATE_NAMED);
  close(fd);
  h->buf = m;
  h->size = size;
  h->dev = (uint64_t)st.st_dev;
  h->ino = (uint64_t)st.st_ino;
  h->mgr = NULL;
  memcpy(h->path, path, sizeof path);
  *ret = h;
  return 0;

fail:
  if (m != MAP_FAILED)
    munmap(m, size);
  close(fd);
  free(h);
  return err;
}

MP_EXPORT int mp_shared_memory_new(const char *name, size_t size,
                                   const mp_shared_memory_options *opts, mp_shared_memory **ret) {
  return shm_create(name, size, opts, ret);
}

MP_EXPORT int mp_shared_memory_attach(const char *name, const mp_shared_memory_options *opts,
                                      mp_shared_memory **ret) {
  char path[PATH_CAP];
  int err = make_path(name, path);
  if (err < 0)
    return err;
  if (!ret)
    return -EINVAL;
  sweep_if_any();
  int fd = shm_open(path, O_RDWR | O_CLOEXEC, 0);
  if (fd < 0)
    return -errno;
  struct stat st;
  void *m = MAP_FAILED;
  mp_shared_memory *h = NULL;
  if (fstat(fd, &st) < 0) {
    err = -errno;
    goto out;
  }
  if (st.st_size <= 0) {
    err = -EAGAIN;
    goto out;
  }
  if ((uint64_t)st.st_size > SIZE_MAX) {
    err = -ENOMEM;
    goto out;
  }
  h = malloc(sizeof *h);
  if (!h) {
    err = -ENOMEM;
    goto out;
  }
  m = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (m == MAP_FAILED) {
    err = -errno;
    goto out;
  }
  if (opts && opts->adopt) {
    err = reg_adopt(path, (uint64_t)st.st_dev, (uint64_t)st.st_ino);
    if (err < 0)
      goto out;
  }
  h->buf = m;
  h->size = (size_t)st.st_size;
  h->dev = (uint64_t)st.st_dev;
  h->ino = (uint64_t)st.st_ino;
  h->mgr = NULL;
  memcpy(h->path, path, sizeof path);
  *ret = h;
  close(fd);
  return 0;

out:
  if (m != MAP_FAILED)
    munmap(m, (size_t)st.st_size);
  free(h);
  close(fd);
  return err;
}

MP_EXPORT void *mp_shared_memory_buf(const mp_shared_memory *shm) { return shm ? shm->buf : NULL; }

MP_EXPORT ssize_t mp_shared_memory_size(const mp_shared_memory *shm) {
  return shm ? (ssize_t)shm->size : -EINVAL;
}

MP_EXPORT const char *mp_shared_memory_name(const mp_shared_memory *shm) {
  return shm ? shm->path + 1 : NULL;
}

/* A manager's record of one block it created (section 6). */
struct mgr_entry {
  struct mgr_entry *next;
  mp_shared_memory *shm;          /* the handle while open, else NULL */
  struct mp_shareable_list *list; /* the list that owns `shm`, if any */
  int unlinked;
  uint64_t dev, ino;
  char path[PATH_CAP];
};

MP_EXPORT int mp_shared_memory_close(mp_shared_memory *shm) {
  if (!shm)
    return 0;
  munmap(shm->buf, shm->size);
  if (shm->mgr) {
    shm->mgr->shm = NULL;
    shm->mgr->list = NULL;
  }
  free(shm);
  return 0;
}

MP_EXPORT int mp_shared_memory_unlink(mp_shared_memory *shm) {
  if (!shm)
    return -EINVAL;
  if (shm_unlink(shm->path) < 0)
    return -errno;
  MP__CRASH(SHM_UNLINK_UNLINKED);
  reg_forget(shm->path, shm->dev, shm->ino);
  if (shm->mgr)
    shm->mgr->unlinked = 1;
  return 0;
}

MP_EXPORT int mp_shared_memory_unlink_name(const char *name) {
  char path[PATH_CAP];
  int err = make_path(name, path);
  if (err < 0)
    return err;
  sweep_if_any();
  struct stat st;
  bool known = false;
  int fd = shm_open(path, O_RDONLY | O_CLOEXEC, 0);
  if (fd >= 0) {
    known = fstat(fd, &st) == 0;
    close(fd);
  }
  if (shm_unlink(path) < 0)
    return -errno;
  if (known)
    reg_forget(path, (uint64_t)st.st_dev, (uint64_t)st.st_ino);
  return 0;
}

/* ------------------------------------------------------------ 5. ShareableList */

/*
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
 * both spin, then yield, checking the holder's liveness every SL_CHECK_EVERY
 * yields, and give up with -ETIMEDOUT after mp__shm_list_wait_s seconds
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
#define SL_MAGIC 0x315453494c53706dULL /* "mpSLIST1" in memory on little-endian */
#define SL_VERSION 2 /* 2: 64-bit writer identities */
#define SL_MAX_CAP ((uint64_t)UINT32_MAX - 7)
/* Busy-wait rounds before yielding, and yields between liveness checks. */
#define SL_SPIN 100
#define SL_CHECK_EVERY 64

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

static void pause_round(unsigned spins) {
  if (spins < SL_SPIN)
    mp__cpu_relax();
  else
    sched_yield();
}

/* Whether it is time to check the liveness of whoever holds the slot. */
static bool check_due(unsigned spins) {
  return spins >= SL_SPIN && (spins - SL_SPIN) % SL_CHECK_EVERY == SL_CHECK_EVERY - 1;
}

/* This process's writer identity (see struct sl_slot). */
static uint64_t writer_self(void) {
  uint64_t start;
  pid_t me = self_ident(&start);
  return (uint64_t)(uint32_t)me | (uint64_t)(uint32_t)start << 32;
}

/* Whether the writer w is still running: its pid is alive and, when its
 * start time is known on both sides, started when w says. */
static bool writer_alive(uint64_t w) {
  /* the word keeps the low 32 bits of the start time */
  return alive_since((pid_t)(uint32_t)w, (uint32_t)(w >> 32), 0xffffffffull);
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

static int list_create(const char *name, const mp_item *items, size_t n,
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
  int err = shm_create(name, (size_t)total, opts, &l->shm);
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
  return list_create(name, items, n, opts, ret);
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

/* ------------------------------------------------------------ 6. manager */

/* The manager is process-private (malloc), like the handles it holds. Each
 * record outlives its handle: closing the handle early clears the record's
 * pointers (mp_shared_memory_close) and unlinking it sets `unlinked`, so that
 * shutdown unlinks and closes exactly what is left. */
struct mp_shm_manager {
  pid_t creator;
  pthread_mutex_t mutex;
  struct mgr_entry *head;
};

MP_EXPORT int mp_shm_manager_new(mp_shm_manager **ret) {
  if (!ret)
    return -EINVAL;
  mp_shm_manager *m = calloc(1, sizeof *m);
  if (!m)
    return -ENOMEM;
  m->creator = self_ident(NULL);
  pthread_mutex_init(&m->mutex, NULL);
  *ret = m;
  return 0;
}

/* Record a handle the manager now owns. */
static int mgr_adopt(mp_shm_manager *m, mp_shared_memory *shm, mp_shareable_list *list) {
  struct mgr_entry *e = calloc(1, sizeof *e);
  if (!e)
    return -ENOMEM;
  e->shm = shm;
  e->list = list;
  e->dev = shm->dev;
  e->ino = shm->ino;
  memcpy(e->path, shm->path, PATH_CAP);
  shm->mgr = e;
  pthread_mutex_lock(&m->mutex);
  e->next = m->head;
  m->head = e;
  pthread_mutex_unlock(&m->mutex);
  return 0;
}

MP_EXPORT int mp_shm_manager_shared_memory(mp_shm_manager *m, size_t size, mp_shared_memory **ret) {
  if (!m || !ret)
    return -EINVAL;
  if (m->creator != self_ident(NULL))
    return -ECHILD;
  mp_shared_memory *h;
  int err = shm_create(NULL, size, NULL, &h);
  if (err < 0)
    return err;
  err = mgr_adopt(m, h, NULL);
  if (err < 0) {
    mp_shared_memory_unlink(h);
    mp_shared_memory_close(h);
    return err;
  }
  *ret = h;
  return 0;
}

MP_EXPORT int mp_shm_manager_shareable_list(mp_shm_manager *m, const mp_item *items, size_t n,
                                            mp_shareable_list **ret) {
  if (!m || !ret)
    return -EINVAL;
  if (m->creator != self_ident(NULL))
    return -ECHILD;
  mp_shareable_list *l;
  int err = list_create(NULL, items, n, NULL, &l);
  if (err < 0)
    return err;
  err = mgr_adopt(m, l->shm, l);
  if (err < 0) {
    mp_shareable_list_unlink(l);
    mp_shareable_list_close(l);
    return err;
  }
  *ret = l;
  return 0;
}

MP_EXPORT int mp_shm_manager_shutdown(mp_shm_manager *m) {
  if (!m)
    return 0;
  if (m->creator != self_ident(NULL))
    return -ECHILD;
  pthread_mutex_lock(&m->mutex);
  while (m->head) {
    struct mgr_entry *e = m->head;
    if (!e->unlinked) {
      unlink_if_same(e->path, e->dev, e->ino);
      reg_forget(e->path, e->dev, e->ino);
    }
    if (e->list)
      mp_shareable_list_close(e->list);
    else if (e->shm)
      mp_shared_memory_close(e->shm);
    m->head = e->next;
    free(e);
  }
  pthread_mutex_unlock(&m->mutex);
  pthread_mutex_destroy(&m->mutex);
  free(m);
  return 0;
}
