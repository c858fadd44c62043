/* SPDX-License-Identifier: MIT */
/**
 * @file mp/connection.h
 * @brief Pipe and Connection: byte messages over a Unix socket pair (or a
 *        stream such as TCP), as Python's `multiprocessing.Pipe`, and
 *        `wait` over many objects.
 *
 * mp_pipe_new() makes two connected ends. Each end sends and receives whole
 * byte messages of any length, the empty message included; messages never
 * merge or split, and each is delivered whole or not at all. A message that is
 * too large for the caller's buffer stays queued (`-EMSGSIZE`).
 *
 * Where a connection lives. A handle is a small structure in the calling
 * process's private memory around one file descriptor (a `SOCK_SEQPACKET`
 * Unix socket, `O_CLOEXEC`). A child forked after the handle was made inherits
 * both, so the handle works there too; it is valid in the process that made it
 * and in its children forked after, until that process closes it.
 * mp_connection_close() closes the calling process's copy only, exactly as
 * Python's processes close the ends they do not use. To hand a connection to a
 * process that already runs, send it through another connection
 * (mp_connection_send_connection()); the receiver gets its own handle.
 *
 * End of file. When every copy of the other end is closed — by
 * mp_connection_close() in every process that held one, or by those processes
 * ending, SIGKILL included — receiving gives `-EPIPE` once the messages already
 * sent are read, and sending gives `-EPIPE`. No call ever raises SIGPIPE.
 *
 * Several senders. Processes may send through copies of one end at once:
 * each message of at most #MP_CONNECTION_ATOMIC_MAX bytes is delivered whole.
 * A larger message goes as several records and must not overlap another send
 * on the same end (take turns, e.g. under an mp_lock). If it does overlap, or
 * its sender dies or times out in the middle of it, the receiver drops that
 * message and reads on: a torn message is never delivered. A receiver that
 * meets a dropped message's first part waits for the next message.
 *
 * Receivers. One thread or process at a time should receive from an end (as
 * in Python); one thread may send while another receives. If several do
 * receive at once, each message of at most #MP_CONNECTION_ATOMIC_MAX bytes
 * still reaches exactly one of them (a receiver that lost a race for one
 * message keeps the next one it read in its handle and returns it next); a
 * larger message may be dropped, never torn. A large message begun by a
 * receive that timed out, or a message kept that way, is held in that
 * handle: do not fork or send the connection while one is held. Records on
 * the socket that libmp did not make are discarded. A process killed while
 * receiving takes with it only what it had already read.
 *
 * Stream connections. mp_connection_from_fd() also adopts a connected
 * stream socket (TCP, or a Unix `SOCK_STREAM` socket), and Listener/Client
 * (mp/manager.h) give one for a TCP address. libmp then frames messages in
 * the stream itself, with the same semantics as above: boundaries, empty
 * messages, `-EMSGSIZE` keeping the message, `-EPIPE` at end of file, one
 * deadline per call, no SIGPIPE; a send that times out delivers nothing, even
 * when part of it went out (the rest of that part is sent as filler marked
 * dropped before the next message). The differences: descriptors and
 * connections cannot travel over a stream (`-EOPNOTSUPP`); one process at a
 * time may send and one receive, whatever the message size, and neither may
 * fork or send the connection while a send or a receive is half done; the
 * receiver reads ahead into its handle, so bytes already read count as
 * readable for mp_connection_poll() and mp_connection_wait() but not on the
 * descriptor; bytes that are not libmp's framing give `-EPROTO` and leave the
 * connection unusable.
 *
 * Talking to Python. A stream connection may speak Python's own wire
 * instead of libmp's, so that the peer is a Python program using
 * `multiprocessing.connection` (its `Connection.send_bytes()` and
 * `recv_bytes()`; pickled objects are the Python side's business: send the
 * bytes of `pickle.dumps()`, or a format both sides parse). Such a connection
 * comes from mp_listener_new_python() and mp_client_connect_python() (which
 * also run Python's authentication handshake), or from
 * mp_connection_from_fd() with #MP_CONNECTION_PYTHON on a connected stream
 * socket. The framing is Python's: a 4-byte big-endian length and the bytes;
 * above 0x7fffffff bytes, the length -1 and an 8-byte big-endian length
 * (Python 3.8 and later read it; earlier versions only take messages below
 * 2 GiB). The semantics stay libmp's (any size, -EMSGSIZE keeps the message,
 * a timed-out receive keeps what arrived), with one difference: Python's
 * framing cannot mark a message as abandoned, so a send that times out after
 * part of its message went out leaves the connection unable to send: every
 * later send gives `-EPROTO` (receiving still works). Bytes whose length word
 * is negative (but -1) give `-EPROTO`. Descriptors cannot cross
 * (`-EOPNOTSUPP`). Such a connection sent with
 * mp_connection_send_connection() arrives speaking Python's wire too. The
 * default, libmp's own wire, is unchanged.
 *
 * Signals never end a call early: an interrupted wait resumes against the
 * same deadline. Errors common to every call: `-EINVAL` for a NULL handle or
 * a bad argument.
 */
