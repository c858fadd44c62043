/* SPDX-License-Identifier: MIT */
/*
 * Manager handles (mp/manager.h): a server of shared objects that a process
 * starts (forked), serves itself, or connects to, and this process's
 * connection to it, through which every proxy call goes.
 *
 * Map of this file:
 *   mp_manager_new
 *   the handle and its server: listen, start (fork the server; it ends
 *     with its starter), register_object, serve_forever
 *   connections and calls: connect (handshake, then the shared channel's
 *     offer), address, pid, the connection's mutex across fork, one call
 *     (mp__manager_call: the socket path or the shared channel), shutdown,
 *     free
 * The rest of the area is mapped in manager_internal.h. No crash points
 * here: the shared channel's steps (manager.sh.*) are marked in
 * manager_channel.c, whose client half mp__manager_call() uses.
 */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "internal.h"
#include "manager_internal.h"
#include "wire.h"

MP_EXPORT int mp_manager_new(const mp_manager_options *opts, mp_manager **ret) {
  mp_manager_options o = {0};
  if (opts)
    o = *opts;
  if (!ret || (o.authkey && (o.authkey_len == 0 || o.authkey_len > MP__KEY_MAX)))
    return -EINVAL;
  mp_manager *m = calloc(1, sizeof *m);
  if (!m)
    return -ENOMEM;
  if (o.address) {
    int r = mp__addr_parse(o.address, &m->addr);
    if (r < 0) {
      free(m);
      return r;
    }
    m->have_addr = true;
  }
  if (o.authkey) {
    memcpy(m->key, o.authkey, o.authkey_len);
    m->keylen = o.authkey_len;
    m->auth = true;
  } else if (!o.no_auth) {
    /* Python's BaseManager(authkey=None): current_process().authkey, copied
     * now, for start, serve and connect alike (mp/process.h) */
    int r = mp__process_authkey_copy(m->key, sizeof m->key, &m->keylen);
    if (r < 0) {
      sodium_memzero(m->key, sizeof m->key);
      free(m);
      return r;
    }
    m->auth = true;
  }
  m->no_sh = o.no_shared_channel != 0;
  if (o.max_clients < 0 || o.max_handshakes < 0) {
    sodium_memzero(m->key, sizeof m->key);
    free(m);
    return -EINVAL;
  }
  m->max_clients = o.max_clients ? o.max_clients : MP__MAX_CLIENTS;
  m->max_handshakes = o.max_handshakes ? o.max_handshakes : MP__MAX_HANDSHAKES;
  m->lfd = -1;
  mp__chan_init(&m->ch, -1);
  pthread_mutex_init(&m->mu, NULL);
  atomic_init(&m->mu_pid, mp__pid());
  m->magic = MP__MANAGER_MAGIC;
  *ret = m;
  return 0;
}

/* ------------------------------------------- the handle and its server */

MP_EXPORT int mp_manager_listen(mp_manager *m) {
  if (!mp__manager_ok(m))
    return -EINVAL;
  if (m->lfd >= 0 || m->started || m->connected)
    return -EALREADY;
  if (!m->have_addr) {
    /* a private directory only its owner can enter */
    const char *tmp = getenv("TMPDIR");
    if (!tmp || strlen(tmp) > 40 || tmp[0] != '/')
      tmp = "/tmp";
    snprintf(m->dir, sizeof m->dir, "%s/mp-XXXXXX", tmp);
    if (!mkdtemp(m->dir))
      return -errno;
    char path[96];
    snprintf(path, sizeof path, "%s/manager", m->dir);
    int r = mp__addr_parse(path, &m->addr);
    if (r < 0) {
      rmdir(m->dir);
      return r;
    }
    m->private_dir = true;
    m->have_addr = true;
  }
  int fd = mp__listen_at(&m->addr, SOCK_STREAM);
  if (fd < 0) {
    if (m->private_dir) {
      rmdir(m->dir);
      m->private_dir = false;
      m->have_addr = false;
    }
    return fd;
  }
  m->lfd = fd;
  return 0;
}

static void remove_socket(mp_manager *m) {
  if (m->addr.family == AF_UNIX)
    unlink(mp__addr_path(&m->addr));
  if (m->private_dir)
    rmdir(m->dir);
}

/* In the forked server: the socket path to remove when the starter dies. */
static char server_path[128], server_dir[64];

static void server_on_term(int sig) {
  (void)sig;
  if (server_path[0])
    unlink(server_path);
  if (server_dir[0])
    rmdir(server_dir);
  _exit(0);
}

static int manager_connect(mp_manager *m, const mp__deadline *limit);

