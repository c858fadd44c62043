/* SPDX-License-Identifier: MIT */
/*
 * Process: fork a child that runs a function; join, signal and watch it
 * through a pidfd.
 *
 * Map of this file:
 *   1. the handle and its protocol
 *   2. per-process state (identity, the registry of children) and fork hooks
 *   3. reaping and joining
 *   4. the exit handler
 *   5. public entry points
 *
 * 1. struct mp_process lives in the family heap, so every process of the
 * family can read it; only its creator acts on it.
 *   tag        written at creation and at free.
 *   state      NEW -> STARTING -> STARTED -> ENDED, written by the creator only
 *              (STARTING -> NEW again when a fork fails). ENDED is stored with
 *              release after `exitcode`, so a reader that loads ENDED with
 *              acquire sees the code, from any process.
 *   pid        0 until started; written by the creator after fork and by the
 *              child itself right after fork (the same value), so the child
 *              never sees 0 in its own handle.
 *   exitcode   written once by the creator when it reaps, before ENDED.
 *   creator    the pid of the process that called mp_process_new(); constant.
 *   pidfd      an fd number meaningful only in the creator: every call that
 *              uses it first checks that the caller is the creator (-ECHILD).
 *   daemon, target, arg, name, ident: constant after mp_process_new().
 *   next, prev, picked: the creator's registry of children (section 2); only
 *              the creator touches them, under its registry mutex.
 * Starting, step by step, and what a SIGKILL at each step leaves:
 *   creator, after NEW -> STARTING (process.start.claimed): the handle stays
 *     STARTING in the heap (pid 0, exit code never known); nothing else.
 *   creator, after fork (process.start.forked): the child runs on, reparented
 *     to a reaper. A daemon child is tied to the creator's pid (next rows), so
 *     it dies; a non-daemon child finishes its target as an orphan, as in
 *     Python. The handle stays STARTING.
 *   child, before the tie (process.child.entered): killed, it is an ended
 *     child for its creator (exit code -SIGKILL). If the *creator* dies while
 *     the child is here, the tie finds getppid() changed and kills the child.
 *   child, after the parent-death request (process.tie.requested): the
 *     request is in place; the creator's death now reaches the child.
 *   creator, after pidfd_open (process.start.pidfd) or after linking the
 *     handle as STARTED (process.start.registered): as after fork; the pid is
 *     readable by the family.
 *   creator's exit handler, after SIGTERM to its daemons
 *   (process.exit.signalled): the daemons end by SIGTERM or, if they ignore
 *     it, by the parent-death tie; the non-daemon children run on as orphans.
 *   creator's free, after unlinking the handle from the registry
 *   (process.free.unlinked): the handle stays allocated in the heap (the
 *     heap itself stays consistent: mp__object_free was not entered).
 * A creator that dies leaves its handles allocated in the heap (their pid and
 * name stay readable; their exit code never becomes known) and its children
 * are reparented by the kernel; the daemons among them are killed by the
 * parent-death tie (mp__tie_to_parent below), which outlives the thread that
 * forked them. A child that dies is reaped like any ended child.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "crash.h"
#include "internal.h"
#include "wire.h" /* mp__random_bytes */

/* ------------------------------------------------------------ 1. the handle */

enum { ST_NEW, ST_STARTING, ST_STARTED, ST_ENDED };

#define NAME_MAX_LEN 63
/* Daemons get this long after SIGTERM at the parent's exit before SIGKILL. */
#define EXIT_GRACE_S 2.0

struct mp_process {
  mp__tag tag;
  _Atomic uint32_t state;
  _Atomic int32_t pid;
  _Atomic int32_t exitcode;
  int32_t creator;
  int32_t pidfd;
  int32_t daemon;
  int32_t picked; /* chosen by the exit handler already (creator only) */
  mp_process_target target;
  void *arg;
  struct mp_process *next, *prev;
  char name[NAME_MAX_LEN + 1];
  char ident[NAME_MAX_LEN + 1]; /* "1", "1:2": the position in the family tree */
};

/* The handle of a process that libmp did not start. Not in the heap: each
 * process has its own (a plain fork's copy learns its new pid lazily). */
