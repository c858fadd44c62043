/* SPDX-License-Identifier: MIT */
/*
 * The family heap: one anonymous MAP_SHARED region and a crash-safe allocator.
 *
 * Map of this file:
 *   1. region layout and the allocator's protocol
 *   2. the undo journal (what makes a crash inside the allocator harmless)
 *   3. bins and blocks
 *   4. locking and recovery
 *   5. mapping the region
 *   6. public entry points
 *
 * 1. Layout. The region starts with `struct heap` (below), then blocks. A block
 * is a header word (its size, a multiple of 16, with INUSE and PREV_INUSE
 * bits) followed by its payload, so payloads are 16-byte aligned. A free block
 * also holds `next` and `prev` links after the header and its size in its last
 * word (the footer), so that freeing its right neighbour can merge with it.
 * Blocks tile [first, top); beyond `top` lies the untouched reserve. The block
 * just below `top` is always in use: a free block reaching `top` is given back
 * to it. Between `struct heap` and `first` lies the live map: one bit per
 * 16-byte granule, set exactly for the payload address of each allocated
 * block. A header alone cannot tell a live block: a freed block merged into
 * its left neighbour keeps its old header word, and user data inside a block
 * can look like one. The map makes mp_heap_free() and mp_heap_realloc() refuse
 * every pointer that is not a live block's payload (double frees in every
 * neighbour configuration, interior pointers) at the cost of one journaled
 * word per allocation and per free; its pages are touched only where blocks
 * were ever carved (1/128 of the carved bytes).
 *
 * Who writes what: every allocator word (header fields, block headers, links
 * and footers) is written only by the holder of `heap->mutex`, a robust
 * process-shared mutex, and only through jset(), which journals it.
 *
 * 2. The journal: libmp's one undo journal (journal.h states its rule and
 * why each kill is harmless). Before jset() changes a word it appends
 * (address, old value) to `heap->log` and only then stores the new value; the
 * operation ends by emptying the log. A process killed at any step leaves either an empty log (the
 * operation happened whole) or a log whose replay, newest first, restores every
 * word the operation touched (it did not happen at all). The next locker is told
 * EOWNERDEAD by the kernel's robust-futex list, replays the log, and marks the
 * mutex consistent. Stores are ordered against a crash only by the compiler
 * (a killed process's retired stores are visible to the others), hence the
 * signal fences. A block that a dead process allocated and never freed stays
 * allocated: the heap cannot know whether someone else was handed its pointer.
 *
 * Nothing outside the journal may change before the journal commits: a page
 * release (MADV_REMOVE) zeroes words the journal may have to restore (a
 * merged neighbour's header and footer, the blocks above a lowered `top`).
 * So a free first commits, and only then, still holding the mutex, gives
 * pages back: they then belong to no block, and a kill in the middle of the
 * release leaves some of them zeroed, which no one reads. The trim mark
 * `high` is lowered after the release by one plain store; a kill before it
 * leaves `high` above `top`, and the next trim releases the same range again
 * (MADV_REMOVE is idempotent).
 *
 * What a SIGKILL at each step leaves (crash points in crashpoints.def), and
 * who repairs it: the next locker of the mutex, told EOWNERDEAD.
 *   heap.alloc.locked, heap.free.locked  nothing written: empty journal
 *   heap.journal.logged    an entry logged, its word not yet written: the
 *                          replay writes back the value it already has
 *   heap.journal.stored    some words written: replay restores them all; the
 *                          operation did not happen
 *   heap.alloc.journaled, heap.free.journaled  every word written, not yet
 *                          committed: rolled back whole (a free leaves the
 *                          block allocated, an allocation leaves it free)
 *   heap.alloc.committed   the block is allocated and its pointer lost with
 *                          the process: it stays allocated (a leak, as above)
 *   heap.free.committed    the free happened; pages not yet released stay
 *                          committed until a later trim of the same range
 *   heap.trim.released     pages given back, `high` not yet lowered: the
 *                          next trim releases them again
 *   heap.trim.marked       the trim happened whole
 */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "crash.h"
