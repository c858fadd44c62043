/* SPDX-License-Identifier: MIT */
/* SharedMemory, ShareableList and SharedMemoryManager: named blocks, their
 * errors, sharing with forked and unrelated programs, and the tracking that
 * unlinks what nobody meant to keep. */
#include "testutil.h"

#include <fcntl.h>
#include <math.h>
#include <mp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>

static char *self_exe;

/* A name unique to this run and tag. */
static const char *uname_(const char *tag) {
  static char buf[8][96];
  static int next;
  char *b = buf[next++ % 8];
  snprintf(b, sizeof buf[0], "mp_test_shm_%d_%s", (int)getpid(), tag);
  return b;
}

static int exists(const char *name) {
  char path[512];
  snprintf(path, sizeof path, "/dev/shm/%s", name[0] == '/' ? name + 1 : name);
  return access(path, F_OK) == 0;
}

/* Run this binary again (a program unrelated to this family: a fresh heap)
 * in `mode` with `arg`; its stdout goes to `out` when given. Returns the exit
 * status as tu_wait(). */
static int run_self(const char *mode, const char *arg, char *out, size_t outcap) {
  int pfd[2];
  if (pipe2(pfd, O_CLOEXEC) < 0)
    return -1;
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) {
    dup2(pfd[1], 1);
    execl(self_exe, self_exe, mode, arg ? arg : "", (char *)NULL);
    _exit(127);
  }
  close(pfd[1]);
  size_t n = 0;
  ssize_t r;
  char sink[256];
  while ((r = read(pfd[0], out && n < outcap - 1 ? out + n : sink,
                   out && n < outcap - 1 ? outcap - 1 - n : sizeof sink)) != 0) {
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0)
      break;
    if (out && n < outcap - 1)
      n += (size_t)r;
  }
  if (out)
    out[n] = 0;
  close(pfd[0]);
  return tu_wait(pid);
}

/* ------------------------------------------------------------ SharedMemory */

static void test_shm_create_attach_roundtrip(void **state) {
  (void)state;
  const char *name = uname_("rt");
  char slashed[128];
  snprintf(slashed, sizeof slashed, "/%s", name);
  mp_shared_memory *a, *b;
  assert_int_equal(mp_shared_memory_new(slashed, 10, NULL, &a), 0);
  assert_string_equal(mp_shared_memory_name(a), name); /* the slash is not part of it */
  assert_int_equal(mp_shared_memory_size(a), 10);
  unsigned char *pa = mp_shared_memory_buf(a);
  assert_non_null(pa);
  for (int i = 0; i < 10; i++)
    assert_int_equal(pa[i], 0); /* zero-filled */
  memcpy(pa, "\x16\x21\x2c\x37\x64", 5);
  assert_true(exists(name));

  assert_int_equal(mp_shared_memory_attach(name, NULL, &b), 0); /* without the slash */
  assert_int_equal(mp_shared_memory_size(b), 10);               /* from the block */
  assert_string_equal(mp_shared_memory_name(b), name);
  unsigned char *pb = mp_shared_memory_buf(b);
  assert_true(pb != pa);
  assert_memory_equal(pb, "\x16\x21\x2c\x37\x64", 5);
  memcpy(pb, "howdy", 5);
  assert_memory_equal(pa, "howdy", 5);

  assert_int_equal(mp_shared_memory_close(b), 0);
  assert_int_equal(mp_shared_memory_unlink(a), 0);
  assert_false(exists(name));
  assert_memory_equal(pa, "howdy", 5); /* the view outlives the name */
  assert_int_equal(mp_shared_memory_unlink(a), -ENOENT);
  assert_int_equal(mp_shared_memory_attach(name, NULL, &b), -ENOENT);
  assert_int_equal(mp_shared_memory_close(a), 0);

  /* A large block, and a size that is not a page multiple. */
  assert_int_equal(mp_shared_memory_new(name, (8 << 20) + 3, NULL, &a), 0);
  assert_int_equal(mp_shared_memory_size(a), (8 << 20) + 3);
  ((char *)mp_shared_memory_buf(a))[(8 << 20) + 2] = 7;
  assert_int_equal(mp_shared_memory_attach(slashed, NULL, &b), 0);
  assert_int_equal(mp_shared_memory_size(b), (8 << 20) + 3);
  assert_int_equal(((char *)mp_shared_memory_buf(b))[(8 << 20) + 2], 7);
  assert_int_equal(mp_shared_memory_close(b), 0);
  assert_int_equal(mp_shared_memory_unlink_name(slashed), 0);
  assert_false(exists(name));
  assert_int_equal(mp_shared_memory_unlink_name(name), -ENOENT);
  assert_int_equal(mp_shared_memory_close(a), 0);
}

static void test_shm_generated_names(void **state) {
  (void)state;
  mp_shared_memory *a, *b;
  assert_int_equal(mp_shared_memory_new(NULL, 100, NULL, &a), 0);
  assert_int_equal(mp_shared_memory_new(NULL, 100, NULL, &b), 0);
  const char *na = mp_shared_memory_name(a), *nb = mp_shared_memory_name(b);
  assert_int_equal(strlen(na), 12);
  assert_memory_equal(na, "psm_", 4);
  assert_int_equal(strspn(na + 4, "0123456789abcdef"), 8);
  assert_string_not_equal(na, nb);
  assert_true(exists(na));
  assert_true(exists(nb));
  mp_shared_memory *c;
  assert_int_equal(mp_shared_memory_attach(na, NULL, &c), 0);
  assert_int_equal(mp_shared_memory_size(c), 100);
  assert_int_equal(mp_shared_memory_close(c), 0);
  assert_int_equal(mp_shared_memory_unlink(a), 0);
  assert_int_equal(mp_shared_memory_unlink(b), 0);
  assert_int_equal(mp_shared_memory_close(a), 0);
  assert_int_equal(mp_shared_memory_close(b), 0);
}

