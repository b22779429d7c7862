// hrmclara_load: a load client for hrmclara_serve's POST /v1/hrm/solve (docs/serve.md) that
// checks every reply.
//
//   hrmclara_load --url http://127.0.0.1:PORT --checkpoint CKPT --concurrency 1,8,64 --requests N
//                 [--puzzles M] [--clues 50] [--seconds S] [--api-key-file F] [--sequential-baseline]
//
// It generates M distinct Sudoku puzzles (sudoku::generate, no HTTP) and solves each one alone by
// a direct library call (HrmSolver::load(CKPT), then solve(puzzle)): the reference answers. Then,
// for each concurrency level C, C client threads (one keep-alive httplib::Client each) send N
// requests in all (or for S seconds), each a random one of the M puzzles, and every reply must be
// a 200 whose tokens and steps equal the reference's and whose solution string is the reference's.
// Per level: throughput, client-measured latency percentiles, the server's batch_size (mean, max),
// mismatches, lost replies (transport errors) and non-200 statuses; a table, then one JSON line per
// level. Exit status 1 when any reply was lost, mismatched or not a 200.
#include <hrmclara/cli.h>
#include <hrmclara/errors.h>
#include <hrmclara/files.h>
#include <hrmclara/hrm_solver.h>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

using namespace hrmclara;
using Json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

double ms_between(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double, std::milli>(b - a).count(); }

// "model name" of /proc/cpuinfo and its logical core count ("processor" lines).
std::string cpu_line() {
  std::ifstream in("/proc/cpuinfo");
  std::string line, model;
  int cores = 0;
  while (std::getline(in, line)) {
    const auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string key = line.substr(0, colon);
    while (!key.empty() && (key.back() == ' ' || key.back() == '\t')) key.pop_back();
    std::string value = line.substr(colon + 1);
    while (!value.empty() && value.front() == ' ') value.erase(0, 1);
    if (key == "processor") ++cores;
    if (key == "model name" && model.empty()) model = value;
  }
  if (model.empty()) model = "unknown CPU";
  return model + ", " + std::to_string(cores) + " logical cores";
}

std::string load_average() {
  std::ifstream in("/proc/loadavg");
  std::string a, b, c;
  if (!(in >> a >> b >> c)) return "unknown";
  return a + " " + b + " " + c;
}

std::string read_api_key(const std::string& path) {
  const std::string text = read_file(path, 4096);
  std::string key = text.substr(0, text.find_first_of("\r\n"));
  while (!key.empty() && (key.back() == ' ' || key.back() == '\t')) key.pop_back();
  if (key.empty()) throw FormatError(path + ": the first line (the API key) is empty");
  return key;
}

std::vector<int> parse_levels(const std::string& text) {
  std::vector<int> levels;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    size_t used = 0;
    long v = 0;
    try {
      v = std::stol(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != item.size() || v < 1 || v > 4096)
      throw UsageError("--concurrency: '" + item + "' is not a count in [1, 4096] (give e.g. 1,8,64)");
    levels.push_back(static_cast<int>(v));
  }
  if (levels.empty()) throw UsageError("--concurrency is empty (give e.g. 1,8,64)");
  return levels;
}

double percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0.0;
  const size_t rank = static_cast<size_t>(std::ceil(p * static_cast<double>(sorted.size())));
  return sorted[std::min(sorted.size() - 1, rank == 0 ? 0 : rank - 1)];
}

std::string fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

struct Reference {
  std::vector<int32_t> puzzle;
  std::string puzzle_text;  // sudoku::format
  std::string body;         // the request body
  PuzzleSolution solution;
  std::string solution_text;
  bool solved = false;
};

// What one level measured.
struct LevelResult {
  int concurrency = 0;
  int64_t sent = 0, ok = 0, mismatches = 0, lost = 0, bad_status = 0;
  double seconds = 0.0;
  std::vector<double> latencies_ms;  // every reply that came back
  double batch_sum = 0.0;
  int64_t batch_count = 0, batch_max = 0;
  std::map<int, int64_t> statuses;     // non-200 statuses
  std::map<std::string, int64_t> transport_errors;
  std::vector<std::string> problems;   // the first few mismatches, non-200s and lost replies, in detail
};

