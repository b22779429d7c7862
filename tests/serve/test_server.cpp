// hrmclara_serve's server in-process on a free loopback port: endpoints, validation, limits,
// batching, streaming, draining; and the tool's own errors.
#include "serve/connection_watchdog.h"
#include "serve/metrics.h"
#include "serve/server.h"
#include "test_util.h"

#include <hrmclara/errors.h>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <thread>

namespace hrmclara::test {
namespace {

using Json = nlohmann::json;

std::shared_ptr<const HrmSolver> sudoku_solver() {
  static auto solver = std::make_shared<const HrmSolver>(HrmSolver::load(fixture("sudoku-trm")));
  return solver;
}

std::shared_ptr<ClaraPipeline> clara_pipeline(const std::string& index_dir = "") {
  ClaraPipelineOptions o;
  o.dtype = "float32";
  o.device = "cpu";
  o.index_dir = index_dir;
  o.create_index = !index_dir.empty();
  return std::make_shared<ClaraPipeline>(ClaraPipeline::load(fixture("clara-train/ckpt_stage2"), fixture("clara-reference"), o));
}

// A server on 127.0.0.1:<free port>, serving on its own thread until the fixture ends.
class Running {
 public:
  Running(serve::ServerOptions o, std::shared_ptr<const HrmSolver> hrm, std::shared_ptr<ClaraPipeline> clara = nullptr) {
    o.port = 0;
    server_ = std::make_unique<serve::Server>(o, std::move(hrm), std::move(clara));
    port_ = server_->bind();
    thread_ = std::thread([this] { server_->serve(); });
  }
  ~Running() {
    server_->drain_and_stop();
    thread_.join();
  }
  httplib::Client client() const {
    httplib::Client c("127.0.0.1", port_);
    c.set_read_timeout(60, 0);
    return c;
  }
  serve::Server& server() { return *server_; }
  int port() const { return port_; }
  std::thread& thread() { return thread_; }

