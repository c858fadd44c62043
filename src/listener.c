/* SPDX-License-Identifier: MIT */
/*
 * Listener and Client (mp/connection.h): Python's
 * multiprocessing.connection.Listener and Client, giving mp_connection
 * handles (connection.c) after the handshake, in libmp's own wire or in
 * Python's (pyauth.c).
 *
 * Map of this file:
 *   the accepting protocol and its handshake steps (the comment below)
 *   listening: "*:port" on every address; mp_listener_new(_python)
 *   pending handshakes: taking connections, stepping each handshake
 *     without waiting, in libmp's messages or Python's
 *   mp_listener_accept, address, close
 *   Client: Python's handshake, then mp_client_connect(_python)
 * Crash points marked here: connection.listener.accepted and
 * connection.listener.challenged (named in the comment below). Addresses,
 * sockets and the blocking handshake are manager_transport.c's.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "crash.h"
#include "internal.h"
#include "manager_internal.h"
#include "pyauth.h"
#include "wire.h"

/*
 * Accepting. Handshakes must not wait on each other: a client that connects
 * and stays silent would otherwise hold every client behind it. So the
 * listener accepts every connection that is waiting and keeps it `pending`
 * while its handshake runs, step by step, whenever its socket is readable:
 * the server's sends are a few dozen bytes on a fresh socket and never
 * block, and each receive is tried without waiting. One poll() covers the
 * listening socket and every pending connection. A pending connection has
 * LISTENER_HS_TIMEOUT seconds from its accept to finish, whatever the
 * callers' timeouts; a failed or late one is closed, and the accept call
 * during which that happened reports it (-EACCES, or -EPIPE for a client
 * that left), so that a wrong key is seen as in Python.
 *
 * The steps (the same messages as mp__hs_server() in manager_transport.c,
 * which the Manager's server uses as one blocking call):
 *   HS_OPEN  no key: MP__HS_OPEN was sent; done.
 *   HS_ANSWER     MP__HS_AUTH + nonce sent; wait for the client's MAC
 *   HS_CHALLENGE  WELCOME sent; wait for the client's challenge
 *   HS_VERDICT    our MAC sent; wait for the client's verdict
 *   HS_DONE       authenticated: the next accept returns it
 * All of it is this process's private memory: a kill leaves the sockets to
 * the kernel, and the clients see end of file (mp_client_connect() gives
 * -EACCES) [connection.listener.accepted, connection.listener.challenged].
 *
 * Python mode (mp_listener_new_python(), mp_client_connect_python()): the
 * sockets are streams, Unix ones included (Python's AF_UNIX is
 * SOCK_STREAM), the connections speak Python's framing
 * (MP_CONNECTION_PYTHON) and the handshake is Python's (pyauth.c), in the
 * same steps and order: the listener challenges first.
 *   HS_DONE       no key: nothing is sent (Python's Listener sends nothing)
 *   HS_ANSWER     "#CHALLENGE#{sha256}..." sent; wait for the MAC
 *   HS_CHALLENGE  "#WELCOME#" sent; wait for the client's challenge
 *   HS_VERDICT    our MAC sent; wait for "#WELCOME#"
 */

#define LISTENER_HS_TIMEOUT 5.0 /* seconds for a client to finish its handshake */
#define LISTENER_PENDING_MAX 128

enum { HS_ANSWER = 1, HS_CHALLENGE, HS_VERDICT, HS_DONE };

struct pending {
  mp_connection *c;
  int step;
  uint8_t nonce[MP__NONCE_LEN];
  uint8_t chal[MP__PY_CHAL_LEN]; /* Python mode: the challenge sent */
  mp__deadline until;
};

struct mp_listener {
  uint32_t magic;
  int fd;
  struct addr addr;
  uint8_t key[MP__KEY_MAX];
  size_t keylen;
  bool auth;
  bool py;              /* Python's wire and handshake */
  struct pending *pend; /* the handshakes under way, and those done */
  size_t npend;
};

#define LISTENER_MAGIC 0x6d704c53u /* "mpLS" */
#define LISTENER_DEAD 0x6d70dead