constexpr size_t kMaxProblems = 5;

struct Settings {
  std::string url, api_key;
  int64_t requests = 0;
  double seconds = 0.0;  // > 0: run each level for this long instead of `requests`
  int timeout_s = 60;
  bool tcp_nodelay = true;
  uint64_t seed = 1;
};

// Checks one 200 reply against the reference; empty when it agrees, else what differs.
std::string compare(const std::string& body, const Reference& ref, int64_t& batch_size) {
  Json j;
  try {
    j = Json::parse(body);
  } catch (const Json::exception& e) {
    return std::string("the body is not JSON (") + e.what() + "): " + body.substr(0, 200);
  }
  std::ostringstream why;
  if (j.contains("batch_size") && j["batch_size"].is_number_integer()) batch_size = j["batch_size"].get<int64_t>();
  if (!j.contains("tokens") || !j["tokens"].is_array()) return "no tokens array in the reply: " + body.substr(0, 200);
  std::vector<int64_t> tokens;
  for (const auto& t : j["tokens"]) tokens.push_back(t.is_number_integer() ? t.get<int64_t>() : -1);
  const auto& want = ref.solution.tokens;
  if (tokens.size() != want.size()) {
    why << "tokens: " << tokens.size() << " of them, expected " << want.size() << "; ";
  } else {
    std::vector<size_t> differ;
    for (size_t i = 0; i < want.size(); ++i)
      if (tokens[i] != want[i]) differ.push_back(i);
    if (!differ.empty()) {
      why << "tokens differ at " << differ.size() << " cell(s):";
      for (size_t k = 0; k < differ.size() && k < 8; ++k)
        why << " [" << differ[k] << "] " << tokens[differ[k]] << " (expected " << want[differ[k]] << ")";
      why << "; ";
    }
  }
  const int64_t steps = j.contains("steps") && j["steps"].is_number_integer() ? j["steps"].get<int64_t>() : -1;
  if (steps != ref.solution.steps) why << "steps " << steps << " (expected " << ref.solution.steps << "); ";
  const std::string solution = j.contains("solution") && j["solution"].is_string() ? j["solution"].get<std::string>() : "(none)";
  if (solution != ref.solution_text) why << "solution " << solution << " (expected " << ref.solution_text << "); ";
  // The reply's own solution must be its tokens, formatted.
  if (tokens.size() == 81) {
    std::vector<int32_t> t32(tokens.begin(), tokens.end());
    if (sudoku::format(t32) != solution) why << "solution string does not match the reply's own tokens; ";
  }
  std::string out = why.str();
  if (!out.empty()) out += "batch_size " + std::to_string(batch_size) + ", q_halt " + (j.contains("q_halt") ? j["q_halt"].dump() : "?");
  return out;
}