static struct mp_process main_proc = {
    .tag = MP__TAG_PROCESS,
    .state = ST_STARTED,
    .pidfd = -1,
    .name = "MainProcess",
};

/* ------------------------------------------------------------ 2. per process */

/* The children this process started, with the lock that guards the list and
 * every reap (so that a join, active_children() and the exit handler in
 * different threads never reap one child twice). Reset in every child. */
static struct {
  pthread_mutex_t mutex;
  struct mp_process *head;
  pid_t exit_owner; /* the process that registered exit_children() */
  pid_t exit_done;  /* the process whose exit_children() has run */
} reg = {PTHREAD_MUTEX_INITIALIZER, NULL, 0, 0};

/* The handle of this process when libmp started it, else NULL (MainProcess). */
static struct mp_process *_Atomic current_proc;
static pid_t parent_pid_value;
static _Atomic unsigned name_counter;
static char my_ident[NAME_MAX_LEN + 1];
/* The handle being started by this thread, for the child's first moments. */
static __thread struct mp_process *starting;

static void registry_reset(void) {
  pthread_mutex_init(&reg.mutex, NULL);
  reg.head = NULL;
}

/* After any fork (libmp's or the program's own), from the one fork handler of
 * sys.c: the children of the parent are not this process's children. */
void mp__process_atfork_child(void) { registry_reset(); }

/* This process's pid (sys.c's cache, the only one in libmp). MainProcess
 * learns it lazily, also in a plain fork's child. */
static pid_t self_pid(void) {
  pid_t p = mp__pid();
  /* relaxed: MainProcess's pid is this process's own constant */
  if (MP__UNLIKELY(atomic_load_explicit(&main_proc.pid, memory_order_relaxed) != p) &&
      !atomic_load(&current_proc))
    atomic_store(&main_proc.pid, p);
  return p;
}

static struct mp_process *current(void) {
  struct mp_process *c = atomic_load(&current_proc);
  return c ? c : &main_proc;
}

/* The parent, as this process knows it (Python's parent_process()): its
 * name, copied at fork, and a pidfd opened on first use (-1 until then). */
static char parent_name[NAME_MAX_LEN + 1];
static int parent_pidfd = -1;
static pthread_mutex_t parent_mutex = PTHREAD_MUTEX_INITIALIZER;

/* Exit handlers registered in this process with mp_process_atexit(): run in
 * reverse order when a libmp child's target returns, or at the normal exit
 * of a process libmp did not start. A child starts with none. */
enum { ATEXIT_MAX = 32 };
static struct {
  void (*fn)(void *);
  void *arg;
} atexit_fns[ATEXIT_MAX];
static unsigned atexit_n;
static pthread_mutex_t atexit_mutex = PTHREAD_MUTEX_INITIALIZER;
static pid_t atexit_hooked; /* the process whose exit() runs them */

static void run_atexit(void) {
  if (atexit_hooked && atexit_hooked != mp__pid())
    return; /* a plain fork of the process that registered them */
  for (;;) {
    pthread_mutex_lock(&atexit_mutex);
    if (!atexit_n) {
      pthread_mutex_unlock(&atexit_mutex);
      return;
    }
    atexit_n--;
    void (*fn)(void *) = atexit_fns[atexit_n].fn;
    void *arg = atexit_fns[atexit_n].arg;
    pthread_mutex_unlock(&atexit_mutex);
    fn(arg);
  }
}

void mp__process_after_fork_child(void) {
  struct mp_process *p = starting;
  starting = NULL;
  pid_t me = mp__pid(); /* sys.c's fork handler cleared the parent's */
  registry_reset();
  atomic_store(&name_counter, 0);
  /* The parent's parent is not ours, nor are its exit handlers. */
  memcpy(parent_name, current()->name, sizeof parent_name);
  pthread_mutex_init(&parent_mutex, NULL);
  if (parent_pidfd >= 0)
    close(parent_pidfd);
  parent_pidfd = -1;
  pthread_mutex_init(&atexit_mutex, NULL);
  atexit_n = 0;
  atexit_hooked = 0;
  if (p) {
    parent_pid_value = p->creator;
    memcpy(my_ident, p->ident, sizeof my_ident);
    atomic_store(&p->pid, me);
    atomic_store(&current_proc, p);
  } else {
    /* Forked by another libmp area without a handle of its own: keep the
     * identity, record the parent. */
    parent_pid_value = getppid();
  }
}

