/* SPDX-License-Identifier: MIT */
/**
 * @file mp/shm.h
 * @brief SharedMemory, ShareableList and SharedMemoryManager: named blocks
 *        that unrelated programs can attach to (Python's
 *        `multiprocessing.shared_memory`).
 *
 * A block is a POSIX shared memory object (`shm_open`, a file in /dev/shm)
 * mapped into the process. Any program of the same user can attach to it by
 * name; the family heap (mp/heap.h) is the better choice inside one family.
 *
 * @par Names
 * A name is 1 to #MP_SHARED_MEMORY_NAME_MAX bytes without a slash, optionally
 * preceded by one `/` that is ignored ("/foo" and "foo" are the same block,
 * named "foo"); "." and ".." are refused. A NULL name on creation makes a
 * fresh one, `psm_` and 8 random hexadecimal digits, as Python does.
 *
 * @par Permissions
 * Blocks are created with mode 0600 whatever the umask: only the same user
 * can attach.
 *
 * @par Lifetime: nothing leaks
 * A block is *tracked* unless it was created with
 * mp_shared_memory_options::keep. A tracked block lives as long as the process
 * that created it (its *owner*), and is unlinked (its name removed; mappings
 * stay valid until closed) when the owner:
 *  - unlinks it itself (mp_shared_memory_unlink()), or
 *  - ends normally: returns from main or calls exit() (an `atexit` handler),
 *    or, in a process started by mp_process_start(), returns from its target
 *    (a libmp child ends with `_exit`, so its handlers would not run); or
 *  - dies any other way (a signal, SIGKILL included, `_exit`, `exec` followed
 *    by the end of the new program): then a surviving process of the family
 *    unlinks it, namely the first that calls mp_shared_memory_new(),
 *    mp_shared_memory_attach(), mp_shared_memory_unlink_name() or one of the
 *    ShareableList and manager constructors afterwards, or the parent when it
 *    ends normally (if it started its children with mp_process_start() or
 *    created a tracked block itself).
 *
 * Tracked blocks are recorded in a registry in the family heap, with the
 * owner's pid and start time (so a recycled pid is not mistaken for the
 * owner), and the block's inode (so a name unlinked and created again behind
 * libmp's back is left alone). A block whose owner is alive is never unlinked
 * by another process. A process forked with plain `fork()` before the family
 * heap existed has a registry of its own (see mp/heap.h): map the heap first
 * (`mp_heap_init(NULL)`) so that the parent can clean up after such children.
 * Attaching never makes a process the owner, so a program that only attaches
 * never unlinks anything by ending (unlike Python's resource tracker); use
 * mp_shared_memory_options::adopt to take a block over on purpose.
 *
 * What can still be left in /dev/shm:
 *  - kept blocks (mp_shared_memory_options::keep), on purpose: unlink them
 *    with mp_shared_memory_unlink_name() or `rm /dev/shm/<name>`;
 *  - blocks of a family that dies whole at once (SIGKILL to every process,
 *    the OOM killer, a power cut while /dev/shm persists): no process is left
 *    to run any code, so their names remain in /dev/shm until removed by
 *    hand or reboot. Generated names start with `psm_` (as Python's do, so
 *    check with `ls -l /dev/shm/psm_*` and `fuser` whose they are), and
 *    mp_shared_memory_unlink_name() removes one by name.
 * A creator killed at any instant of mp_shared_memory_new() leaves no name
 * that the family cannot clean up: the block is created without a name
 * (`O_TMPFILE` in /dev/shm), sized, recorded with its inode, and only then
 * named (`linkat`), so the next sweep of a survivor (any creation, attach
 * or unlink_name, or a normal end) removes it. An attacher never sees a
 * libmp block before its size is set.
 *
 * @par Fork
 * Handles are private to a process (ordinary `malloc` memory). A child
 * forked while a handle is open inherits a copy of the handle and the
 * mapping, which stays shared: what either writes, the other sees. The child
 * may use its copy, and must close it to release its own view (closing in one
 * process never affects another's mapping). Ownership does not move with
 * fork: a tracked block stays its creator's.
 *
 * @par Threads
 * Every function is safe to call from several threads, but a handle must not
 * be closed while another thread uses it.
 *
 * Beyond the end of the block, or beyond what /dev/shm can hold (blocks are
 * not reserved in advance, as in Python), accessing the memory raises
 * SIGBUS.
 */
