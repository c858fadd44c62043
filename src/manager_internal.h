/* SPDX-License-Identifier: MIT */
/*
 * Internals of the Manager area, shared by its files:
 *   manager_transport.c   addresses, sockets, stream frames, the handshake
 *   manager_channel.c     the shared channel in the family heap: its protocol
 *                         comment, the server's half and the client's half
 *   manager_server.c      the server: object table, dispatch of a request,
 *                         one thread per client, connection bounds, serve()
 *   manager_types.c       built-in kinds' names, registered types and functions
 *   manager_containers.c  methods of dict, list, Namespace, set
 *   manager_builtin.c     creation and dispatch of the built-in types; methods
 *                         of Queue, the locks, Condition, Event, Barrier, Value
 *   manager_pool.c        a managed Pool's methods and its workers' tasks
 *   manager.c             the handle: listen, start, serve, connect, call,
 *                         shutdown, free
 *   manager_proxy.c       proxies and their typed calls
 *   listener.c            Listener and Client
 *
 * Server state (struct server), in the server process only:
 *   mu          one mutex over everything below; every request runs under it,
 *               and blocking methods wait on cv, which is broadcast whenever a
 *               waitable object changes (simple, and fair enough for a server
 *               whose cost is the socket round trip).
 *   objs        the objects by id (id = index + 1; ids are never reused).
 *   clients     the live client threads (detached; each frees its own entry).
 *   stopping    set by a shutdown request; ends every wait with -EPIPE.
 * An object freed while a thread waits on it is only marked `released`; the
 * last waiter (busy count) frees it. A client that disconnects releases the
 * locks, RLocks and Conditions it held, so a dead process never leaves a
 * manager lock held; and a request whose client is gone takes nothing
 * (mp__client_gone: looked at before each take and after each wait).
 *   authed, pending  connections past the handshake and in it (srv_accept
 *               bounds both); each object's `holder` is the connection that
 *               created it, the only one that may release it.
 */
#ifndef MP_MANAGER_INTERNAL_H
#define MP_MANAGER_INTERNAL_H

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <string.h>
#include <sys/socket.h>

#include "internal.h"

/* ------------------------------------------- addresses, sockets, frames */

struct addr {
  struct sockaddr_storage ss;
  socklen_t len;
  int family;
};

#define MP__KEY_MAX 1024

/* Parse "unix:/path", "/path", "unix:@name", "@name" or "host:port". */
int mp__addr_parse(const char *s, struct addr *a);
/* Format an address as mp__addr_parse() reads it. */
ssize_t mp__addr_format(const struct addr *a, char *buf, size_t cap);
/* A Unix socket's file, or "" for an abstract name. */
const char *mp__addr_path(const struct addr *a);
/* A listening socket of `type` at a (Unix: mode 0600); the bound address is
 * written back to *a. The descriptor or -errno. */
int mp__listen_at(struct addr *a, int type);
/* Connect a socket of `type` to a, within the deadline. */
int mp__connect_to(const struct addr *a, int type, const mp__deadline *d);

/* A stream socket carrying frames (a 4-byte big-endian length, then the
 * message), with the bytes received and not yet consumed. */
struct chan {
  int fd;
  char *buf; /* received bytes not yet consumed: buf[off..len) */
  size_t off, len, cap;
};

static inline void mp__chan_init(struct chan *c, int fd) { *c = (struct chan){.fd = fd}; }
void mp__chan_close(struct chan *c);
int mp__chan_send(struct chan *c, const void *buf, size_t len, const mp__deadline *d);
ssize_t mp__chan_recv(struct chan *c, size_t max, const char **p, const mp__deadline *d);
int mp__chan_send_raw(struct chan *c, const void *buf, size_t len, const mp__deadline *d);

/* The seconds left before d, as a public timeout. */
double mp__deadline_left(const mp__deadline *d);

/* ------------------------------------------------------------ handshake */

/* A message transport for the handshake: manager channels or connections. */
struct hs_io {
  int (*send)(void *ctx, const void *buf, size_t len, const mp__deadline *d);
  ssize_t (*recv)(void *ctx, void *buf, size_t cap, const mp__deadline *d);
  void *ctx;
};

/* The transports: a struct chan, or an mp_connection. */
int mp__chan_io_send(void *ctx, const void *buf, size_t len, const mp__deadline *d);
ssize_t mp__chan_io_recv(void *ctx, void *buf, size_t cap, const mp__deadline *d);
int mp__conn_io_send(void *ctx, const void *buf, size_t len, const mp__deadline *d);
ssize_t mp__conn_io_recv(void *ctx, void *buf, size_t cap, const mp__deadline *d);

/* The server's side and the client's side (NULL key: an open server). */
int mp__hs_server(const struct hs_io *io, const void *key, size_t keylen, const mp__deadline *d);
int mp__hs_client(const struct hs_io *io, const void *key, size_t keylen, const mp__deadline *d);

/* A manager server's thread learns that its client proved the key
 * (manager_server.c); nothing outside a server's threads. */
void mp__client_proved(void);

/* ------------------------------------------------ objects and the server */