static void registry_link(struct mp_process *p) {
  p->prev = NULL;
  p->next = reg.head;
  if (reg.head)
    reg.head->prev = p;
  reg.head = p;
}

static void registry_unlink(struct mp_process *p) {
  if (p->prev)
    p->prev->next = p->next;
  else if (reg.head == p)
    reg.head = p->next;
  if (p->next)
    p->next->prev = p->prev;
  p->next = p->prev = NULL;
}

/* ------------------------------------------------------------ 3. reaping */

static int send_signal(struct mp_process *p, int sig) {
  if (syscall(SYS_pidfd_send_signal, p->pidfd, sig, NULL, 0) < 0 && errno != ESRCH)
    return -errno;
  return 0;
}

/* With reg.mutex held, on a started handle: reap the child if it has ended.
 * Returns 1 when ended (exit code recorded), 0 while it runs. */
static int reap_locked(struct mp_process *p) {
  if (atomic_load_explicit(&p->state, memory_order_relaxed) == ST_ENDED)
    return 1;
  siginfo_t si;
  si.si_pid = 0;
  int code;
  if (waitid(P_PIDFD, (id_t)p->pidfd, &si, WEXITED | WNOHANG) < 0) {
    if (errno != ECHILD)
      return -errno;
    /* The status was collected elsewhere (SIGCHLD ignored, or the program's
     * own waitpid(-1)): the child is gone and its code unknowable. */
    code = 0;
  } else if (si.si_pid == 0) {
    return 0;
  } else {
    code = si.si_code == CLD_EXITED ? si.si_status : -si.si_status;
  }
  atomic_store_explicit(&p->exitcode, code, memory_order_relaxed); /* published by state */
  atomic_store_explicit(&p->state, ST_ENDED, memory_order_release);
  if (code < 0)
    MP__LOG(MP_LOG_INFO, "process %s (pid %d) was killed by %s", p->name, (int)p->pid,
            strsignal(-code));
  else
    MP__LOG(MP_LOG_INFO, "process %s (pid %d) exited with code %d", p->name, (int)p->pid, code);
  return 1;
}

static int reap(struct mp_process *p) {
  pthread_mutex_lock(&reg.mutex);
  int r = reap_locked(p);
  pthread_mutex_unlock(&reg.mutex);
  return r;
}

/* Join a started handle of this process within the deadline. */
static int join_until(struct mp_process *p, const mp__deadline *d) {
  for (;;) {
    if (atomic_load_explicit(&p->state, memory_order_acquire) == ST_ENDED)
      return 0;
    if (d->forever) {
      /* Sleep until it is waitable without reaping, so that the reap itself
       * happens under the registry lock. */
      siginfo_t si;
      if (waitid(P_PIDFD, (id_t)p->pidfd, &si, WEXITED | WNOWAIT) < 0 && errno != EINTR &&
          errno != ECHILD)
        return -errno;
      int r = reap(p);
      if (r != 0)
        return r < 0 ? r : 0;
      continue; /* a signal woke us */
    }
    int r = reap(p);
    if (r != 0)
      return r < 0 ? r : 0;
    if (d->nowait || mp__deadline_passed(d))
      return -ETIMEDOUT;
    struct pollfd pfd = {.fd = p->pidfd, .events = POLLIN};
    if (poll(&pfd, 1, mp__deadline_poll_ms(d)) < 0 && errno != EINTR)
      return -errno;
  }
}

/* ------------------------------------------------------------ 4. at exit */

/* The next started child of this process with the given daemon flag that the
 * exit handler has not taken yet, or NULL. */
