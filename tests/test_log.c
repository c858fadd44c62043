/* SPDX-License-Identifier: MIT */
/*
 * The logger: off and silent by default, MP_LOG and the calls turn it on,
 * messages reach a handler or standard error as single whole lines, and a
 * recovery after a kill is reported.
 */
#include "crashutil.h"

#include <fcntl.h>
#include <signal.h>
#include <mp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "internal.h"

static char **self_argv;

struct capture {
  int calls;
  int level;
  char text[512];
};

static void capture(int level, const char *message, void *arg) {
  struct capture *c = arg;
  c->calls++;
  c->level = level;
  snprintf(c->text, sizeof c->text, "%s", message);
}

/* Run this test program again with MP_LOG=value: it prints the level the
 * fresh process reads. */
static int level_under_env(const char *value) {
  int fds[2];
  assert_int_equal(pipe(fds), 0);
  pid_t c = fork();
  assert_true(c >= 0);
  if (c == 0) {
    dup2(fds[1], 1);
    if (value)
      setenv("MP_LOG", value, 1);
    else
      unsetenv("MP_LOG");
    execl("/proc/self/exe", self_argv[0], "--print-level", (char *)NULL);
    _exit(127);
  }
  close(fds[1]);
  char buf[32] = {0};
  ssize_t n = read(fds[0], buf, sizeof buf - 1);
  close(fds[0]);
  assert_int_equal(tu_wait(c), 0);
  assert_true(n > 0);
  return atoi(buf);
}

static void test_log_off_by_default_and_from_env(void **state) {
  (void)state;
  assert_int_equal(level_under_env(NULL), MP_LOG_OFF);
  assert_int_equal(level_under_env("debug"), MP_LOG_DEBUG);
  assert_int_equal(level_under_env("INFO"), MP_LOG_INFO);
  assert_int_equal(level_under_env("warning"), MP_LOG_WARNING);
  assert_int_equal(level_under_env("error"), MP_LOG_ERROR);
  assert_int_equal(level_under_env("off"), MP_LOG_OFF);
  assert_int_equal(level_under_env("loud"), MP_LOG_OFF); /* unknown: silent */
}

static void test_log_levels_checked(void **state) {
  (void)state;
  assert_int_equal(mp_log_to_stderr(15), -EINVAL);
  assert_int_equal(mp_log_set_handler(-1, capture, NULL), -EINVAL);
  assert_int_equal(mp_log_to_stderr(MP_LOG_WARNING), 0);
  assert_int_equal(mp_log_get_level(), MP_LOG_WARNING);
  assert_int_equal(mp_log_set_handler(MP_LOG_INFO, NULL, NULL), 0); /* NULL: off */
  assert_int_equal(mp_log_get_level(), MP_LOG_OFF);
}

/* A process killed inside the heap's allocator: the survivor that repairs it
 * says so, at info, through the handler; at warning nothing comes. */
static int alloc_once(void *arg) {
  (void)arg;
  return mp_heap_alloc(100) ? 0 : 1;
}

static void kill_inside_heap(void) {
  pid_t c = cu_fork_armed("heap.alloc.journaled", 1, alloc_once, NULL, 30);
  cu_assert_killed_at(c);
  void *p = mp_heap_alloc(10); /* repairs, then logs */
  assert_non_null(p);
  assert_int_equal(mp_heap_free(p), 0);
}

static void test_log_handler_gets_heap_recovery(void **state) {
  (void)state;
  struct capture cap = {0};
  assert_int_equal(mp_log_set_handler(MP_LOG_WARNING, capture, &cap), 0);
  kill_inside_heap();
  assert_int_equal(cap.calls, 0); /* info is below warning */
  assert_int_equal(mp_log_set_handler(MP_LOG_INFO, capture, &cap), 0);
  kill_inside_heap();
  assert_int_equal(cap.calls, 1);
  assert_int_equal(cap.level, MP_LOG_INFO);
  assert_non_null(strstr(cap.text, "died inside the family heap"));
  assert_null(strchr(cap.text, '\n'));
  assert_int_equal(mp_log_to_stderr(MP_LOG_OFF), 0);
  kill_inside_heap();
  assert_int_equal(cap.calls, 1); /* off: silent */
}

/* To standard error: one whole line, "[INFO/MainProcess] ...". */
static void test_log_to_stderr_line_format(void **state) {
  (void)state;
  fflush(stderr);
  int saved = dup(2);
  char path[] = "/tmp/mp-log-XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  unlink(path);
  dup2(fd, 2);
  assert_int_equal(mp_log_to_stderr(MP_LOG_INFO), 0);
  kill_inside_heap();
  assert_int_equal(mp_log_to_stderr(MP_LOG_OFF), 0);
  dup2(saved, 2);
  close(saved);
  char buf[1024] = {0};
  ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
  close(fd);
  assert_true(n > 0);
  assert_memory_equal(buf, "[INFO/MainProcess] heap: ", 25);
  assert_int_equal(buf[n - 1], '\n');
  assert_ptr_equal(strchr(buf, '\n'), buf + n - 1); /* exactly one line */
}

/* Every message at info, kept in order. */
struct journal {
  int n;
  char text[16][300];
};