static int manager_start(mp_manager *m, mp_manager_initializer init, void *init_arg) {
  if (!mp__manager_ok(m))
    return -EINVAL;
  if (m->started || m->connected)
    return -EALREADY;
  if (!m->auth && m->keylen) {
    int r = mp__random_bytes(m->key, m->keylen);
    if (r < 0)
      return r;
    m->auth = true;
  }
  if (m->lfd < 0) {
    int r = mp_manager_listen(m);
    if (r < 0)
      return r;
  }
  /* the server and this process share the heap only when it is mapped
   * before the fork: then their clients may use shared channels (manager_channel.c) */
  if (!m->no_sh && m->addr.family == AF_UNIX)
    mp__heap_ensure();
  pid_t parent = mp__pid();
  pid_t pid = fork();
  if (pid < 0) {
    int e = -errno;
    return e;
  }
  if (pid == 0) {
    /* The server: end with the starter (SIGTERM, whose handler removes the
     * socket), ignore the terminal's Ctrl-C as the starter's cleanup should
     * run first, and hold no descriptor of the starter's but the socket. */
    if (m->addr.family == AF_UNIX)
      snprintf(server_path, sizeof server_path, "%s", mp__addr_path(&m->addr));
    if (m->private_dir)
      snprintf(server_dir, sizeof server_dir, "%s", m->dir);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = server_on_term;
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGINT, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);
    mp__tie_to_parent(parent, SIGTERM);
    int lfd = m->lfd;
    if (lfd > 3 && syscall(SYS_close_range, 3u, (unsigned)lfd - 1, 0u) < 0) {
      /* best effort: an old kernel keeps the inherited descriptors */
    }
    syscall(SYS_close_range, (unsigned)lfd + 1, ~0u, 0u);
    /* A log handler's descriptors and memory were the parent's: the server,
     * which closed them, logs to standard error at the same level. */
    mp__log_route_to_stderr();
    struct serve_setup su = {m->regs, m->n_regs, init, init_arg};
    mp__serve(lfd, m->auth ? m->key : NULL, m->keylen, m->max_clients, m->max_handshakes, &su);
    server_on_term(0);
  }
  close(m->lfd);
  m->lfd = -1;
  m->server = pid;
  m->starter = parent;
  m->started = true;
  int r = manager_connect(m, NULL);
  if (r < 0) {
    kill(pid, SIGKILL);
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
    }
    remove_socket(m);
    m->started = false;
    return r;
  }
  return 0;
}

MP_EXPORT int mp_manager_start(mp_manager *m) { return manager_start(m, NULL, NULL); }

MP_EXPORT int mp_manager_start_with(mp_manager *m, mp_manager_initializer init, void *arg) {
  if (!init)
    return -EINVAL;
  return manager_start(m, init, arg);
}

MP_EXPORT int mp_manager_register_object(mp_manager *m, const char *name, const char *type,
                                         const mp_obj *args) {
  if (!mp__manager_ok(m) || !name || !*name || strlen(name) >= MP__NAME_MAX_LEN || !type ||
      strlen(type) >= sizeof m->regs[0].type || (args && mp_obj_type(args) != MP_OBJ_LIST))
    return -EINVAL;
  if (m->lfd >= 0 || m->started || m->connected)
    return -EALREADY;
  int kind = mp__find_kind(type);
  if (kind < 0 && !mp__find_type(type))
    return -ENOENT;
  for (size_t i = 0; i < m->n_regs; i++)
    if (!strcmp(m->regs[i].name, name))
      return -EEXIST;
  /* the server's constructors take a list, as from the wire */
  mp_obj *a = args ? mp_obj_copy(args) : mp_obj_list();
  if (!a)
    return -ENOMEM;
  if (kind > 0) {
    /* refuse wrong arguments now rather than in the server (a Pool's own
     * check: a trial would start a pool here) */
    struct sobj trial = {.kind = kind};
    int64_t np = 0;
    size_t na = (size_t)mp_obj_len(a);
    int r = kind != MP__K_POOL ? mp__builtin_init(&trial, a)
            : na > 1 || (na == 1 && (mp__arg_int(a, 0, &np) < 0 || np < 0 || np > INT_MAX))
                ? -EINVAL
                : 0;
    mp_obj_free(trial.val);
    if (r < 0) {
      mp_obj_free(a);
      return r;
    }
  }
  struct named_reg *v = realloc(m->regs, (m->n_regs + 1) * sizeof *v);
  if (!v) {
    mp_obj_free(a);
    return -ENOMEM;
  }
  m->regs = v;
  struct named_reg *e = &v[m->n_regs];
  memset(e, 0, sizeof *e);
  e->args = a;
  snprintf(e->name, sizeof e->name, "%s", name);
  snprintf(e->type, sizeof e->type, "%s", type);
  m->n_regs++;
  return 0;
}