static struct mp_process *exit_pick(int daemon) {
  pthread_mutex_lock(&reg.mutex);
  struct mp_process *p = reg.head;
  for (; p; p = p->next) {
    if (!p->picked && p->daemon == daemon &&
        atomic_load_explicit(&p->state, memory_order_relaxed) == ST_STARTED) {
      p->picked = 1;
      break;
    }
  }
  pthread_mutex_unlock(&reg.mutex);
  return p;
}

/* Registered with atexit() at a process's first start, and called by a libmp
 * child after its target returns. Terminates and joins the daemon children
 * (SIGKILL for one that outlives SIGTERM by EXIT_GRACE_S), then joins the
 * others. Does nothing in any process but the one that registered it: a child
 * inherits the registration and may call exit(). */
static void exit_children(void) {
  pid_t me = self_pid();
  pthread_mutex_lock(&reg.mutex);
  if (reg.exit_owner != me || reg.exit_done == me) {
    pthread_mutex_unlock(&reg.mutex);
    return;
  }
  reg.exit_done = me;
  for (struct mp_process *p = reg.head; p; p = p->next)
    if (p->daemon && atomic_load_explicit(&p->state, memory_order_relaxed) == ST_STARTED &&
        reap_locked(p) == 0)
      send_signal(p, SIGTERM);
  pthread_mutex_unlock(&reg.mutex);
  MP__CRASH(PROCESS_EXIT_SIGNALLED);

  mp__deadline grace, forever;
  mp__deadline_init(&grace, EXIT_GRACE_S);
  mp__deadline_init(&forever, MP_FOREVER);
  struct mp_process *p;
  while ((p = exit_pick(1))) {
    if (join_until(p, &grace) == -ETIMEDOUT) {
      send_signal(p, SIGKILL);
      join_until(p, &forever);
    }
  }
  while ((p = exit_pick(0)))
    join_until(p, &forever);
  mp__shm_at_exit(); /* the children are gone: unlink the blocks they left */
}

static int exit_register(pid_t me) {
  int r = 0;
  pthread_mutex_lock(&reg.mutex);
  if (reg.exit_owner != me) {
    if (atexit(exit_children) != 0)
      r = -ENOMEM;
    else
      reg.exit_owner = me;
  }
  pthread_mutex_unlock(&reg.mutex);
  return r;
}

/* ------------------------------------------------------------ 5. public */

static void copy_truncated(char *dst, size_t size, const char *src) {
  size_t len = strnlen(src, size - 1);
  memcpy(dst, src, len);
  dst[len] = 0;
}

MP_EXPORT int mp_process_new(mp_process_target target, void *arg, const mp_process_options *opts,
                             mp_process **ret) {
  if (!target || !ret)
    return -EINVAL;
  const char *name = opts ? opts->name : NULL;
  if (name && strnlen(name, NAME_MAX_LEN + 1) > NAME_MAX_LEN)
    return -EINVAL;
  struct mp_process *p = mp__object_new(sizeof *p, MP__TAG_PROCESS);
  if (!p)
    return -ENOMEM;
  p->creator = self_pid();
  p->pidfd = -1;
  p->daemon = (opts && opts->daemon) || current()->daemon;
  p->target = target;
  p->arg = arg;
  /* A family deeper than a name can tell keeps a truncated identity. */
  char buf[2 * sizeof p->ident];
  unsigned n = atomic_fetch_add(&name_counter, 1) + 1;
  snprintf(buf, sizeof buf, my_ident[0] ? "%s:%u" : "%s%u", my_ident, n);
  copy_truncated(p->ident, sizeof p->ident, buf);
  if (!name) {
    snprintf(buf, sizeof buf, "Process-%s", p->ident);
    name = buf;
  }
  copy_truncated(p->name, sizeof p->name, name);
  *ret = p;
  return 0;
}

