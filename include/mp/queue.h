/* SPDX-License-Identifier: MIT */
/**
 * @file mp/queue.h
 * @brief Queue, SimpleQueue, JoinableQueue, LIFO and priority queues.
 *
 * A queue carries byte messages of any length (empty ones included) between
 * any threads of any processes of the family, many producers and many
 * consumers at once. It lives in the family heap (see mp/heap.h): its handle
 * is a plain pointer that works in every process of the family, also one
 * created after a fork, and also when the handle itself is sent through
 * another queue or a pipe (send the pointer's bytes).
 *
 * Orders (Python's queue module): FIFO (the default: `Queue`,
 * `SimpleQueue`, `JoinableQueue`), LIFO (`LifoQueue`) and priority
 * (`PriorityQueue`: lowest priority first, first in first out among equal
 * priorities).
 *
 * A FIFO queue is a ring of bytes in the shared heap, with no feeder thread:
 * put copies the message into the ring and get copies it out, and neither
 * enters the kernel while nobody sleeps. A message larger than a quarter of
 * the ring, up to larger than the whole ring, is copied into a block of the
 * family heap instead, and only a small record of it enters the ring: whole
 * messages are in flight, one copy in and one out, without waiting for a
 * consumer. That record is padded to 1/16 of its message (at most a quarter
 * of the ring), so the ring still bounds the bytes in flight: a full ring
 * holds at most about 16 times its size in such messages. When the heap has
 * no room for the copy, the message is streamed through the ring in chunks
 * while a consumer drains them. Boundaries are kept. Waiters spin for a few
 * microseconds and then sleep in the kernel (futexes): a blocked get or put
 * uses no CPU. LIFO and priority queues keep each message in a heap block of
 * its own.
 *
 * Zero-copy: a FIFO queue also carries family-heap blocks by reference
 * (mp_queue_put_block(), mp_queue_get_block()): only the block's address
 * travels, so a message of any size costs what a small one does, and the
 * block's ownership passes with it.
 *
 * Messages keep their boundaries and, in a FIFO queue, each producer's order.
 *
 * Crash semantics: a producer or consumer killed at any point, SIGKILL
 * included, leaves the queue usable by every other process. No torn or
 * duplicated message is ever delivered; a message whose put returned 0 is
 * delivered exactly once, unless a consumer died after taking it but before
 * its get returned. A message whose producer dies mid-way (streamed, or
 * copied into the heap) is discarded whole, and its heap copy freed. Processes blocked in the queue
 * notice a dead peer within about 0.1 s. Tasks a dead consumer never marked done keep a
 * JoinableQueue's join() waiting (as in Python). A process killed inside a put or get of a LIFO or
 * priority queue may leave one heap block allocated (that message's, or the queue's outgrown
 * array), never freed twice.
 *
 * Timeouts are `double` seconds: `MP_FOREVER` blocks, `MP_NOWAIT` (0) tries
 * once (Python's `put_nowait`/`get_nowait`). A wait that ends unsatisfied
 * returns `-ETIMEDOUT` (Python's `Full` and `Empty`). Signals neither end nor
 * stretch a wait.
 *
 * Thread safety: every function is safe from any thread of any process of the
 * family, except mp_queue_free(), which must be the queue's last use.
 */
#ifndef MP_QUEUE_H
#define MP_QUEUE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

/** A process-shared queue (Python's `multiprocessing.Queue` and friends). */
typedef struct mp_queue mp_queue;

/** The order in which a queue hands messages out. */
typedef enum mp_queue_order {
  MP_QUEUE_FIFO = 0,     /**< first in, first out (`Queue`) */
  MP_QUEUE_LIFO = 1,     /**< last in, first out (`LifoQueue`) */
  MP_QUEUE_PRIORITY = 2, /**< lowest priority first, FIFO among equals (`PriorityQueue`) */
} mp_queue_order;

/** The ring size of a FIFO queue when the options leave it 0: 256 KiB. */
#define MP_QUEUE_DEFAULT_RING_SIZE ((size_t)256 * 1024)

