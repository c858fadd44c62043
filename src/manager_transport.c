/* SPDX-License-Identifier: MIT */
/*
 * The Manager's transport, below any request: the same for a Manager's
 * clients and server and for Listener/Client (listener.c).
 *
 * Map of this file:
 *   addresses and sockets: "unix:/path", "@name", "host:port"; listening
 *     and connecting sockets, with deadlines
 *   stream frames (struct chan): a 4-byte big-endian length, then the
 *     MessagePack message; receives look, poll a while, then sleep
 *     (mp__recv_wait, budgets in spin.h)
 *   the handshake: mutual HMAC-SHA256 challenge over any message transport
 *     (frames here, or mp_connection for Listener/Client)
 * No protocol comment of a shared structure lives here: all of it is one
 * process's private memory. No crash points.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "internal.h"
#include "manager_internal.h"
#include "wire.h"

/* ------------------------------------------------ addresses and sockets */

#define ADDR_MAX 256

/* Parse "unix:/path", "/path", "unix:@name" or "@name" (Linux's abstract
 * namespace: a name with no file, Python's '\0name'), or "host:port"
 * ("[v6]:port"). */
int mp__addr_parse(const char *s, struct addr *a) {
  memset(a, 0, sizeof *a);
  if (!s || !*s)
    return -EINVAL;
  if (!strncmp(s, "unix:", 5) || s[0] == '/' || s[0] == '@') {
    const char *path = strncmp(s, "unix:", 5) ? s : s + 5;
    struct sockaddr_un *un = (struct sockaddr_un *)&a->ss;
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof un->sun_path || (path[0] == '@' && n == 1))
      return -EINVAL;
    un->sun_family = AF_UNIX;
    if (path[0] == '@') {
      /* abstract: a NUL, then the name's bytes, counted by the length (the
       * kernel takes every byte up to it as the name, so no NUL after) */
      un->sun_path[0] = 0;
      memcpy(un->sun_path + 1, path + 1, n - 1);
      a->len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
    } else {
      memcpy(un->sun_path, path, n + 1);
      a->len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
    }
    a->family = AF_UNIX;
    return 0;
  }
  const char *colon = strrchr(s, ':');
  if (!colon || colon == s || !colon[1] || strlen(s) >= ADDR_MAX)
    return -EINVAL;
  char host[ADDR_MAX];
  size_t hl = (size_t)(colon - s);
  memcpy(host, s, hl);
  host[hl] = 0;
  if (host[0] == '[' && hl >= 2 && host[hl - 1] == ']') {
    memmove(host, host + 1, hl - 2);
    host[hl - 2] = 0;
  }
  char *end;
  long port = strtol(colon + 1, &end, 10);
  if (*end || port < 0 || port > 65535)
    return -EINVAL;
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res;
  if (getaddrinfo(host, colon + 1, &hints, &res) != 0 || !res)
    return -EINVAL;
  memcpy(&a->ss, res->ai_addr, res->ai_addrlen);
  a->len = res->ai_addrlen;
  a->family = res->ai_family;
  freeaddrinfo(res);
  return 0;
}

/* Format an address as mp__addr_parse() reads it. */
ssize_t mp__addr_format(const struct addr *a, char *buf, size_t cap) {
  char tmp[ADDR_MAX + 16];
  if (a->family == AF_UNIX) {
    const char *path = ((const struct sockaddr_un *)&a->ss)->sun_path;
    if (path[0])
      snprintf(tmp, sizeof tmp, "unix:%s", path);
    else /* abstract (mp__addr_parse() made it: the name ends at a->len) */
      snprintf(tmp, sizeof tmp, "unix:@%.*s",
               (int)(a->len - offsetof(struct sockaddr_un, sun_path) - 1), path + 1);
  } else {
    char host[INET6_ADDRSTRLEN];
    const void *in;
    unsigned port;
    if (a->family == AF_INET) {
      const struct sockaddr_in *s4 = (const struct sockaddr_in *)&a->ss;
      in = &s4->sin_addr;
      port = ntohs(s4->sin_port);
    } else {
      const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&a->ss;
      in = &s6->sin6_addr;
      port = ntohs(s6->sin6_port);
    }
    if (!inet_ntop(a->family, in, host, sizeof host))
      return -EINVAL;
    snprintf(tmp, sizeof tmp, a->family == AF_INET6 ? "[%s]:%u" : "%s:%u", host, port);
  }
  size_t n = strlen(tmp);
  if (!buf || n >= cap)
    return -EMSGSIZE;
  memcpy(buf, tmp, n + 1);
  return (ssize_t)n;
}