 private:
  std::unique_ptr<serve::Server> server_;
  int port_ = 0;
  std::thread thread_;
};

httplib::Result post(httplib::Client& c, const std::string& path, const std::string& body) {
  return c.Post(path.c_str(), body, "application/json");
}

Json body_of(const httplib::Result& r) { return Json::parse(r->body); }

TEST(Server, SolvesSudokuAsTheLibraryDoes) {
  Running s({}, sudoku_solver());
  auto c = s.client();
  auto health = c.Get("/healthz");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  auto models = body_of(c.Get("/v1/models"));
  ASSERT_EQ(models["models"].size(), 1u);
  EXPECT_EQ(models["models"][0]["id"], "hrm");
  EXPECT_EQ(models["models"][0]["sudoku"], true);

  auto gen = post(c, "/v1/sudoku/generate", R"({"clues": 50, "seed": 3})");
  ASSERT_TRUE(gen);
  ASSERT_EQ(gen->status, 200);
  const std::string puzzle = body_of(gen)["puzzle"];
  EXPECT_EQ(sudoku::parse(puzzle), sudoku::generate(3, 50));

  auto r = post(c, "/v1/hrm/solve", Json{{"puzzle", puzzle}}.dump());
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(r->get_header_value("Content-Type"), "application/json");
  const auto reply = body_of(r);
  const auto want = sudoku_solver()->solve(PuzzleInput{sudoku::parse(puzzle), 0});
  EXPECT_EQ(reply["tokens"].get<std::vector<int32_t>>(), want.tokens);
  EXPECT_EQ(reply["steps"], want.steps);
  EXPECT_EQ(reply["solution"], sudoku::format(want.tokens));
  const auto verdict = sudoku::check(sudoku::parse(puzzle), want.tokens);
  EXPECT_EQ(reply["sudoku"]["solved"], verdict.solved());
  EXPECT_TRUE(verdict.solved());
  EXPECT_GE(reply["batch_size"].get<int>(), 1);

  // The token form, same puzzle: same answer, no Sudoku fields.
  auto r2 = post(c, "/v1/hrm/solve", Json{{"inputs", sudoku::parse(puzzle)}, {"puzzle_identifier", 0}}.dump());
  ASSERT_EQ(r2->status, 200);
  EXPECT_EQ(body_of(r2)["tokens"], reply["tokens"]);
  EXPECT_FALSE(body_of(r2).contains("sudoku"));

  auto page = c.Get("/");
  ASSERT_EQ(page->status, 200);
  EXPECT_NE(page->body.find("cell-"), std::string::npos);
  EXPECT_EQ(page->body, serve::web_page());

  const auto metrics = c.Get("/metrics")->body;
  EXPECT_NE(metrics.find("hrmclara_requests_total{endpoint=\"hrm_solve\",status=\"200\"} 2"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("hrmclara_batch_size_count{model=\"hrm\"}"), std::string::npos);
  EXPECT_NE(metrics.find("hrmclara_request_seconds_bucket{endpoint=\"hrm_solve\",le=\"+Inf\"} 2"), std::string::npos);
  EXPECT_NE(metrics.find("hrmclara_queue_depth{model=\"hrm\"} 0"), std::string::npos);
}

TEST(Server, RefusesBadRequestsWithTheDocumentedStatusAndField) {
  serve::ServerOptions o;
  o.max_body = 4096;
  Running s(o, sudoku_solver());
  auto c = s.client();
  auto expect_error = [&](const std::string& body, int status, const std::string& field, const std::string& path = "/v1/hrm/solve") {
    auto r = post(c, path, body);
    ASSERT_TRUE(r) << body;
    EXPECT_EQ(r->status, status) << body << " -> " << r->body;
    const auto j = Json::parse(r->body, nullptr, false);
    ASSERT_TRUE(j.is_object() && j.contains("error")) << r->body;
    EXPECT_EQ(j["error"]["status"], status);
    EXPECT_FALSE(j["error"]["message"].get<std::string>().empty());
    if (!field.empty()) EXPECT_EQ(j["error"].value("field", ""), field) << r->body;
  };
  expect_error("{\"puzzle\": ", 400, "");
  expect_error("[1, 2]", 400, "");
  expect_error("", 400, "");
  expect_error(R"({"puzzle": 5})", 400, "puzzle");
  expect_error(R"({"puzzle": "123"})", 400, "puzzle");
  expect_error(R"({"inputs": "x"})", 400, "inputs");
  expect_error(R"({"inputs": [1, 2, 3]})", 400, "inputs");
  expect_error(R"({"inputs": [1.5]})", 400, "inputs");
  expect_error(R"({"puzzle": "1", "inputs": [1]})", 400, "puzzle");
  expect_error(R"({"puzzle": "1", "colour": "red"})", 400, "colour");
  expect_error(R"({"inputs": [1], "puzzle_identifier": "a"})", 400, "puzzle_identifier");
  expect_error(R"({"clues": 5})", 400, "clues", "/v1/sudoku/generate");
  expect_error(std::string(5000, ' '), 413, "");
  expect_error(R"({"question": "q", "documents": ["d"]})", 404, "", "/v1/clara/answer");  // no CLaRa model
  auto missing = c.Get("/v1/nothing");
  EXPECT_EQ(missing->status, 404);
  EXPECT_TRUE(Json::parse(missing->body).contains("error"));
  auto wrong_method = c.Get("/v1/hrm/solve");
  EXPECT_GE(wrong_method->status, 400);
  EXPECT_TRUE(Json::parse(wrong_method->body).contains("error"));
  // Still serving after all that.
  EXPECT_EQ(post(c, "/v1/hrm/solve", Json{{"puzzle", sudoku::format(sudoku::generate(9, 50))}}.dump())->status, 200);
  EXPECT_GE(s.server().metrics().requests("hrm_solve", 400), 9u);
}

TEST(Server, ApiKeyGuardsEverythingButThePageAndHealth) {
  serve::ServerOptions o;
  o.api_key = "s3cret";
  Running s(o, sudoku_solver());
  auto c = s.client();
  EXPECT_EQ(c.Get("/healthz")->status, 200);
  EXPECT_EQ(c.Get("/")->status, 200);
  EXPECT_EQ(c.Get("/v1/models")->status, 401);
  EXPECT_EQ(c.Get("/metrics")->status, 401);
  const std::string solve = Json{{"puzzle", sudoku::format(sudoku::generate(9, 50))}}.dump();
  auto r = post(c, "/v1/hrm/solve", solve);
  EXPECT_EQ(r->status, 401);
  EXPECT_EQ(body_of(r)["error"]["field"], "Authorization");
  c.set_bearer_token_auth("s3cre");
  EXPECT_EQ(post(c, "/v1/hrm/solve", solve)->status, 401);
  c.set_bearer_token_auth("s3cret");
  EXPECT_EQ(post(c, "/v1/hrm/solve", solve)->status, 200);
  EXPECT_EQ(c.Get("/v1/models")->status, 200);
}

// Many concurrent clients: every reply is the library's answer, and the continuous batch holds
// several puzzles at once.
TEST(Server, ConcurrentRequestsAreBatchedAndAnsweredExactly) {
  serve::ServerOptions o;
  o.hrm_max_wait_ms = 100;  // an idle worker waits for company: the first step batches everyone
  Running s(o, sudoku_solver());
  constexpr int kClients = 12;
  std::vector<std::vector<int32_t>> ps;
  std::vector<PuzzleSolution> want;
  for (int i = 0; i < kClients; ++i) {
    ps.push_back(sudoku::generate(500 + static_cast<uint64_t>(i), 46));
    want.push_back(sudoku_solver()->solve(PuzzleInput{ps.back(), 0}));
  }
  std::vector<Json> got(kClients);
  std::vector<int> status(kClients, 0);
  std::vector<std::thread> clients;
  for (int i = 0; i < kClients; ++i)
    clients.emplace_back([&, i] {
      auto c = s.client();
      auto r = post(c, "/v1/hrm/solve", Json{{"puzzle", sudoku::format(ps[static_cast<size_t>(i)])}}.dump());
      if (!r) return;
      status[static_cast<size_t>(i)] = r->status;
      got[static_cast<size_t>(i)] = Json::parse(r->body);
    });
  for (auto& t : clients) t.join();
  int max_batch = 0;
  for (int i = 0; i < kClients; ++i) {
    ASSERT_EQ(status[static_cast<size_t>(i)], 200) << got[static_cast<size_t>(i)].dump();
    EXPECT_EQ(got[static_cast<size_t>(i)]["tokens"].get<std::vector<int32_t>>(), want[static_cast<size_t>(i)].tokens) << i;
    EXPECT_EQ(got[static_cast<size_t>(i)]["steps"], want[static_cast<size_t>(i)].steps) << i;
    max_batch = std::max(max_batch, got[static_cast<size_t>(i)]["batch_size"].get<int>());
  }
  EXPECT_GT(max_batch, 1);
  EXPECT_GT(s.server().metrics().mean_batch("hrm"), 1.0);
}

TEST(Server, FullQueueIs503AndAnExpiredRequestIs504) {
  {
    serve::ServerOptions o;
    o.queue = 1;
    o.hrm_max_batch = 1;
    o.hrm_max_wait_ms = 200;  // the worker sits on the first request: the queue stays full
    Running s(o, sudoku_solver());
    std::vector<int> status(16, 0);
    std::vector<std::thread> clients;
    for (size_t i = 0; i < status.size(); ++i)
      clients.emplace_back([&, i] {
        auto c = s.client();
        auto r = post(c, "/v1/hrm/solve", Json{{"puzzle", sudoku::format(sudoku::generate(i, 50))}}.dump());
        status[i] = r ? r->status : -100 - static_cast<int>(r.error());
      });
    for (auto& t : clients) t.join();
    const auto n503 = std::count(status.begin(), status.end(), 503);
    const auto n200 = std::count(status.begin(), status.end(), 200);
    EXPECT_GE(n503, 1);
    EXPECT_GE(n200, 1);
    std::string all;
    for (const int st : status) all += std::to_string(st) + " ";  // -100 - n: httplib::Error n
    EXPECT_EQ(n503 + n200, 16) << all;
  }
  {
    serve::ServerOptions o;
    o.timeout_ms = 20;
    o.hrm_max_wait_ms = 300;  // longer than the timeout: the request expires in the queue
    Running s(o, sudoku_solver());
    auto c = s.client();
    auto r = post(c, "/v1/hrm/solve", Json{{"puzzle", sudoku::format(sudoku::generate(1, 50))}}.dump());
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 504) << r->body;
    EXPECT_NE(body_of(r)["error"]["message"].get<std::string>().find("timeout"), std::string::npos);
  }
}

TEST(Server, DrainFinishesRequestsInFlightThenStops) {
  serve::ServerOptions o;
  o.hrm_max_wait_ms = 300;  // requests sit in the worker's wait when the drain starts
  o.port = 0;
  serve::Server s(o, sudoku_solver(), nullptr);
  const int port = s.bind();
  std::thread serving([&] { s.serve(); });
  std::vector<int> status(6, 0);
  std::vector<std::thread> clients;
  for (size_t i = 0; i < status.size(); ++i)
    clients.emplace_back([&, i] {
      httplib::Client c("127.0.0.1", port);
      auto r = post(c, "/v1/hrm/solve", Json{{"puzzle", sudoku::format(sudoku::generate(i, 50))}}.dump());
      status[i] = r ? r->status : -1;
    });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  s.drain_and_stop();
  serving.join();  // serve() returned
  for (auto& t : clients) t.join();
  for (size_t i = 0; i < status.size(); ++i) EXPECT_EQ(status[i], 200) << i;
  httplib::Client late("127.0.0.1", port);
  late.set_connection_timeout(1, 0);
  EXPECT_FALSE(late.Get("/healthz"));  // no longer listening
}

TEST(Server, ClaraAnswersStreamsSearchesAndCompresses) {
  ScratchDir dir;
  auto pipe = clara_pipeline(dir / "index");
  pipe->add_documents({{"d1", "t", "Paris is the capital of France."},
                       {"d2", "t", "The Nile is a river in Africa."},
                       {"d3", "t", "Shakespeare wrote Hamlet."}});
  Running s({}, sudoku_solver(), pipe);
  auto c = s.client();
  const auto models = body_of(c.Get("/v1/models"));
  ASSERT_EQ(models["models"].size(), 2u);
  EXPECT_EQ(models["models"][1]["index_size"], 3);

  const std::string ask = R"({"question": "Who wrote Hamlet?", "documents": ["Shakespeare wrote Hamlet.", "Paris is in France."], "max_new_tokens": 10})";
  auto r = post(c, "/v1/clara/answer", ask);
  ASSERT_EQ(r->status, 200) << r->body;
  const auto reply = body_of(r);
  ClaraGeneration g;
  g.max_new_tokens = 10;
  const auto want = pipe->answer({"Who wrote Hamlet?", {"Shakespeare wrote Hamlet.", "Paris is in France."}}, g);
  EXPECT_EQ(reply["answer"], want.answer);

  // Streamed: server-sent events whose tokens add up to the answer, then the done event.
  std::string events;
  auto streamed_ask = Json::parse(ask);
  streamed_ask["stream"] = true;
  auto sr = c.Post("/v1/clara/answer", streamed_ask.dump(), "application/json");
  ASSERT_TRUE(sr);
  EXPECT_EQ(sr->status, 200);
  EXPECT_EQ(sr->get_header_value("Content-Type"), "text/event-stream");
  std::string text;
  Json done;
  size_t pos = 0;
  int token_events = 0;
  while ((pos = sr->body.find("data: ", pos)) != std::string::npos) {
    const auto end = sr->body.find("\n\n", pos);
    ASSERT_NE(end, std::string::npos);
    const Json event = Json::parse(sr->body.substr(pos + 6, end - pos - 6));
    if (event.contains("token")) {
      text += event.at("token").get<std::string>();
      ++token_events;
    } else {
      done = event;
    }
    pos = end;
  }
  EXPECT_GT(token_events, 1);
  EXPECT_EQ(text, want.answer);
  EXPECT_EQ(done["done"], true);
  EXPECT_EQ(done["answer"], want.answer);

  auto retrieved = body_of(post(c, "/v1/clara/answer", R"({"question": "Which river is in Africa?", "retrieve": true, "top_k": 2, "max_new_tokens": 4})"));
  ASSERT_EQ(retrieved["passages"].size(), 2u);
  const auto search = body_of(post(c, "/v1/clara/search", R"({"question": "Which river is in Africa?", "top_k": 2})"));
  EXPECT_EQ(search["passages"][0]["id"], retrieved["passages"][0]["id"]);
  EXPECT_EQ(search["passages"][0]["text"].get<std::string>().empty(), false);

  const auto compressed = body_of(post(c, "/v1/clara/compress", R"({"documents": ["Paris is the capital of France."]})"));
  ASSERT_EQ(compressed["vectors"].size(), 1u);
  const auto direct = pipe->compress({"Paris is the capital of France."});
  EXPECT_EQ(compressed["vectors"][0].get<std::vector<float>>(), direct[0]);
  EXPECT_EQ(body_of(c.Get("/v1/clara/documents"))["documents"].size(), 3u);

  auto bad = post(c, "/v1/clara/answer", R"({"question": "Who?", "ids": ["nope"]})");
  EXPECT_EQ(bad->status, 400);
  EXPECT_EQ(body_of(bad)["error"]["field"], "ids");
  bad = post(c, "/v1/clara/answer", R"({"question": "Who?"})");
  EXPECT_EQ(bad->status, 400);
  bad = post(c, "/v1/clara/answer", R"({"question": "Who?", "documents": ["a"], "max_new_tokens": 100000})");
  EXPECT_EQ(body_of(bad)["error"]["field"], "max_new_tokens");
}

TEST(Server, ConcurrentClaraQuestionsShareADecoderBatch) {
  serve::ServerOptions o;
  o.clara_max_wait_ms = 300;  // the worker waits for the others before the first batch
  Running s(o, nullptr, clara_pipeline());
  const std::vector<std::string> questions = {"Who wrote Hamlet?", "Where is Paris?", "What is the Nile?", "Who?"};
  std::vector<Json> got(questions.size());
  std::vector<std::thread> clients;
  for (size_t i = 0; i < questions.size(); ++i)
    clients.emplace_back([&, i] {
      auto c = s.client();
      auto r = post(c, "/v1/clara/answer",
                    Json{{"question", questions[i]}, {"documents", {"Shakespeare wrote Hamlet.", "Paris is in France."}},
                         {"max_new_tokens", 6}}.dump());
      if (r && r->status == 200) got[i] = Json::parse(r->body);
    });
  for (auto& t : clients) t.join();
  int max_batch = 0;
  for (size_t i = 0; i < questions.size(); ++i) {
    ASSERT_TRUE(got[i].contains("answer")) << i;
    max_batch = std::max(max_batch, got[i]["batch_size"].get<int>());
  }
  EXPECT_GT(max_batch, 1);
  EXPECT_GT(s.server().metrics().mean_batch("clara"), 1.0);
}

// A loopback TCP socket's local port.
int local_port(int fd) {
  sockaddr_in a{};
  socklen_t n = sizeof a;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &n) != 0) return -1;
  return ntohs(a.sin_port);
}

