/* SPDX-License-Identifier: MIT */
/*
 * Manager: a server of shared objects, its clients and proxies, and
 * Listener/Client.
 *
 * Map of this file:
 *   1. addresses and sockets
 *   2. channels: frames on a stream socket (4-byte big-endian length, then
 *      MessagePack), with deadlines; 2b. the shared channel in the family
 *      heap that same-family clients use instead (its protocol is there)
 *   3. the handshake (mutual HMAC-SHA256 challenge) over any message transport
 *   4. the server: objects, the built-in types' methods, one thread per client
 *   5. registered types
 *   6. manager handles: listen, start, serve, connect, shutdown
 *   7. proxies and their typed calls
 *   8. Listener and Client
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
 * (client_gone: looked at before each take and after each wait).
 *   authed, pending  connections past the handshake and in it (srv_accept
 *               bounds both); each object's `holder` is the connection that
 *               created it, the only one that may release it.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <sodium.h>
#include <unistd.h>

#include "crash.h"
#include "internal.h"
#include "mp/pool.h"
#include "pyauth.h"
#include "wire.h"

/* ------------------------------------------------ 1. addresses and sockets */

struct addr {
  struct sockaddr_storage ss;
  socklen_t len;
  int family;
};

#define KEY_MAX 1024
#define ADDR_MAX 256

/* Parse "unix:/path", "/path", "unix:@name" or "@name" (Linux's abstract
 * namespace: a name with no file, Python's '\0name'), or "host:port"
 * ("[v6]:port"). */
