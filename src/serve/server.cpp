// hrmclara_serve's server: routes, request validation, the per-model batching workers, streaming,
// limits and draining (see server.h and docs/serve.md).
#include "serve/server.h"

#include "serve/connection_watchdog.h"
#include "serve/metrics.h"

#include <hrmclara/errors.h>
#include <hrmclara/log.h>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <mutex>
#include <random>
#include <sys/socket.h>
#include <set>
#include <thread>
#include <unordered_map>
#include <variant>

namespace hrmclara::serve {

namespace {

using Json = nlohmann::json;
using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }

// An error reply: status, message and (when one field is at fault) the field.
struct HttpError : std::runtime_error {
  HttpError(int status, const std::string& message, std::string field = "")
      : std::runtime_error(message), status(status), field(std::move(field)) {}
  int status;
  std::string field;
};

Json error_body(int status, const std::string& message, const std::string& field) {
  Json e = {{"status", status}, {"message", message}};
  if (!field.empty()) e["field"] = field;
  return Json{{"error", e}};
}

std::string status_text(int status) {
  switch (status) {
    case 400: return "bad request";
    case 404: return "not found";
    case 405: return "method not allowed";
    case 408: return "request timeout";
    case 413: return "payload too large";
    case 414: return "URI too long";
    case 416: return "range not satisfiable";
    case 500: return "internal server error";
    case 503: return "service unavailable";
    default: return "HTTP status " + std::to_string(status);
  }
}

// Generated text may hold invalid UTF-8 (a token cut inside a character): replaced by U+FFFD
// rather than failing the reply.
std::string dump(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

void reply_json(httplib::Response& res, int status, const Json& body) {
  res.status = status;
  res.set_content(dump(body), "application/json");
}

// A UsageError's message names its field first ("tokens[3] = 40 ...", "documents: give ..."):
// the leading identifier up to a '[', ':', '.' or ' '.
std::string field_of(const std::string& message) {
  size_t end = 0;
  while (end < message.size() && (std::isalnum(static_cast<unsigned char>(message[end])) || message[end] == '_')) ++end;
  return message.substr(0, end);
}

// A request body: a JSON object whose fields are read by type, with unknown fields refused.
class Body {
 public:
  Body(const std::string& text, std::set<std::string> allowed) {
    if (text.empty()) throw HttpError(400, "the body is empty; a JSON object is expected");
    try {
      json_ = Json::parse(text);
    } catch (const Json::exception& e) {
      throw HttpError(400, std::string("the body is not valid JSON (") + e.what() + ")");
    }
    if (!json_.is_object()) throw HttpError(400, "the body must be a JSON object");
    for (const auto& item : json_.items())
      if (!allowed.count(item.key())) throw HttpError(400, "unknown field '" + item.key() + "'", item.key());
  }
  bool has(const std::string& key) const { return json_.contains(key) && !json_[key].is_null(); }
  std::string string(const std::string& key, size_t max_bytes) const {
    const auto& v = json_.at(key);
    if (!v.is_string()) throw HttpError(400, key + " must be a string", key);
    auto s = v.get<std::string>();
    if (s.size() > max_bytes) throw HttpError(400, key + " is longer than " + std::to_string(max_bytes) + " bytes", key);
    return s;
  }
  int64_t integer(const std::string& key, int64_t lo, int64_t hi) const {
    const auto& v = json_.at(key);
    if (!v.is_number_integer()) throw HttpError(400, key + " must be an integer", key);
    const int64_t x = v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX) ? INT64_MAX : v.get<int64_t>();
    if (x < lo || x > hi) throw HttpError(400, key + " must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]", key);
    return x;
  }
  double number(const std::string& key, double lo, double hi) const {
    const auto& v = json_.at(key);
    if (!v.is_number()) throw HttpError(400, key + " must be a number", key);
    const double x = v.get<double>();
    if (!(x >= lo && x <= hi)) throw HttpError(400, key + " must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]", key);
    return x;
  }
  bool boolean(const std::string& key) const {
    const auto& v = json_.at(key);
    if (!v.is_boolean()) throw HttpError(400, key + " must be true or false", key);
    return v.get<bool>();
  }
  std::vector<std::string> strings(const std::string& key, size_t max_items, size_t max_bytes) const {
    const auto& v = json_.at(key);
    if (!v.is_array()) throw HttpError(400, key + " must be a list of strings", key);
    if (v.size() > max_items) throw HttpError(400, key + " holds more than " + std::to_string(max_items) + " items", key);
    std::vector<std::string> out;
    for (size_t i = 0; i < v.size(); ++i) {
      const std::string where = key + "[" + std::to_string(i) + "]";
      if (!v[i].is_string()) throw HttpError(400, where + " must be a string", key);
      out.push_back(v[i].get<std::string>());
      if (out.back().size() > max_bytes) throw HttpError(400, where + " is longer than " + std::to_string(max_bytes) + " bytes", key);
    }
    return out;
  }
  std::vector<int32_t> int32s(const std::string& key, size_t max_items) const {
    const auto& v = json_.at(key);
    if (!v.is_array()) throw HttpError(400, key + " must be a list of integers", key);
    if (v.size() > max_items) throw HttpError(400, key + " holds more than " + std::to_string(max_items) + " items", key);
    std::vector<int32_t> out;
    for (size_t i = 0; i < v.size(); ++i) {
      if (!v[i].is_number_integer() || v[i].get<int64_t>() < INT32_MIN || v[i].get<int64_t>() > INT32_MAX)
        throw HttpError(400, key + "[" + std::to_string(i) + "] must be an integer", key);
      out.push_back(static_cast<int32_t>(v[i].get<int64_t>()));
    }
    return out;
  }

 private:
  Json json_;
};

Json passages_json(const std::vector<RetrievedPassage>& passages) {
  Json out = Json::array();
  for (const auto& p : passages) out.push_back({{"id", p.id}, {"source", p.source}, {"text", p.text}, {"score", p.score}});
  return out;
}

// The status of a request whose client closed the connection before its reply (nginx's 499):
// counted in the metrics, never delivered.
constexpr int kClientGone = 499;
constexpr const char* kClientGoneMessage = "the client closed the connection before the reply";

// ---- HRM worker --------------------------------------------------------------------------------

struct HrmJob {
  PuzzleInput input;
  int peer_port = -1;  // the client's connection (the watchdog tells whether it is still there)
  Clock::time_point enqueued, deadline;
  std::promise<void> done;
  // Set by the worker before `done`:
  PuzzleSolution solution;
  int64_t batch_size = 0;
  double queue_ms = 0.0;
  int status = 200;
  std::string error;
};

// ---- CLaRa worker ------------------------------------------------------------------------------

// What a streamed answer and its HTTP reply share: pieces of text from the worker, then the end.
struct Stream {
  std::mutex mutex;
  std::condition_variable cv;
  std::deque<std::string> pieces;
  bool finished = false;
  bool client_gone = false;
  Json final;  // the reply (or an error body) once finished
};

struct ClaraJob {
  enum class Kind { kAnswer, kCompress, kSearch } kind = Kind::kAnswer;
  ClaraQuestion question;
  ClaraGeneration generation;
  std::vector<std::string> documents;  // compress
  bool return_vectors = true;
  int64_t top_k = 0;                   // search
  std::shared_ptr<Stream> stream;      // answer with "stream": true
  int peer_port = -1;                  // the client's connection
  Clock::time_point enqueued, deadline;
  std::promise<void> done;
  Json reply;
  int status = 200;
  int64_t batch_size = 0;
  double queue_ms = 0.0;
};

}  // namespace

