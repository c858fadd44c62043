/* SPDX-License-Identifier: MIT */
/* Talking to Python: a libmp Listener or Client in Python mode against the
 * python3 of this machine (found on PATH at run time, as the README lists
 * it) running multiprocessing.connection's own Listener and Client: both
 * directions, the right key, a wrong key (refused both ways), no key, an
 * empty key, Unix (path and abstract) and TCP addresses, and messages of 0,
 * 1, 100000 and 3 MiB bytes each way. */
#include "testutil.h"

#include <errno.h>
#include <mp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* The Python peer. argv: mode (listen|connect), address ("unix:/p",
 * "unix:@name", "host:port"), key ("-" for None, else "x" + hex, so "x" is
 * b''), sizes (comma-separated). It receives a message of each size from us,
 * checks it, and answers with a message of the same size (another pattern).
 * Exit codes: 0 done, 3 AuthenticationError, 4 a wrong message, 5 other. In
 * listen mode it prints the address it listens at, then accepts once. */
/* clang-format off */
static const char peer_py[] =
    "import hmac, os, signal, sys\n"
    "signal.alarm(120)\n"
    "from multiprocessing import AuthenticationError\n"
    "from multiprocessing.connection import Listener, Client\n"
    "mode, addr, key, sizes = sys.argv[1:5]\n"
    "key = None if key == '-' else bytes.fromhex(key[1:])\n"
    "sizes = [int(x) for x in sizes.split(',') if x]\n"
    "def parse(a):\n"
    "    if a.startswith('unix:@'): return '\\0' + a[6:]\n"
    "    if a.startswith('unix:'): return a[5:]\n"
    "    h, p = a.rsplit(':', 1)\n"
    "    return (h, int(p))\n"
    "def answer312(c, key):\n"
    "    m = c.recv_bytes(256)\n"
    "    if not m.startswith(b'#CHALLENGE#{sha256}'): sys.exit(5)\n"
    "    m = m[11:]\n"
    "    c.send_bytes(b'{sha256}' + hmac.new(key, m, 'sha256').digest())\n"
    "    if c.recv_bytes(256) != b'#WELCOME#': raise AuthenticationError()\n"
    "def deliver312(c, key):\n"
    "    m = b'{sha256}' + os.urandom(40)\n"
    "    c.send_bytes(b'#CHALLENGE#' + m)\n"
    "    r = c.recv_bytes(256)\n"
    "    if r != b'{sha256}' + hmac.new(key, m, 'sha256').digest():\n"
    "        c.send_bytes(b'#FAILURE#')\n"
    "        raise AuthenticationError()\n"
    "    c.send_bytes(b'#WELCOME#')\n"
    "def pattern(n, seed):\n"
    "    b = bytes(((i * 7 + seed) & 255) for i in range(256))\n"
    "    return (b * (n // 256 + 1))[:n]\n"
    "try:\n"
    "    if mode.startswith('listen'):\n"
    "        l = Listener(parse(addr), authkey=None if mode == 'listen312' else key)\n"
    "        a = l.address\n"
    "        if isinstance(a, tuple): a = '%s:%d' % a\n"
    "        else: a = addr\n"
    "        print(a, flush=True)\n"
    "        c = l.accept()\n"
    "        if mode == 'listen312': deliver312(c, key); answer312(c, key)\n"
    "    elif mode == 'connect312':\n"
    "        c = Client(parse(addr))\n"
    "        answer312(c, key); deliver312(c, key)\n"
    "    else:\n"
    "        c = Client(parse(addr), authkey=key)\n"
    "    for n in sizes:\n"
    "        m = c.recv_bytes()\n"
    "        if m != pattern(n, n % 251): sys.exit(4)\n"
    "        c.send_bytes(pattern(n, (n + 1) % 251))\n"
    "    c.close()\n"
    "except AuthenticationError:\n"
    "    sys.exit(3)\n"
    "except EOFError:\n"
    "    sys.exit(6)\n"
    "sys.exit(0)\n";
/* clang-format on */