static void test_shm_errors(void **state) {
  (void)state;
  int before = tu_shm_count();
  const char *name = uname_("err");
  mp_shared_memory *a, *b = (mp_shared_memory *)&b;
  mp_shared_memory *const untouched = b;

  assert_int_equal(mp_shared_memory_new(name, 16, NULL, &a), 0);
  memcpy(mp_shared_memory_buf(a), "first", 6);
  assert_int_equal(mp_shared_memory_new(name, 32, NULL, &b), -EEXIST);
  char slashed[128];
  snprintf(slashed, sizeof slashed, "/%s", name);
  assert_int_equal(mp_shared_memory_new(slashed, 32, NULL, &b), -EEXIST);
  assert_ptr_equal(b, untouched); /* outputs only on success */
  mp_shared_memory *c;
  assert_int_equal(mp_shared_memory_attach(name, NULL, &c), 0);
  assert_int_equal(mp_shared_memory_size(c), 16); /* the existing block is unchanged */
  assert_string_equal(mp_shared_memory_buf(c), "first");
  assert_int_equal(mp_shared_memory_close(c), 0);

  assert_int_equal(mp_shared_memory_attach(uname_("missing"), NULL, &b), -ENOENT);
  assert_int_equal(mp_shared_memory_unlink_name(uname_("missing")), -ENOENT);
  assert_ptr_equal(b, untouched);

  /* Names. */
  char longest[MP_SHARED_MEMORY_NAME_MAX + 2], too_long[MP_SHARED_MEMORY_NAME_MAX + 3];
  memset(longest, 'x', sizeof longest);
  memcpy(longest, name, strlen(name));
  longest[MP_SHARED_MEMORY_NAME_MAX] = 0;
  memset(too_long, 'y', sizeof too_long);
  too_long[MP_SHARED_MEMORY_NAME_MAX + 1] = 0;
  const char *bad[] = {"", "/", "a/b", "//a", ".", "..", "/..", too_long};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    assert_int_equal(mp_shared_memory_new(bad[i], 16, NULL, &b), -EINVAL);
    assert_int_equal(mp_shared_memory_attach(bad[i], NULL, &b), -EINVAL);
    assert_int_equal(mp_shared_memory_unlink_name(bad[i]), -EINVAL);
  }
  assert_int_equal(mp_shared_memory_attach(NULL, NULL, &b), -EINVAL);
  assert_int_equal(mp_shared_memory_unlink_name(NULL), -EINVAL);
  /* The longest name works, with or without its slash. */
  mp_shared_memory *l;
  assert_int_equal(mp_shared_memory_new(longest, 8, NULL, &l), 0);
  assert_int_equal(strlen(mp_shared_memory_name(l)), MP_SHARED_MEMORY_NAME_MAX);
  assert_int_equal(mp_shared_memory_unlink(l), 0);
  assert_int_equal(mp_shared_memory_close(l), 0);

  /* Sizes and outputs. */
  assert_int_equal(mp_shared_memory_new(uname_("zero"), 0, NULL, &b), -EINVAL);
  assert_int_equal(mp_shared_memory_new(NULL, 0, NULL, &b), -EINVAL);
  assert_int_equal(mp_shared_memory_new(uname_("huge"), SIZE_MAX, NULL, &b), -EINVAL);
  assert_false(exists(uname_("huge")));
  assert_int_equal(mp_shared_memory_new(uname_("nullret"), 8, NULL, NULL), -EINVAL);
  assert_int_equal(mp_shared_memory_attach(name, NULL, NULL), -EINVAL);
  assert_ptr_equal(b, untouched);

  /* Accessors, close and unlink on NULL. */
  assert_null(mp_shared_memory_buf(NULL));
  assert_int_equal(mp_shared_memory_size(NULL), -EINVAL);
  assert_null(mp_shared_memory_name(NULL));
  assert_int_equal(mp_shared_memory_close(NULL), 0);
  assert_int_equal(mp_shared_memory_unlink(NULL), -EINVAL);

  /* A block that exists but has no size yet (its creator is between
   * creating and sizing it). */
  char raw[128];
  snprintf(raw, sizeof raw, "/%s", uname_("raw"));
  int fd = shm_open(raw, O_CREAT | O_EXCL | O_RDWR, 0600);
  assert_true(fd >= 0);
  assert_int_equal(mp_shared_memory_attach(raw, NULL, &b), -EAGAIN);
  assert_int_equal(ftruncate(fd, 4096), 0);
  assert_int_equal(mp_shared_memory_attach(raw, NULL, &b), 0);
  assert_int_equal(mp_shared_memory_size(b), 4096);
  assert_int_equal(mp_shared_memory_close(b), 0);
  close(fd);
  assert_int_equal(mp_shared_memory_unlink_name(raw), 0);

  assert_int_equal(mp_shared_memory_unlink(a), 0);
  assert_int_equal(mp_shared_memory_close(a), 0);
  assert_int_equal(tu_shm_count(), before); /* no failure left a name behind */
}

static int mode_of(const char *name) {
  char path[512];
  struct stat st;
  snprintf(path, sizeof path, "/dev/shm/%s", name);
  if (stat(path, &st) < 0)
    return -1;
  return (int)(st.st_mode & 07777);
}

static void test_shm_mode_0600(void **state) {
  (void)state;
  mode_t masks[] = {022, 0, 0277};
  for (size_t i = 0; i < 3; i++) {
    mode_t old = umask(masks[i]);
    mp_shared_memory *a;
    int r = mp_shared_memory_new(NULL, 64, NULL, &a);
    umask(old);
    assert_int_equal(r, 0);
    assert_int_equal(mode_of(mp_shared_memory_name(a)), 0600);
    int fd = shm_open(mp_shared_memory_name(a), O_RDONLY, 0);
    assert_true(fd >= 0);
    struct stat st;
    assert_int_equal(fstat(fd, &st), 0);
    close(fd);
    assert_int_equal(st.st_mode & 07777, 0600);
    assert_int_equal(st.st_uid, geteuid());
    assert_int_equal(mp_shared_memory_unlink(a), 0);
    assert_int_equal(mp_shared_memory_close(a), 0);
  }
}

/* A forked child sees the parent's block through its inherited handle and by
 * attaching by name, and the parent sees its writes. */
static mp_shared_memory *fork_shm;

static int child_uses_block(void *arg) {
  const char *name = arg;
  char *inherited = mp_shared_memory_buf(fork_shm);
  CHILD_CHECK(!strcmp(inherited, "from parent"));
  mp_shared_memory *b;
  CHILD_CHECK(mp_shared_memory_attach(name, NULL, &b) == 0);
  CHILD_CHECK(mp_shared_memory_size(b) == 4096);
  CHILD_CHECK(!strcmp(mp_shared_memory_buf(b), "from parent"));
  strcpy((char *)mp_shared_memory_buf(b) + 100, "by name");
  strcpy(inherited + 200, "inherited");
  CHILD_CHECK(mp_shared_memory_close(b) == 0);
  CHILD_CHECK(mp_shared_memory_close(fork_shm) == 0); /* the child's copy only */
  return 0;
}

static void test_shm_fork_child_attaches(void **state) {
  (void)state;
  const char *name = uname_("fork");
  assert_int_equal(mp_shared_memory_new(name, 4096, NULL, &fork_shm), 0);
  char *p = mp_shared_memory_buf(fork_shm);
  strcpy(p, "from parent");
  pid_t pid = tu_fork(child_uses_block, (void *)name, 20);
  assert_true(pid > 0);
  assert_child_ok(pid);
  assert_string_equal(p + 100, "by name");
  assert_string_equal(p + 200, "inherited");
  assert_true(exists(name)); /* the child's end did not unlink the parent's block */
  assert_int_equal(mp_shared_memory_unlink(fork_shm), 0);
  assert_int_equal(mp_shared_memory_close(fork_shm), 0);
}

/* Mode run by an unrelated program: attach, check and write. */
static int mode_attach_write(const char *name) {
  mp_shared_memory *b;
  if (mp_shared_memory_attach(name, NULL, &b) != 0)
    return 2;
  if (mp_shared_memory_size(b) != 10)
    return 3;
  if (memcmp(mp_shared_memory_buf(b), "\x16\x21\x2c\x37\x64", 5) != 0)
    return 4;
  memcpy(mp_shared_memory_buf(b), "howdy", 5);
  return mp_shared_memory_close(b) == 0 ? 0 : 5;
}