static int listener_type(const struct addr *a, bool py) {
  return a->family == AF_UNIX && !py ? SOCK_SEQPACKET : SOCK_STREAM;
}

/* "*:port": every address, IPv6 and IPv4 on one socket ([::] without
 * IPV6_V6ONLY), or IPv4's 0.0.0.0 where the kernel has no IPv6. The bound
 * address is written back to *a. Returns the listening socket or -errno. */
static int listen_any(const char *port, struct addr *a) {
  char *end;
  long p = strtol(port, &end, 10);
  if (!*port || *end || p < 0 || p > 65535)
    return -EINVAL;
  memset(a, 0, sizeof *a);
  int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd >= 0) {
    int zero = 0;
    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&a->ss;
    s6->sin6_family = AF_INET6;
    s6->sin6_addr = in6addr_any;
    s6->sin6_port = htons((uint16_t)p);
    a->family = AF_INET6;
    a->len = sizeof *s6;
  } else if (errno == EAFNOSUPPORT) {
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    struct sockaddr_in *s4 = (struct sockaddr_in *)&a->ss;
    s4->sin_family = AF_INET;
    s4->sin_addr.s_addr = htonl(INADDR_ANY);
    s4->sin_port = htons((uint16_t)p);
    a->family = AF_INET;
    a->len = sizeof *s4;
  }
  if (fd < 0)
    return -errno;
  int one = 1, r = 0;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  socklen_t l = sizeof a->ss;
  if (bind(fd, (struct sockaddr *)&a->ss, a->len) < 0 ||
      getsockname(fd, (struct sockaddr *)&a->ss, &l) < 0 || listen(fd, 128) < 0)
    r = -errno;
  a->len = l;
  if (r < 0) {
    close(fd);
    return r;
  }
  return fd;
}

static int listener_new(const char *address, const void *authkey, size_t keylen, bool py,
                        mp_listener **ret) {
  if (!address || !ret || (authkey && keylen > MP__KEY_MAX))
    return -EINVAL;
  mp_listener *l = mp__handle_new(sizeof *l);
  if (!l)
    return -ENOMEM;
  /* Unix: SOCK_SEQPACKET, the connections' own records; TCP: a stream, and
   * the connections frame messages in it (connection_stream.c) */
  int r;
  if (!strncmp(address, "*:", 2)) {
    r = listen_any(address + 2, &l->addr);
  } else {
    r = mp__addr_parse(address, &l->addr);
    if (r == 0)
      r = mp__listen_at(&l->addr, listener_type(&l->addr, py) | SOCK_NONBLOCK);
  }
  if (r < 0) {
    l->magic = LISTENER_DEAD;
    mp__handle_free(l);
    return r;
  }
  l->fd = r;
  if (authkey) {
    memcpy(l->key, authkey, keylen);
    l->keylen = keylen;
    l->auth = true;
  }
  l->py = py;
  l->magic = LISTENER_MAGIC;
  *ret = l;
  return 0;
}

MP_EXPORT int mp_listener_new(const char *address, const void *authkey, size_t keylen,
                              mp_listener **ret) {
  return listener_new(address, authkey, keylen, false, ret);
}

MP_EXPORT int mp_listener_new_python(const char *address, const void *authkey, size_t keylen,
                                     mp_listener **ret) {
  return listener_new(address, authkey, keylen, true, ret);
}

/* Take the next connection waiting on the listening socket and start its
 * handshake. 1 when one was taken (whether its start worked or not: *err
 * then says why it ended), 0 when none waits, or a negative errno. */