#ifndef MP_CONNECTION_H
#define MP_CONNECTION_H

#include <stddef.h>
#include <sys/types.h>

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

/** One end of a pipe (Python's `multiprocessing.connection.Connection`). */
typedef struct mp_connection mp_connection;

/** Messages of at most this many bytes are sent as one record: whole even
 *  when several processes send through copies of one end at once. */
#define MP_CONNECTION_ATOMIC_MAX 65520

/** For mp_connection_send_bytes(): send from the offset to the end of the
 *  buffer (Python's `size=None`). */
#define MP_CONNECTION_TO_END ((size_t)-1)

/** mp_connection_from_fd() flag: the connection may receive. */
#define MP_CONNECTION_READABLE 1
/** mp_connection_from_fd() flag: the connection may send. */
#define MP_CONNECTION_WRITABLE 2
/** mp_connection_from_fd() flag: speak Python's
 *  `multiprocessing.connection` wire on a stream socket instead of libmp's
 *  (see "Talking to Python" in the file comment). */
#define MP_CONNECTION_PYTHON 4

/**
 * @brief Make a pipe: two connected ends (Python's `Pipe(duplex)`).
 * @param duplex non-zero: both ends send and receive. Zero: @p conn1 only
 *               receives and @p conn2 only sends; the wrong direction gives
 *               `-EBADF`.
 * @param[out] conn1 the first end, written only on success.
 * @param[out] conn2 the second end, written only on success.
 * @return 0; `-EINVAL` for NULL outputs; `-EMFILE`/`-ENFILE` when no file
 *         descriptor is left; `-ENOMEM`.
 *
 * Both ends are `O_CLOEXEC`. Thread safety: safe from any thread.
 */
MP_EXPORT int mp_pipe_new(int duplex, mp_connection **conn1, mp_connection **conn2);

/**
 * @brief Adopt a connected socket as a connection (Python's
 *        `Connection(handle, readable, writable)`).
 *
 * Used to rebuild a connection whose descriptor arrived some other way (for
 * example through mp_connection_recv_fd(), or inherited across exec). The
 * peer must speak libmp's framing, i.e. be a libmp connection. A Unix
 * `SOCK_SEQPACKET` socket gives a connection like a pipe's end; a connected
 * stream socket (TCP over IPv4 or IPv6, or Unix `SOCK_STREAM`) a stream
 * connection (see the file comment), whose peer must be a stream connection
 * too.
 *
 * @param fd the socket; on success the connection owns it (closed by
 *           mp_connection_close()) and it is made close-on-exec. On failure
 *           the caller still owns it.
 * @param flags #MP_CONNECTION_READABLE, #MP_CONNECTION_WRITABLE, both, or 0
 *              for both; or'ed with #MP_CONNECTION_PYTHON for Python's wire
 *              (a stream socket only, no handshake is run: the caller runs
 *              Python's or none, as Python's `Connection(fd)` does).
 * @param[out] ret written only on success.
 * @return 0; `-EBADF` for a closed descriptor; `-ENOTSOCK` when @p fd is not
 *         a socket; `-EPROTOTYPE` when it is another kind of socket (neither
 *         Unix `SOCK_SEQPACKET` nor `SOCK_STREAM` of Unix, IPv4 or IPv6);
 *         `-ENOTCONN` for a stream socket that is not connected (a listening
 *         one included); `-EPROTOTYPE` also for #MP_CONNECTION_PYTHON on a
 *         `SOCK_SEQPACKET` socket; `-EINVAL` for unknown flags or NULL @p ret;
 *         `-ENOMEM`.
 */
