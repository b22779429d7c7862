// .npy header parsing and formatting, and raw array read/write, without LibTorch.
#include <hrmclara/errors.h>
#include <hrmclara/files.h>
#include <hrmclara/npy.h>

#include <fcntl.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>

namespace hrmclara::npy {

namespace {

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? "," : "") + std::to_string(shape[i]);
  return s + "]";
}

// A descr such as "<i4": byte order, kind letter, decimal item size.
bool simple_descr(const std::string& d) {
  if (d.size() < 3 || std::strchr("<>|=", d[0]) == nullptr || !std::isalpha(static_cast<unsigned char>(d[1])))
    return false;
  for (size_t i = 2; i < d.size(); ++i)
    if (!std::isdigit(static_cast<unsigned char>(d[i]))) return false;
  return d.size() <= 6;
}

// A tiny reader of the Python literal dict in a .npy header.
class HeaderParser {
 public:
  HeaderParser(const std::string& text, const std::string& path) : s_(text), path_(path) {}

  Header parse() {
    Header h;
    bool have_descr = false, have_order = false, have_shape = false;
    skip_space();
    expect('{');
    for (;;) {
      skip_space();
      if (peek() == '}') {
        ++i_;
        break;
      }
      const std::string key = string_literal();
      skip_space();
      expect(':');
      skip_space();
      if (key == "descr") {
        if (peek() != '\'' && peek() != '"') fail("unsupported .npy dtype (structured arrays are not supported)");
        h.descr = string_literal();
        have_descr = true;
      } else if (key == "fortran_order") {
        h.fortran_order = boolean();
        have_order = true;
      } else if (key == "shape") {
        h.shape = int_tuple();
        have_shape = true;
      } else {
        skip_value();
      }
      skip_space();
      if (peek() == ',') {
        ++i_;
      } else if (peek() != '}') {
        fail("malformed .npy header (expected ',' or '}')");
      }
    }
    if (!have_descr) fail(".npy header lacks 'descr'");
    if (!have_order) fail(".npy header lacks 'fortran_order'");
    if (!have_shape) fail(".npy header lacks 'shape'");
    if (!simple_descr(h.descr)) fail("unsupported .npy dtype '" + h.descr + "'");
    return h;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const { throw FormatError(path_ + ": " + what); }
  char peek() const { return i_ < s_.size() ? s_[i_] : '\0'; }
  void skip_space() {
    while (i_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[i_]))) ++i_;
  }
  void expect(char c) {
    if (peek() != c) fail(std::string("malformed .npy header (expected '") + c + "')");
    ++i_;
  }
  std::string string_literal() {
    const char quote = peek();
    if (quote != '\'' && quote != '"') fail("malformed .npy header (expected a quoted key or string)");
    ++i_;
    std::string out;
    while (i_ < s_.size() && s_[i_] != quote) out.push_back(s_[i_++]);
    expect(quote);
    return out;
  }
  bool boolean() {
    if (s_.compare(i_, 4, "True") == 0) {
      i_ += 4;
      return true;
    }
    if (s_.compare(i_, 5, "False") == 0) {
      i_ += 5;
      return false;
    }
    fail("malformed .npy header ('fortran_order' is not True or False)");
  }
  std::vector<int64_t> int_tuple() {
    std::vector<int64_t> out;
    expect('(');
    for (;;) {
      skip_space();
      if (peek() == ')') {
        ++i_;
        return out;
      }
      if (!std::isdigit(static_cast<unsigned char>(peek()))) fail("malformed .npy header ('shape' is not a tuple of integers)");
      int64_t v = 0;
      while (std::isdigit(static_cast<unsigned char>(peek()))) {
        const int digit = s_[i_++] - '0';
        if (v > (std::numeric_limits<int64_t>::max() - digit) / 10) fail(".npy header shape dimension overflows");
        v = v * 10 + digit;
      }
      if (peek() == 'L') ++i_;  // Python 2 longs
      out.push_back(v);
      skip_space();
      if (peek() == ',') {
        ++i_;
      } else if (peek() != ')') {
        fail("malformed .npy header ('shape' is not a tuple of integers)");
      }
    }
  }
  // Skips a value of a key we do not use: a string, a name/number, or a bracketed literal.
  void skip_value() {
    int depth = 0;
    for (; i_ < s_.size(); ++i_) {
      const char c = s_[i_];
      if (c == '\'' || c == '"') {
        string_literal();
        --i_;
      } else if (c == '(' || c == '[' || c == '{') {
        ++depth;
      } else if (c == ')' || c == ']' || c == '}') {
        if (depth == 0) return;
        --depth;
      } else if (c == ',' && depth == 0) {
        return;
      }
    }
  }

  const std::string& s_;
  const std::string& path_;
  size_t i_ = 0;
};

}  // namespace