enum kind {
  MP__K_CUSTOM = 0,
  MP__K_DICT,
  MP__K_LIST,
  MP__K_NAMESPACE,
  MP__K_QUEUE,
  MP__K_LOCK,
  MP__K_RLOCK,
  MP__K_EVENT,
  MP__K_SEMAPHORE,
  MP__K_BSEMAPHORE,
  MP__K_CONDITION,
  MP__K_VALUE,
  MP__K_ARRAY,
  MP__K_JQUEUE,
  MP__K_SET,
  MP__K_BARRIER,
  MP__K_POOL,
};

struct custom_type {
  char name[64];
  mp_manager_constructor ctor;
  mp_manager_destructor dtor;
  const mp_manager_method_def *methods;
  size_t n;
};

/* Functions a managed Pool runs (mp_manager_register_function): a client
 * cannot send code, so it names one of these. The table is filled before
 * the server starts, so the pool's workers (forks of the server) hold the
 * same entries at the same addresses: an entry's address is the task's
 * ctx. */
struct pool_func {
  char name[64];
  mp_manager_function fn;
  void *ctx;
};

struct waiter {
  struct waiter *next;
  bool notified;
};

struct sobj {
  int kind;
  const struct custom_type *ct;
  void *self;      /* a custom type's instance */
  mp_obj *val;     /* dict, list, namespace, queue items, value, array */
  int64_t num;     /* semaphore value, event flag, queue maxsize */
  int64_t bound;   /* a bounded semaphore's initial value */
  uint64_t owner;  /* lock, rlock, condition: the holding client, 0 when free */
  int64_t count;   /* rlock and condition recursion depth */
  uint64_t holder; /* the client that created it: the only one that may release it */
  struct waiter *waiters;
  int busy; /* threads waiting on it */
  bool released;
  bool named;  /* published under a name: lives until the server ends */
  bool broken; /* a Barrier's: aborted, timed out or a party died */
  bool orphan; /* released by its creator, kept while a container refers to it */
  bool mark;   /* reachable (srv_collect, manager_server.c) */
};

struct shchan; /* manager_channel.c */

struct client {
  struct server *srv;
  struct chan ch;
  uint64_t id;
  bool stop_after_reply; /* this client asked for shutdown */
  struct shchan *sh;     /* the shared channel, once accepted (manager_channel.c) */
  uint32_t req_seen;     /* the last request sequence taken from it */
  uint32_t resp_seq;     /* the last reply sequence published in it */
  cpu_set_t cpus;        /* the CPUs this thread may use (manager_channel.c) */
  int avoiding;          /* the CPU it keeps off, or -1 */
  bool authed;           /* past the handshake (counted in srv->authed) */
  bool evicted;          /* a handshake cut short for a newer connection */
  struct client *next;
};

struct server {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  struct sobj **objs;
  size_t n_objs, cap_objs;
  struct client *clients; /* newest first */
  int live;               /* client threads running */
  int authed;             /* of which past the handshake */
  int pending;            /* of which in the handshake and not evicted */
  int max_clients, max_handshakes;
  uint64_t next_client;
  bool stopping;
  int lfd;
  int wake[2];
  int stop[2]; /* readable once stopping: wakes threads asleep on a shared channel */
  const void *key;
  size_t keylen;
  struct name_entry *names; /* named objects (mp_manager_register_object) */
  size_t n_names, cap_names;
  size_t n_orphans; /* released objects containers may still refer to */
};

/* A name clients ask for (Python's BaseManager.register('get_queue', ...)):
 * the object it names is created once and shared by every client. */
#define MP__NAME_MAX_LEN 64
struct name_entry {
  char name[MP__NAME_MAX_LEN];
  int64_t id;
};

/* Connection bounds: see srv_accept() (manager_server.c). */
#define MP__MAX_CLIENTS 1024
#define MP__MAX_HANDSHAKES 64

/* An object to create under a name as the server starts
 * (mp_manager_register_object), kept by the handle until then. */
struct named_reg {
  char name[MP__NAME_MAX_LEN];
  char type[64];
  mp_obj *args; /* a list */
};

/* What a server is to do before it serves (from the handle). */
struct serve_setup {
  const struct named_reg *regs;
  size_t n_regs;
  mp_manager_initializer init;
  void *init_arg;
};

/* Serve on lfd until a shutdown request (manager_server.c). */
int mp__serve(int lfd, const void *key, size_t keylen, int max_clients, int max_handshakes,
              const struct serve_setup *su);

/* For the methods of waitable objects (manager_server.c), s->mu held:
 * whether the calling thread's client is gone, and a wait on the server's
 * condition variable (0 when woken: re-check; -ETIMEDOUT; -EPIPE when the
 * server stops or the client is gone; -ESRCH when o was released). */
bool mp__client_gone(void);
int mp__srv_wait(struct server *s, struct sobj *o, const mp__deadline *d);
static inline void mp__srv_wake_all(struct server *s) { pthread_cond_broadcast(&s->cv); }

/* The built-in types (manager_builtin.c): make an object's state from its
 * creation arguments; carry out a call of method m. */