/** Options for mp_queue_new(). Zeroed fields (or NULL) mean the defaults. */
typedef struct mp_queue_options {
  /** FIFO only: bytes of the ring that holds the messages; 0 for
   *  `MP_QUEUE_DEFAULT_RING_SIZE`. Rounded up to a power of two, at least
   *  1 KiB and at most 1 GiB. Each message takes its length rounded up to 8
   *  plus 8 bytes of the ring; one larger than a quarter of the ring, which
   *  travels in a heap block, takes 24 bytes or 1/16 of its length (at most
   *  a quarter of the ring), rounded up to 8, plus 8. Ignored by LIFO and priority queues, whose
   *  messages each live in a heap block of their own. */
  size_t ring_size;
  /** An `mp_queue_order`; 0 is FIFO. */
  int order;
  /** Non-zero: a JoinableQueue, whose mp_queue_task_done() and
   *  mp_queue_join() work. */
  int joinable;
} mp_queue_options;

/**
 * @brief Create a queue in the family heap.
 *
 * @param maxsize the most messages the queue holds; 0 for no count limit. A
 *        FIFO queue is also bounded by its ring: a put waits for room in the
 *        ring (a message larger than a quarter of the ring needs room only
 *        for its padded record, see mp_queue_options.ring_size; streamed when
 *        the heap is full, it needs only a consumer draining it).
 * @param opts NULL for the defaults: a FIFO queue, not joinable, with the
 *        default ring.
 * @param[out] ret the new queue, written only on success.
 * @return 0; `-EINVAL` for NULL @p ret, an unknown order or a ring size above
 *         1 GiB; `-ENOMEM` when the family heap cannot hold the queue.
 * Across fork: the queue is shared by the parent and every child.
 */
MP_EXPORT int mp_queue_new(size_t maxsize, const mp_queue_options *opts, mp_queue **ret);

/**
 * @brief Create a SimpleQueue: an unbounded FIFO queue with the default ring.
 *
 * Python's `SimpleQueue` (get, put, empty, close); every queue function works
 * on it. Same as `mp_queue_new(0, NULL, ret)`.
 * @return as mp_queue_new().
 */
MP_EXPORT int mp_simple_queue_new(mp_queue **ret);

/**
 * @brief Create a JoinableQueue: a FIFO queue whose consumers call
 *        mp_queue_task_done() and whose mp_queue_join() waits for them.
 * @return as mp_queue_new().
 */
MP_EXPORT int mp_joinable_queue_new(size_t maxsize, mp_queue **ret);

/**
 * @brief Create a LIFO queue (Python's `queue.LifoQueue`, shared by processes).
 * @return as mp_queue_new().
 */
MP_EXPORT int mp_lifo_queue_new(size_t maxsize, mp_queue **ret);

/**
 * @brief Create a priority queue (Python's `queue.PriorityQueue`, shared by
 *        processes): mp_queue_put_priority() sets each message's priority,
 *        get returns the lowest first, FIFO among equal priorities.
 * @return as mp_queue_new().
 */
MP_EXPORT int mp_priority_queue_new(size_t maxsize, mp_queue **ret);

/**
 * @brief Put a copy of the message into the queue (Python's `put`).
 *
 * Waits at most @p timeout seconds for room: while the queue holds @p maxsize
 * messages, or its ring lacks space. A FIFO message larger than a quarter of
 * the ring is copied into a family-heap block, and the call returns once its
 * record (1/16 of its length, see mp_queue_options.ring_size) is in the
 * ring: no consumer needs to be there. When the heap has no room for the
 * copy, the message is streamed instead: the call returns once a consumer
 * has drained all but the last chunk and the last is in the ring; if the
 * timeout passes or the queue is closed mid-way, the part already sent is
 * discarded by the consumers and the message counts as not put, and with
 * `MP_NOWAIT` it is put only if it fits in the ring's free space at once. On
 * a priority queue the priority is 0.
 *
 * @param msg the bytes; may be NULL when @p len is 0 (an empty message is a
 *        message).
 * @return 0 when the whole message is in the queue; `-ETIMEDOUT` when there was
 *         no room in time (Python's `Full`; at once with `MP_NOWAIT`);
 *         `-EPIPE` when the queue is closed; `-EINVAL` for a NULL or freed
 *         queue, NULL @p msg with a non-zero length or a NaN timeout;
 *         `-EMSGSIZE` for a length above `SSIZE_MAX`; `-ENOMEM` when a LIFO or
 *         priority queue cannot get a heap block for the message.
 * Thread and process safety: safe. Order: messages one thread puts are got in
 * the order it put them (FIFO queues).
 */