// A raw loopback connection to `port` (the caller closes it).
int connect_to(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd < 0 || ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    if (fd >= 0) ::close(fd);
    return -1;
  }
  return fd;
}

TEST(ConnectionWatchdog, TellsAClientThatHungUpFromOneThatWaits) {
  const int listener = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(listener, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(listener, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::listen(listener, 4), 0);
  const int port = local_port(listener);
  serve::ConnectionWatchdog watchdog;
  watchdog.start(port, std::chrono::seconds(60));
  const int waiting = connect_to(port), leaving = connect_to(port);
  ASSERT_GE(waiting, 0);
  ASSERT_GE(leaving, 0);
  const int served_waiting = ::accept(listener, nullptr, nullptr), served_leaving = ::accept(listener, nullptr, nullptr);
  ASSERT_GE(served_waiting, 0);
  ASSERT_GE(served_leaving, 0);
  const int waiting_port = local_port(waiting), leaving_port = local_port(leaving);
  watchdog.handling(waiting_port);  // (before any scan: the descriptor is found on demand)
  watchdog.handling(leaving_port);
  EXPECT_FALSE(watchdog.client_gone(waiting_port));
  EXPECT_FALSE(watchdog.client_gone(leaving_port));
  ASSERT_EQ(::send(waiting, "GET", 3, 0), 3);  // a pipelined request: still there
  EXPECT_FALSE(watchdog.client_gone(waiting_port));
  ::close(leaving);
  bool gone = false;
  for (int i = 0; i < 200 && !gone; ++i) {
    gone = watchdog.client_gone(leaving_port);
    if (!gone) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(gone);
  EXPECT_FALSE(watchdog.client_gone(waiting_port));
  EXPECT_FALSE(watchdog.client_gone(1));  // no such connection: no evidence it left
  watchdog.stop();
  for (int fd : {waiting, served_waiting, served_leaving, listener}) ::close(fd);
}

TEST(Server, RequestsWhoseClientHungUpAreDroppedAs499) {
  serve::ServerOptions o;
  o.hrm_max_batch = 1;  // one at a time: the dropped ones would otherwise queue
  Running s(o, sudoku_solver());
  auto c = s.client();
  const auto puzzle = sudoku::format(sudoku::generate(7, 50));
  const std::string body = Json{{"puzzle", puzzle}}.dump();
  const std::string request = "POST /v1/hrm/solve HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: " +
                              std::to_string(body.size()) + "\r\n\r\n" + body;
  const int n = 16;
  const int port = s.port();
  for (int i = 0; i < n; ++i) {
    const int fd = connect_to(port);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::send(fd, request.data(), request.size(), MSG_NOSIGNAL), static_cast<ssize_t>(request.size()));
    ::close(fd);
  }
  // Every one is accounted for: solved before the server saw the hang-up (200), or dropped (499).
  const auto& m = s.server().metrics();
  for (int i = 0; i < 500 && m.requests("hrm_solve", 200) + m.requests("hrm_solve", 499) < n; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(m.requests("hrm_solve", 200) + m.requests("hrm_solve", 499), static_cast<uint64_t>(n));
  EXPECT_GE(m.requests("hrm_solve", 499), 1u);
  // The server still answers, exactly.
  auto r = post(c, "/v1/hrm/solve", body);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
}

TEST(Metrics, PrometheusTextFormat) {
  serve::Metrics m;
  m.request("hrm_solve", 200, 0.003);
  m.request("hrm_solve", 200, 0.2);
  m.request("hrm_solve", 400, 0.0001);
  m.batch("hrm", 3);
  m.batch("hrm", 5);
  m.queue_depth("hrm", 2);
  const auto text = m.render();
  EXPECT_NE(text.find("hrmclara_requests_total{endpoint=\"hrm_solve\",status=\"200\"} 2\n"), std::string::npos);
  EXPECT_NE(text.find("hrmclara_errors_total{endpoint=\"hrm_solve\"} 1\n"), std::string::npos);
  EXPECT_NE(text.find("hrmclara_request_seconds_bucket{endpoint=\"hrm_solve\",le=\"0.005\"} 2\n"), std::string::npos);
  EXPECT_NE(text.find("hrmclara_request_seconds_bucket{endpoint=\"hrm_solve\",le=\"0.25\"} 3\n"), std::string::npos);
  EXPECT_NE(text.find("hrmclara_request_seconds_count{endpoint=\"hrm_solve\"} 3\n"), std::string::npos);
  EXPECT_NE(text.find("hrmclara_batch_size_bucket{model=\"hrm\",le=\"4\"} 1\n"), std::string::npos);
  EXPECT_NE(text.find("hrmclara_batch_size_sum{model=\"hrm\"} 8\n"), std::string::npos);
  EXPECT_NE(text.find("hrmclara_queue_depth{model=\"hrm\"} 2\n"), std::string::npos);
  EXPECT_DOUBLE_EQ(m.mean_batch("hrm"), 4.0);
  EXPECT_EQ(serve::prometheus_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
}

TEST(ServeTool, BadFlagsAndFilesAreOneLineErrors) {
  ScratchDir dir;
  const std::string serve = tool("hrmclara_serve");
  auto r = run_command(serve, dir.path());
  EXPECT_EQ(r.exit_code, static_cast<int>(ExitCode::kUsage));
  EXPECT_NE(r.err.find("give a model"), std::string::npos) << r.err;
  r = run_command(serve + " --hrm " + fixture("sudoku-trm") + " --port 70000", dir.path());
  EXPECT_EQ(r.exit_code, static_cast<int>(ExitCode::kUsage));
  EXPECT_NE(r.err.find("--port"), std::string::npos) << r.err;
  r = run_command(serve + " --hrm " + dir / "missing", dir.path());
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find(dir / "missing"), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  write_bytes(dir / "key", "\n");
  r = run_command(serve + " --hrm " + fixture("sudoku-trm") + " --api-key-file " + dir / "key", dir.path());
  EXPECT_EQ(r.exit_code, static_cast<int>(ExitCode::kFormat));
  r = run_command(serve + " --clara " + dir.path(), dir.path());
  EXPECT_EQ(r.exit_code, static_cast<int>(ExitCode::kUsage));
  EXPECT_NE(r.err.find("--base"), std::string::npos);
}

}  // namespace
}  // namespace hrmclara::test
