/* SPDX-License-Identifier: MIT */
/**
 * @file mp/process.h
 * @brief Process: run a function in a forked child, as Python's `Process`.
 *
 * mp_process_start() flushes every stdio stream, makes sure the family heap is
 * mapped, and forks. The child runs `target(arg)`, flushes stdio and `_exit`s
 * with the target's return value (its low 8 bits, as the kernel keeps them):
 * the parent's `atexit` handlers never run in the child. The exit code is
 * `-signum` when the child was killed by a signal.
 *
 * At the parent's normal exit (return from main or exit()), libmp terminates
 * and joins its daemon children (SIGTERM, then SIGKILL for a daemon still
 * running 2 s later), then joins its non-daemon children, as Python does. A
 * libmp child does the same for its own children when its target returns.
 * Daemon children also die when the parent process dies any other way,
 * SIGKILL included, and not before: the thread that started them may end
 * while its process goes on. The same holds for pool workers and for the
 * server of mp_manager_start().
 *
 * To learn of the parent's death, such a child (a daemon Process, a pool
 * worker, a Manager server) asks the kernel for the highest real-time signal,
 * `SIGRTMAX`, whenever a thread of its parent that it was tied to ends
 * (`PR_SET_PDEATHSIG`), and libmp handles that signal in the child. The code
 * running in such a child must not install its own handler for `SIGRTMAX`,
 * block it, or use it for anything else (sigwait, signalfd); after an exec()
 * its default action ends the program, when any thread of the old parent
 * ends. A slow call interrupted by it is restarted (`SA_RESTART`).
 *
 * A process handle lives in the family heap, so any process of the family may
 * read its pid, name and exit code; only the process that started it may join,
 * signal or poll it (others get `-ECHILD`), as in Python.
 *
 * The exit code comes from reaping the child. A program that reaps children
 * itself (`waitpid(-1, ...)`, or SIGCHLD set to SIG_IGN) may take the status
 * first: the process then counts as ended with exit code 0.
 *
 * Thread safety: distinct handles may be used from distinct threads; one handle
 * must not be joined or freed by two threads at once. Starting processes from
 * several threads at once is safe.
 */
#ifndef MP_PROCESS_H
#define MP_PROCESS_H

#include <stddef.h>
#include <sys/types.h>

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

/** A process handle (Python's `multiprocessing.Process`). */
typedef struct mp_process mp_process;

/** The function a process runs; its return value becomes the exit code. */
typedef int (*mp_process_target)(void *arg);

/** Options for mp_process_new(). Zeroed fields (or NULL) mean the default. */
typedef struct mp_process_options {
  /** NULL for "Process-N" (N counts the processes this process created);
   *  in a libmp child the count is prefixed with the child's own position:
   *  the children of "Process-2" are "Process-2:1", "Process-2:2"... At most
   *  63 bytes. */
  const char *name;
  /** Non-zero: terminated at the parent's exit and killed at its death. Zero:
   *  as the creating process (a daemon's children would be daemons, but a
   *  daemon may not start children, as in Python). */
  int daemon;
} mp_process_options;

/**
 * @brief Make a process handle that will run @p target(@p arg); nothing is
 *        forked until mp_process_start().
 * @param arg passed as is; the child sees the parent's memory as it was at
 *            start, so any pointer valid then is valid in the child.
 * @return 0; `-EINVAL` for NULL @p target or @p ret, or a name longer than 63
 *         bytes; `-ENOMEM`.
 */
MP_EXPORT int mp_process_new(mp_process_target target, void *arg, const mp_process_options *opts,
                             mp_process **ret);

/**
 * @brief Fork and run the target in the child.
 *
 * The child returns from `target` into `_exit(ret & 0xff)` after joining its
 * own children and flushing stdio. mp_process_current() in the child gives
 * @p proc; mp_process_parent_pid() the caller's pid.
 * @return 0; `-EALREADY` when started before (a process runs once);
 *         `-ECHILD` when called from another process than the creator;
 *         `-EPERM` when the calling process is a daemon (as in Python);
 *         `-EAGAIN`/`-ENOMEM`/`-EMFILE` when the kernel refuses a fork or the
 *         process's pidfd; `-EINVAL` for NULL.
 */
MP_EXPORT int mp_process_start(mp_process *proc);

/**
 * @brief Wait for the process to end, at most @p timeout seconds, and reap it.
 * @return 0 when it has ended (its exit code is then known); `-ETIMEDOUT`
 *         while it still runs; `-EINVAL` when not started or NULL; `-ECHILD`
 *         from another process than the one that started it; `-EDEADLK` for a
 *         process joining itself.
 */