static int addr_parse(const char *s, struct addr *a) {
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

/* Format an address as addr_parse() reads it. */
static ssize_t addr_format(const struct addr *a, char *buf, size_t cap) {
  char tmp[ADDR_MAX + 16];
  if (a->family == AF_UNIX) {
    const char *path = ((const struct sockaddr_un *)&a->ss)->sun_path;
    if (path[0])
      snprintf(tmp, sizeof tmp, "unix:%s", path);
    else /* abstract (addr_parse() made it: the name ends at a->len) */
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
static const char *addr_path(const struct addr *a) {
  return ((const struct sockaddr_un *)&a->ss)->sun_path;
}

/* A listening stream socket at a; a Unix socket gets mode 0600. The bound
 * address (a TCP port chosen by the kernel) is written back to *a. */
static int listen_at(struct addr *a, int type) {
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
    if (r == 0 && addr_path(a)[0] && chmod(addr_path(a), 0600) < 0)
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
static int connect_to(const struct addr *a, int type, const mp__deadline *d) {
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

/* ----------------------------------------------------------- 2. channels */

struct chan {
  int fd;
  char *buf; /* received bytes not yet consumed: buf[off..len) */
  size_t off, len, cap;
};

static void chan_init(struct chan *c, int fd) { *c = (struct chan){.fd = fd}; }

static void chan_close(struct chan *c) {
  if (c->fd >= 0)
    close(c->fd);
  free(c->buf);
  chan_init(c, -1);
}

/* Send all of buf. 0, -ETIMEDOUT, -EPIPE when the peer is gone. */
static int chan_send(struct chan *c, const void *buf, size_t len, const mp__deadline *d) {
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
static ssize_t chan_recv(struct chan *c, size_t max, const char **p, const mp__deadline *d) {
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
static int chan_send_raw(struct chan *c, const void *buf, size_t len, const mp__deadline *d) {
  char f[MP__FRAME_HDR + MP__HS_MAX];
  f[0] = f[1] = 0;
  f[2] = (char)(len >> 8);
  f[3] = (char)len;
  memcpy(f + MP__FRAME_HDR, buf, len);
  return chan_send(c, f, MP__FRAME_HDR + len, d);
}

/* ---------------------------------------------- 2b. the shared channel */

/*
 * A client whose process shares the family heap with the server (the
 * server of mp_manager_start() is forked from the starter after the heap is
 * mapped, so the starter and every process it forks afterwards qualify)
 * carries its requests and replies through a block of that heap instead of
 * the socket. The encoding, the dispatch (srv_request) and the errors are
 * those of the socket path; only the transport differs.
 *
 * Setting up. After the handshake, the client allocates a block, writes
 * SH_MAGIC and 16 random bytes (nonce) into it and sends an offer over the
 * socket: [SH_OP_OFFER, the block's address, "", [nonce], -1]. The server
 * accepts only a 16-aligned address whose whole block lies in its own heap
 * and holds the same magic and nonce (proof that both processes map the
 * same memory there, not two heaps at one address), and answers 0 over the
 * socket; from the next request on, that connection uses the block. Any
 * refusal or failure leaves the connection on the socket path.
 *
 * The socket stays open: it carries a message that does not fit the block
 * (either direction, one message at a time: the client makes one call at a
 * time, so order is kept), the client's wake-ups of a sleeping server, and
 * each side's death (POLLHUP / end of file).
 *
 * Fields and who writes them (the client is synchronous: one request, then
 * its reply, so one data area serves both directions):
 *   req_len, data   the client, before publishing req_seq; the server reads
 *                   them only after an acquire load shows a new req_seq and
 *                   is done with them before it writes its reply;
 *   req_seq         the client: one store per request (seq_cst, so also a
 *                   release of the bytes above);
 *   client_cpu      the client, beside req_len: the CPU it ran on, a hint
 *                   the server thread uses to keep off that CPU (see
 *                   sh_keep_off); any value is harmless;
 *   resp_len, data  the server, before publishing resp_seq; SH_ON_SOCKET in
 *                   resp_len: the reply is the next frame on the socket,
 *                   sent right after resp_seq moves (before, it could fill
 *                   the socket's buffer while the client waits on the
 *                   block);
 *   resp_seq        the server: one store per reply, also for a reply sent on
 *                   the socket (so that a client sleeping on the futex word
 *                   learns of it);
 *   server_asleep   the server sets 1 (seq_cst) before it re-checks req_seq
 *                   and sleeps in poll() on the socket; a client that
 *                   published a request exchanges it to 0 and, when it was
 *                   1, sends a wake frame (a frame of length 0, which is
 *                   never a request) on the socket. The socket is the
 *                   server's wake-up because it already sleeps in poll() on
 *                   it to learn of the client's death: no second descriptor
 *                   has to be passed between the processes.
 *   client_asleep   likewise for the client, which sleeps with a futex wait
 *                   on resp_seq in slices of at most 100 ms; the server wakes
 *                   it with a futex wake only when it exchanged a 1 to 0.
 *                   Between slices the client polls its socket (timeout 0):
 *                   POLLHUP or end of file means the server is gone.
 *   gone            each side ORs its bit in when it lets go of the block
 *                   without having seen the other's end (see freeing).
 * A request larger than the block goes on the socket as an ordinary frame,
 * without req_seq; the server reads socket frames as requests.
 *
 * Waiting. Each side first spins for at most SH_SPIN_NS, reading the clock
 * and yielding the CPU (sched_yield) every 64 pauses: with two CPUs, two
 * clients and two server threads outnumber the CPUs, and a spinner must not
 * keep the thread it waits for off a CPU. The server also polls its socket
 * (timeout 0) every 64 pauses, for a large request or a dead client.
 *
 * Freeing (the block belongs to both; exactly one side frees it):
 *   - a side that sees the other's end of the socket closed (end of file,
 *     POLLHUP) frees the block: the other side closes its socket only after
 *     it let go of the block, or it died;
 *   - a side that ends without having seen that (mp_manager_free(), a
 *     shutdown, a server thread ending with its server) first looks at the
 *     socket once more (POLLHUP: as above), else ORs its bit into `gone`
 *     and frees the block only when the other's bit was already there.
 *     A server thread ending because its own server shuts down skips the
 *     look (its socket was shut down by its own server) and only ORs.
 * What a SIGKILL leaves behind (the crash points, in protocol order; each
 * is killed at by tests/test_manager_crash.c):
 *   manager.sh.offer.sent       client killed after offering its block,
 *                               before the answer: the server accepted it
 *                               (or not), answers on the socket, sees the
 *                               end of file and frees the block it took;
 *                               a block it refused is the family heap's
 *                               (freed with the family);
 *   manager.sh.offer.accepted   server killed after taking the block,
 *                               before its answer: the client's receive
 *                               ends with the end of file (-EPIPE) and the
 *                               client frees the block;
 *   manager.sh.next.server_asleep  server killed after announcing its
 *                               sleep: the client's wake frame (or its look
 *                               at the socket, within 100 ms) meets the
 *                               closed socket: -EPIPE, block freed by it;
 *   manager.sh.request.written  client killed after writing a request,
 *                               before publishing it: nothing was
 *                               published; the server sees the end of
 *                               file, drops the client as on the socket
 *                               path (its locks are released) and frees
 *                               the block;
 *   manager.sh.request.published  client killed after publishing: the
 *                               server carries the request out (it looks
 *                               at the block before it reads the end of
 *                               file, as a request sent whole on the
 *                               socket is read before its end), answers
 *                               into the block, then drops the client and
 *                               frees the block; a get or an acquire takes
 *                               nothing (client_gone);
 *   manager.sh.wait.client_asleep  client killed while it sleeps on the
 *                               reply: as above; a get still waiting takes
 *                               nothing, and its thread ends within 1 s;
 *   manager.sh.reply.written    server killed after writing a reply,
 *                               before publishing it: nothing torn is
 *                               read; the client's next look at its socket
 *                               (at most 100 ms later) shows POLLHUP: the
 *                               call fails with -EPIPE and the client
 *                               frees the block; later calls too;
 *   manager.sh.reply.published  server killed after publishing, before
 *                               waking the client: the client's slice ends
 *                               (100 ms) and it reads the whole reply; its
 *                               next call fails with -EPIPE;
 *   manager.sh.release.marked   a side killed after ORing its bit into
 *                               `gone`: when it was first, the other side
 *                               frees the block when it lets go (end of
 *                               file or its own bit); when it was second
 *                               (both sides ending at once), one block is
 *                               leaked: it is the family heap's, freed
 *                               with the family. Also leaked: a block
 *                               whose both sides are killed.
 */

#define SH_MAGIC 0x6d705348u  /* "mpSH" */
#define SH_OP_OFFER 5         /* a request op beside wire.h's, manager-only */
#define SH_BLOCK (32u * 1024) /* the whole block */
#define SH_NONCE 16
#define SH_ON_SOCKET UINT32_MAX
#define SH_SPIN_NS 40000
#define SH_YIELD_EVERY 64     /* pauses between yields (and clock reads) */
#define SH_SLICE_NS 100000000 /* the client's sleep slice: 100 ms */
#define SH_GONE_CLIENT 1u
#define SH_GONE_SERVER 2u

/* The client's words and the server's words lie 64 bytes apart: on a block
 * of the heap (16-byte aligned) each group of 12 bytes then sits in a cache
 * line of its own (padding, not _Alignas, which the heap cannot honour). */
struct shchan {
  uint32_t magic;
  uint8_t nonce[SH_NONCE];
  _Atomic uint32_t gone;
  char pad0[40];
  _Atomic uint32_t req_seq; /* offset 64 */
  _Atomic uint32_t server_asleep;
  uint32_t req_len;
  int32_t client_cpu; /* the client's CPU when it published (see sh_keep_off) */
  char pad1[48];
  _Atomic uint32_t resp_seq; /* offset 128 */
  _Atomic uint32_t client_asleep;
  uint32_t resp_len;
  char pad2[52];
  char data[]; /* offset 192 */
};
_Static_assert(offsetof(struct shchan, req_seq) == 64 && offsetof(struct shchan, resp_seq) == 128 &&
                   offsetof(struct shchan, data) == 192,
               "the channel's layout");

#define SH_CAP (SH_BLOCK - offsetof(struct shchan, data))

/* Calls of this process answered through a shared channel (for tests). */
static _Atomic long sh_calls;

long mp__manager_channel_calls(void) { return atomic_load(&sh_calls); }

/* Whether the peer's end of fd is closed: POLLHUP, an error, or end of file
 * ahead in the stream. Never blocks. */
static bool sock_peer_gone(int fd) {
  struct pollfd p = {.fd = fd, .events = POLLIN, .revents = 0};
  int r;
  do
    r = poll(&p, 1, 0);
  while (r < 0 && errno == EINTR);
  if (r <= 0)
    return false;
  if (p.revents & (POLLHUP | POLLERR | POLLNVAL))
    return true;
  char b;
  ssize_t n = recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
  return n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR);
}

/* Let go of the block (see "Freeing" above). peer_gone: this side saw the
 * other's end closed; look: check the socket first. */
static void sh_release(struct shchan *b, uint32_t mine, bool peer_gone, int fd, bool look) {
  if (!b)
    return;
  if (!peer_gone && look && fd >= 0)
    peer_gone = sock_peer_gone(fd);
  if (!peer_gone) {
    uint32_t prev = atomic_fetch_or(&b->gone, mine);
    MP__CRASH(MANAGER_SH_RELEASE_MARKED);
    if (!(prev & (SH_GONE_CLIENT | SH_GONE_SERVER) & ~mine))
      return; /* the other side frees it */
  }
  b->magic = 0;
  mp_heap_free(b);
}

/* ---------------------------------------------------------- 3. handshake */

/* A message transport for the handshake: manager channels or connections. */
struct hs_io {
  int (*send)(void *ctx, const void *buf, size_t len, const mp__deadline *d);
  ssize_t (*recv)(void *ctx, void *buf, size_t cap, const mp__deadline *d);
  void *ctx;
};

/* A manager server's thread learns that its client proved the key (4). */
static void client_proved(void);

static int chan_io_send(void *ctx, const void *buf, size_t len, const mp__deadline *d) {
  return chan_send_raw(ctx, buf, len, d);
}

static ssize_t chan_io_recv(void *ctx, void *buf, size_t cap, const mp__deadline *d) {
  const char *p;
  ssize_t n = chan_recv(ctx, cap, &p, d);
  if (n == -EMSGSIZE)
    return -EBADMSG;
  if (n >= 0)
    memcpy(buf, p, (size_t)n);
  return n;
}

static double deadline_left(const mp__deadline *d) {
  if (d->forever)
    return MP_FOREVER;
  int64_t left = (int64_t)d->at.tv_sec * 1000000000 + d->at.tv_nsec - mp__now_ns();
  return left > 0 ? (double)left / 1e9 : 0;
}

static int conn_io_send(void *ctx, const void *buf, size_t len, const mp__deadline *d) {
  return mp_connection_send(ctx, buf, len, deadline_left(d));
}

static ssize_t conn_io_recv(void *ctx, void *buf, size_t cap, const mp__deadline *d) {
  ssize_t n = mp_connection_recv(ctx, buf, cap, deadline_left(d));
  /* too long, or (on TCP) not libmp's framing at all: not a libmp peer */
  return n == -EMSGSIZE || n == -EPROTO ? -EBADMSG : n;
}

/* The server's side: challenge the client, then answer its challenge. A
 * connection that fails is told so and refused with -EACCES. */
static int hs_server(const struct hs_io *io, const void *key, size_t keylen,
                     const mp__deadline *d) {
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
  client_proved(); /* nothing outside a manager server's threads */
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
static int hs_client(const struct hs_io *io, const void *key, size_t keylen,
                     const mp__deadline *d) {
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

/* ------------------------------------------------------------ 4. the server */

enum kind {
  K_CUSTOM = 0,
  K_DICT,
  K_LIST,
  K_NAMESPACE,
  K_QUEUE,
  K_LOCK,
  K_RLOCK,
  K_EVENT,
  K_SEMAPHORE,
  K_BSEMAPHORE,
  K_CONDITION,
  K_VALUE,
  K_ARRAY,
  K_JQUEUE,
  K_SET,
  K_BARRIER,
  K_POOL,
};

static const char *const kind_names[] = {
    [K_DICT] = "dict",           [K_LIST] = "list",           [K_NAMESPACE] = "Namespace",
    [K_QUEUE] = "Queue",         [K_LOCK] = "Lock",           [K_RLOCK] = "RLock",
    [K_EVENT] = "Event",         [K_SEMAPHORE] = "Semaphore", [K_BSEMAPHORE] = "BoundedSemaphore",
    [K_CONDITION] = "Condition", [K_VALUE] = "Value",         [K_ARRAY] = "Array",
    [K_JQUEUE] = "JoinableQueue", [K_SET] = "set", [K_BARRIER] = "Barrier",
    [K_POOL] = "Pool",
};
#define N_KINDS ((int)(sizeof kind_names / sizeof kind_names[0]))

struct custom_type {
  char name[64];
  mp_manager_constructor ctor;
  mp_manager_destructor dtor;
  const mp_manager_method_def *methods;
  size_t n;
};

#define MAX_TYPES 64
static struct custom_type types[MAX_TYPES];
static size_t n_types;

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

#define MAX_FUNCS 64
static struct pool_func funcs[MAX_FUNCS];
static size_t n_funcs;

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
  bool mark;   /* reachable (srv_collect) */
};

struct client {
  struct server *srv;
  struct chan ch;
  uint64_t id;
  bool stop_after_reply; /* this client asked for shutdown */
  struct shchan *sh;     /* the shared channel, once accepted (2b) */
  uint32_t req_seen;     /* the last request sequence taken from it */
  uint32_t resp_seq;     /* the last reply sequence published in it */
  cpu_set_t cpus;        /* the CPUs this thread may use (sh_keep_off) */
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
#define NAME_MAX_LEN 64
struct name_entry {
  char name[NAME_MAX_LEN];
  int64_t id;
};

static void obj_destroy(struct sobj *o) {
  if (o->kind == K_CUSTOM && o->ct->dtor)
    o->ct->dtor(o->self);
  if (o->kind == K_POOL && o->self)
    mp_pool_free(o->self); /* terminates: its workers are killed */
  mp_obj_free(o->val);
  free(o);
}

/* Connection bounds: see srv_accept(). */
#define HANDSHAKE_TIMEOUT 5.0
#define MAX_CLIENTS 1024
#define MAX_HANDSHAKES 64

/* The client this server thread serves (one thread per client). */
static __thread struct client *srv_self;

/* Whether the client this thread serves is gone: its end of the socket is
 * closed (by its process's end, SIGKILL included, or by a call that gave
 * up; clients never half-close). A request must not take an item or a unit
 * for a client that can no longer receive it: the server looks right
 * before it would take one, and after each wait. One poll(), no sleep. */
static bool client_gone(void) {
  struct client *c = srv_self;
  if (!c || c->ch.fd < 0)
    return false;
  struct pollfd p = {.fd = c->ch.fd, .events = POLLRDHUP, .revents = 0};
  int r;
  do
    r = poll(&p, 1, 0);
  while (r < 0 && errno == EINTR);
  return r > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL));
}

/* How long a waiting request sleeps between looks at its client: a dead
 * client's request ends within this, and frees its thread and slot. */
#define SRV_WAIT_SLICE_NS 1000000000

/* Wait on the server's condition variable until the deadline. 0 when woken
 * (the caller re-checks), -ETIMEDOUT, -EPIPE when the server is stopping or
 * the client is gone, -ESRCH when the object was released. */
static int srv_wait(struct server *s, struct sobj *o, const mp__deadline *d) {
  if (s->stopping)
    return -EPIPE;
  if (o->released)
    return -ESRCH;
  if (d->nowait || mp__deadline_passed(d))
    return -ETIMEDOUT;
  o->busy++;
  int64_t slice = mp__now_ns() + SRV_WAIT_SLICE_NS;
  struct timespec at = {(time_t)(slice / 1000000000), (long)(slice % 1000000000)};
  if (!d->forever &&
      (d->at.tv_sec < at.tv_sec || (d->at.tv_sec == at.tv_sec && d->at.tv_nsec < at.tv_nsec)))
    at = d->at;
  pthread_cond_timedwait(&s->cv, &s->mu, &at);
  o->busy--;
  if (s->stopping)
    return -EPIPE;
  if (o->released)
    return -ESRCH;
  if (client_gone())
    return -EPIPE;
  return 0;
}

static void wake_all(struct server *s) { pthread_cond_broadcast(&s->cv); }

static int norm_index(int64_t i, size_t n, size_t *out) {
  if (i < 0)
    i += (int64_t)n;
  if (i < 0 || (uint64_t)i >= n)
    return -ERANGE;
  *out = (size_t)i;
  return 0;
}

/* The argument i, or NULL when there are fewer. */
static const mp_obj *arg(const mp_obj *args, size_t i) {
  const mp_obj *a;
  return mp_obj_list_get(args, (int64_t)i, &a) == 0 ? a : NULL;
}

static bool nargs(const mp_obj *args, size_t n) { return mp_obj_len(args) == (ssize_t)n; }

static int arg_int(const mp_obj *args, size_t i, int64_t *v) {
  const mp_obj *a = arg(args, i);
  return a && mp_obj_get_int(a, v) == 0 ? 0 : -EINVAL;
}

/* Copy a borrowed value into *res. */
static int give(const mp_obj *v, mp_obj **res) {
  *res = mp_obj_copy(v);
  return *res ? 0 : -ENOMEM;
}

#define IS(m, s) (!strcmp((m), (s)))

static int call_dict(struct sobj *o, const char *m, const mp_obj *a, mp_obj **res) {
  mp_obj *d = o->val;
  const mp_obj *k = arg(a, 0);
  if (IS(m, "len"))
    return (int)mp_obj_len(d);
  if (IS(m, "clear")) {
    mp__obj_clear(d);
    return 0;
  }
  if (IS(m, "keys") || IS(m, "items") || IS(m, "values") || IS(m, "copy")) {
    if (IS(m, "copy"))
      return give(d, res);
    mp__obj_dict_compact(d); /* positions, below, in constant time */
    mp_obj *l = mp_obj_list();
    for (size_t i = 0; l && i < (size_t)mp_obj_len(d); i++) {
      const mp_obj *key, *val;
      mp_obj_dict_item(d, i, &key, &val);
      mp_obj *item = IS(m, "keys")     ? mp_obj_copy(key)
                     : IS(m, "values") ? mp_obj_copy(val)
                                       : mp_obj_listv(2, mp_obj_copy(key), mp_obj_copy(val));
      if (mp_obj_list_append(l, item) < 0) {
        mp_obj_free(l);
        l = NULL;
      }
    }
    *res = l;
    return l ? 0 : -ENOMEM;
  }
  if (IS(m, "update")) {
    if (!nargs(a, 1) || mp_obj_type(k) != MP_OBJ_DICT)
      return -EDOM;
    for (size_t i = 0; i < (size_t)mp_obj_len(k); i++) {
      const mp_obj *key, *val;
      mp_obj_dict_item(k, i, &key, &val);
      int r = mp_obj_dict_set(d, mp_obj_copy(key), mp_obj_copy(val));
      if (r < 0)
        return r;
    }
    return 0;
  }
  if (IS(m, "set")) {
    if (!nargs(a, 2))
      return -EINVAL;
    return mp_obj_dict_set(d, mp_obj_copy(k), mp_obj_copy(arg(a, 1)));
  }
  if (IS(m, "popitem")) {
    ssize_t len = mp_obj_len(d);
    if (len == 0)
      return -ENOENT; /* KeyError: popitem(): dictionary is empty */
    mp__obj_dict_compact(d);
    mp_obj *key, *val;
    mp__obj_dict_remove(d, (size_t)len - 1, &key, &val); /* the last set: LIFO */
    *res = mp_obj_listv(2, key, val);
    return *res ? 0 : -ENOMEM;
  }
  if (IS(m, "setdefault")) {
    if (!nargs(a, 2))
      return -EINVAL;
    ssize_t at = mp__obj_dict_find(d, k);
    if (at < 0) {
      int r = mp_obj_dict_set(d, mp_obj_copy(k), mp_obj_copy(arg(a, 1)));
      return r < 0 ? r : give(arg(a, 1), res);
    }
    const mp_obj *v;
    mp__obj_dict_entry(d, (size_t)at, NULL, &v);
    return give(v, res);
  }
  if (IS(m, "reversed")) {
    mp__obj_dict_compact(d);
    mp_obj *l = mp_obj_list();
    for (size_t i = (size_t)mp_obj_len(d); l && i-- > 0;) {
      const mp_obj *key;
      mp_obj_dict_item(d, i, &key, NULL);
      if (mp_obj_list_append(l, mp_obj_copy(key)) < 0) {
        mp_obj_free(l);
        l = NULL;
      }
    }
    *res = l;
    return l ? 0 : -ENOMEM;
  }
  if (IS(m, "or")) {
    /* d | other: a new dict, d's entries updated by other's */
    if (!nargs(a, 1) || mp_obj_type(k) != MP_OBJ_DICT)
      return -EDOM;
    mp_obj *out = mp_obj_copy(d);
    for (size_t i = 0; out && i < (size_t)mp_obj_len(k); i++) {
      const mp_obj *key, *val;
      mp_obj_dict_item(k, i, &key, &val);
      if (mp_obj_dict_set(out, mp_obj_copy(key), mp_obj_copy(val)) < 0) {
        mp_obj_free(out);
        out = NULL;
      }
    }
    *res = out;
    return out ? 0 : -ENOMEM;
  }
  if (IS(m, "ior")) {
    /* d |= other: a dict, or a list of [key, value] pairs; all checked
     * before anything changes */
    if (!nargs(a, 1))
      return -EDOM;
    if (mp_obj_type(k) == MP_OBJ_DICT)
      return call_dict(o, "update", a, res);
    if (mp_obj_type(k) != MP_OBJ_LIST)
      return -EDOM;
    for (size_t i = 0; i < (size_t)mp_obj_len(k); i++) {
      const mp_obj *pair = mp__obj_list_at(k, i);
      if (mp_obj_type(pair) != MP_OBJ_LIST || mp_obj_len(pair) != 2)
        return -EDOM;
    }
    for (size_t i = 0; i < (size_t)mp_obj_len(k); i++) {
      const mp_obj *pair = mp__obj_list_at(k, i);
      int r = mp_obj_dict_set(d, mp_obj_copy(mp__obj_list_at(pair, 0)),
                              mp_obj_copy(mp__obj_list_at(pair, 1)));
      if (r < 0)
        return r;
    }
    return 0;
  }
  if (IS(m, "next")) {
    /* iteration: [position, length when it began]; the key there, or 0 at
     * the end; a dict whose length changed is Python's RuntimeError */
    int64_t pos, len0;
    if (!nargs(a, 2) || arg_int(a, 0, &pos) < 0 || arg_int(a, 1, &len0) < 0 || pos < 0)
      return -EINVAL;
    if (len0 != mp_obj_len(d))
      return -ESTALE;
    if (pos >= len0)
      return 0;
    mp__obj_dict_compact(d);
    const mp_obj *key;
    mp_obj_dict_item(d, (size_t)pos, &key, NULL);
    int r = give(key, res);
    return r < 0 ? r : 1;
  }
  if (!nargs(a, 1))
    return IS(m, "get") || IS(m, "del") || IS(m, "pop") || IS(m, "contains") ? -EINVAL
                                                                             : -EOPNOTSUPP;
  ssize_t at = mp__obj_dict_find(d, k);
  if (IS(m, "contains"))
    return at >= 0;
  if (!IS(m, "get") && !IS(m, "del") && !IS(m, "pop"))
    return -EOPNOTSUPP;
  if (at < 0)
    return -ENOENT;
  if (IS(m, "get")) {
    const mp_obj *v;
    mp__obj_dict_entry(d, (size_t)at, NULL, &v);
    return give(v, res);
  }
  mp__obj_dict_remove(d, (size_t)at, NULL, IS(m, "pop") ? res : NULL);
  return 0;
}

/* Python's slice indices (PySlice_AdjustIndices): arguments 0..2 of a are
 * start, stop, step, each an int or nil (omitted). The slice's length. */
static int slice_indices(const mp_obj *a, size_t n, int64_t *start, int64_t *step, int64_t *len) {
  int64_t v[3], len_ = (int64_t)n;
  bool given[3];
  for (size_t j = 0; j < 3; j++) {
    const mp_obj *x = arg(a, j);
    given[j] = x && mp_obj_type(x) != MP_OBJ_NIL;
    if (!x || (given[j] && mp_obj_get_int(x, &v[j]) < 0))
      return -EINVAL;
  }
  int64_t st = given[2] ? v[2] : 1;
  if (st == 0 || st == INT64_MIN)
    return -EINVAL; /* ValueError: slice step cannot be zero */
  int64_t lo = given[0] ? v[0] : (st < 0 ? len_ - 1 : 0);
  int64_t hi = given[1] ? v[1] : (st < 0 ? -1 : len_);
  if (given[0]) {
    if (lo < 0 && (lo += len_) < 0)
      lo = st < 0 ? -1 : 0;
    else if (lo >= len_)
      lo = st < 0 ? len_ - 1 : len_;
  }
  if (given[1]) {
    if (hi < 0 && (hi += len_) < 0)
      hi = st < 0 ? -1 : 0;
    else if (hi >= len_)
      hi = st < 0 ? len_ - 1 : len_;
  }
  if (st < 0)
    *len = hi < lo ? (lo - hi - 1) / -st + 1 : 0;
  else
    *len = lo < hi ? (hi - lo - 1) / st + 1 : 0;
  *start = lo;
  *step = st;
  return 0;
}

/* l[start:stop:step], its assignment and its deletion. */
static int list_slice(mp_obj *l, const char *m, const mp_obj *a, mp_obj **res) {
  size_t n = (size_t)mp_obj_len(l);
  int64_t start, step, len;
  size_t want = IS(m, "set_slice") ? 4 : 3;
  if (!nargs(a, want))
    return -EINVAL;
  int r = slice_indices(a, n, &start, &step, &len);
  if (r < 0)
    return r;
  if (IS(m, "slice")) {
    mp_obj *out = mp_obj_list();
    for (int64_t j = 0; out && j < len; j++)
      if (mp_obj_list_append(out, mp_obj_copy(mp__obj_list_at(l, (size_t)(start + j * step)))) < 0) {
        mp_obj_free(out);
        out = NULL;
      }
    *res = out;
    return out ? 0 : -ENOMEM;
  }
  if (IS(m, "del_slice")) {
    /* from the highest index down, so the others do not move */
    for (int64_t j = 0; j < len; j++) {
      int64_t at = step > 0 ? start + (len - 1 - j) * step : start + j * step;
      mp_obj_free(mp__obj_list_take(l, (size_t)at));
    }
    return 0;
  }
  const mp_obj *items = arg(a, 3);
  if (mp_obj_type(items) != MP_OBJ_LIST)
    return -EDOM;
  size_t ni = (size_t)mp_obj_len(items);
  if (step != 1 && (int64_t)ni != len)
    return -EINVAL; /* ValueError: an extended slice takes as many items */
  /* copy first: a failure must leave the list as it was */
  mp_obj *copy = mp_obj_copy(items);
  if (!copy)
    return -ENOMEM;
  if (step == 1) {
    for (int64_t j = 0; j < len; j++)
      mp_obj_free(mp__obj_list_take(l, (size_t)start));
    for (size_t j = 0; j < ni; j++)
      if ((r = mp__obj_list_insert(l, (size_t)start + j, mp__obj_list_take(copy, 0))) < 0)
        break;
  } else {
    for (int64_t j = 0; j < len; j++)
      mp__obj_list_replace(l, (size_t)(start + j * step), mp__obj_list_take(copy, 0));
  }
  mp_obj_free(copy);
  return r;
}

static int call_list(struct sobj *o, const char *m, const mp_obj *a, mp_obj **res) {
  mp_obj *l = o->val;
  size_t n = (size_t)mp_obj_len(l), at;
  int64_t i;
  int r;
  if (IS(m, "len"))
    return (int)n;
  if (o->kind == K_LIST) {
    if (IS(m, "slice") || IS(m, "set_slice") || IS(m, "del_slice"))
      return list_slice(l, m, a, res);
    if (IS(m, "clear")) {
      mp__obj_clear(l);
      return 0;
    }
    if (IS(m, "reverse")) {
      mp__obj_list_reverse(l);
      return 0;
    }
    if (IS(m, "sort")) {
      int rev = 0;
      if (!nargs(a, 1) || mp_obj_get_bool(arg(a, 0), &rev) < 0)
        return -EINVAL;
      return mp__obj_list_sort(l, rev);
    }
    if (IS(m, "imul")) {
      if (!nargs(a, 1) || arg_int(a, 0, &i) < 0)
        return -EINVAL;
      if (i <= 0 || n == 0) {
        mp__obj_clear(l);
        return 0;
      }
      if ((uint64_t)i > MP_OBJ_MAX_ITEMS / n)
        return -EMSGSIZE; /* it could never be sent again */
      mp_obj *orig = mp_obj_copy(l);
      if (!orig)
        return -ENOMEM;
      size_t grown = n;
      for (int64_t k = 1; k < i; k++)
        for (size_t j = 0; j < n; j++, grown++)
          if ((r = mp_obj_list_append(l, mp_obj_copy(mp__obj_list_at(orig, j)))) < 0) {
            while ((size_t)mp_obj_len(l) > n) /* back to how it was */
              mp_obj_free(mp__obj_list_take(l, n));
            mp_obj_free(orig);
            return r;
          }
      mp_obj_free(orig);
      return 0;
    }
  }
  if (IS(m, "copy"))
    return give(l, res);
  if (IS(m, "append"))
    return nargs(a, 1) ? mp_obj_list_append(l, mp_obj_copy(arg(a, 0))) : -EINVAL;
  if (IS(m, "extend")) {
    const mp_obj *items = arg(a, 0);
    if (!nargs(a, 1) || mp_obj_type(items) != MP_OBJ_LIST)
      return -EDOM;
    for (size_t j = 0; j < (size_t)mp_obj_len(items); j++)
      if ((r = mp_obj_list_append(l, mp_obj_copy(mp__obj_list_at(items, j)))) < 0)
        return r;
    return 0;
  }
  if (IS(m, "get") || IS(m, "pop")) {
    if (a && mp_obj_len(a) > 1)
      return -EINVAL;
    i = -1;
    if (mp_obj_len(a) == 1 && arg_int(a, 0, &i) < 0)
      return -EINVAL;
    if (IS(m, "get") && mp_obj_len(a) != 1)
      return -EINVAL;
    if ((r = norm_index(i, n, &at)) < 0)
      return r;
    if (IS(m, "get"))
      return give(mp__obj_list_at(l, at), res);
    *res = mp__obj_list_take(l, at);
    return 0;
  }
  if (IS(m, "set") || IS(m, "insert")) {
    if (!nargs(a, 2) || arg_int(a, 0, &i) < 0)
      return -EINVAL;
    mp_obj *v = mp_obj_copy(arg(a, 1));
    if (!v)
      return -ENOMEM;
    if (IS(m, "set")) {
      if ((r = norm_index(i, n, &at)) < 0) {
        mp_obj_free(v);
        return r;
      }
      mp__obj_list_replace(l, at, v);
      return 0;
    }
    if (i < 0)
      i = i + (int64_t)n < 0 ? 0 : i + (int64_t)n;
    return mp__obj_list_insert(l, (size_t)i > n ? n : (size_t)i, v);
  }
  if (IS(m, "remove") || IS(m, "index") || IS(m, "count")) {
    if (!nargs(a, 1))
      return -EINVAL;
    int count = 0;
    for (size_t j = 0; j < n; j++) {
      if (!mp_obj_equal(mp__obj_list_at(l, j), arg(a, 0)))
        continue;
      if (IS(m, "index"))
        return (int)j;
      if (IS(m, "remove")) {
        mp_obj_free(mp__obj_list_take(l, j));
        return 0;
      }
      count++;
    }
    return IS(m, "count") ? count : -ENOENT;
  }
  return -EOPNOTSUPP;
}

static int call_namespace(struct sobj *o, const char *m, const mp_obj *a, mp_obj **res) {
  const mp_obj *name = arg(a, 0);
  if (mp_obj_type(name) != MP_OBJ_STR)
    return IS(m, "getattr") || IS(m, "setattr") || IS(m, "delattr") ? -EINVAL : -EOPNOTSUPP;
  if (IS(m, "setattr"))
    return nargs(a, 2) ? mp_obj_dict_set(o->val, mp_obj_copy(name), mp_obj_copy(arg(a, 1)))
                       : -EINVAL;
  if (!IS(m, "getattr") && !IS(m, "delattr"))
    return -EOPNOTSUPP;
  ssize_t at = mp__obj_dict_find(o->val, name);
  if (at < 0)
    return -ENOENT;
  if (IS(m, "delattr")) {
    mp__obj_dict_remove(o->val, (size_t)at, NULL, NULL);
    return 0;
  }
  const mp_obj *v;
  mp__obj_dict_entry(o->val, (size_t)at, NULL, &v);
  return give(v, res);
}

static int call_queue(struct server *s, struct sobj *o, const char *m, const mp_obj *a,
                      const mp__deadline *d, mp_obj **res) {
  int r;
  if (IS(m, "qsize"))
    return (int)mp_obj_len(o->val);
  if (IS(m, "empty"))
    return mp_obj_len(o->val) == 0;
  if (IS(m, "full"))
    return o->num > 0 && mp_obj_len(o->val) >= o->num;
  if (IS(m, "put")) {
    if (!nargs(a, 1))
      return -EINVAL;
    while (o->num > 0 && mp_obj_len(o->val) >= o->num)
      if ((r = srv_wait(s, o, d)) < 0)
        return r;
    if ((r = mp_obj_list_append(o->val, mp_obj_copy(arg(a, 0)))) < 0)
      return r;
    if (o->kind == K_JQUEUE)
      o->count++; /* one more unfinished task, with the item: never apart */
    wake_all(s);
    return 0;
  }
  if (o->kind == K_JQUEUE && IS(m, "task_done")) {
    if (o->count == 0)
      return -EOVERFLOW; /* ValueError: task_done() called too many times */
    if (--o->count == 0)
      wake_all(s);
    return 0;
  }
  if (o->kind == K_JQUEUE && IS(m, "join")) {
    while (o->count > 0)
      if ((r = srv_wait(s, o, d)) < 0)
        return r;
    return 0;
  }
  if (IS(m, "get")) {
    while (mp_obj_len(o->val) == 0)
      if ((r = srv_wait(s, o, d)) < 0)
        return r;
    if (client_gone())
      return -EPIPE; /* the item stays first for the next getter */
    *res = mp__obj_list_take(o->val, 0);
    wake_all(s);
    return 0;
  }
  return -EOPNOTSUPP;
}

/* Acquire for Lock, RLock, Condition (owned) and the semaphores. */
static int do_acquire(struct server *s, struct sobj *o, uint64_t me, const mp__deadline *d) {
  int r;
  if (o->kind == K_SEMAPHORE || o->kind == K_BSEMAPHORE) {
    while (o->num == 0)
      if ((r = srv_wait(s, o, d)) < 0)
        return r;
    if (client_gone())
      return -EPIPE; /* the unit stays for the next acquirer */
    o->num--;
    return 0;
  }
  if (o->kind != K_LOCK && o->owner == me) {
    o->count++;
    return 0;
  }
  while (o->owner != 0)
    if ((r = srv_wait(s, o, d)) < 0)
      return r;
  if (client_gone())
    return -EPIPE;
  o->owner = me;
  o->count = 1;
  return 0;
}

static int do_release(struct server *s, struct sobj *o, uint64_t me) {
  if (o->kind == K_SEMAPHORE || o->kind == K_BSEMAPHORE) {
    if (o->kind == K_BSEMAPHORE && o->num >= o->bound)
      return -EOVERFLOW;
    o->num++;
  } else if (o->kind == K_LOCK) {
    if (!o->owner) /* any client may release a Lock, as in Python */
      return -EPERM;
    o->owner = 0;
  } else {
    if (o->owner != me)
      return -EPERM;
    if (--o->count > 0)
      return 0;
    o->owner = 0;
  }
  wake_all(s);
  return 0;
}

static int call_condition(struct server *s, struct sobj *o, const char *m, const mp_obj *a,
                          uint64_t me, const mp__deadline *d) {
  if (IS(m, "notify") || IS(m, "notify_all")) {
    int64_t n = INT64_MAX;
    if (IS(m, "notify") && (!nargs(a, 1) || arg_int(a, 0, &n) < 0))
      return -EINVAL;
    if (o->owner != me)
      return -EPERM;
    for (struct waiter *w = o->waiters; w && n > 0; w = o->waiters, n--) {
      w->notified = true;
      o->waiters = w->next;
    }
    wake_all(s);
    return 0;
  }
  if (!IS(m, "wait"))
    return -EOPNOTSUPP;
  if (o->owner != me)
    return -EPERM;
  struct waiter w = {NULL, false}, **pp = &o->waiters;
  while (*pp)
    pp = &(*pp)->next;
  *pp = &w;
  int64_t saved = o->count;
  o->owner = 0;
  o->count = 0;
  wake_all(s);
  int r = 0;
  while (!w.notified && (r = srv_wait(s, o, d)) == 0) {
  }
  if (!w.notified) {
    for (pp = &o->waiters; *pp; pp = &(*pp)->next)
      if (*pp == &w) {
        *pp = w.next;
        break;
      }
  } else if (client_gone()) {
    /* a notification must not go to the dead: pass it to the next waiter */
    struct waiter *next = o->waiters;
    if (next) {
      next->notified = true;
      o->waiters = next->next;
      wake_all(s);
    }
    return -EPIPE;
  } else {
    r = 0;
  }
  if (r == -EPIPE || r == -ESRCH)
    return r;
  /* take the lock back whatever happened, as Python does */
  mp__deadline forever = {.forever = true};
  while (o->owner != 0) {
    int e = srv_wait(s, o, &forever);
    if (e < 0)
      return e;
  }
  o->owner = me;
  o->count = saved;
  return r;
}

static int call_set(struct sobj *o, const char *m, const mp_obj *a, mp_obj **res) {
  mp_obj *d = o->val;
  const mp_obj *x = arg(a, 0);
  if (IS(m, "len"))
    return (int)mp_obj_len(d);
  if (IS(m, "clear")) {
    mp__obj_clear(d);
    return 0;
  }
  if (IS(m, "items"))
    return call_dict(o, "keys", a, res);
  if (IS(m, "pop")) {
    ssize_t len = mp_obj_len(d);
    if (len == 0)
      return -ENOENT; /* KeyError: pop from an empty set */
    mp__obj_dict_compact(d);
    mp__obj_dict_remove(d, (size_t)len - 1, res, NULL);
    return 0;
  }
  if (IS(m, "update")) {
    if (!nargs(a, 1) || mp_obj_type(x) != MP_OBJ_LIST)
      return -EDOM;
    for (size_t i = 0; i < (size_t)mp_obj_len(x); i++) {
      int r = mp_obj_dict_set(d, mp_obj_copy(mp__obj_list_at(x, i)), mp_obj_nil());
      if (r < 0)
        return r;
    }
    return 0;
  }
  if (!IS(m, "add") && !IS(m, "discard") && !IS(m, "remove") && !IS(m, "contains"))
    return -EOPNOTSUPP;
  if (!nargs(a, 1))
    return -EINVAL;
  if (IS(m, "add"))
    return mp__obj_dict_find(d, x) >= 0 ? 0 : mp_obj_dict_set(d, mp_obj_copy(x), mp_obj_nil());
  ssize_t at = mp__obj_dict_find(d, x);
  if (IS(m, "contains"))
    return at >= 0;
  if (at < 0)
    return IS(m, "remove") ? -ENOENT : 0; /* remove: KeyError; discard: nothing */
  mp__obj_dict_remove(d, (size_t)at, NULL, NULL);
  return 0;
}

/* A Barrier: num parties arrived in the current cycle (generation owner),
 * bound parties in all, count the last generation that tripped. A cycle
 * ends by tripping (its parties get their arrival index) or by a reset
 * (they get -ECANCELED). A party whose wait times out, or whose client dies
 * while it waits, breaks the barrier, as Python's timeout does: the others
 * get -ECANCELED (BrokenBarrierError) rather than wait for a party that
 * will never come; reset() repairs it. */
static int call_barrier(struct server *s, struct sobj *o, const char *m, const mp__deadline *d) {
  if (IS(m, "parties"))
    return (int)o->bound;
  if (IS(m, "n_waiting"))
    return (int)o->num;
  if (IS(m, "broken"))
    return o->broken;
  if (IS(m, "abort") || IS(m, "reset")) {
    if (IS(m, "reset")) {
      if (o->num > 0)
        o->owner++; /* the waiting cycle ends, not tripped */
      o->broken = false;
    } else {
      o->broken = true;
    }
    o->num = 0;
    wake_all(s);
    return 0;
  }
  if (!IS(m, "wait"))
    return -EOPNOTSUPP;
  if (o->broken)
    return -ECANCELED;
  if (client_gone())
    return -EPIPE; /* no arrival for a client that cannot learn of it */
  uint64_t gen = o->owner;
  int64_t idx = o->num++;
  if (o->num == o->bound) {
    o->count = (int64_t)gen;
    o->owner++;
    o->num = 0;
    wake_all(s);
    return (int)idx;
  }
  while (o->owner == gen && !o->broken) {
    int r = srv_wait(s, o, d);
    if (r < 0 && o->owner == gen && !o->broken) {
      if (r == -ESRCH)
        return r;
      o->broken = true; /* timed out, or the client or server is going */
      o->num = 0;
      wake_all(s);
      return r == -ETIMEDOUT ? -ECANCELED : r;
    }
  }
  if (o->owner != gen && o->count == (int64_t)gen)
    return (int)idx;
  return -ECANCELED;
}

/* ---- managed Pool (K_POOL): tasks run a registered function by name */

/* Put a task's result (nil for NULL) in its output, encoded. */
static int pool_put(mp_pool_out *out, const mp_obj *v) {
  mp_obj *nil = v ? NULL : mp_obj_nil();
  void *buf;
  size_t len;
  int r = (v || nil) ? mp_obj_encode(v ? v : nil, &buf, &len) : -ENOMEM;
  mp_obj_free(nil);
  if (r < 0)
    return r;
  r = mp_pool_out_set(out, buf, len);
  free(buf);
  return r;
}

/* In a worker: an apply task. arg is the encoded argument list; ctx the
 * struct pool_func (valid: the worker is a fork of the server). */
static int pool_task_apply(const void *arg, size_t len, mp_pool_out *out, void *ctx) {
  const struct pool_func *f = ctx;
  mp_obj *args, *res = NULL;
  int r = mp_obj_decode(arg, len, &args);
  if (r < 0)
    return r;
  r = f->fn(args, &res, f->ctx);
  mp_obj_free(args);
  if (r >= 0) {
    int w = pool_put(out, res);
    r = w < 0 ? w : r;
  }
  mp_obj_free(res);
  return r;
}

/* In a worker: a map chunk. arg is the encoded list of its items; each
 * item is called as fn([item]) (Python's map calls f(item)); the result is
 * the list of their results. The first failure fails the chunk. */
static int pool_task_chunk(const void *arg, size_t len, mp_pool_out *out, void *ctx) {
  const struct pool_func *f = ctx;
  mp_obj *items, *results = mp_obj_list();
  int r = results ? mp_obj_decode(arg, len, &items) : -ENOMEM;
  if (r < 0) {
    mp_obj_free(results);
    return r;
  }
  for (size_t i = 0; r >= 0 && i < (size_t)mp_obj_len(items); i++) {
    mp_obj *one = mp_obj_listv(1, mp_obj_copy(mp__obj_list_at(items, i))), *res = NULL;
    r = one ? f->fn(one, &res, f->ctx) : -ENOMEM;
    mp_obj_free(one);
    if (r >= 0)
      r = mp_obj_list_append(results, res ? res : mp_obj_nil());
    else
      mp_obj_free(res);
  }
  if (r >= 0)
    r = pool_put(out, results);
  mp_obj_free(items);
  mp_obj_free(results);
  return r < 0 ? r : 0;
}

static const struct pool_func *find_func(const char *name) {
  for (size_t i = 0; i < n_funcs; i++)
    if (!strcmp(funcs[i].name, name))
      return &funcs[i];
  return NULL;
}

/* How often a request waiting on its pool tasks looks at its client and at
 * a shutdown. */
#define POOL_WAIT_SLICE 0.2

/* Wait until the n results are ready, with s->mu let go (the tasks run in
 * other processes; other clients go on meanwhile; the caller's busy count
 * keeps the pool). 0; -ETIMEDOUT at the deadline; -EPIPE when the client
 * is gone or the server stops: the tasks still run, their results are
 * dropped by the caller's mp_async_result_free(). */
static int pool_wait(struct server *s, mp_async_result **ars, size_t n, const mp__deadline *d) {
  pthread_mutex_unlock(&s->mu);
  int r = 0;
  for (size_t i = 0; i < n && r == 0;) {
    double left = deadline_left(d);
    (void)mp_async_result_wait(ars[i], left < POOL_WAIT_SLICE ? left : POOL_WAIT_SLICE);
    if (mp_async_result_ready(ars[i]) == 1) {
      i++;
      continue;
    }
    pthread_mutex_lock(&s->mu);
    bool stopping = s->stopping;
    pthread_mutex_unlock(&s->mu);
    if (stopping || client_gone())
      r = -EPIPE;
    else if (d->nowait || mp__deadline_passed(d))
      r = -ETIMEDOUT;
  }
  pthread_mutex_lock(&s->mu);
  return r;
}

static void pool_free_results(mp_async_result **ars, size_t n) {
  for (size_t i = 0; i < n; i++)
    mp_async_result_free(ars[i]); /* allowed before ready: the pool drops it */
  free(ars);
}

/* The result of a ready task, decoded, in *res (a task without one: nil). */
static int pool_take(mp_async_result *ar, mp_obj **res) {
  const void *data;
  size_t len;
  int r = mp_async_result_data(ar, &data, &len);
  if (r < 0)
    return r;
  if (!data) {
    *res = mp_obj_nil();
    return *res ? 0 : -ENOMEM;
  }
  return mp_obj_decode(data, len, res);
}

static int pool_apply(struct server *s, mp_pool *pool, const struct pool_func *f,
                      const mp_obj *args, const mp__deadline *d, mp_obj **res) {
  void *buf;
  size_t len;
  int r = mp_obj_encode(args, &buf, &len);
  if (r < 0)
    return r;
  mp_async_result *ar;
  r = mp_pool_apply_async(pool, pool_task_apply, buf, len, (void *)f, NULL, &ar);
  free(buf);
  if (r < 0)
    return r;
  if ((r = pool_wait(s, &ar, 1, d)) == 0 && (r = mp_async_result_get(ar, 0)) >= 0) {
    mp_obj *v;
    int t = pool_take(ar, &v);
    if (t < 0)
      r = t;
    else
      *res = v;
  }
  mp_async_result_free(ar);
  return r;
}

static int pool_map(struct server *s, mp_pool *pool, const struct pool_func *f,
                    const mp_obj *items, int64_t chunksize, const mp__deadline *d, mp_obj **res) {
  size_t n = (size_t)mp_obj_len(items);
  if (chunksize == 0) { /* Python's default: about four chunks a worker */
    int w = mp_pool_worker_pids(pool, NULL, 0);
    size_t per = 4 * (size_t)(w > 0 ? w : 1);
    chunksize = (int64_t)((n + per - 1) / per);
    if (chunksize == 0)
      chunksize = 1;
  }
  size_t cs = (size_t)chunksize, nch = (n + cs - 1) / cs;
  mp_obj *out = mp_obj_list();
  mp_async_result **ars = calloc(nch ? nch : 1, sizeof *ars);
  int r = out && ars ? 0 : -ENOMEM;
  size_t sent = 0;
  for (; r == 0 && sent < nch; sent++) {
    mp_obj *chunk = mp_obj_list();
    r = chunk ? 0 : -ENOMEM;
    for (size_t i = sent * cs; r == 0 && i < n && i < (sent + 1) * cs; i++) {
      mp_obj *c = mp_obj_copy(mp__obj_list_at(items, i));
      r = c ? mp_obj_list_append(chunk, c) : -ENOMEM;
    }
    void *buf = NULL;
    size_t len;
    if (r == 0)
      r = mp_obj_encode(chunk, &buf, &len);
    mp_obj_free(chunk);
    if (r == 0)
      r = mp_pool_apply_async(pool, pool_task_chunk, buf, len, (void *)f, NULL, &ars[sent]);
    free(buf);
    if (r < 0)
      break;
  }
  if (r == 0)
    r = pool_wait(s, ars, nch, d);
  /* the first failing chunk in order is the map's failure (Python raises
   * the first error) */
  for (size_t i = 0; r == 0 && i < nch; i++) {
    mp_obj *part;
    if ((r = mp_async_result_get(ars[i], 0)) < 0 || (r = pool_take(ars[i], &part)) < 0)
      break;
    if (mp_obj_type(part) != MP_OBJ_LIST)
      r = -EBADMSG;
    while (r == 0 && mp_obj_len(part) > 0)
      r = mp_obj_list_append(out, mp__obj_list_take(part, 0));
    mp_obj_free(part);
  }
  if (ars)
    pool_free_results(ars, sent);
  if (r < 0) {
    mp_obj_free(out);
    return r;
  }
  *res = out;
  return 0;
}

/* The methods of a managed Pool. */
static int call_pool(struct server *s, struct sobj *o, const char *m, const mp_obj *a,
                     const mp__deadline *d, mp_obj **res) {
  mp_pool *pool = o->self;
  if (IS(m, "close"))
    return mp_pool_close(pool);
  if (IS(m, "terminate"))
    return mp_pool_terminate(pool);
  bool apply = IS(m, "apply");
  if (!apply && !IS(m, "map"))
    return -EOPNOTSUPP;
  const char *name;
  int64_t cs = 0;
  const mp_obj *list = arg(a, 1);
  if (!nargs(a, apply ? 2 : 3) || mp_obj_get_str(arg(a, 0), &name, NULL) < 0 ||
      mp_obj_type(list) != MP_OBJ_LIST || (!apply && (arg_int(a, 2, &cs) < 0 || cs < 0)))
    return -EINVAL;
  const struct pool_func *f = find_func(name);
  if (!f)
    return -ENOENT;
  return apply ? pool_apply(s, pool, f, list, d, res) : pool_map(s, pool, f, list, cs, d, res);
}

static int call_builtin(struct server *s, struct sobj *o, const char *m, const mp_obj *a,
                        uint64_t me, const mp__deadline *d, mp_obj **res) {
  int r;
  switch (o->kind) {
  case K_DICT: return call_dict(o, m, a, res);
  case K_LIST: return call_list(o, m, a, res);
  case K_NAMESPACE: return call_namespace(o, m, a, res);
  case K_SET: return call_set(o, m, a, res);
  case K_BARRIER: return call_barrier(s, o, m, d);
  case K_POOL: return call_pool(s, o, m, a, d, res);
  case K_QUEUE:
  case K_JQUEUE: return call_queue(s, o, m, a, d, res);
  case K_VALUE:
    if (IS(m, "get"))
      return give(o->val, res);
    if (IS(m, "set")) {
      mp_obj *v = nargs(a, 1) ? mp_obj_copy(arg(a, 0)) : NULL;
      if (!v)
        return nargs(a, 1) ? -ENOMEM : -EINVAL;
      mp_obj_free(o->val);
      o->val = v;
      return 0;
    }
    return -EOPNOTSUPP;
  case K_ARRAY:
    if (IS(m, "get") || IS(m, "set") || IS(m, "len"))
      return call_list(o, m, a, res);
    return -EOPNOTSUPP;
  case K_EVENT:
    if (IS(m, "set")) {
      o->num = 1;
      wake_all(s);
      return 0;
    }
    if (IS(m, "clear")) {
      o->num = 0;
      return 0;
    }
    if (IS(m, "is_set"))
      return (int)o->num;
    if (IS(m, "wait")) {
      while (!o->num)
        if ((r = srv_wait(s, o, d)) < 0)
          return r;
      return 0;
    }
    return -EOPNOTSUPP;
  default:
    if (IS(m, "acquire"))
      return do_acquire(s, o, me, d);
    if (IS(m, "release"))
      return do_release(s, o, me);
    if (o->kind == K_CONDITION)
      return call_condition(s, o, m, a, me, d);
    return -EOPNOTSUPP;
  }
}

static const struct custom_type *find_type(const char *name) {
  for (size_t i = 0; i < n_types; i++)
    if (!strcmp(types[i].name, name))
      return &types[i];
  return NULL;
}

static int find_kind(const char *name) {
  for (int k = 1; k < N_KINDS; k++)
    if (!strcmp(kind_names[k], name))
      return k;
  return -1;
}

/* Make a built-in object's state from its creation arguments. */
static int builtin_init(struct sobj *o, const mp_obj *a) {
  const mp_obj *a0 = arg(a, 0);
  size_t na = (size_t)mp_obj_len(a);
  switch (o->kind) {
  case K_DICT:
  case K_LIST: {
    int t = o->kind == K_DICT ? MP_OBJ_DICT : MP_OBJ_LIST;
    if (na > 1 || (a0 && mp_obj_type(a0) != t))
      return -EINVAL;
    o->val = a0 ? mp_obj_copy(a0) : (t == MP_OBJ_DICT ? mp_obj_dict() : mp_obj_list());
    return o->val ? 0 : -ENOMEM;
  }
  case K_ARRAY:
    if (na != 1 || mp_obj_type(a0) != MP_OBJ_LIST)
      return -EINVAL;
    o->val = mp_obj_copy(a0);
    return o->val ? 0 : -ENOMEM;
  case K_NAMESPACE: o->val = mp_obj_dict(); return o->val ? 0 : -ENOMEM;
  case K_SET:
    /* a dict whose keys are the items (values nil): hashing and order come
     * with it */
    if (na > 1 || (a0 && mp_obj_type(a0) != MP_OBJ_LIST))
      return -EINVAL;
    if (!(o->val = mp_obj_dict()))
      return -ENOMEM;
    for (size_t i = 0; a0 && i < (size_t)mp_obj_len(a0); i++)
      if (mp_obj_dict_set(o->val, mp_obj_copy(mp__obj_list_at(a0, i)), mp_obj_nil()) < 0)
        return -ENOMEM; /* srv_create frees val */
    return 0;
  case K_BARRIER:
    if (na != 1 || arg_int(a, 0, &o->bound) < 0 || o->bound < 1 || o->bound > INT_MAX)
      return -EINVAL;
    o->count = -1; /* no cycle has tripped yet */
    return 0;
  case K_QUEUE:
  case K_JQUEUE:
    if (na > 1 || (na == 1 && arg_int(a, 0, &o->num) < 0))
      return -EINVAL;
    o->val = mp_obj_list();
    return o->val ? 0 : -ENOMEM;
  case K_VALUE:
    if (na > 1)
      return -EINVAL;
    o->val = a0 ? mp_obj_copy(a0) : mp_obj_nil();
    return o->val ? 0 : -ENOMEM;
  case K_SEMAPHORE:
  case K_BSEMAPHORE:
    o->num = 1;
    if (na > 1 || (na == 1 && arg_int(a, 0, &o->num) < 0) || o->num < 0)
      return -EINVAL;
    o->bound = o->num;
    return 0;
  case K_POOL: {
    int64_t n = 0;
    if (na > 1 || (na == 1 && arg_int(a, 0, &n) < 0) || n < 0 || n > INT_MAX)
      return -EINVAL;
    mp_pool *pool;
    int r = mp_pool_new((int)n, NULL, &pool);
    if (r == 0)
      o->self = pool;
    return r;
  }
  default: return na == 0 ? 0 : -EINVAL;
  }
}

static int srv_create(struct server *s, const char *type, const mp_obj *a, mp_obj **res) {
  struct sobj *o = calloc(1, sizeof *o);
  if (!o)
    return -ENOMEM;
  int r;
  o->kind = find_kind(type);
  if (o->kind > 0) {
    r = builtin_init(o, a);
  } else {
    o->kind = K_CUSTOM;
    o->ct = find_type(type);
    r = o->ct ? o->ct->ctor(a, &o->self) : -ENOENT;
    if (r > 0)
      r = 0;
  }
  if (r == 0 && s->n_objs == s->cap_objs) {
    size_t nc = s->cap_objs ? s->cap_objs * 2 : 64;
    struct sobj **v = realloc(s->objs, nc * sizeof *v);
    if (!v)
      r = -ENOMEM;
    else {
      s->objs = v;
      s->cap_objs = nc;
    }
  }
  if (r == 0)
    r = (*res = mp_obj_int((int64_t)s->n_objs + 1)) ? 0 : -ENOMEM;
  if (r < 0) {
    o->ct = o->kind == K_CUSTOM ? NULL : o->ct; /* no destructor for a failed ctor */
    if (o->kind == K_POOL && o->self)
      mp_pool_free(o->self);
    mp_obj_free(o->val);
    free(o);
    return r;
  }
  s->objs[s->n_objs++] = o;
  return 0;
}

static struct sobj *srv_find(struct server *s, int64_t id) {
  if (id < 1 || (uint64_t)id > s->n_objs)
    return NULL;
  return s->objs[id - 1];
}

/* Free object i of the table (s->mu held). */
static void srv_free_obj(struct server *s, size_t i) {
  struct sobj *o = s->objs[i];
  s->objs[i] = NULL;
  o->released = true;
  wake_all(s);
  if (o->busy == 0)
    obj_destroy(o);
  /* otherwise the last waiter frees it (see srv_request) */
}

static void mark_ref(int64_t id, void *ctx) {
  struct server *s = ctx;
  struct sobj *t = srv_find(s, id);
  if (t)
    t->mark = true;
}

/* Proxies inside containers: an object its creator released stays while a
 * container refers to it (an orphan). Free the orphans nothing reachable
 * refers to: the roots are the objects not released (and named ones, which
 * are never released); references are followed through orphans too. Runs
 * after each call while orphans exist, whatever the call changed, so no
 * container method needs to count references (s->mu held). */
static void srv_collect(struct server *s) {
  if (s->n_orphans == 0)
    return;
  for (size_t i = 0; i < s->n_objs; i++)
    if (s->objs[i])
      s->objs[i]->mark = !s->objs[i]->orphan;
  /* a reference marks its target; scan each marked object once per pass,
   * until a pass marks nothing new */
  bool *scanned = calloc(s->n_objs, sizeof *scanned);
  if (!scanned)
    return; /* try again after the next call */
  for (bool more = true; more;) {
    more = false;
    for (size_t i = 0; i < s->n_objs; i++) {
      struct sobj *o = s->objs[i];
      if (!o || !o->mark || scanned[i])
        continue;
      scanned[i] = true;
      more = true;
      if (o->val)
        mp__obj_each_ref(o->val, mark_ref, s);
    }
  }
  free(scanned);
  for (size_t i = 0; i < s->n_objs; i++)
    if (s->objs[i] && s->objs[i]->orphan && !s->objs[i]->mark) {
      s->n_orphans--;
      srv_free_obj(s, i);
    }
}

/* Release object id for client me: only its creator may (see "Who may use
 * an object" in manager.h). */
static int srv_release(struct server *s, int64_t id, uint64_t me) {
  struct sobj *o = srv_find(s, id);
  if (!o)
    return -ESRCH;
  if (o->holder != me)
    return -EPERM;
  o->holder = 0;
  if (o->named)
    return 0; /* the name holds it for every client: the creator only lets go */
  /* an orphan until srv_collect() finds no container that refers to it */
  o->orphan = true;
  s->n_orphans++;
  srv_collect(s);
  return 0;
}

/* The type name an object was created with. */
static const char *obj_type_name(const struct sobj *o) {
  return o->kind == K_CUSTOM ? o->ct->name : kind_names[o->kind];
}

static ssize_t srv_name_find(struct server *s, const char *name) {
  for (size_t i = 0; i < s->n_names; i++)
    if (!strcmp(s->names[i].name, name))
      return (ssize_t)i;
  return -1;
}

/* Publish object id under name (s->mu held). From then on the object lives
 * until the server ends (a release by its creator only lets go of it). */
static int srv_publish(struct server *s, const char *name, int64_t id) {
  struct sobj *o = srv_find(s, id);
  if (!o)
    return -ESRCH;
  if (!*name || strlen(name) >= NAME_MAX_LEN)
    return -EINVAL;
  if (srv_name_find(s, name) >= 0)
    return -EEXIST;
  if (s->n_names == s->cap_names) {
    size_t nc = s->cap_names ? s->cap_names * 2 : 16;
    struct name_entry *v = realloc(s->names, nc * sizeof *v);
    if (!v)
      return -ENOMEM;
    s->names = v;
    s->cap_names = nc;
  }
  struct name_entry *e = &s->names[s->n_names++];
  snprintf(e->name, sizeof e->name, "%s", name);
  e->id = id;
  o->named = true;
  return 0;
}

/* The object a name stands for, or with an empty name the object id (a
 * reference read from a container), as [id, type name]. */
static int srv_lookup(struct server *s, const char *name, int64_t id, mp_obj **res) {
  if (*name) {
    ssize_t i = srv_name_find(s, name);
    if (i < 0)
      return -ENOENT;
    id = s->names[i].id;
  }
  struct sobj *o = srv_find(s, id);
  if (!o)
    return -ESRCH;
  *res = mp_obj_listv(2, mp_obj_int(id), mp_obj_str(obj_type_name(o)));
  return *res ? 0 : -ENOMEM;
}

static int sh_accept(struct client *c, int64_t addr, const mp_obj *args);

/* Run one request under the server mutex. */
static int srv_request(struct client *c, const mp_obj *req, mp_obj **res) {
  struct server *s = c->srv;
  int64_t op, id = 0, t = 0;
  const mp_obj *target = arg(req, 1), *name = arg(req, 2), *args = arg(req, 3), *tmo = arg(req, 4);
  const char *method;
  double timeout;
  if (mp_obj_type(req) != MP_OBJ_LIST || !nargs(req, 5) || arg_int(req, 0, &op) < 0 ||
      mp_obj_get_str(name, &method, NULL) < 0 || mp_obj_type(args) != MP_OBJ_LIST ||
      mp_obj_get_float(tmo, &timeout) < 0 || mp_obj_get_int(target, &id) < 0)
    return -EBADMSG;
  (void)t;
  mp__deadline d;
  if (mp__deadline_init(&d, timeout) < 0)
    return -EINVAL;
  switch (op) {
  case MP__OP_CREATE: {
    int r = srv_create(s, method, args, res);
    if (r == 0)
      s->objs[s->n_objs - 1]->holder = c->id;
    return r;
  }
  case MP__OP_RELEASE: return srv_release(s, id, c->id);
  case MP__OP_SHUTDOWN:
    /* Waits end now; the listener is told only after the reply has left
     * (client_main), so the asker learns the shutdown happened. */
    s->stopping = true;
    c->stop_after_reply = true;
    wake_all(s);
    return 0;
  case SH_OP_OFFER: return sh_accept(c, id, args);
  case MP__OP_LOOKUP: return srv_lookup(s, method, id, res);
  case MP__OP_PUBLISH: return srv_publish(s, method, id);
  case MP__OP_CALL: break;
  default: return -EBADMSG;
  }
  struct sobj *o = srv_find(s, id);
  if (!o)
    return -ESRCH;
  int r;
  o->busy++;
  if (o->kind == K_CUSTOM) {
    r = -EOPNOTSUPP;
    for (size_t i = 0; i < o->ct->n; i++)
      if (!strcmp(o->ct->methods[i].name, method)) {
        r = o->ct->methods[i].func(o->self, args, res);
        break;
      }
  } else {
    r = call_builtin(s, o, method, args, c->id, &d, res);
  }
  o->busy--;
  if (o->released && o->busy == 0)
    obj_destroy(o);
  srv_collect(s); /* the call may have dropped the last reference to an orphan */
  return r;
}

/* Accept a client's offer of a shared channel (see 2b). */
static int sh_accept(struct client *c, int64_t addr, const mp_obj *args) {
  uintptr_t a = (uintptr_t)addr;
  const void *nonce;
  size_t nl;
  if (c->sh)
    return -EALREADY;
  if (!nargs(args, 1) || mp_obj_get_bytes(arg(args, 0), &nonce, &nl) < 0 || nl != SH_NONCE)
    return -EINVAL;
  /* the whole block in this process's heap: never read outside it */
  if (addr <= 0 || a % 16 || !mp_heap_contains((const void *)a) ||
      !mp_heap_contains((const void *)(a + SH_BLOCK - 1)))
    return -EXDEV;
  struct shchan *b = (struct shchan *)a;
  if (b->magic != SH_MAGIC || memcmp(b->nonce, nonce, SH_NONCE) != 0)
    return -EXDEV; /* not the client's memory: another family's heap */
  c->sh = b;
  MP__CRASH(MANAGER_SH_OFFER_ACCEPTED);
  c->req_seen = atomic_load(&b->req_seq);
  c->resp_seq = atomic_load(&b->resp_seq);
  c->avoiding = -1;
  if (sched_getaffinity(0, sizeof c->cpus, &c->cpus) < 0)
    CPU_ZERO(&c->cpus); /* then sh_keep_off never moves the thread */
  return 0;
}

/* A server thread and its client hand each message over through memory: on
 * two CPUs that costs a cache-line transfer, on one CPU a context switch each
 * way. When threads outnumber CPUs the scheduler tends to wake a thread on
 * its waker's CPU, so a server thread and its client end up sharing one while
 * another CPU runs another pair the same way: bench/run
 * manager-dict-2clients swung between 250k and 900k round trips/s with the
 * placement. So a server thread keeps off its client's CPU: whenever the CPU
 * the client reports beside a request differs from the one the thread keeps
 * off, its affinity becomes the CPUs it may use minus that one (one system
 * call per change, none while the client stays put; nothing when it may use
 * a single CPU). */
static void sh_keep_off(struct client *c, int cpu) {
  if (cpu == c->avoiding || cpu < 0 || cpu >= CPU_SETSIZE || !CPU_ISSET(cpu, &c->cpus) ||
      CPU_COUNT(&c->cpus) < 2)
    return;
  cpu_set_t set = c->cpus;
  CPU_CLR(cpu, &set);
  if (sched_setaffinity(0, sizeof set, &set) == 0)
    c->avoiding = cpu;
}

/* The next request of a client on a shared channel: in the block (*p points
 * into it) or a frame on the socket (*p into the socket's buffer). Its
 * length; -EPIPE when the client is gone; -ECANCELED when the server
 * stops; other negative errno as chan_recv(). Wake frames are consumed
 * here. */
static ssize_t sh_server_next(struct client *c, const char **p) {
  struct shchan *b = c->sh;
  mp__deadline forever = {.forever = true};
  for (;;) {
    int64_t spin_end = 0;
    bool sock = false;
    for (unsigned i = 1;; i++) {
      /* acquire: the request's bytes were written before the store */
      if (atomic_load_explicit(&b->req_seq, memory_order_acquire) != c->req_seen)
        break;
      if (c->ch.len > c->ch.off) { /* bytes of a frame already buffered */
        sock = true;
        break;
      }
      if (i % SH_YIELD_EVERY) {
        mp__cpu_relax();
        continue;
      }
      sched_yield();
      struct pollfd pf[2] = {{.fd = c->ch.fd, .events = POLLIN},
                             {.fd = c->srv->stop[0], .events = POLLIN}};
      if (poll(pf, 2, 0) > 0) {
        if (pf[1].revents)
          return -ECANCELED;
        /* a request published before the client's end is still carried
         * out, as one sent whole on the socket is */
        sock = atomic_load(&b->req_seq) == c->req_seen;
        break;
      }
      int64_t now = mp__now_ns();
      if (!spin_end)
        spin_end = now + SH_SPIN_NS;
      if (now < spin_end)
        continue;
      /* sleep: announce it, re-check, then poll until a wake frame, a
       * large request or the client's end arrives */
      atomic_store(&b->server_asleep, 1);
      MP__CRASH(MANAGER_SH_SERVER_ASLEEP);
      if (atomic_load(&b->req_seq) != c->req_seen) {
        atomic_store(&b->server_asleep, 0);
        break;
      }
      int r;
      do
        r = poll(pf, 2, -1);
      while (r < 0 && errno == EINTR);
      atomic_store(&b->server_asleep, 0);
      if (pf[1].revents)
        return -ECANCELED;
      sock = atomic_load(&b->req_seq) == c->req_seen; /* as above */
      break;
    }
    if (!sock) {
      c->req_seen = atomic_load_explicit(&b->req_seq, memory_order_acquire);
      sh_keep_off(c, b->client_cpu);
      uint32_t len = b->req_len;
      if (len > SH_CAP)
        return -EBADMSG;
      *p = b->data;
      return (ssize_t)len;
    }
    ssize_t n = chan_recv(&c->ch, MP_OBJ_MAX_MESSAGE, p, &forever);
    if (n != 0)
      return n; /* a request, or the client's end */
    /* a wake frame: look at the block again */
  }
}

/* Answer a client on a shared channel: into the block, or on the socket
 * when it does not fit (announced in the block either way). */
static int sh_server_reply(struct client *c, const char *out, size_t len) {
  struct shchan *b = c->sh;
  size_t n = len - MP__FRAME_HDR;
  bool fits = n <= SH_CAP;
  if (fits)
    memcpy(b->data, out + MP__FRAME_HDR, n);
  b->resp_len = fits ? (uint32_t)n : SH_ON_SOCKET;
  MP__CRASH(MANAGER_SH_REPLY_WRITTEN);
  atomic_store(&b->resp_seq, ++c->resp_seq);
  MP__CRASH(MANAGER_SH_REPLY_PUBLISHED);
  if (atomic_exchange(&b->client_asleep, 0))
    mp__futex_wake(&b->resp_seq, 1);
  if (fits)
    return 0;
  /* after the announcement: the client reads the socket only then, and a
   * reply larger than the socket's buffer would otherwise never leave */
  mp__deadline forever = {.forever = true};
  return chan_send(&c->ch, out, len, &forever);
}

/* Release the locks a departing client held. */
static void srv_drop_client(struct server *s, uint64_t me) {
  for (size_t i = 0; i < s->n_objs; i++) {
    struct sobj *o = s->objs[i];
    if (o && (o->kind == K_LOCK || o->kind == K_RLOCK || o->kind == K_CONDITION) &&
        o->owner == me) {
      o->owner = 0;
      o->count = 0;
      wake_all(s);
    }
  }
}

/* The client this thread serves has proved the key (or the server has
 * none): from now on it counts as authenticated, so no newer connection
 * ends its handshake (srv_accept). */
static void client_proved(void) {
  struct client *c = srv_self;
  if (!c)
    return;
  struct server *s = c->srv;
  pthread_mutex_lock(&s->mu);
  if (!c->authed && !c->evicted) {
    c->authed = true;
    s->pending--;
    s->authed++;
  }
  pthread_mutex_unlock(&s->mu);
}

static void *client_main(void *arg_) {
  struct client *c = arg_;
  struct server *s = c->srv;
  srv_self = c;
  struct hs_io io = {chan_io_send, chan_io_recv, &c->ch};
  mp__deadline hd;
  mp__deadline_init(&hd, HANDSHAKE_TIMEOUT);
  int r = hs_server(&io, s->key, s->keylen, &hd);
  if (r == 0)
    client_proved(); /* an open server: no proof */
  if (r == -EACCES)
    MP__LOG(MP_LOG_WARNING, "manager: connection %lu refused: wrong or missing authentication key",
            (unsigned long)c->id);
  else if (r == 0)
    MP__LOG(MP_LOG_INFO, "manager: client %lu connected", (unsigned long)c->id);
  pthread_mutex_lock(&s->mu);
  if (r == 0 && c->evicted)
    r = -ECONNABORTED;
  pthread_mutex_unlock(&s->mu);
  mp__deadline forever = {.forever = true};
  bool eof = false;
  while (r == 0) {
    const char *p;
    /* the reply takes the path the connection used when the request came:
     * the answer to an offer goes on the socket */
    bool via_sh = c->sh != NULL;
    ssize_t n =
        via_sh ? sh_server_next(c, &p) : chan_recv(&c->ch, MP_OBJ_MAX_MESSAGE, &p, &forever);
    if (n < 0) {
      eof = n == -EPIPE;
      if (n == -EMSGSIZE) {
        /* the rest of the stream cannot be framed: answer, then hang up */
        char *out;
        size_t len;
        if (mp__encode_reply(-EMSGSIZE, NULL, &out, &len) == 0) {
          mp__deadline sd;
          mp__deadline_init(&sd, 1.0);
          chan_send(&c->ch, out, len, &sd);
          free(out);
        }
      }
      break;
    }
    mp_obj *req = NULL, *res = NULL;
    int status = mp__obj_decode(p, (size_t)n, MP__MSG_DEPTH, &req);
    if (status == 0) {
      pthread_mutex_lock(&s->mu);
      status = srv_request(c, req, &res);
      pthread_mutex_unlock(&s->mu);
    } else if (status != -ENOMEM) {
      status = status == -EMSGSIZE ? -EMSGSIZE : -EBADMSG;
    }
    mp_obj_free(req);
    char *out;
    size_t len;
    r = mp__encode_reply(status, res, &out, &len);
    mp_obj_free(res);
    if (r < 0) /* the result is beyond the limits: say so instead */
      r = mp__encode_reply(r, NULL, &out, &len);
    if (r == 0) {
      r = via_sh ? sh_server_reply(c, out, len) : chan_send(&c->ch, out, len, &forever);
      free(out);
    }
    if (c->stop_after_reply) {
      if (write(s->wake[1], "x", 1) < 0) {
        /* the pipe is non-blocking and one byte is enough */
      }
      break;
    }
  }
  pthread_mutex_lock(&s->mu);
  pthread_mutex_unlock(&s->mu);
  /* a channel's socket is never shut down by its own server (see serve()):
   * its end of file is the client's */
  sh_release(c->sh, SH_GONE_SERVER, eof, c->ch.fd, true);
  c->sh = NULL;
  if (c->authed)
    MP__LOG(MP_LOG_INFO, "manager: client %lu disconnected%s", (unsigned long)c->id,
            eof ? "" : " (its connection failed)");
  pthread_mutex_lock(&s->mu);
  srv_drop_client(s, c->id);
  if (c->authed)
    s->authed--;
  else if (!c->evicted)
    s->pending--;
  for (struct client **pp = &s->clients; *pp; pp = &(*pp)->next)
    if (*pp == c) {
      *pp = c->next;
      break;
    }
  chan_close(&c->ch);
  free(c);
  s->live--;
  wake_all(s);
  pthread_mutex_unlock(&s->mu);
  return NULL;
}

/* Connections: at most max_clients (options; MAX_CLIENTS by default)
 * authenticated or in the handshake, of which at most max_handshakes
 * (MAX_HANDSHAKES) in it, each for at most HANDSHAKE_TIMEOUT. A client
 * counts as authenticated from the moment it proved the key
 * (client_proved). Idle connections that never prove it must not lock out
 * clients that do: a connection that finds the handshake slots (or all
 * slots) taken ends the oldest handshake, which a client with the key
 * would have finished in a few round trips. Only a server whose slots all
 * hold authenticated clients turns a connection away, and says so
 * (MP__HS_FULL: -EUSERS at the client), unlike a wrong key (-EACCES). */

/* End the oldest handshake in progress (s->mu held). */
static void srv_evict_oldest(struct server *s) {
  struct client *old = NULL;
  for (struct client *c = s->clients; c; c = c->next)
    if (!c->authed && !c->evicted)
      old = c; /* the list is newest first */
  if (!old)
    return;
  old->evicted = true;
  s->pending--;
  shutdown(old->ch.fd, SHUT_RDWR); /* its thread closes it, under s->mu */
}

static void srv_accept(struct server *s) {
  int fd = accept4(s->lfd, NULL, NULL, SOCK_CLOEXEC);
  if (fd < 0)
    return;
  struct sockaddr_storage ss;
  socklen_t sl = sizeof ss;
  if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0 && ss.ss_family != AF_UNIX) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  struct client *c = calloc(1, sizeof *c);
  pthread_mutex_lock(&s->mu);
  if (!c || s->stopping) {
    pthread_mutex_unlock(&s->mu);
    free(c);
    close(fd);
    return;
  }
  if (s->pending >= s->max_handshakes ||
      (s->authed < s->max_clients && s->authed + s->pending >= s->max_clients))
    srv_evict_oldest(s);
  /* evicted threads end at once; give them a moment when they lag */
  for (int i = 0; i < 10 && s->live >= s->max_clients + s->max_handshakes; i++) {
    int64_t t = mp__now_ns() + 100000000;
    struct timespec at = {(time_t)(t / 1000000000), (long)(t % 1000000000)};
    pthread_cond_timedwait(&s->cv, &s->mu, &at);
  }
  if (s->authed >= s->max_clients || s->live >= s->max_clients + s->max_handshakes) {
    pthread_mutex_unlock(&s->mu);
    free(c);
    MP__LOG(MP_LOG_WARNING, "manager: a connection was turned away: the server is full "
                            "(max_clients %d)", s->max_clients);
    struct chan tmp;
    chan_init(&tmp, fd);
    mp__deadline now;
    mp__deadline_init(&now, 0);
    chan_send_raw(&tmp, MP__HS_FULL, MP__HS_MAGIC_LEN, &now); /* the buffer is empty */
    close(fd);
    return;
  }
  c->srv = s;
  chan_init(&c->ch, fd);
  c->id = ++s->next_client;
  pthread_attr_t at;
  pthread_attr_init(&at);
  pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&at, 1 << 20);
  pthread_t th;
  if (pthread_create(&th, &at, client_main, c) != 0) {
    pthread_mutex_unlock(&s->mu);
    pthread_attr_destroy(&at);
    close(fd);
    free(c);
    return;
  }
  pthread_attr_destroy(&at);
  c->next = s->clients;
  s->clients = c;
  s->live++;
  s->pending++;
  pthread_mutex_unlock(&s->mu);
}

/* An object to create under a name as the server starts
 * (mp_manager_register_object), kept by the handle until then. */
struct named_reg {
  char name[NAME_MAX_LEN];
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

static void serve_free(struct server *s) {
  for (size_t i = 0; i < s->n_objs; i++)
    if (s->objs[i])
      obj_destroy(s->objs[i]);
  free(s->objs);
  free(s->names);
}

/* Run the initializer, then create the named objects, before any client
 * can connect: every client finds every name. */
static int serve_prepare(struct server *s, const struct serve_setup *su) {
  if (su->init)
    su->init(su->init_arg);
  for (size_t i = 0; i < su->n_regs; i++) {
    mp_obj *id = NULL;
    int64_t v = 0;
    int r = srv_create(s, su->regs[i].type, su->regs[i].args, &id);
    if (r == 0)
      r = mp_obj_get_int(id, &v);
    mp_obj_free(id);
    if (r == 0)
      r = srv_publish(s, su->regs[i].name, v);
    if (r < 0) {
      MP__LOG(MP_LOG_ERROR, "manager: the named object '%s' (%s) could not be created: %s",
              su->regs[i].name, su->regs[i].type, mp_strerror(r));
      return r;
    }
  }
  return 0;
}

/* Serve on lfd until a shutdown request; then end every client thread and
 * free every object. Returns 0 or a negative errno if it could not start. */
static int serve(int lfd, const void *key, size_t keylen, int max_clients, int max_handshakes,
                 const struct serve_setup *su) {
  struct server s;
  memset(&s, 0, sizeof s);
  s.lfd = lfd;
  s.key = key;
  s.keylen = keylen;
  s.max_clients = max_clients;
  s.max_handshakes = max_handshakes;
  mp__obj_hash_rekey(); /* this server's dicts hash with a key of its own */
  int pr = serve_prepare(&s, su);
  if (pr < 0) {
    serve_free(&s);
    return pr;
  }
  if (pipe2(s.wake, O_CLOEXEC | O_NONBLOCK) < 0) {
    int e = -errno;
    serve_free(&s);
    return e;
  }
  if (pipe2(s.stop, O_CLOEXEC | O_NONBLOCK) < 0) {
    int e = -errno;
    close(s.wake[0]);
    close(s.wake[1]);
    serve_free(&s);
    return e;
  }
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&s.cv, &ca);
  pthread_condattr_destroy(&ca);
  pthread_mutex_init(&s.mu, NULL);
  for (;;) {
    struct pollfd p[2] = {{.fd = lfd, .events = POLLIN}, {.fd = s.wake[0], .events = POLLIN}};
    int r = poll(p, 2, -1);
    if (r < 0)
      continue; /* EINTR */
    if (p[1].revents)
      break;
    if (p[0].revents)
      srv_accept(&s);
  }
  pthread_mutex_lock(&s.mu);
  /* A client on a shared channel must not see its socket end before the
   * thread has let go of the block (2b): wake those threads with the stop
   * pipe instead, and shut down the sockets of the others. */
  if (write(s.stop[1], "x", 1) < 0) {
    /* a fresh non-blocking pipe takes one byte */
  }
  for (struct client *c = s.clients; c; c = c->next)
    if (!c->sh)
      shutdown(c->ch.fd, SHUT_RDWR);
  wake_all(&s);
  while (s.live > 0)
    pthread_cond_wait(&s.cv, &s.mu);
  pthread_mutex_unlock(&s.mu);
  serve_free(&s);
  close(s.wake[0]);
  close(s.wake[1]);
  close(s.stop[0]);
  close(s.stop[1]);
  pthread_mutex_destroy(&s.mu);
  pthread_cond_destroy(&s.cv);
  return 0;
}

/* ---------------------------------------------------------- 5. registered types */

MP_EXPORT int mp_manager_register(const char *name, mp_manager_constructor ctor,
                                  mp_manager_destructor dtor, const mp_manager_method_def *methods,
                                  size_t n) {
  if (!name || !*name || strlen(name) >= sizeof types[0].name || !ctor || (!methods && n))
    return -EINVAL;
  for (size_t i = 0; i < n; i++)
    if (!methods[i].name || !methods[i].func)
      return -EINVAL;
  if (find_kind(name) > 0 || find_type(name))
    return -EEXIST;
  if (n_types == MAX_TYPES)
    return -ENOSPC;
  struct custom_type *t = &types[n_types++];
  snprintf(t->name, sizeof t->name, "%s", name);
  t->ctor = ctor;
  t->dtor = dtor;
  t->methods = methods;
  t->n = n;
  return 0;
}

MP_EXPORT int mp_manager_register_function(const char *name, mp_manager_function fn,
                                           void *ctx) {
  if (!name || !*name || strlen(name) >= sizeof funcs[0].name || !fn)
    return -EINVAL;
  if (find_func(name))
    return -EEXIST;
  if (n_funcs == MAX_FUNCS)
    return -ENOSPC;
  struct pool_func *f = &funcs[n_funcs++];
  snprintf(f->name, sizeof f->name, "%s", name);
  f->fn = fn;
  f->ctx = ctx;
  return 0;
}

/* ---------------------------------------------------------- 6. managers */


#define MANAGER_MAGIC 0x6d704d47u /* "mpMG" */
#define PROXY_MAGIC 0x6d705058u   /* "mpPX" */

struct mp_manager {
  uint32_t magic;
  struct addr addr;
  bool have_addr; /* an address was given or bound */
  bool private_dir;
  char dir[64];
  uint8_t key[KEY_MAX];
  size_t keylen;
  bool auth;
  int lfd;       /* the listening socket, before start/serve */
  pid_t server;  /* the started server, in the starter */
  pid_t starter; /* the process that started it */
  bool started, connected, stopped;
  struct chan ch; /* the connection of process conn_pid */
  pid_t conn_pid;
  struct shchan *sh;               /* its shared channel (2b), or NULL */
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

MP_EXPORT int mp_manager_new(const mp_manager_options *opts, mp_manager **ret) {
  mp_manager_options o = {0};
  if (opts)
    o = *opts;
  if (!ret || (o.authkey && (o.authkey_len == 0 || o.authkey_len > KEY_MAX)))
    return -EINVAL;
  mp_manager *m = calloc(1, sizeof *m);
  if (!m)
    return -ENOMEM;
  if (o.address) {
    int r = addr_parse(o.address, &m->addr);
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
  m->max_clients = o.max_clients ? o.max_clients : MAX_CLIENTS;
  m->max_handshakes = o.max_handshakes ? o.max_handshakes : MAX_HANDSHAKES;
  m->lfd = -1;
  chan_init(&m->ch, -1);
  pthread_mutex_init(&m->mu, NULL);
  atomic_init(&m->mu_pid, mp__pid());
  m->magic = MANAGER_MAGIC;
  *ret = m;
  return 0;
}

static bool manager_ok(const mp_manager *m) { return m && m->magic == MANAGER_MAGIC; }

MP_EXPORT int mp_manager_listen(mp_manager *m) {
  if (!manager_ok(m))
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
    int r = addr_parse(path, &m->addr);
    if (r < 0) {
      rmdir(m->dir);
      return r;
    }
    m->private_dir = true;
    m->have_addr = true;
  }
  int fd = listen_at(&m->addr, SOCK_STREAM);
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
    unlink(addr_path(&m->addr));
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
static bool manager_ok(const mp_manager *m);
static int sh_offer(mp_manager *m, const mp__deadline *d);

static int manager_start(mp_manager *m, mp_manager_initializer init, void *init_arg) {
  if (!manager_ok(m))
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
   * before the fork: then their clients may use shared channels (2b) */
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
      snprintf(server_path, sizeof server_path, "%s", addr_path(&m->addr));
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
    serve(lfd, m->auth ? m->key : NULL, m->keylen, m->max_clients, m->max_handshakes, &su);
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
  if (!manager_ok(m) || !name || !*name || strlen(name) >= NAME_MAX_LEN || !type ||
      strlen(type) >= sizeof m->regs[0].type || (args && mp_obj_type(args) != MP_OBJ_LIST))
    return -EINVAL;
  if (m->lfd >= 0 || m->started || m->connected)
    return -EALREADY;
  int kind = find_kind(type);
  if (kind < 0 && !find_type(type))
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
    int r = kind != K_POOL ? builtin_init(&trial, a)
            : na > 1 || (na == 1 && (arg_int(a, 0, &np) < 0 || np < 0 || np > INT_MAX))
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
  if (!manager_ok(m))
    return -EINVAL;
  if (m->started || m->connected)
    return -EALREADY;
  if (m->lfd < 0) {
    int r = mp_manager_listen(m);
    if (r < 0)
      return r;
  }
  struct serve_setup su = {m->regs, m->n_regs, NULL, NULL};
  int r = serve(m->lfd, m->auth ? m->key : NULL, m->keylen, m->max_clients, m->max_handshakes,
                &su);
  close(m->lfd);
  m->lfd = -1;
  remove_socket(m);
  return r;
}

/* Open this process's connection, by deadline limit (NULL: 30 s; never
 * more). Called with m->mu held (or before the handle is shared). */
static int manager_connect(mp_manager *m, const mp__deadline *limit) {
  mp__deadline d;
  mp__deadline_init(&d, 30.0);
  if (limit && !limit->forever &&
      (limit->at.tv_sec < d.at.tv_sec ||
       (limit->at.tv_sec == d.at.tv_sec && limit->at.tv_nsec < d.at.tv_nsec)))
    d = *limit;
  int fd = connect_to(&m->addr, SOCK_STREAM, &d);
  if (fd < 0)
    return fd;
  struct chan ch;
  chan_init(&ch, fd);
  struct hs_io io = {chan_io_send, chan_io_recv, &ch};
  int r = hs_client(&io, m->auth ? m->key : NULL, m->keylen, &d);
  if (r < 0) {
    chan_close(&ch);
    return r == -EPIPE ? -EACCES : r;
  }
  m->ch = ch;
  m->conn_pid = mp__pid();
  m->sh = NULL;
  m->abandoned = false;
  /* a server forked by this family's mp_manager_start(), over its Unix
   * socket: the same heap */
  if (m->started && m->addr.family == AF_UNIX && !m->no_sh)
    return sh_offer(m, &d);
  return 0;
}

MP_EXPORT int mp_manager_connect(mp_manager *m) {
  if (!manager_ok(m) || !m->have_addr)
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
  if (!manager_ok(m) || (!buf && cap))
    return -EINVAL;
  if (!(m->lfd >= 0 || m->started || m->connected))
    return -ENOTCONN;
  return addr_format(&m->addr, buf, cap);
}

MP_EXPORT int mp_manager_pid(mp_manager *m) {
  if (!manager_ok(m))
    return -EINVAL;
  if (!m->started || m->starter != mp__pid())
    return -ECHILD;
  return m->server;
}

/* This process's pid, compared with the connection's owner on every call. */
static pid_t self_pid(void) { return mp__pid(); }

/* Let go of this process's shared channel, if any, and close its
 * connection. peer_gone: the server's end was seen closed. */
static void client_close(mp_manager *m, bool peer_gone) {
  sh_release(m->sh, SH_GONE_CLIENT, peer_gone, m->ch.fd, true);
  m->sh = NULL;
  chan_close(&m->ch);
}

/* Offer a shared channel to the server just connected (2b). 0 when the
 * connection is usable, with or without the channel; a negative errno when
 * it broke (then it is closed). */
static int sh_offer(mp_manager *m, const mp__deadline *d) {
  struct shchan *b = mp_heap_alloc(SH_BLOCK);
  if (!b)
    return 0;
  memset(b, 0, offsetof(struct shchan, data));
  b->magic = SH_MAGIC;
  mp_obj *args = NULL;
  char *out = NULL;
  size_t len;
  int r = mp__random_bytes(b->nonce, SH_NONCE);
  if (r == 0)
    r = (args = mp_obj_listv(1, mp_obj_bytes(b->nonce, SH_NONCE))) ? 0 : -ENOMEM;
  if (r == 0)
    r = mp__encode_request(SH_OP_OFFER, (int64_t)(uintptr_t)b, "", args, MP_FOREVER, &out, &len);
  mp_obj_free(args);
  if (r < 0) {
    mp_heap_free(b);
    return 0;
  }
  r = chan_send(&m->ch, out, len, d);
  free(out);
  MP__CRASH(MANAGER_SH_OFFER_SENT);
  const char *p;
  ssize_t n = r == 0 ? chan_recv(&m->ch, MP_OBJ_MAX_MESSAGE + 64, &p, d) : r;
  mp_obj *rep = NULL;
  int64_t status = -1;
  if (n >= 0 && mp__obj_decode(p, (size_t)n, MP__MSG_DEPTH, &rep) == 0 && nargs(rep, 2) &&
      arg_int(rep, 0, &status) == 0) {
    mp_obj_free(rep);
    if (status == 0)
      m->sh = b; /* from now on the server reads the block */
    else
      mp_heap_free(b); /* refused: the server never looks at it */
    m->sh_seq = 0;
    return 0;
  }
  mp_obj_free(rep);
  /* whether the server took the block is unknown: hand it over by the
   * freeing rule and give up the connection */
  m->sh = b;
  client_close(m, n == -EPIPE);
  return n < 0 ? (int)n : -EBADMSG;
}

/* One request and the wait for its reply on this process's shared channel,
 * by deadline d. The reply's length, *p pointing into the block or the
 * socket's buffer; -EPIPE when the server is gone; -ETIMEDOUT at the
 * deadline (the caller then gives up the connection: the server may still
 * answer into the block); other negative errno as chan_recv(). */
static ssize_t sh_client_call(mp_manager *m, const char *out, size_t len, const char **p,
                              const mp__deadline *d) {
  struct shchan *b = m->sh;
  size_t n = len - MP__FRAME_HDR;
  /* relaxed: only the server writes it, and only in answer to our requests */
  uint32_t seen = atomic_load_explicit(&b->resp_seq, memory_order_relaxed);
  int r;
  if (n <= SH_CAP) {
    memcpy(b->data, out + MP__FRAME_HDR, n);
    b->req_len = (uint32_t)n;
    b->client_cpu = sched_getcpu();
    MP__CRASH(MANAGER_SH_REQUEST_WRITTEN);
    atomic_store(&b->req_seq, ++m->sh_seq);
    MP__CRASH(MANAGER_SH_REQUEST_PUBLISHED);
    if (atomic_exchange(&b->server_asleep, 0)) {
      static const char wake[MP__FRAME_HDR];
      if ((r = chan_send(&m->ch, wake, sizeof wake, d)) < 0)
        return r;
    }
  } else if ((r = chan_send(&m->ch, out, len, d)) < 0) {
    return r;
  }
  int64_t spin_end = 0;
  /* acquire: the reply's bytes were written before the store */
  for (unsigned i = 1; atomic_load_explicit(&b->resp_seq, memory_order_acquire) == seen; i++) {
    if (i % SH_YIELD_EVERY) {
      mp__cpu_relax();
      continue;
    }
    sched_yield();
    int64_t now = mp__now_ns();
    if (!spin_end)
      spin_end = now + SH_SPIN_NS;
    if (now < spin_end)
      continue;
    atomic_store(&b->client_asleep, 1);
    MP__CRASH(MANAGER_SH_CLIENT_ASLEEP);
    if (atomic_load(&b->resp_seq) == seen) {
      /* a slice, or less when the caller's deadline comes first */
      mp__deadline sd;
      mp__deadline_init(&sd, SH_SLICE_NS / 1e9);
      if (!d->forever &&
          mp__now_ns() + SH_SLICE_NS > (int64_t)d->at.tv_sec * 1000000000 + d->at.tv_nsec)
        sd = *d;
      int w = mp__futex_wait(&b->resp_seq, seen, &sd);
      if (w < 0 && w != -ETIMEDOUT) { /* a word that is not the channel's: fail, never spin */
        atomic_store(&b->client_asleep, 0);
        return w;
      }
    }
    atomic_store(&b->client_asleep, 0);
    if (atomic_load(&b->resp_seq) == seen && sock_peer_gone(m->ch.fd))
      return -EPIPE;
    if (atomic_load(&b->resp_seq) == seen && mp__deadline_passed(d))
      return -ETIMEDOUT;
  }
  atomic_fetch_add_explicit(&sh_calls, 1, memory_order_relaxed); /* a statistic */
  uint32_t rl = b->resp_len;
  if (rl == SH_ON_SOCKET)
    return chan_recv(&m->ch, MP_OBJ_MAX_MESSAGE + 64, p, d);
  if (rl > SH_CAP)
    return -EBADMSG;
  *p = b->data;
  return (ssize_t)rl;
}

/* How long a timed call waits for its reply beyond its timeout. The server
 * ends the wait itself at the timeout and answers -ETIMEDOUT, so only a
 * server that does not answer at all (stopped, hung, far too slow) makes a
 * client give up, at the timeout plus this. */
#define CALL_GRACE 2.0

/* Take m->mu by deadline d, in whichever process calls (see mu_pid). */
static int manager_lock(mp_manager *m, const mp__deadline *d) {
  pid_t me = self_pid();
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
static int manager_call(mp_manager *m, int op, int64_t id, const char *name, const mp_obj *args,
                        double timeout, mp_obj **ret) {
  if (!manager_ok(m))
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
  pid_t me = self_pid();
  if (m->conn_pid != me) {
    /* a forked child: the inherited connection and shared channel belong
     * to the parent */
    m->sh = NULL;
    if (m->ch.fd >= 0) {
      close(m->ch.fd);
      free(m->ch.buf);
      chan_init(&m->ch, -1);
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
    n = sh_client_call(m, out, len, &p, &d);
  else if ((n = chan_send(&m->ch, out, len, &d)) == 0)
    n = chan_recv(&m->ch, MP_OBJ_MAX_MESSAGE + 64, &p, &d);
  free(out);
  mp_obj *rep = NULL;
  if (n >= 0)
    r = mp__obj_decode(p, (size_t)n, MP__MSG_DEPTH, &rep);
  else
    r = (int)n;
  if (r == -EPIPE || r == -EMSGSIZE) {
    if (r == -EPIPE || n == -EMSGSIZE) { /* the stream is gone or unframeable */
      client_close(m, n == -EPIPE);
      r = -EPIPE;
    }
  } else if (n == -ETIMEDOUT && m->ch.fd >= 0) {
    /* the request (or part of it) may be out and its reply still due */
    client_close(m, false);
    m->abandoned = true;
  }
  pthread_mutex_unlock(&m->mu);
  if (r < 0)
    return r;
  int64_t status;
  if (mp_obj_type(rep) != MP_OBJ_LIST || !nargs(rep, 2) || arg_int(rep, 0, &status) < 0 ||
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
  if (!manager_ok(m))
    return -EINVAL;
  if (!m->started && !m->connected)
    return -ENOTCONN;
  if (m->started && m->starter != mp__pid())
    return -ECHILD;
  if (m->stopped)
    return -EPIPE;
  int r = manager_call(m, MP__OP_SHUTDOWN, 0, "", NULL, MP_FOREVER, NULL);
  m->stopped = true;
  if (m->ch.fd >= 0 && m->conn_pid == mp__pid())
    client_close(m, false);
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
  if (!manager_ok(m))
    return -EINVAL;
  if (m->started && !m->stopped && m->starter == mp__pid())
    mp_manager_shutdown(m);
  if (m->ch.fd >= 0) {
    if (m->conn_pid == mp__pid())
      client_close(m, false);
    else
      chan_close(&m->ch); /* the parent's connection: its channel too */
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

/* ------------------------------------------------------------ 7. proxies */

struct mp_proxy {
  uint32_t magic;
  mp_manager *m;
  int64_t id;
  pid_t creator;
  int kind;
  char type[64];
};

static bool proxy_ok(const mp_proxy *p) { return p && p->magic == PROXY_MAGIC; }

MP_EXPORT int mp_manager_create(mp_manager *m, const char *type, const mp_obj *args,
                                mp_proxy **ret) {
  if (!manager_ok(m) || !type || !ret || strlen(type) >= sizeof((mp_proxy *)0)->type ||
      (args && mp_obj_type(args) != MP_OBJ_LIST))
    return -EINVAL;
  mp_proxy *p = calloc(1, sizeof *p);
  if (!p)
    return -ENOMEM;
  mp_obj *id = NULL;
  int r = manager_call(m, MP__OP_CREATE, 0, type, args, MP_FOREVER, &id);
  int64_t v;
  if (r >= 0 && mp_obj_get_int(id, &v) < 0)
    r = -EBADMSG;
  mp_obj_free(id);
  if (r < 0) {
    free(p);
    return r;
  }
  p->magic = PROXY_MAGIC;
  p->m = m;
  p->id = v;
  p->creator = mp__pid();
  p->kind = find_kind(type);
  if (p->kind < 0)
    p->kind = K_CUSTOM;
  snprintf(p->type, sizeof p->type, "%s", type);
  *ret = p;
  return 0;
}

static int proxy_from_lookup(mp_manager *m, mp_obj *rep, mp_proxy **ret);

MP_EXPORT int mp_manager_get(mp_manager *m, const char *name, mp_proxy **ret) {
  if (!manager_ok(m) || !name || !*name || strlen(name) >= NAME_MAX_LEN || !ret)
    return -EINVAL;
  mp_obj *rep = NULL;
  int r = manager_call(m, MP__OP_LOOKUP, 0, name, NULL, MP_FOREVER, &rep);
  if (r >= 0)
    r = proxy_from_lookup(m, rep, ret);
  mp_obj_free(rep);
  return r < 0 ? r : 0;
}

MP_EXPORT mp_obj *mp_obj_proxy(mp_proxy *p) {
  if (!proxy_ok(p))
    return NULL;
  return mp__obj_ref(p->id);
}

/* A proxy that does not own its object, from a LOOKUP reply [id, type]. */
static int proxy_from_lookup(mp_manager *m, mp_obj *rep, mp_proxy **ret) {
  int64_t v = 0;
  const char *type = NULL;
  if (mp_obj_type(rep) != MP_OBJ_LIST || !nargs(rep, 2) || arg_int(rep, 0, &v) < 0 ||
      mp_obj_get_str(arg(rep, 1), &type, NULL) < 0 || strlen(type) >= sizeof((mp_proxy *)0)->type)
    return -EBADMSG;
  mp_proxy *p = calloc(1, sizeof *p);
  if (!p)
    return -ENOMEM;
  p->magic = PROXY_MAGIC;
  p->m = m;
  p->id = v;
  p->creator = 0; /* a name or a container holds the object: no release */
  p->kind = find_kind(type);
  if (p->kind < 0)
    p->kind = K_CUSTOM;
  snprintf(p->type, sizeof p->type, "%s", type);
  *ret = p;
  return 0;
}

MP_EXPORT int mp_obj_get_proxy(mp_manager *m, const mp_obj *o, mp_proxy **ret) {
  if (!manager_ok(m) || !o || !ret)
    return -EINVAL;
  if (mp_obj_type(o) != MP_OBJ_PROXY)
    return -EDOM;
  mp_obj *rep = NULL;
  int r = manager_call(m, MP__OP_LOOKUP, mp__obj_ref_id(o), "", NULL, MP_FOREVER, &rep);
  if (r >= 0)
    r = proxy_from_lookup(m, rep, ret);
  mp_obj_free(rep);
  return r < 0 ? r : 0;
}

MP_EXPORT int mp_proxy_publish(mp_proxy *p, const char *name) {
  if (!proxy_ok(p) || !name || !*name || strlen(name) >= NAME_MAX_LEN)
    return -EINVAL;
  return manager_call(p->m, MP__OP_PUBLISH, p->id, name, NULL, MP_FOREVER, NULL);
}

/* Create a built-in object with up to one argument (borrowed). */
static int create1(mp_manager *m, const char *type, const mp_obj *a0, mp_proxy **ret) {
  if (!a0)
    return mp_manager_create(m, type, NULL, ret);
  mp_obj *args = mp_obj_listv(1, mp_obj_copy(a0));
  if (!args)
    return -ENOMEM;
  int r = mp_manager_create(m, type, args, ret);
  mp_obj_free(args);
  return r;
}

static int create_int(mp_manager *m, const char *type, int64_t v, mp_proxy **ret) {
  mp_obj *a = mp_obj_int(v);
  if (!a)
    return -ENOMEM;
  int r = create1(m, type, a, ret);
  mp_obj_free(a);
  return r;
}

MP_EXPORT int mp_manager_dict(mp_manager *m, const mp_obj *init, mp_proxy **ret) {
  if (init && mp_obj_type(init) != MP_OBJ_DICT)
    return -EDOM;
  return create1(m, "dict", init, ret);
}

MP_EXPORT int mp_manager_list(mp_manager *m, const mp_obj *init, mp_proxy **ret) {
  if (init && mp_obj_type(init) != MP_OBJ_LIST)
    return -EDOM;
  return create1(m, "list", init, ret);
}

MP_EXPORT int mp_manager_namespace(mp_manager *m, mp_proxy **ret) {
  return create1(m, "Namespace", NULL, ret);
}

MP_EXPORT int mp_manager_queue(mp_manager *m, int64_t maxsize, mp_proxy **ret) {
  return create_int(m, "Queue", maxsize < 0 ? 0 : maxsize, ret);
}

MP_EXPORT int mp_manager_lock(mp_manager *m, mp_proxy **ret) {
  return create1(m, "Lock", NULL, ret);
}

MP_EXPORT int mp_manager_rlock(mp_manager *m, mp_proxy **ret) {
  return create1(m, "RLock", NULL, ret);
}

MP_EXPORT int mp_manager_event(mp_manager *m, mp_proxy **ret) {
  return create1(m, "Event", NULL, ret);
}

MP_EXPORT int mp_manager_semaphore(mp_manager *m, int64_t value, int bounded, mp_proxy **ret) {
  if (value < 0)
    return -EINVAL;
  return create_int(m, bounded ? "BoundedSemaphore" : "Semaphore", value, ret);
}

MP_EXPORT int mp_manager_condition(mp_manager *m, mp_proxy **ret) {
  return create1(m, "Condition", NULL, ret);
}

MP_EXPORT int mp_manager_value(mp_manager *m, const mp_obj *init, mp_proxy **ret) {
  return create1(m, "Value", init, ret);
}

MP_EXPORT int mp_manager_array(mp_manager *m, const mp_obj *init, mp_proxy **ret) {
  if (!init || mp_obj_type(init) != MP_OBJ_LIST)
    return init ? -EDOM : -EINVAL;
  return create1(m, "Array", init, ret);
}

MP_EXPORT int mp_proxy_call(mp_proxy *p, const char *method, const mp_obj *args, double timeout,
                            mp_obj **ret) {
  if (!proxy_ok(p) || !method || (args && mp_obj_type(args) != MP_OBJ_LIST))
    return -EINVAL;
  mp_obj *res = NULL;
  int r = manager_call(p->m, MP__OP_CALL, p->id, method, args, timeout, ret ? &res : NULL);
  if (r >= 0 && ret)
    *ret = res;
  return r;
}

MP_EXPORT int mp_proxy_type(mp_proxy *p, const char **ret) {
  if (!proxy_ok(p) || !ret)
    return -EINVAL;
  *ret = p->type;
  return 0;
}

MP_EXPORT int mp_proxy_free(mp_proxy *p) {
  if (!p)
    return 0;
  if (!proxy_ok(p))
    return -EINVAL;
  if (p->creator == mp__pid() && manager_ok(p->m) && !p->m->stopped)
    manager_call(p->m, MP__OP_RELEASE, p->id, "", NULL, MP_FOREVER, NULL);
  p->magic = 0;
  free(p);
  return 0;
}

static bool kind_fits(const mp_proxy *p, int kind);

/* A typed call with an argument list (borrowed) of any length. */
static int tcall_list(mp_proxy *p, int kind, const char *method, const mp_obj *args,
                      double timeout, mp_obj **ret) {
  if (!proxy_ok(p) || !kind_fits(p, kind))
    return -EINVAL;
  mp_obj *res = NULL;
  int r = manager_call(p->m, MP__OP_CALL, p->id, method, args, timeout, ret ? &res : NULL);
  if (r >= 0 && ret)
    *ret = res;
  return r;
}

/* Whether a proxy may make the typed calls of kind. */
static bool kind_fits(const mp_proxy *p, int kind) {
  return p->kind == kind ||
         (kind == K_LOCK && (p->kind == K_RLOCK || p->kind == K_SEMAPHORE ||
                             p->kind == K_BSEMAPHORE || p->kind == K_CONDITION)) ||
         (kind == K_QUEUE && p->kind == K_JQUEUE);
}

/* A typed call: check the proxy's kind, pass up to two borrowed arguments. */
static int tcall(mp_proxy *p, int kind, const char *method, const mp_obj *a0, const mp_obj *a1,
                 double timeout, mp_obj **ret) {
  if (!proxy_ok(p))
    return -EINVAL;
  if (p->kind != kind && !(kind == K_LOCK && (p->kind == K_RLOCK || p->kind == K_SEMAPHORE ||
                                              p->kind == K_BSEMAPHORE || p->kind == K_CONDITION)) &&
      !(kind == K_QUEUE && p->kind == K_JQUEUE))
    return -EINVAL;
  if (!a0 && a1)
    return -EINVAL;
  /* a list that borrows the arguments would need the tree's layout: copy */
  mp_obj *args = NULL;
  if (a0) {
    args =
        a1 ? mp_obj_listv(2, mp_obj_copy(a0), mp_obj_copy(a1)) : mp_obj_listv(1, mp_obj_copy(a0));
    if (!args)
      return -ENOMEM;
  }
  mp_obj *res = NULL;
  int r = manager_call(p->m, MP__OP_CALL, p->id, method, args, timeout, ret ? &res : NULL);
  mp_obj_free(args);
  if (r >= 0 && ret)
    *ret = res;
  return r;
}

static int tcall_i(mp_proxy *p, int kind, const char *method, int64_t i, const mp_obj *a1,
                   double timeout, mp_obj **ret) {
  mp_obj *io = mp_obj_int(i);
  if (!io)
    return -ENOMEM;
  int r = tcall(p, kind, method, io, a1, timeout, ret);
  mp_obj_free(io);
  return r;
}

static int tcall_s(mp_proxy *p, int kind, const char *method, const char *s, const mp_obj *a1,
                   mp_obj **ret) {
  if (!s)
    return -EINVAL;
  mp_obj *so = mp_obj_str(s);
  if (!so)
    return -ENOMEM;
  int r = tcall(p, kind, method, so, a1, MP_FOREVER, ret);
  mp_obj_free(so);
  return r;
}

#define NEED(x)                                                                                    \
  do {                                                                                             \
    if (!(x))                                                                                      \
      return -EINVAL;                                                                              \
  } while (0)

MP_EXPORT int mp_dict_proxy_set(mp_proxy *d, const mp_obj *key, const mp_obj *value) {
  NEED(key && value);
  return tcall(d, K_DICT, "set", key, value, MP_FOREVER, NULL);
}
MP_EXPORT int mp_dict_proxy_get(mp_proxy *d, const mp_obj *key, mp_obj **ret) {
  NEED(key && ret);
  return tcall(d, K_DICT, "get", key, NULL, MP_FOREVER, ret);
}
MP_EXPORT int mp_dict_proxy_del(mp_proxy *d, const mp_obj *key) {
  NEED(key);
  return tcall(d, K_DICT, "del", key, NULL, MP_FOREVER, NULL);
}
MP_EXPORT int mp_dict_proxy_pop(mp_proxy *d, const mp_obj *key, mp_obj **ret) {
  NEED(key && ret);
  return tcall(d, K_DICT, "pop", key, NULL, MP_FOREVER, ret);
}
MP_EXPORT int mp_dict_proxy_contains(mp_proxy *d, const mp_obj *key) {
  NEED(key);
  return tcall(d, K_DICT, "contains", key, NULL, MP_FOREVER, NULL);
}
MP_EXPORT ssize_t mp_dict_proxy_len(mp_proxy *d) {
  return tcall(d, K_DICT, "len", NULL, NULL, MP_FOREVER, NULL);
}
MP_EXPORT int mp_dict_proxy_keys(mp_proxy *d, mp_obj **ret) {
  NEED(ret);
  return tcall(d, K_DICT, "keys", NULL, NULL, MP_FOREVER, ret);
}
MP_EXPORT int mp_dict_proxy_items(mp_proxy *d, mp_obj **ret) {
  NEED(ret);
  return tcall(d, K_DICT, "items", NULL, NULL, MP_FOREVER, ret);
}
MP_EXPORT int mp_dict_proxy_copy(mp_proxy *d, mp_obj **ret) {
  NEED(ret);
  return tcall(d, K_DICT, "copy", NULL, NULL, MP_FOREVER, ret);
}
MP_EXPORT int mp_dict_proxy_update(mp_proxy *d, const mp_obj *other) {
  NEED(other);
  if (mp_obj_type(other) != MP_OBJ_DICT)
    return -EDOM;
  return tcall(d, K_DICT, "update", other, NULL, MP_FOREVER, NULL);
}
MP_EXPORT int mp_dict_proxy_clear(mp_proxy *d) {
  return tcall(d, K_DICT, "clear", NULL, NULL, MP_FOREVER, NULL);
}

MP_EXPORT int mp_list_proxy_append(mp_proxy *l, const mp_obj *v) {
  NEED(v);
  return tcall(l, K_LIST, "append", v, NULL, MP_FOREVER, NULL);
}
MP_EXPORT int mp_list_proxy_extend(mp_proxy *l, const mp_obj *items) {
  NEED(items);
  if (mp_obj_type(items) != MP_OBJ_LIST)
    return -EDOM;
  return tcall(l, K_LIST, "extend", items, NULL, MP_FOREVER, NULL);
}
MP_EXPORT int mp_list_proxy_get(mp_proxy *l, int64_t i, mp_obj **ret) {
  NEED(ret);
  return tcall_i(l, K_LIST, "get", i, NULL, MP_FOREVER, ret);
}
MP_EXPORT int mp_list_proxy_set(mp_proxy *l, int64_t i, const mp_obj *v) {
  NEED(v);
  return tcall_i(l, K_LIST, "set", i, v, MP_FOREVER, NULL);
}
MP_EXPORT ssize_t mp_list_proxy_len(mp_proxy *l) {
  return tcall(l, K_LIST, "len", NULL, NULL, MP_FOREVER, NULL);
}
MP_EXPORT int mp_list_proxy_pop(mp_proxy *l, int64_t i, mp_obj **ret) {
  NEED(ret);
  return tcall_i(l, K_LIST, "pop", i, NULL, MP_FOREVER, ret);
}
MP_EXPORT int mp_list_proxy_insert(mp_proxy *l, int64_t i, const mp_obj *v) {
  NEED(v);
  return tcall_i(l, K_LIST, "insert", i, v, MP_FOREVER, NULL);
}
MP_EXPORT int mp_list_proxy_remove(mp_proxy *l, const mp_obj *v) {
  NEED(v);
  return tcall(l, K_LIST, "remove", v, NULL, MP_FOREVER, NULL);
}
MP_EXPORT ssize_t mp_list_proxy_index(mp_proxy *l, const mp_obj *v) {
  NEED(v);
  return tcall(l, K_LIST, "index", v, NULL, MP_FOREVER, NULL);
}
MP_EXPORT ssize_t mp_list_proxy_count(mp_proxy *l, const mp_obj *v) {
  NEED(v);
  return tcall(l, K_LIST, "count", v, NULL, MP_FOREVER, NULL);
}
MP_EXPORT int mp_list_proxy_copy(mp_proxy *l, mp_obj **ret) {
  NEED(ret);
  return tcall(l, K_LIST, "copy", NULL, NULL, MP_FOREVER, ret);
}

MP_EXPORT int mp_namespace_proxy_set(mp_proxy *ns, const char *name, const mp_obj *v) {
  NEED(v);
  return tcall_s(ns, K_NAMESPACE, "setattr", name, v, NULL);
}
MP_EXPORT int mp_namespace_proxy_get(mp_proxy *ns, const char *name, mp_obj **ret) {
  NEED(ret);
  return tcall_s(ns, K_NAMESPACE, "getattr", name, NULL, ret);
}
MP_EXPORT int mp_namespace_proxy_del(mp_proxy *ns, const char *name) {
  return tcall_s(ns, K_NAMESPACE, "delattr", name, NULL, NULL);
}

MP_EXPORT int mp_queue_proxy_put(mp_proxy *q, const mp_obj *v, double timeout) {
  NEED(v);
  return tcall(q, K_QUEUE, "put", v, NULL, timeout, NULL);
}
MP_EXPORT int mp_queue_proxy_get(mp_proxy *q, double timeout, mp_obj **ret) {
  NEED(ret);
  return tcall(q, K_QUEUE, "get", NULL, NULL, timeout, ret);
}
MP_EXPORT ssize_t mp_queue_proxy_qsize(mp_proxy *q) {
  return tcall(q, K_QUEUE, "qsize", NULL, NULL, MP_FOREVER, NULL);
}

MP_EXPORT int mp_lock_proxy_acquire(mp_proxy *l, double timeout) {
  return tcall(l, K_LOCK, "acquire", NULL, NULL, timeout, NULL);
}
MP_EXPORT int mp_lock_proxy_release(mp_proxy *l) {
  return tcall(l, K_LOCK, "release", NULL, NULL, MP_FOREVER, NULL);
}

MP_EXPORT int mp_event_proxy_set(mp_proxy *e) {
  return tcall(e, K_EVENT, "set", NULL, NULL, MP_FOREVER, NULL);
}
MP_EXPORT int mp_event_proxy_clear(mp_proxy *e) {
  return tcall(e, K_EVENT, "clear", NULL, NULL, MP_FOREVER, NULL);
}
MP_EXPORT int mp_event_proxy_is_set(mp_proxy *e) {
  return tcall(e, K_EVENT, "is_set", NULL, NULL, MP_FOREVER, NULL);
}
MP_EXPORT int mp_event_proxy_wait(mp_proxy *e, double timeout) {
  return tcall(e, K_EVENT, "wait", NULL, NULL, timeout, NULL);
}

MP_EXPORT int mp_condition_proxy_wait(mp_proxy *c, double timeout) {
  return tcall(c, K_CONDITION, "wait", NULL, NULL, timeout, NULL);
}
MP_EXPORT int mp_condition_proxy_notify(mp_proxy *c, int n) {
  return tcall_i(c, K_CONDITION, "notify", n, NULL, MP_FOREVER, NULL);
}
MP_EXPORT int mp_condition_proxy_notify_all(mp_proxy *c) {
  return tcall(c, K_CONDITION, "notify_all", NULL, NULL, MP_FOREVER, NULL);
}

MP_EXPORT int mp_value_proxy_get(mp_proxy *v, mp_obj **ret) {
  NEED(ret);
  return tcall(v, K_VALUE, "get", NULL, NULL, MP_FOREVER, ret);
}
MP_EXPORT int mp_value_proxy_set(mp_proxy *v, const mp_obj *x) {
  NEED(x);
  return tcall(v, K_VALUE, "set", x, NULL, MP_FOREVER, NULL);
}
MP_EXPORT int mp_array_proxy_get(mp_proxy *a, int64_t i, mp_obj **ret) {
  NEED(ret);
  return tcall_i(a, K_ARRAY, "get", i, NULL, MP_FOREVER, ret);
}
MP_EXPORT int mp_array_proxy_set(mp_proxy *a, int64_t i, const mp_obj *x) {
  NEED(x);
  return tcall_i(a, K_ARRAY, "set", i, x, MP_FOREVER, NULL);
}
MP_EXPORT ssize_t mp_array_proxy_len(mp_proxy *a) {
  return tcall(a, K_ARRAY, "len", NULL, NULL, MP_FOREVER, NULL);
}

MP_EXPORT int mp_dict_proxy_values(mp_proxy *d, mp_obj **ret) {
  NEED(ret);
  return tcall(d, K_DICT, "values", NULL, NULL, MP_FOREVER, ret);
}
MP_EXPORT int mp_dict_proxy_popitem(mp_proxy *d, mp_obj **ret) {
  NEED(ret);
  return tcall(d, K_DICT, "popitem", NULL, NULL, MP_FOREVER, ret);
}
MP_EXPORT int mp_dict_proxy_setdefault(mp_proxy *d, const mp_obj *key, const mp_obj *dflt,
                                       mp_obj **ret) {
  NEED(key && dflt && ret);
  return tcall(d, K_DICT, "setdefault", key, dflt, MP_FOREVER, ret);
}
MP_EXPORT int mp_dict_proxy_reversed(mp_proxy *d, mp_obj **ret) {
  NEED(ret);
  return tcall(d, K_DICT, "reversed", NULL, NULL, MP_FOREVER, ret);
}
MP_EXPORT int mp_dict_proxy_or(mp_proxy *d, const mp_obj *other, mp_obj **ret) {
  NEED(other && ret);
  if (mp_obj_type(other) != MP_OBJ_DICT)
    return -EDOM;
  return tcall(d, K_DICT, "or", other, NULL, MP_FOREVER, ret);
}
MP_EXPORT int mp_dict_proxy_ior(mp_proxy *d, const mp_obj *other) {
  NEED(other);
  if (mp_obj_type(other) != MP_OBJ_DICT && mp_obj_type(other) != MP_OBJ_LIST)
    return -EDOM;
  return tcall(d, K_DICT, "ior", other, NULL, MP_FOREVER, NULL);
}
MP_EXPORT int mp_dict_proxy_next(mp_proxy *d, mp_dict_iter *it, mp_obj **key) {
  NEED(it && key && it->pos >= 0);
  if (it->len < 0) { /* the first step: the length iteration starts from */
    ssize_t n = mp_dict_proxy_len(d);
    if (n < 0)
      return (int)n;
    it->len = n;
  }
  mp_obj *args = mp_obj_listv(2, mp_obj_int(it->pos), mp_obj_int(it->len));
  if (!args)
    return -ENOMEM;
  mp_obj *res = NULL;
  int r = tcall_list(d, K_DICT, "next", args, MP_FOREVER, &res);
  mp_obj_free(args);
  if (r == 1) {
    it->pos++;
    *key = res;
    return 1;
  }
  mp_obj_free(res);
  return r;
}
MP_EXPORT int mp_manager_dict_fromkeys(mp_manager *m, const mp_obj *keys, const mp_obj *value,
                                       mp_proxy **ret) {
  if (!keys || !ret)
    return -EINVAL;
  if (mp_obj_type(keys) != MP_OBJ_LIST)
    return -EDOM;
  mp_obj *d = mp_obj_dict();
  for (size_t i = 0; d && i < (size_t)mp_obj_len(keys); i++)
    if (mp_obj_dict_set(d, mp_obj_copy(mp__obj_list_at(keys, i)),
                        value ? mp_obj_copy(value) : mp_obj_nil()) < 0) {
      mp_obj_free(d);
      d = NULL;
    }
  if (!d)
    return -ENOMEM;
  int r = mp_manager_dict(m, d, ret);
  mp_obj_free(d);
  return r;
}

/* [start, stop, step(, items)]: MP_SLICE_NONE travels as nil (omitted). */
static mp_obj *slice_args(int64_t start, int64_t stop, int64_t step, const mp_obj *items) {
  int64_t v[3] = {start, stop, step};
  mp_obj *a = mp_obj_list();
  if (!a)
    return NULL;
  for (int j = 0; j < 3; j++)
    if (mp_obj_list_append(a, v[j] == MP_SLICE_NONE ? mp_obj_nil() : mp_obj_int(v[j])) < 0) {
      mp_obj_free(a);
      return NULL;
    }
  if (items && mp_obj_list_append(a, mp_obj_copy(items)) < 0) {
    mp_obj_free(a);
    return NULL;
  }
  return a;
}
MP_EXPORT int mp_list_proxy_slice(mp_proxy *l, int64_t start, int64_t stop, int64_t step,
                                  mp_obj **ret) {
  NEED(ret);
  mp_obj *a = slice_args(start, stop, step, NULL);
  if (!a)
    return -ENOMEM;
  int r = tcall_list(l, K_LIST, "slice", a, MP_FOREVER, ret);
  mp_obj_free(a);
  return r;
}
MP_EXPORT int mp_list_proxy_set_slice(mp_proxy *l, int64_t start, int64_t stop, int64_t step,
                                      const mp_obj *items) {
  NEED(items);
  if (mp_obj_type(items) != MP_OBJ_LIST)
    return -EDOM;
  mp_obj *a = slice_args(start, stop, step, items);
  if (!a)
    return -ENOMEM;
  int r = tcall_list(l, K_LIST, "set_slice", a, MP_FOREVER, NULL);
  mp_obj_free(a);
  return r;
}
MP_EXPORT int mp_list_proxy_del_slice(mp_proxy *l, int64_t start, int64_t stop, int64_t step) {
  mp_obj *a = slice_args(start, stop, step, NULL);
  if (!a)
    return -ENOMEM;
  int r = tcall_list(l, K_LIST, "del_slice", a, MP_FOREVER, NULL);
  mp_obj_free(a);
  return r;
}
MP_EXPORT int mp_list_proxy_imul(mp_proxy *l, int64_t n) {
  return tcall_i(l, K_LIST, "imul", n, NULL, MP_FOREVER, NULL);
}
MP_EXPORT int mp_list_proxy_sort(mp_proxy *l, int reverse) {
  mp_obj *rev = mp_obj_bool(reverse);
  if (!rev)
    return -ENOMEM;
  int r = tcall(l, K_LIST, "sort", rev, NULL, MP_FOREVER, NULL);
  mp_obj_free(rev);
  return r;
}
MP_EXPORT int mp_list_proxy_reverse(mp_proxy *l) {
  return tcall(l, K_LIST, "reverse", NULL, NULL, MP_FOREVER, NULL);
}
MP_EXPORT int mp_list_proxy_clear(mp_proxy *l) {
  return tcall(l, K_LIST, "clear", NULL, NULL, MP_FOREVER, NULL);
}

MP_EXPORT int mp_queue_proxy_empty(mp_proxy *q) {
  return tcall(q, K_QUEUE, "empty", NULL, NULL, MP_FOREVER, NULL);
}
MP_EXPORT int mp_queue_proxy_full(mp_proxy *q) {
  return tcall(q, K_QUEUE, "full", NULL, NULL, MP_FOREVER, NULL);
}
MP_EXPORT int mp_manager_joinable_queue(mp_manager *m, int64_t maxsize, mp_proxy **ret) {
  return create_int(m, "JoinableQueue", maxsize < 0 ? 0 : maxsize, ret);
}
MP_EXPORT int mp_queue_proxy_task_done(mp_proxy *q) {
  return tcall(q, K_JQUEUE, "task_done", NULL, NULL, MP_FOREVER, NULL);
}
MP_EXPORT int mp_queue_proxy_join(mp_proxy *q, double timeout) {
  return tcall(q, K_JQUEUE, "join", NULL, NULL, timeout, NULL);
}

MP_EXPORT int mp_manager_set(mp_manager *m, const mp_obj *init, mp_proxy **ret) {
  if (init && mp_obj_type(init) != MP_OBJ_LIST)
    return -EDOM;
  return create1(m, "set", init, ret);
}
MP_EXPORT int mp_set_proxy_add(mp_proxy *st, const mp_obj *v) {
  NEED(v);
  return tcall(st, K_SET, "add", v, NULL, MP_FOREVER, NULL);
}
MP_EXPORT int mp_set_proxy_discard(mp_proxy *st, const mp_obj *v) {
  NEED(v);
  return tcall(st, K_SET, "discard", v, NULL, MP_FOREVER, NULL);
}
MP_EXPORT int mp_set_proxy_remove(mp_proxy *st, const mp_obj *v) {
  NEED(v);
  return tcall(st, K_SET, "remove", v, NULL, MP_FOREVER, NULL);
}
MP_EXPORT int mp_set_proxy_contains(mp_proxy *st, const mp_obj *v) {
  NEED(v);
  return tcall(st, K_SET, "contains", v, NULL, MP_FOREVER, NULL);
}
MP_EXPORT ssize_t mp_set_proxy_len(mp_proxy *st) {
  return tcall(st, K_SET, "len", NULL, NULL, MP_FOREVER, NULL);
}
MP_EXPORT int mp_set_proxy_pop(mp_proxy *st, mp_obj **ret) {
  NEED(ret);
  return tcall(st, K_SET, "pop", NULL, NULL, MP_FOREVER, ret);
}
MP_EXPORT int mp_set_proxy_clear(mp_proxy *st) {
  return tcall(st, K_SET, "clear", NULL, NULL, MP_FOREVER, NULL);
}
MP_EXPORT int mp_set_proxy_items(mp_proxy *st, mp_obj **ret) {
  NEED(ret);
  return tcall(st, K_SET, "items", NULL, NULL, MP_FOREVER, ret);
}
MP_EXPORT int mp_set_proxy_update(mp_proxy *st, const mp_obj *items) {
  NEED(items);
  if (mp_obj_type(items) != MP_OBJ_LIST)
    return -EDOM;
  return tcall(st, K_SET, "update", items, NULL, MP_FOREVER, NULL);
}

MP_EXPORT int mp_manager_barrier(mp_manager *m, int parties, mp_proxy **ret) {
  if (parties < 1)
    return -EINVAL;
  return create_int(m, "Barrier", parties, ret);
}
MP_EXPORT int mp_manager_pool(mp_manager *m, int processes, mp_proxy **ret) {
  if (processes < 0)
    return -EINVAL;
  return create_int(m, "Pool", processes, ret);
}

/* apply and map: [name, list] (+ chunksize), the list copied */
static int pool_call(mp_proxy *p, const char *method, const char *name, const mp_obj *list,
                     const mp_obj *extra, double timeout, mp_obj **ret) {
  if (!name || (list && mp_obj_type(list) != MP_OBJ_LIST))
    return -EINVAL;
  mp_obj *a = mp_obj_listv(2, mp_obj_str(name), list ? mp_obj_copy(list) : mp_obj_list());
  if (!a || (extra && mp_obj_list_append(a, mp_obj_copy(extra)) < 0)) {
    mp_obj_free(a);
    return -ENOMEM;
  }
  int r = tcall_list(p, K_POOL, method, a, timeout, ret);
  mp_obj_free(a);
  return r;
}
MP_EXPORT int mp_pool_proxy_apply(mp_proxy *p, const char *name, const mp_obj *args,
                                  double timeout, mp_obj **ret) {
  return pool_call(p, "apply", name, args, NULL, timeout, ret);
}
MP_EXPORT int mp_pool_proxy_map(mp_proxy *p, const char *name, const mp_obj *items,
                                size_t chunksize, double timeout, mp_obj **ret) {
  if (!items || chunksize > INT64_MAX)
    return -EINVAL;
  mp_obj *cs = mp_obj_int((int64_t)chunksize);
  if (!cs)
    return -ENOMEM;
  int r = pool_call(p, "map", name, items, cs, timeout, ret);
  mp_obj_free(cs);
  return r;
}
MP_EXPORT int mp_pool_proxy_close(mp_proxy *p) {
  return tcall(p, K_POOL, "close", NULL, NULL, MP_FOREVER, NULL);
}
MP_EXPORT int mp_pool_proxy_terminate(mp_proxy *p) {
  return tcall(p, K_POOL, "terminate", NULL, NULL, MP_FOREVER, NULL);
}

MP_EXPORT int mp_barrier_proxy_wait(mp_proxy *b, double timeout) {
  return tcall(b, K_BARRIER, "wait", NULL, NULL, timeout, NULL);
}
MP_EXPORT int mp_barrier_proxy_abort(mp_proxy *b) {
  return tcall(b, K_BARRIER, "abort", NULL, NULL, MP_FOREVER, NULL);
}
MP_EXPORT int mp_barrier_proxy_reset(mp_proxy *b) {
  return tcall(b, K_BARRIER, "reset", NULL, NULL, MP_FOREVER, NULL);
}
MP_EXPORT int mp_barrier_proxy_broken(mp_proxy *b) {
  return tcall(b, K_BARRIER, "broken", NULL, NULL, MP_FOREVER, NULL);
}
MP_EXPORT int mp_barrier_proxy_n_waiting(mp_proxy *b) {
  return tcall(b, K_BARRIER, "n_waiting", NULL, NULL, MP_FOREVER, NULL);
}
MP_EXPORT int mp_barrier_proxy_parties(mp_proxy *b) {
  return tcall(b, K_BARRIER, "parties", NULL, NULL, MP_FOREVER, NULL);
}

/* ------------------------------------------------ 8. Listener and Client */

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
 * The steps (the same messages as hs_server(), which the Manager's server
 * uses as one blocking call):
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

#include "crash.h" /* here, beside its only users in this file */

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
  uint8_t key[KEY_MAX];
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
  if (!address || !ret || (authkey && keylen > KEY_MAX))
    return -EINVAL;
  mp_listener *l = mp__handle_new(sizeof *l);
  if (!l)
    return -ENOMEM;
  /* Unix: SOCK_SEQPACKET, the connections' own records; TCP: a stream, and
   * the connections frame messages in it (connection.c, stream mode) */
  int r;
  if (!strncmp(address, "*:", 2)) {
    r = listen_any(address + 2, &l->addr);
  } else {
    r = addr_parse(address, &l->addr);
    if (r == 0)
      r = listen_at(&l->addr, listener_type(&l->addr, py) | SOCK_NONBLOCK);
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
  return addr_format(&l->addr, buf, cap);
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
    unlink(addr_path(&l->addr));
  l->magic = LISTENER_DEAD;
  sodium_memzero(l->key, sizeof l->key); /* the key does not outlive the listener */
  mp__handle_free(l); /* never free()d: a second close sees LISTENER_DEAD */
  return 0;
}

/* Python's Client(): answer the listener's challenge, then challenge it
 * (answer_challenge(), deliver_challenge()); the messages of pyauth.c. */
static int hs_client_py(mp_connection *c, const void *key, size_t keylen, const mp__deadline *d) {
  uint8_t msg[MP__PY_MAX], mac[64], chal[MP__PY_CHAL_LEN];
  size_t ml;
  ssize_t n = conn_io_recv(c, msg, sizeof msg, d);
  if (n < 0)
    return n == -EBADMSG ? -EACCES : (int)n;
  int r = mp__py_answer(key, keylen, msg, (size_t)n, mac, &ml);
  if (r < 0 || (r = conn_io_send(c, mac, ml, d)) < 0)
    return r;
  if ((n = conn_io_recv(c, msg, sizeof msg, d)) < 0)
    return n == -EBADMSG || n == -EPIPE ? -EACCES : (int)n;
  if (n != MP__PY_WELCOME_LEN || memcmp(msg, MP__PY_WELCOME, MP__PY_WELCOME_LEN))
    return -EACCES;
  if ((r = mp__py_challenge(chal)) < 0 || (r = conn_io_send(c, chal, sizeof chal, d)) < 0)
    return r;
  if ((n = conn_io_recv(c, msg, sizeof msg, d)) < 0)
    return n == -EBADMSG ? -EACCES : (int)n;
  bool ok = mp__py_verify(key, keylen, chal, msg, (size_t)n) == 0;
  r = ok ? conn_io_send(c, MP__PY_WELCOME, MP__PY_WELCOME_LEN, d)
         : conn_io_send(c, MP__PY_FAILURE, MP__PY_FAILURE_LEN, d);
  return ok ? r : -EACCES;
}

static int client_connect(const char *address, const void *authkey, size_t keylen, bool py,
                          double timeout, mp_connection **ret) {
  if (!address || !ret || (authkey && keylen > KEY_MAX))
    return -EINVAL;
  mp__deadline d;
  if (mp__deadline_init(&d, timeout) < 0)
    return -EINVAL;
  struct addr a;
  int r = addr_parse(address, &a);
  if (r < 0)
    return r;
  int fd = connect_to(&a, listener_type(&a, py), &d);
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
    struct hs_io io = {conn_io_send, conn_io_recv, c};
    r = hs_client(&io, authkey, keylen, &d);
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
