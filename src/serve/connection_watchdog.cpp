// ConnectionWatchdog (connection_watchdog.h): per-connection request deadlines for httplib.
#include "serve/connection_watchdog.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <set>
#include <string>

namespace hrmclara::serve {

namespace {

// The port of a socket address (IPv4 or IPv6), or -1.
int port_of(const sockaddr_storage& a) {
  if (a.ss_family == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in&>(a).sin_port);
  if (a.ss_family == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6&>(a).sin6_port);
  return -1;
}

// The process's connected TCP sockets on `local_port`: peer port -> descriptor.
std::map<int, int> connections_on(int local_port) {
  std::map<int, int> out;
  DIR* dir = ::opendir("/proc/self/fd");
  if (!dir) return out;
  while (const dirent* e = ::readdir(dir)) {
    char* end = nullptr;
    const long fd = std::strtol(e->d_name, &end, 10);
    if (end == e->d_name || *end != '\0') continue;
    sockaddr_storage local{}, peer{};
    socklen_t n = sizeof local;
    if (::getsockname(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&local), &n) != 0) continue;  // not a socket
    if (port_of(local) != local_port) continue;
    n = sizeof peer;
    if (::getpeername(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&peer), &n) != 0) continue;  // the listener
    const int peer_port = port_of(peer);
    if (peer_port > 0) out[peer_port] = static_cast<int>(fd);
  }
  ::closedir(dir);
  return out;
}

}  // namespace

ConnectionWatchdog::~ConnectionWatchdog() { stop(); }

void ConnectionWatchdog::start(int local_port, std::chrono::milliseconds limit, std::chrono::milliseconds period) {
  stop();
  local_port_ = local_port;
  limit_ = limit;
  period_ = period;
  stopping_ = false;
  thread_ = std::thread([this] {
    std::unique_lock<std::mutex> lock(mutex_);
    while (!stopping_) {
      cv_.wait_for(lock, period_, [&] { return stopping_; });
      if (stopping_) break;
      lock.unlock();
      scan(false);
      lock.lock();
    }
  });
}

void ConnectionWatchdog::stop() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void ConnectionWatchdog::handling(int peer_port) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = by_peer_.find(peer_port);
  if (it != by_peer_.end()) it->second.handling = true;
  else by_peer_[peer_port] = Entry{-1, Clock::now() + limit_, true};  // seen here before any scan
}

void ConnectionWatchdog::answered(int peer_port) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = by_peer_.find(peer_port);
  if (it == by_peer_.end()) return;
  it->second.handling = false;
  it->second.deadline = Clock::now() + limit_;  // the time the next request on it may take
}

bool ConnectionWatchdog::client_gone(int peer_port) {
  int fd = -1;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto it = by_peer_.find(peer_port);
    if (it != by_peer_.end()) fd = it->second.fd;
  }
  if (fd < 0) {
    // A connection newer than the last scan: learn the descriptors of every such connection
    // at once (one pass over /proc/self/fd serves the whole batch that follows).
    const auto live = connections_on(local_port_);
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& [peer, entry] : by_peer_) {
      const auto found = live.find(peer);
      if (entry.fd < 0 && found != live.end()) entry.fd = found->second;
    }
    const auto found = live.find(peer_port);
    if (found == live.end()) return false;  // not found: no evidence that the client left
    fd = found->second;
  }
  // The descriptor may have been closed and reused since: it must still be that peer's. Only
  // positive evidence (end of stream, a reset) says the client left.
  sockaddr_storage peer{};
  socklen_t n = sizeof peer;
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &n) != 0 || port_of(peer) != peer_port) return false;
  char c = 0;
  const ssize_t got = ::recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
  if (got > 0) return false;  // a pipelined request waits: the client is there
  if (got == 0) return true;  // end of stream: the client closed its end
  return errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR;  // reset, or the socket is gone
}

void ConnectionWatchdog::shut_down_idle() { scan(true); }

long long ConnectionWatchdog::expired() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return expired_;
}

void ConnectionWatchdog::scan(bool drain) {
  const auto live = connections_on(local_port_);
  const auto now = Clock::now();
  std::lock_guard<std::mutex> lock(mutex_);
  // Forget connections that are gone (or whose descriptor now serves another peer).
  for (auto it = by_peer_.begin(); it != by_peer_.end();) {
    const auto found = live.find(it->first);
    if (found == live.end() || (it->second.fd >= 0 && found->second != it->second.fd)) it = by_peer_.erase(it);
    else ++it;
  }
  for (const auto& [peer, fd] : live) {
    auto [it, fresh] = by_peer_.emplace(peer, Entry{fd, now + limit_, false});
    it->second.fd = fd;
    if (it->second.handling) continue;
    if (drain || (!fresh && now >= it->second.deadline)) {
      ::shutdown(fd, SHUT_RDWR);  // httplib's read fails and it closes the connection
      if (!drain) ++expired_;
      it->second.deadline = Clock::time_point::max();  // once
    }
  }
}

}  // namespace hrmclara::serve