MP_EXPORT int mp_connection_from_fd(int fd, int flags, mp_connection **ret);

/**
 * @brief Close the calling process's copy of the connection and free the
 *        handle (Python's `close()`).
 *
 * Copies held by other processes (inherited by fork, or sent) stay open: the
 * peer sees end of file only when every copy is closed. The handle must not be
 * used after this call in this process.
 *
 * @return 0; 0 for NULL; `-EINVAL` for a pointer that is not a live
 *         connection handle, such as one already closed: a closed handle's
 *         memory is never given back to malloc but kept dead (and reused for
 *         a new handle only after dozens of later closes), so a second close
 *         is detected without reading freed memory.
 * Thread safety: no other thread may be using the handle.
 */
MP_EXPORT int mp_connection_close(mp_connection *conn);

/**
 * @brief Send one message (Python's `send_bytes(buf)`).
 *
 * Blocks while the socket's buffer is full (about 200 KiB not yet received),
 * up to @p timeout seconds. A message larger than #MP_CONNECTION_ATOMIC_MAX
 * goes as several records; there is no size limit.
 *
 * @param buf the bytes; may be NULL when @p len is 0 (an empty message).
 * @return 0 once the whole message is queued; `-ETIMEDOUT` when it could not
 *         all be queued in time: the message is not delivered (when its first
 *         records were already out, the receiver drops them; on a stream
 *         connection the rest of the begun part is sent, marked dropped,
 *         before the next message); `-EPIPE` when
 *         every copy of the other end is closed (no SIGPIPE); `-EPROTO` on a
 *         connection speaking Python's wire after a send that timed out
 *         with part of its message out (#MP_CONNECTION_PYTHON); `-EBADF` on a
 *         receive-only end; `-EINVAL` for NULL @p conn, NULL @p buf with a
 *         non-zero @p len, a length above `SSIZE_MAX` or a NaN timeout;
 *         `-ENOBUFS`/`-ENOMEM` when the kernel is out of memory.
 * Thread safety: one sender at a time per handle for messages above
 * #MP_CONNECTION_ATOMIC_MAX; see the file comment.
 */
MP_EXPORT int mp_connection_send(mp_connection *conn, const void *buf, size_t len, double timeout);

/**
 * @brief Send part of a buffer as one message (Python's
 *        `send_bytes(buf, offset, size)`).
 * @param buflen the length of @p buf.
 * @param offset where the message starts in @p buf; at most @p buflen.
 * @param size its length, or #MP_CONNECTION_TO_END for the rest of @p buf;
 *             @p offset + @p size must not exceed @p buflen.
 * @return as mp_connection_send(); `-EINVAL` when @p offset or @p size falls
 *         outside the buffer (nothing is sent).
 */
MP_EXPORT int mp_connection_send_bytes(mp_connection *conn, const void *buf, size_t buflen,
                                       size_t offset, size_t size, double timeout);

/**
 * @brief Receive one message into the caller's buffer (Python's
 *        `recv_bytes_into()`), waiting up to @p timeout seconds for it.
 *
 * A large message whose end has not arrived when the timeout expires stays
 * begun in the handle (in the calling process's memory), and the next receive
 * on the handle continues it: nothing is lost to a timeout.
 *
 * @param buf room for @p cap bytes; may be NULL when @p cap is 0.
 * @return the message's length (0 for an empty message); `-EMSGSIZE` when it
 *         is longer than @p cap: nothing is consumed, and
 *         mp_connection_peek_size() tells the length needed; `-ETIMEDOUT`
 *         when no message came in time; `-EPIPE` at end of file (every copy of
 *         the other end closed and every message read); `-EBADMSG` when the
 *         next item is a file descriptor (nothing is consumed: take it with
 *         mp_connection_recv_fd() or mp_connection_recv_connection());
 *         `-EPROTO` on a stream connection whose bytes are not libmp's
 *         framing (the connection is unusable); `-EBADF` on a send-only end;
 *         `-EINVAL`. On an error the contents of @p buf are unspecified.
 */
