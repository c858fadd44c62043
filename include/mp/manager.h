/* SPDX-License-Identifier: MIT */
/**
 * @file mp/manager.h
 * @brief Manager: a server process of shared objects reached through proxies
 *        (Python's `multiprocessing.Manager` and `managers.BaseManager`),
 *        typed values (#mp_obj), and Listener/Client (Python's
 *        `multiprocessing.connection.Listener` and `Client`).
 *
 * Values. What travels to and from a manager is an #mp_obj: nil, a boolean, a
 * 64-bit integer, a double, a string, bytes, or a list or dict of values,
 * nested, or a reference to a shared object (mp_obj_proxy(): a proxy
 * stored inside a container). Values are plain trees in the calling process's memory
 * (`malloc`); on the wire they are MessagePack. Limits, checked on both sides:
 * a message is at most #MP_OBJ_MAX_MESSAGE bytes, nests at most
 * #MP_OBJ_MAX_DEPTH containers deep and holds at most #MP_OBJ_MAX_ITEMS values
 * in all. A value beyond them is refused with `-EMSGSIZE` and never sent.
 *
 * Building values. The constructors (mp_obj_int(), mp_obj_list() ...) return
 * the new value, or NULL only when memory is exhausted; the calls that take a
 * value into a container (mp_obj_list_append(), mp_obj_dict_set(),
 * mp_obj_listv()) take ownership of it, also when they fail, and report a
 * NULL argument as `-ENOMEM`, so a chain of constructors needs one check at
 * the end. Every other call borrows its values. Values are not thread-safe:
 * one thread at a time per tree.
 *
 * The server. mp_manager_start() forks a server process that listens on a
 * Unix socket in a new private directory (mode 0700, socket 0600) or on TCP,
 * and connects the calling process to it. mp_manager_serve_forever() instead
 * serves in the calling process until a client asks it to shut down (a
 * standalone server for remote clients), and mp_manager_connect() connects to
 * a server running elsewhere. The server runs one thread per client
 * connection, so a client blocked in a queue get or a lock acquire never
 * holds up the others; methods of objects run one at a time under the
 * server's one mutex.
 *
 * Lifetime. A server started with mp_manager_start() ends when
 * mp_manager_shutdown() or mp_manager_free() is called in the process that
 * started it, and also when that thread's process ends in any way, SIGKILL
 * included (the server asks the kernel for SIGKILL at its parent's death).
 * Start it from the main thread, or from a thread that outlives the manager:
 * the kernel counts the death of the starting *thread*.
 *
 * Security. Every connection starts with a mutual HMAC-SHA256 challenge:
 * the server sends 32 random bytes, the client answers with their HMAC under
 * the key, then the client challenges the server the same way; only then is
 * anything else the client sends parsed. A client with the wrong key gets
 * `-EACCES` and the server serves on. A manager made with no key uses a copy
 * of the process's key (mp_process_authkey(): 32 random bytes, shared by the
 * children the program forks), as Python's manager uses
 * `current_process().authkey`. Received bytes never choose code to
 * run: requests name a built-in type or a type registered with
 * mp_manager_register() and one of its listed methods. The key proves
 * identity; it does not encrypt: use TCP only on networks you trust, or
 * through a tunnel. The key is wiped from the handle's memory when it is
 * freed. A server keeps at most #mp_manager_options.max_clients
 * connections, of which at most #mp_manager_options.max_handshakes still
 * in the handshake, each for at most 5 s; connections that never prove the
 * key cannot lock out a client that does (a new connection ends the oldest
 * handshake when those slots are taken), and a server whose slots all hold
 * authenticated clients turns new ones away with `-EUSERS` ("too many
 * users"), not `-EACCES`. The server's dicts hash their keys with SipHash
 * under a random key of that server's, so clients cannot choose keys that
 * collide.
 *
 * Who may use an object. The key is the boundary, as in Python (a rule per
 * server): any authenticated client may call any object that exists, also
 * one it did not create (object ids are small integers, handed to children
 * by fork). A call on an id that does not exist (never created, or
 * released) fails with `-ESRCH`. Releasing an object is reserved to the
 * connection that created it: mp_proxy_free() in the creating process does
 * it; a release from any other connection is refused (`-EPERM`) and the
 * object stays. A connection given up by a timed call (see Timeouts below)
 * cannot release the objects it created: they then live until the server
 * ends.
 *
 * Proxies. An #mp_proxy names one object in the server. It holds no
 * connection itself: calls go through its manager's connection, one call at a
 * time per manager handle (threads take turns; give each thread its own
 * mp_manager_connect() handle to block in parallel). A process forked after
 * the manager was started or connected may use the manager and its proxies:
 * its first call opens its own connection (the inherited one is left to the
 * parent). Objects live until the proxy that created them is freed in the
 * process that created them (proxies copied into children by fork do not
 * free the object), or until the server ends; an object published by name
 * lives until the server ends, and one a container of the server refers to
 * (mp_obj_proxy()) lives until the last such container lets go.
 *
 * Errors common to the proxy calls: `-EINVAL` for a NULL or freed handle, a
 * proxy of the wrong type or a NaN timeout; `-EPIPE` when the server has gone
 * away (it died or shut down; connect again to a new one); `-EACCES` when
 * the key is refused; `-EMSGSIZE` when a value is beyond the limits;
 * `-ESRCH` when the object no longer exists in the server; `-ENOMEM`.
 * Timeouts are seconds, #MP_FOREVER or #MP_NOWAIT; the server keeps the
 * deadline, and signals neither end nor stretch a call. A timed call also
 * waits for its manager handle (another thread's call) and for the
 * server's answer by a deadline of its own, the timeout plus 2 s: a server
 * that does not answer at all (stopped, hung) makes the call return
 * `-ETIMEDOUT` then. Such a call gives up its connection (the reply could
 * still come): the server, when it goes on, treats it as a client that
 * ended (a get or acquire not yet carried out takes nothing; Locks, RLocks
 * and Conditions it held are released), and the next call opens a new
 * connection. Calls without a timeout wait as long as the server lives.
 *
 * A client that dies (or gives up its connection) while its get or acquire
 * waits takes nothing: the server looks at the client's connection right
 * before it takes an item or a unit, so the next getter gets it; a
 * Condition notification that finds its waiter dead goes to the next
 * waiter; a put still waiting for room is dropped (its client never
 * learnt of it); a waiting request of a dead client ends within 1 s. A
 * request whose client is killed after the server took the item (the reply
 * in flight) loses that item, as a process killed right after a successful
 * get would.
 */
#ifndef MP_MANAGER_H
#define MP_MANAGER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "common.h"
#include "connection.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ----------------------------------------------------------------- values */

/** A typed value: nil, bool, int, float, str, bytes, list or dict. */
typedef struct mp_obj mp_obj;

/** The kinds of #mp_obj. */
enum mp_obj_type {
  MP_OBJ_NIL = 0,   /**< Python's `None` */
  MP_OBJ_BOOL = 1,  /**< `bool` */
  MP_OBJ_INT = 2,   /**< `int` within int64_t */
  MP_OBJ_FLOAT = 3, /**< `float` (a double) */
  MP_OBJ_STR = 4,   /**< `str`: bytes, kept NUL-terminated */
  MP_OBJ_BYTES = 5, /**< `bytes` */
  MP_OBJ_LIST = 6,  /**< `list` */
  MP_OBJ_DICT = 7,  /**< `dict`: keys of any type, in insertion order */
  MP_OBJ_PROXY = 8, /**< a reference to a shared object of a manager's
                         server, stored in its containers (mp_obj_proxy()) */
};

/** The largest encoded message, in bytes. */
#define MP_OBJ_MAX_MESSAGE (16u * 1024 * 1024)
/** The deepest nesting of lists and dicts in one value (a scalar is 0). */
#define MP_OBJ_MAX_DEPTH 30
/** The most values (containers, keys and items counted) in one message. */
#define MP_OBJ_MAX_ITEMS (1u << 20)