#ifndef MP_SHM_H
#define MP_SHM_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Longest name, in bytes, not counting an optional leading `/`. */
#define MP_SHARED_MEMORY_NAME_MAX 255

/** A process's handle on a named block (Python's `SharedMemory`). */
typedef struct mp_shared_memory mp_shared_memory;

/** Options for the SharedMemory and ShareableList constructors. Zeroed
 *  fields (or NULL) mean the default. */
typedef struct mp_shared_memory_options {
  /** Creation: non-zero leaves the block untracked, so it is never unlinked
   *  automatically and outlives the program (Python 3.13's `track=False`);
   *  the program must unlink it some day. Ignored when attaching. */
  int keep;
  /** Attaching: non-zero makes the calling process the block's owner, as if
   *  it had created it: the block is then unlinked when this process ends
   *  (or dies) rather than with its creator, and it becomes tracked if it was
   *  kept. This is how a block is handed over to outlive its creator. (A
   *  tracked block of another family stays tracked there too: whichever owner
   *  ends first unlinks it.) Ignored when creating. */
  int adopt;
} mp_shared_memory_options;

/**
 * @brief Create a new block of @p size bytes, zero-filled, mode 0600 (Python's
 *        `SharedMemory(name, create=True, size=size)`).
 * @param name NULL for a generated name, else a name as described above.
 * @param size bytes, at least 1.
 * @param opts NULL for defaults (a tracked block).
 * @param[out] ret the handle, written only on success.
 * @return 0; `-EEXIST` when a block of that name exists (nothing is changed);
 *         `-EINVAL` for a bad name, @p size 0 or too large for a file,
 *         NULL @p ret; `-ENOMEM` when the block cannot be mapped, or the
 *         family heap cannot record a tracked block; `-ENOSPC`, `-EMFILE`,
 *         `-EACCES` and other codes of `shm_open`, `ftruncate` and `mmap`.
 *         On failure no name is left behind.
 * Also unlinks the blocks of dead owners in the family (see Lifetime).
 */
MP_EXPORT int mp_shared_memory_new(const char *name, size_t size,
                                   const mp_shared_memory_options *opts, mp_shared_memory **ret);

/**
 * @brief Attach to an existing block by name (Python's `SharedMemory(name)`).
 *
 * The size is the block's own (there is no size argument: Python ignores the
 * one it takes on attach).
 * @param opts NULL for defaults; mp_shared_memory_options::adopt to become
 *        the owner.
 * @param[out] ret the handle, written only on success.
 * @return 0; `-ENOENT` when no block has that name; `-EINVAL` for a bad name
 *         or NULL @p ret; `-EACCES` for another user's block; `-EAGAIN` when
 *         the block has size 0 (made by a program other than libmp, which
 *         has not sized it yet: try again; libmp sizes its blocks before
 *         naming them);
 *         `-ENOMEM`, `-EMFILE`.
 * Also unlinks the blocks of dead owners in the family (see Lifetime), which
 * may be the one asked for (then `-ENOENT`).
 */
MP_EXPORT int mp_shared_memory_attach(const char *name, const mp_shared_memory_options *opts,
                                      mp_shared_memory **ret);

/**
 * @brief The block's memory in this process (Python's `buf`).
 * @return the start of the mapping, page-aligned; NULL for NULL.
 */
MP_EXPORT void *mp_shared_memory_buf(const mp_shared_memory *shm);

/**
 * @brief The block's size in bytes (Python's `size`).
 * @return it (> 0), or `-EINVAL` for NULL.
 */
MP_EXPORT ssize_t mp_shared_memory_size(const mp_shared_memory *shm);

/**
 * @brief The block's name, without a leading slash (Python's `name`).
 * @return a string owned by the handle, valid until it is closed; NULL for
 *         NULL.
 */
MP_EXPORT const char *mp_shared_memory_name(const mp_shared_memory *shm);

/**
 * @brief Unmap this process's view and free the handle (Python's `close()`).
 *
 * The block itself and other processes' views are untouched; a tracked block
 * stays tracked. Using the memory or the handle afterwards is undefined.
 * @return 0; 0 for NULL.
 */