MP_EXPORT ssize_t mp_connection_recv(mp_connection *conn, void *buf, size_t cap, double timeout);

/**
 * @brief Receive one message into a new buffer (Python's `recv_bytes()`).
 * @param[out] ret a `malloc`ed buffer holding the message (never NULL, also
 *             for an empty message), to be released with `free()`; written
 *             only on success.
 * @return the message's length; `-ENOMEM` when a buffer of the length the
 *         message declares cannot be allocated: the message is skipped
 *         (consumed and dropped, with whatever of it arrives later), so that
 *         a message of absurd length cannot block the connection and the next
 *         receive gets the next message; otherwise as mp_connection_recv().
 *         (mp_connection_recv() never skips: its `-EMSGSIZE` keeps the
 *         message, and this call is the way past one that is too large.)
 */
MP_EXPORT ssize_t mp_connection_recv_alloc(mp_connection *conn, void **ret, double timeout);

/**
 * @brief Whether something can be received without blocking (Python's
 *        `poll(timeout)`), waiting up to @p timeout seconds for it. Never
 *        consumes a message.
 * @return 1 when a message (or the next part of a large one), a file
 *         descriptor or end of file is waiting; 0 when nothing came in time;
 *         `-EBADF` on a send-only end; `-EINVAL`.
 */
MP_EXPORT int mp_connection_poll(mp_connection *conn, double timeout);

/**
 * @brief The length of the next message, without consuming it; waits up to
 *        @p timeout seconds for one, like mp_connection_poll().
 * @return the length; `-ETIMEDOUT`, `-EPIPE`, `-EBADMSG`, `-EPROTO`,
 *         `-EBADF`, `-EINVAL` as mp_connection_recv().
 */
MP_EXPORT ssize_t mp_connection_peek_size(mp_connection *conn, double timeout);

/**
 * @brief The connection's file descriptor (Python's `fileno()`), for
 *        poll/epoll: readable when mp_connection_poll() would return 1.
 *
 * The connection owns it: do not close it, and do not read or write it
 * directly. A stream connection, or one that several receivers share, may
 * hold bytes already read in its handle, which the descriptor does not show:
 * ask mp_connection_poll() (with timeout 0) before sleeping on it.
 * @return the descriptor; `-EINVAL` for NULL.
 */
MP_EXPORT int mp_connection_fileno(mp_connection *conn);

/** @brief Whether the connection may receive (Python's `readable`).
 *  @return 1, 0, or `-EINVAL`. */
MP_EXPORT int mp_connection_readable(mp_connection *conn);

/** @brief Whether the connection may send (Python's `writable`).
 *  @return 1, 0, or `-EINVAL`. */
MP_EXPORT int mp_connection_writable(mp_connection *conn);

/**
 * @brief Send a copy of a file descriptor to the process at the other end
 *        (for example an accepted socket).
 *
 * Kept in order with messages. The caller's @p fd stays open and its own.
 * @return 0; `-EBADF` for an invalid @p fd or on a receive-only end;
 *         `-EOPNOTSUPP` on a stream connection (descriptors cannot cross
 *         it; nothing is sent); `-ETIMEDOUT`, `-EPIPE`, `-EINVAL` as
 *         mp_connection_send().
 */
MP_EXPORT int mp_connection_send_fd(mp_connection *conn, int fd, double timeout);