#include "internal.h"
#include "journal.h"

/* ------------------------------------------------------------ 1. layout */

#define HEAP_MAGIC 0x6c69626d70686561ULL /* "libmphea" */
#define LOG_MAX 64                       /* the most words one operation writes */
#define NBINS 192
#define SMALL_LIMIT 1024 /* sizes up to this have a bin each (16-byte steps) */
#define MIN_BLOCK 32
#define INUSE ((uintptr_t)1)
#define PREV_INUSE ((uintptr_t)2)
#define FLAGS (INUSE | PREV_INUSE)
#define DEFAULT_SIZE ((size_t)1 << 30)
#define MIN_SIZE ((size_t)64 << 10)
/* Free blocks at least this large give their interior pages back to the kernel,
 * and so does the reserve above `top` once it shrinks by as much. */
#define TRIM_THRESHOLD ((uintptr_t)MP__HEAP_TRIM)

struct heap {
  uint64_t magic;
  uintptr_t base, end; /* the region */
  uintptr_t first;     /* the first block */
  pthread_mutex_t mutex;
  /* Journal: entries [0, log_n) are valid. */
  uint64_t log_n;
  mp__journal_entry log[LOG_MAX];
  /* Allocator state, written through jset() only. */
  uintptr_t top;    /* start of the untouched reserve */
  uintptr_t high;   /* pages below this may hold data (trim mark) */
  uintptr_t used;   /* bytes in allocated blocks */
  uintptr_t blocks; /* allocated blocks */
  uintptr_t binmap[NBINS / 64];
  uintptr_t bins[NBINS]; /* first free block of each bin, 0 for none */
  uintptr_t recoveries;  /* times a dead holder's operation was undone (tests) */
  uintptr_t *live;       /* the live map: bit (p - first - 8) / 16 for payload p */
  /* Well-known slots, NULL until an area publishes its family-wide object
   * there with compare-exchange (mp__heap_root()); never written by the
   * allocator. */
  _Atomic(void *) roots[MP__HEAP_ROOTS];
};

_Static_assert(sizeof(uintptr_t) == 8, "libmp's heap assumes 64-bit words");

/* The process that mapped the heap, and its exit report (section 6). */
static pid_t mapper;
static void exit_report(void);

/* The mapped heap, or NULL. Set once per family (inherited across fork). */
static _Atomic(struct heap *) the_heap;
static pthread_mutex_t init_mutex = PTHREAD_MUTEX_INITIALIZER;

/* ------------------------------------------------------------ 2. journal */

/* The journal itself is libmp's one undo journal (journal.h); this file's
 * words are uintptr_t, the same 64-bit type as the journal's. */
_Static_assert(sizeof(uintptr_t) == sizeof(uint64_t), "heap words are journal words");

static void jset(struct heap *h, uintptr_t *addr, uintptr_t val) {
  mp__journal_log(&h->log_n, h->log, LOG_MAX, (uint64_t *)addr);
  MP__CRASH(HEAP_JOURNAL_LOGGED);
  *addr = val;
  MP__CRASH(HEAP_JOURNAL_STORED);
}

static void journal_commit(struct heap *h) { mp__journal_commit(&h->log_n); }

static void journal_rollback(struct heap *h) { mp__journal_replay(&h->log_n, h->log, LOG_MAX); }

/* ------------------------------------------------------------ 3. bins, blocks */

static inline uintptr_t *hdr(uintptr_t b) { return (uintptr_t *)b; }
static inline uintptr_t bsize(uintptr_t b) { return *hdr(b) & ~FLAGS; }
static inline uintptr_t *nextp(uintptr_t b) { return (uintptr_t *)(b + 8); }
static inline uintptr_t *prevp(uintptr_t b) { return (uintptr_t *)(b + 16); }
static inline uintptr_t *footer(uintptr_t b, uintptr_t size) { return (uintptr_t *)(b + size - 8); }

