#include <hrmclara/errors.h>
#include <hrmclara/files.h>

#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <algorithm>

namespace hrmclara {

namespace {
std::string errno_text() { return std::strerror(errno); }
}  // namespace

std::uint64_t require_regular_file(const std::string& path, std::uint64_t max_bytes) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) throw IoError(path + ": cannot open (" + errno_text() + ")");
  if (S_ISDIR(st.st_mode)) throw IoError(path + ": is a directory, not a file");
  if (S_ISFIFO(st.st_mode)) throw IoError(path + ": is a FIFO, not a regular file");
  if (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode)) throw IoError(path + ": is a device, not a regular file");
  if (!S_ISREG(st.st_mode)) throw IoError(path + ": is not a regular file");
  const auto size = static_cast<std::uint64_t>(st.st_size);
  if (size > max_bytes)
    throw IoError(path + ": " + std::to_string(size) + " bytes, more than the " + std::to_string(max_bytes) +
                  " this kind of file may have");
  return size;
}

std::string read_file(const std::string& path, std::uint64_t max_bytes) {
  const std::uint64_t size = require_regular_file(path, max_bytes);
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError(path + ": cannot open (" + errno_text() + ")");
  std::string out;
  out.reserve(size);
  // Read at most one byte past the size stat() reported: a file that grows meanwhile is cut, not
  // followed without bound.
  out.resize(size + 1);
  in.read(out.data(), static_cast<std::streamsize>(out.size()));
  if (in.bad()) throw IoError(path + ": read failed");
  out.resize(static_cast<size_t>(in.gcount()));
  if (out.size() > size) throw IoError(path + ": changed size while it was read");
  return out;
}

void write_atomically(const std::string& path, const std::function<void(const std::string&)>& writer) {
  const std::string tmp = path + ".tmp-" + std::to_string(::getpid());
  try {
    writer(tmp);
    // Flush the temp file's data to disk before the rename makes it visible.
    int fd = ::open(tmp.c_str(), O_RDONLY);
    if (fd < 0) throw IoError(tmp + ": not written (" + errno_text() + ")");
    ::fsync(fd);
    ::close(fd);
    if (std::rename(tmp.c_str(), path.c_str()) != 0)
      throw IoError(path + ": cannot rename temp file into place (" + errno_text() + ")");
  } catch (...) {
    std::remove(tmp.c_str());
    throw;
  }
}

void write_file_atomically(const std::string& path, const std::string& bytes) {
  write_atomically(path, [&](const std::string& tmp) {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw IoError(path + ": cannot write (" + errno_text() + ")");
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.close();
    if (!out) throw IoError(path + ": write failed (" + errno_text() + ")");
  });
}

std::string parent_directory(const std::string& path) {
  const auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

std::string containing_directory(const std::string& path) {
  return is_directory(path) ? path : parent_directory(path);
}

void make_directories(const std::string& path) {
  if (path.empty() || is_directory(path)) return;
  const auto slash = path.find_last_of('/');
  if (slash != std::string::npos && slash > 0) make_directories(path.substr(0, slash));
  if (::mkdir(path.c_str(), 0777) != 0 && !(errno == EEXIST && is_directory(path)))
    throw IoError(path + ": cannot create directory (" + errno_text() + ")");
}

std::vector<std::string> list_directory(const std::string& path) {
  DIR* dir = ::opendir(path.c_str());
  if (!dir) throw IoError(path + ": cannot list directory (" + errno_text() + ")");
  std::vector<std::string> names;
  while (const dirent* e = ::readdir(dir)) {
    const std::string name = e->d_name;
    if (name != "." && name != "..") names.push_back(name);
  }
  ::closedir(dir);
  std::sort(names.begin(), names.end());
  return names;
}

void remove_tree(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return;
    throw IoError(path + ": cannot remove (" + errno_text() + ")");
  }
  if (S_ISDIR(st.st_mode)) {
    for (const auto& name : list_directory(path)) remove_tree(path + "/" + name);
    if (::rmdir(path.c_str()) != 0) throw IoError(path + ": cannot remove directory (" + errno_text() + ")");
  } else if (::unlink(path.c_str()) != 0) {
    throw IoError(path + ": cannot remove (" + errno_text() + ")");
  }
}

void rename_path(const std::string& from, const std::string& to) {
  if (::rename(from.c_str(), to.c_str()) != 0)
    throw IoError(from + ": cannot rename to " + to + " (" + errno_text() + ")");
}

void copy_file(const std::string& from, const std::string& to) {
  write_file_atomically(to, read_file(from, UINT64_MAX));
}

bool file_exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

bool is_directory(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::uint64_t file_size(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) throw IoError(path + ": cannot stat (" + errno_text() + ")");
  return static_cast<std::uint64_t>(st.st_size);
}

MappedFile::MappedFile(const std::string& path) : path_(path) {
  require_regular_file(path);
  // O_NONBLOCK: should the path turn into a FIFO after the check, open() still returns at once and
  // fstat() below refuses it.
  int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) throw IoError(path + ": cannot open (" + errno_text() + ")");
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw IoError(path + ": not a regular file");
  }
  size_ = static_cast<std::uint64_t>(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      ::close(fd);
      throw IoError(path + ": mmap failed (" + errno_text() + ")");
    }
    data_ = static_cast<char*>(p);
  }
  ::close(fd);
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(data_, size_);
}

}  // namespace hrmclara
