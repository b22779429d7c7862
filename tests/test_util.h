// Helpers shared by the test suites: fixture paths, scratch folders, running tools.
#pragma once

#include <gtest/gtest.h>
#include <hrmclara/tensor_io.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <string>
#include <sys/wait.h>
#include <unistd.h>

namespace hrmclara::test {

inline std::string fixture(const std::string& relative) { return std::string(HRMCLARA_TEST_FIXTURES) + "/" + relative; }
inline std::string tool(const std::string& name) { return std::string(HRMCLARA_TOOL_DIR) + "/" + name; }

// A fresh folder under the build's temp space, removed at the end of the test.
class ScratchDir {
 public:
  ScratchDir() {
    std::string pattern = (std::getenv("TMPDIR") ? std::string(std::getenv("TMPDIR")) : "/tmp") + "/hrmclara-test-XXXXXX";
    char* made = mkdtemp(pattern.data());
    if (!made) throw std::runtime_error("mkdtemp failed");
    path_ = made;
  }
  ~ScratchDir() { std::system(("rm -rf '" + path_ + "'").c_str()); }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

inline std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

struct CommandResult {
  int exit_code = -1;
  std::string out, err;
};

// Runs a shell command, capturing stdout and stderr separately.
inline CommandResult run_command(const std::string& command, const std::string& scratch) {
  const std::string out_file = scratch + "/.stdout", err_file = scratch + "/.stderr";
  const int status = std::system((command + " >'" + out_file + "' 2>'" + err_file + "'").c_str());
  CommandResult r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = read_bytes(out_file);
  r.err = read_bytes(err_file);
  return r;
}

// Python with torch (the set-up's venv), for tests that check Python reads what we write; empty
// when the build was configured without one.
inline std::string test_python() {
  const std::string python = HRMCLARA_TEST_PYTHON;
  return !python.empty() && access(python.c_str(), X_OK) == 0 ? python : "";
}

// Runs `code` (no double quotes inside) with test_python().
inline CommandResult run_python(const std::string& code, const std::string& scratch) {
  return run_command(test_python() + " -c \"" + code + "\"", scratch);
}

// The message of the E that `f` throws; a test failure if it throws nothing or something else.
template <typename E>
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
    return "";
  }
  ADD_FAILURE() << "no exception thrown";
  return "";
}

// Same names in the same order, and equal values (dtype and shape included).
inline void expect_same_tensors(const NamedTensors& got, const NamedTensors& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(got[i].first, want[i].first);
    EXPECT_TRUE(got[i].second.equal(want[i].second)) << want[i].first;
  }
}

inline int count_lines(const std::string& text) {
  int n = 0;
  for (char c : text) n += c == '\n';
  return n;
}

}  // namespace hrmclara::test