static void test_shm_exec_unrelated_attaches(void **state) {
  (void)state;
  const char *name = uname_("exec");
  mp_shared_memory *a;
  assert_int_equal(mp_shared_memory_new(name, 10, NULL, &a), 0);
  memcpy(mp_shared_memory_buf(a), "\x16\x21\x2c\x37\x64", 5);
  assert_int_equal(run_self("--attach-write", name, NULL, 0), 0);
  assert_memory_equal(mp_shared_memory_buf(a), "howdy", 5);
  assert_true(exists(name)); /* attaching never made it the owner */
  assert_int_equal(mp_shared_memory_unlink(a), 0);
  assert_int_equal(mp_shared_memory_close(a), 0);
}

/* ------------------------------------------------------------ tracking */

/* A child that creates a tracked and a kept block, reports their names
 * through a pipe, then waits to be killed. */
static int child_creates_and_waits(void *arg) {
  int fd = *(int *)arg;
  mp_shared_memory *t, *k;
  mp_shared_memory_options keep = {.keep = 1};
  CHILD_CHECK(mp_shared_memory_new(NULL, 100, NULL, &t) == 0);
  CHILD_CHECK(mp_shared_memory_new(NULL, 100, &keep, &k) == 0);
  char msg[64];
  snprintf(msg, sizeof msg, "%s %s\n", mp_shared_memory_name(t), mp_shared_memory_name(k));
  CHILD_CHECK(write(fd, msg, strlen(msg)) == (ssize_t)strlen(msg));
  for (;;)
    pause();
}

/* Start child_creates_and_waits; return its pid and the two names. */
static pid_t start_creator(char *tracked, char *kept) {
  int pfd[2];
  assert_int_equal(pipe2(pfd, O_CLOEXEC), 0);
  pid_t pid = tu_fork(child_creates_and_waits, &pfd[1], 30);
  assert_true(pid > 0);
  close(pfd[1]);
  char msg[64] = {0};
  size_t n = 0;
  ssize_t r;
  while (n < sizeof msg - 1 && (r = read(pfd[0], msg + n, sizeof msg - 1 - n)) > 0) {
    n += (size_t)r;
    if (memchr(msg, '\n', n))
      break;
  }
  close(pfd[0]);
  assert_int_equal(sscanf(msg, "%31s %31s", tracked, kept), 2);
  return pid;
}

static void test_shm_killed_child_block_unlinked_by_parent(void **state) {
  (void)state;
  char tracked[32], kept[32];
  pid_t pid = start_creator(tracked, kept);
  assert_true(exists(tracked));
  assert_true(exists(kept));

  /* While the owner lives, no other process removes its block. */
  mp_shared_memory *x;
  assert_int_equal(mp_shared_memory_attach(tracked, NULL, &x), 0);
  assert_int_equal(mp_shared_memory_close(x), 0);
  assert_int_equal(mp_shared_memory_new(NULL, 8, NULL, &x), 0);
  assert_int_equal(mp_shared_memory_unlink(x), 0);
  assert_int_equal(mp_shared_memory_close(x), 0);
  assert_true(exists(tracked));

  kill(pid, SIGKILL);
  assert_int_equal(tu_wait(pid), 1000 + SIGKILL);
  assert_true(exists(tracked)); /* nothing runs until a libmp call notices */
  /* The parent's next call notices: here an attach to that very block. */
  assert_int_equal(mp_shared_memory_attach(tracked, NULL, &x), -ENOENT);
  assert_false(exists(tracked));
  assert_true(exists(kept)); /* kept on purpose */
  assert_int_equal(mp_shared_memory_unlink_name(kept), 0);

  /* Also noticed by a create, and while the dead child is still a zombie. */
  pid = start_creator(tracked, kept);
  kill(pid, SIGKILL);
  siginfo_t si;
  assert_int_equal(waitid(P_PID, (id_t)pid, &si, WEXITED | WNOWAIT), 0);
  assert_true(exists(tracked));
  assert_int_equal(mp_shared_memory_new(NULL, 8, NULL, &x), 0);
  assert_false(exists(tracked));
  assert_int_equal(mp_shared_memory_unlink(x), 0);
  assert_int_equal(mp_shared_memory_close(x), 0);
  assert_int_equal(tu_wait(pid), 1000 + SIGKILL);
  assert_int_equal(mp_shared_memory_unlink_name(kept), 0);
}

/* Mode: create a tracked and a kept block, print their names, end normally. */
static int mode_create_and_exit(const char *how) {
  mp_shared_memory *t, *k, *l;
  mp_shared_memory_options keep = {.keep = 1};
  mp_shareable_list *sl;
  mp_item one = mp_item_int(1);
  if (mp_shared_memory_new(NULL, 100, NULL, &t) != 0 ||
      mp_shared_memory_new(NULL, 100, &keep, &k) != 0 ||
      mp_shareable_list_new(NULL, &one, 1, NULL, &sl) != 0)
    return 2;
  l = mp_shareable_list_shm(sl);
  printf("%s %s %s\n", mp_shared_memory_name(t), mp_shared_memory_name(k),
         mp_shared_memory_name(l));
  fflush(stdout);
  /* Closing leaves the blocks as they are: tracked ones stay tracked. */
  mp_shared_memory_close(t);
  mp_shared_memory_close(k);
  mp_shareable_list_close(sl);
  if (!strcmp(how, "exit"))
    exit(0);
  return 0; /* return from main */
}

static void test_shm_normal_exit_unlinks_unkept(void **state) {
  (void)state;
  const char *hows[] = {"return", "exit"};
  for (int i = 0; i < 2; i++) {
    char out[256], t[32], k[32], l[32];
    assert_int_equal(run_self("--create-and-exit", hows[i], out, sizeof out), 0);
    assert_int_equal(sscanf(out, "%31s %31s %31s", t, k, l), 3);
    assert_false(exists(t));
    assert_false(exists(l));
    assert_true(exists(k));
    assert_int_equal(mp_shared_memory_unlink_name(k), 0);
  }
}

/* A plain fork child that ends with exit() runs the inherited handler: it
 * must unlink only the child's own blocks, never the parent's. */
static int child_exits(void *arg) {
  char *name = arg;
  mp_shared_memory *c;
  CHILD_CHECK(mp_shared_memory_new(name, 8, NULL, &c) == 0);
  exit(0);
}

static void test_shm_child_exit_spares_parent_blocks(void **state) {
  (void)state;
  mp_shared_memory *a;
  assert_int_equal(mp_shared_memory_new(NULL, 8, NULL, &a), 0); /* registers the handler */
  char cname[64];
  snprintf(cname, sizeof cname, "%s", uname_("childown"));
  pid_t pid = tu_fork(child_exits, cname, 20);
  assert_true(pid > 0);
  assert_child_ok(pid);
  assert_true(exists(mp_shared_memory_name(a)));
  assert_false(exists(cname));
  assert_int_equal(mp_shared_memory_unlink(a), 0);
  assert_int_equal(mp_shared_memory_close(a), 0);
}

/* A libmp child (mp_process) that returns from its target unlinks its
 * tracked blocks, although it ends with _exit. */
static char *names_in_heap;

static int process_creates_and_returns(void *arg) {
  (void)arg;
  mp_shared_memory *t, *k;
  mp_shared_memory_options keep = {.keep = 1};
  if (mp_shared_memory_new(NULL, 100, NULL, &t) != 0 ||
      mp_shared_memory_new(NULL, 100, &keep, &k) != 0)
    return 2;
  snprintf(names_in_heap, 128, "%s %s", mp_shared_memory_name(t), mp_shared_memory_name(k));
  return 0;
}