void ServerOptions::validate() const {
  auto positive = [](int64_t v, const char* flag) {
    if (v < 1) throw UsageError(std::string("--") + flag + " must be >= 1");
  };
  if (port < 0 || port > 65535) throw UsageError("--port must be in [0, 65535]");
  positive(hrm_max_batch, "hrm-max-batch");
  positive(clara_max_batch, "clara-max-batch");
  positive(queue, "queue");
  positive(timeout_ms, "timeout-ms");
  positive(max_body, "max-body");
  positive(threads, "threads");
  positive(read_timeout_s, "read-timeout-s");
  positive(request_timeout_s, "request-timeout-s");
  if (hrm_max_wait_ms < 0) throw UsageError("--hrm-max-wait-ms must be >= 0");
  if (clara_max_wait_ms < 0) throw UsageError("--clara-max-wait-ms must be >= 0");
  if (host.empty()) throw UsageError("--host is empty");
}

struct Server::Impl {
  ServerOptions options;
  std::shared_ptr<const HrmSolver> hrm;
  std::shared_ptr<ClaraPipeline> clara;
  httplib::Server http;
  Metrics metrics;
  std::atomic<bool> draining{false};
  std::atomic<int64_t> in_flight{0};
  std::once_flag stop_once;
  ConnectionWatchdog watchdog;
  socket_t listen_socket = INVALID_SOCKET;

  std::mutex hrm_mutex;
  std::condition_variable hrm_cv;
  std::deque<std::shared_ptr<HrmJob>> hrm_queue;
  bool hrm_stop = false;
  std::thread hrm_worker;

  std::mutex clara_mutex;
  std::condition_variable clara_cv;
  std::deque<std::shared_ptr<ClaraJob>> clara_queue;
  bool clara_stop = false;
  std::thread clara_worker;

  // Counts a request in flight for the drain, from its start to its reply (or its stream's end).
  struct InFlight {
    explicit InFlight(Impl& s) : s(&s) { ++s.in_flight; }
    ~InFlight() {
      if (s) --s->in_flight;
    }
    InFlight(const InFlight&) = delete;
    Impl* s;
  };