LevelResult run_level(int concurrency, const Settings& settings, const std::vector<Reference>& refs, uint64_t level_seed) {
  LevelResult result;
  result.concurrency = concurrency;
  std::atomic<int64_t> next{0};
  std::mutex mutex;  // guards result's merged fields
  const auto start = Clock::now();
  const auto stop_at = start + std::chrono::milliseconds(static_cast<int64_t>(settings.seconds * 1000.0));
  const bool timed = settings.seconds > 0.0;
  std::vector<std::thread> threads;
  for (int t = 0; t < concurrency; ++t) {
    threads.emplace_back([&, t] {
      httplib::Client client(settings.url);
      client.set_keep_alive(true);
      client.set_tcp_nodelay(settings.tcp_nodelay);
      client.set_connection_timeout(10, 0);
      client.set_read_timeout(settings.timeout_s, 0);
      client.set_write_timeout(settings.timeout_s, 0);
      if (!settings.api_key.empty()) client.set_bearer_token_auth(settings.api_key);
      std::mt19937_64 rng(level_seed * 1000003ULL + static_cast<uint64_t>(t));
      std::uniform_int_distribution<size_t> pick(0, refs.size() - 1);
      LevelResult mine;
      for (;;) {
        if (timed) {
          if (Clock::now() >= stop_at) break;
        } else if (next.fetch_add(1) >= settings.requests) {
          break;
        }
        const size_t which = pick(rng);
        const Reference& ref = refs[which];
        ++mine.sent;
        const auto t0 = Clock::now();
        auto res = client.Post("/v1/hrm/solve", ref.body, "application/json");
        const double ms = ms_between(t0, Clock::now());
        if (!res) {
          ++mine.lost;
          const std::string err = httplib::to_string(res.error());
          ++mine.transport_errors[err];
          if (mine.problems.size() < kMaxProblems)
            mine.problems.push_back("lost: puzzle #" + std::to_string(which) + ": " + err + " after " + fixed(ms, 1) + " ms");
          continue;
        }
        mine.latencies_ms.push_back(ms);
        if (res->status != 200) {
          ++mine.bad_status;
          ++mine.statuses[res->status];
          if (mine.problems.size() < kMaxProblems)
            mine.problems.push_back("HTTP " + std::to_string(res->status) + ": puzzle #" + std::to_string(which) + ": " +
                                    res->body.substr(0, 300));
          continue;
        }
        int64_t batch = -1;
        const std::string why = compare(res->body, ref, batch);
        if (batch >= 0) {
          mine.batch_sum += static_cast<double>(batch);
          ++mine.batch_count;
          mine.batch_max = std::max(mine.batch_max, batch);
        }
        if (!why.empty()) {
          ++mine.mismatches;
          if (mine.problems.size() < kMaxProblems)
            mine.problems.push_back("mismatch: puzzle #" + std::to_string(which) + " " + ref.puzzle_text + ": " + why);
          continue;
        }
        ++mine.ok;
      }
      std::lock_guard<std::mutex> lock(mutex);
      result.sent += mine.sent;
      result.ok += mine.ok;
      result.mismatches += mine.mismatches;
      result.lost += mine.lost;
      result.bad_status += mine.bad_status;
      result.latencies_ms.insert(result.latencies_ms.end(), mine.latencies_ms.begin(), mine.latencies_ms.end());
      result.batch_sum += mine.batch_sum;
      result.batch_count += mine.batch_count;
      result.batch_max = std::max(result.batch_max, mine.batch_max);
      for (const auto& [s, n] : mine.statuses) result.statuses[s] += n;
      for (const auto& [e, n] : mine.transport_errors) result.transport_errors[e] += n;
      for (auto& p : mine.problems)
        if (result.problems.size() < kMaxProblems) result.problems.push_back(std::move(p));
    });
  }
  for (auto& th : threads) th.join();
  result.seconds = ms_between(start, Clock::now()) / 1000.0;
  std::sort(result.latencies_ms.begin(), result.latencies_ms.end());
  return result;
}

Json level_json(const LevelResult& r) {
  const auto& l = r.latencies_ms;
  double mean = 0.0;
  for (const double v : l) mean += v;
  if (!l.empty()) mean /= static_cast<double>(l.size());
  Json statuses = Json::object();
  for (const auto& [s, n] : r.statuses) statuses[std::to_string(s)] = n;
  Json transport = Json::object();
  for (const auto& [e, n] : r.transport_errors) transport[e] = n;
  return Json{{"concurrency", r.concurrency},
              {"requests", r.sent},
              {"ok", r.ok},
              {"seconds", r.seconds},
              {"throughput_rps", r.seconds > 0 ? static_cast<double>(r.sent - r.lost) / r.seconds : 0.0},
              {"latency_ms", {{"p50", percentile(l, 0.50)}, {"p90", percentile(l, 0.90)}, {"p99", percentile(l, 0.99)},
                              {"max", l.empty() ? 0.0 : l.back()}, {"mean", mean}}},
              {"batch_size", {{"mean", r.batch_count ? r.batch_sum / static_cast<double>(r.batch_count) : 0.0}, {"max", r.batch_max}}},
              {"mismatches", r.mismatches},
              {"lost", r.lost},
              {"non_200", r.bad_status},
              {"statuses", statuses},
              {"transport_errors", transport}};
}

std::string pad(const std::string& s, size_t width) { return s.size() >= width ? s : std::string(width - s.size(), ' ') + s; }

