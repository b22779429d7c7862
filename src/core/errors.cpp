#include <hrmclara/errors.h>

namespace hrmclara {

std::string first_line(const std::string& text) {
  auto end = text.find('\n');
  std::string line = end == std::string::npos ? text : text.substr(0, end);
  while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
  return line;
}

}  // namespace hrmclara