/** @brief A new nil value; NULL when out of memory. */
MP_EXPORT mp_obj *mp_obj_nil(void);
/** @brief A new boolean (non-zero is true); NULL when out of memory. */
MP_EXPORT mp_obj *mp_obj_bool(int v);
/** @brief A new integer; NULL when out of memory. */
MP_EXPORT mp_obj *mp_obj_int(int64_t v);
/** @brief A new float; NULL when out of memory. */
MP_EXPORT mp_obj *mp_obj_float(double v);
/** @brief A new string, a copy of the NUL-terminated @p s; NULL when out of
 *         memory or @p s is NULL. */
MP_EXPORT mp_obj *mp_obj_str(const char *s);
/** @brief A new string of @p len bytes (may contain NULs); NULL when out of
 *         memory or @p s is NULL with a non-zero @p len. */
MP_EXPORT mp_obj *mp_obj_strn(const char *s, size_t len);
/** @brief New bytes, a copy of @p len bytes; NULL when out of memory or
 *         @p p is NULL with a non-zero @p len. */
MP_EXPORT mp_obj *mp_obj_bytes(const void *p, size_t len);
/** @brief A new empty list; NULL when out of memory. */
MP_EXPORT mp_obj *mp_obj_list(void);
/** @brief A new empty dict; NULL when out of memory. */
MP_EXPORT mp_obj *mp_obj_dict(void);
/**
 * @brief A new list of @p n values given as `mp_obj *` arguments, which it
 *        takes over (all of them, also on failure).
 * @return the list; NULL when out of memory or when any item is NULL.
 */
MP_EXPORT mp_obj *mp_obj_listv(size_t n, ...);

/** A proxy: one object in a manager's server. */
typedef struct mp_proxy mp_proxy;
/** A manager: the handle of a started, served or connected server. */
typedef struct mp_manager mp_manager;

/**
 * @brief A new value that refers to the shared object of @p p (Python's
 *        proxy stored in a managed container: `d['l'] = m.list()`).
 *
 * Stored in a dict, list, Queue, Value, Array or set of the same server, it
 * is a reference, not a copy: whoever reads it gets a reference to the same
 * object (mp_obj_get_proxy()), and a change through it is seen by every
 * holder. The object lives while its creator's proxy, a name
 * (mp_proxy_publish()) or any live container of the server refers to it:
 * released by its creator, it is freed once the last container lets go.
 * Only meaningful to the server @p p belongs to. Compared, hashed and
 * printed (`<proxy 3>`) by object id; unordered for sorting.
 * @return the value; NULL for a bad @p p or when out of memory.
 */
MP_EXPORT mp_obj *mp_obj_proxy(mp_proxy *p);
/**
 * @brief A proxy (of manager @p m) to the object a reference refers to, of
 *        its type (the typed proxy calls work); freeing it never releases
 *        the object. Blocks for one round trip.
 * @return 0; `-EDOM` when @p o is not a reference; `-ESRCH` when the
 *         object no longer exists; `-EINVAL`; the common errors.
 */
MP_EXPORT int mp_obj_get_proxy(mp_manager *m, const mp_obj *o, mp_proxy **ret);

/** @brief Free a value and everything in it. @return 0; 0 for NULL. */
MP_EXPORT int mp_obj_free(mp_obj *o);
/** @brief A deep copy; NULL when out of memory or @p o is NULL. */
MP_EXPORT mp_obj *mp_obj_copy(const mp_obj *o);

/** @brief The value's #mp_obj_type; `-EINVAL` for NULL. */
MP_EXPORT int mp_obj_type(const mp_obj *o);
/** @brief Whether two values are equal: same type and same contents (1 and
 *         1.0 differ; dicts compare in order). @return 1, 0 or `-EINVAL`. */
MP_EXPORT int mp_obj_equal(const mp_obj *a, const mp_obj *b);

/** @brief Read a boolean. @return 0; `-EINVAL` for NULL; `-EDOM` when
 *         @p o is not a boolean (Python's `TypeError`). */
MP_EXPORT int mp_obj_get_bool(const mp_obj *o, int *ret);
/** @brief Read an integer. @return 0; `-EINVAL`; `-EDOM` when not an int. */
MP_EXPORT int mp_obj_get_int(const mp_obj *o, int64_t *ret);
/** @brief Read a float; an int is converted. @return 0; `-EINVAL`; `-EDOM`
 *         when neither. */
MP_EXPORT int mp_obj_get_float(const mp_obj *o, double *ret);
/**
 * @brief Read a string, borrowed from @p o (valid until it changes or is
 *        freed; NUL-terminated).
 * @param[out] len its length; may be NULL.
 * @return 0; `-EINVAL`; `-EDOM` when not a string.
 */
MP_EXPORT int mp_obj_get_str(const mp_obj *o, const char **ret, size_t *len);
/** @brief Read bytes, borrowed from @p o. @return 0; `-EINVAL`; `-EDOM`
 *         when not bytes. */
MP_EXPORT int mp_obj_get_bytes(const mp_obj *o, const void **ret, size_t *len);
/** @brief The length of a list, dict, string or bytes. @return the length;
 *         `-EINVAL`; `-EDOM` for the other types. */
MP_EXPORT ssize_t mp_obj_len(const mp_obj *o);

/** @brief Append @p item to @p list, taking it over. @return 0; `-ENOMEM`
 *         (also for a NULL @p item); `-EINVAL` for a NULL @p list; `-EDOM`
 *         when @p list is not a list. */
MP_EXPORT int mp_obj_list_append(mp_obj *list, mp_obj *item);
/** @brief Borrow item @p index of a list (negative counts from the end).
 *  @return 0; `-ERANGE` out of range (IndexError); `-EINVAL`; `-EDOM`. */
MP_EXPORT int mp_obj_list_get(const mp_obj *list, int64_t index, const mp_obj **ret);

/** @brief Set @p key to @p value in @p dict, taking both over (an equal key
 *         is replaced). @return 0; `-ENOMEM` (also for a NULL key or value);
 *         `-EINVAL`; `-EDOM` when @p dict is not a dict. */
MP_EXPORT int mp_obj_dict_set(mp_obj *dict, mp_obj *key, mp_obj *value);
/** @brief Borrow the value of @p key. @return 0; `-ENOENT` when absent
 *         (KeyError); `-EINVAL`; `-EDOM`. */
MP_EXPORT int mp_obj_dict_get(const mp_obj *dict, const mp_obj *key, const mp_obj **ret);
/** @brief Borrow the value of the string key @p key. @return as
 *         mp_obj_dict_get(). */
MP_EXPORT int mp_obj_dict_get_str(const mp_obj *dict, const char *key, const mp_obj **ret);
/** @brief Borrow the @p index-th entry (insertion order) of a dict; either
 *         output may be NULL. @return 0; `-ERANGE`; `-EINVAL`; `-EDOM`. */
MP_EXPORT int mp_obj_dict_item(const mp_obj *dict, size_t index, const mp_obj **key,
                               const mp_obj **value);

/**
 * @brief Write Python's `repr` of a value (`{0: 0, 1: 'a'}`, `[1.5, None,
 *        b'\x00']`) like snprintf: at most @p cap bytes with the NUL.
 * @return the full length (without the NUL), which may exceed @p cap - 1;
 *         `-EINVAL` for NULL @p o, or NULL @p buf with a non-zero @p cap.
 */
MP_EXPORT ssize_t mp_obj_repr(const mp_obj *o, char *buf, size_t cap);

