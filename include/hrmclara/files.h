// Small file helpers shared by every reader and writer, with errors that name the file.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace hrmclara {

// Size caps for files read whole into memory. A regular file's size is known before it is read,
// so these bound memory up front; a config of a gigabyte is an error, not something to parse.
constexpr std::uint64_t kMaxWholeFileBytes = std::uint64_t{4} << 30;  // PDFs, predictions, metrics
constexpr std::uint64_t kMaxConfigFileBytes = std::uint64_t{256} << 20;  // JSON/YAML configs, indexes

// Checks, without opening it, that `path` names a regular file (symlinks followed) of at most
// `max_bytes`, and returns its size. A FIFO (open() would block forever), a device such as
// /dev/zero (reads without end), a socket or a directory is refused with an IoError naming the
// file; so is a larger file.
std::uint64_t require_regular_file(const std::string& path, std::uint64_t max_bytes = UINT64_MAX);

// Whole file as bytes, after require_regular_file(path, max_bytes); IoError naming the file if it
// is missing, unreadable, not a regular file or too large.
std::string read_file(const std::string& path, std::uint64_t max_bytes = kMaxWholeFileBytes);

// Writes `path` by writing `path.tmp-<pid>` through `writer`, flushing it, and renaming it into
// place, so a crash never leaves a half-written file where a good one was. On failure the temp
// file is removed and the error rethrown.
void write_atomically(const std::string& path, const std::function<void(const std::string& tmp_path)>& writer);

// Writes bytes atomically.
void write_file_atomically(const std::string& path, const std::string& bytes);

bool file_exists(const std::string& path);

// "a/b/c" -> "a/b"; a bare name -> ".".
std::string parent_directory(const std::string& path);
// `path` itself when it is a directory, else its parent (where a checkpoint's config lives).
std::string containing_directory(const std::string& path);

// Directory operations on POSIX calls. Not std::filesystem: the PyPI torch wheel's libtorch.so
// exports its own copies of std::filesystem's free functions (remove_all, create_directory,
// rename, ...), which win symbol resolution over libstdc++'s and crash (remove_all calls a null
// function). Every error is an IoError naming the path.
void make_directories(const std::string& path);   // mkdir -p
void remove_tree(const std::string& path);        // rm -rf; a missing path is fine
void rename_path(const std::string& from, const std::string& to);  // rename(2): atomic on one filesystem
std::vector<std::string> list_directory(const std::string& path);  // entry names, sorted, no . or ..
void copy_file(const std::string& from, const std::string& to);    // bytes, written atomically
bool is_directory(const std::string& path);
std::uint64_t file_size(const std::string& path);

// A read-only view of a whole regular file through mmap (copy-on-write, so the pages may be handed to
// tensors that are written to without touching the file). Move-only.
class MappedFile {
 public:
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  char* data() const { return data_; }
  std::uint64_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  char* data_ = nullptr;
  std::uint64_t size_ = 0;
};

}  // namespace hrmclara
