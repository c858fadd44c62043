/* SPDX-License-Identifier: MIT */
/* The family heap: allocation, sharing across processes, exhaustion, sizing. */
#include "testutil.h"

#include <mp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

static char *self_exe;

/* Fill a block with a pattern derived from its address and size. */
static void fill(unsigned char *p, size_t n) {
  for (size_t i = 0; i < n; i++)
    p[i] = (unsigned char)(((uintptr_t)p >> 4) + i * 7 + n);
}

static int check(const unsigned char *p, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (p[i] != (unsigned char)(((uintptr_t)p >> 4) + i * 7 + n))
      return 0;
  return 1;
}

static void test_heap_alloc_free_basics(void **state) {
  (void)state;
  mp_heap_stats before, after;
  assert_int_equal(mp_heap_stats_get(&before), 0);
  void *a = mp_heap_alloc(1), *b = mp_heap_alloc(100), *c = mp_heap_alloc(0);
  assert_non_null(a);
  assert_non_null(b);
  assert_non_null(c);
  assert_true(a != b && b != c && a != c);
  assert_int_equal((uintptr_t)a % 16, 0);
  assert_int_equal((uintptr_t)b % 16, 0);
  assert_int_equal((uintptr_t)c % 16, 0);
  assert_int_equal(mp_heap_contains(a), 1);
  memset(b, 0xab, 100);
  assert_int_equal(mp_heap_stats_get(&after), 0);
  assert_int_equal(after.blocks, before.blocks + 3);
  assert_true(after.used >= before.used + 100);
  assert_int_equal(mp_heap_free(a), 0);
  assert_int_equal(mp_heap_free(b), 0);
  assert_int_equal(mp_heap_free(c), 0);
  assert_int_equal(mp_heap_stats_get(&after), 0);
  assert_int_equal(after.blocks, before.blocks);
  assert_int_equal(after.used, before.used);
  assert_int_equal(mp_heap_free(NULL), 0);
}

static void test_heap_bad_pointers(void **state) {
  (void)state;
  int local = 0;
  assert_int_equal(mp_heap_contains(&local), 0);
  assert_int_equal(mp_heap_free(&local), -EINVAL);
  char *p = mp_heap_alloc(64), *q = mp_heap_alloc(64);
  assert_non_null(p);
  assert_int_equal(mp_heap_free(p + 16), -EINVAL); /* inside a block */
  assert_int_equal(mp_heap_free(p + 3), -EINVAL);  /* misaligned */
  assert_int_equal(mp_heap_free(p), 0);
  assert_int_equal(mp_heap_free(p), -EINVAL); /* double free */
  assert_int_equal(mp_heap_free(q), 0);
  assert_int_equal(mp_heap_stats_get(NULL), -EINVAL);
}

static void test_heap_calloc_realloc(void **state) {
  (void)state;
  unsigned char *z = mp_heap_calloc(100, 37);
  assert_non_null(z);
  for (int i = 0; i < 3700; i++)
    assert_int_equal(z[i], 0);
  assert_null(mp_heap_calloc(SIZE_MAX / 2, 3)); /* overflow, not a crash */
  fill(z, 3700);
  unsigned char *g = mp_heap_realloc(z, 100000);
  assert_non_null(g);
  for (size_t i = 0; i < 3700; i++)
    assert_int_equal(g[i], (unsigned char)(((uintptr_t)z >> 4) + i * 7 + 3700));
  unsigned char *s = mp_heap_realloc(g, 10); /* shrinking keeps the block */
  assert_ptr_equal(s, g);
  assert_null(mp_heap_realloc(s, SIZE_MAX)); /* fails, s untouched */
  assert_int_equal(s[0], (unsigned char)(((uintptr_t)z >> 4) + 3700));
  assert_int_equal(mp_heap_free(s), 0);
  void *n = mp_heap_realloc(NULL, 50);
  assert_non_null(n);
  assert_int_equal(mp_heap_free(n), 0);
  int local = 0;
  assert_null(mp_heap_realloc(&local, 8));
}

static void test_heap_huge_request_fails_cleanly(void **state) {
  (void)state;
  mp_heap_stats st;
  assert_int_equal(mp_heap_stats_get(&st), 0);
  assert_null(mp_heap_alloc(st.size)); /* more than the whole heap */
  assert_null(mp_heap_alloc(SIZE_MAX));
  void *p = mp_heap_alloc(32); /* still usable */
  assert_non_null(p);
  assert_int_equal(mp_heap_free(p), 0);
}