  Impl(ServerOptions o, std::shared_ptr<const HrmSolver> h, std::shared_ptr<ClaraPipeline> c)
      : options(std::move(o)), hrm(std::move(h)), clara(std::move(c)) {
    options.validate();
    if (!hrm && !clara) throw UsageError("the server needs a model: give --hrm, or --clara with --base");
    routes();
    if (hrm) hrm_worker = std::thread([this] { hrm_loop(); });
    if (clara) clara_worker = std::thread([this] { clara_loop(); });
  }

  ~Impl() {
    {
      std::lock_guard<std::mutex> lock(hrm_mutex);
      hrm_stop = true;
    }
    hrm_cv.notify_all();
    {
      std::lock_guard<std::mutex> lock(clara_mutex);
      clara_stop = true;
    }
    clara_cv.notify_all();
    if (hrm_worker.joinable()) hrm_worker.join();
    if (clara_worker.joinable()) clara_worker.join();
  }

  // ---- HRM ----
  void hrm_loop() {
    auto batch = hrm->continuous_batch();
    std::unordered_map<uint64_t, std::shared_ptr<HrmJob>> running;
    uint64_t next_tag = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(hrm_mutex);
        if (running.empty()) {
          hrm_cv.wait(lock, [&] { return hrm_stop || !hrm_queue.empty(); });
          if (hrm_queue.empty()) return;  // stopping with nothing left
          // An idle worker waits briefly for a batch to fill; a running batch takes whoever waits.
          const auto until = Clock::now() + std::chrono::milliseconds(options.hrm_max_wait_ms);
          hrm_cv.wait_until(lock, until, [&] { return hrm_stop || static_cast<int64_t>(hrm_queue.size()) >= options.hrm_max_batch; });
        }
        while (!hrm_queue.empty() && static_cast<int64_t>(running.size()) < options.hrm_max_batch) {
          auto job = hrm_queue.front();
          hrm_queue.pop_front();
          job->queue_ms = ms_since(job->enqueued);
          if (Clock::now() > job->deadline) {
            job->status = 504;
            job->error = "the request waited longer than the timeout (" + std::to_string(options.timeout_ms) + " ms)";
            job->done.set_value();
            continue;
          }
          if (watchdog.client_gone(job->peer_port)) {  // left while queued: no step for nobody
            job->status = kClientGone;
            job->error = kClientGoneMessage;
            job->done.set_value();
            continue;
          }
          try {
            batch.add(job->input, next_tag);
            running[next_tag++] = job;
          } catch (const std::exception& e) {
            job->status = 400;
            job->error = e.what();
            job->done.set_value();
          }
        }
        metrics.queue_depth("hrm", static_cast<int64_t>(hrm_queue.size()));
      }
      if (running.empty()) continue;
      const int64_t size = static_cast<int64_t>(running.size());
      metrics.batch("hrm", size);
      std::vector<HrmSolver::ContinuousBatch::Finished> finished;
      try {
        finished = batch.step();
      } catch (const std::exception& e) {
        log_error(std::string("hrm worker: a step failed: ") + e.what());
        for (auto& [tag, job] : running) {
          job->status = 500;
          job->error = std::string("the model failed: ") + e.what();
          job->done.set_value();
        }
        running.clear();
        batch = hrm->continuous_batch();
        continue;
      }
      for (auto& f : finished) {
        const auto it = running.find(f.tag);
        if (it == running.end()) continue;
        it->second->solution = std::move(f.solution);
        it->second->batch_size = size;
        it->second->done.set_value();
        running.erase(it);
      }
    }
  }

  // ---- CLaRa ----
  static bool batchable(const ClaraJob& a, const ClaraJob& b, const ClaraPipeline& p) {
    return a.kind == ClaraJob::Kind::kAnswer && b.kind == ClaraJob::Kind::kAnswer && a.generation == b.generation &&
           p.documents_spliced(a.question) == p.documents_spliced(b.question);
  }

  void clara_loop() {
    for (;;) {
      std::vector<std::shared_ptr<ClaraJob>> jobs;
      {
        std::unique_lock<std::mutex> lock(clara_mutex);
        clara_cv.wait(lock, [&] { return clara_stop || !clara_queue.empty(); });
        if (clara_queue.empty()) return;
        if (clara_queue.front()->kind == ClaraJob::Kind::kAnswer) {
          const auto until = Clock::now() + std::chrono::milliseconds(options.clara_max_wait_ms);
          clara_cv.wait_until(lock, until, [&] { return clara_stop || static_cast<int64_t>(clara_queue.size()) >= options.clara_max_batch; });
        }
        jobs.push_back(clara_queue.front());
        clara_queue.pop_front();
        for (auto it = clara_queue.begin(); it != clara_queue.end() && static_cast<int64_t>(jobs.size()) < options.clara_max_batch;) {
          if (batchable(*jobs[0], **it, *clara)) {
            jobs.push_back(*it);
            it = clara_queue.erase(it);
          } else {
            ++it;
          }
        }
        metrics.queue_depth("clara", static_cast<int64_t>(clara_queue.size()));
      }
      std::vector<std::shared_ptr<ClaraJob>> live;
      for (auto& job : jobs) {
        job->queue_ms = ms_since(job->enqueued);
        if (Clock::now() > job->deadline) {
          finish(*job, 504, error_body(504, "the request waited longer than the timeout (" + std::to_string(options.timeout_ms) + " ms)", ""));
        } else if (watchdog.client_gone(job->peer_port)) {
          finish(*job, kClientGone, error_body(kClientGone, kClientGoneMessage, ""));
        } else {
          live.push_back(job);
        }
      }
      if (live.empty()) continue;
      metrics.batch("clara", static_cast<int64_t>(live.size()));
      try {
        run_clara(live);
      } catch (const UsageError& e) {
        for (auto& job : live) finish(*job, 400, error_body(400, e.what(), field_of(e.what())));
      } catch (const std::exception& e) {
        log_error(std::string("clara worker: ") + e.what());
        for (auto& job : live) finish(*job, 500, error_body(500, std::string("the model failed: ") + e.what(), ""));
      }
    }
  }

  void finish(ClaraJob& job, int status, Json reply) {
    job.status = status;
    job.reply = std::move(reply);
    if (job.stream) {
      std::lock_guard<std::mutex> lock(job.stream->mutex);
      job.stream->final = job.reply;
      job.stream->finished = true;
      job.stream->cv.notify_all();
    }
    job.done.set_value();
  }

  void run_clara(std::vector<std::shared_ptr<ClaraJob>>& jobs) {
    auto& first = *jobs[0];
    if (first.kind == ClaraJob::Kind::kCompress) {
      const auto vectors = clara->compress(first.documents);
      Json reply = {{"memory_tokens", clara->info().memory_tokens}, {"hidden_size", clara->info().hidden_size},
                    {"documents", vectors.size()}};
      if (first.return_vectors) reply["vectors"] = vectors;
      first.batch_size = 1;
      finish(first, 200, reply);
      return;
    }
    if (first.kind == ClaraJob::Kind::kSearch) {
      const auto passages = clara->search(first.question.question, first.top_k);
      first.batch_size = 1;
      finish(first, 200, Json{{"passages", passages_json(passages)}});
      return;
    }
    std::vector<ClaraQuestion> questions;
    std::vector<TextSink> sinks;
    for (auto& job : jobs) {
      questions.push_back(job->question);
      if (job->stream) {
        auto stream = job->stream;
        sinks.emplace_back([stream](const std::string& piece) {
          std::lock_guard<std::mutex> lock(stream->mutex);
          if (stream->client_gone) return false;
          stream->pieces.push_back(piece);
          stream->cv.notify_all();
          return true;
        });
      } else {
        sinks.emplace_back(nullptr);
      }
    }
    const auto replies = clara->answer_batch(questions, first.generation, sinks);
    for (size_t i = 0; i < jobs.size(); ++i) {
      jobs[i]->batch_size = static_cast<int64_t>(jobs.size());
      finish(*jobs[i], 200,
             Json{{"answer", replies[i].answer},
                  {"passages", passages_json(replies[i].passages)},
                  {"generated_tokens", replies[i].generated_tokens},
                  {"batch_size", jobs.size()},
                  {"queue_ms", jobs[i]->queue_ms},
                  {"prefill_seconds", replies[i].prefill_seconds},
                  {"decode_seconds", replies[i].decode_seconds}});
    }
  }

  // Queues a job for a worker: 503 when draining or the queue is full; a request whose client has
  // already closed the connection (sent and hung up) takes no queue slot (499, never delivered).
  template <typename Job>
  void enqueue(std::mutex& mutex, std::condition_variable& cv, std::deque<std::shared_ptr<Job>>& queue,
               const std::shared_ptr<Job>& job, const char* model, const httplib::Request& req) {
    job->peer_port = req.remote_port;
    if (watchdog.client_gone(job->peer_port)) throw HttpError(kClientGone, kClientGoneMessage);
    job->enqueued = Clock::now();
    job->deadline = job->enqueued + std::chrono::milliseconds(options.timeout_ms);
    {
      std::lock_guard<std::mutex> lock(mutex);
      if (draining) throw HttpError(503, "the server is draining (shutting down)");
      if (static_cast<int64_t>(queue.size()) >= options.queue)
        throw HttpError(503, std::string("the ") + model + " queue is full (" + std::to_string(options.queue) + " requests); retry later");
      queue.push_back(job);
      metrics.queue_depth(model, static_cast<int64_t>(queue.size()));
    }
    cv.notify_all();
  }

  // Waits for a job's reply until its deadline (plus the time a running batch needs to notice).
  template <typename Job>
  void await(Job& job, std::future<void>& done) {
    if (done.wait_until(job.deadline) != std::future_status::ready)
      throw HttpError(504, "no reply within the timeout (" + std::to_string(options.timeout_ms) + " ms)");
  }

  // ---- routes ----
  void handle(const char* endpoint, const httplib::Request& req, httplib::Response& res,
              const std::function<void(const httplib::Request&, httplib::Response&)>& body) {
    const auto start = Clock::now();
    InFlight counted(*this);
    try {
      if (draining) throw HttpError(503, "the server is draining (shutting down)");
      body(req, res);
    } catch (const HttpError& e) {
      reply_json(res, e.status, error_body(e.status, e.what(), e.field));
    } catch (const UsageError& e) {
      reply_json(res, 400, error_body(400, e.what(), field_of(e.what())));
    } catch (const std::exception& e) {
      log_error(std::string(endpoint) + ": " + e.what());
      reply_json(res, 500, error_body(500, e.what(), ""));
    }
    if (!res.is_chunked_content_provider_) metrics.request(endpoint, res.status, ms_since(start) / 1000.0);
  }

  void routes() {
    auto& s = http;
    s.set_payload_max_length(static_cast<size_t>(options.max_body));
    s.set_read_timeout(options.read_timeout_s, 0);
    s.set_write_timeout(options.read_timeout_s, 0);
    s.set_keep_alive_timeout(options.read_timeout_s);
    s.set_keep_alive_max_count(100);  // (httplib's 5 makes a busy client reconnect every 5 requests)
    // Replies go out at once: httplib writes headers and body separately, and with Nagle's
    // algorithm the body would wait for the client's delayed ACK (~40 ms per keep-alive request).
    s.set_tcp_nodelay(true);
    // The watchdog's view of each connection: a request read whole, a reply sent.
    s.set_logger([this](const httplib::Request& req, const httplib::Response&) { watchdog.answered(req.remote_port); });
    // cpp-httplib listens with a backlog of 5 (compiled into Debian's library): a burst of more
    // simultaneous connections overflows it, and the clients that lose their handshake fail after
    // a second. The listening socket is kept here and given a real backlog after bind().
    s.set_socket_options([this](socket_t sock) {
      httplib::default_socket_options(sock);
      listen_socket = sock;
    });
    const int threads = options.threads;
    s.new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };

    // The API key, checked before routing (the page and the health check are public).
    s.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
      watchdog.handling(req.remote_port);
      if (options.api_key.empty() || req.path == "/" || req.path == "/healthz") return httplib::Server::HandlerResponse::Unhandled;
      const std::string expected = "Bearer " + options.api_key;
      const auto got = req.get_header_value("Authorization");
      // Constant-time comparison: the time taken does not tell how much of a guess was right.
      unsigned diff = got.size() == expected.size() ? 0u : 1u;
      for (size_t i = 0; i < got.size() && i < expected.size(); ++i)
        diff |= static_cast<unsigned>(got[i] ^ expected[i]);
      if (diff == 0) return httplib::Server::HandlerResponse::Unhandled;
      reply_json(res, 401, error_body(401, "missing or wrong API key (Authorization: Bearer KEY)", "Authorization"));
      res.set_header("WWW-Authenticate", "Bearer");
      metrics.request("auth", 401, 0.0);
      return httplib::Server::HandlerResponse::Handled;
    });
    // httplib's own errors (404, 413, 400 for a malformed request, ...) get a JSON body too.
    s.set_error_handler([this](const httplib::Request& req, httplib::Response& res) {
      if (!res.body.empty()) return;
      std::string message = status_text(res.status);
      if (res.status == 413) message = "the body exceeds " + std::to_string(options.max_body) + " bytes";
      if (res.status == 404) message = "no such endpoint: " + req.method + " " + req.path;
      reply_json(res, res.status, error_body(res.status, message, ""));
      metrics.request("other", res.status, 0.0);
    });

    s.Get("/", [this](const httplib::Request& req, httplib::Response& res) {
      handle("page", req, res, [](const httplib::Request&, httplib::Response& r) { r.set_content(web_page(), "text/html; charset=utf-8"); });
    });
    s.Get("/healthz", [this](const httplib::Request&, httplib::Response& res) {
      if (draining) reply_json(res, 503, Json{{"status", "draining"}});
      else reply_json(res, 200, Json{{"status", "ok"}});
    });
    s.Get("/metrics", [this](const httplib::Request& req, httplib::Response& res) {
      handle("metrics", req, res, [this](const httplib::Request&, httplib::Response& r) {
        r.set_content(metrics.render(), "text/plain; version=0.0.4; charset=utf-8");
      });
    });
    s.Get("/v1/models", [this](const httplib::Request& req, httplib::Response& res) {
      handle("models", req, res, [this](const httplib::Request&, httplib::Response& r) { reply_json(r, 200, models_json()); });
    });
    s.Post("/v1/hrm/solve", [this](const httplib::Request& req, httplib::Response& res) {
      handle("hrm_solve", req, res, [this](const httplib::Request& q, httplib::Response& r) { hrm_solve(q, r); });
    });
    s.Post("/v1/sudoku/generate", [this](const httplib::Request& req, httplib::Response& res) {
      handle("sudoku_generate", req, res, [](const httplib::Request& q, httplib::Response& r) {
        const Body body(q.body.empty() ? "{}" : q.body, {"clues", "seed"});
        const int clues = body.has("clues") ? static_cast<int>(body.integer("clues", 17, 81)) : 45;
        const uint64_t seed = body.has("seed") ? static_cast<uint64_t>(body.integer("seed", 0, INT64_MAX)) : std::random_device{}();
        const auto tokens = sudoku::generate(seed, clues);
        int given = 0;
        for (const int32_t t : tokens) given += t > 1;
        reply_json(r, 200, Json{{"puzzle", sudoku::format(tokens)}, {"clues", given}, {"seed", seed}});
      });
    });
    s.Post("/v1/clara/compress", [this](const httplib::Request& req, httplib::Response& res) {
      handle("clara_compress", req, res, [this](const httplib::Request& q, httplib::Response& r) {
        require_clara();
        const Body body(q.body, {"documents", "return_vectors"});
        if (!body.has("documents")) throw HttpError(400, "documents is required", "documents");
        auto job = std::make_shared<ClaraJob>();
        job->kind = ClaraJob::Kind::kCompress;
        job->documents = body.strings("documents", static_cast<size_t>(options.max_documents), static_cast<size_t>(options.max_body));
        if (job->documents.empty()) throw HttpError(400, "documents is empty", "documents");
        if (body.has("return_vectors")) job->return_vectors = body.boolean("return_vectors");
        run_clara_job(job, q, r);
      });
    });
    s.Get("/v1/clara/documents", [this](const httplib::Request& req, httplib::Response& res) {
      handle("clara_documents", req, res, [this](const httplib::Request&, httplib::Response& r) {
        require_clara();
        Json docs = Json::array();
        for (const auto& p : clara->index_documents()) docs.push_back({{"id", p.id}, {"source", p.source}, {"text", p.text}});
        reply_json(r, 200, Json{{"documents", docs}});
      });
    });
    s.Post("/v1/clara/search", [this](const httplib::Request& req, httplib::Response& res) {
      handle("clara_search", req, res, [this](const httplib::Request& q, httplib::Response& r) {
        require_clara();
        const Body body(q.body, {"question", "top_k"});
        if (!body.has("question")) throw HttpError(400, "question is required", "question");
        if (!clara->has_index()) throw HttpError(400, "the server has no index (start it with --index)", "question");
        auto job = std::make_shared<ClaraJob>();
        job->kind = ClaraJob::Kind::kSearch;
        job->question.question = body.string("question", static_cast<size_t>(options.max_body));
        job->top_k = body.has("top_k") ? body.integer("top_k", 1, std::min<int64_t>(options.max_documents, clara->index_size()))
                                       : std::min<int64_t>(clara->info().generation_top_k, clara->index_size());
        run_clara_job(job, q, r);
      });
    });
    s.Post("/v1/clara/answer", [this](const httplib::Request& req, httplib::Response& res) {
      handle("clara_answer", req, res, [this](const httplib::Request& q, httplib::Response& r) { clara_answer(q, r); });
    });
  }

  void require_clara() const {
    if (!clara) throw HttpError(404, "this server has no CLaRa model (start it with --clara and --base)");
  }

  Json models_json() const {
    Json models = Json::array();
    if (hrm) {
      const auto& i = hrm->info();
      models.push_back({{"id", "hrm"}, {"arch", i.arch}, {"device", i.device}, {"dtype", i.dtype}, {"seq_len", i.seq_len},
                        {"vocab_size", i.vocab_size}, {"num_puzzle_identifiers", i.num_puzzle_identifiers},
                        {"max_steps", i.max_steps}, {"halting", i.halting}, {"parameters", i.parameters},
                        {"sudoku", i.seq_len == 81 && i.vocab_size == 11}});
    }
    if (clara) {
      const auto& i = clara->info();
      models.push_back({{"id", "clara"}, {"device", i.device}, {"dtype", i.dtype}, {"memory_tokens", i.memory_tokens},
                        {"hidden_size", i.hidden_size}, {"generation_top_k", i.generation_top_k},
                        {"max_new_tokens", i.max_new_tokens}, {"has_query_reasoner", i.has_query_reasoner},
                        {"adapters", i.adapters}, {"has_index", clara->has_index()}, {"index_size", clara->index_size()}});
    }
    return Json{{"models", models}};
  }

  void hrm_solve(const httplib::Request& req, httplib::Response& res) {
    if (!hrm) throw HttpError(404, "this server has no HRM model (start it with --hrm)");
    const auto start = Clock::now();
    const Body body(req.body, {"puzzle", "inputs", "puzzle_identifier"});
    if (body.has("puzzle") == body.has("inputs")) throw HttpError(400, "give exactly one of puzzle and inputs", "puzzle");
    auto job = std::make_shared<HrmJob>();
    const auto& info = hrm->info();
    const bool is_sudoku = body.has("puzzle");
    if (is_sudoku) {
      if (info.seq_len != 81 || info.vocab_size != 11)
        throw HttpError(400, "puzzle: this model is not a Sudoku model (seq_len " + std::to_string(info.seq_len) + ", vocab " +
                                 std::to_string(info.vocab_size) + "); send inputs", "puzzle");
      job->input.tokens = sudoku::parse(body.string("puzzle", 4096));
    } else {
      job->input.tokens = body.int32s("inputs", static_cast<size_t>(info.seq_len) + 1);
    }
    if (body.has("puzzle_identifier")) job->input.puzzle_identifier = body.integer("puzzle_identifier", 0, INT64_MAX);
    try {
      hrm->validate(job->input);
    } catch (const UsageError& e) {
      const std::string f = field_of(e.what());
      throw HttpError(400, e.what(), f == "tokens" ? (is_sudoku ? "puzzle" : "inputs") : f);
    }
    auto done = job->done.get_future();
    metrics.in_flight("hrm", 1);
    struct Leave {
      Metrics& m;
      ~Leave() { m.in_flight("hrm", -1); }
    } leave{metrics};
    enqueue(hrm_mutex, hrm_cv, hrm_queue, job, "hrm", req);
    await(*job, done);
    if (job->status != 200) throw HttpError(job->status, job->error);
    const auto& s = job->solution;
    Json reply = {{"tokens", s.tokens}, {"steps", s.steps}, {"q_halt", s.q_halt}, {"q_continue", s.q_continue},
                  {"halt_confidence", s.halt_confidence}, {"batch_size", job->batch_size}, {"queue_ms", job->queue_ms}};
    if (is_sudoku) {
      const auto v = sudoku::check(job->input.tokens, s.tokens);
      reply["solution"] = sudoku::format(s.tokens);
      reply["sudoku"] = {{"valid", v.valid}, {"consistent", v.consistent}, {"solved", v.solved()}, {"complete", v.complete},
                         {"conflicting_cells", v.conflicting_cells}, {"changed_givens", v.changed_givens}};
    }
    reply["latency_ms"] = ms_since(start);
    reply_json(res, 200, reply);
  }

  void clara_answer(const httplib::Request& req, httplib::Response& res) {
    require_clara();
    const auto start = Clock::now();
    const Body body(req.body, {"question", "documents", "ids", "retrieve", "top_k", "max_new_tokens", "stream", "sample",
                               "temperature", "top_p", "sample_top_k", "seed"});
    const auto max_docs = static_cast<size_t>(options.max_documents);
    auto job = std::make_shared<ClaraJob>();
    if (!body.has("question")) throw HttpError(400, "question is required", "question");
    job->question.question = body.string("question", static_cast<size_t>(options.max_body));
    if (body.has("documents")) job->question.documents = body.strings("documents", max_docs, static_cast<size_t>(options.max_body));
    if (body.has("ids")) job->question.index_ids = body.strings("ids", max_docs, 1024);
    if (body.has("retrieve")) job->question.retrieve = body.boolean("retrieve");
    if (body.has("top_k")) job->question.top_k = body.integer("top_k", 1, options.max_documents);
    auto& g = job->generation;
    if (body.has("max_new_tokens")) g.max_new_tokens = body.integer("max_new_tokens", 1, options.max_new_tokens);
    else g.max_new_tokens = std::min(options.max_new_tokens, clara->info().max_new_tokens);
    if (body.has("sample")) g.sample = body.boolean("sample");
    if (body.has("temperature")) g.temperature = body.number("temperature", 1e-6, 100.0);
    if (body.has("top_p")) g.top_p = body.number("top_p", 1e-6, 1.0);
    if (body.has("sample_top_k")) g.top_k = body.integer("sample_top_k", 0, 1 << 20);
    if (body.has("seed")) g.seed = static_cast<uint64_t>(body.integer("seed", 0, INT64_MAX));
    const bool stream = body.has("stream") && body.boolean("stream");
    try {
      clara->validate(job->question);
    } catch (const UsageError& e) {
      std::string field = field_of(e.what());
      if (field == "index_ids") field = "ids";
      throw HttpError(400, e.what(), field);
    }
    if (!stream) {
      run_clara_job(job, req, res);
      res.status = job->status;
      if (job->status == 200) {
        job->reply["latency_ms"] = ms_since(start);
        reply_json(res, 200, job->reply);
      }
      return;
    }
    // Streamed: the job is queued now (so a full queue is still a 503), the events follow.
    job->stream = std::make_shared<Stream>();
    enqueue(clara_mutex, clara_cv, clara_queue, job, "clara", req);
    metrics.in_flight("clara", 1);  // (after a refusal, nothing is in flight)
    auto counted = std::make_shared<InFlight>(*this);
    res.status = 200;
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream",
        [this, job, start, counted](size_t, httplib::DataSink& sink) {
          auto& st = *job->stream;
          std::unique_lock<std::mutex> lock(st.mutex);
          for (;;) {
            st.cv.wait_until(lock, job->deadline, [&] { return st.finished || !st.pieces.empty(); });
            while (!st.pieces.empty()) {
              const std::string event = "data: " + dump(Json{{"token", st.pieces.front()}}) + "\n\n";
              st.pieces.pop_front();
              lock.unlock();
              const bool ok = sink.write(event.data(), event.size());
              lock.lock();
              if (!ok) {
                st.client_gone = true;  // the worker's sink now stops this answer
                return false;
              }
            }
            if (st.finished) break;
            if (Clock::now() >= job->deadline) {
              st.client_gone = true;
              st.final = error_body(504, "no reply within the timeout (" + std::to_string(options.timeout_ms) + " ms)", "");
              break;
            }
          }
          Json final = st.final;
          lock.unlock();
          if (!final.contains("error")) {
            final["done"] = true;
            final["latency_ms"] = ms_since(start);
          }
          const std::string event = "data: " + dump(final) + "\n\n";
          sink.write(event.data(), event.size());
          sink.done();
          return true;
        },
        [this, job, start](bool) {
          // The stream ended (completed, or the client went away): count it once.
          {
            std::lock_guard<std::mutex> lock(job->stream->mutex);
            job->stream->client_gone = true;
          }
          metrics.in_flight("clara", -1);
          metrics.request("clara_answer", job->status == 200 ? 200 : job->status, ms_since(start) / 1000.0);
        });
  }

  // Runs a non-streamed CLaRa job through the worker and writes its reply.
  void run_clara_job(const std::shared_ptr<ClaraJob>& job, const httplib::Request& req, httplib::Response& res) {
    auto done = job->done.get_future();
    metrics.in_flight("clara", 1);
    struct Leave {
      Metrics& m;
      ~Leave() { m.in_flight("clara", -1); }
    } leave{metrics};
    enqueue(clara_mutex, clara_cv, clara_queue, job, "clara", req);
    await(*job, done);
    reply_json(res, job->status, job->reply);
  }
};