static void test_shm_libmp_child_return_unlinks(void **state) {
  (void)state;
  names_in_heap = mp_heap_calloc(1, 128);
  assert_non_null(names_in_heap);
  mp_process *p;
  assert_int_equal(mp_process_new(process_creates_and_returns, NULL, NULL, &p), 0);
  assert_int_equal(mp_process_start(p), 0);
  assert_int_equal(mp_process_join(p, MP_FOREVER), 0);
  int code = -1;
  assert_int_equal(mp_process_exitcode(p, &code), 1);
  assert_int_equal(code, 0);
  assert_int_equal(mp_process_free(p), 0);
  char t[32], k[32];
  assert_int_equal(sscanf(names_in_heap, "%31s %31s", t, k), 2);
  assert_false(exists(t)); /* gone by the child's own end, no call here yet */
  assert_true(exists(k));
  assert_int_equal(mp_shared_memory_unlink_name(k), 0);
  mp_heap_free(names_in_heap);
}

/* Mode: start a libmp child that creates a block, prints its name and is
 * killed; check the block is still there after the join; end without any
 * shared memory call of its own. */
static int process_creates_and_dies(void *arg) {
  mp_shared_memory *t;
  if (mp_shared_memory_new(NULL, 100, NULL, &t) != 0)
    return 2;
  snprintf(arg, 64, "%s", mp_shared_memory_name(t));
  raise(SIGKILL);
  return 3;
}

static int mode_parent_of_crasher(void) {
  char *name = mp_heap_calloc(1, 64);
  mp_process *p;
  if (!name || mp_process_new(process_creates_and_dies, name, NULL, &p) != 0 ||
      mp_process_start(p) != 0 || mp_process_join(p, MP_FOREVER) != 0)
    return 2;
  int code = 0;
  if (mp_process_exitcode(p, &code) != 1 || code != -SIGKILL)
    return 3;
  if (!name[0] || !exists(name))
    return 4; /* still there: nothing has noticed yet */
  printf("%s\n", name);
  return 0; /* the test checks it is gone once this process has ended */
}

static void test_shm_parent_exit_unlinks_dead_child_blocks(void **state) {
  (void)state;
  char out[128], t[32];
  assert_int_equal(run_self("--parent-of-crasher", NULL, out, sizeof out), 0);
  assert_int_equal(sscanf(out, "%31s", t), 1);
  assert_false(exists(t));
}

/* Adoption: a child takes over the parent's tracked block and dies; the block
 * is then the dead child's and goes. A kept block adopted by a program that
 * ends normally goes at its end. */
struct adopt_arg {
  const char *name;
  int fd;
};

static int child_adopts_and_waits(void *arg) {
  struct adopt_arg *a = arg;
  mp_shared_memory_options adopt = {.adopt = 1};
  mp_shared_memory *b;
  CHILD_CHECK(mp_shared_memory_attach(a->name, &adopt, &b) == 0);
  CHILD_CHECK(write(a->fd, "x", 1) == 1);
  for (;;)
    pause();
}

static int mode_adopt(const char *name) {
  mp_shared_memory_options adopt = {.adopt = 1};
  mp_shared_memory *b;
  if (mp_shared_memory_attach(name, &adopt, &b) != 0)
    return 2;
  return mp_shared_memory_close(b);
}

static void test_shm_keep_and_adopt(void **state) {
  (void)state;
  const char *name = uname_("adopt");
  mp_shared_memory *a;
  assert_int_equal(mp_shared_memory_new(name, 64, NULL, &a), 0);
  int pfd[2];
  assert_int_equal(pipe2(pfd, O_CLOEXEC), 0);
  struct adopt_arg arg = {name, pfd[1]};
  pid_t pid = tu_fork(child_adopts_and_waits, &arg, 30);
  assert_true(pid > 0);
  close(pfd[1]);
  char c;
  assert_int_equal(read(pfd[0], &c, 1), 1); /* adopted */
  close(pfd[0]);
  kill(pid, SIGKILL);
  assert_int_equal(tu_wait(pid), 1000 + SIGKILL);
  mp_shared_memory *x;
  assert_int_equal(mp_shared_memory_new(NULL, 8, NULL, &x), 0); /* notices */
  assert_false(exists(name));                                   /* the parent no longer owned it */
  assert_int_equal(mp_shared_memory_unlink(x), 0);
  assert_int_equal(mp_shared_memory_close(x), 0);
  assert_int_equal(mp_shared_memory_close(a), 0);

  /* Kept, then adopted by an unrelated program that ends normally. */
  mp_shared_memory_options keep = {.keep = 1};
  assert_int_equal(mp_shared_memory_new(name, 64, &keep, &a), 0);
  assert_int_equal(run_self("--adopt", name, NULL, 0), 0);
  assert_false(exists(name));
  assert_int_equal(mp_shared_memory_unlink(a), -ENOENT);
  assert_int_equal(mp_shared_memory_close(a), 0);
}

/* Mode: create a tracked block, remove its name behind libmp's back, let
 * another block take the name, end normally: the newcomer must survive. */
static int mode_name_reused(const char *name) {
  mp_shared_memory *a;
  if (mp_shared_memory_new(name, 64, NULL, &a) != 0)
    return 2;
  char path[128];
  snprintf(path, sizeof path, "/%s", name);
  mp_shared_memory_close(a);
  if (shm_unlink(path) != 0)
    return 3;
  int fd = shm_open(path, O_CREAT | O_EXCL | O_RDWR, 0600);
  if (fd < 0)
    return 4;
  close(fd);
  return 0;
}

static void test_shm_exit_spares_a_reused_name(void **state) {
  (void)state;
  const char *name = uname_("reused");
  assert_int_equal(run_self("--name-reused", name, NULL, 0), 0);
  assert_true(exists(name));
  assert_int_equal(mp_shared_memory_unlink_name(name), 0);
}

/* Unlinking from another process (a child with its inherited handle) untracks
 * the block: a new block of that name later is not touched by the first
 * owner's end. */
static int child_unlinks(void *arg) {
  CHILD_CHECK(mp_shared_memory_unlink(arg) == 0);
  CHILD_CHECK(mp_shared_memory_close(arg) == 0);
  return 0;
}

static void test_shm_unlink_from_child(void **state) {
  (void)state;
  const char *name = uname_("childunlink");
  mp_shared_memory *a;
  assert_int_equal(mp_shared_memory_new(name, 64, NULL, &a), 0);
  pid_t pid = tu_fork(child_unlinks, a, 20);
  assert_true(pid > 0);
  assert_child_ok(pid);
  assert_false(exists(name));
  assert_int_equal(mp_shared_memory_unlink(a), -ENOENT);
  assert_int_equal(mp_shared_memory_close(a), 0);
}

/* ------------------------------------------------------------ ShareableList */

