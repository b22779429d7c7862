// Typed errors. Library code never exits or aborts: it throws one of these, and the thin mains in
// src/tools turn it into a single line on stderr and a non-zero exit code (see cli.h).
#pragma once

#include <stdexcept>
#include <string>

namespace hrmclara {

// The error contract. Every tool reports bad input as exactly one line on stderr,
//   <tool>: error: <file or field>: <what is wrong>
// and exits with the code of its class, so scripts can tell the classes apart; nothing is written
// where an output was asked for (outputs are written to a temp file and renamed), and a good
// existing output is never replaced by a failed run. Crashes, hangs and unbounded memory on any
// input are bugs: readers check sizes, depths and ranges before they allocate, index or narrow.
// tests/tools/test_error_contract.cpp walks a table of bad inputs through every tool.
//   1 kFailure  anything unclassified (out of memory included)
//   2 kUsage    bad flags: unknown, missing, malformed or out of range (--threads, --steps,
//               --max-new-tokens, sampling settings), checked before anything loads
//   3 kIo       a file is missing, unreadable, unwritable, not a regular file (a FIFO, a device such
//               as /dev/zero, a directory) or beyond its size cap
//   4 kFormat   a file is corrupt, truncated or of the wrong kind: a zip record failing its CRC, a
//               pickle nested too deep or containing itself, a YAML alias bomb, a malformed JSON or
//               JSONL row (file:line), ids outside the model's vocabulary or puzzle range
//   5 kConfig   a config key is unknown, missing or of the wrong type (config.json, all_config.yaml,
//               generation_config.json, key=value overrides)
//   6 kShape    tensors or state dicts do not fit the model
//   7 kDevice   the requested device is absent (or lacks a requested dtype)
//   8 kNumeric  NaN/Inf where a finite value is required: weights (named), inputs, outputs, the loss
//   9 kDistributed  a distributed run failed: another rank died or hung past the timeout, the
//               rendezvous failed (torchrun's variables, MASTER_ADDR:MASTER_PORT)
enum class ExitCode : int {
  kOk = 0,
  kFailure = 1,   // anything not classified below
  kUsage = 2,     // bad flags or arguments
  kIo = 3,        // a file is missing, unreadable or unwritable
  kFormat = 4,    // a file exists but is corrupt, truncated or of the wrong kind
  kConfig = 5,    // a config key is unknown, missing or of the wrong type
  kShape = 6,     // tensors or state dicts do not fit the model
  kDevice = 7,    // the requested device is absent
  kNumeric = 8,   // NaN/Inf where a finite value is required
  kDistributed = 9,  // another rank failed or a collective timed out
};

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what, ExitCode code = ExitCode::kFailure)
      : std::runtime_error(what), code_(code) {}
  ExitCode code() const noexcept { return code_; }

 private:
  ExitCode code_;
};

#define HRMCLARA_DEFINE_ERROR(Name, Code)                                  \
  class Name : public Error {                                              \
   public:                                                                 \
    explicit Name(const std::string& what) : Error(what, ExitCode::Code) {} \
  };

HRMCLARA_DEFINE_ERROR(UsageError, kUsage)
HRMCLARA_DEFINE_ERROR(IoError, kIo)
HRMCLARA_DEFINE_ERROR(FormatError, kFormat)
HRMCLARA_DEFINE_ERROR(ConfigError, kConfig)
HRMCLARA_DEFINE_ERROR(ShapeError, kShape)
HRMCLARA_DEFINE_ERROR(DeviceError, kDevice)
HRMCLARA_DEFINE_ERROR(NumericError, kNumeric)
HRMCLARA_DEFINE_ERROR(DistributedError, kDistributed)

#undef HRMCLARA_DEFINE_ERROR

// The first line of an exception message (LibTorch's messages carry backtraces), trailing spaces
// removed: what the one-line error reports quote. In src/core/errors.cpp.
std::string first_line(const std::string& text);

}  // namespace hrmclara
