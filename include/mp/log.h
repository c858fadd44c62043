/* SPDX-License-Identifier: MIT */
/**
 * @file mp/log.h
 * @brief libmp's logger (Python's `multiprocessing.log_to_stderr` and
 *        `get_logger`): what a person debugging a process family needs.
 *
 * Off by default, and silent then: libmp writes nothing anywhere. Turn it on
 * with the environment (`MP_LOG=debug`, `info`, `warning`, `error` or `off`,
 * read at the first libmp call that could log) or with a call:
 * mp_log_to_stderr() writes each message to standard error as one line,
 * `[LEVEL/ProcessName] message`, with a single write(2) (lines of concurrent
 * processes never interleave); mp_log_set_handler() hands each message to a
 * function instead.
 *
 * What is logged: at `info`, processes started and ended (with the exit code
 * or the signal), pool workers replaced (with how the dead one died), locks,
 * queues and the heap recovered after a process died inside them, manager
 * connections and refused keys, shared memory blocks left behind by dead
 * creators and cleaned up; at `debug`, more detail of the same events; at
 * `warning`, what is probably a mistake in the program (for example a pool
 * worker killed by SIGSEGV touching memory mapped after the pool started).
 *
 * Across fork: a child keeps its parent's setting and handler (the handler
 * runs in the child, with the child's memory). A Manager's server process and
 * pool workers are the exception: they close the descriptors they inherited,
 * so they log to standard error (which they keep) at the level in force when
 * they started.
 */
#ifndef MP_LOG_H
#define MP_LOG_H

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Levels, as Python's `logging`: a message is emitted when its level is at
 *  least the logger's. */
enum {
  MP_LOG_DEBUG = 10,   /**< every detail */
  MP_LOG_INFO = 20,    /**< the life of processes, recoveries, connections */
  MP_LOG_WARNING = 30, /**< probable mistakes in the program */
  MP_LOG_ERROR = 40,   /**< failures libmp could not repair */
  MP_LOG_OFF = 100,    /**< nothing (the default) */
};

/**
 * @brief Receives each message at or above the level it was set for.
 * @param level the message's level (`MP_LOG_DEBUG` ... `MP_LOG_ERROR`).
 * @param message the text, without the `[LEVEL/name]` prefix or a newline;
 *        valid during the call only.
 * @param arg the pointer given to mp_log_set_handler().
 * Called in the process and thread that logs, possibly while libmp holds an
 * internal lock: it must not call libmp functions that block.
 */
typedef void (*mp_log_handler)(int level, const char *message, void *arg);

/**
 * @brief Send messages at @p level and above to standard error (Python's
 *        `log_to_stderr(level)`); `MP_LOG_OFF` turns the logger off.
 * @return 0; `-EINVAL` for a level that is none of the `MP_LOG_*` values.
 * Thread safety: safe; replaces the environment's setting and any handler.
 */
MP_EXPORT int mp_log_to_stderr(int level);

/**
 * @brief Send messages at @p level and above to @p fn instead of standard
 *        error. A NULL @p fn turns the logger off.
 * @return 0; `-EINVAL` for an unknown level.
 * Thread safety: safe. A handler replaced while another thread is calling it
 * may still receive that one message.
 */
MP_EXPORT int mp_log_set_handler(int level, mp_log_handler fn, void *arg);

/**
 * @brief The logger's level (Python's `get_logger().level`).
 * @return the `MP_LOG_*` level in force, `MP_LOG_OFF` when off.
 */
MP_EXPORT int mp_log_get_level(void);

#ifdef __cplusplus
}
#endif

#endif /* MP_LOG_H */