static unsigned bin_of(uintptr_t size) {
  if (size <= SMALL_LIMIT)
    return (unsigned)(size >> 4);                     /* 2..64 */
  unsigned lg = 63u - (unsigned)__builtin_clzl(size); /* >= 10 */
  unsigned sub = (unsigned)(size >> (lg - 2)) & 3u;
  unsigned b = 65 + (lg - 10) * 4 + sub;
  return b < NBINS ? b : NBINS - 1;
}

static void bin_insert(struct heap *h, uintptr_t b, uintptr_t size) {
  unsigned i = bin_of(size);
  uintptr_t head = h->bins[i];
  jset(h, nextp(b), head);
  jset(h, prevp(b), 0);
  if (head)
    jset(h, prevp(head), b);
  jset(h, &h->bins[i], b);
  if (!(h->binmap[i / 64] & ((uintptr_t)1 << (i % 64))))
    jset(h, &h->binmap[i / 64], h->binmap[i / 64] | ((uintptr_t)1 << (i % 64)));
}

static void bin_remove(struct heap *h, uintptr_t b, uintptr_t size) {
  unsigned i = bin_of(size);
  uintptr_t n = *nextp(b), p = *prevp(b);
  if (p)
    jset(h, nextp(p), n);
  else
    jset(h, &h->bins[i], n);
  if (n)
    jset(h, prevp(n), p);
  if (!h->bins[i])
    jset(h, &h->binmap[i / 64], h->binmap[i / 64] & ~((uintptr_t)1 << (i % 64)));
}

/* Give the pages strictly inside [from, to) back to the kernel: they read as
 * zeros afterwards and cost no memory. Idempotent, so safe to redo. */
static void release_pages(uintptr_t from, uintptr_t to) {
  uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
  uintptr_t a = (from + pg - 1) & ~(pg - 1), z = to & ~(pg - 1);
  if (z > a)
    madvise((void *)a, z - a, MADV_REMOVE);
}

/* Find a free block of at least `need` bytes, or 0. */
static uintptr_t bin_find(struct heap *h, uintptr_t need) {
  unsigned i = bin_of(need);
  if (i > 64) {
    /* Range bins hold mixed sizes: first fit within the first one. */
    for (uintptr_t b = h->bins[i]; b; b = *nextp(b))
      if (bsize(b) >= need)
        return b;
    i++;
  }
  for (; i < NBINS; i++) {
    uintptr_t word = h->binmap[i / 64] >> (i % 64);
    if (!word) {
      i = (i | 63u); /* skip to the next bitmap word */
      continue;
    }
    i += (unsigned)__builtin_ctzl(word);
    if (i >= NBINS)
      break;
    return h->bins[i]; /* every block in a higher bin is large enough */
  }
  return 0;
}

static uintptr_t need_of(size_t n) {
  if (n > ((uintptr_t)1 << 60))
    return 0;
  uintptr_t need = ((uintptr_t)n + 8 + 15) & ~(uintptr_t)15;
  return need < MIN_BLOCK ? MIN_BLOCK : need;
}

/* Mark block b's payload live or not in the live map, journaled. */
static void live_set(struct heap *h, uintptr_t b, bool on) {
  uintptr_t i = (b - h->first) >> 4, bit = (uintptr_t)1 << (i % 64);
  uintptr_t *w = &h->live[i / 64];
  jset(h, w, on ? (*w | bit) : (*w & ~bit));
}