size_t Header::item_size() const {
  size_t n = 0;
  for (size_t i = 2; i < descr.size(); ++i) n = n * 10 + static_cast<size_t>(descr[i] - '0');
  return n;
}

uint64_t Header::numel() const {
  uint64_t n = 1;
  for (int64_t d : shape) n *= static_cast<uint64_t>(d);
  return n;
}

Header parse_header(const char* data, uint64_t size, const std::string& path) {
  if (size < 10 || std::memcmp(data, "\x93NUMPY", 6) != 0) throw FormatError(path + ": not a .npy file (bad magic)");
  const int major = static_cast<unsigned char>(data[6]);
  uint64_t header_len = 0, header_start = 0;
  if (major == 1) {
    header_len = static_cast<uint64_t>(static_cast<unsigned char>(data[8])) |
                 (static_cast<uint64_t>(static_cast<unsigned char>(data[9])) << 8);
    header_start = 10;
  } else if (major == 2 || major == 3) {
    if (size < 12) throw FormatError(path + ": truncated .npy header");
    for (int i = 11; i >= 8; --i) header_len = (header_len << 8) | static_cast<unsigned char>(data[i]);
    header_start = 12;
  } else {
    throw FormatError(path + ": unsupported .npy version " + std::to_string(major));
  }
  if (header_start + header_len > size) throw FormatError(path + ": truncated .npy header");
  const std::string text(data + header_start, header_len);
  Header h = HeaderParser(text, path).parse();
  h.data_offset = header_start + header_len;
  h.version = major;
  return h;
}

namespace {
// The header for `shape`, padded to `min_total` bytes (magic included) when that is longer.
std::string padded_header(const std::string& descr, const std::vector<int64_t>& shape, size_t min_total);
}  // namespace

std::string format_header(const std::string& descr, const std::vector<int64_t>& shape) {
  return padded_header(descr, shape, 0);
}

namespace {
std::string padded_header(const std::string& descr, const std::vector<int64_t>& shape, size_t min_total) {
  if (!simple_descr(descr)) throw FormatError("unsupported .npy dtype '" + descr + "'");
  // Python's tuple spelling: (), (3,), (3, 4).
  std::string dims = "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] < 0) throw FormatError("negative dimension in .npy shape " + shape_text(shape));
    dims += (i ? ", " : "") + std::to_string(shape[i]);
  }
  if (shape.size() == 1) dims += ",";
  dims += ")";
  std::string dict = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + dims + ", }";
  const size_t unpadded = 10 + dict.size() + 1;  // magic, version, length, dict, newline
  dict.append((64 - unpadded % 64) % 64, ' ');
  if (min_total > 10 + dict.size() + 1) dict.append(min_total - (10 + dict.size() + 1), ' ');
  dict.push_back('\n');
  if (dict.size() > 0xffff) throw FormatError(".npy header too long for version 1.0 (shape " + shape_text(shape) + ")");
  std::string out("\x93NUMPY\x01\x00", 8);
  out.push_back(static_cast<char>(dict.size() & 0xff));
  out.push_back(static_cast<char>((dict.size() >> 8) & 0xff));
  return out + dict;
}
}  // namespace

uint64_t checked_nbytes(const std::vector<int64_t>& shape, size_t item_size, const std::string& where) {
  // `extent` leaves zero dimensions out: an empty (0, 2^62, 2^62) array holds no bytes, but the
  // strides of its tensor would still overflow int64.
  uint64_t n = item_size, extent = item_size;
  for (int64_t d : shape) {
    if (d < 0) throw FormatError(where + ": negative dimension in shape " + shape_text(shape));
    if (d == 0) {
      n = 0;
      continue;
    }
    if (extent > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / static_cast<uint64_t>(d))
      throw FormatError(where + ": shape " + shape_text(shape) + " overflows");
    extent *= static_cast<uint64_t>(d);
    n *= static_cast<uint64_t>(d);
  }
  return n;
}

