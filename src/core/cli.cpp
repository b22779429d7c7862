#include <hrmclara/cli.h>
#include <hrmclara/errors.h>
#include <hrmclara/files.h>
#include <hrmclara/info.h>
#include <hrmclara/log.h>

#include <nlohmann/json.hpp>
#include <sys/resource.h>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <iostream>

namespace hrmclara {

namespace {
constexpr long long kMaxThreadsFlag = 4096;
}  // namespace

ArgParser::ArgParser(std::string program, std::string usage)
    : program_(std::move(program)), usage_(std::move(usage)) {}

ArgParser& ArgParser::flag(const std::string& name, const std::string& help) {
  order_.push_back(name);
  specs_[name] = Spec{help, "", false};
  return *this;
}

ArgParser& ArgParser::option(const std::string& name, const std::string& help, const std::string& fallback) {
  order_.push_back(name);
  specs_[name] = Spec{help, fallback, true};
  return *this;
}

ArgParser& ArgParser::distributed_options() {
  option("dist-backend", "under torchrun: auto (NCCL on CUDA, else Gloo), gloo or nccl", "auto");
  return option("dist-timeout-s", "under torchrun: a rank that dies or hangs fails the others after this many seconds", "300");
}

ArgParser& ArgParser::common_options() {
  option("log-level", "trace|debug|info|warn|error|off", "info");
  option("device", "auto|cpu|cuda|cuda:N|mps (auto: MPS, then CUDA, then CPU)", "auto");
  option("threads", "CPU threads (0: all cores)", "0");
  return *this;
}

std::string resume_config_path(const ArgParser& args) {
  if (args.has("config") || args.has("out") || !args.positionals().empty())
    throw UsageError("--resume continues a run with its saved config; it takes no --config, --out or key=value");
  const std::string run_dir = args.get("resume"), saved = run_dir + "/config.json";
  if (!file_exists(saved)) throw IoError(saved + ": missing (is " + run_dir + " a run directory?)");
  return saved;
}

bool print_version_if_asked(const std::string& program, int argc, char** argv) {
  bool want_version = false, verbose = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    want_version = want_version || arg == "--version";
    verbose = verbose || arg == "--verbose";
  }
  if (!want_version) return false;
  std::cout << program << ": " << version_line() << "\n";
  if (verbose) std::cout << system_info_text(system_info(false));
  return true;
}

bool ArgParser::parse(int argc, char** argv, int max_positionals) {
  // The tool's own name ("llm_tool generate" reports as llm_tool).
  if (print_version_if_asked(program_.substr(0, program_.find(' ')), argc, argv)) return false;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::cout << help();
      return false;
    }
    if (arg.size() > 2 && arg.compare(0, 2, "--") == 0) {
      std::string name = arg.substr(2), value;
      bool inline_value = false;
      if (auto eq = name.find('='); eq != std::string::npos) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
        inline_value = true;
      }
      auto it = specs_.find(name);
      if (it == specs_.end()) throw UsageError("unknown option --" + name + " (see --help)");
      if (!it->second.takes_value) {
        if (inline_value) throw UsageError("option --" + name + " takes no value");
        values_[name] = "1";
        continue;
      }
      if (!inline_value) {
        if (i + 1 >= argc) throw UsageError("option --" + name + " needs a value");
        value = argv[++i];
      }
      values_[name] = value;
      continue;
    }
    positionals_.push_back(arg);
  }
  if (max_positionals >= 0 && static_cast<int>(positionals_.size()) > max_positionals)
    throw UsageError("unexpected argument '" + positionals_[static_cast<size_t>(max_positionals)] + "' (see --help)");
  if (specs_.count("log-level")) set_log_level(get("log-level"));
  // The common options are checked here, before a tool loads anything. --threads is bounded so that
  // narrowing it to int cannot wrap and OpenMP is never asked for a pool it cannot create;
  // configure_threads() then bounds it by the cores this process may use.
  if (specs_.count("threads")) {
    const long long threads = get_int("threads");
    if (threads < 0 || threads > kMaxThreadsFlag)
      throw UsageError("option --threads: " + std::to_string(threads) + " is outside [0, " + std::to_string(kMaxThreadsFlag) +
                       "] (0: every core)");
  }
  return true;
}

bool ArgParser::has(const std::string& name) const { return values_.count(name) > 0; }

std::string ArgParser::get(const std::string& name) const {
  if (auto it = values_.find(name); it != values_.end()) return it->second;
  if (auto it = specs_.find(name); it != specs_.end()) return it->second.fallback;
  return "";
}

std::string ArgParser::require(const std::string& name) const {
  if (!has(name)) throw UsageError("missing required option --" + name + " (see --help)");
  return get(name);
}

long long ArgParser::get_int(const std::string& name) const {
  const std::string text = get(name);
  try {
    size_t used = 0;
    long long v = std::stoll(text, &used);
    if (used == text.size()) return v;
  } catch (const std::exception&) {
  }
  throw UsageError("option --" + name + ": '" + text + "' is not an integer");
}

double ArgParser::get_double(const std::string& name) const {
  const std::string text = get(name);
  try {
    size_t used = 0;
    double v = std::stod(text, &used);
    if (used == text.size()) return v;
  } catch (const std::exception&) {
  }
  throw UsageError("option --" + name + ": '" + text + "' is not a number");
}

std::string ArgParser::help() const {
  std::string out = "usage: " + program_ + " " + usage_ + "\n\noptions:\n";
  for (const auto& name : order_) {
    const Spec& s = specs_.at(name);
    std::string left = "  --" + name + (s.takes_value ? " VALUE" : "");
    if (left.size() < 26) left.resize(26, ' ');
    out += left + " " + s.help;
    if (s.takes_value && !s.fallback.empty()) out += " [" + s.fallback + "]";
    out += "\n";
  }
  out += "  --help                     this text\n";
  out += "  --version [--verbose]      version (with --verbose: torch, CPU capability, BLAS, bf16/f16, devices)\n";
  return out;
}

int run_main(const std::string& program, const std::function<int()>& body) {
  try {
    return body();
  } catch (const Error& e) {
    std::cerr << program << ": error: " << first_line(e.what()) << std::endl;
    return static_cast<int>(e.code());
  } catch (const nlohmann::json::exception& e) {
    // A JSON value of an unexpected type that a reader did not check itself (a bug, but still
    // bad input): one line and the format code, not an abort.
    std::cerr << program << ": error: malformed JSON value: " << first_line(e.what()) << std::endl;
    return static_cast<int>(ExitCode::kFormat);
  } catch (const std::bad_alloc&) {
    std::cerr << program << ": error: out of memory" << std::endl;
    return static_cast<int>(ExitCode::kFailure);
  } catch (const std::exception& e) {
    std::cerr << program << ": error: " << first_line(e.what()) << std::endl;
    return static_cast<int>(ExitCode::kFailure);
  }
}

double peak_rss_mb() {
  struct rusage usage {};
  getrusage(RUSAGE_SELF, &usage);
#ifdef __APPLE__
  return usage.ru_maxrss / 1048576.0;  // bytes
#else
  return usage.ru_maxrss / 1024.0;  // KiB
#endif
}

}  // namespace hrmclara