/* Allocate with the mutex held. Returns the payload or NULL. */
static void *alloc_locked(struct heap *h, uintptr_t need) {
  uintptr_t b = bin_find(h, need);
  if (b) {
    uintptr_t size = bsize(b);
    bin_remove(h, b, size);
    uintptr_t prev_flag = *hdr(b) & PREV_INUSE;
    if (size - need >= MIN_BLOCK) {
      uintptr_t r = b + need, rsize = size - need;
      jset(h, hdr(b), need | INUSE | prev_flag);
      jset(h, hdr(r), rsize | PREV_INUSE);
      jset(h, footer(r, rsize), rsize);
      bin_insert(h, r, rsize);
      size = need;
    } else {
      jset(h, hdr(b), size | INUSE | prev_flag);
      uintptr_t nb = b + size;
      if (nb != h->top)
        jset(h, hdr(nb), *hdr(nb) | PREV_INUSE);
    }
    jset(h, &h->used, h->used + size);
    jset(h, &h->blocks, h->blocks + 1);
    live_set(h, b, true);
    return (void *)(b + 8);
  }
  /* Carve from the reserve. The block below top is in use, so PREV_INUSE. */
  if (h->end - h->top < need)
    return NULL;
  b = h->top;
  jset(h, hdr(b), need | INUSE | PREV_INUSE);
  jset(h, &h->top, b + need);
  if (h->top > h->high)
    jset(h, &h->high, h->top);
  jset(h, &h->used, h->used + need);
  jset(h, &h->blocks, h->blocks + 1);
  live_set(h, b, true);
  return (void *)(b + 8);
}

/* Whether p is a live block's payload: its bit in the live map is set (the
 * header checks guard against a map that disagrees, which mp__heap_check()
 * would report). */
static bool live_block(struct heap *h, uintptr_t p) {
  if ((p & 15) != 0 || p < h->first + 8 || p >= h->top)
    return false;
  uintptr_t i = (p - h->first - 8) >> 4;
  if (!((h->live[i / 64] >> (i % 64)) & 1))
    return false;
  uintptr_t b = p - 8, w = *hdr(b), size = w & ~FLAGS;
  return (w & INUSE) && size >= MIN_BLOCK && (size & 15) == 0 && size <= h->top - b;
}

/* Free block b with the mutex held, merging with free neighbours. Returns the
 * free block the memory ended in, with its size in *fsize, or 0 when it went
 * back to the reserve. */
static uintptr_t free_locked(struct heap *h, uintptr_t b, uintptr_t *fsize) {
  uintptr_t size = bsize(b);
  live_set(h, b, false);
  jset(h, &h->used, h->used - size);
  jset(h, &h->blocks, h->blocks - 1);
  uintptr_t nb = b + size;
  if (nb != h->top && !(*hdr(nb) & INUSE)) {
    uintptr_t nsize = bsize(nb);
    bin_remove(h, nb, nsize);
    size += nsize;
  }
  if (!(*hdr(b) & PREV_INUSE)) {
    uintptr_t psize = *(uintptr_t *)(b - 8);
    uintptr_t pb = b - psize;
    bin_remove(h, pb, psize);
    b = pb;
    size += psize;
  }
  if (b + size == h->top) {
    jset(h, &h->top, b);
    *fsize = 0;
    return 0;
  }
  jset(h, hdr(b), size | PREV_INUSE);
  jset(h, footer(b, size), size);
  nb = b + size;
  jset(h, hdr(nb), *hdr(nb) & ~PREV_INUSE);
  bin_insert(h, b, size);
  *fsize = size;
  return b;
}

/* ------------------------------------------------------------ 4. locking */

/* Words a recovery by this thread undid, to log once the mutex is released
 * (a log handler must not run under the family's heap lock); -1: none. */
static __thread long recovered_words = -1;

/* The previous holder died inside an operation: undo what it began. */
static void heap_repair(void *arg) {
  struct heap *h = arg;
  recovered_words = (long)h->log_n;
  journal_rollback(h);
  h->recoveries++;
}

static void heap_lock(struct heap *h) {
  /* Not pthread_mutex_lock(): a process killed inside the mutex may leave its
   * sleepers unwoken; this one sleeps in slices (lock.c). */
  static const mp__deadline forever = {.forever = true};
  (void)mp__robust_mutex_take(&h->mutex, &forever, heap_repair, h);
}

static void heap_unlock(struct heap *h) {
  journal_commit(h);
  pthread_mutex_unlock(&h->mutex);
  if (MP__UNLIKELY(recovered_words >= 0)) {
    MP__LOG(MP_LOG_INFO,
            "heap: a process died inside the family heap's allocator; %ld words of its "
            "operation were undone",
            recovered_words);
    recovered_words = -1;
  }
}