MP_EXPORT int mp_queue_put(mp_queue *q, const void *msg, size_t len, double timeout);

/**
 * @brief Put a message with a priority into a priority queue.
 *
 * As mp_queue_put(); mp_queue_get() returns the message with the lowest
 * priority first, and among equal priorities the one put first.
 * @return as mp_queue_put(); `-EINVAL` as well when @p q is not a priority
 *         queue.
 */
MP_EXPORT int mp_queue_put_priority(mp_queue *q, int64_t priority, const void *msg, size_t len,
                                    double timeout);

/**
 * @brief Take the next message into a caller's buffer (Python's `get`).
 *
 * Waits at most @p timeout seconds for a message. A get that has begun to
 * receive a streamed message finishes receiving it, however long its producer
 * takes (the producer gives up within its own timeout, and a dead producer is
 * noticed), then returns it, or goes on waiting for the next message within
 * @p timeout if the producer gave up.
 *
 * @param buf where the message is copied; may be NULL when @p cap is 0.
 * @param cap bytes available at @p buf.
 * @return the message's length (0 for an empty message); `-EMSGSIZE` when the
 *         message is longer than @p cap: it stays first in the queue, whole
 *         (mp_queue_peek_size() gives its length; mp_queue_get_alloc() takes
 *         messages of any length); `-ETIMEDOUT` when no message came in time
 *         (Python's `Empty`; at once with `MP_NOWAIT`); `-EPIPE` when the queue
 *         is closed and no message is left; `-EINVAL` for a NULL or freed
 *         queue, NULL @p buf with a non-zero @p cap, or a NaN timeout;
 *         `-EIO` when the queue's shared memory was found overwritten (only a
 *         stray write into the family heap can cause it). On any failure the
 *         contents of @p buf are unspecified.
 * Thread and process safety: safe.
 */
MP_EXPORT ssize_t mp_queue_get(mp_queue *q, void *buf, size_t cap, double timeout);

/**
 * @brief Take the next message into a freshly allocated buffer.
 *
 * As mp_queue_get(), for messages of any length.
 * @param[out] msg the message, written only on success: a private copy
 *        allocated with the C library's `malloc()` (never NULL, also for an
 *        empty message); release it with `free()`.
 * @param[out] len its length, written only on success.
 * @return 0; `-ENOMEM` when the copy cannot be allocated (the message stays in
 *         the queue); `-ETIMEDOUT`, `-EPIPE` as mp_queue_get(); `-EINVAL` for a
 *         NULL or freed queue, NULL @p msg or @p len, or a NaN timeout.
 */
MP_EXPORT int mp_queue_get_alloc(mp_queue *q, void **msg, size_t *len, double timeout);