/* A Unix socket's file, or "" for an abstract name (which has no file to
 * chmod or unlink: unlink("") fails harmlessly). */
const char *mp__addr_path(const struct addr *a) {
  return ((const struct sockaddr_un *)&a->ss)->sun_path;
}

/* A listening stream socket at a; a Unix socket gets mode 0600. The bound
 * address (a TCP port chosen by the kernel) is written back to *a. */
int mp__listen_at(struct addr *a, int type) {
  int fd = socket(a->family, type | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -errno;
  int r = 0;
  if (a->family == AF_UNIX) {
    /* 0600 from the start: no moment where another user could connect.
     * Linux makes the socket's file with the socket inode's mode less the
     * umask, so a mode set here caps the file's; the umask itself is the
     * whole process's and must not change under its other threads. The
     * chmod then gives the owner's bits back if the umask took them. */
    if (fchmod(fd, 0600) < 0)
      r = -errno;
    if (r == 0 && bind(fd, (struct sockaddr *)&a->ss, a->len) < 0)
      r = -errno;
    if (r == 0 && mp__addr_path(a)[0] && chmod(mp__addr_path(a), 0600) < 0)
      r = -errno;
  } else {
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&a->ss, a->len) < 0)
      r = -errno;
    socklen_t l = sizeof a->ss;
    if (r == 0 && getsockname(fd, (struct sockaddr *)&a->ss, &l) < 0)
      r = -errno;
    a->len = l;
  }
  if (r == 0 && listen(fd, 128) < 0)
    r = -errno;
  if (r < 0) {
    close(fd);
    return r;
  }
  return fd;
}

/* Connect a stream (or seqpacket) socket to a, within the deadline. */
int mp__connect_to(const struct addr *a, int type, const mp__deadline *d) {
  int fd = socket(a->family, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0)
    return -errno;
  int r = 0;
  if (connect(fd, (const struct sockaddr *)&a->ss, a->len) < 0) {
    r = -errno;
    if (r == -EINPROGRESS || r == -EAGAIN || r == -EINTR) {
      r = mp__wait_fd(fd, POLLOUT, d);
      int err = 0;
      socklen_t el = sizeof err;
      if (r == 0 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) == 0 && err)
        r = -err;
    }
  }
  if (r == 0) {
    int fl = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    if (a->family != AF_UNIX) {
      int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    return fd;
  }
  close(fd);
  return r;
}

/* ------------------------------------------------------- stream frames */

void mp__chan_close(struct chan *c) {
  if (c->fd >= 0)
    close(c->fd);
  free(c->buf);
  mp__chan_init(c, -1);
}

/* Send all of buf. 0, -ETIMEDOUT, -EPIPE when the peer is gone. */
int mp__chan_send(struct chan *c, const void *buf, size_t len, const mp__deadline *d) {
  const char *p = buf;
  int flags = MSG_NOSIGNAL | (d->forever ? 0 : MSG_DONTWAIT);
  while (len) {
    ssize_t n = send(c->fd, p, len, flags);
    if (n >= 0) {
      p += n;
      len -= (size_t)n;
      continue;
    }
    if (errno == EINTR)
      continue;
    if (errno == EAGAIN) {
      int r = mp__wait_fd(c->fd, POLLOUT, d);
      if (r < 0)
        return r;
      continue;
    }
    return errno == ECONNRESET || errno == EPIPE || errno == ENOTCONN ? -EPIPE : -errno;
  }
  return 0;
}