/* Random allocations and frees, every block checked before it is freed. */
static void churn(unsigned seed, int ops, int *failures) {
  enum { SLOTS = 256 };
  unsigned char *ptr[SLOTS] = {0};
  size_t len[SLOTS] = {0};
  for (int i = 0; i < ops; i++) {
    int k = (int)(rand_r(&seed) % SLOTS);
    if (ptr[k]) {
      if (!check(ptr[k], len[k]))
        (*failures)++;
      if (mp_heap_free(ptr[k]) != 0)
        (*failures)++;
      ptr[k] = NULL;
    } else {
      unsigned r = rand_r(&seed);
      size_t n = (r % 8 == 0) ? (r % 200000) : (r % 600);
      ptr[k] = mp_heap_alloc(n);
      if (!ptr[k]) {
        (*failures)++;
        continue;
      }
      len[k] = n;
      fill(ptr[k], n);
    }
  }
  for (int k = 0; k < SLOTS; k++) {
    if (ptr[k]) {
      if (!check(ptr[k], len[k]))
        (*failures)++;
      mp_heap_free(ptr[k]);
    }
  }
}

static void test_heap_random_churn_keeps_contents(void **state) {
  (void)state;
  mp_heap_stats before, after;
  assert_int_equal(mp_heap_stats_get(&before), 0);
  int failures = 0;
  churn(42, 50000, &failures);
  assert_int_equal(failures, 0);
  assert_int_equal(mp_heap_stats_get(&after), 0);
  assert_int_equal(after.blocks, before.blocks);
  assert_int_equal(after.used, before.used);
}

static void *churn_thread(void *arg) {
  int *failures = arg;
  churn((unsigned)(uintptr_t)arg, 20000, failures);
  return NULL;
}

static int churn_child(void *arg) {
  int failures = 0;
  churn((unsigned)(uintptr_t)arg, 20000, &failures);
  CHILD_CHECK(failures == 0);
  return 0;
}

static void test_heap_concurrent_processes_and_threads(void **state) {
  (void)state;
  pid_t kids[3];
  for (int i = 0; i < 3; i++) {
    kids[i] = tu_fork(churn_child, (void *)(uintptr_t)(100 + i), 60);
    assert_true(kids[i] > 0);
  }
  pthread_t t[2];
  int fails[2] = {0, 0};
  for (int i = 0; i < 2; i++)
    assert_int_equal(pthread_create(&t[i], NULL, churn_thread, &fails[i]), 0);
  for (int i = 0; i < 2; i++)
    pthread_join(t[i], NULL);
  for (int i = 0; i < 3; i++)
    assert_child_ok(kids[i]);
  assert_int_equal(fails[0] + fails[1], 0);
}

/* A block allocated by one child after the fork is read by its sibling. */
struct mailbox {
  _Atomic(unsigned char *) block;
  _Atomic size_t len;
};

static int producer_child(void *arg) {
  struct mailbox *mb = arg;
  size_t n = 123457;
  unsigned char *p = mp_heap_alloc(n);
  CHILD_CHECK(p != NULL);
  fill(p, n);
  atomic_store(&mb->len, n);
  atomic_store(&mb->block, p);
  return 0;
}

static int consumer_child(void *arg) {
  struct mailbox *mb = arg;
  unsigned char *p;
  while (!(p = atomic_load(&mb->block)))
    tu_sleep(0.001);
  size_t n = atomic_load(&mb->len);
  CHILD_CHECK(check(p, n));
  CHILD_CHECK(mp_heap_free(p) == 0); /* any process may free any block */
  return 0;
}

static void test_heap_pointer_from_child_works_in_sibling(void **state) {
  (void)state;
  struct mailbox *mb = mp_heap_calloc(1, sizeof *mb);
  assert_non_null(mb);
  pid_t c = tu_fork(consumer_child, mb, 30);
  pid_t p = tu_fork(producer_child, mb, 30);
  assert_child_ok(p);
  assert_child_ok(c);
  assert_int_equal(mp_heap_free(mb), 0);
}

