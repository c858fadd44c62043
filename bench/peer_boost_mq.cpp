// SPDX-License-Identifier: MIT
//
// The C++ half of peer:boost (peer_boost.c): a Boost.Interprocess
// message_queue behind three C functions, so that the benchmark's protocol
// code (bench.h, C11 atomics) stays C. The queue lives in a named shared
// memory object that is removed as soon as it is created: the mapping stays
// valid in this process and in the children it forks afterwards, and nothing
// is left in /dev/shm, even by a crash.
#include <boost/interprocess/ipc/message_queue.hpp>

#include <cstdio>
#include <cstdlib>
#include <new>

using boost::interprocess::message_queue;

extern "C" {

void *peer_boost_new(const char *name, size_t max_msg, size_t msg_size) {
  try {
    message_queue::remove(name);
    auto *q = new message_queue(boost::interprocess::create_only, name, max_msg, msg_size);
    message_queue::remove(name);
    return q;
  } catch (const std::exception &e) {
    std::fprintf(stderr, "bench: boost message_queue %s: %s\n", name, e.what());
    return nullptr;
  }
}

int peer_boost_send(void *q, const void *msg, size_t len) {
  try {
    static_cast<message_queue *>(q)->send(msg, len, 0);
    return 0;
  } catch (const std::exception &e) {
    std::fprintf(stderr, "bench: boost send: %s\n", e.what());
    return -1;
  }
}

long peer_boost_receive(void *q, void *buf, size_t cap) {
  try {
    message_queue::size_type got = 0;
    unsigned prio = 0;
    static_cast<message_queue *>(q)->receive(buf, cap, got, prio);
    return static_cast<long>(got);
  } catch (const std::exception &e) {
    std::fprintf(stderr, "bench: boost receive: %s\n", e.what());
    return -1;
  }
}
}
