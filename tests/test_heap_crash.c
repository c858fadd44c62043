/* SPDX-License-Identifier: MIT */
/*
 * The family heap under crash points (src/heap.c's kill table) and misuse:
 * a process killed at every step of an allocation, a free and a trim leaves
 * a heap that passes mp__heap_check(), with the operation done whole or not
 * at all, and every double or interior free is refused in every neighbour
 * configuration.
 */
#include "crashutil.h"

#include <mp.h>
#include <stdint.h>
#include <string.h>

#include "internal.h"

#define MIB ((size_t)1 << 20)

/* What a survivor compares before and after a kill. */
struct snap {
  size_t used, blocks;
};

static struct snap snap(void) {
  mp_heap_stats st;
  assert_int_equal(mp_heap_stats_get(&st), 0);
  return (struct snap){st.used, st.blocks};
}

/* A block whose bytes the survivors check after every kill. */
static unsigned char *sentinel;
enum { SENTINEL = 4096 };

static void sentinel_check(void) {
  for (size_t i = 0; i < SENTINEL; i++)
    if (sentinel[i] != (unsigned char)(i * 7 + 1))
      fail_msg("sentinel byte %zu changed", i);
}

static int setup(void **state) {
  (void)state;
  sentinel = mp_heap_alloc(SENTINEL);
  assert_non_null(sentinel);
  for (size_t i = 0; i < SENTINEL; i++)
    sentinel[i] = (unsigned char)(i * 7 + 1);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  sentinel_check();
  assert_int_equal(mp_heap_free(sentinel), 0);
  assert_int_equal(mp__heap_check(), 0);
  return 0;
}

/* ------------------------------------------------------------ scenarios */

/* One operation in a prepared neighbourhood. prepare() runs in the parent;
 * op() in the child that is killed; undo() in the parent frees what is left
 * (after a kill the operation happened whole or not at all: it finds out). */
struct scenario {
  const char *what;
  void *a, *b, *c, *g; /* blocks of the neighbourhood; g guards it from top */
  size_t size;
  void (*prepare)(struct scenario *s);
  int (*op)(void *s);
};

static void *xalloc(size_t n) {
  void *p = mp_heap_alloc(n);
  assert_non_null(p);
  memset(p, 0xa5, n < 256 ? n : 256);
  return p;
}

/* b with free neighbours on both sides, not touching top: freeing b merges
 * three blocks. */
static void prep_free_both(struct scenario *s) {
  s->a = xalloc(s->size);
  s->b = xalloc(s->size);
  s->c = xalloc(s->size);
  s->g = xalloc(64);
  assert_int_equal(mp_heap_free(s->a), 0);
  assert_int_equal(mp_heap_free(s->c), 0);
  s->a = s->c = NULL;
}

/* b free on the left, in use on the right. */
static void prep_free_left(struct scenario *s) {
  s->a = xalloc(s->size);
  s->b = xalloc(s->size);
  s->c = xalloc(s->size);
  s->g = xalloc(64);
  assert_int_equal(mp_heap_free(s->a), 0);
  s->a = NULL;
}

/* b in use on the left, free on the right. */
static void prep_free_right(struct scenario *s) {
  s->a = xalloc(s->size);
  s->b = xalloc(s->size);
  s->c = xalloc(s->size);
  s->g = xalloc(64);
  assert_int_equal(mp_heap_free(s->c), 0);
  s->c = NULL;
}

/* b between two blocks in use. */
static void prep_free_none(struct scenario *s) {
  s->a = xalloc(s->size);
  s->b = xalloc(s->size);
  s->c = xalloc(s->size);
  s->g = xalloc(64);
}

/* b right below top, with a free block on its left: the free gives both back
 * to the reserve, and a large one trims the reserve's pages. */
static void prep_free_top(struct scenario *s) {
  s->a = xalloc(s->size);
  s->b = xalloc(s->size);
  assert_int_equal(mp_heap_free(s->a), 0);
  s->a = NULL;
}

static int op_free_b(void *p) {
  struct scenario *s = p;
  CHILD_CHECK(mp_heap_free(s->b) == 0);
  return 0;
}