/* Large blocks given back make the committed mark shrink. */
static void test_heap_large_free_returns_memory(void **state) {
  (void)state;
  mp_heap_stats a, b, c;
  assert_int_equal(mp_heap_stats_get(&a), 0);
  void *big = mp_heap_alloc(64 << 20);
  assert_non_null(big);
  memset(big, 1, 64 << 20);
  assert_int_equal(mp_heap_stats_get(&b), 0);
  assert_true(b.committed >= (64 << 20));
  assert_int_equal(mp_heap_free(big), 0);
  assert_int_equal(mp_heap_stats_get(&c), 0);
  assert_true(c.committed < b.committed - (32 << 20));
}

/* ------------------------------------------------------------------ sizing */

/* Runs this test binary again with an environment, in a mode given by argv. */
static int run_self(const char *mode, const char *heap_env) {
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) {
    if (heap_env)
      setenv("MP_HEAP_SIZE", heap_env, 1);
    else
      unsetenv("MP_HEAP_SIZE");
    execl(self_exe, self_exe, mode, (char *)NULL);
    _exit(127);
  }
  return tu_wait(pid);
}

/* Modes run in a fresh process (no heap mapped yet). */
static int mode_small_heap_exhaustion(void) {
  mp_heap_stats st;
  if (mp_heap_stats_get(&st) != 0 || st.size != (1 << 20))
    return 2;
  void *blocks[100000];
  int n = 0;
  while (n < 100000 && (blocks[n] = mp_heap_alloc(1000)))
    n++;
  if (n == 0 || n >= 100000)
    return 3; /* 1 MiB must run out before 100 MB */
  while (n < 100000 && (blocks[n] = mp_heap_alloc(1))) /* the last crumbs */
    n++;
  mp_lock *lock;
  if (mp_lock_new(&lock) != -ENOMEM)
    return 4; /* constructors report the exhaustion */
  for (int i = 0; i < n; i++)
    if (mp_heap_free(blocks[i]) != 0)
      return 5;
  if (mp_lock_new(&lock) != 0 || mp_lock_free(lock) != 0)
    return 6; /* usable again */
  return 0;
}

static int mode_init_option(void) {
  mp_heap_options o = {.size = 8 << 20};
  if (mp_heap_init(&o) != 0)
    return 2;
  if (mp_heap_init(&o) != -EALREADY)
    return 3;
  mp_heap_stats st;
  if (mp_heap_stats_get(&st) != 0 || st.size != (8 << 20))
    return 4;
  return 0;
}

static int mode_init_too_small(void) {
  mp_heap_options o = {.size = 4096};
  if (mp_heap_init(&o) != -EINVAL)
    return 2;
  return mp_heap_init(NULL) == 0 ? 0 : 3; /* defaults still work afterwards */
}

static int mode_bad_env(void) {
  if (mp_heap_alloc(10) != NULL)
    return 2;
  if (mp_heap_init(NULL) != -EINVAL)
    return 3;
  mp_lock *l;
  return mp_lock_new(&l) < 0 ? 0 : 4;
}

static int mode_default_size(void) {
  mp_heap_stats st;
  return (mp_heap_stats_get(&st) == 0 && st.size == ((size_t)1 << 30)) ? 0 : 2;
}

static void test_heap_env_size_and_exhaustion(void **state) {
  (void)state;
  assert_int_equal(run_self("--small-heap", "1M"), 0);
  assert_int_equal(run_self("--small-heap", "1024K"), 0);
  assert_int_equal(run_self("--small-heap", "1048576"), 0);
}

static void test_heap_init_option(void **state) {
  (void)state;
  assert_int_equal(run_self("--init-option", "1M"), 0); /* the option wins */
  assert_int_equal(run_self("--init-too-small", NULL), 0);
  assert_int_equal(run_self("--bad-env", "12X"), 0);
  assert_int_equal(run_self("--bad-env", "lots"), 0);
  assert_int_equal(run_self("--default-size", NULL), 0);
  assert_int_equal(mp_heap_init(NULL), -EALREADY); /* this process has one */
}

/* A family leaves nothing in /dev/shm, also when killed. */
static int idle_family(void *arg) {
  (void)arg;
  mp_lock *l;
  CHILD_CHECK(mp_lock_new(&l) == 0);
  pause();
  return 0;
}