/**
 * @brief Receive a file descriptor sent by mp_connection_send_fd() or
 *        mp_connection_send_connection().
 * @param[out] ret the new descriptor, close-on-exec and owned by the caller;
 *             written only on success.
 * @return 0; `-EBADMSG` when the next item is a message (nothing is consumed);
 *         `-EMFILE` when the process has no descriptor left (the descriptor is
 *         lost); `-EOPNOTSUPP` on a stream connection (nothing is consumed);
 *         otherwise as mp_connection_recv().
 */
MP_EXPORT int mp_connection_recv_fd(mp_connection *conn, int *ret, double timeout);

/**
 * @brief Send a connection to the process at the other end, which rebuilds it
 *        with mp_connection_recv_connection() (Python's pickling of a
 *        Connection). The sender's handle stays open and usable. @p what
 *        may be a stream connection (bytes its handle has read ahead stay
 *        there); @p conn may not (`-EOPNOTSUPP`).
 * @return as mp_connection_send_fd(); `-EINVAL` for a NULL @p what.
 */
MP_EXPORT int mp_connection_send_connection(mp_connection *conn, mp_connection *what,
                                            double timeout);

/**
 * @brief Receive a connection sent by mp_connection_send_connection(), with
 *        the directions it had.
 * @param[out] ret a new handle of the calling process, closed with
 *             mp_connection_close(); written only on success.
 * @return 0; `-EBADMSG` when the next item is a message or a plain file
 *         descriptor (nothing is consumed); `-ENOMEM`; otherwise as
 *         mp_connection_recv_fd().
 */
MP_EXPORT int mp_connection_recv_connection(mp_connection *conn, mp_connection **ret,
                                            double timeout);

/** What an mp_wait_item watches. */
enum mp_wait_kind {
  /** `obj` is an mp_connection: ready when mp_connection_poll() gives 1
   *  (for a stream connection, also when its handle holds bytes read ahead). */
  MP_WAIT_CONNECTION = 1,
  /** `obj` is an mp_process started by the caller: ready when it has ended
   *  (its sentinel, as Python's `Process.sentinel`). */
  MP_WAIT_PROCESS = 2,
  /** `obj` is an mp_queue: ready when a get would not block (a message is
   *  there, or the queue is closed and drained). */
  MP_WAIT_QUEUE = 3,
  /** `fd` is a file descriptor: ready when readable, hung up or in error. */
  MP_WAIT_FD = 4,
};

/** One object for mp_connection_wait(). */
typedef struct mp_wait_item {
  /** An #mp_wait_kind. */
  int kind;
  /** The connection, process or queue; ignored for #MP_WAIT_FD. */
  void *obj;
  /** The descriptor for #MP_WAIT_FD; ignored otherwise. */
  int fd;
  /** Output: 1 when ready, 0 when not; written only when
   *  mp_connection_wait() succeeds. */
  int ready;
} mp_wait_item;

/**
 * @brief Wait until at least one of the items is ready (Python's
 *        `multiprocessing.connection.wait(object_list, timeout)`).
 *
 * Blocks asleep, without polling, up to @p timeout seconds. Queues have no
 * descriptor: when queues are mixed with descriptors, a helper thread sleeps
 * on the queues for the duration of the call. Never consumes anything.
 *
 * @param items the objects; each item's `ready` is set on success.
 * @param n how many (0 is allowed: it only waits out the timeout).
 * @return the number of ready items (>= 1), each marked; `-ETIMEDOUT` when
 *         none became ready in time (Python's empty list); `-EINVAL` for NULL
 *         @p items with a non-zero @p n, an unknown kind, a NULL or bad object,
 *         or a forever wait on no items; `-EBADF` for a closed descriptor or a
 *         send-only connection; `-ECHILD` for a process the caller did not
 *         start; `-EAGAIN`/`-ENOMEM` when the helper thread cannot start;
 *         `-ENOSYS` when several queues, or queues and descriptors, are
 *         waited on at once under a kernel older than Linux 5.16 (no
 *         `futex_waitv`).
 * Thread safety: safe from any thread; the items are only read (but `ready`).
 */
MP_EXPORT int mp_connection_wait(mp_wait_item *items, size_t n, double timeout);

#ifdef __cplusplus
}
#endif

#endif /* MP_CONNECTION_H */