void require_supported(const Header& h, uint64_t file_size, const std::string& path) {
  if (h.fortran_order) throw FormatError(path + ": Fortran-order .npy arrays are not supported (save with C order)");
  const char kind = h.kind();
  const size_t item = h.item_size();
  bool ok = false;
  switch (kind) {
    case 'b': ok = item == 1; break;
    case 'i':
    case 'u': ok = item == 1 || item == 2 || item == 4 || item == 8; break;
    case 'f': ok = item == 2 || item == 4 || item == 8; break;
    default: break;
  }
  if (!ok) throw FormatError(path + ": unsupported .npy dtype '" + h.descr + "'");
  if (h.byte_order() == '>' && item != 1) throw FormatError(path + ": big-endian .npy data is not supported");
  const uint64_t nbytes = checked_nbytes(h.shape, item, path);
  const uint64_t have = file_size - h.data_offset;
  if (have < nbytes)
    throw FormatError(path + ": truncated .npy data (" + std::to_string(have) + " of " + std::to_string(nbytes) + " bytes)");
}

template <> const char* descr_of<uint8_t>() { return "|u1"; }
template <> const char* descr_of<int8_t>() { return "|i1"; }
template <> const char* descr_of<int16_t>() { return "<i2"; }
template <> const char* descr_of<uint16_t>() { return "<u2"; }
template <> const char* descr_of<int32_t>() { return "<i4"; }
template <> const char* descr_of<uint32_t>() { return "<u4"; }
template <> const char* descr_of<int64_t>() { return "<i8"; }
template <> const char* descr_of<uint64_t>() { return "<u8"; }
template <> const char* descr_of<float>() { return "<f4"; }
template <> const char* descr_of<double>() { return "<f8"; }
template <> const char* descr_of<bool>() { return "|b1"; }

uint64_t Array::numel() const {
  uint64_t n = 1;
  for (int64_t d : shape) n *= static_cast<uint64_t>(d);
  return n;
}

template <typename T>
const T* Array::data() const {
  if (descr != descr_of<T>())
    throw FormatError("npy array of dtype '" + descr + "' read as '" + std::string(descr_of<T>()) + "'");
  return reinterpret_cast<const T*>(bytes.data());
}

template const uint8_t* Array::data<uint8_t>() const;
template const int8_t* Array::data<int8_t>() const;
template const int16_t* Array::data<int16_t>() const;
template const uint16_t* Array::data<uint16_t>() const;
template const int32_t* Array::data<int32_t>() const;
template const uint32_t* Array::data<uint32_t>() const;
template const int64_t* Array::data<int64_t>() const;
template const uint64_t* Array::data<uint64_t>() const;
template const float* Array::data<float>() const;
template const double* Array::data<double>() const;
template const bool* Array::data<bool>() const;

namespace {
template <typename T>
void widen(const std::string& bytes, std::vector<int64_t>& out) {
  const size_t n = bytes.size() / sizeof(T);
  out.resize(n);
  for (size_t i = 0; i < n; ++i) {
    T v;
    std::memcpy(&v, bytes.data() + i * sizeof(T), sizeof(T));
    out[i] = static_cast<int64_t>(v);
  }
}
}  // namespace

std::vector<int64_t> Array::to_int64() const {
  std::vector<int64_t> out;
  const char kind = descr.size() > 1 ? descr[1] : '?';
  const std::string size = descr.size() > 2 ? descr.substr(2) : "";
  if (kind == 'b' || (kind == 'u' && size == "1")) widen<uint8_t>(bytes, out);
  else if (kind == 'i' && size == "1") widen<int8_t>(bytes, out);
  else if (kind == 'i' && size == "2") widen<int16_t>(bytes, out);
  else if (kind == 'u' && size == "2") widen<uint16_t>(bytes, out);
  else if (kind == 'i' && size == "4") widen<int32_t>(bytes, out);
  else if (kind == 'u' && size == "4") widen<uint32_t>(bytes, out);
  else if (kind == 'i' && size == "8") widen<int64_t>(bytes, out);
  else if (kind == 'u' && size == "8") {
    widen<uint64_t>(bytes, out);
    for (int64_t v : out)
      if (v < 0) throw FormatError("npy array of dtype '" + descr + "' holds a value beyond int64");
  } else {
    throw FormatError("npy array of dtype '" + descr + "' is not an integer array");
  }
  return out;
}

Array read(const std::string& path) {
  MappedFile file(path);
  const Header h = parse_header(file.data(), file.size(), path);
  require_supported(h, file.size(), path);
  Array a;
  a.descr = h.descr;
  if (h.item_size() == 1) a.descr[0] = '|';
  else if (a.descr[0] == '=') a.descr[0] = '<';
  a.shape = h.shape;
  const uint64_t nbytes = checked_nbytes(h.shape, h.item_size(), path);
  a.bytes.assign(file.data() + h.data_offset, nbytes);
  if (h.kind() == 'b')
    for (char c : a.bytes)
      if (static_cast<unsigned char>(c) > 1) throw FormatError(path + ": bool array holds values other than 0/1");
  return a;
}