/**
 * @brief Encode a value as MessagePack (the manager's wire format), to send
 *        it some other way (for example through an mp_connection).
 * @param[out] ret a `malloc`ed buffer; @param[out] len its length.
 * @return 0; `-EMSGSIZE` beyond the limits; `-EINVAL`; `-ENOMEM`.
 */
MP_EXPORT int mp_obj_encode(const mp_obj *o, void **ret, size_t *len);
/**
 * @brief Decode one MessagePack value that fills @p buf exactly.
 * @return 0; `-EBADMSG` for malformed input, trailing bytes, extension types
 *         or integers above INT64_MAX; `-EMSGSIZE` beyond the limits;
 *         `-EINVAL`; `-ENOMEM`. Safe on any input.
 */
MP_EXPORT int mp_obj_decode(const void *buf, size_t len, mp_obj **ret);

/* ------------------------------------------------------------- managers */

/* mp_manager (the handle of a started, served or connected server) and
 * mp_proxy (one object in a manager's server) are declared above. */

/** Options for mp_manager_new(); zero fields mean the default. */
typedef struct mp_manager_options {
  /** Where to listen or connect: `"host:port"` for TCP (port 0 lets the
   *  kernel choose: read it with mp_manager_address()), `"unix:/path"` or
   *  any string starting with `/` for a Unix socket. NULL: a Unix socket in
   *  a new private directory (mp_manager_start() and serve only). */
  const char *address;
  /** The authentication key; NULL: a copy of this process's key, taken by
   *  mp_manager_new() (mp_process_authkey(): random in a program's first
   *  process, inherited by its children), for starting, serving and
   *  connecting alike, as Python's `BaseManager(authkey=None)` uses
   *  `current_process().authkey`; none when #no_auth is set. */
  const void *authkey;
  /** Its length in bytes (1..1024 when #authkey is set). */
  size_t authkey_len;
  /** Non-zero, with a NULL #authkey: no authentication, for starting and
   *  serving (only for a Unix socket, whose permissions then are the only
   *  protection) and for connecting to such a server (a client with a key,
   *  the process's included, refuses an open server). */
  int no_auth;
  /** Non-zero: always carry requests over the socket. By default a client
   *  whose process shares the family heap with the server (the server of
   *  mp_manager_start() and the process that started it, or any process
   *  forked from that one afterwards) carries them through a block of the
   *  family heap instead, which is several times faster; the socket then
   *  only carries messages too large for the block and tells each side of
   *  the other's end. Other clients, and TCP, always use the socket. */
  int no_shared_channel;
  /** The most connections a served or started server keeps (0: 1024),
   *  authenticated or in the handshake. When every one is an authenticated
   *  client, a new connection is turned away: its mp_manager_connect() (or
   *  a forked child's first call) returns `-EUSERS`. */
  int max_clients;
  /** The most connections in the authentication handshake at once (0: 64).
   *  A handshake lasts at most 5 s; a connection that finds these slots
   *  (or all #max_clients slots) taken ends the oldest handshake, so idle
   *  or slow connections that never prove the key cannot lock out a client
   *  that does. Tests lower it. */
  int max_handshakes;
} mp_manager_options;

/**
 * @brief Make a manager handle (Python's `BaseManager(address, authkey)`);
 *        nothing is started or connected yet.
 * @return 0; `-EINVAL` for a bad address or key length, a negative
 *         #mp_manager_options.max_clients or max_handshakes, or NULL @p ret;
 *         `-ENOMEM`; with no key, the errors of mp_process_authkey().
 */
MP_EXPORT int mp_manager_new(const mp_manager_options *opts, mp_manager **ret);

/**
 * @brief Bind the manager's listening socket now (done by
 *        mp_manager_start() and mp_manager_serve_forever() when not yet
 *        done), so that mp_manager_address() is known before serving.
 * @return 0; `-EADDRINUSE`; `-EALREADY` when already listening or
 *         connected; `-EINVAL`; other socket errors as negative errno.
 */
MP_EXPORT int mp_manager_listen(mp_manager *m);

/**
 * @brief Fork the server process and connect to it (Python's
 *        `start()`). Registered types known now are served.
 * @return 0; `-EALREADY` when started or connected; errors of
 *         mp_manager_listen(); `-EAGAIN`/`-ENOMEM` when fork fails.
 */
MP_EXPORT int mp_manager_start(mp_manager *m);

/** A function run once in a started server before it serves (Python's
 *  `start(initializer, initargs)`). */
typedef void (*mp_manager_initializer)(void *arg);

/**
 * @brief mp_manager_start() that first runs @p init(@p arg) once in the
 *        server process, before the named objects are created and before
 *        any client is served (Python's `start(initializer, initargs)`).
 *
 * @p init runs in the forked server (a copy of the caller's memory: what it
 * changes is the server's); @p arg is passed as is. It must return: the
 * starter's mp_manager_start_with() waits for the server's first answer.
 * @return as mp_manager_start(); `-EINVAL` for a NULL @p init.
 */
MP_EXPORT int mp_manager_start_with(mp_manager *m, mp_manager_initializer init, void *arg);

/**
 * @brief Serve in the calling process until a client calls
 *        mp_manager_shutdown() (Python's `get_server().serve_forever()`).
 *        Blocks; returns after every client thread has ended.
 * @return 0 after a shutdown request; errors of mp_manager_listen().
 */
MP_EXPORT int mp_manager_serve_forever(mp_manager *m);

/**
 * @brief Connect to a server already running at the options' address
 *        (Python's `connect()`), authenticating with the options' key.
 * @return 0; `-EACCES` when a key is refused (either side); `-EUSERS` when
 *         the server's client slots (#mp_manager_options.max_clients) all
 *         hold authenticated clients; `-ECONNREFUSED` or `-ENOENT` when
 *         nothing listens there; `-ETIMEDOUT` when the server does not
 *         complete the handshake within 30 s; `-EALREADY`; `-EINVAL`.
 */
MP_EXPORT int mp_manager_connect(mp_manager *m);

/**
 * @brief The address the manager listens on or is connected to, as
 *        accepted by #mp_manager_options.address (`"127.0.0.1:40123"`,
 *        `"unix:/tmp/mp-Xa12/manager"`).
 * @return its length; `-EMSGSIZE` when @p cap is too small; `-ENOTCONN`
 *         before listen/start/connect; `-EINVAL`.
 */
MP_EXPORT ssize_t mp_manager_address(mp_manager *m, char *buf, size_t cap);

/**
 * @brief The server's process id for a started manager.
 * @return the pid; `-ECHILD` when this process did not start it (also in
 *         its children); `-EINVAL`.
 */
MP_EXPORT int mp_manager_pid(mp_manager *m);

/**
 * @brief Stop the server (Python's `shutdown()`).
 *
 * In the process that started it: the server is told to end, is killed if
 * it has not ended within 5 s, and is reaped; its socket and directory are
 * removed. On a connected handle: asks the server to shut down (a standalone
 * server's mp_manager_serve_forever() returns). The handle stays valid for
 * mp_manager_free() only.
 * @return 0; `-EPIPE` when the server was already gone; `-ECHILD` in a child
 *         of the starter; `-ENOTCONN` when not started or connected;
 *         `-EINVAL`.
 */
MP_EXPORT int mp_manager_shutdown(mp_manager *m);

/**
 * @brief Free the handle: a started server is shut down first (in the
 *        starting process); the connection is closed.
 * @return 0; 0 for NULL. Proxies of the manager must not be used afterwards.
 */
MP_EXPORT int mp_manager_free(mp_manager *m);

/* Custom types (Python's BaseManager.register). */

/** Make an instance from the creation arguments (a list): store it in
 *  `*self` and return 0, or return a negative errno. */
typedef int (*mp_manager_constructor)(const mp_obj *args, void **self);
/** Free an instance; may be NULL. */
typedef void (*mp_manager_destructor)(void *self);
/** A method: read the arguments (a list), store a new value in `*result`
 *  (or leave it NULL for nil) and return 0, or return a negative errno,
 *  which the caller receives. */