void print_row(const LevelResult& r) {
  const Json j = level_json(r);
  std::cout << pad(std::to_string(r.concurrency), 5) << pad(std::to_string(r.sent), 9) << pad(fixed(r.seconds, 1), 8)
            << pad(fixed(j["throughput_rps"].get<double>(), 1), 9) << pad(fixed(j["latency_ms"]["p50"].get<double>(), 1), 9)
            << pad(fixed(j["latency_ms"]["p90"].get<double>(), 1), 9) << pad(fixed(j["latency_ms"]["p99"].get<double>(), 1), 9)
            << pad(fixed(j["latency_ms"]["max"].get<double>(), 1), 9) << pad(fixed(j["batch_size"]["mean"].get<double>(), 1), 8)
            << pad(std::to_string(r.batch_max), 6) << pad(std::to_string(r.mismatches), 9) << pad(std::to_string(r.lost), 6)
            << pad(std::to_string(r.bad_status), 8) << "\n";
}

}  // namespace

int main(int argc, char** argv) {
  return run_main("hrmclara_load", [&] {
    ArgParser a("hrmclara_load",
                "--url http://127.0.0.1:PORT --checkpoint CKPT [--concurrency 1,8,64] [--requests N | --seconds S]\n"
                "                     [--puzzles M] [--clues 50] [--api-key-file F] [--sequential-baseline]");
    a.option("url", "the server, http://HOST:PORT")
        .option("checkpoint", "the checkpoint the server was started with (--hrm): the reference answers come from it")
        .option("concurrency", "comma-separated client thread counts, one level each", "1,8,64")
        .option("requests", "requests per level", "1000")
        .option("seconds", "run each level for this many seconds instead of --requests", "0")
        .option("puzzles", "distinct puzzles (each request is a random one of them)", "64")
        .option("clues", "givens per generated puzzle", "50")
        .option("seed", "seed of the first puzzle (puzzle i has seed SEED+i)", "1")
        .option("warmup", "requests sent (and checked) before the first level, not counted", "8")
        .option("timeout-s", "client read/write timeout per request", "60")
        .option("api-key-file", "a file whose first line is the server's API key")
        .option("tcp-nodelay", "1: the client's sockets set TCP_NODELAY (as curl and browsers do); 0: Nagle's algorithm", "1")
        .flag("sequential-baseline", "also measure one request at a time against the server and direct in-process solves")
        .common_options();
    if (!a.parse(argc, argv, 0)) return 0;
    const std::string url = a.require("url");
    if (url.rfind("http://", 0) != 0 && url.rfind("https://", 0) != 0) throw UsageError("--url must start with http:// or https://");
    const std::string checkpoint = a.require("checkpoint");
    std::vector<int> levels = parse_levels(a.get("concurrency"));
    Settings settings;
    settings.url = url;
    while (!settings.url.empty() && settings.url.back() == '/') settings.url.pop_back();
    settings.requests = a.get_int("requests");
    settings.seconds = a.get_double("seconds");
    settings.timeout_s = static_cast<int>(a.get_int("timeout-s"));
    settings.seed = static_cast<uint64_t>(a.get_int("seed"));
    if (a.get("tcp-nodelay") != "0" && a.get("tcp-nodelay") != "1") throw UsageError("--tcp-nodelay must be 0 or 1");
    settings.tcp_nodelay = a.get("tcp-nodelay") == "1";
    const int64_t puzzles = a.get_int("puzzles");
    const int clues = static_cast<int>(a.get_int("clues"));
    const int64_t warmup = a.get_int("warmup");
    if (settings.requests < 1) throw UsageError("--requests must be >= 1");
    if (!(settings.seconds >= 0.0 && settings.seconds <= 86400.0)) throw UsageError("--seconds must be in [0, 86400]");
    if (puzzles < 1 || puzzles > 100000) throw UsageError("--puzzles must be in [1, 100000]");
    if (clues < 17 || clues > 81) throw UsageError("--clues must be in [17, 81]");
    if (warmup < 0) throw UsageError("--warmup must be >= 0");
    if (settings.timeout_s < 1) throw UsageError("--timeout-s must be >= 1");
    if (a.has("api-key-file")) settings.api_key = read_api_key(a.get("api-key-file"));
    const bool baseline = a.has("sequential-baseline");

    std::cout << "hrmclara_load: " << settings.url << "/v1/hrm/solve\n"
              << "cpu: " << cpu_line() << "\n"
              << "load average: " << load_average() << "\n";
    httplib::Client probe(settings.url);
    probe.set_connection_timeout(10, 0);
    if (!settings.api_key.empty()) probe.set_bearer_token_auth(settings.api_key);
    if (auto models = probe.Get("/v1/models"); models && models->status == 200) {
      try {
        for (const auto& m : Json::parse(models->body).at("models"))
          if (m.value("id", "") == "hrm")
            std::cout << "server model: " << m.value("arch", "?") << " on " << m.value("device", "?") << " (" << m.value("dtype", "?")
                      << "), max_steps " << m.value("max_steps", 0) << ", halting " << m.value("halting", "?") << "\n";
      } catch (const Json::exception&) {
      }
    } else {
      throw IoError(settings.url + "/v1/models: " +
                    (models ? "HTTP " + std::to_string(models->status) + " " + models->body.substr(0, 200) : httplib::to_string(models.error())));
    }

    // ---- the puzzles and their reference answers, one direct solve each ----
    HrmSolverOptions options;
    options.device = a.get("device");
    options.threads = static_cast<int>(a.get_int("threads"));
    const HrmSolver solver = HrmSolver::load(checkpoint, options);
    const auto& info = solver.info();
    if (info.seq_len != 81 || info.vocab_size != 11) throw UsageError(checkpoint + ": not a Sudoku model (seq_len " + std::to_string(info.seq_len) + ")");
    std::vector<Reference> refs;
    for (int64_t i = 0; i < puzzles; ++i) {
      Reference r;
      r.puzzle = sudoku::generate(settings.seed + static_cast<uint64_t>(i), clues);
      r.puzzle_text = sudoku::format(r.puzzle);
      r.body = Json{{"puzzle", r.puzzle_text}}.dump();
      refs.push_back(std::move(r));
    }
    solver.solve(PuzzleInput{refs[0].puzzle, 0});  // warm-up, not timed
    const auto direct_start = Clock::now();
    int64_t solved = 0, steps = 0;
    for (auto& r : refs) {
      r.solution = solver.solve(PuzzleInput{r.puzzle, 0});
      r.solution_text = sudoku::format(r.solution.tokens);
      r.solved = sudoku::check(r.puzzle, r.solution.tokens).solved();
      solved += r.solved;
      steps += r.solution.steps;
    }
    const double reference_seconds = ms_between(direct_start, Clock::now()) / 1000.0;

    // The in-process baseline: solve() one puzzle at a time, over the puzzles again and again for
    // at least 3 s (and every puzzle once); then all of them as one batch (the batching ceiling).
    struct Direct {
      int64_t solves = 0;
      double seconds = 0.0, median_ms = 0.0, batch_puzzles_per_s = 0.0;
    } direct;
    if (a.has("sequential-baseline")) {
      std::vector<double> times;
      const auto start = Clock::now();
      for (size_t i = 0; times.size() < refs.size() || ms_between(start, Clock::now()) < 3000.0; ++i) {
        const auto t0 = Clock::now();
        solver.solve(PuzzleInput{refs[i % refs.size()].puzzle, 0});
        times.push_back(ms_between(t0, Clock::now()));
      }
      direct.seconds = ms_between(start, Clock::now()) / 1000.0;
      direct.solves = static_cast<int64_t>(times.size());
      std::sort(times.begin(), times.end());
      direct.median_ms = percentile(times, 0.5);
      std::vector<PuzzleInput> all;
      for (const auto& r : refs) all.push_back(PuzzleInput{r.puzzle, 0});
      solver.solve(all);  // warm-up at this batch size
      double best = 0.0;
      for (int rep = 0; rep < 3; ++rep) {
        const auto t0 = Clock::now();
        solver.solve(all);
        const double s = ms_between(t0, Clock::now()) / 1000.0;
        if (s > 0) best = std::max(best, static_cast<double>(all.size()) / s);
      }
      direct.batch_puzzles_per_s = best;
    }
    std::cout << "reference: " << info.arch << " on " << info.device << " (" << info.dtype << "), " << puzzles << " puzzles of "
              << clues << " clues (seeds " << settings.seed << ".." << settings.seed + static_cast<uint64_t>(puzzles) - 1 << "), "
              << solved << " solved, mean steps " << fixed(static_cast<double>(steps) / static_cast<double>(puzzles), 2) << " (solved alone in "
              << fixed(reference_seconds, 2) << " s)\n"
              << "per level: " << (settings.seconds > 0 ? fixed(settings.seconds, 0) + " s" : std::to_string(settings.requests) + " requests")
              << ", concurrency " << a.get("concurrency") << ", " << warmup << " warm-up requests first\n"
              << std::flush;

    bool failed = false;
    std::vector<LevelResult> results;
    if (warmup > 0) {
      Settings w = settings;
      w.requests = warmup;
      w.seconds = 0.0;
      const LevelResult r = run_level(1, w, refs, 0);
      if (r.ok != r.sent) {
        failed = true;
        std::cout << "warm-up: " << r.sent - r.ok << " of " << r.sent << " requests failed\n";
        for (const auto& p : r.problems) std::cout << "  " << p << "\n";
      }
    }
    if (baseline && std::find(levels.begin(), levels.end(), 1) == levels.end()) levels.insert(levels.begin(), 1);
    for (size_t i = 0; i < levels.size(); ++i) {
      std::cerr << "hrmclara_load: concurrency " << levels[i] << "..." << std::endl;
      results.push_back(run_level(levels[i], settings, refs, i + 1));
    }

    std::cout << "\n" << pad("conc", 5) << pad("requests", 9) << pad("secs", 8) << pad("req/s", 9) << pad("p50 ms", 9) << pad("p90 ms", 9)
              << pad("p99 ms", 9) << pad("max ms", 9) << pad("batch", 8) << pad("bmax", 6) << pad("mismatch", 9) << pad("lost", 6)
              << pad("non200", 8) << "\n";
    for (const auto& r : results) print_row(r);
    if (baseline) {
      double c1 = 0.0;
      for (const auto& r : results)
        if (r.concurrency == 1) c1 = level_json(r)["throughput_rps"].get<double>();
      const double direct_rate = direct.seconds > 0 ? static_cast<double>(direct.solves) / direct.seconds : 0.0;
      std::cout << "\nsequential baseline: server at concurrency 1: " << fixed(c1, 1)
                << " req/s; direct library solve() in-process, one at a time: " << fixed(direct_rate, 1) << " solves/s (median "
                << fixed(direct.median_ms, 2) << " ms, " << direct.solves << " solves in " << fixed(direct.seconds, 1) << " s)"
                << "; direct solve() of all " << puzzles << " puzzles as one batch: " << fixed(direct.batch_puzzles_per_s, 1)
                << " puzzles/s\n";
      std::cout << Json{{"baseline", "sequential"}, {"server_c1_rps", c1}, {"direct_solves_per_s", direct_rate},
                        {"direct_median_ms", direct.median_ms}, {"direct_solves", direct.solves},
                        {"direct_batch_puzzles_per_s", direct.batch_puzzles_per_s}, {"direct_batch_size", puzzles}}
                       .dump()
                << "\n";
    }
    std::cout << "\n";
    for (const auto& r : results) std::cout << level_json(r).dump() << "\n";
    for (const auto& r : results) {
      if (r.mismatches || r.lost || r.bad_status) failed = true;
      if (r.problems.empty()) continue;
      std::cout << "\nconcurrency " << r.concurrency << ": " << r.mismatches << " mismatch(es), " << r.lost << " lost, " << r.bad_status
                << " non-200; the first " << r.problems.size() << ":\n";
      for (const auto& p : r.problems) std::cout << "  " << p << "\n";
    }
    std::cout << (failed ? "FAIL: not every reply was" : "ok: every reply was") << " a 200 with the direct call's tokens, steps and solution\n";
    std::cout << std::flush;
    return failed ? 1 : 0;
  });
}
