/* SPDX-License-Identifier: MIT */
/*
 * SharedMemory and SharedMemoryManager: named POSIX shared memory blocks, and
 * the family-wide registry that unlinks the ones nobody meant to keep.
 * ShareableList, a block with its own protocol, is in shm_list.c; what the two
 * files share is in shm_internal.h.
 *
 * Map of this file:
 *   1. names
 *   2. process identity and liveness (also a ShareableList writer's)
 *   3. the registry of tracked blocks (family heap): its protocol and kill
 *      table below; crash points shm.create.recorded, shm.create.named,
 *      shm.adopt.linked, shm.unlink.unlinked, shm.sweep.unlinked and
 *      shm.reg.unlinked
 *   4. SharedMemory
 *   5. SharedMemoryManager: kept here because a handle's close and unlink
 *      update the manager's record of it (struct mp__shm_mgr_entry), and its
 *      shutdown unlinks through the registry's own helpers
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
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
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
#include "shm_internal.h"

/* ------------------------------------------------------------ 1. names */

/* Check a user's name and make the "/name" path shm_open wants. */
static int make_path(const char *name, char path[MP__SHM_PATH_CAP]) {
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
static void make_generated_path(char path[MP__SHM_PATH_CAP]) {
  uint32_t v;
  if (getrandom(&v, sizeof v, GRND_NONBLOCK) != (ssize_t)sizeof v)
    v = (uint32_t)mp__now_ns() ^ ((uint32_t)mp__pid() << 16);
  snprintf(path, MP__SHM_PATH_CAP, "/psm_%08x", (unsigned)v);
}

/* The directory glibc's shm_open() uses for "/name". */
#define SHM_DIR "/dev/shm"

/* Give the unnamed block open as fd the name `path` ("/name"): 0, -EEXIST
 * when the name is taken, or another negative errno. */
static int link_name(int fd, const char *path) {
  char dst[sizeof SHM_DIR + MP__SHM_PATH_CAP];
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

/* The cache behind mp__shm_self_ident() (shm_internal.h). */
_Atomic uint64_t mp__shm_ident_start;
_Atomic pid_t mp__shm_ident_pid;

uint64_t mp__shm_ident_load(pid_t me) {
  char st;
  uint64_t t = 0;
  if (read_stat(me, &st, &t) < 0)
    t = 0;
  atomic_store_explicit(&mp__shm_ident_start, t, memory_order_relaxed); /* published below */
  atomic_store_explicit(&mp__shm_ident_pid, me, memory_order_release);
  return t;
}

bool mp__shm_alive_since(pid_t pid, uint64_t start, uint64_t start_mask) {
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

static bool owner_alive(pid_t pid, uint64_t start) {
  return mp__shm_alive_since(pid, start, ~0ull);
}

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
  pid_t me = mp__shm_self_ident(NULL);
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
  pid_t me = mp__shm_self_ident(&start);
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

int mp__shm_create(const char *name, size_t size, const mp_shared_memory_options *opts,
                   mp_shared_memory **ret) {
  char path[MP__SHM_PATH_CAP];
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
  pid_t me = mp__shm_self_ident(&start);
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
  return mp__shm_create(name, size, opts, ret);
}

MP_EXPORT int mp_shared_memory_attach(const char *name, const mp_shared_memory_options *opts,
                                      mp_shared_memory **ret) {
  char path[MP__SHM_PATH_CAP];
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

/* A manager's record of one block it created (section 5). */
struct mp__shm_mgr_entry {
  struct mp__shm_mgr_entry *next;
  mp_shared_memory *shm;          /* the handle while open, else NULL */
  struct mp_shareable_list *list; /* the list that owns `shm`, if any */
  int unlinked;
  uint64_t dev, ino;
  char path[MP__SHM_PATH_CAP];
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
  char path[MP__SHM_PATH_CAP];
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

/* ------------------------------------------------------------ 5. SharedMemoryManager */

/* The manager is process-private (malloc), like the handles it holds. Each
 * record outlives its handle: closing the handle early clears the record's
 * pointers (mp_shared_memory_close) and unlinking it sets `unlinked`, so that
 * shutdown unlinks and closes exactly what is left. */
struct mp_shm_manager {
  pid_t creator;
  pthread_mutex_t mutex;
  struct mp__shm_mgr_entry *head;
};

MP_EXPORT int mp_shm_manager_new(mp_shm_manager **ret) {
  if (!ret)
    return -EINVAL;
  mp_shm_manager *m = calloc(1, sizeof *m);
  if (!m)
    return -ENOMEM;
  m->creator = mp__shm_self_ident(NULL);
  pthread_mutex_init(&m->mutex, NULL);
  *ret = m;
  return 0;
}

/* Record a handle the manager now owns. */
static int mgr_adopt(mp_shm_manager *m, mp_shared_memory *shm, mp_shareable_list *list) {
  struct mp__shm_mgr_entry *e = calloc(1, sizeof *e);
  if (!e)
    return -ENOMEM;
  e->shm = shm;
  e->list = list;
  e->dev = shm->dev;
  e->ino = shm->ino;
  memcpy(e->path, shm->path, MP__SHM_PATH_CAP);
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
  if (m->creator != mp__shm_self_ident(NULL))
    return -ECHILD;
  mp_shared_memory *h;
  int err = mp__shm_create(NULL, size, NULL, &h);
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
  if (m->creator != mp__shm_self_ident(NULL))
    return -ECHILD;
  mp_shareable_list *l;
  int err = mp__shm_list_create(NULL, items, n, NULL, &l);
  if (err < 0)
    return err;
  err = mgr_adopt(m, mp_shareable_list_shm(l), l);
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
  if (m->creator != mp__shm_self_ident(NULL))
    return -ECHILD;
  pthread_mutex_lock(&m->mutex);
  while (m->head) {
    struct mp__shm_mgr_entry *e = m->head;
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
