/* SPDX-License-Identifier: MIT */
#include "testutil.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>

pid_t tu_fork(int (*fn)(void *arg), void *arg, unsigned alarm_s) {
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) {
    alarm(alarm_s);
    int r = fn(arg);
    fflush(NULL);
    _exit(r);
  }
  return pid;
}

int tu_wait(pid_t pid) {
  int st;
  while (waitpid(pid, &st, 0) < 0) {
    if (errno != EINTR)
      return -1;
  }
  if (WIFEXITED(st))
    return WEXITSTATUS(st);
  if (WIFSIGNALED(st))
    return 1000 + WTERMSIG(st);
  return -1;
}

double tu_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int count_dir(const char *path) {
  DIR *d = opendir(path);
  if (!d)
    return -1;
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)))
    if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
      n++;
  closedir(d);
  return n;
}

int tu_fd_count(void) { return count_dir("/proc/self/fd") - 1; /* opendir's own */ }

int tu_shm_count(void) { return count_dir("/dev/shm"); }

static volatile sig_atomic_t signals_seen;
static void on_alarm(int sig) {
  (void)sig;
  signals_seen++;
}

void tu_signals_start(double after, double every) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_alarm; /* no SA_RESTART: interrupted syscalls see EINTR */
  sigemptyset(&sa.sa_mask);
  sigaction(SIGALRM, &sa, NULL);
  signals_seen = 0;
  struct itimerval it;
  it.it_value.tv_sec = (time_t)after;
  it.it_value.tv_usec = (suseconds_t)((after - (double)(time_t)after) * 1e6);
  if (it.it_value.tv_sec == 0 && it.it_value.tv_usec == 0)
    it.it_value.tv_usec = 1;
  it.it_interval.tv_sec = (time_t)every;
  it.it_interval.tv_usec = (suseconds_t)((every - (double)(time_t)every) * 1e6);
  setitimer(ITIMER_REAL, &it, NULL);
}

int tu_signals_stop(void) {
  struct itimerval it;
  memset(&it, 0, sizeof it);
  setitimer(ITIMER_REAL, &it, NULL);
  signal(SIGALRM, SIG_DFL);
  return (int)signals_seen;
}

void tu_sleep(double s) {
  struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
  while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
  }
}

static int fds_before, shm_before;

static int group_setup(void **state) {
  (void)state;
  fds_before = tu_fd_count();
  shm_before = tu_shm_count();
  return 0;
}

static int group_teardown(void **state) {
  (void)state;
  int fds = tu_fd_count(), shm = tu_shm_count();
  if (fds != fds_before) {
    fprintf(stderr, "leak: %d file descriptors open before the suite, %d after\n", fds_before,
            fds);
    return -1;
  }
  if (shm > shm_before) {
    fprintf(stderr, "leak: /dev/shm had %d entries before the suite, %d after\n", shm_before,
            shm);
    return -1;
  }
  return 0;
}

int tu_run_group(const char *name, const struct CMUnitTest *tests, size_t n) {
  return _cmocka_run_group_tests(name, tests, n, group_setup, group_teardown);
}