typedef int (*mp_manager_method)(void *self, const mp_obj *args, mp_obj **result);

/** One exposed method of a registered type. */
typedef struct mp_manager_method_def {
  const char *name;       /**< the name clients call it by */
  mp_manager_method func; /**< runs in the server */
} mp_manager_method_def;

/**
 * @brief Register a type its clients can create by name (Python's
 *        `BaseManager.register(typeid, callable)`), for every server this
 *        process starts or serves afterwards.
 *
 * Registration must happen before mp_manager_start() (the server is forked
 * and inherits the table) or mp_manager_serve_forever(); a remote server
 * needs the same registration compiled into it. The strings and the table
 * are borrowed for the life of the process. Methods run in the server, one
 * at a time. Not thread-safe against a concurrent start.
 * @param name up to 63 bytes; not one of the built-in type names.
 * @return 0; `-EEXIST` when the name is taken; `-ENOSPC` after 64 types;
 *         `-EINVAL` for NULL or empty names, a NULL constructor or method,
 *         or a NULL @p methods with a non-zero @p n.
 */
MP_EXPORT int mp_manager_register(const char *name, mp_manager_constructor ctor,
                                  mp_manager_destructor dtor, const mp_manager_method_def *methods,
                                  size_t n);

/** A function a managed Pool runs (see mp_manager_pool()): read the
 *  arguments (a list), store a new value in `*result` (or leave it NULL for
 *  nil) and return a non-negative status, or return a negative errno, which
 *  the caller receives. Runs in a pool worker, a fork of the server. */
typedef int (*mp_manager_function)(const mp_obj *args, mp_obj **result, void *ctx);

/**
 * @brief Register a function the server's managed Pools can run, by name
 *        (a client cannot send code: it names a function of the server
 *        program), for every server this process starts or serves
 *        afterwards.
 *
 * Register before mp_manager_start() (the server is forked and inherits
 * the table) or mp_manager_serve_forever(); a remote server needs the same
 * registration compiled into it. @p name is copied; @p ctx is passed to
 * every call as is, so it must be meaningful in a pool worker (a global,
 * or memory that existed when the server started). Process-wide, like
 * mp_manager_register(); not thread-safe against a concurrent start.
 * @param name 1..63 bytes.
 * @return 0; `-EEXIST` when the name is taken; `-ENOSPC` after 64
 *         functions; `-EINVAL` for a NULL, empty or too long name or a NULL
 *         @p fn.
 */
MP_EXPORT int mp_manager_register_function(const char *name, mp_manager_function fn, void *ctx);

/**
 * @brief Create an object in the server by type name: a registered type or
 *        one of `dict`, `list`, `Namespace`, `Queue`, `Lock`, `RLock`,
 *        `Event`, `Semaphore`, `BoundedSemaphore`, `Condition`, `Value`,
 *        `Array`, `JoinableQueue`, `set`, `Barrier`, `Pool` (their arguments as the
 *        typed creators below).
 * @param args the constructor's arguments, a list; NULL for none.
 * @return 0; `-ENOENT` for an unknown type; the constructor's error;
 *         the common errors.
 */
MP_EXPORT int mp_manager_create(mp_manager *m, const char *type, const mp_obj *args,
                                mp_proxy **ret);

/**
 * @brief Give the server an object every client can ask for by name
 *        (Python's `BaseManager.register('get_queue', callable=lambda:
 *        queue)` on the server side).
 *
 * The server creates the object once, as it starts (mp_manager_start(),
 * mp_manager_serve_forever()), from @p type and @p args as
 * mp_manager_create() would, before it takes any client; every client's
 * mp_manager_get(@p name) then reaches that same object. It lives until
 * the server ends. Call before the server listens.
 * @param name 1..63 bytes. @param type a built-in type name or one
 *        registered with mp_manager_register(). @param args a list or NULL;
 *        copied.
 * @return 0; `-EEXIST` when @p name is registered on this handle;
 *         `-ENOENT` for an unknown type; `-EINVAL` for bad names or
 *         arguments a built-in type refuses; `-EALREADY` once listening,
 *         started or connected; `-ENOMEM`. Not thread-safe (set up first).
 */
MP_EXPORT int mp_manager_register_object(mp_manager *m, const char *name, const char *type,
                                         const mp_obj *args);

/**
 * @brief A proxy to the object the server holds under @p name (Python's
 *        `m.get_queue()` after `register('get_queue')` and connect()).
 *
 * Every call, from any client, reaches the same object; its typed proxy
 * calls (mp_queue_proxy_put() on a `Queue` ...) work on it. Freeing this
 * proxy never releases the object (the name holds it until the server
 * ends). Blocks for one round trip.
 * @return 0; `-ENOENT` when no object has that name (KeyError); `-EINVAL`
 *         for a NULL, empty or longer than 63 bytes @p name; the common
 *         errors.
 */
MP_EXPORT int mp_manager_get(mp_manager *m, const char *name, mp_proxy **ret);

/**
 * @brief Publish the object of @p p under @p name, so that any client's
 *        mp_manager_get(@p name) reaches it (an existing object registered
 *        by name, as `register('name', callable=lambda: obj)`).
 *
 * From then on the object lives until the server ends: its creator's
 * mp_proxy_free() no longer releases it. Blocks for one round trip.
 * @return 0; `-EEXIST` when the name is taken (the old object stays);
 *         `-EINVAL` for a bad name; the common errors.
 */
MP_EXPORT int mp_proxy_publish(mp_proxy *p, const char *name);

/** @brief A new shared dict (Python's `Manager().dict()`), a copy of
 *         @p init (a dict) or empty when NULL. @return as mp_manager_create(). */
MP_EXPORT int mp_manager_dict(mp_manager *m, const mp_obj *init, mp_proxy **ret);
/** @brief A new shared list (`Manager().list()`), a copy of @p init (a
 *         list) or empty when NULL. @return as mp_manager_create(). */
MP_EXPORT int mp_manager_list(mp_manager *m, const mp_obj *init, mp_proxy **ret);
/** @brief A new Namespace (`Manager().Namespace()`). */
MP_EXPORT int mp_manager_namespace(mp_manager *m, mp_proxy **ret);
/** @brief A new Queue (`Manager().Queue(maxsize)`); @p maxsize <= 0 is
 *         unbounded. */
MP_EXPORT int mp_manager_queue(mp_manager *m, int64_t maxsize, mp_proxy **ret);
/** @brief A new Lock (`Manager().Lock()`); use the mp_lock_proxy calls. */
MP_EXPORT int mp_manager_lock(mp_manager *m, mp_proxy **ret);
/** @brief A new RLock, owned per connection (each process, or each
 *         mp_manager handle); use the mp_lock_proxy calls. */
MP_EXPORT int mp_manager_rlock(mp_manager *m, mp_proxy **ret);
/** @brief A new Event (`Manager().Event()`). */
MP_EXPORT int mp_manager_event(mp_manager *m, mp_proxy **ret);
/** @brief A new Semaphore (@p bounded: BoundedSemaphore) with @p value
 *         (>= 0, else `-EINVAL`); use the mp_lock_proxy calls. */
MP_EXPORT int mp_manager_semaphore(mp_manager *m, int64_t value, int bounded, mp_proxy **ret);
/** @brief A new Condition with its own RLock (`Manager().Condition()`). */
MP_EXPORT int mp_manager_condition(mp_manager *m, mp_proxy **ret);
/** @brief A new Value holding a copy of @p init (nil when NULL). */
MP_EXPORT int mp_manager_value(mp_manager *m, const mp_obj *init, mp_proxy **ret);
/** @brief A new Array: a fixed-length copy of the list @p init. */
MP_EXPORT int mp_manager_array(mp_manager *m, const mp_obj *init, mp_proxy **ret);

