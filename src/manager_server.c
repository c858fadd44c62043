/* SPDX-License-Identifier: MIT */
/*
 * The Manager's server: its object table, the dispatch of one request, one
 * thread per client, the bounds on connections, and serve() itself. The
 * built-in types' methods are in manager_containers.c, manager_builtin.c
 * and manager_pool.c; the shared channel's server half in
 * manager_channel.c.
 *
 * Map of this file:
 *   waiting: the client this thread serves, whether it is gone, the wait on
 *     the server's condition variable
 *   the object table: create, find, free, collect orphans, release, names
 *   srv_request: one request under the server mutex
 *   client_main: a client's thread (handshake, requests, departure)
 *   connections: their bounds, evicting handshakes, accepting
 *   serve: prepare, serve until a shutdown, end every thread
 * Its state is described under "Server state" in manager_internal.h (the
 * struct server lives there). All of it is the server process's private
 * memory: no crash points here (a dead client's departure is handled by
 * its thread, and the shared channel's table is in manager_channel.c).
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "internal.h"
#include "manager_internal.h"
#include "wire.h"

/* ------------------------------------------------------------- waiting */

/* Seconds a connection has to finish its handshake; see srv_accept(). */
#define HANDSHAKE_TIMEOUT 5.0

/* The client this server thread serves (one thread per client). */
static __thread struct client *srv_self;

/* Whether the client this thread serves is gone: its end of the socket is
 * closed (by its process's end, SIGKILL included, or by a call that gave
 * up; clients never half-close). A request must not take an item or a unit
 * for a client that can no longer receive it: the server looks right
 * before it would take one, and after each wait. One poll(), no sleep. */