static void test_shareable_list_types(void **state) {
  (void)state;
  const char bin[] = {1, 0, 2, 0, 3};
  mp_item str_big = mp_item_str("hi");
  str_big.cap = 100;
  mp_item items[] = {
      mp_item_int(-42),          mp_item_float(2.5),
      mp_item_bool(7),           mp_item_none(),
      mp_item_str("abc"),        mp_item_bytes(bin, sizeof bin),
      mp_item_str("0123456789"), str_big,
      mp_item_str(""),           mp_item_int(INT64_MAX),
  };
  size_t n = sizeof items / sizeof items[0];
  mp_shareable_list *l;
  assert_int_equal(mp_shareable_list_new(uname_("types"), items, n, NULL, &l), 0);
  assert_int_equal(mp_shareable_list_len(l), (ssize_t)n);
  ssize_t caps[] = {8, 8, 8, 8, 8, 8, 16, 104, 8, 8};
  for (size_t i = 0; i < n; i++)
    assert_int_equal(mp_shareable_list_capacity(l, i), caps[i]);

  char buf[128];
  mp_item it;
  assert_int_equal(mp_shareable_list_get(l, 0, &it, NULL, 0), 0);
  assert_int_equal(it.type, MP_ITEM_INT);
  assert_int_equal(it.i, -42);
  assert_int_equal(mp_shareable_list_get(l, 1, &it, NULL, 0), 0);
  assert_int_equal(it.type, MP_ITEM_FLOAT);
  assert_true(it.f == 2.5);
  assert_int_equal(mp_shareable_list_get(l, 2, &it, NULL, 0), 0);
  assert_int_equal(it.type, MP_ITEM_BOOL);
  assert_int_equal(it.b, 1);
  assert_int_equal(mp_shareable_list_get(l, 3, &it, NULL, 0), 0);
  assert_int_equal(it.type, MP_ITEM_NONE);
  memset(buf, 'z', sizeof buf);
  assert_int_equal(mp_shareable_list_get(l, 4, &it, buf, sizeof buf), 0);
  assert_int_equal(it.type, MP_ITEM_STR);
  assert_int_equal(it.len, 3);
  assert_ptr_equal(it.data, buf);
  assert_string_equal(buf, "abc"); /* NUL-terminated */
  assert_int_equal(mp_shareable_list_get(l, 5, &it, buf, sizeof buf), 0);
  assert_int_equal(it.type, MP_ITEM_BYTES);
  assert_int_equal(it.len, sizeof bin);
  assert_memory_equal(buf, bin, sizeof bin); /* NULs inside kept, none trimmed */
  assert_int_equal(mp_shareable_list_get(l, 7, &it, buf, sizeof buf), 0);
  assert_string_equal(buf, "hi");
  assert_int_equal(mp_shareable_list_get(l, 8, &it, buf, sizeof buf), 0);
  assert_int_equal(it.len, 0);
  assert_string_equal(buf, "");
  assert_int_equal(mp_shareable_list_get(l, 9, &it, NULL, 0), 0);
  assert_true(it.i == INT64_MAX);

  /* Any type may replace any other within the slot's capacity. */
  mp_item v = mp_item_str("12345678"); /* exactly 8 bytes: fits an int slot */
  assert_int_equal(mp_shareable_list_set(l, 0, &v), 0);
  assert_int_equal(mp_shareable_list_get(l, 0, &it, buf, sizeof buf), 0);
  assert_int_equal(it.type, MP_ITEM_STR);
  assert_string_equal(buf, "12345678");
  v = mp_item_float(-1.0);
  assert_int_equal(mp_shareable_list_set(l, 4, &v), 0); /* str slot -> float */
  assert_int_equal(mp_shareable_list_get(l, 4, &it, NULL, 0), 0);
  assert_int_equal(it.type, MP_ITEM_FLOAT);
  assert_true(it.f == -1.0);
  char long_text[105];
  memset(long_text, 'q', 104);
  long_text[104] = 0;
  v = mp_item_str(long_text);
  assert_int_equal(mp_shareable_list_set(l, 7, &v), 0); /* fills the reserved cap */
  assert_int_equal(mp_shareable_list_get(l, 7, &it, buf, sizeof buf), 0);
  assert_int_equal(it.len, 104);
  assert_string_equal(buf, long_text);
  v = mp_item_bool(0);
  assert_int_equal(mp_shareable_list_set(l, 6, &v), 0);
  assert_int_equal(mp_shareable_list_get(l, 6, &it, NULL, 0), 0);
  assert_int_equal(it.type, MP_ITEM_BOOL);
  assert_int_equal(it.b, 0);
  v = mp_item_none();
  assert_int_equal(mp_shareable_list_set(l, 9, &v), 0);
  assert_int_equal(mp_shareable_list_get(l, 9, &it, NULL, 0), 0);
  assert_int_equal(it.type, MP_ITEM_NONE);

  /* The underlying block. */
  mp_shared_memory *shm = mp_shareable_list_shm(l);
  assert_non_null(shm);
  assert_string_equal(mp_shared_memory_name(shm), uname_("types"));
  assert_memory_equal(mp_shared_memory_buf(shm), "mpSLIST1", 8);
  assert_int_equal(mp_shareable_list_unlink(l), 0);
  assert_int_equal(mp_shareable_list_unlink(l), -ENOENT);
  assert_int_equal(mp_shareable_list_close(l), 0);

  /* An empty list. */
  assert_int_equal(mp_shareable_list_new(NULL, NULL, 0, NULL, &l), 0);
  assert_int_equal(mp_shareable_list_len(l), 0);
  mp_shareable_list *l2;
  assert_int_equal(
      mp_shareable_list_attach(mp_shared_memory_name(mp_shareable_list_shm(l)), NULL, &l2), 0);
  assert_int_equal(mp_shareable_list_len(l2), 0);
  assert_int_equal(mp_shareable_list_get(l2, 0, &it, NULL, 0), -ERANGE);
  assert_int_equal(mp_shareable_list_close(l2), 0);
  assert_int_equal(mp_shareable_list_unlink(l), 0);
  assert_int_equal(mp_shareable_list_close(l), 0);
}