/**
 * @brief Call a method by name on the object (Python's
 *        `proxy._callmethod(name, args)`); the one call behind every typed
 *        proxy call below, and the way to call registered types' methods.
 * @param args a list, or NULL for none; borrowed.
 * @param timeout for the built-in blocking methods, how long the server
 *        waits (ignored by the others).
 * @param[out] ret the result (a new value, nil when the method gives none);
 *        may be NULL to drop it; written only on success.
 * @return the method's non-negative status (0 for most); `-EOPNOTSUPP` when
 *         the object has no such method; the method's own error; the common
 *         errors.
 */
MP_EXPORT int mp_proxy_call(mp_proxy *p, const char *method, const mp_obj *args, double timeout,
                            mp_obj **ret);

/** @brief The type name the object was created with (borrowed). @return 0;
 *         `-EINVAL`. */
MP_EXPORT int mp_proxy_type(mp_proxy *p, const char **ret);

/**
 * @brief Free the proxy. In the process that created the object, the
 *        object is also released in the server (best effort: a dead server
 *        is not an error). @return 0; 0 for NULL.
 */
MP_EXPORT int mp_proxy_free(mp_proxy *p);

/* dict (Python's DictProxy). Keys and values are borrowed. */

/** @brief `d[key] = value`. @return 0; the common errors. */
MP_EXPORT int mp_dict_proxy_set(mp_proxy *d, const mp_obj *key, const mp_obj *value);
/** @brief `d[key]`. @return 0; `-ENOENT` when absent (KeyError). */
MP_EXPORT int mp_dict_proxy_get(mp_proxy *d, const mp_obj *key, mp_obj **ret);
/** @brief `del d[key]`. @return 0; `-ENOENT` when absent. */
MP_EXPORT int mp_dict_proxy_del(mp_proxy *d, const mp_obj *key);
/** @brief `d.pop(key)`. @return 0; `-ENOENT` when absent. */
MP_EXPORT int mp_dict_proxy_pop(mp_proxy *d, const mp_obj *key, mp_obj **ret);
/** @brief `key in d`. @return 1 or 0; the common errors. */
MP_EXPORT int mp_dict_proxy_contains(mp_proxy *d, const mp_obj *key);
/** @brief `len(d)`. @return the length; the common errors. */
MP_EXPORT ssize_t mp_dict_proxy_len(mp_proxy *d);
/** @brief `list(d.keys())`, a new list. */
MP_EXPORT int mp_dict_proxy_keys(mp_proxy *d, mp_obj **ret);
/** @brief `list(d.items())`, a new list of `[key, value]` lists. */
MP_EXPORT int mp_dict_proxy_items(mp_proxy *d, mp_obj **ret);
/** @brief `d.copy()`: a new local dict with the contents. */
MP_EXPORT int mp_dict_proxy_copy(mp_proxy *d, mp_obj **ret);
/** @brief `d.update(other)` from a local dict. @return 0; `-EDOM` when
 *         @p other is not a dict. */
MP_EXPORT int mp_dict_proxy_update(mp_proxy *d, const mp_obj *other);
/** @brief `d.clear()`. */
MP_EXPORT int mp_dict_proxy_clear(mp_proxy *d);

/** @brief `list(d.values())`, a new list. */
MP_EXPORT int mp_dict_proxy_values(mp_proxy *d, mp_obj **ret);
/** @brief `d.popitem()`: remove the entry set last and return it as a new
 *         `[key, value]` list. @return 0; `-ENOENT` when the dict is empty
 *         (KeyError); the common errors. */
MP_EXPORT int mp_dict_proxy_popitem(mp_proxy *d, mp_obj **ret);
/** @brief `d.setdefault(key, dflt)`: the value of @p key, after setting it
 *         to @p dflt when absent (one step in the server). @return 0; the
 *         common errors. */
MP_EXPORT int mp_dict_proxy_setdefault(mp_proxy *d, const mp_obj *key, const mp_obj *dflt,
                                       mp_obj **ret);
/** @brief `list(reversed(d))`: the keys, last set first, a new list. */
MP_EXPORT int mp_dict_proxy_reversed(mp_proxy *d, mp_obj **ret);
/** @brief `d | other`: a new local dict, the shared dict's entries updated
 *         by @p other's; the shared dict is unchanged. @return 0; `-EDOM`
 *         when @p other is not a dict (TypeError). */
MP_EXPORT int mp_dict_proxy_or(mp_proxy *d, const mp_obj *other, mp_obj **ret);
/** @brief `d |= other`: update from a dict or a list of `[key, value]`
 *         pairs, all checked before any entry changes. @return 0; `-EDOM`
 *         for anything else (TypeError, ValueError). */
MP_EXPORT int mp_dict_proxy_ior(mp_proxy *d, const mp_obj *other);

/** The state of an iteration over a shared dict's keys: start it with
 *  #MP_DICT_ITER_INIT. */
typedef struct mp_dict_iter {
  int64_t pos; /**< the next key's position */
  int64_t len; /**< the dict's length when the iteration began; -1 before */
} mp_dict_iter;
/** A fresh #mp_dict_iter. */
#define MP_DICT_ITER_INIT {0, -1}

/**
 * @brief The next key of `for key in d:`, in insertion order, one round
 *        trip per key (Python's proxy iterates the same way).
 * @param[out] key a new value, written only when 1 is returned.
 * @return 1 with a key; 0 at the end (StopIteration); `-ESTALE` when the
 *         dict's length changed since the iteration began (Python's
 *         `RuntimeError: dictionary changed size during iteration`; start a
 *         new one); `-EINVAL` for a NULL or bad @p it; the common errors.
 */
MP_EXPORT int mp_dict_proxy_next(mp_proxy *d, mp_dict_iter *it, mp_obj **key);

/** @brief A new shared dict with each item of the list @p keys as a key,
 *         each set to a copy of @p value (nil when NULL) (Python's
 *         `Manager().dict(dict.fromkeys(keys, value))`). @return 0; `-EDOM`
 *         when @p keys is not a list; as mp_manager_create(). */
MP_EXPORT int mp_manager_dict_fromkeys(mp_manager *m, const mp_obj *keys, const mp_obj *value,
                                       mp_proxy **ret);

/* list (Python's ListProxy). Negative indexes count from the end. */

/** @brief `l.append(v)`. */
MP_EXPORT int mp_list_proxy_append(mp_proxy *l, const mp_obj *v);
/** @brief `l.extend(items)` from a local list; `-EDOM` when not a list. */
MP_EXPORT int mp_list_proxy_extend(mp_proxy *l, const mp_obj *items);
/** @brief `l[i]`. @return 0; `-ERANGE` out of range (IndexError). */
MP_EXPORT int mp_list_proxy_get(mp_proxy *l, int64_t i, mp_obj **ret);
/** @brief `l[i] = v`. @return 0; `-ERANGE`. */
MP_EXPORT int mp_list_proxy_set(mp_proxy *l, int64_t i, const mp_obj *v);
/** @brief `len(l)`. @return the length. */
MP_EXPORT ssize_t mp_list_proxy_len(mp_proxy *l);
/** @brief `l.pop(i)` (-1: the last). @return 0; `-ERANGE` (also when empty). */
MP_EXPORT int mp_list_proxy_pop(mp_proxy *l, int64_t i, mp_obj **ret);
/** @brief `l.insert(i, v)`; an index past either end inserts at that end. */
MP_EXPORT int mp_list_proxy_insert(mp_proxy *l, int64_t i, const mp_obj *v);
/** @brief `l.remove(v)`: the first equal item. @return 0; `-ENOENT` when
 *         absent (ValueError). */
