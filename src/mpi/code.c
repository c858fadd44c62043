/* SPDX-License-Identifier: MIT */
/*
 * Function and ctx identity across ranks.
 *
 * Every rank runs the same executable with the same shared libraries, but
 * ASLR loads each object at another address in each rank. A pointer into an
 * object's image (a function, a global, a string literal) is therefore sent
 * as (object index in rank 0's table, offset from the object's load
 * address) and mapped back with the worker's own load address of the same
 * object.
 *
 * "The same object" is checked, not assumed: rank 0 sends its table (name
 * and GNU build-id of each object, or the size of its image when it has no
 * build-id) when a pool starts, and each worker matches it against its own.
 * The executable (always entry 0, whose name is empty) must match or the
 * pool refuses to start (-ENOEXEC); a library that is missing or differs on
 * a worker only fails the tasks whose function or ctx lies in it (-ENOEXEC),
 * since ranks of one job may legitimately load different helper libraries
 * (network drivers differ from host to host).
 *
 * The table of rank 0 is built lazily and rebuilt when a pointer lies in no
 * known object (a library dlopen()ed since).
 */
#include <elf.h>
#include <errno.h>
#include <link.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define MAX_SEGS 8
#define MAX_ID 64

struct mod {
  char *name;
  uintptr_t base;         /* load bias (dlpi_addr) */
  uint64_t lo, hi;        /* offsets from base covering every PT_LOAD */
  uint64_t xlo[MAX_SEGS]; /* executable PT_LOAD ranges, offsets from base */
  uint64_t xhi[MAX_SEGS];
  int nx;
  unsigned char id[MAX_ID]; /* GNU build-id */
  uint32_t idlen;
};

struct table {
  struct mod *m;
  size_t n, cap;
};

static void table_clear(struct table *t) {
  for (size_t i = 0; i < t->n; i++)
    free(t->m[i].name);
  free(t->m);
  memset(t, 0, sizeof *t);
}

static void build_id(struct dl_phdr_info *info, struct mod *m) {
  for (int i = 0; i < info->dlpi_phnum; i++) {
    const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
    if (ph->p_type != PT_NOTE)
      continue;
    const char *p = (const char *)(info->dlpi_addr + ph->p_vaddr), *end = p + ph->p_memsz;
    while (p + sizeof(ElfW(Nhdr)) <= end) {
      const ElfW(Nhdr) *nh = (const ElfW(Nhdr) *)p;
      const char *name = p + sizeof *nh;
      const char *desc = name + ((nh->n_namesz + 3) & ~3u);
      const char *next = desc + ((nh->n_descsz + 3) & ~3u);
      if (next > end)
        break;
      if (nh->n_type == NT_GNU_BUILD_ID && nh->n_namesz == 4 && !memcmp(name, "GNU", 4) &&
          nh->n_descsz <= MAX_ID) {
        memcpy(m->id, desc, nh->n_descsz);
        m->idlen = nh->n_descsz;
        return;
      }
      p = next;
    }
  }
}

static int collect(struct dl_phdr_info *info, size_t size, void *data) {
  (void)size;
  struct table *t = data;
  if (t->n == t->cap) {
    size_t cap = t->cap ? 2 * t->cap : 32;
    struct mod *m = realloc(t->m, cap * sizeof *m);
    if (!m)
      return -ENOMEM;
    t->m = m;
    t->cap = cap;
  }
  struct mod *m = &t->m[t->n];
  memset(m, 0, sizeof *m);
  /* The executable is always the first object glibc reports, with an empty
   * name; later empty names are not comparable across ranks (skipped). */
  if (t->n > 0 && (!info->dlpi_name || !info->dlpi_name[0]))
    return 0;
  m->name = strdup(info->dlpi_name ? info->dlpi_name : "");
  if (!m->name)
    return -ENOMEM;
  m->base = info->dlpi_addr;
  m->lo = UINT64_MAX;
  for (int i = 0; i < info->dlpi_phnum; i++) {
    const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
    if (ph->p_type != PT_LOAD)
      continue;
    if (ph->p_vaddr < m->lo)
      m->lo = ph->p_vaddr;
    if (ph->p_vaddr + ph->p_memsz > m->hi)
      m->hi = ph->p_vaddr + ph->p_memsz;
    if ((ph->p_flags & PF_X) && m->nx < MAX_SEGS) {
      m->xlo[m->nx] = ph->p_vaddr;
      m->xhi[m->nx] = ph->p_vaddr + ph->p_memsz;
      m->nx++;
    }
  }
  if (m->lo == UINT64_MAX) {
    free(m->name);
    return 0;
  }
  build_id(info, m);
  t->n++;
  return 0;
}

static int table_build(struct table *t) {
  table_clear(t);
  int r = dl_iterate_phdr(collect, t);
  if (r < 0) {
    table_clear(t);
    return r;
  }
  return t->n ? 0 : -EPROTO;
}

static int in_exec(const struct mod *m, uint64_t off) {
  for (int i = 0; i < m->nx; i++)
    if (off >= m->xlo[i] && off < m->xhi[i])
      return 1;
  return 0;
}

/* ------------------------------------------------------------ rank 0 */

static pthread_mutex_t self_mu = PTHREAD_MUTEX_INITIALIZER;
static struct table self;
/* Entries of `self` keep their indexes across rebuilds only if nothing was
 * unloaded; a pool sends its table when it starts and keeps using it, so
 * rank 0 keeps the table a pool was started with (frozen while a pool runs
 * and rebuilt only between pools or to add objects at the end). */