MP_EXPORT int mp_manager_serve_forever(mp_manager *m) {
  if (!mp__manager_ok(m))
    return -EINVAL;
  if (m->started || m->connected)
    return -EALREADY;
  if (m->lfd < 0) {
    int r = mp_manager_listen(m);
    if (r < 0)
      return r;
  }
  struct serve_setup su = {m->regs, m->n_regs, NULL, NULL};
  int r =
      mp__serve(m->lfd, m->auth ? m->key : NULL, m->keylen, m->max_clients, m->max_handshakes, &su);
  close(m->lfd);
  m->lfd = -1;
  remove_socket(m);
  return r;
}

/* -------------------------------------------- connections and calls */

/* Open this process's connection, by deadline limit (NULL: 30 s; never
 * more). Called with m->mu held (or before the handle is shared). */
static int manager_connect(mp_manager *m, const mp__deadline *limit) {
  mp__deadline d;
  mp__deadline_init(&d, 30.0);
  if (limit && !limit->forever &&
      (limit->at.tv_sec < d.at.tv_sec ||
       (limit->at.tv_sec == d.at.tv_sec && limit->at.tv_nsec < d.at.tv_nsec)))
    d = *limit;
  int fd = mp__connect_to(&m->addr, SOCK_STREAM, &d);
  if (fd < 0)
    return fd;
  struct chan ch;
  mp__chan_init(&ch, fd);
  struct hs_io io = {mp__chan_io_send, mp__chan_io_recv, &ch};
  int r = mp__hs_client(&io, m->auth ? m->key : NULL, m->keylen, &d);
  if (r < 0) {
    mp__chan_close(&ch);
    return r == -EPIPE ? -EACCES : r;
  }
  m->ch = ch;
  m->conn_pid = mp__pid();
  m->sh = NULL;
  m->abandoned = false;
  /* a server forked by this family's mp_manager_start(), over its Unix
   * socket: the same heap */
  if (m->started && m->addr.family == AF_UNIX && !m->no_sh)
    return mp__sh_offer(m, &d);
  return 0;
}

MP_EXPORT int mp_manager_connect(mp_manager *m) {
  if (!mp__manager_ok(m) || !m->have_addr)
    return -EINVAL;
  if (m->started || m->connected || m->lfd >= 0)
    return -EALREADY;
  if (!m->auth)
    m->keylen = 0;
  int r = manager_connect(m, NULL);
  if (r == 0)
    m->connected = true;
  return r;
}

MP_EXPORT ssize_t mp_manager_address(mp_manager *m, char *buf, size_t cap) {
  if (!mp__manager_ok(m) || (!buf && cap))
    return -EINVAL;
  if (!(m->lfd >= 0 || m->started || m->connected))
    return -ENOTCONN;
  return mp__addr_format(&m->addr, buf, cap);
}

MP_EXPORT int mp_manager_pid(mp_manager *m) {
  if (!mp__manager_ok(m))
    return -EINVAL;
  if (!m->started || m->starter != mp__pid())
    return -ECHILD;
  return m->server;
}

/* How long a timed call waits for its reply beyond its timeout. The server
 * ends the wait itself at the timeout and answers -ETIMEDOUT, so only a
 * server that does not answer at all (stopped, hung, far too slow) makes a
 * client give up, at the timeout plus this. */
#define CALL_GRACE 2.0

/* Take m->mu by deadline d, in whichever process calls (see mu_pid). */
static int manager_lock(mp_manager *m, const mp__deadline *d) {
  pid_t me = mp__pid();
  for (;;) {
    pid_t was = atomic_load(&m->mu_pid);
    if (was == me)
      break;
    if (was == -me) { /* another thread of this process initialises it */
      if (mp__deadline_passed(d) || d->nowait)
        return -ETIMEDOUT;
      sched_yield();
      continue;
    }
    /* seq_cst: the winner's init is published by its store of me below */
    if (atomic_compare_exchange_strong(&m->mu_pid, &was, -me)) {
      pthread_mutex_init(&m->mu, NULL);
      atomic_store(&m->mu_pid, me); /* pairs with the load above */
      break;
    }
  }
  int r = d->forever ? pthread_mutex_lock(&m->mu)
                     : pthread_mutex_clocklock(&m->mu, CLOCK_MONOTONIC, &d->at);
  return r == 0 ? 0 : -r;
}

/* One request and its reply on this process's connection. A timed call
 * (timeout >= 0) waits for the connection's mutex and the reply by one
 * deadline, the timeout plus CALL_GRACE; when that passes the reply can
 * still come, so the call gives the connection up (the server sees it
 * closed, as for a client that ended: a request it has not yet carried out
 * takes nothing) and the next call opens a new one. */