MP_EXPORT int mp_list_proxy_remove(mp_proxy *l, const mp_obj *v);
/** @brief `l.index(v)`. @return the index; `-ENOENT` when absent. */
MP_EXPORT ssize_t mp_list_proxy_index(mp_proxy *l, const mp_obj *v);
/** @brief `l.count(v)`. @return the count. */
MP_EXPORT ssize_t mp_list_proxy_count(mp_proxy *l, const mp_obj *v);
/** @brief `l[:]`: a new local list with the contents. */
MP_EXPORT int mp_list_proxy_copy(mp_proxy *l, mp_obj **ret);

/** A slice bound or step left out (Python's `l[:3]`, `l[::2]`). */
#define MP_SLICE_NONE INT64_MIN

/** @brief `l[start:stop:step]`, a new local list, by Python's rules (any
 *         bound is clipped; #MP_SLICE_NONE for an omitted one). @return 0;
 *         `-EINVAL` for a step of 0 (ValueError); the common errors. */
MP_EXPORT int mp_list_proxy_slice(mp_proxy *l, int64_t start, int64_t stop, int64_t step,
                                  mp_obj **ret);
/** @brief `l[start:stop:step] = items` (a list): with step 1 (or omitted)
 *         the slice is replaced by any number of items; an extended slice
 *         takes exactly as many as it has. @return 0; `-EINVAL` for a step
 *         of 0 or a wrong count (ValueError); `-EDOM` when @p items is not
 *         a list (TypeError). */
MP_EXPORT int mp_list_proxy_set_slice(mp_proxy *l, int64_t start, int64_t stop, int64_t step,
                                      const mp_obj *items);
/** @brief `del l[start:stop:step]`. @return 0; `-EINVAL` for a step of 0. */
MP_EXPORT int mp_list_proxy_del_slice(mp_proxy *l, int64_t start, int64_t stop, int64_t step);
/** @brief `l *= n`: the items repeated @p n times in place (@p n <= 0
 *         empties it). @return 0; `-EMSGSIZE` when the result would exceed
 *         #MP_OBJ_MAX_ITEMS (the list is unchanged). */
MP_EXPORT int mp_list_proxy_imul(mp_proxy *l, int64_t n);
/** @brief `l.sort(reverse=...)`: stable; numbers by value, strings and
 *         bytes bytewise, lists item by item. @return 0; `-EDOM` when two
 *         items are not ordered (a string and a number, nil, dicts:
 *         TypeError), the list then unchanged. */
MP_EXPORT int mp_list_proxy_sort(mp_proxy *l, int reverse);
/** @brief `l.reverse()`. */
MP_EXPORT int mp_list_proxy_reverse(mp_proxy *l);
/** @brief `l.clear()`. */
MP_EXPORT int mp_list_proxy_clear(mp_proxy *l);

/* Namespace (Python's NamespaceProxy). */

/** @brief `ns.name = v`. */
MP_EXPORT int mp_namespace_proxy_set(mp_proxy *ns, const char *name, const mp_obj *v);
/** @brief `ns.name`. @return 0; `-ENOENT` when unset (AttributeError). */
MP_EXPORT int mp_namespace_proxy_get(mp_proxy *ns, const char *name, mp_obj **ret);
/** @brief `del ns.name`. @return 0; `-ENOENT` when unset. */
MP_EXPORT int mp_namespace_proxy_del(mp_proxy *ns, const char *name);

/* Queue. */

/** @brief `q.put(v, timeout=...)`. Blocks while full. @return 0;
 *         `-ETIMEDOUT` when still full at the deadline (Full). */
MP_EXPORT int mp_queue_proxy_put(mp_proxy *q, const mp_obj *v, double timeout);
/** @brief `q.get(timeout=...)`. Blocks while empty. @return 0;
 *         `-ETIMEDOUT` when still empty at the deadline (Empty). */
MP_EXPORT int mp_queue_proxy_get(mp_proxy *q, double timeout, mp_obj **ret);
/** @brief `q.qsize()`. @return the number of items. */
MP_EXPORT ssize_t mp_queue_proxy_qsize(mp_proxy *q);

/** @brief `q.empty()`. @return 1 or 0; the common errors. */
MP_EXPORT int mp_queue_proxy_empty(mp_proxy *q);
/** @brief `q.full()`: 1 when a bounded queue holds maxsize items, else 0. */
MP_EXPORT int mp_queue_proxy_full(mp_proxy *q);

/** @brief A new JoinableQueue (`Manager().JoinableQueue(maxsize)`): a Queue
 *         (the mp_queue_proxy calls work on it) that counts unfinished
 *         tasks: each put adds one, mp_queue_proxy_task_done() ends one.
 *         @p maxsize <= 0 is unbounded. @return as mp_manager_create(). */
MP_EXPORT int mp_manager_joinable_queue(mp_manager *m, int64_t maxsize, mp_proxy **ret);
/** @brief `q.task_done()`. @return 0; `-EOVERFLOW` when called more times
 *         than items were put (ValueError); `-EINVAL` for a plain Queue. */
MP_EXPORT int mp_queue_proxy_task_done(mp_proxy *q);
/** @brief `q.join()`: wait until every item put has been marked done.
 *         @return 0; `-ETIMEDOUT` at the deadline; `-EINVAL` for a plain
 *         Queue; the common errors. */
MP_EXPORT int mp_queue_proxy_join(mp_proxy *q, double timeout);

/* set (Python 3.14's SyncManager.set(); items as for dict keys). */

/** @brief A new shared set (`Manager().set(items)`) of the items of the
 *         list @p init (duplicates once), or empty when NULL. @return 0;
 *         `-EDOM` when @p init is not a list; as mp_manager_create(). */
MP_EXPORT int mp_manager_set(mp_manager *m, const mp_obj *init, mp_proxy **ret);
/** @brief `s.add(v)`. */
MP_EXPORT int mp_set_proxy_add(mp_proxy *s, const mp_obj *v);
/** @brief `s.discard(v)`: 0 also when absent. */
MP_EXPORT int mp_set_proxy_discard(mp_proxy *s, const mp_obj *v);
/** @brief `s.remove(v)`. @return 0; `-ENOENT` when absent (KeyError). */
MP_EXPORT int mp_set_proxy_remove(mp_proxy *s, const mp_obj *v);
/** @brief `v in s`. @return 1 or 0. */
MP_EXPORT int mp_set_proxy_contains(mp_proxy *s, const mp_obj *v);
/** @brief `len(s)`. */
MP_EXPORT ssize_t mp_set_proxy_len(mp_proxy *s);
/** @brief `s.pop()`: remove and return an item (the last added).
 *         @return 0; `-ENOENT` when empty (KeyError). */
MP_EXPORT int mp_set_proxy_pop(mp_proxy *s, mp_obj **ret);
/** @brief `s.clear()`. */
MP_EXPORT int mp_set_proxy_clear(mp_proxy *s);
/** @brief `list(s)`: the items in the order they were added, a new list. */
MP_EXPORT int mp_set_proxy_items(mp_proxy *s, mp_obj **ret);
/** @brief `s.update(items)` from a local list. @return 0; `-EDOM` when
 *         not a list. */
MP_EXPORT int mp_set_proxy_update(mp_proxy *s, const mp_obj *items);

/* Barrier (`Manager().Barrier(parties)`). */

/** @brief A new Barrier of @p parties (>= 1, else `-EINVAL`). */
MP_EXPORT int mp_manager_barrier(mp_manager *m, int parties, mp_proxy **ret);
/**
 * @brief `b.wait(timeout)`: wait until @p parties parties (any processes,
 *        any clients) have called it.
 * @return the party's arrival index, 0 .. parties-1, distinct within a
 *         cycle; `-ECANCELED` when the barrier is or becomes broken
 *         (Python's BrokenBarrierError): aborted, reset while waiting, or
 *         a party's timeout passed (that party gets `-ECANCELED` too). A
 *         party whose client dies while it waits breaks the barrier as a
 *         timeout would, so the others do not wait for it forever.
 */