bool mp__client_gone(void) {
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
int mp__srv_wait(struct server *s, struct sobj *o, const mp__deadline *d) {
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
  if (mp__client_gone())
    return -EPIPE;
  return 0;
}

/* ---------------------------------------------------- the object table */

static void obj_destroy(struct sobj *o) {
  if (o->kind == MP__K_CUSTOM && o->ct->dtor)
    o->ct->dtor(o->self);
  if (o->kind == MP__K_POOL && o->self)
    mp_pool_free(o->self); /* terminates: its workers are killed */
  mp_obj_free(o->val);
  free(o);
}

static int srv_create(struct server *s, const char *type, const mp_obj *a, mp_obj **res) {
  struct sobj *o = calloc(1, sizeof *o);
  if (!o)
    return -ENOMEM;
  int r;
  o->kind = mp__find_kind(type);
  if (o->kind > 0) {
    r = mp__builtin_init(o, a);
  } else {
    o->kind = MP__K_CUSTOM;
    o->ct = mp__find_type(type);
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
    o->ct = o->kind == MP__K_CUSTOM ? NULL : o->ct; /* no destructor for a failed ctor */
    if (o->kind == MP__K_POOL && o->self)
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
  mp__srv_wake_all(s);
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
  if (!*name || strlen(name) >= MP__NAME_MAX_LEN)
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
  *res = mp_obj_listv(2, mp_obj_int(id), mp_obj_str(mp__obj_type_name(o)));
  return *res ? 0 : -ENOMEM;
}

/* ------------------------------------------------------------ requests */

/* Run one request under the server mutex. */
static int srv_request(struct client *c, const mp_obj *req, mp_obj **res) {
  struct server *s = c->srv;
  int64_t op, id = 0, t = 0;
  const mp_obj *target = mp__arg(req, 1), *name = mp__arg(req, 2), *args = mp__arg(req, 3),
               *tmo = mp__arg(req, 4);
  const char *method;
  double timeout;
  if (mp_obj_type(req) != MP_OBJ_LIST || !mp__nargs(req, 5) || mp__arg_int(req, 0, &op) < 0 ||
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
    mp__srv_wake_all(s);
    return 0;
  case MP__SH_OP_OFFER: return mp__sh_accept(c, id, args);
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
  if (o->kind == MP__K_CUSTOM) {
    r = -EOPNOTSUPP;
    for (size_t i = 0; i < o->ct->n; i++)
      if (!strcmp(o->ct->methods[i].name, method)) {
        r = o->ct->methods[i].func(o->self, args, res);
        break;
      }
  } else {
    r = mp__call_builtin(s, o, method, args, c->id, &d, res);
  }
  o->busy--;
  if (o->released && o->busy == 0)
    obj_destroy(o);
  srv_collect(s); /* the call may have dropped the last reference to an orphan */
  return r;
}

/* ------------------------------------------------------ client threads */

/* Release the locks a departing client held. */
static void srv_drop_client(struct server *s, uint64_t me) {
  for (size_t i = 0; i < s->n_objs; i++) {
    struct sobj *o = s->objs[i];
    if (o && (o->kind == MP__K_LOCK || o->kind == MP__K_RLOCK || o->kind == MP__K_CONDITION) &&
        o->owner == me) {
      o->owner = 0;
      o->count = 0;
      mp__srv_wake_all(s);
    }
  }
}

/* The client this thread serves has proved the key (or the server has
 * none): from now on it counts as authenticated, so no newer connection
 * ends its handshake (srv_accept). */
void mp__client_proved(void) {
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
  struct hs_io io = {mp__chan_io_send, mp__chan_io_recv, &c->ch};
  mp__deadline hd;
  mp__deadline_init(&hd, HANDSHAKE_TIMEOUT);
  int r = mp__hs_server(&io, s->key, s->keylen, &hd);
  if (r == 0)
    mp__client_proved(); /* an open server: no proof */
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
    ssize_t n = via_sh ? mp__sh_server_next(c, &p)
                       : mp__chan_recv(&c->ch, MP_OBJ_MAX_MESSAGE, &p, &forever);
    if (n < 0) {
      eof = n == -EPIPE;
      if (n == -EMSGSIZE) {
        /* the rest of the stream cannot be framed: answer, then hang up */
        char *out;
        size_t len;
        if (mp__encode_reply(-EMSGSIZE, NULL, &out, &len) == 0) {
          mp__deadline sd;
          mp__deadline_init(&sd, 1.0);
          mp__chan_send(&c->ch, out, len, &sd);
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
      r = via_sh ? mp__sh_server_reply(c, out, len) : mp__chan_send(&c->ch, out, len, &forever);
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
  mp__sh_server_release(c, eof);
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
  mp__chan_close(&c->ch);
  free(c);
  s->live--;
  mp__srv_wake_all(s);
  pthread_mutex_unlock(&s->mu);
  return NULL;
}

/* --------------------------------------------------------- connections */

/* Connections: at most max_clients (options; MP__MAX_CLIENTS by default)
 * authenticated or in the handshake, of which at most max_handshakes
 * (MP__MAX_HANDSHAKES) in it, each for at most HANDSHAKE_TIMEOUT. A client
 * counts as authenticated from the moment it proved the key
 * (mp__client_proved). Idle connections that never prove it must not lock out
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
    MP__LOG(MP_LOG_WARNING,
            "manager: a connection was turned away: the server is full "
            "(max_clients %d)",
            s->max_clients);
    struct chan tmp;
    mp__chan_init(&tmp, fd);
    mp__deadline now;
    mp__deadline_init(&now, 0);
    mp__chan_send_raw(&tmp, MP__HS_FULL, MP__HS_MAGIC_LEN, &now); /* the buffer is empty */
    close(fd);
    return;
  }
  c->srv = s;
  mp__chan_init(&c->ch, fd);
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

/* ------------------------------------------------------------- serving */

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
int mp__serve(int lfd, const void *key, size_t keylen, int max_clients, int max_handshakes,
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
   * thread has let go of the block (manager_channel.c): wake those threads with the stop
   * pipe instead, and shut down the sockets of the others. */
  if (write(s.stop[1], "x", 1) < 0) {
    /* a fresh non-blocking pipe takes one byte */
  }
  for (struct client *c = s.clients; c; c = c->next)
    if (!c->sh)
      shutdown(c->ch.fd, SHUT_RDWR);
  mp__srv_wake_all(&s);
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