/* Read more bytes into the buffer. 0, -EPIPE at end of file, -ETIMEDOUT. */
static int chan_fill(struct chan *c, size_t want, const mp__deadline *d) {
  if (c->off && c->off == c->len)
    c->off = c->len = 0;
  if (c->cap - c->len < want) {
    if (c->off) {
      memmove(c->buf, c->buf + c->off, c->len - c->off);
      c->len -= c->off;
      c->off = 0;
    }
    if (c->cap - c->len < want) {
      size_t nc = c->len + want;
      if (nc < 4096)
        nc = 4096;
      char *b = realloc(c->buf, nc);
      if (!b)
        return -ENOMEM;
      c->buf = b;
      c->cap = nc;
    }
  }
  /* Look, then poll a while, then sleep (mp__recv_wait). MP_NOWAIT looks
   * once. */
  int flags = MSG_DONTWAIT;
  bool spun = false;
  for (;;) {
    ssize_t n = recv(c->fd, c->buf + c->len, c->cap - c->len, flags);
    if (n > 0) {
      c->len += (size_t)n;
      return 0;
    }
    if (n == 0)
      return -EPIPE;
    if (errno == EINTR)
      continue;
    if (errno != EAGAIN)
      return errno == ECONNRESET || errno == ENOTCONN ? -EPIPE : -errno;
    int r = mp__recv_wait(c->fd, d, &flags, &spun);
    if (r < 0)
      return r;
  }
}

/* Receive one frame of at most max bytes; *p points into the channel's
 * buffer until the next receive. -EMSGSIZE for a longer one (the stream can
 * no longer be trusted: the caller closes it). */
ssize_t mp__chan_recv(struct chan *c, size_t max, const char **p, const mp__deadline *d) {
  while (c->len - c->off < MP__FRAME_HDR) {
    int r = chan_fill(c, MP__FRAME_HDR, d);
    if (r < 0)
      return r;
  }
  const unsigned char *h = (const unsigned char *)c->buf + c->off;
  size_t n = (size_t)h[0] << 24 | (size_t)h[1] << 16 | (size_t)h[2] << 8 | h[3];
  if (n > max)
    return -EMSGSIZE;
  while (c->len - c->off < MP__FRAME_HDR + n) {
    int r = chan_fill(c, MP__FRAME_HDR + n - (c->len - c->off), d);
    if (r < 0)
      return r;
  }
  *p = c->buf + c->off + MP__FRAME_HDR;
  c->off += MP__FRAME_HDR + n;
  return (ssize_t)n;
}

/* Send a small raw frame (handshake). */
int mp__chan_send_raw(struct chan *c, const void *buf, size_t len, const mp__deadline *d) {
  char f[MP__FRAME_HDR + MP__HS_MAX];
  f[0] = f[1] = 0;
  f[2] = (char)(len >> 8);
  f[3] = (char)len;
  memcpy(f + MP__FRAME_HDR, buf, len);
  return mp__chan_send(c, f, MP__FRAME_HDR + len, d);
}

/* ------------------------------------------------------------ handshake */

/* The handshake's transports (struct hs_io): frames on a manager channel,
 * and mp_connection (Listener/Client). */
int mp__chan_io_send(void *ctx, const void *buf, size_t len, const mp__deadline *d) {
  return mp__chan_send_raw(ctx, buf, len, d);
}

ssize_t mp__chan_io_recv(void *ctx, void *buf, size_t cap, const mp__deadline *d) {
  const char *p;
  ssize_t n = mp__chan_recv(ctx, cap, &p, d);
  if (n == -EMSGSIZE)
    return -EBADMSG;
  if (n >= 0)
    memcpy(buf, p, (size_t)n);
  return n;
}

double mp__deadline_left(const mp__deadline *d) {
  if (d->forever)
    return MP_FOREVER;
  int64_t left = (int64_t)d->at.tv_sec * 1000000000 + d->at.tv_nsec - mp__now_ns();
  return left > 0 ? (double)left / 1e9 : 0;
}

int mp__conn_io_send(void *ctx, const void *buf, size_t len, const mp__deadline *d) {
  return mp_connection_send(ctx, buf, len, mp__deadline_left(d));
}

ssize_t mp__conn_io_recv(void *ctx, void *buf, size_t cap, const mp__deadline *d) {
  ssize_t n = mp_connection_recv(ctx, buf, cap, mp__deadline_left(d));
  /* too long, or (on TCP) not libmp's framing at all: not a libmp peer */
  return n == -EMSGSIZE || n == -EPROTO ? -EBADMSG : n;
}

/* The server's side: challenge the client, then answer its challenge. A
 * connection that fails is told so and refused with -EACCES. */