Server::Server(ServerOptions options, std::shared_ptr<const HrmSolver> hrm, std::shared_ptr<ClaraPipeline> clara)
    : impl_(std::make_unique<Impl>(std::move(options), std::move(hrm), std::move(clara))) {}

Server::~Server() = default;

int Server::bind() {
  auto& o = impl_->options;
  if (o.port == 0) {
    const int port = impl_->http.bind_to_any_port(o.host);
    if (port < 0) throw IoError("cannot listen on " + o.host + " (any port)");
    o.port = port;
  } else if (!impl_->http.bind_to_port(o.host, o.port)) {
    throw IoError("cannot listen on " + o.host + ":" + std::to_string(o.port) + " (in use, or not an address of this machine)");
  }
  if (impl_->listen_socket != INVALID_SOCKET) ::listen(impl_->listen_socket, SOMAXCONN);  // see routes()
  impl_->watchdog.start(o.port, std::chrono::milliseconds(int64_t{o.request_timeout_s} * 1000));
  return o.port;
}

void Server::serve() {
  impl_->http.listen_after_bind();
}

void Server::drain_and_stop() {
  std::call_once(impl_->stop_once, [this] {
    auto& s = *impl_;
    s.draining = true;
    const auto give_up = Clock::now() + std::chrono::milliseconds(s.options.timeout_ms + 1000);
    // Idle keep-alive connections and half-sent requests would hold their threads: shut them down
    // (again while waiting: a connection may turn idle after its reply).
    s.watchdog.shut_down_idle();
    while (s.in_flight > 0 && Clock::now() < give_up) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      s.watchdog.shut_down_idle();
    }
    if (s.in_flight > 0) log_warn("drain: " + std::to_string(s.in_flight.load()) + " request(s) still running at the timeout");
    s.http.stop();
    s.watchdog.stop();
  });
}

const Metrics& Server::metrics() const { return impl_->metrics; }

}  // namespace hrmclara::serve
