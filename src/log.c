/* SPDX-License-Identifier: MIT */
/*
 * The logger (mp/log.h). Off unless MP_LOG or a call turns it on; the check
 * on every path that may log is one relaxed load and a compare.
 *
 * Where messages go is an immutable `struct sink` published through one
 * atomic pointer: a logging thread reads it once and uses that copy, so a
 * concurrent change never tears a handler from its argument. Replaced sinks
 * are kept (a thread may still be using one); they are few and small.
 */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "internal.h"

struct sink {
  mp_log_handler fn; /* NULL: standard error */
  void *arg;
  struct sink *older; /* the list of kept sinks, see above */
};

_Atomic int mp__log_level = -1; /* -1: MP_LOG not read yet */
static _Atomic(struct sink *) sink;
static struct sink stderr_sink;
static struct sink *kept; /* every sink ever made, newest first (set_mutex) */
static pthread_mutex_t set_mutex = PTHREAD_MUTEX_INITIALIZER;

static bool level_ok(int level) {
  return level == MP_LOG_DEBUG || level == MP_LOG_INFO || level == MP_LOG_WARNING ||
         level == MP_LOG_ERROR || level == MP_LOG_OFF;
}

static int level_of_env(void) {
  const char *e = getenv("MP_LOG");
  if (!e || !*e)
    return MP_LOG_OFF;
  static const struct {
    const char *name;
    int level;
  } names[] = {{"debug", MP_LOG_DEBUG},     {"info", MP_LOG_INFO}, {"warning", MP_LOG_WARNING},
               {"warn", MP_LOG_WARNING},    {"error", MP_LOG_ERROR}, {"off", MP_LOG_OFF},
               {"", MP_LOG_OFF}};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    if (strcasecmp(e, names[i].name) == 0)
      return names[i].level;
  return MP_LOG_OFF; /* an unknown word: stay silent rather than guess */
}

int mp__log_init(void) {
  int want = level_of_env();
  int expected = -1;
  /* Only the first reader of the environment sets it; a call that came
   * first wins over the environment. */
  atomic_compare_exchange_strong(&mp__log_level, &expected, want);
  return atomic_load(&mp__log_level);
}

static int set(int level, mp_log_handler fn, void *arg, bool to_stderr) {
  if (!level_ok(level))
    return -EINVAL;
  pthread_mutex_lock(&set_mutex);
  struct sink *s = &stderr_sink;
  if (!to_stderr && fn) {
    s = malloc(sizeof *s);
    if (!s) {
      pthread_mutex_unlock(&set_mutex);
      return -ENOMEM;
    }
    s->fn = fn;
    s->arg = arg;
    s->older = kept;
    kept = s;
  } else if (!to_stderr) {
    level = MP_LOG_OFF;
  }
  /* release: a logger that reads the new level also reads a complete sink
   * (pairs with the acquire load in mp__log) */
  atomic_store_explicit(&sink, s, memory_order_release);
  atomic_store_explicit(&mp__log_level, level, memory_order_release);
  pthread_mutex_unlock(&set_mutex);
  return 0;
}

MP_EXPORT int mp_log_to_stderr(int level) { return set(level, NULL, NULL, true); }

MP_EXPORT int mp_log_set_handler(int level, mp_log_handler fn, void *arg) {
  return set(level, fn, arg, false);
}

void mp__log_route_to_stderr(void) {
  /* a forked server: one thread, nothing to race with */
  atomic_store_explicit(&sink, &stderr_sink, memory_order_release);
}

MP_EXPORT int mp_log_get_level(void) {
  int l = atomic_load_explicit(&mp__log_level, memory_order_acquire);
  return l < 0 ? mp__log_init() : l;
}

static const char *level_name(int level) {
  return level >= MP_LOG_ERROR     ? "ERROR"
         : level >= MP_LOG_WARNING ? "WARNING"
         : level >= MP_LOG_INFO    ? "INFO"
                                   : "DEBUG";
}

void mp__log(int level, const char *fmt, ...) {
  if (!mp__log_enabled(level))
    return;
  int saved = errno;
  /* acquire: pairs with the release store in set() */
  struct sink *s = atomic_load_explicit(&sink, memory_order_acquire);
  char line[640];
  mp_process *self = NULL;
  const char *name = NULL;
  if (mp_process_current(&self) < 0 || mp_process_name(self, &name) < 0)
    name = "?";
  int head = snprintf(line, sizeof line, "[%s/%s] ", level_name(level), name);
  if (head < 0 || (size_t)head >= sizeof line)
    head = 0;
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(line + head, sizeof line - (size_t)head - 1, fmt, ap);
  va_end(ap);
  if (n < 0)
    n = 0;
  size_t len = (size_t)head + (size_t)n;
  if (len > sizeof line - 2)
    len = sizeof line - 2; /* cut: one line still */
  if (s && s->fn) {
    line[len] = '\0';
    s->fn(level, line + head, s->arg);
  } else {
    line[len] = '\n';
    ssize_t w = write(STDERR_FILENO, line, len + 1);
    (void)w; /* nowhere to report a failed log line */
  }
  errno = saved;
}