MP_EXPORT int mp_process_join(mp_process *proc, double timeout);

/**
 * @brief Whether the process has started and not yet ended.
 * @return 1 or 0 (0 before start); 1 for the calling process's own handle;
 *         `-ECHILD` from another process than its parent; `-EINVAL`. Never
 *         blocks; reaps the child if it has ended.
 */
MP_EXPORT int mp_process_is_alive(mp_process *proc);

/**
 * @brief Send SIGTERM (Python's `terminate()`); nothing when it has ended.
 * @return 0; `-EINVAL` when not started; `-ECHILD` from another process.
 */
MP_EXPORT int mp_process_terminate(mp_process *proc);

/** @brief Send SIGKILL (Python's `kill()`); as mp_process_terminate(). */
MP_EXPORT int mp_process_kill(mp_process *proc);

/** @brief Send SIGINT (Python 3.14's `interrupt()`): by default the process
 *         ends with exit code `-SIGINT`, unless it handles the signal; as
 *         mp_process_terminate(). */
MP_EXPORT int mp_process_interrupt(mp_process *proc);

/**
 * @brief The exit code, once the process has ended and been reaped.
 * @param[out] code the target's return value (0..255), or `-signum` when a
 *             signal killed it; written only when 1 is returned.
 * @return 1 when ended (code written); 0 when not started or still running
 *         (Python's `None`); `-EINVAL` for NULL. Readable from any process of
 *         the family once the parent has reaped the child.
 */
MP_EXPORT int mp_process_exitcode(mp_process *proc, int *code);

/** @brief The pid. @return it (> 0), 0 before start, or `-EINVAL`. */
MP_EXPORT int mp_process_pid(mp_process *proc);

/**
 * @brief The process's name.
 * @param[out] ret points into the handle; valid until mp_process_free().
 * @return 0; `-EINVAL` for NULL.
 */
MP_EXPORT int mp_process_name(mp_process *proc, const char **ret);

/** @brief Whether the process is a daemon. @return 1, 0, or `-EINVAL`. */
MP_EXPORT int mp_process_daemon(mp_process *proc);

/**
 * @brief A file descriptor that becomes readable when the process ends (a
 *        pidfd), for poll/epoll; owned by the handle, do not close it.
 * @return the fd; `-EINVAL` when not started; `-ECHILD` from another process.
 */
MP_EXPORT int mp_process_sentinel(mp_process *proc);

/**
 * @brief Release the handle (Python's `close()`).
 * @return 0; 0 for NULL; `-EBUSY` while the process runs (nothing freed);
 *         `-ECHILD` from another process than the creator.
 * A child that ended but was never joined is reaped here.
 */
MP_EXPORT int mp_process_free(mp_process *proc);

/**
 * @brief The calling process's own handle (Python's `current_process()`).
 * @param[out] ret "MainProcess" in a process libmp did not start; in a child,
 *             the handle its parent started. Do not free it.
 * @return 0; `-EINVAL` for NULL.
 */
MP_EXPORT int mp_process_current(mp_process **ret);

/**
 * @brief The pid of the process that started this one (Python's
 *        `parent_process().pid`).
 * @return the parent's pid; 0 in a process libmp did not start (Python's
 *         `None`).
 */
MP_EXPORT int mp_process_parent_pid(void);

/**
 * @brief The name of the process that started this one (Python's
 *        `parent_process().name`), as it was when this one was started.
 * @param[out] ret a static string, valid for the life of the process.
 * @return 0; `-EINVAL` for NULL, or in a process libmp did not start.
 */
MP_EXPORT int mp_process_parent_name(const char **ret);

/**
 * @brief Wait until the process that started this one ends (Python's
 *        `parent_process().join(timeout)`): orphan detection.
 * @return 0 once the parent has ended (at once if it already has);
 *         `-ETIMEDOUT` while it lives; `-EINVAL` in a process libmp did not
 *         start, or for a NaN timeout. Never confused by a new process that
 *         reuses the parent's pid (a pidfd underneath).
 * Thread safety: safe. Across fork: a child asks about its own parent.
 */
MP_EXPORT int mp_process_parent_join(double timeout);

/**
 * @brief Whether the process that started this one still runs (Python's
 *        `parent_process().is_alive()`).
 * @return 1 or 0; `-EINVAL` in a process libmp did not start.
 */