#define MIB3 (3u << 20)
static const size_t sizes[] = {0, 1, 100000, MIB3};
static const char sizes_arg[] = "0,1,100000,3145728";

static void pattern(unsigned char *p, size_t n, unsigned seed) {
  for (size_t i = 0; i < n; i++)
    p[i] = (unsigned char)((i % 256) * 7 + seed);
}

struct peer {
  pid_t pid;
  int out; /* its stdout */
};

/* Start python3 with the peer script. */
static struct peer peer_start(const char *mode, const char *addr, const char *key, const char *sz) {
  int fds[2];
  assert_int_equal(pipe(fds), 0);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    dup2(fds[1], 1);
    close(fds[0]);
    close(fds[1]);
    execlp("python3", "python3", "-c", peer_py, mode, addr, key, sz, (char *)NULL);
    _exit(127);
  }
  close(fds[1]);
  return (struct peer){pid, fds[0]};
}

/* The line a listening peer prints: the address it listens at. */
static void peer_address(struct peer *p, char *buf, size_t cap) {
  size_t n = 0;
  double end = tu_now() + 60;
  while (n + 1 < cap) {
    struct pollfd pf = {p->out, POLLIN, 0};
    int left = (int)((end - tu_now()) * 1000);
    assert_true(left > 0);
    if (poll(&pf, 1, left) <= 0)
      continue;
    ssize_t r = read(p->out, buf + n, 1);
    assert_true(r == 1);
    if (buf[n] == '\n')
      break;
    n++;
  }
  buf[n] = 0;
}

static int peer_end(struct peer *p) {
  close(p->out);
  return tu_wait(p->pid);
}

/* Our side of the exchange: send each size, receive the peer's answer. */
static void exchange(mp_connection *c) {
  unsigned char *want = malloc(MIB3), *got = malloc(MIB3);
  assert_non_null(want);
  assert_non_null(got);
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    size_t n = sizes[i];
    pattern(want, n, (unsigned)(n % 251));
    assert_int_equal(mp_connection_send(c, want, n, 60), 0);
    pattern(want, n, (unsigned)((n + 1) % 251));
    ssize_t r = mp_connection_recv(c, got, MIB3, 60);
    assert_int_equal(r, (ssize_t)n);
    if (n)
      assert_memory_equal(got, want, n);
  }
  free(want);
  free(got);
}

static void hexkey(char *out, const char *key) {
  if (!key) {
    strcpy(out, "-");
    return;
  }
  out[0] = 'x';
  size_t i = 0;
  for (; key[i]; i++)
    sprintf(out + 1 + 2 * i, "%02x", (unsigned char)key[i]);
  out[1 + 2 * i] = 0;
}

/* Python's Listener, our Client; mode "listen", or "listen312" for Python
 * 3.12's handshake done by hand. */
static void py_listens_as(const char *mode, const char *addr, const char *pykey, const char *ckey,
                          int want_r, int want_exit) {
  char hk[512], a[256];
  hexkey(hk, pykey);
  struct peer p = peer_start(mode, addr, hk, want_r == 0 ? sizes_arg : "");
  peer_address(&p, a, sizeof a);
  mp_connection *c = NULL;
  int r = mp_client_connect_python(a, ckey, ckey ? strlen(ckey) : 0, 60, &c);
  assert_int_equal(r, want_r);
  if (r == 0) {
    exchange(c);
    assert_int_equal(mp_connection_close(c), 0);
  }
  assert_int_equal(peer_end(&p), want_exit);
  if (!strncmp(addr, "unix:/", 6))
    unlink(addr + 5); /* Python's Listener leaves it when it raised */
}

static void py_listens(const char *addr, const char *pykey, const char *ckey, int want_r,
                       int want_exit) {
  py_listens_as("listen", addr, pykey, ckey, want_r, want_exit);
}

