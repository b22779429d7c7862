// hrmclara_serve: HRM and CLaRa behind one HTTP service with a web page (docs/serve.md).
#include "serve/server.h"

#include <hrmclara/cli.h>
#include <hrmclara/errors.h>
#include <hrmclara/files.h>
#include <hrmclara/log.h>

#include <atomic>
#include <csignal>
#include <iostream>
#include <pthread.h>
#include <thread>

using namespace hrmclara;

namespace {

std::string read_api_key(const std::string& path) {
  const std::string text = read_file(path, 4096);
  const auto end = text.find_first_of("\r\n");
  std::string key = text.substr(0, end);
  while (!key.empty() && (key.back() == ' ' || key.back() == '\t')) key.pop_back();
  if (key.empty()) throw FormatError(path + ": the first line (the API key) is empty");
  return key;
}

}  // namespace

int main(int argc, char** argv) {
  return run_main("hrmclara_serve", [&] {
    ArgParser a("hrmclara_serve",
                "[--hrm CKPT] [--clara DIR --base DIR [--index IDX] [--docs DOCS.jsonl]] [--host 127.0.0.1] [--port 8080]\n"
                "                      [--api-key-file F] [limits and batching flags]");
    a.option("hrm", "an HRM/TRM checkpoint (ours, or upstream's step_N with all_config.yaml beside it)")
        .option("dataset-json", "upstream HRM checkpoints: their dataset.json when it is not found beside them")
        .option("halting", "adaptive (a puzzle stops when its Q head says halt) or max (every puzzle runs all steps)", "adaptive")
        .option("clara", "a CLaRa checkpoint directory (upstream's layout or ours)")
        .option("base", "the CLaRa base model directory (config.json, safetensors, tokenizer.model)")
        .option("index", "a memory index directory (clara_infer compress) to search and answer from")
        .option("docs", "the index's documents JSONL, so that retrieved passages come with their text")
        .option("dtype", "auto|float32|bfloat16|float16|float64 for both models", "auto")
        .option("host", "address to listen on", "127.0.0.1")
        .option("port", "port (0: any free port, printed)", "8080")
        .option("api-key-file", "a file whose first line is the API key every /v1 and /metrics request must send as a Bearer token")
        .option("hrm-max-batch", "puzzles in HRM's continuous batch", "64")
        .option("hrm-max-wait-ms", "an idle HRM worker waits this long for a batch to fill", "2")
        .option("clara-max-batch", "questions per CLaRa decoder batch", "8")
        .option("clara-max-wait-ms", "an idle CLaRa worker waits this long for a batch to fill", "5")
        .option("queue", "requests that may wait per model; more get 503", "256")
        .option("timeout-ms", "a request waiting or running longer gets 504", "30000")
        .option("max-body", "the largest request body in bytes; larger get 413", "1048576")
        .option("http-threads", "connection threads (one per open connection; keep it above --hrm-max-batch)", "128")
        .option("read-timeout-s", "a connection silent for this long is closed", "5")
        .option("request-timeout-s", "a connection must deliver each whole request (headers and body) within this", "10")
        .common_options();
    if (!a.parse(argc, argv, 0)) return 0;
    if (a.has("log-level")) set_log_level(a.get("log-level"));
    if (!a.has("hrm") && !a.has("clara")) throw UsageError("give a model: --hrm CKPT, or --clara DIR with --base DIR");
    if (a.has("clara") != a.has("base")) throw UsageError("--clara and --base go together");
    if ((a.has("index") || a.has("docs")) && !a.has("clara")) throw UsageError("--index and --docs need --clara");

    serve::ServerOptions o;
    o.host = a.get("host");
    o.port = static_cast<int>(a.get_int("port"));
    o.hrm_max_batch = a.get_int("hrm-max-batch");
    o.hrm_max_wait_ms = a.get_int("hrm-max-wait-ms");
    o.clara_max_batch = a.get_int("clara-max-batch");
    o.clara_max_wait_ms = a.get_int("clara-max-wait-ms");
    o.queue = a.get_int("queue");
    o.timeout_ms = a.get_int("timeout-ms");
    o.max_body = a.get_int("max-body");
    o.threads = static_cast<int>(a.get_int("http-threads"));
    o.read_timeout_s = static_cast<int>(a.get_int("read-timeout-s"));
    o.request_timeout_s = static_cast<int>(a.get_int("request-timeout-s"));
    o.validate();  // every flag is checked before a model loads
    if (a.has("api-key-file")) o.api_key = read_api_key(a.get("api-key-file"));

    // SIGTERM and SIGINT are taken by one thread (sigwait), blocked everywhere else: every thread
    // started from here on inherits the mask.
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGTERM);
    sigaddset(&signals, SIGINT);
    pthread_sigmask(SIG_BLOCK, &signals, nullptr);

    const int threads = static_cast<int>(a.get_int("threads"));
    std::shared_ptr<const HrmSolver> hrm;
    if (a.has("hrm")) {
      HrmSolverOptions ho;
      ho.device = a.get("device");
      ho.dtype = a.get("dtype");
      ho.dataset_json = a.get("dataset-json");
      ho.halting = a.get("halting");
      ho.threads = threads;
      hrm = std::make_shared<const HrmSolver>(HrmSolver::load(a.get("hrm"), ho));
      const auto& i = hrm->info();
      log_info("hrm: " + i.arch + " on " + i.device + " (" + i.dtype + "), " + std::to_string(i.parameters) + " parameters, up to " +
               std::to_string(i.max_steps) + " steps, halting " + i.halting);
    }
    std::shared_ptr<ClaraPipeline> clara;
    if (a.has("clara")) {
      ClaraPipelineOptions co;
      co.device = a.get("device");
      co.dtype = a.get("dtype");
      co.index_dir = a.get("index");
      co.documents_jsonl = a.get("docs");
      co.threads = threads;
      clara = std::make_shared<ClaraPipeline>(ClaraPipeline::load(a.get("clara"), a.get("base"), co));
      log_info("clara: " + clara->info().load_report + "; index: " +
               (clara->has_index() ? std::to_string(clara->index_size()) + " documents" : std::string("none")));
    }

    serve::Server server(o, hrm, clara);
    const int port = server.bind();
    // The one line scripts wait for (with the port when --port 0 chose it).
    std::cout << "hrmclara_serve: listening on http://" << o.host << ":" << port << "/" << std::endl;
    std::atomic<bool> signalled{false};
    std::thread waiter([&] {
      int sig = 0;
      sigwait(&signals, &sig);
      signalled = true;
      log_info(std::string("received ") + (sig == SIGTERM ? "SIGTERM" : "SIGINT") + ": draining");
      server.drain_and_stop();
    });
    server.serve();
    // serve() also returns when listening fails: wake the waiter so that it can be joined.
    if (!signalled) pthread_kill(waiter.native_handle(), SIGTERM);
    waiter.join();
    log_info("stopped");
    return 0;
  });
}
