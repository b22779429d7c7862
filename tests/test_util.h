// Helpers shared by the test suites: fixture paths, scratch folders, running tools.
#pragma once

#include <gtest/gtest.h>
#include <hrmclara/tensor_io.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
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
  // HRMCLARA_TEST_PYTHON in the environment overrides the configured one ("" = none).
  const char* from_env = std::getenv("HRMCLARA_TEST_PYTHON");
  const std::string python = from_env ? from_env : HRMCLARA_TEST_PYTHON;
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

// Same dtype, shape and values, with what differs in the failure message. (Tensor::equal alone
// is true across dtypes: an int64 tensor "equals" float32 and bf16 ones holding the same numbers.)
inline testing::AssertionResult same_tensor(const at::Tensor& got, const at::Tensor& want) {
  if (got.scalar_type() != want.scalar_type())
    return testing::AssertionFailure() << "dtype " << got.scalar_type() << ", expected " << want.scalar_type();
  if (got.sizes() != want.sizes()) return testing::AssertionFailure() << "shape " << got.sizes() << ", expected " << want.sizes();
  if (!got.equal(want)) return testing::AssertionFailure() << "values differ";
  return testing::AssertionSuccess();
}

// The largest absolute difference relative to the largest magnitude of `want` (in float64).
inline double rel_error(const at::Tensor& got, const at::Tensor& want) {
  const double scale = std::max(want.abs().max().item<double>(), 1e-12);
  return (got.detach().to(at::kDouble) - want.to(at::kDouble)).abs().max().item<double>() / scale;
}

// Same names in the same order, and per tensor the same dtype, shape and values.
inline void expect_same_tensors(const NamedTensors& got, const NamedTensors& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    const auto& [name, g] = got[i];
    const auto& w = want[i].second;
    EXPECT_EQ(name, want[i].first);
    EXPECT_TRUE(same_tensor(g, w)) << name;
  }
}

// Skips the test when no Python with torch is configured; the test binaries' main turns a skip
// into a failure unless HRMCLARA_ALLOW_SKIPS=1 (CI installs Python, so there it never skips).
#define REQUIRE_PYTHON() \
  if (::hrmclara::test::test_python().empty()) GTEST_SKIP() << "no Python with torch configured (HRMCLARA_PYTHON)"

// What Python reads from a file of ours: runs `load` (a Python expression over the variable `path`
// giving a dict of name -> tensor, e.g. "torch.load(path, weights_only=True)") and writes each
// tensor, as Python sees it, with the safetensors package; returns those tensors by name, and the
// Python type name of the loaded object in `type_name`.
inline std::map<std::string, at::Tensor> as_python_reads_it(const std::string& file, const std::string& load,
                                                            const std::string& scratch, std::string* type_name = nullptr) {
  const std::string out = scratch + "/python_view.safetensors";
  const auto r = run_python("import torch, safetensors.torch as st; path = '" + file + "'; sd = " + load +
                                "; print(type(sd).__name__); st.save_file({k: v.detach().contiguous() for k, v in sd.items()}, '" +
                                out + "')",
                            scratch);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  if (type_name) *type_name = r.out.substr(0, r.out.find('\n'));
  std::map<std::string, at::Tensor> by_name;
  if (r.exit_code != 0) return by_name;
  for (auto& [k, v] : read_safetensors(out)) by_name[k] = v;
  return by_name;
}

// Every tensor of `want` is in `got` under its name with the same dtype, shape and values, and
// `got` holds nothing else.
inline void expect_same_tensor_map(const std::map<std::string, at::Tensor>& got, const NamedTensors& want) {
  EXPECT_EQ(got.size(), want.size());
  for (const auto& [name, t] : want) {
    auto it = got.find(name);
    if (it == got.end()) {
      ADD_FAILURE() << "missing " << name;
      continue;
    }
    EXPECT_TRUE(same_tensor(it->second, t)) << name;
  }
}

inline int count_lines(const std::string& text) {
  int n = 0;
  for (char c : text) n += c == '\n';
  return n;
}

}  // namespace hrmclara::test
