/* SPDX-License-Identifier: MIT */
/* Loopback helpers shared by the two echo-server examples. */
#ifndef ECHO_COMMON_H
#define ECHO_COMMON_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* A listening TCP socket on 127.0.0.1, port chosen by the kernel. */
static int echo_listen(int *port) {
  int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof a;
  if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) < 0 || listen(s, 16) < 0 ||
      getsockname(s, (struct sockaddr *)&a, &len) < 0)
    return -1;
  *port = ntohs(a.sin_port);
  return s;
}

static int echo_connect(int port) {
  int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in a = {.sin_family = AF_INET,
                          .sin_port = htons((uint16_t)port),
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof a) < 0)
    return -1;
  return s;
}

/* Read one line (without its newline) into buf; returns its length, -1 at EOF. */
static int echo_read_line(int fd, char *buf, size_t cap) {
  size_t n = 0;
  while (n + 1 < cap) {
    char c;
    ssize_t r = read(fd, &c, 1);
    if (r <= 0)
      return n ? (int)n : -1;
    if (c == '\n')
      break;
    buf[n++] = c;
  }
  buf[n] = 0;
  return (int)n;
}

static int echo_write_line(int fd, const char *line) {
  size_t len = strlen(line);
  char buf[512];
  if (len + 1 > sizeof buf)
    return -1;
  memcpy(buf, line, len);
  buf[len] = '\n';
  return write(fd, buf, len + 1) == (ssize_t)(len + 1) ? 0 : -1;
}

#endif
