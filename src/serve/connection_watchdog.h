// A deadline for every HTTP connection to deliver a whole request. cpp-httplib's read timeout is
// per read: a client trickling one byte a second ("slowloris") holds a connection thread forever,
// and enough of them lock everyone out (and hold up a drain). The watchdog finds the server's
// connections itself (the process's sockets whose local port is the server's), gives each
// `limit` from when it is first seen or its previous reply was sent, and shuts down (never
// closes: httplib still owns the descriptor) one that has not delivered a request by then.
// Connections whose request is being handled have no deadline.
#pragma once

#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>

namespace hrmclara::serve {

class ConnectionWatchdog {
 public:
  using Clock = std::chrono::steady_clock;
  ConnectionWatchdog() = default;
  ~ConnectionWatchdog();
  ConnectionWatchdog(const ConnectionWatchdog&) = delete;
  ConnectionWatchdog& operator=(const ConnectionWatchdog&) = delete;

  // Starts watching the connections to `local_port`, scanning every `period`.
  void start(int local_port, std::chrono::milliseconds limit, std::chrono::milliseconds period = std::chrono::milliseconds(250));
  void stop();
  // A request from the client at `peer_port` was read whole and is being handled / was answered.
  void handling(int peer_port);
  void answered(int peer_port);
  // Whether the client at `peer_port` has closed its end of the connection (or reset it): its
  // request is abandoned and not worth a queue slot or a model step. Meant for connections
  // whose request is being handled (httplib keeps their descriptor open meanwhile); a half-closed
  // client that still waits for its reply counts as gone, as with nginx's 499.
  bool client_gone(int peer_port);
  // Shuts down every connection not handling a request now (a drain: idle keep-alive and
  // half-sent requests would otherwise keep the server's threads).
  void shut_down_idle();
  // Connections shut down for missing their deadline so far.
  long long expired() const;

 private:
  struct Entry {
    int fd = -1;
    Clock::time_point deadline;
    bool handling = false;
  };
  void scan(bool drain);
  std::map<int, Entry> by_peer_;  // peer port -> connection
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::thread thread_;
  bool stopping_ = false;
  int local_port_ = 0;
  std::chrono::milliseconds limit_{10000}, period_{250};
  long long expired_ = 0;
};

}  // namespace hrmclara::serve