/**
 * @brief Put a family-heap block into a FIFO queue by reference: zero-copy.
 *
 * Only the block's address and length enter the ring (a 24-byte record, not
 * padded as a copied message's is), so
 * a put costs the same for 8 bytes as for 1 GiB. The call passes ownership:
 * once it returns 0 the block belongs to the queue, then to the consumer that
 * takes it; the caller must neither touch nor free it. On any failure it is
 * still the caller's. Consumers take it with mp_queue_get_block() (the same
 * block, no copy), or with mp_queue_get() / mp_queue_get_alloc() (a copy; the
 * queue frees the block). mp_queue_free() frees the blocks still queued.
 *
 * Crash safety: a producer killed inside this call before the put took effect
 * has its block freed by the next producer (or whoever repairs the queue);
 * after it took effect, the message is delivered once. A consumer killed after
 * taking the message but before its get returned has the block freed by the
 * next consumer. No block is delivered twice or freed twice. A block is leaked
 * only by a process that dies while it owns the block outside the queue
 * (before calling put, or after get_block returned), as with any heap block.
 *
 * Waits for room, counts against @p maxsize, orders and closes as
 * mp_queue_put().
 * @param block a block from mp_heap_alloc() (or mp_heap_calloc() or
 *        mp_heap_realloc()) of at least @p len bytes, not freed, and put only
 *        once; the queue checks only that it lies inside the family heap.
 * @param len the message's length (0 is an empty message).
 * @return 0 when the message is in the queue; `-ETIMEDOUT` when there was no
 *         room in time; `-EPIPE` when the queue is closed (`-ESHUTDOWN` after
 *         mp_queue_shutdown()); `-EINVAL` for a NULL or freed queue, a LIFO or
 *         priority queue (only FIFO queues, JoinableQueue and SimpleQueue
 *         included, carry blocks), NULL @p block, a @p block or @p len that
 *         reaches outside the family heap, or a NaN timeout; `-EMSGSIZE` for
 *         a length above `SSIZE_MAX`.
 * Thread and process safety: safe, from any process of the family.
 */
MP_EXPORT int mp_queue_put_block(mp_queue *q, void *block, size_t len, double timeout);

/**
 * @brief Take the next message of a FIFO queue as a family-heap block.
 *
 * A message put with mp_queue_put_block() comes back as that very block, with
 * no copy; any other message is copied into a new heap block. Waits, times
 * out and closes as mp_queue_get().
 * @param[out] block the block, written only on success: the caller owns it
 *        and frees it with mp_heap_free() (or puts it again); never NULL,
 *        also for an empty message. It is valid in every process of the
 *        family, so it can be passed on by pointer.
 * @param[out] len the message's length, written only on success.
 * @return 0; `-ETIMEDOUT` when no message came in time; `-EPIPE` when the
 *         queue is closed and drained (`-ESHUTDOWN` after mp_queue_shutdown());
 *         `-ENOMEM` when a copied message finds no room in the family heap
 *         (it stays in the queue); `-EINVAL` for a NULL or freed queue, a LIFO
 *         or priority queue, NULL @p block or @p len, or a NaN timeout;
 *         `-EIO` as mp_queue_get().
 * Crash safety: see mp_queue_put_block(); a consumer killed before it took
 * the message leaves it first in the queue, whole.
 * Thread and process safety: safe.
 */
MP_EXPORT int mp_queue_get_block(mp_queue *q, void **block, size_t *len, double timeout);

/**
 * @brief The length of the message the next get would take, without taking it.
 *
 * Waits for a message as mp_queue_get() does. With several consumers another
 * one may take that message first.
 * @param[out] len the length, written only on success.
 * @return 0; `-ETIMEDOUT` when no message came in time; `-EPIPE` when the
 *         queue is closed and empty; `-EINVAL` for a NULL or freed queue, NULL
 *         @p len or a NaN timeout.
 */
MP_EXPORT int mp_queue_peek_size(mp_queue *q, size_t *len, double timeout);

/**
 * @brief The number of messages in the queue (Python's `qsize`).
 *
 * Exact at the moment of reading: messages put (a streamed message counts from
 * its first chunk until it is taken or discarded) and not yet taken. What a
 * process killed in the middle of a put or get left is settled first: a
 * stream whose producer died is discarded, never counted, and a LIFO or
 * priority queue is read under its lock (held only briefly, as Python's
 * `qsize` takes its queue's mutex), so no half-done operation counts.
 * @return the count; `-EINVAL` for a NULL or freed queue.
 */
MP_EXPORT ssize_t mp_queue_qsize(mp_queue *q);