/* The parent-death idiom (internal.h: mp__tie_to_parent).
 *
 * PR_SET_PDEATHSIG is per *thread*: the kernel sends the signal when the
 * thread that forked the child exits, also while the rest of its process
 * lives on. It then reparents the child to another thread of the same process
 * (getppid() still gives the same pid) and keeps the request, so the signal
 * comes again when that thread exits, and once more when the last one does,
 * at which point the child is reparented to a reaper (init or a subreaper)
 * and getppid() changes. So the child asks for a catchable signal,
 * MP__PDEATH_SIG, whose handler looks at getppid() and raises the real
 * `sig` only when the parent *process* is gone.
 *
 * The highest real-time signal: glibc keeps the lowest ones for itself, real
 * time signals are queued (none is lost when two threads end in a row) and
 * their default action ends the process, so a child that exec()s (keeping the
 * request but not the handler) still dies with its parent. include/mp/process.h
 * tells users not to take it over in such children.
 *
 * Races: the parent process may die before the request is made (then nobody
 * will ever send it): checked with getppid() right after prctl(). The
 * forking thread may exit before the request is made: the child is then
 * already the child of another thread, which the request follows; getppid()
 * still names the parent, so nothing is raised. */
#define MP__PDEATH_SIG SIGRTMAX

/* Written by the child before its handler is installed, read by the handler
 * (lock-free atomics, as a handler may read). relaxed: the same thread
 * writes them before sigaction() installs the handler that reads them. */
static _Atomic pid_t tie_parent;
static _Atomic int tie_sig;

static void on_parent_death(int signo) {
  (void)signo;
  int saved = errno;
  /* getppid(), kill() and getpid() are async-signal-safe */
  if (getppid() != atomic_load_explicit(&tie_parent, memory_order_relaxed))
    kill(getpid(), atomic_load_explicit(&tie_sig, memory_order_relaxed));
  errno = saved;
}

int mp__tie_to_parent(pid_t parent, int sig) {
  if (parent <= 0 || sig <= 0 || sig == MP__PDEATH_SIG)
    return -EINVAL;
  atomic_store_explicit(&tie_parent, parent, memory_order_relaxed);
  atomic_store_explicit(&tie_sig, sig, memory_order_relaxed);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_parent_death;
  sa.sa_flags = SA_RESTART; /* the program's own calls need not see EINTR */
  sigemptyset(&sa.sa_mask);
  if (sigaction(MP__PDEATH_SIG, &sa, NULL) < 0)
    return -errno;
  /* The child inherited the forking thread's mask; a blocked signal would
   * wait until unblocked. */
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, MP__PDEATH_SIG);
  pthread_sigmask(SIG_UNBLOCK, &set, NULL);
  if (prctl(PR_SET_PDEATHSIG, MP__PDEATH_SIG) < 0)
    return -errno;
  MP__CRASH(PROCESS_TIE_REQUESTED);
  if (getppid() != parent) /* the parent died before the request took hold */
    kill(getpid(), sig);
  return 0;
}

/* The child's side of mp_process_start(); never returns. */
static _Noreturn void child_main(struct mp_process *p, pid_t parent) {
  mp__process_after_fork_child();
  MP__CRASH(PROCESS_CHILD_ENTERED);
  if (p->daemon)
    mp__tie_to_parent(parent, SIGKILL);
  int r = p->target(p->arg);
  run_atexit(); /* handlers this child registered, as Python since 3.9 */
  exit_children();
  mp__shm_at_exit(); /* a normal end: unlink this process's tracked blocks */
  fflush(NULL);
  _exit(r & 0xff);
}

MP_EXPORT int mp_process_start(mp_process *p) {
  if (!mp__tag_ok(p, MP__TAG_PROCESS))
    return -EINVAL;
  pid_t me = self_pid();
  if (p->creator != me)
    return -ECHILD;
  if (current()->daemon)
    return -EPERM;
  uint32_t expected = ST_NEW;
  if (!atomic_compare_exchange_strong(&p->state, &expected, ST_STARTING))
    return -EALREADY;
  MP__CRASH(PROCESS_START_CLAIMED);
  int r = mp__heap_ensure();
  if (r == 0)
    r = exit_register(me);
  if (r < 0)
    goto undo;

  fflush(NULL); /* else buffered output would be written by both processes */
  starting = p;
  pid_t pid = fork();
  if (pid == 0)
    child_main(p, me);
  starting = NULL;
  if (pid < 0) {
    r = -errno;
    goto undo;
  }
  MP__CRASH(PROCESS_START_FORKED);
  int fd = (int)syscall(SYS_pidfd_open, pid, 0); /* close-on-exec by default */
  if (fd < 0) {
    r = -errno;
    kill(pid, SIGKILL);
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
    }
    goto undo;
  }
  p->pidfd = fd;
  atomic_store(&p->pid, pid);
  MP__CRASH(PROCESS_START_PIDFD);
  pthread_mutex_lock(&reg.mutex);
  registry_link(p);
  atomic_store(&p->state, ST_STARTED);
  pthread_mutex_unlock(&reg.mutex);
  MP__CRASH(PROCESS_START_REGISTERED);
  MP__LOG(MP_LOG_INFO, "process %s (pid %d) started%s", p->name, (int)pid,
          p->daemon ? " (daemon)" : "");
  return 0;