static void test_shareable_list_errors(void **state) {
  (void)state;
  int before = tu_shm_count();
  mp_item items[] = {mp_item_str("abc"), mp_item_int(5), mp_item_bytes("xy", 2)};
  mp_shareable_list *l, *untouched = (mp_shareable_list *)&items, *out = untouched;
  assert_int_equal(mp_shareable_list_new(NULL, items, 3, NULL, &l), 0);
  char buf[64];
  mp_item it, it0 = mp_item_int(99);

  /* Too long for the slot: an error, and the slot keeps its value. */
  mp_item v = mp_item_str("123456789"); /* 9 > 8 */
  assert_int_equal(mp_shareable_list_set(l, 0, &v), -EMSGSIZE);
  assert_int_equal(mp_shareable_list_set(l, 1, &v), -EMSGSIZE);
  v = mp_item_bytes("123456789", 9);
  assert_int_equal(mp_shareable_list_set(l, 2, &v), -EMSGSIZE);
  assert_int_equal(mp_shareable_list_get(l, 0, &it, buf, sizeof buf), 0);
  assert_string_equal(buf, "abc");
  assert_int_equal(mp_shareable_list_get(l, 1, &it, NULL, 0), 0);
  assert_int_equal(it.i, 5);

  /* A buffer too small: nothing written. */
  it = it0;
  assert_int_equal(mp_shareable_list_get(l, 0, &it, buf, 3), -EMSGSIZE); /* NUL needs 4 */
  assert_int_equal(mp_shareable_list_get(l, 0, &it, NULL, 0), -EMSGSIZE);
  assert_int_equal(it.type, MP_ITEM_INT);
  assert_int_equal(it.i, 99);
  assert_int_equal(mp_shareable_list_get(l, 0, &it, buf, 4), 0);
  assert_int_equal(mp_shareable_list_get(l, 2, &it, buf, 2), 0); /* bytes: no NUL */
  assert_int_equal(mp_shareable_list_get(l, 2, &it, buf, 1), -EMSGSIZE);

  /* Indices, types, NULLs. */
  v = mp_item_int(1);
  assert_int_equal(mp_shareable_list_get(l, 3, &it, buf, sizeof buf), -ERANGE);
  assert_int_equal(mp_shareable_list_set(l, 3, &v), -ERANGE);
  assert_int_equal(mp_shareable_list_capacity(l, 3), -ERANGE);
  assert_int_equal(mp_shareable_list_get(l, SIZE_MAX, &it, buf, sizeof buf), -ERANGE);
  mp_item bad = mp_item_int(1);
  bad.type = (mp_item_type)77;
  assert_int_equal(mp_shareable_list_set(l, 0, &bad), -EINVAL);
  assert_int_equal(mp_shareable_list_count(l, &bad), -EINVAL);
  assert_int_equal(mp_shareable_list_index(l, &bad), -EINVAL);
  mp_item nulldata = mp_item_bytes(NULL, 3);
  assert_int_equal(mp_shareable_list_set(l, 0, &nulldata), -EINVAL);
  nulldata.len = 0;
  assert_int_equal(mp_shareable_list_set(l, 0, &nulldata), 0); /* empty is fine */
  assert_int_equal(mp_shareable_list_set(l, 0, NULL), -EINVAL);
  assert_int_equal(mp_shareable_list_set(NULL, 0, &v), -EINVAL);
  assert_int_equal(mp_shareable_list_get(NULL, 0, &it, buf, sizeof buf), -EINVAL);
  assert_int_equal(mp_shareable_list_get(l, 0, NULL, buf, sizeof buf), -EINVAL);
  assert_int_equal(mp_shareable_list_len(NULL), -EINVAL);
  assert_int_equal(mp_shareable_list_capacity(NULL, 0), -EINVAL);
  assert_int_equal(mp_shareable_list_count(NULL, &v), -EINVAL);
  assert_int_equal(mp_shareable_list_index(l, NULL), -EINVAL);
  assert_null(mp_shareable_list_shm(NULL));
  assert_int_equal(mp_shareable_list_close(NULL), 0);
  assert_int_equal(mp_shareable_list_unlink(NULL), -EINVAL);

  /* Constructors. */
  assert_int_equal(mp_shareable_list_new(NULL, items, 3, NULL, NULL), -EINVAL);
  assert_int_equal(mp_shareable_list_new(NULL, NULL, 3, NULL, &out), -EINVAL);
  assert_int_equal(mp_shareable_list_new(NULL, &bad, 1, NULL, &out), -EINVAL);
  mp_item huge = mp_item_str("x");
  huge.cap = (size_t)1 << 33;
  assert_int_equal(mp_shareable_list_new(NULL, &huge, 1, NULL, &out), -EINVAL);
  assert_int_equal(mp_shareable_list_new("a/b", items, 3, NULL, &out), -EINVAL);
  const char *name = mp_shared_memory_name(mp_shareable_list_shm(l));
  assert_int_equal(mp_shareable_list_new(name, items, 3, NULL, &out), -EEXIST);
  assert_int_equal(mp_shareable_list_attach(uname_("nolist"), NULL, &out), -ENOENT);
  assert_int_equal(mp_shareable_list_attach(name, NULL, NULL), -EINVAL);
  assert_ptr_equal(out, untouched);

  /* Blocks that are not lists. */
  mp_shared_memory *raw;
  assert_int_equal(mp_shared_memory_new(NULL, 4096, NULL, &raw), 0);
  const char *rawname = mp_shared_memory_name(raw);
  assert_int_equal(mp_shareable_list_attach(rawname, NULL, &out), -EAGAIN); /* magic 0 */
  memcpy(mp_shared_memory_buf(raw), "notalist", 8);
  assert_int_equal(mp_shareable_list_attach(rawname, NULL, &out), -EINVAL);
  /* A list header whose slot points outside the block. */
  mp_shared_memory *lshm = mp_shareable_list_shm(l);
  memcpy(mp_shared_memory_buf(raw), mp_shared_memory_buf(lshm),
         (size_t)mp_shared_memory_size(lshm));
  mp_shareable_list *copy;
  assert_int_equal(mp_shareable_list_attach(rawname, NULL, &copy), 0); /* a faithful copy works */
  assert_int_equal(mp_shareable_list_get(copy, 2, &it, buf, sizeof buf), 0);
  assert_memory_equal(buf, "xy", 2);
  assert_int_equal(mp_shareable_list_close(copy), 0);
  uint64_t far = 1 << 20;
  memcpy((char *)mp_shared_memory_buf(raw) + 32 + 40 * 2 + 24, &far, 8); /* slot 2 offset */
  assert_int_equal(mp_shareable_list_attach(rawname, NULL, &out), -EINVAL);
  uint32_t many = 1000;
  memcpy((char *)mp_shared_memory_buf(raw) + 12, &many, 4); /* count beyond the block */
  assert_int_equal(mp_shareable_list_attach(rawname, NULL, &out), -EINVAL);
  assert_ptr_equal(out, untouched);
  assert_int_equal(mp_shared_memory_unlink(raw), 0);
  assert_int_equal(mp_shared_memory_close(raw), 0);

  assert_int_equal(mp_shareable_list_unlink(l), 0);
  assert_int_equal(mp_shareable_list_close(l), 0);
  assert_int_equal(tu_shm_count(), before);
}

static void test_shareable_list_count_index(void **state) {
  (void)state;
  mp_item items[] = {mp_item_int(1), mp_item_float(1.0),    mp_item_bool(1),    mp_item_str("a"),
                     mp_item_int(1), mp_item_bytes("a", 1), mp_item_float(NAN), mp_item_none()};
  mp_shareable_list *l;
  assert_int_equal(mp_shareable_list_new(NULL, items, 8, NULL, &l), 0);
  mp_item v = mp_item_int(1);
  assert_int_equal(mp_shareable_list_count(l, &v), 2); /* the type counts: not 1.0, not True */
  assert_int_equal(mp_shareable_list_index(l, &v), 0);
  v = mp_item_float(1.0);
  assert_int_equal(mp_shareable_list_count(l, &v), 1);
  assert_int_equal(mp_shareable_list_index(l, &v), 1);
  v = mp_item_bool(1);
  assert_int_equal(mp_shareable_list_index(l, &v), 2);
  v = mp_item_str("a");
  assert_int_equal(mp_shareable_list_count(l, &v), 1);
  assert_int_equal(mp_shareable_list_index(l, &v), 3);
  v = mp_item_bytes("a", 1);
  assert_int_equal(mp_shareable_list_index(l, &v), 5);
  v = mp_item_float(NAN);
  assert_int_equal(mp_shareable_list_count(l, &v), 0);
  assert_int_equal(mp_shareable_list_index(l, &v), -ENOENT);
  v = mp_item_none();
  assert_int_equal(mp_shareable_list_index(l, &v), 7);
  v = mp_item_int(2);
  assert_int_equal(mp_shareable_list_count(l, &v), 0);
  assert_int_equal(mp_shareable_list_index(l, &v), -ENOENT);
  v = mp_item_str("ab");
  assert_int_equal(mp_shareable_list_index(l, &v), -ENOENT);
  assert_int_equal(mp_shareable_list_set(l, 7, &v), 0);
  assert_int_equal(mp_shareable_list_index(l, &v), 7);
  assert_int_equal(mp_shareable_list_unlink(l), 0);
  assert_int_equal(mp_shareable_list_close(l), 0);
}