static int lookup(const struct table *t, uintptr_t p, int need_exec, mpi__ref *out) {
  for (size_t i = 0; i < t->n; i++) {
    const struct mod *m = &t->m[i];
    if (p < m->base)
      continue;
    uint64_t off = (uint64_t)(p - m->base);
    if (off < m->lo || off >= m->hi)
      continue;
    int x = in_exec(m, off);
    if (need_exec && !x)
      return -EINVAL;
    out->mod = (uint32_t)i;
    out->exec = (uint32_t)x;
    out->off = off;
    return 0;
  }
  return -ENOENT;
}

int mpi__ref_of(const void *p, int need_exec, mpi__ref *out) {
  if (!p) {
    out->mod = MPI__REF_NULL;
    out->exec = 0;
    out->off = 0;
    return 0;
  }
  pthread_mutex_lock(&self_mu);
  int r = self.n ? lookup(&self, (uintptr_t)p, need_exec, out) : -ENOENT;
  if (r == -ENOENT) {
    /* Objects loaded since are appended by a rebuild only if every old entry
     * keeps its index (objects are never reordered by dl_iterate_phdr; an
     * unloaded one would shift them, and then the pointer is refused). */
    struct table t = {0};
    if (table_build(&t) == 0) {
      int same = t.n >= self.n;
      for (size_t i = 0; same && i < self.n; i++)
        same = !strcmp(t.m[i].name, self.m[i].name) && t.m[i].base == self.m[i].base;
      if (same) {
        table_clear(&self);
        self = t;
        r = lookup(&self, (uintptr_t)p, need_exec, out);
      } else {
        table_clear(&t);
      }
    }
  }
  pthread_mutex_unlock(&self_mu);
  return r == -ENOENT ? -EINVAL : r;
}

/* Wire form: u32 count, then per object u32 namelen, u32 idlen, u64 size,
 * name bytes, id bytes. */
int mpi__modtab_pack(void **buf, size_t *len) {
  pthread_mutex_lock(&self_mu);
  int r = self.n ? 0 : table_build(&self);
  if (r < 0) {
    pthread_mutex_unlock(&self_mu);
    return r;
  }
  size_t n = 4;
  for (size_t i = 0; i < self.n; i++)
    n += 16 + strlen(self.m[i].name) + self.m[i].idlen;
  char *b = malloc(n), *p = b;
  if (!b) {
    pthread_mutex_unlock(&self_mu);
    return -ENOMEM;
  }
  uint32_t cnt = (uint32_t)self.n;
  memcpy(p, &cnt, 4);
  p += 4;
  for (size_t i = 0; i < self.n; i++) {
    const struct mod *m = &self.m[i];
    uint32_t nl = (uint32_t)strlen(m->name);
    uint64_t sz = m->hi - m->lo;
    memcpy(p, &nl, 4);
    memcpy(p + 4, &m->idlen, 4);
    memcpy(p + 8, &sz, 8);
    memcpy(p + 16, m->name, nl);
    memcpy(p + 16 + nl, m->id, m->idlen);
    p += 16 + nl + m->idlen;
  }
  pthread_mutex_unlock(&self_mu);
  *buf = b;
  *len = n;
  return 0;
}

/* ------------------------------------------------------------ a worker */

/* Rank 0's objects mapped to this worker's: local[i] is the local entry of
 * rank 0's object i, or NULL when it is missing or differs here. Only the
 * worker's serving thread uses these. */
static struct table mine;
static const struct mod **local;
static size_t nlocal;

int mpi__modtab_match(const void *buf, size_t len) {
  int r = table_build(&mine);
  if (r < 0)
    return r;
  const char *p = buf, *end = p + len;
  uint32_t cnt;
  if (len < 4)
    return -EPROTO;
  memcpy(&cnt, p, 4);
  p += 4;
  free(local);
  nlocal = 0;
  local = calloc(cnt ? cnt : 1, sizeof *local);
  if (!local)
    return -ENOMEM;
  for (uint32_t i = 0; i < cnt; i++) {
    uint32_t nl, il;
    uint64_t sz;
    if (end - p < 16)
      return -EPROTO;
    memcpy(&nl, p, 4);
    memcpy(&il, p + 4, 4);
    memcpy(&sz, p + 8, 8);
    if ((uint64_t)(end - p - 16) < (uint64_t)nl + il)
      return -EPROTO;
    const char *name = p + 16;
    const unsigned char *id = (const unsigned char *)name + nl;
    p += 16 + nl + il;
    for (size_t j = 0; j < mine.n; j++) {
      const struct mod *m = &mine.m[j];
      if ((i == 0) != (j == 0))
        continue; /* the executable matches only the executable */
      if (i > 0 && (strlen(m->name) != nl || memcmp(m->name, name, nl)))
        continue;
      int same = il || m->idlen ? il == m->idlen && !memcmp(id, m->id, il) : m->hi - m->lo == sz;
      if (same)
        local[i] = m;
      break;
    }
  }
  nlocal = cnt;
  return cnt && local[0] ? 0 : -ENOEXEC;
}

int mpi__ref_resolve(const mpi__ref *r, int need_exec, void **out) {
  if (r->mod == MPI__REF_NULL) {
    *out = NULL;
    return need_exec ? -EINVAL : 0;
  }
  if (r->mod >= nlocal)
    return -EINVAL;
  const struct mod *m = local[r->mod];
  if (!m)
    return -ENOEXEC;
  if (r->off < m->lo || r->off >= m->hi || (need_exec && !in_exec(m, r->off)))
    return -ENOEXEC;
  *out = (void *)(m->base + (uintptr_t)r->off);
  return 0;
}