/* An allocation that splits a free block found in a bin. */
static void prep_alloc_split(struct scenario *s) {
  s->a = xalloc(s->size * 4);
  s->g = xalloc(64);
  assert_int_equal(mp_heap_free(s->a), 0);
  s->a = NULL;
}

/* An allocation carved from the reserve. */
static void prep_alloc_reserve(struct scenario *s) { (void)s; }

static int op_alloc_b(void *p) {
  struct scenario *s = p;
  void *b = mp_heap_alloc(s->size);
  CHILD_CHECK(b != NULL);
  return 0;
}

/* Free whatever the scenario still holds, and whatever a completed child
 * operation left (an allocation it made is found by a heap walk being
 * impossible from outside; so allocation scenarios only run where the child's
 * block is lost by design, and the counts say which outcome happened). */
static void cleanup(struct scenario *s) {
  void *v[] = {s->a, s->b, s->c, s->g};
  for (size_t i = 0; i < 4; i++)
    if (v[i])
      mp_heap_free(v[i]); /* b may have been freed by the child */
  memset(&s->a, 0, 4 * sizeof(void *));
}

/* Kill the child at the nth pass of `point` for every nth the operation
 * reaches; after each kill the heap is consistent and the operation happened
 * whole or not at all. Returns how many kills landed. */
static int walk(struct scenario *s, const char *point, bool is_free) {
  int kills = 0;
  for (unsigned nth = 1; nth < 200; nth++) {
    s->prepare(s);
    struct snap before = snap();
    long rec = mp__heap_recoveries();
    pid_t c = cu_fork_armed(point, nth, s->op, s, 30);
    int st = tu_wait(c);
    alarm(20); /* a wedged heap fails here rather than hangs */
    assert_int_equal(mp__heap_check(), 0);
    struct snap after = snap();
    alarm(0);
    sentinel_check();
    if (st == 0) { /* the operation ran to its end: no nth-th pass */
      assert_int_equal(mp__crash_fired(), 0);
      if (is_free)
        s->b = NULL;
      cleanup(s);
      break;
    }
    assert_int_equal(st, 1000 + SIGKILL);
    assert_int_equal(mp__crash_fired(), c);
    kills++;
    bool undone = after.used == before.used && after.blocks == before.blocks;
    if (strcmp(point, "heap.alloc.committed") == 0 || strcmp(point, "heap.free.committed") == 0 ||
        strncmp(point, "heap.trim.", 10) == 0) {
      assert_false(undone); /* committed: it happened */
      assert_int_equal(mp__heap_recoveries(), rec + 1); /* an empty journal replayed */
    } else {
      assert_true(undone); /* rolled back whole */
      assert_int_equal(mp__heap_recoveries(), rec + 1);
    }
    if (is_free && !undone)
      s->b = NULL;
    if (is_free && undone) { /* b is still a live block: it frees once */
      assert_int_equal(mp_heap_free(s->b), 0);
      s->b = NULL;
    }
    cleanup(s);
    assert_int_equal(mp__heap_check(), 0);
    if (strncmp(point, "heap.journal.", 13) != 0)
      break; /* the other points are passed once per operation */
  }
  return kills;
}

static struct scenario free_scenarios[] = {
    {.what = "both neighbours free", .size = 200, .prepare = prep_free_both, .op = op_free_b},
    {.what = "left free", .size = 3000, .prepare = prep_free_left, .op = op_free_b},
    {.what = "right free", .size = 96, .prepare = prep_free_right, .op = op_free_b},
    {.what = "no free neighbour", .size = 48, .prepare = prep_free_none, .op = op_free_b},
    {.what = "below top", .size = 512, .prepare = prep_free_top, .op = op_free_b},
    /* Large: the free gives pages back (interior of a merged block; the
     * reserve above a lowered top). */
    {.what = "large, both free", .size = 9 * MIB, .prepare = prep_free_both, .op = op_free_b},
    {.what = "large, below top", .size = 20 * MIB, .prepare = prep_free_top, .op = op_free_b},
};