/* With the mutex held, after a free has COMMITTED (see the map at the top:
 * a release before the commit would zero words a rollback restores): give
 * back the pages of the reserve that the top left behind, and the interior
 * pages of a large free block (its header, links and footer stay). */
static void trim_locked(struct heap *h, uintptr_t freed, uintptr_t size) {
  if (h->high - h->top >= TRIM_THRESHOLD) {
    release_pages(h->top, h->high);
    MP__CRASH(HEAP_TRIM_RELEASED);
    atomic_signal_fence(memory_order_seq_cst); /* the store follows the release */
    h->high = h->top; /* one word, outside the journal: see the map */
    MP__CRASH(HEAP_TRIM_MARKED);
  }
  if (freed && size >= TRIM_THRESHOLD)
    release_pages(freed + 32, freed + size - 8); /* keep header, links, footer */
}

/* ------------------------------------------------------------ 5. mapping */

static int parse_size(const char *s, size_t *out) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno || end == s)
    return -EINVAL;
  unsigned shift = 0;
  switch (*end) {
  case 'k':
  case 'K':
    shift = 10;
    end++;
    break;
  case 'm':
  case 'M':
    shift = 20;
    end++;
    break;
  case 'g':
  case 'G':
    shift = 30;
    end++;
    break;
  default: break;
  }
  if (*end || v > (~0ULL >> (shift + 1)))
    return -EINVAL;
  *out = (size_t)(v << shift);
  return 0;
}

static int map_heap(size_t size) {
  if (size < MIN_SIZE)
    return -EINVAL;
  size = (size + 4095) & ~(size_t)4095;
  void *m =
      mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED)
    return -ENOMEM;
  struct heap *h = m;
  h->magic = HEAP_MAGIC;
  h->base = (uintptr_t)m;
  h->end = h->base + size;
  int r = mp__robust_mutex_init(&h->mutex, false);
  if (r < 0) {
    munmap(m, size);
    return r;
  }
  /* The live map: a bit per 16 bytes of the whole region (an over-count by
   * the map's own size, which keeps the arithmetic simple). */
  uintptr_t map_words = (size / 16 + 63) / 64;
  h->live = (uintptr_t *)((h->base + sizeof *h + 15) & ~(uintptr_t)15);
  uintptr_t map_end = (uintptr_t)(h->live + map_words);
  if (map_end + MIN_BLOCK + 16 > h->base + size) {
    munmap(m, size);
    return -EINVAL;
  }
  /* Payloads are 16-aligned: blocks start 8 bytes before a 16 boundary. */
  h->first = ((map_end + 15) & ~(uintptr_t)15) + 8;
  h->top = h->first;
  h->high = h->first;
  atomic_store_explicit(&the_heap, h, memory_order_release);
  mapper = mp__pid();
  atexit(exit_report);
  return 0;
}

static struct heap *heap_get(void) {
  struct heap *h = atomic_load_explicit(&the_heap, memory_order_acquire);
  if (MP__LIKELY(h))
    return h;
  if (mp__heap_ensure() < 0)
    return NULL;
  return atomic_load_explicit(&the_heap, memory_order_acquire);
}

int mp__heap_ensure(void) {
  if (atomic_load_explicit(&the_heap, memory_order_acquire))
    return 0;
  pthread_mutex_lock(&init_mutex);
  int r = 0;
  if (!atomic_load_explicit(&the_heap, memory_order_relaxed)) {
    size_t size = DEFAULT_SIZE;
    const char *env = getenv("MP_HEAP_SIZE");
    if (env && *env)
      r = parse_size(env, &size);
    if (r == 0)
      r = map_heap(size);
  }
  pthread_mutex_unlock(&init_mutex);
  return r;
}

/* ------------------------------------------------------------ 6. public */

MP_EXPORT int mp_heap_init(const mp_heap_options *opts) {
  pthread_mutex_lock(&init_mutex);
  int r;
  if (atomic_load_explicit(&the_heap, memory_order_relaxed)) {
    r = -EALREADY;
  } else {
    size_t size = DEFAULT_SIZE;
    r = 0;
    if (opts && opts->size) {
      size = opts->size;
    } else {
      const char *env = getenv("MP_HEAP_SIZE");
      if (env && *env)
        r = parse_size(env, &size);
    }
    if (r == 0)
      r = map_heap(size);
  }
  pthread_mutex_unlock(&init_mutex);
  return r;
}