/**
 * @brief Whether the queue holds no message (Python's `empty`), counted as
 *        mp_queue_qsize() counts.
 * @return 1 or 0; `-EINVAL` for a NULL or freed queue.
 */
MP_EXPORT int mp_queue_empty(mp_queue *q);

/**
 * @brief Whether a put would have to wait now (Python's `full`): the queue
 *        holds @p maxsize messages, or its ring has no room for even an empty
 *        message; counted as mp_queue_qsize() counts.
 * @return 1 or 0; `-EINVAL` for a NULL or freed queue.
 */
MP_EXPORT int mp_queue_full(mp_queue *q);

/**
 * @brief Close the queue for every process: no message may be put any more.
 *
 * Later puts return `-EPIPE`; puts waiting for room wake and return `-EPIPE`
 * (a message being streamed is discarded). Gets take the messages left, then
 * return `-EPIPE`; gets waiting on an empty queue wake and return `-EPIPE`.
 * Closing twice is harmless. The queue's memory stays until mp_queue_free().
 * @return 0; `-EINVAL` for a NULL or freed queue.
 */
MP_EXPORT int mp_queue_close(mp_queue *q);

/**
 * @brief Shut the queue down for every process (Python 3.13's
 *        `shutdown(immediate)`), for Queue, SimpleQueue, JoinableQueue and the
 *        LIFO and priority queues.
 *
 * As mp_queue_close(), but the calls that meet the closed queue return
 * `-ESHUTDOWN` (Python's `ShutDown`) instead of `-EPIPE`: puts at once, also
 * those waiting for room; gets once the messages left are drained, also those
 * waiting. With @p immediate non-zero the messages left are dropped too, and
 * on a JoinableQueue each dropped one is marked done, so mp_queue_join()
 * returns once the messages consumers still hold are done (as Python). A
 * shutdown killed half-way leaves an open queue, or some messages not yet
 * dropped; calling it again finishes it.
 * @return 0; `-EINVAL` for a NULL or freed queue.
 * Thread and process safety: safe; any process of the family may call it.
 */
MP_EXPORT int mp_queue_shutdown(mp_queue *q, int immediate);

/**
 * @brief The number of messages put into a JoinableQueue and not yet marked
 *        done with mp_queue_task_done() (what mp_queue_join() waits for).
 * @return the count (>= 0); `-EINVAL` for a queue that is not joinable, or
 *         NULL. A snapshot: counted as mp_queue_qsize() counts.
 */
MP_EXPORT ssize_t mp_queue_unfinished(mp_queue *q);

/**
 * @brief Mark one task taken from a JoinableQueue as done (Python's
 *        `task_done`).
 * @return 0; `-EOVERFLOW` when called more often than messages were put;
 *         `-EINVAL` for a NULL or freed queue, or a queue that is not joinable.
 */
MP_EXPORT int mp_queue_task_done(mp_queue *q);

/**
 * @brief Wait until every message put into a JoinableQueue has been marked
 *        done (Python's `join`), by any process.
 * @return 0 when no task is unfinished; `-ETIMEDOUT` when some still were
 *         after @p timeout seconds; `-EINVAL` for a NULL or freed queue, a
 *         queue that is not joinable, or a NaN timeout.
 */
MP_EXPORT int mp_queue_join(mp_queue *q, double timeout);

/**
 * @brief Destroy the queue and return its memory (and any message left) to the
 *        family heap.
 *
 * Must be the queue's last use: freeing a queue another thread or process
 * still uses is undefined, as freeing memory in use always is. A process killed
 * inside mp_queue_free() leaves the queue freed (later calls answer
 * `-EINVAL`), never half freed.
 * @return 0; 0 for NULL; `-EBUSY` when a thread is waiting inside a put, get,
 *         mp_queue_join() or connection wait on it right now (nothing is
 *         freed; a waiter killed while waiting may keep it so); `-EINVAL` for
 *         a freed or foreign pointer.
 */
MP_EXPORT int mp_queue_free(mp_queue *q);

#ifdef __cplusplus
}
#endif

#endif /* MP_QUEUE_H */