MP_EXPORT int mp_barrier_proxy_wait(mp_proxy *b, double timeout);
/** @brief `b.abort()`: break it; waiters and later waits get `-ECANCELED`. */
MP_EXPORT int mp_barrier_proxy_abort(mp_proxy *b);
/** @brief `b.reset()`: empty and unbroken; parties waiting get `-ECANCELED`. */
MP_EXPORT int mp_barrier_proxy_reset(mp_proxy *b);
/** @brief `b.broken`. @return 1 or 0. */
MP_EXPORT int mp_barrier_proxy_broken(mp_proxy *b);
/** @brief `b.n_waiting`. @return the count. */
MP_EXPORT int mp_barrier_proxy_n_waiting(mp_proxy *b);
/** @brief `b.parties`. @return the count. */
MP_EXPORT int mp_barrier_proxy_parties(mp_proxy *b);

/* Pool (`Manager().Pool(processes)`): a pool of worker processes living
 * in the server, running functions registered there by name. */

/**
 * @brief A new Pool of @p processes workers in the server (0: the server's
 *        CPU count, at most 1024), as Python's `Manager().Pool(n)`.
 *
 * The workers are forks of the server: they run the functions registered
 * with mp_manager_register_function() before the server started. A task's
 * arguments and result travel encoded as values. A worker that dies fails
 * only its task (`-ECONNABORTED`) and is replaced; the pool goes on. The
 * pool ends (its workers are killed) when its creator frees the proxy (or
 * exits), or with the server. Blocks for one round trip.
 * @return 0; `-EINVAL` for a negative or too large @p processes; `-EAGAIN`,
 *         `-EMFILE` when the server cannot start a worker; the common
 *         errors.
 */
MP_EXPORT int mp_manager_pool(mp_manager *m, int processes, mp_proxy **ret);
/**
 * @brief `pool.apply(f, args)`: run the function registered as @p name with
 *        @p args in a worker and wait for its result.
 *
 * Blocks until the result, for at most @p timeout seconds (house rule:
 * #MP_FOREVER waits, 0 or negative looks once, NaN is `-EINVAL`). Another
 * client's calls go on meanwhile. When the caller gives up (a timeout, or
 * its process dies) the task still runs; its result is dropped. Safe from
 * several threads (calls on one connection take turns) and from forked
 * children (they connect anew).
 * @param args a list (the arguments), or NULL for none; borrowed.
 * @param[out] ret the function's result (nil when it gave none); may be
 *        NULL; written only on success.
 * @return the function's non-negative status; its negative status;
 *         `-ENOENT` when no function has that name; `-ECONNABORTED` when
 *         the worker died running it; `-ETIMEDOUT`; `-EPIPE` after
 *         mp_pool_proxy_close() or mp_pool_proxy_terminate();
 *         `-ESHUTDOWN` when terminated while it ran; `-EINVAL` for a NULL
 *         @p name, a non-list @p args or a proxy that is not a Pool; the
 *         common errors.
 */
MP_EXPORT int mp_pool_proxy_apply(mp_proxy *p, const char *name, const mp_obj *args,
                                  double timeout, mp_obj **ret);
/**
 * @brief `pool.map(f, items, chunksize)`: call the function registered as
 *        @p name once per item, with the one-item list `[item]` as its
 *        arguments, in the workers, and gather the results in item order.
 *
 * The items are sent in chunks of @p chunksize (0: Python's default, about
 * four chunks per worker); a chunk is one task. Blocking, timeout, threads
 * and fork as mp_pool_proxy_apply(); the timeout covers the whole map.
 * @param items a list; borrowed.
 * @param[out] ret a new list of the results (nil for a call that gave
 *        none); may be NULL; written only on success.
 * @return 0; the first failure in item order: a function's negative
 *         status, `-ECONNABORTED` for a chunk whose worker died; `-ENOENT`;
 *         `-ETIMEDOUT`; `-EPIPE`; `-ESHUTDOWN`; `-EINVAL` (also for a NULL
 *         or non-list @p items); `-EMSGSIZE` when the results do not fit in
 *         one message; the common errors.
 */
MP_EXPORT int mp_pool_proxy_map(mp_proxy *p, const char *name, const mp_obj *items,
                                size_t chunksize, double timeout, mp_obj **ret);
/** @brief `pool.close()`: take no more tasks (later calls get `-EPIPE`);
 *         tasks already given finish. @return 0; the common errors. */
MP_EXPORT int mp_pool_proxy_close(mp_proxy *p);
/** @brief `pool.terminate()`: kill the workers now; the calls waiting on
 *         their tasks get `-ESHUTDOWN`, later calls `-EPIPE`. Blocks until
 *         the workers are gone. @return 0; the common errors. */
MP_EXPORT int mp_pool_proxy_terminate(mp_proxy *p);

/* Lock, RLock, Semaphore, BoundedSemaphore, Condition (AcquirerProxy). */

/** @brief `acquire(timeout=...)`. @return 0; `-ETIMEDOUT` (False). */
MP_EXPORT int mp_lock_proxy_acquire(mp_proxy *l, double timeout);
/** @brief `release()`. @return 0; `-EPERM` for a Lock that is not held or
 *         an RLock/Condition this connection does not hold; `-EOVERFLOW`
 *         beyond a BoundedSemaphore's initial value. */
MP_EXPORT int mp_lock_proxy_release(mp_proxy *l);

/* Event. */

/** @brief `e.set()`. */
MP_EXPORT int mp_event_proxy_set(mp_proxy *e);
/** @brief `e.clear()`. */
MP_EXPORT int mp_event_proxy_clear(mp_proxy *e);
/** @brief `e.is_set()`. @return 1 or 0. */
MP_EXPORT int mp_event_proxy_is_set(mp_proxy *e);
/** @brief `e.wait(timeout)`. @return 0 once set; `-ETIMEDOUT`. */
MP_EXPORT int mp_event_proxy_wait(mp_proxy *e, double timeout);

/* Condition (acquire and release with the mp_lock_proxy calls). */

/** @brief `c.wait(timeout)`: release the lock, wait for a notify, re-take
 *         the lock (also after a timeout). @return 0 when notified;
 *         `-ETIMEDOUT`; `-EPERM` when this connection does not hold it. */
MP_EXPORT int mp_condition_proxy_wait(mp_proxy *c, double timeout);
/** @brief `c.notify(n)`. @return 0; `-EPERM` when not held. */
MP_EXPORT int mp_condition_proxy_notify(mp_proxy *c, int n);
/** @brief `c.notify_all()`. @return 0; `-EPERM` when not held. */
MP_EXPORT int mp_condition_proxy_notify_all(mp_proxy *c);

/* Value and Array. */

/** @brief `v.value`. */
MP_EXPORT int mp_value_proxy_get(mp_proxy *v, mp_obj **ret);
/** @brief `v.value = x`. */
MP_EXPORT int mp_value_proxy_set(mp_proxy *v, const mp_obj *x);
/** @brief `a[i]`. @return 0; `-ERANGE`. */
MP_EXPORT int mp_array_proxy_get(mp_proxy *a, int64_t i, mp_obj **ret);
/** @brief `a[i] = x`. @return 0; `-ERANGE`. */
MP_EXPORT int mp_array_proxy_set(mp_proxy *a, int64_t i, const mp_obj *x);
/** @brief `len(a)`. */
MP_EXPORT ssize_t mp_array_proxy_len(mp_proxy *a);

/* ------------------------------------------------- Listener and Client */

/** A listening socket whose accepted connections are authenticated
 *  (Python's `multiprocessing.connection.Listener`). */
typedef struct mp_listener mp_listener;

