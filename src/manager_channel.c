/* SPDX-License-Identifier: MIT */
/*
 * The Manager's shared channel: a block of the family heap through which a
 * client of the same family and its server thread pass requests and replies
 * instead of the socket. Both halves live here, under the protocol comment
 * that governs them.
 *
 * Map of this file:
 *   the protocol: set-up, fields and who writes them, waiting, freeing, and
 *     what a SIGKILL at each step leaves behind
 *   the block's layout; letting go of it (sh_release, both sides)
 *   the server's half: accept an offer, keep off the client's CPU, take the
 *     next request, publish a reply, let go at the thread's end
 *   the client's half: let go and close, offer a block, one call through it
 * Crash points marked here: manager.sh.* (all nine, in the table below).
 * The server's loop that calls the server's half is client_main()
 * (manager_server.c); the client's is mp__manager_call() (manager.c).
 */
#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "crash.h"
#include "internal.h"
#include "manager_internal.h"
#include "spin.h"
#include "wire.h"

/*
 * A client whose process shares the family heap with the server (the
 * server of mp_manager_start() is forked from the starter after the heap is
 * mapped, so the starter and every process it forks afterwards qualify)
 * carries its requests and replies through a block of that heap instead of
 * the socket. The encoding, the dispatch (srv_request, manager_server.c)
 * and the errors are those of the socket path; only the transport differs.
 *
 * Setting up. After the handshake, the client allocates a block, writes
 * SH_MAGIC and 16 random bytes (nonce) into it and sends an offer over the
 * socket: [MP__SH_OP_OFFER, the block's address, "", [nonce], -1]. The server
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
 * Waiting. Each side first spins by libmp's one policy (spin.h: MP__SPIN_NS,
 * reading the clock and yielding the CPU every MP__SPIN_CHECK pauses): with
 * two CPUs, two clients and two server threads outnumber the CPUs, and a
 * spinner must not keep the thread it waits for off a CPU. The server also
 * polls its socket (timeout 0) every MP__SPIN_CHECK pauses, for a large
 * request or a dead client.
 *
 * Freeing (the block belongs to both; exactly one side frees it):
 *   - a side that sees the other's end of the socket closed (end of file,
 *     POLLHUP) frees the block: the other side closes its socket only after
 *     it let go of the block, or it died;
 *   - a side that ends without having seen that (mp_manager_free(), a
 *     shutdown, a server thread ending with its server) first looks at the
 *     socket once more (POLLHUP: as above), else ORs its bit into `gone`
 *     and frees the block only when the other's bit was already there.
 *     The server never shuts down the socket of a client on a shared
 *     channel (its end wakes such threads by the stop pipe instead, see
 *     mp__serve), so the look sees only the client's own end.
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
 *                               nothing (mp__client_gone);
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
#define SH_BLOCK (32u * 1024) /* the whole block */
#define SH_NONCE 16
#define SH_ON_SOCKET UINT32_MAX
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
 * other's end closed; otherwise it looks at the socket first. */