/* Allocate, and when `where` is given store the block's address there in
 * the same journaled operation: a kill leaves either no block and *where
 * unchanged, or the block recorded in *where. */
/* Whether `where` is a word of the heap (see mp__heap_alloc_into). */
static bool in_heap(const struct heap *h, void **where) {
  uintptr_t w = (uintptr_t)where;
  return w >= h->first && w + sizeof *where <= h->end && (w & 7) == 0;
}

static void *heap_alloc(size_t size, void **where) {
  struct heap *h = heap_get();
  uintptr_t need = need_of(size);
  if (!h || !need || (where && !in_heap(h, where)))
    return NULL;
  heap_lock(h);
  MP__CRASH(HEAP_ALLOC_LOCKED);
  void *p = alloc_locked(h, need);
  if (p && where)
    jset(h, (uintptr_t *)where, (uintptr_t)p);
  MP__CRASH(HEAP_ALLOC_JOURNALED);
  journal_commit(h);
  MP__CRASH(HEAP_ALLOC_COMMITTED);
  heap_unlock(h);
  return p;
}

MP_EXPORT void *mp_heap_alloc(size_t size) { return heap_alloc(size, NULL); }

void *mp__heap_alloc_into(size_t size, void **where) { return heap_alloc(size, where); }

MP_EXPORT void *mp_heap_calloc(size_t n, size_t size) {
  size_t total;
  if (__builtin_mul_overflow(n, size, &total))
    return NULL;
  void *p = mp_heap_alloc(total);
  if (p)
    memset(p, 0, total);
  return p;
}

/* Free ptr, or (ptr NULL, `where` given) the block whose address *where
 * holds, clearing *where in the same journaled operation. */
static int heap_free(void *ptr, void **where) {
  struct heap *h = atomic_load_explicit(&the_heap, memory_order_acquire);
  if (!h || (where && !in_heap(h, where)))
    return -EINVAL;
  heap_lock(h);
  MP__CRASH(HEAP_FREE_LOCKED);
  if (where)
    ptr = *where;
  if (!ptr) {
    heap_unlock(h);
    return 0;
  }
  if (!live_block(h, (uintptr_t)ptr)) {
    heap_unlock(h);
    return -EINVAL;
  }
  if (where)
    jset(h, (uintptr_t *)where, 0);
  uintptr_t fsize;
  uintptr_t fb = free_locked(h, (uintptr_t)ptr - 8, &fsize);
  MP__CRASH(HEAP_FREE_JOURNALED);
  journal_commit(h);
  MP__CRASH(HEAP_FREE_COMMITTED);
  trim_locked(h, fb, fsize);
  heap_unlock(h);
  return 0;
}

MP_EXPORT int mp_heap_free(void *ptr) { return ptr ? heap_free(ptr, NULL) : 0; }

int mp__heap_free_from(void **where) { return heap_free(NULL, where); }

MP_EXPORT void *mp_heap_realloc(void *ptr, size_t size) {
  if (!ptr)
    return mp_heap_alloc(size);
  struct heap *h = atomic_load_explicit(&the_heap, memory_order_acquire);
  uintptr_t need = need_of(size);
  if (!h || !need)
    return NULL;
  heap_lock(h);
  if (!live_block(h, (uintptr_t)ptr)) {
    heap_unlock(h);
    return NULL;
  }
  uintptr_t cur = bsize((uintptr_t)ptr - 8);
  heap_unlock(h);
  if (need <= cur)
    return ptr;
  void *n = mp_heap_alloc(size);
  if (!n)
    return NULL;
  memcpy(n, ptr, cur - 8);
  mp_heap_free(ptr);
  return n;
}