MP_EXPORT int mp_process_parent_is_alive(void);

/**
 * @brief A descriptor that becomes readable when the parent ends (Python's
 *        `parent_process().sentinel`), for poll/epoll; owned by libmp.
 * @return the fd; `-ESRCH` when the parent has already ended; `-EINVAL` in a
 *         process libmp did not start; `-EMFILE`.
 */
MP_EXPORT int mp_process_parent_sentinel(void);

/**
 * @brief Register @p fn(@p arg) to run when this process ends normally:
 *        in a process libmp started, when its target function returns (before
 *        stdio is flushed); in a process libmp did not start, at its normal
 *        exit(). Handlers run in reverse order of registration, each once.
 *
 * Python runs the `atexit` handlers a child registered (since 3.9); C's own
 * atexit() list is inherited from the parent across fork, so libmp's
 * children end with _exit() and never run it: this is the child-local list.
 * A child starts with an empty one; handlers do not run when the process is
 * killed, or leaves with _exit().
 * @return 0; `-EINVAL` for NULL @p fn; `-ENOSPC` beyond 32 handlers;
 *         `-ENOMEM`.
 * Thread safety: safe.
 */
MP_EXPORT int mp_process_atexit(void (*fn)(void *arg), void *arg);

/**
 * @brief The children this process started that are still alive (Python's
 *        `active_children()`); reaps those that have ended.
 * @param out room for @p cap handles, or NULL with @p cap 0 to count only.
 * @return the number of live children (may exceed @p cap; only @p cap are
 *         written); `-EINVAL` for NULL @p out with a non-zero @p cap.
 */
MP_EXPORT int mp_process_active_children(mp_process **out, size_t cap);

/** The longest authentication key mp_process_set_authkey() takes, in bytes
 *  (the same bound as the keys of Listener, Client and Manager). */
#define MP_PROCESS_AUTHKEY_MAX 1024

/**
 * @brief This process's authentication key (Python's
 *        `current_process().authkey`).
 *
 * The first process of a program gets 32 random bytes (from the kernel's
 * getrandom(), as libsodium's randombytes_buf() takes them on Linux), made
 * on first use; a child inherits the key its parent has when it forks it:
 * mp_process_start(), a pool's workers, the server of mp_manager_start(), and
 * a plain fork() too (libmp makes the key before any fork, from a
 * pthread_atfork() handler). So every process of a family shares one key
 * unless one of them sets its own.
 *
 * Which calls use it, as in Python 3: mp_manager_new() takes a copy when
 * #mp_manager_options.authkey is NULL (and no_auth is not set), for
 * starting, serving and connecting alike (Python's `BaseManager(authkey=None)`).
 * mp_listener_new() and mp_client_connect() do not: a NULL key there means
 * no authentication, as Python's `Listener(authkey=None)` and
 * `Client(authkey=None)`; pass this key to them to use it.
 *
 * @param[out] key the key's bytes, in this process's private memory, valid
 *             until the next mp_process_set_authkey(); written only on
 *             success.
 * @param[out] len its length (0 for an empty key); written only on success.
 * @return 0; `-EINVAL` for a NULL output; `-errno` of getrandom() when the
 *         kernel gives no random bytes (then no key is made, and a later
 *         call tries again).
 * Thread safety: safe, but not at the same time as
 * mp_process_set_authkey(), which rewrites the bytes returned here.
 */
MP_EXPORT int mp_process_authkey(const void **key, size_t *len);

/**
 * @brief Set this process's authentication key (Python's
 *        `current_process().authkey = key`).
 *
 * Copies the bytes. Children forked from now on inherit the new key; those
 * already running keep theirs; managers already made keep their copy.
 * @param key the bytes; may be NULL when @p len is 0 (an empty key, which is
 *            a key: Python's `b''`).
 * @param len 0..#MP_PROCESS_AUTHKEY_MAX.
 * @return 0; `-EINVAL` for NULL @p key with a non-zero @p len or a length
 *         above #MP_PROCESS_AUTHKEY_MAX (the key is unchanged).
 * Thread safety: see mp_process_authkey().
 */
MP_EXPORT int mp_process_set_authkey(const void *key, size_t len);

/**
 * @brief CPUs this process may run on (its affinity mask), at least 1.
 * @return the count.
 */
MP_EXPORT int mp_cpu_count(void);

#ifdef __cplusplus
}
#endif

#endif /* MP_PROCESS_H */