static struct scenario alloc_scenarios[] = {
    {.what = "split a binned block", .size = 200, .prepare = prep_alloc_split, .op = op_alloc_b},
    {.what = "split a large binned block", .size = 5 * MIB, .prepare = prep_alloc_split,
     .op = op_alloc_b},
    {.what = "carve the reserve", .size = 700, .prepare = prep_alloc_reserve, .op = op_alloc_b},
};

#define N(a) (sizeof(a) / sizeof((a)[0]))

/* ------------------------------------------------------------ tests */

/* Every word an operation writes, killed right before and right after it. */
static void test_heap_crash_every_journal_step(void **state) {
  (void)state;
  for (size_t i = 0; i < N(free_scenarios); i++) {
    int k1 = walk(&free_scenarios[i], "heap.journal.logged", true);
    int k2 = walk(&free_scenarios[i], "heap.journal.stored", true);
    if (k1 < 3 || k2 < 3)
      fail_msg("free, %s: only %d/%d journal steps", free_scenarios[i].what, k1, k2);
  }
  for (size_t i = 0; i < N(alloc_scenarios); i++) {
    int k1 = walk(&alloc_scenarios[i], "heap.journal.logged", false);
    int k2 = walk(&alloc_scenarios[i], "heap.journal.stored", false);
    if (k1 < 3 || k2 < 3)
      fail_msg("alloc, %s: only %d/%d journal steps", alloc_scenarios[i].what, k1, k2);
  }
}

/* Killed holding the mutex before writing anything, and after writing all of
 * an operation but before its commit: undone whole. The large free scenarios
 * are the trim hole: pages given back before the commit zeroed the header and
 * footer words the rollback must find. */
static void test_heap_crash_before_commit(void **state) {
  (void)state;
  for (size_t i = 0; i < N(free_scenarios); i++) {
    assert_int_equal(walk(&free_scenarios[i], "heap.free.locked", true), 1);
    assert_int_equal(walk(&free_scenarios[i], "heap.free.journaled", true), 1);
  }
  for (size_t i = 0; i < N(alloc_scenarios); i++) {
    assert_int_equal(walk(&alloc_scenarios[i], "heap.alloc.locked", false), 1);
    assert_int_equal(walk(&alloc_scenarios[i], "heap.alloc.journaled", false), 1);
  }
}

/* Killed after the commit: the operation happened; an allocation's block is
 * lost with the process (stays allocated), a free's pages may stay committed. */
static void test_heap_crash_after_commit(void **state) {
  (void)state;
  for (size_t i = 0; i < N(free_scenarios); i++)
    assert_int_equal(walk(&free_scenarios[i], "heap.free.committed", true), 1);
  struct snap before = snap();
  assert_int_equal(walk(&alloc_scenarios[2], "heap.alloc.committed", false), 1);
  struct snap after = snap();
  assert_int_equal(after.blocks, before.blocks + 1); /* the dead process's block */
}

/* Killed between giving the reserve's pages back and lowering the trim mark,
 * and right after: the heap is whole, and a later trim of the same range
 * releases it again. */
static void test_heap_crash_in_trim(void **state) {
  (void)state;
  struct scenario *top = &free_scenarios[6];
  assert_int_equal(walk(top, "heap.trim.released", true), 1);
  mp_heap_stats st;
  assert_int_equal(mp_heap_stats_get(&st), 0);
  size_t committed_after_kill = st.committed;
  /* Grow the reserve's mark again and free: the trim runs and lowers it. */
  void *big = mp_heap_alloc(20 * MIB);
  assert_non_null(big);
  memset(big, 1, 20 * MIB);
  assert_int_equal(mp_heap_free(big), 0);
  assert_int_equal(mp_heap_stats_get(&st), 0);
  assert_true(st.committed < committed_after_kill);
  assert_int_equal(walk(top, "heap.trim.marked", true), 1);
  assert_int_equal(mp__heap_check(), 0);
}

/* ------------------------------------------------------------ misuse */

/* A second free of a block is refused in every neighbour configuration, also
 * after the block merged into a free neighbour, and the heap goes on handing
 * out distinct blocks. */
