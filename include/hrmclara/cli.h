// What every thin main shares: a small flag parser and a runner that turns any exception into
// one line on stderr ("<tool>: error: <what>") and the error's exit code.
#pragma once

#include <hrmclara/errors.h>  // first_line

#include <functional>
#include <map>
#include <string>
#include <vector>

namespace hrmclara {

class ArgParser {
 public:
  ArgParser(std::string program, std::string usage);

  // --name (no value).
  ArgParser& flag(const std::string& name, const std::string& help);
  // --name VALUE or --name=VALUE; `fallback` is returned by get() when absent.
  ArgParser& option(const std::string& name, const std::string& help, const std::string& fallback = "");
  // Adds --log-level, --device and --threads, the options every compute tool takes.
  ArgParser& common_options();
  // Adds --dist-backend and --dist-timeout-s, the trainers' options for runs under torchrun.
  ArgParser& distributed_options();

  // Parses argv. Returns false after printing help for --help/-h, or the version for --version
  // (with --verbose: the system report of info.h). Throws UsageError for unknown
  // options or a missing value. Arguments that are not options are collected as positionals
  // (e.g. key=value overrides); `max_positionals` < 0 means any number.
  bool parse(int argc, char** argv, int max_positionals = -1);

  bool has(const std::string& name) const;  // given on the command line
  std::string get(const std::string& name) const;
  // Throws UsageError naming the option when it is absent or not a number.
  std::string require(const std::string& name) const;
  long long get_int(const std::string& name) const;
  double get_double(const std::string& name) const;
  const std::vector<std::string>& positionals() const { return positionals_; }
  std::string help() const;
  const std::string& program() const { return program_; }

 private:
  struct Spec {
    std::string help;
    std::string fallback;
    bool takes_value = true;
  };
  std::string program_, usage_;
  std::vector<std::string> order_;
  std::map<std::string, Spec> specs_;
  std::map<std::string, std::string> values_;
  std::vector<std::string> positionals_;
};

// For the trainers' --resume RUNDIR: checks that no --config, --out or key=value came with it (the
// run goes on with its saved config) and that RUNDIR/config.json exists; returns that path.
std::string resume_config_path(const ArgParser& args);

// If argv holds --version, prints "<program>: <version_line()>" (with --verbose, the system report)
// and returns true. ArgParser::parse calls it; tools with subcommands call it first.
bool print_version_if_asked(const std::string& program, int argc, char** argv);

// Runs `body` and maps exceptions to exit codes: hrmclara::Error -> its code, anything else -> 1,
// each reported as one line. Applies --log-level/--threads handling is left to the body.
int run_main(const std::string& program, const std::function<int()>& body);

// The process's peak resident memory so far, in MiB (what the benchmark tools report).
double peak_rss_mb();

}  // namespace hrmclara