static int pending_add(mp_listener *l, int *err) {
  int fd = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
  if (fd < 0) {
    if (errno == EINTR || errno == ECONNABORTED)
      return 1;
    return errno == EAGAIN ? 0 : -errno;
  }
  MP__CRASH(CONN_LISTENER_ACCEPTED);
  int fl = fcntl(fd, F_GETFL);
  fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
  if (l->addr.family != AF_UNIX) {
    /* a message is one write: send it now, not after the peer's ack */
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  struct pending *p = &l->pend[l->npend];
  *p = (struct pending){.step = HS_DONE};
  int r = mp_connection_from_fd(fd, l->py ? MP_CONNECTION_PYTHON : 0, &p->c);
  if (r < 0) {
    close(fd);
    *err = r;
    return 1;
  }
  mp__deadline_init(&p->until, LISTENER_HS_TIMEOUT);
  uint8_t msg[MP__HS_MAGIC_LEN + MP__NONCE_LEN];
  if (l->py) {
    if (l->auth && (r = mp__py_challenge(p->chal)) == 0) {
      r = mp_connection_send(p->c, p->chal, sizeof p->chal, MP_NOWAIT);
      p->step = HS_ANSWER;
    }
  } else if (!l->auth) {
    r = mp_connection_send(p->c, MP__HS_OPEN, MP__HS_MAGIC_LEN, MP_NOWAIT);
  } else if ((r = mp__random_bytes(p->nonce, sizeof p->nonce)) == 0) {
    memcpy(msg, MP__HS_AUTH, MP__HS_MAGIC_LEN);
    memcpy(msg + MP__HS_MAGIC_LEN, p->nonce, MP__NONCE_LEN);
    r = mp_connection_send(p->c, msg, sizeof msg, MP_NOWAIT);
    p->step = HS_ANSWER;
  }
  if (p->step == HS_ANSWER)
    MP__CRASH(CONN_LISTENER_CHALLENGED); /* either kind of challenge sent */
  if (r < 0) {
    mp_connection_close(p->c);
    *err = r == -ETIMEDOUT ? -EACCES : r;
    return 1;
  }
  l->npend++;
  return 1;
}

/* pending_step() in Python mode: Python's messages (see above). */
static int pending_step_py(mp_listener *l, struct pending *p) {
  uint8_t msg[MP__PY_MAX];
  while (p->step != HS_DONE) {
    ssize_t n = mp_connection_recv(p->c, msg, sizeof msg, MP_NOWAIT);
    if (n == -ETIMEDOUT)
      return 0;
    if (n == -EMSGSIZE || n == -EPROTO)
      return -EACCES; /* Python too refuses more than 256 bytes here */
    if (n < 0)
      return (int)n;
    int r = 0;
    switch (p->step) {
    case HS_ANSWER:
      if (mp__py_verify(l->key, l->keylen, p->chal, msg, (size_t)n) < 0) {
        mp_connection_send(p->c, MP__PY_FAILURE, MP__PY_FAILURE_LEN, MP_NOWAIT);
        return -EACCES;
      }
      r = mp_connection_send(p->c, MP__PY_WELCOME, MP__PY_WELCOME_LEN, MP_NOWAIT);
      p->step = HS_CHALLENGE;
      break;
    case HS_CHALLENGE: {
      uint8_t mac[64];
      size_t ml;
      r = mp__py_answer(l->key, l->keylen, msg, (size_t)n, mac, &ml);
      if (r == 0)
        r = mp_connection_send(p->c, mac, ml, MP_NOWAIT);
      p->step = HS_VERDICT;
      break;
    }
    default: /* HS_VERDICT */
      if (n != MP__PY_WELCOME_LEN || memcmp(msg, MP__PY_WELCOME, MP__PY_WELCOME_LEN))
        return -EACCES;
      p->step = HS_DONE;
      break;
    }
    if (r < 0)
      return r == -ETIMEDOUT ? -EACCES : r;
  }
  return 0;
}

/* Take the handshake of p as far as the messages that have arrived allow,
 * without waiting. 0 when it waits for more or is done (HS_DONE), or the
 * error that ends it. */
static int pending_step(mp_listener *l, struct pending *p) {
  if (l->py)
    return pending_step_py(l, p);
  uint8_t msg[MP__HS_MAX];
  while (p->step != HS_DONE) {
    ssize_t n = mp_connection_recv(p->c, msg, sizeof msg, MP_NOWAIT);
    if (n == -ETIMEDOUT)
      return 0;
    if (n == -EMSGSIZE || n == -EPROTO || n == -EBADMSG)
      return -EACCES; /* not a libmp peer */
    if (n < 0)
      return (int)n;
    int r = 0;
    switch (p->step) {
    case HS_ANSWER:
      if (mp__hs_check(l->key, l->keylen, 'C', p->nonce, msg, (size_t)n) < 0) {
        mp_connection_send(p->c, MP__HS_FAILURE, MP__HS_MAGIC_LEN, MP_NOWAIT);
        return -EACCES;
      }
      r = mp_connection_send(p->c, MP__HS_WELCOME, MP__HS_MAGIC_LEN, MP_NOWAIT);
      p->step = HS_CHALLENGE;
      break;
    case HS_CHALLENGE: {
      uint8_t mac[MP__MAC_LEN];
      if (mp__hs_parse_challenge(msg, (size_t)n, p->nonce) != 1)
        return -EACCES;
      r = mp__hs_answer(l->key, l->keylen, 'S', p->nonce, mac);
      if (r == 0)
        r = mp_connection_send(p->c, mac, sizeof mac, MP_NOWAIT);
      p->step = HS_VERDICT;
      break;
    }
    default: /* HS_VERDICT */
      r = mp__hs_parse_verdict(msg, (size_t)n);
      p->step = HS_DONE;
      break;
    }
    if (r < 0)
      return r == -ETIMEDOUT ? -EACCES : r;
  }
  return 0;
}

static void pending_remove(mp_listener *l, size_t i) {
  l->pend[i] = l->pend[--l->npend]; /* order does not matter */
}

MP_EXPORT int mp_listener_accept(mp_listener *l, double timeout, mp_connection **ret) {
  if (!l || l->magic != LISTENER_MAGIC || !ret)
    return -EINVAL;
  mp__deadline d;
  if (mp__deadline_init(&d, timeout) < 0)
    return -EINVAL;
  if (!l->pend && !(l->pend = malloc(LISTENER_PENDING_MAX * sizeof *l->pend)))
    return -ENOMEM;
  struct pollfd pfds[LISTENER_PENDING_MAX + 1];
  for (;;) {
    /* take every connection waiting, starting its handshake */
    int err = 0;
    while (l->npend < LISTENER_PENDING_MAX && err == 0) {
      int r = pending_add(l, &err);
      if (r < 0)
        return r;
      if (r == 0)
        break;
    }
    /* step every handshake; hand out the first one done */
    for (size_t i = 0; i < l->npend && err == 0; i++) {
      struct pending *p = &l->pend[i];
      int r = pending_step(l, p);
      if (r == 0 && p->step == HS_DONE) {
        *ret = p->c;
        pending_remove(l, i);
        return 0;
      }
      if (r == 0 && mp__deadline_passed(&p->until))
        r = -EACCES; /* too slow: refused as the old bound did */
      if (r < 0) {
        mp_connection_close(p->c);
        pending_remove(l, i);
        err = r;
      }
    }
    if (err < 0)
      return err;
    if (d.nowait || mp__deadline_passed(&d))
      return -ETIMEDOUT;
    /* sleep until a client comes, a handshake can go on, or a deadline */
    mp__deadline nap = d;
    nfds_t n = 0;
    if (l->npend < LISTENER_PENDING_MAX)
      pfds[n++] = (struct pollfd){.fd = l->fd, .events = POLLIN, .revents = 0};
    for (size_t i = 0; i < l->npend; i++) {
      struct pending *p = &l->pend[i];
      pfds[n++] = (struct pollfd){.fd = mp_connection_fileno(p->c), .events = POLLIN, .revents = 0};
      if (nap.forever || p->until.at.tv_sec < nap.at.tv_sec ||
          (p->until.at.tv_sec == nap.at.tv_sec && p->until.at.tv_nsec < nap.at.tv_nsec))
        nap = p->until;
    }
    /* (each step above read all that had arrived, so the descriptors tell
     * what is new: no bytes wait unseen in a handle) */
    if (poll(pfds, n, mp__deadline_poll_ms(&nap)) < 0 && errno != EINTR)
      return -errno;
  }
}

MP_EXPORT ssize_t mp_listener_address(mp_listener *l, char *buf, size_t cap) {
  if (!l || l->magic != LISTENER_MAGIC || (!buf && cap))
    return -EINVAL;
  return mp__addr_format(&l->addr, buf, cap);
}

MP_EXPORT int mp_listener_close(mp_listener *l) {
  if (!l)
    return 0;
  if (l->magic != LISTENER_MAGIC)
    return -EINVAL;
  for (size_t i = 0; i < l->npend; i++)
    mp_connection_close(l->pend[i].c);
  free(l->pend);
  close(l->fd);
  if (l->addr.family == AF_UNIX)
    unlink(mp__addr_path(&l->addr));
  l->magic = LISTENER_DEAD;
  sodium_memzero(l->key, sizeof l->key); /* the key does not outlive the listener */
  mp__handle_free(l);                    /* never free()d: a second close sees LISTENER_DEAD */
  return 0;
}

/* Python's Client(): answer the listener's challenge, then challenge it
 * (answer_challenge(), deliver_challenge()); the messages of pyauth.c. */
static int hs_client_py(mp_connection *c, const void *key, size_t keylen, const mp__deadline *d) {
  uint8_t msg[MP__PY_MAX], mac[64], chal[MP__PY_CHAL_LEN];
  size_t ml;
  ssize_t n = mp__conn_io_recv(c, msg, sizeof msg, d);
  if (n < 0)
    return n == -EBADMSG ? -EACCES : (int)n;
  int r = mp__py_answer(key, keylen, msg, (size_t)n, mac, &ml);
  if (r < 0 || (r = mp__conn_io_send(c, mac, ml, d)) < 0)
    return r;
  if ((n = mp__conn_io_recv(c, msg, sizeof msg, d)) < 0)
    return n == -EBADMSG || n == -EPIPE ? -EACCES : (int)n;
  if (n != MP__PY_WELCOME_LEN || memcmp(msg, MP__PY_WELCOME, MP__PY_WELCOME_LEN))
    return -EACCES;
  if ((r = mp__py_challenge(chal)) < 0 || (r = mp__conn_io_send(c, chal, sizeof chal, d)) < 0)
    return r;
  if ((n = mp__conn_io_recv(c, msg, sizeof msg, d)) < 0)
    return n == -EBADMSG ? -EACCES : (int)n;
  bool ok = mp__py_verify(key, keylen, chal, msg, (size_t)n) == 0;
  r = ok ? mp__conn_io_send(c, MP__PY_WELCOME, MP__PY_WELCOME_LEN, d)
         : mp__conn_io_send(c, MP__PY_FAILURE, MP__PY_FAILURE_LEN, d);
  return ok ? r : -EACCES;
}

static int client_connect(const char *address, const void *authkey, size_t keylen, bool py,
                          double timeout, mp_connection **ret) {
  if (!address || !ret || (authkey && keylen > MP__KEY_MAX))
    return -EINVAL;
  mp__deadline d;
  if (mp__deadline_init(&d, timeout) < 0)
    return -EINVAL;
  struct addr a;
  int r = mp__addr_parse(address, &a);
  if (r < 0)
    return r;
  int fd = mp__connect_to(&a, listener_type(&a, py), &d);
  if (fd < 0)
    return fd;
  mp_connection *c;
  r = mp_connection_from_fd(fd, py ? MP_CONNECTION_PYTHON : 0, &c);
  if (r < 0) {
    close(fd);
    return r;
  }
  if (py) {
    r = authkey ? hs_client_py(c, authkey, keylen, &d) : 0;
  } else {
    struct hs_io io = {mp__conn_io_send, mp__conn_io_recv, c};
    r = mp__hs_client(&io, authkey, keylen, &d);
  }
  if (r < 0) {
    mp_connection_close(c);
    return r == -EPIPE ? -EACCES : r;
  }
  *ret = c;
  return 0;
}

MP_EXPORT int mp_client_connect(const char *address, const void *authkey, size_t keylen,
                                double timeout, mp_connection **ret) {
  return client_connect(address, authkey, keylen, false, timeout, ret);
}

MP_EXPORT int mp_client_connect_python(const char *address, const void *authkey, size_t keylen,
                                       double timeout, mp_connection **ret) {
  return client_connect(address, authkey, keylen, true, timeout, ret);
}