int mp__manager_call(mp_manager *m, int op, int64_t id, const char *name, const mp_obj *args,
                     double timeout, mp_obj **ret) {
  if (!mp__manager_ok(m))
    return -EINVAL;
  if (!m->started && !m->connected)
    return -ENOTCONN;
  if (m->stopped)
    return -EPIPE;
  if (timeout != timeout)
    return -EINVAL;
  mp__deadline d;
  if (timeout < 0) /* Python's rule: try once */
    timeout = 0;
  mp__deadline_init(&d, timeout + CALL_GRACE); /* MP_FOREVER stays forever */
  char *out;
  size_t len;
  int r = mp__encode_request(op, id, name, args, timeout, &out, &len);
  if (r < 0)
    return r;
  if ((r = manager_lock(m, &d)) < 0) {
    free(out);
    return r;
  }
  pid_t me = mp__pid();
  if (m->conn_pid != me) {
    /* a forked child: the inherited connection and shared channel belong
     * to the parent */
    m->sh = NULL;
    if (m->ch.fd >= 0) {
      close(m->ch.fd);
      free(m->ch.buf);
      mp__chan_init(&m->ch, -1);
    }
    r = manager_connect(m, &d);
  } else if (m->abandoned && m->ch.fd < 0) {
    r = manager_connect(m, &d);
  }
  if (r == 0 && m->ch.fd < 0)
    r = -EPIPE;
  const char *p;
  ssize_t n;
  if (r < 0)
    n = r;
  else if (m->sh)
    n = mp__sh_client_call(m, out, len, &p, &d);
  else if ((n = mp__chan_send(&m->ch, out, len, &d)) == 0)
    n = mp__chan_recv(&m->ch, MP_OBJ_MAX_MESSAGE + 64, &p, &d);
  free(out);
  mp_obj *rep = NULL;
  if (n >= 0)
    r = mp__obj_decode(p, (size_t)n, MP__MSG_DEPTH, &rep);
  else
    r = (int)n;
  if (r == -EPIPE || r == -EMSGSIZE) {
    if (r == -EPIPE || n == -EMSGSIZE) { /* the stream is gone or unframeable */
      mp__client_close(m, n == -EPIPE);
      r = -EPIPE;
    }
  } else if (n == -ETIMEDOUT && m->ch.fd >= 0) {
    /* the request (or part of it) may be out and its reply still due */
    mp__client_close(m, false);
    m->abandoned = true;
  }
  pthread_mutex_unlock(&m->mu);
  if (r < 0)
    return r;
  int64_t status;
  if (mp_obj_type(rep) != MP_OBJ_LIST || !mp__nargs(rep, 2) || mp__arg_int(rep, 0, &status) < 0 ||
      status < INT_MIN || status > INT_MAX) {
    mp_obj_free(rep);
    return -EBADMSG;
  }
  if (status >= 0 && ret)
    *ret = mp__obj_list_take(rep, 1);
  mp_obj_free(rep);
  return (int)status;
}

MP_EXPORT int mp_manager_shutdown(mp_manager *m) {
  if (!mp__manager_ok(m))
    return -EINVAL;
  if (!m->started && !m->connected)
    return -ENOTCONN;
  if (m->started && m->starter != mp__pid())
    return -ECHILD;
  if (m->stopped)
    return -EPIPE;
  int r = mp__manager_call(m, MP__OP_SHUTDOWN, 0, "", NULL, MP_FOREVER, NULL);
  m->stopped = true;
  if (m->ch.fd >= 0 && m->conn_pid == mp__pid())
    mp__client_close(m, false);
  if (m->started) {
    /* wait up to 5 s for the server to end, then kill it */
    int st;
    pid_t w = 0;
    for (int i = 0; i < 500 && (w = waitpid(m->server, &st, WNOHANG)) == 0; i++)
      usleep(10000);
    if (w == 0) {
      kill(m->server, SIGKILL);
      while (waitpid(m->server, &st, 0) < 0 && errno == EINTR) {
      }
    }
    remove_socket(m);
  }
  return r < 0 ? r : 0;
}

MP_EXPORT int mp_manager_free(mp_manager *m) {
  if (!m)
    return 0;
  if (!mp__manager_ok(m))
    return -EINVAL;
  if (m->started && !m->stopped && m->starter == mp__pid())
    mp_manager_shutdown(m);
  if (m->ch.fd >= 0) {
    if (m->conn_pid == mp__pid())
      mp__client_close(m, false);
    else
      mp__chan_close(&m->ch); /* the parent's connection: its channel too */
  }
  if (m->lfd >= 0) {
    close(m->lfd);
    remove_socket(m);
  }
  for (size_t i = 0; i < m->n_regs; i++)
    mp_obj_free(m->regs[i].args);
  free(m->regs);
  m->magic = 0;
  /* the key must not outlive the handle in freed memory */
  sodium_memzero(m->key, sizeof m->key);
  free(m);
  return 0;
}
