// hrmclara_serve's HTTP server (docs/serve.md): HrmSolver and ClaraPipeline behind one API, each
// model with one worker thread that batches the requests waiting for it. The tool's main and the
// tests run it in-process.
#pragma once

#include <hrmclara/clara_pipeline.h>
#include <hrmclara/hrm_solver.h>

#include <cstdint>
#include <memory>
#include <string>

namespace hrmclara::serve {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;               // 0: any free port (bind() returns it)
  std::string api_key;           // empty: no key needed
  int64_t hrm_max_batch = 64;    // puzzles in the continuous batch
  int64_t hrm_max_wait_ms = 2;   // an idle worker waits this long for a batch to fill
  int64_t clara_max_batch = 8;   // questions per decoder batch
  int64_t clara_max_wait_ms = 5;
  int64_t queue = 256;           // waiting requests per model; more get 503
  int64_t timeout_ms = 30000;    // a request waiting or running longer gets 504
  int64_t max_body = 1 << 20;    // bytes; larger bodies get 413
  int threads = 128;             // HTTP connection threads (one per open connection; keep above hrm_max_batch)
  int read_timeout_s = 5;        // a connection that sends nothing for this long is closed
  int request_timeout_s = 10;    // a connection must deliver each whole request within this (slowloris)
  int64_t max_documents = 64;    // documents, ids or top_k per CLaRa request
  int64_t max_new_tokens = 512;  // the most a request may ask for

  void validate() const;  // UsageError naming the flag
};

class Metrics;

class Server {
 public:
  // Either model may be null (its endpoints answer 404); not both.
  Server(ServerOptions options, std::shared_ptr<const HrmSolver> hrm, std::shared_ptr<ClaraPipeline> clara);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds host:port (IoError naming them when it cannot) and returns the port.
  int bind();
  // Serves until drain_and_stop(); call bind() first.
  void serve();
  // From any thread (a signal-handling thread): new requests get 503 "draining", every request
  // in flight is finished (waiting at most timeout_ms), then serve() returns. Idempotent.
  void drain_and_stop();

  const Metrics& metrics() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The web page at GET / (src/serve/web/index.html, compiled in).
const std::string& web_page();

}  // namespace hrmclara::serve