/* Our Listener, Python's Client (mode "connect", or "connect312"). */
static void py_connects_as(const char *mode, const char *addr, const char *ckey, const char *pykey,
                           int want_r, int want_exit) {
  mp_listener *l;
  assert_int_equal(mp_listener_new_python(addr, ckey, ckey ? strlen(ckey) : 0, &l), 0);
  char a[256], hk[512];
  assert_true(mp_listener_address(l, a, sizeof a) > 0);
  hexkey(hk, pykey);
  struct peer p = peer_start(mode, a, hk, want_r == 0 ? sizes_arg : "");
  mp_connection *c = NULL;
  int r = mp_listener_accept(l, 60, &c);
  assert_int_equal(r, want_r);
  if (r == 0) {
    exchange(c);
    assert_int_equal(mp_connection_close(c), 0);
  }
  assert_int_equal(peer_end(&p), want_exit);
  assert_int_equal(mp_listener_close(l), 0);
}

static void py_connects(const char *addr, const char *ckey, const char *pykey, int want_r,
                        int want_exit) {
  py_connects_as("connect", addr, ckey, pykey, want_r, want_exit);
}

static char upath[108], apath[108];

/* HMAC hashes a key longer than the digest's 64-byte block first */
static const char long_key[] =
    "a key of a hundred bytes and more, longer than the sixty-four bytes "
    "of an MD5 or SHA-256 block, 0123456789";

static int setup(void **state) {
  (void)state;
  snprintf(upath, sizeof upath, "unix:/tmp/mp-pywire-%d", (int)getpid());
  snprintf(apath, sizeof apath, "unix:@mp-pywire-%d", (int)getpid());
  return 0;
}

static void test_python_wire_python_listener_c_client(void **state) {
  (void)state;
  py_listens("127.0.0.1:0", "s3cret key", "s3cret key", 0, 0);
  py_listens(upath, "s3cret key", "s3cret key", 0, 0);
  py_listens(apath, "s3cret key", "s3cret key", 0, 0);
  py_listens("127.0.0.1:0", NULL, NULL, 0, 0); /* no authentication */
  py_listens(upath, long_key, long_key, 0, 0); /* longer than MD5's block */
}

static void test_python_wire_c_listener_python_client(void **state) {
  (void)state;
  py_connects("127.0.0.1:0", "s3cret key", "s3cret key", 0, 0);
  py_connects(upath, "s3cret key", "s3cret key", 0, 0);
  py_connects(apath, "s3cret key", "s3cret key", 0, 0);
  py_connects("127.0.0.1:0", NULL, NULL, 0, 0);
  /* an empty key is a key: Python's Client(authkey=b'') proves it */
  py_connects(upath, "", "", 0, 0);
  py_connects("127.0.0.1:0", long_key, long_key, 0, 0);
}

static void test_python_wire_wrong_key_refused_both_ways(void **state) {
  (void)state;
  /* Python's Listener refuses our answer (#FAILURE#): we see -EACCES, it
   * raises AuthenticationError */
  py_listens("127.0.0.1:0", "right key", "wrong key", -EACCES, 3);
  py_listens(upath, "right key", "", -EACCES, 3);
  /* we refuse Python's answer: it is told #FAILURE# and raises */
  py_connects("127.0.0.1:0", "right key", "wrong key", -EACCES, 3);
  py_connects(upath, "", "x", -EACCES, 3);
}

/* The python3 here may be 3.11, whose handshake is HMAC-MD5; 3.12 and later
 * challenge with "{sha256}" and answer ours with "{sha256}" and HMAC-SHA256
 * of the whole message. The peer does that by hand, with Python's hmac. */
static void test_python_wire_sha256_handshake(void **state) {
  (void)state;
  py_listens_as("listen312", "127.0.0.1:0", "k", "k", 0, 0);
  py_connects_as("connect312", upath, "k", "k", 0, 0);
  py_listens_as("listen312", "127.0.0.1:0", "k", "j", -EACCES, 3);
  py_connects_as("connect312", upath, "k", "j", -EACCES, 3);
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup(test_python_wire_python_listener_c_client, setup),
      cmocka_unit_test_setup(test_python_wire_c_listener_python_client, setup),
      cmocka_unit_test_setup(test_python_wire_wrong_key_refused_both_ways, setup),
      cmocka_unit_test_setup(test_python_wire_sha256_handshake, setup),
  };
  return TU_RUN("python_wire", tests);
}
