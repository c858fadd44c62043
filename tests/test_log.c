/* SPDX-License-Identifier: MIT */
/*
 * The logger: off and silent by default, MP_LOG and the calls turn it on,
 * messages reach a handler or standard error as single whole lines, and a
 * recovery after a kill is reported.
 */
#include "crashutil.h"

#include <fcntl.h>
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
  };
  return TU_RUN("log", tests);
}