MP_EXPORT int mp_heap_contains(const void *ptr) {
  struct heap *h = atomic_load_explicit(&the_heap, memory_order_acquire);
  uintptr_t p = (uintptr_t)ptr;
  return h && p >= h->first && p < h->end;
}

MP_EXPORT int mp_heap_stats_get(mp_heap_stats *out) {
  if (!out)
    return -EINVAL;
  struct heap *h = heap_get();
  if (!h)
    return -ENOMEM;
  heap_lock(h);
  mp_heap_stats s = {
      .size = h->end - h->base,
      .used = h->used,
      .committed = h->high - h->base,
      .blocks = h->blocks,
  };
  heap_unlock(h);
  *out = s;
  return 0;
}

int mp__heap_check(void) {
  struct heap *h = heap_get();
  if (!h)
    return -ENOMEM;
  heap_lock(h);
  int bad = 0;
  uintptr_t used = 0, blocks = 0, nfree = 0;
  bool prev_inuse = true;
  uintptr_t b = h->first;
  while (b < h->top && !bad) {
    uintptr_t w = *hdr(b), size = w & ~FLAGS;
    if (size < MIN_BLOCK || (size & 15) || size > h->top - b)
      bad = 1; /* tiling broken */
    else if (((w & PREV_INUSE) != 0) != prev_inuse)
      bad = 2; /* PREV_INUSE disagrees with the previous block */
    else if (!(w & INUSE) && !prev_inuse)
      bad = 3; /* two free neighbours were not merged */
    else if (!(w & INUSE) && *footer(b, size) != size)
      bad = 4; /* free block without a footer */
    if (!bad) {
      uintptr_t i = (b - h->first) >> 4;
      if (((h->live[i / 64] >> (i % 64)) & 1) != ((w & INUSE) != 0))
        bad = 13; /* the live map disagrees with a block */
    }
    if (!bad) {
      prev_inuse = w & INUSE;
      if (prev_inuse) {
        used += size;
        blocks++;
      } else {
        nfree++;
      }
      b += size;
    }
  }
  if (!bad && b != h->top)
    bad = 5;
  if (!bad && !prev_inuse)
    bad = 6; /* a free block touches the top */
  if (!bad && (used != h->used || blocks != h->blocks))
    bad = 7; /* counters disagree with the blocks */
  uintptr_t listed = 0;
  for (unsigned i = 0; i < NBINS && !bad; i++) {
    bool nonempty = (h->binmap[i / 64] >> (i % 64)) & 1;
    if (nonempty != (h->bins[i] != 0))
      bad = 8; /* bitmap disagrees with the bin */
    uintptr_t prev = 0;
    for (uintptr_t f = h->bins[i]; f && !bad; f = *nextp(f)) {
      if (f < h->first || f >= h->top || (*hdr(f) & INUSE) || bin_of(bsize(f)) != i ||
          *prevp(f) != prev)
        bad = 9; /* a listed block is not a free block of this bin */
      prev = f;
      if (++listed > nfree)
        bad = 10; /* more listed than free: a cycle or a stale link */
    }
  }
  if (!bad && listed != nfree)
    bad = 11; /* a free block is missing from the bins */
  if (!bad && h->log_n != 0)
    bad = 12;
  heap_unlock(h);
  return -bad;
}

/* Live libmp objects by kind, from the tag each one starts with. */
static const struct {
  uint32_t tag;
  const char *name;
} kinds[] = {
    {MP__TAG_LOCK, "Lock/RLock"},  {MP__TAG_SEMAPHORE, "Semaphore"}, {MP__TAG_EVENT, "Event"},
    {MP__TAG_CONDITION, "Condition"}, {MP__TAG_BARRIER, "Barrier"}, {MP__TAG_PROCESS, "Process"},
    {MP__TAG_VALUE, "Value/Array"}, {MP__TAG_QUEUE, "Queue"},
};
#define NKINDS (sizeof kinds / sizeof kinds[0])

struct census {
  mp_heap_stats st;
  uintptr_t count[NKINDS], other, other_bytes;
};