undo:
  atomic_store(&p->state, ST_NEW);
  return r;
}

/* Common checks of the calls that need the pidfd: a handle of this process
 * that has been started. */
static int check_owned_started(struct mp_process *p) {
  if (!mp__tag_ok(p, MP__TAG_PROCESS))
    return -EINVAL;
  if (p->creator != self_pid())
    return -ECHILD;
  if (atomic_load(&p->state) < ST_STARTED)
    return -EINVAL;
  return 0;
}

MP_EXPORT int mp_process_join(mp_process *p, double timeout) {
  if (!mp__tag_ok(p, MP__TAG_PROCESS))
    return -EINVAL;
  if (p == current())
    return -EDEADLK;
  int r = check_owned_started(p);
  if (r < 0)
    return r;
  mp__deadline d;
  r = mp__deadline_init(&d, timeout);
  return r < 0 ? r : join_until(p, &d);
}

MP_EXPORT int mp_process_is_alive(mp_process *p) {
  if (!mp__tag_ok(p, MP__TAG_PROCESS))
    return -EINVAL;
  if (p == current())
    return 1;
  if (p->creator != self_pid())
    return -ECHILD;
  if (atomic_load(&p->state) < ST_STARTED)
    return 0;
  int r = reap(p);
  return r < 0 ? r : !r;
}

static int signal_process(struct mp_process *p, int sig) {
  int r = check_owned_started(p);
  if (r < 0)
    return r;
  if (atomic_load(&p->state) == ST_ENDED)
    return 0;
  /* Safe even if another thread reaps meanwhile: the pidfd still names the
   * (now gone) process, never a new one with the same pid. */
  return send_signal(p, sig);
}

MP_EXPORT int mp_process_terminate(mp_process *p) { return signal_process(p, SIGTERM); }
MP_EXPORT int mp_process_interrupt(mp_process *p) { return signal_process(p, SIGINT); }
MP_EXPORT int mp_process_kill(mp_process *p) { return signal_process(p, SIGKILL); }

MP_EXPORT int mp_process_exitcode(mp_process *p, int *code) {
  if (!mp__tag_ok(p, MP__TAG_PROCESS) || !code)
    return -EINVAL;
  if (atomic_load_explicit(&p->state, memory_order_acquire) != ST_ENDED)
    return 0;
  *code = atomic_load_explicit(&p->exitcode, memory_order_relaxed); /* ordered by state */
  return 1;
}

MP_EXPORT int mp_process_pid(mp_process *p) {
  if (!mp__tag_ok(p, MP__TAG_PROCESS))
    return -EINVAL;
  return atomic_load(&p->pid);
}

MP_EXPORT int mp_process_name(mp_process *p, const char **ret) {
  if (!mp__tag_ok(p, MP__TAG_PROCESS) || !ret)
    return -EINVAL;
  *ret = p->name;
  return 0;
}

MP_EXPORT int mp_process_daemon(mp_process *p) {
  if (!mp__tag_ok(p, MP__TAG_PROCESS))
    return -EINVAL;
  return p->daemon != 0;
}

MP_EXPORT int mp_process_sentinel(mp_process *p) {
  int r = check_owned_started(p);
  return r < 0 ? r : p->pidfd;
}