/* Another process of the family and an unrelated program read and write. */
static int child_list_work(void *arg) {
  mp_shareable_list *l;
  CHILD_CHECK(mp_shareable_list_attach(arg, NULL, &l) == 0);
  CHILD_CHECK(mp_shareable_list_len(l) == 3);
  mp_item it;
  char buf[32];
  CHILD_CHECK(mp_shareable_list_get(l, 0, &it, NULL, 0) == 0 && it.i == 10);
  CHILD_CHECK(mp_shareable_list_get(l, 1, &it, buf, sizeof buf) == 0 && !strcmp(buf, "parent"));
  mp_item v = mp_item_int(11);
  CHILD_CHECK(mp_shareable_list_set(l, 0, &v) == 0);
  v = mp_item_str("child!");
  CHILD_CHECK(mp_shareable_list_set(l, 1, &v) == 0);
  v = mp_item_str("far too long for the slot");
  CHILD_CHECK(mp_shareable_list_set(l, 1, &v) == -EMSGSIZE);
  CHILD_CHECK(mp_shareable_list_close(l) == 0);
  return 0;
}

static int mode_list_work(const char *name) {
  mp_shareable_list *l;
  if (mp_shareable_list_attach(name, NULL, &l) != 0)
    return 2;
  mp_item it;
  char buf[32];
  if (mp_shareable_list_get(l, 0, &it, NULL, 0) != 0 || it.i != 11)
    return 3;
  if (mp_shareable_list_get(l, 1, &it, buf, sizeof buf) != 0 || strcmp(buf, "child!"))
    return 4;
  mp_item v = mp_item_float(0.25);
  if (mp_shareable_list_set(l, 2, &v) != 0)
    return 5;
  return mp_shareable_list_close(l) == 0 ? 0 : 6;
}

static void test_shareable_list_cross_process(void **state) {
  (void)state;
  mp_item items[] = {mp_item_int(10), mp_item_str("parent"), mp_item_none()};
  mp_shareable_list *l;
  const char *name = uname_("list");
  assert_int_equal(mp_shareable_list_new(name, items, 3, NULL, &l), 0);
  pid_t pid = tu_fork(child_list_work, (void *)name, 20);
  assert_true(pid > 0);
  assert_child_ok(pid);
  assert_int_equal(run_self("--list-work", name, NULL, 0), 0);
  mp_item it;
  char buf[32];
  assert_int_equal(mp_shareable_list_get(l, 0, &it, NULL, 0), 0);
  assert_int_equal(it.i, 11);
  assert_int_equal(mp_shareable_list_get(l, 1, &it, buf, sizeof buf), 0);
  assert_string_equal(buf, "child!");
  assert_int_equal(mp_shareable_list_get(l, 2, &it, NULL, 0), 0);
  assert_int_equal(it.type, MP_ITEM_FLOAT);
  assert_true(it.f == 0.25);
  assert_int_equal(mp_shareable_list_unlink(l), 0);
  assert_int_equal(mp_shareable_list_close(l), 0);
}

/* Writers of different lengths to one slot: a reader never sees a mix. */
static int child_writer(void *arg) {
  mp_shareable_list *l;
  CHILD_CHECK(mp_shareable_list_attach(arg, NULL, &l) == 0);
  char a[41], b[21];
  memset(a, 'a', 40);
  a[40] = 0;
  memset(b, 'b', 20);
  b[20] = 0;
  double end = tu_now() + 0.7;
  for (unsigned i = 0; tu_now() < end; i++) {
    mp_item v = (i & 1) ? mp_item_str(a) : mp_item_str(b);
    CHILD_CHECK(mp_shareable_list_set(l, 0, &v) == 0);
    if (i % 3 == 0) {
      v = mp_item_int(i);
      CHILD_CHECK(mp_shareable_list_set(l, 0, &v) == 0);
    }
  }
  CHILD_CHECK(mp_shareable_list_close(l) == 0);
  return 0;
}

static void test_shareable_list_writes_never_torn(void **state) {
  (void)state;
  mp_item init = mp_item_str("");
  init.cap = 40;
  mp_shareable_list *l;
  const char *name = uname_("torn");
  assert_int_equal(mp_shareable_list_new(name, &init, 1, NULL, &l), 0);
  pid_t w1 = tu_fork(child_writer, (void *)name, 20);
  pid_t w2 = tu_fork(child_writer, (void *)name, 20);
  assert_true(w1 > 0 && w2 > 0);
  double end = tu_now() + 0.7;
  long reads = 0, bad = 0, seen_a = 0, seen_b = 0;
  char buf[41];
  while (tu_now() < end) {
    mp_item it;
    assert_int_equal(mp_shareable_list_get(l, 0, &it, buf, sizeof buf), 0);
    reads++;
    if (it.type == MP_ITEM_INT)
      continue;
    if (it.type != MP_ITEM_STR) {
      bad++;
      continue;
    }
    char want = it.len == 40 ? 'a' : it.len == 20 ? 'b' : 0;
    if (it.len == 0)
      continue; /* the initial value */
    for (size_t k = 0; k < it.len; k++)
      if (buf[k] != want)
        want = 0;
    bad += !want;
    seen_a += want == 'a';
    seen_b += want == 'b';
  }
  assert_child_ok(w1);
  assert_child_ok(w2);
  assert_true(reads > 100);
  assert_int_equal(bad, 0);
  assert_true(seen_a > 0 && seen_b > 0); /* the reader did meet both writers */
  assert_int_equal(mp_shareable_list_unlink(l), 0);
  assert_int_equal(mp_shareable_list_close(l), 0);
}

/* A writer that died in the middle of a write: readers and writers go on. */
static int child_just_exits(void *arg) {
  (void)arg;
  return 0;
}

static void test_shareable_list_dead_writer_recovered(void **state) {
  (void)state;
  mp_item items[] = {mp_item_str("abcdefgh"), mp_item_int(1)};
  mp_shareable_list *l;
  assert_int_equal(mp_shareable_list_new(NULL, items, 2, NULL, &l), 0);
  pid_t dead = tu_fork(child_just_exits, NULL, 5);
  assert_true(dead > 0);
  assert_child_ok(dead);
  /* Forge what a writer killed in mid-write leaves: seq odd, writer its pid,
   * a half-written value (layout documented in mp/shm.h and src/shm_list.c). */
  char *base = mp_shared_memory_buf(mp_shareable_list_shm(l));
  for (int slot = 0; slot < 2; slot++) {
    _Atomic uint32_t *seq = (_Atomic uint32_t *)(base + 32 + 40 * slot);
    _Atomic uint64_t *writer = (_Atomic uint64_t *)(base + 32 + 40 * slot + 8);
    atomic_store(seq, atomic_load(seq) + 1);
    atomic_store(writer, (uint64_t)(uint32_t)dead);
  }
  memcpy(base + 32 + 80, "XYZ", 3); /* slot 0's data starts after the descriptors */
  mp_item it;
  char buf[16];
  double t0 = tu_now();
  assert_int_equal(mp_shareable_list_get(l, 0, &it, buf, sizeof buf), -EOWNERDEAD);
  assert_int_equal(mp_shareable_list_get(l, 0, &it, buf, sizeof buf), 0);
  assert_int_equal(it.type, MP_ITEM_STR);
  assert_string_equal(buf, "XYZdefgh"); /* what the dead writer left, reported once */
  mp_item v = mp_item_int(5);
  assert_int_equal(mp_shareable_list_set(l, 1, &v), 0); /* a writer takes over */
  assert_int_equal(mp_shareable_list_get(l, 1, &it, NULL, 0), 0);
  assert_int_equal(it.i, 5);
  assert_true(tu_now() - t0 < 5.0);
  assert_int_equal(mp_shareable_list_unlink(l), 0);
  assert_int_equal(mp_shareable_list_close(l), 0);
}