/**
 * @brief Listen at @p address with an optional key (Python's
 *        `Listener(address, authkey=...)`).
 *
 * @p address is `"unix:/path"` or `"/path"` for a Unix socket
 * (`SOCK_SEQPACKET`, a pipe's framing, descriptors can be passed), made
 * with mode 0600, whose path must not exist; `"unix:@name"` or `"@name"`
 * for a Unix socket in Linux's abstract namespace (Python's `"\0name"`: the
 * name is the bytes after the `@`; it has no file, so nothing to remove and
 * no permissions: any process of the network namespace may connect, so give
 * it a key; a file path starting with `@` is spelled `"unix:./@x"`); or
 * `"host:port"` /
 * `"[v6]:port"` for TCP, where port 0 lets the kernel choose one
 * (mp_listener_address() tells it); `"*:port"` listens on every address,
 * IPv6 and IPv4 alike (`[::]`, or `0.0.0.0` without IPv6). Accepted
 * connections are ordinary
 * #mp_connection handles; over TCP they are stream connections (see
 * mp/connection.h: the same message semantics, no descriptor passing).
 * @param authkey NULL for no authentication, as Python's `authkey=None`
 *                (Listener and Client never default to the process's key:
 *                pass mp_process_authkey()'s to use it); else 0..1024 bytes
 *                (@p keylen): an empty key (non-NULL, 0 bytes) is a key like
 *                any other, and a client must prove it (Python's `Client`
 *                with `authkey=b''` does; Python's `Listener` treats `b''`
 *                as no key, a quirk not copied).
 * @return 0; `-EADDRINUSE`; `-EINVAL` for a malformed address or key;
 *         `-ENOMEM`; socket errors (`-EADDRNOTAVAIL`; `-EACCES` for a
 *         privileged port or a directory that cannot be written).
 * Thread safety: one thread at a time per listener.
 */
MP_EXPORT int mp_listener_new(const char *address, const void *authkey, size_t keylen,
                              mp_listener **ret);
/**
 * @brief Accept one connection and authenticate it (Python's `accept()`).
 *
 * Waits up to @p timeout seconds for an authenticated client; signals do not
 * end the wait. Handshakes run side by side: every client that connects is
 * taken at once and its handshake goes on, without waiting, whenever its
 * messages arrive, during this call and later ones; the first client to
 * finish is returned. Each client has 5 seconds from its connect to finish
 * its handshake, whatever the callers' timeouts, so a silent client holds
 * neither the listener nor the clients behind it. #MP_NOWAIT never waits: it
 * takes new clients, moves their handshakes on, and returns one only if it
 * finished. When a client's handshake fails, the call during which it failed
 * reports it (and goes no further).
 * @param[out] ret the connection (over TCP a stream connection), written
 *             only on success.
 * @return 0; `-ETIMEDOUT` when no client finished its handshake in time;
 *         `-EACCES` when a client's key was wrong, it did not finish its
 *         handshake within its 5 s or it does not speak the protocol (the
 *         listener stays usable); `-EPIPE` when a client left during its
 *         handshake (as a client without a key does when the listener has
 *         one); `-EINVAL`.
 */
MP_EXPORT int mp_listener_accept(mp_listener *l, double timeout, mp_connection **ret);
/** @brief The bound address, as for mp_manager_address(), with the port the
 *  kernel chose for a TCP port 0 (`"127.0.0.1:40123"`).
 *  @return its length; `-EMSGSIZE` when @p cap is too small; `-EINVAL`. */
MP_EXPORT ssize_t mp_listener_address(mp_listener *l, char *buf, size_t cap);
/** @brief Close the listener (and remove its Unix socket); the connections
 *  it accepted stay open, those still in their handshake are closed.
 *  @return 0; 0 for NULL; `-EINVAL` for a bad handle, such as one already
 *  closed (its memory is kept dead rather than freed, so a second close is
 *  detected safely). */
MP_EXPORT int mp_listener_close(mp_listener *l);
/**
 * @brief Connect to a listener (Python's `Client(address, authkey=...)`).
 *
 * @p address as for mp_listener_new(); a TCP address gives a stream
 * connection. Both sides must have the same key, or both none: a client with
 * a key refuses a listener without one. The connect and the handshake share
 * one deadline, @p timeout seconds. An empty key (non-NULL, @p keylen 0)
 * is a key, distinct from none.
 * @return 0; `-EACCES` when a key is refused (either way); `-ECONNREFUSED`
 *         (TCP or Unix) or `-ENOENT` (Unix) when nothing listens;
 *         `-ETIMEDOUT`; `-EINVAL` for a malformed address or key.
 */
MP_EXPORT int mp_client_connect(const char *address, const void *authkey, size_t keylen,
                                double timeout, mp_connection **ret);

/**
 * @brief mp_listener_new() for Python peers: accepted connections speak
 *        Python's `multiprocessing.connection` wire, so a Python program's
 *        `Client(address, authkey=key)` connects to it.
 *
 * The differences from mp_listener_new(): Unix sockets are `SOCK_STREAM`
 * (as Python's `AF_UNIX` family; `"@name"` is Python's `"\0name"`), and
 * every accepted connection is a stream connection with Python's framing
 * (#MP_CONNECTION_PYTHON, see "Talking to Python" in mp/connection.h). With
 * a key (empty included), each connection runs Python's handshake, in
 * Python's order and words: the listener sends `#CHALLENGE#` and a random
 * message, checks the client's HMAC of it and answers `#WELCOME#` or
 * `#FAILURE#`, then answers the client's challenge the same way. It
 * challenges as Python 3.12 does (`{sha256}`-prefixed message, HMAC-SHA256
 * answer) and accepts the raw HMAC-MD5 answer of Python 3.11 and older, so
 * both generations connect (tested against the python3 found at test
 * time). With NULL no handshake runs (Python's `authkey=None`). A libmp
 * mp_client_connect_python() connects too; a plain mp_client_connect() does
 * not (-EACCES or a timeout), nor the other way round.
 *
 * Accepting, timeouts and errors are those of mp_listener_accept(), which
 * serves both kinds of listener: `-EACCES` when the client's key is wrong
 * (it is sent `#FAILURE#`) or it does not speak the handshake within 5 s.
 * @return as mp_listener_new().
 */
MP_EXPORT int mp_listener_new_python(const char *address, const void *authkey, size_t keylen,
                                     mp_listener **ret);

/**
 * @brief mp_client_connect() to a Python listener (Python's
 *        `multiprocessing.connection.Listener`) or to
 *        mp_listener_new_python().
 *
 * Connects a stream socket (`SOCK_STREAM` for Unix addresses too) and, with
 * a key, runs Python's `Client` handshake: answers the listener's challenge
 * (raw HMAC-MD5 for Python 3.11 and older, `{sha256}`-prefixed HMAC-SHA256
 * for 3.12 and later, as the challenge asks), waits for `#WELCOME#`, then
 * challenges the listener (as 3.12 does, accepting a 3.11 listener's MD5
 * answer) and sends it `#WELCOME#` or `#FAILURE#`. With NULL no handshake
 * runs. The connection speaks Python's framing (#MP_CONNECTION_PYTHON).
 * Note that a Python listener made with `authkey=b''` runs no handshake:
 * connect to it with NULL. A client with a key facing a listener without
 * one waits for a challenge that never comes: `-ETIMEDOUT` at the deadline
 * (Python's `Client` waits forever there).
 * @return 0; `-EACCES` when either side's key is refused (or the listener
 *         sends something that is not Python's handshake); otherwise as
 *         mp_client_connect().
 */
MP_EXPORT int mp_client_connect_python(const char *address, const void *authkey, size_t keylen,
                                       double timeout, mp_connection **ret);

#ifdef __cplusplus
}
#endif

#endif /* MP_MANAGER_H */