MP_EXPORT int mp_process_free(mp_process *p) {
  if (!p)
    return 0;
  if (!mp__tag_ok(p, MP__TAG_PROCESS))
    return -EINVAL;
  if (p->creator != self_pid())
    return -ECHILD; /* also MainProcess, which no one created */
  pthread_mutex_lock(&reg.mutex);
  uint32_t st = atomic_load(&p->state);
  if (st == ST_STARTING) {
    pthread_mutex_unlock(&reg.mutex);
    return -EBUSY;
  }
  if (st != ST_NEW) {
    int r = reap_locked(p);
    if (r <= 0) {
      pthread_mutex_unlock(&reg.mutex);
      return r < 0 ? r : -EBUSY;
    }
    registry_unlink(p);
  }
  pthread_mutex_unlock(&reg.mutex);
  MP__CRASH(PROCESS_FREE_UNLINKED);
  if (p->pidfd >= 0)
    close(p->pidfd);
  mp__object_free(p);
  return 0;
}

MP_EXPORT int mp_process_current(mp_process **ret) {
  if (!ret)
    return -EINVAL;
  self_pid(); /* makes sure MainProcess knows its pid */
  *ret = current();
  return 0;
}

MP_EXPORT int mp_process_parent_pid(void) { return parent_pid_value; }

/* The parent's pidfd, opened once; -EINVAL without a parent, -ESRCH when it
 * has already ended. A pidfd opened while getppid() still names the parent
 * refers to the parent itself (had it ended, this process would have been
 * reparented first), never to a process that reused its pid. */
static int parent_fd(void) {
  if (!parent_pid_value)
    return -EINVAL;
  pthread_mutex_lock(&parent_mutex);
  int fd = parent_pidfd;
  if (fd < 0) {
    fd = (int)syscall(SYS_pidfd_open, parent_pid_value, 0);
    if (fd >= 0 && getppid() != parent_pid_value) {
      close(fd);
      fd = -ESRCH;
    } else if (fd < 0) {
      fd = errno == ESRCH ? -ESRCH : -errno;
    } else {
      parent_pidfd = fd;
    }
  }
  pthread_mutex_unlock(&parent_mutex);
  return fd;
}

MP_EXPORT int mp_process_parent_name(const char **ret) {
  if (!ret || !parent_pid_value)
    return -EINVAL;
  *ret = parent_name;
  return 0;
}

MP_EXPORT int mp_process_parent_join(double timeout) {
  mp__deadline d;
  int r = mp__deadline_init(&d, timeout);
  if (r < 0)
    return r;
  int fd = parent_fd();
  if (fd == -ESRCH)
    return 0; /* ended already */
  if (fd < 0)
    return fd;
  return mp__wait_fd(fd, POLLIN, &d);
}

MP_EXPORT int mp_process_parent_is_alive(void) {
  int r = mp_process_parent_join(MP_NOWAIT);
  return r == 0 ? 0 : r == -ETIMEDOUT ? 1 : r;
}

MP_EXPORT int mp_process_parent_sentinel(void) {
  int fd = parent_fd();
  return fd == -ESRCH ? -ESRCH : fd;
}

MP_EXPORT int mp_process_atexit(void (*fn)(void *arg), void *arg) {
  if (!fn)
    return -EINVAL;
  pthread_mutex_lock(&atexit_mutex);
  if (atexit_n == ATEXIT_MAX) {
    pthread_mutex_unlock(&atexit_mutex);
    return -ENOSPC;
  }
  if (!parent_pid_value && !atexit_hooked) {
    /* A process libmp did not start: its normal exit runs them. */
    atexit_hooked = mp__pid();
    if (atexit(run_atexit) != 0) {
      atexit_hooked = 0;
      pthread_mutex_unlock(&atexit_mutex);
      return -ENOMEM;
    }
  }
  atexit_fns[atexit_n].fn = fn;
  atexit_fns[atexit_n].arg = arg;
  atexit_n++;
  pthread_mutex_unlock(&atexit_mutex);
  return 0;
}

MP_EXPORT int mp_process_active_children(mp_process **out, size_t cap) {
  if (!out && cap)
    return -EINVAL;
  size_t n = 0;
  pthread_mutex_lock(&reg.mutex);
  for (struct mp_process *p = reg.head; p; p = p->next) {
    if (atomic_load_explicit(&p->state, memory_order_relaxed) != ST_STARTED || reap_locked(p) != 0)
      continue;
    if (n < cap)
      out[n] = p;
    n++;
  }
  pthread_mutex_unlock(&reg.mutex);
  return (int)n;
}