MP_EXPORT int mp_shared_memory_close(mp_shared_memory *shm);

/**
 * @brief Remove the block's name (Python's `unlink()`), once, from any
 *        process.
 *
 * Mapped views stay valid until closed; the memory is freed when the last is
 * closed. The block stops being tracked. The handle stays open.
 * @return 0; `-ENOENT` when the name is already gone; `-EINVAL` for NULL.
 */
MP_EXPORT int mp_shared_memory_unlink(mp_shared_memory *shm);

/**
 * @brief Remove a block's name without a handle, for example a kept block or
 *        one left behind by a family killed whole.
 * @return 0; `-ENOENT` when no block has that name; `-EINVAL` for a bad name;
 *         `-EACCES`.
 */
MP_EXPORT int mp_shared_memory_unlink_name(const char *name);

/* ------------------------------------------------------------ ShareableList */

/** A process's handle on a list in a named block (Python's `ShareableList`). */
typedef struct mp_shareable_list mp_shareable_list;

/** The type of a ShareableList item. */
typedef enum mp_item_type {
  MP_ITEM_NONE = 0, /**< Python's None; no value */
  MP_ITEM_INT,      /**< mp_item::i, a 64-bit signed integer */
  MP_ITEM_FLOAT,    /**< mp_item::f, a double */
  MP_ITEM_BOOL,     /**< mp_item::b, 0 or 1 (any non-zero is stored as 1) */
  MP_ITEM_STR,      /**< mp_item::data, mp_item::len bytes of text (NUL allowed) */
  MP_ITEM_BYTES     /**< mp_item::data, mp_item::len bytes */
} mp_item_type;

/**
 * @brief A typed item: the value of one ShareableList slot.
 *
 * Fill it with the helpers below (mp_item_int() and so on). A slot holds
 * up to its *capacity* in bytes, fixed at creation: 8 for every number, bool
 * or None, and for a string or bytes their length or mp_item::cap if larger,
 * rounded up to a multiple of 8 (at least 8). Any value whose size fits the
 * capacity may be stored in any slot later, also of another type, as in
 * Python; numbers, bools and None fit every slot.
 */
typedef struct mp_item {
  mp_item_type type; /**< which of the fields below is the value */
  int64_t i;         /**< #MP_ITEM_INT */
  double f;          /**< #MP_ITEM_FLOAT */
  int b;             /**< #MP_ITEM_BOOL */
  const void *data;  /**< #MP_ITEM_STR, #MP_ITEM_BYTES: the bytes */
  size_t len;        /**< #MP_ITEM_STR, #MP_ITEM_BYTES: how many */
  size_t cap;        /**< creation only: bytes to reserve (0: mp_item::len) */
} mp_item;

/** An item holding None. */
static inline mp_item mp_item_none(void) {
  mp_item it = {MP_ITEM_NONE, 0, 0.0, 0, NULL, 0, 0};
  return it;
}
/** An item holding the integer @p v. */
static inline mp_item mp_item_int(int64_t v) {
  mp_item it = {MP_ITEM_INT, v, 0.0, 0, NULL, 0, 0};
  return it;
}
/** An item holding the double @p v. */
static inline mp_item mp_item_float(double v) {
  mp_item it = {MP_ITEM_FLOAT, 0, v, 0, NULL, 0, 0};
  return it;
}
/** An item holding the bool @p v (non-zero is true). */
static inline mp_item mp_item_bool(int v) {
  mp_item it = {MP_ITEM_BOOL, 0, 0.0, v != 0, NULL, 0, 0};
  return it;
}
/** An item holding the NUL-terminated string @p s (its bytes, not the NUL). */
static inline mp_item mp_item_str(const char *s) {
  mp_item it = {MP_ITEM_STR, 0, 0.0, 0, s, s ? strlen(s) : 0, 0};
  return it;
}
/** An item holding @p len bytes at @p p. */
static inline mp_item mp_item_bytes(const void *p, size_t len) {
  mp_item it = {MP_ITEM_BYTES, 0, 0.0, 0, p, len, 0};
  return it;
}