int mp__builtin_init(struct sobj *o, const mp_obj *a);
int mp__call_builtin(struct server *s, struct sobj *o, const char *m, const mp_obj *a, uint64_t me,
                     const mp__deadline *d, mp_obj **res);
/* manager_containers.c */
int mp__call_dict(struct sobj *o, const char *m, const mp_obj *a, mp_obj **res);
int mp__call_list(struct sobj *o, const char *m, const mp_obj *a, mp_obj **res);
int mp__call_namespace(struct sobj *o, const char *m, const mp_obj *a, mp_obj **res);
int mp__call_set(struct sobj *o, const char *m, const mp_obj *a, mp_obj **res);
/* manager_pool.c */
int mp__call_pool(struct server *s, struct sobj *o, const char *m, const mp_obj *a,
                  const mp__deadline *d, mp_obj **res);

/* manager_types.c: a built-in kind by name (-1 for none), a registered
 * type or function by name (NULL for none), an object's type name. */
int mp__find_kind(const char *name);
const struct custom_type *mp__find_type(const char *name);
const struct pool_func *mp__find_func(const char *name);
const char *mp__obj_type_name(const struct sobj *o);

/* A request's arguments, as every method reads them. */

/* The argument i, or NULL when there are fewer. */
static inline const mp_obj *mp__arg(const mp_obj *args, size_t i) {
  const mp_obj *a;
  return mp_obj_list_get(args, (int64_t)i, &a) == 0 ? a : NULL;
}

static inline bool mp__nargs(const mp_obj *args, size_t n) {
  return mp_obj_len(args) == (ssize_t)n;
}

static inline int mp__arg_int(const mp_obj *args, size_t i, int64_t *v) {
  const mp_obj *a = mp__arg(args, i);
  return a && mp_obj_get_int(a, v) == 0 ? 0 : -EINVAL;
}

/* Copy a borrowed value into *res. */
static inline int mp__give(const mp_obj *v, mp_obj **res) {
  *res = mp_obj_copy(v);
  return *res ? 0 : -ENOMEM;
}

#define MP__IS(m, s) (!strcmp((m), (s)))

/* ------------------------------------------------------------ the handle */

#define MP__MANAGER_MAGIC 0x6d704d47u /* "mpMG" */

struct mp_manager {
  uint32_t magic;
  struct addr addr;
  bool have_addr; /* an address was given or bound */
  bool private_dir;
  char dir[64];
  uint8_t key[MP__KEY_MAX];
  size_t keylen;
  bool auth;
  int lfd;       /* the listening socket, before start/serve */
  pid_t server;  /* the started server, in the starter */
  pid_t starter; /* the process that started it */
  bool started, connected, stopped;
  struct chan ch; /* the connection of process conn_pid */
  pid_t conn_pid;
  struct shchan *sh;               /* its shared channel (manager_channel.c), or NULL */
  uint32_t sh_seq;                 /* the last request sequence published in it */
  bool no_sh;                      /* the socket path only (options.no_shared_channel) */
  bool abandoned;                  /* a call gave up its connection: the next reconnects */
  int max_clients, max_handshakes; /* the served server's bounds (options) */
  struct named_reg *regs;          /* named objects the server will create */
  size_t n_regs;
  /* mu serves the process whose pid is in mu_pid. A forked child finds its
   * parent's pid there (and mu perhaps held by a thread that does not exist
   * in the child): the first of its threads to exchange the pid for -pid
   * initialises mu and then stores its own pid; the others wait meanwhile,
   * so mu is never initialised under a thread that holds it. */
  _Atomic pid_t mu_pid;
  pthread_mutex_t mu;
};

static inline bool mp__manager_ok(const mp_manager *m) {
  return m && m->magic == MP__MANAGER_MAGIC;
}

/* One request and its reply on this process's connection (manager.c). */
int mp__manager_call(mp_manager *m, int op, int64_t id, const char *name, const mp_obj *args,
                     double timeout, mp_obj **ret);

/* ------------------------------------------------------- the shared channel */

/* manager_channel.c. A request op beside wire.h's, manager-only: a client
 * offers its block. */
#define MP__SH_OP_OFFER 5

/* The server's half: accept an offer (a request's handler); take the next
 * request; answer it; let go of the block when the thread ends (eof: the
 * client's end was seen). */
int mp__sh_accept(struct client *c, int64_t addr, const mp_obj *args);
ssize_t mp__sh_server_next(struct client *c, const char **p);
int mp__sh_server_reply(struct client *c, const char *out, size_t len);
void mp__sh_server_release(struct client *c, bool eof);

/* The client's half: offer a block on a connection just made; one call
 * through it; let go of it and close the connection (peer_gone: the
 * server's end was seen closed). */
int mp__sh_offer(mp_manager *m, const mp__deadline *d);
ssize_t mp__sh_client_call(mp_manager *m, const char *out, size_t len, const char **p,
                           const mp__deadline *d);
void mp__client_close(mp_manager *m, bool peer_gone);

#endif /* MP_MANAGER_INTERNAL_H */
