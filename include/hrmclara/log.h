// Logging. spdlog does the work, but only inside src/core/log.cpp: LibTorch ships its own (newer)
// fmt headers, which shadow the fmt that Debian's spdlog is built against, so no translation unit
// that sees torch's include path may include spdlog. Everyone logs through these functions.
#pragma once

#include <string>

namespace hrmclara {

enum class LogLevel { kTrace, kDebug, kInfo, kWarn, kError };

// Sets the global level from trace|debug|info|warn|error|off; throws UsageError otherwise.
void set_log_level(const std::string& level);
bool log_enabled(LogLevel level);
void log_message(LogLevel level, const std::string& message);

inline void log_debug(const std::string& m) { log_message(LogLevel::kDebug, m); }
inline void log_info(const std::string& m) { log_message(LogLevel::kInfo, m); }
inline void log_warn(const std::string& m) { log_message(LogLevel::kWarn, m); }
inline void log_error(const std::string& m) { log_message(LogLevel::kError, m); }

}  // namespace hrmclara
