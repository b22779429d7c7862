// Typed errors. Library code never exits or aborts: it throws one of these, and the thin mains in
// src/tools turn it into a single line on stderr and a non-zero exit code (see cli.h).
#pragma once

#include <stdexcept>
#include <string>

namespace hrmclara {

// Exit codes the mains use, one per error family, so scripts can tell them apart.
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

#undef HRMCLARA_DEFINE_ERROR

}  // namespace hrmclara