void write(const std::string& path, const std::string& descr, const std::vector<int64_t>& shape, const void* data,
           uint64_t nbytes) {
  std::string bytes;
  try {
    bytes = format_header(descr, shape);
  } catch (const FormatError& e) {
    throw FormatError(path + ": " + e.what());
  }
  Header h;
  h.descr = descr;
  h.shape = shape;
  h.data_offset = bytes.size();
  require_supported(h, h.data_offset + nbytes, path);
  const uint64_t want = checked_nbytes(shape, h.item_size(), path);
  if (want != nbytes)
    throw FormatError(path + ": " + std::to_string(nbytes) + " data bytes for shape " + shape_text(shape) + " of '" +
                      descr + "' (needs " + std::to_string(want) + ")");
  // Streamed rather than concatenated: the arrays can be hundreds of MB.
  write_atomically(path, [&](const std::string& tmp) {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw IoError(path + ": cannot write");
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (nbytes) out.write(static_cast<const char*>(data), static_cast<std::streamsize>(nbytes));
    out.close();
    if (!out) throw IoError(path + ": write failed");
  });
}

struct StreamWriter::Impl {
  std::ofstream out;
};

StreamWriter::StreamWriter(std::string path, std::string descr, std::vector<int64_t> row_shape)
    : path_(std::move(path)), descr_(std::move(descr)), row_shape_(std::move(row_shape)) {
  Header h;
  h.descr = descr_;
  std::vector<int64_t> widest = {std::numeric_limits<int64_t>::max()};
  widest.insert(widest.end(), row_shape_.begin(), row_shape_.end());
  std::string header;
  try {
    header = format_header(descr_, widest);
  } catch (const FormatError& e) {
    throw FormatError(path_ + ": " + e.what());
  }
  h.shape = row_shape_;
  h.data_offset = header.size();
  require_supported(h, header.size() + checked_nbytes(row_shape_, h.item_size(), path_), path_);
  row_bytes_ = checked_nbytes(row_shape_, h.item_size(), path_);
  header_bytes_ = header.size();
  tmp_ = path_ + ".tmp-" + std::to_string(::getpid());
  impl_ = std::make_unique<Impl>();
  impl_->out.open(tmp_, std::ios::binary | std::ios::trunc);
  if (!impl_->out) throw IoError(path_ + ": cannot write (" + std::strerror(errno) + ")");
  impl_->out.write(header.data(), static_cast<std::streamsize>(header.size()));  // replaced by finish()
}

StreamWriter::~StreamWriter() {
  if (impl_) {
    impl_->out.close();
    std::remove(tmp_.c_str());
  }
}

void StreamWriter::append(const void* data, uint64_t nbytes) {
  if (!impl_) throw IoError(path_ + ": append after finish");
  if (row_bytes_ == 0 ? nbytes != 0 : nbytes % row_bytes_ != 0)
    throw FormatError(path_ + ": " + std::to_string(nbytes) + " bytes is not a whole number of " +
                      std::to_string(row_bytes_) + "-byte rows");
  impl_->out.write(static_cast<const char*>(data), static_cast<std::streamsize>(nbytes));
  if (!impl_->out) throw IoError(path_ + ": write failed (" + std::strerror(errno) + ")");
  if (row_bytes_) rows_ += static_cast<int64_t>(nbytes / row_bytes_);
}

void StreamWriter::finish() {
  if (!impl_) throw IoError(path_ + ": finished twice");
  std::vector<int64_t> shape = {rows_};
  shape.insert(shape.end(), row_shape_.begin(), row_shape_.end());
  const std::string header = padded_header(descr_, shape, header_bytes_);
  if (header.size() != header_bytes_) throw FormatError(path_ + ": .npy header grew while streaming");
  impl_->out.seekp(0);
  impl_->out.write(header.data(), static_cast<std::streamsize>(header.size()));
  impl_->out.close();
  if (!impl_->out) throw IoError(path_ + ": write failed (" + std::strerror(errno) + ")");
  // Same guarantee as files.h write_atomically: data on disk before the rename publishes them.
  const int fd = ::open(tmp_.c_str(), O_RDONLY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
  if (std::rename(tmp_.c_str(), path_.c_str()) != 0) {
    const std::string why = std::strerror(errno);
    std::remove(tmp_.c_str());
    impl_.reset();
    throw IoError(path_ + ": cannot rename temp file into place (" + why + ")");
  }
  impl_.reset();
}

}  // namespace hrmclara::npy