static void take_census(struct heap *h, struct census *c) {
  memset(c, 0, sizeof *c);
  heap_lock(h);
  c->st = (mp_heap_stats){.size = h->end - h->base, .used = h->used,
                          .committed = h->high - h->base, .blocks = h->blocks};
  for (uintptr_t b = h->first; b < h->top; b += bsize(b)) {
    if (!(*hdr(b) & INUSE))
      continue;
    uint32_t tag = *(const uint32_t *)(b + 8);
    size_t k = 0;
    while (k < NKINDS && kinds[k].tag != tag)
      k++;
    if (k < NKINDS) {
      c->count[k]++;
    } else {
      c->other++;
      c->other_bytes += bsize(b);
    }
  }
  heap_unlock(h);
}

/* The census as text: one line of figures, one of objects. */
static int census_text(const struct census *c, char *buf, size_t cap) {
  int n = snprintf(buf, cap,
                   "heap: %zu bytes reserved, %zu committed, %zu bytes in %zu blocks\n"
                   "live objects:",
                   c->st.size, c->st.committed, c->st.used, c->st.blocks);
  for (size_t k = 0; k < NKINDS && n >= 0 && (size_t)n < cap; k++)
    if (c->count[k])
      n += snprintf(buf + n, cap - (size_t)n, " %lu %s,", (unsigned long)c->count[k],
                    kinds[k].name);
  if (n >= 0 && (size_t)n < cap)
    n += snprintf(buf + n, cap - (size_t)n,
                  " %lu other blocks of %lu bytes (data, messages, pool and manager state)\n",
                  (unsigned long)c->other, (unsigned long)c->other_bytes);
  return n < 0 ? -EINVAL : ((size_t)n >= cap ? (int)cap - 1 : n);
}

MP_EXPORT int mp_heap_report(int fd) {
  struct heap *h = heap_get();
  if (!h)
    return -ENOMEM;
  if (fd < 0)
    return -EBADF;
  struct census c;
  take_census(h, &c);
  char buf[1024];
  int n = census_text(&c, buf, sizeof buf);
  for (int off = 0; off < n;) {
    ssize_t w = write(fd, buf + off, (size_t)(n - off));
    if (w < 0 && errno == EINTR)
      continue;
    if (w < 0)
      return -errno;
    off += (int)w;
  }
  return 0;
}

/* At the normal exit of the process that mapped the heap, under MP_LOG=info:
 * what is still allocated (objects not freed, messages not taken). */
static void exit_report(void) {
  struct heap *h = atomic_load_explicit(&the_heap, memory_order_acquire);
  if (!h || mp__pid() != mapper || !mp__log_enabled(MP_LOG_INFO))
    return;
  struct census c;
  take_census(h, &c);
  char buf[1024];
  if (census_text(&c, buf, sizeof buf) < 0)
    return;
  char *second = strchr(buf, '\n');
  if (second)
    *second++ = '\0';
  char *end = second ? strchr(second, '\n') : NULL;
  if (end)
    *end = '\0';
  MP__LOG(MP_LOG_INFO, "at exit: %s", buf);
  if (second)
    MP__LOG(MP_LOG_INFO, "at exit: %s", second);
}

long mp__heap_recoveries(void) {
  struct heap *h = heap_get();
  if (!h)
    return -ENOMEM;
  heap_lock(h);
  long n = (long)h->recoveries;
  heap_unlock(h);
  return n;
}

_Atomic(void *) *mp__heap_root(unsigned slot, bool map) {
  struct heap *h = map ? heap_get() : atomic_load_explicit(&the_heap, memory_order_acquire);
  if (!h || slot >= MP__HEAP_ROOTS)
    return NULL;
  return &h->roots[slot];
}

void *mp__object_new(size_t size, uint32_t tag) {
  void *p = mp_heap_calloc(1, size);
  if (p)
    atomic_store_explicit((mp__tag *)p, tag, memory_order_release);
  return p;
}

void mp__object_free(void *obj) {
  if (!obj)
    return;
  atomic_store_explicit((mp__tag *)obj, MP__TAG_FREED, memory_order_release);
  mp_heap_free(obj);
}