static void test_heap_nothing_left_in_dev_shm(void **state) {
  (void)state;
  int before = tu_shm_count();
  pid_t pid = tu_fork(idle_family, NULL, 30);
  tu_sleep(0.1);
  assert_int_equal(tu_shm_count(), before);
  kill(pid, SIGKILL);
  assert_int_equal(tu_wait(pid), 1000 + SIGKILL);
  assert_int_equal(tu_shm_count(), before);
}

/* The report: figures and live objects by kind. */
static void report_text(char *buf, size_t cap) {
  char path[] = "/tmp/mp-report-XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  unlink(path);
  assert_int_equal(mp_heap_report(fd), 0);
  ssize_t n = pread(fd, buf, cap - 1, 0);
  close(fd);
  assert_true(n > 0);
  buf[n] = '\0';
}

/* How many objects of `kind` the report lists (0 when it names none). */
static long report_count(const char *text, const char *kind) {
  char pat[64];
  snprintf(pat, sizeof pat, " %s,", kind);
  const char *k = strstr(text, pat);
  if (!k)
    return 0;
  const char *d = k;
  while (d > text && d[-1] >= '0' && d[-1] <= '9')
    d--;
  return strtol(d, NULL, 10);
}

static void test_heap_report_counts_live_objects(void **state) {
  (void)state;
  char before[1024], after[1024];
  report_text(before, sizeof before);
  assert_non_null(strstr(before, "bytes reserved"));
  mp_lock *l1, *l2;
  mp_queue *q;
  mp_event *e;
  int *v;
  assert_int_equal(mp_lock_new(&l1), 0);
  assert_int_equal(mp_rlock_new(&l2), 0);
  assert_int_equal(mp_queue_new(0, NULL, &q), 0);
  assert_int_equal(mp_event_new(&e), 0);
  assert_int_equal(mp_raw_value_new('i', NULL, &v), 0);
  report_text(after, sizeof after);
  assert_int_equal(report_count(after, "Lock/RLock"), report_count(before, "Lock/RLock") + 2);
  assert_int_equal(report_count(after, "Queue"), report_count(before, "Queue") + 1);
  assert_int_equal(report_count(after, "Event"), report_count(before, "Event") + 1);
  assert_int_equal(report_count(after, "Value/Array"), report_count(before, "Value/Array") + 1);
  assert_int_equal(mp_lock_free(l1), 0);
  assert_int_equal(mp_rlock_free(l2), 0);
  assert_int_equal(mp_queue_free(q), 0);
  assert_int_equal(mp_event_free(e), 0);
  assert_int_equal(mp_value_free(v), 0);
  report_text(after, sizeof after);
  assert_int_equal(report_count(after, "Lock/RLock"), report_count(before, "Lock/RLock"));
  assert_int_equal(report_count(after, "Queue"), report_count(before, "Queue"));
  assert_int_equal(mp_heap_report(-1), -EBADF);
}

int main(int argc, char **argv) {
  self_exe = argv[0];
  if (argc > 1) {
    if (!strcmp(argv[1], "--small-heap"))
      return mode_small_heap_exhaustion();
    if (!strcmp(argv[1], "--init-option"))
      return mode_init_option();
    if (!strcmp(argv[1], "--init-too-small"))
      return mode_init_too_small();
    if (!strcmp(argv[1], "--bad-env"))
      return mode_bad_env();
    if (!strcmp(argv[1], "--default-size"))
      return mode_default_size();
    return 99;
  }
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_heap_alloc_free_basics),
      cmocka_unit_test(test_heap_bad_pointers),
      cmocka_unit_test(test_heap_report_counts_live_objects),
      cmocka_unit_test(test_heap_calloc_realloc),
      cmocka_unit_test(test_heap_huge_request_fails_cleanly),
      cmocka_unit_test(test_heap_random_churn_keeps_contents),
      cmocka_unit_test(test_heap_concurrent_processes_and_threads),
      cmocka_unit_test(test_heap_pointer_from_child_works_in_sibling),
      cmocka_unit_test(test_heap_large_free_returns_memory),
      cmocka_unit_test(test_heap_env_size_and_exhaustion),
      cmocka_unit_test(test_heap_init_option),
      cmocka_unit_test(test_heap_nothing_left_in_dev_shm),
  };
  return TU_RUN("heap", tests);
}