static void sh_release(struct shchan *b, uint32_t mine, bool peer_gone, int fd) {
  if (!b)
    return;
  if (!peer_gone && fd >= 0)
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

/* ------------------------------------------------------ the server's half */

/* Accept a client's offer of a shared channel (see "Setting up"). */
int mp__sh_accept(struct client *c, int64_t addr, const mp_obj *args) {
  uintptr_t a = (uintptr_t)addr;
  const void *nonce;
  size_t nl;
  if (c->sh)
    return -EALREADY;
  if (!mp__nargs(args, 1) || mp_obj_get_bytes(mp__arg(args, 0), &nonce, &nl) < 0 || nl != SH_NONCE)
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
 * stops; other negative errno as mp__chan_recv(). Wake frames are consumed
 * here. */
ssize_t mp__sh_server_next(struct client *c, const char **p) {
  struct shchan *b = c->sh;
  mp__deadline forever = {.forever = true};
  for (;;) {
    mp__spin spin = MP__SPIN_INIT;
    struct pollfd pf[2] = {{.fd = c->ch.fd, .events = POLLIN},
                           {.fd = c->srv->stop[0], .events = POLLIN}};
    bool sock = false;
    for (;;) {
      /* acquire: the request's bytes were written before the store */
      if (atomic_load_explicit(&b->req_seq, memory_order_acquire) != c->req_seen)
        break;
      if (c->ch.len > c->ch.off) { /* bytes of a frame already buffered */
        sock = true;
        break;
      }
      /* at each of the spin's clock steps, a look at the socket too */
      if (spin.step && spin.step % MP__SPIN_CHECK == 0 && poll(pf, 2, 0) > 0) {
        if (pf[1].revents)
          return -ECANCELED;
        /* a request published before the client's end is still carried
         * out, as one sent whole on the socket is */
        sock = atomic_load(&b->req_seq) == c->req_seen;
        break;
      }
      if (mp__spin_more(&spin))
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
    ssize_t n = mp__chan_recv(&c->ch, MP_OBJ_MAX_MESSAGE, p, &forever);
    if (n != 0)
      return n; /* a request, or the client's end */
    /* a wake frame: look at the block again */
  }
}

/* Answer a client on a shared channel: into the block, or on the socket
 * when it does not fit (announced in the block either way). */
int mp__sh_server_reply(struct client *c, const char *out, size_t len) {
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
  return mp__chan_send(&c->ch, out, len, &forever);
}

/* A server thread ends: let go of its client's block, if any (see
 * "Freeing"). A channel's socket is never shut down by its own server (see
 * mp__serve()): its end of file is the client's. */
void mp__sh_server_release(struct client *c, bool eof) {
  sh_release(c->sh, SH_GONE_SERVER, eof, c->ch.fd);
  c->sh = NULL;
}

/* ------------------------------------------------------ the client's half */

/* Let go of this process's shared channel, if any, and close its
 * connection. peer_gone: the server's end was seen closed. */
void mp__client_close(mp_manager *m, bool peer_gone) {
  sh_release(m->sh, SH_GONE_CLIENT, peer_gone, m->ch.fd);
  m->sh = NULL;
  mp__chan_close(&m->ch);
}

/* Offer a shared channel to the server just connected. 0 when the
 * connection is usable, with or without the channel; a negative errno when
 * it broke (then it is closed). */
int mp__sh_offer(mp_manager *m, const mp__deadline *d) {
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
    r = mp__encode_request(MP__SH_OP_OFFER, (int64_t)(uintptr_t)b, "", args, MP_FOREVER, &out,
                           &len);
  mp_obj_free(args);
  if (r < 0) {
    mp_heap_free(b);
    return 0;
  }
  r = mp__chan_send(&m->ch, out, len, d);
  free(out);
  MP__CRASH(MANAGER_SH_OFFER_SENT);
  const char *p;
  ssize_t n = r == 0 ? mp__chan_recv(&m->ch, MP_OBJ_MAX_MESSAGE + 64, &p, d) : r;
  mp_obj *rep = NULL;
  int64_t status = -1;
  if (n >= 0 && mp__obj_decode(p, (size_t)n, MP__MSG_DEPTH, &rep) == 0 && mp__nargs(rep, 2) &&
      mp__arg_int(rep, 0, &status) == 0) {
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
  mp__client_close(m, n == -EPIPE);
  return n < 0 ? (int)n : -EBADMSG;
}

/* One request and the wait for its reply on this process's shared channel,
 * by deadline d. The reply's length, *p pointing into the block or the
 * socket's buffer; -EPIPE when the server is gone; -ETIMEDOUT at the
 * deadline (the caller then gives up the connection: the server may still
 * answer into the block); other negative errno as mp__chan_recv(). */
ssize_t mp__sh_client_call(mp_manager *m, const char *out, size_t len, const char **p,
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
      if ((r = mp__chan_send(&m->ch, wake, sizeof wake, d)) < 0)
        return r;
    }
  } else if ((r = mp__chan_send(&m->ch, out, len, d)) < 0) {
    return r;
  }
  mp__spin spin = MP__SPIN_INIT;
  /* acquire: the reply's bytes were written before the store */
  while (atomic_load_explicit(&b->resp_seq, memory_order_acquire) == seen) {
    if (mp__spin_more(&spin))
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
    return mp__chan_recv(&m->ch, MP_OBJ_MAX_MESSAGE + 64, p, d);
  if (rl > SH_CAP)
    return -EBADMSG;
  *p = b->data;
  return (ssize_t)rl;
}
