// Shared by the libFuzzer harnesses in fuzz/ (see fuzz/README.md).
//
// Every harness hands the fuzzer's bytes to a real reader of the library, through a file in a
// private work directory (the readers take paths). A typed library error (hrmclara::Error and its
// subclasses: the contract of include/hrmclara/errors.h for bad input) is a normal outcome; any
// other exception is a finding: it is reported with its type and message, then the harness
// aborts so that libFuzzer saves the input. Crashes, sanitizer reports, leaks, timeouts and
// out-of-memory are findings by themselves.
#pragma once

#include <hrmclara/errors.h>

#include <cxxabi.h>
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <typeinfo>
#include <vector>

namespace hrmclara_fuzz {

// The repository root (fixtures, presets), compiled in by fuzz/CMakeLists.txt; the environment
// variable HRMCLARA_SOURCE_DIR overrides it.
inline std::string source_dir() {
  if (const char* env = std::getenv("HRMCLARA_SOURCE_DIR"); env && *env) return env;
#ifdef HRMCLARA_FUZZ_SOURCE_DIR
  return HRMCLARA_FUZZ_SOURCE_DIR;
#else
  return ".";
#endif
}

[[noreturn]] inline void die(const std::string& what) {
  std::fprintf(stderr, "\n==hrmclara-fuzz== FINDING: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}

inline void remove_tree(const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) return;
  if (S_ISDIR(st.st_mode)) {
    if (DIR* d = ::opendir(path.c_str())) {
      std::vector<std::string> names;
      while (const dirent* e = ::readdir(d))
        if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) names.emplace_back(e->d_name);
      ::closedir(d);
      for (const auto& n : names) remove_tree(path + "/" + n);
    }
    ::rmdir(path.c_str());
  } else {
    ::unlink(path.c_str());
  }
}

// This process's scratch directory: $TMPDIR, else /dev/shm (memory, no disk wear), else /tmp.
// Removed at normal exit; a crashed run leaves one small directory behind.
class WorkDir {
 public:
  static WorkDir& get() {
    static WorkDir dir;
    return dir;
  }
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  WorkDir() {
    std::string base;
    if (const char* t = std::getenv("TMPDIR"); t && *t && ::access(t, W_OK) == 0) base = t;
    else if (::access("/dev/shm", W_OK) == 0) base = "/dev/shm";
    else base = "/tmp";
    std::string templ = base + "/hrmclara-fuzz-XXXXXX";
    std::vector<char> buf(templ.begin(), templ.end());
    buf.push_back('\0');
    if (!::mkdtemp(buf.data())) die("cannot create a work directory under " + base);
    path_ = buf.data();
    std::atexit([] { remove_tree(WorkDir::get().path_); });
  }
  std::string path_;
};

// Writes `bytes` to `path` (replacing it); aborts when that fails (a broken harness, not a finding).
inline void write_file(const std::string& path, const void* data, size_t size) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) die("harness cannot write " + path);
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = ::write(fd, p, size);
    if (n <= 0) die("harness cannot write " + path);
    p += n;
    size -= static_cast<size_t>(n);
  }
  ::close(fd);
}
inline void write_file(const std::string& path, const std::string& bytes) { write_file(path, bytes.data(), bytes.size()); }

inline std::string read_whole_file(const std::string& path) {
  std::string out;
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) die("harness cannot read " + path);
  char buf[65536];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) out.append(buf, n);
  std::fclose(f);
  return out;
}

// Inputs made of several files: the parts are separated by kSeparator (a line "--8<--"). fuzz/seeds.py
// writes seeds this way; the dictionaries hold the separator so mutations can add and drop parts.
inline const std::string kSeparator = "\n--8<--\n";
// A part that is exactly this means "no such file" (the reader sees the file absent).
inline const std::string kAbsent = "@absent";

inline std::vector<std::string> split_parts(const uint8_t* data, size_t size, size_t max_parts) {
  const std::string all(reinterpret_cast<const char*>(data), size);
  std::vector<std::string> parts;
  size_t start = 0;
  while (parts.size() + 1 < max_parts) {
    const size_t at = all.find(kSeparator, start);
    if (at == std::string::npos) break;
    parts.push_back(all.substr(start, at - start));
    start = at + kSeparator.size();
  }
  parts.push_back(all.substr(start));
  return parts;
}

// Writes part `i` of `parts` to `path`, or removes `path` when the part is missing or kAbsent.
inline void write_part(const std::vector<std::string>& parts, size_t i, const std::string& path) {
  ::unlink(path.c_str());
  if (i < parts.size() && parts[i] != kAbsent) write_file(path, parts[i]);
}

// Lines of `text` ('\n'-separated, a trailing '\r' dropped, empty lines skipped), at most `max`.
inline std::vector<std::string> lines_of(const std::string& text, size_t max) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= text.size() && out.size() < max) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(start, end - start);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (!line.empty()) out.push_back(line);
    start = end + 1;
  }
  return out;
}

inline std::string demangled(const char* name) {
  int status = 0;
  char* d = abi::__cxa_demangle(name, nullptr, nullptr, &status);
  std::string out = status == 0 && d ? d : name;
  std::free(d);
  return out;
}

// Runs `body`; a hrmclara::Error is fine, any other exception is a finding.
template <typename F>
void expect_typed_errors(const char* what, F&& body) {
  try {
    body();
  } catch (const hrmclara::Error&) {
    // The documented outcome for bad input.
  } catch (const std::exception& e) {
    die(std::string(what) + ": untyped exception " + demangled(typeid(e).name()) + " escaped: " + e.what());
  } catch (...) {
    die(std::string(what) + ": an exception that is not a std::exception escaped");
  }
}

// Reads every byte of `n` bytes at `p` in instrumented code, so AddressSanitizer checks the whole
// range (the library's own checks decide what a tensor may point at; reading it here catches a
// view that reaches past its buffer even where LibTorch, which is not instrumented, would not).
inline uint8_t touch_bytes(const void* p, size_t n) {
  const volatile uint8_t* b = static_cast<const volatile uint8_t*>(p);
  uint8_t acc = 0;
  for (size_t i = 0; i < n; ++i) acc ^= b[i];
  return acc;
}

}  // namespace hrmclara_fuzz