static void keep(int level, const char *message, void *arg) {
  (void)level;
  struct journal *j = arg;
  if (j->n < 16)
    snprintf(j->text[j->n++], sizeof j->text[0], "%s", message);
}

static bool journal_has(const struct journal *j, const char *a, const char *b) {
  for (int i = 0; i < j->n; i++)
    if (strstr(j->text[i], a) && (!b || strstr(j->text[i], b)))
      return true;
  return false;
}

static int exit_three(void *arg) {
  (void)arg;
  return 3;
}

static int sleep_long(void *arg) {
  (void)arg;
  sleep(30);
  return 0;
}

static int hold_and_die(void *arg) {
  mp_lock *l = arg;
  if (mp_lock_acquire(l, MP_FOREVER) != 0)
    return 1;
  raise(SIGKILL);
  return 2;
}

static int leave_block(void *arg) {
  mp_shared_memory *shm;
  if (mp_shared_memory_new((const char *)arg, 64, NULL, &shm) != 0)
    return 1;
  raise(SIGKILL); /* dies with its block still named */
  return 2;
}

/* The life of processes, a lock recovered from a dead holder, and a block a
 * dead creator left behind are each reported once, at info. */
static void test_log_reports_process_lock_and_shm_events(void **state) {
  (void)state;
  struct journal j = {0};
  assert_int_equal(mp_log_set_handler(MP_LOG_INFO, keep, &j), 0);
  mp_process *p, *q;
  assert_int_equal(mp_process_new(exit_three, NULL, &(mp_process_options){.name = "three"}, &p), 0);
  assert_int_equal(mp_process_start(p), 0);
  assert_int_equal(mp_process_join(p, 30), 0);
  assert_true(journal_has(&j, "process three (pid ", "started"));
  assert_true(journal_has(&j, "process three (pid ", "exited with code 3"));
  assert_int_equal(mp_process_new(sleep_long, NULL, &(mp_process_options){.name = "sleeper"}, &q), 0);
  assert_int_equal(mp_process_start(q), 0);
  assert_int_equal(mp_process_kill(q), 0);
  assert_int_equal(mp_process_join(q, 30), 0);
  assert_true(journal_has(&j, "process sleeper (pid ", "was killed by Killed"));
  assert_int_equal(mp_process_free(p), 0);
  assert_int_equal(mp_process_free(q), 0);

  mp_lock *l;
  assert_int_equal(mp_lock_new(&l), 0);
  pid_t c = tu_fork(hold_and_die, l, 30);
  assert_int_equal(tu_wait(c), 1000 + SIGKILL);
  assert_int_equal(mp_lock_acquire(l, 10), -EOWNERDEAD);
  assert_true(journal_has(&j, "lock: its holder died holding it", NULL));
  assert_int_equal(mp_lock_release(l), 0);
  assert_int_equal(mp_lock_free(l), 0);

  char name[64];
  snprintf(name, sizeof name, "/mp-log-test-%d", (int)getpid());
  c = tu_fork(leave_block, name, 30);
  assert_int_equal(tu_wait(c), 1000 + SIGKILL);
  mp_shared_memory *shm = NULL;
  assert_int_equal(mp_shared_memory_attach(name, NULL, &shm), -ENOENT); /* swept */
  assert_true(journal_has(&j, "shared memory: ", "left behind by process"));
  assert_int_equal(mp_log_to_stderr(MP_LOG_OFF), 0);
}

/* Under MP_LOG=info, the process that mapped the heap reports at its normal
 * exit what is still allocated. */
static void test_log_exit_report_lists_leaks(void **state) {
  (void)state;
  int fds[2];
  assert_int_equal(pipe(fds), 0);
  pid_t c = fork();
  assert_true(c >= 0);
  if (c == 0) {
    dup2(fds[1], 2);
    setenv("MP_LOG", "info", 1);
    execl("/proc/self/exe", self_argv[0], "--leak", (char *)NULL);
    _exit(127);
  }
  close(fds[1]);
  char buf[2048] = {0};
  size_t got = 0;
  ssize_t n;
  while ((n = read(fds[0], buf + got, sizeof buf - 1 - got)) > 0)
    got += (size_t)n;
  close(fds[0]);
  assert_int_equal(tu_wait(c), 0);
  assert_non_null(strstr(buf, "[INFO/MainProcess] at exit: heap: "));
  assert_non_null(strstr(buf, "[INFO/MainProcess] at exit: live objects: 1 Lock/RLock, 1 Queue,"));
}

int main(int argc, char **argv) {
  self_argv = argv;
  if (argc > 1 && strcmp(argv[1], "--print-level") == 0) {
    printf("%d\n", mp_log_get_level());
    return 0;
  }
  if (argc > 1 && strcmp(argv[1], "--leak") == 0) { /* left allocated on purpose */
    mp_lock *l;
    mp_queue *q;
    return mp_lock_new(&l) || mp_queue_new(0, NULL, &q);
  }
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_log_off_by_default_and_from_env),
      cmocka_unit_test(test_log_levels_checked),
      cmocka_unit_test(test_log_handler_gets_heap_recovery),
      cmocka_unit_test(test_log_to_stderr_line_format),
      cmocka_unit_test(test_log_exit_report_lists_leaks),
      cmocka_unit_test(test_log_reports_process_lock_and_shm_events),
  };
  return TU_RUN("log", tests);
}