/**
 * @brief Create a list of @p n slots in a new block, holding @p items
 *        (Python's `ShareableList(sequence, name=name)`).
 *
 * Layout of the block (so that programs not using libmp can read it): a
 * header (magic "mpSLIST1", version 2, count), then one 40-byte descriptor
 * per slot (type, capacity, current length, offset of its data, and the
 * seqlock and writer words), then the slots' data, each 8-byte aligned. See
 * src/shm_list.c for the exact fields. (Version 1, with 32-byte descriptors and
 * writers known by pid alone, is refused with `-EINVAL`.)
 * @param name NULL for a generated name.
 * @param items @p n items (NULL when @p n is 0); their mp_item::cap sets
 *        each slot's capacity.
 * @param opts as mp_shared_memory_new().
 * @param[out] ret the handle, written only on success.
 * @return 0; `-EINVAL` for a bad name, an unknown type, NULL data with a
 *         non-zero length, a list too large, NULL @p ret or @p items;
 *         the codes of mp_shared_memory_new() (`-EEXIST`...).
 */
MP_EXPORT int mp_shareable_list_new(const char *name, const mp_item *items, size_t n,
                                    const mp_shared_memory_options *opts, mp_shareable_list **ret);

/**
 * @brief Attach to a list by name, from any program (Python's
 *        `ShareableList(name=name)`).
 *
 * The slots' geometry is checked against the block once and kept in the
 * handle: a block altered later can never make libmp read or write outside
 * it.
 * @return 0; `-EINVAL` when the block is not a ShareableList (wrong magic or
 *         version, or slots outside the block); `-EAGAIN` when its creator
 *         has not finished writing the header yet; the codes of
 *         mp_shared_memory_attach() (`-ENOENT`...).
 */
MP_EXPORT int mp_shareable_list_attach(const char *name, const mp_shared_memory_options *opts,
                                       mp_shareable_list **ret);

/** @brief The number of slots (Python's `len()`). @return it, or `-EINVAL`. */
MP_EXPORT ssize_t mp_shareable_list_len(const mp_shareable_list *list);

/**
 * @brief The capacity of slot @p index in bytes: the longest string or bytes
 *        it can hold.
 * @return it (>= 8); `-ERANGE` past the end; `-EINVAL` for NULL.
 */
MP_EXPORT ssize_t mp_shareable_list_capacity(const mp_shareable_list *list, size_t index);

/**
 * @brief Read slot @p index (Python's `list[index]`).
 *
 * A string or bytes value is copied into @p buf, and mp_item::data of @p out
 * points to it; a string gets a terminating NUL (not counted in
 * mp_item::len). A buffer of mp_shareable_list_capacity() + 1 bytes is always
 * large enough. Numbers need no buffer (@p buf may be NULL).
 *
 * The value is read whole: a write to the same slot by another process or
 * thread at the same time is either seen entirely or not at all.
 * @param[out] out the item, written only on success.
 * @return 0; `-ERANGE` past the end; `-EMSGSIZE` when @p bufsize is too small
 *         for the value (nothing is written); `-EOWNERDEAD` when a process
 *         died in the middle of writing this slot: the slot now holds what
 *         it left (a valid type and length, the bytes possibly mixed) and is
 *         usable again, @p out is not written; `-EINVAL` for NULL @p list or
 *         @p out, or a slot holding an impossible type or length (the block
 *         was written by something other than libmp); `-ETIMEDOUT` when a
 *         live writer has kept the slot for 10 s (it is stopped or starved:
 *         a write holds the slot for one copy only); @p out is not written.
 * Does not block except while another thread or process is writing the
 * slot (a short busy wait, then yielding the CPU, for at most 10 s). A
 * writer that died is recognised by its pid and start time, so a new
 * process that got its pid is not waited for.
 */
MP_EXPORT int mp_shareable_list_get(mp_shareable_list *list, size_t index, mp_item *out, void *buf,
                                    size_t bufsize);

/**
 * @brief Store @p item in slot @p index (Python's `list[index] = value`).
 *
 * Any type may replace any other when its size fits the slot's capacity.
 * A write is seen whole by readers (see mp_shareable_list_get()). Concurrent
 * writers to one slot are serialised; a writer that died in the middle of
 * a write is taken over.
 * @return 0; `-EMSGSIZE` when a string or bytes is longer than the slot's
 *         capacity (the slot keeps its value); `-ERANGE` past the end;
 *         `-EINVAL` for an unknown type, NULL data with a non-zero length,
 *         NULL @p list or @p item; `-ETIMEDOUT` when another live writer
 *         has kept the slot for 10 s (the slot keeps its value).
 */