/* ------------------------------------------------------------ manager */

static int child_manager(void *arg) {
  mp_shm_manager *m = arg;
  CHILD_CHECK(mp_shm_manager_shutdown(m) == -ECHILD); /* not the creator */
  mp_shared_memory *s;
  CHILD_CHECK(mp_shm_manager_shared_memory(m, 8, &s) == -ECHILD);
  return 0;
}

static void test_shm_manager_frees_all(void **state) {
  (void)state;
  int before = tu_shm_count();
  mp_shm_manager *m;
  assert_int_equal(mp_shm_manager_new(&m), 0);
  mp_shared_memory *a, *b, *c;
  assert_int_equal(mp_shm_manager_shared_memory(m, 128, &a), 0);
  assert_int_equal(mp_shm_manager_shared_memory(m, 256, &b), 0);
  assert_int_equal(mp_shm_manager_shared_memory(m, 512, &c), 0);
  assert_int_equal(mp_shared_memory_size(b), 256);
  mp_item items[3] = {mp_item_int(0), mp_item_int(1), mp_item_int(2)};
  mp_shareable_list *l1, *l2;
  assert_int_equal(mp_shm_manager_shareable_list(m, items, 3, &l1), 0);
  assert_int_equal(mp_shm_manager_shareable_list(m, items, 2, &l2), 0);
  assert_int_equal(tu_shm_count(), before + 5);
  char na[32], nb[32], nc[32], n1[32], n2[32];
  snprintf(na, sizeof na, "%s", mp_shared_memory_name(a));
  snprintf(nb, sizeof nb, "%s", mp_shared_memory_name(b));
  snprintf(nc, sizeof nc, "%s", mp_shared_memory_name(c));
  snprintf(n1, sizeof n1, "%s", mp_shared_memory_name(mp_shareable_list_shm(l1)));
  snprintf(n2, sizeof n2, "%s", mp_shared_memory_name(mp_shareable_list_shm(l2)));

  /* A child may use them, but its copy of the manager is not the manager. */
  pid_t pid = tu_fork(child_manager, m, 20);
  assert_true(pid > 0);
  assert_child_ok(pid);
  assert_int_equal(tu_shm_count(), before + 5);

  /* Closing or unlinking early is allowed. */
  assert_int_equal(mp_shared_memory_close(b), 0);
  assert_int_equal(mp_shared_memory_unlink(c), 0);
  assert_int_equal(mp_shareable_list_close(l2), 0);
  assert_true(exists(nb));
  assert_false(exists(nc));
  assert_true(exists(n2));
  mp_shareable_list *other;
  assert_int_equal(mp_shareable_list_attach(n1, NULL, &other), 0); /* a view of our own */

  assert_int_equal(mp_shm_manager_shutdown(m), 0);
  assert_false(exists(na));
  assert_false(exists(nb));
  assert_false(exists(n1));
  assert_false(exists(n2));
  assert_int_equal(tu_shm_count(), before);
  mp_item it;
  assert_int_equal(mp_shareable_list_get(other, 2, &it, NULL, 0), 0); /* views stay valid */
  assert_int_equal(it.i, 2);
  assert_int_equal(mp_shareable_list_close(other), 0);

  assert_int_equal(mp_shm_manager_shutdown(NULL), 0);
  assert_int_equal(mp_shm_manager_new(NULL), -EINVAL);
  assert_int_equal(mp_shm_manager_new(&m), 0);
  assert_int_equal(mp_shm_manager_shared_memory(m, 0, &a), -EINVAL);
  assert_int_equal(mp_shm_manager_shared_memory(NULL, 8, &a), -EINVAL);
  assert_int_equal(mp_shm_manager_shared_memory(m, 8, NULL), -EINVAL);
  assert_int_equal(mp_shm_manager_shareable_list(m, NULL, 1, &l1), -EINVAL);
  assert_int_equal(mp_shm_manager_shareable_list(NULL, items, 1, &l1), -EINVAL);
  assert_int_equal(mp_shm_manager_shutdown(m), 0); /* nothing to free */
  assert_int_equal(tu_shm_count(), before);
}

int main(int argc, char **argv) {
  self_exe = argv[0];
  if (argc > 1) {
    const char *arg = argc > 2 ? argv[2] : "";
    if (!strcmp(argv[1], "--attach-write"))
      return mode_attach_write(arg);
    if (!strcmp(argv[1], "--create-and-exit"))
      return mode_create_and_exit(arg);
    if (!strcmp(argv[1], "--parent-of-crasher"))
      return mode_parent_of_crasher();
    if (!strcmp(argv[1], "--adopt"))
      return mode_adopt(arg);
    if (!strcmp(argv[1], "--name-reused"))
      return mode_name_reused(arg);
    if (!strcmp(argv[1], "--list-work"))
      return mode_list_work(arg);
    return 99;
  }
  /* Forked children must share this process's heap, where the registry of
   * tracked blocks lives: map it before any fork. */
  mp_heap_init(NULL);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_shm_create_attach_roundtrip),
      cmocka_unit_test(test_shm_generated_names),
      cmocka_unit_test(test_shm_errors),
      cmocka_unit_test(test_shm_mode_0600),
      cmocka_unit_test(test_shm_fork_child_attaches),
      cmocka_unit_test(test_shm_exec_unrelated_attaches),
      cmocka_unit_test(test_shm_killed_child_block_unlinked_by_parent),
      cmocka_unit_test(test_shm_normal_exit_unlinks_unkept),
      cmocka_unit_test(test_shm_child_exit_spares_parent_blocks),
      cmocka_unit_test(test_shm_libmp_child_return_unlinks),
      cmocka_unit_test(test_shm_parent_exit_unlinks_dead_child_blocks),
      cmocka_unit_test(test_shm_keep_and_adopt),
      cmocka_unit_test(test_shm_exit_spares_a_reused_name),
      cmocka_unit_test(test_shm_unlink_from_child),
      cmocka_unit_test(test_shareable_list_types),
      cmocka_unit_test(test_shareable_list_errors),
      cmocka_unit_test(test_shareable_list_count_index),
      cmocka_unit_test(test_shareable_list_cross_process),
      cmocka_unit_test(test_shareable_list_writes_never_torn),
      cmocka_unit_test(test_shareable_list_dead_writer_recovered),
      cmocka_unit_test(test_shm_manager_frees_all),
  };
  return TU_RUN("shm", tests);
}