MP_EXPORT int mp_cpu_count(void) {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) {
    int n = CPU_COUNT(&set);
    return n > 0 ? n : 1;
  }
  /* More CPUs than a cpu_set_t holds: grow the mask until the kernel's fits. */
  for (int cpus = 2 * CPU_SETSIZE; errno == EINVAL && cpus <= (1 << 22); cpus *= 2) {
    cpu_set_t *s = CPU_ALLOC(cpus);
    if (!s)
      break;
    size_t size = CPU_ALLOC_SIZE(cpus);
    if (sched_getaffinity(0, size, s) == 0) {
      int n = CPU_COUNT_S(size, s);
      CPU_FREE(s);
      return n > 0 ? n : 1;
    }
    int e = errno;
    CPU_FREE(s);
    errno = e;
  }
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? (int)n : 1;
}

/* ------------------------------------------------ the authentication key */

/* This process's key (Python's current_process().authkey). Private memory:
 * a fork copies it, which is how a child inherits it. It is made before the
 * first fork (the atfork handler below) or at first use, whichever comes
 * first, so that a child never makes a key of its own where its parent had
 * none yet. authkey_mu serialises making, setting and copying; the pointer
 * mp_process_authkey() hands out is documented as not safe against a
 * concurrent set. */
static unsigned char authkey[MP_PROCESS_AUTHKEY_MAX];
static size_t authkey_len;
static bool authkey_made;
static pthread_mutex_t authkey_mu = PTHREAD_MUTEX_INITIALIZER;

#define AUTHKEY_DEFAULT_LEN 32 /* as Python's os.urandom(32) */

/* Make the key if there is none yet; authkey_mu held. */
static int authkey_make_locked(void) {
  if (authkey_made)
    return 0;
  int r = mp__random_bytes(authkey, AUTHKEY_DEFAULT_LEN);
  if (r < 0)
    return r;
  authkey_len = AUTHKEY_DEFAULT_LEN;
  authkey_made = true;
  return 0;
}

/* Before any fork (libmp's or the program's own): the child must inherit the
 * parent's key, so make it now. The lock is held across the fork and
 * released on both sides, so the child never inherits it held by a thread
 * that does not exist there. */
static void authkey_prepare_fork(void) {
  pthread_mutex_lock(&authkey_mu);
  authkey_make_locked(); /* failing, the child makes its own on first use */
}

static void authkey_after_fork(void) { pthread_mutex_unlock(&authkey_mu); }

__attribute__((constructor)) static void authkey_hook(void) {
  pthread_atfork(authkey_prepare_fork, authkey_after_fork, authkey_after_fork);
}

int mp__process_authkey_copy(void *buf, size_t cap, size_t *len) {
  pthread_mutex_lock(&authkey_mu);
  int r = authkey_make_locked();
  if (r == 0 && authkey_len > cap)
    r = -EMSGSIZE;
  if (r == 0) {
    memcpy(buf, authkey, authkey_len);
    *len = authkey_len;
  }
  pthread_mutex_unlock(&authkey_mu);
  return r;
}

MP_EXPORT int mp_process_authkey(const void **key, size_t *len) {
  if (!key || !len)
    return -EINVAL;
  pthread_mutex_lock(&authkey_mu);
  int r = authkey_make_locked();
  if (r == 0) {
    *key = authkey;
    *len = authkey_len;
  }
  pthread_mutex_unlock(&authkey_mu);
  return r;
}

MP_EXPORT int mp_process_set_authkey(const void *key, size_t len) {
  if ((!key && len) || len > MP_PROCESS_AUTHKEY_MAX)
    return -EINVAL;
  pthread_mutex_lock(&authkey_mu);
  if (len)
    memcpy(authkey, key, len);
  authkey_len = len;
  authkey_made = true;
  pthread_mutex_unlock(&authkey_mu);
  return 0;
}