MP_EXPORT int mp_shareable_list_set(mp_shareable_list *list, size_t index, const mp_item *item);

/**
 * @brief How many slots hold a value equal to @p value (Python's
 *        `count()`).
 *
 * Equal means the same type and the same value (`==` for numbers, so NaN
 * equals nothing; the same bytes for strings and bytes); stricter than
 * Python, where `1 == 1.0 == True`.
 * @return the count; `-EINVAL` for NULL or an unknown type; `-ETIMEDOUT`
 *         as mp_shareable_list_get().
 */
MP_EXPORT ssize_t mp_shareable_list_count(mp_shareable_list *list, const mp_item *value);

/**
 * @brief The first slot holding a value equal to @p value (Python's
 *        `index()`), equality as in mp_shareable_list_count().
 * @return the index; `-ENOENT` when none does (Python's ValueError);
 *         `-EINVAL` for NULL or an unknown type; `-ETIMEDOUT` as
 *         mp_shareable_list_get().
 */
MP_EXPORT ssize_t mp_shareable_list_index(mp_shareable_list *list, const mp_item *value);

/**
 * @brief The list's block (Python's `shm`), for its name or raw memory.
 * @return the handle, owned by the list (close the list, not it); NULL for
 *         NULL.
 */
MP_EXPORT mp_shared_memory *mp_shareable_list_shm(const mp_shareable_list *list);

/** @brief Close this process's view and free the handle, as
 *         mp_shared_memory_close(). @return 0; 0 for NULL. */
MP_EXPORT int mp_shareable_list_close(mp_shareable_list *list);

/** @brief Unlink the list's block, as mp_shared_memory_unlink(). */
MP_EXPORT int mp_shareable_list_unlink(mp_shareable_list *list);

/* ------------------------------------------------------------ SharedMemoryManager */

/**
 * A SharedMemoryManager: creates blocks and lists, and at shutdown unlinks
 * every one of them and closes their handles.
 *
 * Python's SharedMemoryManager is a server process; here it is an object of
 * the creating process (ordinary memory), which is all the tracking needs.
 * Its blocks are tracked blocks of the creating process as well, so they are
 * also unlinked if the program ends or dies without shutting it down.
 */
typedef struct mp_shm_manager mp_shm_manager;

/**
 * @brief Make a manager (Python's `SharedMemoryManager()` and `start()`).
 * @return 0; `-EINVAL` for NULL; `-ENOMEM`.
 */
MP_EXPORT int mp_shm_manager_new(mp_shm_manager **ret);

/**
 * @brief Create a block of @p size bytes with a generated name, owned by the
 *        manager (Python's `smm.SharedMemory(size)`).
 *
 * The handle belongs to the manager: use it until mp_shm_manager_shutdown(),
 * which closes it. Closing or unlinking it earlier is allowed.
 * @return as mp_shared_memory_new(); `-ECHILD` in another process than the
 *         manager's creator.
 */
MP_EXPORT int mp_shm_manager_shared_memory(mp_shm_manager *mgr, size_t size,
                                           mp_shared_memory **ret);

/**
 * @brief Create a list with a generated name, owned by the manager (Python's
 *        `smm.ShareableList(sequence)`); as mp_shm_manager_shared_memory().
 * @return as mp_shareable_list_new(); `-ECHILD` as above.
 */
MP_EXPORT int mp_shm_manager_shareable_list(mp_shm_manager *mgr, const mp_item *items, size_t n,
                                            mp_shareable_list **ret);

/**
 * @brief Unlink every block and list the manager created (those not unlinked
 *        yet), close every handle it still holds, and free the manager
 *        (Python's `shutdown()`, or leaving `with SharedMemoryManager()`).
 *
 * Views that other processes (children included) have of the blocks stay
 * valid until they close them.
 * @return 0; 0 for NULL; `-ECHILD` in another process than the creator
 *         (nothing is done: a forked child's copy of the manager is not the
 *         manager).
 */
MP_EXPORT int mp_shm_manager_shutdown(mp_shm_manager *mgr);

#ifdef __cplusplus
}
#endif

#endif /* MP_SHM_H */
