// The one function the readers need from src/core/cli.cpp, whose other parts pull in the system
// report (LibTorch, spdlog). Same text as there; keep them equal.
#include <string>

namespace hrmclara {

std::string first_line(const std::string& text) {
  auto end = text.find('\n');
  std::string line = end == std::string::npos ? text : text.substr(0, end);
  while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
  return line;
}

}  // namespace hrmclara