int mp__hs_server(const struct hs_io *io, const void *key, size_t keylen, const mp__deadline *d) {
  uint8_t msg[MP__HS_MAX];
  if (!key)
    return io->send(io->ctx, MP__HS_OPEN, MP__HS_MAGIC_LEN, d);
  uint8_t nonce[MP__NONCE_LEN];
  int r = mp__random_bytes(nonce, sizeof nonce);
  if (r < 0)
    return r;
  memcpy(msg, MP__HS_AUTH, MP__HS_MAGIC_LEN);
  memcpy(msg + MP__HS_MAGIC_LEN, nonce, MP__NONCE_LEN);
  if ((r = io->send(io->ctx, msg, MP__HS_MAGIC_LEN + MP__NONCE_LEN, d)) < 0)
    return r;
  ssize_t n = io->recv(io->ctx, msg, sizeof msg, d);
  if (n < 0)
    return n == -EBADMSG ? -EACCES : (int)n;
  if (mp__hs_check(key, keylen, 'C', nonce, msg, (size_t)n) < 0) {
    io->send(io->ctx, MP__HS_FAILURE, MP__HS_MAGIC_LEN, d);
    return -EACCES;
  }
  mp__client_proved(); /* nothing outside a manager server's threads */
  if ((r = io->send(io->ctx, MP__HS_WELCOME, MP__HS_MAGIC_LEN, d)) < 0)
    return r;
  /* the client's challenge */
  if ((n = io->recv(io->ctx, msg, sizeof msg, d)) < 0)
    return n == -EBADMSG ? -EACCES : (int)n;
  if (mp__hs_parse_challenge(msg, (size_t)n, nonce) != 1)
    return -EACCES;
  uint8_t mac[MP__MAC_LEN];
  if ((r = mp__hs_answer(key, keylen, 'S', nonce, mac)) < 0)
    return r;
  if ((r = io->send(io->ctx, mac, sizeof mac, d)) < 0)
    return r;
  if ((n = io->recv(io->ctx, msg, sizeof msg, d)) < 0)
    return n == -EBADMSG ? -EACCES : (int)n;
  return mp__hs_parse_verdict(msg, (size_t)n);
}

/* The client's side. A client with a key insists that the server proves it
 * has the key too; a client without one accepts only an open server. */
int mp__hs_client(const struct hs_io *io, const void *key, size_t keylen, const mp__deadline *d) {
  uint8_t msg[MP__HS_MAX], nonce[MP__NONCE_LEN];
  ssize_t n = io->recv(io->ctx, msg, sizeof msg, d);
  if (n < 0)
    return n == -EBADMSG ? -EACCES : (int)n;
  int kind = mp__hs_parse_challenge(msg, (size_t)n, nonce);
  if (kind == -EUSERS)
    return kind; /* a manager whose client slots are all taken */
  if (kind < 0 || (kind == 1) != (key != NULL))
    return -EACCES;
  if (kind == 0)
    return 0;
  uint8_t mac[MP__MAC_LEN];
  int r = mp__hs_answer(key, keylen, 'C', nonce, mac);
  if (r < 0 || (r = io->send(io->ctx, mac, sizeof mac, d)) < 0)
    return r;
  if ((n = io->recv(io->ctx, msg, sizeof msg, d)) < 0)
    return n == -EBADMSG || n == -EPIPE ? -EACCES : (int)n;
  if (mp__hs_parse_verdict(msg, (size_t)n) < 0)
    return -EACCES;
  if ((r = mp__random_bytes(nonce, sizeof nonce)) < 0)
    return r;
  memcpy(msg, MP__HS_AUTH, MP__HS_MAGIC_LEN);
  memcpy(msg + MP__HS_MAGIC_LEN, nonce, MP__NONCE_LEN);
  if ((r = io->send(io->ctx, msg, MP__HS_MAGIC_LEN + MP__NONCE_LEN, d)) < 0)
    return r;
  if ((n = io->recv(io->ctx, msg, sizeof msg, d)) < 0)
    return n == -EBADMSG ? -EACCES : (int)n;
  bool ok = mp__hs_check(key, keylen, 'S', nonce, msg, (size_t)n) == 0;
  r = io->send(io->ctx, ok ? MP__HS_WELCOME : MP__HS_FAILURE, MP__HS_MAGIC_LEN, d);
  if (!ok)
    return -EACCES;
  return r;
}