static void test_heap_double_free_every_neighbour(void **state) {
  (void)state;
  for (size_t i = 0; i < N(free_scenarios); i++) {
    struct scenario *s = &free_scenarios[i];
    s->prepare(s);
    assert_int_equal(mp_heap_free(s->b), 0);
    if (mp_heap_free(s->b) != -EINVAL)
      fail_msg("%s: a double free was not refused", s->what);
    assert_int_equal(mp__heap_check(), 0);
    s->b = NULL;
    /* Allocations of the freed size are all distinct and usable. */
    void *p[6];
    for (int k = 0; k < 6; k++) {
      p[k] = mp_heap_alloc(s->size);
      assert_non_null(p[k]);
      for (int j = 0; j < k; j++)
        assert_ptr_not_equal(p[j], p[k]);
    }
    for (int k = 0; k < 6; k++)
      assert_int_equal(mp_heap_free(p[k]), 0);
    cleanup(s);
    assert_int_equal(mp__heap_check(), 0);
  }
}

/* A pointer into a block, where user data looks like a block header, is
 * refused; so is a block's old address once a larger allocation covers it. */
static void test_heap_free_interior_pointer_refused(void **state) {
  (void)state;
  uintptr_t *p = mp_heap_alloc(1024);
  assert_non_null(p);
  /* At p + 64 a payload would have its header at p + 56: forge a plausible
   * one (size 64, in use, previous in use). */
  p[7] = 64 | 3;
  assert_int_equal(mp_heap_free(&p[8]), -EINVAL);
  assert_int_equal(mp__heap_check(), 0);
  /* A freed block covered by a new larger allocation: its old address is
   * interior now, and its old header word still reads "in use". */
  void *a = mp_heap_alloc(100), *b = mp_heap_alloc(100), *g = mp_heap_alloc(16);
  assert_int_equal(mp_heap_free(a), 0);
  assert_int_equal(mp_heap_free(b), 0); /* merges into a */
  void *big = mp_heap_alloc(200);        /* takes a's place, covers b's */
  assert_ptr_equal(big, a);
  memset(big, 0, 200);
  ((uintptr_t *)b)[-1] = 128 | 3; /* user data shaped like b's old header */
  assert_int_equal(mp_heap_free(b), -EINVAL);
  assert_int_equal(mp__heap_check(), 0);
  assert_int_equal(mp_heap_free(big), 0);
  assert_int_equal(mp_heap_free(g), 0);
  assert_int_equal(mp_heap_free(p), 0);
  assert_null(mp_heap_realloc(&p[8], 10)); /* freed: realloc refuses it too */
  assert_int_equal(mp__heap_check(), 0);
}

/* The word an allocation records its block in must be in the family heap
 * (another process may replay the journal that restores it). */
static void test_heap_alloc_into_needs_a_heap_word(void **state) {
  (void)state;
  void *local = NULL;
  assert_null(mp__heap_alloc_into(64, &local));
  assert_null(local);
  assert_int_equal(mp__heap_free_from(&local), -EINVAL);
  void **word = mp_heap_calloc(1, sizeof *word);
  assert_non_null(word);
  void *b = mp__heap_alloc_into(64, word);
  assert_non_null(b);
  assert_ptr_equal(*word, b);
  assert_int_equal(mp__heap_free_from(word), 0);
  assert_null(*word);
  assert_int_equal(mp__heap_free_from(word), 0); /* NULL: nothing to free */
  assert_int_equal(mp_heap_free(word), 0);
  assert_int_equal(mp__heap_check(), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_heap_crash_every_journal_step, setup, teardown),
      cmocka_unit_test_setup_teardown(test_heap_crash_before_commit, setup, teardown),
      cmocka_unit_test_setup_teardown(test_heap_crash_after_commit, setup, teardown),
      cmocka_unit_test_setup_teardown(test_heap_crash_in_trim, setup, teardown),
      cmocka_unit_test_setup_teardown(test_heap_double_free_every_neighbour, setup, teardown),
      cmocka_unit_test_setup_teardown(test_heap_free_interior_pointer_refused, setup, teardown),
      cmocka_unit_test_setup_teardown(test_heap_alloc_into_needs_a_heap_word, setup, teardown),
  };
  return TU_RUN("heap_crash", tests);
}
