// numpy .npy files without LibTorch: the header (format versions 1.0-3.0 read, 1.0 written) and
// raw C-order arrays of plain numeric dtypes. tensor_io.h's read_npy/write_npy use this header
// parser and formatter, so there is one .npy implementation.
//
// Every function that takes a path throws IoError (missing, unreadable, unwritable) or
// FormatError (bad magic, truncated, unsupported dtype or order) whose message starts with it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

namespace hrmclara::npy {

// The parsed dictionary of a .npy header.
struct Header {
  std::string descr;        // as written, e.g. "|u1", "<i4", ">f8"; only simple (non-structured) dtypes
  bool fortran_order = false;
  std::vector<int64_t> shape;  // () for a scalar
  uint64_t data_offset = 0;    // bytes from the start of the file to the array data
  int version = 1;             // major format version

  char byte_order() const { return descr.empty() ? '|' : descr[0]; }  // '<', '>', '|' or '='
  char kind() const { return descr.size() > 1 ? descr[1] : '?'; }     // 'b', 'i', 'u', 'f', 'c', ...
  // The element size in bytes (the digits after the kind).
  size_t item_size() const;
  // Product of the shape (1 for a scalar).
  uint64_t numel() const;
};

// Parses the magic, version and header dictionary of the .npy bytes `data[0, size)`. `path` only
// names the file in errors. Checks the dict's syntax and that the header fits in `size`, but not
// the dtype, the byte order or that the data is complete (the callers decide what they accept).
Header parse_header(const char* data, uint64_t size, const std::string& path);

// The magic, version 1.0 and the padded header dict numpy writes for a C-order array, e.g.
// "{'descr': '<i4', 'fortran_order': False, 'shape': (3, 4), }" padded with spaces and a final
// newline so that the data starts on a 64-byte boundary. Throws FormatError if `descr` is not a
// simple dtype string or the header would not fit version 1.0.
std::string format_header(const std::string& descr, const std::vector<int64_t>& shape);

// Throws FormatError naming `path` unless the array is one read() accepts: C order, kind b
// (b1), i or u (1, 2, 4, 8 bytes) or f (2, 4, 8 bytes), little-endian or single-byte, and the
// file (of `file_size` bytes) holds all numel * item size data bytes after the header.
void require_supported(const Header& header, uint64_t file_size, const std::string& path);

// numel * item size, throwing FormatError naming `where` on negative dimensions or overflow.
uint64_t checked_nbytes(const std::vector<int64_t>& shape, size_t item_size, const std::string& where);

// The descr of a C++ element type on a little-endian machine: uint8_t "|u1", int8_t "|i1",
// int16_t "<i2", int32_t "<i4", int64_t "<i8", float "<f4", double "<f8", bool "|b1".
template <typename T>
const char* descr_of();

// A whole array in memory: descr (normalised so that 1-byte types read '|' and '=' reads '<'),
// shape and the raw little-endian C-order bytes.
struct Array {
  std::string descr;
  std::vector<int64_t> shape;
  std::string bytes;

  uint64_t numel() const;
  // A typed view; throws FormatError when T's descr differs from `descr`.
  template <typename T>
  const T* data() const;
  // Every element of an integer or bool array converted to int64 (throws FormatError for floats).
  std::vector<int64_t> to_int64() const;
};

// Reads a .npy (versions 1-3) that require_supported() accepts; refuses Fortran order,
// big-endian multi-byte data, other kinds (complex, strings, objects, structured) and truncated
// data with FormatError naming the file.
Array read(const std::string& path);

// Writes a C-order array as .npy version 1.0, atomically (files.h). `nbytes` must equal
// numel(shape) * item size of `descr`; the descr must be one read() accepts.
void write(const std::string& path, const std::string& descr, const std::vector<int64_t>& shape,
           const void* data, uint64_t nbytes);

template <typename T>
void write(const std::string& path, const std::vector<int64_t>& shape, const std::vector<T>& values) {
  static_assert(std::is_arithmetic<T>::value && !std::is_same<T, bool>::value, "npy::write needs a numeric element type");
  write(path, descr_of<T>(), shape, values.data(), static_cast<uint64_t>(values.size()) * sizeof(T));
}

// Writes a C-order array row by row when the number of rows is not known in advance (the
// builders stream hundreds of MB this way). The data go to `path.tmp-<pid>`; finish() writes the
// header with the final shape [rows, row_shape...] over a reserved, space-padded header and
// renames the file into place. A writer destroyed without finish() removes its temp file.
class StreamWriter {
 public:
  StreamWriter(std::string path, std::string descr, std::vector<int64_t> row_shape);
  ~StreamWriter();
  StreamWriter(const StreamWriter&) = delete;
  StreamWriter& operator=(const StreamWriter&) = delete;

  // Appends whole rows: `nbytes` must be a multiple of the row size.
  void append(const void* data, uint64_t nbytes);
  int64_t rows() const { return rows_; }
  const std::string& path() const { return path_; }
  void finish();

 private:
  struct Impl;
  std::string path_, tmp_, descr_;
  std::vector<int64_t> row_shape_;
  uint64_t row_bytes_ = 0, header_bytes_ = 0;
  int64_t rows_ = 0;
  std::unique_ptr<Impl> impl_;
};

}  // namespace hrmclara::npy
